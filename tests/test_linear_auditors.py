"""The linear auditors of `benchmarks/linear_auditors.py`: their features are the true reward's form (checked against
`RewardModel` itself), their fit is the maximum of the stated likelihood (closed forms by hand, and scikit-learn's
logistic regression), and their out-of-fold margins never see the pair they score. The script's `--quick` run is in
`test_benchmark_scripts.py`, after the identification study's, whose task and baseline it reuses."""

import math
import random

import numpy as np
import pytest

from trl_robust.experiments.synthetic import REWARD_KINDS, RewardModel, random_prompts
from trl_robust.tiny import WORDS

from .benchmark_modules import benchmark_module

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def auditors():
    with benchmark_module("linear_auditors") as module:
        yield module


@pytest.mark.parametrize("kind", REWARD_KINDS)
def test_the_true_reward_is_linear_in_the_true_form_features(auditors, kind):
    reward = RewardModel.from_seed(3, kind)
    scores = np.array([reward.scores[w] for w in WORDS])
    # The second block carries the extra (topic_weight − 1) of each named word's score, or the stance scores t(w).
    weights = (np.concatenate([scores, (reward.topic_weight - 1) * scores]) if reward.topic_weight != 1
               else np.concatenate([scores, [reward.stance_scores[w] for w in WORDS]]) if reward.stance_scores
               else scores)
    rng = random.Random(0)
    for prompt in random_prompts(50, rng):
        response = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 7)))
        phi = auditors.true_form_features(reward, prompt, response, WORDS)
        assert weights @ phi == pytest.approx(reward(prompt, response))


def test_bag_of_tokens_counts_each_vocabulary_token_of_the_response(auditors):
    from trl_robust.tiny import make_tokenizer

    vocabulary = make_tokenizer().get_vocab()
    pairs = [{"prompt": "red", "chosen": " big big dog", "rejected": " dog eats"}]
    (x,) = auditors.bag_of_tokens_features(pairs)
    expected = np.zeros(len(vocabulary))
    expected[vocabulary["big"]], expected[vocabulary["eats"]] = 2, -1  # "dog" cancels
    np.testing.assert_array_equal(x, expected)
    # The summed reward of the third task is linear in it: its word scores placed on their tokens.
    reward = RewardModel.from_seed(0, "sum")
    scores = np.zeros(len(vocabulary))
    for word, score in reward.scores.items():
        scores[vocabulary[word]] = score
    assert scores @ x == pytest.approx(reward("red", "big big dog") - reward("red", "dog eats"))


def test_the_fit_is_bradley_terry_or_the_flip_likelihood_in_closed_form(auditors):
    # One feature: a pairs read x = +1 and b read x = −1 (their labels flipped). Without a ridge the likelihood's
    # maximum has p(w) = a / (a + b), with p(w) = σ(w) for Bradley–Terry and (1 − ε) σ(w) + ε σ(−w) at rate ε.
    a, b = 70, 30
    x = np.array([[1.0]] * a + [[-1.0]] * b)
    assert auditors.fit_linear(x, 0.0, l2=0.0)[0] == pytest.approx(math.log(a / b), abs=1e-5)
    epsilon = 0.2
    sigma = (a / (a + b) - epsilon) / (1 - 2 * epsilon)  # σ(w) solving (1 − ε) σ + ε (1 − σ) = a / (a + b)
    assert auditors.fit_linear(x, epsilon, l2=0.0)[0] == pytest.approx(math.log(sigma / (1 - sigma)), abs=1e-5)


def test_the_bradley_terry_fit_matches_scikit_learn(auditors):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5)) + 0.3
    # Each pair also as its mirror labelled 0 doubles the loss: sklearn's C Σ loss + ½|w|² then has our optimum at
    # C = 1 / (2 l2), without an intercept.
    l2 = 0.5
    reference = LogisticRegression(C=1 / (2 * l2), fit_intercept=False, tol=1e-10, max_iter=10_000).fit(
        np.vstack([x, -x]), np.r_[np.ones(len(x)), np.zeros(len(x))]).coef_[0]
    np.testing.assert_allclose(auditors.fit_linear(x, 0.0, l2=l2), reference, atol=1e-4)


def test_an_out_of_fold_margin_does_not_see_its_own_pair(auditors):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3)) + 0.5
    z = auditors.out_of_fold_margins(x, seed=7)
    # Reversing pair 5's label (its row negated) leaves the model that scores it unchanged: its margin only turns.
    reversed_row = x.copy()
    reversed_row[5] *= -1
    z_reversed = auditors.out_of_fold_margins(reversed_row, seed=7)
    assert z_reversed[5] == pytest.approx(-z[5])
    # It does change the other fold's model, which was fitted on it.
    fold = np.random.default_rng(7).permutation(len(x))
    other = fold[1::2] if 5 in fold[0::2] else fold[0::2]
    assert not np.allclose(z_reversed[other], z[other])


def test_the_guards_keep_dpo_unless_the_noisy_validation_split_prefers_the_auditor_or_its_model(auditors):
    dpo = {"stopped": 0.80, "noisy_val": 0.60}
    retrained = {"stopped": 0.85, "noisy_val": 0.62}
    # The auditor is more accurate on the noisy validation split: guarded in, and the relabelled model is picked.
    acts = auditors.guarded_acts(dpo, {"noisy_val_accuracy": 0.65, "retrained": retrained})
    assert acts["guarded_in"] and acts["picked"]
    assert acts["guarded"] == acts["picked_gain"] == pytest.approx(0.05)
    assert acts["auditor_lead"] == pytest.approx(0.05)
    # Less accurate (or tied, in TRL's float32): DPO is kept and the gain is 0.
    acts = auditors.guarded_acts(dpo, {"noisy_val_accuracy": float(np.float32(0.60)),
                                       "retrained": {**retrained, "noisy_val": 0.58}})
    assert not acts["guarded_in"] and not acts["picked"] and acts["guarded"] == acts["picked_gain"] == 0.0


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_the_fitted_flip_rate_finds_the_rate_of_flipped_deterministic_labels(auditors, rate):
    # Pairs whose true label is the sign of a linear score with wide margins (Bradley–Terry with a large |w| is
    # then deterministic), a share `rate` of them flipped: the profile likelihood's ε̂ is the flip rate.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 3))
    x *= np.sign(x @ np.array([3.0, -2.0, 1.0]))[:, None]  # every row labelled by its true sign...
    flipped = rng.random(len(x)) < rate
    x[flipped] *= -1  # ...then flipped
    assert auditors.fit_flip_rate(x) == pytest.approx(rate, abs=0.03)
