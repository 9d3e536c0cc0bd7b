"""`dataset_name` given as one data file (`pairs.jsonl`) for `trl-robust dpo|reward`.

TRL's scripts hand `dataset_name` to `datasets.load_dataset`, which takes a Hub id or a directory of data files, not a
file: given `pairs.jsonl` it looks for a dataset of that name and fails with `FileNotFoundError`. The fix uses what
TRL's scripts already offer instead of copying them: a file becomes a one-entry `datasets` mixture
(`DatasetMixtureConfig`), `{path: json, data_files: pairs.jsonl}`, which TRL's scripts load with `datasets`' builder
for that format (`trl.get_dataset`). The file is read as it is; nothing is copied, moved or written.

`datasets` loads a single file as one split, `train`: a run that evaluates (`eval_strategy` other than `no`) or
trains on another split is refused with what to do, before any model is loaded.
"""

from pathlib import Path

from .. import builtin
from .usage import UsageError

# The `datasets` builder of each data file format a preference dataset comes in (`datasets.load_dataset(builder,
# data_files=FILE)`); JSON Lines is read by the `json` builder.
DATA_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}
# The one split `datasets` makes of a single file.
SINGLE_FILE_SPLIT = "train"


def _suffixes() -> str:
    return ", ".join(DATA_FILE_BUILDERS)


def dataset_file(script_args) -> Path | None:
    """`dataset_name` as a path where it names an existing file; None for a Hub id, a directory or a built-in name."""
    name = getattr(script_args, "dataset_name", None)
    if not name or builtin.is_builtin(name):
        return None
    path = Path(name).expanduser()
    return path if path.is_file() else None


def check_dataset_file(script_args, training_args, dataset_args=None) -> None:
    """Refuse, before any model is loaded, a `dataset_name` file that cannot be trained on as asked: a format
    `datasets` has no builder for here, or a run that needs a split other than the file's one `train` split. Nothing
    to check where `dataset_args` has a `datasets` mixture: TRL's scripts then ignore `dataset_name`."""
    path = dataset_file(script_args)
    if path is None or getattr(dataset_args, "datasets", None):
        return
    prefix = f"`dataset_name` {str(path)!r} is a single file"
    if path.suffix.lower() not in DATA_FILE_BUILDERS:
        raise UsageError(
            f"{prefix} with the extension {path.suffix or '(none)'!r}, which is not a data format read here. Use a "
            f"{_suffixes()} file, or a directory of such files (`train.jsonl`, `test.jsonl`) as `dataset_name`."
        )
    layout = (
        f"put the pairs in a directory as `train.jsonl` and `test.jsonl` and pass the directory as `dataset_name`, or "
        f"split the file with a `datasets` mixture instead of `dataset_name` (YAML: `datasets: [{{path: "
        f"{DATA_FILE_BUILDERS[path.suffix.lower()]}, data_files: {path}}}]` and `test_split_size: 0.1`)"
    )
    train_split = getattr(script_args, "dataset_train_split", SINGLE_FILE_SPLIT)
    if train_split != SINGLE_FILE_SPLIT:
        raise UsageError(
            f"{prefix}, which `datasets` loads as one split, {SINGLE_FILE_SPLIT!r}, so `dataset_train_split` "
            f"{train_split!r} does not exist. Leave `dataset_train_split` at 'train', or {layout}."
        )
    if _strategy(training_args) != "no":  # as TRL's scripts test it before taking the test split
        test_split = getattr(script_args, "dataset_test_split", "test")
        raise UsageError(
            f"{prefix}, which `datasets` loads as one split, {SINGLE_FILE_SPLIT!r}; evaluation (`eval_strategy` "
            f"{_strategy(training_args)!r}) needs a test split ({test_split!r}). Set `--eval_strategy no` to train "
            f"without one, or {layout}."
        )


def _strategy(training_args) -> str:
    value = getattr(training_args, "eval_strategy", "no")  # an `IntervalStrategy` after `TrainingArguments` parsed it
    return getattr(value, "value", value)


def dataset_file_as_mixture(script_args, dataset_args, training_args) -> bool:
    """Where `dataset_name` is a data file (and no `datasets` mixture is given, which TRL's scripts would use instead),
    make it the mixture TRL's scripts load, with the builder its extension names; `dataset_name` becomes None, so that
    TRL's script does not warn that it ignores it. Checks it first (`check_dataset_file`). Returns whether it did."""
    path = dataset_file(script_args)
    if path is None or getattr(dataset_args, "datasets", None):
        return False
    check_dataset_file(script_args, training_args, dataset_args)
    entry = {"path": DATA_FILE_BUILDERS[path.suffix.lower()], "data_files": str(path), "split": SINGLE_FILE_SPLIT}
    if script_args.dataset_config:  # `load_dataset`'s `name`, as TRL's script would have passed it
        entry["name"] = script_args.dataset_config
    # TRL's own dataclass turns the entry into its `DatasetConfig` (as it does for YAML); streaming as asked for.
    mixture = type(dataset_args)(datasets=[entry], streaming=bool(getattr(script_args, "dataset_streaming", False)))
    dataset_args.datasets, dataset_args.streaming = mixture.datasets, mixture.streaming
    script_args.dataset_name = None
    return True
