"""The preference split to audit, from a name as `--dataset_name` takes it: a `builtin:` name, a directory written by
`save_to_disk`, a single data file, a local directory of data files, or a Hub id."""

import os

from .. import builtin
from ..paths import looks_like_local_path
from .checks import AuditInputError

# A single file is read by the `datasets` builder for its format (`load_dataset(path)` looks for a dataset script or
# a directory there and stops with FileNotFoundError); compressed files are read through, as `datasets` does.
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".zip")


def file_builder(path: str) -> str:
    """The `datasets` builder that reads a single data file, by its extension; an `AuditInputError` for any other."""
    name = path.lower()
    for suffix in _COMPRESSION:
        name = name.removesuffix(suffix)
    builder = next((b for extension, b in FILE_BUILDERS.items() if name.endswith(extension)), None)
    if builder is None:
        raise AuditInputError(
            f"dataset {path!r} is a file the audit cannot read: pass a {', '.join(FILE_BUILDERS)} file (one "
            "prompt/chosen/rejected record per row), a directory of them, or a directory written by save_to_disk"
        )
    return builder


def load_preference_split(name, config: str | None = None, split: str = "train"):
    """The `split` of the dataset `name` (for a single file: the file, whatever `split` is called)."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    if builtin.is_builtin(name):
        try:
            name = builtin.dataset_path(name)
        except ValueError as error:
            raise AuditInputError(f"dataset: {error}") from None
    name = os.path.expanduser(os.fspath(name))
    if looks_like_local_path(name) and not os.path.exists(name):
        raise AuditInputError(f"dataset_name {name!r} does not exist")
    if os.path.isfile(name):
        return load_dataset(file_builder(name), data_files={split: name}, split=split)
    if os.path.isdir(name) and os.path.isfile(os.path.join(name, "state.json")):  # Dataset.save_to_disk
        return load_from_disk(name)
    if os.path.isdir(name) and os.path.isfile(os.path.join(name, "dataset_dict.json")):  # DatasetDict.save_to_disk
        dataset = load_from_disk(name)
        if not isinstance(dataset, DatasetDict) or split not in dataset:
            raise AuditInputError(f"dataset {name!r} has no split {split!r}")
        return dataset[split]
    try:
        return load_dataset(name, name=config, split=split)
    except ValueError as error:
        if "split" in str(error).lower():
            raise AuditInputError(f"dataset {name!r}: {error}") from None
        raise
