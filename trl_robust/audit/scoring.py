"""Noisy-pair audit: which preference labels a trained policy probably disagrees with.

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

import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..compat import REF_ADAPTER
from ..data import ROW_COLUMN
from ..noise import estimate_noise
from ..optional import require_matplotlib
from .checks import (
    AuditInputError,
    ModelSource,
    check_dataset,
    check_loss_type,
    check_output_dir,
    check_per_pair,
    check_beta,
    check_same_vocabulary,
    check_settings,
    resolve_models,
    vocabulary_facts,
)
from .metrics import flip_metrics
from .report import OUTPUT_FILES, summary, write_outputs
from .result import DEFAULT_FLIP_COLUMN, AuditResult

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


def audit_preferences(
    model,
    dataset,
    *,
    ref_model=None,
    beta: float | None = None,
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
        model: the trained policy: a model directory, a PEFT adapter directory, a Hub id, `builtin:tiny`, or a loaded model
            (`PreTrainedModel` or `PeftModel`; used in place: moved to the device and put in eval mode). Or a reward
            model — a one-label `...ForSequenceClassification` checkpoint, as TRL's `RewardTrainer` (and
            `trl_robust.RewardTrainer`) saves it, told apart by its config: then each pair's margin is the reward
            model's own, z = r(x, y_chosen) − r(x, y_rejected), computed through TRL's `RewardTrainer` evaluation
            (its tokenisation: EOS appended, prompt prepended); there is no reference and no β, and the per-pair loss
            column is `bradley_terry_loss` (−log σ(z)) instead of `dpo_loss`; each pair also gets `reward_chosen` and
            `reward_rejected`.
        dataset: a preference `datasets.Dataset` (prompt/chosen/rejected, standard or conversational, or implicit
            prompt), checked with `trl_robust.dataset_checks.check_preference_dataset` before any model is loaded.
        ref_model: the reference the policy was trained against (path or loaded model). Required for a full model;
            for a PEFT adapter, omitted means its base model (the adapter disabled).
        beta: β of z = β·Δ; use the β the policy was trained with. None = 0.1 (TRL's default). Refused for a reward
            model, whose margin has no β.
        batch_size: pairs per device per forward pass.
        max_length: truncate prompt+completion to this many tokens as TRL does; None = no truncation (exact scores).
            A row whose prompt alone fills `max_length` cannot be scored: an `AuditInputError` names such rows. (For a
            reward model, TRL's RewardTrainer leaves out longer pairs instead of truncating: an error names them too.)
        loss_type: also report this registered loss (``ropo``, ``sympo_sigmoid``, ...) per pair, computed exactly as
            in training (SymPO's reward clip included). Losses that couple the pairs of a batch are refused. For a
            reward model, one of `trl_robust.reward_loss_types()`, as `RobustRewardTrainer` computes it.
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
    check_settings(DEFAULT_BETA if beta is None else beta, batch_size, max_length)
    check_output_dir(output_dir, overwrite)
    if output_dir is not None:  # the histogram needs matplotlib, an optional dependency: missing, stop before scoring
        require_matplotlib("The audit's histogram (z_histogram.png in output_dir)", error=AuditInputError)
    policy, reference = resolve_models(model, ref_model)
    check_loss_type(loss_type, loss_hyperparameters, reward_model=policy.is_reward_model)
    flipped = check_dataset(dataset, flip_column)
    if policy.is_reward_model:
        if beta is not None:
            raise AuditInputError(
                f"beta={beta!r} was given, but model {policy.describe()} is a reward model: its margin "
                "r(chosen) − r(rejected) has no β. Leave beta out (`--beta`)."
            )
        return _audit_reward_model(
            policy, dataset, flipped, batch_size=batch_size, max_length=max_length, loss_type=loss_type,
            loss_hyperparameters=loss_hyperparameters, output_dir=output_dir, flip_column=flip_column,
            processing_class=processing_class, dtype=dtype, use_cpu=use_cpu, show_progress=show_progress,
            dataset_num_proc=dataset_num_proc,
        )
    beta = DEFAULT_BETA if beta is None else beta
    check_beta(beta, policy)
    with tempfile.TemporaryDirectory(prefix="trl-robust-audit-") as trainer_dir:
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
        delta, extra = _collect(trainer._audit_records, n_rows)
        accelerator = trainer.accelerator
        num_processes = accelerator.num_processes
        is_main = accelerator.is_main_process
        del trainer

    z = beta * delta  # as TRL: `self.beta * delta_score`, in float32
    loss_type = loss_type if loss_type not in (None, "sigmoid") else None
    noise = _estimate_noise(z)
    pairs = _ranked_pairs(z, {"dpo_loss": -F.logsigmoid(z)}, loss_type, extra, noise, flipped, flip_column)
    result = AuditResult(pairs=pairs, beta=float(beta), loss_type=loss_type, trl_metrics=trl_metrics,
                         num_processes=num_processes, noise_estimate=noise)
    return _finish(result, z, flipped, flip_column, output_dir, policy, reference, n_rows, max_length, is_main,
                   accelerator)


def _audit_reward_model(policy, dataset, flipped, *, batch_size, max_length, loss_type, loss_hyperparameters, output_dir,
                        flip_column, processing_class, dtype, use_cpu, show_progress, dataset_num_proc) -> AuditResult:
    """`audit_preferences` for a reward model: z = r_chosen − r_rejected (see `trl_robust.audit.reward`)."""
    from .reward import score_with_reward_model

    loss_type = loss_type if loss_type not in (None, "bradley_terry") else None
    n_rows = len(dataset)
    indexed = dataset.add_column(ROW_COLUMN, np.arange(n_rows, dtype=np.int64))
    with tempfile.TemporaryDirectory(prefix="trl-robust-audit-") as trainer_dir:
        chosen, rejected, extra, trl_metrics, accelerator = score_with_reward_model(
            policy, indexed, batch_size=batch_size, max_length=max_length, loss_type=loss_type,
            loss_hyperparameters=loss_hyperparameters, processing_class=processing_class, dtype=dtype, use_cpu=use_cpu,
            show_progress=show_progress, dataset_num_proc=dataset_num_proc, trainer_dir=trainer_dir,
        )
    z = chosen - rejected  # the reward model's margin, as TRL's `margin` metric (without the dataset's margin column)
    columns = {"reward_chosen": chosen, "reward_rejected": rejected, "bradley_terry_loss": -F.logsigmoid(z)}
    noise = _estimate_noise(z)
    pairs = _ranked_pairs(z, columns, loss_type, extra, noise, flipped, flip_column)
    result = AuditResult(pairs=pairs, beta=None, loss_type=loss_type, trl_metrics=trl_metrics,
                         num_processes=accelerator.num_processes, noise_estimate=noise, model_kind="reward")
    return _finish(result, z, flipped, flip_column, output_dir, policy, None, n_rows, max_length,
                   accelerator.is_main_process, accelerator)


def _ranked_pairs(z, columns, loss_type, extra, noise, flipped, flip_column) -> list[dict]:
    """One dict per row, most suspicious (lowest z) first: rank, row, z, the per-pair `columns`, the registered loss,
    p_flipped and the flip record where there are."""
    order = sorted(range(len(z)), key=lambda i: (z[i].item(), i))  # most suspicious first; ties by row
    pairs = []
    for rank, i in enumerate(order, start=1):
        pair = {"rank": rank, "row": i, "z": z[i].item(), **{name: values[i].item() for name, values in columns.items()}}
        if loss_type:
            pair[f"{loss_type}_loss"] = extra[i].item()
        if noise is not None:
            pair["p_flipped"] = float(noise.p_flipped[i])
        if flipped is not None:
            pair[flip_column] = flipped[i]
        pairs.append(pair)
    return pairs


def _finish(result, z, flipped, flip_column, output_dir, policy, reference, n_rows, max_length, is_main, accelerator):
    """The metrics against the flip record, the summary and the files: the same for a policy and a reward model."""
    num_processes = result.num_processes
    if flipped is not None:
        result.auroc, result.precision_at_k = flip_metrics(z.tolist(), flipped)
    if output_dir is not None:
        output_dir = Path(output_dir)
        result.paths = {kind: str(output_dir / name) for kind, name in OUTPUT_FILES.items()}
    flip_column = flip_column if flipped is not None else None
    result.summary = summary(result, policy, reference, n_rows, max_length, flip_column)
    if output_dir is not None and is_main:
        write_outputs(result, output_dir, flip_column)
    if num_processes > 1:
        accelerator.wait_for_everyone()
    return result


DEFAULT_BETA = 0.1  # TRL's DPOConfig default


def _estimate_noise(z: torch.Tensor):
    """The share of flipped labels these margins suggest, with each pair's probability; None where they cannot tell."""
    try:
        return estimate_noise(z.double().numpy())
    except ValueError:  # all margins equal (a policy identical to its reference): nothing to estimate from
        return None


def _audit_config(output_dir, beta, batch_size, max_length, loss_type, loss_hyperparameters, use_cpu, show_progress,
                  dataset_num_proc):
    from ..config import RobustDPOConfig
    from ..registry import config_class_with

    registered = loss_type not in (None, "sigmoid")
    # A plugin's hyperparameter has no field in RobustDPOConfig: a subclass with one (never saved: save_strategy no).
    return config_class_with(RobustDPOConfig, loss_hyperparameters or {})(
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
