"""The README's examples run as written."""

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def example(name: str) -> str:
    """The Python block that follows `<!-- example: name -->` in the README."""
    match = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", README.read_text(), re.S)
    assert match, f"README has no example {name!r}"
    return match.group(1)


def test_the_add_your_own_loss_example_registers_trains_and_prints_its_hand_computed_weight(tmp_path):
    # A fresh interpreter in an empty directory, as a reader would run it: nothing registered beforehand.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", example("add-your-own-loss")], cwd=tmp_path, capture_output=True, text=True, env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    # z = 0 at the first step (policy = reference): w = scale · (1 − tanh²(0)) = 2 with the registered default scale.
    assert float(result.stdout.strip().splitlines()[-1]) == 2.0


def test_the_quickstart_runs_offline_as_written(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRL_ROBUST_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-c", example("quickstart")], cwd=tmp_path, capture_output=True, text=True, env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    # It trained the 4 steps it asked for: 4 × 8 pairs (TRL's default per-device batch) = half of the 64 pairs.
    (summary,) = [line for line in result.stdout.splitlines() if "train_runtime" in line]
    assert "'epoch': '0.5'" in summary, summary
