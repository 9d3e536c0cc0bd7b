"""The regime map (`benchmarks/reward_regimes.py`): its report computes what it claims from the results (recomputed
here by hand from the runs), its nested synthetic tasks share their held-out pairs, and a `--quick` run goes end to
end through both benchmarks' run functions, in this process, and resumes without training again."""

import json
import statistics

import numpy as np
import pytest

from .benchmark_modules import benchmark_module

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def regimes():
    """`benchmarks/reward_regimes.py`, with the two reward benchmarks and `harness` it imports beside it."""
    with benchmark_module("reward_regimes") as module:
        yield module


def fake(task, method, seed, clean, noisy_val, lr=1e-3, size=300, flipped=None):
    setting = ({"epochs": len(clean), "learning_rate": lr, "batch_size": 64, "labels": "deterministic",
                "train_images": size} if task == "digits" else {"n_train": size, "learning_rate": lr,
                                                                  "epochs": len(clean)})
    result = {"task": task, "method": method, "noise": "symmetric", "flip_rate": 0.4, "seed": seed,
              "clean_accuracy": clean, "noisy_val_accuracy": noisy_val, "setting": setting, "n_train": 100}
    # The synthetic runs made before the agreement was recorded: without it (their measure is the late drop).
    return result | ({"flipped_agreement": flipped or [0.5] * len(clean)} if task == "digits" else {})


def test_the_map_reports_paired_differences_late_drops_and_early_stopping_as_recomputed_by_hand(regimes):
    bt, sympo = regimes.BT, regimes.SYMPO
    results = [
        fake("synthetic", bt, 0, [0.70, 0.80, 0.60], [0.5, 0.7, 0.6]),   # stops at epoch 2 (0.80); late drop 0.20
        fake("synthetic", bt, 1, [0.60, 0.65, 0.64], [0.6, 0.6, 0.6]),   # ties: the first, epoch 1 (0.60); drop 0.01
        fake("synthetic", sympo, 0, [0.70, 0.75, 0.78], [0, 0, 0]),      # at epoch 3: +0.18 over BT, −0.02 over ES
        fake("synthetic", sympo, 1, [0.60, 0.60, 0.70], [0, 0, 0]),      # +0.06 over BT, +0.10 over ES
    ]
    text = regimes.report(results, "python benchmarks/reward_regimes.py", None)
    d3, d_es = [0.18, 0.06], [-0.02, 0.10]
    assert f"| 0.001 | 300 | {statistics.fmean([0.6, 0.64]) * 100:.1f} ± {statistics.stdev([0.6, 0.64]) * 100:.1f} |" \
        in text  # BT's clean accuracy at epoch 3 (the only epoch shown: the last)
    assert f"| 0.001 | 300 | {10.5:.1f} ± {statistics.stdev([20.0, 1.0]):.1f} |" in text  # late drop
    assert f"| 0.001 | 300 | +{12.0:.1f} ± {statistics.stdev(d3) * 100:.1f} |" in text  # paired, same epoch
    stopped, last = [0.80, 0.60], [0.78, 0.70]
    row = (f"| 0.001 | 300 | 100 | {70.0:.1f} ± {statistics.stdev(stopped) * 100:.1f} | 2 | "  # mean stop (2+1)/2
           f"{74.0:.1f} ± {statistics.stdev(last) * 100:.1f} | +{4.0:.1f} ± {statistics.stdev(d_es) * 100:.1f} | "
           f"+{12.0:.1f} ± {statistics.stdev(d3) * 100:.1f} | 3 |")  # onset: mean late drop at 3 is 10.5 points ≥ 2
    assert row in text


def test_the_late_drop_at_an_epoch_looks_only_at_the_epochs_up_to_it(regimes):
    curve = [0.5, 0.7, 0.6, 0.9, 0.4]
    assert regimes.late_drop(curve, 3) == pytest.approx(0.1)  # best of 0.5/0.7/0.6, not the later 0.9
    assert regimes.late_drop(curve, 4) == 0 and regimes.late_drop(curve, 5) == pytest.approx(0.5)


def test_the_correlation_of_memorisation_with_the_advantage_is_pearsons_over_the_cells(regimes):
    bt, sympo = regimes.BT, regimes.SYMPO
    results = []
    # Three digits cells (sizes), 10 epochs, shown at epoch 10: BT's flipped agreement 0.2/0.5/0.9, advantage 1/2/7.
    for size, agree, gain in ((300, 0.2, 0.01), (600, 0.5, 0.02), (1197, 0.9, 0.07)):
        results += [fake("digits", bt, 0, [0.6] * 10, [0.5] * 10, size=size, flipped=[agree] * 10),
                    fake("digits", sympo, 0, [0.6] * 9 + [0.6 + gain], [0.5] * 10, size=size)]
    text = regimes.report(results, "c", None)
    x, y = np.array([0.2, 0.5, 0.9]), np.array([1.0, 2.0, 7.0])
    expected = float(np.corrcoef(x, y)[0, 1])
    assert f"mean SymPO-sigmoid − Bradley–Terry difference: {expected:+.2f}." in text
    assert "| 0.001 | 300 | 20 / 50 (0.0) |" in text and "| 0.001 | 1197 | 90 / 50 (0.0) |" in text


def test_a_quick_run_goes_through_both_benchmarks_nests_the_tasks_and_resumes(regimes, tmp_path, monkeypatch):
    from trl_robust.experiments import training_runs

    monkeypatch.setattr(training_runs, "quiet_libraries", lambda: None)  # the test process keeps its warnings
    monkeypatch.setattr(regimes.nb, "quiet_libraries", lambda: None)
    regimes.main(["--quick", "--output_dir", str(tmp_path)])
    results = [json.loads(line) for line in (tmp_path / "reward_regimes.jsonl").read_text().splitlines()]
    bt, sympo = regimes.BT, regimes.SYMPO
    got = sorted((r["task"], r["setting"].get("labels", ""), r["flip_rate"], regimes.size_of(r), r["method"])
                 for r in results)
    expected = [("digits", "bt1", rate, 1197, m) for rate in (0.0, 0.4) for m in (bt, sympo)]
    expected += [("digits", "deterministic", 0.4, 300, m) for m in (bt, sympo)]
    expected += [("synthetic", "", 0.4, size, m) for size in (100, 200) for m in (bt, sympo)]
    assert got == sorted(expected)
    # The digits' size knob: the first 300 training images, paired consecutively, pairs of equal digits left out.
    _, digits = regimes.rd.load_images()
    train = regimes.rd.split_images(len(digits), 0)[2][:300]
    pairs = sum(digits[a] != digits[b] for a, b in zip(train[0::2], train[1::2]))
    assert all(r["n_train"] == pairs for r in results if r["task"] == "digits" and regimes.size_of(r) == 300)
    # The nested tasks: the 100-pair task is the first 100 pairs of the 200-pair one, with its held-out pairs.
    root = tmp_path / "work" / "regimes"
    small, large = (json.loads((regimes.nb.task_dir(root, 0, regimes.replace(regimes.QUICK_SYNTHETIC, n_train=n))
                                / "pairs.json").read_text()) for n in (100, 200))
    assert small["train"] == large["train"][:100] and len(large["train"]) == 200
    assert small["test"] == large["test"] and small["validation"] == large["validation"]
    # The report's paired difference at the last epoch, recomputed from the results file.
    report = (tmp_path / "reward_regimes.md").read_text()
    runs = {r["method"]: r for r in results if r["task"] == "synthetic" and regimes.size_of(r) == 200}
    difference = (runs[sympo]["clean_accuracy"][-1] - runs[bt]["clean_accuracy"][-1]) * 100
    assert f"| 0.003 | 200 | {difference:+.1f} ± 0.0 |" in report
    assert "# Digits with the authors' temperature-1 labels" in report and "### 40% symmetric" in report

    synthetic = [r for r in results if r["task"] == "synthetic"]
    assert all(len(r["flipped_agreement"]) == len(r["unflipped_agreement"]) == 2 for r in synthetic)

    def no_training(*args, **kwargs):
        raise AssertionError("a run was trained again instead of reused")

    # A synthetic record from before the agreement was recorded is run again and replaced, with the same curves.
    monkeypatch.setattr(regimes.rd, "run_digits_job", no_training)
    old = [{k: v for k, v in r.items() if not k.endswith("agreement")} if r["task"] == "synthetic" else r
           for r in results]
    (tmp_path / "reward_regimes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    regimes.main(["--quick", "--output_dir", str(tmp_path)])
    again = [json.loads(line) for line in (tmp_path / "reward_regimes.jsonl").read_text().splitlines()]
    assert len(again) == len(results)
    for before, after in zip(synthetic, [r for r in again if r["task"] == "synthetic"]):
        assert after["clean_accuracy"] == before["clean_accuracy"]
        assert after["flipped_agreement"] == before["flipped_agreement"]
    monkeypatch.setattr(regimes.rn, "run_reward_job", no_training)
    regimes.main(["--quick", "--output_dir", str(tmp_path)])
    assert len((tmp_path / "reward_regimes.jsonl").read_text().splitlines()) == len(results)


def test_the_agreement_recorded_through_trls_collator_is_the_digits_benchmarks_own(regimes, tmp_path):
    """Two computations of one quantity: the digits benchmark scores its training pairs with the CNN directly; the
    recording trainer batches them through TRL's collator. Same run, same agreement."""
    curves = {"flipped_agreement": [], "unflipped_agreement": []}
    job = regimes.rd.DigitsJob(regimes.BT, "symmetric", 0.4, 1, regimes.rd.Setting(epochs=3, train_images=300))
    from trl_robust import RobustRewardTrainer

    result = regimes.rd.run_digits_job(job, tmp_path, regimes.recording_agreement(RobustRewardTrainer, curves))
    assert len(curves["flipped_agreement"]) == 3
    for name in ("flipped_agreement", "unflipped_agreement"):
        assert curves[name] == pytest.approx(result[name], abs=1e-9)
