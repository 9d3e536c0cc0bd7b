"""The package's rooms: every module imports alone, no import cycles, each layer imports only the layers below it,
and training never imports matplotlib."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path


PACKAGE = Path(__file__).resolve().parent.parent / "trl_robust"

# Lowest first. A module may import its own layer (without a cycle) and the layers below, never one above.
LAYERS = {
    "core": ["builtin", "checkpoint_files", "compat", "config", "data", "dataset_checks", "filter", "losses", "optional", "paths", "registry", "tiny",
             "noise"],
    # `reward` beside `integration`: the reward trainer is glue between TRL's RewardTrainer and the core, and
    # `integration.patching` rebinds TRL's reward classes to it.
    "integration": ["integration", "reward"],
    "public API": ["__init__"],  # `trl_robust` itself: re-exports only
    "audit": ["audit"],
    "experiments": ["experiments"],
    "commands": ["cli", "scripts", "__main__"],
}


def module_names() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def layer_of(module: str) -> int:
    first = module.split(".")[1] if "." in module else "__init__"
    for rank, (_, members) in enumerate(LAYERS.items()):
        if first in members:
            return rank
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def imports_of(module: str) -> set[str]:
    """Every trl_robust module `module` imports, at module level or inside functions."""
    parts = module.split(".")
    path = PACKAGE.parent.joinpath(*parts)
    is_package = path.is_dir()
    source = (path / "__init__.py") if is_package else path.with_suffix(".py")
    package = parts if is_package else parts[:-1]
    found = set()
    known = set(module_names())
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            prefix = ".".join([*base, *(node.module.split(".") if node.module else [])])
            # `from package import submodule` imports the submodule; `from module import name`, the module.
            targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in known else prefix for a in node.names]
        else:
            continue
        # A module's own packages are always imported before it: not a dependency of its own choosing.
        found |= {t for t in targets if t in known and t != module and not module.startswith(t + ".")}
    return found


def test_every_module_belongs_to_a_layer_and_imports_no_layer_above_its_own():
    wrong = [
        f"{module} imports {target}"
        for module in module_names()
        for target in imports_of(module)
        if layer_of(target) > layer_of(module)
    ]
    assert not wrong, wrong


def test_there_is_no_import_cycle():
    graph = {module: imports_of(module) for module in module_names()}
    # A package's __init__ re-exporting its children is not a cycle of concerns: drop parent -> child edges.
    graph = {m: {t for t in targets if not t.startswith(m + ".")} for m, targets in graph.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for target in graph[node]:
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_each_module_imports_alone():
    # One interpreter, each trl_robust module imported first with none of the package loaded (third-party packages
    # stay loaded, so this is fast): an import that only works after another module was imported fails here.
    modules = [m for m in module_names() if not m.endswith("__main__")]
    code = f"""
import importlib, sys, traceback
failed = []
for module in {modules!r}:
    for loaded in [m for m in sys.modules if m == "trl_robust" or m.startswith("trl_robust.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(module)
    except Exception:
        failed.append(module + ": " + traceback.format_exc(limit=3))
print("\\n".join(failed) or "all imported")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout.strip() == "all imported", result.stdout + result.stderr


def test_training_never_imports_matplotlib(tmp_path):
    code = f"""
import sys
from datasets import Dataset
from trl_robust import RobustDPOConfig, RobustDPOTrainer
from trl_robust.tiny import make_tiny_model, tiny_preference_records
model = make_tiny_model({str(tmp_path / 'model')!r})
args = RobustDPOConfig(output_dir={str(tmp_path / 'out')!r}, use_cpu=True, report_to="none", save_strategy="no",
                       bf16=False, max_steps=1, per_device_train_batch_size=4, loss_type="ropo", disable_tqdm=True)
RobustDPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(tiny_preference_records(8))).train()
assert "matplotlib" not in sys.modules, "training imported matplotlib"
print("trained")
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0 and "trained" in result.stdout, result.stderr


MAX_LINES = 400  # beyond this a module usually holds two concerns


def test_a_module_over_400_lines_says_why_in_its_docstring():
    """A long module is split, or its docstring says why it stays whole ("About 410 lines: ...", "Over 400 lines
    on purpose: ...")."""
    roots = [PACKAGE, PACKAGE.parent / "benchmarks"]
    unexplained = []
    for path in sorted(p for root in roots for p in root.rglob("*.py")):
        n_lines = len(path.read_text().splitlines())
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        if n_lines > MAX_LINES and not re.search(r"(?i)\b(about|over) \d{3} lines\b", docstring):
            unexplained.append(f"{path.relative_to(PACKAGE.parent)} ({n_lines} lines)")
    assert not unexplained, f"split these, or say in their docstrings why they stay whole: {unexplained}"
