"""How well the label-noise estimators of `trl_robust.noise` recover a known flip rate from synthetic margins.

Clean-label margins are drawn from one of eight shapes, a known share ε of them is negated (exactly round(ε·n) pairs),
and every estimator sees only the margins. Per estimator × shape × ε, over several seeds:
- ε̂ mean ± sd (the truth is ε, also in the memorised case, where the estimators cannot see it);
- coverage: in how many seeds the bootstrap interval contains ε;
- AUROC of p_flipped against the truly flipped pairs (— at ε = 0, where there are none);
- "?k" where in k seeds the estimate said it cannot tell (`NoiseEstimate.cannot_tell`; nothing where none did);
and, once per estimator, the time for 10,000 margins at the default settings.

Shapes of the clean margins:
- gaussian: N(1.5, 1);
- gamma: Gamma(shape 2, scale 1) − 0.5, right-skewed with a hard lower edge at −0.5;
- student_t: 1.5 + t with 3 degrees of freedom, heavy tails on both sides;
- memorised: gaussian, but half the flipped pairs were memorised by the policy: their margin is back on the clean side;
- calibrated: σ(z) is the true probability that the label is right (the case `calibrated_em` assumes);
- outlier: gaussian, one pair's margin replaced by 50 (issue 19: one such margin silenced the estimate);
- heavy_scale: gaussian, each margin times its own lognormal(0, 1) factor (a positive factor: the flips stay);
- weak: N(0.2, 1), a barely trained model: about 58% of the pairs on the right side; the estimators should say they
  cannot tell.

    python benchmarks/noise_estimate_synthetic.py                  # 10 seeds, 4,000 pairs: ~15 min on 2 shared cores
    python benchmarks/noise_estimate_synthetic.py --seeds 3 --n 2000   # the quick mode: ~2 min
"""

import argparse
import time

import numpy as np

from trl_robust.noise import ESTIMATORS, estimate_noise

FLIP_RATES = (0.0, 0.1, 0.2, 0.3, 0.4)
MEMORISED_SHARE = 0.5


def flip_exactly(clean: np.ndarray, flip_rate: float, rng) -> tuple[np.ndarray, np.ndarray]:
    flipped = np.zeros(clean.size, dtype=bool)
    flipped[rng.permutation(clean.size)[: round(flip_rate * clean.size)]] = True
    return np.where(flipped, -clean, clean), flipped


def calibrated(rng, n, flip_rate):
    """Model log-odds s; the true preference drawn from σ(s); the annotator flips it with probability ε."""
    log_odds = rng.normal(1.0, 1.5, n)
    a_truly_better = rng.random(n) < 1 / (1 + np.exp(-log_odds))
    flipped = np.zeros(n, dtype=bool)
    flipped[rng.permutation(n)[: round(flip_rate * n)]] = True
    return np.where(a_truly_better ^ flipped, log_odds, -log_odds), flipped


def memorised(rng, n, flip_rate):
    clean = rng.normal(1.5, 1.0, n)
    z, flipped = flip_exactly(clean, flip_rate, rng)
    return np.where(flipped & (rng.random(n) < MEMORISED_SHARE), clean, z), flipped


def with_outlier(rng, n, flip_rate):
    z, flipped = flip_exactly(rng.normal(1.5, 1.0, n), flip_rate, rng)
    z[rng.integers(n)] = 50.0
    return z, flipped


def heavy_scale(rng, n, flip_rate):
    z, flipped = flip_exactly(rng.normal(1.5, 1.0, n), flip_rate, rng)
    return z * np.exp(rng.normal(0.0, 1.0, n)), flipped


SHAPES = {
    "gaussian": lambda rng, n, eps: flip_exactly(rng.normal(1.5, 1.0, n), eps, rng),
    "gamma": lambda rng, n, eps: flip_exactly(rng.gamma(2.0, 1.0, n) - 0.5, eps, rng),
    "student_t": lambda rng, n, eps: flip_exactly(1.5 + rng.standard_t(3, n), eps, rng),
    "memorised": memorised,
    "calibrated": calibrated,
    "outlier": with_outlier,
    "heavy_scale": heavy_scale,
    "weak": lambda rng, n, eps: flip_exactly(rng.normal(0.2, 1.0, n), eps, rng),
}


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann–Whitney AUROC with tied scores counted half."""
    order = np.argsort(scores, kind="stable")
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(scores.size)
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)  # average 1-based rank of each tie group
    n_pos = positive.sum()
    n_neg = positive.size - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def run_cell(method, shape, flip_rate, seeds, n):
    estimates, covered, aurocs, cannot_tell = [], 0, [], 0
    for seed in range(seeds):
        z, flipped = SHAPES[shape](np.random.default_rng(seed), n, flip_rate)
        estimate = estimate_noise(z, method, seed=seed)
        estimates.append(estimate.flip_rate)
        covered += estimate.interval[0] <= flip_rate <= estimate.interval[1]
        cannot_tell += getattr(estimate, "cannot_tell", False)  # (absent before issue 19: to compare with then)
        if flipped.any():
            aurocs.append(auroc(estimate.p_flipped, flipped))
    return np.mean(estimates), np.std(estimates), covered, np.mean(aurocs) if aurocs else None, cannot_tell


def time_per_10k(method, repeats=5):
    z, _ = SHAPES["gaussian"](np.random.default_rng(0), 10_000, 0.2)
    estimate_noise(z, method)  # warm-up
    times = []
    for seed in range(repeats):
        start = time.perf_counter()
        estimate_noise(z, method, seed=seed)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--n", type=int, default=4000, help="pairs per draw")
    args = parser.parse_args()
    header = "| estimator | shape | " + " | ".join(f"ε = {eps:.1f}" for eps in FLIP_RATES) + " |"
    print(f"ε̂ mean ± sd over {args.seeds} seeds, n = {args.n}; [coverage of the 90% interval / {args.seeds}]; "
          "AUROC of p_flipped for the flipped pairs; ?k: cannot tell in k seeds\n")
    print(header)
    print("|" + "---|" * (len(FLIP_RATES) + 2))
    for method in ESTIMATORS:
        for shape in SHAPES:
            cells = []
            for flip_rate in FLIP_RATES:
                mean, sd, covered, auc, cannot_tell = run_cell(method, shape, flip_rate, args.seeds, args.n)
                cells.append(f"{mean:.3f} ± {sd:.3f} [{covered}] " + (f"{auc:.2f}" if auc is not None else "—")
                             + (f" ?{cannot_tell}" if cannot_tell else ""))
            print(f"| {method} | {shape} | " + " | ".join(cells) + " |", flush=True)
    print()
    for method in ESTIMATORS:
        print(f"{method}: {1000 * time_per_10k(method):.0f} ms per 10,000 margins (default settings, median of 5)")


if __name__ == "__main__":
    main()
