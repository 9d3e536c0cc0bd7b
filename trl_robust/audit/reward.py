"""Scoring pairs with a reward model: its margin z = r(x, y_chosen) − r(x, y_rejected), through TRL's RewardTrainer.

A reward model ranks a pair by its own margin; no reference, no β. As for a policy (`policy`), nothing of TRL's code is
copied: a private subclass of `RobustRewardTrainer` runs TRL's own evaluation (`trainer.evaluate()`: TRL's reward
tokenisation — EOS appended, prompt prepended, chat template —, its collator, batching, device placement and
distributed evaluation), and records, from the outputs TRL's `compute_loss` returns, each pair's chosen and rejected
rewards (and, with a `loss_type`, that loss of the pair exactly as `RobustRewardTrainer` trains with it: SymPO's clip
and the dataset's `margin` column included), gathered with `gather_for_metrics`. Rows stay aligned by the same
row-index column as the policy audit; TRL's RewardTrainer drops a pair longer than `max_length` (it does not truncate),
and such rows are an error that names them.
"""

import torch

from ..data import ROW_COLUMN
from .checks import AuditInputError, scoring_config


def _reward_audit_trainer_class():
    from ..reward import RobustRewardTrainer

    class _RewardAuditTrainer(RobustRewardTrainer):
        """`RobustRewardTrainer` that records each pair's rewards (and registered loss) by input row."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._audit_records = []
            self._pass_through_column(ROW_COLUMN, torch.long)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            with self._columns_taken_out(inputs):  # the row index, as the training filter carries it
                loss, outputs = super().compute_loss(
                    model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
                )
                # TRL's collator stacks the chosen sequences first, then the rejected ones.
                chosen, rejected = torch.chunk(outputs.logits.squeeze(-1).float(), chunks=2)
                recorded = [chosen, rejected]
                if self._reward_spec is not None:
                    spec = self._reward_spec  # the loss of each pair, as training computes it
                    margin = self._robust_margin(spec, chosen, rejected, offset=inputs.get("margin"))
                    recorded.append(self._robust_loss_fn(spec)(margin.z))
                self._record_by_row(self._audit_records, *recorded)
            return (loss, outputs) if return_outputs else loss

    return _RewardAuditTrainer


def score_with_reward_model(source, dataset, *, batch_size, max_length, loss_type, loss_hyperparameters,
                            processing_class, dtype, use_cpu, show_progress, dataset_num_proc, trainer_dir):
    """Each row's (chosen reward, rejected reward, registered loss or None), TRL's eval metrics, and the accelerator.

    `dataset` carries the row-index column already."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ..reward import RobustRewardConfig

    try:
        args = scoring_config(
            RobustRewardConfig, loss_hyperparameters, trainer_dir=trainer_dir, batch_size=batch_size,
            max_length=max_length, use_cpu=use_cpu, show_progress=show_progress, dataset_num_proc=dataset_num_proc,
            loss_type=loss_type or "bradley_terry",
        )
    except ValueError as error:  # the loss's own checks (e.g. a bad ropo_alpha), still before any model loads
        raise AuditInputError(str(error)) from None
    model = source.value if source.is_loaded else AutoModelForSequenceClassification.from_pretrained(
        source.value, dtype=dtype
    )
    if processing_class is None:
        name = source.value if not source.is_loaded else getattr(model.config, "_name_or_path", None)
        try:
            processing_class = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError, TypeError) as error:
            raise AuditInputError(f"no tokenizer found for the reward model ({name}): {error}; pass processing_class")
    trainer = _reward_audit_trainer_class()(
        model=model, args=args, train_dataset=dataset, processing_class=processing_class
    )
    _check_rows_kept(trainer.train_dataset, len(dataset), max_length)
    if not show_progress:  # with `disable_tqdm` transformers prints the metrics dict instead of a progress bar
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    trainer.eval_dataset = trainer.train_dataset  # tokenised once, by TRL's __init__
    trl_metrics = trainer.evaluate()
    from ..filter.columns import values_by_row

    values = values_by_row(trainer._audit_records, range(len(dataset)))
    chosen, rejected = values[0], values[1]
    extra = values[2] if len(values) > 2 else None
    bad = (~(torch.isfinite(chosen) & torch.isfinite(rejected))).nonzero().flatten().tolist()
    if bad:
        raise FloatingPointError(
            f"the rewards of {len(bad)} pairs are NaN or infinite (rows {bad[:10]}): a model in float16 that overflows "
            "or a corrupt checkpoint; load in float32 or bfloat16 (dtype=...)"
        )
    return chosen, rejected, extra, trl_metrics, trainer.accelerator


def _check_rows_kept(prepared, n_rows: int, max_length) -> None:
    missing = sorted(set(range(n_rows)) - set(prepared[ROW_COLUMN]))
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (f", ... ({len(missing)} in total)" if len(missing) > 10 else "")
        raise AuditInputError(
            f"{len(missing)} of {n_rows} rows cannot be scored: TRL's RewardTrainer leaves out a pair whose chosen or "
            f"rejected sequence is longer than max_length={max_length} tokens (it does not truncate). Rows: {shown}. "
            "Raise max_length (None = no limit) or leave those rows out."
        )
