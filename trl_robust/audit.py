"""Noisy-pair audit: which preference labels a trained policy probably disagrees with.

    trl-robust audit --model_name_or_path OUT --ref_model BASE --dataset_name DATA --output_dir AUDIT
    accelerate launch -m trl_robust.audit ...                 (several processes / GPUs)
    result = audit_preferences(model, dataset, ref_model=..., output_dir=...)

For every pair the policy's implicit-reward margin is computed,

    z = β · Δ,   Δ = (log πθ(y_w|x) − log πref(y_w|x)) − (log πθ(y_l|x) − log πref(y_l|x)),

with the DPO loss −log σ(z) (and, if asked, the loss of a registered `loss_type`). A pair whose z is low or negative
is one whose "chosen" response the policy finds *less* likely, relative to the reference, than the "rejected" one:
after training on mostly-correct labels (ideally with a noise-robust loss, which does not bend to the wrong ones) the
pairs at the bottom are the first candidates for a wrong label. The pairs are ranked most suspicious first.

How the log-probs are computed. Nothing of TRL's forward or reference code is copied: the audit runs a private
subclass of `RobustDPOTrainer` through TRL's own evaluation (`trainer.evaluate()`, so tokenisation, truncation, the
live / PEFT reference, device placement, batching, the progress bar and distributed evaluation are TRL's and
transformers'). The subclass routes TRL's loss loop to `_registered_per_sequence_loss` (the hook `trl_robust.dispatch`
adds to `_compute_loss`) under a private loss name and records there `chosen_scores − rejected_scores` — TRL's own
per-pair log-ratio difference Δ, with the default `f_divergence_type="reverse_kl"` and `ld_alpha=None` — gathered over
all processes with `accelerator.gather_for_metrics` (which drops the samples accelerate repeats to even out the last
batch).

How rows stay aligned. A row-index column is added to the dataset before TRL sees it; TRL's preprocessing keeps extra
columns, the index is declared a signature column so `remove_unused_columns` keeps it, and a thin wrapper around TRL's
collator puts it in the batch, from where the subclass takes it before TRL's forward. Every score therefore arrives
with the input row it belongs to, in any batch order and on any number of processes. A row TRL would not score in full
(with `max_length`, one whose prompt alone fills it: TRL 1.16 drops it, TRL 0.29 scores an empty completion) is an
error that names the rows, never a silent gap.
"""

import json
import math
import numbers
import os
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .cli.arguments import listing_if_not_empty, looks_like_local_path
from .data import ROW_COLUMN
from .filtering import n_suspected

# The loss name the audit trainer puts in TRL's loop. Never registered: it only has to reach the hook, which TRL's loop
# calls for any name its if/elif chain does not know.
_AUDIT_LOSS = "__trl_robust_audit__"
OUTPUT_FILES = {
    "jsonl": "audit.jsonl",
    "csv": "audit.csv",
    "summary": "summary.md",
    "histogram": "z_histogram.png",
}
CLEAN_MODES = ("drop", "swap")  # what clean-and-retrain does with the most suspicious pairs
TOP_FRACTIONS = (0.05, 0.10, 0.20)  # precision@k is also reported at k = these shares of the pairs
DEFAULT_FLIP_COLUMN = "label_flipped"  # what `trl_robust.data.flip_preferences` writes


class AuditInputError(ValueError):
    """Bad input to the audit, found before any model is loaded (or, for rows TRL would not score, right after)."""


@dataclass
class AuditResult:
    """What `audit_preferences` found.

    Attributes:
        pairs: one dict per input row, most suspicious (lowest z) first: ``rank`` (1 = most suspicious), ``row`` (index
            in the input dataset), ``z`` (β·Δ), ``dpo_loss`` (−log σ(z)), ``<loss_type>_loss`` if a registered
            `loss_type` was given, and the flip-record column (``label_flipped``) if the dataset has one.
        beta: the β used.
        loss_type: the registered loss type also scored, or None.
        auroc: with a flip record, the AUROC of the suspicion −z for the flipped pairs (1 = every flipped pair ranked
            above every clean one, 0.5 = chance); None without a flip record or if all or none are flipped.
        precision_at_k: with a flip record, ``{name: {"k", "precision", "recall"}}`` for k = the number of flipped
            pairs (name ``"n_flipped"``) and k = 5%, 10%, 20% of the pairs (names ``"5%"`` ...); None without one.
        summary: the Markdown summary (what `summary.md` holds).
        paths: the files written, by kind (``jsonl``, ``csv``, ``summary``, ``histogram``); empty without `output_dir`.
        trl_metrics: TRL's own evaluation metrics over the same pass (``eval_rewards/margins``, ...).
        num_processes: how many processes computed the scores.
    """

    pairs: list[dict[str, Any]]
    beta: float
    loss_type: str | None = None
    auroc: float | None = None
    precision_at_k: dict[str, dict[str, float]] | None = None
    summary: str = ""
    paths: dict[str, str] = field(default_factory=dict)
    trl_metrics: dict[str, float] = field(default_factory=dict)
    num_processes: int = 1

    def to_dataset(self):
        """The per-pair table as a `datasets.Dataset`, in rank order."""
        from datasets import Dataset

        return Dataset.from_list(self.pairs)

    def most_suspicious(self, k: int) -> list[int]:
        """Input row indices of the `k` most suspicious pairs (lowest z first)."""
        return [pair["row"] for pair in self.pairs[:k]]

    def cleaned(self, dataset, share: float, mode: str = "drop", flip_column: str | None = DEFAULT_FLIP_COLUMN):
        """`dataset` (the one audited) with its ⌊share·n⌋ most suspicious pairs dropped or their labels swapped.

        The clean step of clean-and-retrain. `mode="drop"` leaves the suspects out (rows keep their order);
        `mode="swap"` exchanges their chosen and rejected responses, and toggles `flip_column` where the data has
        it (the label is now the other one), so the cleaned data can be audited or benchmarked again.
        """
        if len(dataset) != len(self.pairs):
            raise ValueError(f"the audit scored {len(self.pairs)} pairs; this dataset has {len(dataset)}: pass the "
                             "dataset that was audited")
        if isinstance(share, bool) or not isinstance(share, numbers.Real) or not 0 <= share < 1:
            raise ValueError(f"share must be in [0, 1) (the share of the most suspicious pairs to clean), got {share!r}")
        if mode not in CLEAN_MODES:
            raise ValueError(f"mode must be one of {list(CLEAN_MODES)}, got {mode!r}")
        suspects = set(self.most_suspicious(n_suspected(share, len(self.pairs))))
        if mode == "drop":
            return dataset.select([row for row in range(len(dataset)) if row not in suspects])
        toggles = flip_column is not None and flip_column in dataset.column_names

        def swap(example, row):
            if row not in suspects:
                return {}
            swapped = {"chosen": example["rejected"], "rejected": example["chosen"]}
            if toggles:
                swapped[flip_column] = not example[flip_column]
            return swapped

        return dataset.map(swap, with_indices=True)

    def z_by_row(self) -> list[float]:
        """z for each input row, in input order."""
        z = [math.nan] * len(self.pairs)
        for pair in self.pairs:
            z[pair["row"]] = pair["z"]
        return z


# --- ranking metrics (pure functions) --------------------------------------------------------------------------------


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks of `values` in ascending order, tied values sharing the average of their ranks."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1  # mean of the 1-based positions start+1 .. end+1
        start = end + 1
    return ranks


def auroc(suspicion: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Area under the ROC curve of `suspicion` for the `positive` pairs, by the rank-sum (Mann–Whitney U) formula.

    AUROC = (R₊ − n₊(n₊+1)/2) / (n₊·n₋), R₊ = sum of the ranks of the positives with tied scores given their average
    rank: the probability that a random positive scores above a random negative, ties counting one half. None when
    there are no positives or no negatives.
    """
    positive = np.asarray(positive, dtype=bool)
    if len(positive) != len(suspicion):
        raise ValueError(f"{len(suspicion)} scores but {len(positive)} labels")
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    rank_sum = float(average_ranks(suspicion)[positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def precision_at_k(suspicion: Sequence[float], positive: Sequence[bool], k: int) -> float:
    """Share of positives among the `k` most suspicious pairs.

    Ties at the cut-off are not broken by position: when the k-th score is shared by pairs on both sides of the cut,
    those pairs count in proportion (the expected precision over a random order of the ties), so the value does not
    depend on how the pairs happen to be ordered.
    """
    suspicion = np.asarray(suspicion, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    if not 1 <= k <= len(suspicion):
        raise ValueError(f"k must be in [1, {len(suspicion)}], got {k}")
    threshold = np.sort(suspicion)[::-1][k - 1]
    above, tied = suspicion > threshold, suspicion == threshold
    from_tied = k - int(above.sum())
    hits = positive[above].sum() + from_tied * positive[tied].sum() / tied.sum()
    return float(hits / k)


def flip_metrics(
    z: Sequence[float], flipped: Sequence[bool], fractions: Sequence[float] = TOP_FRACTIONS
) -> tuple[float | None, dict[str, dict[str, float]]]:
    """AUROC and precision/recall at k of the suspicion −z against a flip record."""
    suspicion = -np.asarray(z, dtype=np.float64)
    flipped = np.asarray(flipped, dtype=bool)
    n, n_flipped = len(flipped), int(flipped.sum())
    ks = {}
    if n_flipped:
        ks["n_flipped"] = n_flipped
    for fraction in fractions:
        ks[f"{fraction:.0%}"] = min(n, max(1, round(fraction * n)))
    table = {}
    for name, k in ks.items():
        precision = precision_at_k(suspicion, flipped, k)
        table[name] = {"k": k, "precision": precision, "recall": precision * k / n_flipped if n_flipped else None}
    return auroc(suspicion, flipped), table


# --- input checks (nothing loaded) -----------------------------------------------------------------------------------


def _check_settings(beta, batch_size, max_length) -> None:
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not math.isfinite(beta) or beta <= 0:
        raise AuditInputError(f"beta must be a finite number > 0 (the β the policy was trained with), got {beta!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise AuditInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if max_length is not None and (
        isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral) or max_length < 2
    ):
        raise AuditInputError(f"max_length must be None (no truncation) or an integer >= 2, got {max_length!r}")


def _check_output_dir(output_dir, overwrite: bool) -> None:
    if output_dir is None:
        return
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise AuditInputError(f"output_dir {str(path)!r} exists and is not a directory")
    shown = None if overwrite else listing_if_not_empty(path)
    if shown is not None:
        raise AuditInputError(
            f"output_dir {str(path)!r} already exists and is not empty ({shown}); the audit would overwrite it. "
            "Pass overwrite=True (`--overwrite_output_dir true`) or choose another directory."
        )


@dataclass
class _ModelSource:
    """Where a policy or reference comes from, resolved without loading it."""

    value: Any  # a path / Hub id, or a loaded model
    is_adapter: bool  # a PEFT adapter (directory, Hub id or `PeftModel`)
    base: str | None = None  # the adapter's base model, read from adapter_config.json

    @property
    def is_loaded(self) -> bool:
        return not isinstance(self.value, (str, os.PathLike))

    def describe(self) -> str:
        if self.is_loaded:
            return f"a loaded {type(self.value).__name__}"
        return str(self.value) + (f" (PEFT adapter on {self.base})" if self.is_adapter else "")


def _resolve_model(value, role: str) -> _ModelSource:
    """Check that a model path exists and say whether it is a PEFT adapter; load nothing."""
    if value is None:
        raise AuditInputError(f"{role} is required")
    if not isinstance(value, (str, os.PathLike)):
        from accelerate.utils import is_peft_model

        if not isinstance(value, torch.nn.Module):
            raise AuditInputError(f"{role} must be a path, a Hub id or a loaded model, got {type(value).__name__}")
        return _ModelSource(value, is_adapter=is_peft_model(value))
    name = os.path.expanduser(os.fspath(value))
    if os.path.isdir(name):
        adapter_config = os.path.join(name, "adapter_config.json")
        if os.path.isfile(adapter_config):
            with open(adapter_config) as file:
                base = json.load(file).get("base_model_name_or_path")
            if not base:
                raise AuditInputError(
                    f"{role} {name!r} is a PEFT adapter whose adapter_config.json names no base model"
                )
            if looks_like_local_path(base) and not os.path.isdir(os.path.expanduser(base)):
                raise AuditInputError(
                    f"{role} {name!r} is a PEFT adapter on the base model {base!r}, which does not exist; load the "
                    "adapter yourself and pass the `PeftModel`, or fix base_model_name_or_path in adapter_config.json"
                )
            return _ModelSource(name, is_adapter=True, base=base)
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise AuditInputError(
                f"{role} {name!r} holds neither a model (config.json) nor a PEFT adapter (adapter_config.json)"
            )
        return _ModelSource(name, is_adapter=False)
    if os.path.exists(name):
        raise AuditInputError(f"{role} {name!r} is a file; expected a model directory or a Hub id")
    if looks_like_local_path(name):
        raise AuditInputError(f"{role} {name!r} does not exist")
    # A Hub id (or a cached one under HF_HUB_OFFLINE=1): ask for adapter_config.json without loading weights.
    from transformers.utils import cached_file

    try:
        adapter_config = cached_file(
            name, "adapter_config.json", _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except (OSError, ValueError) as error:
        raise AuditInputError(
            f"{role} {name!r} is neither a local directory nor a reachable Hub repository: {error}"
        ) from None
    if adapter_config:
        with open(adapter_config) as file:
            return _ModelSource(name, is_adapter=True, base=json.load(file).get("base_model_name_or_path"))
    return _ModelSource(name, is_adapter=False)


def _resolve_models(model, ref_model) -> tuple[_ModelSource, _ModelSource | None]:
    policy = _resolve_model(model, "model")
    reference = None if ref_model is None else _resolve_model(ref_model, "ref_model")
    if reference is None and not policy.is_adapter:
        raise AuditInputError(
            f"ref_model is required: the policy {policy.describe()} is a full model, and a model's "
            "`config._name_or_path` does not reliably name the model it was trained from (it is rewritten on every "
            "save_pretrained). Pass the reference the policy was trained against (its SFT / starting checkpoint) as "
            "ref_model (`--ref_model PATH`). Only for a PEFT adapter is the reference implied: its base model."
        )
    if reference is not None and reference.is_adapter:
        raise AuditInputError(
            f"ref_model {reference.describe()} is a PEFT adapter; merge it into its base model first "
            "(`merge_and_unload()` + `save_pretrained`) and pass that directory"
        )
    return policy, reference


def _check_dataset(dataset, flip_column: str | None) -> list[bool] | None:
    """Validate the preference dataset; return its flip record (or None)."""
    from datasets import Dataset

    from .data import check_preference_dataset

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


def _check_loss_type(loss_type, loss_hyperparameters) -> None:
    from .registry import get_loss_spec, registered_loss_types

    if loss_hyperparameters and loss_type is None:
        raise AuditInputError("loss_hyperparameters were given without a loss_type")
    if loss_type is None or loss_type == "sigmoid":  # sigmoid is the DPO loss, always reported
        return
    spec = get_loss_spec(loss_type)
    if spec is None:
        raise AuditInputError(
            f"loss_type {loss_type!r} is not a loss type registered in trl_robust; the audit scores the DPO loss and "
            f"optionally one of {registered_loss_types()}"
        )
    allowed = set(spec.hyperparameters.values()) | ({"sympo_reward_clip"} if spec.uses_reward_clip else set())
    unknown = sorted(set(loss_hyperparameters or {}) - allowed)
    if unknown:
        raise AuditInputError(
            f"loss_hyperparameters {unknown} do not apply to loss_type {loss_type!r} "
            f"(it takes {sorted(allowed) or 'none'})"
        )


def _check_per_pair(loss_type: str, args) -> None:
    """Refuse a loss whose value for one pair depends on the other pairs of its batch (e.g. Dr. DPO)."""
    from .config import robust_hyperparameter
    from .registry import get_loss_spec

    spec = get_loss_spec(loss_type)
    kwargs = {kw: robust_hyperparameter(args, attr) for kw, attr in spec.hyperparameters.items()}
    z = torch.tensor([-2.0, 0.5, 3.0])
    together = spec.fn(z, **kwargs)
    alone = torch.cat([spec.fn(z[i : i + 1], **kwargs) for i in range(len(z))])
    if not torch.allclose(together, alone):
        raise AuditInputError(
            f"loss_type {loss_type!r} couples the pairs of a batch (one pair's loss depends on the others), so it has "
            "no per-pair value to rank by; audit without loss_type (the DPO loss and z are always reported)"
        )


# --- the audit trainer -----------------------------------------------------------------------------------------------


def _audit_trainer_class():
    from .trainer import RobustDPOTrainer

    class _AuditTrainer(RobustDPOTrainer):
        """`RobustDPOTrainer` whose loss loop records each pair's Δ = chosen_scores − rejected_scores (TRL's own)."""

        def __init__(self, model, ref_model, args, *, audit_loss_type=None, **kwargs):
            from accelerate.utils import is_peft_model

            unwrapped_peft = model if is_peft_model(model) else None
            had_ref_adapter = unwrapped_peft is not None and "ref" in unwrapped_peft.peft_config
            super().__init__(model, ref_model, args, **kwargs)
            # TRL treats a `PeftModel` passed without `ref_model` as an adapter to re-train and adds a frozen copy of
            # it as the "ref" adapter, making the reference the adapter itself (every z would be 0). The audit's
            # reference for an adapter is its base model: remove that copy, and TRL's `_compute_loss` falls back to
            # disabling the adapter (`use_adapter(model, adapter_name=None)`), as when it trains a `peft_config`.
            if unwrapped_peft is not None and ref_model is None and not had_ref_adapter:
                if "ref" in unwrapped_peft.peft_config:
                    unwrapped_peft.delete_adapter("ref")
            # One loss in TRL's loop, under a name its if/elif chain does not know: TRL calls our hook for it.
            self.loss_types, self.loss_weights = [_AUDIT_LOSS], [1.0]
            self._audit_loss_type = audit_loss_type if audit_loss_type not in (None, "sigmoid") else None
            self._audit_records = []
            self._pass_through_column(ROW_COLUMN, torch.long)

        def _registered_per_sequence_loss(
            self, loss_type, chosen_scores, rejected_scores, ref_chosen_logps, ref_rejected_logps, mode
        ):
            if loss_type != _AUDIT_LOSS:
                return super()._registered_per_sequence_loss(
                    loss_type, chosen_scores, rejected_scores, ref_chosen_logps, ref_rejected_logps, mode
                )
            rows = self._batch_columns.get(ROW_COLUMN)
            if rows is None:
                raise RuntimeError("the audit trainer scored a batch without row indices")
            delta = (chosen_scores - rejected_scores).detach()
            recorded = [rows, delta.float()]
            if self._audit_loss_type is not None:  # the registered loss exactly as training computes it
                extra = super()._registered_per_sequence_loss(
                    self._audit_loss_type, chosen_scores, rejected_scores, ref_chosen_logps, ref_rejected_logps, mode
                )
                recorded.append(extra.detach().float())
            # Every process's pairs, without the ones accelerate repeats to even out the last batch.
            gathered = self.accelerator.gather_for_metrics(tuple(recorded))
            self._audit_records.append([t.cpu() for t in gathered])
            return -F.logsigmoid(self.beta * delta)  # TRL's `sigmoid` loss, so `eval_loss` is the mean DPO loss

    return _AuditTrainer


def _load_models(policy: _ModelSource, reference: _ModelSource | None, dtype, processing_class):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def load_full(name):
        return AutoModelForCausalLM.from_pretrained(name, dtype=dtype)

    if policy.is_loaded:
        model = policy.value
    elif policy.is_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_full(policy.base), policy.value)
    else:
        model = load_full(policy.value)
    ref_model = None
    if reference is not None:
        ref_model = reference.value if reference.is_loaded else load_full(reference.value)

    if processing_class is None:
        candidates = [] if policy.is_loaded else [policy.value]
        if policy.is_adapter and policy.base:
            candidates.append(policy.base)
        if reference is not None and not reference.is_loaded:
            candidates.append(reference.value)
        config = (model.get_base_model() if policy.is_adapter else model).config
        if getattr(config, "_name_or_path", None):
            candidates.append(config._name_or_path)
        errors = []
        for candidate in dict.fromkeys(candidates):
            try:
                processing_class = AutoTokenizer.from_pretrained(candidate)
                break
            except (OSError, ValueError) as error:
                errors.append(f"{candidate}: {error}")
        else:
            raise AuditInputError("no tokenizer found; pass processing_class. Tried: " + "; ".join(errors))
    return model, ref_model, processing_class


# --- the audit -------------------------------------------------------------------------------------------------------


def audit_preferences(
    model,
    dataset,
    *,
    ref_model=None,
    beta: float = 0.1,
    batch_size: int = 8,
    max_length: int | None = None,
    loss_type: str | None = None,
    loss_hyperparameters: Mapping[str, Any] | None = None,
    output_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    flip_column: str | None = DEFAULT_FLIP_COLUMN,
    processing_class=None,
    dtype: str | torch.dtype = "auto",
    use_cpu: bool = False,
    show_progress: bool = True,
    dataset_num_proc: int | None = None,
) -> AuditResult:
    """Score every preference pair by how strongly a trained policy disagrees with its label; rank the suspects.

    Args:
        model: the trained policy: a model directory, a PEFT adapter directory, a Hub id, or a loaded model
            (`PreTrainedModel` or `PeftModel`; used in place: moved to the device and put in eval mode).
        dataset: a preference `datasets.Dataset` (prompt/chosen/rejected, standard or conversational, or implicit
            prompt), checked with `trl_robust.data.check_preference_dataset` before any model is loaded.
        ref_model: the reference the policy was trained against (path or loaded model). Required for a full model;
            for a PEFT adapter, omitted means its base model (the adapter disabled).
        beta: β of z = β·Δ; use the β the policy was trained with.
        batch_size: pairs per device per forward pass.
        max_length: truncate prompt+completion to this many tokens as TRL does; None = no truncation (exact scores).
            A row whose prompt alone fills `max_length` cannot be scored: an `AuditInputError` names such rows.
        loss_type: also report this registered loss (``ropo``, ``sympo_sigmoid``, ...) per pair, computed exactly as
            in training (SymPO's reward clip included). Losses that couple the pairs of a batch are refused.
        loss_hyperparameters: config values for that loss, e.g. ``{"ropo_alpha": 6.0}``.
        output_dir: if given, write `audit.jsonl`, `audit.csv`, `summary.md` and `z_histogram.png` there. An existing
            non-empty directory is refused unless `overwrite` (then those four files are replaced, nothing else).
        flip_column: name of a boolean column recording which labels are known to be flipped (as written by
            `trl_robust.data.flip_preferences`); if present, AUROC and precision@k are computed. None to ignore it.
        processing_class: the tokenizer; by default loaded from the policy's directory (or its base model's).
        dtype: dtype to load models from paths in ("auto": as saved).
        use_cpu: run on the CPU even if an accelerator is available.
        show_progress: show TRL's/transformers' progress bars.
        dataset_num_proc: processes for TRL's tokenisation.

    Returns:
        An `AuditResult`; on several processes every process gets the full result and only the main one writes files.

    Raises:
        AuditInputError: bad settings, paths, dataset or output directory (before any model is loaded), or rows TRL
            would not score in full (after tokenisation).
    """
    _check_settings(beta, batch_size, max_length)
    _check_output_dir(output_dir, overwrite)
    _check_loss_type(loss_type, loss_hyperparameters)
    flipped = _check_dataset(dataset, flip_column)
    policy, reference = _resolve_models(model, ref_model)
    with tempfile.TemporaryDirectory(prefix="trl-robust-audit-") as trainer_dir:
        args = _audit_config(trainer_dir, beta, batch_size, max_length, loss_type, loss_hyperparameters, use_cpu,
                             show_progress, dataset_num_proc)
        if loss_type not in (None, "sigmoid"):
            _check_per_pair(loss_type, args)
        model, ref_model, processing_class = _load_models(policy, reference, dtype, processing_class)
        n_rows = len(dataset)
        indexed = dataset.add_column(ROW_COLUMN, np.arange(n_rows, dtype=np.int64))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*label_smoothing.*")
            trainer = _audit_trainer_class()(
                model, ref_model, args, train_dataset=indexed, processing_class=processing_class,
                audit_loss_type=loss_type,
            )
        _check_rows_scored(trainer.train_dataset, n_rows, max_length)
        if not show_progress:  # with `disable_tqdm` transformers prints the metrics dict instead of a progress bar
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)
        trainer.eval_dataset = trainer.train_dataset  # tokenised once, by TRL's __init__
        trl_metrics = trainer.evaluate()
        rows, delta, extra = _collect(trainer._audit_records, n_rows)
        accelerator = trainer.accelerator
        num_processes = accelerator.num_processes
        is_main = accelerator.is_main_process
        del trainer

    z = beta * delta  # as TRL: `self.beta * delta_score`, in float32
    dpo_loss = -F.logsigmoid(z)
    loss_column = f"{loss_type}_loss" if loss_type not in (None, "sigmoid") else None
    order = sorted(range(n_rows), key=lambda i: (z[i].item(), i))  # most suspicious first; ties by row
    pairs = []
    for rank, i in enumerate(order, start=1):
        pair = {"rank": rank, "row": i, "z": z[i].item(), "dpo_loss": dpo_loss[i].item()}
        if loss_column:
            pair[loss_column] = extra[i].item()
        if flipped is not None:
            pair[flip_column] = flipped[i]
        pairs.append(pair)
    result = AuditResult(pairs=pairs, beta=float(beta), loss_type=loss_column and loss_type,
                         trl_metrics=trl_metrics, num_processes=num_processes)
    if flipped is not None:
        result.auroc, result.precision_at_k = flip_metrics(z.tolist(), flipped)
    if output_dir is not None:
        output_dir = Path(output_dir)
        result.paths = {kind: str(output_dir / name) for kind, name in OUTPUT_FILES.items()}
    flip_column = flip_column if flipped is not None else None
    result.summary = _summary(result, policy, reference, n_rows, max_length, flip_column)
    if output_dir is not None and is_main:
        _write_outputs(result, output_dir, flip_column)
    if num_processes > 1:
        accelerator.wait_for_everyone()
    return result


def _audit_config(output_dir, beta, batch_size, max_length, loss_type, loss_hyperparameters, use_cpu, show_progress,
                  dataset_num_proc):
    from .config import RobustDPOConfig

    registered = loss_type not in (None, "sigmoid")
    return RobustDPOConfig(
        output_dir=output_dir,  # a temporary directory: the Trainer writes nothing we keep
        per_device_eval_batch_size=batch_size,
        per_device_train_batch_size=batch_size,
        beta=float(beta),
        max_length=max_length,
        # The registered loss's own checks run at construction (its hyperparameters included); the trainer's loss loop
        # is then pointed at the audit hook.
        loss_type=[loss_type] if registered else ["sigmoid"],
        **dict(loss_hyperparameters or {}),
        # Plain log-ratio scores and a live reference: the audit's z is the DPO margin, whatever TRL's defaults become.
        f_divergence_type="reverse_kl",
        ld_alpha=None,
        use_weighting=False,
        precompute_ref_log_probs=False,
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


def _check_rows_scored(prepared, n_rows: int, max_length: int | None) -> None:
    """Every input row reaches the loss, with at least one completion token: else an error naming the rows."""
    present = prepared[ROW_COLUMN]
    missing = sorted(set(range(n_rows)) - set(present))
    if max_length is not None:  # TRL < 1.15 keeps a row whose prompt fills max_length and scores an empty completion
        truncated = [row for row, n in zip(present, (len(ids) for ids in prepared["prompt_ids"])) if n >= max_length]
        missing = sorted(set(missing) | set(truncated))
    if missing or len(present) != n_rows:
        shown = ", ".join(map(str, missing[:10])) + (f", ... ({len(missing)} in total)" if len(missing) > 10 else "")
        raise AuditInputError(
            f"{len(missing)} of {n_rows} rows cannot be scored: their tokenised prompt alone is at least "
            f"max_length={max_length} tokens, so no completion token is left (TRL drops such rows or scores an empty "
            f"completion). Rows: {shown}. Raise max_length (None = no truncation) or leave those rows out."
        )


def _collect(records, n_rows: int):
    """Concatenate the gathered batches into per-row tensors (input order), checking every row came exactly once."""
    if not records:
        raise RuntimeError("the audit evaluated no batch")
    columns = [torch.cat(parts) for parts in zip(*records)]
    rows = columns[0].long()
    values = [c.float() for c in columns[1:]]
    # gather_for_metrics already drops accelerate's padding samples; drop any repeat of a row that remains anyway.
    first = {}
    for position, row in enumerate(rows.tolist()):
        first.setdefault(row, position)
    if sorted(first) != list(range(n_rows)):
        absent = sorted(set(range(n_rows)) - set(first))
        raise RuntimeError(f"the audit lost rows {absent[:10]} between TRL's data loader and the loss")
    positions = torch.tensor([first[row] for row in range(n_rows)])
    delta = values[0][positions]
    extra = values[1][positions] if len(values) > 1 else None
    bad = (~torch.isfinite(delta)).nonzero().flatten().tolist()
    if bad:
        raise FloatingPointError(
            f"the log-probs of {len(bad)} pairs are NaN or infinite (rows {bad[:10]}): a model in float16 that "
            "overflows or a corrupt checkpoint; load in float32 or bfloat16 (dtype=...)"
        )
    return rows, delta, extra


# --- outputs ---------------------------------------------------------------------------------------------------------


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _summary(result: AuditResult, policy, reference, n_rows, max_length, flip_column) -> str:
    z = np.array([pair["z"] for pair in result.pairs])
    loss = np.array([pair["dpo_loss"] for pair in result.pairs])
    quantiles = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
    reference_text = reference.describe() if reference is not None else "the base model with the adapter disabled"
    negative = int((z < 0).sum())
    lines = [
        "# Noisy-pair audit",
        "",
        f"- policy: {policy.describe()}",
        f"- reference: {reference_text}",
        f"- pairs: {n_rows}; β = {result.beta:g}; max_length = {max_length}; computed on {result.num_processes} "
        f"process{'es' if result.num_processes > 1 else ''}",
        f"- pairs with z < 0 (the policy prefers the rejected response): {negative} ({negative / n_rows:.1%})",
        "",
        "z = β·[(log πθ − log πref)(chosen) − (log πθ − log πref)(rejected)]; the lower z, the more suspicious "
        "the label.",
        "",
        "| quantile | " + " | ".join(f"{q:.0%}" for q in quantiles) + " |",
        "|---|" + "---|" * len(quantiles),
        "| z | " + " | ".join(_fmt(v) for v in np.quantile(z, quantiles)) + " |",
        "| DPO loss −log σ(z) | " + " | ".join(_fmt(v) for v in np.quantile(loss, quantiles)) + " |",
    ]
    if result.loss_type:
        extra = np.array([pair[f"{result.loss_type}_loss"] for pair in result.pairs])
        cells = " | ".join(_fmt(v) for v in np.quantile(extra, quantiles))
        lines.append(f"| {result.loss_type} loss | {cells} |")
    if flip_column is not None:
        flipped = np.array([pair[flip_column] for pair in result.pairs], dtype=bool)
        mean = lambda values: float(values.mean()) if len(values) else None  # noqa: E731
        lines += [
            "",
            f"## Against the flip record (`{flip_column}`)",
            "",
            f"- flipped pairs: {int(flipped.sum())} of {n_rows}; mean z flipped {_fmt(mean(z[flipped]))}, "
            f"not flipped {_fmt(mean(z[~flipped]))}",
            f"- AUROC of −z for the flipped pairs: {_fmt(result.auroc)} (0.5 = chance, 1 = perfect)",
            "",
            "| top k | k | precision | recall |",
            "|---|---|---|---|",
        ]
        for name, entry in result.precision_at_k.items():
            label = "k = flipped pairs" if name == "n_flipped" else f"top {name}"
            lines.append(f"| {label} | {entry['k']} | {_fmt(entry['precision'])} | {_fmt(entry['recall'])} |")
    shown = result.pairs[:10]
    columns = [c for c in shown[0] if c != "rank"]
    lines += ["", f"## The {len(shown)} most suspicious pairs", "", "| rank | " + " | ".join(columns) + " |",
              "|---|" + "---|" * len(columns)]
    for pair in shown:
        cells = [_fmt(pair[c]) if isinstance(pair[c], float) else str(pair[c]) for c in columns]
        lines.append(f"| {pair['rank']} | " + " | ".join(cells) + " |")
    if result.paths:
        lines += ["", "Files: " + ", ".join(f"`{Path(p).name}`" for p in result.paths.values())]
    return "\n".join(lines) + "\n"


def _write_outputs(result: AuditResult, output_dir: Path, flip_column: str | None) -> None:
    import csv

    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: output_dir / name for kind, name in OUTPUT_FILES.items()}
    with open(paths["jsonl"], "w") as file:
        file.writelines(json.dumps(pair) + "\n" for pair in result.pairs)
    with open(paths["csv"], "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(result.pairs[0]))
        writer.writeheader()
        writer.writerows(result.pairs)
    paths["summary"].write_text(result.summary)
    _plot_histogram(result, paths["histogram"], flip_column)


def _plot_histogram(result: AuditResult, path: Path, flip_column: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    z = np.array([pair["z"] for pair in result.pairs])
    bins = np.histogram_bin_edges(z, bins=int(min(50, max(10, math.sqrt(len(z))))))
    fig, ax = plt.subplots(figsize=(7, 4))
    if flip_column is None:
        ax.hist(z, bins=bins, color="tab:blue", alpha=0.8, label=f"all pairs ({len(z)})")
    else:
        flipped = np.array([pair[flip_column] for pair in result.pairs], dtype=bool)
        ax.hist(z[~flipped], bins=bins, color="tab:blue", alpha=0.6, label=f"not flipped ({int((~flipped).sum())})")
        ax.hist(z[flipped], bins=bins, color="tab:red", alpha=0.6, label=f"flipped ({int(flipped.sum())})")
    ax.axvline(0.0, color="black", linewidth=1, linestyle="--")
    ax.set_xlabel("z = β·Δ (implicit-reward margin; low = suspicious label)")
    ax.set_ylabel("pairs")
    title = "Noisy-pair audit"
    if result.auroc is not None:
        title += f" — AUROC {result.auroc:.3f}"
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- command line ----------------------------------------------------------------------------------------------------


@dataclass
class AuditArguments:
    """Arguments of `trl-robust audit` (and `accelerate launch -m trl_robust.audit`)."""

    model_name_or_path: str = field(
        metadata={"help": "The trained policy: a model directory, a PEFT adapter directory, or a Hub id."}
    )
    dataset_name: str = field(
        metadata={"help": "The preference data, as TRL's `--dataset_name`: a local directory or file, a Hub id, a "
                  "directory written by `Dataset.save_to_disk`, or `builtin:tiny`."}
    )
    output_dir: str = field(metadata={"help": "Where audit.jsonl, audit.csv, summary.md and z_histogram.png go."})
    ref_model: str | None = field(
        default=None,
        metadata={"help": "The reference the policy was trained against. Required for a full model; for a PEFT "
                  "adapter the default is its base model (the adapter disabled)."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name (Hub datasets)."})
    dataset_train_split: str = field(default="train", metadata={"help": "The split to audit."})
    beta: float = field(default=0.1, metadata={"help": "β of z = β·Δ: the β the policy was trained with."})
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Pairs per device per forward pass."})
    max_length: int | None = field(
        default=None, metadata={"help": "Truncate prompt+completion to this many tokens, as TRL does. Default: none."}
    )
    loss_type: str | None = field(
        default=None, metadata={"help": "Also report this registered loss per pair (ropo, sympo_sigmoid, ...)."}
    )
    ropo_alpha: float | None = field(default=None, metadata={"help": "α of `--loss_type ropo` (default 14)."})
    sympo_reward_clip: str | None = field(
        default=None, metadata={"help": "Reward clip of the `sympo_*` losses (default 10; `none` disables it)."}
    )
    label_smoothing: float | None = field(default=None, metadata={"help": "ε of `--loss_type cdpo`."})
    flip_column: str = field(
        default=DEFAULT_FLIP_COLUMN,
        metadata={"help": "Boolean column recording known flipped labels; if present, AUROC and precision@k."},
    )
    dtype: str = field(default="auto", metadata={"help": "Load the models in this dtype: auto, float32, bfloat16."})
    use_cpu: bool = field(default=False, metadata={"help": "Run on the CPU even if a GPU is available."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Write into a non-empty output_dir."})
    clean_share: float = field(
        default=0.0,
        metadata={"help": "Clean-and-retrain: also write `cleaned/train.jsonl` in output_dir, the audited split with its "
                  "most suspicious pairs (this share, in [0, 1)) dropped or swapped; pass that directory as "
                  "`--dataset_name` to retrain. 0 = write nothing more."},
    )
    clean_mode: str = field(
        default="drop",
        metadata={"help": "What `--clean_share` does with the suspects: `drop` them or `swap` chosen and rejected.",
                  "choices": list(CLEAN_MODES)},
    )


def _load_cli_dataset(args: AuditArguments):
    from datasets import DatasetDict, load_dataset, load_from_disk

    name = os.path.expanduser(args.dataset_name)
    if looks_like_local_path(name) and not os.path.exists(name):
        raise AuditInputError(f"dataset_name {args.dataset_name!r} does not exist")
    if os.path.isdir(name) and os.path.isfile(os.path.join(name, "dataset_dict.json")):
        dataset = load_from_disk(name)
    elif os.path.isdir(name) and os.path.isfile(os.path.join(name, "state.json")):
        return load_from_disk(name)
    else:
        try:
            return load_dataset(name, name=args.dataset_config, split=args.dataset_train_split)
        except ValueError as error:
            if "split" in str(error).lower():
                raise AuditInputError(f"dataset {args.dataset_name!r}: {error}") from None
            raise
    if not isinstance(dataset, DatasetDict) or args.dataset_train_split not in dataset:
        raise AuditInputError(f"dataset {args.dataset_name!r} has no split {args.dataset_train_split!r}")
    return dataset[args.dataset_train_split]


def run_audit_command(args: AuditArguments, noise=None) -> AuditResult:
    """What `trl-robust audit` does: check, load the data, audit, print the summary and where the files went.

    `noise` (`LabelNoiseArguments`): flip the loaded split exactly as `trl-robust dpo --flip_rate ...` did before
    training on it (same rate, seed and mode give the same pairs), so a run on injected noise can be audited against
    its flip record.
    """
    from types import SimpleNamespace

    from .cli.builtin import materialise_builtins

    # Cheap checks first, before the dataset is downloaded or read.
    _check_settings(args.beta, args.per_device_eval_batch_size, args.max_length)
    if not 0 <= args.clean_share < 1:
        raise AuditInputError(f"--clean_share must be in [0, 1) (the share of pairs to clean), got {args.clean_share}")
    _check_output_dir(args.output_dir, args.overwrite_output_dir)
    hyperparameters = {
        name: getattr(args, name) for name in ("ropo_alpha", "sympo_reward_clip", "label_smoothing")
        if getattr(args, name) is not None
    }
    _check_loss_type(args.loss_type, hyperparameters)
    # `builtin:` names -> local paths (built once into the cache; safe when several ranks race), models first.
    for attribute in ("model_name_or_path", "ref_model"):
        holder = SimpleNamespace(model_name_or_path=getattr(args, attribute), dataset_name=None)
        materialise_builtins(holder, holder)
        setattr(args, attribute, holder.model_name_or_path)
    _resolve_models(args.model_name_or_path, args.ref_model)
    holder = SimpleNamespace(model_name_or_path=None, dataset_name=args.dataset_name)
    materialise_builtins(holder, holder)
    args.dataset_name = holder.dataset_name
    dataset = _load_cli_dataset(args)
    if noise is not None and noise.flip_rate > 0:
        from .data import flip_preferences

        dataset = flip_preferences(dataset, noise.flip_rate, seed=noise.flip_seed, mode=noise.flip_mode)
    result = audit_preferences(
        args.model_name_or_path,
        dataset,
        ref_model=args.ref_model,
        beta=args.beta,
        batch_size=args.per_device_eval_batch_size,
        max_length=args.max_length,
        loss_type=args.loss_type,
        loss_hyperparameters=hyperparameters or None,
        output_dir=args.output_dir,
        overwrite=args.overwrite_output_dir,
        flip_column=args.flip_column or None,
        dtype=args.dtype,
        use_cpu=args.use_cpu,
    )
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(result.summary)
        print(f"Wrote {', '.join(result.paths.values())}")
        if args.clean_share > 0:
            cleaned = result.cleaned(dataset, args.clean_share, args.clean_mode, flip_column=args.flip_column or None)
            path = Path(args.output_dir) / "cleaned" / "train.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            cleaned.to_json(str(path))
            result.paths["cleaned"] = str(path)
            k = n_suspected(args.clean_share, len(dataset))
            action = "without" if args.clean_mode == "drop" else "with chosen/rejected swapped on"
            print(f"Wrote {path}: the {len(dataset)} pairs {action} the {k} most suspicious ({len(cleaned)} pairs); "
                  f"retrain with --dataset_name {path.parent}")
    return result


def main(argv: list[str] | None = None, prog: str = "trl-robust audit") -> int:
    """Entry point of `trl-robust audit` and `python -m trl_robust.audit` (also under `accelerate launch -m`)."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from transformers import HfArgumentParser

    description = "Rank preference pairs by how likely their label is wrong (trl-robust's noisy-pair audit)."
    from .cli.arguments import LabelNoiseArguments

    parser = HfArgumentParser((AuditArguments, LabelNoiseArguments), prog=prog, description=description)
    args, noise = parser.parse_args_into_dataclasses(argv)
    try:
        run_audit_command(args, noise)
    except AuditInputError as error:  # found alike on every rank, before any collective operation
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    from .cli import end_distributed

    end_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m trl_robust.audit"))
