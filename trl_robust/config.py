"""The robust settings of both trainers' configs, how they are read and validated, and `RobustDPOConfig`.

`RobustArguments` holds the fields every trl-robust config adds to TRL's (the registered losses' hyperparameters, the
non-finite policy, ROPO's filter); `RobustDPOConfig` and `trl_robust.RobustRewardConfig` list it before TRL's class in
their bases, so that its fields come after TRL's (and `output_dir` stays the first). `validate_loss_settings` is the
one check of those fields for both; each config adds only what is its own (DPO's `beta`, a reward model's one
`loss_type`).
"""

import math
import os
import warnings
from dataclasses import dataclass, field, fields

import trl
from trl import DPOConfig

from .filter.settings import RopoFilterArguments, parse_filter_ratio, validate_filtering
from .registry import (
    DRDPO_BETA_PRIME,
    HOLDER_GAMMA,
    REPO_ETA_INIT,
    REPO_MOMENTUM,
    ROPO_ALPHA,
    available_loss_types,
    get_loss_spec,
    hyperparameter_defaults,
    registered_hyperparameters,
    unknown_loss_type_error,
)

NON_FINITE_POLICIES = ("auto", "error")
DEFAULT_REWARD_CLIP = 10.0


@dataclass
class RobustArguments(RopoFilterArguments):
    """The fields both trl-robust configs add to TRL's: the robust losses' hyperparameters, what to do with non-finite
    margins, and ROPO's filter (`RopoFilterArguments`). Documented in `RobustDPOConfig`'s docstring."""

    ropo_alpha: float = field(
        default=ROPO_ALPHA.default,
        metadata={
            "help": "α of the ROPO loss (Liang et al., ICML 2025, arXiv 2404.04102), used with `loss_type='ropo'`: "
            "weight of the symmetric σ(−z) term against the log-loss term. Must be > 0. The paper recommends 14 "
            "(ablation {6, 14, 30}); larger is more robust to noise and less like DPO."
        },
    )
    # `str` too, as TRL does for `pad_to_multiple_of`: the command line can only say "none" as text.
    sympo_reward_clip: float | str | None = field(
        default=DEFAULT_REWARD_CLIP,
        metadata={
            "help": "Reward clip c for the `sympo_*` losses (SymPO, Nishimori et al. 2025, arXiv 2505.24709): each "
            "side's reward (β·score for DPO, the reward model's output) is clamped to [−c, c] before the "
            "chosen-minus-rejected difference, as the SymPO authors do (their default 10). Must be > 0; `none` (YAML "
            "`null`) disables clipping (not with `sympo_unhinged`)."
        },
    )
    non_finite_margins: str = field(
        default="auto",
        metadata={
            "help": "NaN/inf margins in a training step of trl-robust's loss types: `auto` skips and counts the step "
            "under fp16 mixed precision (as its loss scaler does; logged as `<loss>/skipped_non_finite_steps`) and "
            "stops with an error otherwise; `error` always stops.",
            "choices": list(NON_FINITE_POLICIES),
        },
    )

    holder_gamma: float = field(
        default=HOLDER_GAMMA.default,
        metadata={
            "help": "γ of Hölder-DPO (Fujisawa et al., NeurIPS 2025, arXiv 2505.17859), used with `loss_type='holder'`: "
            "the power of the density-power (Hölder) divergence. Must be > 0 (the paper uses 2); larger down-weights "
            "the pairs the model contradicts more."
        },
    )
    repo_eta_init: float = field(
        default=REPO_ETA_INIT.default,
        metadata={
            "help": "Initial annotator reliability η of RE-PO (Cao et al., ICLR 2026, arXiv 2509.24159), used with "
            "`loss_type='repo'`: the prior probability that a label is right. In (0.5, 1]; the paper uses 0.9."
        },
    )
    repo_momentum: float = field(
        default=REPO_MOMENTUM.default,
        metadata={
            "help": "Momentum α of RE-PO's moving average of η, updated after each optimizer step as "
            "η ← (1 − α)·η + α·(the step's mean posterior), used with `loss_type='repo'`. In (0, 1]; the paper uses 0.1."
        },
    )

    def _parse_robust_fields(self) -> None:
        """Turn what the command line and YAML can only say as text ("none", "auto") into values."""
        self.ropo_filter_ratio = parse_filter_ratio(self.ropo_filter_ratio)
        self.sympo_reward_clip = parse_reward_clip(self.sympo_reward_clip)


def parse_reward_clip(value):
    """`sympo_reward_clip` as a number or None; the command line passes text ("none", "5")."""
    if not isinstance(value, str):
        return value
    text = value.strip().lower()
    try:
        return None if text in ("none", "null") else float(text)
    except ValueError:
        raise ValueError(f"`sympo_reward_clip` must be a positive number or none, got {value!r}.") from None


@dataclass
class RobustDPOConfig(RobustArguments, DPOConfig):
    r"""
    Configuration for [`RobustDPOTrainer`]: every field of TRL's `DPOConfig`, plus the following.

    `loss_type` additionally accepts the registered robust loss types (`"ropo"`, `"sympo_sigmoid"`,
    `"sympo_ramp"`, and any added with `trl_robust.register_loss`), alone or in a multi-loss list.

    > Parameters that control the robust losses

    ropo_alpha (`float`, *optional*, defaults to `14.0`):
        α of the ROPO loss (Liang et al., ICML 2025, arXiv 2404.04102): weight of the symmetric σ(−z) term
        against the DPO term. Must be > 0. The paper uses 14 (ablation {6, 14, 30}); larger is more robust
        to noise and less like DPO.
    sympo_reward_clip (`float` or `None`, *optional*, defaults to `10.0`):
        Used by the `sympo_*` losses (Nishimori et al., 2025, arXiv 2505.24709): each side's reward β·score is
        clamped to [−c, c] before the chosen-minus-rejected difference, as in the SymPO authors' code. Must be
        > 0; `None` disables clipping (not allowed with `sympo_unhinged`, which is unbounded without it).
    drdpo_beta_prime (`float`, *optional*, defaults to `1.0`):
        β′ of Dr. DPO (Wu et al., arXiv 2407.07880), used with `loss_type='drdpo'`: the temperature of the
        weighting over the pairs of a batch. Must be > 0; large β′ approaches DPO.
    holder_gamma (`float`, *optional*, defaults to `2.0`):
        γ of Hölder-DPO (Fujisawa et al., NeurIPS 2025, arXiv 2505.17859), used with `loss_type='holder'`. Must be
        > 0 (the paper uses 2). Its contamination estimate is logged as `noise/estimated_flip_rate`.
    repo_eta_init (`float`, *optional*, defaults to `0.9`), repo_momentum (`float`, *optional*, defaults to `0.1`):
        RE-PO (Cao et al., ICLR 2026, arXiv 2509.24159), used with `loss_type='repo'`: the initial annotator
        reliability η, in (0.5, 1], and the momentum α of its moving average over optimizer steps, in (0, 1] (the
        paper's 0.9 and 0.1). 1 − η is logged as `noise/estimated_flip_rate`.

    `loss_type='cdpo'` (conservative DPO) takes its ε from TRL's `label_smoothing`, which must then be in [0, 0.5).

    > Parameters of ROPO's noisy-sample filtering (Liang et al., ICML 2025, arXiv 2404.04102)

    ropo_filter_ratio (`float` or `"auto"`, *optional*, defaults to `0.0`):
        ρ in [0, 1): the share of pairs with the lowest margin z — for ROPO exactly the largest losses — that is
        treated as mislabeled (see `ropo_filter_scope` for which pairs compete). 0 turns filtering off. Applies to
        the registered loss types in `loss_type` (not to TRL's built-ins), in training only (not to `eval_loss`).
        `"auto"`: no share to guess. Each epoch the flip rate ε̂ is estimated from the margins the training steps
        computed anyway (`trl_robust.filter.auto`: no extra pass), and from the second epoch on the pairs with the
        lowest of the previous epoch's margins are distrusted, ρ = the mean of the last two estimates, nothing while
        that is below 0.08. Logged as `noise/estimated_flip_rate` and `noise/filter_ratio`. Epoch scope only; needs
        two epochs or more.
    ropo_filter_scope (`str`, *optional*, defaults to `"step"`, or `"epoch"` with `ropo_filter_ratio="auto"`):
        `"step"`: at every training micro-batch, each pair (gathered over all processes) is ranked among a running
        window of recent margins — one optimizer step's pairs (per-device batch × processes × gradient accumulation),
        at least 10/ρ — and distrusted if it is in the window's lowest ρ share; a carried count corrects rounding and
        drift, so ρ of the pairs are distrusted over the run whatever the batch size and accumulation. The window and
        the count are saved with checkpoints.
        `"epoch"`: at the start of every epoch after the warm-up (never before the first epoch has trained), one
        evaluation pass scores the whole training set with the current model, and its ⌊ρ·N⌋ lowest-margin pairs
        are the suspects for that epoch (with `"auto"`, no pass: the margins of the previous epoch's training
        steps); the set is saved with checkpoints. Needs a map-style training dataset.
    ropo_filter_warmup_steps (`int`, *optional*, defaults to `0`):
        Optimizer steps trained on every pair before filtering starts (the model must first learn what the
        clean majority says). With the epoch scope, filtering starts with the first epoch that begins at or after
        this step.
    ropo_filter_max_margin (`float` or `None`, *optional*, defaults to `None`):
        Distrust only pairs whose margin z is below this value, at most ρ of them. `0.0`: only pairs the model prefers
        the other way round, so clean data loses little. `None`: the ρ lowest, whatever their margin.
    ropo_filter_mode (`str`, *optional*, defaults to `"drop"`):
        `"drop"`: suspected pairs get weight 0 and the others are rescaled so the loss stays a mean over the kept
        pairs. `"correct"`: suspected pairs are trained with chosen and rejected swapped (self-correction).

    > What to do with NaN or infinite log-probs

    non_finite_margins (`str`, *optional*, defaults to `"auto"`):
        `"auto"`: under fp16 mixed precision (`fp16=True`, where a loss scaler skips steps whose gradients overflow)
        a training step with a NaN/inf margin is skipped as the scaler would, counted and logged
        (`<loss>/skipped_non_finite_steps`); otherwise (fp32, bf16) training stops with a `FloatingPointError`
        naming the policy or the reference. `"error"`: always stop.
    """

    drdpo_beta_prime: float = field(
        default=DRDPO_BETA_PRIME.default,
        metadata={
            "help": "β′ of Dr. DPO (Wu et al., arXiv 2407.07880), used with `loss_type='drdpo'`: temperature of the "
            "weighting over the pairs of a batch. Must be > 0 (the paper uses 1); large β′ approaches DPO."
        },
    )

    def __post_init__(self):
        self._parse_robust_fields()
        validate_robust_args(self)
        super().__post_init__()


ROBUST_FIELDS = {f.name for f in fields(RobustArguments)}
# The fields `RobustDPOConfig` adds to TRL's, with their defaults: what a plain `trl.DPOConfig` is read as.
_ADDED_FIELD_DEFAULTS = {
    f.name: f.default for f in fields(RobustDPOConfig) if f.name not in {g.name for g in fields(DPOConfig)}
}


def robust_hyperparameter(args, name: str):
    """`args.<name>`; where `args` lacks it (a plain TRL config, or a config without a registered loss's attribute),
    the default of trl-robust's field or of the registered `Hyperparameter`."""
    if hasattr(args, name):
        return getattr(args, name)
    defaults = {**hyperparameter_defaults(), **_ADDED_FIELD_DEFAULTS}
    if name in defaults:
        return defaults[name]
    raise AttributeError(name)


def _loss_types(args) -> list[str]:
    loss_type = args.loss_type
    return [loss_type] if isinstance(loss_type, str) else list(loss_type)


def _require_finite(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}.")


def validate_loss_settings(args, specs, loss_types, always: set[str]) -> None:
    """The checks both configs share: the hyperparameters of the registered losses `specs` (of the config's
    `loss_types`), SymPO's reward clip, the non-finite policy and ROPO's filter.

    Each registered hyperparameter is checked by its own rule where a loss in use reads it, and also where its
    attribute is in `always` (the fields trl-robust adds: a bad `ropo_alpha` is a mistake even before it is used;
    a TRL field such as DPO's `label_smoothing` is TRL's business until cDPO reads it).
    """
    in_use = {h.attribute for spec in specs for h in spec.all_hyperparameters.values()}
    for attribute, hyperparameter in registered_hyperparameters().items():
        if hasattr(args, attribute) and (attribute in in_use or attribute in always):
            hyperparameter.validate(getattr(args, attribute))
    for spec in specs:
        for kwarg, hyperparameter in spec.all_hyperparameters.items():
            if not hasattr(args, hyperparameter.attribute) and not hyperparameter.has_default:
                raise ValueError(
                    f"Loss type {spec.name!r} takes `{kwarg}` from the config attribute `{hyperparameter.attribute}`, "
                    f"which {type(args).__name__} does not have. Add it by subclassing the trl-robust config, "
                    "or register the loss with a `Hyperparameter` that has a default."
                )
    clip = robust_hyperparameter(args, "sympo_reward_clip")
    if clip is not None:
        _require_finite("sympo_reward_clip", clip)
        if clip <= 0:
            raise ValueError(
                f"`sympo_reward_clip` must be > 0 (the SymPO authors use 10), got {clip}; set it to None to disable "
                "reward clipping (`none` on the command line, `null` in YAML)."
            )
    for spec in specs:
        if spec.requires_reward_clip and clip is None:
            raise ValueError(
                f"Loss type {spec.name!r} is unbounded below without SymPO's reward clip (its minimiser is an infinite "
                "margin): set `sympo_reward_clip` to a positive number (the SymPO authors use 10) instead of None."
            )
    policy = robust_hyperparameter(args, "non_finite_margins")
    if policy not in NON_FINITE_POLICIES:
        raise ValueError(f"`non_finite_margins` must be one of {list(NON_FINITE_POLICIES)}, got {policy!r}.")
    validate_filtering(args, specs, loss_types)


def validate_robust_args(args) -> None:
    """Check loss names and hyperparameters of a `DPOConfig`/`RobustDPOConfig`; raise or warn early.

    Called by `RobustDPOConfig.__post_init__` and again by `RobustDPOTrainer` before any model is loaded
    (so a plain `trl.DPOConfig` gets the same checks).
    """
    loss_types = _loss_types(args)
    valid = available_loss_types()
    for loss_type in loss_types:
        if loss_type not in valid:
            raise unknown_loss_type_error(loss_type)

    _require_finite("beta", args.beta)
    if args.beta <= 0:  # TRL takes any number: β = 0 zeroes every margin, β < 0 trains towards the rejected responses
        raise ValueError(
            f"`beta` must be > 0, got {args.beta}. β scales the margin z = β·(chosen − rejected log-ratio) that every "
            "loss here reads (IPO divides by it): at 0 nothing is learnt, below 0 the rejected responses are "
            "preferred. TRL's default is 0.1; the DPO paper uses 0.1 to 0.5 (larger stays closer to the reference "
            "model)."
        )
    _require_finite("label_smoothing", args.label_smoothing)
    for weight in args.loss_weights or []:
        _require_finite("loss_weights", weight)

    registered = [get_loss_spec(t) for t in loss_types if get_loss_spec(t) is not None]
    validate_loss_settings(args, registered, loss_types, always=set(_ADDED_FIELD_DEFAULTS))
    from .compat import liger_bypasses_loss_loop  # read from TRL's code: TRL <= 1.13 has a separate Liger loss path

    if registered and getattr(args, "use_liger_kernel", False) and liger_bypasses_loss_loop():
        raise ValueError(
            f"`use_liger_kernel=True` makes TRL {trl.__version__} compute the DPO loss in Liger's fused kernel, which "
            f"bypasses the loss types {[s.name for s in registered]}. Set `use_liger_kernel=False` or upgrade to "
            "trl>=1.14."
        )

    if "sigmoid" in loss_types and args.label_smoothing > 0:
        head = f"`label_smoothing={args.label_smoothing}` has no effect with loss_type 'sigmoid'"
        warn_once(
            args,
            head,
            f"{head}: TRL ignores it since v0.29 (conservative DPO was removed). Use loss_type 'cdpo' for conservative "
            "DPO with this label_smoothing; for noisy labels also 'robust' (rDPO, with label_smoothing = the flip rate) "
            "or a noise-robust loss such as 'ropo' or 'sympo_sigmoid'.",
        )


# Attribute of a config object naming the warnings already shown for it (not a dataclass field: never serialised).
_SHOWN_WARNINGS = "_trl_robust_shown_warnings"


def warn_once(args, head: str, message: str) -> None:
    """Warn about a setting once: not again for the same config object, nor in the processes this one starts.

    `validate_robust_args` (and `validate_reward_args`) runs at config construction and again in the trainer (a plain
    TRL config has only the second), and `trl-robust dpo|reward` builds the config in its own process and again in
    each training process it launches: without this the same hint is printed three times or more. The object
    remembers what it showed; the
    child interpreters inherit an `ignore` filter for the message through `PYTHONWARNINGS` (Python's own mechanism for
    passing warning filters to subprocesses). `head` is the message's start, without ':' or ',' (the separators of
    that variable), which the filter matches.
    """
    shown = getattr(args, _SHOWN_WARNINGS, None)
    if shown is not None and head in shown:
        return
    warnings.warn(message, UserWarning, stacklevel=4)
    try:
        object.__setattr__(args, _SHOWN_WARNINGS, (shown or set()) | {head})
    except (AttributeError, TypeError):  # an object that takes no attributes: it warns every time rather than fail
        pass
    if ":" not in head and "," not in head:
        rule = f"ignore:{head}:UserWarning"
        rules = [r for r in os.environ.get("PYTHONWARNINGS", "").split(",") if r]
        if rule not in rules:
            os.environ["PYTHONWARNINGS"] = ",".join([*rules, rule])
