"""Reserved `builtin:` names, so that a recipe or a script can train the package's tiny model on its tiny data with no
Hub.

    model_name_or_path: builtin:tiny               the 2-layer Llama and word-level tokenizer of `trl_robust.tiny`
    dataset_name: builtin:tiny                     64 train / 16 test prompt-chosen-rejected pairs (plain text)
    dataset_name: builtin:tiny-conversational      the same kind of pairs as chat messages

The `builtin:` prefix cannot be a Hub id or a relative path a user meant, so it never shadows one. Each name is written
once to a local cache directory ($TRL_ROBUST_CACHE, by default ~/.cache/trl-robust/<version>) and replaced by that path;
TRL then loads it like any local model or JSONL dataset.

One home for the commands (`trl-robust dpo`, `trl-robust audit`), the trainer (`RobustDPOTrainer(model="builtin:tiny")`)
and `audit_preferences`.
"""

import importlib.metadata
import json
import os
import shutil
import tempfile
from pathlib import Path

from .tiny import make_tiny_model, tiny_preference_records

PREFIX = "builtin:"
MODELS = ("builtin:tiny",)
DATASETS = {"builtin:tiny": False, "builtin:tiny-conversational": True}  # name -> conversational
_TRAIN_PAIRS, _TEST_PAIRS = 64, 16


def is_builtin(name) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def _package_version() -> str:
    # `trl_robust.__version__` lives in the public API module, a layer above this one; the installed distribution's
    # metadata carries the same value (pyproject reads it from there).
    try:
        return importlib.metadata.version("trl-robust")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


CACHE_ENV = "TRL_ROBUST_CACHE"


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trl-robust"
    # Versioned: a later release may build a different tiny model under the same name.
    return Path(os.environ.get(CACHE_ENV, default)) / _package_version()


def cache_problem(script_args, model_args) -> str | None:
    """Why the built-in model or dataset named in these arguments cannot be written to the cache (None if it can, or is
    there already): the nearest existing folder on the way is a file, or not writable. `trl-robust dpo|reward` asks
    before launching, so that an unusable `TRL_ROBUST_CACHE` is one message rather than a traceback in every training
    process."""
    wanted = [("models", model_args.model_name_or_path, MODELS), ("datasets", script_args.dataset_name, DATASETS)]
    for kind, name, known in wanted:
        if name not in known:
            continue
        target = cache_dir() / kind / name.removeprefix(PREFIX)  # where `_materialise` builds it
        if target.is_dir():
            continue  # built before: only read
        existing = target.parent
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
            continue
        why = "is a file, not a folder" if existing.exists() and not existing.is_dir() else "is not writable"
        return (
            f"{CACHE_ENV}: the built-in {name!r} is written to {target.parent} on first use, but {existing} {why}. "
            f"Set {CACHE_ENV} to a folder you can write to (default: ~/.cache/trl-robust)."
        )
    return None


def _materialise(kind: str, name: str, build) -> str:
    """Build `name` into the cache once and return its path; safe when several processes (ranks) race."""
    target = cache_dir() / kind / name.removeprefix(PREFIX)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        build(staging)
        try:
            os.rename(staging, target)  # atomic: readers never see a half-written directory
        except OSError:  # another process finished first; its copy is identical
            shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def _write_dataset(path: Path, conversational: bool) -> None:
    # `load_dataset(<dir>)` maps train.jsonl / test.jsonl to the train / test splits TRL's script reads.
    for split, n, seed in (("train", _TRAIN_PAIRS, 0), ("test", _TEST_PAIRS, 1)):
        records = tiny_preference_records(n=n, seed=seed, conversational=conversational)
        with open(path / f"{split}.jsonl", "w") as file:
            file.writelines(json.dumps(record) + "\n" for record in records)


def model_path(name: str) -> str:
    """The local directory of the built-in model `name`, built on first use; a `ValueError` lists the known names."""
    if name not in MODELS:
        raise ValueError(
            f"unknown built-in model {name!r}; the built-in models are {', '.join(map(repr, MODELS))}. "
            "Pass a Hub model id or a local directory otherwise."
        )
    return _materialise("models", name, make_tiny_model)


def dataset_path(name: str) -> str:
    """The local directory (train.jsonl, test.jsonl) of the built-in dataset `name`, built on first use."""
    if name not in DATASETS:
        raise ValueError(
            f"unknown built-in dataset {name!r}; the built-in datasets are {', '.join(map(repr, DATASETS))}."
        )
    conversational = DATASETS[name]
    return _materialise("datasets", name, lambda path: _write_dataset(path, conversational))


def materialise_builtins(script_args, model_args) -> None:
    """Replace `builtin:` values of `model_name_or_path` and `dataset_name` by local paths, building them if needed."""
    if model_args.model_name_or_path in MODELS:
        model_args.model_name_or_path = model_path(model_args.model_name_or_path)
    if script_args.dataset_name in DATASETS:
        script_args.dataset_name = dataset_path(script_args.dataset_name)
