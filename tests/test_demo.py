"""`trl-robust demo`: its arguments, what it prints (the table and the sentences that say whether a difference is
larger than its spread, from records worked out by hand), and one real run through the console script."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trl_robust.experiments import demo
from trl_robust.experiments.demo import DemoArguments, compare_with_baseline, comparison_table, run_demo

BIN = Path(sys.executable).parent  # the console scripts of the environment running the tests


def record(method, seed, clean, noisy, estimated=None):
    """A run's record as `run_job` returns it, with only what the demo reads."""
    return {"method": method, "noise": "symmetric", "flip_rate": 0.4, "seed": seed, "clean_accuracy": clean,
            "noisy_val_accuracy": noisy, "estimated_flip_rate": estimated or [None] * len(clean)}


# Three seeds, three epochs. DPO is early-stopped at its best *noisy* validation epoch: seed 0 at epoch 2 (70%),
# seed 1 at epoch 1 (62%), seed 2 at epoch 3 (69%).
HAND_RECORDS = [
    record("DPO", 0, [0.60, 0.70, 0.65], [0.50, 0.55, 0.52]),
    record("DPO", 1, [0.62, 0.68, 0.66], [0.58, 0.50, 0.51]),
    record("DPO", 2, [0.64, 0.66, 0.69], [0.50, 0.52, 0.56]),
    record("ROPO", 0, [0.60, 0.70, 0.75], [0.5, 0.5, 0.5]),
    record("ROPO", 1, [0.60, 0.65, 0.70], [0.5, 0.5, 0.5]),
    record("ROPO", 2, [0.60, 0.70, 0.76], [0.5, 0.5, 0.5]),
    record("ROPO auto", 0, [0.60, 0.65, 0.70], [0.5, 0.5, 0.5], [None, 0.30, 0.38]),
    record("ROPO auto", 1, [0.60, 0.62, 0.60], [0.5, 0.5, 0.5], [None, 0.30, 0.40]),
    record("ROPO auto", 2, [0.60, 0.65, 0.70], [0.5, 0.5, 0.5], [None, 0.30, 0.45]),
]


def test_the_table_has_dpo_at_its_last_epoch_and_each_paired_difference_with_its_spread():
    table = comparison_table(HAND_RECORDS, flip_rate=0.4)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    # DPO early-stopped: 70, 62, 69 -> mean 67.0, deviations 3, -5, 2 -> sd sqrt(38/2) = 4.36
    assert rows["DPO, early-stopped"] == "| DPO, early-stopped | 67.0 ± 4.4% | – | – |"
    # DPO last epoch: 65, 66, 69 -> 66.67, sd sqrt(26/3 / 2) = 2.08;
    # paired -5, +4, 0 -> -0.33, sd sqrt(122/3 / 2) = 4.51
    assert rows["DPO, last epoch"] == "| DPO, last epoch | 66.7 ± 2.1% | -0.3 ± 4.5 pts | – |"
    # ROPO: 75, 70, 76 -> 73.67, sd sqrt(62/3 / 2) = 3.21; paired 5, 8, 7 -> +6.67, sd sqrt(14/3 / 2) = 1.53
    assert rows["ROPO, last epoch"] == "| ROPO, last epoch | 73.7 ± 3.2% | +6.7 ± 1.5 pts | – |"
    # ROPO auto: 70, 60, 70 -> 66.67, sd 5.77; paired 0, -2, +1 -> -0.33, sd 1.53; estimates 38, 40, 45% -> 41%
    assert rows["ROPO auto, last epoch"] == "| ROPO auto, last epoch | 66.7 ± 5.8% | -0.3 ± 1.5 pts | 41% (true 40%) |"
    sentences = table.split("Against DPO early-stopped, paired by seed:\n")[1].splitlines()
    # 2 standard errors: 2 · 4.51 / sqrt(3) = 5.2 > 0.3; 2 · 1.53 / sqrt(3) = 1.8 < 6.7
    assert sentences == [
        "- DPO at its last epoch: -0.3 pts, not distinguishable from DPO early-stopped over 3 seeds (the mean is "
        "smaller than 2 standard errors, 5.2 pts; higher in 1 of 3 seeds).",
        "- ROPO at its last epoch: +6.7 pts, higher than DPO early-stopped over 3 seeds (the mean is at least 2 "
        "standard errors, 1.8 pts; higher in 3 of 3 seeds).",
        "- ROPO auto at its last epoch: -0.3 pts, not distinguishable from DPO early-stopped over 3 seeds (the mean "
        "is smaller than 2 standard errors, 1.8 pts; higher in 1 of 3 seeds).",
    ]


def test_a_difference_smaller_than_its_spread_is_never_a_bare_headline():
    # The first hour's run: +2.9 ± 3.7 over 3 seeds; 2 standard errors = 2 · 3.7 / sqrt(3) = 4.3 > 2.9.
    assert "not distinguishable from DPO early-stopped over 3 seeds" in compare_with_baseline([7.1, 1.7, -0.1])
    # -3, -4, -5: mean -4, sd 1, 2 standard errors 1.15: a real difference, downwards.
    assert compare_with_baseline([-3.0, -4.0, -5.0]).startswith(
        "-4.0 pts, lower than DPO early-stopped over 3 seeds (the mean is at least 2 standard errors, 1.2 pts; higher "
        "in 0 of 3 seeds)")
    assert "not distinguishable" in compare_with_baseline([0.0, 0.0, 0.0])  # no spread and no difference
    assert "one seed, which cannot tell a difference from noise" in compare_with_baseline([9.0])


def test_the_demo_says_what_it_will_do_before_training_and_prints_the_table(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_grid(jobs, root, workers, results_file):
        calls.append(capsys.readouterr().out)  # what was on screen when training began
        assert sorted((j.method, j.seed, j.flip_rate, j.setting.epochs) for j in jobs) == sorted(
            (m, s, 0.4, 3) for m in ("DPO", "ROPO", "ROPO auto") for s in (0, 1, 2))
        return [dict(r) for r in HAND_RECORDS]

    monkeypatch.setattr(demo, "run_grid", fake_grid)
    run_demo(DemoArguments(output_dir=str(tmp_path / "demo"), epochs=3, seeds=3))
    (before_training,) = calls
    assert "Training DPO, ROPO, ROPO auto on the synthetic task with 40% of the labels flipped, 3 seeds × 3 epochs" \
        in before_training
    assert "then 9 training runs" in before_training
    printed = capsys.readouterr().out
    assert comparison_table(HAND_RECORDS, 0.4) in printed
    assert (tmp_path / "demo" / "training_curves.png").stat().st_size > 10_000
    written = [json.loads(line) for line in (tmp_path / "demo" / "results.jsonl").read_text().splitlines()]
    assert sorted((r["method"], r["seed"]) for r in written) == sorted((r["method"], r["seed"]) for r in HAND_RECORDS)


def test_demo_help_names_the_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: trl-robust demo ")


def test_demo_parses_its_flags_without_importing_transformers(monkeypatch, capsys):
    # Importing transformers takes seconds; the demo's help, its errors and its first line must not wait for it.
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--help"])
    assert exit_info.value.code == 0 and "--flip_rate FLIP_RATE" in capsys.readouterr().out


@pytest.mark.parametrize("argument, message", [
    (["--flip_rate", "1.5"], "--flip_rate must be in [0, 1), got 1.5"),
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--seeds", "0"], "--seeds must be at least 1, got 0"),
])
def test_demo_refuses_a_bad_argument_before_writing_anything(tmp_path, capsys, argument, message):
    out = tmp_path / "d"
    with pytest.raises(SystemExit) as exit_info:
        demo.main([*argument, "--output_dir", str(out)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"trl-robust demo: error: {message}\n"  # one line, no traceback
    assert not out.exists()


def test_demo_command_trains_shows_progress_prints_the_table_and_writes_a_plot(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache")}
    result = subprocess.run(
        [str(BIN / "trl-robust"), "demo", "--epochs", "2", "--seeds", "2", "--output_dir", str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.startswith("Training DPO, ROPO, ROPO auto on the synthetic task with 40% of the labels "
                                    "flipped, 2 seeds × 2 epochs")
    for row in ("DPO, early-stopped", "DPO, last epoch", "ROPO, last epoch", "ROPO auto, last epoch"):
        assert f"| {row} |" in result.stdout
    (auto_row,) = [line for line in result.stdout.splitlines() if line.startswith("| ROPO auto, last epoch |")]
    assert "(true 40%)" in auto_row  # the auto mode's estimate, made at the start of epoch 2, beside the true rate
    assert "- ROPO auto at its last epoch: " in result.stdout and " over 2 seeds (the mean is " in result.stdout
    # Progress that moves within a task and within a run: the tasks' fitting steps (2 seeds × (300 + 100) units, not
    # only 400 at a time as each task ends), then the epochs of the 6 runs (12 in all), not the runs.
    shown = {bar: re.findall(rf"{bar}: +\d+%\|[^|]*\| (\d+)/(\d+) ", result.stderr)
             for bar in (r"building the task \(reference policy, clean pairs\)", "training")}
    tasks, epochs = ([(int(done), int(total)) for done, total in bar] for bar in shown.values())
    assert tasks[-1] == (800, 800) and any(done % 400 for done, _ in tasks), tasks
    assert epochs[-1] == (12, 12) and {total for _, total in epochs} == {12}, epochs
    assert "6/6 runs done" in result.stderr
    assert (out / "training_curves.png").stat().st_size > 10_000
    # Quiet: the progress bars, nothing from the workers' datasets, weights or third-party deprecations.
    output = result.stdout + result.stderr
    for noise in ("Tokenizing", "Loading weights", "Flipping", "FutureWarning", "leaked semaphore"):
        assert noise not in output, noise
