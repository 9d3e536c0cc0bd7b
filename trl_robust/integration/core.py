"""The robust mechanics both trainers share: margin → loss → metrics → ROPO's filter → what to do with non-finite values.

`RobustLossMixin` is mixed in before TRL's trainer class by `RobustDPOTrainer` and `RobustRewardTrainer`. Each of them
supplies only how it gets the two scores of a pair — DPO from the branch `dispatch` adds to TRL's loss chain (TRL's
chosen/rejected scores, with β as the scale and the reference log-probs to check), a reward model from the rewards TRL's
`compute_loss` returns (with the dataset's `margin` column as an offset) — and calls `_robust_per_pair_loss`, which:

1. binds the registered loss's hyperparameters from the config (`_robust_loss_fn`) and forms the margin z in float32,
   each side clipped first where the loss asks (SymPO's reward clip; `_robust_margin`);
2. hands z to ROPO's filter (`trl_robust.filter`, one entry point: `_ropo_filter_batch`), which records what its
   epoch and `auto` modes need, gathers the batch's per-pair values over every process in one call, and decides which
   pairs to distrust;
3. logs how the loss weighs the global batch (the same metric names for both trainers, see docs/metrics.md) and
   stops — or, under fp16 with a loss scaler, skips the step — where a margin is NaN or infinite;
4. returns this process's per-pair losses, with the suspects dropped or corrected.

A loss that carries state across steps (RE-PO's reliability η, Hölder-DPO's contamination estimate; `LossSpec.state`)
gets one state per trainer (`trl_robust.integration.stateful`): bound into its loss at step 1, fed the global batch's
margins at step 3, updated after each optimizer step and saved with checkpoints; its flip-rate estimate is logged.

Also shared: `builtin:` model names (`_resolve_builtin_model`) and the model card's name, tags and citations
(`_set_model_card_data`).
"""

import functools
import logging
import math
import warnings
from typing import NamedTuple

import torch

from .. import builtin
from ..checkpoint_files import refuse_weights_only_resume
from ..config import robust_hyperparameter
from ..filter.auto import AUTO
from ..filter.settings import filter_ratio
from ..filter.trainer import RopoFilterMixin
from ..registry import LossSpec, get_loss_spec
from .stateful import LossStateCallback, build_loss_states, metric_names

logger = logging.getLogger(__name__)


class Margin(NamedTuple):
    """The margin of each pair as the loss sees it, and what was found on the way."""

    z: torch.Tensor  # what the loss is applied to: scale·(chosen − rejected) − offset, each side clipped first if asked
    unclipped: torch.Tensor  # the same without the clip: what ROPO's epoch filter and `auto` rank pairs by
    clipped: torch.Tensor | None  # pairs with a side beyond the clip (None: the loss does not clip)
    non_finite: torch.Tensor  # pairs whose scores give no finite difference (checked before the clip can hide it)


class RobustLossMixin(RopoFilterMixin):
    """The robust loss path of a TRL trainer (see the module docstring); mixed in before TRL's trainer class.

    The trainer sets `_robust_specs` (loss type → `LossSpec`, the registered loss types it computes) before TRL's
    `__init__`, calls `_set_up_robust_loss()` after it, and names its margins and scores for error messages in
    `_margin_name` and `_scores_name`.
    """

    _robust_specs: dict = {}
    _margin_name = "margins"  # "DPO margins", "reward margins"
    _scores_name = "scores"  # what turned non-finite: "the policy's log-probs", "the rewards"

    def _set_up_robust_loss(self) -> None:
        """After TRL's `__init__`: the non-finite policy's state and ROPO's filter."""
        self._skipped_steps = set()  # optimizer steps skipped for non-finite margins (fp16 only)
        self._warned_all_clipped = False
        self._set_up_ropo_filter()
        # Losses that carry state across steps (RE-PO's η; Hölder-DPO's estimate): one state each, per trainer.
        self._loss_states = build_loss_states(self._robust_specs, lambda name: robust_hyperparameter(self.args, name))
        self._loss_state_metric = metric_names(self._loss_states, filter_ratio(self.args) == AUTO)
        if self._loss_states:
            self.add_callback(LossStateCallback(self))

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """TRL's `train`, refusing first to resume from a weights-only checkpoint (`save_only_model`), which
        transformers would continue from with a new optimizer and schedule, silently."""
        refuse_weights_only_resume(resume_from_checkpoint, self.args.output_dir)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # --- what both trainers are built from ---------------------------------------------------------------------------

    @staticmethod
    def _resolve_builtin_model(model):
        """(what TRL should load, the `builtin:` name or None): `builtin:tiny` is not a Hub id, so TRL would fail with a
        repo-id error; it is built locally, as the commands do."""
        if builtin.is_builtin(model):
            return builtin.model_path(model), model
        return model, None

    @staticmethod
    def _default_output_name(model, suffix: str) -> str:
        """TRL's default `output_dir` for a config-less trainer: the model's last path component and the method."""
        name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "model"
        return f"{str(name).rstrip('/').split('/')[-1]}-{suffix}"

    def _set_model_card_data(self, method: str, loss_types: list[str], base_paper: dict | None) -> None:
        """Tag the model with trl-robust and its loss types; where a registered loss trains it, name the method after
        the losses and cite their papers after `base_paper` (TRL's own, if it has one). Instance attributes, set before
        TRL's `__init__` tags the model with `self._tag_names`."""
        self._tag_names = [*type(self)._tag_names, *loss_types]
        # Registered losses only: a reward model's `bradley_terry` is TRL's loss even where trl-robust computes it.
        specs = [get_loss_spec(t) for t in dict.fromkeys(loss_types) if get_loss_spec(t) is not None]
        if not specs:
            return  # TRL's losses only: TRL's name and citation are right
        papers = list({s.paper.arxiv_id: s.paper for s in specs if s.paper}.values())
        # Every loss in the list, TRL's built-ins too: `[sympo_sigmoid, sft]` trains on both.
        self._name = f"{method} with the {' + '.join(dict.fromkeys(loss_types))} loss (trl-robust)"
        citations = [*([base_paper["citation"]] if base_paper else []), *(p.citation for p in papers)]
        if papers or base_paper:
            self._paper = {
                "title": papers[0].title if papers else base_paper["title"],
                "id": papers[0].arxiv_id if papers else base_paper["id"],
                "citation": "\n\n".join(citations),
            }

    # --- margin → loss -------------------------------------------------------------------------------------------------

    def _robust_loss_fn(self, spec: LossSpec):
        """The per-pair loss z ↦ ℓ(z) of `spec`, its hyperparameters bound from the config."""
        hyperparameters = {kw: robust_hyperparameter(self.args, h.attribute) for kw, h in spec.hyperparameters.items()}
        state = getattr(self, "_loss_states", {}).get(spec.name)
        if state is not None:
            hyperparameters.update(state.loss_kwargs())  # RE-PO's current η in place of its initial value
        return functools.partial(spec.fn, **hyperparameters)

    def _robust_margin(self, spec: LossSpec, chosen, rejected, scale: float | None = None, offset=None) -> Margin:
        """z = scale·(chosen − rejected) − offset, each side's scale·score clamped to [−c, c] first where `spec` uses
        SymPO's reward clip c.

        In float32 whatever dtype the scores arrive in: in float16 a reward beyond 65504 is inf, and a difference of
        log-prob sums in the thousands keeps no fractional digits (a no-op for float32 scores). Without a clip z is
        `scale * (chosen - rejected)`, the very expression of TRL's `sigmoid` margin.
        """
        chosen, rejected = chosen.float(), rejected.float()
        difference = chosen - rejected
        unclipped = difference if scale is None else scale * difference
        if offset is not None:
            unclipped = unclipped - offset.to(unclipped.device, torch.float32)
        clip = robust_hyperparameter(self.args, "sympo_reward_clip") if spec.uses_reward_clip else None
        if clip is None:
            z, clipped = unclipped, None
        else:
            chosen_reward = chosen if scale is None else scale * chosen
            rejected_reward = rejected if scale is None else scale * rejected
            clipped = (chosen_reward.abs() > clip) | (rejected_reward.abs() > clip)
            z = chosen_reward.clamp(-clip, clip) - rejected_reward.clamp(-clip, clip)
            if offset is not None:
                z = z - offset.to(z.device, torch.float32)
        # clamp maps ±inf to ±c: the check is on the unclipped difference.
        return Margin(z, unclipped, clipped, ~torch.isfinite(difference))

    def _robust_per_pair_loss(
        self, spec: LossSpec, chosen, rejected, mode: str, *, scale=None, offset=None, bad_reference=None,
        records_margins: bool = True,
    ) -> torch.Tensor:
        """This process's per-pair losses of the registered loss `spec` (see the module docstring).

        Args:
            chosen, rejected: each pair's two scores (DPO: TRL's chosen/rejected scores; reward: the rewards).
            mode: "train" or "eval".
            scale: β for DPO; None for a reward model.
            offset: subtracted from the margin (a reward dataset's `margin` column).
            bad_reference: pairs whose reference log-probs are not finite (DPO), reported as such.
            records_margins: whether ROPO's epoch filter and `auto` record these margins (once per batch: DPO with
                several registered loss types records only the first).
        """
        loss_fn = self._robust_loss_fn(spec)
        margin = self._robust_margin(spec, chosen, rejected, scale, offset)
        z = margin.z
        no_pair = torch.zeros_like(z, dtype=torch.bool)
        bad_reference = no_pair if bad_reference is None else bad_reference.to(z.device)
        columns = {
            "z": z.detach(),
            "clipped": margin.clipped if margin.clipped is not None else no_pair,
            "bad_reference": bad_reference,
            "bad_margin": margin.non_finite & ~bad_reference,
        }
        batch = self._ropo_filter_batch(spec.name, margin.unclipped, columns, mode, records_margins)
        if batch is None:  # the epoch filter's scoring pass: it recorded the margins; train nothing, log nothing
            return torch.zeros_like(z)
        finite = self._log_robust_metrics(spec, loss_fn, batch, margin.clipped is not None, mode)
        per_pair = batch.loss(loss_fn, z)
        if not finite:
            # fp16: make every gradient of this step NaN, so that the loss scaler skips the optimizer step (as it does
            # for stock TRL), whatever the loss does with the bad pairs (SymPO's clip maps an inf reward to ±c).
            return per_pair * math.nan
        return per_pair

    # --- metrics and the non-finite policy -----------------------------------------------------------------------------

    def _log_robust_metrics(self, spec: LossSpec, loss_fn, batch, clips: bool, mode: str) -> bool:
        """Log how the loss weighs the margins of the global batch (see docs/metrics.md); False if they are not
        finite and the step is to be skipped.

        Also the one place that sees every pair of the global batch on the host, so it refuses to go on if any pair's
        margin is not finite: a NaN margin would otherwise be trained on silently (and with SymPO's clip an inf one
        would look like an ordinary clipped pair). Every process decides alike. Under fp16 mixed precision with a loss
        scaler (`non_finite_margins="auto"`) the step is skipped and counted instead.
        """
        pairs = batch.pairs
        z_all = pairs["z"]
        # Gradient weight w(z) = −∂ℓ/∂z, by autograd so it holds for any registered loss; also under eval's no_grad.
        with torch.enable_grad():
            z_leaf = z_all.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(loss_fn(z_leaf).sum(), z_leaf)
        weight = -grad
        values = {
            "grad_weight": weight.mean(),
            # the loss's pull relative to the logistic loss −log σ(z) (DPO's, Bradley–Terry's) on the same pairs
            "grad_weight_vs_logistic": weight.sum() / torch.sigmoid(-z_all).sum().clamp_min(1e-30),
            "negative_margin_frac": (z_all < 0).float().mean(),
            "saturated_frac": (weight == 0).float().mean(),
        }
        if clips:
            values["clipped_frac"] = pairs["clipped"].mean()
        values.update(batch.metrics)
        counts = {"n_bad_reference": pairs["bad_reference"].sum(), "n_bad_margin": pairs["bad_margin"].sum()}
        state = getattr(self, "_loss_states", {}).get(spec.name) if mode == "train" else None
        # A stateful loss's per-batch values ride the same one transfer (keys set apart from the logged metrics).
        state_values = {f"state:{k}": v for k, v in (state.batch_values(z_all) if state else {}).items()}
        metrics = self._to_host({**values, **counts, **state_values}, batch)
        state_values = {k.removeprefix("state:"): metrics.pop(k) for k in state_values}
        n_bad_reference, n_bad_margin = metrics.pop("n_bad_reference"), metrics.pop("n_bad_margin")
        if n_bad_reference or n_bad_margin:  # (the metrics above are then NaN and not logged)
            message = self._non_finite_message(spec.name, mode, len(z_all), n_bad_reference, n_bad_margin)
            if self._skips_non_finite_steps():
                self._record_skipped_step(message, mode)
                return False
            message += " trl-robust stops rather than train on them."
            if self.args.fp16 and robust_hyperparameter(self.args, "non_finite_margins") == "auto":
                message += " (fp16 is on, but no loss scaler would skip this step here, e.g. on a CPU.)"
            elif self.args.fp16:
                message += " (non_finite_margins='error'; 'auto' skips such steps under fp16.)"
            raise FloatingPointError(message)
        if state is not None:
            state.observe(state_values, len(z_all))  # the same global batch on every process: the states agree
        for name, value in metrics.items():
            if name == "filter_precision" and math.isnan(value):
                continue  # a batch without suspects (epoch scope) has no precision; average over those with some
            self._metrics[mode][f"{spec.name}/{name}"].append(value)
        if clips and mode == "train" and metrics["clipped_frac"] == 1.0:
            self._warn_all_clipped()
        return True

    def _non_finite_message(self, loss_type: str, mode: str, n_pairs: int, n_bad_reference, n_bad_margin) -> str:
        problems = []
        if n_bad_reference:
            problems.append(
                f"the reference log-probs of {int(n_bad_reference)} pair(s) are NaN or infinite (a reference model in "
                "float16 that overflows, a corrupt checkpoint, or NaN in precomputed `ref_chosen_logps`/"
                "`ref_rejected_logps` columns)"
            )
        if n_bad_margin:
            problems.append(
                f"{self._scores_name} of {int(n_bad_margin)} pair(s) are NaN or infinite (diverged training: lower "
                "the learning rate, or use bfloat16/float32 instead of float16)"
            )
        return (
            f"Non-finite {self._margin_name} in a {mode} batch of {n_pairs} pairs ({loss_type} loss): "
            f"{'; and '.join(problems)}."
        )

    def _skips_non_finite_steps(self) -> bool:
        """Whether a step with non-finite margins is skipped rather than fatal: fp16 mixed precision, whose loss scaler
        (torch's `GradScaler`, FSDP's, DeepSpeed's) skips optimizer steps with non-finite gradients, unless the config
        says `non_finite_margins="error"`."""
        if not self.args.fp16 or robust_hyperparameter(self.args, "non_finite_margins") != "auto":
            return False
        return self.accelerator.scaler is not None or getattr(self, "is_deepspeed_enabled", False)

    def _record_skipped_step(self, message: str, mode: str) -> None:
        """Count a training step skipped for non-finite margins (once per optimizer step, whatever the micro-batches
        and loss types) and say so; an evaluation batch is only reported (its loss is NaN, as with stock TRL)."""
        if mode == "train":
            step = self.state.global_step + 1  # the optimizer step this micro-batch belongs to, as logged
            if step in self._skipped_steps:
                return
            self._skipped_steps.add(step)
            what = (
                f"Skipping optimizer step {step} under fp16 ({len(self._skipped_steps)} skipped so far, logged as "
                f"`<loss>/skipped_non_finite_steps`)"
            )
        else:
            what = "Evaluation under fp16 goes on with a NaN loss for this batch"
        if self.accelerator.is_main_process:
            logger.warning(
                f"{message} {what}: the loss scaler skips steps whose gradients are not finite, as for stock TRL. "
                "Set non_finite_margins='error' to stop instead."
            )

    def _warn_all_clipped(self) -> None:
        if self._warned_all_clipped:
            return
        self._warned_all_clipped = True
        clip = robust_hyperparameter(self.args, "sympo_reward_clip")
        warnings.warn(
            f"sympo_reward_clip={clip} clipped a side's reward of every pair in training step "
            f"{self.state.global_step + 1}: a clipped side has zero gradient, so where both sides of every pair stay "
            "clipped the loss is constant and nothing is learned. Raise sympo_reward_clip (the SymPO authors use 10), "
            "lower beta, or set sympo_reward_clip=None (not for sympo_unhinged). `<loss>/clipped_frac` shows the share.",
            UserWarning,
            stacklevel=2,
        )

    def log(self, logs, *args, **kwargs):
        """TRL's `log`, plus the count of training steps skipped for non-finite margins where fp16 skips them."""
        if "loss" in logs and self._robust_specs and self._skips_non_finite_steps():  # a training log
            for name in self._robust_specs:
                logs[f"{name}/skipped_non_finite_steps"] = len(self._skipped_steps)
        if "loss" in logs:  # a training log: each stateful loss's flip-rate estimate (RE-PO's 1 − η, Hölder-DPO's ε̂)
            for name, state in getattr(self, "_loss_states", {}).items():
                for value in state.log_values().values():
                    self._metrics["train"][self._loss_state_metric[name]].append(value)
        return super().log(logs, *args, **kwargs)
