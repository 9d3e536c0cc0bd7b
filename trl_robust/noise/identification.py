"""Whether the margins can tell how many labels are flipped: the likelihood interval for ε, and the verdict on it.

Nothing but the shape of the margins' density g(z) = (1 − ε) f(z) + ε f(−z) tells ε apart from the clean density f.
A model that barely separates the pairs has an f almost symmetric about 0, and then many pairs (ε, f) fit the
margins about equally well: 0% flipped with f centred a little to the right of 0, or 40% flipped with f further right.
The point estimate is then arbitrary (0 or 0.45 from one sample to the next), and so is its bootstrap interval (0–0
where every resample lands on the same boundary): a weak model scoring a 25%-flipped set gave "about 0.0% (0.0–0.0%)".

The test is a likelihood (support) interval: the flip rates whose profile likelihood is at least 1/32 of the best's,

    { ε : n (ℓ̂ − ℓ_p(ε)) ≤ log 32 },    ℓ_p(ε) = max over everything else of the mean log-likelihood per pair, ε held

(everything else: the clean density f and, for `symmetric_mixture`, which transform of the margins it is fitted to)

(1/32: "strong evidence" against the rates outside, Royall 1997; about a 99% interval where the usual asymptotics
hold, and unlike the bootstrap's it does not collapse at a boundary). The margins cannot tell when it
- reaches 1/2: a flip rate of 50%, at which g is symmetric whatever f is (a label then says nothing about which
  answer is better), fits them about as well as ε̂; margins ~ N(0, 1) are like that at any flip rate; or
- is wider than `WIDEST_INFORMATIVE`: half the range of possible flip rates fits them about equally well.
Why so strict a ratio: where ε is this weakly identified the likelihood ratio is not χ²-distributed, and the
mixture's spare components fit noise. On 10 draws each of clean margins N(δ, 1), 25% flipped, 2,000 pairs, a barely
trained model (δ = 0.1, 0.2, 0.3) gave "cannot tell" in 8, 10 and 10 at 1/32 (the other two said 45% and 47%), but
in only 8, 7 and 6 at the 90% χ² threshold, with ε̂ 0.35–0.46 where it "could tell". Margins that separate the
pairs (δ = 1.5, 0–40% flipped, 1,000 or 4,000 pairs) never gave it; δ = 0.7 with 20% flipped did in 2 of 10 (the
others: 0.22–0.27), δ = 1 with 300 pairs in 3 of 10.
"""

import math

import numpy as np

from .mixture_em import FLIP_RATE_MAX

SUPPORT = math.log(32)  # nats: flip rates less likely than 1/32 of the best are outside the interval
WIDEST_INFORMATIVE = 0.25  # half of [0, 1/2): wider, and the interval says more than the estimate
# ε where the profile likelihood is evaluated (besides ε̂): 1e-9 stands for 0 (log ε must stay finite for SQUAREM),
# 0.5 − 1e-6 for 1/2. The interval's ends are interpolated linearly between neighbours: to a few points where the
# likelihood is sharp, which is enough to judge a width of 0.25; each point costs two EM fits per transform.
PROFILE_GRID = np.r_[1e-9, np.arange(0.05, 0.49, 0.05), FLIP_RATE_MAX]


def percent(share: float, sign: bool = True) -> str:
    """23%, or 1.4% below 10% (where whole percent would round a real signal to 0); 0% and 50% at the ends."""
    if share < 5e-4 or share > FLIP_RATE_MAX - 5e-4:
        text = f"{100 * round(share, 1):.0f}"
    else:
        text = f"{100 * share:.1f}" if share < 0.095 else f"{100 * share:.0f}"
    return text + "%" * sign


def likelihood_interval(profile_ll: np.ndarray, best_eps: float, best_ll: float,
                        n_pairs: float) -> tuple[float, float]:
    """The flip rates whose profile log-likelihood is within `SUPPORT` nats (in total over the pairs) of the best:
    the hull of those on `PROFILE_GRID` and ε̂, each end interpolated linearly towards the first rate outside.

    Args:
        profile_ll: ℓ_p at each rate of `PROFILE_GRID`, mean per pair.
        best_eps, best_ll: the estimate ε̂ and its mean log-likelihood per pair.
    """
    eps = np.r_[PROFILE_GRID, best_eps]
    ll = np.r_[profile_ll, best_ll]
    order = np.argsort(eps, kind="stable")
    eps, ll = eps[order], ll[order]
    deficit = n_pairs * (np.max(ll) - ll)  # (the max: a fit with ε held may find a better f than the free fit did)
    inside = np.flatnonzero(deficit <= SUPPORT)
    first, last = inside[0], inside[-1]

    def edge(i_in: int, i_out: int) -> float:
        if i_out < 0 or i_out >= eps.size:
            return float(eps[i_in])
        share = (SUPPORT - deficit[i_in]) / (deficit[i_out] - deficit[i_in])
        return float(eps[i_in] + share * (eps[i_out] - eps[i_in]))

    low, high = edge(first, first - 1), edge(last, last + 1)
    return (0.0 if low <= PROFILE_GRID[0] else low), high


def cannot_tell_reason(interval: tuple[float, float]) -> str:
    """Why the margins cannot tell how many labels are flipped, from the likelihood interval; "" where they can."""
    low, high = interval
    if high >= FLIP_RATE_MAX:
        return (f"the margins fit a flip rate of 50% (at which they would look like their own mirror image) about as "
                f"well as any from {percent(low)} up, within a likelihood ratio of 32: they do not separate the pairs")
    if high - low > WIDEST_INFORMATIVE:
        return (f"the margins fit any flip rate from {percent(low, sign=False)} to {percent(high)} about equally "
                "well, within a likelihood ratio of 32: they separate the pairs too little")
    return ""
