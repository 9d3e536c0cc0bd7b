"""matplotlib is optional: `pip install trl-robust` leaves it out, an extra brings it, and what needs it (the demo's
plot, the audit's histogram) stops at once with the install command where it is missing, before any training or
scoring."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from datasets import Dataset
from packaging.requirements import Requirement

from trl_robust.optional import PLOT_EXTRAS, require_matplotlib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def names(requirements: list[str]) -> set[str]:
    return {Requirement(r).name for r in requirements}


def test_matplotlib_is_in_the_plot_extras_and_dev_not_in_the_core_dependencies():
    assert "matplotlib" not in names(PYPROJECT["dependencies"])
    extras = PYPROJECT["optional-dependencies"]
    for extra in (*PLOT_EXTRAS, "dev"):  # dev: `make test` and `make demo` install `.[dev]`
        assert "matplotlib" in names(extras[extra]), extra


@pytest.fixture
def no_matplotlib(monkeypatch):
    """matplotlib as if not installed: `import matplotlib` raises ImportError (None in sys.modules)."""
    for module in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_require_matplotlib_names_the_extra_to_install(no_matplotlib):
    with pytest.raises(ImportError, match=r"^The plot needs matplotlib, .*pip install 'trl-robust\[demo\]'"):
        require_matplotlib("The plot", extra="demo")
    with pytest.raises(KeyError, match=r"pip install 'trl-robust\[plot\]'"):
        require_matplotlib("The plot", error=KeyError)
    with pytest.raises(ValueError, match="extra must be one of"):
        require_matplotlib("The plot", extra="plots")


def test_require_matplotlib_passes_where_it_is_installed():
    require_matplotlib("The plot")  # the dev extra installs it


def test_run_demo_without_matplotlib_fails_before_training(no_matplotlib, tmp_path):
    from trl_robust.experiments.demo import DemoArguments, run_demo

    out = tmp_path / "demo"
    with pytest.raises(ImportError, match=r"pip install 'trl-robust\[demo\]'"):
        run_demo(DemoArguments(output_dir=str(out)))
    assert not out.exists()  # stopped before the output directory, the task and any training


def test_the_audit_without_matplotlib_fails_before_loading_a_model(no_matplotlib, tmp_path):
    from trl_robust.audit import AuditInputError, audit_preferences

    dataset = Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}])
    # A model path that does not exist: reaching model resolution would raise a different error.
    with pytest.raises(AuditInputError, match=r"histogram .*pip install 'trl-robust\[plot\]'"):
        audit_preferences(str(tmp_path / "no-model"), dataset, output_dir=tmp_path / "audit")
    assert not (tmp_path / "audit" / "audit.jsonl").exists()


def test_the_demo_command_without_matplotlib_says_what_to_install(tmp_path):
    # The real console script, in an interpreter where matplotlib cannot be imported (a sitecustomize blocks it).
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text("import sys\nsys.modules['matplotlib'] = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "demo"
    result = subprocess.run([str(Path(sys.executable).parent / "trl-robust"), "demo", "--output_dir", str(out)],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "pip install 'trl-robust[demo]'" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "Training" not in result.stdout and not out.exists()
