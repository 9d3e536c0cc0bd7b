"""Reading TRL's code: the source and syntax tree of a TRL function, and the analysis of `DPOTrainer._compute_loss`
that `trl_robust.integration.dispatch` adds its loss branch to (the loss loop, its if/elif chain on `loss_type`, the
final `raise`, the local names the branch reads).

Every problem found is raised as `Shape`, a one-line description; `trl_robust.compat` collects them into one
`IncompatibleTRLError` naming the installed TRL and the supported range.
"""

import ast
import dataclasses
import inspect
import textwrap

# Local names of `_compute_loss` that the inserted branch reads (besides `self` and `loss_type`). The reference
# log-probs are read only to report a non-finite reference (NaN/inf) instead of training on it.
NAMES_READ = ("chosen_scores", "rejected_scores", "ref_chosen_logps", "ref_rejected_logps", "mode")


class Shape(Exception):
    """One structural problem found while analysing TRL's code (collected into one `IncompatibleTRLError`)."""


def source_lines(obj, what: str) -> tuple[list[str], int]:
    """`inspect.getsourcelines(obj)`, or `Shape` saying that TRL must be installed with its .py files."""
    try:
        return inspect.getsourcelines(obj)
    except (OSError, TypeError) as error:
        raise Shape(
            f"the source of {what} cannot be read ({error}); trl-robust reads TRL's code to add its loss branch, so "
            "TRL must be installed with its .py files (reinstall it from PyPI's wheel: `pip install --force-reinstall "
            "--no-deps trl==<version>`)"
        ) from None


def function_tree(function, what: str) -> ast.FunctionDef:
    """The syntax tree of one function or method (`what` names it in a problem)."""
    if function is None:
        raise Shape(f"{what} is gone")
    lines, _ = source_lines(function, what)
    tree = ast.parse(textwrap.dedent("".join(lines)))
    if not tree.body or not isinstance(tree.body[0], ast.FunctionDef | ast.AsyncFunctionDef):
        raise Shape(f"the source of {what} could not be parsed as one function")
    return tree.body[0]


def self_assignments(func: ast.FunctionDef) -> dict[str, list[ast.expr | None]]:
    """Every `self.<name>` a method assigns: name -> the values assigned to it in source order (`None` where it is
    not a plain `self.<name> = value`, e.g. `+=`, a tuple target or a `for` target)."""
    found: dict[str, list] = {}
    for node in sorted(
        (n for n in ast.walk(func) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)),
        key=lambda n: (n.lineno, n.col_offset),
    ):
        if getattr(node.value, "id", "") == "self":
            found.setdefault(node.attr, [])
    for node in sorted((n for n in ast.walk(func) if isinstance(n, ast.Assign)), key=lambda n: n.lineno):
        for target in node.targets:
            if isinstance(target, ast.Attribute) and getattr(target.value, "id", "") == "self":
                found[target.attr].append(node.value)
    return found


def assigned_attributes(function, what: str) -> set[str]:
    """The `self.<name>` attributes a method assigns, from its source."""
    return set(self_assignments(function_tree(function, what)))


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
    raise Shape("`DPOTrainer._compute_loss` has no `for loss_type, loss_weight in zip(self.loss_types, ...)` loop")


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
        raise Shape("the loss loop of `DPOTrainer._compute_loss` has no `if loss_type == ...` chain")
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
            raise Shape(f"unexpected branch condition `{ast.unparse(test)}` in the loss chain of `_compute_loss`")
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
        raise Shape("the loss chain of `_compute_loss` does not end in `else: raise ValueError(...)`")
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
        raise Shape(f"`_compute_loss` no longer defines {missing} before the loss loop")
    if not any(isinstance(n, ast.Name) and n.id == "per_sequence_loss" for n in ast.walk(loop)):
        raise Shape("the loss loop of `_compute_loss` no longer sets `per_sequence_loss`")
    if any(isinstance(n, ast.Name) and n.id == "super" for n in ast.walk(func)) or func.decorator_list:
        raise Shape("`_compute_loss` uses `super()` or decorators, which a derived copy cannot keep")


@dataclasses.dataclass(frozen=True)
class LossLoop:
    """What the analysis of a `_compute_loss` found: its source, where it starts, the built-in names, the final raise."""

    lines: list[str]
    first_line: int
    builtin_names: tuple[str, ...]
    final_raise: ast.Raise


def analyse_loss_loop(method) -> LossLoop:
    """Parse a `_compute_loss` method and check the structure the dispatch branch relies on (or raise `Shape`)."""
    if method is None:
        raise Shape("`DPOTrainer` has no `_compute_loss` method")
    lines, first_line = source_lines(method, "`DPOTrainer._compute_loss`")
    tree = ast.parse(textwrap.dedent("".join(lines)))
    func = tree.body[0]
    if not isinstance(func, ast.FunctionDef) or func.name != "_compute_loss":
        raise Shape("`_compute_loss` source could not be parsed as one function")
    loop = _loss_loop(func)
    names, final_raise = _loss_chain(loop)
    _check_names(func, loop)
    return LossLoop(lines, first_line, tuple(names), final_raise)
