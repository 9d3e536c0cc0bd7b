"""The noisy-pair audit: per-row z equal to an independent computation and aligned with the input rows, ranking metrics
against hand-computed values, a known answer after training on clean labels, the files, PEFT adapters, errors before
any model loads, and the command in one and two processes."""

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from datasets import Dataset, load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_robust import RobustDPOTrainer
from trl_robust.audit import (
    OUTPUT_FILES,
    AuditInputError,
    AuditResult,
    audit_preferences,
    auroc,
    average_ranks,
    flip_metrics,
    precision_at_k,
)
from trl_robust.cli import main as cli_main
from trl_robust.data import flip_preferences
from trl_robust.losses import ropo_loss
from trl_robust.tiny import WORDS, tiny_preference_records

from .conftest import STANDALONE_RENDEZVOUS, independent_logps, perturb_, train_args

BIN = Path(sys.executable).parent  # the console scripts of the environment running the tests


def independent_z(policy, reference, tokenizer, rows, beta):
    """β·Δ of each pair from plain logits, tokenised by hand as TRL does (prompt, then completion + EOS)."""
    sequences = []  # (token ids, number of prompt tokens): all chosen, then all rejected
    for key in ("chosen", "rejected"):
        for row in rows:
            prompt_ids = tokenizer(row["prompt"])["input_ids"]
            ids = tokenizer(row["prompt"] + row[key] + tokenizer.eos_token)["input_ids"]
            assert ids[: len(prompt_ids)] == prompt_ids
            sequences.append((ids, len(prompt_ids)))
    width = max(len(ids) for ids, _ in sequences)
    pad = lambda values: values + [0] * (width - len(values))  # noqa: E731  (right padding: causal, harmless)
    batch = {
        "input_ids": torch.tensor([pad(ids) for ids, _ in sequences]),
        "attention_mask": torch.tensor([pad([1] * len(ids)) for ids, _ in sequences]),
        "completion_mask": torch.tensor([pad([0] * n + [1] * (len(ids) - n)) for ids, n in sequences]),
    }
    logratios = independent_logps(policy, batch) - independent_logps(reference, batch)
    chosen, rejected = logratios.double().chunk(2)
    return (beta * (chosen - rejected)).tolist()


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run fastest on one thread


def save_perturbed(tiny_model_path, path, seed=1, scale=0.05):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    perturb_(model, seed=seed, scale=scale)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def noisy_dataset():
    # Rows that all differ, 3 of 11 flipped: a batch size of 4 leaves a ragged last batch.
    return flip_preferences(Dataset.from_list(tiny_preference_records(n=11, seed=5)), 0.3, seed=2)


@pytest.fixture(scope="module")
def audited(tiny_model_path, noisy_dataset, tmp_path_factory):
    """One audit of a perturbed policy (passed loaded) against the tiny model (passed by path), files written."""
    tmp = tmp_path_factory.mktemp("audit")
    policy_path = save_perturbed(tiny_model_path, tmp / "policy")
    result = audit_preferences(
        AutoModelForCausalLM.from_pretrained(policy_path),
        noisy_dataset,
        ref_model=tiny_model_path,
        beta=0.5,
        batch_size=4,
        loss_type="ropo",
        loss_hyperparameters={"ropo_alpha": 6.0},
        output_dir=tmp / "out",
        show_progress=False,
    )
    return result, policy_path, tmp / "out"


# --- the scores ------------------------------------------------------------------------------------------------------


def test_z_of_every_row_equals_an_independent_computation_and_keeps_its_row_index(
    audited, noisy_dataset, tiny_model_path
):
    result, policy_path, _ = audited
    policy = AutoModelForCausalLM.from_pretrained(policy_path).eval()
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    expected = independent_z(policy, reference, tokenizer, list(noisy_dataset), beta=0.5)

    by_row = {pair["row"]: pair for pair in result.pairs}
    assert sorted(by_row) == list(range(len(noisy_dataset)))
    for row, z in enumerate(expected):
        assert by_row[row]["z"] == pytest.approx(z, abs=1e-5), row
        assert by_row[row]["label_flipped"] == noisy_dataset[row]["label_flipped"]
    # The margins differ from row to row, so a shifted or shuffled alignment could not pass the loop above.
    assert len({round(z, 4) for z in expected}) == len(expected) and max(map(abs, expected)) > 0.05

    # Ranked most suspicious first; the losses are those of z (ROPO with the α given).
    z = torch.tensor([pair["z"] for pair in result.pairs])
    assert [pair["rank"] for pair in result.pairs] == list(range(1, len(expected) + 1))
    assert torch.all(z[1:] >= z[:-1])
    torch.testing.assert_close(torch.tensor([p["dpo_loss"] for p in result.pairs]), -torch.nn.functional.logsigmoid(z))
    torch.testing.assert_close(torch.tensor([p["ropo_loss"] for p in result.pairs]), ropo_loss(z, alpha=6.0))
    assert result.z_by_row() == pytest.approx(expected, abs=1e-5)
    assert result.most_suspicious(3) == [pair["row"] for pair in result.pairs[:3]]


def test_outputs_hold_one_line_per_row_sorted_by_suspicion_and_a_summary_and_plot(audited, noisy_dataset):
    result, _, out = audited
    assert sorted(os.listdir(out)) == sorted(OUTPUT_FILES.values())
    assert result.paths == {kind: str(out / name) for kind, name in OUTPUT_FILES.items()}

    lines = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    assert lines == result.pairs and len(lines) == len(noisy_dataset)
    # No p_flipped: 11 pairs scored by a randomly perturbed policy cannot tell how many labels are flipped.
    assert result.noise_estimate.cannot_tell
    assert set(lines[0]) == {"rank", "row", "z", "dpo_loss", "ropo_loss", "label_flipped"}
    with open(out / "audit.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [int(r["row"]) for r in rows] == [p["row"] for p in result.pairs]
    assert [float(r["z"]) for r in rows] == pytest.approx([p["z"] for p in result.pairs])
    assert [r["label_flipped"] for r in rows] == [str(p["label_flipped"]) for p in result.pairs]

    summary = (out / "summary.md").read_text()
    assert summary == result.summary
    negative = sum(p["z"] < 0 for p in result.pairs)
    assert f"pairs with z < 0 (the policy prefers the rejected response): {negative} " in summary
    assert "flipped pairs: 3 of 11" in summary and "AUROC" in summary and "| quantile |" in summary
    assert (out / "z_histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "z_histogram.png").stat().st_size > 10_000


def test_a_non_empty_output_dir_is_refused_before_loading_and_left_unchanged(audited, noisy_dataset, no_model_loading):
    _, policy_path, out = audited
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    with pytest.raises(AuditInputError, match="already exists and is not empty.*overwrite=True"):
        audit_preferences(policy_path, noisy_dataset, ref_model=policy_path, output_dir=out)
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


def test_scores_follow_their_rows_when_the_data_loader_reorders_them(
    audited, noisy_dataset, tiny_model_path, monkeypatch
):
    # Rows reach the loss in an order of the data loader's choosing (a length-grouped sampler, accelerate's sharding):
    # each score must still land on its own row. Here the evaluation sampler visits the rows in a scrambled order.
    _, policy_path, _ = audited
    order = [7, 2, 10, 0, 5, 9, 1, 4, 8, 3, 6]
    visited = []

    def scrambled_sampler(self, dataset):
        visited.append(len(dataset))
        return order

    monkeypatch.setattr(transformers.Trainer, "_get_eval_sampler", scrambled_sampler)
    result = audit_preferences(
        policy_path, noisy_dataset, ref_model=tiny_model_path, beta=0.5, batch_size=4, show_progress=False
    )
    assert visited == [len(noisy_dataset)]  # the scrambled order was used
    assert result.z_by_row() == pytest.approx(audited[0].z_by_row(), abs=1e-5)


def test_a_dataset_with_an_implicit_prompt_is_scored_like_the_explicit_one(audited, noisy_dataset, tiny_model_path):
    _, policy_path, _ = audited
    # TRL extracts the shared start of chosen and rejected as the prompt; TRL 0.29 compares characters, so responses
    # that start alike ("and" / "and five") would move part of a word into the prompt. Keep pairs that differ at once.
    rows = [i for i, row in enumerate(noisy_dataset) if row["chosen"][1] != row["rejected"][1]]
    assert len(rows) >= 6
    implicit = noisy_dataset.select(rows).map(
        lambda row: {"chosen": row["prompt"] + row["chosen"], "rejected": row["prompt"] + row["rejected"]},
        remove_columns=["prompt"],
    )
    result = audit_preferences(policy_path, implicit, ref_model=tiny_model_path, beta=0.5, show_progress=False)
    z_explicit = audited[0].z_by_row()
    assert result.z_by_row() == pytest.approx([z_explicit[i] for i in rows], abs=1e-5)


# --- the clean step of clean-and-retrain -----------------------------------------------------------------------------


def hand_made_result(z_by_row):
    """An `AuditResult` for the given z per row, ranked as the audit ranks (lowest z first, ties by row)."""
    order = sorted(range(len(z_by_row)), key=lambda row: (z_by_row[row], row))
    return AuditResult(pairs=[{"rank": r + 1, "row": row, "z": z_by_row[row]} for r, row in enumerate(order)], beta=0.1)


def test_cleaning_drops_the_most_suspicious_pairs_and_keeps_the_order_of_the_rest():
    data = Dataset.from_dict({"prompt": list("abcde"), "chosen": list("CCCCC"), "rejected": list("RRRRR")})
    result = hand_made_result([0.3, -1.0, 2.0, -0.5, 0.0])  # suspects in order: rows 1, 3, 4, 0, 2
    cleaned = result.cleaned(data, 0.4)  # ⌊0.4 · 5⌋ = 2 pairs: rows 1 and 3
    assert cleaned["prompt"] == ["a", "c", "e"]
    assert result.cleaned(data, 0.0)["prompt"] == list("abcde")


def test_cleaning_by_swap_exchanges_the_responses_and_toggles_the_flip_record():
    data = Dataset.from_dict({"prompt": list("abc"), "chosen": ["c0", "c1", "c2"], "rejected": ["r0", "r1", "r2"],
                              "label_flipped": [True, False, False]})
    cleaned = hand_made_result([-2.0, 1.0, -1.0]).cleaned(data, 0.7, mode="swap")  # ⌊2.1⌋ = 2: rows 0 and 2
    assert cleaned["chosen"] == ["r0", "c1", "r2"] and cleaned["rejected"] == ["c0", "r1", "c2"]
    assert cleaned["label_flipped"] == [False, False, True]
    assert data["chosen"] == ["c0", "c1", "c2"]  # the input is left as it was


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda r, d: r.cleaned(d.select([0]), 0.2), "pass the dataset that was audited"),
        (lambda r, d: r.cleaned(d, 1.0), r"share must be in \[0, 1\)"),
        (lambda r, d: r.cleaned(d, 0.2, mode="flip"), r"mode must be one of \['drop', 'swap'\]"),
    ],
)
def test_cleaning_refuses_bad_arguments(call, message):
    data = Dataset.from_dict({"prompt": ["a", "b"], "chosen": ["c", "c"], "rejected": ["r", "r"]})
    with pytest.raises(ValueError, match=message):
        call(hand_made_result([0.0, 1.0]), data)


# --- ranking metrics against hand-computed values --------------------------------------------------------------------


@pytest.mark.parametrize(
    "suspicion, positive, expected",
    [
        ([3.0, 2.0, 1.0], [True, False, False], 1.0),
        ([1.0, 2.0, 3.0], [True, False, False], 0.0),
        # Pairs (positive, negative): (.9,.8) 1, (.9,.1) 1, (.8,.8) a tie: 1/2, (.8,.1) 1 -> 3.5 / 4.
        ([0.9, 0.8, 0.8, 0.1], [True, False, True, False], 0.875),
        ([1.0, 1.0, 1.0, 1.0], [True, False, True, False], 0.5),  # all tied: chance
        # Positive .5 vs negatives .2, .5, .5: 1 + 1/2 + 1/2; positive .9 beats all three -> 5 / 6.
        ([0.2, 0.5, 0.5, 0.5, 0.9], [False, True, False, False, True], 5 / 6),
        ([1.0, 2.0], [False, False], None),  # no positives: undefined
        ([1.0, 2.0], [True, True], None),
    ],
)
def test_auroc_by_rank_sum_with_ties(suspicion, positive, expected):
    value = auroc(suspicion, positive)
    assert value == (None if expected is None else pytest.approx(expected))
    if expected is not None:  # the same as counting every (positive, negative) pair, ties as one half
        pairs = [(s, t) for s, p in zip(suspicion, positive) if p for t, q in zip(suspicion, positive) if not q]
        assert value == pytest.approx(sum(1.0 if s > t else 0.5 if s == t else 0.0 for s, t in pairs) / len(pairs))


def test_average_ranks_share_ties():
    assert average_ranks([0.5, 0.1, 0.5, 0.9, 0.5]).tolist() == [3.0, 1.0, 3.0, 5.0, 3.0]


@pytest.mark.parametrize(
    "k, expected",
    [
        (1, 1.0),
        (2, (1 + 0.5) / 2),  # the 2nd place is a tie of one flipped and one clean pair: half of each
        (3, 2 / 3),
        (4, 0.5),
    ],
)
def test_precision_at_k_counts_ties_at_the_cut_in_proportion(k, expected):
    assert precision_at_k([0.9, 0.8, 0.8, 0.1], [True, False, True, False], k) == pytest.approx(expected)
    # Independent of the order the tied pairs come in.
    assert precision_at_k([0.1, 0.8, 0.8, 0.9], [False, True, False, True], k) == pytest.approx(expected)


def test_flip_metrics_report_k_equal_to_the_flipped_count_and_fixed_shares():
    z = [-(i % 7) + 0.1 * i for i in range(40)]  # any scores; 40 pairs, 6 flipped
    flipped = [i in (0, 5, 6, 13, 20, 33) for i in range(40)]
    value, table = flip_metrics(z, flipped)
    assert value == auroc([-v for v in z], flipped)
    assert {name: entry["k"] for name, entry in table.items()} == {"n_flipped": 6, "5%": 2, "10%": 4, "20%": 8}
    for entry in table.values():
        assert entry["precision"] == precision_at_k([-v for v in z], flipped, entry["k"])
        assert entry["recall"] == pytest.approx(entry["precision"] * entry["k"] / 6)


# --- a known answer --------------------------------------------------------------------------------------------------

GOOD, BAD = WORDS[:12], WORDS[-12:]


def good_vs_bad_records(n, seed):
    """Pairs whose chosen response is drawn from one half of the vocabulary and the rejected one from the other."""
    rng = random.Random(seed)
    sentence = lambda words: " ".join(rng.choice(words) for _ in range(rng.randint(2, 4)))  # noqa: E731
    return [
        {"prompt": sentence(WORDS), "chosen": " " + sentence(GOOD), "rejected": " " + sentence(BAD)} for _ in range(n)
    ]


def test_a_policy_trained_on_clean_labels_ranks_the_flipped_pairs_of_new_data_first(tiny_model_path, tmp_path):
    trainer = RobustDPOTrainer(
        model=tiny_model_path,
        args=train_args(tmp_path, max_steps=12, learning_rate=0.01, per_device_train_batch_size=8),
        train_dataset=Dataset.from_list(good_vs_bad_records(48, seed=0)),
    )
    trainer.train()
    trainer.model.save_pretrained(tmp_path / "trained")
    trainer.processing_class.save_pretrained(tmp_path / "trained")

    clean = Dataset.from_list(good_vs_bad_records(40, seed=1))  # pairs the policy has not seen
    noisy = flip_preferences(clean, 0.25, seed=0)
    kwargs = dict(ref_model=tiny_model_path, batch_size=16, show_progress=False)
    audit_noisy = audit_preferences(str(tmp_path / "trained"), noisy, **kwargs)
    audit_clean = audit_preferences(str(tmp_path / "trained"), clean, **kwargs)

    # Swapping chosen and rejected negates z, row by row; nothing else moves.
    flipped = noisy["label_flipped"]
    z_noisy, z_clean = audit_noisy.z_by_row(), audit_clean.z_by_row()
    for row, was_flipped in enumerate(flipped):
        assert z_noisy[row] == pytest.approx(-z_clean[row] if was_flipped else z_clean[row], abs=1e-5), row
    assert audit_clean.auroc is None and audit_clean.precision_at_k is None  # no flip record

    assert audit_noisy.auroc == auroc([-z for z in z_noisy], flipped)
    assert audit_noisy.auroc > 0.8
    assert audit_noisy.precision_at_k["n_flipped"]["k"] == 10
    assert audit_noisy.precision_at_k["n_flipped"]["precision"] >= 0.7
    assert sum(z < 0 for z in z_clean) <= 4  # the clean labels agree with the policy


# --- PEFT ------------------------------------------------------------------------------------------------------------


def test_a_peft_adapter_without_ref_model_is_scored_against_its_base_model(tiny_model_path, tmp_path, noisy_dataset):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, lora)
    peft_model.save_pretrained(tmp_path / "adapter")  # no tokenizer here: the base model's is used
    peft_model.merge_and_unload().save_pretrained(tmp_path / "merged")
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(tmp_path / "merged")

    kwargs = dict(beta=1.0, batch_size=4, show_progress=False)
    from_adapter = audit_preferences(str(tmp_path / "adapter"), noisy_dataset, **kwargs).z_by_row()
    from_merged = audit_preferences(str(tmp_path / "merged"), noisy_dataset, ref_model=tiny_model_path, **kwargs)
    assert from_adapter == pytest.approx(from_merged.z_by_row(), abs=1e-5)
    # Not the adapter against a copy of itself (what TRL makes the reference of a `PeftModel` passed alone): z ≠ 0.
    assert max(map(abs, from_adapter)) > 1e-2


def test_the_audit_estimates_the_share_of_flipped_labels_from_its_margins(audited):
    from trl_robust.noise import estimate_noise

    result, _, out = audited
    # The estimate is the noise estimator's on the audited margins, in input-row order (computed again here). Each
    # pair's probability, where the estimate can tell: tests/test_audit_faults.py.
    expected = estimate_noise(result.z_by_row())
    assert result.noise_estimate.flip_rate == pytest.approx(expected.flip_rate)
    assert result.noise_estimate.cannot_tell == expected.cannot_tell
    summary = (out / "summary.md").read_text()
    assert f"estimated flipped labels: {expected.describe()}" in summary


def test_an_audit_of_a_policy_equal_to_its_reference_has_no_estimate(tiny_model_path, noisy_dataset):
    result = audit_preferences(tiny_model_path, noisy_dataset, ref_model=tiny_model_path, show_progress=False)
    assert set(p["z"] for p in result.pairs) == {0.0} and result.noise_estimate is None
    assert "p_flipped" not in result.pairs[0]
    assert "cannot tell — every margin is the same (is the policy identical to its reference?)" in result.summary


def copy_with_vocabulary(tiny_model_path, path, vocab_size=None, swap_tokens=None):
    """A copy of the tiny model directory whose config states another vocab_size, or whose tokenizer.json swaps the
    ids of two tokens (same size, other vocabulary). Only files change: nothing is loaded."""
    import shutil

    shutil.copytree(tiny_model_path, path)
    if vocab_size is not None:
        config = json.loads((path / "config.json").read_text())
        config["vocab_size"] = vocab_size
        (path / "config.json").write_text(json.dumps(config))
    if swap_tokens is not None:
        tokenizer = json.loads((path / "tokenizer.json").read_text())
        vocab = tokenizer["model"]["vocab"]
        a, b = swap_tokens
        vocab[a], vocab[b] = vocab[b], vocab[a]
        (path / "tokenizer.json").write_text(json.dumps(tokenizer))
    return str(path)


@pytest.mark.parametrize("change", [{"vocab_size": 1000}, {"vocab_size": 20}, {"swap_tokens": (WORDS[0], WORDS[1])}])
def test_a_reference_with_another_vocabulary_is_refused_before_any_model_loads(
    change, tiny_model_path, noisy_dataset, tmp_path, no_model_loading
):
    reference = copy_with_vocabulary(Path(tiny_model_path), tmp_path / "reference", **change)
    with pytest.raises(AuditInputError, match="do not share a vocabulary") as error:
        audit_preferences(tiny_model_path, noisy_dataset, ref_model=reference, output_dir=tmp_path / "out")
    if "vocab_size" in change:
        size = json.loads((Path(tiny_model_path) / "config.json").read_text())["vocab_size"]
        assert f"vocab_size {size} (policy) vs {change['vocab_size']} (reference)" in str(error.value)
    else:
        assert "tokenizer.json vocabularies differ" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_loaded_models_with_different_vocabularies_are_refused_before_scoring(tiny_model_path, noisy_dataset):
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    reference.resize_token_embeddings(reference.config.vocab_size + 7)  # what a reference with more tokens looks like
    with pytest.raises(AuditInputError, match=r"do not share a vocabulary: vocab_size \d+ \(policy\) vs \d+"):
        audit_preferences(policy, noisy_dataset, ref_model=reference, show_progress=False)


def test_a_beta_other_than_the_one_the_policy_was_trained_with_warns_before_loading(
    tiny_model_path, noisy_dataset, tmp_path, no_model_loading
):
    import shutil
    import warnings

    from trl_robust import RobustDPOConfig

    policy = tmp_path / "policy"
    shutil.copytree(tiny_model_path, policy)
    # What transformers' Trainer saves next to the model: the training arguments, pickled by torch.save.
    torch.save(RobustDPOConfig(output_dir=str(tmp_path / "run"), beta=0.5, use_cpu=True, bf16=False),
               policy / "training_args.bin")
    with pytest.warns(UserWarning, match=r"trained with beta=0.5 .*audit uses beta=0.1.*--beta 0.5"):
        with pytest.raises(AssertionError, match="a model was loaded"):  # the warning came first
            audit_preferences(str(policy), noisy_dataset, ref_model=tiny_model_path, beta=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with pytest.raises(AssertionError, match="a model was loaded"):
            audit_preferences(str(policy), noisy_dataset, ref_model=tiny_model_path, beta=0.5)


def test_builtin_names_work_in_python_as_in_the_command(noisy_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_ROBUST_CACHE", str(tmp_path / "cache"))
    result = audit_preferences("builtin:tiny", noisy_dataset, ref_model="builtin:tiny", show_progress=False)
    assert len(result.pairs) == len(noisy_dataset) and {p["z"] for p in result.pairs} == {0.0}  # policy = reference
    with pytest.raises(AuditInputError, match="unknown built-in model 'builtin:huge'"):
        audit_preferences("builtin:huge", noisy_dataset, ref_model="builtin:tiny")


# --- bad input -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"beta": 0.0}, "beta must be a finite number > 0"),
        ({"beta": float("nan")}, "beta must be a finite number > 0"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"max_length": 1}, "max_length must be None"),
        ({"model": "/no/such/model"}, "'/no/such/model' does not exist"),
        ({"ref_model": None}, "ref_model is required: the policy .* is a full model"),
        ({"ref_model": "/no/such/ref"}, "ref_model '/no/such/ref' does not exist"),
        ({"dataset": "rename"}, "no 'chosen' column"),
        ({"dataset": "bad_flags"}, "'label_flipped' value that is not True or False"),
        ({"loss_type": "ropoo"}, "not a loss type registered in trl_robust"),
        ({"loss_type": "drdpo"}, "couples the pairs of a batch"),
        ({"loss_type": "ropo", "loss_hyperparameters": {"sympo_reward_clip": 3}}, "do not apply to loss_type 'ropo'"),
    ],
)
def test_bad_input_is_refused_before_any_model_is_loaded(
    change, expected, tiny_model_path, noisy_dataset, tmp_path, no_model_loading
):
    kwargs = dict(model=tiny_model_path, dataset=noisy_dataset, ref_model=tiny_model_path, output_dir=tmp_path / "out")
    kwargs.update(change)
    if kwargs["dataset"] == "rename":
        kwargs["dataset"] = noisy_dataset.rename_column("chosen", "chosen_response")
    elif kwargs["dataset"] == "bad_flags":
        kwargs["dataset"] = noisy_dataset.remove_columns("label_flipped").add_column("label_flipped", ["yes"] * 11)
    with pytest.raises(AuditInputError, match=expected):
        audit_preferences(kwargs.pop("model"), kwargs.pop("dataset"), **kwargs)
    assert not (tmp_path / "out").exists()


def test_rows_trl_would_not_score_in_full_are_named(tiny_model_path, tmp_path):
    records = tiny_preference_records(n=6, seed=0)
    records[4]["prompt"] = " ".join(["hello"] * 12)  # its prompt alone fills max_length
    policy = save_perturbed(tiny_model_path, tmp_path / "policy")
    with pytest.raises(AuditInputError, match=r"1 of 6 rows cannot be scored.*max_length=10.*Rows: 4\."):
        audit_preferences(
            policy, Dataset.from_list(records), ref_model=tiny_model_path, max_length=10, show_progress=False
        )


# --- the command -----------------------------------------------------------------------------------------------------


def command_env(tmp_path):
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "TRL_ROBUST_CACHE": str(tmp_path / "builtin-cache"),  # the built-ins are materialised fresh
        "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"),
        **STANDALONE_RENDEZVOUS,
    }


def builtin_train_split(tmp_path):
    (path,) = (tmp_path / "builtin-cache").glob("*/datasets/tiny")
    return load_dataset(str(path), split="train", cache_dir=str(tmp_path / "datasets-cache"))


@pytest.fixture(scope="module")
def cli_run(tiny_model_path, tmp_path_factory):
    """`trl-robust audit` on `builtin:tiny` through the real console script, and the same audit through the API."""
    tmp = tmp_path_factory.mktemp("cli")
    policy = save_perturbed(tiny_model_path, tmp / "policy", seed=3)
    argv = ["--model_name_or_path", policy, "--ref_model", tiny_model_path, "--dataset_name", "builtin:tiny",
            "--per_device_eval_batch_size", "5", "--beta", "0.2"]
    result = subprocess.run(
        [str(BIN / "trl-robust"), "audit", *argv, "--output_dir", str(tmp / "out")],
        capture_output=True, text=True, env=command_env(tmp), cwd=tmp, timeout=180,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    api = audit_preferences(policy, builtin_train_split(tmp), ref_model=tiny_model_path, beta=0.2, show_progress=False)
    return tmp, argv, result, api


def test_audit_command_runs_end_to_end_on_builtin_data(cli_run):
    tmp, _, result, api = cli_run
    assert "# Noisy-pair audit" in result.stdout and "computed on 1 process" in result.stdout
    assert str(tmp / "out" / "audit.jsonl") in result.stdout
    lines = [json.loads(line) for line in (tmp / "out" / "audit.jsonl").read_text().splitlines()]
    assert len(lines) == 64 and sorted(p["row"] for p in lines) == list(range(64))  # the 64 train pairs
    assert [p["row"] for p in lines] == [p["row"] for p in api.pairs]
    assert [p["z"] for p in lines] == pytest.approx([p["z"] for p in api.pairs], abs=1e-6)
    assert (tmp / "out" / "z_histogram.png").exists() and (tmp / "out" / "summary.md").exists()


def test_two_processes_score_every_row_once_as_one_process_does(cli_run):
    tmp, argv, _, api = cli_run
    # On a machine without GPUs, `--multi_gpu --num_processes 2` gives two gloo ranks (with use_cpu). 64 pairs in
    # batches of 5 per rank leave a last global batch that accelerate pads with repeated pairs: they must not count.
    launch = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = subprocess.run(
        [*launch, "-m", "trl_robust.scripts.audit", *argv, "--use_cpu", "true", "--output_dir", str(tmp / "two")],
        capture_output=True, text=True, env=command_env(tmp), cwd=tmp, timeout=180,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]  # a rank hanging at exit times out
    assert "computed on 2 processes" in (tmp / "two" / "summary.md").read_text()
    assert result.stdout.count("# Noisy-pair audit") == 1  # printed by the main process only
    lines = [json.loads(line) for line in (tmp / "two" / "audit.jsonl").read_text().splitlines()]
    assert sorted(p["row"] for p in lines) == list(range(64))
    z_two = {p["row"]: p["z"] for p in lines}
    assert [z_two[row] for row in range(64)] == pytest.approx(api.z_by_row(), abs=1e-5)


def test_audit_command_reports_bad_input_before_loading_a_model(
    tiny_model_path, tmp_path, capsys, monkeypatch, no_model_loading
):
    monkeypatch.setenv("TRL_ROBUST_CACHE", str(tmp_path / "builtin-cache"))
    out = tmp_path / "out"
    code = cli_main(["audit", "--model_name_or_path", tiny_model_path, "--dataset_name", "builtin:tiny",
                     "--output_dir", str(out)])
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("trl-robust audit: error: ref_model is required") and "--ref_model PATH" in error
    assert not out.exists()

    code = cli_main(["audit", "--model_name_or_path", tiny_model_path, "--ref_model", tiny_model_path,
                     "--dataset_name", str(tmp_path / "missing"), "--output_dir", str(out)])
    assert code == 2 and "does not exist" in capsys.readouterr().err

    code = cli_main(["audit", "--model_name_or_path", tiny_model_path, "--ref_model", tiny_model_path,
                     "--dataset_name", "builtin:tiny", "--output_dir", str(out), "--clean_share", "1.5"])
    assert code == 2 and "--clean_share must be in [0, 1)" in capsys.readouterr().err
    assert not out.exists()


def test_the_clean_and_retrain_recipe_runs_its_three_steps_and_cleans_what_the_audit_ranked_first(tmp_path):
    script = Path(__file__).resolve().parent.parent / "recipes" / "clean_and_retrain.sh"
    env = {**command_env(tmp_path), "PATH": f"{BIN}:{os.environ['PATH']}", "OUT": str(tmp_path / "run")}
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    run = tmp_path / "run"
    # The audit saw the noisy split the first training saw (same flips): it can be scored against the flip record.
    audit = [json.loads(line) for line in (run / "audit" / "audit.jsonl").read_text().splitlines()]
    assert len(audit) == 64 and sum(p["label_flipped"] for p in audit) == 16  # 25% of the 64 built-in pairs
    assert "AUROC" in (run / "audit" / "summary.md").read_text()
    # The cleaned split is the noisy one without the audit's 12 (⌊0.2 · 64⌋) lowest-z rows.
    noisy = flip_preferences(builtin_train_split(tmp_path), 0.25, seed=0)
    kept = [noisy[p["row"]]["prompt"] for p in sorted(audit[12:], key=lambda p: p["row"])]
    cleaned = [json.loads(line) for line in (run / "audit" / "cleaned" / "train.jsonl").read_text().splitlines()]
    assert [row["prompt"] for row in cleaned] == kept
    assert (run / "retrained" / "config.json").exists()
    assert "- sigmoid" in (run / "retrained" / "README.md").read_text()  # retrained with plain DPO

    # Run again into the same place: refused, nothing touched.
    before = sorted(str(p) for p in run.rglob("*"))
    again = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert again.returncode == 2 and "already holds files" in again.stderr
    assert sorted(str(p) for p in run.rglob("*")) == before


def test_top_level_help_lists_audit(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--help"])
    assert exit_info.value.code == 0
    assert "audit" in capsys.readouterr().out
