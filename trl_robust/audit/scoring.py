"""Noisy-pair audit: which preference labels a trained policy probably disagrees with.

    result = audit_preferences(model, dataset, ref_model=..., output_dir=...)

For every pair the policy's implicit-reward margin is computed,

    z = β · Δ,   Δ = (log πθ(y_w|x) − log πref(y_w|x)) − (log πθ(y_l|x) − log πref(y_l|x)),

with the DPO loss −log σ(z) (and, if asked, the loss of a registered `loss_type`). A pair whose z is low or negative
is one whose "chosen" response the policy finds *less* likely, relative to the reference, than the "rejected" one:
after training on mostly-correct labels (ideally with a noise-robust loss, which does not bend to the wrong ones) the
pairs at the bottom are the first candidates for a wrong label. The pairs are ranked most suspicious first.

How Δ is computed, and how rows stay aligned: `trl_robust.audit.policy` (a reward model's margin:
`trl_robust.audit.reward`). Identical pairs get one score (`trl_robust.audit.twins`).
"""

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data import ROW_COLUMN
from ..noise import estimate_noise
from ..optional import require_matplotlib
from .checks import AuditInputError, check_dataset, check_loss_type, check_output_dir, check_settings
from .loading import load_preference_split
from .models import check_beta, resolve_models
from .metrics import flip_metrics
from .policy import score_with_policy
from .report import OUTPUT_FILES, summary, write_outputs
from .result import DEFAULT_FLIP_COLUMN, AuditResult, noise_cannot_tell
from .twins import share_within_twins, twin_groups

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
            prompt), checked with `trl_robust.dataset_checks.check_preference_dataset` before any model is loaded; or,
            as `--dataset_name` takes it, a path (a single .jsonl/.json/.csv/.parquet file, a directory of such files
            or one written by `save_to_disk`) or `builtin:tiny`: its train split (a single file is the split).
            Identical pairs (same prompt, chosen and rejected) get one score (`trl_robust.audit.twins`).
        ref_model: the reference the policy was trained against (path or loaded model), a causal LM: anything else
            (a reward model, an encoder) is refused before loading, by its config's `architectures`. Required for a
            full model; for a PEFT adapter, omitted means its base model (the adapter disabled).
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
            non-empty directory is refused unless `overwrite` (then those four files are replaced, nothing else), and
            so is, before any scoring, one that could not be written (under a file, no permission).
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
    if isinstance(dataset, (str, os.PathLike)):
        dataset = load_preference_split(dataset)
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
    n_rows = len(dataset)
    indexed = dataset.add_column(ROW_COLUMN, np.arange(n_rows, dtype=np.int64))
    with tempfile.TemporaryDirectory(prefix="trl-robust-audit-") as trainer_dir:
        delta, extra, trl_metrics, accelerator = score_with_policy(
            policy, reference, indexed, beta=beta, batch_size=batch_size, max_length=max_length, loss_type=loss_type,
            loss_hyperparameters=loss_hyperparameters, processing_class=processing_class, dtype=dtype, use_cpu=use_cpu,
            show_progress=show_progress, dataset_num_proc=dataset_num_proc, trainer_dir=trainer_dir,
        )

    twins = twin_groups(dataset)
    z = beta * share_within_twins(delta, twins)  # as TRL: `self.beta * delta_score`, in float32
    loss_type = loss_type if loss_type not in (None, "sigmoid") else None
    noise = _estimate_noise(z)
    pairs = _ranked_pairs(z, {"dpo_loss": -F.logsigmoid(z)}, loss_type, extra, noise, flipped, flip_column)
    result = AuditResult(pairs=pairs, beta=float(beta), loss_type=loss_type, trl_metrics=trl_metrics,
                         num_processes=accelerator.num_processes, noise_estimate=noise, twins=twins)
    return _finish(result, z, flipped, flip_column, output_dir, policy, reference, n_rows, max_length,
                   accelerator.is_main_process, accelerator)


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
    twins = twin_groups(dataset)
    chosen, rejected = share_within_twins(chosen, twins), share_within_twins(rejected, twins)
    z = chosen - rejected  # the reward model's margin, as TRL's `margin` metric (without the dataset's margin column)
    columns = {"reward_chosen": chosen, "reward_rejected": rejected, "bradley_terry_loss": -F.logsigmoid(z)}
    noise = _estimate_noise(z)
    pairs = _ranked_pairs(z, columns, loss_type, extra, noise, flipped, flip_column)
    result = AuditResult(pairs=pairs, beta=None, loss_type=loss_type, trl_metrics=trl_metrics,
                         num_processes=accelerator.num_processes, noise_estimate=noise, model_kind="reward", twins=twins)
    return _finish(result, z, flipped, flip_column, output_dir, policy, None, n_rows, max_length,
                   accelerator.is_main_process, accelerator)


def _ranked_pairs(z, columns, loss_type, extra, noise, flipped, flip_column) -> list[dict]:
    """One dict per row, most suspicious (lowest z) first: rank, row, z, the per-pair `columns`, the registered loss,
    p_flipped where the noise estimate can tell, and the flip record where there is one."""
    order = sorted(range(len(z)), key=lambda i: (z[i].item(), i))  # most suspicious first; ties by row
    pairs = []
    for rank, i in enumerate(order, start=1):
        pair = {"rank": rank, "row": i, "z": z[i].item(), **{name: values[i].item() for name, values in columns.items()}}
        if loss_type:
            pair[f"{loss_type}_loss"] = extra[i].item()
        if noise is not None and not noise_cannot_tell(noise):  # a probability the estimate cannot back is left out
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
