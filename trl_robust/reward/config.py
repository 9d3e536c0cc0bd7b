"""`RobustRewardConfig`: TRL's `RewardConfig` plus `loss_type` and the robust losses' hyperparameters, validated at
construction."""

import math
from dataclasses import dataclass, field

from trl import RewardConfig

from ..config import ROBUST_FIELDS, RobustArguments, robust_hyperparameter, validate_loss_settings, warn_once
from ..losses import bradley_terry_loss
from ..registry import CDPO_EPSILON, LossSpec, get_loss_spec, registered_loss_types, unknown_loss_type_error

# TRL's reward loss, −log σ(r_c − r_r [− margin]): the Bradley–Terry model's negative log-likelihood.
BRADLEY_TERRY = "bradley_terry"
# What `RobustRewardTrainer` computes for `bradley_terry` where ROPO's filter needs the per-pair losses (TRL's own code
# computes it otherwise). Not registered: DPO's name for the same loss is TRL's `sigmoid`.
BRADLEY_TERRY_SPEC = LossSpec(name=BRADLEY_TERRY, fn=bradley_terry_loss)


def reward_loss_types() -> list[str]:
    """Every `loss_type` a reward model accepts: TRL's `bradley_terry`, then each registered per-pair loss.

    A loss registered with `couples_batch=True` (Dr. DPO) is left out: it is one objective over a batch, not a loss of
    each pair, and nothing in the reward-model setting asks for it.
    """
    return [BRADLEY_TERRY, *(name for name in registered_loss_types() if not get_loss_spec(name).couples_batch)]


@dataclass
class RobustRewardConfig(RobustArguments, RewardConfig):
    r"""
    Configuration for [`RobustRewardTrainer`]: every field of TRL's `RewardConfig`, plus the following.

    > Parameters that control the loss

    loss_type (`str`, *optional*, defaults to `"bradley_terry"`):
        The per-pair loss ℓ(z) of the reward margin z = r(x, y_chosen) − r(x, y_rejected) [− margin, where the dataset
        has a `margin` column, as TRL does]. `"bradley_terry"` is TRL's own loss, −log σ(z), computed by TRL's code
        unchanged. The others: `"sympo_sigmoid"`, `"sympo_ramp"`, `"sympo_unhinged"` (SymPO, Nishimori et al. 2025,
        arXiv 2505.24709: symmetric losses, which keep the ranking of the true reward under label noise), `"ropo"`
        (Liang et al., ICML 2025, arXiv 2404.04102), `"cdpo"` (label-smoothed Bradley–Terry), and any per-pair loss
        added with `trl_robust.register_loss`. There is no β: the scale of z is the reward difference itself.
        `center_rewards_coefficient` adds its term to every loss type, as in TRL.
    ropo_alpha (`float`, *optional*, defaults to `14.0`):
        α of the ROPO loss: weight of the symmetric σ(−z) term against the Bradley–Terry term. Must be > 0. The paper
        uses 14 (ablation {6, 14, 30}).
    sympo_reward_clip (`float` or `None`, *optional*, defaults to `10.0`):
        Used by the `sympo_*` losses: each side's reward r is clamped to [−c, c] before the difference (as the SymPO
        authors clamp each side's DPO reward; their reward-model experiments use no clip). Must be > 0; `None` disables
        it (not allowed with `sympo_unhinged`, whose minimiser is an infinite margin without it).
    label_smoothing (`float`, *optional*, defaults to `0.0`):
        ε of `loss_type="cdpo"`, −(1 − ε)·log σ(z) − ε·log σ(−z): the assumed share of flipped labels, in [0, 0.5).
        The same name as the DPO field cDPO reads; only `cdpo` uses it.

    > Parameters of ROPO's noisy-sample filter (Liang et al., ICML 2025, arXiv 2404.04102)

    `ropo_filter_ratio` (a share ρ in [0, 1), or `"auto"`), `ropo_filter_scope` (`"step"` or `"epoch"`),
    `ropo_filter_warmup_steps`, `ropo_filter_max_margin` and `ropo_filter_mode` (`"drop"` or `"correct"`), as for DPO
    (see `trl_robust.RobustDPOConfig`), with the reward margin z as the score: in each training step (or each epoch) the
    pairs whose margin is lowest — those the reward model most confidently ranks the other way round — are taken out
    of the loss or trained with their label swapped. It applies to every loss type, `bradley_terry` included (TRL's
    loss, then computed by trl-robust per pair so that the suspects can be left out). `"auto"` estimates the flip rate
    each epoch from the margins the training steps computed (`trl_robust.filter.auto`) and distrusts that share of the
    previous epoch's lowest margins; it needs two epochs or more.
    """

    loss_type: str = field(
        default=BRADLEY_TERRY,
        metadata={
            "help": "Per-pair loss of the reward margin z = r_chosen − r_rejected (− margin): `bradley_terry` (TRL's "
            "−log σ(z), the default), `sympo_sigmoid`, `sympo_ramp`, `sympo_unhinged` (SymPO, arXiv 2505.24709: "
            "symmetric losses, robust to flipped labels), `ropo` (arXiv 2404.04102), `cdpo` (label-smoothed "
            "Bradley–Terry, ε = `label_smoothing`), or a loss added with `trl_robust.register_loss`."
        },
    )
    label_smoothing: float = field(
        default=CDPO_EPSILON.default,
        metadata={
            "help": "ε of `loss_type='cdpo'`: −(1−ε)·log σ(z) − ε·log σ(−z), the assumed share of flipped labels, in "
            "[0, 0.5). Only `cdpo` reads it."
        },
    )

    def __post_init__(self):
        self._parse_robust_fields()
        validate_reward_args(self)
        super().__post_init__()


def reward_loss_type(args) -> str:
    """`args.loss_type`, or `bradley_terry` for a plain `trl.RewardConfig` (which has no such field)."""
    return getattr(args, "loss_type", BRADLEY_TERRY)


def unknown_reward_loss_error(name) -> ValueError:
    valid = reward_loss_types()
    spec = get_loss_spec(name) if isinstance(name, str) else None
    if spec is not None and spec.couples_batch:
        return ValueError(
            f"loss_type {name!r} is one objective over a batch of DPO pairs, not a per-pair loss; it is not offered for "
            f"reward models. Valid loss types for reward models: {', '.join(valid)}."
        )
    if name == "sigmoid":  # DPO's name for the same log-loss
        return ValueError(
            f"Unknown loss_type {name!r} for a reward model. TRL's reward loss −log σ(z) is called 'bradley_terry' "
            f"here. Valid loss types: {', '.join(valid)}."
        )
    return unknown_loss_type_error(name, valid, what="for a reward model")


def validate_reward_args(args) -> None:
    """Check `loss_type` and the hyperparameters of a `RewardConfig`/`RobustRewardConfig`; raise or warn early.

    Called by `RobustRewardConfig.__post_init__` and again by `RobustRewardTrainer` before any model is loaded (so a
    plain `trl.RewardConfig`, read as `bradley_terry`, gets the same checks).
    """
    loss_type = reward_loss_type(args)
    if not isinstance(loss_type, str):
        raise ValueError(
            f"`loss_type` of a reward model is one name, got {loss_type!r}; choose one of {', '.join(reward_loss_types())}."
        )
    if loss_type not in reward_loss_types():
        raise unknown_reward_loss_error(loss_type)
    spec = get_loss_spec(loss_type)

    epsilon = robust_hyperparameter(args, "label_smoothing")
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not math.isfinite(epsilon):
        raise ValueError(f"`label_smoothing` must be a finite number, got {epsilon!r}.")
    coefficient = getattr(args, "center_rewards_coefficient", None)
    if coefficient is not None and (
        isinstance(coefficient, bool) or not isinstance(coefficient, (int, float)) or not math.isfinite(coefficient)
    ):
        raise ValueError(f"`center_rewards_coefficient` must be a finite number or None, got {coefficient!r}.")

    # ROPO's filter acts on any reward loss, Bradley–Terry included (computed per pair by trl-robust then).
    validate_loss_settings(args, [spec or BRADLEY_TERRY_SPEC], [loss_type], always=ROBUST_FIELDS)

    if epsilon != 0 and loss_type != "cdpo":
        # Once, as for DPO: this runs at config construction and again in the trainer, and `trl-robust reward` builds
        # the config in its own process and again in each training process (three warnings without `warn_once`).
        head = f"`label_smoothing={epsilon}` has no effect with loss_type {loss_type!r}"
        warn_once(
            args,
            head,
            f"{head}: only 'cdpo' (label-smoothed Bradley–Terry) reads it. Use loss_type 'cdpo' for it, or a "
            "symmetric loss such as 'sympo_sigmoid' for noisy labels.",
        )
