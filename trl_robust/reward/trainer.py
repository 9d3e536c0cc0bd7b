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

from collections.abc import Mapping

import torch
from datasets import Dataset
from trl import RewardTrainer

from .. import compat
from ..dataset_checks import check_trainer_datasets
from ..filter.columns import rows_indexed_for_the_filter
from ..filter.settings import filters
from ..integration.core import RobustLossMixin
from ..registry import get_loss_spec
from .config import BRADLEY_TERRY_SPEC, RobustRewardConfig, reward_loss_type, validate_reward_args


class RobustRewardTrainer(RobustLossMixin, RewardTrainer):
    """TRL's `RewardTrainer`, plus the per-pair loss types registered in `trl_robust` (`sympo_sigmoid`, `sympo_ramp`,
    `sympo_unhinged`, `ropo`, `cdpo`, ...), chosen with `loss_type` in a `RobustRewardConfig`.

    Drop-in: same arguments as `trl.RewardTrainer`. `args` may also be a plain `trl.RewardConfig` (read as
    `bradley_terry`). `loss_type` and its hyperparameters are validated, and the datasets checked as DPO's are
    (`trl_robust.dataset_checks`: columns, types, empty responses, `label_flipped`), before any model is loaded; a
    dataset that `max_length` empties (TRL drops longer pairs) is refused when training starts. `model` may be a
    `builtin:` name (`builtin:tiny`): TRL then loads that causal LM with a fresh one-output sequence-classification
    head, as it does for any causal LM checkpoint.

    Extra metrics for a registered loss type `<name>` (gathered over all processes, like TRL's), the same as for DPO
    (see `RobustDPOTrainer` and docs/metrics.md): `<name>/grad_weight`, `<name>/grad_weight_vs_logistic` (the
    loss's pull relative to Bradley–Terry's on the same pairs), `<name>/negative_margin_frac`,
    `<name>/saturated_frac` and, for losses that clip rewards, `<name>/clipped_frac`. TRL's `margin` and `accuracy`
    stay computed from the unclipped rewards without the dataset margin, as TRL computes them. A NaN or infinite reward
    stops training with a clear error, or skips the step under fp16 (`non_finite_margins`), as for DPO.

    ROPO's filter (`ropo_filter_ratio` > 0 or `"auto"`, `trl_robust.filter`) ranks the pairs by the margin z
    the loss sees and drops or corrects the lowest, for any loss type; `bradley_terry` is then computed here per pair
    (−log σ(z), TRL's value while nothing is filtered). It logs `<name>/filtered_frac`, `<name>/filter_precision`
    (with a `label_flipped` column) and, with `"auto"`, `noise/estimated_flip_rate` and `noise/filter_ratio`.
    """

    _tag_names = [*getattr(RewardTrainer, "_tag_names", ()), "trl-robust"]  # (the probe reports a TRL without it)

    _margin_name = "reward margins"
    _scores_name = "the rewards"

    def __init__(self, model, args=None, *pargs, **kwargs):
        compat.check_reward_integration()  # once, before anything is loaded
        model, self._builtin_model_name = self._resolve_builtin_model(model)
        if args is None:  # TRL's default name, with our config so that `loss_type` exists
            args = RobustRewardConfig(self._default_output_name(model, "Reward"))
        validate_reward_args(args)  # before TRL loads any model
        # Bad rows fail early, by split, column and row, as for DPO: TRL would fail after loading the model, in its
        # tokenisation (KeyError, AttributeError, a bare StopIteration for no rows) or in the DataLoader (a
        # `label_flipped` string), or train on an empty response without a word.
        checked = check_trainer_datasets(RewardTrainer.__init__, model, args, *pargs, task="reward", **kwargs)
        loss_type = reward_loss_type(args)
        # None: TRL's own loss, untouched. Bradley–Terry with ROPO's filter is computed here, per pair.
        spec = get_loss_spec(loss_type) or (BRADLEY_TERRY_SPEC if filters(args) else None)
        self._robust_specs = {spec.name: spec} if spec is not None else {}
        self._set_model_card_data("Reward model", [loss_type], getattr(RewardTrainer, "_paper", None))
        pargs, kwargs = rows_indexed_for_the_filter(args, RewardTrainer.__init__, (model, args), pargs, kwargs)
        super().__init__(model, args, *pargs, **kwargs)
        self._pairs_given = {name: result["rows"] for name, result in checked.items()}
        self._set_up_robust_loss()

    def train(self, *args, **kwargs):
        """TRL's `train`, after checking that `max_length` left pairs to train on (`_refuse_datasets_emptied`)."""
        self._refuse_datasets_emptied()
        return super().train(*args, **kwargs)

    def _refuse_datasets_emptied(self) -> None:
        """TRL's `RewardTrainer` drops a pair longer than `max_length` (it does not truncate). A dataset left with no
        pair failed in the sampler (`num_samples=0`) without saying why: say it before training starts. (Not at
        construction: the noisy-pair audit builds this trainer to score, and names the rows it could not score.)"""
        prepared = {"train_dataset": self.train_dataset}
        if isinstance(self.eval_dataset, Mapping):
            prepared.update({f"eval_dataset[{key!r}]": split for key, split in self.eval_dataset.items()})
        else:
            prepared["eval_dataset"] = self.eval_dataset
        for name, dataset in prepared.items():
            rows = self._pairs_given.get(name)
            if isinstance(dataset, Dataset) and dataset.num_rows == 0 and rows and self.args.max_length is not None:
                use = "train on" if name == "train_dataset" else "evaluate"
                raise ValueError(
                    f"{name}: all {rows} pairs are longer than `max_length={self.args.max_length}` tokens (prompt and "
                    "response, chosen or rejected), and TRL's RewardTrainer drops such pairs rather than truncating "
                    f"them, so none is left to {use}. Raise `max_length` (TRL's default is 1024; None keeps every "
                    "pair), or shorten the texts."
                )

    @property
    def _reward_spec(self):
        """The loss trl-robust computes, or None where TRL's own Bradley–Terry code runs untouched."""
        return next(iter(self._robust_specs.values()), None)

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
            mode = "train" if self.model.training else "eval"
            loss = self._robust_per_pair_loss(
                self._reward_spec, rewards_chosen, rewards_rejected, mode, offset=margin
            ).mean()
        coefficient = self.args.center_rewards_coefficient
        if coefficient is not None:  # TRL's centring term (Eisenstein et al. 2023, arXiv 2312.09244, Eq. 2), as TRL adds it
            loss = loss + coefficient * torch.mean((rewards_chosen + rewards_rejected) ** 2)
        return (loss, outputs) if return_outputs else loss
