"""The audit's input checks, all before any model is loaded: settings, output directory, dataset, loss, and the config of
the Trainer that scores (building it runs the loss's own checks). (The models' checks — paths, kind, vocabulary, β —
are in `trl_robust.audit.models`.)"""

import math
import numbers
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..data import ROW_COLUMN
from ..paths import listing_if_not_empty


class AuditInputError(ValueError):
    """Bad input to the audit, found before any model is loaded (or, for rows TRL would not score, right after)."""


def check_settings(beta, batch_size, max_length) -> None:
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not math.isfinite(beta) or beta <= 0:
        raise AuditInputError(f"beta must be a finite number > 0 (the β the policy was trained with), got {beta!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise AuditInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if max_length is not None and (
        isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral) or max_length < 2
    ):
        raise AuditInputError(f"max_length must be None (no truncation) or an integer >= 2, got {max_length!r}")


def check_output_dir(output_dir, overwrite: bool) -> None:
    """Refuse, before any scoring, an output_dir the audit could not write its files into: one that is a file, lies
    under a file, cannot be created or written, or (without `overwrite`) already holds files."""
    if output_dir is None:
        return
    path = Path(output_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise AuditInputError(f"output_dir {str(output_dir)!r} exists and is not a directory")
    shown = None if overwrite else listing_if_not_empty(path)
    if shown is not None:
        raise AuditInputError(
            f"output_dir {str(output_dir)!r} already exists and is not empty ({shown}); the audit would overwrite it. "
            "Pass overwrite=True (`--overwrite_output_dir true`) or choose another directory."
        )
    # The nearest part of the path that exists is where the directory will be created (or is): it must be a
    # directory we can write in. Tried for real, with a uniquely named directory removed at once, because permission
    # bits do not tell (root, read-only file systems, ACLs).
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise AuditInputError(
            f"output_dir {str(output_dir)!r} lies under {str(existing)!r}, which is a file, not a directory; choose "
            "another output_dir"
        )
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".trl-robust-write-check-", dir=existing))
    except OSError as error:
        raise AuditInputError(
            f"output_dir {str(output_dir)!r} cannot be written: creating a directory in {str(existing)!r} failed "
            f"({error.strerror or error}); choose a directory you can write to"
        ) from None


def check_dataset(dataset, flip_column: str | None) -> list[bool] | None:
    """Validate the preference dataset; return its flip record (or None)."""
    from datasets import Dataset

    from ..dataset_checks import check_preference_dataset

    if not isinstance(dataset, Dataset):
        hint = "; pick a split, e.g. dataset['train']" if isinstance(dataset, Mapping) else ""
        raise AuditInputError(f"dataset must be a datasets.Dataset, got {type(dataset).__name__}{hint}")
    if ROW_COLUMN in dataset.column_names:
        raise AuditInputError(f"dataset has a column named {ROW_COLUMN!r}, which the audit reserves; rename it")
    try:
        check = check_preference_dataset(dataset, "dataset")
    except ValueError as error:
        raise AuditInputError(str(error)) from None
    if check["skipped"] == "tokenized":
        raise AuditInputError(
            "dataset is already tokenised (it has prompt_ids/chosen_ids/... columns); pass the text dataset, so the "
            "audit tokenises it exactly as TRL does"
        )
    if not flip_column or flip_column not in dataset.column_names:
        return None
    flags = dataset[flip_column]
    bad = [i for i, flag in enumerate(flags) if not isinstance(flag, (bool, np.bool_)) and flag not in (0, 1)]
    if bad:
        raise AuditInputError(
            f"column {flip_column!r} must hold booleans (True where the label was flipped); rows {bad[:5]} hold "
            f"{[flags[i] for i in bad[:5]]}. Pass flip_column=None to ignore it."
        )
    return [bool(flag) for flag in flags]


def check_loss_type(loss_type, loss_hyperparameters, reward_model: bool = False) -> None:
    """`loss_type` and its hyperparameters; for a reward model (`reward_model`), one of `reward_loss_types()`."""
    from ..registry import get_loss_spec, registered_loss_types

    if loss_hyperparameters and loss_type is None:
        raise AuditInputError("loss_hyperparameters were given without a loss_type")
    if loss_type is None or loss_type == ("bradley_terry" if reward_model else "sigmoid"):  # always reported
        return
    spec = get_loss_spec(loss_type)
    if reward_model:
        from ..reward.config import reward_loss_types, unknown_reward_loss_error

        if loss_type not in reward_loss_types():
            raise AuditInputError(f"{unknown_reward_loss_error(loss_type)} (The audit reports the Bradley–Terry loss "
                                  "of a reward model always, and optionally one of these.)")
    if spec is None:
        raise AuditInputError(
            f"loss_type {loss_type!r} is not a loss type registered in trl_robust; the audit scores the DPO loss and "
            f"optionally one of {registered_loss_types()}"
        )
    allowed = {h.attribute for h in spec.hyperparameters.values()} | ({"sympo_reward_clip"} if spec.uses_reward_clip else set())
    unknown = sorted(set(loss_hyperparameters or {}) - allowed)
    if unknown:
        raise AuditInputError(
            f"loss_hyperparameters {unknown} do not apply to loss_type {loss_type!r} "
            f"(it takes {sorted(allowed) or 'none'})"
        )


def check_per_pair(loss_type: str, args) -> None:
    """Refuse a loss whose value for one pair depends on the other pairs of its batch (e.g. Dr. DPO)."""
    from ..config import robust_hyperparameter
    from ..registry import get_loss_spec

    spec = get_loss_spec(loss_type)
    kwargs = {kw: robust_hyperparameter(args, h.attribute) for kw, h in spec.hyperparameters.items()}
    z = torch.tensor([-2.0, 0.5, 3.0])
    together = spec.fn(z, **kwargs)
    alone = torch.cat([spec.fn(z[i : i + 1], **kwargs) for i in range(len(z))])
    if not torch.allclose(together, alone):
        raise AuditInputError(
            f"loss_type {loss_type!r} couples the pairs of a batch (one pair's loss depends on the others), so it has "
            "no per-pair value to rank by; audit without loss_type (the DPO loss and z are always reported)"
        )


def scoring_config(config_cls, loss_hyperparameters, *, trainer_dir, batch_size, max_length, use_cpu, show_progress,
                   dataset_num_proc, **settings):
    """A `config_cls` (RobustDPOConfig, RobustRewardConfig) for a Trainer that only evaluates, with `settings` (the
    loss, and what the scorer needs of its kind) and the loss's hyperparameters: a plugin's too, through a subclass
    with a field for them (never saved: `save_strategy` is "no"). Building it runs the loss's own checks."""
    from ..registry import config_class_with

    return config_class_with(config_cls, loss_hyperparameters or {})(
        output_dir=trainer_dir,  # a temporary directory: the Trainer writes nothing we keep
        per_device_eval_batch_size=batch_size,
        per_device_train_batch_size=batch_size,
        max_length=max_length,
        **dict(loss_hyperparameters or {}),
        **settings,
        # No autocast (TRL's DPOConfig defaults bf16 to True): models run in the dtype they were loaded in.
        bf16=False,
        fp16=False,
        use_cpu=use_cpu,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=not show_progress,
        dataset_num_proc=dataset_num_proc,
        seed=0,
    )
