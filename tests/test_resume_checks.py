"""Resuming from a checkpoint saved with `save_only_model: true` (weights, no optimizer or scheduler state) is refused
before any model is loaded by the command, and before any step by `train(resume_from_checkpoint=...)` in Python, with
what to do instead; a full checkpoint still resumes. The checkpoints are written by
transformers itself, so the test follows what it really saves with and without `save_only_model`."""

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from datasets import Dataset

from trl_robust import RobustDPOTrainer
from trl_robust.cli.arguments import UsageError, parse_command_args
from trl_robust.tiny import tiny_preference_records

from .conftest import train_args

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"  # a Hub id: offline, any attempt to load it would fail


@pytest.fixture(scope="module")
def saved_runs(tiny_model_path, tmp_path_factory):
    """Two 2-step runs of the tiny model with a checkpoint at each step: one with `save_only_model`, one without."""
    runs = {}
    for weights_only in (True, False):
        out = tmp_path_factory.mktemp("weights-only" if weights_only else "full")
        args = train_args(out, max_steps=2, save_strategy="steps", save_steps=1, save_only_model=weights_only)
        dataset = Dataset.from_list(tiny_preference_records(n=8, seed=0))
        RobustDPOTrainer(model=tiny_model_path, args=args, train_dataset=dataset).train()
        runs[weights_only] = out / "out"
    return runs


def parse(command, tmp_path, output_dir, *flags):
    argv = ["--model_name_or_path", MODEL, "--dataset_name", "trl-lib/ultrafeedback_binarized", "--use_cpu", "true",
            "--output_dir", str(output_dir), *flags]
    return parse_command_args(argv, command, f"trl-robust {command}")


def copy_run(source, tmp_path):
    """A copy of a run's output directory, as the user's; returns it and its listing, to check it is left alone."""
    out = tmp_path / "run"
    shutil.copytree(source, out)
    return out, sorted(str(p.relative_to(out)) for p in out.rglob("*"))


@pytest.mark.parametrize("command", ["dpo", "reward"])
@pytest.mark.parametrize("latest", [False, True], ids=["path", "true"])
def test_resuming_from_a_weights_only_checkpoint_is_refused_before_any_model_loads(
    saved_runs, tmp_path, no_model_loading, command, latest
):
    # Before: transformers resumed at step 2 with a new optimizer and the learning-rate schedule restarted, silently.
    out, listing = copy_run(saved_runs[True], tmp_path)
    checkpoint = out / "checkpoint-2"
    with pytest.raises(UsageError) as error:
        parse(command, tmp_path, out, "--resume_from_checkpoint", "true" if latest else str(checkpoint))
    message = str(error.value)
    assert f"{str(checkpoint)!r}" in message
    assert "holds the model weights only (saved with `save_only_model: true`)" in message
    assert ("the latest complete checkpoint in" in message) == latest
    assert f"`--model_name_or_path {checkpoint}` with another `--output_dir`" in message  # a new run from the weights
    assert "`--save_only_model false`" in message  # how to save checkpoints that can be resumed
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == listing


def test_a_full_checkpoint_still_resumes(saved_runs, tmp_path, no_model_loading):
    out, _ = copy_run(saved_runs[False], tmp_path)
    args = parse("dpo", tmp_path, out, "--resume_from_checkpoint", "true")
    assert args.training_args.resume_from_checkpoint == str(out / "checkpoint-2")
    args = parse("dpo", tmp_path, out, "--resume_from_checkpoint", str(out / "checkpoint-1"))
    assert args.training_args.resume_from_checkpoint == str(out / "checkpoint-1")


def test_a_non_empty_output_dir_of_weights_only_checkpoints_suggests_training_on_from_them(
    saved_runs, tmp_path, no_model_loading
):
    out, listing = copy_run(saved_runs[True], tmp_path)
    with pytest.raises(UsageError) as error:
        parse("dpo", tmp_path, out)
    message = str(error.value)
    assert "--resume_from_checkpoint" not in message  # it cannot be resumed: not offered
    assert f"`--model_name_or_path {out / 'checkpoint-2'}` with another `--output_dir`" in message
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == listing


def test_the_offline_recipes_save_checkpoints_that_can_be_resumed():
    # `recipes/tiny_offline.yaml` (the smoke test) and the reward recipe set `save_only_model: true`, so the checkpoint
    # they wrote could not be resumed from; their optimizer state is well under 1 MB.
    recipes = Path(__file__).resolve().parent.parent / "recipes"
    for name in ("tiny_offline.yaml", "reward_sympo_sigmoid.yaml"):
        assert not yaml.safe_load((recipes / name).read_text()).get("save_only_model", False), name


@pytest.mark.parametrize("trainer_kind", ["dpo", "reward"])
@pytest.mark.parametrize("latest", [False, True], ids=["path", "true"])
def test_train_refuses_to_resume_from_a_weights_only_checkpoint_in_python(
    saved_runs, tiny_model_path, tmp_path, trainer_kind, latest
):
    # Before: `trainer.train(resume_from_checkpoint=...)` continued at step 2 with a new optimizer and schedule.
    from trl_robust import RobustRewardConfig, RobustRewardTrainer

    out, listing = copy_run(saved_runs[True], tmp_path)
    checkpoint = out / "checkpoint-2"
    dataset = Dataset.from_list(tiny_preference_records(n=8, seed=0))
    if trainer_kind == "dpo":
        args = train_args(tmp_path, max_steps=4, output_dir=str(out))
        trainer = RobustDPOTrainer(model=tiny_model_path, args=args, train_dataset=dataset)
    else:
        args = train_args(tmp_path, RobustRewardConfig, max_steps=4, output_dir=str(out))
        trainer = RobustRewardTrainer(model=tiny_model_path, args=args, train_dataset=dataset)
    weights = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    with pytest.raises(ValueError) as error:
        trainer.train(resume_from_checkpoint=True if latest else str(checkpoint))
    message = str(error.value)
    assert f"{str(checkpoint)!r} holds the model weights only (saved with `save_only_model=True`)" in message
    assert "`save_only_model=False`" in message and "as the model of a new trainer" in message
    assert trainer.state.global_step == 0  # refused before any step
    assert all(torch.equal(p, weights[name]) for name, p in trainer.model.named_parameters())
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == listing


def test_train_resumes_from_a_full_checkpoint_in_python(saved_runs, tiny_model_path, tmp_path):
    out, _ = copy_run(saved_runs[False], tmp_path)
    dataset = Dataset.from_list(tiny_preference_records(n=8, seed=0))
    args = train_args(tmp_path, max_steps=3, output_dir=str(out))
    trainer = RobustDPOTrainer(model=tiny_model_path, args=args, train_dataset=dataset)
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    assert trainer.state.global_step == 3  # continued from step 2
