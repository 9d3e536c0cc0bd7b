"""How many preference labels look flipped, estimated from the per-pair DPO margins alone (no labels).

The margin z = β·Δ of a pair is positive when the model agrees with the pair's label. Flipping a label swaps chosen
and rejected, which negates the margin. So if a share ε of the labels were flipped at random, independently of the
pair, the margins are a two-part mixture of one clean-label density f and its mirror image:

    g(z) = (1 − ε) · f(z) + ε · f(−z)

Two estimators read ε off that structure (`symmetric_mixture`) or off the model's own probabilities
(`calibrated_em`); each also returns, per pair, the posterior probability that its label is flipped.

Formula (`symmetric_mixture`, maximum likelihood by EM; f a Gaussian location mixture, see its docstring):
    g(z) = (1 − ε) f(z) + ε f(−z),    f(z) = Σ_k w_k N(z; μ_k, σ²),  μ_k ≥ 0,  0 ≤ ε < 1/2
    P(flipped | z) = ε f(−z) / ((1 − ε) f(z) + ε f(−z))

Formula (`calibrated_em`, RE-PO's EM, arXiv 2509.24159; σ the logistic function):
    P(flipped | z) = ε σ(−z) / ((1 − ε) σ(z) + ε σ(−z)),    ε ← mean over pairs of P(flipped | z), to its fixed point

Assumptions, and where each estimator fails:
- Symmetric flips: whether a label is flipped must not depend on the pair. Biased flips — e.g. annotators who prefer
  the longer answer, wrongly, mostly on pairs where the longer one is worse — make the flipped pairs' clean margins
  follow a different density than the unflipped ones', and then neither estimator is consistent.
- The margins must come from a model that has learned the clean preferences but not the flipped labels. Late in DPO
  training the policy memorises the flipped labels and gives them positive margins too: they then look clean, and ε
  is *under*estimated (by the share that is memorised). Margins measured on pairs the model did not train on, or
  early in training, avoid that.
- An untrained policy equals its reference, so every z = 0 and nothing can be estimated: all-equal margins raise a
  ValueError rather than return a made-up number. Near-zero margins (the first steps) carry the same information as
  larger ones to `symmetric_mixture`, which does not depend on their scale, but `calibrated_em` reads them as an
  unsure model and returns ε̂ ≈ 0 whenever most margins are positive.
- `symmetric_mixture` needs the clean density to lean to the positive side (ε < 1/2 picks which side is clean) and to
  be shaped like its model: a blur of non-negative "true" margins by one Gaussian. A clean density with a heavy or
  long *left* tail (pairs the model gets confidently wrong although their label is right) is read as flips, so ε is
  overestimated; a clean density that is itself symmetric about 0 (the model has no opinion) leaves ε unidentified.
- `calibrated_em` needs σ(z) to be the model's calibrated probability that the pair's true preference is the labeled
  one. DPO's margins are not calibrated in general (their scale depends on β and on how long it trained), and the
  estimate follows their scale: over-confident margins (too large |z|) leave the pairs the model contradicts no
  explanation but a flip, so ε is overestimated; under-confident ones (z near 0) blame the model instead, and ε is
  underestimated.

Intervals are bootstrap percentile intervals over pairs: the pairs are resampled with replacement and ε is
re-estimated. They describe the sampling variability of ε̂ given this model's margins — how much ε̂ would move on
another sample of pairs of the same kind — not how wrong the model or the assumptions above may be.

For speed, both estimators fit the margins rounded into bins of width s/25 (s: the margins' robust spread, from the
interquartile range), keeping each bin's mean and variance exactly; that moves ε̂ far less than its sampling error.
The per-pair posteriors use the exact margins.

Pure numpy; a torch tensor is accepted and copied to the CPU.
"""

from dataclasses import dataclass, field

import numpy as np

from . import mixture_em
from .mixture_em import FLIP_RATE_MAX

BINS_PER_SPREAD = 25  # bin width = spread / 25: the binning moves ε̂ by under 1e-3
DEFAULT_N_BOOTSTRAP = 100
N_MIXTURE_COMPONENTS = 3


@dataclass(frozen=True, eq=False)  # eq=False: an array field makes == ambiguous
class NoiseEstimate:
    """A flip-rate estimate, its bootstrap interval, and each pair's probability of carrying a flipped label.

    Attributes:
        flip_rate: ε̂, the estimated share of flipped labels, in [0, 1/2).
        interval: bootstrap percentile interval for ε (NaN, NaN when no bootstrap was run).
        interval_level: its nominal level, e.g. 0.9.
        p_flipped: per pair, in the order given, the posterior probability that its label is flipped.
        method: the estimator's name in `ESTIMATORS`.
        params: the fitted parameters besides ε (what each estimator fits is in its docstring).
        n_bootstrap: bootstrap resamples behind the interval.
    """

    flip_rate: float
    interval: tuple[float, float]
    interval_level: float
    p_flipped: np.ndarray
    method: str
    params: dict = field(default_factory=dict)
    n_bootstrap: int = 0

    def __post_init__(self):
        self.p_flipped.setflags(write=False)  # frozen all the way down

    def describe(self) -> str:
        """One line for a log, e.g. "about 23% (18–28%, 90% bootstrap interval) of these 4,000 labels look flipped
        (symmetric_mixture)"."""
        share = f"about {_percent(self.flip_rate)}"
        if self.n_bootstrap:
            low, high = self.interval
            share += f" ({_percent(low, sign=False)}–{_percent(high)}, {self.interval_level:.0%} bootstrap interval)"
        return f"{share} of these {self.p_flipped.size:,} labels look flipped ({self.method})"


def _percent(share: float, sign: bool = True) -> str:
    """23%, or 1.4% below 10% (where whole percent would round a real signal to 0)."""
    text = f"{100 * share:.1f}" if share < 0.095 else f"{100 * share:.0f}"
    return text + "%" * sign


# --- input -----------------------------------------------------------------------------------------------------------


def _as_margins(margins) -> np.ndarray:
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


@dataclass(frozen=True)
class _BinnedMargins:
    """The sorted margins rounded into bins: each bin's mean, count and variance (the EM's sufficient statistics)."""

    centres: np.ndarray
    counts: np.ndarray
    within_var: np.ndarray
    spread: float


def _robust_spread(z: np.ndarray) -> float:
    """σ from the interquartile range (robust to heavy tails); the standard deviation when half the margins tie."""
    q1, q3 = np.quantile(z, [0.25, 0.75])
    return float((q3 - q1) / 1.349) or float(np.std(z))


def _bin_margins(z: np.ndarray) -> _BinnedMargins:
    spread = _robust_spread(z)
    z = np.sort(z)  # sorting first makes the result independent of the input order, to the last bit
    bin_of = np.floor(z / (spread / BINS_PER_SPREAD))
    starts = np.flatnonzero(np.r_[True, bin_of[1:] != bin_of[:-1]])
    counts = np.diff(np.r_[starts, z.size])
    centres = np.add.reduceat(z, starts) / counts
    within_var = np.add.reduceat((z - np.repeat(centres, counts)) ** 2, starts) / counts
    return _BinnedMargins(centres, counts.astype(np.float64), within_var, spread)


def _bootstrap_counts(binned: _BinnedMargins, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """(n_bootstrap, bins) counts of pairs resampled with replacement: resampling n pairs and counting them per bin
    is a multinomial draw over the bins with probabilities count / n."""
    n = int(binned.counts.sum())
    return rng.multinomial(n, binned.counts / n, size=n_bootstrap).astype(np.float64)


def _percentile_interval(estimates: np.ndarray, level: float) -> tuple[float, float]:
    low, high = np.quantile(estimates, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _logistic(x: np.ndarray) -> np.ndarray:
    """σ(x), without overflow for large |x|."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _logit(p: float) -> float:
    p = min(max(p, 1e-300), 1 - 1e-16)
    return float(np.log(p) - np.log1p(-p))


# --- symmetric_mixture -----------------------------------------------------------------------------------------------


def symmetric_mixture(margins, *, interval_level: float = 0.9, n_bootstrap: int = DEFAULT_N_BOOTSTRAP, seed: int = 0,
                      n_components: int = N_MIXTURE_COMPONENTS) -> NoiseEstimate:
    """Maximum-likelihood fit of the flip-structured mixture, with the clean density a Gaussian location mixture.

    Formula:
        g(z) = (1 − ε) · f(z) + ε · f(−z),        0 ≤ ε < 1/2
        f(z) = Σ_k w_k · N(z; μ_k, σ²),            μ_k ≥ 0, one σ shared by the K components
        P(flipped | z) = ε f(−z) / ((1 − ε) f(z) + ε f(−z))

    f is a Gaussian blur of K non-negative "true" margins: it can lean and skew to the right, and f(−z)/f(z) falls
    monotonically to 0, which is what makes ε identifiable and P(flipped | z) non-increasing in z. (Free per-component
    σ_k would let one wide component centred near 0 explain the flipped pairs as clean ones: ε̂ collapses towards 0 on
    skewed margins.) Fitted by EM from three starting flip rates, keeping the most likely fit; the bootstrap refits
    start from it (the EM itself is in `trl_robust.noise.mixture_em`).

    ε̂ at its bound 1/2 means the model disagrees with about half the labels or more: either that many are flipped or
    the model is wrong about them, and the margins cannot tell which.

    params: `weights`, `means` (the w_k and μ_k, tuples), `sd` (σ), `log_likelihood` (mean per pair, on the binned
    margins), `cycles` (SQUAREM cycles of the main fit).
    """
    z = _as_margins(margins)
    binned = _bin_margins(z)
    starts = mixture_em.starts(binned, n_components)
    counts = np.tile(binned.counts, (starts[0].size, 1))
    fits, ll, cycles = mixture_em.run(binned, counts, starts)
    best = int(np.argmax(ll))
    unsnapped = tuple(p[best:best + 1] for p in fits)  # one row
    fitted = mixture_em.snap_to_zero(binned, counts[:1], unsnapped)
    eps = float(fitted[0][0])
    p_flipped = _logistic(_logit(eps) + mixture_em.log_ratio(z, fitted)[0])
    interval = (float("nan"), float("nan"))
    if n_bootstrap:
        resampled = _bootstrap_counts(binned, n_bootstrap, np.random.default_rng(seed))
        # Warm starts at the fit, but with ε > 0: from ε = 0 exactly, EM never moves ε again.
        warm = tuple(np.repeat(p, n_bootstrap, axis=0) for p in (np.maximum(unsnapped[0], 0.01), *unsnapped[1:]))
        refits = mixture_em.snap_to_zero(binned, resampled, mixture_em.run(binned, resampled, warm)[0])
        interval = _percentile_interval(refits[0], interval_level)
    weights, means, sd = fitted[1][0], fitted[2][0], fitted[3][0]
    params = dict(weights=tuple(map(float, weights)), means=tuple(map(float, means)), sd=float(sd),
                  log_likelihood=float(ll[best]), cycles=cycles)
    return NoiseEstimate(eps, interval, interval_level, p_flipped, "symmetric_mixture", params, n_bootstrap)


# --- calibrated_em ---------------------------------------------------------------------------------------------------


def _calibrated_score(eps: np.ndarray, z: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """d/dε of Σ log((1 − ε) σ(z) + ε σ(−z)), per row, written with e = exp(−|z|) so nothing overflows:
    (σ(−z) − σ(z)) / ((1 − ε) σ(z) + ε σ(−z)) = (e − 1) / (1 − ε + ε e) for z ≥ 0, (1 − e) / ((1 − ε) e + ε) else."""
    e = np.exp(-np.abs(z))[None, :]
    eps = eps[:, None]
    terms = np.where(z >= 0, (e - 1) / (1 - eps + eps * e), (1 - e) / ((1 - eps) * e + eps))
    return (terms * counts).sum(1)


def _calibrated_flip_rate(z: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The EM's fixed point for every row of `counts`, found by bisection on the score.

    The update ε ← mean P(flipped | z) is EM for a concave log-likelihood in ε, so its fixed point in [0, 1/2) is
    the unique root of the score (or 0 when the score is already negative at 0). Bisection reaches it in 50 steps
    however flat the likelihood is, where the EM iteration itself slows down to a crawl.
    """
    low, high = np.zeros(counts.shape[0]), np.full(counts.shape[0], FLIP_RATE_MAX)
    for _ in range(50):
        mid = (low + high) / 2
        rising = _calibrated_score(mid, z, counts) > 0
        low, high = np.where(rising, mid, low), np.where(rising, high, mid)
    at_zero = _calibrated_score(np.zeros(counts.shape[0]), z, counts)
    return np.where(at_zero <= 0, 0.0, (low + high) / 2)


def calibrated_em(margins, *, interval_level: float = 0.9, n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
                  seed: int = 0) -> NoiseEstimate:
    """RE-PO-style EM over whether each label is right, trusting σ(z) as the model's probability that it is.

    Paper: Cao et al., "RE-PO: Robust Enhanced Policy Optimization as a General Framework for LLM Alignment",
    ICLR 2026, arXiv 2509.24159 — its E-step (posterior that each label is correct) and its annotator-reliability
    M-step, for a single annotator, with the policy held fixed (RE-PO also re-weights the training loss with the
    posteriors; that is not done here). The paper proves the reliability converges to the truth when the model is
    perfectly calibrated.

    Formula:
        P(flipped | z) = ε σ(−z) / ((1 − ε) σ(z) + ε σ(−z))
        ε ← mean over pairs of P(flipped | z)        (iterated to its fixed point)

    It assumes σ(z) is calibrated: among pairs with margin z, a share σ(z) have the labeled preference as their true
    one, independently of whether the annotator flipped it. DPO margins scale with β and with training, so this
    rarely holds as is; the estimate then follows the margins' scale rather than the data (see the module docstring).
    No shape is assumed for the margins' density.

    params: `log_likelihood` (mean per pair, on the binned margins).
    """
    z = _as_margins(margins)
    binned = _bin_margins(z)
    eps = float(_calibrated_flip_rate(binned.centres, binned.counts[None])[0])
    interval = (float("nan"), float("nan"))
    if n_bootstrap:
        counts = _bootstrap_counts(binned, n_bootstrap, np.random.default_rng(seed))
        interval = _percentile_interval(_calibrated_flip_rate(binned.centres, counts), interval_level)
    log_g = np.log((1 - eps) * _logistic(binned.centres) + eps * _logistic(-binned.centres))
    params = dict(log_likelihood=float((binned.counts * log_g).sum() / z.size))
    p_flipped = _logistic(_logit(eps) - z)  # ε σ(−z) / ((1 − ε) σ(z) + ε σ(−z)), since σ(−z)/σ(z) = exp(−z)
    return NoiseEstimate(eps, interval, interval_level, p_flipped, "calibrated_em", params, n_bootstrap)


# --- registry --------------------------------------------------------------------------------------------------------

ESTIMATORS = {"symmetric_mixture": symmetric_mixture, "calibrated_em": calibrated_em}
DEFAULT_ESTIMATOR = "symmetric_mixture"


def estimate_noise(margins, method: str = DEFAULT_ESTIMATOR, *, interval_level: float = 0.9,
                   n_bootstrap: int = DEFAULT_N_BOOTSTRAP, seed: int = 0) -> NoiseEstimate:
    """Estimate the share of flipped labels from per-pair margins z = β·Δ, with the estimator `method`.

    Args:
        margins: 1-D array (or torch tensor) of per-pair margins, positive where the model agrees with the label.
        method: a key of `ESTIMATORS`.
        interval_level: level of the bootstrap percentile interval, in (0, 1).
        n_bootstrap: resamples of the pairs for the interval; 0 skips it (interval NaN).
        seed: seeds the resampling, so the same input and seed give the same interval.
    """
    if method not in ESTIMATORS:
        raise ValueError(f"method must be one of {sorted(ESTIMATORS)}, got {method!r}")
    if not 0 < interval_level < 1:
        raise ValueError(f"interval_level must be in (0, 1), got {interval_level}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    return ESTIMATORS[method](margins, interval_level=interval_level, n_bootstrap=n_bootstrap, seed=seed)
