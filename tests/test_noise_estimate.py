"""The label-noise estimators of `trl_robust.noise`: recovery of a known flip rate, posteriors, intervals, inputs.

Expected values come from how the margins were generated (a known share of flipped pairs) or from the formulas
written out again below, never from the code under test.
"""

import math
import re
import warnings

import numpy as np
import pytest

from trl_robust.noise import ESTIMATORS, NoiseEstimate, estimate_noise

N_PAIRS = 4000
FLIP_RATES = [0.0, 0.1, 0.2, 0.3, 0.4]


def gaussian_clean(rng, n):
    return rng.normal(1.5, 1.0, n)


def two_bump_clean(rng, n):
    """Skewed to the right: 60% easy pairs around 2.5, 40% hard ones around 0.5 (some of them negative)."""
    return np.where(rng.random(n) < 0.6, rng.normal(2.5, 0.8, n), rng.normal(0.5, 0.8, n))


def skew_normal_clean(rng, n, shape=4.0):
    """Skew-normal(α = 4) at location 0.3, scale 1.8: δ|U| + √(1 − δ²)V with δ = α/√(1 + α²)."""
    delta = shape / math.sqrt(1 + shape**2)
    return 0.3 + 1.8 * (delta * np.abs(rng.normal(size=n)) + math.sqrt(1 - delta**2) * rng.normal(size=n))


def flip_exactly(clean, flip_rate, rng):
    """Negate exactly round(ε·n) of the clean margins, chosen at random: the true flip rate is ε itself."""
    flipped = np.zeros(clean.size, dtype=bool)
    flipped[rng.permutation(clean.size)[: round(flip_rate * clean.size)]] = True
    return np.where(flipped, -clean, clean), flipped


def noisy_margins(clean_density, flip_rate, seed=0, n=N_PAIRS):
    rng = np.random.default_rng(seed)
    return flip_exactly(clean_density(rng, n), flip_rate, rng)


def calibrated_margins(flip_rate, seed=0, n=N_PAIRS):
    """Margins for which σ(z) is exactly the probability that the labeled preference is the true one.

    Each pair has a model log-odds s that answer A is better; the true preference is drawn from σ(s) (so the model is
    calibrated by construction); the annotator reports it, flipped with probability ε. z is s oriented to the label.
    """
    rng = np.random.default_rng(seed)
    log_odds = rng.normal(1.0, 1.5, n)
    a_truly_better = rng.random(n) < 1 / (1 + np.exp(-log_odds))
    flipped = np.zeros(n, dtype=bool)
    flipped[rng.permutation(n)[: round(flip_rate * n)]] = True
    labeled_a = a_truly_better ^ flipped
    return np.where(labeled_a, log_odds, -log_odds), flipped


def gaussian_mixture_density(x, weights, means, sd):
    normal = [np.exp(-((x - m) ** 2) / (2 * sd**2)) / (sd * math.sqrt(2 * math.pi)) for m in means]
    return sum(w * density for w, density in zip(weights, normal))


def logistic(x):
    return 1 / (1 + np.exp(-x))


# --- symmetric_mixture: recovery -------------------------------------------------------------------------------------


@pytest.mark.parametrize("flip_rate", FLIP_RATES)
def test_symmetric_mixture_recovers_the_flip_rate_of_gaussian_margins_within_003(flip_rate):
    z, _ = noisy_margins(gaussian_clean, flip_rate)
    assert abs(estimate_noise(z, "symmetric_mixture", n_bootstrap=0).flip_rate - flip_rate) <= 0.03


@pytest.mark.parametrize("clean_density", [two_bump_clean, skew_normal_clean])
@pytest.mark.parametrize("flip_rate", FLIP_RATES)
def test_symmetric_mixture_recovers_the_flip_rate_of_skewed_margins_within_004(clean_density, flip_rate):
    z, _ = noisy_margins(clean_density, flip_rate)
    assert abs(estimate_noise(z, "symmetric_mixture", n_bootstrap=0).flip_rate - flip_rate) <= 0.04


@pytest.mark.parametrize("clean_density", [gaussian_clean, two_bump_clean, skew_normal_clean])
def test_clean_margins_give_a_flip_rate_near_zero(clean_density):
    z, _ = noisy_margins(clean_density, 0.0, seed=1)
    assert estimate_noise(z, "symmetric_mixture", n_bootstrap=0).flip_rate <= 0.02


def test_symmetric_mixture_does_not_depend_on_the_margins_scale():
    """β only rescales z; the flip structure is scale-free, so ε̂ must not move (unlike calibrated_em's)."""
    z, _ = noisy_margins(two_bump_clean, 0.2)
    rates = [estimate_noise(z * scale, n_bootstrap=0).flip_rate for scale in (0.1, 1.0, 10.0)]
    assert max(rates) - min(rates) <= 0.005


def test_memorised_flips_look_clean_so_the_flip_rate_is_underestimated():
    """Documents the failure mode: half the flipped pairs memorised (margin back on the clean side) → ε̂ ≈ ε/2."""
    rng = np.random.default_rng(0)
    clean = gaussian_clean(rng, N_PAIRS)
    z, flipped = flip_exactly(clean, 0.3, rng)
    memorised = flipped & (rng.random(N_PAIRS) < 0.5)
    z = np.where(memorised, clean, z)
    assert abs(estimate_noise(z, n_bootstrap=0).flip_rate - 0.3 * (1 - memorised.sum() / flipped.sum())) <= 0.03


# --- posteriors ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(ESTIMATORS))
@pytest.mark.parametrize("clean_density", [gaussian_clean, two_bump_clean])
def test_the_probability_of_a_flip_never_rises_with_the_margin(method, clean_density):
    z, _ = noisy_margins(clean_density, 0.25)
    estimate = estimate_noise(z, method, n_bootstrap=0)
    by_margin = estimate.p_flipped[np.argsort(z)]
    assert np.all(np.diff(by_margin) <= 1e-12)
    assert by_margin[0] > 0.5 > by_margin[-1]  # the most contradicted pair is suspect, the most agreed one is not


def test_symmetric_mixture_posterior_is_bayes_rule_with_the_fitted_density():
    z, _ = noisy_margins(two_bump_clean, 0.2)
    estimate = estimate_noise(z, "symmetric_mixture", n_bootstrap=0)
    eps, params = estimate.flip_rate, estimate.params
    assert len(params["weights"]) == len(params["means"]) and math.isclose(sum(params["weights"]), 1.0)
    assert min(params["means"]) >= 0 and params["sd"] > 0
    # The mixture is fitted to t = z / s or asinh(z / s), as params say; odd T: f_Z(−z)/f_Z(z) = f_T(−t)/f_T(t).
    t = z / params["scale"] if params["transform"] == "linear" else np.arcsinh(z / params["scale"])
    moderate = np.abs(t) < 5 * np.median(np.abs(t))  # where the densities written out directly do not underflow
    f_z = gaussian_mixture_density(t[moderate], params["weights"], params["means"], params["sd"])
    f_mirror = gaussian_mixture_density(-t[moderate], params["weights"], params["means"], params["sd"])
    by_hand = eps * f_mirror / ((1 - eps) * f_z + eps * f_mirror)
    np.testing.assert_allclose(estimate.p_flipped[moderate], by_hand, rtol=1e-9, atol=1e-12)


def test_symmetric_mixture_flip_rate_is_the_mean_posterior():
    """At a maximum of the likelihood, the EM update ε ← mean P(flipped | z) leaves ε where it is."""
    z, _ = noisy_margins(two_bump_clean, 0.2)
    estimate = estimate_noise(z, "symmetric_mixture", n_bootstrap=0)
    assert abs(estimate.p_flipped.mean() - estimate.flip_rate) <= 2e-3  # the fit runs on binned margins


def test_calibrated_em_posterior_is_the_re_po_formula_and_its_fixed_point():
    z, _ = calibrated_margins(0.2)
    estimate = estimate_noise(z, "calibrated_em", n_bootstrap=0)
    eps = estimate.flip_rate
    by_hand = eps * logistic(-z) / ((1 - eps) * logistic(z) + eps * logistic(-z))
    np.testing.assert_allclose(estimate.p_flipped, by_hand, rtol=1e-9, atol=1e-12)
    assert abs(by_hand.mean() - eps) <= 2e-3  # ε ← mean P(flipped | z) has converged (on binned margins)


# --- calibrated_em ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flip_rate", FLIP_RATES)
def test_calibrated_em_recovers_the_flip_rate_when_the_model_is_calibrated_within_003(flip_rate):
    z, _ = calibrated_margins(flip_rate)
    assert abs(estimate_noise(z, "calibrated_em", n_bootstrap=0).flip_rate - flip_rate) <= 0.03


def test_calibrated_em_is_biased_by_miscalibration():
    """Documents the failure mode: the same pairs, margins × 2 (over-confident) or × ½ (under-confident)."""
    z, _ = calibrated_margins(0.2)
    rate = {scale: estimate_noise(z * scale, "calibrated_em", n_bootstrap=0).flip_rate for scale in (0.5, 1.0, 2.0)}
    assert abs(rate[1.0] - 0.2) <= 0.03
    assert rate[2.0] > 0.2 + 0.05 and rate[0.5] < 0.2 - 0.05


# --- intervals, determinism, order -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method, margins", [("symmetric_mixture", noisy_margins(gaussian_clean, 0.2)[0]),
                                             ("calibrated_em", calibrated_margins(0.2)[0])])
def test_the_interval_contains_the_true_flip_rate_and_has_the_stated_level(method, margins):
    estimate = estimate_noise(margins, method, interval_level=0.9, seed=3)
    low, high = estimate.interval
    assert low <= 0.2 <= high and low <= estimate.flip_rate <= high
    assert high - low < 0.1  # 4000 pairs: a few points wide, not the whole range
    assert estimate.interval_level == 0.9 and estimate.n_bootstrap > 0
    narrower = estimate_noise(margins, method, interval_level=0.5, seed=3)
    assert narrower.interval_level == 0.5 and low <= narrower.interval[0] <= narrower.interval[1] <= high


def test_the_same_seed_gives_the_same_estimate_and_another_seed_another_interval():
    z, _ = noisy_margins(gaussian_clean, 0.2)
    first, again = estimate_noise(z, seed=7), estimate_noise(z, seed=7)
    assert first.interval == again.interval and first.flip_rate == again.flip_rate
    np.testing.assert_array_equal(first.p_flipped, again.p_flipped)
    other = estimate_noise(z, seed=8)
    assert other.flip_rate == first.flip_rate and other.interval != first.interval


@pytest.mark.parametrize("method", sorted(ESTIMATORS))
def test_input_order_does_not_matter_and_posteriors_follow_their_pairs(method):
    z, _ = noisy_margins(two_bump_clean, 0.2)
    order = np.random.default_rng(5).permutation(z.size)
    original, shuffled = estimate_noise(z, method, seed=1), estimate_noise(z[order], method, seed=1)
    assert shuffled.flip_rate == original.flip_rate and shuffled.interval == original.interval
    np.testing.assert_array_equal(shuffled.p_flipped, original.p_flipped[order])


def test_the_estimate_is_a_frozen_record_that_describes_itself():
    z, _ = noisy_margins(gaussian_clean, 0.2)
    estimate = estimate_noise(z)
    assert isinstance(estimate, NoiseEstimate) and estimate.method == "symmetric_mixture"
    assert estimate.p_flipped.shape == z.shape
    with pytest.raises(ValueError):
        estimate.p_flipped[0] = 1.0
    low, high = estimate.interval
    assert estimate.describe() == (f"about {100 * estimate.flip_rate:.0f}% ({100 * low:.0f}–{100 * high:.0f}%, 90% "
                                   f"bootstrap interval) of these 4,000 labels look flipped (symmetric_mixture)")
    no_interval = estimate_noise(z, n_bootstrap=0)
    assert np.isnan(no_interval.interval).all() and "interval" not in no_interval.describe()


def test_a_torch_tensor_is_accepted():
    torch = pytest.importorskip("torch")
    z, _ = noisy_margins(gaussian_clean, 0.2)
    z32 = z.astype(np.float32)
    from_tensor = estimate_noise(torch.from_numpy(z32).requires_grad_(), n_bootstrap=0)
    assert from_tensor.flip_rate == estimate_noise(z32, n_bootstrap=0).flip_rate


# --- bad input -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("margins, message", [
    ([], "empty"),
    ([1.0, float("nan"), 2.0, float("nan"), float("inf")], "2 NaN and 1 infinite"),
    (np.ones((3, 2)), "1-D"),
    (np.zeros(100), "all 100 margins equal 0"),
    ([2.5, 2.5, 2.5], "all 3 margins equal 2.5"),
])
@pytest.mark.parametrize("method", sorted(ESTIMATORS))
def test_bad_margins_raise_a_value_error_that_says_what_is_wrong(method, margins, message):
    with pytest.raises(ValueError, match=message):
        estimate_noise(margins, method)


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="gmm"), "method must be one of"),
    (dict(interval_level=1.0), "interval_level"),
    (dict(n_bootstrap=-1), "n_bootstrap"),
])
def test_bad_settings_raise_a_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        estimate_noise([0.5, 1.0, -0.2], **kwargs)


# --- outliers, heavy tails and the margins' unit (issue 19, faults 2 and 10) -----------------------------------------


def flipped_gaussian(n=2000, flip_rate=0.2, seed=0):
    """The red-team's shape: n margins from N(2, 1), exactly round(ε·n) of them negated."""
    return noisy_margins(lambda rng, size: rng.normal(2.0, 1.0, size), flip_rate, seed=seed, n=n)[0]


@pytest.mark.parametrize("outlier", [50.0, -50.0, 1e4, -1e4, 1e300])
def test_one_huge_margin_does_not_silence_the_estimate(outlier):
    """Before: 0.207 without it, 0.000 with +50, 0.012 with −50, 0.000 with ±1e4. The truth is 400 flipped of 2,000
    (the one pair more moves it by 1e-4)."""
    z = np.r_[flipped_gaussian(), outlier]
    assert abs(estimate_noise(z, n_bootstrap=0).flip_rate - 0.2) <= 0.03


def test_a_few_huge_margins_on_both_sides_do_not_silence_the_estimate():
    """1% of the pairs (chosen at random, so 20% of those flipped too) have their margin replaced by ±1,000."""
    rng = np.random.default_rng(2)
    z = flipped_gaussian()
    replaced = rng.permutation(z.size)[:20]
    z[replaced] = np.sign(z[replaced]) * 1000.0
    assert abs(estimate_noise(z, n_bootstrap=0).flip_rate - 0.2) <= 0.03


def test_a_heavy_tailed_spread_of_margins_does_not_silence_the_estimate():
    """Each margin times its own lognormal(0, 1) factor: a positive factor keeps every sign, so 20% are still flipped
    (before: 0.015)."""
    z = flipped_gaussian() * np.exp(np.random.default_rng(1).normal(0.0, 1.0, 2000))
    assert abs(estimate_noise(z, n_bootstrap=0).flip_rate - 0.2) <= 0.04


@pytest.mark.parametrize("unit", [1e154, 1e-200])
def test_margins_at_the_ends_of_float64_give_the_same_estimate_and_quickly(unit):
    """Before: NaN ("about nan%") after the EM's 1,000 cycles, 24 s."""
    z = flipped_gaussian()
    plain, scaled = estimate_noise(z, n_bootstrap=0), estimate_noise(z * unit, n_bootstrap=0)
    assert abs(scaled.flip_rate - plain.flip_rate) <= 1e-3 and abs(plain.flip_rate - 0.2) <= 0.03
    assert np.isfinite(scaled.p_flipped).all() and "nan" not in scaled.describe()
    assert scaled.params["cycles"] < 100


@pytest.mark.parametrize("unit", [1e154, 1e-200])
def test_calibrated_em_gives_a_number_at_the_ends_of_float64(unit):
    """Not scale-free by design (it reads σ(z)), but never NaN. 1e154 is a model certain of every pair, so every
    negative margin is a flip to it: a share 0.8 Φ(−2) + 0.2 Φ(2) = 0.2137 of them. 1e-200 is one that is sure of
    nothing, which cannot tell."""
    estimate = estimate_noise(flipped_gaussian() * unit, "calibrated_em")
    assert np.isfinite(estimate.flip_rate) and np.isfinite(estimate.p_flipped).all()
    if unit > 1:
        assert estimate.flip_rate == pytest.approx(0.2137, abs=0.01) and not estimate.cannot_tell
    else:
        assert estimate.cannot_tell


@pytest.mark.parametrize("n_bootstrap", [2.5, True, False, 1, -1, "100", None])
@pytest.mark.parametrize("method", sorted(ESTIMATORS))
def test_n_bootstrap_must_be_a_whole_number_of_at_least_two_or_zero(method, n_bootstrap):
    z = flipped_gaussian(n=200)
    with pytest.raises(ValueError, match="n_bootstrap must be a whole number|n_bootstrap=1 cannot make an interval"):
        estimate_noise(z, method, n_bootstrap=n_bootstrap)
    with pytest.raises(ValueError, match="n_bootstrap"):  # the estimators called directly check it too
        ESTIMATORS[method](z, n_bootstrap=n_bootstrap)


def test_two_resamples_make_an_interval_and_numpy_integers_are_whole_numbers():
    z = flipped_gaussian(n=200)
    assert np.isfinite(estimate_noise(z, n_bootstrap=2).interval).all()
    assert estimate_noise(z, n_bootstrap=np.int64(3)).n_bootstrap == 3


# --- cannot tell -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(ESTIMATORS))
@pytest.mark.parametrize("flip_rate", [0.0, 0.25, 0.5])
def test_margins_that_do_not_separate_the_pairs_cannot_tell(method, flip_rate):
    """Clean margins N(0, 1): negating any share of them leaves N(0, 1), so every flip rate explains them equally."""
    z, _ = noisy_margins(lambda rng, n: rng.normal(0.0, 1.0, n), flip_rate)
    estimate = estimate_noise(z, method)
    assert estimate.cannot_tell and estimate.reason
    assert estimate.likelihood_interval[1] == pytest.approx(0.5, abs=1e-3)
    assert estimate.describe().startswith("cannot tell how many of these 4,000 labels are flipped: ")
    assert "look flipped" not in estimate.describe() and "bootstrap" not in estimate.describe()


def test_a_barely_trained_model_on_a_quarter_flipped_set_cannot_tell():
    """Clean margins N(0.2, 1): the model leans the right way on 58% of the pairs. With 25% flipped their density,
    0.75 N(0.2, 1) + 0.25 N(−0.2, 1), is 2.8e-6 nats per pair from N(0.1, 1.03), i.e. none flipped and a clean
    density at 0.1 (by quadrature): 0.006 nats over 2,000 pairs, where telling two rates apart takes about 1.4."""
    z, _ = noisy_margins(lambda rng, n: rng.normal(0.2, 1.0, n), 0.25, n=2000)
    estimate = estimate_noise(z)
    assert estimate.cannot_tell and "0.0%" not in estimate.describe()
    low, high = estimate.likelihood_interval
    assert low <= 0.25 <= high and high - low > 0.25


@pytest.mark.parametrize("flip_rate", FLIP_RATES)
def test_margins_that_separate_the_pairs_can_tell_and_their_likelihood_interval_holds_the_truth(flip_rate):
    z, _ = noisy_margins(gaussian_clean, flip_rate)
    estimate = estimate_noise(z, n_bootstrap=0)
    low, high = estimate.likelihood_interval
    assert not estimate.cannot_tell and estimate.reason == ""
    assert low - 0.01 <= flip_rate <= high + 0.01 and low <= estimate.flip_rate <= high and high - low < 0.1


def test_what_describe_prints_is_rounded():
    """Whole percent from 10% up, one decimal below (where whole percent would round a signal to 0), 0% for none."""
    clean = estimate_noise(noisy_margins(gaussian_clean, 0.0, seed=1)[0])
    assert clean.flip_rate == 0.0 and clean.describe().startswith("about 0% (")
    for z in (noisy_margins(gaussian_clean, 0.05)[0], noisy_margins(lambda rng, n: rng.normal(0.0, 1.0, n), 0.2)[0]):
        line = estimate_noise(z).describe()
        assert re.search(r"\d%", line) and not re.search(r"\d\.\d\d|e-\d", line), line


# --- `ropo_filter_ratio: auto` reads the same estimate ---------------------------------------------------------------


def test_auto_warns_when_an_epochs_margins_cannot_tell():
    from trl_robust.filter.auto import estimate_flip_rate

    z = np.random.default_rng(0).normal(0.0, 1.0, 2000)
    with pytest.warns(UserWarning, match="margins cannot tell how many labels are flipped.*fixed ropo_filter_ratio"):
        rate = estimate_flip_rate(z)
    assert rate == estimate_noise(z, n_bootstrap=0).flip_rate


def test_auto_is_silent_and_filters_when_the_margins_can_tell_despite_an_outlier():
    import warnings

    from trl_robust.filter.auto import auto_filter_ratio, estimate_flip_rate

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rate = estimate_flip_rate(np.r_[flipped_gaussian(), 1e4])
    assert abs(rate - 0.2) <= 0.03 and auto_filter_ratio([rate, rate]) == pytest.approx(rate)


def test_a_margin_of_exactly_zero_raises_no_numpy_warning():
    # The demo printed "RuntimeWarning: invalid value encountered in multiply": the asinh taming's far-field formula
    # is evaluated at z = 0 too (0 · log 0) before `np.where` discards it.
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(2, 1, 500), -rng.normal(2, 1, 100), [0.0, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        estimate = estimate_noise(z, n_bootstrap=0)
    assert 0.1 < estimate.flip_rate < 0.25  # 100 of 602 negated (0.166)
