"""The `trl-robust` command: the offline recipe end to end through the real command, errors before any model loads,
launcher arguments split as `trl dpo` splits them, and TRL's other commands passed through."""

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

import trl_robust
from trl_robust.cli import _help_parser, _trl_commands, training_command
from trl_robust.cli import main as cli_main
from trl_robust.cli.arguments import UsageError, make_parser, parse_dpo_args
from trl_robust.registry import get_loss_spec, register_loss, registered_loss_types, unregister_loss
from trl_robust.tiny import make_tiny_model

from .conftest import STANDALONE_RENDEZVOUS

REPO = Path(__file__).resolve().parent.parent
TINY_RECIPE = REPO / "recipes" / "tiny_offline.yaml"
BIN = Path(sys.executable).parent  # the console scripts of the environment running the tests




def run_command(name, *args, tmp_path, timeout=120, extra_env=None):
    executable = BIN / name
    assert executable.exists(), f"{executable} missing: reinstall the package (`pip install -e .`)"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TRL_ROBUST_CACHE": str(tmp_path / "builtin-cache"),  # the built-ins are materialised fresh
        "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"),
        **(extra_env or {}),
    }
    return subprocess.run(
        [str(executable), *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=timeout
    )


def write_yaml(path: Path, config: dict) -> str:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


# --- end to end -----------------------------------------------------------------------------------------------------


def test_tiny_offline_recipe_trains_and_saves_model_and_card_through_the_real_command(tmp_path):
    out = tmp_path / "out"
    argv = ["dpo", "--config", str(TINY_RECIPE), "--output_dir", str(out)]
    result = run_command("trl-robust", *argv, tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]

    # The saved model loads, and training moved it away from the built-in starting point.
    trained = AutoModelForCausalLM.from_pretrained(out).state_dict()
    initial = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "initial")).state_dict()
    assert trained.keys() == initial.keys()
    assert any(not torch.equal(trained[name], initial[name]) for name in trained)

    # The model card carries the plugin's and the loss's tags.
    front_matter = (out / "README.md").read_text().split("---")[1]
    tags = yaml.safe_load(front_matter)["tags"]
    assert "trl-robust" in tags and "ropo" in tags

    # The ROPO branch computed the loss: its metrics are in the training log.
    assert any("ropo/grad_weight" in entry for entry in training_log(out))


def test_flip_rate_injects_label_noise_into_the_training_split(tmp_path):
    out = tmp_path / "out"
    argv = ["dpo", "--config", str(TINY_RECIPE), "--output_dir", str(out), "--max_steps", "2", "--flip_rate", "0.25",
            "--flip_seed", "3", "--eval_strategy", "no", "--save_strategy", "no"]
    result = run_command("trl-robust", *argv, tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "Flipping 16 of 64 preference pairs" in result.stderr  # 25% of the 64 built-in training pairs
    assert "- ropo" in (out / "README.md").read_text()  # the final save wrote the card without a checkpoint


def training_log(out: Path) -> list[dict]:
    (state_file,) = out.glob("checkpoint-*/trainer_state.json")
    return json.loads(state_file.read_text())["log_history"]


def first_loss(**flags):
    """The first registered loss type whose spec has these flags (e.g. `uses_reward_clip=True`)."""
    return next(n for n in registered_loss_types() if all(getattr(get_loss_spec(n), k) == v for k, v in flags.items()))


@pytest.mark.parametrize(
    "loss_type, extra",
    [
        # Gathering the added metrics over the ranks does not depend on the loss's formula: one per-pair loss without
        # and one with SymPO's reward clip (which forms the margin differently). A loss that couples the batch
        # (Dr. DPO) is computed per rank by design, so it cannot equal one process.
        (first_loss(couples_batch=False, uses_reward_clip=False), {}),
        (first_loss(couples_batch=False, uses_reward_clip=True), {}),
        # ROPO's filter ranks the global batch: a rank-local choice (2 of each rank's 8) would differ from the
        # single process's (4 of 16) — at the first step all margins tie and it takes the first 4, all on rank 0.
        ("ropo", {"ropo_filter_ratio": 0.25, "ropo_filter_warmup_steps": 0, "flip_rate": 0.25}),
        # The epoch filter scores the 64 pairs on both ranks at the start of epoch 1 (step 4) and must choose the
        # same 16 as one process; each rank then looks its own pairs up in that choice.
        ("ropo", {"ropo_filter_ratio": 0.25, "ropo_filter_scope": "epoch", "flip_rate": 0.25}),
    ],
)
def test_two_processes_train_like_one_process_with_the_same_global_batch(tmp_path, loss_type, extra):
    # On a machine without GPUs accelerate starts one process for `--num_processes 2` alone; `multi_gpu: true` makes
    # it two torch.distributed (gloo) ranks. A YAML on/off flag is also what `trl dpo` cannot pass (it writes
    # `--multi_gpu True`), so this checks that path too.
    recipe = {**yaml.safe_load(TINY_RECIPE.read_text()), "loss_type": loss_type, "logging_steps": 1, **extra}
    two = write_yaml(tmp_path / "two.yaml", {**recipe, "num_processes": 2, "multi_gpu": True})
    one = write_yaml(tmp_path / "one.yaml", {**recipe, "per_device_train_batch_size": 16, "per_device_eval_batch_size": 16})
    results = {}
    for name, config in (("two", two), ("one", one)):
        argv = ["dpo", "--config", config, "--output_dir", str(tmp_path / name)]
        result = run_command("trl-robust", *argv, tmp_path=tmp_path, extra_env=STANDALONE_RENDEZVOUS)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]  # a rank hanging at exit times out
        results[name] = training_log(tmp_path / name)

    # Two ranks, from the data: 8 steps x 8 pairs per rank x 2 ranks = 128 pairs = 2 epochs of the 64 train pairs.
    assert results["two"][-1]["epoch"] == pytest.approx(2.0)
    # The same global batch of 16 at every step: each rank's 8 pairs are half of the single process's 16. The added
    # metrics match at every logged step only if they are computed over both ranks' pairs (a rank-local value would
    # describe 8 of the 16), and the loss and the final weights match only if training is the same.
    metrics = ["grad_weight", "grad_weight_vs_logistic", "negative_margin_frac"]
    metrics += ["filtered_frac", "filter_precision"] if extra else []
    compared = ["loss", *(f"{loss_type}/{m}" for m in metrics), f"eval_{loss_type}/grad_weight", "eval_loss"]
    rows = {name: {(entry["step"], key): entry[key] for entry in log for key in compared if key in entry} for name, log in results.items()}
    assert rows["two"].keys() == rows["one"].keys()
    if extra.get("ropo_filter_scope") == "epoch":  # no suspects, hence no precision, in epoch 0 (steps 1-4)
        assert sum(rows["one"][(step, "ropo/filtered_frac")] for step in range(5, 9)) * 16 == pytest.approx(16)
        assert len(rows["one"]) == 8 * (len(metrics) + 1) + 2 - 4
    else:
        assert len(rows["one"]) == 8 * (len(metrics) + 1) + 2
    for key, value in rows["one"].items():
        assert rows["two"][key] == pytest.approx(value, rel=1e-3, abs=1e-5), key
    final = {name: AutoModelForCausalLM.from_pretrained(tmp_path / name).state_dict() for name in results}
    for name, weight in final["one"].items():
        torch.testing.assert_close(final["two"][name], weight, rtol=1e-4, atol=1e-5, msg=name)


# --- bad input: a clear error before any model is loaded ------------------------------------------------------------


VALID = {
    "model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct",  # a Hub id: offline, any attempt to load it would fail
    "dataset_name": "trl-lib/ultrafeedback_binarized",
    "loss_type": "ropo",
    "use_cpu": True,
}


@pytest.mark.parametrize(
    "overrides, flags, expected",
    [
        ({"lerning_rate": 1e-6}, [], ["unknown key 'lerning_rate'", "did you mean 'learning_rate'"]),
        ({}, ["--ropo_alpah", "3"], ["unknown argument '--ropo_alpah'", "did you mean '--ropo_alpha'"]),
        ({}, ["--num_procesess=2"], ["unknown argument '--num_procesess'", "did you mean '--num_processes'"]),
        ({"loss_type": "ropoo"}, [], ["Unknown loss_type 'ropoo'", "Did you mean 'ropo'"]),
        ({}, ["--loss_type", "sympo_ramps"], ["Unknown loss_type 'sympo_ramps'", "Did you mean 'sympo_ramp'"]),
        ({"dataset_name": "./data/prefs.jsonl"}, [], ["`dataset_name`", "does not exist"]),
        ({"dataset_name": "builtin:huge"}, [], ["unknown built-in name 'builtin:huge'", "'builtin:tiny'"]),
        ({"model_name_or_path": "/no/such/model"}, [], ["`model_name_or_path`", "does not exist"]),
        ({"accelerate_config": "zero4"}, [], ["'zero4' is neither a file nor", "did you mean 'zero3'"]),
        ({}, ["recipe.yaml"], ["unexpected argument 'recipe.yaml'", "--config recipe.yaml"]),
    ],
)
def test_bad_arguments_are_named_with_the_closest_valid_one(tmp_path, no_model_loading, overrides, flags, expected):
    config = write_yaml(tmp_path / "recipe.yaml", {**VALID, **overrides})
    with pytest.raises(UsageError) as error:
        parse_dpo_args(["--config", config, *flags])
    for fragment in expected:
        assert fragment in str(error.value)


@pytest.mark.parametrize(
    "content, expected",
    [
        ("learning_rate: [1, 2\nbeta: 0.1\n", ["is not valid YAML", "line 2"]),
        ("- ropo\n- sympo_ramp\n", ["must hold a YAML mapping", "not list"]),
        ("", ["must hold a YAML mapping", "not NoneType"]),
    ],
)
def test_malformed_yaml_is_reported_with_its_location(tmp_path, no_model_loading, content, expected):
    (tmp_path / "recipe.yaml").write_text(content)
    with pytest.raises(UsageError) as error:
        parse_dpo_args(["--config", str(tmp_path / "recipe.yaml")])
    for fragment in expected:
        assert fragment in str(error.value)


def test_missing_config_file_is_reported(tmp_path, no_model_loading):
    with pytest.raises(UsageError, match=r"Config file '.*nope\.yaml' does not exist"):
        parse_dpo_args(["--config", str(tmp_path / "nope.yaml")])


def test_every_argument_mistake_is_reported_in_one_message(tmp_path, no_model_loading):
    # argparse stops at the first value it cannot convert and the dataclasses at the first refusal: a user with eight
    # mistakes would have run the command eight times, seconds of imports each.
    recipe = {**VALID, "output_dir": str(tmp_path / "out"), "lerning_rate": 1e-6, "weight_decay": "lots"}
    argv = ["--config", write_yaml(tmp_path / "recipe.yaml", recipe), "--bta", "2", "--loss_type", "ropoo",
            "--ropo_alpha", "-1", "--learning_rate", "fast", "--flip_rate", "2", "--flip_mode", "sideways"]
    with pytest.raises(UsageError) as error:
        parse_dpo_args(argv)
    expected = [
        "unknown key 'lerning_rate' (did you mean 'learning_rate'?)",
        "unknown argument '--bta' (did you mean '--beta'?)",
        "argument --learning_rate: invalid float value: 'fast'",
        "YAML key 'weight_decay': invalid float value: 'lots'",
        "Unknown loss_type 'ropoo'. Did you mean 'ropo'?",
        "`ropo_alpha` must be",
        "`flip_rate` must be in [0, 1)",
        "`flip_mode` must be one of ['symmetric', 'prefer_longer'], got 'sideways'",
    ]
    message = str(error.value)
    assert message.startswith(f"{len(expected)} problems:\n  - ")
    for fragment in expected:
        assert sum(fragment in problem for problem in error.value.problems) == 1, fragment
    assert len(error.value.problems) == len(expected)
    assert not (tmp_path / "out").exists()


def test_the_command_reports_the_issues_example_of_several_mistakes_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = training_command(["--lerning_rate", "1", "--bta", "2", "--loss_type", "ropoo"], "dpo")
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("trl-robust dpo: error: 4 problems:\n"), err
    for fragment in ("unknown argument '--lerning_rate' (did you mean '--learning_rate'?)",
                     "unknown argument '--bta' (did you mean '--beta'?)", "Unknown loss_type 'ropoo'",
                     "`model_name_or_path` is required", "No dataset: set `dataset_name`"):
        assert fragment in err
    assert "Traceback" not in err and "usage:" not in err


def test_command_reports_bad_input_in_one_message_without_launching(tmp_path):
    config = write_yaml(tmp_path / "recipe.yaml", {**VALID, "output_dir": str(tmp_path / "out"), "lerning_rate": 1e-6})
    result = run_command("trl-robust", "dpo", "--config", config, tmp_path=tmp_path)
    assert result.returncode == 2
    assert "trl-robust dpo: error:" in result.stderr
    assert "unknown key 'lerning_rate' (did you mean 'learning_rate'?)" in result.stderr
    assert "Traceback" not in result.stderr and "unrecognized arguments" not in result.stderr
    assert not (tmp_path / "out").exists()


# --- an existing output directory and resuming ---------------------------------------------------------------------


def checkpoint(directory: Path, complete: bool = True) -> Path:
    """A `checkpoint-N/` as transformers leaves it: complete once `trainer_state.json` (written last) is there; a run
    killed while saving leaves the first files only (here `config.json`). With the optimizer and scheduler states, as
    saved without `save_only_model` (a weights-only checkpoint cannot be resumed: tests/test_resume_checks.py)."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text("{}")
    if complete:
        (directory / "optimizer.pt").write_bytes(b"")
        (directory / "scheduler.pt").write_bytes(b"")
        (directory / "trainer_state.json").write_text(json.dumps({"global_step": int(directory.name.split("-")[1])}))
    return directory


def test_a_non_empty_output_dir_is_refused_and_left_as_it_was(tmp_path, no_model_loading):
    out = tmp_path / "out"
    checkpoint(out / "checkpoint-8")
    checkpoint(out / "checkpoint-16")
    checkpoint(out / "checkpoint-24", complete=False)  # killed while saving: never suggested
    (out / "model.safetensors").write_bytes(b"weights of an earlier run")
    config = write_yaml(tmp_path / "recipe.yaml", {**VALID, "output_dir": str(out)})
    with pytest.raises(UsageError) as error:
        parse_dpo_args(["--config", config])
    message = str(error.value)
    assert "already exists and is not empty (checkpoint-16, checkpoint-24, checkpoint-8, model.safetensors)" in message
    assert f"--resume_from_checkpoint {out / 'checkpoint-16'}`" in message  # the latest complete, by step, not by name
    assert "--overwrite_output_dir true" in message
    assert f"incomplete: {out / 'checkpoint-24'} (no trainer_state.json" in message
    assert f"--resume_from_checkpoint {out / 'checkpoint-24'}" not in message
    assert (out / "model.safetensors").read_bytes() == b"weights of an earlier run"


def test_a_non_empty_output_dir_with_only_incomplete_checkpoints_suggests_no_resume(tmp_path, no_model_loading):
    out = tmp_path / "out"
    checkpoint(out / "checkpoint-4", complete=False)
    config = write_yaml(tmp_path / "recipe.yaml", {**VALID, "output_dir": str(out)})
    with pytest.raises(UsageError) as error:
        parse_dpo_args(["--config", config])
    assert "--resume_from_checkpoint" not in str(error.value) and "--overwrite_output_dir true" in str(error.value)


@pytest.mark.parametrize("flags", [["--overwrite_output_dir", "true"], ["--resume_from_checkpoint", "true"]])
def test_a_non_empty_output_dir_is_accepted_when_asked_for(tmp_path, no_model_loading, flags):
    out = tmp_path / "out"
    checkpoint(out / "checkpoint-3")
    (out / "README.md").write_text("an earlier run")
    config = write_yaml(tmp_path / "recipe.yaml", {**VALID, "output_dir": str(out)})
    parse_dpo_args(["--config", config, *flags])  # no error


@pytest.mark.parametrize(
    "yaml_value, flags",
    [(True, []), (None, ["--resume_from_checkpoint", "true"]), (None, ["--resume_from_checkpoint", "True"]),
     (None, ["--resume_from_checkpoint=yes"]), ("on", [])],
)
def test_resume_from_checkpoint_true_is_the_latest_complete_checkpoint(tmp_path, no_model_loading, yaml_value, flags):
    out = tmp_path / "out"
    for step, complete in ((2, True), (10, True), (9, True), (12, False), (14, False)):
        checkpoint(out / f"checkpoint-{step}", complete)
    recipe = {**VALID, "output_dir": str(out), **({"resume_from_checkpoint": yaml_value} if yaml_value else {})}
    args = parse_dpo_args(["--config", write_yaml(tmp_path / "recipe.yaml", recipe), *flags])
    latest = str(out / "checkpoint-10")  # by step (10 > 9 > 2); 12 and 14 were cut short while saving
    assert args.training_args.resume_from_checkpoint == latest
    assert args.script_argv[-2:] == ["--resume_from_checkpoint", latest]  # the training processes resume from it too
    (notice,) = args.notices
    assert f"resuming from {latest}" in notice
    assert f"incomplete {out / 'checkpoint-12'}, {out / 'checkpoint-14'} (no trainer_state.json" in notice


@pytest.mark.parametrize("word", ["false", "No"])
def test_resume_from_checkpoint_false_starts_a_new_run(tmp_path, no_model_loading, word):
    config = write_yaml(tmp_path / "recipe.yaml", {**VALID, "output_dir": str(tmp_path / "new")})
    args = parse_dpo_args(["--config", config, "--resume_from_checkpoint", word])
    assert args.training_args.resume_from_checkpoint is None and args.notices == []


@pytest.mark.parametrize(
    "resume, expected",
    [
        ("out/checkpoint-9", ["'out/checkpoint-9' does not exist", "Complete checkpoints: out/checkpoint-2,"]),
        ("out/README.md", ["'out/README.md' is a file, not a checkpoint directory", "checkpoint-4 (or pass `true`"]),
        ("out/checkpoint-6", ["'out/checkpoint-6' is not a complete checkpoint", "no trainer_state.json",
                              "Complete checkpoints: out/checkpoint-2, out/checkpoint-4 "]),
        ("out", ["'out' is a training output directory, not a checkpoint", "--resume_from_checkpoint out/checkpoint-4`",
                 "--output_dir out --resume_from_checkpoint true"]),
    ],
)
def test_a_bad_resume_path_is_refused_before_loading_a_model(tmp_path, no_model_loading, monkeypatch, resume, expected):
    monkeypatch.chdir(tmp_path)  # the paths are relative, as typed
    checkpoint(Path("out/checkpoint-2"))
    checkpoint(Path("out/checkpoint-4"))
    checkpoint(Path("out/checkpoint-6"), complete=False)
    Path("out/README.md").write_text("an earlier run")
    config = write_yaml(tmp_path / "recipe.yaml", {**VALID, "output_dir": "out"})
    with pytest.raises(UsageError) as error:
        parse_dpo_args(["--config", config, "--resume_from_checkpoint", resume])
    for fragment in expected:
        assert fragment in str(error.value)


@pytest.mark.parametrize("incomplete, expected", [(True, "holds only incomplete ones: "), (False, "holds no")])
def test_resume_true_without_a_complete_checkpoint_is_refused(tmp_path, no_model_loading, incomplete, expected):
    out = tmp_path / "out"
    out.mkdir()
    if incomplete:
        checkpoint(out / "checkpoint-4", complete=False)
    config = write_yaml(tmp_path / "recipe.yaml", {**VALID, "output_dir": str(out)})
    with pytest.raises(UsageError, match="resume_from_checkpoint true") as error:
        parse_dpo_args(["--config", config, "--resume_from_checkpoint", "true"])
    assert expected in str(error.value) and "--resume_from_checkpoint PATH" in str(error.value)


@pytest.mark.parametrize("output_dir, expected", [("model.bin", "is a file, not a directory"),
                                                  ("model.bin/run", "lies under")])
def test_an_output_dir_that_is_a_file_is_refused(tmp_path, no_model_loading, output_dir, expected):
    (tmp_path / "model.bin").write_bytes(b"not a directory")
    config = write_yaml(tmp_path / "recipe.yaml", {**VALID, "output_dir": str(tmp_path / output_dir)})
    for flags in ([], ["--overwrite_output_dir", "true"]):  # overwriting a file is no way out either
        with pytest.raises(UsageError, match=expected):
            parse_dpo_args(["--config", config, *flags])


def test_a_yaml_key_set_twice_is_refused_with_both_lines(tmp_path, no_model_loading):
    text = yaml.safe_dump(VALID, sort_keys=False) + "beta: 0.1\nlearning_rate: 1.0e-6\nbeta: 5.0\n"
    (tmp_path / "recipe.yaml").write_text(text)
    lines = [number for number, line in enumerate(text.splitlines(), 1) if line.startswith("beta:")]
    with pytest.raises(UsageError) as error:
        parse_dpo_args(["--config", str(tmp_path / "recipe.yaml")])
    assert f"key 'beta' is set twice, on lines {lines[0]} and {lines[1]}" in str(error.value)


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
    """4 steps with a checkpoint (weights, optimizer, scheduler) every 2: what a resumed run must end as."""
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    common = ["dpo", "--config", str(TINY_RECIPE), "--max_steps", "4", "--save_steps", "2", "--logging_steps", "1",
              "--save_only_model", "false", "--eval_strategy", "no", "--overwrite_output_dir", "false"]
    full = run_command("trl-robust", *common, "--output_dir", str(tmp_path / "full"), tmp_path=tmp_path)
    assert full.returncode == 0, full.stderr[-4000:]
    return common, tmp_path / "full", full


def logged_steps(result):  # the training logs printed per step: {'loss': ..., 'epoch': ...}
    return sum(line.lstrip().startswith("{'loss'") for line in result.stdout.splitlines())


def assert_same_weights(actual_dir, expected_dir):
    expected = AutoModelForCausalLM.from_pretrained(expected_dir).state_dict()
    actual = AutoModelForCausalLM.from_pretrained(actual_dir).state_dict()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_resume_from_checkpoint_through_the_command_continues_the_run(tmp_path, uninterrupted_run):
    # TRL 0.29's script calls `trainer.train()` and drops `--resume_from_checkpoint`; ours must honour it with every
    # TRL. Resumed from a copy of the uninterrupted run's checkpoint-2, it must train steps 3-4 only, to the same
    # weights.
    common, full_dir, full = uninterrupted_run
    shutil.copytree(full_dir / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    resume = ["--output_dir", str(tmp_path / "resumed"), "--resume_from_checkpoint", str(tmp_path / "resumed" / "checkpoint-2")]
    resumed = run_command("trl-robust", *common, *resume, tmp_path=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert (logged_steps(full), logged_steps(resumed)) == (4, 2)
    assert_same_weights(tmp_path / "resumed", full_dir)


def test_resume_true_through_the_command_continues_from_the_latest_complete_checkpoint(tmp_path, uninterrupted_run):
    # A run killed while writing checkpoint-4 left only its config.json. `--resume_from_checkpoint True` on the command
    # line (a string to TRL's parser, unlike YAML's `true`) must skip it and continue from checkpoint-2: global steps
    # 3 and 4, with the uninterrupted run's losses and weights.
    common, full_dir, full = uninterrupted_run
    out = tmp_path / "killed"
    shutil.copytree(full_dir / "checkpoint-2", out / "checkpoint-2")
    (out / "checkpoint-4").mkdir()
    shutil.copy(full_dir / "checkpoint-4" / "config.json", out / "checkpoint-4" / "config.json")
    resumed = run_command("trl-robust", *common, "--output_dir", str(out), "--resume_from_checkpoint", "True",
                          tmp_path=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"note: resuming from {out / 'checkpoint-2'}, the latest complete checkpoint" in resumed.stderr
    assert f"skipped the incomplete {out / 'checkpoint-4'}" in resumed.stderr
    assert logged_steps(resumed) == 2

    def losses(state_file):
        state = json.loads(state_file.read_text())
        return state["global_step"], {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}

    step, resumed_losses = losses(out / "checkpoint-4" / "trainer_state.json")  # written whole by the resumed run
    full_step, full_losses = losses(full_dir / "checkpoint-4" / "trainer_state.json")
    assert (step, sorted(resumed_losses)) == (full_step, [1, 2, 3, 4]) == (4, [1, 2, 3, 4])
    assert [resumed_losses[s] for s in (3, 4)] == pytest.approx([full_losses[s] for s in (3, 4)], rel=1e-4)
    assert_same_weights(out, full_dir)


# --- the environment the training processes will read ----------------------------------------------------------------


@pytest.mark.parametrize("through_yaml", [False, True], ids=["environment", "yaml-env"])
def test_a_bad_version_check_or_an_unusable_cache_is_one_message_before_launching(
    tmp_path, capsys, monkeypatch, no_model_loading, launched, through_yaml
):
    # Read only in the training processes, they gave one traceback per rank (also when set by the YAML's `env:`,
    # which TRL copies into every process's environment).
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    env = {"TRL_ROBUST_VERSION_CHECK": "strict", "TRL_ROBUST_CACHE": str(blocker / "cache")}
    for name in env:  # whatever the test sets, it is removed afterwards
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    recipe = {**VALID, "model_name_or_path": "builtin:tiny", "dataset_name": "builtin:tiny",
              "output_dir": str(tmp_path / "out"), **({"env": env} if through_yaml else {})}
    if not through_yaml:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
    code = training_command(["--config", write_yaml(tmp_path / "recipe.yaml", recipe)], "dpo")
    err = capsys.readouterr().err
    assert code == 2 and not launched and err.startswith("trl-robust dpo: error: 2 problems:"), err
    assert "environment variable TRL_ROBUST_VERSION_CHECK='strict': use one of warn, error, ignore" in err
    assert f"TRL_ROBUST_CACHE: the built-in 'builtin:tiny' is written to {blocker / 'cache'}" in err
    assert f"but {blocker} is a file, not a folder" in err
    assert err.count("(set by the YAML file's `env:`)") == (2 if through_yaml else 0)
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_an_unwritable_cache_is_refused_only_while_a_built_in_is_missing_from_it(tmp_path, monkeypatch, no_model_loading):
    from trl_robust import builtin

    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("TRL_ROBUST_CACHE", str(cache))
    real_access = os.access  # as for a user without write access there (root may write anywhere)
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: not str(path).startswith(str(cache)) and real_access(path, mode, **kw))
    recipe = write_yaml(tmp_path / "recipe.yaml", {**VALID, "model_name_or_path": "builtin:tiny"})
    with pytest.raises(UsageError, match=f"but {cache} is not writable"):
        parse_dpo_args(["--config", recipe])
    builtin.model_path("builtin:tiny")  # built once (as another user could have); then it is only read
    assert parse_dpo_args(["--config", recipe]).model_args.model_name_or_path == "builtin:tiny"


# --- what goes to `accelerate launch`, what to the training module --------------------------------------------------


def test_launcher_arguments_go_to_accelerate_and_the_rest_to_the_training_module(tmp_path, monkeypatch):
    # Removed after the test: `delenv(raising=False)` alone records nothing for an unset variable, so the value TRL's
    # parser sets from `env:` would outlive the test.
    monkeypatch.setenv("TRL_ROBUST_TEST_VARIABLE", "")
    monkeypatch.delenv("TRL_ROBUST_TEST_VARIABLE")
    recipe = {**VALID, "learning_rate": 1e-6, "num_processes": 2, "multi_gpu": True, "accelerate_config": "zero2"}
    recipe["env"] = {"TRL_ROBUST_TEST_VARIABLE": "set"}  # TRL's `env:` key, not accelerate's `--env`
    config = write_yaml(tmp_path / "recipe.yaml", recipe)
    argv = ["--config", config, "--learning_rate", "2e-6", "--main_process_port", "29555"]
    args = parse_dpo_args(argv)
    assert args.training_args.learning_rate == 2e-6  # the command line overrides the YAML file
    # `accelerate_config: zero2` becomes accelerate's `--config_file` with TRL's shipped zero2.yaml.
    assert args.launch_args[0] == "--config_file"
    assert Path(args.launch_args[1]).name == "zero2.yaml" and Path(args.launch_args[1]).is_file()
    # YAML on/off flags become bare flags (TRL would pass `--multi_gpu True`, making `True` the script).
    assert args.launch_args[2:] == ["--num_processes", "2", "--multi_gpu", "--main_process_port", "29555"]
    assert args.script_argv == ["--config", config, "--learning_rate", "2e-6"]
    assert os.environ["TRL_ROBUST_TEST_VARIABLE"] == "set"


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--multi_gpu", "true"], ["--multi_gpu"]),
        (["--multi_gpu", "True", "--learning_rate", "2e-6"], ["--multi_gpu"]),
        (["--multi_gpu=yes"], ["--multi_gpu"]),
        (["--multi_gpu"], ["--multi_gpu"]),
        (["--multi_gpu", "false"], []),
        (["--multi_gpu=off"], []),
    ],
)
def test_on_off_launcher_flags_take_true_or_false_like_booleans(tmp_path, no_model_loading, flags, expected):
    config = write_yaml(tmp_path / "recipe.yaml", {**VALID, "output_dir": str(tmp_path / "out")})
    args = parse_dpo_args(["--config", config, "--num_processes", "2", *flags])
    assert args.launch_args == ["--num_processes", "2", *expected]
    assert args.script_argv == ["--config", config, *flags[2:]]  # `--learning_rate 2e-6` only, where given
    # The same as the YAML key, which the two-process test runs end to end.
    yaml_config = write_yaml(tmp_path / "yaml.yaml", {**VALID, "output_dir": str(tmp_path / "out"), "num_processes": 2,
                                                      "multi_gpu": bool(expected)})
    assert parse_dpo_args(["--config", yaml_config]).launch_args == args.launch_args


def test_an_on_off_launcher_flag_with_another_value_is_refused(tmp_path, no_model_loading):
    config = write_yaml(tmp_path / "recipe.yaml", {**VALID, "output_dir": str(tmp_path / "out")})
    with pytest.raises(UsageError, match=r"`--multi_gpu` is on or off: .* got 'maybe'"):
        parse_dpo_args(["--config", config, "--multi_gpu=maybe"])


@pytest.fixture
def launched(monkeypatch):
    """`trl-robust dpo` up to `accelerate launch`, which records what it was given instead of starting anything."""
    import accelerate.commands.launch

    calls = []
    monkeypatch.setattr(accelerate.commands.launch, "launch_command", calls.append)
    return calls


@pytest.mark.skipif(torch.cuda.is_available(), reason="accelerate starts one process per GPU by itself")
@pytest.mark.parametrize("flags, notice", [([], True), (["--multi_gpu", "true"], False), (["--cpu"], True)])
def test_num_processes_on_a_machine_without_gpus_says_how_to_get_them(
    tmp_path, capsys, no_model_loading, launched, flags, notice
):
    config = write_yaml(tmp_path / "recipe.yaml", {**VALID, "output_dir": str(tmp_path / "out")})
    if "--cpu" in flags:  # accelerate refuses `--cpu` with `--multi_gpu`: say so before anything starts
        assert cli_main(["dpo", "--config", config, "--num_processes", "2", "--cpu", "--multi_gpu"]) == 2
        assert "only use one of `--cpu`, `--multi_gpu`" in capsys.readouterr().err and not launched
    assert cli_main(["dpo", "--config", config, "--num_processes", "2", *flags]) == 0
    (launch,) = launched
    assert launch.num_processes == 2 and launch.multi_gpu == ("--multi_gpu" in flags)
    err = capsys.readouterr().err
    assert ("accelerate will start ONE process" in err) == notice
    if notice:
        assert "add `--multi_gpu` (YAML `multi_gpu: true`) and `--use_cpu true`" in err


@pytest.mark.parametrize("accelerate_config", ["fsdp2", "zero2"])
def test_multi_gpu_with_a_sharded_accelerate_config_is_refused_before_anything_starts(
    tmp_path, capsys, no_model_loading, launched, accelerate_config
):
    # accelerate lets `--multi_gpu` override the config file's FSDP/DeepSpeed: the run would be plain DDP, silently.
    config = write_yaml(tmp_path / "recipe.yaml", {**VALID, "output_dir": str(tmp_path / "out")})
    argv = ["dpo", "--config", config, "--num_processes", "2", "--accelerate_config", accelerate_config]
    assert cli_main([*argv, "--multi_gpu"]) == 2 and not launched
    kind = "FSDP" if accelerate_config.startswith("fsdp") else "DEEPSPEED"
    assert f"`--multi_gpu` with an accelerate config for {kind} would run plain DDP" in capsys.readouterr().err


def test_help_lists_every_loss_type_and_the_accelerate_launch_options(capsys):
    register_loss("help_test_margin", lambda z: -z)  # a third party's loss, registered before the parser is made
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["dpo", "--help"])
        expected_losses = trl_robust.available_loss_types()
    finally:
        unregister_loss("help_test_margin")
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    loss_help = help_text.split("--loss_type LOSS_TYPE", 1)[1].split("\n  --", 1)[0]
    words = set(loss_help.replace(",", " ").replace(".", " ").split())
    assert {*registered_loss_types(), "help_test_margin", "sigmoid", "ipo"} <= set(expected_losses)
    assert set(expected_losses) <= words
    launcher_help = help_text.split("accelerate launch options", 1)[1]
    for option in ("--accelerate_config", "--num_processes", "--multi_gpu", "--main_process_port", "--config_file",
                   "--mixed_precision", "--num_machines", "--zero_stage", "--fsdp_version"):
        assert f"\n  {option}" in launcher_help, option
    for option in ("--module", "--no_python", "--gradient_accumulation_steps", "--debug"):  # ours, or the dataclasses'
        assert f"\n  {option}" not in launcher_help, option


def option_line(lines: list[str], option: str) -> int:
    """The help line that lists `option` (not one that mentions it in a help text)."""
    return next(i for i, line in enumerate(lines) if re.match(rf"\s+{option}(\s|,|$)", line))


def test_dpo_help_starts_with_an_example_and_the_trl_robust_options():
    lines = make_parser().format_help().splitlines()
    robust = next(i for i, line in enumerate(lines) if line.startswith("trl-robust: loss type"))
    noise = next(i for i, line in enumerate(lines) if line.startswith("trl-robust: label noise"))
    trl_fields = option_line(lines, "--learning_rate")  # TRL's training arguments, 200 of them
    examples = [line for line in lines[:robust] if line.lstrip().startswith("trl-robust dpo --")]
    assert len(examples) >= 2 and robust < 30, lines[:robust]
    for recipe in re.findall(r"recipes/\S+\.yaml", "\n".join(examples)):
        assert (REPO / recipe).is_file(), recipe
    ours = ["--loss_type", "--ropo_alpha", "--sympo_reward_clip", "--drdpo_beta_prime", "--label_smoothing",
            "--ropo_filter_ratio", "--ropo_filter_scope", "--non_finite_margins"]
    assert robust < option_line(lines, "--loss_type") < min(option_line(lines, o) for o in ours[1:])
    assert max(option_line(lines, option) for option in ours) < noise
    assert noise < min(option_line(lines, o) for o in ("--flip_rate", "--flip_seed", "--flip_mode")) < trl_fields
    assert "ropo" in lines[option_line(lines, "--loss_type") + 1]  # with its robust values


def test_help_lists_trl_fields_and_robust_fields():
    help_text = make_parser().format_help()
    for option in ("--dataset_name", "--learning_rate", "--use_peft", "--load_in_4bit", "--ropo_alpha"):
        assert option in help_text
    assert "--sympo_reward_clip" in help_text


# --- the other commands ---------------------------------------------------------------------------------------------


def test_top_level_help_describes_the_demo_as_it_runs():
    from trl_robust.experiments.demo import DEMO_METHODS

    help_text = " ".join(_help_parser({}).format_help().split())
    demo = help_text.split(" demo ", 1)[1].split(" audit ", 1)[0]
    assert DEMO_METHODS == ["DPO", "ROPO", "ROPO auto"]  # what the description below says
    assert "DPO, ROPO and ROPO with `ropo_filter_ratio: auto`" in demo and "SymPO" not in demo


def test_version_and_the_package_import_need_neither_torch_nor_trl():
    # `trl-robust --version` took seconds importing torch, transformers and TRL to print two version numbers.
    code = ("import sys; from trl_robust.cli import main; main(['--version']); import trl_robust; "
            "print(sorted(m for m in ('torch', 'transformers', 'trl', 'accelerate', 'datasets') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    trl_version = importlib.metadata.version("trl")
    assert result.stdout.splitlines() == [f"trl-robust {trl_robust.__version__} (trl {trl_version})", "[]"]


def test_other_commands_behave_exactly_as_trl(tmp_path):
    ours = run_command("trl-robust", "sft", "--help", tmp_path=tmp_path)
    theirs = run_command("trl", "sft", "--help", tmp_path=tmp_path)
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout)
    if theirs.returncode == 0:  # trl 0.29's CLI fails to import where `requests` is missing; ours then fails alike
        assert "--dataset_text_field" in ours.stdout


def test_env_adds_our_version_to_what_trl_env_prints(capsys):
    assert cli_main(["env"]) == 0
    lines = capsys.readouterr().out.splitlines()
    trl_line = next(i for i, line in enumerate(lines) if line.startswith("- TRL version"))
    assert lines[trl_line + 1].startswith(f"- trl-robust version: {trl_robust.__version__} ")
    assert any(line.startswith("- Transformers version") for line in lines)


def test_top_level_help_lists_dpo_env_and_trl_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for command in ("dpo", "env", "demo", *_trl_commands()):
        assert command in help_text


