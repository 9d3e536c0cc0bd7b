"""trl-robust: noise-robust preference losses (ROPO, SymPO) for Hugging Face TRL's `DPOTrainer` and `RewardTrainer`.

Switch an existing TRL DPO script by changing one import,

    from trl_robust import DPOConfig, DPOTrainer      # instead of `from trl import ...`
    config = DPOConfig(loss_type="ropo", ...)

(reward models alike: `from trl_robust import RewardConfig, RewardTrainer`, `RewardConfig(loss_type="sympo_sigmoid")`),
or keep the script unmodified and call `trl_robust.patch_trl()` first. Importing this package changes nothing in TRL
and reads none of TRL's private code: the installed TRL is checked at the first trainer construction
(`trl_robust.compat`).
"""

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public name -> (module, attribute), imported on first use (PEP 562): `import trl_robust` stays free of torch,
# transformers and TRL, so the `trl-robust` command answers `--version`, `--help` and argument mistakes without
# spending seconds importing what it does not need.
_EXPORTS = {
    "SUPPORTED_TRL": (".compat", "SUPPORTED_TRL"),
    "IncompatibleTRLError": (".compat", "IncompatibleTRLError"),
    "RobustDPOConfig": (".config", "RobustDPOConfig"),
    "is_trl_patched": (".integration.patching", "is_trl_patched"),
    "patch_trl": (".integration.patching", "patch_trl"),
    "unpatch_trl": (".integration.patching", "unpatch_trl"),
    "RobustDPOTrainer": (".integration.trainer", "RobustDPOTrainer"),
    "RobustRewardConfig": (".reward", "RobustRewardConfig"),
    "RobustRewardTrainer": (".reward", "RobustRewardTrainer"),
    "reward_loss_types": (".reward", "reward_loss_types"),
    "Hyperparameter": (".registry", "Hyperparameter"),
    "LossPluginError": (".registry", "LossPluginError"),
    "LossSpec": (".registry", "LossSpec"),
    "Paper": (".registry", "Paper"),
    "available_loss_types": (".registry", "available_loss_types"),
    "get_loss_spec": (".registry", "get_loss_spec"),
    "register_loss": (".registry", "register_loss"),
    "unregister_loss": (".registry", "unregister_loss"),
    # One-line switch from TRL: `from trl_robust import DPOConfig, DPOTrainer`.
    "DPOConfig": (".config", "RobustDPOConfig"),
    "DPOTrainer": (".integration.trainer", "RobustDPOTrainer"),
    "RewardConfig": (".reward", "RobustRewardConfig"),
    "RewardTrainer": (".reward", "RobustRewardTrainer"),
}

if TYPE_CHECKING:  # what the names are, for type checkers and IDEs
    from .compat import SUPPORTED_TRL, IncompatibleTRLError
    from .config import RobustDPOConfig
    from .config import RobustDPOConfig as DPOConfig
    from .integration.patching import is_trl_patched, patch_trl, unpatch_trl
    from .integration.trainer import RobustDPOTrainer
    from .integration.trainer import RobustDPOTrainer as DPOTrainer
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
    from .reward import RobustRewardConfig, RobustRewardTrainer, reward_loss_types
    from .reward import RobustRewardConfig as RewardConfig
    from .reward import RobustRewardTrainer as RewardTrainer


def __getattr__(name: str):
    if name not in _EXPORTS:
        # `trl_robust.registry` and the like: a submodule, as an eager package would have had it imported
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as missing:
            if missing.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module, __name__), attribute)
    globals()[name] = value  # once: later lookups do not come back here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


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
