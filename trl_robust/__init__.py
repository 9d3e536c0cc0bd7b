"""trl-robust: noise-robust preference losses (ROPO, SymPO) for Hugging Face TRL's `DPOTrainer` and `RewardTrainer`.

Switch an existing TRL DPO script by changing one import,

    from trl_robust import DPOConfig, DPOTrainer      # instead of `from trl import ...`
    config = DPOConfig(loss_type="ropo", ...)

(reward models alike: `from trl_robust import RewardConfig, RewardTrainer`, `RewardConfig(loss_type="sympo_sigmoid")`),
or keep the script unmodified and call `trl_robust.patch_trl()` first. Importing this package changes nothing in TRL
and reads none of TRL's private code: the installed TRL is checked at the first trainer construction
(`trl_robust.compat`).
"""

__version__ = "0.1.0"

from .compat import SUPPORTED_TRL, IncompatibleTRLError
from .config import RobustDPOConfig
from .integration.patching import is_trl_patched, patch_trl, unpatch_trl
from .integration.trainer import RobustDPOTrainer
from .reward import RobustRewardConfig, RobustRewardTrainer, reward_loss_types
from .registry import (
    Hyperparameter,
    LossPluginError,
    LossSpec,
    Paper,
    available_loss_types,
    get_loss_spec,
    register_loss,
    unregister_loss,
)

# One-line switch from TRL: `from trl_robust import DPOConfig, DPOTrainer`.
DPOConfig = RobustDPOConfig
DPOTrainer = RobustDPOTrainer
RewardConfig = RobustRewardConfig
RewardTrainer = RobustRewardTrainer

__all__ = [
    "SUPPORTED_TRL",
    "DPOConfig",
    "DPOTrainer",
    "Hyperparameter",
    "IncompatibleTRLError",
    "LossPluginError",
    "LossSpec",
    "Paper",
    "RobustDPOConfig",
    "RobustDPOTrainer",
    "RobustRewardConfig",
    "RobustRewardTrainer",
    "RewardConfig",
    "RewardTrainer",
    "available_loss_types",
    "get_loss_spec",
    "is_trl_patched",
    "patch_trl",
    "register_loss",
    "reward_loss_types",
    "unpatch_trl",
    "unregister_loss",
]
