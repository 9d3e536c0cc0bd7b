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

The probes read TRL's code, never its version number: the loss loop in `loss_loop`, every other private name (TRL's,
transformers') in `private_names`, whose docstring lists them and who relies on each. Two more (`launch`) run where
they are needed: `check_trl_script` in each process `trl-robust dpo|reward` launches (TRL's script), and
`accelerate_launch_validator` before it launches (accelerate's check of the launch arguments).
"""

import functools
import os
import warnings
from collections.abc import Callable, Mapping

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from . import launch, private_names
from .loss_loop import NAMES_READ, LossLoop, Shape, analyse_loss_loop, function_tree
from .private_names import REF_ADAPTER

# The TRL releases trl-robust is tested against: CI runs the whole suite on both ends and a parity check on the newest
# patch of every minor release in between. pyproject's dependency and the README quote this (a test keeps them equal).
# 1.15 is left out: stock TRL 1.15.0's DPO cannot run on a PyTorch without Triton (its fused log-prob kernel is None
# there, fixed in 1.16), so CI, which has no GPU, cannot run it.
SUPPORTED_TRL = SpecifierSet(">=0.29.0,!=1.15.*,<1.17")
VERSION_CHECK_ENV = "TRL_ROBUST_VERSION_CHECK"
_VERSION_CHECK_POLICIES = ("warn", "error", "ignore")


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


# --- the TRL version ---------------------------------------------------------------------------------------------------


def is_supported_trl(version: str | None = None) -> bool:
    """Whether `version` (default: the installed TRL's) is in `SUPPORTED_TRL`."""
    return SUPPORTED_TRL.contains(Version(version or installed_trl_version()), prereleases=True)


def version_check_policy() -> str:
    """`TRL_ROBUST_VERSION_CHECK` as a policy (warn, error or ignore; unset: warn), or a `ValueError` naming the
    variable, its value and the valid ones. `trl-robust dpo|reward` calls it before launching, so that a bad value is
    one message there rather than a traceback in every training process."""
    value = os.environ.get(VERSION_CHECK_ENV, "warn")
    policy = value.strip().lower() or "warn"
    if policy not in _VERSION_CHECK_POLICIES:
        raise ValueError(
            f"{VERSION_CHECK_ENV}={value!r}: use one of {', '.join(_VERSION_CHECK_POLICIES)}, or unset it (warn)."
        )
    return policy


def check_trl_version() -> None:
    """Warn (or, with `TRL_ROBUST_VERSION_CHECK=error`, raise) if the installed TRL is outside the tested range."""
    policy = version_check_policy()
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


# --- `DPOTrainer._compute_loss`: the loss loop the dispatch branch goes into (`loss_loop`) -------------------------


def analyse(method) -> LossLoop:
    """Parse a `_compute_loss` method and check the structure the dispatch branch relies on.

    Raises `IncompatibleTRLError` naming what is missing.
    """
    try:
        return analyse_loss_loop(method)
    except Shape as problem:
        raise _incompatible([str(problem)]) from None


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


# --- every other private name the package uses (`private_names`) ------------------------------------------------


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
        builtin_names = analyse_loss_loop(_installed_compute_loss()).builtin_names
    except Shape as problem:
        problems.append(str(problem))
        builtin_names = ()
    problems += private_names.dpo_problems()
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
    liger_bypasses_loss_loop.cache_clear()


# --- `RewardTrainer`: what the robust reward trainer relies on ---------------------------------------------------------


@functools.cache
def _reward_structural_problems() -> tuple[str, ...]:
    check_trl_version()
    return tuple(private_names.reward_problems())


def check_reward_integration() -> None:
    """The reward trainer's probe: once, before any model is loaded; the same version warning and one
    `IncompatibleTRLError` naming every problem, as `check_integration` for DPO. Independent of the DPO probe, so a
    reward model trains even where TRL's DPO code has changed shape."""
    problems = _reward_structural_problems()
    if problems:
        raise _incompatible(list(problems))


# --- Liger, TRL's scripts, accelerate: probes run where they are needed ------------------------------------------------


@functools.cache
def liger_bypasses_loss_loop() -> bool:
    """Whether the installed TRL computes the DPO loss with `use_liger_kernel=True` in a separate Liger path that never
    reaches the loss loop, so never a registered loss type (TRL <= 1.13), read from `DPOTrainer.compute_loss` and
    `_compute_loss`. Raises `IncompatibleTRLError` if their source cannot be read."""
    from trl import DPOTrainer

    try:
        compute_loss = function_tree(DPOTrainer.compute_loss, "`DPOTrainer.compute_loss`")
        loss_method = function_tree(_installed_compute_loss(), "`DPOTrainer._compute_loss`")
    except Shape as problem:
        raise _incompatible([str(problem)]) from None
    return private_names.liger_bypasses_loss_loop_in(compute_loss, loss_method)


# TRL's script for each command, and the trainer it builds (`trl_robust.scripts.training` installs ours in its place).
TRL_SCRIPT_TRAINERS = {"dpo": "DPOTrainer", "reward": "RewardTrainer"}


def check_trl_script(command: str) -> None:
    """Check TRL's `trl/scripts/<command>.py` before `trl-robust <command>` runs it with the robust trainer: its `main`
    takes the four dataclasses and builds the trainer under the name trl-robust replaces. Raises `IncompatibleTRLError`
    naming what changed."""
    problems = launch.script_problems(command, TRL_SCRIPT_TRAINERS[command])
    if problems:
        raise _incompatible(problems)


class IncompatibleAccelerateError(ImportError):
    """The installed accelerate lacks what `trl-robust dpo|reward` relies on to check its launch arguments."""


def accelerate_requirement() -> str:
    """The accelerate versions trl-robust declares (its package metadata), e.g. "accelerate>=1.4.0"."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement

    try:
        declared = [Requirement(r) for r in requires("trl-robust") or ()]
    except PackageNotFoundError:
        declared = []
    return next((f"accelerate{r.specifier}" for r in declared if r.name == "accelerate" and not r.marker), "accelerate")


def accelerate_launch_validator():
    """accelerate's private `_validate_launch_command`, probed: it takes the launch namespace and returns
    `(args, defaults, mp_from_config_flag)`. Raises `IncompatibleAccelerateError` naming what changed, accelerate's
    version and the versions trl-robust supports, instead of the misleading usage error a changed signature gave."""
    import accelerate

    try:
        from accelerate.commands.launch import _validate_launch_command
    except ImportError:
        problems = ["`accelerate.commands.launch._validate_launch_command` is gone"]
    else:
        problems = launch.launch_validator_problems_in(_validate_launch_command)
    if not problems:
        return _validate_launch_command
    listed = "\n".join(f"  - {problem}" for problem in problems)
    raise IncompatibleAccelerateError(
        f"trl-robust cannot check the launch arguments with the installed accelerate {accelerate.__version__}:\n"
        f"{listed}\ntrl-robust supports {accelerate_requirement()} up to the releases it was tested with; install an "
        f"earlier accelerate: `pip install '{accelerate_requirement()},<{accelerate.__version__}'`."
    )

