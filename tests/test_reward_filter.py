"""ROPO's training filter for reward models: with the reward margin z = r_c − r_r as the score, each scope distrusts the
pairs it should — by hand on fixed rewards for the step scope, against margins computed by the model's own forward pass
for the epoch scope and `auto` — Bradley–Terry with the filter on is TRL's loss while nothing is filtered, two processes
decide as one, and bad settings fail at construction."""

import warnings
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

import trl
from trl_robust import RobustRewardConfig, RobustRewardTrainer
from trl_robust.cli.arguments import UsageError, parse_reward_args
from trl_robust.data import FLIP_COLUMN, ROW_COLUMN, flip_preferences
from trl_robust.filter.auto import auto_filter_ratio, estimate_flip_rate
from trl_robust.tiny import tiny_preference_records

from .conftest import assert_same_logged_steps, logged_steps_worker, run_two_ranks
from .test_reward import (  # noqa: F401 (no_reward_model_loading: a fixture used by name)
    CHOSEN,
    RAW_Z,
    REJECTED,
    FixedRewards,
    loss_grads_metrics,
    mean,
    no_reward_model_loading,
    reward_args,
    softplus,
)

REPO_RECIPE = str(Path(__file__).resolve().parent.parent / "recipes" / "reward_sympo_sigmoid.yaml")


def noisy_pairs(n=48):
    return flip_preferences(Dataset.from_list(tiny_preference_records(n=n, seed=0)), 0.25, seed=1)


# --- the step scope, by hand on fixed rewards ------------------------------------------------------------------------


def filtered_step(model_path, tmp_path, flipped, **config):
    """One training micro-batch of the four fixed-reward pairs (z = 1.5, −2, 0, 23), with their flip record."""
    trainer = RobustRewardTrainer(model=model_path, args=reward_args(tmp_path, **config), train_dataset=noisy_pairs(8))
    model = FixedRewards(CHOSEN, REJECTED)
    inputs = {"input_ids": torch.zeros(8, 3, dtype=torch.long), "attention_mask": torch.ones(8, 3, dtype=torch.long),
              FLIP_COLUMN: torch.tensor(flipped)}
    trainer.model.train()
    loss = trainer.compute_loss(model, inputs)
    metrics = {key: values[-1] for key, values in trainer._metrics["train"].items()}
    return loss.item(), metrics


# ρ = 1/4 of 4 pairs with an empty window: the lowest margin, pair 2 (z = −2), is the one suspect.
BT = [softplus(-z) for z in RAW_Z]


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("drop", (BT[0] + BT[2] + BT[3]) / 3),  # pair 2 out, the mean over the three kept
        ("correct", mean([BT[0], softplus(-2.0), BT[2], BT[3]])),  # pair 2 trained as z = +2
    ],
)
def test_the_step_filter_distrusts_the_lowest_reward_margin(tiny_model_path, tmp_path, mode, expected):
    loss, metrics = filtered_step(tiny_model_path, tmp_path, [False, True, False, False], loss_type="bradley_terry",
                                  ropo_filter_ratio=0.25, ropo_filter_mode=mode)
    assert loss == pytest.approx(expected, rel=1e-6)
    assert metrics["bradley_terry/filtered_frac"] == 0.25
    assert metrics["bradley_terry/filter_precision"] == 1.0  # the suspect is the flipped pair


def test_filter_precision_counts_the_suspects_that_were_flipped(tiny_model_path, tmp_path):
    _, metrics = filtered_step(tiny_model_path, tmp_path, [True, False, False, False], loss_type="ropo", ropo_filter_ratio=0.25)
    assert metrics["ropo/filtered_frac"] == 0.25 and metrics["ropo/filter_precision"] == 0.0


def test_bradley_terry_with_the_filter_on_is_trls_loss_until_it_filters(tiny_model_path, tmp_path):
    # During the warm-up nothing is distrusted: trl-robust's per-pair −log σ(z) must then be TRL's loss, the dataset
    # margin and the centring term included, with the same gradients.
    pairs = noisy_pairs(16).add_column("margin", [0.5, -0.25, 0.0, 1.5] * 4)
    common = dict(center_rewards_coefficient=0.01)
    stock = loss_grads_metrics(trl.RewardTrainer, tiny_model_path, pairs,
                               reward_args(tmp_path / "stock", config_cls=trl.RewardConfig, **common))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the warm-up outlasts this 2-step run, and the trainer says so)
        ours = loss_grads_metrics(RobustRewardTrainer, tiny_model_path, pairs,
                                  reward_args(tmp_path / "ours", ropo_filter_ratio=0.25, ropo_filter_warmup_steps=99,
                                              **common))
    assert torch.equal(ours[3]["input_ids"], stock[3]["input_ids"])  # the same batch
    torch.testing.assert_close(ours[0], stock[0], rtol=1e-6, atol=1e-7)
    for name, grad in stock[1].items():
        torch.testing.assert_close(ours[1][name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert ours[2]["bradley_terry/filtered_frac"] == [0.0]
    assert ours[2]["accuracy"] == stock[2]["accuracy"]  # TRL's metrics, from the same rewards


# --- the epoch scope and `auto`, against the model's own margins ---------------------------------------------------------


def model_margins(trainer) -> dict[int, float]:
    """r_c − r_r of every training row under the current model: its forward pass on TRL's collated batches, by row."""
    was_training = trainer.model.training
    trainer.model.eval()
    margins = {}
    with torch.no_grad():
        for batch in trainer.get_eval_dataloader(trainer.train_dataset):
            rewards = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            chosen, rejected = rewards.squeeze(-1).float().chunk(2)
            margins.update(zip(batch[ROW_COLUMN].tolist(), (chosen - rejected).tolist()))
    trainer.model.train(was_training)
    return margins


class Observe(TrainerCallback):
    """At each epoch's start, the margins of the model its one training step will train; at that step, the rows the
    trainer distrusts."""

    def __init__(self):
        self.trainer, self.margins, self.suspects = None, [], []

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.margins.append(model_margins(self.trainer))

    def on_step_begin(self, args, state, control, **kwargs):
        mask = self.trainer._epoch_suspects
        self.suspects.append([] if mask is None else torch.nonzero(mask).flatten().tolist())


def epoch_run(model_path, tmp_path, pairs, **config):
    """4 epochs of one optimizer step each (the whole set in one batch), so that the margins an epoch's training step
    computes are those of the model at the start of the epoch."""
    observe = Observe()
    values = dict(num_train_epochs=4, max_steps=-1, per_device_train_batch_size=len(pairs),
                  per_device_eval_batch_size=len(pairs), learning_rate=0.05, logging_strategy="epoch")
    trainer = RobustRewardTrainer(model=model_path, args=reward_args(tmp_path, **{**values, **config}),
                                  train_dataset=pairs, callbacks=[observe])
    observe.trainer = trainer
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == len(observe.margins) == 4
    return logs, observe


def lowest(margins: dict[int, float], ratio: float) -> list[int]:
    return sorted(sorted(margins, key=lambda row: (margins[row], row))[: int(ratio * len(margins) + 1e-9)])


def test_the_epoch_filter_distrusts_the_lowest_margins_of_the_model_at_the_epochs_start(tiny_model_path, tmp_path):
    pairs = noisy_pairs()
    logs, observe = epoch_run(tiny_model_path, tmp_path, pairs, loss_type="sympo_sigmoid", ropo_filter_ratio=0.25,
                              ropo_filter_scope="epoch")
    assert observe.suspects[0] == []  # never with the untrained model
    flipped = set(i for i, f in enumerate(pairs[FLIP_COLUMN]) if f)
    for epoch in range(1, 4):
        expected = lowest(observe.margins[epoch], 0.25)
        assert len(expected) == 12 and observe.suspects[epoch] == expected
        assert logs[epoch]["sympo_sigmoid/filtered_frac"] == pytest.approx(0.25)
        precision = len(flipped & set(expected)) / len(expected)
        assert logs[epoch]["sympo_sigmoid/filter_precision"] == pytest.approx(precision)


@pytest.mark.parametrize("loss_type", ["bradley_terry", "ropo"])
def test_auto_estimates_from_the_last_epochs_reward_margins_and_distrusts_their_lowest(
    tiny_model_path, tmp_path, loss_type
):
    pairs = noisy_pairs()
    logs, observe = epoch_run(tiny_model_path, tmp_path, pairs, loss_type=loss_type, ropo_filter_ratio="auto",
                              learning_rate=0.1)
    assert "noise/estimated_flip_rate" not in logs[0] and observe.suspects[0] == []  # nothing before epoch 2
    estimates = []
    for epoch in range(1, 4):
        previous = observe.margins[epoch - 1]  # what epoch − 1's training step computed, row by row
        assert sorted(previous) == list(range(len(pairs)))
        expected = estimate_flip_rate([previous[row] for row in sorted(previous)])
        estimates.append(expected)
        if expected is None:
            assert "noise/estimated_flip_rate" not in logs[epoch]
        else:
            assert logs[epoch]["noise/estimated_flip_rate"] == pytest.approx(expected, abs=2e-3)
        ratio = auto_filter_ratio(estimates)
        assert logs[epoch]["noise/filter_ratio"] == pytest.approx(ratio, abs=2e-3)
        assert observe.suspects[epoch] == lowest(previous, ratio)
        assert logs[epoch][f"{loss_type}/filtered_frac"] == pytest.approx(len(observe.suspects[epoch]) / len(pairs))
    assert any(observe.suspects)  # (at this learning rate the last epoch estimates above the floor and filters)


# --- two processes ----------------------------------------------------------------------------------------------------


def two_process_run(model_path, output_dir, per_device):
    """Bradley–Terry with `auto` on 32 pairs, 8 per optimizer step either way (an even split: no padding rows), at a
    learning rate low enough that float rounding of the all-reduce does not grow into a different run."""
    from transformers import set_seed

    args = RobustRewardConfig(
        output_dir=str(output_dir), use_cpu=True, report_to="none", save_strategy="no", bf16=False, seed=0,
        per_device_train_batch_size=per_device, per_device_eval_batch_size=per_device,
        num_train_epochs=3, learning_rate=0.02, logging_steps=1, disable_tqdm=True, ropo_filter_ratio="auto",
    )
    set_seed(0)  # TRL draws the new score head when it loads the causal LM: the same head in both runs
    trainer = RobustRewardTrainer(model=str(model_path), args=args, train_dataset=noisy_pairs(32))
    trainer.train()
    return trainer


def test_two_processes_estimate_and_filter_a_reward_model_as_one(tiny_model_path, tmp_path):
    two = run_two_ranks(logged_steps_worker("tests.test_reward_filter:two_process_run"), tmp_path, tiny_model_path)

    one = two_process_run(tiny_model_path, tmp_path / "one", per_device=8)
    keys = ("loss", "bradley_terry/filtered_frac", "noise/estimated_flip_rate", "noise/filter_ratio")
    logs = assert_same_logged_steps(two, one, keys)
    assert len([step for step in logs if "noise/filter_ratio" in logs[step]]) == 2  # epochs 2 and 3
    assert any(entry["bradley_terry/filtered_frac"] > 0 for entry in logs.values())  # it did filter


# --- settings ------------------------------------------------------------------------------------------------------------


def test_the_command_line_reads_the_reward_filter_from_yaml_and_flags(tmp_path):
    args = parse_reward_args(["--config", REPO_RECIPE, "--loss_type", "bradley_terry", "--ropo_filter_ratio", "auto"])
    config = args.training_args
    assert config.loss_type == "bradley_terry" and config.ropo_filter_ratio == "auto"
    recipe = tmp_path / "filter.yaml"
    recipe.write_text(Path(REPO_RECIPE).read_text() + "\nropo_filter_ratio: 0.2\nropo_filter_mode: correct\n")
    config = parse_reward_args(["--config", str(recipe)]).training_args
    assert (config.ropo_filter_ratio, config.ropo_filter_scope, config.ropo_filter_mode) == (0.2, None, "correct")
    with pytest.raises(UsageError, match="ropo_filter_scope='epoch'"):
        parse_reward_args(["--config", str(recipe), "--ropo_filter_ratio", "auto", "--ropo_filter_scope", "step"])


@pytest.mark.parametrize(
    "config, message",
    [
        (dict(ropo_filter_ratio=1.5), r"in \[0, 1\)"),
        (dict(ropo_filter_ratio="half"), "must be a number in"),
        (dict(ropo_filter_ratio="auto", ropo_filter_scope="step"), "needs ropo_filter_scope='epoch'"),
        (dict(ropo_filter_ratio=0.2, ropo_filter_mode="skip"), "ropo_filter_mode"),
    ],
)
def test_bad_filter_settings_are_refused_at_config_construction(tmp_path, config, message):
    with pytest.raises(ValueError, match=message):
        reward_args(tmp_path, **config)


def test_the_epoch_filter_needs_a_map_style_dataset_before_any_model_loads(tmp_path, no_reward_model_loading):
    streamed = noisy_pairs(8).to_iterable_dataset()
    # (auto refuses the step scope: it suggests loading without streaming, or a fixed ratio with the step scope)
    with pytest.raises(ValueError, match="map-style.*without streaming.*fixed ropo_filter_ratio"):
        RobustRewardTrainer(model="unused", args=reward_args(tmp_path, ropo_filter_ratio="auto"), train_dataset=streamed)
