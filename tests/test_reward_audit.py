"""The audit of a reward model: each pair's margin r_c − r_r equals a plain forward of the sequence-classification model,
the ranking, losses, AUROC, noise estimate and files follow from those margins, a reward model trained on a learnable
rule finds the flipped labels, the command does what the API does, and bad input fails before any model loads."""

import csv
import json
import math
import random
import subprocess

import numpy as np
import pytest
import torch
import transformers
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from trl_robust import RobustRewardConfig, RobustRewardTrainer
from trl_robust.audit import OUTPUT_FILES, AuditInputError, audit_preferences
from trl_robust.cli import main as cli_main
from trl_robust.data import flip_preferences
from trl_robust.noise import estimate_noise
from trl_robust.tiny import WORDS

from .test_audit import BIN, command_env

GOOD, BAD = WORDS[:20], WORDS[20:]  # the rule the reward model can learn: chosen responses use the first 20 words


def rule_records(n, seed):
    rng = random.Random(seed)
    sentence = lambda words, k: " ".join(rng.choice(words) for _ in range(k))  # noqa: E731
    return [
        {"prompt": sentence(WORDS, rng.randint(2, 4)), "chosen": " " + sentence(GOOD, rng.randint(1, 3)),
         "rejected": " " + sentence(BAD, rng.randint(1, 3))}
        for _ in range(n)
    ]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run fastest on one thread


@pytest.fixture(scope="module")
def noisy_pairs():
    # 30 pairs, 6 flipped: a batch size of 4 leaves a ragged last batch.
    return flip_preferences(Dataset.from_list(rule_records(30, seed=3)), 0.2, seed=1)


@pytest.fixture(scope="module")
def reward_model_path(tiny_model_path, noisy_pairs, tmp_path_factory):
    """A tiny reward model trained with sympo_sigmoid on the noisy pairs (the symmetric loss lets the rule win)."""
    out = tmp_path_factory.mktemp("reward-model")
    args = RobustRewardConfig(
        output_dir=str(out), use_cpu=True, report_to="none", save_strategy="no", bf16=False, seed=0,
        per_device_train_batch_size=8, num_train_epochs=6, learning_rate=0.01, loss_type="sympo_sigmoid",
        disable_tqdm=True, logging_strategy="no",
    )
    trainer = RobustRewardTrainer(model=tiny_model_path, args=args, train_dataset=noisy_pairs)
    trainer.train()
    trainer.save_model()  # the model and its tokenizer, as TRL saves them
    return str(out)


@pytest.fixture(scope="module")
def audited(reward_model_path, noisy_pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("reward-audit") / "out"
    result = audit_preferences(reward_model_path, noisy_pairs, batch_size=4, loss_type="sympo_sigmoid",
                               loss_hyperparameters={"sympo_reward_clip": 0.5}, output_dir=out, show_progress=False)
    return result, out


def independent_rewards(path, rows):
    """r(x, y) of each pair, one unpadded sequence at a time: prompt + response + EOS, as TRL's reward tokenisation
    builds it, through a plain forward of the sequence-classification model (its score at the last token)."""
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    rewards = {"chosen": [], "rejected": []}
    with torch.no_grad():
        for row in rows:
            for key in rewards:
                ids = tokenizer(row["prompt"] + row[key] + tokenizer.eos_token)["input_ids"]
                rewards[key].append(model(input_ids=torch.tensor([ids])).logits[0, 0].item())
    return rewards["chosen"], rewards["rejected"]


def test_each_pairs_margin_is_the_reward_models_own_from_a_plain_forward(audited, reward_model_path, noisy_pairs):
    result, _ = audited
    chosen, rejected = independent_rewards(reward_model_path, list(noisy_pairs))
    by_row = {pair["row"]: pair for pair in result.pairs}
    assert sorted(by_row) == list(range(len(noisy_pairs)))
    for row in range(len(noisy_pairs)):
        assert by_row[row]["reward_chosen"] == pytest.approx(chosen[row], abs=1e-5), row
        assert by_row[row]["reward_rejected"] == pytest.approx(rejected[row], abs=1e-5), row
        assert by_row[row]["z"] == pytest.approx(chosen[row] - rejected[row], abs=1e-5), row
        assert by_row[row]["label_flipped"] == noisy_pairs[row]["label_flipped"]
    z = [c - r for c, r in zip(chosen, rejected)]
    assert len({round(v, 4) for v in z}) == len(z)  # all differ: a shifted alignment could not pass
    assert result.model_kind == "reward" and result.beta is None
    # Ranked most suspicious (lowest margin) first; the losses are those of the margin, by hand:
    # Bradley–Terry −log σ(z), and SymPO σ(−z) with each reward clipped to [−0.5, 0.5] first.
    assert [pair["rank"] for pair in result.pairs] == list(range(1, len(z) + 1))
    assert [pair["row"] for pair in result.pairs] == sorted(range(len(z)), key=lambda i: z[i])
    clip = lambda r: max(-0.5, min(0.5, r))  # noqa: E731
    for pair in result.pairs:
        c, r = chosen[pair["row"]], rejected[pair["row"]]
        assert pair["bradley_terry_loss"] == pytest.approx(math.log1p(math.exp(-(c - r))), abs=1e-5)
        assert pair["sympo_sigmoid_loss"] == pytest.approx(1 / (1 + math.exp(clip(c) - clip(r))), abs=1e-5)
    assert any(abs(c) > 0.5 or abs(r) > 0.5 for c, r in zip(chosen, rejected))  # the clip mattered somewhere


def test_a_reward_model_trained_on_a_rule_ranks_the_flipped_labels_first(audited, noisy_pairs):
    result, _ = audited
    flipped = noisy_pairs["label_flipped"]
    z = result.z_by_row()
    # AUROC by counting: over every (flipped, clean) couple, 1 where the flipped pair's margin is lower, 1/2 on a tie.
    couples = [(f, c) for f in range(len(z)) if flipped[f] for c in range(len(z)) if not flipped[c]]
    expected = sum(1.0 if z[f] < z[c] else 0.5 if z[f] == z[c] else 0.0 for f, c in couples) / len(couples)
    assert result.auroc == pytest.approx(expected)
    # Better than chance, and the right way round (a reversed ranking gives 1 − AUROC): 0.78 here. The tiny model also
    # memorises some of the 30 pairs, flipped ones included, so the rule does not separate them all.
    assert sum(flipped) == 6 and result.auroc > 0.7
    # The noise estimate is that of the margins, row by row, and each pair carries its probability.
    estimate = estimate_noise(np.asarray(z, dtype=np.float64))
    assert result.noise_estimate.flip_rate == pytest.approx(estimate.flip_rate)
    assert result.noise_estimate.interval == pytest.approx(estimate.interval)
    for pair in result.pairs:
        assert pair["p_flipped"] == pytest.approx(float(estimate.p_flipped[pair["row"]]))


def test_the_reward_audit_writes_the_same_files_as_the_policy_audit(audited, noisy_pairs):
    result, out = audited
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES.values())
    lines = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    assert lines == result.pairs and len(lines) == len(noisy_pairs)
    assert set(lines[0]) == {"rank", "row", "z", "reward_chosen", "reward_rejected", "bradley_terry_loss",
                             "sympo_sigmoid_loss", "p_flipped", "label_flipped"}
    with open(out / "audit.csv") as file:
        rows = list(csv.DictReader(file))
    assert [int(row["row"]) for row in rows] == [pair["row"] for pair in result.pairs]
    summary = (out / "summary.md").read_text()
    assert summary == result.summary
    assert "- reward model: " in summary and "z = r(x, chosen) − r(x, rejected)" in summary
    assert "β" not in summary and "reference" not in summary
    assert "bootstrap interval" in summary and f"AUROC of −z for the flipped pairs: {result.auroc:.4g}" in summary
    assert "| Bradley–Terry loss −log σ(z) |" in summary and "| sympo_sigmoid loss |" in summary


def test_the_command_audits_a_reward_model_as_the_api_does(audited, reward_model_path, noisy_pairs, tmp_path, capsys):
    result, _ = audited
    noisy_pairs.save_to_disk(str(tmp_path / "data"))
    code = cli_main(["audit", "--model_name_or_path", reward_model_path, "--dataset_name", str(tmp_path / "data"),
                     "--output_dir", str(tmp_path / "out"), "--per_device_eval_batch_size", "7"])
    assert code == 0
    assert "- reward model: " in capsys.readouterr().out
    lines = [json.loads(line) for line in (tmp_path / "out" / "audit.jsonl").read_text().splitlines()]
    assert [p["row"] for p in lines] == [p["row"] for p in result.pairs]
    assert [p["z"] for p in lines] == pytest.approx([p["z"] for p in result.pairs], abs=1e-6)
    assert "sympo_sigmoid_loss" not in lines[0] and "bradley_terry_loss" in lines[0]


def test_two_processes_audit_a_reward_model_as_one_process_does(audited, reward_model_path, noisy_pairs, tmp_path):
    # Two gloo ranks with 4 pairs each: 30 pairs leave a last global batch that accelerate pads with repeated pairs,
    # which must not be scored twice.
    result, _ = audited
    noisy_pairs.save_to_disk(str(tmp_path / "data"))
    launch = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no"]
    argv = ["--model_name_or_path", reward_model_path, "--dataset_name", str(tmp_path / "data"),
            "--per_device_eval_batch_size", "4", "--use_cpu", "true", "--output_dir", str(tmp_path / "two")]
    run = subprocess.run([*launch, "-m", "trl_robust.scripts.audit", *argv], capture_output=True, text=True,
                         env=command_env(tmp_path), cwd=tmp_path, timeout=180)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert "computed on 2 processes" in (tmp_path / "two" / "summary.md").read_text()
    lines = [json.loads(line) for line in (tmp_path / "two" / "audit.jsonl").read_text().splitlines()]
    assert sorted(p["row"] for p in lines) == list(range(len(noisy_pairs)))
    one = {p["row"]: p for p in result.pairs}
    for pair in lines:
        assert pair["z"] == pytest.approx(one[pair["row"]]["z"], abs=1e-5)
        assert pair["reward_chosen"] == pytest.approx(one[pair["row"]]["reward_chosen"], abs=1e-5)


# --- bad input: clear errors before any model is loaded ------------------------------------------------------------------


@pytest.fixture
def no_reward_model_loading(monkeypatch, no_model_loading):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", refuse)


@pytest.fixture(scope="module")
def two_label_classifier(tiny_model_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("classifier") / "model"
    AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=2).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ref_model": "TINY"}, "is a reward model .* with no reference; leave ref_model out"),
        ({"beta": 0.1}, r"has no β\. Leave beta out"),
        ({"loss_type": "drdpo"}, "one objective over a batch"),
        ({"loss_type": "sigmoid"}, "called 'bradley_terry' here"),
        ({"loss_type": "sympo_sigmod"}, "Did you mean 'sympo_sigmoid'"),
        ({"loss_type": "ropo", "loss_hyperparameters": {"ropo_alpha": -1.0}}, "ropo_alpha"),
        ({"loss_type": "ropo", "loss_hyperparameters": {"beta": 1.0}}, r"do not apply to loss_type 'ropo'"),
    ],
)
def test_bad_reward_audit_input_is_refused_before_any_model_loads(
    reward_model_path, noisy_pairs, tiny_model_path, no_reward_model_loading, kwargs, message
):
    if kwargs.get("ref_model") == "TINY":
        kwargs = {**kwargs, "ref_model": tiny_model_path}
    with pytest.raises(AuditInputError, match=message):
        audit_preferences(reward_model_path, noisy_pairs, show_progress=False, **kwargs)


def test_a_classifier_with_two_labels_is_no_reward_model(two_label_classifier, noisy_pairs, no_reward_model_loading):
    with pytest.raises(AuditInputError, match="sequence classifier with 2 labels"):
        audit_preferences(two_label_classifier, noisy_pairs, show_progress=False)


def test_pairs_longer_than_max_length_are_named_not_skipped(reward_model_path, noisy_pairs):
    lengths = [len(AutoTokenizer.from_pretrained(reward_model_path)(r["prompt"] + r["chosen"])["input_ids"]) for r in noisy_pairs]
    with pytest.raises(AuditInputError, match=r"rows cannot be scored: TRL's RewardTrainer leaves out .* Rows: \d"):
        audit_preferences(reward_model_path, noisy_pairs, max_length=min(lengths) + 1, show_progress=False)
