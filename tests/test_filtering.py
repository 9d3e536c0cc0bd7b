"""ROPO's noisy-sample filtering, per step and per epoch: which pairs it distrusts, the loss it trains on, its metrics
and settings."""

import math
import warnings

import pytest
import torch
from datasets import Dataset
from torch.testing import assert_close
from transformers import AutoModelForCausalLM

from trl_robust import RobustDPOTrainer
from trl_robust.data import ROW_COLUMN, flip_preferences
from trl_robust.filter.rules import (
    filter_window,
    filtered_loss,
    n_suspected,
    rankable,
    running_suspected_pairs,
    suspected_pairs,
)
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


def test_a_margin_cap_keeps_only_the_suspects_the_model_disagrees_with():
    z = torch.tensor([0.5, -2.0, 3.0, -1.0, 0.2])
    # ρ = 0.6 of 5 → the 3 lowest (rows 1, 3, 4); with max_margin 0 only the two with z < 0 remain suspects.
    assert suspected_pairs(z, 0.6, max_margin=0.0).tolist() == [False, True, False, True, False]
    # The cap never adds pairs beyond the ρ share: 4 pairs are below 1.0, ρ still allows 3.
    assert suspected_pairs(z, 0.6, max_margin=1.0).tolist() == [False, True, False, True, True]
    # On data the model agrees with everywhere, nothing is distrusted.
    assert not suspected_pairs(torch.tensor([0.1, 0.4, 2.0]), 0.5, max_margin=0.0).any()


# --- the running (per-step) filter --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pairs_per_step, ratio, expected",
    # One optimizer step's pairs, but at least ⌈10/ρ⌉: 10/0.2 = 50, 10/0.25 = 40, 10/0.29 = 34.5 → 35.
    [(128, 0.2, 128), (4, 0.2, 50), (16, 0.25, 40), (40, 0.25, 40), (1, 0.29, 35), (16, 0.75, 16)],
)
def test_the_window_is_one_optimizer_step_of_pairs_with_a_floor_of_ten_suspects(pairs_per_step, ratio, expected):
    assert filter_window(pairs_per_step, ratio) == expected


def test_a_pair_is_distrusted_when_it_ranks_in_the_lowest_share_of_the_window():
    # Window = history + this micro-batch = [0.5, −1, 2 | −0.5, 3], m = 5, quota ⌊0.4 · 5 + 0⌋ = 2: the two lowest of
    # the window are −1 (history) and −0.5, so of this micro-batch only −0.5 is distrusted. Debt: 0.4 · 2 − 1 = −0.2.
    history, z = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([-0.5, 3.0])
    suspected, window, debt = running_suspected_pairs(z, history, torch.tensor(0.0), 0.4)
    assert suspected.tolist() == [True, False]
    assert window.tolist() == [0.5, -1.0, 2.0, -0.5, 3.0]
    assert debt.item() == pytest.approx(-0.2)
    # The debt lowers the next quota: window [−0.5, 3 | −2, −3], ⌊0.4 · 4 − 0.2⌋ = 1, so only the lowest, −3.
    suspected, _, debt = running_suspected_pairs(torch.tensor([-2.0, -3.0]), window[3:], debt, 0.4)
    assert suspected.tolist() == [False, True]
    assert debt.item() == pytest.approx(-0.2 + 0.8 - 1)
    # Without history or debt it is the batch's own ⌊ρ·n⌋ lowest, as `suspected_pairs`.
    z = torch.tensor([0.5, -2.0, 3.0, -1.0, -2.0])
    assert running_suspected_pairs(z, torch.empty(0), torch.tensor(0.0), 0.4)[0].tolist() == [
        False, True, False, False, True
    ]


def test_ties_go_to_the_older_margin_and_non_finite_margins_are_never_suspected():
    # All equal (policy = reference): the history ranks first, so this micro-batch loses nothing and owes the share.
    suspected, _, debt = running_suspected_pairs(torch.zeros(2), torch.zeros(1), torch.tensor(0.0), 0.5)
    assert suspected.tolist() == [False, False] and debt.item() == pytest.approx(1.0)
    z = torch.tensor([float("nan"), -float("inf"), 1.0])
    suspected, window, _ = running_suspected_pairs(z, torch.empty(0), torch.tensor(0.0), 0.5)
    assert suspected.tolist() == [False, False, True]
    assert window.tolist() == [math.inf, math.inf, 1.0] == rankable(z).tolist()


@pytest.mark.parametrize("per_device, accumulation", [(1, 4), (1, 8), (2, 4), (4, 8)])
@pytest.mark.parametrize("drift", [0.0, 0.01])
def test_the_running_filter_realises_its_share_and_picks_low_margins(per_device, accumulation, drift):
    # 4000 pairs of i.i.d. standard normal margins (plus a drift per micro-batch, as margins grow in training). The old
    # per-micro-batch rule, ⌊0.2 · n⌋ of each, distrusted none of them for n ≤ 4.
    ratio, n = 0.2, per_device
    window = filter_window(per_device * accumulation, ratio)
    generator = torch.Generator().manual_seed(0)
    history, debt = torch.empty(0), torch.tensor(0.0)
    distrusted = truly_low = 0
    for t in range(4000 // n):
        noise = torch.randn(n, generator=generator)
        suspected, kept, debt = running_suspected_pairs(noise + drift * t, history, debt, ratio)
        history = kept[max(len(kept) - (window - n), 0) :]
        distrusted += int(suspected.sum())
        truly_low += int((suspected & (noise < -0.8416)).sum())  # the standard normal's 20% quantile
    # The count is ρ·S − debt exactly. The debt reverts to 0 by a factor (1 − n/W) per micro-batch, so its spread
    # is about 2 pairs here; 6 pairs (3 spreads) is the stated tolerance: 800 ± 6 of 4000, a share of 0.2 ± 0.0015.
    assert distrusted == pytest.approx(ratio * 4000 - debt.item(), abs=1e-3)
    assert abs(distrusted - ratio * 4000) <= 6
    # Most suspects are among the truly lowest 20% (a margin-blind choice would score 0.2).
    assert truly_low / distrusted > 0.7


def test_a_margin_cap_makes_the_share_a_ceiling_without_running_up_a_debt():
    # Every margin positive and the cap at 0: nothing is distrusted, and the debt (counted before the cap) stays put.
    history, debt = torch.empty(0), torch.tensor(0.0)
    generator = torch.Generator().manual_seed(1)
    for _ in range(200):
        z = torch.rand(2, generator=generator) + 0.1
        suspected, kept, debt = running_suspected_pairs(z, history, debt, 0.25, max_margin=0.0)
        history = kept[-38:]
        assert not suspected.any()
    assert abs(debt.item()) <= 6  # the same tolerance as without the cap: it does not grow with the run


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
    # A batch of 16 at ρ 0.75: the window is the batch itself (16 ≥ 10/ρ), so each filtered step distrusts exactly
    # ⌊0.75 · 16⌋ = 12 of its pairs.
    args = train_args(
        tmp_path, loss_type="ropo", max_steps=4, ropo_filter_ratio=0.75, ropo_filter_warmup_steps=2,
        eval_strategy="steps", eval_steps=4, per_device_train_batch_size=16,
    )
    trainer = RobustDPOTrainer(
        model=tiny_model_path, args=args, train_dataset=preference_dataset, eval_dataset=preference_dataset
    )
    trainer.train()
    per_step = {e["step"]: e["ropo/filtered_frac"] for e in trainer.state.log_history if "ropo/filtered_frac" in e}
    assert per_step == {1: 0.0, 2: 0.0, 3: 0.75, 4: 0.75}
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
        ({"ropo_filter_scope": "batch"}, r"`ropo_filter_scope` must be one of \['step', 'epoch'\]"),
        ({"ropo_filter_max_margin": math.inf}, "`ropo_filter_max_margin` must be a finite"),
        ({"loss_type": "sigmoid", "ropo_filter_ratio": 0.2}, "filters the pairs of trl-robust's loss types"),
        ({"loss_type": ["drdpo"], "ropo_filter_ratio": 0.2}, r"cannot be combined with \['drdpo'\]"),
    ],
)
def test_bad_filter_settings_are_refused_at_construction(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train_args(tmp_path, **{"loss_type": "ropo", **overrides})


# --- the per-epoch scope ------------------------------------------------------------------------------------------------


def epoch_args(tmp_path, **overrides):
    return train_args(
        tmp_path, loss_type="ropo", ropo_filter_ratio=0.25, ropo_filter_scope="epoch", max_steps=-1, **overrides
    )


def independent_margins(trainer, reference_path):
    """β·Δ of every training row, from plain logits of the current policy and the saved reference, by row index."""
    loader = trainer.get_eval_dataloader(trainer.train_dataset)  # TRL's tokenisation and collator, no shuffling
    reference = AutoModelForCausalLM.from_pretrained(reference_path).eval()
    trainer.model.eval()
    margins = {}
    for batch in loader:
        batch = trainer._prepare_inputs(batch)
        policy_chosen, policy_rejected = independent_logps(trainer.model, batch).double().chunk(2)
        ref_chosen, ref_rejected = independent_logps(reference, batch).double().chunk(2)
        z = trainer.args.beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
        margins.update(zip(batch[ROW_COLUMN].tolist(), z.tolist()))
    return margins


def test_the_epoch_filter_distrusts_the_lowest_margins_of_the_whole_training_set(tiny_model_path, tmp_path):
    pairs = Dataset.from_list(tiny_preference_records(n=24, seed=0))
    trainer = RobustDPOTrainer(model=tiny_model_path, args=epoch_args(tmp_path), train_dataset=pairs)
    perturb_(trainer.model, seed=5, scale=0.2)

    suspects = trainer._choose_epoch_suspects()

    margins = independent_margins(trainer, tiny_model_path)
    assert sorted(margins) == list(range(24))  # every input row, once
    lowest = sorted(margins, key=lambda row: (margins[row], row))[:6]  # ⌊0.25 · 24⌋ = 6 rows
    assert sorted(suspects) == sorted(lowest)
    # With a margin cap, only those of them below it.
    third, fourth = sorted(margins.values())[2:4]
    cap = (third + fourth) / 2  # between the 3rd and 4th lowest: keeps 3 of the 6
    trainer.args.ropo_filter_max_margin = cap
    capped = sorted(row for row in lowest if margins[row] < cap)
    assert len(capped) == 3 and sorted(trainer._choose_epoch_suspects()) == capped
    # The scoring pass left TRL's evaluation metrics as they were (nothing to log from it).
    assert not trainer._metrics["eval"]


@pytest.mark.parametrize("mode", ["drop", "correct"])
def test_the_epoch_filters_suspects_are_dropped_or_swapped_in_the_trained_loss(tiny_model_path, tmp_path, mode):
    pairs = Dataset.from_list(tiny_preference_records(n=16, seed=0))
    args = epoch_args(tmp_path, per_device_train_batch_size=8, ropo_filter_mode=mode)
    trainer = RobustDPOTrainer(model=tiny_model_path, args=args, train_dataset=pairs)
    perturb_(trainer.model, seed=3, scale=0.2)
    trainer.model.train()
    batch = first_batch(trainer)
    rows = batch[ROW_COLUMN].tolist()
    trainer._set_epoch_suspects([rows[1], rows[6], rows[7]])  # 3 of this batch's 8 pairs
    loss = trainer.compute_loss(trainer.model, dict(batch))

    margins = independent_margins(trainer, tiny_model_path)
    z = torch.tensor([margins[row] for row in rows], dtype=torch.float64)
    suspected = torch.tensor([i in (1, 6, 7) for i in range(8)])
    expected = ropo(z[~suspected]).mean() if mode == "drop" else torch.where(suspected, ropo(-z), ropo(z)).mean()
    assert_close(loss.double().item(), expected.item(), atol=2e-5, rtol=2e-5)
    assert trainer._metrics["train"]["ropo/filtered_frac"][-1] == pytest.approx(3 / 8)

    # A batch made only of suspects trains on nothing when dropping (not on NaN from 0/0).
    trainer.model.train()
    trainer._set_epoch_suspects(rows)
    loss = trainer.compute_loss(trainer.model, dict(batch))
    assert math.isfinite(loss.item())
    if mode == "drop":
        assert loss.item() == 0.0


def test_the_epoch_filter_starts_after_the_first_epoch_and_the_warm_up(tiny_model_path, tmp_path):
    # 16 pairs in batches of 4: epochs begin at steps 0, 4, 8. The warm-up of 5 steps rules out the start of epoch 1.
    pairs = flip_preferences(Dataset.from_list(tiny_preference_records(n=16, seed=0)), 0.25, seed=1)
    args = epoch_args(tmp_path, num_train_epochs=3, ropo_filter_warmup_steps=5)
    scored_at = []

    class Trainer(RobustDPOTrainer):
        def _choose_epoch_suspects(self):
            scored_at.append(self.state.global_step)
            suspects = super()._choose_epoch_suspects()
            self.chosen = suspects
            return suspects

    trainer = Trainer(model=tiny_model_path, args=args, train_dataset=pairs)
    trainer.train()
    assert scored_at == [8]
    log = {e["step"]: e for e in trainer.state.log_history if "loss" in e}
    fractions = [log[step]["ropo/filtered_frac"] for step in range(1, 13)]
    assert fractions[:8] == [0.0] * 8
    assert sum(fractions[8:]) * 4 == pytest.approx(4)  # the ⌊0.25 · 16⌋ = 4 suspects, each seen once in epoch 2
    # Precision: the logged per-step values, weighted by the suspects in each step, recover the share of the 4
    # suspects whose labels were flipped.
    flipped = {row for row, flag in enumerate(pairs["label_flipped"]) if flag}
    weighted = sum(log[s]["ropo/filter_precision"] * log[s]["ropo/filtered_frac"] * 4 for s in range(9, 13)
                   if "ropo/filter_precision" in log[s])
    assert weighted == pytest.approx(len(flipped & set(trainer.chosen)))
    # The scoring pass logged nothing of its own.
    assert not any(key.startswith("ropo_filter") for e in trainer.state.log_history for key in e)


def test_the_epoch_filter_refuses_a_streamed_dataset_before_loading_a_model(no_model_loading, tmp_path):
    pairs = Dataset.from_list(tiny_preference_records(n=8, seed=0)).to_iterable_dataset()
    with pytest.raises(ValueError, match="needs a map-style `datasets.Dataset`.*ropo_filter_scope='step'"):
        RobustDPOTrainer(model="unused-model", args=epoch_args(tmp_path), train_dataset=pairs)


def test_the_epoch_filter_refuses_a_dataset_with_its_reserved_column(no_model_loading, tmp_path):
    pairs = Dataset.from_list(tiny_preference_records(n=8, seed=0))
    pairs = pairs.add_column(ROW_COLUMN, list(range(8)))
    with pytest.raises(ValueError, match="reserves; rename it"):
        RobustDPOTrainer(model="unused-model", args=epoch_args(tmp_path), train_dataset=pairs)


def test_the_epoch_filter_warns_when_the_run_has_a_single_epoch(tiny_model_path, preference_dataset, tmp_path):
    trainer = RobustDPOTrainer(model=tiny_model_path, args=epoch_args(tmp_path, num_train_epochs=1),
                               train_dataset=preference_dataset)
    with pytest.warns(UserWarning, match="nothing will be filtered"):
        trainer.train()


# --- settings under which the filter cannot do what it says -------------------------------------------------------------


@pytest.mark.parametrize("scope", ["step", "epoch"])
@pytest.mark.parametrize(
    "overrides, total",
    [
        ({"max_steps": 3, "ropo_filter_warmup_steps": 3}, 3),
        # 16 pairs in batches of 4 for 2 epochs: 4 optimizer steps per epoch, 8 in all.
        ({"max_steps": -1, "num_train_epochs": 2, "ropo_filter_warmup_steps": 8}, 8),
        # ... and with 2 accumulation steps, 2 optimizer steps per epoch: 4 in all.
        ({"max_steps": -1, "num_train_epochs": 2, "gradient_accumulation_steps": 2, "ropo_filter_warmup_steps": 5}, 4),
    ],
)
def test_a_warm_up_as_long_as_the_run_is_named_at_construction(
    tiny_model_path, preference_dataset, tmp_path, scope, overrides, total
):
    args = train_args(tmp_path, loss_type="ropo", ropo_filter_ratio=0.25, ropo_filter_scope=scope, **overrides)
    warmup = overrides["ropo_filter_warmup_steps"]
    with pytest.warns(UserWarning, match=rf"ropo_filter_warmup_steps={warmup} is at or beyond the {total} optimizer"):
        RobustDPOTrainer(model=tiny_model_path, args=args, train_dataset=preference_dataset)


def test_a_warm_up_shorter_than_the_run_is_not_warned_about(tiny_model_path, preference_dataset, tmp_path):
    # 7 of 8 steps of warm-up leaves one step of 16 pairs at ρ 0.75: its window (16 ≥ 10/0.75) is that step.
    args = train_args(tmp_path, loss_type="ropo", ropo_filter_ratio=0.75, max_steps=8, ropo_filter_warmup_steps=7,
                      per_device_train_batch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        RobustDPOTrainer(model=tiny_model_path, args=args, train_dataset=preference_dataset)


def test_a_step_filter_run_shorter_than_its_window_says_so(tiny_model_path, preference_dataset, tmp_path):
    # 2 steps of 4 pairs after the warm-up at ρ 0.2: the window is ⌈10/0.2⌉ = 50 margins, the run has 8 pairs.
    args = train_args(tmp_path, loss_type="ropo", ropo_filter_ratio=0.2, max_steps=3, ropo_filter_warmup_steps=1)
    with pytest.warns(UserWarning, match="among the last 50 margins.*only 8 pairs after its 1 warm-up step:"):
        RobustDPOTrainer(model=tiny_model_path, args=args, train_dataset=preference_dataset)
