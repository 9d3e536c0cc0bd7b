"""Reserved `builtin:` names, so that a recipe can train the package's tiny model on its tiny data with no Hub.

    model_name_or_path: builtin:tiny               the 2-layer Llama and word-level tokenizer of `trl_robust.tiny`
    dataset_name: builtin:tiny                     64 train / 16 test prompt-chosen-rejected pairs (plain text)
    dataset_name: builtin:tiny-conversational      the same kind of pairs as chat messages

The `builtin:` prefix cannot be a Hub id or a relative path a user meant, so it never shadows one. Before TRL's
script runs, each name is written once to a local cache directory ($TRL_ROBUST_CACHE, by default
~/.cache/trl-robust/<version>) and replaced by that path; TRL then loads it like any local model or JSONL dataset.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

from .. import __version__
from ..tiny import make_tiny_model, tiny_preference_records

PREFIX = "builtin:"
MODELS = ("builtin:tiny",)
DATASETS = {"builtin:tiny": False, "builtin:tiny-conversational": True}  # name -> conversational
_TRAIN_PAIRS, _TEST_PAIRS = 64, 16


def is_builtin(name) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trl-robust"
    # Versioned: a later release may build a different tiny model under the same name.
    return Path(os.environ.get("TRL_ROBUST_CACHE", default)) / __version__


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


def materialise_builtins(script_args, model_args) -> None:
    """Replace `builtin:` values of `model_name_or_path` and `dataset_name` by local paths, building them if needed."""
    if model_args.model_name_or_path in MODELS:
        model_args.model_name_or_path = _materialise("models", model_args.model_name_or_path, make_tiny_model)
    if script_args.dataset_name in DATASETS:
        conversational = DATASETS[script_args.dataset_name]
        script_args.dataset_name = _materialise(
            "datasets", script_args.dataset_name, lambda path: _write_dataset(path, conversational)
        )
