"""The probes of what `trl-robust dpo|reward` relies on: TRL's scripts and accelerate's check of the launch arguments.

- TRL's scripts (`trl/scripts/dpo.py`, `reward.py`): `main(script_args, training_args, model_args, dataset_args)`
  building its trainer as `DPOTrainer` / `RewardTrainer`, looked up where `trl_robust.scripts.training` installs ours.
- accelerate's private `_validate_launch_command(args) -> (args, defaults, mp_from_config_flag)`, which
  `trl-robust dpo|reward` runs before launching (`trl_robust.cli.launcher.check_launch`).
"""

import ast
import inspect
import textwrap
from pathlib import Path

from .loss_loop import Shape, source_lines
from .private_names import shorten

SCRIPT_ARGUMENTS = ("script_args", "training_args", "model_args", "dataset_args")  # what TRL's scripts' `main` takes


# --- TRL's scripts ---------------------------------------------------------------------------------------------------


def script_problems_in(tree: ast.Module, script: str, trainer_name: str) -> list[str]:
    """TRL's script `main` takes the four dataclasses positionally and builds its trainer as `trainer_name`, bound in
    `main` by `from trl import <trainer_name>` (TRL >= 1.0) or at module level (TRL < 1.0), or read as
    `trl.<trainer_name>`: the places where `trl_robust.scripts.training` installs the robust trainer."""
    main = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"), None)
    if main is None:
        return [f"TRL's `{script}` has no `main` function any more"]
    problems = []
    positional = [*main.args.posonlyargs, *main.args.args]
    required = len(positional) - len(main.args.defaults)
    required_keywords = [a.arg for a, d in zip(main.args.kwonlyargs, main.args.kw_defaults) if d is None]
    keywords = ["*", *required_keywords] if required_keywords else []
    too_few = len(positional) < len(SCRIPT_ARGUMENTS) and not main.args.vararg
    if too_few or required > len(SCRIPT_ARGUMENTS) or required_keywords:
        problems.append(
            f"TRL's `{script}` `main` now takes ({', '.join([a.arg for a in positional] + keywords)}), "
            f"not ({', '.join(SCRIPT_ARGUMENTS)})"
        )
    calls = [n for n in ast.walk(main) if isinstance(n, ast.Call)]
    if any(ast.unparse(c.func) == f"trl.{trainer_name}" for c in calls):
        return problems
    if not any(getattr(c.func, "id", None) == trainer_name for c in calls):
        return problems + [f"TRL's `{script}` `main` no longer builds its trainer as `{trainer_name}(...)`"]
    def binds(node) -> bool:
        return isinstance(node, ast.ImportFrom) and trainer_name in {a.asname or a.name for a in node.names}

    bound_in_main = [n for n in ast.walk(main) if binds(n)]
    bound_in_module = [n for n in tree.body if binds(n)]
    if bound_in_main:
        if any(n.module != "trl" or n.level for n in bound_in_main):
            where = ", ".join(f"`from {'.' * n.level}{n.module or ''} import ...`" for n in bound_in_main)
            problems.append(
                f"TRL's `{script}` `main` now imports `{trainer_name}` by {where}, not from `trl`, where trl-robust "
                "installs its trainer"
            )
    elif not bound_in_module:
        problems.append(f"TRL's `{script}` no longer binds `{trainer_name}` by an import trl-robust can replace")
    return problems


def script_path(command: str) -> Path:
    """TRL's `trl/scripts/<command>.py`, found without importing it (trl < 1.0 binds its trainer at import)."""
    import trl

    return Path(trl.__file__).parent / "scripts" / f"{command}.py"


def script_problems(command: str, trainer_name: str) -> list[str]:
    path = script_path(command)
    try:
        tree = ast.parse(path.read_text())
    except OSError as error:
        return [f"TRL's script `trl/scripts/{command}.py` cannot be read ({error})"]
    return script_problems_in(tree, f"trl/scripts/{command}.py", trainer_name)


# --- accelerate ------------------------------------------------------------------------------------------------------


def launch_validator_problems_in(function) -> list[str]:
    """accelerate's `_validate_launch_command(args)` returning `(args, defaults, mp_from_config_flag)`."""
    what = "`accelerate.commands.launch._validate_launch_command`"
    try:
        parameters = list(inspect.signature(function).parameters.values())
        lines, _ = source_lines(function, what)
    except (Shape, TypeError, ValueError) as problem:
        return [f"{what} cannot be inspected ({problem})"]
    problems = []
    kinds = inspect.Parameter
    variadic, positional = (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD), (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
    required = [p.name for p in parameters if p.default is p.empty and p.kind not in variadic]
    if not parameters or len(required) > 1 or parameters[0].kind not in positional:
        problems.append(f"{what} now takes ({', '.join(map(str, parameters))}), not (args)")
    tree = ast.parse(textwrap.dedent("".join(lines)))
    returns = [n for n in ast.walk(tree.body[0]) if isinstance(n, ast.Return)]
    shapes = {len(n.value.elts) if isinstance(n.value, ast.Tuple) else None for n in returns}
    if shapes != {3}:
        found = ", ".join(f"`{shorten(n)}`" for n in returns) or "nothing"
        problems.append(f"{what} now returns {found}, not (args, defaults, mp_from_config_flag)")
    return problems
