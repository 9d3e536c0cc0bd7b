"""trl-robust: noise-robust preference losses (ROPO, SymPO) for Hugging Face TRL's `DPOTrainer`.

Switch an existing TRL DPO script by changing one import,

    from trl_robust import DPOConfig, DPOTrainer      # instead of `from trl import ...`
    config = DPOConfig(loss_type="ropo", ...)

or keep the script unmodified and call `trl_robust.patch_trl()` first. Importing this package changes
nothing in TRL.
"""

__version__ = "0.1.0"

from .config import RobustDPOConfig
from .dispatch import SUPPORTED_TRL, IncompatibleTRLError
from .patching import is_trl_patched, patch_trl, unpatch_trl
from .registry import LossSpec, Paper, available_loss_types, get_loss_spec, register_loss, unregister_loss
from .trainer import RobustDPOTrainer

# One-line switch from TRL: `from trl_robust import DPOConfig, DPOTrainer`.
DPOConfig = RobustDPOConfig
DPOTrainer = RobustDPOTrainer

__all__ = [
    "SUPPORTED_TRL",
    "DPOConfig",
    "DPOTrainer",
    "IncompatibleTRLError",
    "LossSpec",
    "Paper",
    "RobustDPOConfig",
    "RobustDPOTrainer",
    "available_loss_types",
    "get_loss_spec",
    "is_trl_patched",
    "patch_trl",
    "register_loss",
    "unpatch_trl",
    "unregister_loss",
]
