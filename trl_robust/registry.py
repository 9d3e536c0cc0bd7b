"""The loss-type registry: which names `loss_type` accepts beyond TRL's built-ins, and what each one needs.

A loss is registered once with `register_loss`, the same public function a third-party package would use; the trainer
then accepts its name in `loss_type` (alone, or in a multi-loss list with `loss_weights`). The registration is the
whole contract of a loss: its per-pair function, the config values it reads (with their defaults and the rule a value
must meet), and the paper behind it.

    >>> import torch
    >>> from trl_robust import Hyperparameter, register_loss
    >>> register_loss(
    ...     "tanh_margin",
    ...     lambda z, scale=1.0: 1 - torch.tanh(scale * z),
    ...     hyperparameters={"scale": Hyperparameter("tanh_scale", default=1.0, check=lambda v: v > 0, rule="> 0")},
    ... )  # doctest: +SKIP

A hyperparameter's value comes from the config attribute of the same name when the config has one (subclass
`RobustDPOConfig` to add it), else from its default. Registering needs no TRL code; clashes with TRL's built-in names
are refused here when the installed TRL can be read, and by `trl_robust.compat`'s probe otherwise.

A separately installed package registers its losses through the entry-point group `trl_robust.losses`
(`ENTRY_POINT_GROUP`), so that they reach every process that resolves loss types, including the training processes
`trl-robust dpo`/`trl-robust reward` launch and the audit:

    # the plugin's pyproject.toml
    [project.entry-points."trl_robust.losses"]
    tanh_margin = "my_package.losses:register"    # a function that calls `register_loss`, or a module that does

Each entry point's object is imported, and called if it is callable, the first time a loss type is resolved in a
process (`get_loss_spec`, `registered_loss_types`, `available_loss_types`, ...; never at `import trl_robust`). A
plugin that fails to load raises `LossPluginError` naming it, every time a loss type is resolved: never a silent skip.

(Its length, about 480 lines, is the registration code plus the package's own registrations with their papers'
BibTeX, which the model cards cite: one place for everything a loss type is.)
"""

import difflib
import importlib.metadata
import math
import re
import textwrap
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from . import losses
from .noise import loss_states

_MISSING = object()  # no default: the config must have the attribute


@dataclass(frozen=True)
class Paper:
    """Where a loss comes from; flows into the saved model card."""

    title: str
    arxiv_id: str
    citation: str  # BibTeX entry


@dataclass(frozen=True)
class Hyperparameter:
    """A config value a registered loss reads.

    Attributes:
        attribute: the config attribute (also the YAML key and the `--flag` of `trl-robust dpo` when the config has it,
            and the flag of `trl-robust audit`).
        default: used when the config has no such attribute (e.g. a plain `trl.DPOConfig`); none means the config
            must have it.
        check: a predicate a valid value satisfies (numbers are also required to be finite); checked before any model
            is loaded.
        rule: what `check` requires, in words, for the error message ("> 0 (the paper uses 14)").
        help: one line for the audit command's `--help`.
    """

    attribute: str
    default: Any = _MISSING
    check: Callable[[Any], bool] | None = None
    rule: str = ""
    help: str = ""

    @property
    def has_default(self) -> bool:
        return self.default is not _MISSING

    def validate(self, value) -> None:
        """Raise a `ValueError` naming the attribute if `value` is not valid."""
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"`{self.attribute}` must be a finite number, got {value!r}.")
        try:
            valid = self.check is None or bool(self.check(value))
        except (TypeError, ValueError):  # e.g. a string compared with a number
            valid = False
        if not valid:
            raise ValueError(f"`{self.attribute}` must be {self.rule or 'valid'}, got {value!r}.")


@dataclass(frozen=True)
class LossSpec:
    """A registered loss type.

    Attributes:
        name: the value users put in `loss_type`.
        fn: per-pair loss, a function of the scaled margin z = β·Δ (tensor in, same-shape tensor out),
            with the hyperparameters as keyword arguments.
        hyperparameters: keyword of `fn` → the `Hyperparameter` that supplies it.
        uses_reward_clip: if true, each side's reward β·score is clamped to
            [−sympo_reward_clip, sympo_reward_clip] before the margin is formed (SymPO's reward clipping).
        requires_reward_clip: the loss is unbounded without the clip; a config with `sympo_reward_clip=None` is
            refused.
        couples_batch: the value for one pair depends on the other pairs passed in (a batch objective, e.g.
            Dr. DPO); per-pair filtering is refused for it.
        paper: the paper behind the loss (for the model card and the docs).
        state: for a loss that carries state across training steps (RE-PO's reliability η), a factory of its
            `trl_robust.noise.loss_states.LossState`, called once per trainer with every hyperparameter of the loss
            (`hyperparameters` and `state_hyperparameters`) by keyword; None for a plain per-pair loss.
        state_hyperparameters: keyword of `state` → `Hyperparameter`, for config values only the state reads (RE-PO's
            momentum), not `fn`.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    hyperparameters: Mapping[str, Hyperparameter] = field(default_factory=dict)
    uses_reward_clip: bool = False
    requires_reward_clip: bool = False
    couples_batch: bool = False
    paper: Paper | None = None
    state: Callable[..., Any] | None = None
    state_hyperparameters: Mapping[str, Hyperparameter] = field(default_factory=dict)

    @property
    def all_hyperparameters(self) -> dict[str, Hyperparameter]:
        """`hyperparameters` and `state_hyperparameters` together: every config value the loss reads."""
        return {**self.hyperparameters, **self.state_hyperparameters}


_REGISTRY: dict[str, LossSpec] = {}
_deferring_trl_check = False  # True only while this module registers the package's own losses
_VALID_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

ENTRY_POINT_GROUP = "trl_robust.losses"


class LossPluginError(RuntimeError):
    """A package's `trl_robust.losses` entry point could not be imported or failed while registering its losses."""


_plugin_lock = threading.RLock()
_plugins_loading = False  # True while the entry points' objects run (they call `register_loss`): no recursion
_plugins_loaded = False  # every entry point of the group loaded without an error, in this process
_loaded_entry_points: set[tuple[str, str]] = set()  # (name, value) of those already run, never run twice


def load_loss_plugins() -> None:
    """Import (and call, if callable) the object of every `trl_robust.losses` entry point not yet loaded.

    Runs by itself the first time a loss type is resolved in a process; call it to load plugins earlier. Loads each
    entry point once per process. Raises `LossPluginError` naming the entry point and its distribution when one fails
    (and again at the next resolution: a broken plugin is never skipped silently).
    """
    global _plugins_loading, _plugins_loaded
    if _plugins_loaded or _plugins_loading or _deferring_trl_check:
        return
    with _plugin_lock:
        if _plugins_loaded or _plugins_loading:
            return
        _plugins_loading = True
        try:
            for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                key = (entry_point.name, entry_point.value)
                if key in _loaded_entry_points:
                    continue
                _load_entry_point(entry_point)
                _loaded_entry_points.add(key)
            _plugins_loaded = True
        finally:
            _plugins_loading = False


def _load_entry_point(entry_point) -> None:
    dist = getattr(entry_point, "dist", None)
    source = f"the package {dist.name!r} {dist.version}" if dist is not None else "an installed package"
    where = f"entry point {entry_point.name!r} = {entry_point.value!r} in group {ENTRY_POINT_GROUP!r} of {source}"
    try:
        target = entry_point.load()
    except Exception as error:
        raise LossPluginError(
            f"The loss plugin {where} failed to import: {type(error).__name__}: {error}. "
            "Fix or uninstall that package; trl-robust does not skip a loss plugin it cannot load."
        ) from error
    if callable(target):
        try:
            target()
        except Exception as error:
            raise LossPluginError(
                f"The loss plugin {where} failed while registering its losses: {type(error).__name__}: {error}"
            ) from error


def register_loss(
    name: str,
    fn: Callable[..., torch.Tensor],
    *,
    hyperparameters: Mapping[str, Hyperparameter | str] | None = None,
    uses_reward_clip: bool = False,
    requires_reward_clip: bool = False,
    couples_batch: bool = False,
    paper: Paper | None = None,
    state: Callable[..., Any] | None = None,
    state_hyperparameters: Mapping[str, Hyperparameter] | None = None,
) -> LossSpec:
    """Register a new `loss_type`.

    Args:
        name: lower-case identifier (`[a-z][a-z0-9_]*`); must not be a TRL built-in or already registered.
        fn: per-pair loss of the scaled margin z (see `LossSpec.fn`). Must be differentiable in z.
        hyperparameters: keyword of `fn` → a `Hyperparameter` (attribute, default, check), or just the name of the
            config attribute that supplies it (no default: the config must have it).
        uses_reward_clip: apply SymPO-style reward clipping (`sympo_reward_clip`) before the margin.
        requires_reward_clip: refuse configs that disable the clip (for losses unbounded without it); implies
            `uses_reward_clip`.
        couples_batch: `fn` computes a batch objective (the same value for every pair, as `drdpo_loss` does), not
            independent per-pair losses.
        paper: the paper to cite in model cards.
        state: a factory of the loss's per-trainer state (see `LossSpec.state`), for a loss that carries state across
            steps.
        state_hyperparameters: config values only `state` reads (see `LossSpec.state_hyperparameters`).

    Returns:
        The registered `LossSpec`.

    Raises:
        ValueError: the name is malformed, clashes with a TRL built-in loss type, or is already registered.
        TypeError: `fn` is not callable.
    """
    load_loss_plugins()  # an installed plugin's names are taken first, whatever the order of the calls
    if not isinstance(name, str) or not _VALID_NAME.match(name):
        raise ValueError(f"Loss type name {name!r} is invalid: use a lower-case identifier such as 'my_loss'.")
    if not _deferring_trl_check and name in _readable_trl_builtins():
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
        hyperparameters=MappingProxyType(
            {kw: h if isinstance(h, Hyperparameter) else Hyperparameter(h) for kw, h in (hyperparameters or {}).items()}
        ),
        uses_reward_clip=uses_reward_clip or requires_reward_clip,
        requires_reward_clip=requires_reward_clip,
        couples_batch=couples_batch,
        paper=paper,
        state=state,
        state_hyperparameters=MappingProxyType(dict(state_hyperparameters or {})),
    )
    _REGISTRY[name] = spec
    return spec


def _readable_trl_builtins() -> tuple[str, ...]:
    """TRL's built-in loss names, or none if the installed TRL cannot be read (the probe reports that, and any clash,
    at the first trainer construction)."""
    from .compat import IncompatibleTRLError, trl_builtin_loss_types

    try:
        return trl_builtin_loss_types()
    except IncompatibleTRLError:
        return ()


def unregister_loss(name: str) -> None:
    """Remove a registered loss type (TRL's built-ins cannot be removed)."""
    load_loss_plugins()
    if name not in _REGISTRY:
        raise KeyError(f"Loss type {name!r} is not registered; registered: {sorted(_REGISTRY)}.")
    del _REGISTRY[name]


def get_loss_spec(name: str) -> LossSpec | None:
    """The `LossSpec` registered under `name`, or None (TRL built-ins and unknown names)."""
    load_loss_plugins()
    return _REGISTRY.get(name)


def registered_loss_types() -> list[str]:
    """Names added through `register_loss`, in registration order."""
    load_loss_plugins()
    return list(_REGISTRY)


def available_loss_types() -> list[str]:
    """Every name `loss_type` accepts: TRL's built-ins (read from the installed TRL) plus the registered ones."""
    load_loss_plugins()
    from .compat import trl_builtin_loss_types

    return [*trl_builtin_loss_types(), *_REGISTRY]


def hyperparameter_defaults() -> dict[str, Any]:
    """Config attribute → default, for every registered hyperparameter that has one."""
    load_loss_plugins()
    return {
        h.attribute: h.default for spec in _REGISTRY.values() for h in spec.all_hyperparameters.values() if h.has_default
    }


def registered_hyperparameters() -> dict[str, Hyperparameter]:
    """Config attribute → `Hyperparameter`, over every registered loss (the first registration of a shared one)."""
    load_loss_plugins()
    found = {}
    for spec in _REGISTRY.values():
        for h in spec.all_hyperparameters.values():
            found.setdefault(h.attribute, h)
    return found


def config_class_with(config_cls: type, attributes) -> type:
    """`config_cls`, or a dataclass subclass of it with a field (default None) for each of `attributes` it lacks.

    For code that builds a config from a registered loss's hyperparameters by name (the audit): a plugin's
    hyperparameter is no field of `RobustDPOConfig`, and a dataclass refuses a keyword it has no field for. Such a
    subclass is made on the fly, so it cannot be pickled: use it where the config is never saved.
    """
    import dataclasses

    known = {f.name for f in dataclasses.fields(config_cls)}
    missing = [name for name in dict.fromkeys(attributes) if name not in known]
    if not missing:
        return config_cls
    extra = [(name, Any, dataclasses.field(default=None)) for name in missing]
    return dataclasses.make_dataclass(config_cls.__name__, extra, bases=(config_cls,))


def unknown_loss_type_error(name, valid: list[str] | None = None, what: str = "") -> ValueError:
    """The error for a `loss_type` nobody implements: names the closest of `valid` (default: every DPO loss type) and
    lists them all; `what` says for what ("for a reward model")."""
    valid = available_loss_types() if valid is None else valid
    close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"Unknown loss_type {name!r}{' ' + what if what else ''}.{hint} Valid loss types: {', '.join(valid)}.")


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

HOLDER_PAPER = Paper(
    title="Scalable Valuation of Human Feedback through Provably Robust Model Alignment",
    arxiv_id="2505.17859",
    citation=textwrap.dedent("""\
        @inproceedings{fujisawa2025holderdpo,
            title        = {{Scalable Valuation of Human Feedback through Provably Robust Model Alignment}},
            author       = {Masahiro Fujisawa and Masaki Adachi and Michael A. Osborne},
            year         = 2025,
            booktitle    = {Advances in Neural Information Processing Systems 38, NeurIPS 2025},
            eprint       = {arXiv:2505.17859},
        }"""),
)

REPO_PAPER = Paper(
    title="RE-PO: Robust Enhanced Policy Optimization as a General Framework for LLM Alignment",
    arxiv_id="2509.24159",
    citation=textwrap.dedent("""\
        @inproceedings{cao2026repo,
            title        = {{RE-PO: Robust Enhanced Policy Optimization as a General Framework for LLM Alignment}},
            author       = {Xiaoyang Cao and Zelai Xu and Mo Guang and Kaiwen Long and Michiel A. Bakker and Yu Wang and Chao Yu},
            year         = 2026,
            booktitle    = {The Fourteenth International Conference on Learning Representations, ICLR 2026},
            eprint       = {arXiv:2509.24159},
        }"""),
)

ROPO_ALPHA = Hyperparameter(
    "ropo_alpha",
    default=14.0,
    check=lambda value: value > 0,
    rule="> 0 (the ROPO paper uses 14)",
    help="α of `--loss_type ropo` (default 14).",
)
DRDPO_BETA_PRIME = Hyperparameter(
    "drdpo_beta_prime",
    default=1.0,
    check=lambda value: value > 0,
    rule="> 0 (the Dr. DPO paper uses 1)",
    help="β′ of `--loss_type drdpo` (default 1).",
)
HOLDER_GAMMA = Hyperparameter(
    "holder_gamma",
    default=2.0,
    check=lambda value: value > 0,
    rule="> 0 (the Hölder-DPO paper uses 2)",
    help="γ of `--loss_type holder` (default 2).",
)
REPO_ETA_INIT = Hyperparameter(
    "repo_eta_init",
    default=0.9,
    check=lambda value: 0.5 < value <= 1,
    rule="in (0.5, 1] (the RE-PO paper starts from 0.9; 0.5 would make every gradient 0)",
    help="Initial annotator reliability η of `--loss_type repo` (default 0.9).",
)
REPO_MOMENTUM = Hyperparameter(
    "repo_momentum",
    default=0.1,
    check=lambda value: 0 < value <= 1,
    rule="in (0, 1] (the RE-PO paper uses 0.1)",
    help="Moving-average momentum α of η for `--loss_type repo` (default 0.1).",
)
# cDPO's ε is TRL's own `label_smoothing` field (TRL's default 0), which cDPO restricts.
CDPO_EPSILON = Hyperparameter(
    "label_smoothing",
    default=0.0,
    check=lambda value: 0 <= value < 0.5,
    rule="in [0, 0.5) with loss_type 'cdpo' (ε, the assumed flip rate)",
    help="ε of `--loss_type cdpo`.",
)

# The package's own losses go through the public function, exactly as a third party's would (only the check against
# TRL's built-in names waits for the probe, so that importing trl-robust reads none of TRL's code).
_deferring_trl_check = True
register_loss("ropo", losses.ropo_loss, hyperparameters={"alpha": ROPO_ALPHA}, paper=ROPO_PAPER)
register_loss("sympo_sigmoid", losses.sympo_sigmoid_loss, uses_reward_clip=True, paper=SYMPO_PAPER)
register_loss("sympo_ramp", losses.sympo_ramp_loss, uses_reward_clip=True, paper=SYMPO_PAPER)
register_loss("sympo_unhinged", losses.sympo_unhinged_loss, requires_reward_clip=True, paper=SYMPO_PAPER)
# cDPO has no arXiv paper (a note by the DPO authors), so its model card cites DPO, which TRL always does.
register_loss("cdpo", losses.cdpo_loss, hyperparameters={"epsilon": CDPO_EPSILON})
register_loss(
    "drdpo",
    losses.drdpo_loss,
    hyperparameters={"beta_prime": DRDPO_BETA_PRIME},
    couples_batch=True,
    paper=DRDPO_PAPER,
)
register_loss(
    "holder",
    losses.holder_loss,
    hyperparameters={"gamma": HOLDER_GAMMA},
    paper=HOLDER_PAPER,
    state=loss_states.HolderState,  # only its contamination estimate, logged; the loss itself is per pair
)
register_loss(
    "repo",
    losses.repo_loss,
    hyperparameters={"eta": REPO_ETA_INIT},  # the loss at the initial η; the trainer's `RepoState` then moves η
    paper=REPO_PAPER,
    state=loss_states.RepoState,
    state_hyperparameters={"momentum": REPO_MOMENTUM},
)
_deferring_trl_check = False
