"""`output_dir` and `resume_from_checkpoint` of `trl-robust dpo|reward`, checked before any model is loaded: a new run
never writes over an old one unasked, and a resumed one starts from a complete checkpoint."""

import os
import re
from pathlib import Path

from ..checkpoint_files import weights_only
from ..paths import listing_if_not_empty
from .usage import UsageError, bool_word

# transformers' `Trainer._save_checkpoint` writes this file last (after the weights, optimizer, scheduler and RNG
# states), and `train()` reads it to resume: a `checkpoint-N/` without it was cut short while saving.
TRAINER_STATE = "trainer_state.json"
_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")  # transformers' `get_last_checkpoint` rule


def check_output_dir_is_a_directory(output_dir: Path) -> None:
    """transformers would fail on a file only when it first saves, after the model, data and training."""
    existing = next((path for path in (output_dir, *output_dir.parents) if path.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file, not a directory" if existing == output_dir else f"lies under {str(existing)!r}, a file"
        raise UsageError(f"`output_dir` {str(output_dir)!r} {where}; choose another `--output_dir`.")


def check_output_dir(training_args, overwrite: bool) -> None:
    """Refuse to train into a directory that holds files, unless resuming or told to overwrite: a new run would
    replace the model, checkpoints and model card of the last one."""
    output_dir = Path(training_args.output_dir)
    if overwrite or training_args.resume_from_checkpoint:
        return
    shown = listing_if_not_empty(output_dir)
    if shown is None:
        return
    complete, incomplete = _checkpoints(output_dir)
    if complete and weights_only(complete[-1]):  # nothing to resume from: start from its weights instead
        resume = (
            f"`--model_name_or_path {complete[-1]}` with another `--output_dir` to train on from its weights (saved "
            "with `save_only_model`, it cannot be resumed), "
        )
    else:
        resume = f"`--resume_from_checkpoint {complete[-1]}` (or `true`) to continue that run, " if complete else ""
    raise UsageError(
        f"`output_dir` {str(output_dir)!r} already exists and is not empty ({shown}); training would overwrite it. "
        f"Pass {resume}`--overwrite_output_dir true` to write over it, or choose another `--output_dir`."
        + (f" Never resumed from, being incomplete: {_incomplete_text(incomplete)}." if incomplete else "")
    )


# --- resuming -------------------------------------------------------------------------------------------------------


def resumes_from_latest(value) -> bool:
    return value is True or bool_word(value) is True


def resolve_resume(training_args) -> list[str]:
    """Set `resume_from_checkpoint` to a complete checkpoint's path, or None, before any model is loaded; transformers
    would fail after loading the model and data (on `true` from the command line, a missing path, or a checkpoint
    cut short while saving, which its `get_last_checkpoint` still picks). Returns what to tell the user."""
    value, output_dir = training_args.resume_from_checkpoint, Path(training_args.output_dir)
    if value is None or value is False or bool_word(value) is False:
        training_args.resume_from_checkpoint = None
        return []
    if not resumes_from_latest(value):
        _check_checkpoint(Path(value), output_dir)
        _check_resumable(Path(value))
        return []
    complete, incomplete = _checkpoints(output_dir)
    if not complete:
        found = f"only incomplete ones: {_incomplete_text(incomplete)}." if incomplete else "no `checkpoint-N/`."
        raise UsageError(
            f"`resume_from_checkpoint true` continues from the latest complete checkpoint in `output_dir` "
            f"{str(output_dir)!r}, which holds {found} Set `--output_dir` to the run to continue, pass "
            "`--resume_from_checkpoint PATH`, or leave `resume_from_checkpoint` out to start a new run "
            "(with `--overwrite_output_dir true` if `output_dir` holds files)."
        )
    _check_resumable(complete[-1], latest_of=output_dir)
    training_args.resume_from_checkpoint = str(complete[-1])
    skipped = [path for path in incomplete if _step(path) > _step(complete[-1])]
    notice = f"resuming from {complete[-1]}, the latest complete checkpoint"
    return [notice + (f"; skipped the incomplete {_incomplete_text(skipped)}." if skipped else ".")]


def _check_checkpoint(path: Path, output_dir: Path) -> None:
    alternatives = _checkpoints(path.parent)[0] or _checkpoints(output_dir)[0]
    instead = (
        f" Complete checkpoints: {', '.join(str(p) for p in alternatives[-3:])} (or pass `true` for the latest)."
        if alternatives
        else ""
    )
    prefix = f"`resume_from_checkpoint` {str(path)!r}"
    if not path.exists():
        raise UsageError(f"{prefix} does not exist (in {os.getcwd()}).{instead}")
    if not path.is_dir():
        raise UsageError(f"{prefix} is a file, not a checkpoint directory (`checkpoint-N/`).{instead}")
    if (path / TRAINER_STATE).is_file():
        return
    inside = _checkpoints(path)[0]
    if inside:  # the run's output directory instead of one of its checkpoints
        raise UsageError(
            f"{prefix} is a training output directory, not a checkpoint: pass `--resume_from_checkpoint "
            f"{inside[-1]}`, or `--output_dir {path} --resume_from_checkpoint true` for its latest complete one."
        )
    raise UsageError(
        f"{prefix} is not a complete checkpoint: it has no {TRAINER_STATE}, which transformers writes last, so the "
        f"run was stopped while saving it.{instead}"
    )


def _check_resumable(checkpoint: Path, latest_of: Path | None = None) -> None:
    """Refuse to resume from a weights-only checkpoint: transformers would continue from its step with a new optimizer
    (Adam's moments at zero) and the learning-rate schedule restarted, without a word."""
    if not weights_only(checkpoint):
        return
    which = repr(str(checkpoint))
    if latest_of is not None:
        which = f"the latest complete checkpoint in {str(latest_of)!r}, {which},"
    raise UsageError(
        f"`resume_from_checkpoint`: {which} holds the model weights only (saved with `save_only_model: true`): no "
        "optimizer, learning-rate scheduler or RNG state, so the run cannot continue where it stopped (transformers "
        "would restart the optimizer and schedule without a word). To train on from these weights as a new run, pass "
        f"`--model_name_or_path {checkpoint}` with another `--output_dir` and without `resume_from_checkpoint` (the "
        "schedule then starts again). To be able to resume a run, save its checkpoints without `save_only_model` "
        "(`--save_only_model false`)."
    )


def _checkpoints(directory: Path) -> tuple[list[Path], list[Path]]:
    """The `checkpoint-N` directories of `directory` by step: (complete ones, incomplete ones)."""
    if not directory.is_dir():
        return [], []
    found = sorted(
        (path for path in directory.iterdir() if _CHECKPOINT_NAME.fullmatch(path.name) and path.is_dir()), key=_step
    )
    return [p for p in found if (p / TRAINER_STATE).is_file()], [p for p in found if not (p / TRAINER_STATE).is_file()]


def _step(checkpoint: Path) -> int:
    return int(_CHECKPOINT_NAME.fullmatch(checkpoint.name).group(1))


def _incomplete_text(incomplete: list[Path]) -> str:
    names = ", ".join(str(path) for path in incomplete)
    return f"{names} (no {TRAINER_STATE}, which transformers writes last: the run was stopped while saving)"
