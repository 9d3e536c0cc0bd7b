"""ROPO's per-step noisy-sample filtering: which pairs it distrusts, the loss it trains on, its metrics and settings."""

import math

import pytest
import torch
from datasets import Dataset
from torch.testing import assert_close
from transformers import AutoModelForCausalLM

from trl_robust import RobustDPOTrainer
from trl_robust.data import flip_preferences
from trl_robust.filtering import filtered_loss, n_suspected, suspected_pairs
from trl_robust.tiny import tiny_preference_records

from .conftest import first_batch, independent_logps, perturb_, train_args


def ropo(z, alpha=14.0):  # written out again, independently of trl_robust.losses
    c = 4 * alpha / (1 + alpha) ** 2
    return c * torch.log1p(torch.exp(-z)) + c * alpha / (1 + torch.exp(z))


# --- the pure functions ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio, n, expected", [(0.25, 8, 2), (0.5, 5, 2), (0.29, 100, 29), (0.1, 9, 0), (0.0, 64, 0)])
def test_the_filter_distrusts_the_floor_of_ratio_times_n(ratio, n, expected):
    assert n_suspected(ratio, n) == expected


def test_suspected_pairs_are_the_lowest_margins_with_ties_to_the_earlier():
    z = torch.tensor([0.5, -2.0, 3.0, -1.0, -2.0])
    # ρ = 0.4 of 5 → 2 pairs: the two −2.0 (rows 1 and 4); ρ = 0.6 → 3: also −1.0 (row 3).
    assert suspected_pairs(z, 0.4).tolist() == [False, True, False, False, True]
    assert suspected_pairs(z, 0.6).tolist() == [False, True, False, True, True]
    # All equal (the first step, policy = reference): the first k, deterministically.
    assert suspected_pairs(torch.zeros(4), 0.5).tolist() == [True, True, False, False]


def test_dropped_pairs_weigh_nothing_and_the_mean_is_over_the_kept_ones():
    # ℓ(z) = 1 − z for readable numbers; z = (1, −2, 0, 3), pair 1 suspected: kept losses 0, 1, −2 → mean −1/3.
    z = torch.tensor([1.0, -2.0, 0.0, 3.0])
    suspected = torch.tensor([False, True, False, False])
    loss = filtered_loss(lambda t: 1 - t, z, suspected, "drop", n_global=4, k_global=1)
    assert_close(loss, torch.tensor([0.0, 0.0, 1.0, -2.0]) * 4 / 3)
    assert_close(loss.mean(), torch.tensor(-1 / 3))


def test_corrected_pairs_are_trained_with_the_labels_swapped():
    # Swapping chosen and rejected negates the margin: ℓ(−z) = 1 + z on the suspected pair, no rescaling.
    z = torch.tensor([1.0, -2.0, 0.0, 3.0])
    suspected = torch.tensor([False, True, False, False])
    loss = filtered_loss(lambda t: 1 - t, z, suspected, "correct", n_global=4, k_global=1)
    assert_close(loss, torch.tensor([0.0, -1.0, 1.0, -2.0]))


# --- through the trainer ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["drop", "correct"])
def test_the_trained_loss_filters_the_lowest_margins_of_the_batch(tiny_model_path, tmp_path, mode):
    pairs = flip_preferences(Dataset.from_list(tiny_preference_records(n=16, seed=0)), 0.5, seed=1)
    args = train_args(
        tmp_path, loss_type="ropo", per_device_train_batch_size=8, ropo_filter_ratio=0.25, ropo_filter_mode=mode
    )
    trainer = RobustDPOTrainer(model=tiny_model_path, args=args, train_dataset=pairs)
    perturb_(trainer.model, seed=3, scale=0.2)
    trainer.model.train()
    batch = first_batch(trainer)
    flipped = batch["label_flipped"].clone()  # the collator passes the flip record through
    loss = trainer.compute_loss(trainer.model, batch)

    # Independent: margins from plain logits of the perturbed policy and the saved reference.
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    policy_chosen, policy_rejected = independent_logps(trainer.model, batch).double().chunk(2)
    ref_chosen, ref_rejected = independent_logps(reference, batch).double().chunk(2)
    z = args.beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    lowest = z.argsort()[:2]  # ⌊0.25 · 8⌋ = 2 pairs
    suspected = torch.zeros(8, dtype=torch.bool)
    suspected[lowest] = True
    if mode == "drop":
        expected = ropo(z[~suspected]).mean()
    else:
        expected = torch.where(suspected, ropo(-z), ropo(z)).mean()
    assert_close(loss.double().item(), expected.item(), atol=2e-5, rtol=2e-5)

    metrics = trainer._metrics["train"]
    assert metrics["ropo/filtered_frac"][-1] == pytest.approx(0.25)
    assert metrics["ropo/filter_precision"][-1] == pytest.approx(flipped[suspected].float().mean().item())


def test_filtering_waits_for_the_warm_up_and_never_touches_evaluation(tiny_model_path, preference_dataset, tmp_path):
    args = train_args(
        tmp_path, loss_type="ropo", max_steps=4, ropo_filter_ratio=0.5, ropo_filter_warmup_steps=2,
        eval_strategy="steps", eval_steps=4,
    )
    trainer = RobustDPOTrainer(
        model=tiny_model_path, args=args, train_dataset=preference_dataset, eval_dataset=preference_dataset
    )
    trainer.train()
    per_step = {e["step"]: e["ropo/filtered_frac"] for e in trainer.state.log_history if "ropo/filtered_frac" in e}
    assert per_step == {1: 0.0, 2: 0.0, 3: 0.5, 4: 0.5}
    # No data has a flip record here, so no precision; evaluation reports the plain loss, unfiltered.
    assert not any("filter_precision" in key for e in trainer.state.log_history for key in e)
    evaluation = [e for e in trainer.state.log_history if "eval_loss" in e][-1]
    assert "eval_ropo/filtered_frac" not in evaluation
    plain = RobustDPOTrainer(
        model=trainer.model, ref_model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
        args=train_args(tmp_path, loss_type="ropo"), eval_dataset=preference_dataset,
        train_dataset=preference_dataset,
    )
    assert math.isclose(plain.evaluate()["eval_loss"], evaluation["eval_loss"], rel_tol=1e-5)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"ropo_filter_ratio": 1.0}, r"`ropo_filter_ratio` must be in \[0, 1\)"),
        ({"ropo_filter_ratio": -0.1}, r"`ropo_filter_ratio` must be in \[0, 1\)"),
        ({"ropo_filter_ratio": math.nan}, "`ropo_filter_ratio` must be a finite"),
        ({"ropo_filter_warmup_steps": -1}, "`ropo_filter_warmup_steps` must be a whole number"),
        ({"ropo_filter_mode": "swap"}, r"`ropo_filter_mode` must be one of \['drop', 'correct'\]"),
        ({"loss_type": "sigmoid", "ropo_filter_ratio": 0.2}, "filters the pairs of trl-robust's loss types"),
        ({"loss_type": ["drdpo"], "ropo_filter_ratio": 0.2}, r"cannot be combined with \['drdpo'\]"),
    ],
)
def test_bad_filter_settings_are_refused_at_construction(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train_args(tmp_path, **{"loss_type": "ropo", **overrides})
