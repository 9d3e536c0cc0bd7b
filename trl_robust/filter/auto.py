"""`ropo_filter_ratio: auto`: how much of the training set to distrust, from the estimated flip rate alone.

Each epoch the trainer records every pair's margin z in the training step that sees it (before that step's update:
free, no extra pass), estimates the flip rate ε̂ of that epoch from those margins (`estimate_noise`, the
`symmetric_mixture` estimator), and at the start of the next epoch distrusts the ⌊ρ·N⌋ pairs with the lowest of
those margins, with

    ρ = mean of the last `SMOOTHING_EPOCHS` estimates,   or 0 (no filtering) where that mean is below `FLOOR`.

An estimate at `UNIDENTIFIED` or above is not used: ε̂ near its bound 1/2 says the margins look the same as their
mirror image, which is what a barely trained model gives (all margins near 0 gave ε̂ = 0.5 with a narrow bootstrap
interval), not a measurement of the noise. The next epoch is estimated afresh. An epoch whose margins cannot tell how
many labels are flipped (`NoiseEstimate.cannot_tell`: they do not separate the pairs) is warned about, with the
reason, rather than left to filter little or nothing in silence; its estimate is still used as above.

Why these choices (measured in `benchmarks/results/noise_estimate_training.md`, ROPO on the synthetic task):
- The free margins give the same estimate as a scoring pass over the training set (to 0.01–0.05), which costs about
  half an epoch more.
- A single epoch's ε̂ moves by about ±0.05 from epoch to epoch; the mean of two halves that.
- On clean labels the estimator still sees a few pairs the model gets confidently wrong: ε̂ was 0.03–0.07 under ROPO
  at 0% flips (below 0.08 in 86% of epochs) and never below 0.08 at 20%. The floor keeps clean data whole.
- Under DPO's loss ε̂ falls towards 0 as the flipped labels are memorised, so the mode is meant for ROPO and the
  other bounded losses, whose margins keep contradicting the flipped labels.
With the filter acting on it, the estimate stays near the true rate (`benchmarks/results/noise_auto.md`: within ±0.05
on average at 0–40% symmetric flips on two tasks, 10 seeds): distrusted pairs are not trained on, so they are not
memorised and keep their negative margins. Without that feedback (no filter, or DPO's loss) 40% was read as 0.2–0.3.

Pure functions; `RobustDPOTrainer` supplies the margins and applies the result.
"""

import warnings

import numpy as np

from ..noise.estimate import DEFAULT_ESTIMATOR, estimate_noise

AUTO = "auto"  # the value of `ropo_filter_ratio` that turns this on
FLOOR = 0.08
UNIDENTIFIED = 0.45
SMOOTHING_EPOCHS = 2
ESTIMATOR = DEFAULT_ESTIMATOR


def estimate_flip_rate(margins) -> float | None:
    """ε̂ of one epoch's margins (no bootstrap: the interval is not used here), or None where nothing can be
    estimated (fewer than two distinct finite margins, e.g. an untrained model whose margins are all 0).

    Warns (UserWarning) where the margins cannot tell how many labels are flipped."""
    z = np.asarray(margins, dtype=np.float64)
    z = z[np.isfinite(z)]
    if z.size < 2 or np.ptp(z) == 0:
        return None
    estimate = estimate_noise(z, ESTIMATOR, n_bootstrap=0)
    if estimate.cannot_tell:
        warnings.warn(
            f"ropo_filter_ratio='auto': the last epoch's {z.size:,} margins cannot tell how many labels are flipped "
            f"({estimate.reason}), so its estimate of {estimate.flip_rate:.2f} may filter too little (or too much). "
            "This is usual while the model is barely trained or the set is small; if it lasts, set a fixed "
            "ropo_filter_ratio (e.g. the rate `trl-robust audit` estimates on pairs the model did not train on).",
            UserWarning,
            stacklevel=2,
        )
    return estimate.flip_rate


def auto_filter_ratio(estimates: list[float | None]) -> float:
    """ρ for the next epoch from the per-epoch estimates so far (oldest first; None where none could be made).

    The last `SMOOTHING_EPOCHS` estimates that are usable (not None, below `UNIDENTIFIED`) are averaged."""
    usable = [e for e in estimates if e is not None and e < UNIDENTIFIED]
    recent = usable[-SMOOTHING_EPOCHS:]
    if not recent:
        return 0.0
    ratio = sum(recent) / len(recent)
    return ratio if ratio >= FLOOR else 0.0

