"""The loss-type registry: which names `loss_type` accepts beyond TRL's built-ins, and what each one needs.

A loss is registered once with `register_loss`, the same public function a third-party package would use;
the trainer then accepts its name in `loss_type` (alone, or in a multi-loss list with `loss_weights`).

    >>> import torch
    >>> from trl_robust import register_loss
    >>> register_loss("my_tanh", lambda z, scale=1.0: 1 - torch.tanh(scale * z),
    ...               hyperparameters={"scale": "my_tanh_scale"})  # doctest: +SKIP

`hyperparameters` maps a keyword of the loss function to the config attribute that supplies it
(add the attribute by subclassing `RobustDPOConfig`).
"""

import difflib
import re
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch

from . import losses


@dataclass(frozen=True)
class Paper:
    """Where a loss comes from; flows into the saved model card."""

    title: str
    arxiv_id: str
    citation: str  # BibTeX entry


@dataclass(frozen=True)
class LossSpec:
    """A registered loss type.

    Attributes:
        name: the value users put in `loss_type`.
        fn: per-pair loss, a function of the scaled margin z = β·Δ (tensor in, same-shape tensor out),
            with the hyperparameters as keyword arguments.
        hyperparameters: keyword of `fn` → name of the config attribute that supplies it.
        uses_reward_clip: if true, each side's reward β·score is clamped to
            [−sympo_reward_clip, sympo_reward_clip] before the margin is formed (SymPO's reward clipping).
        requires_reward_clip: the loss is unbounded without the clip; a config with `sympo_reward_clip=None` is
            refused.
        couples_batch: the value for one pair depends on the other pairs passed in (a batch objective, e.g.
            Dr. DPO); per-pair filtering is refused for it.
        paper: the paper behind the loss (for the model card and the README).
    """

    name: str
    fn: Callable[..., torch.Tensor]
    hyperparameters: Mapping[str, str] = field(default_factory=dict)
    uses_reward_clip: bool = False
    requires_reward_clip: bool = False
    couples_batch: bool = False
    paper: Paper | None = None


_REGISTRY: dict[str, LossSpec] = {}
_VALID_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def register_loss(
    name: str,
    fn: Callable[..., torch.Tensor],
    *,
    hyperparameters: Mapping[str, str] | None = None,
    uses_reward_clip: bool = False,
    requires_reward_clip: bool = False,
    couples_batch: bool = False,
    paper: Paper | None = None,
) -> LossSpec:
    """Register a new `loss_type`.

    Args:
        name: lower-case identifier (`[a-z][a-z0-9_]*`); must not be a TRL built-in or already registered.
        fn: per-pair loss of the scaled margin z (see `LossSpec.fn`). Must be differentiable in z.
        hyperparameters: keyword of `fn` → config attribute name supplying its value.
        uses_reward_clip: apply SymPO-style reward clipping (`sympo_reward_clip`) before the margin.
        requires_reward_clip: refuse configs that disable the clip (for losses unbounded without it); implies
            `uses_reward_clip`.
        couples_batch: `fn` computes a batch objective (the same value for every pair, as `drdpo_loss` does), not
            independent per-pair losses.
        paper: the paper to cite in model cards.

    Returns:
        The registered `LossSpec`.

    Raises:
        ValueError: the name is malformed, clashes with a TRL built-in loss type, or is already registered.
        TypeError: `fn` is not callable.
    """
    from .dispatch import trl_builtin_loss_types  # deferred: reads the installed TRL's source

    if not isinstance(name, str) or not _VALID_NAME.match(name):
        raise ValueError(f"Loss type name {name!r} is invalid: use a lower-case identifier such as 'my_loss'.")
    if name in trl_builtin_loss_types():
        raise ValueError(
            f"Loss type {name!r} is a TRL built-in; a registered loss must not shadow it. Pick another name."
        )
    if name in _REGISTRY:
        raise ValueError(
            f"Loss type {name!r} is already registered (by {_REGISTRY[name].fn!r}). "
            "Call `trl_robust.unregister_loss` first if you mean to replace it."
        )
    if not callable(fn):
        raise TypeError(f"`fn` for loss type {name!r} must be callable, got {type(fn).__name__}.")
    spec = LossSpec(
        name=name,
        fn=fn,
        hyperparameters=MappingProxyType(dict(hyperparameters or {})),
        uses_reward_clip=uses_reward_clip or requires_reward_clip,
        requires_reward_clip=requires_reward_clip,
        couples_batch=couples_batch,
        paper=paper,
    )
    _REGISTRY[name] = spec
    return spec


def unregister_loss(name: str) -> None:
    """Remove a registered loss type (TRL's built-ins cannot be removed)."""
    if name not in _REGISTRY:
        raise KeyError(f"Loss type {name!r} is not registered; registered: {sorted(_REGISTRY)}.")
    del _REGISTRY[name]


def get_loss_spec(name: str) -> LossSpec | None:
    """The `LossSpec` registered under `name`, or None (TRL built-ins and unknown names)."""
    return _REGISTRY.get(name)


def registered_loss_types() -> list[str]:
    """Names added through `register_loss`, in registration order."""
    return list(_REGISTRY)


def available_loss_types() -> list[str]:
    """Every name `loss_type` accepts: TRL's built-ins (read from the installed TRL) plus the registered ones."""
    from .dispatch import trl_builtin_loss_types

    return [*trl_builtin_loss_types(), *_REGISTRY]


def unknown_loss_type_error(name) -> ValueError:
    """The error for a `loss_type` nobody implements: names the closest valid one and lists them all."""
    valid = available_loss_types()
    close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"Unknown loss_type {name!r}.{hint} Valid loss types: {', '.join(valid)}.")


ROPO_PAPER = Paper(
    title="ROPO: Robust Preference Optimization for Large Language Models",
    arxiv_id="2404.04102",
    citation=textwrap.dedent("""\
        @inproceedings{liang2025ropo,
            title        = {{ROPO: Robust Preference Optimization for Large Language Models}},
            author       = {Xize Liang and Chao Chen and Shuang Qiu and Jie Wang and Yue Wu and Zhihang Fu and Hanzhu Chen and Feng Wu and Jieping Ye},
            year         = 2025,
            booktitle    = {Proceedings of the 42nd International Conference on Machine Learning, ICML 2025},
            series       = {Proceedings of Machine Learning Research},
            volume       = 267,
            pages        = {37131--37161},
            eprint       = {arXiv:2404.04102},
        }"""),
)

SYMPO_PAPER = Paper(
    title="On Symmetric Losses for Robust Policy Optimization with Noisy Preferences",
    arxiv_id="2505.24709",
    citation=textwrap.dedent("""\
        @article{nishimori2025sympo,
            title        = {{On Symmetric Losses for Robust Policy Optimization with Noisy Preferences}},
            author       = {Soichiro Nishimori and Yu-Jie Zhang and Thanawat Lodkaew and Masashi Sugiyama},
            year         = 2025,
            journal      = {arXiv preprint arXiv:2505.24709},
        }"""),
)

DRDPO_PAPER = Paper(
    title="Towards Robust Alignment of Language Models: Distributionally Robustifying Direct Preference Optimization",
    arxiv_id="2407.07880",
    citation=textwrap.dedent("""\
        @inproceedings{wu2025drdpo,
            title        = {{Towards Robust Alignment of Language Models: Distributionally Robustifying Direct Preference Optimization}},
            author       = {Junkang Wu and Yuexiang Xie and Zhengyi Yang and Jiancan Wu and Jiawei Chen and Jinyang Gao and Bolin Ding and Xiang Wang and Xiangnan He},
            year         = 2025,
            booktitle    = {The Thirteenth International Conference on Learning Representations, ICLR 2025},
            eprint       = {arXiv:2407.07880},
        }"""),
)

# The package's own losses go through the public function, exactly as a third party's would.
register_loss("ropo", losses.ropo_loss, hyperparameters={"alpha": "ropo_alpha"}, paper=ROPO_PAPER)
register_loss("sympo_sigmoid", losses.sympo_sigmoid_loss, uses_reward_clip=True, paper=SYMPO_PAPER)
register_loss("sympo_ramp", losses.sympo_ramp_loss, uses_reward_clip=True, paper=SYMPO_PAPER)
register_loss("sympo_unhinged", losses.sympo_unhinged_loss, requires_reward_clip=True, paper=SYMPO_PAPER)
# cDPO has no arXiv paper (a note by the DPO authors), so its model card cites DPO, which TRL always does.
register_loss("cdpo", losses.cdpo_loss, hyperparameters={"epsilon": "label_smoothing"})
register_loss(
    "drdpo",
    losses.drdpo_loss,
    hyperparameters={"beta_prime": "drdpo_beta_prime"},
    couples_batch=True,
    paper=DRDPO_PAPER,
)
