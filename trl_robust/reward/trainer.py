"""`RobustRewardTrainer`: TRL's `RewardTrainer` whose loss can be a registered per-pair loss of the reward margin.

How the loss gets in, and why this way. TRL's `RewardTrainer.compute_loss` is one short method that runs the model on
the chosen and rejected sequences, forms the loss inline,

    loss = −log σ(r_chosen − r_rejected [− margin])  (+ center_rewards_coefficient · mean((r_c + r_r)²))

and logs its metrics (`accuracy`, `margin`, `min/mean/max_reward`, `num_tokens`) from the same rewards. There is no hook
and no loss chain to add a branch to (unlike DPO's `_compute_loss`, see `trl_robust.integration.dispatch`): deriving
the method from its source would depend on the exact text of two expression lines. Instead, for a registered loss
type, `compute_loss` calls TRL's own `compute_loss(..., return_outputs=True)` — so the forward pass, the `use_cache`
handling and every metric stay TRL's code in every supported version (0.29 to 1.16 differ only in the token count) —
takes the rewards from the outputs it returns, and returns the registered loss in place of TRL's. TRL's Bradley–Terry
value, one `logsigmoid` over the batch, is computed and discarded; the model runs once. All this relies on is the
method's public contract (a `(loss, outputs)` pair whose `logits` are the chosen rewards then the rejected ones, as
TRL's collator stacks them), checked by `trl_robust.compat.check_reward_integration` before any model is loaded.

`loss_type="bradley_terry"` (the default), without ROPO's filter, returns TRL's `compute_loss` untouched: bit-identical
to stock TRL (the parity test checks loss and gradients, with and without a `margin` column and
`center_rewards_coefficient`).

The margin of a reward model. The losses of `trl_robust.losses` are functions of the margin z; for DPO z = β·Δ. A
reward model has no β: z = r_chosen − r_rejected, minus the dataset's `margin` column where there is one (as TRL's
loss does), so the reward difference itself is the scale. SymPO's reward clip bounds each side's reward r to [−c, c]
before the difference (the reward-model reading of the SymPO authors' clamp of each side's β·log-ratio).
"""

import functools
import math

import torch
from trl import RewardTrainer

from .. import builtin, compat
from ..config import filters
from ..integration.filter import RopoFilterMixin, rows_indexed_for_the_filter
from ..registry import get_loss_spec
from .config import BRADLEY_TERRY, BRADLEY_TERRY_SPEC, RobustRewardConfig, reward_hyperparameter, validate_reward_args


class RobustRewardTrainer(RopoFilterMixin, RewardTrainer):
    """TRL's `RewardTrainer`, plus the per-pair loss types registered in `trl_robust` (`sympo_sigmoid`, `sympo_ramp`,
    `sympo_unhinged`, `ropo`, `cdpo`, ...), chosen with `loss_type` in a `RobustRewardConfig`.

    Drop-in: same arguments as `trl.RewardTrainer`. `args` may also be a plain `trl.RewardConfig` (read as
    `bradley_terry`). `loss_type` and its hyperparameters are validated before any model is loaded. `model` may be a
    `builtin:` name (`builtin:tiny`): TRL then loads that causal LM with a fresh one-output sequence-classification head,
    as it does for any causal LM checkpoint.

    Extra metrics for a registered loss type `<name>` (gathered over all processes, like TRL's): `<name>/grad_weight`
    (mean of w(z) = −∂ℓ/∂z), `<name>/grad_weight_vs_bt` (Σw / Σσ(−z): the loss's pull relative to Bradley–Terry's on
    the same pairs), `<name>/negative_margin_frac` (pairs the model ranks the other way round), `<name>/saturated_frac`
    (pairs with zero gradient weight) and, for losses that clip rewards, `<name>/clipped_frac`. TRL's `margin` and
    `accuracy` stay computed from the unclipped rewards without the dataset margin, as TRL computes them.

    ROPO's filter (`ropo_filter_ratio` > 0 or `"auto"`, `trl_robust.integration.filter`) ranks the pairs by the margin z
    the loss sees and drops or corrects the lowest, for any loss type; `bradley_terry` is then computed here per pair
    (−log σ(z), TRL's value while nothing is filtered). It logs `<name>/filtered_frac`, `<name>/filter_precision`
    (with a `label_flipped` column) and, with `"auto"`, `noise/estimated_flip_rate` and `noise/filter_ratio`.
    """

    _tag_names = [*getattr(RewardTrainer, "_tag_names", ()), "trl-robust"]  # (the probe reports a TRL without it)

    def __init__(self, model, args=None, *pargs, **kwargs):
        compat.check_reward_integration()  # once, before anything is loaded
        # `builtin:tiny` is not a Hub id: TRL would fail with a repo-id error. Build it locally, as the commands do.
        self._builtin_model_name = model if builtin.is_builtin(model) else None
        if builtin.is_builtin(model):
            model = builtin.model_path(model)
        if args is None:  # TRL's default name, with our config so that `loss_type` exists
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "model"
            args = RobustRewardConfig(f"{str(name).rstrip('/').split('/')[-1]}-Reward")
        validate_reward_args(args)  # before TRL loads any model
        loss_type = reward_hyperparameter(args, "loss_type")
        # None: TRL's own loss, untouched. Bradley–Terry with ROPO's filter is computed here, per pair.
        self._reward_spec = get_loss_spec(loss_type) or (BRADLEY_TERRY_SPEC if filters(args) else None)
        self._set_model_card_data(loss_type)
        pargs, kwargs = rows_indexed_for_the_filter(args, RewardTrainer.__init__, (model, args), pargs, kwargs)
        super().__init__(model, args, *pargs, **kwargs)
        self._set_up_ropo_filter()

    def _set_model_card_data(self, loss_type: str) -> None:
        # Instance attributes, set before TRL's __init__ tags the model with `self._tag_names`.
        self._tag_names = [*type(self)._tag_names, loss_type]
        spec = self._reward_spec
        if spec is None or spec.name == BRADLEY_TERRY:
            return  # TRL's loss: TRL's name and (empty) citation are right
        self._name = f"Reward model with the {spec.name} loss (trl-robust)"
        if spec.paper is not None:
            self._paper = {"title": spec.paper.title, "id": spec.paper.arxiv_id, "citation": spec.paper.citation}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's `compute_loss`; for a registered loss type (or ROPO's filter), its loss replaced by that loss of the
        reward margin (see the module docstring)."""
        with self._columns_taken_out(inputs):  # the row index and flip record are not model inputs
            if self._reward_spec is None:
                return super().compute_loss(
                    model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
                )
            margin = inputs.get("margin")
            _, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
            # TRL's collator stacks the chosen sequences first, then the rejected ones (TRL splits them the same way).
            rewards_chosen, rewards_rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
            loss = self._registered_loss(rewards_chosen, rewards_rejected, margin)
        coefficient = self.args.center_rewards_coefficient
        if coefficient is not None:  # TRL's centring term (Eisenstein et al. 2023, arXiv 2312.09244, Eq. 2), as TRL adds it
            loss = loss + coefficient * torch.mean((rewards_chosen + rewards_rejected) ** 2)
        return (loss, outputs) if return_outputs else loss

    def _registered_loss(self, rewards_chosen, rewards_rejected, margin) -> torch.Tensor:
        """Mean over the pairs of ℓ(z), z = r_c − r_r (− margin), each reward clipped first where the loss asks; in
        training, ROPO's suspects dropped or corrected where its filter is on."""
        loss_fn, z, clipped = self._loss_margin(rewards_chosen, rewards_rejected, margin)
        mode = "train" if self.model.training else "eval"
        if self._row_margins is not None:  # the epoch filter's scoring pass: record, train nothing
            self._record_scored_margins(z)
            return z.new_zeros(())
        if self._free_margins is not None and mode == "train":  # `auto`: the next epoch's estimate
            self._record_free_margins(z)
        columns = {"z": z.detach(), **self._filter_columns(z, mode)}
        if clipped is not None:
            columns["clipped"] = clipped
        pairs = self._gather_pairs(**columns)
        suspected, running = self._suspected_pairs(self._reward_spec.name, pairs, mode)
        self._log_loss_metrics(loss_fn, pairs, suspected, mode, running)
        return self._filtered_loss(loss_fn, z, suspected).mean()

    def _loss_margin(self, rewards_chosen, rewards_rejected, margin):
        """(ℓ with its hyperparameters bound, the margin z it is applied to, which pairs were clipped or None): what the
        loss of each pair is computed from, as training computes it (the audit reports `loss_fn(z)` per pair)."""
        spec = self._reward_spec
        hyperparameters = {kw: reward_hyperparameter(self.args, h.attribute) for kw, h in spec.hyperparameters.items()}
        loss_fn = functools.partial(spec.fn, **hyperparameters)
        # z in float32 whatever dtype the rewards arrive in (bf16 keeps 3 significant digits of a reward difference).
        chosen, rejected = rewards_chosen.float(), rewards_rejected.float()
        clip = reward_hyperparameter(self.args, "sympo_reward_clip") if spec.uses_reward_clip else None
        clipped = None
        if clip is not None:
            clipped = (chosen.abs() > clip) | (rejected.abs() > clip)
            finite = torch.isfinite(chosen) & torch.isfinite(rejected)
            chosen, rejected = chosen.clamp(-clip, clip), rejected.clamp(-clip, clip)
        z = chosen - rejected
        if margin is not None:
            z = z - margin.to(z.device, torch.float32)
        if clip is not None:
            # clamp maps ±inf to ±c and would hide a diverged reward; keep it NaN, as TRL's own loss would be.
            z = torch.where(finite, z, torch.full_like(z, float("nan")))
        return loss_fn, z, clipped

    def _log_loss_metrics(self, loss_fn, pairs, suspected, mode, running) -> None:
        """How the loss weighs the pairs of the global batch (`pairs`, gathered over processes), and what ROPO's filter
        distrusted; one host transfer, which also brings the step filter's window to the host."""
        z_all = pairs["z"]
        # w(z) = −∂ℓ/∂z by autograd, so it holds for any registered loss; also under evaluation's no_grad.
        with torch.enable_grad():
            leaf = z_all.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(loss_fn(leaf).sum(), leaf)
        weight = -grad
        values = {
            "grad_weight": weight.mean(),
            "grad_weight_vs_bt": weight.sum() / torch.sigmoid(-z_all).sum().clamp_min(1e-30),
            "negative_margin_frac": (z_all < 0).float().mean(),
            "saturated_frac": (weight == 0).float().mean(),
        }
        if "clipped" in pairs:
            values["clipped_frac"] = pairs["clipped"].mean()
        values.update(self._filter_values(pairs, suspected, mode))
        for key, value in self._to_host(values, running).items():
            if key == "filter_precision" and math.isnan(value):
                continue  # a batch without suspects has no precision; average over those with some
            self._metrics[mode][f"{self._reward_spec.name}/{key}"].append(value)
