"""`patch_trl` / `unpatch_trl`: make unmodified TRL code (`from trl import DPOConfig, DPOTrainer`, and the same for
`RewardConfig`/`RewardTrainer`) robust.

Explicit, idempotent and reversible. `import trl_robust` alone changes nothing in TRL; only `patch_trl()`
rebinds the names below, and `unpatch_trl()` puts TRL's own classes back.
"""

import importlib

from .. import compat
from ..config import RobustDPOConfig
from ..reward import RobustRewardConfig, RobustRewardTrainer
from .trainer import RobustDPOTrainer, integrate_with_trl

# (module, attribute) pairs through which TRL code reaches the DPO and reward classes.
_TARGETS = {
    "DPOConfig": ("trl", "trl.trainer", "trl.trainer.dpo_config"),
    "DPOTrainer": ("trl", "trl.trainer", "trl.trainer.dpo_trainer"),
    "RewardConfig": ("trl", "trl.trainer", "trl.trainer.reward_config"),
    "RewardTrainer": ("trl", "trl.trainer", "trl.trainer.reward_trainer"),
}
_REPLACEMENTS = {
    "DPOConfig": RobustDPOConfig,
    "DPOTrainer": RobustDPOTrainer,
    "RewardConfig": RobustRewardConfig,
    "RewardTrainer": RobustRewardTrainer,
}
_originals: dict[tuple[str, str], object] = {}


def patch_trl() -> None:
    """Rebind `trl.DPOConfig`/`trl.DPOTrainer` and `trl.RewardConfig`/`trl.RewardTrainer` (and their `trl.trainer...`
    homes) to the robust classes.

    Code that imports them after this call — e.g. TRL's own `trl/scripts/dpo.py` — then accepts the robust
    loss types. Calling it twice is harmless. Names already imported elsewhere (`from trl import DPOTrainer`
    before the patch) keep pointing at TRL's classes: patch first. Checks the installed TRL first (see
    `trl_robust.compat`) and raises `IncompatibleTRLError` before changing anything if it cannot integrate.
    """
    integrate_with_trl()
    compat.check_reward_integration()  # both probes before anything is rebound: all or nothing
    for name, modules in _TARGETS.items():
        for module_name in modules:
            module = importlib.import_module(module_name)
            key = (module_name, name)
            if key not in _originals:
                _originals[key] = getattr(module, name)  # resolves TRL's lazy import before we override it
            setattr(module, name, _REPLACEMENTS[name])


def unpatch_trl() -> None:
    """Restore TRL's own classes. Harmless if `patch_trl` was never called."""
    for (module_name, name), original in _originals.items():
        setattr(importlib.import_module(module_name), name, original)
    _originals.clear()


def is_trl_patched() -> bool:
    """Whether `patch_trl()` is in effect."""
    import trl

    return trl.DPOTrainer is RobustDPOTrainer
