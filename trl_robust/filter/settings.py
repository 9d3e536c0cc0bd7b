"""The settings of ROPO's filter: its config fields (`RopoFilterArguments`), how they are read and validated.

A config may be a trl-robust config or a plain TRL one (read as the defaults here), so every value is read through
`setting`. Nothing here touches a trainer.
"""

import math
from dataclasses import dataclass, field, fields

from .auto import AUTO
from .rules import FILTER_MODES, FILTER_SCOPES, MIN_WINDOW_SUSPECTS


@dataclass
class RopoFilterArguments:
    """The fields of ROPO's noisy-sample filter (Liang et al., ICML 2025, arXiv 2404.04102), part of
    `trl_robust.config.RobustArguments` and so of both trainers' configs; documented in `RobustDPOConfig`'s docstring."""

    # `str` too, so that the command line and YAML can say `auto`.
    ropo_filter_ratio: float | str | None = field(
        default=0.0,
        metadata={
            "help": "ROPO's noisy-sample filtering (Liang et al., ICML 2025, arXiv 2404.04102): the fraction ρ of the "
            "pairs with the lowest margin (largest ROPO loss) — over the run, ranked among about one optimizer step's "
            "pairs, or of the training set each epoch (`ropo_filter_scope`) — is treated as mislabeled. In [0, 1); "
            "0 = off; `auto` = ρ from the flip rate estimated each epoch from the training margins (epoch scope, at "
            "least 2 epochs). Applies in training only: for DPO to trl-robust's loss types, for a reward model to any "
            "loss type."
        },
    )
    ropo_filter_scope: str | None = field(
        default=None,
        metadata={
            "help": "Which pairs ROPO's filter ranks: `step` (each pair among a running window of recent margins, about "
            f"one optimizer step's pairs and at least {MIN_WINDOW_SUSPECTS}/ρ; the lowest ρ share of it, so ρ of the "
            "pairs over the run for any batch size and gradient accumulation) or `epoch` (at the start of each epoch "
            "after the warm-up, distrust the training set's lowest-margin ρ share for that epoch, scored with the "
            "current model, or for `ropo_filter_ratio: auto` taken from the previous epoch's training steps). "
            "Default: `step`, or `epoch` with `ropo_filter_ratio: auto`.",
            "choices": list(FILTER_SCOPES),
        },
    )
    ropo_filter_warmup_steps: int = field(
        default=0, metadata={"help": "Optimizer steps on every pair before ROPO's filtering starts."}
    )
    ropo_filter_max_margin: float | None = field(
        default=None,
        metadata={
            "help": "Distrust only pairs whose margin z is below this value (at most the ρ share): 0 = only pairs the "
            "model prefers the other way round, so clean data loses little. Default: the ρ lowest, whatever their z."
        },
    )
    ropo_filter_mode: str = field(
        default="drop",
        metadata={
            "help": "What ROPO's filter does with a suspected pair: `drop` (weight 0, the rest rescaled) or "
            "`correct` (train it with chosen and rejected swapped).",
            "choices": list(FILTER_MODES),
        },
    )


_DEFAULTS = {f.name: f.default for f in fields(RopoFilterArguments)}


def setting(args, name: str):
    """`args.<name>` for a `ropo_filter_*` field, or its default where `args` lacks it (a plain TRL config)."""
    return getattr(args, name, _DEFAULTS[name])


def parse_filter_ratio(value):
    """`ropo_filter_ratio` as given in Python, YAML or on the command line: a number, or `AUTO`."""
    if not isinstance(value, str):
        return value
    text = value.strip().lower()
    if text == AUTO:
        return AUTO
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"`ropo_filter_ratio` must be a number in [0, 1) or {AUTO!r}, got {value!r}.") from None


def filter_ratio(args) -> float | str:
    """ROPO's filter ratio ρ of `args` (0.0 = off), or `AUTO` (ρ estimated each epoch, `trl_robust.filter.auto`)."""
    return parse_filter_ratio(setting(args, "ropo_filter_ratio"))


def filters(args) -> bool:
    """Whether ROPO's filter is on: a ratio above 0, or `AUTO`."""
    ratio = filter_ratio(args)
    return ratio == AUTO or ratio > 0


def filter_scope(args) -> str:
    """`ropo_filter_scope`, resolved: as set, else `epoch` for `AUTO` and `step` for a fixed ratio."""
    scope = setting(args, "ropo_filter_scope")
    if scope is None:
        return "epoch" if filter_ratio(args) == AUTO else "step"
    return scope


def _require_finite(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}.")


def validate_filtering(args, specs, loss_types) -> None:
    """Check the `ropo_filter_*` fields of `args`; `specs` are the `LossSpec`s the filter would act on (refused where
    there is none, or where one couples the pairs of a batch), `loss_types` what the config names (for the message)."""
    ratio = filter_ratio(args)
    if ratio != AUTO:
        _require_finite("ropo_filter_ratio", ratio)
        if not 0 <= ratio < 1:
            raise ValueError(
                f"`ropo_filter_ratio` must be in [0, 1) (the share of each batch to distrust) or {AUTO!r}, got {ratio}."
            )
    warmup = setting(args, "ropo_filter_warmup_steps")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"`ropo_filter_warmup_steps` must be a whole number >= 0, got {warmup!r}.")
    mode = setting(args, "ropo_filter_mode")
    if mode not in FILTER_MODES:
        raise ValueError(f"`ropo_filter_mode` must be one of {list(FILTER_MODES)}, got {mode!r}.")
    max_margin = setting(args, "ropo_filter_max_margin")
    if max_margin is not None:
        _require_finite("ropo_filter_max_margin", max_margin)
    scope = filter_scope(args)
    if scope not in FILTER_SCOPES:
        raise ValueError(f"`ropo_filter_scope` must be one of {list(FILTER_SCOPES)}, got {scope!r}.")
    if ratio == AUTO and scope != "epoch":
        raise ValueError(
            f"`ropo_filter_ratio={AUTO!r}` estimates the flip rate from a whole epoch of training margins and decides "
            f"once per epoch, so it needs ropo_filter_scope='epoch' (its default), not {scope!r}. A per-step estimate "
            "is not offered: the first epoch's margins, which come from a barely trained model, put the estimate "
            "anywhere between 0.06 and 0.29 at 20% flips (trl-robust's measurement). For a one-epoch run, set a "
            "fixed ratio with the step scope, e.g. the flip rate `trl-robust audit` estimates."
        )
    if not filters(args):
        return
    if not specs:
        raise ValueError(
            f"`ropo_filter_ratio={ratio}` filters the pairs of trl-robust's loss types, and loss_type "
            f"{list(loss_types)} has none. Use e.g. loss_type 'ropo' (the ROPO framework's loss)."
        )
    coupled = [spec.name for spec in specs if spec.couples_batch]
    if coupled:
        raise ValueError(
            f"`ropo_filter_ratio` cannot be combined with {coupled}: it computes one objective over the whole batch, "
            "so there is no per-pair loss to drop or correct (Dr. DPO already down-weights contradicted pairs)."
        )
