"""The synthetic task: the true reward, the labelled pairs, and the training runs' bookkeeping (the benchmarks' tables
are tested with their harness, in test_benchmark_scripts.py)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from trl_robust.experiments import training_runs as runs
from trl_robust.experiments.synthetic import RewardModel, fit_reference_policy, make_preference_pairs, sample_responses
from trl_robust.tiny import WORDS


def test_true_reward_by_hand():
    reward = RewardModel({"good": 1, "fine": 1, "bad": -1, "ugly": -1})
    # mean of s(w)·(2 if w in prompt): "good"(+1) "bad"(−1 ×2, in prompt) "ugly"(−1) → (1 − 2 − 1)/3 = −2/3
    assert reward("bad news", "good bad ugly") == pytest.approx(-2 / 3)
    assert reward("x", "good fine") == pytest.approx(1.0)
    assert reward("good", "good") == pytest.approx(2.0)
    assert reward("x", "") == 0.0


def test_reward_model_splits_the_vocabulary_in_half_per_seed():
    a, b = RewardModel.from_seed(0), RewardModel.from_seed(1)
    assert sum(v == 1 for v in a.scores.values()) == len(a.scores) // 2
    assert a.scores != b.scores and a == RewardModel.from_seed(0)


def test_the_graded_reward_has_continuous_scores_and_no_topic_bonus():
    graded = RewardModel.from_seed(0, "graded")
    assert graded == RewardModel.from_seed(0, "graded") and graded.scores != RewardModel.from_seed(1, "graded").scores
    values = list(graded.scores.values())
    assert all(-1 <= v <= 1 for v in values) and len(set(values)) == len(values)  # no two words alike
    words = sorted(graded.scores)[:2]
    by_hand = (graded.scores[words[0]] + graded.scores[words[1]]) / 2  # the mean score, a prompt word counts once
    assert graded(words[0], f"{words[0]} {words[1]}") == pytest.approx(by_hand)
    with pytest.raises(ValueError, match="reward kind must be one of"):
        RewardModel.from_seed(0, "sparse")


def test_the_sum_reward_adds_the_word_scores_with_no_topic_bonus():
    summed, topic = RewardModel.from_seed(0, "sum"), RewardModel.from_seed(0, "topic")
    assert summed.scores == topic.scores  # the same ±1 split of the vocabulary as the first task's
    good = sorted(w for w, v in summed.scores.items() if v > 0)[:2]
    bad = sorted(w for w, v in summed.scores.items() if v < 0)[0]
    # +1 +1 −1 = 1 (a mean would give 1/3); the prompt's own word counts once (no topic bonus).
    assert summed(good[0], f"{good[0]} {good[1]} {bad}") == 1
    assert summed(good[0], f"{good[0]} {good[1]}") == 2 and summed("x", f"{good[0]}") == 1
    assert runs.THIRD_TASK.reward == "sum"


def test_the_stance_reward_signs_a_second_score_by_the_prompts_first_word():
    stance = RewardModel.from_seed(0, "stance")
    assert stance.scores == RewardModel.from_seed(0, "sum").scores  # the third task's half, unchanged
    assert sorted(stance.stance_scores.values()).count(1) == len(WORDS) // 2
    assert len(stance.stance_words) == len(WORDS) // 2
    # A word whose two scores agree, and one whose scores differ; a prompt word of each stance.
    same = next(w for w in WORDS if stance.scores[w] == stance.stance_scores[w] == 1)
    differ = next(w for w in WORDS if stance.scores[w] == 1 and stance.stance_scores[w] == -1)
    plus = next(w for w in sorted(stance.stance_words))
    minus = next(w for w in WORDS if w not in stance.stance_words)
    assert stance.stance(f"{plus} {minus}") == 1 and stance.stance(f"{minus} {plus}") == -1
    # r = Σ s(w) + c(x) Σ t(w): under stance +1, "same differ" = (1 + 1) + (1 − 1) = 2; under −1, 2 − 0 = 2;
    # "same same" = 2 ± 2; "differ" = 1 ∓ (−1). The preferred response turns with the prompt.
    assert stance(plus, f"{same} {differ}") == stance(minus, f"{same} {differ}") == 2
    assert (stance(plus, f"{same} {same}"), stance(minus, f"{same} {same}")) == (4, 0)
    assert (stance(plus, differ), stance(minus, differ)) == (0, 2)
    assert runs.FOURTH_TASK.reward == "stance" and runs.FOURTH_TASK.n_train == runs.THIRD_TASK.n_train


def test_each_task_variant_has_its_own_cache_and_run_directories(tmp_path):
    first, second = runs.Setting(), runs.SECOND_TASK
    assert runs.task_dir(tmp_path, 3, first) == runs.task_dir(tmp_path, 3) == tmp_path / "tasks" / "seed3"  # as before
    assert runs.task_dir(tmp_path, 3, second) == tmp_path / "tasks" / "graded-2000-200-300-300-seed3"
    # Training settings that do not change the task share its cache.
    assert runs.task_dir(tmp_path, 3, runs.Setting(learning_rate=1e-3, epochs=5)) == runs.task_dir(tmp_path, 3)
    jobs = [runs.Job("DPO", "symmetric", 0.2, 3, setting) for setting in (first, second)]
    assert len({runs.run_dir(tmp_path, job) for job in jobs}) == 2


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    # One thread, as run_grid's workers fit it: for a model this small a second thread only waits on the first, and on
    # cores busy with other work that waiting took several times as long (the same weights either way).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = fit_reference_policy(tmp_path_factory.mktemp("task") / "reference", seed=0, steps=150)
    finally:
        torch.set_num_threads(threads)
    return AutoModelForCausalLM.from_pretrained(path)


def test_reference_policy_gives_diverse_responses(reference):
    responses = sample_responses(reference, ["the cat"] * 40, seed=0)
    assert len(set(responses)) > 30  # diverse: sampled, not one memorised answer
    assert all(len(r.split()) <= 8 for r in responses)
    assert sum(bool(r) for r in responses) >= 30  # mostly non-empty (an immediate end-of-text is allowed)


def test_pairs_are_labelled_by_the_true_reward(reference):
    reward = RewardModel.from_seed(0)
    pairs = make_preference_pairs(reference, reward, 50, seed=0)
    assert len(pairs) == 50
    for pair in pairs:
        assert reward(pair["prompt"], pair["chosen"]) > reward(pair["prompt"], pair["rejected"])


def result(method, rate, clean, noisy, gain, noise="symmetric", seed=0):
    return {"method": method, "noise": noise, "flip_rate": rate, "seed": seed,
            "clean_accuracy": clean, "noisy_val_accuracy": noisy, "reward_gain": gain}


def test_early_stopping_uses_the_noisy_validation_curve():
    r = result("DPO", 0.4, clean=[0.6, 0.7, 0.55], noisy=[0.52, 0.51, 0.56], gain=[0.1, 0.3, 0.2])
    assert runs.early_stop_epoch(r) == 2  # best noisy validation accuracy, not best clean
    s = runs.summarise(r)
    assert s == {"final_accuracy": 0.55, "peak_accuracy": 0.7, "early_stopped_accuracy": 0.55,
                 "final_reward_gain": 0.2, "early_stopped_reward_gain": 0.2}
    tie = result("DPO", 0.4, clean=[0.6, 0.7], noisy=[0.5, 0.5], gain=[0.1, 0.3])
    assert runs.early_stop_epoch(tie) == 0  # ties go to the earlier epoch



def test_fitting_the_reference_policy_reports_each_step(tmp_path):
    # run_grid's task bar counts these steps: a task takes a minute on a small CPU, and a bar that moved only when it
    # ended looked like a hang.
    steps = []
    fit_reference_policy(tmp_path / "reference", seed=0, steps=3, hidden_size=8, on_step=lambda: steps.append(1))
    assert len(steps) == 3


def test_a_runs_warnings_show_once_each_on_lines_of_their_own(monkeypatch, capsys):
    # The auto mode's "cannot tell" came at every such epoch of every run, glued to the end of the progress bar's line.
    monkeypatch.setattr(runs, "_warned", set())
    for estimate in (0.16, 0.23):  # the same place, other numbers: shown once
        runs._show_warning_once(UserWarning(f"its estimate of {estimate}"), UserWarning, "filter/state.py", 135)
    runs._show_warning_once(UserWarning("another"), UserWarning, "filter/state.py", 200)
    assert capsys.readouterr().err == (
        "\nfilter/state.py:135: UserWarning: its estimate of 0.16\n\nfilter/state.py:200: UserWarning: another\n"
    )
