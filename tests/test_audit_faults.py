"""The audit's answers to the red-team faults of issue 19: a reference that is no causal LM, an output_dir it could not
write, a mistyped argument, a single data file, identical pairs, a ranking that carries no information, and what the
report says (and rounds) when the margins do not separate the pairs. In-process: nothing here starts another process (the command is called as a function)."""

import json
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import Dataset

from trl_robust.audit import AuditInputError, AuditResult, audit_preferences
from trl_robust.cli.audit import main as audit_command  # the command's body, called in this process
from trl_robust.data import flip_preferences
from trl_robust.noise import estimate_noise
from trl_robust.tiny import tiny_preference_records

from .test_audit import save_perturbed


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run fastest on one thread


def copy_as(tiny_model_path, path, architectures, **config_changes):
    """A copy of the tiny model directory whose config.json names other `architectures`: what the checkpoint of another
    kind of model looks like to a check that reads configs only (no weights are touched, nothing is loaded)."""
    shutil.copytree(tiny_model_path, path)
    config = json.loads((path / "config.json").read_text())
    config.update(architectures=architectures, **config_changes)
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


@pytest.fixture(scope="module")
def pairs():
    return flip_preferences(Dataset.from_list(tiny_preference_records(n=11, seed=5)), 0.3, seed=2)


# --- fault 5: a reference that is not a causal LM --------------------------------------------------------------------


@pytest.mark.parametrize(
    "architectures, changes, message",
    [
        # What TRL's RewardTrainer saves: loaded as a causal LM it got a random LM head, and the audit went on.
        (["LlamaForSequenceClassification"], {"id2label": {"0": "LABEL_0"}},
         "is a LlamaForSequenceClassification, not a causal language model.*pass the reward model as the model"),
        (["LlamaForSequenceClassification"], {}, "is a LlamaForSequenceClassification, not a causal language model"),
        (["LlamaModel"], {}, "is a LlamaModel, not a causal language model.*starting checkpoint"),
    ],
)
def test_a_reference_that_is_not_a_causal_lm_is_refused_before_any_model_loads(
    architectures, changes, message, tiny_model_path, pairs, tmp_path, no_model_loading
):
    reference = copy_as(tiny_model_path, tmp_path / "reference", architectures, **changes)
    with pytest.raises(AuditInputError, match=message):
        audit_preferences(tiny_model_path, pairs, ref_model=reference, output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_loaded_reward_model_as_reference_is_refused(tiny_model_path, pairs):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(tiny_model_path, num_labels=1)
    reward_model = AutoModelForSequenceClassification.from_config(config)
    with pytest.raises(AuditInputError, match="a loaded LlamaForSequenceClassification.*not a causal language model"):
        audit_preferences(tiny_model_path, pairs, ref_model=reward_model, show_progress=False)


def test_a_policy_that_is_neither_a_causal_lm_nor_a_reward_model_is_refused(tiny_model_path, pairs, tmp_path,
                                                                              no_model_loading):
    policy = copy_as(tiny_model_path, tmp_path / "policy", ["LlamaModel"])
    with pytest.raises(AuditInputError, match="is a LlamaModel: the audit scores a DPO policy .* or a reward model"):
        audit_preferences(policy, pairs, ref_model=tiny_model_path)


# --- fault 7: an output_dir the audit could not write, refused before scoring -----------------------------------------


def test_an_output_dir_under_a_file_is_refused_before_any_model_loads(tiny_model_path, pairs, tmp_path,
                                                                     no_model_loading, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    with pytest.raises(AuditInputError, match=r"lies under .*notes\.txt', which is a file"):
        audit_preferences(tiny_model_path, pairs, ref_model=tiny_model_path, output_dir=blocker / "audit")
    code = audit_command(["--model_name_or_path", tiny_model_path, "--ref_model", tiny_model_path,
                     "--dataset_name", "builtin:tiny", "--output_dir", str(blocker / "audit")])
    assert code == 2 and "which is a file, not a directory" in capsys.readouterr().err
    assert blocker.read_text() == "mine"


def test_an_output_dir_that_cannot_be_created_is_refused_before_any_model_loads(tiny_model_path, pairs,
                                                                               no_model_loading):
    # /proc refuses new directories even to root, for whom permission bits would not tell.
    with pytest.raises(AuditInputError, match="cannot be written: creating a directory in '/proc' failed"):
        audit_preferences(tiny_model_path, pairs, ref_model=tiny_model_path, output_dir="/proc/trl-robust-audit")


# --- fault 11: a mistyped argument ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--lerning_rate", "1"], "unknown argument '--lerning_rate' (did you mean '--learning_rate'? That is a "
                                  "training argument: the audit trains nothing)"),
        (["--ref_modle", "X"], "unknown argument '--ref_modle' (did you mean '--ref_model'?)"),
        (["--flip_rate", "2"], "`flip_rate` must be in [0, 1)"),
    ],
)
def test_a_bad_argument_gets_one_line_not_a_traceback(argv, expected, tmp_path, capsys, no_model_loading):
    code = audit_command(["--model_name_or_path", "m", "--dataset_name", "d", "--output_dir", str(tmp_path / "o"),
                     *argv])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith("trl-robust audit: error: ") and expected in error and error.count("\n") == 1
    assert not (tmp_path / "o").exists()


# --- the single data file ---------------------------------------------------------------------------------------------


def test_a_single_jsonl_file_is_audited_as_its_split(tiny_model_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRL_ROBUST_CACHE", str(tmp_path / "cache"))
    records = tiny_preference_records(n=9, seed=4)
    data = tmp_path / "my_pairs.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    policy = save_perturbed(tiny_model_path, tmp_path / "policy")

    # The API takes the path as the command does, and scores the file's rows in order.
    from_path = audit_preferences(policy, str(data), ref_model=tiny_model_path, show_progress=False)
    in_memory = audit_preferences(policy, Dataset.from_list(records), ref_model=tiny_model_path, show_progress=False)
    assert from_path.z_by_row() == pytest.approx(in_memory.z_by_row(), abs=1e-6)

    # The command, whatever the split is called: a single file is the split.
    code = audit_command(["--model_name_or_path", policy, "--ref_model", tiny_model_path, "--dataset_name",
                     str(data), "--dataset_train_split", "test", "--output_dir", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    lines = [json.loads(line) for line in (tmp_path / "out" / "audit.jsonl").read_text().splitlines()]
    assert sorted(p["row"] for p in lines) == list(range(9))
    assert {p["row"]: p["z"] for p in lines} == pytest.approx(dict(enumerate(in_memory.z_by_row())), abs=1e-6)

    (tmp_path / "pairs.txt").write_text("not a table")
    with pytest.raises(AuditInputError, match=r"a file the audit cannot read: pass a \.jsonl, \.json"):
        audit_preferences(policy, str(tmp_path / "pairs.txt"), ref_model=tiny_model_path)


# --- fault 13: identical pairs ----------------------------------------------------------------------------------------


def test_identical_pairs_get_one_score_and_sit_side_by_side(tiny_model_path, pairs, tmp_path):
    # Rows 2 and 7 again at the end: with batches of 4 each copy is padded differently from its twin.
    doubled = Dataset.from_list(list(pairs) + [pairs[2], pairs[7]])
    policy = save_perturbed(tiny_model_path, tmp_path / "policy")
    result = audit_preferences(policy, doubled, ref_model=tiny_model_path, beta=0.5, batch_size=4,
                               show_progress=False)
    alone = audit_preferences(policy, pairs, ref_model=tiny_model_path, beta=0.5, batch_size=4, show_progress=False)
    z = result.z_by_row()
    assert z[2] == z[11] and z[7] == z[12]
    assert result.twins == [[2, 11], [7, 12]]
    assert z[:11] == pytest.approx(alone.z_by_row(), abs=1e-5)
    ranked = [pair["row"] for pair in result.pairs]
    assert abs(ranked.index(2) - ranked.index(11)) == 1 and abs(ranked.index(7) - ranked.index(12)) == 1
    assert "identical pairs (same prompt, chosen and rejected): 4 rows in 2 groups" in result.summary


def hand_made(z_by_row, noise_estimate=None):
    order = sorted(range(len(z_by_row)), key=lambda row: (z_by_row[row], row))
    pairs = [{"rank": r + 1, "row": row, "z": z_by_row[row]} for r, row in enumerate(order)]
    return AuditResult(pairs=pairs, beta=0.1, noise_estimate=noise_estimate)


def test_the_clean_step_cleans_identical_pairs_together():
    # Rows 1 and 3 hold the same pair; the cut of ⌊0.25 · 4⌋ = 1 falls between them (row 1 is the most suspicious).
    data = Dataset.from_dict({"prompt": ["a", "b", "c", "b"], "chosen": ["C", "D", "E", "D"],
                              "rejected": ["R", "S", "T", "S"], "label_flipped": [False, True, False, True]})
    result = hand_made([0.3, -1.0, 2.0, -1.0])
    assert result.cleaned(data, 0.25)["prompt"] == ["a", "c"]
    assert result.rows_to_clean(data, 0.25) == [1, 3]
    swapped = result.cleaned(data, 0.25, mode="swap")
    assert swapped["chosen"] == ["C", "S", "E", "S"] and swapped["label_flipped"] == [False, False, False, False]
    # A pair that differs only in a column TRL does not read (the flip record) is still the same pair.
    assert hand_made([0.3, -1.0, 2.0, 5.0]).rows_to_clean(data, 0.25) == [1, 3]


# --- fault 6: a ranking that carries no information -------------------------------------------------------------------


@pytest.mark.parametrize(
    "result, message",
    [
        (hand_made([0.0] * 5), "every pair has the same z .*the first rows"),
        (hand_made([0.3, -1.0, 2.0, -0.5, 0.0], SimpleNamespace(cannot_tell=True, reason="any flip rate fits", likelihood_interval=(0.0, 0.5))),
         r"the margins do not separate the pairs \(any flip rate fits\)"),
    ],
)
def test_the_clean_step_refuses_a_ranking_that_carries_no_information(result, message):
    data = Dataset.from_dict({"prompt": list("abcde"), "chosen": list("CCCCC"), "rejected": list("RRRRR")})
    with pytest.raises(ValueError, match=f"nothing cleaned: {message}"):
        result.cleaned(data, 0.4)
    assert result.cleaned(data, 0.0)["prompt"] == list("abcde")  # cleaning nothing needs no ranking


def test_the_command_refuses_to_clean_when_the_policy_is_its_reference(tiny_model_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRL_ROBUST_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    code = audit_command(["--model_name_or_path", tiny_model_path, "--ref_model", tiny_model_path,
                     "--dataset_name", "builtin:tiny", "--output_dir", str(out), "--clean_share", "0.2"])
    captured = capsys.readouterr()
    assert code == 2
    assert "--clean_share 0.2: no cleaned/train.jsonl written: every pair has the same z" in captured.err
    assert "cannot tell — every margin is the same" in captured.out  # the summary, printed and written
    assert not (out / "cleaned").exists() and (out / "audit.jsonl").exists()


# --- item 7 of the first hour: "cannot tell", and what is rounded -----------------------------------------------------


def audit_of_margins(tiny_model_path, z, tmp_path, monkeypatch, **kwargs):
    """The audit's ranking, estimate, files and summary for given margins z (β = 1): the scoring pass is replaced by
    one that returns them, so that the report can be tested on margins whose answer is known."""
    import trl_robust.audit.scoring as scoring

    def scored(policy, reference, dataset, **_):
        return torch.tensor(z, dtype=torch.float32), None, {}, SimpleNamespace(num_processes=1, is_main_process=True)

    monkeypatch.setattr(scoring, "score_with_policy", scored)
    records = [{"prompt": f"p{i}", "chosen": " c", "rejected": " r"} for i in range(len(z))]  # all different
    return audit_preferences(tiny_model_path, Dataset.from_list(records), ref_model=tiny_model_path, beta=1.0,
                             output_dir=tmp_path / "out", **kwargs)


def test_margins_that_do_not_separate_the_pairs_are_reported_as_cannot_tell(tiny_model_path, tmp_path, monkeypatch):
    # A barely trained policy: margins ~ N(0, 0.01²) whatever the labels; no flip rate can be read off them.
    z = np.random.default_rng(0).normal(0.0, 0.01, 400)
    result = audit_of_margins(tiny_model_path, z, tmp_path, monkeypatch)
    assert result.noise_estimate.cannot_tell
    line = next(line for line in result.summary.splitlines() if "estimated flipped labels" in line)
    assert "cannot tell" in line and not re.search(r"about \d|\d%\)", line)  # no "about 0.0% (0.0–0.0%)"
    assert "do not separate the pairs" in line and "no pair gets a `p_flipped`" in line
    assert "clean step (`--clean_share`, `AuditResult.cleaned`) is refused" in line
    assert all("p_flipped" not in pair for pair in result.pairs)
    assert "p_flipped" not in (tmp_path / "out" / "audit.csv").read_text().splitlines()[0]
    with pytest.raises(ValueError, match="nothing cleaned: the margins do not separate the pairs"):
        result.cleaned(Dataset.from_list([{"prompt": "p", "chosen": "c", "rejected": "r"}] * 400), 0.1)


def flipped_margins(n, share, seed):
    """±N(2, 1) margins with a `share` of them negated: a policy that separates the pairs, `share` of labels flipped."""
    rng = np.random.default_rng(seed)
    return rng.normal(2.0, 1.0, n) * np.where(rng.random(n) < share, -1.0, 1.0)


@pytest.mark.parametrize("share", [0.2, 0.0])
def test_printed_probabilities_are_rounded_and_the_files_keep_full_precision(share, tiny_model_path, tmp_path,
                                                                             monkeypatch):
    z = flipped_margins(2000, share, seed=1)
    result = audit_of_margins(tiny_model_path, z, tmp_path, monkeypatch)
    expected = estimate_noise(z.astype(np.float32).astype(np.float64))
    assert not result.noise_estimate.cannot_tell and abs(result.noise_estimate.flip_rate - share) < 0.05
    assert f"estimated flipped labels: {expected.describe()}" in result.summary
    assert "not its error" in result.summary  # what the interval means

    # summary.md: the ten most suspicious pairs' p_flipped to three decimals; no number in exponent notation anywhere.
    table = result.summary.split("most suspicious pairs")[1].splitlines()
    column = table[2].strip("| ").split(" | ").index("p_flipped")
    cells = [row.strip("| ").split(" | ")[column] for row in table[4:14]]
    assert cells == [f"{p['p_flipped']:.3f}" if 0.0005 <= p["p_flipped"] <= 0.9995 else
                     "<0.001" if p["p_flipped"] < 0.0005 else ">0.999" for p in result.pairs[:10]]
    assert not re.search(r"\d[eE][-+]?\d", result.summary)

    # audit.jsonl: every p_flipped exactly as estimated, the tiniest included.
    lines = [json.loads(line) for line in (tmp_path / "out" / "audit.jsonl").read_text().splitlines()]
    by_row = {line["row"]: line["p_flipped"] for line in lines}
    assert [by_row[row] for row in range(2000)] == expected.p_flipped.tolist()
    p = [pair["p_flipped"] for pair in result.pairs]  # the lower the margin, the likelier a flip: never rises
    assert all(a >= b - 1e-12 for a, b in zip(p, p[1:]))
    assert min(by_row.values()) < 1e-6  # far below what the summary shows
    if share == 0.0:  # even the most suspicious pairs are clean: their p_flipped are tiny, and shown as such
        assert "<0.001" in cells


def test_a_flip_rate_too_vague_to_tell_still_leaves_a_ranking_to_clean_from(tiny_model_path, tmp_path, monkeypatch):
    # 64 pairs whose margins separate them well (±N(4, 1), a quarter flipped): how many are flipped cannot be told
    # from so few (the likelihood interval is wide), but a flip rate of 1/2 does not fit: the ranking is worth using.
    z = np.random.default_rng(0).normal(4.0, 1.0, 64) * np.where(np.arange(64) % 4 == 0, -1.0, 1.0)
    result = audit_of_margins(tiny_model_path, z, tmp_path, monkeypatch)
    low, high = result.noise_estimate.likelihood_interval
    assert result.noise_estimate.cannot_tell and high < 0.49 and high - low > 0.25
    assert "how many of them to clean is for you to judge" in result.summary
    assert all("p_flipped" not in pair for pair in result.pairs)
    data = Dataset.from_list([{"prompt": f"p{i}", "chosen": " c", "rejected": " r"} for i in range(64)])
    assert result.rows_to_clean(data, 0.25) == list(range(0, 64, 4))  # the 16 negated margins, all of them

