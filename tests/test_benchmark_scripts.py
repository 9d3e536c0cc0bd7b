"""The benchmark scripts run end to end in their quick modes and report what they claim to measure; their harness
(`benchmarks/harness.py`, outside the installed package) computes its tables as stated."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .benchmark_modules import benchmark_module

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(path.name for path in (REPO / "benchmarks").glob("*.py") if path.name != "harness.py")


def load_harness():
    """`benchmarks/harness.py`, loaded from its file as the scripts beside it import it (it is not installed)."""
    spec = importlib.util.spec_from_file_location("harness", REPO / "benchmarks" / "harness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


harness = load_harness()


def run_benchmark(script: str, tmp_path, *args: str) -> None:
    """Run `benchmarks/<script>` with `args` and `--output_dir tmp_path`, as a user would; it must succeed."""
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args, "--output_dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]


def test_overhead_benchmark_reports_ratios_against_stock_trl(tmp_path):
    run_benchmark("overhead.py", tmp_path, "--quick", "--rounds", "1")
    dpo_table, reward_table = (tmp_path / "overhead.md").read_text().split("## Reward models")
    rows = [line for line in dpo_table.splitlines() if line.startswith("| tiny")]
    assert [row.split("|")[2:4] for row in rows] == [
        [" stock TRL ", " `sigmoid` "], [" trl-robust ", " `sigmoid` "], [" trl-robust ", " `ropo` "],
        [" trl-robust ", " `sympo_sigmoid` "], [" trl-robust ", " `sympo_ramp` "],
        [" trl-robust ", " `ropo` + filter (ρ 0.2, per step) "], [" trl-robust ", " `ropo` + `ropo_filter_ratio: auto` "],
    ]
    # Only `auto` estimates: its estimator's time per epoch, as a share of an epoch, is a positive number.
    shares = [row.split("|")[8].strip() for row in rows]
    assert shares[:-1] == ["–"] * (len(rows) - 1) and float(shares[-1]) > 0
    cells = [[cell.strip() for cell in row.split("|")[4:8]] for row in rows]
    stock_speed, _, stock_memory, _ = map(float, cells[0])
    for speed, speed_ratio, memory, memory_ratio in (map(float, row) for row in cells):
        # Each ratio is its row's measurement over stock TRL's from the same run (no claim about how fast: that is
        # the benchmark's to report, not a test's).
        assert speed > 0 and memory > 0
        assert speed_ratio == pytest.approx(speed / stock_speed, abs=6e-3)
        assert memory_ratio == pytest.approx(memory / stock_memory, abs=6e-3)
    # Reward models, against stock RewardTrainer measured in the same run.
    rows = [[cell.strip() for cell in line.split("|")[2:8]] for line in reward_table.splitlines() if line.startswith("| tiny")]
    assert [row[:2] for row in rows] == [["stock TRL", "`bradley_terry`"], ["trl-robust", "`bradley_terry`"],
                                         ["trl-robust", "`sympo_sigmoid`"], ["trl-robust", "`ropo`"],
                                         ["trl-robust", "`bradley_terry` + `ropo_filter_ratio: auto`"]]
    stock_speed = float(rows[0][2])
    for row in rows:
        assert float(row[3]) == pytest.approx(float(row[2]) / stock_speed, abs=6e-3)


def test_noise_benchmark_reports_every_method_family_and_the_audit(tmp_path):
    run_benchmark("noise_robustness.py", tmp_path, "--quick")
    report = (tmp_path / "noise_robustness.md").read_text()
    records = [json.loads(line) for line in (tmp_path / "noise_robustness.jsonl").read_text().splitlines()]
    # The quick grid: DPO, ROPO, ROPO with the epoch filter, and DPO retrained on the ROPO audit's cleaned data.
    methods = {"DPO", "ROPO", "ROPO + epoch filter (correct)", "Audit-clean-retrain (DPO)"}
    assert {(r["method"], r["flip_rate"]) for r in records} == {(m, rate) for m in methods for rate in (0.0, 0.4)}
    for record in records:  # one value per epoch
        assert len(record["clean_accuracy"]) == len(record["noisy_val_accuracy"]) == len(record["reward_gain"]) == 3
        assert all(0.0 <= accuracy <= 1.0 for accuracy in record["clean_accuracy"])
    retrained = [r for r in records if r["method"] == "Audit-clean-retrain (DPO)"]
    assert all(r["drop_rows"] == 60 for r in retrained)  # 20% of the 300 training pairs
    audited = {r["method"]: r for r in records if r["flip_rate"] == 0.4 and "audit_auroc" in r}
    assert sorted(audited) == ["DPO", "ROPO"] and all(0 <= r["audit_auroc"] <= 1 for r in audited.values())
    filtered = next(r for r in records if r["method"] == "ROPO + epoch filter (correct)" and r["flip_rate"] == 0.4)
    assert filtered["filter_precision"][0] is None and 0 <= filtered["filter_precision"][-1] <= 1  # after warm-up
    for section in ("Share of the noise gap recovered", "Difference from early-stopped DPO on the same seed",
                    "Noisy-pair audit of the final policies"):
        assert f"## {section}" in report
    audit_section = report.split("## Noisy-pair audit of the final policies")[1].split("\n## ")[0]
    (audit_row,) = [line for line in audit_section.splitlines() if line.startswith("| ROPO | ")]
    assert 0 <= float(audit_row.split("|")[2].split("±")[0]) <= 1
    assert (tmp_path / "noise_robustness.png").stat().st_size > 10_000


def test_the_auto_benchmark_compares_the_one_flag_with_dpo_and_the_oracle(tmp_path):
    run_benchmark("noise_auto.py", tmp_path, "--quick")
    records = [json.loads(line) for line in (tmp_path / "noise_auto.jsonl").read_text().splitlines()]
    cells = {(r["method"], r["flip_rate"]) for r in records}
    assert cells == {("ROPO auto", 0.0), ("ROPO auto", 0.4), ("DPO", 0.0), ("DPO", 0.4),
                     ("Oracle (DPO on unflipped pairs)", 0.4), ("ROPO auto (correct)", 0.4)}
    oracle = next(r for r in records if r["method"].startswith("Oracle"))
    assert oracle["drop_rows"] == 120  # the 40% of the 300 training pairs that were flipped, and only those
    one_flag = next(r for r in records if r["method"] == "ROPO auto" and r["flip_rate"] == 0.4)
    # Estimated from the second epoch on, from the first epoch's margins; the reward gain only after the last epoch.
    assert one_flag["estimated_flip_rate"][0] is None and all(0 <= e < 0.5 for e in one_flag["estimated_flip_rate"][1:])
    assert math.isnan(one_flag["reward_gain"][0]) and math.isfinite(one_flag["reward_gain"][-1])
    report = (tmp_path / "noise_auto.md").read_text()
    assert "### The estimate ε̂" in report and "### Quality" in report
    (row,) = [line for line in report.splitlines() if line.startswith("| 40% | ") and "gap recovered" not in line
              and line.count("|") == 9]
    assert row.split("|")[6].strip() != "–"  # the oracle's accuracy is reported
    # The variant against the auto mode, paired by seed: its last-epoch accuracy minus auto's, from the records.
    (variant_row,) = [line for line in report.splitlines() if "| ROPO auto (correct) |" in line]
    by_method = {r["method"]: r for r in records if r["flip_rate"] == 0.4}
    expected = 100 * (by_method["ROPO auto (correct)"]["clean_accuracy"][-1] - one_flag["clean_accuracy"][-1])
    assert variant_row.split("|")[5].strip() == f"{expected:+.1f} ± 0.0"


def test_the_reward_benchmark_compares_bradley_terry_with_the_symmetric_losses(tmp_path):
    run_benchmark("reward_noise.py", tmp_path, "--quick")
    records = [json.loads(line) for line in (tmp_path / "reward_noise.jsonl").read_text().splitlines()]
    methods = ("Bradley–Terry", "SymPO-sigmoid", "SymPO-ramp", "SymPO-unhinged", "Bradley–Terry + auto filter",
               "ROPO + auto filter", "Bradley–Terry on the unflipped pairs (oracle)")
    assert sorted((r["method"], r["flip_rate"]) for r in records) == sorted((m, rate) for m in methods for rate in (0.0, 0.4))
    for record in records:
        # The auto filter decides once in 2 epochs, at the start of the second; the other methods have no filter log.
        assert len(record["estimated_flip_rate"]) == (1 if "auto filter" in record["method"] else 0)
    for record in records:
        # One value per epoch (2 in the quick mode) of each curve: the clean and noisy splits told apart.
        assert len(record["clean_accuracy"]) == len(record["noisy_val_accuracy"]) == len(record["spearman"]) == 2
        assert all(0 <= a <= 1 for a in record["clean_accuracy"] + record["noisy_val_accuracy"])
        assert all(-1 <= rho <= 1 for rho in record["spearman"])
    # The clean split has no flips and the noisy one 40%: their accuracies differ in some epoch of some noisy run.
    noisy = [r for r in records if r["flip_rate"] == 0.4]
    assert any(r["clean_accuracy"] != r["noisy_val_accuracy"] for r in noisy)
    report = (tmp_path / "reward_noise.md").read_text()
    assert "## 0% symmetric flips" in report and "## 40% symmetric flips" in report
    assert "| Bradley–Terry on the unflipped pairs (oracle), last epoch |" in report
    rows = [line for line in report.splitlines() if line.startswith("| SymPO-sigmoid, last epoch |")]
    assert len(rows) == 2
    # The row's accuracy is that run's last-epoch clean accuracy, in points; the paired difference against BT early-stopped.
    sympo = next(r for r in records if r["method"] == "SymPO-sigmoid" and r["flip_rate"] == 0.4)
    bt = next(r for r in records if r["method"] == "Bradley–Terry" and r["flip_rate"] == 0.4)
    stop = max(range(2), key=lambda i: (bt["noisy_val_accuracy"][i], -i))
    cells = [cell.strip() for cell in rows[1].split("|")]
    assert cells[2] == f"{100 * sympo['clean_accuracy'][-1]:.1f} ± 0.0"
    assert cells[4] == f"{100 * (sympo['clean_accuracy'][-1] - bt['clean_accuracy'][stop]):+.1f} ± 0.0"
    # Best-of-n: the seed's candidates are cached beside its task; the two references recomputed from them by hand.
    (candidates_file,) = (tmp_path / "work" / "tasks").glob("*seed0/best_of_n.json")
    candidates = json.loads(candidates_file.read_text())
    rewards = candidates["true_rewards"]
    assert len(rewards) == len(candidates["prompts"]) == 20 and {len(r) for r in rewards} == {16}
    for n in (4, 16):
        by_hand = np.mean([max(r[i : i + n]) for r in rewards for i in range(0, 16, n)])
        assert all(math.isclose(record["best_of_n_true_pick"][str(n)], by_hand) for record in records)
        # No reward model's pick beats picking by the true reward; each has one value per epoch.
        assert all(len(record["best_of_n"][str(n)]) == 2 and max(record["best_of_n"][str(n)]) <= by_hand + 1e-12
                   for record in records)
    assert all(math.isclose(record["best_of_n_reference"], np.mean(rewards)) for record in records)
    (row,) = [line for line in report.splitlines() if line.startswith("| 40% symmetric | SymPO-sigmoid, last epoch |")]
    cells = [cell.strip() for cell in row.split("|")]
    pick, reference = sympo["best_of_n"]["16"][-1], sympo["best_of_n_reference"]
    assert cells[5] == f"{pick:.3f} ± 0.000"
    assert cells[6] == f"{(pick - reference) / (sympo['best_of_n_true_pick']['16'] - reference):.2f} ± 0.00"
    assert cells[7] == f"{pick - bt['best_of_n']['16'][stop]:+.3f} ± 0.000"
    # Resumable: a second call reuses every result and only rewrites the report.
    run_benchmark("reward_noise.py", tmp_path, "--quick")
    assert len((tmp_path / "reward_noise.jsonl").read_text().splitlines()) == len(records)


def test_best_of_n_picks_the_top_score_of_each_disjoint_group():
    with benchmark_module("reward_noise") as module:
        best_of_n = module.best_of_n
    # Groups of 2: (3, 1) picks 0.1, (2, 0) picks 0.5; a group of 4 picks the top score's 0.1; a tie picks the first.
    assert math.isclose(best_of_n([[3, 1, 2, 0]], [[0.1, 0.9, 0.5, 0.2]], 2), 0.3)
    assert math.isclose(best_of_n([[3, 1, 2, 0]], [[0.1, 0.9, 0.5, 0.2]], 4), 0.1)
    assert math.isclose(best_of_n([[1, 1], [0, 5]], [[0.2, 0.8], [1.0, -1.0]], 2), (0.2 - 1.0) / 2)


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_script_finds_its_imports_when_run_from_the_checkout(script, tmp_path):
    # `python benchmarks/<script>.py --help` from another folder: the harness is found beside the script.
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--help"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert run.returncode == 0 and run.stdout.startswith("usage:"), run.stderr[-3000:]


def test_the_installed_package_has_no_benchmark_harness():
    import trl_robust.experiments

    package = Path(trl_robust.experiments.__file__).parent
    assert not (package / "noise_benchmark.py").exists()
    assert "harness" not in {path.stem for path in package.rglob("*.py")}


def result(method, rate, clean, noisy, gain, noise="symmetric", seed=0):
    return {"method": method, "noise": noise, "flip_rate": rate, "seed": seed,
            "clean_accuracy": clean, "noisy_val_accuracy": noisy, "reward_gain": gain}


def test_table_reports_mean_and_sample_std_over_seeds():
    results = [result("DPO", 0.2, [0.5, 0.6], [0.5, 0.6], [0, 0], seed=0),
               result("DPO", 0.2, [0.5, 0.8], [0.5, 0.6], [0, 0], seed=1)]
    # final accuracy 0.6 and 0.8: mean 70.0, sample std √((0.1² + 0.1²)/1) = 14.1
    table = harness.markdown_table(results, "final_accuracy")
    assert "| DPO | 70.0 ± 14.1 |" in table and "| method | 20% |" in table


def test_gap_recovered_is_measured_from_early_stopped_dpo():
    # Early-stopped accuracies (one epoch each, so the curve is the value): DPO 0.80 clean, 0.60 at 40% flips; ROPO at
    # 40%: 0.65 → (0.65 − 0.60)/(0.80 − 0.60) = +0.25; the filter at 40%: 0.55 → −0.25.
    results = [result("DPO", 0.0, [0.8], [0.8], [0]), result("DPO", 0.4, [0.6], [0.6], [0]),
               result("ROPO", 0.4, [0.65], [0.65], [0]), result("ROPO + filter (drop)", 0.4, [0.55], [0.55], [0])]
    table = harness.gap_recovered_table(results)
    assert "| method | 40% |" in table
    assert "| ROPO | +0.25 |" in table and "| ROPO + filter (drop) | -0.25 |" in table


def test_the_identification_benchmark_scores_every_pair_by_its_own_row(tmp_path):
    run_benchmark("identification.py", tmp_path, "--quick")
    (cell,) = [json.loads(line) for line in (tmp_path / "identification.jsonl").read_text().splitlines()]
    assert set(cell["signals"]) == {"DPO last", "DPO at stop", "DPO mean", "ROPO last", "ROPO mean", "out-of-fold",
                                    "clean auditor", "oracle"}
    # Which pairs are flipped, independently of the script: the same flips `trl-robust dpo --flip_rate` makes.
    from datasets import Dataset

    from trl_robust.data import flip_preferences

    task = next((tmp_path / "work" / "tasks").iterdir())
    train = json.loads((task / "pairs.json").read_text())["train"]
    flipped = np.asarray(flip_preferences(Dataset.from_list(train), 0.4, seed=0)["label_flipped"])
    # DPO's last-epoch margins, recorded by row: their AUROC for the flips, by the plain pairwise definition.
    run = json.loads((tmp_path / "work" / "cells" / f"{task.name.removesuffix('-seed0')}-0.4-0" / "dpo" /
                      "result.json").read_text())
    z = np.asarray(run["margins"][-1])
    assert len(z) == len(train) and np.isfinite(z).all()
    pos, neg = z[flipped], z[~flipped]
    pairwise = ((pos[:, None] < neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())
    assert cell["signals"]["DPO last"]["auroc"] == pytest.approx(pairwise, abs=1e-9)
    oracle = cell["signals"]["oracle"]
    assert oracle["auroc"] == 1.0 and oracle["precision_at_truth"] == 1.0 and oracle["n_dropped"] == flipped.sum()
    # The bound εa/(εa + (1−ε)(1−a)) with a = DPO's clean accuracy at its noisy-validation stop.
    a = cell["bound_accuracy"]
    assert a == cell["dpo"]["stopped"] and cell["bound"] == pytest.approx(0.4 * a / (0.4 * a + 0.6 * (1 - a)))
    report = (tmp_path / "identification.md").read_text()
    assert "## 40% symmetric flips, task `topic-200-60-60-20` (1 seed)" in report and "| clean auditor |" in report

    # The linear auditors, on the same task: DPO's baseline is the identification cell's run, not trained again.
    run_benchmark("linear_auditors.py", tmp_path, "--quick")
    (linear,) = [json.loads(line) for line in (tmp_path / "linear_auditors.jsonl").read_text().splitlines()]
    assert linear["dpo"] == cell["dpo"] and linear["labels_right_before"] == pytest.approx(1 - flipped.mean())
    assert set(linear["auditors"]) == {"bag of tokens", "true form", "true form, knows ε", "frozen embeddings",
                                       "bag of tokens, confident"}
    for auditor in linear["auditors"].values():
        assert 0 <= auditor["clean_accuracy"] <= 1 and 0 <= auditor["labels_right_after"] <= 1
        assert 0 <= auditor["noisy_val_accuracy"] <= 1 and 0 <= auditor["clean_fit_accuracy"] <= 1
        # stopped, last, stop epoch, best, noisy-validation accuracy at the stop: a DPO run on the relabelled pairs
        assert len(auditor["retrained"]) == 5
    # The noisy-validation accuracy at DPO's stop, from its recorded curve (what the guards compare with).
    assert linear["dpo"]["noisy_val"] == max(run["noisy_val_accuracy"])
    relabelled = sorted(p.name for p in (tmp_path / "work" / "cells").glob("*/relabelled-*"))
    assert relabelled == ["relabelled-bag_of_tokens", "relabelled-bag_of_tokens_confident",
                          "relabelled-frozen_embeddings", "relabelled-true_form", "relabelled-true_form_knows_ε"]
    # The confident act trained on the training pairs less round(ε̂·N) of them (its recorded margins, one per pair).
    confident = linear["auditors"]["bag of tokens, confident"]
    left_out = round(confident["estimated_flip_rate"] * len(train))
    assert 0 < left_out and confident["kept"] == (len(train) - left_out) / len(train)
    confident_run = json.loads(next((tmp_path / "work" / "cells").glob("*/relabelled-bag_of_tokens_confident"))
                               .joinpath("result.json").read_text())
    assert len(confident_run["margins"][-1]) == len(train) - left_out
    linear_report = (tmp_path / "linear_auditors.md").read_text()
    assert "| true form, knows ε |" in linear_report
    # The same bound as the identification cell's (checked by hand above), and its clean auditor's ceiling.
    assert f"with a = DPO early-stopped: {cell['bound']:.3f}." in linear_report
    gain = cell["retrains"]["clean auditor"]["stopped"] - cell["dpo"]["stopped"]
    assert f"early-stopped − DPO stopped: {100 * gain:.1f}." in linear_report
