"""`ropo_filter_ratio: auto`: ρ from the flip rate estimated each epoch from the training steps' own margins.

The policy (`trl_robust.filter.auto`) is checked against values set by hand; the trainer's use of it against margins
computed independently of it, through real training, a resume and two processes.
"""

import json

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import DPOTrainer

from trl_robust import RobustDPOConfig, RobustDPOTrainer
from trl_robust.data import flip_preferences
from trl_robust.noise import estimate_noise
from trl_robust.filter.auto import FLOOR, UNIDENTIFIED, auto_filter_ratio, estimate_flip_rate
from trl_robust.filter.columns import rows_indexed_for_the_filter
from trl_robust.filter.state import check_resumed_rows
from trl_robust.tiny import tiny_preference_records

from .conftest import assert_same_logged_steps, logged_steps_worker, run_two_ranks, train_args
from .test_filtering import independent_margins
from .test_reliability import Interrupt



# --- the policy -------------------------------------------------------------------------------------------------------


def test_the_ratio_is_the_mean_of_the_last_two_usable_estimates():
    assert auto_filter_ratio([]) == 0.0
    assert auto_filter_ratio([0.3]) == pytest.approx(0.3)
    assert auto_filter_ratio([0.1, 0.3, 0.2]) == pytest.approx(0.25)  # (0.3 + 0.2) / 2: only the last two
    # None (nothing estimable) and estimates at the bound are skipped, not averaged in.
    assert auto_filter_ratio([0.2, None]) == pytest.approx(0.2)
    assert auto_filter_ratio([0.499999, 0.3]) == pytest.approx(0.3)
    assert auto_filter_ratio([0.1, 0.3, UNIDENTIFIED]) == pytest.approx(0.2)
    assert auto_filter_ratio([None, 0.499999]) == 0.0


def test_below_the_floor_nothing_is_filtered():
    assert auto_filter_ratio([FLOOR - 0.001]) == 0.0
    assert auto_filter_ratio([0.05, 0.12]) == pytest.approx(0.085)  # the mean is what must reach the floor
    assert auto_filter_ratio([0.04, 0.1]) == 0.0  # mean 0.07
    assert auto_filter_ratio([FLOOR]) == pytest.approx(FLOOR)


def test_the_epoch_estimate_is_the_mixture_estimate_and_refuses_uninformative_margins():
    rng = np.random.default_rng(0)
    clean = rng.normal(1.5, 1.0, 1600)
    flipped = -rng.normal(1.5, 1.0, 400)  # 20% flipped: the mirror image of the same density
    z = np.concatenate([clean, flipped])
    assert estimate_flip_rate(z) == pytest.approx(estimate_noise(z, n_bootstrap=0).flip_rate)
    assert abs(estimate_flip_rate(z) - 0.2) < 0.03
    assert abs(estimate_flip_rate(clean)) < 0.03
    assert estimate_flip_rate(np.zeros(50)) is None  # an untrained policy: every margin 0
    assert estimate_flip_rate([np.nan, 1.0]) is None  # one finite margin


# --- configuration ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["auto", "AUTO", " auto "])
def test_auto_is_read_from_text_and_chooses_the_epoch_scope(tmp_path, given):
    from trl_robust.filter.settings import filter_scope, filters

    args = train_args(tmp_path, loss_type="ropo", ropo_filter_ratio=given)
    assert args.ropo_filter_ratio == "auto" and filters(args) and filter_scope(args) == "epoch"
    fixed = train_args(tmp_path, loss_type="ropo", ropo_filter_ratio="0.2")  # the command line passes text
    assert fixed.ropo_filter_ratio == 0.2 and filter_scope(fixed) == "step"


def test_auto_with_the_step_scope_is_refused_and_says_why(tmp_path):
    with pytest.raises(ValueError, match="needs ropo_filter_scope='epoch'.*0.06 and 0.29.*fixed ratio"):
        train_args(tmp_path, loss_type="ropo", ropo_filter_ratio="auto", ropo_filter_scope="step")


@pytest.mark.parametrize("bad", ["half", "0.2x", "1.5", "-0.1"])
def test_a_bad_ratio_is_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="ropo_filter_ratio"):
        train_args(tmp_path, loss_type="ropo", ropo_filter_ratio=bad)


def test_auto_needs_a_robust_loss_type(tmp_path):
    with pytest.raises(ValueError, match="filters the pairs of trl-robust's loss types"):
        train_args(tmp_path, loss_type="sigmoid", ropo_filter_ratio="auto")


def test_the_command_line_reads_auto_from_yaml_and_flags(tmp_path):
    from trl_robust.cli.arguments import parse_dpo_args

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "model_name_or_path: builtin:tiny\ndataset_name: builtin:tiny\nloss_type: ropo\nropo_filter_ratio: auto\n"
        f"output_dir: {tmp_path / 'out'}\nuse_cpu: true\nbf16: false\n"
    )
    assert parse_dpo_args(["--config", str(recipe)]).training_args.ropo_filter_ratio == "auto"
    flagged = parse_dpo_args(["--config", str(recipe), "--ropo_filter_ratio", "0.3"])
    assert flagged.training_args.ropo_filter_ratio == 0.3


# --- the trainer --------------------------------------------------------------------------------------------------------


def noisy_pairs(n=48):
    return flip_preferences(Dataset.from_list(tiny_preference_records(n=n, seed=0)), 0.25, seed=1)


def auto_args(tmp_path, n, **overrides):
    """One optimizer step per epoch (the whole set in one batch), so that the margins an epoch's training step computes
    are those of the model at the start of the epoch, which a test can compute independently."""
    values = dict(loss_type="ropo", ropo_filter_ratio="auto", num_train_epochs=4, max_steps=-1,
                  per_device_train_batch_size=n, per_device_eval_batch_size=n, learning_rate=0.05,
                  logging_strategy="epoch")
    return train_args(tmp_path, **{**values, **overrides})


def margins_now(trainer, reference_path):
    """β·Δ of every training row under the current policy, from plain logits (`independent_margins`), by row; the
    model's train/eval mode as it was."""
    was_training = trainer.model.training
    with torch.no_grad():
        margins = independent_margins(trainer, reference_path)
    trainer.model.train(was_training)
    return margins


class Observe(TrainerCallback):
    """At each epoch's start, the margins the epoch's one training step will compute; at its first step, the rows the
    trainer distrusts in it."""

    def __init__(self, reference_path):
        self.reference_path, self.trainer = reference_path, None
        self.margins, self.suspects = [], []

    def on_epoch_begin(self, args, state, control, **kwargs):  # (runs before the trainer's own epoch callback)
        self.margins.append(margins_now(self.trainer, self.reference_path))

    def on_step_begin(self, args, state, control, **kwargs):
        mask = self.trainer._epoch_suspects
        self.suspects.append([] if mask is None else torch.nonzero(mask).flatten().tolist())


def test_auto_estimates_from_the_last_epochs_margins_and_distrusts_their_lowest(tiny_model_path, tmp_path):
    pairs = noisy_pairs()
    observe = Observe(tiny_model_path)
    trainer = RobustDPOTrainer(model=tiny_model_path, args=auto_args(tmp_path, len(pairs)), train_dataset=pairs,
                               callbacks=[observe])
    observe.trainer = trainer
    trainer.train()

    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == len(observe.margins) == 4
    assert "noise/estimated_flip_rate" not in logs[0] and observe.suspects[0] == []  # nothing before epoch 2
    estimates = []
    for epoch in range(1, 4):
        previous = observe.margins[epoch - 1]  # what epoch − 1's training step computed, row by row
        assert sorted(previous) == list(range(len(pairs)))
        expected = estimate_flip_rate([previous[row] for row in sorted(previous)])
        estimates.append(expected)
        if expected is None:  # epoch 1's one step has the untrained policy: every margin 0, nothing to estimate
            assert epoch == 1 and "noise/estimated_flip_rate" not in logs[epoch]
        else:
            assert logs[epoch]["noise/estimated_flip_rate"] == pytest.approx(expected, abs=2e-3)
        ratio = auto_filter_ratio(estimates)
        assert logs[epoch]["noise/filter_ratio"] == pytest.approx(ratio, abs=2e-3)
        lowest = sorted(previous, key=lambda row: (previous[row], row))[: int(ratio * len(pairs) + 1e-9)]
        assert observe.suspects[epoch] == sorted(lowest)
        assert logs[epoch]["ropo/filtered_frac"] == pytest.approx(len(lowest) / len(pairs))


def test_auto_decides_from_estimated_margins_as_the_policy_says(tiny_model_path, tmp_path):
    # The decision itself, fed margins with a known flip rate: 300 rows, 20% of them the mirror image.
    trainer = RobustDPOTrainer(model=tiny_model_path, args=auto_args(tmp_path, 8), train_dataset=noisy_pairs(8))
    callback = next(c for c in trainer.callback_handler.callbacks if type(c).__name__ == "EpochFilterCallback")
    rng = np.random.default_rng(3)
    z = np.concatenate([rng.normal(1.0, 0.7, 240), -rng.normal(1.0, 0.7, 60)])
    rows = rng.permutation(300)
    trainer._free_margins.append((torch.tensor(rows), torch.tensor(z, dtype=torch.float32)))
    chosen = callback._decide_from_the_last_epoch(filtering=True)

    z32 = torch.tensor(z, dtype=torch.float32).double().numpy()  # the margins as recorded (float32)
    by_row = dict(zip(rows.tolist(), z32.tolist()))
    estimate = estimate_noise([by_row[r] for r in sorted(by_row)], n_bootstrap=0).flip_rate
    assert abs(estimate - 0.2) < 0.06 and callback.estimates == [pytest.approx(estimate)]
    k = int(estimate * 300 + 1e-9)
    assert chosen == sorted(sorted(by_row, key=lambda r: (by_row[r], r))[:k])
    # Of the chosen, most are the mirrored rows (positions 240-299 in z).
    mirrored = set(rows[240:].tolist())
    assert len(mirrored & set(chosen)) / len(chosen) >= 0.75
    assert trainer._metrics["train"]["noise/estimated_flip_rate"] == [pytest.approx(estimate)]
    # During the warm-up it estimates and logs, but distrusts nothing.
    trainer._free_margins.append((torch.tensor(rows), torch.tensor(z, dtype=torch.float32)))
    assert callback._decide_from_the_last_epoch(filtering=False) is None
    assert trainer._metrics["train"]["noise/filter_ratio"][-1] == 0.0


def test_a_row_met_twice_in_an_epoch_keeps_its_first_margin(tiny_model_path, tmp_path):
    # Accelerate pads the last batch of an epoch with rows from its start, so that every process has a full batch;
    # plain `gather` records them twice. The first margin is the row's own step's.
    trainer = RobustDPOTrainer(model=tiny_model_path, args=auto_args(tmp_path, 8), train_dataset=noisy_pairs(8))
    trainer._free_margins += [(torch.tensor([3, 1]), torch.tensor([0.5, -0.25])),
                              (torch.tensor([2, 3]), torch.tensor([1.0, 9.0]))]
    assert trainer._take_free_margins() == {3: 0.5, 1: -0.25, 2: 1.0}
    assert trainer._free_margins == [] and trainer._take_free_margins() == {}


def test_auto_warns_that_a_one_epoch_run_filters_nothing(tiny_model_path, tmp_path):
    trainer = RobustDPOTrainer(model=tiny_model_path, args=auto_args(tmp_path, 8, num_train_epochs=1),
                               train_dataset=noisy_pairs(8))
    with pytest.warns(UserWarning, match="nothing will be filtered.*fixed ropo_filter_ratio"):
        trainer.train()


def run_auto(tiny_model_path, output_dir, resume=None, callbacks=(), eval_dataset=None, **overrides):
    """6 epochs of 4 steps on 32 pairs; checkpoints every 6 steps (inside epochs 1 and 4, and at the end of epoch 2)."""
    values = dict(output_dir=str(output_dir), per_device_train_batch_size=8, per_device_eval_batch_size=8,
                  num_train_epochs=6, learning_rate=0.05, save_strategy="steps", save_steps=6, logging_strategy="steps",
                  logging_steps=1)
    args = auto_args(output_dir.parent, 8, **{**values, **overrides})
    trainer = RobustDPOTrainer(model=tiny_model_path, args=args, train_dataset=noisy_pairs(32),
                               eval_dataset=eval_dataset, callbacks=list(callbacks))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def saved_epoch_filter(checkpoint) -> dict:
    saved = json.loads((checkpoint / "trainer_state.json").read_text())
    return saved["stateful_callbacks"]["trl_robust.RopoEpochFilter"]["attributes"]


def assert_resumed_as_uninterrupted(full, resumed, checkpoint):
    """Each step after `checkpoint` logs the same loss, filtered share, estimate and ratio; the models end equal."""
    def by_step(trainer):
        return {e["step"]: e for e in trainer.state.log_history if "loss" in e}

    before, after = by_step(full), by_step(resumed)
    keys = ["loss", "ropo/filtered_frac", "noise/estimated_flip_rate", "noise/filter_ratio"]
    estimated = [step for step in before if "noise/estimated_flip_rate" in before[step]]
    assert estimated == list(range(5, max(before), 4))  # the first step of each epoch from the second on
    for step in range(checkpoint + 1, max(before) + 1):
        for key in keys:
            if key in before[step] or key in after[step]:
                assert after[step][key] == pytest.approx(before[step][key], rel=1e-4, abs=1e-6), (step, key)
    for (name, p_full), (_, p_resumed) in zip(full.model.named_parameters(), resumed.model.named_parameters(),
                                              strict=True):
        torch.testing.assert_close(p_resumed, p_full, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("checkpoint", [6, 8])  # inside epoch 1 (0-based), and at the end of epoch 1
def test_a_resumed_auto_run_estimates_and_filters_as_the_uninterrupted_run(tiny_model_path, tmp_path, checkpoint):
    full = run_auto(tiny_model_path, tmp_path / "full", save_steps=checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run_auto(tiny_model_path, tmp_path / "cut", save_steps=checkpoint, callbacks=[Interrupt(at_step=checkpoint + 3)])
    attributes = saved_epoch_filter(tmp_path / "cut" / f"checkpoint-{checkpoint}")
    assert len(attributes["margins"][0]) == (checkpoint - 4) * 8  # this epoch's margins so far, for the estimate
    resumed = run_auto(tiny_model_path, tmp_path / "cut", save_steps=checkpoint,
                       resume=str(tmp_path / "cut" / f"checkpoint-{checkpoint}"))
    assert_resumed_as_uninterrupted(full, resumed, checkpoint)


SAVING = {
    "epoch": dict(save_strategy="epoch"),
    # An evaluation after every step, and a checkpoint where the eval loss improved: transformers decides that after
    # the callbacks' `on_step_end`, so a checkpoint inside an epoch was written without that epoch's margins.
    "best": dict(save_strategy="best", eval_strategy="steps", eval_steps=1, metric_for_best_model="eval_loss",
                 greater_is_better=False),
}


@pytest.mark.parametrize("strategy", sorted(SAVING))  # ("steps": the test above)
def test_a_run_resumed_under_each_save_strategy_estimates_and_filters_as_the_uninterrupted_run(
    tiny_model_path, tmp_path, strategy
):
    held_out = Dataset.from_list(tiny_preference_records(n=8, seed=5))
    saving = dict(num_train_epochs=3, **SAVING[strategy])  # 12 steps: decisions at steps 5 and 9
    full = run_auto(tiny_model_path, tmp_path / "full", eval_dataset=held_out, **saving)
    saved = sorted(int(path.name.removeprefix("checkpoint-")) for path in (tmp_path / "full").glob("checkpoint-*"))
    if strategy == "epoch":
        assert saved == [4, 8, 12]
        checkpoint = 8  # the end of epoch 1 (0-based): epoch 2 decides from its margins
    else:  # the last checkpoint inside an epoch with a decision still to come (here 3: the eval loss fell in epoch 0)
        checkpoint = max(step for step in saved if step % 4 and step < 9)
    # Each checkpoint holds the margins its epoch's steps have recorded so far (a whole epoch's at its end).
    assert len(saved_epoch_filter(tmp_path / "full" / f"checkpoint-{checkpoint}")["margins"][0]) == (
        (checkpoint % 4 or 4) * 8
    )
    # The checkpoint is the one an interrupted run would have left: the run up to it is the same.
    resumed = run_auto(tiny_model_path, tmp_path / "resumed", eval_dataset=held_out,
                       resume=str(tmp_path / "full" / f"checkpoint-{checkpoint}"), **saving)
    assert_resumed_as_uninterrupted(full, resumed, checkpoint)


# --- the filter's state belongs to the training set it was built on ---------------------------------------------


def write_checkpoint(checkpoint, attributes):
    """A checkpoint's trainer_state.json holding the epoch filter's state, as the callback writes it."""
    checkpoint.mkdir(parents=True)
    saved = {"trl_robust.RopoEpochFilter": {"args": {}, "attributes": attributes}}
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 6, "stateful_callbacks": saved}))


@pytest.mark.parametrize("resume", ["path", True])
@pytest.mark.parametrize(
    "attributes, built_on",
    [
        ({"epoch": 1, "rows": [2, 20], "n_rows": 32, "estimates": [0.2], "margins": [[24, 25], [0.5, -1]]}, "32 rows"),
        ({"epoch": 1, "rows": [2, 20], "estimates": [0.2], "margins": [[24, 25], [0.5, -1.0]]}, "at least 26 rows"),
    ],
    ids=["recorded-size", "older-checkpoint"],
)
def test_resuming_the_filter_with_a_smaller_training_set_is_refused_before_any_model_loads(
    no_model_loading, tmp_path, attributes, built_on, resume
):
    checkpoint = tmp_path / "out" / "checkpoint-6"
    write_checkpoint(checkpoint, attributes)
    args = auto_args(tmp_path, 8, resume_from_checkpoint=str(checkpoint) if resume == "path" else True)
    with pytest.raises(ValueError, match=f"in {checkpoint} was built on a training set of {built_on}, and this run's "
                                         "training set has 16.*same training data.*new run"):
        RobustDPOTrainer(model="unused-model", args=args, train_dataset=noisy_pairs(16))


def test_the_filter_state_fits_only_the_training_set_it_was_built_on():
    check_resumed_rows({"n_rows": 32, "rows": [31]}, 32, "checkpoint-6")
    with pytest.raises(ValueError, match="of 32 rows, and this run's training set has 40"):
        check_resumed_rows({"n_rows": 32, "rows": [31]}, 40, "checkpoint-6")  # a larger set: other pairs, other order
    # Before TRL's tokenisation a set of 40 input rows may yet span 32 once TRL drops the longest; the trainer
    # checks the exact span when training begins.
    check_resumed_rows({"n_rows": 32}, 40, "checkpoint-6", at_least=True)
    check_resumed_rows({"rows": [3], "margins": [[15], [0.1]]}, 16, "checkpoint-6")  # older: the rows it names fit


def test_resuming_through_train_with_another_training_set_is_refused_with_a_message(tiny_model_path, tmp_path):
    # The checkpoint is given to `train()` only, as a Python caller does: the refusal comes when training begins,
    # instead of an IndexError. (A fixed ratio: epoch 1 is sure to have suspects, rows among all 32.)
    args = dict(ropo_filter_ratio=0.5, ropo_filter_scope="epoch", num_train_epochs=2, save_strategy="steps",
                save_steps=6)
    first = RobustDPOTrainer(model=tiny_model_path, args=auto_args(tmp_path, 8, **args), train_dataset=noisy_pairs(32))
    first.train()
    assert saved_epoch_filter(tmp_path / "out" / "checkpoint-6")["n_rows"] == 32
    smaller = RobustDPOTrainer(model=tiny_model_path, args=auto_args(tmp_path, 8, **args),
                               train_dataset=noisy_pairs(16))
    with pytest.raises(ValueError, match="the checkpoint resumed from was built on a training set of 32 rows, and "
                                         "this run's training set has 16"):
        smaller.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-6"))


# --- streamed data ---------------------------------------------------------------------------------------------------


def test_auto_refuses_streamed_data_and_suggests_what_works(no_model_loading, tmp_path):
    streamed = noisy_pairs(8).to_iterable_dataset()
    with pytest.raises(ValueError, match="needs a map-style") as refused:
        RobustDPOTrainer(model="unused-model", args=auto_args(tmp_path, 8), train_dataset=streamed)
    message = str(refused.value)
    assert "without streaming" in message and "fixed ropo_filter_ratio" in message
    # What it suggests for streamed data is accepted (auto with the step scope alone is refused), and takes the
    # streamed set as it is.
    with pytest.raises(ValueError, match="needs ropo_filter_scope='epoch'"):
        train_args(tmp_path, loss_type="ropo", ropo_filter_ratio="auto", ropo_filter_scope="step")
    fixed = train_args(tmp_path, loss_type="ropo", ropo_filter_ratio=0.2, ropo_filter_scope="step")
    given = {"train_dataset": streamed}
    assert rows_indexed_for_the_filter(fixed, DPOTrainer.__init__, ("m", None, fixed), (), given) == ((), given)


def two_process_run(model_path, output_dir, per_device):
    """ROPO auto on 32 pairs, 8 per optimizer step either way. (With an uneven last batch two processes would train
    on accelerate's padding rows too, so their losses would differ from one process's whatever trl-robust does.)"""
    args = RobustDPOConfig(
        output_dir=str(output_dir), use_cpu=True, report_to="none", save_strategy="no", bf16=False, seed=0,
        per_device_train_batch_size=per_device, per_device_eval_batch_size=per_device, num_train_epochs=4,
        learning_rate=0.05, logging_steps=1, disable_tqdm=True, loss_type="ropo", gradient_checkpointing=False,
        ropo_filter_ratio="auto",
    )
    trainer = RobustDPOTrainer(model=str(model_path), args=args, train_dataset=noisy_pairs(32))
    trainer.train()
    return trainer


def test_two_processes_estimate_and_filter_as_one_with_the_same_global_batch(tiny_model_path, tmp_path):
    two = run_two_ranks(logged_steps_worker("tests.test_auto_filter:two_process_run"), tmp_path, tiny_model_path)

    one = two_process_run(tiny_model_path, tmp_path / "one", per_device=8)
    keys = ("loss", "ropo/filtered_frac", "noise/estimated_flip_rate", "noise/filter_ratio")
    logs = assert_same_logged_steps(two, one, keys)
    estimated = [step for step in logs if "noise/estimated_flip_rate" in logs[step]]
    assert len(estimated) == 3  # epochs 2-4
