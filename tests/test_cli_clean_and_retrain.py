"""`recipes/clean_and_retrain.sh` as the README runs it: from a checkout set up by `make test` / `make demo`, whose
virtualenv is not activated. A stand-in `trl-robust` records its calls, so these tests take a second; the real three
steps run in `test_audit.py`."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "recipes" / "clean_and_retrain.sh"
SYSTEM_PATH = "/usr/bin:/bin"  # bash and coreutils, no virtualenv


def checkout(tmp_path: Path, with_venv: bool = True) -> tuple[Path, Path]:
    """A copy of the script in `recipes/` of a fake checkout, with a `.venv/bin/trl-robust` that logs its calls."""
    root = tmp_path / "checkout"
    (root / "recipes").mkdir(parents=True)
    shutil.copy(SCRIPT, root / "recipes" / SCRIPT.name)
    calls = tmp_path / "calls.log"
    if with_venv:
        stand_in = root / ".venv" / "bin" / "trl-robust"
        stand_in.parent.mkdir(parents=True)
        stand_in.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n')
        stand_in.chmod(0o755)
    return root, calls


def run_script(root: Path, tmp_path: Path, **settings) -> subprocess.CompletedProcess:
    assert shutil.which("trl-robust", path=SYSTEM_PATH) is None, "trl-robust is installed system-wide here"
    env = {"HOME": os.environ.get("HOME", str(tmp_path)), "PATH": SYSTEM_PATH, "OUT": str(tmp_path / "run"), **settings}
    # `bash recipes/clean_and_retrain.sh` from the checkout's root, as the README writes it.
    return subprocess.run(["bash", "recipes/clean_and_retrain.sh"], capture_output=True, text=True, env=env,
                          cwd=root, timeout=60)


def test_the_script_finds_the_checkouts_virtualenv_when_trl_robust_is_not_on_path(tmp_path):
    root, calls = checkout(tmp_path)
    result = run_script(root, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    commands = [line.split()[0] for line in calls.read_text().splitlines()]
    assert commands == ["dpo", "audit", "dpo"]  # train, audit, retrain, all with the checkout's command
    # The default run says, before and after, that it is a smoke test whose audit is near chance.
    assert result.stdout.count("smoke test of the workflow") == 2
    assert "near chance (AUROC about 0.5)" in result.stdout


def test_a_run_on_your_own_model_and_data_is_not_called_a_smoke_test(tmp_path):
    root, calls = checkout(tmp_path)
    result = run_script(root, tmp_path, MODEL=str(tmp_path / "my-model"), DATA=str(tmp_path / "my-data"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(calls.read_text().splitlines()) == 3
    assert "smoke test" not in result.stdout


@pytest.mark.parametrize("settings", [{}, {"TRL_ROBUST": "/nowhere/trl-robust"}])
def test_without_trl_robust_the_script_says_how_to_get_it_and_writes_nothing(tmp_path, settings):
    root, _ = checkout(tmp_path, with_venv=False)
    result = run_script(root, tmp_path, **settings)
    assert result.returncode == 127
    if settings:
        assert "TRL_ROBUST=/nowhere/trl-robust is not a command" in result.stderr
    else:
        assert "trl-robust not found on PATH nor in" in result.stderr and "`make test`" in result.stderr
    assert not (tmp_path / "run").exists()
