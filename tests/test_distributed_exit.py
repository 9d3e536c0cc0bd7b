"""How a two-process run ends: every rank exits 0, the atexit handlers of the training processes run, and an offline
experiment tracker's files are complete."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from .conftest import STANDALONE_RENDEZVOUS

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# Loaded by every Python process started with this directory on PYTHONPATH: in a training rank (RANK is set by the
# launcher) it registers an atexit handler that leaves a file behind, as a tracker's upload-on-exit would.
SITECUSTOMIZE = textwrap.dedent("""
    import atexit, os
    if "RANK" in os.environ:
        marker = os.path.join(os.environ["EXIT_MARKERS"], "atexit-rank" + os.environ["RANK"])
        atexit.register(lambda: open(marker, "w").write("ran"))
""")


def test_a_two_process_run_runs_atexit_handlers_and_leaves_complete_tracker_files(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    markers = tmp_path / "markers"
    markers.mkdir()
    recipe = {
        **yaml.safe_load((REPO / "recipes" / "tiny_offline.yaml").read_text()),
        "output_dir": str(tmp_path / "out"),
        "num_processes": 2,
        "multi_gpu": True,  # two gloo ranks on a machine without GPUs
        "report_to": "tensorboard",
        "logging_steps": 1,
        "max_steps": 4,
        "eval_strategy": "no",
        "save_strategy": "no",
    }
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TRL_ROBUST_CACHE": str(tmp_path / "builtin-cache"),
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        "EXIT_MARKERS": str(markers),
        **STANDALONE_RENDEZVOUS,
    }
    argv = ["dpo", "--config", str(config)]
    result = subprocess.run(
        [str(BIN / "trl-robust"), *argv], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]  # a rank hanging at exit times out
    assert sorted(p.name for p in markers.iterdir()) == ["atexit-rank0", "atexit-rank1"]
    # The tracker (rank 0's TensorBoard writer) flushed every logged step before the process left.
    (events,) = list(tmp_path.rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events.parent))
    accumulator.Reload()
    assert [event.step for event in accumulator.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [event.step for event in accumulator.Scalars("train/ropo/grad_weight")] == [1, 2, 3, 4]
