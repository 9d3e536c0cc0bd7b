"""The margins as the estimators read them: checked, measured on their own scale, tamed, and binned.

Taming (`symmetric_mixture` only). Flipping a label negates its margin, so with a share ε of random flips the margins'
density is g(z) = (1 − ε) f(z) + ε f(−z). Any odd, increasing T keeps that form: T(z) has the density
(1 − ε) f_T(t) + ε f_T(−t), with f_T the density of T(clean margin), and the same ε. So ε can be fitted to T(z) as well
as to z, and P(flipped | z) stays non-increasing in z. The fit tries

    t = z / m,    and    t = asinh(z / (c · m))  for each c of `TAME_AT`,        m = median |z|

and keeps the one under which the margins z themselves are most likely (the mixture's likelihood of t times the
Jacobian dt/dz: a like-for-like comparison of models for z, each with the same parameters). asinh is close to linear
where most margins lie and logarithmic beyond: one margin of 50 among margins of about 2, or a heavy-tailed spread
(each margin times a lognormal factor), no longer drags the mixture's one shared σ wide enough to explain the flipped
pairs as clean ones (ε̂ fell from 0.21 to 0.00 on exactly that). Where the margins are Gaussian-like the linear t
fits best, and the estimate is what it was without taming: asinh alone bends a Gaussian bulk into a shape the
mixture reads as flips. m does not depend on which labels are flipped (|z| is the same either way), and no t depends
on the margins' unit: β, or margins scaled by 1e154 or 1e-200, give the same t.
"""

from dataclasses import dataclass

import numpy as np

BINS_PER_SPREAD = 25  # bin width = spread / 25: the binning moves ε̂ by under 1e-3
TAME_AT = (4.0, 1.0, 0.25)  # asinh(z / (c · median |z|)): near-linear to about c · median |z|, logarithmic beyond


def as_margins(margins) -> np.ndarray:
    """The margins as a 1-D float64 array; ValueError for anything that cannot be estimated from."""
    if hasattr(margins, "detach"):  # a torch tensor (bf16 has no numpy dtype, hence float())
        margins = margins.detach().float().cpu().numpy()
    z = np.asarray(margins, dtype=np.float64)
    if z.ndim != 1:
        raise ValueError(f"margins must be a 1-D array, one per pair; got shape {z.shape}")
    if z.size == 0:
        raise ValueError("margins is empty: no pairs to estimate the flip rate from")
    n_nan, n_inf = int(np.isnan(z).sum()), int(np.isinf(z).sum())
    if n_nan or n_inf:
        raise ValueError(f"margins contain {n_nan} NaN and {n_inf} infinite values (of {z.size}); "
                         "drop or fix those pairs first")
    if z.min() == z.max():
        raise ValueError(f"all {z.size} margins equal {z[0]:g}, so they say nothing about which labels are flipped "
                         "(an untrained policy equals its reference and gives z = 0 everywhere); estimate after "
                         "some training")
    return z


def typical_size(z: np.ndarray) -> float:
    """median |z|, or mean |z| where over half the margins are 0 (not all are: `as_margins` refuses that)."""
    size = float(np.median(np.abs(z)))
    return size if size > 0 else float(np.mean(np.abs(z)))


@dataclass(frozen=True)
class Tamed:
    """The margins z as the mixture is fitted to them: t = z / scale ("linear") or asinh(z / scale) ("asinh")."""

    t: np.ndarray
    transform: str
    scale: float
    log_jacobian: float  # mean over the pairs of log dt/dz: adds to a mean log-likelihood of t to make one of z


def tamings(z: np.ndarray) -> list[Tamed]:
    """The linear t and one asinh t per `TAME_AT`, for the fit to choose from."""
    size = typical_size(z)
    with np.errstate(over="ignore"):
        linear = Tamed(z / size, "linear", size, -float(np.log(size)))
    tamed = [_asinh(z, c * size) for c in TAME_AT]
    # Beyond 1e100 medians the EM's squares would overflow: such margins need asinh anyway.
    return ([linear] if np.max(np.abs(linear.t)) < 1e100 else []) + tamed


def _asinh(z: np.ndarray, scale: float) -> Tamed:
    """asinh(z / scale), also where z / scale overflows: there asinh(x) = sign(x) (log 2 + log |x|) exactly in
    float64. dt/dz = 1 / hypot(scale, z)."""
    with np.errstate(over="ignore"):
        x = z / scale
    far = ~(np.abs(x) < 1e150)  # (also inf)
    with np.errstate(divide="ignore", invalid="ignore"):  # z = 0: 0 · −inf, a NaN `where` never keeps (not far)
        logarithmic = np.sign(z) * (np.log(2.0) + np.log(np.abs(z)) - np.log(scale))
    t = np.where(far, logarithmic, np.arcsinh(np.where(far, 0.0, x)))
    return Tamed(t, "asinh", scale, -float(np.mean(np.log(np.hypot(scale, z)))))


@dataclass(frozen=True)
class BinnedMargins:
    """The sorted margins rounded into bins: each bin's mean, count and variance (the EM's sufficient statistics)."""

    centres: np.ndarray
    counts: np.ndarray
    within_var: np.ndarray
    spread: float


def robust_spread(z: np.ndarray) -> float:
    """σ from the interquartile range (robust to heavy tails); from the mean absolute deviation when half the
    margins tie (no squares: margins of 1e154 must not overflow)."""
    q1, q3 = np.quantile(z, [0.25, 0.75])
    return float((q3 - q1) / 1.349) or float(np.mean(np.abs(z - np.median(z))) * 1.2533)


def bin_margins(z: np.ndarray) -> BinnedMargins:
    spread = robust_spread(z)
    z = np.sort(z)  # sorting first makes the result independent of the input order, to the last bit
    bin_of = np.floor(z / (spread / BINS_PER_SPREAD))
    starts = np.flatnonzero(np.r_[True, bin_of[1:] != bin_of[:-1]])
    counts = np.diff(np.r_[starts, z.size])
    centres = np.add.reduceat(z, starts) / counts
    within_var = np.add.reduceat((z - np.repeat(centres, counts)) ** 2, starts) / counts
    return BinnedMargins(centres, counts.astype(np.float64), within_var, spread)


def bootstrap_counts(binned: BinnedMargins, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """(n_bootstrap, bins) counts of pairs resampled with replacement: resampling n pairs and counting them per bin
    is a multinomial draw over the bins with probabilities count / n."""
    n = int(binned.counts.sum())
    return rng.multinomial(n, binned.counts / n, size=n_bootstrap).astype(np.float64)
