"""Label-noise estimation from per-pair DPO margins: how many labels look flipped, and which."""

from .estimate import ESTIMATORS, NoiseEstimate, estimate_noise

__all__ = ["ESTIMATORS", "NoiseEstimate", "estimate_noise"]
