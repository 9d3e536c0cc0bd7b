"""The EM behind `symmetric_mixture` (see `trl_robust.noise.estimate`): the flip-structured Gaussian location mixture
g(z) = (1 − ε) f(z) + ε f(−z), f(z) = Σ_k w_k N(z; μ_k, σ²), fitted to binned margins for many rows of bin counts (the
data and its bootstrap resamples) at once, accelerated by SQUAREM.

Parameters travel as a tuple (ε, w, μ, σ) of arrays with one row per row of counts: shapes (B,), (B, K), (B, K), (B,).
`binned` is the estimator's binned margins: bin `centres`, per-bin `within_var`, and the margins' robust `spread`.
"""

import numpy as np

FLIP_RATE_MAX = 0.5 - 1e-6  # ε < 1/2: at 1/2 the clean density and its mirror image are interchangeable
EM_MAX_CYCLES = 1000  # SQUAREM cycles, three EM steps each
SQUAREM_MAX_STEP = 30.0
EM_TOLERANCE = 0.05  # nats of total log-likelihood gained per cycle
LOG_SQRT_2PI = 0.5 * np.log(2.0 * np.pi)


def _log_densities(x: np.ndarray, weights, means, sd) -> np.ndarray:
    """log(w_k · N(x; μ_k, σ²)) for every row of parameters, every x and every k: shape (B, len(x), K)."""
    sd = sd[:, None, None]
    return (np.log(weights)[:, None, :] - np.log(sd) - LOG_SQRT_2PI
            - (x[None, :, None] - means[:, None, :]) ** 2 / (2 * sd**2))


def _logsumexp(a: np.ndarray, axis) -> np.ndarray:
    peak = np.max(a, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)  # all −inf (e.g. log ε with ε = 0) gives −inf, not NaN
    with np.errstate(divide="ignore"):
        return np.squeeze(peak, axis) + np.log(np.sum(np.exp(a - peak), axis=axis))


def _em_step(binned, counts, params, sd_floor, fixed_eps=None):
    """One EM step for every row of `counts` (bootstrap resamples) at once; ε stays at `fixed_eps` in the rows where
    that is not NaN (the profile likelihood: f fitted with ε held fixed).

    Latent per pair: flipped or not, and the component k of its clean margin x (x = z if unflipped, −z if flipped).
    E-step: responsibilities r(s, k) ∝ P(s) · w_k · N(±z; μ_k, σ²). M-step: ε and w_k are mean responsibilities;
    μ_k is the responsibility-weighted mean of the clean margins x, clipped at 0 (the constrained maximum, since for
    any σ the likelihood is concave in μ_k); σ² pools every component's squared deviations, including each bin's
    own variance.
    """
    eps, weights, means, sd = params
    c = binned.centres
    with np.errstate(divide="ignore"):  # ε = 0 gives log 0 = −inf, whose exp is the 0 it should be
        log_kept = np.log1p(-eps)[:, None, None] + _log_densities(c, weights, means, sd)
        log_flipped = np.log(eps)[:, None, None] + _log_densities(-c, weights, means, sd)
    log_g = np.logaddexp(_logsumexp(log_kept, 2), _logsumexp(log_flipped, 2))  # (B, bins)
    r_kept = np.exp(log_kept - log_g[..., None]) * counts[..., None]
    r_flipped = np.exp(log_flipped - log_g[..., None]) * counts[..., None]
    n = counts.sum(1)
    per_component = r_kept.sum(1) + r_flipped.sum(1)  # (B, K)
    safe = np.maximum(per_component, 1e-300)  # an emptied component keeps a finite (unused) mean
    new_eps = _hold(np.minimum(r_flipped.sum((1, 2)) / n, FLIP_RATE_MAX), fixed_eps)
    new_means = np.maximum(((r_kept - r_flipped) * c[None, :, None]).sum(1) / safe, 0.0)
    squares = (r_kept * (c[None, :, None] - new_means[:, None, :]) ** 2
               + r_flipped * (c[None, :, None] + new_means[:, None, :]) ** 2).sum((1, 2))
    squares += (counts * binned.within_var).sum(1)
    new_sd = np.maximum(np.sqrt(squares / n), sd_floor)
    new_weights = np.maximum(per_component / n[:, None], 1e-300)
    mean_log_likelihood = (counts * log_g).sum(1) / n
    return (new_eps, new_weights, new_means, new_sd), mean_log_likelihood


def _to_vector(params) -> np.ndarray:
    """(B, 2K + 2) coordinates in which SQUAREM extrapolates: logs of ε, w and σ (so ε can head for 0 geometrically,
    as EM takes it there), and μ itself."""
    eps, weights, means, sd = params
    with np.errstate(divide="ignore"):
        return np.concatenate([np.log(eps)[:, None], np.log(weights), means, np.log(sd)[:, None]], axis=1)


def _from_vector(vector: np.ndarray, n_components: int, sd_floor: float):
    """The inverse of `_to_vector`, projected back onto the constraints: 0 ≤ ε < 1/2, w on the simplex, μ ≥ 0."""
    log_eps, log_weights = vector[:, 0], vector[:, 1:1 + n_components]
    weights = np.exp(log_weights - log_weights.max(1, keepdims=True))
    return (np.minimum(np.exp(np.maximum(log_eps, -700.0)), FLIP_RATE_MAX), weights / weights.sum(1, keepdims=True),
            np.maximum(vector[:, 1 + n_components:-1], 0.0), np.maximum(np.exp(vector[:, -1]), sd_floor))


def _hold(eps: np.ndarray, fixed_eps) -> np.ndarray:
    return eps if fixed_eps is None else np.where(np.isnan(fixed_eps), eps, fixed_eps)


def _choose_rows(use_first: np.ndarray, first, second):
    return tuple(np.where(use_first.reshape((-1,) + (1,) * (np.ndim(a) - 1)), a, b) for a, b in zip(first, second))


def run(binned, counts, params, fixed_eps=None):
    """EM accelerated by SQUAREM (Varadhan & Roland 2008), every row of `counts` at once; `fixed_eps` (one per row, NaN
    where ε is free) holds ε where given.

    Plain EM crawls here: along the ridge of near-equivalent clean densities (a Gaussian is also a mixture of narrower
    Gaussians) and when ε heads for 0. Each SQUAREM cycle takes two EM steps θ₁ = F(θ₀), θ₂ = F(θ₁), jumps to
    θ₀ − 2αr + α²v (r = θ₁ − θ₀, v = θ₂ − 2θ₁ + θ₀, α = −‖r‖/‖v‖ ≤ −1) and takes one more EM step from there; a row
    whose jump lowers the likelihood below θ₁'s keeps θ₂ instead, so the likelihood never falls.

    Stops when a cycle gains less than `EM_TOLERANCE` nats of total log-likelihood in every row: far below the ~1 nat
    that separates statistically distinguishable fits.
    """
    n_components = params[1].shape[1]
    sd_floor = 1e-3 * binned.spread  # a component cannot collapse onto a single tied value
    n_pairs = counts.sum(1)
    previous_ll = np.full(counts.shape[0], -np.inf)
    for cycle in range(1, EM_MAX_CYCLES + 1):
        first, _ = _em_step(binned, counts, params, sd_floor, fixed_eps)
        second, ll_first = _em_step(binned, counts, first, sd_floor, fixed_eps)
        v0, v1, v2 = _to_vector(params), _to_vector(first), _to_vector(second)
        with np.errstate(invalid="ignore"):  # −inf − (−inf) where ε = 0: caught by `finite`
            r, v = v1 - v0, v2 - 2 * v1 + v0
        finite = np.isfinite(r).all(1) & np.isfinite(v).all(1)  # ε = 0 exactly: log ε = −inf, no jump
        r, v = np.where(finite[:, None], r, 0.0), np.where(finite[:, None], v, 0.0)
        alpha = -np.sqrt((r**2).sum(1)) / np.maximum(np.sqrt((v**2).sum(1)), 1e-300)
        alpha = np.clip(alpha, -SQUAREM_MAX_STEP, -1.0)[:, None]  # an unbounded jump overflows where r is tiny
        jumped = _from_vector(np.where(finite[:, None], v0 - 2 * alpha * r + alpha**2 * v, v2), n_components, sd_floor)
        jumped = (_hold(jumped[0], fixed_eps), *jumped[1:])
        with np.errstate(all="ignore"):  # a wild jump gives NaN or −inf likelihood and is discarded just below
            stabilised, ll_jumped = _em_step(binned, counts, jumped, sd_floor, fixed_eps)
        jump_helped = ll_jumped >= ll_first  # False for NaN
        params = _choose_rows(jump_helped, stabilised, second)
        ll = np.where(jump_helped, ll_jumped, ll_first)
        with np.errstate(invalid="ignore"):  # a row whose likelihood is NaN will not improve: it holds up no other
            converged = not np.any((ll - previous_ll) * n_pairs >= EM_TOLERANCE)
        previous_ll = ll
        if converged:
            break
    _, final_ll = _em_step(binned, counts, params, sd_floor, fixed_eps)  # the likelihood of the parameters returned
    return params, final_ll, cycle


def starts(binned, n_components):
    """Four starts: ε = 0.05, 0.2, 0.4 with the components spread over the quantiles of |z| and σ their standard
    deviation; and ε = 0.2 with the last component on the largest |z|, the others spread below it, and σ the margins'
    robust spread. The fourth lets a lone far margin (1e300 among margins of about 2) have a component of its own:
    from the others, EM widens the one shared σ to reach it and settles there, with ε̂ near 0."""
    start_eps = np.array([0.05, 0.2, 0.4, 0.2])
    abs_z = np.abs(np.repeat(binned.centres, binned.counts.astype(int)))
    means = np.quantile(abs_z, (np.arange(n_components) + 0.5) / n_components)
    below = np.quantile(abs_z, (np.arange(n_components - 1) + 0.5) / max(n_components - 1, 1))
    to_the_far_margin = np.r_[below, abs_z.max()][-n_components:]
    sd = max(float(np.std(abs_z)), 1e-3 * binned.spread)
    return (start_eps, np.full((4, n_components), 1.0 / n_components),
            np.array([means, means, means, to_the_far_margin]), np.array([sd, sd, sd, binned.spread]))


def log_ratio(x, params) -> np.ndarray:
    """log f(−x) − log f(x) for every row of parameters, shape (B, len(x)); non-increasing in x because every μ_k ≥ 0
    and σ is shared."""
    _, weights, means, sd = params
    return (_logsumexp(_log_densities(-x, weights, means, sd), 2)
            - _logsumexp(_log_densities(x, weights, means, sd), 2))


def snap_to_zero(binned, counts, params):
    """ε = 0 exactly in the rows where the likelihood falls as ε leaves 0, f as fitted.

    EM only creeps towards the boundary ε = 0 and never reaches it: without this, clean margins get ε̂ ≈ 0.001 and
    a bootstrap interval that excludes 0. For fixed f the log-likelihood is concave in ε, with derivative
    Σ_i (f(−z_i)/f(z_i) − 1) at ε = 0; where that is ≤ 0, ε = 0 is the maximum.
    """
    ratio = np.exp(np.minimum(log_ratio(binned.centres, params), 700.0))
    at_boundary = (counts * (ratio - 1)).sum(1) <= 0
    return (np.where(at_boundary, 0.0, params[0]), *params[1:])


def profile(binned, fitted, eps_grid: np.ndarray) -> np.ndarray:
    """The profile log-likelihood of ε: for each ε of `eps_grid`, the mean log-likelihood per pair maximised over f
    with ε held there. Two starts per ε, keeping the better: the fitted f (`fitted`, one row), and `starts`' spread
    of components (a local maximum from one start alone would make ε look better determined than it is)."""
    size = eps_grid.size
    spread = starts(binned, fitted[1].shape[1])
    from_fit = tuple(np.repeat(p, size, axis=0) for p in fitted[1:])
    from_spread = tuple(np.repeat(p[:1], size, axis=0) for p in spread[1:])
    params = (np.r_[eps_grid, eps_grid], *(np.concatenate(pair) for pair in zip(from_fit, from_spread)))
    counts = np.tile(binned.counts, (2 * size, 1))
    _, ll, _ = run(binned, counts, params, fixed_eps=np.r_[eps_grid, eps_grid])
    return np.maximum(ll[:size], ll[size:])
