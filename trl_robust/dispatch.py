"""Derive the robust trainer's loss method from the installed TRL: TRL's own code plus one branch.

Why this exists. TRL has no hook for new DPO loss types: `DPOTrainer._compute_loss` (a private method of
~300 lines) runs the policy and reference forward passes, builds `chosen_scores`/`rejected_scores`, then
loops over `self.loss_types` through an if/elif chain that ends in ``else: raise ValueError("Unknown loss
type ...")``. Copying that method would freeze one TRL version's forward, reference and metrics code into
this package and drift silently as TRL changes it (it changed three times in 1.13–1.15). Instead we take
the installed method's source and replace only the final ``raise`` with one call:

    else:
        per_sequence_loss = self._registered_per_sequence_loss(
            loss_type, chosen_scores, rejected_scores, ref_chosen_logps, ref_rejected_logps, mode
        )

Everything else — tokenisation, forward passes, live/precomputed/PEFT reference, f-divergence scores, WPO
weighting, `ld_alpha`, `loss_weights`, MoE aux loss, metrics — is TRL's code, byte for byte, and every
built-in loss type runs exactly as in stock TRL (the parity tests prove it).

Safety rules:
- The structure we rely on is checked (the loss loop, the final raise, the local names we read, no
  zero-argument ``super()``); if the installed TRL differs, `IncompatibleTRLError` names the supported range.
  There is no silent fallback.
- The derived source keeps TRL's line numbers (the replacement is padded to the lines it replaces) and is
  registered with `linecache`, so tracebacks show real lines.
- It runs in the namespace of TRL's `dpo_trainer` module, so TRL's imports resolve as in TRL.
"""

import ast
import functools
import inspect
import linecache
import sys
import textwrap

import trl
from packaging.version import Version

# The TRL range this package is tested against (CI runs the suite on both ends). Keep in sync with pyproject.
SUPPORTED_TRL = ">=0.29.0,<1.17"
_MIN_TRL, _MAX_TRL_EXCLUSIVE = Version("0.29.0"), Version("1.17")

HOOK_METHOD = "_registered_per_sequence_loss"
# Local names of `_compute_loss` that the inserted branch reads (besides `self` and `loss_type`).
# The reference log-probs are read only to report a non-finite reference (NaN/inf) instead of training on it.
_NAMES_READ = ("chosen_scores", "rejected_scores", "ref_chosen_logps", "ref_rejected_logps", "mode")


class IncompatibleTRLError(ImportError):
    """The installed TRL does not have the structure trl-robust's integration relies on."""


def _incompatible(reason: str) -> IncompatibleTRLError:
    return IncompatibleTRLError(
        f"trl-robust cannot integrate with the installed TRL {trl.__version__}: {reason}. "
        f"trl-robust supports trl{SUPPORTED_TRL}; install a version in that range, e.g. "
        f"`pip install 'trl{SUPPORTED_TRL}'`."
    )


def check_trl_version() -> None:
    """Raise `IncompatibleTRLError` if the installed TRL is outside the supported range."""
    installed = Version(trl.__version__)
    if not (_MIN_TRL <= installed < _MAX_TRL_EXCLUSIVE):
        raise _incompatible("this version is outside the supported range")


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
    raise _incompatible("`DPOTrainer._compute_loss` has no `for loss_type, loss_weight in zip(self.loss_types, ...)` loop")


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
        raise _incompatible("the loss loop has no `if loss_type == ...` chain")
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
            raise _incompatible(f"unexpected branch condition `{ast.unparse(test)}` in the loss chain")
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
        raise _incompatible("the loss chain does not end in `else: raise ValueError(...)`")
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
    missing = [n for n in _NAMES_READ if n not in assigned_before]
    if missing:
        raise _incompatible(f"`_compute_loss` no longer defines {missing} before the loss loop")
    if not any(isinstance(n, ast.Name) and n.id == "per_sequence_loss" for n in ast.walk(loop)):
        raise _incompatible("the loss loop no longer sets `per_sequence_loss`")
    if any(isinstance(n, ast.Name) and n.id == "super" for n in ast.walk(func)) or func.decorator_list:
        raise _incompatible("`_compute_loss` uses `super()` or decorators, which a derived copy cannot keep")


def analyse(method):
    """Parse a `_compute_loss` method; return (source lines, first line, built-in names, final raise node).

    Raises `IncompatibleTRLError` if it lacks the structure the inserted branch relies on.
    """
    if method is None:
        raise _incompatible("`DPOTrainer` has no `_compute_loss` method")
    lines, first_line = inspect.getsourcelines(method)
    tree = ast.parse(textwrap.dedent("".join(lines)))
    func = tree.body[0]
    if not isinstance(func, ast.FunctionDef) or func.name != "_compute_loss":
        raise _incompatible("`_compute_loss` source could not be parsed as one function")
    loop = _loss_loop(func)
    names, final_raise = _loss_chain(loop)
    _check_names(func, loop)
    return lines, first_line, tuple(names), final_raise


@functools.cache
def _analyse_installed_trl():
    return analyse(trl.DPOTrainer.__dict__.get("_compute_loss"))


def trl_builtin_loss_types() -> tuple[str, ...]:
    """The loss types the installed TRL's `DPOTrainer` implements, read from its source (in TRL's order)."""
    return _analyse_installed_trl()[2]


def derive_compute_loss(method=None):
    """`method` (default: the installed TRL's `DPOTrainer._compute_loss`) with its final ``raise`` replaced by
    a call to `self._registered_per_sequence_loss`."""
    if method is None:
        method = trl.DPOTrainer.__dict__.get("_compute_loss")
        lines, first_line, _, final_raise = _analyse_installed_trl()
    else:
        lines, first_line, _, final_raise = analyse(method)
    source = textwrap.dedent("".join(lines)).splitlines(keepends=True)
    start, end = final_raise.lineno - 1, final_raise.end_lineno  # 0-based slice of the raise statement
    indent = source[start][: len(source[start]) - len(source[start].lstrip())]
    call = f"{indent}per_sequence_loss = self.{HOOK_METHOD}(loss_type, {', '.join(_NAMES_READ)})\n"
    # Pad with blank lines so every later line keeps its number in TRL's file (readable tracebacks).
    source[start:end] = [call] + ["\n"] * (end - start - 1)
    text = "\n" * (first_line - 1) + "".join(source)

    module = sys.modules[method.__module__]
    filename = f"<trl_robust.dispatch: {module.__file__} (trl {trl.__version__}) with registered losses>"
    linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
    namespace: dict = {}
    # TRL's module globals, so `torch`, `F`, `use_adapter`, ... resolve exactly as in TRL; the def lands in
    # `namespace`, not in TRL's module.
    exec(compile(text, filename, "exec"), module.__dict__, namespace)
    fn = namespace["_compute_loss"]
    fn.__doc__ = (
        "TRL's `DPOTrainer._compute_loss` with one extra branch for registered loss types "
        "(derived at import by `trl_robust.dispatch`)."
    )
    return fn
