"""`RobustDPOTrainer`: TRL's `DPOTrainer` that also accepts the registered robust loss types."""

import functools
import logging
import math
import warnings
from pathlib import Path

import torch
from trl import DPOTrainer

from .. import builtin, compat
from ..config import RobustDPOConfig, robust_hyperparameter, validate_robust_args
from ..data import check_trainer_datasets
from ..registry import LossSpec, get_loss_spec, registered_loss_types, unknown_loss_type_error
from . import dispatch
from .filter import RopoFilterMixin, rows_indexed_for_the_filter

logger = logging.getLogger(__name__)


class RobustDPOTrainer(RopoFilterMixin, DPOTrainer):
    """TRL's `DPOTrainer`, plus the loss types registered in `trl_robust` (`ropo`, `sympo_sigmoid`, `sympo_ramp`, ...).

    Drop-in: same arguments as `trl.DPOTrainer`. `args` may be a `RobustDPOConfig` or a plain `trl.DPOConfig`
    (the robust hyperparameters then take their defaults). Loss names and hyperparameters are validated before
    any model is loaded. Built-in loss types run TRL's own code unchanged; a registered loss type is computed
    from TRL's chosen/rejected scores (so `f_divergence_type`, `ld_alpha`, precomputed or PEFT reference,
    `use_weighting` and `loss_weights` all apply to it as to `sigmoid`).

    Extra metrics, per registered loss type `<name>` (gathered over all processes, like TRL's `rewards/*`):
    `<name>/grad_weight`, `<name>/grad_weight_vs_dpo`, `<name>/negative_margin_frac`, `<name>/saturated_frac`
    and, for losses that clip rewards, `<name>/clipped_frac`; with ROPO's filter (`ropo_filter_ratio > 0` or `auto`),
    `<name>/filtered_frac` and, when the training data has a `label_flipped` column, `<name>/filter_precision`; with
    `auto`, `noise/estimated_flip_rate` and `noise/filter_ratio` once per epoch.
    See the README's metrics glossary.

    With `ropo_filter_scope="step"` each loss type keeps a running window of recent margins and a carried count
    (`_RunningFilter`), saved in `trainer_state.json` by `_StepFilterCallback`. With `ropo_filter_scope="epoch"` a
    row-index column is added to the training dataset, and at the start of each epoch after the warm-up
    `_EpochFilterCallback` scores the training set through TRL's evaluation loop; the suspects of the epoch are saved
    in `trainer_state.json` with every checkpoint. With `ropo_filter_ratio="auto"` there is no scoring pass: the
    training steps record every pair's margin (`_free_margins`) and the callback estimates ρ from them
    (`trl_robust.noise.auto`).

    `model` and `ref_model` may also be a `builtin:` name (`builtin:tiny`), as in the `trl-robust` recipes.
    """

    _tag_names = [*getattr(DPOTrainer, "_tag_names", ()), "trl-robust"]  # (the probe reports a TRL without it)

    def __init__(self, model, ref_model=None, args=None, *pargs, **kwargs):
        integrate_with_trl()  # the probe of the installed TRL, once, before anything is loaded
        # `builtin:tiny` is not a Hub id: TRL would fail with a repo-id error. Build it locally, as the command does.
        self._builtin_model_name = model if builtin.is_builtin(model) else None
        if builtin.is_builtin(model):
            model = builtin.model_path(model)
        if builtin.is_builtin(ref_model):
            ref_model = builtin.model_path(ref_model)
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "model"
            args = RobustDPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-DPO")
        validate_robust_args(args)  # before TRL loads any model
        # Bad rows fail early, by split, column and row, instead of deep inside TRL's tokenisation.
        check_trainer_datasets(DPOTrainer.__init__, model, ref_model, args, *pargs, **kwargs)
        pargs, kwargs = rows_indexed_for_the_filter(args, DPOTrainer.__init__, (model, ref_model, args), pargs, kwargs)
        loss_types = [args.loss_type] if isinstance(args.loss_type, str) else list(args.loss_type)
        self._robust_specs = {t: get_loss_spec(t) for t in loss_types if get_loss_spec(t) is not None}
        self._set_model_card_data(loss_types)

        # TRL's __init__ refuses a non-default `f_divergence_type` for loss types outside a fixed set of
        # difference-based losses. Ours are functions of the chosen-minus-rejected difference too, so they are
        # admissible: show TRL 'sigmoid' in their place while it checks, then restore the user's list.
        original_loss_type = args.loss_type
        if self._robust_specs and args.f_divergence_type != "reverse_kl":
            args.loss_type = ["sigmoid" if t in self._robust_specs else t for t in loss_types]
        try:
            super().__init__(model, ref_model, args, *pargs, **kwargs)
        finally:
            args.loss_type = original_loss_type
        self.loss_types = loss_types
        self._skipped_steps = set()  # optimizer steps skipped for non-finite margins (fp16 only)
        self._warned_all_clipped = False
        self._set_up_ropo_filter()

    def _set_model_card_data(self, loss_types: list[str]) -> None:
        self._tag_names = [*type(self)._tag_names, *loss_types]
        if not self._robust_specs:
            return  # built-in losses only: TRL's DPO name and citation are right
        papers = list({s.paper.arxiv_id: s.paper for s in self._robust_specs.values() if s.paper}.values())
        # Every loss in the list, TRL's built-ins too: `[sympo_sigmoid, sft]` trains on both.
        self._name = f"DPO with the {' + '.join(dict.fromkeys(loss_types))} loss (trl-robust)"
        citations = [DPOTrainer._paper["citation"], *(p.citation for p in papers)]
        self._paper = {
            "title": papers[0].title if papers else DPOTrainer._paper["title"],
            "id": papers[0].arxiv_id if papers else DPOTrainer._paper["id"],
            "citation": "\n\n".join(citations),
        }

    def save_model(self, output_dir=None, _internal_call=False):
        """TRL's `save_model`; a final save into `args.output_dir` also writes the model card.

        TRL writes the card only with checkpoints and on `push_to_hub`, so a run with `save_strategy="no"` would
        save a model whose card never says how it was trained.
        """
        super().save_model(output_dir, _internal_call)
        if not _internal_call and output_dir in (None, self.args.output_dir):
            self.create_model_card()

    def create_model_card(self, model_name=None, *args, **kwargs):
        """TRL's model card, named and linked sensibly where TRL's template would say "None".

        TRL titles the card "Model Card for {model_name}", names the base model with a Hub link and loads
        `hub_model_id` in its quick start; with no `model_name` (our final save), a local base model (a directory, or
        `builtin:tiny`) and no Hub repo, all three read "None". The name defaults to what TRL's own checkpoints use
        (the Hub repo or the output directory), the link to a local base model becomes its description, and the quick
        start loads the output directory.
        """
        if model_name is None:
            model_name = (self.args.hub_model_id or Path(self.args.output_dir).name).split("/")[-1]
        super().create_model_card(model_name, *args, **kwargs)
        card = Path(self.args.output_dir) / "README.md"
        if not self.is_world_process_zero() or not card.is_file():
            return
        text = card.read_text()
        # TRL's quick start loads `hub_model_id`, None unless pushing to the Hub: point it at the saved directory.
        text = text.replace('model="None"', f"model={str(self.args.output_dir)!r}".replace("'", '"'))
        broken = "[None](https://huggingface.co/None)"  # TRL's template with `base_model=None`
        if broken in text:
            name_or_path = getattr(self.model.config, "_name_or_path", "") or ""
            if self._builtin_model_name:
                local = f"trl-robust's built-in model `{self._builtin_model_name}`"
            elif name_or_path:
                local = f"the local model `{Path(name_or_path).name}`"
            else:
                local = "a model passed as an object"
            text = text.replace(broken, local)
        card.write_text(text)

    # `_compute_loss` is TRL's own method, derived from the installed TRL with one extra branch that calls the method
    # below; `integrate_with_trl` installs it at the first construction.

    def _registered_per_sequence_loss(
        self, loss_type, chosen_scores, rejected_scores, ref_chosen_logps, ref_rejected_logps, mode
    ):
        """Per-pair loss of a registered loss type; called from the branch `dispatch` adds to TRL's loss chain."""
        spec = get_loss_spec(loss_type)
        if spec is None:  # e.g. a name unregistered after the trainer was built
            raise unknown_loss_type_error(loss_type)
        # Margins are recorded once per batch, by the first registered loss type, whatever the number of loss types.
        first = loss_type == next(iter(self._robust_specs), loss_type)
        if self._row_margins is not None:  # the epoch filter's scoring pass: record, train nothing, log nothing
            if first:
                self._record_scored_margins(self.beta * (chosen_scores - rejected_scores))  # unclipped z
            return torch.zeros_like(chosen_scores)
        if self._free_margins is not None and mode == "train" and first:  # `auto`: the next epoch's estimate
            self._record_free_margins(self.beta * (chosen_scores - rejected_scores))
        hyperparameters = {kw: robust_hyperparameter(self.args, h.attribute) for kw, h in spec.hyperparameters.items()}
        loss_fn = functools.partial(spec.fn, **hyperparameters)
        clip = robust_hyperparameter(self.args, "sympo_reward_clip") if spec.uses_reward_clip else None
        # z in float32 whatever dtype TRL's scores arrive in: in float16 a reward beyond 65504 is inf, and a difference
        # of log-prob sums in the thousands keeps no fractional digits. (A no-op for float32 scores.)
        chosen_scores, rejected_scores = chosen_scores.float(), rejected_scores.float()
        if clip is None:
            z = self.beta * (chosen_scores - rejected_scores)  # the same expression as TRL's `sigmoid` margin
            clipped = None
        else:
            # SymPO's reward clipping: bound each side's reward before the difference.
            chosen_rewards, rejected_rewards = self.beta * chosen_scores, self.beta * rejected_scores
            clipped = (chosen_rewards.abs() > clip) | (rejected_rewards.abs() > clip)
            z = chosen_rewards.clamp(-clip, clip) - rejected_rewards.clamp(-clip, clip)
        # Clipping would hide a NaN or inf in the scores (clamp maps inf to ±clip): check them before it.
        bad_reference = ~(torch.isfinite(ref_chosen_logps) & torch.isfinite(ref_rejected_logps))
        pairs = self._gather_pairs(
            z=z.detach(),
            clipped=clipped if clipped is not None else torch.zeros_like(z, dtype=torch.bool),
            bad_reference=bad_reference,
            bad_margin=~torch.isfinite(chosen_scores - rejected_scores) & ~bad_reference,
            **self._filter_columns(z, mode),
        )
        suspected, running = self._suspected_pairs(spec.name, pairs, mode)
        finite = self._log_margin_metrics(spec, loss_fn, pairs, clipped is not None, suspected, mode, running)
        per_pair = self._filtered_loss(loss_fn, z, suspected)
        if not finite:
            # fp16: make every gradient of this step NaN, so that the loss scaler skips the optimizer step (as it does
            # for stock TRL), whatever the loss does with the bad pairs (SymPO's clip maps an inf reward to ±c).
            return per_pair * math.nan
        return per_pair

    def _log_margin_metrics(self, spec: LossSpec, loss_fn, pairs, clips: bool, suspected, mode, running) -> bool:
        """Log how the loss weighs the margins of the global batch (see README glossary); False if they are not finite.

        Also the one place that sees every pair of the global batch on the host, so it refuses to go on if any pair's
        reference or policy log-probs are not finite: a NaN margin would otherwise be trained on silently (and with
        SymPO's clip an inf one would look like an ordinary clipped pair). Every process decides alike. Under fp16
        mixed precision with a loss scaler (`non_finite_margins="auto"`) the step is skipped and counted instead, and
        False is returned so that the caller makes the scaler skip it.

        The step filter's host copy of its window and count rides on the same transfer (`running`).
        """
        z_all = pairs["z"]
        # Gradient weight w(z) = −∂ℓ/∂z, by autograd so it holds for any registered loss; also under eval's no_grad.
        with torch.enable_grad():
            z_leaf = z_all.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(loss_fn(z_leaf).sum(), z_leaf)
        weight = -grad
        values = {
            "grad_weight": weight.mean(),
            "grad_weight_vs_dpo": weight.sum() / torch.sigmoid(-z_all).sum().clamp_min(1e-30),
            "negative_margin_frac": (z_all < 0).float().mean(),
            "saturated_frac": (weight == 0).float().mean(),
        }
        if clips:
            values["clipped_frac"] = pairs["clipped"].mean()
        values.update(self._filter_values(pairs, suspected, mode))
        counts = {"n_bad_reference": pairs["bad_reference"].sum(), "n_bad_margin": pairs["bad_margin"].sum()}
        metrics = self._to_host({**values, **counts}, running)
        n_bad_reference, n_bad_margin = metrics.pop("n_bad_reference"), metrics.pop("n_bad_margin")
        if n_bad_reference or n_bad_margin:  # (the metrics above are then NaN and not logged)
            message = _non_finite_message(spec.name, mode, len(z_all), n_bad_reference, n_bad_margin)
            if self._skips_non_finite_steps():
                self._record_skipped_step(message, mode)
                return False
            message += " trl-robust stops rather than train on them."
            if self.args.fp16 and robust_hyperparameter(self.args, "non_finite_margins") == "auto":
                message += " (fp16 is on, but no loss scaler would skip this step here, e.g. on a CPU.)"
            elif self.args.fp16:
                message += " (non_finite_margins='error'; 'auto' skips such steps under fp16.)"
            raise FloatingPointError(message)
        for name, value in metrics.items():
            if name == "filter_precision" and math.isnan(value):
                continue  # a batch without suspects (epoch scope) has no precision; average over those with some
            self._metrics[mode][f"{spec.name}/{name}"].append(value)
        if clips and mode == "train" and metrics["clipped_frac"] == 1.0:
            self._warn_all_clipped()
        return True

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
            f"sympo_reward_clip={clip} clipped a side's reward β·score of every pair in training step "
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
        return super().log(logs, *args, **kwargs)

    def compute_loss(self, model, inputs, *args, **kwargs):
        """TRL's `compute_loss`, with the passed-through columns taken out of the batch (they are not model inputs)."""
        with self._columns_taken_out(inputs):
            return super().compute_loss(model, inputs, *args, **kwargs)


def integrate_with_trl() -> None:
    """Check the installed TRL (`trl_robust.compat.check_integration`: once, warning outside the tested range, one
    error naming every structural problem) and give `RobustDPOTrainer` its derived `_compute_loss`. Runs at the first
    trainer construction and in `patch_trl()`, before any model is loaded; importing trl-robust does not run it."""
    compat.check_integration({name: get_loss_spec(name).fn for name in registered_loss_types()})
    if "_compute_loss" not in RobustDPOTrainer.__dict__:
        RobustDPOTrainer._compute_loss = dispatch.derive_compute_loss()


def _non_finite_message(loss_type: str, mode: str, n_pairs: int, n_bad_reference: float, n_bad_margin: float) -> str:
    problems = []
    if n_bad_reference:
        problems.append(
            f"the reference log-probs of {int(n_bad_reference)} pair(s) are NaN or infinite (a reference model in "
            "float16 that overflows, a corrupt checkpoint, or NaN in precomputed `ref_chosen_logps`/"
            "`ref_rejected_logps` columns)"
        )
    if n_bad_margin:
        problems.append(
            f"the policy's log-probs of {int(n_bad_margin)} pair(s) are NaN or infinite (diverged training: lower "
            "the learning rate, or use bfloat16/float32 instead of float16)"
        )
    return f"Non-finite DPO margins in a {mode} batch of {n_pairs} pairs ({loss_type} loss): {'; and '.join(problems)}."
