"""`RobustDPOTrainer`: TRL's `DPOTrainer` that also accepts the registered robust loss types."""

import torch
from trl import DPOTrainer

from . import dispatch
from .config import RobustDPOConfig, robust_hyperparameter, validate_robust_args
from .data import check_trainer_datasets
from .registry import LossSpec, get_loss_spec, unknown_loss_type_error

dispatch.check_trl_version()


class RobustDPOTrainer(DPOTrainer):
    """TRL's `DPOTrainer`, plus the loss types registered in `trl_robust` (`ropo`, `sympo_sigmoid`, `sympo_ramp`, ...).

    Drop-in: same arguments as `trl.DPOTrainer`. `args` may be a `RobustDPOConfig` or a plain `trl.DPOConfig`
    (the robust hyperparameters then take their defaults). Loss names and hyperparameters are validated before
    any model is loaded. Built-in loss types run TRL's own code unchanged; a registered loss type is computed
    from TRL's chosen/rejected scores (so `f_divergence_type`, `ld_alpha`, precomputed or PEFT reference,
    `use_weighting` and `loss_weights` all apply to it as to `sigmoid`).

    Extra metrics, per registered loss type `<name>` (gathered over all processes, like TRL's `rewards/*`):
    `<name>/grad_weight`, `<name>/grad_weight_vs_dpo`, `<name>/negative_margin_frac`, `<name>/saturated_frac`
    and, for losses that clip rewards, `<name>/clipped_frac`. See the README's metrics glossary.
    """

    _tag_names = [*DPOTrainer._tag_names, "trl-robust"]

    def __init__(self, model, ref_model=None, args=None, *pargs, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "model"
            args = RobustDPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-DPO")
        validate_robust_args(args)  # before TRL loads any model
        # Bad rows fail early, by split, column and row, instead of deep inside TRL's tokenisation.
        check_trainer_datasets(DPOTrainer.__init__, model, ref_model, args, *pargs, **kwargs)
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

    def _set_model_card_data(self, loss_types: list[str]) -> None:
        self._tag_names = [*type(self)._tag_names, *loss_types]
        if not self._robust_specs:
            return  # built-in losses only: TRL's DPO name and citation are right
        papers = list({s.paper.arxiv_id: s.paper for s in self._robust_specs.values() if s.paper}.values())
        self._name = f"DPO with the {' + '.join(self._robust_specs)} loss (trl-robust)"
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

    # `_compute_loss` is TRL's own method, derived from the installed TRL with one extra branch that calls this.
    _compute_loss = dispatch.derive_compute_loss()

    def _registered_per_sequence_loss(
        self, loss_type, chosen_scores, rejected_scores, ref_chosen_logps, ref_rejected_logps, mode
    ):
        """Per-pair loss of a registered loss type; called from the branch `dispatch` adds to TRL's loss chain."""
        spec = get_loss_spec(loss_type)
        if spec is None:  # e.g. a name unregistered after the trainer was built
            raise unknown_loss_type_error(loss_type)
        hyperparameters = {kw: robust_hyperparameter(self.args, attr) for kw, attr in spec.hyperparameters.items()}
        clip = robust_hyperparameter(self.args, "sympo_reward_clip") if spec.uses_reward_clip else None
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
        bad_margin = ~torch.isfinite(chosen_scores - rejected_scores) & ~bad_reference
        self._log_margin_metrics(spec, z, clipped, hyperparameters, mode, bad_reference, bad_margin)
        return spec.fn(z, **hyperparameters)

    def _log_margin_metrics(self, spec: LossSpec, z, clipped, hyperparameters, mode, bad_reference, bad_margin):
        """Gather the margins of the global batch and log how the loss weighs them (see README glossary).

        Also the one place that sees every pair of the global batch on the host, so it refuses to go on if any pair's
        reference or policy log-probs are not finite: a NaN margin would otherwise be trained on silently (and with
        SymPO's clip an inf one would look like an ordinary clipped pair). Every process raises together.
        """
        # One gather for margins and per-pair flags (as float: not every backend gathers bool tensors).
        flags = clipped if clipped is not None else torch.zeros_like(z, dtype=torch.bool)
        columns = [z.detach().float(), flags.float(), bad_reference.float(), bad_margin.float()]
        z_all, clipped_all, bad_reference_all, bad_margin_all = self.accelerator.gather(torch.stack(columns, -1)).unbind(-1)
        # Gradient weight w(z) = −∂ℓ/∂z, by autograd so it holds for any registered loss; also under eval's no_grad.
        with torch.enable_grad():
            z_leaf = z_all.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(spec.fn(z_leaf, **hyperparameters).sum(), z_leaf)
        weight = -grad
        values = {
            "grad_weight": weight.mean(),
            "grad_weight_vs_dpo": weight.sum() / torch.sigmoid(-z_all).sum().clamp_min(1e-30),
            "negative_margin_frac": (z_all < 0).float().mean(),
            "saturated_frac": (weight == 0).float().mean(),
        }
        if clipped is not None:
            values["clipped_frac"] = clipped_all.mean()
        counts = torch.stack([bad_reference_all.sum(), bad_margin_all.sum()])
        # One device-to-host transfer for all of them, not one `.item()` sync each.
        *metrics, n_bad_reference, n_bad_margin = torch.cat([torch.stack(list(values.values())), counts]).tolist()
        if n_bad_reference or n_bad_margin:  # (the metrics above are then NaN and not logged)
            raise FloatingPointError(_non_finite_message(spec.name, mode, len(z_all), n_bad_reference, n_bad_margin))
        for name, value in zip(values, metrics):
            self._metrics[mode][f"{spec.name}/{name}"].append(value)


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
    return (
        f"Non-finite DPO margins in a {mode} batch of {n_pairs} pairs ({loss_type} loss): {'; and '.join(problems)}. "
        "trl-robust stops rather than train on them."
    )
