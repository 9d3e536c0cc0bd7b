"""Which TRL trl-robust supports, and the probe that checks the installed one before anything is loaded.

Importing trl-robust never fails because of TRL's version or shape: the losses, the filter, the noise injection and
the audit metrics need none of TRL's private code. What does need it — the trainer's loss branch, derived from the
installed `DPOTrainer._compute_loss` (`trl_robust.integration.dispatch`), and a handful of private names the trainer
reads — is checked once, lazily, by `check_integration()`: at the first trainer construction, the first config
validation or `patch_trl()`, always before a model is loaded.

- Inside `SUPPORTED_TRL` (the one definition of the tested range; pyproject, the README and the tests read it): silent.
- Outside it: a warning, then the probe decides. `TRL_ROBUST_VERSION_CHECK=error` turns the warning into an error,
  `=ignore` silences it (the probe still runs).
- A structural change (a private name gone, the loss loop reshaped, a TRL installed without its `.py` sources, a new
  TRL built-in with the name of one of our loss types) fails with one `IncompatibleTRLError` naming every problem,
  the installed TRL and the supported range.
"""

import ast
import dataclasses
import functools
import inspect
import os
import textwrap
import warnings
from collections.abc import Callable, Mapping

from packaging.specifiers import SpecifierSet
from packaging.version import Version

# The TRL releases trl-robust is tested against: CI runs the whole suite on both ends and a parity check on the newest
# patch of every minor release in between. pyproject's dependency and the README quote this (a test keeps them equal).
# 1.15 is left out: stock TRL 1.15.0's DPO cannot run on a PyTorch without Triton (its fused log-prob kernel is None
# there, fixed in 1.16), so CI, which has no GPU, cannot run it.
SUPPORTED_TRL = SpecifierSet(">=0.29.0,!=1.15.*,<1.17")
VERSION_CHECK_ENV = "TRL_ROBUST_VERSION_CHECK"
_VERSION_CHECK_POLICIES = ("warn", "error", "ignore")

# Local names of `_compute_loss` that the inserted branch reads (besides `self` and `loss_type`). The reference
# log-probs are read only to report a non-finite reference (NaN/inf) instead of training on it.
NAMES_READ = ("chosen_scores", "rejected_scores", "ref_chosen_logps", "ref_rejected_logps", "mode")


class IncompatibleTRLError(ImportError):
    """The installed TRL lacks something trl-robust's integration relies on (an `ImportError`: it is about what is
    installed). Raised at the first trainer construction, config validation or `patch_trl()`, never at import."""


def installed_trl_version() -> str:
    import trl

    return trl.__version__


def supported_trl_text() -> str:
    """`SUPPORTED_TRL` as people write it, lower bound first: ">=0.29.0,!=1.15.*,<1.17"."""
    order = {">=": 0, ">": 0, "!=": 1, "==": 1, "~=": 1, "<": 2, "<=": 2}
    return ",".join(str(s) for s in sorted(SUPPORTED_TRL, key=lambda s: (order.get(s.operator, 1), str(s))))


def _supported_text() -> str:
    return f"trl{supported_trl_text()}"


def _incompatible(problems: list[str]) -> IncompatibleTRLError:
    listed = "\n".join(f"  - {problem}" for problem in problems)
    return IncompatibleTRLError(
        f"trl-robust cannot integrate with the installed TRL {installed_trl_version()}:\n{listed}\n"
        f"trl-robust is tested with {_supported_text()}; install a version in that range, e.g. "
        f"`pip install '{_supported_text()}'`."
    )


class _Shape(Exception):
    """One structural problem found while analysing TRL's code (collected into one `IncompatibleTRLError`)."""


# --- the TRL version ---------------------------------------------------------------------------------------------------


def is_supported_trl(version: str | None = None) -> bool:
    """Whether `version` (default: the installed TRL's) is in `SUPPORTED_TRL`."""
    return SUPPORTED_TRL.contains(Version(version or installed_trl_version()), prereleases=True)


def check_trl_version() -> None:
    """Warn (or, with `TRL_ROBUST_VERSION_CHECK=error`, raise) if the installed TRL is outside the tested range."""
    policy = os.environ.get(VERSION_CHECK_ENV, "warn").strip().lower() or "warn"
    if policy not in _VERSION_CHECK_POLICIES:
        raise ValueError(f"{VERSION_CHECK_ENV}={policy!r}: use one of {', '.join(_VERSION_CHECK_POLICIES)}.")
    if policy == "ignore" or is_supported_trl():
        return
    message = (
        f"trl-robust is tested with {_supported_text()}, and TRL {installed_trl_version()} is installed. trl-robust "
        "checked the TRL code it relies on and will use it; if something misbehaves, install a tested TRL. "
        f"Set {VERSION_CHECK_ENV}=error to refuse untested versions, or =ignore to silence this warning."
    )
    if policy == "error":
        raise IncompatibleTRLError(message)
    warnings.warn(message, UserWarning, stacklevel=3)


# --- `DPOTrainer._compute_loss`: the loss loop the dispatch branch goes into --------------------------------------------


def _loss_loop(func: ast.FunctionDef) -> ast.For:
    """The ``for loss_type, loss_weight in zip(self.loss_types, self.loss_weights...)`` loop."""
    for node in ast.walk(func):
        if (
            isinstance(node, ast.For)
            and isinstance(node.target, ast.Tuple)
            and [getattr(e, "id", None) for e in node.target.elts] == ["loss_type", "loss_weight"]
            and isinstance(node.iter, ast.Call)
            and ast.unparse(node.iter.func) == "zip"
            and ast.unparse(node.iter.args[0]) == "self.loss_types"
        ):
            return node
    raise _Shape("`DPOTrainer._compute_loss` has no `for loss_type, loss_weight in zip(self.loss_types, ...)` loop")


def _loss_chain(loop: ast.For) -> tuple[list[str], ast.Raise]:
    """Walk the if/elif chain on `loss_type`; return the built-in names and the final ``raise``."""
    chain = next(
        (
            n
            for n in loop.body
            if isinstance(n, ast.If)
            and isinstance(n.test, ast.Compare)
            and getattr(n.test.left, "id", None) == "loss_type"
        ),
        None,
    )
    if chain is None:
        raise _Shape("the loss loop of `DPOTrainer._compute_loss` has no `if loss_type == ...` chain")
    names = []
    node = chain
    while True:
        test = node.test
        if not (
            isinstance(test, ast.Compare)
            and getattr(test.left, "id", None) == "loss_type"
            and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Eq)
            and isinstance(test.comparators[0], ast.Constant)
        ):
            raise _Shape(f"unexpected branch condition `{ast.unparse(test)}` in the loss chain of `_compute_loss`")
        names.append(test.comparators[0].value)
        if len(node.orelse) == 1 and isinstance(node.orelse[0], ast.If):
            node = node.orelse[0]
            continue
        break
    final = node.orelse
    if not (
        len(final) == 1
        and isinstance(final[0], ast.Raise)
        and isinstance(final[0].exc, ast.Call)
        and getattr(final[0].exc.func, "id", None) == "ValueError"
    ):
        raise _Shape("the loss chain of `_compute_loss` does not end in `else: raise ValueError(...)`")
    return names, final[0]


def _check_names(func: ast.FunctionDef, loop: ast.For) -> None:
    """The names the inserted branch reads must be assigned before the loop; `per_sequence_loss` inside it."""
    assigned_before = {
        t.id
        for stmt in func.body
        if stmt.lineno < loop.lineno
        for node in ast.walk(stmt)
        if isinstance(node, ast.Assign)
        for target in node.targets
        for t in ast.walk(target)
        if isinstance(t, ast.Name)
    }
    missing = [n for n in NAMES_READ if n not in assigned_before]
    if missing:
        raise _Shape(f"`_compute_loss` no longer defines {missing} before the loss loop")
    if not any(isinstance(n, ast.Name) and n.id == "per_sequence_loss" for n in ast.walk(loop)):
        raise _Shape("the loss loop of `_compute_loss` no longer sets `per_sequence_loss`")
    if any(isinstance(n, ast.Name) and n.id == "super" for n in ast.walk(func)) or func.decorator_list:
        raise _Shape("`_compute_loss` uses `super()` or decorators, which a derived copy cannot keep")


def _source_lines(obj, what: str) -> tuple[list[str], int]:
    try:
        return inspect.getsourcelines(obj)
    except (OSError, TypeError) as error:
        raise _Shape(
            f"the source of {what} cannot be read ({error}); trl-robust reads TRL's code to add its loss branch, so "
            "TRL must be installed with its .py files (reinstall it from PyPI's wheel: `pip install --force-reinstall "
            "--no-deps trl==<version>`)"
        ) from None


@dataclasses.dataclass(frozen=True)
class LossLoop:
    """What the analysis of a `_compute_loss` found: its source, where it starts, the built-in names, the final raise."""

    lines: list[str]
    first_line: int
    builtin_names: tuple[str, ...]
    final_raise: ast.Raise


def analyse(method) -> LossLoop:
    """Parse a `_compute_loss` method and check the structure the dispatch branch relies on.

    Raises `IncompatibleTRLError` naming what is missing.
    """
    try:
        return _analyse(method)
    except _Shape as problem:
        raise _incompatible([str(problem)]) from None


def _analyse(method) -> LossLoop:
    if method is None:
        raise _Shape("`DPOTrainer` has no `_compute_loss` method")
    lines, first_line = _source_lines(method, "`DPOTrainer._compute_loss`")
    tree = ast.parse(textwrap.dedent("".join(lines)))
    func = tree.body[0]
    if not isinstance(func, ast.FunctionDef) or func.name != "_compute_loss":
        raise _Shape("`_compute_loss` source could not be parsed as one function")
    loop = _loss_loop(func)
    names, final_raise = _loss_chain(loop)
    _check_names(func, loop)
    return LossLoop(lines, first_line, tuple(names), final_raise)


def _installed_compute_loss():
    import trl

    return trl.DPOTrainer.__dict__.get("_compute_loss")


@functools.cache
def installed_loss_loop() -> LossLoop:
    """The analysis of the installed TRL's `DPOTrainer._compute_loss` (read once)."""
    return analyse(_installed_compute_loss())


def trl_builtin_loss_types() -> tuple[str, ...]:
    """The loss types the installed TRL's `DPOTrainer` implements, read from its source (in TRL's order)."""
    return installed_loss_loop().builtin_names


# --- every other private name the package uses --------------------------------------------------------------------------


def _assigned_attributes(function, what: str) -> set[str]:
    """The `self.<name>` attributes a method assigns, from its source."""
    lines, _ = _source_lines(function, what)
    tree = ast.parse(textwrap.dedent("".join(lines)))
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and getattr(node.value, "id", "") == "self"
    }


def _private_name_problems() -> list[str]:
    """Check, without building anything, each private TRL/transformers name trl-robust reads or overrides."""
    from transformers import Trainer, TrainerState
    from trl import DPOTrainer

    problems = []

    def check(condition: bool, problem: str) -> None:
        if not condition:
            problems.append(problem)

    # Model-card data (`RobustDPOTrainer._set_model_card_data`).
    check(isinstance(getattr(DPOTrainer, "_tag_names", None), list), "`DPOTrainer._tag_names` is no longer a list")
    check(isinstance(getattr(DPOTrainer, "_name", None), str), "`DPOTrainer._name` is no longer a string")
    paper = getattr(DPOTrainer, "_paper", None)
    check(
        isinstance(paper, dict) and {"title", "id", "citation"} <= set(paper),
        "`DPOTrainer._paper` is no longer a dict with title, id and citation",
    )
    try:
        # Set by TRL's __init__ and used by the trainer: the metrics dict, the loss list and its weights (the audit
        # replaces them), and the f-divergence check on `args.loss_type` that the trainer steps around.
        init = DPOTrainer.__init__
        assigned = _assigned_attributes(init, "`DPOTrainer.__init__`")
        for name in ("_metrics", "loss_types", "loss_weights"):
            check(name in assigned, f"`DPOTrainer.__init__` no longer sets `self.{name}`")
        init_source = "".join(inspect.getsourcelines(init)[0])
        check(
            "f_divergence_type" in init_source and "loss_type" in init_source,
            "`DPOTrainer.__init__` no longer checks `f_divergence_type` against `args.loss_type` as trl-robust expects",
        )
        # transformers' `Trainer`: the column list `remove_unused_columns` keeps (extended for passed-through columns).
        check(
            callable(getattr(Trainer, "_set_signature_columns_if_needed", None))
            and "_signature_columns" in _assigned_attributes(
                Trainer._set_signature_columns_if_needed, "`Trainer._set_signature_columns_if_needed`"
            ),
            "transformers' `Trainer._set_signature_columns_if_needed` no longer sets `self._signature_columns`",
        )
    except _Shape as problem:
        problems.append(str(problem))
    # The epoch filter's scoring pass and its saved choice.
    loop_parameters = set(inspect.signature(Trainer.evaluation_loop).parameters)
    check(
        {"dataloader", "description", "prediction_loss_only", "metric_key_prefix"} <= loop_parameters,
        "transformers' `Trainer.evaluation_loop` changed its arguments",
    )
    check(
        len(inspect.signature(Trainer.get_eval_dataloader).parameters) >= 2,
        "transformers' `Trainer.get_eval_dataloader` no longer takes a dataset",
    )
    check(
        "stateful_callbacks" in {f.name for f in dataclasses.fields(TrainerState)},
        "transformers' `TrainerState` has no `stateful_callbacks` (where the epoch filter saves its choice)",
    )
    check(
        "_internal_call" in inspect.signature(DPOTrainer.save_model).parameters,
        "`DPOTrainer.save_model` no longer takes `_internal_call`",
    )
    check(callable(getattr(DPOTrainer, "create_model_card", None)), "`DPOTrainer.create_model_card` is gone")
    return problems


def _name_clash_problems(builtin_names, registered: Mapping[str, Callable]) -> list[str]:
    return [
        f"TRL now has a built-in loss type {name!r}, and trl-robust registers a loss type of the same name "
        f"({_describe(fn)}): TRL's branch would run instead of it. Unregister one "
        f"(`trl_robust.unregister_loss({name!r})`) or install a TRL without that built-in"
        for name, fn in registered.items()
        if name in builtin_names
    ]


def _describe(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


@functools.cache
def _structural_problems() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(problems, TRL's built-in loss names), found once; warns (or raises) about the version first."""
    check_trl_version()
    problems = []
    try:
        builtin_names = _analyse(_installed_compute_loss()).builtin_names
    except _Shape as problem:
        problems.append(str(problem))
        builtin_names = ()
    problems += _private_name_problems()
    return tuple(problems), builtin_names


def check_integration(registered: Mapping[str, Callable] | None = None) -> None:
    """The probe: check the installed TRL before any model is loaded (the TRL part once; see the module docstring).

    Warns outside `SUPPORTED_TRL` (per `TRL_ROBUST_VERSION_CHECK`); raises one `IncompatibleTRLError` listing every
    structural problem, and every name in `registered` (loss type → function) that is also a TRL built-in.
    """
    problems, builtin_names = _structural_problems()
    problems = [*problems, *_name_clash_problems(builtin_names, registered or {})]
    if problems:
        raise _incompatible(problems)


def reset_integration_check() -> None:
    """Forget what the probe found (for tests that change TRL's shape)."""
    _structural_problems.cache_clear()
    _reward_structural_problems.cache_clear()
    installed_loss_loop.cache_clear()


# --- `RewardTrainer`: what the robust reward trainer relies on ---------------------------------------------------------


def _reward_problems() -> list[str]:
    """Check, without building anything, what `RobustRewardTrainer` reads from TRL's `RewardTrainer`/`RewardConfig`.

    It calls TRL's `compute_loss(..., return_outputs=True)` and takes the rewards from the outputs (so TRL's forward and
    metrics run unchanged), reads `args.center_rewards_coefficient`, and extends the model-card data and the metrics
    dict TRL's `__init__` sets up.
    """
    from trl import RewardConfig, RewardTrainer

    problems = []

    def check(condition: bool, problem: str) -> None:
        if not condition:
            problems.append(problem)

    parameters = inspect.signature(RewardTrainer.compute_loss).parameters
    check(
        {"model", "inputs", "return_outputs"} <= set(parameters),
        "`RewardTrainer.compute_loss` no longer takes `return_outputs` (trl-robust takes the rewards from its outputs)",
    )
    check(
        "center_rewards_coefficient" in {f.name for f in dataclasses.fields(RewardConfig)},
        "`RewardConfig` has no `center_rewards_coefficient`",
    )
    check(isinstance(getattr(RewardTrainer, "_tag_names", None), list), "`RewardTrainer._tag_names` is no longer a list")
    check(isinstance(getattr(RewardTrainer, "_name", None), str), "`RewardTrainer._name` is no longer a string")
    try:
        check(
            "_metrics" in _assigned_attributes(RewardTrainer.__init__, "`RewardTrainer.__init__`"),
            "`RewardTrainer.__init__` no longer sets `self._metrics`",
        )
    except _Shape as problem:
        problems.append(str(problem))
    return problems


@functools.cache
def _reward_structural_problems() -> tuple[str, ...]:
    check_trl_version()
    return tuple(_reward_problems())


def check_reward_integration() -> None:
    """The reward trainer's probe: once, before any model is loaded; the same version warning and one
    `IncompatibleTRLError` naming every problem, as `check_integration` for DPO. Independent of the DPO probe, so a
    reward model trains even where TRL's DPO code has changed shape."""
    problems = _reward_structural_problems()
    if problems:
        raise _incompatible(list(problems))
