"""`dataset_name` as one data file (`pairs.jsonl`): `trl-robust dpo|reward` train on it through TRL's own script, read
as it is, and a file that cannot serve the run as asked is refused before any model is loaded."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trl
from datasets import Dataset

import trl_robust
from trl_robust.cli import arguments
from trl_robust.cli.arguments import UsageError, parse_command_args
from trl_robust.cli.dataset_file import dataset_file_as_mixture
from trl_robust.tiny import tiny_preference_records

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"  # a Hub id: offline, any attempt to load it would fail
RECORDS = tiny_preference_records(n=6, seed=4)


def write(path, records=RECORDS):
    """`records` in the file format its name says, written here (not by the code under test)."""
    dataset = Dataset.from_list(records)
    if path.suffix == ".json":  # one JSON array, not JSON Lines
        path.write_text(json.dumps(records))
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(record) + "\n" for record in records))
    elif path.suffix == ".csv":
        dataset.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        dataset.to_parquet(path)
    else:
        path.write_text("\n".join(record["chosen"] for record in records))
    return path


def parse(command, tmp_path, data, *flags):
    argv = ["--model_name_or_path", MODEL, "--dataset_name", str(data), "--output_dir", str(tmp_path / "out"),
            "--use_cpu", "true", "--report_to", "none", *flags]
    return parse_command_args(argv, command, f"trl-robust {command}")


class TrainerBuilt(Exception):
    """Raised by the stand-in trainer: TRL's script got as far as building its trainer, with this dataset."""


def stand_in_trainer(seen):
    class StandIn:
        def __init__(self, *args, train_dataset=None, **kwargs):
            seen["train_dataset"] = train_dataset
            raise TrainerBuilt

    return StandIn


@pytest.fixture
def trl_restored(monkeypatch):
    """`run_trl_script` patches TRL and installs its trainer in `trl`: both undone afterwards."""
    for name in ("DPOTrainer", "RewardTrainer"):
        monkeypatch.setattr(trl, name, getattr(trl, name))
    yield
    trl_robust.unpatch_trl()


@pytest.mark.parametrize("command", ["dpo", "reward"])
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_trls_script_trains_on_a_single_data_file_given_as_dataset_name(tmp_path, trl_restored, command, suffix):
    # Before: TRL's script passed the file to `load_dataset`, which took it for a Hub dataset: FileNotFoundError.
    from trl_robust.scripts.training import run_trl_script

    data = write(tmp_path / f"pairs{suffix}")
    before = data.read_bytes(), data.stat().st_mtime_ns
    # A model that loads offline: TRL 0.29's dpo script loads the model before the dataset (1.x: the dataset first).
    args = parse(command, tmp_path, data, "--model_name_or_path", "builtin:tiny")
    seen = {}
    with pytest.raises(TrainerBuilt):
        run_trl_script(command, stand_in_trainer(seen), args.dataclasses)
    assert seen["train_dataset"].to_list() == RECORDS  # every pair, as written, in order
    assert (data.read_bytes(), data.stat().st_mtime_ns) == before  # the user's file is only read


def test_a_file_becomes_the_datasets_mixture_trl_loads_with_its_builder(tmp_path):
    data = write(tmp_path / "pairs.jsonl")
    script_args, training_args, _, dataset_args = parse("dpo", tmp_path, data).dataclasses
    assert dataset_file_as_mixture(script_args, dataset_args, training_args)
    (entry,) = dataset_args.datasets
    assert (entry.path, entry.data_files, entry.split) == ("json", str(data), "train")
    assert script_args.dataset_name is None  # TRL's script would otherwise warn that it ignores it
    assert trl.get_dataset(dataset_args)["train"].to_list() == RECORDS


def test_a_directory_a_hub_id_and_a_given_mixture_are_left_to_trl(tmp_path):
    (tmp_path / "data").mkdir()
    write(tmp_path / "data" / "train.jsonl")
    for dataset_name in (str(tmp_path / "data"), "trl-lib/ultrafeedback_binarized"):
        script_args, training_args, _, dataset_args = parse("dpo", tmp_path, dataset_name).dataclasses
        assert not dataset_file_as_mixture(script_args, dataset_args, training_args)
        assert script_args.dataset_name == dataset_name and not dataset_args.datasets
    mixture = tmp_path / "mixture.yaml"
    mixture.write_text(f"datasets:\n  - path: json\n    data_files: {tmp_path / 'data' / 'train.jsonl'}\n")
    data = write(tmp_path / "pairs.jsonl")
    script_args, training_args, _, dataset_args = parse("dpo", tmp_path, data, "--config", str(mixture)).dataclasses
    assert not dataset_file_as_mixture(script_args, dataset_args, training_args)  # TRL uses the mixture given


@pytest.mark.parametrize(
    "name, flags, expected",
    [
        ("pairs.jsonl", ["--eval_strategy", "steps"], ["loads as one split, 'train'", "needs a test split ('test')",
                                                         "`--eval_strategy no`", "train.jsonl` and `test.jsonl`",
                                                         "test_split_size"]),
        ("pairs.csv", ["--dataset_train_split", "training"], ["`dataset_train_split` 'training' does not exist"]),
        ("pairs.txt", [], ["extension '.txt', which is not a data format read here", ".jsonl, .json, .csv"]),
    ],
)
def test_a_file_that_cannot_serve_the_run_is_refused_before_any_model_loads(
    tmp_path, monkeypatch, trl_restored, no_model_loading, name, flags, expected
):
    from trl_robust.scripts.training import run_trl_script

    data = write(tmp_path / name)
    with pytest.raises(UsageError) as checked:  # where `trl-robust` parses its arguments, before launching
        parse("reward", tmp_path, data, *flags)
    with monkeypatch.context() as unchecked:  # the same arguments, as a training process gets them
        unchecked.setattr(arguments.dataset_file, "check_dataset_file", lambda *args: None)
        args = parse("reward", tmp_path, data, *flags)
    with pytest.raises(UsageError) as in_the_script:  # and again in each training process, before TRL's script runs
        run_trl_script("reward", stand_in_trainer({}), args.dataclasses)
    for message in (str(checked.value), str(in_the_script.value)):
        for fragment in expected:
            assert fragment in message


def test_the_reward_command_trains_on_a_jsonl_file_and_warns_once(tmp_path):
    # The one test here that starts the real command (slow): a `.jsonl` file as `dataset_name` trains end to end
    # (before: FileNotFoundError in the training process), and the label_smoothing hint is printed once, not once by
    # the command and twice more by the training process (issue 19, fault 14a).
    recipe = Path(__file__).resolve().parent.parent / "recipes" / "reward_sympo_sigmoid.yaml"
    data = write(tmp_path / "pairs.jsonl", tiny_preference_records(n=16, seed=2))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false",
           "TRL_ROBUST_CACHE": str(tmp_path / "builtin-cache"), "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache")}
    argv = ["reward", "--config", str(recipe), "--dataset_name", str(data), "--output_dir", str(tmp_path / "out"),
            "--eval_strategy", "no", "--max_steps", "2", "--label_smoothing", "0.1"]
    result = subprocess.run([str(Path(sys.executable).parent / "trl-robust"), *argv], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert result.stderr.count("`label_smoothing=0.1` has no effect with loss_type 'sympo_sigmoid'") == 1
