"""The handwritten-digits reward benchmark (`benchmarks/reward_digits.py`): its images, pairs and flips are what its
docstring says, its accuracy and report compute what they claim, its CNN trains through `RobustRewardTrainer`, and a
`--quick` run goes end to end, in this process, and resumes."""

import json
import math
import statistics

import numpy as np
import pytest

from .benchmark_modules import benchmark_module

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits_script():
    """`benchmarks/reward_digits.py` with its folder on `sys.path` (it imports `harness`), as
    `python benchmarks/reward_digits.py` runs it."""
    with benchmark_module("reward_digits") as module:
        yield module


def test_the_bundled_digits_are_1797_images_of_64_intensities_0_to_16(digits_script):
    images, digits = digits_script.load_images()
    assert images.shape == (1797, 64) and images.min() == 0 and images.max() == 16
    assert images.dtype.kind == "i" and sorted(set(digits.tolist())) == list(range(10))


def test_test_validation_and_training_images_are_disjoint_and_cover_every_image(digits_script):
    test, validation, train = digits_script.split_images(1797, seed=3)
    assert (len(test), len(validation), len(train)) == (400, 200, 1197)
    assert len(set(test) | set(validation) | set(train)) == 1797
    other = digits_script.split_images(1797, seed=4)
    assert not np.array_equal(test, other[0])  # the seed draws the split


def test_each_image_is_in_at_most_one_pair_equal_digits_left_out_and_the_higher_digit_chosen(digits_script):
    digits = np.array([3, 1, 2, 2, 5, 9, 0])
    # (0, 1): 3 > 1, image 0 chosen; (2, 3): both 2, left out; (4, 5): 9 > 5, image 5 chosen; 6 has no partner.
    assert digits_script.pair_images(np.arange(7), digits) == [(0, 1), (5, 4)]
    assert digits_script.pair_images(np.array([5, 4, 1, 0]), digits) == [(5, 4), (0, 1)]


def test_temperature_one_labels_choose_the_higher_digit_with_probability_sigmoid_of_the_difference(digits_script):
    digits = np.array([1, 0] * 4000)  # 4000 pairs one digit apart: σ(1) = 0.731 of them should choose the 1
    pairs = digits_script.pair_images(np.arange(8000), digits, labels="bt1", seed=0)
    share = statistics.fmean(digits[chosen] == 1 for chosen, _ in pairs)
    assert abs(share - 1 / (1 + math.exp(-1))) < 0.025  # 3.5 standard errors (0.007 each)
    with pytest.raises(ValueError, match="deterministic' or 'bt1"):
        digits_script.pair_images(np.arange(4), digits, labels="soft")


def test_symmetric_flips_swap_an_exact_share_of_the_pairs_and_record_them(digits_script):
    pairs = [(2 * i, 2 * i + 1) for i in range(50)]
    noisy = digits_script.noisy_pairs(pairs, "symmetric", 0.3, seed=1)
    assert sum(noisy["label_flipped"]) == 15
    for (chosen, rejected), row in zip(pairs, noisy):
        expected = (rejected, chosen) if row["label_flipped"] else (chosen, rejected)
        assert (row["chosen_ids"], row["rejected_ids"]) == expected


def test_asymmetric_flips_take_40_percent_of_the_pairs_shown_better_first_and_10_percent_of_the_others(digits_script):
    pairs = [(2 * i, 2 * i + 1) for i in range(200)]
    noisy = digits_script.noisy_pairs(pairs, "asymmetric", 0.25, seed=5)
    first = digits_script.better_shown_first(200, seed=5)
    flipped = np.array(noisy["label_flipped"])
    assert flipped[first].sum() == round(0.4 * first.sum())
    assert flipped[~first].sum() == round(0.1 * (~first).sum())
    assert set(noisy.column_names) == {"chosen_ids", "rejected_ids", "label_flipped"}
    assert [(r["chosen_ids"], r["rejected_ids"]) for r in noisy] == [
        (b, a) if f else (a, b) for (a, b), f in zip(pairs, flipped)
    ]


def test_pairwise_accuracy_counts_every_pair_of_different_digits_and_ties_in_score_as_wrong(digits_script):
    digits = [0, 2, 1, 1]
    # Pairs of different digits (higher first): (1, 0), (2, 0), (3, 0), (1, 2), (1, 3): five.
    assert digits_script.pairwise_accuracy([0.0, 0.5, 0.3, 0.3], digits) == 1.0
    # Image 2 now scores 0.6 > image 1's 0.5 although its digit is lower: (1, 2) wrong; image 3 ties image 0: wrong.
    assert digits_script.pairwise_accuracy([0.0, 0.5, 0.6, 0.0], digits) == pytest.approx(3 / 5)


def test_pixels_are_tokens_0_to_16_and_the_model_reads_them_as_intensities(digits_script):
    import torch

    tokenizer = digits_script.pixel_tokenizer()
    assert tokenizer("0 16 5")["input_ids"] == [0, 16, 5]
    assert tokenizer.pad_token_id == 17 and len(tokenizer) == 18
    torch.manual_seed(0)
    model = digits_script.DigitScorer(digits_script.DigitScorerConfig()).eval()
    ids = torch.randint(0, 17, (3, 64))
    # The first layer sees ids / 16: the same scores as the CNN on the intensities scaled by hand.
    expected = model.scorer(torch.stack([row.float() / 16 for row in ids]))
    torch.testing.assert_close(model(input_ids=ids).logits, expected)
    assert model(input_ids=ids).logits.shape == (3, 1) and model.config.num_labels == 1


def fake_run(method, seed, clean, noisy_val, rate=0.4):
    return {"method": method, "noise": "symmetric", "flip_rate": rate, "seed": seed, "clean_accuracy": clean,
            "noisy_val_accuracy": noisy_val, "flipped_agreement": [0.5] * len(clean),
            "unflipped_agreement": [0.8] * len(clean), "estimated_flip_rate": [], "filter_precision": [],
            "setting": {"epochs": len(clean), "learning_rate": 1e-3, "batch_size": 64, "labels": "deterministic"}}


def test_the_run_key_adds_a_setting_field_only_where_it_leaves_its_default(digits_script):
    """Results written before `train_images` existed keep their keys (the grid reuses them); a smaller training set or
    another learning rate is another run."""
    old = fake_run(digits_script.BT, 0, [0.7] * 50, [0.6] * 50)  # its setting has no train_images
    job = digits_script.DigitsJob(digits_script.BT, "symmetric", 0.4, 0)
    assert digits_script.job_key(old) == digits_script.job_key(job) == (50, "deterministic", job.method, "symmetric",
                                                                        0.4, 0)
    smaller = digits_script.DigitsJob(job.method, "symmetric", 0.4, 0, digits_script.Setting(train_images=300))
    faster = digits_script.DigitsJob(job.method, "symmetric", 0.4, 0, digits_script.Setting(learning_rate=3e-3))
    assert len({digits_script.job_key(j) for j in (job, smaller, faster)}) == 3


def test_the_report_pairs_each_loss_with_bradley_terry_selected_on_the_noisy_validation_split(digits_script):
    bt = digits_script.BT
    results = [
        # Bradley–Terry: selected at epoch 0 (best noisy validation) → 0.70 and 0.72; last epoch 0.60 and 0.56.
        fake_run(bt, 0, [0.70, 0.60], [0.6, 0.5]), fake_run(bt, 1, [0.65, 0.72, 0.56], [0.5, 0.7, 0.7]),
        # SymPO-sigmoid at its last epoch: 0.78 and 0.74 → +8 and +2 over BT selected, +18 and +18 over BT last.
        fake_run("SymPO-sigmoid", 0, [0.70, 0.78], [0.6, 0.6]),
        fake_run("SymPO-sigmoid", 1, [0.6, 0.6, 0.74], [0, 0, 0]),
    ]
    text = digits_script.report(results, "python benchmarks/reward_digits.py", None)
    over_selected = f"+{5.0:.1f} ± {statistics.stdev([8.0, 2.0]):.1f}"
    over_last = f"+{18.0:.1f} ± {0.0:.1f}"
    assert f"| SymPO-sigmoid | last | 76.0 ± 2.8 | {over_selected} | {over_last} |" in text
    # Bradley–Terry selected over its own last epoch: +10 and +16.
    assert f"| Bradley–Terry | selected | 71.0 ± 1.4 | – | +13.0 ± {statistics.stdev([10.0, 16.0]):.1f} |" in text
    # The targets at 40%: +5 over BT selected (met: 5.0 ≥ 5), +10 over BT last (met).
    assert f"≥ BT early-stopped + 5 | SymPO-sigmoid | {over_selected} | yes |" in text
    assert f"≥ BT last epoch + 10 | SymPO-sigmoid | {over_last} | yes |" in text


def test_a_quick_run_trains_every_method_through_the_reward_trainer_and_resumes(digits_script, tmp_path, monkeypatch):
    from trl_robust.experiments import training_runs

    # The grid silences libraries process-wide; the test process keeps its warnings.
    monkeypatch.setattr(training_runs, "quiet_libraries", lambda: None)
    digits_script.main(["--quick", "--output_dir", str(tmp_path)])
    results = [json.loads(line) for line in (tmp_path / "reward_digits.jsonl").read_text().splitlines()]
    methods = list(digits_script.METHODS)
    without_flips = [m for m in methods if m not in digits_script.SAME_AS_BT_WITHOUT_FLIPS]
    assert sorted((r["flip_rate"], r["method"]) for r in results) == sorted(
        [(0.0, m) for m in without_flips] + [(0.4, m) for m in methods]
    )
    for r in results:
        assert len(r["clean_accuracy"]) == len(r["noisy_val_accuracy"]) == 2 and 0 <= r["clean_accuracy"][-1] <= 1
    noisy = {r["method"]: r for r in results if r["flip_rate"] == 0.4}
    # 40% of the training pairs flipped (exact count); the oracle trains on the others only.
    assert noisy[digits_script.ORACLE]["n_train"] == noisy[digits_script.BT]["n_train"] - round(
        0.4 * noisy[digits_script.BT]["n_train"])
    assert noisy[digits_script.BT_AUTO]["estimated_flip_rate"]  # the filter ran and logged its estimate
    report = (tmp_path / "reward_digits.md").read_text()
    assert "## 40% symmetric" in report and "| SymPO-ramp | last |" in report
    digits_script.main(["--quick", "--output_dir", str(tmp_path)])  # every run is reused: nothing trains again
    assert len((tmp_path / "reward_digits.jsonl").read_text().splitlines()) == len(results)
