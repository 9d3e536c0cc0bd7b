"""Noise-robust reward models: TRL's `RewardTrainer` and `RewardConfig` with trl-robust's per-pair loss types.

    from trl_robust import RewardConfig, RewardTrainer      # instead of `from trl import ...`
    config = RewardConfig(loss_type="sympo_sigmoid", ...)
"""

from .config import RobustRewardConfig, reward_loss_types
from .trainer import RobustRewardTrainer

__all__ = ["RobustRewardConfig", "RobustRewardTrainer", "reward_loss_types"]
