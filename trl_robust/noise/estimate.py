"""How many preference labels look flipped, estimated from the per-pair DPO margins alone (no labels).

The margin z = β·Δ of a pair is positive when the model agrees with the pair's label. Flipping a label swaps chosen
and rejected, which negates the margin. So if a share ε of the labels were flipped at random, independently of the
pair, the margins are a two-part mixture of one clean-label density f and its mirror image:

    g(z) = (1 − ε) · f(z) + ε · f(−z)

Two estimators read ε off that structure (`symmetric_mixture`) or off the model's own probabilities
(`calibrated_em`); each also returns, per pair, the posterior probability that its label is flipped.

Formula (`symmetric_mixture`, maximum likelihood by EM; f a Gaussian location mixture, see its docstring; fitted to
t = T(z), T odd and increasing, which keeps this form and ε):
    g(t) = (1 − ε) f(t) + ε f(−t),    f(t) = Σ_k w_k N(t; μ_k, σ²),  μ_k ≥ 0,  0 ≤ ε < 1/2
    P(flipped | z) = ε f(−t) / ((1 − ε) f(t) + ε f(−t))

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
  overestimated; a clean density that is itself symmetric about 0 (the model has no opinion) leaves ε unidentified
  (the estimate then says it cannot tell, below).
- `calibrated_em` needs σ(z) to be the model's calibrated probability that the pair's true preference is the labeled
  one. DPO's margins are not calibrated in general (their scale depends on β and on how long it trained), and the
  estimate follows their scale: over-confident margins (too large |z|) leave the pairs the model contradicts no
  explanation but a flip, so ε is overestimated; under-confident ones (z near 0) blame the model instead, and ε is
  underestimated.

Intervals are bootstrap percentile intervals over pairs: the pairs are resampled with replacement and ε is
re-estimated. They describe the sampling variability of ε̂ given this model's margins — how much ε̂ would move on
another sample of pairs of the same kind — not how wrong the model or the assumptions above may be.

Cannot tell: where the margins do not separate the pairs, many flip rates fit them about equally well and ε̂ means
nothing (0 or 0.45 from one sample to the next, with a narrow bootstrap interval). Each estimate therefore also carries
a likelihood interval for ε (the rates at least 1/32 as likely as the best), and `cannot_tell` is set, with a
`reason`, when that interval reaches 1/2 or is wider than 0.25 (`trl_robust.noise.identification`); `describe()`
then says "cannot tell" instead of a number.

`symmetric_mixture` fits the mixture to z / m or to asinh(z / (c · m)), m the margins' median |z|, whichever makes
the margins most likely: an odd increasing transform keeps the flip structure and ε, asinh keeps a few huge margins or
a heavy tail from silencing the estimate, and dividing by m makes it independent of the margins' unit
(`trl_robust.noise.margins`).

For speed, both estimators fit the margins rounded into bins of width s/25 (s: the margins' robust spread, from the
interquartile range), keeping each bin's mean and variance exactly; that moves ε̂ far less than its sampling error.
The per-pair posteriors use the exact margins.

Pure numpy; a torch tensor is accepted and copied to the CPU.
"""

import numbers
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from . import mixture_em
from .mixture_em import FLIP_RATE_MAX
from .identification import PROFILE_GRID, SUPPORT, cannot_tell_reason, likelihood_interval, percent
from .margins import BinnedMargins, Tamed, as_margins, bin_margins, bootstrap_counts, tamings

DEFAULT_N_BOOTSTRAP = 100
N_MIXTURE_COMPONENTS = 3


@dataclass(frozen=True, eq=False)  # eq=False: an array field makes == ambiguous
class NoiseEstimate:
    """A flip-rate estimate, its intervals, whether the margins can tell at all, and each pair's probability of
    carrying a flipped label.

    Attributes:
        flip_rate: ε̂, the estimated share of flipped labels, in [0, 1/2).
        interval: bootstrap percentile interval for ε (NaN, NaN when no bootstrap was run).
        interval_level: its nominal level, e.g. 0.9.
        p_flipped: per pair, in the order given, the posterior probability that its label is flipped.
        method: the estimator's name in `ESTIMATORS`.
        params: the fitted parameters besides ε (what each estimator fits is in its docstring).
        n_bootstrap: bootstrap resamples behind the interval.
        likelihood_interval: the flip rates whose profile likelihood is at least 1/32 of the best's (always
            computed; `trl_robust.noise.identification`).
        cannot_tell: True when the margins do not separate the pairs well enough to say how many labels are flipped
            (the likelihood interval reaches 1/2 or is wider than 0.25): `flip_rate`, `interval` and `p_flipped` are
            then not worth acting on.
        reason: why it cannot tell, one clause for a log or report ("" when it can).
    """

    flip_rate: float
    interval: tuple[float, float]
    interval_level: float
    p_flipped: np.ndarray
    method: str
    params: dict = field(default_factory=dict)
    n_bootstrap: int = 0
    likelihood_interval: tuple[float, float] = (float("nan"), float("nan"))
    cannot_tell: bool = False
    reason: str = ""

    def __post_init__(self):
        self.p_flipped.setflags(write=False)  # frozen all the way down

    def describe(self) -> str:
        """One line for a log, e.g. "about 23% (18–28%, 90% bootstrap interval) of these 4,000 labels look flipped
        (symmetric_mixture)", or "cannot tell how many of these 4,000 labels are flipped: any flip rate from 0% to
        50% fits the margins (...) (symmetric_mixture)"."""
        if self.cannot_tell:
            return (f"cannot tell how many of these {self.p_flipped.size:,} labels are flipped: {self.reason} "
                    f"({self.method})")
        share = f"about {percent(self.flip_rate)}"
        if self.n_bootstrap:
            low, high = self.interval
            share += f" ({percent(low, sign=False)}–{percent(high)}, {self.interval_level:.0%} bootstrap interval)"
        return f"{share} of these {self.p_flipped.size:,} labels look flipped ({self.method})"


def _logistic(x: np.ndarray) -> np.ndarray:
    """σ(x), without overflow for large |x|."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _logit(p: float) -> float:
    p = min(max(p, 1e-300), 1 - 1e-16)
    return float(np.log(p) - np.log1p(-p))


def _percentile_interval(estimates: np.ndarray, level: float) -> tuple[float, float]:
    low, high = np.quantile(estimates, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _check_settings(interval_level, n_bootstrap) -> None:
    """ValueError for settings no estimate can be made with; before any work."""
    if isinstance(interval_level, bool) or not isinstance(interval_level, numbers.Real) or not 0 < interval_level < 1:
        raise ValueError(f"interval_level must be a number in (0, 1), e.g. 0.9; got {interval_level!r}")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, numbers.Integral) or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be a whole number of resamples, at least 2 (e.g. {DEFAULT_N_BOOTSTRAP}), "
                         f"or 0 for no bootstrap interval; got {n_bootstrap!r}")
    if n_bootstrap == 1:
        raise ValueError("n_bootstrap=1 cannot make an interval (one resample has no spread): use at least 2, e.g. "
                         f"{DEFAULT_N_BOOTSTRAP}, or 0 for no bootstrap interval")


def _verdict(profile_ll, eps, best_ll, n_pairs) -> dict:
    """The NoiseEstimate fields `likelihood_interval`, `cannot_tell` and `reason`."""
    interval = likelihood_interval(profile_ll, eps, best_ll, n_pairs)
    reason = cannot_tell_reason(interval)
    return dict(likelihood_interval=interval, cannot_tell=bool(reason), reason=reason)


# --- symmetric_mixture -----------------------------------------------------------------------------------------------


def symmetric_mixture(margins, *, interval_level: float = 0.9, n_bootstrap: int = DEFAULT_N_BOOTSTRAP, seed: int = 0,
                      n_components: int = N_MIXTURE_COMPONENTS) -> NoiseEstimate:
    """Maximum-likelihood fit of the flip-structured mixture to t = T(z), the clean density a Gaussian location
    mixture, T the one of z / m, asinh(z / 4m), asinh(z / m), asinh(z / m/4) (m = median |z|) under which the
    margins z are most likely (why: `trl_robust.noise.margins`).

    Formula:
        g(t) = (1 − ε) · f(t) + ε · f(−t),        0 ≤ ε < 1/2,   t = T(z), T odd and increasing
        f(t) = Σ_k w_k · N(t; μ_k, σ²),            μ_k ≥ 0, one σ shared by the K components
        P(flipped | z) = ε f(−t) / ((1 − ε) f(t) + ε f(−t))

    f is a Gaussian blur of K non-negative "true" margins: it can lean and skew to the right, and f(−t)/f(t) falls
    monotonically to 0, which is what makes ε identifiable and P(flipped | z) non-increasing in z. (Free per-component
    σ_k would let one wide component centred near 0 explain the flipped pairs as clean ones: ε̂ collapses towards 0 on
    skewed margins.) Fitted by EM from four starts, keeping the most likely fit; the bootstrap refits start from it
    (the EM and its starts are in `trl_robust.noise.mixture_em`).

    ε̂ at its bound 1/2 means the model disagrees with about half the labels or more: either that many are flipped or
    the model is wrong about them, and the margins cannot tell which.

    params: `weights`, `means` (the w_k and μ_k, tuples), `sd` (σ), all in units of t; `transform` ("linear":
    t = z / scale, or "asinh": t = asinh(z / scale)) and `scale` (in units of z); `log_likelihood` (mean per pair,
    on the binned t); `cycles` (SQUAREM cycles of the main fit).
    """
    _check_settings(interval_level, n_bootstrap)
    z = as_margins(margins)
    fits = [_fit_mixture(tamed, n_components) for tamed in tamings(z)]
    chosen = max(fits, key=lambda fit: np.nan_to_num(fit.z_log_likelihood, nan=-np.inf))
    binned, unsnapped = chosen.binned, chosen.params
    fitted = mixture_em.snap_to_zero(binned, binned.counts[None], unsnapped)
    eps = float(fitted[0][0])
    p_flipped = _logistic(_logit(eps) + mixture_em.log_ratio(chosen.tamed.t, fitted)[0])
    interval = (float("nan"), float("nan"))
    if n_bootstrap:
        resampled = bootstrap_counts(binned, n_bootstrap, np.random.default_rng(seed))
        # Warm starts at the fit, but with ε > 0: from ε = 0 exactly, EM never moves ε again.
        warm = tuple(np.repeat(p, n_bootstrap, axis=0) for p in (np.maximum(unsnapped[0], 0.01), *unsnapped[1:]))
        refits = mixture_em.snap_to_zero(binned, resampled, mixture_em.run(binned, resampled, warm)[0])
        interval = _percentile_interval(refits[0], interval_level)
    # The profile likelihood of ε maximises over the transform too: a Gaussian bulk bent by asinh can look flipped
    # where the linear fit explains it at any ε, and the verdict must see that. A transform whose best fit is already
    # `SUPPORT` nats below the chosen one's cannot bring any ε into the interval: it is not profiled.
    close = [fit for fit in fits if z.size * (chosen.z_log_likelihood - fit.z_log_likelihood) <= SUPPORT]
    profile_ll = np.max([mixture_em.profile(fit.binned, fit.params, PROFILE_GRID) + fit.tamed.log_jacobian
                         for fit in close], axis=0)
    verdict = _verdict(profile_ll, eps, chosen.z_log_likelihood, z.size)
    weights, means, sd = fitted[1][0], fitted[2][0], fitted[3][0]
    params = dict(weights=tuple(map(float, weights)), means=tuple(map(float, means)), sd=float(sd),
                  transform=chosen.tamed.transform, scale=chosen.tamed.scale, log_likelihood=chosen.log_likelihood,
                  cycles=chosen.cycles)
    return NoiseEstimate(eps, interval, interval_level, p_flipped, "symmetric_mixture", params, n_bootstrap, **verdict)


class _Fit(NamedTuple):
    tamed: Tamed
    binned: BinnedMargins
    params: tuple  # (ε, w, μ, σ), one row each
    log_likelihood: float  # mean per pair, of the binned t
    cycles: int

    @property
    def z_log_likelihood(self) -> float:
        """Mean log-likelihood per pair of the margins z themselves: comparable between transforms."""
        return self.log_likelihood + self.tamed.log_jacobian


def _fit_mixture(tamed: Tamed, n_components: int) -> _Fit:
    """The most likely of the EM fits to the binned t from `mixture_em.starts`."""
    binned = bin_margins(tamed.t)
    starts = mixture_em.starts(binned, n_components)
    fits, ll, cycles = mixture_em.run(binned, np.tile(binned.counts, (starts[0].size, 1)), starts)
    best = int(np.argmax(ll))
    return _Fit(tamed, binned, tuple(p[best:best + 1] for p in fits), float(ll[best]), cycles)


# --- calibrated_em ---------------------------------------------------------------------------------------------------


def _calibrated_score(eps: np.ndarray, z: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """d/dε of Σ log((1 − ε) σ(z) + ε σ(−z)), per row, written with e = exp(−|z|) so nothing overflows:
    (σ(−z) − σ(z)) / ((1 − ε) σ(z) + ε σ(−z)) = (e − 1) / (1 − ε + ε e) for z ≥ 0, (1 − e) / ((1 − ε) e + ε) else."""
    e = np.exp(-np.abs(z))[None, :]
    eps = eps[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):  # ε = 0 where e underflows: +inf, rightly (ε must rise)
        terms = np.where(z >= 0, (e - 1) / (1 - eps + eps * e), (1 - e) / ((1 - eps) * e + eps))
        return np.where(counts > 0, terms * counts, 0.0).sum(1)  # a bin no resample drew adds nothing, not inf · 0


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
    _check_settings(interval_level, n_bootstrap)
    z = as_margins(margins)
    binned = bin_margins(z)
    eps = float(_calibrated_flip_rate(binned.centres, binned.counts[None])[0])
    interval = (float("nan"), float("nan"))
    if n_bootstrap:
        counts = bootstrap_counts(binned, n_bootstrap, np.random.default_rng(seed))
        interval = _percentile_interval(_calibrated_flip_rate(binned.centres, counts), interval_level)
    ll = _calibrated_log_likelihood(np.r_[eps, PROFILE_GRID], binned)  # ε is its only parameter: no profiling
    params = dict(log_likelihood=float(ll[0]))
    p_flipped = _logistic(_logit(eps) - z)  # ε σ(−z) / ((1 − ε) σ(z) + ε σ(−z)), since σ(−z)/σ(z) = exp(−z)
    verdict = _verdict(ll[1:], eps, float(ll[0]), z.size)
    return NoiseEstimate(eps, interval, interval_level, p_flipped, "calibrated_em", params, n_bootstrap, **verdict)


def _calibrated_log_likelihood(eps: np.ndarray, binned) -> np.ndarray:
    """Mean log((1 − ε) σ(z) + ε σ(−z)) per pair, for each ε, in log space (σ(z) underflows for z ≪ 0)."""
    log_sigma = -np.logaddexp(0.0, -binned.centres)
    log_sigma_mirror = -np.logaddexp(0.0, binned.centres)
    with np.errstate(divide="ignore"):  # ε = 0: log 0 = −inf, whose exp is the 0 it should be
        log_g = np.logaddexp(np.log1p(-eps)[:, None] + log_sigma, np.log(eps)[:, None] + log_sigma_mirror)
    return (binned.counts * log_g).sum(1) / binned.counts.sum()


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
        n_bootstrap: resamples of the pairs for the bootstrap interval, an int ≥ 2; 0 skips it (interval NaN).
        seed: seeds the resampling, so the same input and seed give the same interval.

    Returns:
        A `NoiseEstimate`; check its `cannot_tell` (and `reason`) before acting on its `flip_rate`.

    Raises:
        ValueError: for margins that cannot be estimated from (empty, NaN or infinite, all equal, not 1-D) and for
            settings outside those ranges (`n_bootstrap=True` or `2.5` included), before any work.
    """
    if method not in ESTIMATORS:
        raise ValueError(f"method must be one of {sorted(ESTIMATORS)}, got {method!r}")
    _check_settings(interval_level, n_bootstrap)
    return ESTIMATORS[method](margins, interval_level=interval_level, n_bootstrap=n_bootstrap, seed=seed)
