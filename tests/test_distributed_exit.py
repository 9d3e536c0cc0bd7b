"""How a two-process run ends: every rank exits 0, the atexit handlers of the training processes run, and an offline
experiment tracker's files are complete; and how it is ended: a rank dies with its launcher, even one killed by
SIGKILL."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
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


def rank_processes(parent: int) -> list[int]:
    """The processes whose parent is `parent` and that run a training module (the ranks the elastic agent started)."""
    ranks = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and "trl_robust.scripts.dpo" in command:
            ranks.append(int(entry.name))
    return ranks


def running(pid: int) -> bool:
    """Alive and not a zombie (a dead rank waits as one until whoever adopted it reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the ranks learn of their launcher's death on Linux")
def test_the_ranks_die_with_a_command_killed_by_sigkill(tmp_path):
    # torch's elastic agent runs inside the `trl-robust` process and starts each rank in a session of its own: a
    # SIGKILL to the command reached neither rank, and both went on training and writing checkpoints.
    recipe = {
        **yaml.safe_load((REPO / "recipes" / "tiny_offline.yaml").read_text()),
        "output_dir": str(tmp_path / "out"),
        "num_processes": 2,
        "multi_gpu": True,
        "max_steps": 100_000,  # still training when killed
        "eval_strategy": "no",
        "save_strategy": "steps",
        "save_steps": 1,
        "save_only_model": True,
    }
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "TRL_ROBUST_CACHE": str(tmp_path / "builtin-cache"), **STANDALONE_RENDEZVOUS}
    log = (tmp_path / "log.txt").open("w")
    command = subprocess.Popen([str(BIN / "trl-robust"), "dpo", "--config", str(config)], stdout=log,
                               stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    ranks = []
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "out" / "checkpoint-1").is_dir():  # both ranks are training
            assert command.poll() is None and time.monotonic() < deadline, (tmp_path / "log.txt").read_text()[-4000:]
            time.sleep(0.5)
        ranks = rank_processes(command.pid)
        assert len(ranks) == 2, ranks
        command.kill()
        command.wait()
        killed = time.monotonic()
        while any(running(pid) for pid in ranks) and time.monotonic() < killed + 15:
            time.sleep(0.1)
        assert not [pid for pid in ranks if running(pid)], "a rank outlived its launcher"
    finally:
        for pid in ranks:  # (before the fix: the ranks this test started must not outlive it)
            if running(pid):
                os.kill(pid, signal.SIGKILL)
        if command.poll() is None:
            command.kill()
            command.wait()
        log.close()
