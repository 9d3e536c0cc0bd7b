"""Scoring pairs with a policy and its reference: Δ = (log πθ(y_w|x) − log πref(y_w|x)) − (log πθ(y_l|x) −
log πref(y_l|x)) per pair, through TRL's DPOTrainer (`scoring.audit_preferences` turns it into z = β·Δ).

How the log-probs are computed. Nothing of TRL's forward or reference code is copied: the audit runs a private
subclass of `RobustDPOTrainer` through TRL's own evaluation (`trainer.evaluate()`, so tokenisation, truncation, the
live / PEFT reference, device placement, batching, the progress bar and distributed evaluation are TRL's and
transformers'). The subclass routes TRL's loss loop to `_registered_per_sequence_loss` (the hook `trl_robust.integration.dispatch`
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

import warnings

import torch
import torch.nn.functional as F

from ..compat import REF_ADAPTER
from ..data import ROW_COLUMN
from .checks import AuditInputError, check_per_pair, scoring_config
from .models import ModelSource, check_same_vocabulary, vocabulary_facts


def score_with_policy(policy: ModelSource, reference: ModelSource | None, dataset, *, beta, batch_size, max_length,
                      loss_type, loss_hyperparameters, processing_class, dtype, use_cpu, show_progress,
                      dataset_num_proc, trainer_dir):
    """Each row's Δ (and registered loss, or None), TRL's eval metrics, and the accelerator.

    `dataset` carries the row-index column already; `trainer_dir` is a temporary directory for the Trainer."""
    args = _audit_config(trainer_dir, beta, batch_size, max_length, loss_type, loss_hyperparameters, use_cpu,
                         show_progress, dataset_num_proc)
    if loss_type not in (None, "sigmoid"):
        check_per_pair(loss_type, args)
    model, ref_model, processing_class = _load_models(policy, reference, dtype, processing_class)
    if ref_model is not None:  # loaded models could not be compared before: compare them now, before scoring
        check_same_vocabulary(
            vocabulary_facts(ModelSource(model, policy.is_adapter)),
            vocabulary_facts(ModelSource(ref_model, False)), policy, reference,
        )
    n_rows = len(dataset)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*label_smoothing.*")
        trainer = _audit_trainer_class()(
            model, ref_model, args, train_dataset=dataset, processing_class=processing_class, audit_loss_type=loss_type
        )
    _check_rows_scored(trainer.train_dataset, n_rows, max_length)
    if not show_progress:  # with `disable_tqdm` transformers prints the metrics dict instead of a progress bar
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    trainer.eval_dataset = trainer.train_dataset  # tokenised once, by TRL's __init__
    trl_metrics = trainer.evaluate()
    delta, extra = _collect(trainer._audit_records, n_rows)
    return delta, extra, trl_metrics, trainer.accelerator


# The loss name the audit trainer puts in TRL's loop. Never registered: it only has to reach the hook, which TRL's loop
# calls for any name its if/elif chain does not know.
_AUDIT_LOSS = "__trl_robust_audit__"


def _audit_trainer_class():
    from ..integration.trainer import RobustDPOTrainer

    class _AuditTrainer(RobustDPOTrainer):
        """`RobustDPOTrainer` whose loss loop records each pair's Δ = chosen_scores − rejected_scores (TRL's own)."""

        def __init__(self, model, ref_model, args, *, audit_loss_type=None, **kwargs):
            from accelerate.utils import is_peft_model

            unwrapped_peft = model if is_peft_model(model) else None
            had_ref_adapter = unwrapped_peft is not None and REF_ADAPTER in unwrapped_peft.peft_config
            super().__init__(model, ref_model, args, **kwargs)
            # TRL treats a `PeftModel` passed without `ref_model` as an adapter to re-train and adds a frozen copy of
            # it as the "ref" adapter, making the reference the adapter itself (every z would be 0). The audit's
            # reference for an adapter is its base model: remove that copy, and TRL's `_compute_loss` falls back to
            # disabling the adapter (`use_adapter(model, adapter_name=None)`), as when it trains a `peft_config`.
            # (`compat`'s probe checks both in TRL's source: the adapter's name and that fallback.)
            if unwrapped_peft is not None and ref_model is None and not had_ref_adapter:
                if REF_ADAPTER in unwrapped_peft.peft_config:
                    unwrapped_peft.delete_adapter(REF_ADAPTER)
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
            delta = (chosen_scores - rejected_scores).detach()
            recorded = [delta]
            if self._audit_loss_type is not None:  # the registered loss exactly as training computes it
                recorded.append(super()._registered_per_sequence_loss(
                    self._audit_loss_type, chosen_scores, rejected_scores, ref_chosen_logps, ref_rejected_logps, mode
                ))
            self._record_by_row(self._audit_records, *recorded)
            return -F.logsigmoid(self.beta * delta)  # TRL's `sigmoid` loss, so `eval_loss` is the mean DPO loss

    return _AuditTrainer


def _load_models(policy: ModelSource, reference: ModelSource | None, dtype, processing_class):
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


def _audit_config(output_dir, beta, batch_size, max_length, loss_type, loss_hyperparameters, use_cpu, show_progress,
                  dataset_num_proc):
    from ..config import RobustDPOConfig

    registered = loss_type not in (None, "sigmoid")
    return scoring_config(
        RobustDPOConfig, loss_hyperparameters, trainer_dir=output_dir, batch_size=batch_size, max_length=max_length,
        use_cpu=use_cpu, show_progress=show_progress, dataset_num_proc=dataset_num_proc,
        beta=float(beta),
        # The registered loss's own checks run at construction (its hyperparameters included); the trainer's loss loop
        # is then pointed at the audit hook.
        loss_type=[loss_type] if registered else ["sigmoid"],
        # Plain log-ratio scores and a live reference: the audit's z is the DPO margin, whatever TRL's defaults become.
        f_divergence_type="reverse_kl",
        ld_alpha=None,
        use_weighting=False,
        precompute_ref_log_probs=False,
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
    """Δ (and the registered loss) of every input row, in input order; every row must have been scored."""
    from ..filter.columns import values_by_row

    values = values_by_row(records, range(n_rows))
    delta = values[0]
    extra = values[1] if len(values) > 1 else None
    bad = (~torch.isfinite(delta)).nonzero().flatten().tolist()
    if bad:
        raise FloatingPointError(
            f"the log-probs of {len(bad)} pairs are NaN or infinite (rows {bad[:10]}): a model in float16 that "
            "overflows or a corrupt checkpoint; load in float32 or bfloat16 (dtype=...)"
        )
    return delta, extra
