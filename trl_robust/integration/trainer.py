"""`RobustDPOTrainer`: TRL's `DPOTrainer` that also accepts the registered robust loss types."""

from pathlib import Path

import torch
from trl import DPOTrainer

from .. import compat
from ..config import RobustDPOConfig, validate_robust_args
from ..dataset_checks import check_trainer_datasets
from ..filter.columns import rows_indexed_for_the_filter
from ..registry import get_loss_spec, registered_loss_types, unknown_loss_type_error
from . import dispatch
from .core import RobustLossMixin


class RobustDPOTrainer(RobustLossMixin, DPOTrainer):
    """TRL's `DPOTrainer`, plus the loss types registered in `trl_robust` (`ropo`, `sympo_sigmoid`, `sympo_ramp`, ...).

    Drop-in: same arguments as `trl.DPOTrainer`. `args` may be a `RobustDPOConfig` or a plain `trl.DPOConfig`
    (the robust hyperparameters then take their defaults). Loss names and hyperparameters are validated before
    any model is loaded. Built-in loss types run TRL's own code unchanged; a registered loss type is computed
    from TRL's chosen/rejected scores (so `f_divergence_type`, `ld_alpha`, precomputed or PEFT reference,
    `use_weighting` and `loss_weights` all apply to it as to `sigmoid`).

    Extra metrics, per registered loss type `<name>` (gathered over all processes, like TRL's `rewards/*`):
    `<name>/grad_weight`, `<name>/grad_weight_vs_logistic`, `<name>/negative_margin_frac`, `<name>/saturated_frac`
    and, for losses that clip rewards, `<name>/clipped_frac`; with ROPO's filter (`ropo_filter_ratio > 0` or `auto`),
    `<name>/filtered_frac` and, when the training data has a `label_flipped` column, `<name>/filter_precision`; with
    `auto`, `noise/estimated_flip_rate` and `noise/filter_ratio` once per epoch.
    See the metrics glossary, docs/metrics.md.

    The loss path (margin, loss, metrics, ROPO's filter, non-finite margins) is `RobustLossMixin`'s
    (`trl_robust.integration.core`), shared with `RobustRewardTrainer`; this class supplies TRL's scores and β.

    `model` and `ref_model` may also be a `builtin:` name (`builtin:tiny`), as in the `trl-robust` recipes.
    """

    _tag_names = [*getattr(DPOTrainer, "_tag_names", ()), "trl-robust"]  # (the probe reports a TRL without it)

    _margin_name = "DPO margins"
    _scores_name = "the policy's log-probs"

    def __init__(self, model, ref_model=None, args=None, *pargs, **kwargs):
        integrate_with_trl()  # the probe of the installed TRL, once, before anything is loaded
        model, self._builtin_model_name = self._resolve_builtin_model(model)
        ref_model, _ = self._resolve_builtin_model(ref_model)
        if args is None:
            args = RobustDPOConfig(self._default_output_name(model, "DPO"))
        validate_robust_args(args)  # before TRL loads any model
        # Bad rows fail early, by split, column and row, instead of deep inside TRL's tokenisation.
        check_trainer_datasets(DPOTrainer.__init__, model, ref_model, args, *pargs, **kwargs)
        pargs, kwargs = rows_indexed_for_the_filter(args, DPOTrainer.__init__, (model, ref_model, args), pargs, kwargs)
        loss_types = [args.loss_type] if isinstance(args.loss_type, str) else list(args.loss_type)
        self._robust_specs = {t: get_loss_spec(t) for t in loss_types if get_loss_spec(t) is not None}
        self._set_model_card_data("DPO", loss_types, DPOTrainer._paper)

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
        self._set_up_robust_loss()

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
        """Per-pair loss of a registered loss type; called from the branch `dispatch` adds to TRL's loss chain.
        z = β·(chosen − rejected scores), TRL's `sigmoid` margin; the reference log-probs are checked for NaN/inf."""
        spec = get_loss_spec(loss_type)
        if spec is None:  # e.g. a name unregistered after the trainer was built
            raise unknown_loss_type_error(loss_type)
        bad_reference = ~(torch.isfinite(ref_chosen_logps) & torch.isfinite(ref_rejected_logps))
        return self._robust_per_pair_loss(
            spec, chosen_scores, rejected_scores, mode, scale=self.beta, bad_reference=bad_reference,
            # margins are recorded once per batch, by the first registered loss type
            records_margins=loss_type == next(iter(self._robust_specs), loss_type),
        )

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
