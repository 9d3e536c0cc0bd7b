"""`RobustDPOTrainer` with the robust losses, through the real TRL `DPOTrainer` code paths."""

import math
import warnings
from pathlib import Path

import pytest
import torch
import trl
from torch.testing import assert_close
from transformers import AutoModelForCausalLM

from trl_robust import RobustDPOTrainer
from trl_robust.registry import get_loss_spec, registered_loss_types

from .conftest import first_batch, independent_logps, perturb_, train_args
from .loss_reference import REFERENCE, reference_grad_weight, reference_loss

REGISTERED = registered_loss_types()  # every loss type of the package; expected values come from loss_reference.py


def value_at_zero_margin(name):
    # Before the first update the policy equals the reference, so every margin is 0.
    return reference_loss(name, torch.zeros(1, dtype=torch.float64)).item()


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


@pytest.mark.parametrize("dataset_kind", ["standard", "conversational"])
@pytest.mark.parametrize("loss_type", REGISTERED)
def test_training_changes_every_trainable_parameter(
    tiny_model_path, preference_dataset, conversational_dataset, tmp_path, loss_type, dataset_kind
):
    dataset = preference_dataset if dataset_kind == "standard" else conversational_dataset
    trainer = RobustDPOTrainer(
        model=tiny_model_path, args=train_args(tmp_path, loss_type=loss_type, label_smoothing=0.1), train_dataset=dataset
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert logged(trainer, "train_loss") and math.isfinite(logged(trainer, "train_loss")[0])
    for name, param in trainer.model.named_parameters():
        assert not torch.equal(param, before[name]), f"{name} did not change"
    # The first step sees policy == reference: the loss is ℓ(0).
    assert logged(trainer, "loss")[0] == pytest.approx(value_at_zero_margin(loss_type), rel=1e-5)


def independent_computation_cases():
    """(loss_type, config overrides) from the registry: each loss at β 2 with the table's off-default hyperparameters
    and, where it clips rewards, a tight clip that bites; one loss that may go unclipped without its clip; the first
    loss at the defaults."""
    cases = [(REGISTERED[0], {})]
    unclipped = None
    for name in REGISTERED:
        spec = get_loss_spec(name)
        overrides = {"beta": 2.0}
        for kwarg, value in REFERENCE[name].extra.items() if name in REFERENCE else ():
            overrides[spec.hyperparameters[kwarg].attribute] = value
        if spec.uses_reward_clip:
            overrides["sympo_reward_clip"] = 0.05  # tight clip: most pairs clipped
            if unclipped is None and not spec.requires_reward_clip:
                unclipped = (name, {"beta": 2.0, "sympo_reward_clip": None})
        cases.append((name, overrides))
    return cases + ([unclipped] if unclipped else [])


@pytest.mark.parametrize("loss_type, overrides", independent_computation_cases())
@pytest.mark.parity
def test_loss_and_metrics_match_independent_computation(tiny_model_path, preference_dataset, tmp_path, loss_type, overrides):
    args = train_args(tmp_path, loss_type=loss_type, per_device_train_batch_size=8, **overrides)
    trainer = RobustDPOTrainer(model=tiny_model_path, args=args, train_dataset=preference_dataset)
    perturb_(trainer.model, seed=3, scale=0.2)
    trainer.model.train()
    batch = first_batch(trainer)
    loss = trainer.compute_loss(trainer.model, batch)

    # Independent: plain-logit log-probs of the perturbed policy and of the untouched saved reference.
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    policy_chosen, policy_rejected = independent_logps(trainer.model, batch).double().chunk(2)
    ref_chosen, ref_rejected = independent_logps(reference, batch).double().chunk(2)
    beta = args.beta
    chosen_reward, rejected_reward = beta * (policy_chosen - ref_chosen), beta * (policy_rejected - ref_rejected)
    spec = get_loss_spec(loss_type)
    clip = args.sympo_reward_clip if spec.uses_reward_clip else None
    if clip is not None:
        clipped = (chosen_reward.abs() > clip) | (rejected_reward.abs() > clip)
        z = chosen_reward.clamp(-clip, clip) - rejected_reward.clamp(-clip, clip)
    else:
        z = chosen_reward - rejected_reward
    hyperparameters = {kwarg: getattr(args, h.attribute) for kwarg, h in spec.hyperparameters.items()}
    expected_loss = reference_loss(loss_type, z, **hyperparameters).mean()
    assert_close(loss.double().item(), expected_loss.item(), atol=2e-5, rtol=2e-5)

    metrics = trainer._metrics["train"]
    assert metrics["rewards/margins"][-1] == pytest.approx((chosen_reward - rejected_reward).mean().item(), abs=2e-5)
    weight = reference_grad_weight(loss_type, z, **hyperparameters)
    assert metrics[f"{loss_type}/grad_weight"][-1] == pytest.approx(weight.mean().item(), abs=1e-5)
    assert metrics[f"{loss_type}/grad_weight_vs_logistic"][-1] == pytest.approx(
        (weight.sum() / torch.sigmoid(-z).sum()).item(), rel=1e-4
    )
    assert metrics[f"{loss_type}/negative_margin_frac"][-1] == pytest.approx((z < 0).double().mean().item())
    assert metrics[f"{loss_type}/saturated_frac"][-1] == pytest.approx((weight == 0).double().mean().item())
    if clip is not None:
        assert metrics[f"{loss_type}/clipped_frac"][-1] == pytest.approx(clipped.double().mean().item())
        if clip == 0.05:
            assert clipped.any(), "the tight clip should bite on a perturbed model"
    else:
        assert f"{loss_type}/clipped_frac" not in metrics


def test_multi_loss_list_with_weights_combines_as_weighted_sum(tiny_model_path, preference_dataset, tmp_path):
    args = train_args(tmp_path, loss_type=["sympo_sigmoid", "sft"], loss_weights=[1.0, 0.5], beta=2.0)
    trainer = RobustDPOTrainer(model=tiny_model_path, args=args, train_dataset=preference_dataset)
    perturb_(trainer.model, seed=4, scale=0.2)
    trainer.model.train()
    batch = first_batch(trainer)
    loss = trainer.compute_loss(trainer.model, batch)

    reference = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    policy_chosen, policy_rejected = independent_logps(trainer.model, batch).double().chunk(2)
    ref_chosen, ref_rejected = independent_logps(reference, batch).double().chunk(2)
    z = (2.0 * (policy_chosen - ref_chosen)).clamp(-10, 10) - (2.0 * (policy_rejected - ref_rejected)).clamp(-10, 10)
    # SFT term: mean negative log-likelihood of the chosen completion tokens.
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    token_logps = torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    chosen_mask = batch["completion_mask"][:, 1:].chunk(2)[0].bool()
    sft = -token_logps.chunk(2)[0][chosen_mask].mean()
    expected = reference_loss("sympo_sigmoid", z).mean() + 0.5 * sft
    assert_close(loss.double().item(), expected.item(), atol=2e-5, rtol=2e-5)


def test_precomputed_reference_gives_the_same_training_as_live_reference(tiny_model_path, preference_dataset, tmp_path):
    runs = {}
    for precompute in (False, True):
        args = train_args(tmp_path / str(precompute), loss_type="ropo", precompute_ref_log_probs=precompute, max_steps=4)
        trainer = RobustDPOTrainer(model=tiny_model_path, args=args, train_dataset=preference_dataset)
        trainer.train()
        runs[precompute] = logged(trainer, "loss")
    assert runs[True] == pytest.approx(runs[False], abs=1e-5)
    assert runs[False][-1] != pytest.approx(runs[False][0])  # it trained: the later losses moved


def test_peft_lora_without_reference_model(tiny_model_path, preference_dataset, tmp_path):
    from peft import LoraConfig

    args = train_args(tmp_path, loss_type="sympo_sigmoid", max_steps=4)
    trainer = RobustDPOTrainer(
        model=tiny_model_path,
        args=args,
        train_dataset=preference_dataset,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    assert trainer.ref_model is None  # the reference is the base model with the adapter disabled
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    # LoRA's B starts at zero, so the first margins are 0 and the loss is σ(0) = 0.5.
    assert logged(trainer, "loss")[0] == pytest.approx(0.5, abs=1e-6)
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in trainable)
    assert changed <= trainable  # the base model (the reference) is untouched
    # B starts at zero, so it gets the first gradient; every B must have moved (A may still be waiting on B).
    assert {n for n in trainable if "lora_B" in n} <= changed
    assert logged(trainer, "loss")[-1] != pytest.approx(0.5, abs=1e-6)


def test_wpo_weighting_scales_the_robust_loss(tiny_model_path, preference_dataset, tmp_path):
    args = train_args(tmp_path, loss_type="ropo", use_weighting=True, max_steps=2)
    trainer = RobustDPOTrainer(model=tiny_model_path, args=args, train_dataset=preference_dataset)
    trainer.train()
    first = logged(trainer, "loss")[0]
    # WPO multiplies each pair's loss by a weight in (0, 1]; at zero margin ROPO's loss is ℓ(0) = 1.914739.
    assert 0 < first < value_at_zero_margin("ropo") * 0.999


def test_ld_alpha_reweights_the_verbose_tail(tiny_model_path, preference_dataset, tmp_path):
    losses = {}
    for ld_alpha in (None, 1.0, 0.5):
        args = train_args(tmp_path, loss_type="ropo", ld_alpha=ld_alpha, per_device_train_batch_size=8)
        trainer = RobustDPOTrainer(model=tiny_model_path, args=args, train_dataset=preference_dataset)
        perturb_(trainer.model, seed=5, scale=0.2)
        losses[ld_alpha] = trainer.compute_loss(trainer.model, first_batch(trainer)).item()
    assert losses[1.0] == pytest.approx(losses[None], abs=1e-6)  # α = 1 weighs the tail fully: plain DPO scores
    assert losses[0.5] != pytest.approx(losses[None], abs=1e-4)


def test_f_divergence_scores_feed_the_robust_loss(tiny_model_path, preference_dataset, tmp_path):
    args = train_args(tmp_path, loss_type="ropo", f_divergence_type="forward_kl", per_device_train_batch_size=8)
    trainer = RobustDPOTrainer(model=tiny_model_path, args=args, train_dataset=preference_dataset)
    assert trainer.loss_types == ["ropo"] and args.loss_type == ["ropo"]  # the user's list is restored
    perturb_(trainer.model, seed=6, scale=0.2)
    batch = first_batch(trainer)
    loss = trainer.compute_loss(trainer.model, batch)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    chosen_ratio, rejected_ratio = (independent_logps(trainer.model, batch) - independent_logps(reference, batch)).double().chunk(2)
    # forward KL: f'(t) = 1 − 1/t, scores 1 − exp(−log-ratio)
    z = args.beta * ((1 - torch.exp(-chosen_ratio)) - (1 - torch.exp(-rejected_ratio)))
    assert_close(loss.double().item(), reference_loss("ropo", z).mean().item(), atol=2e-5, rtol=2e-5)


def test_gradient_accumulation_matches_one_large_batch(tiny_model_path, preference_dataset, tmp_path):
    params = {}
    for batch_size, accumulation in ((8, 1), (4, 2)):
        args = train_args(
            tmp_path / f"{batch_size}x{accumulation}",
            loss_type="sympo_sigmoid",
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            optim="sgd",
            lr_scheduler_type="constant",
        )
        trainer = RobustDPOTrainer(model=tiny_model_path, args=args, train_dataset=preference_dataset)
        perturb_(trainer.model, seed=7, scale=0.2)  # non-zero margins so the step depends on the loss
        trainer.train()
        params[accumulation] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    for name, value in params[1].items():
        assert_close(params[2][name], value, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("loss_type", REGISTERED)
def test_evaluation_reports_eval_loss_and_robust_metrics(tiny_model_path, preference_dataset, tmp_path, loss_type):
    args = train_args(tmp_path, loss_type=loss_type, eval_strategy="no")
    trainer = RobustDPOTrainer(
        model=tiny_model_path, args=args, train_dataset=preference_dataset, eval_dataset=preference_dataset
    )
    assert trainer.evaluate()["eval_loss"] == pytest.approx(value_at_zero_margin(loss_type), rel=1e-5)
    metrics = trainer.state.log_history[-1]  # TRL < 1.x returns only its own keys from evaluate(); the log has all
    # Untrained policy == reference: every margin is 0, so eval_loss = ℓ(0).
    assert metrics["eval_loss"] == pytest.approx(value_at_zero_margin(loss_type), rel=1e-5)
    assert metrics[f"eval_{loss_type}/negative_margin_frac"] == 0.0
    assert metrics[f"eval_{loss_type}/grad_weight"] == pytest.approx(
        reference_grad_weight(loss_type, torch.zeros(1, dtype=torch.float64)).item(), rel=1e-5
    )


def test_model_card_names_method_tags_and_citations(tiny_model_path, preference_dataset, tmp_path):
    args = train_args(tmp_path, loss_type=["ropo", "sympo_sigmoid"], max_steps=1)
    trainer = RobustDPOTrainer(model=tiny_model_path, args=args, train_dataset=preference_dataset)
    trainer.train()
    trainer.save_model()  # with save_strategy="no" TRL itself would write no card
    card = (Path(args.output_dir) / "README.md").read_text()
    assert "DPO with the ropo + sympo_sigmoid loss (trl-robust)" in card
    for tag in ("trl-robust", "ropo", "sympo_sigmoid", "dpo", "trl"):
        assert f"- {tag}\n" in card, tag
    for bibtex_key in ("rafailov2023direct", "liang2025ropo", "nishimori2025sympo"):
        assert bibtex_key in card, bibtex_key
    assert "https://huggingface.co/papers/2404.04102" in card
    # The saved model loads back.
    assert AutoModelForCausalLM.from_pretrained(args.output_dir) is not None


def test_stock_loss_types_keep_the_dpo_model_card(tiny_model_path, preference_dataset, tmp_path):
    args = train_args(tmp_path, loss_type="sigmoid", max_steps=1)
    trainer = RobustDPOTrainer(model=tiny_model_path, args=args, train_dataset=preference_dataset)
    trainer.create_model_card(model_name="tiny")
    card = (Path(args.output_dir) / "README.md").read_text()
    assert "trained with DPO, a method introduced in" in card and "- trl-robust\n" in card


def test_plain_trl_config_is_accepted_with_robust_defaults(tiny_model_path, preference_dataset, tmp_path):
    args = train_args(tmp_path, trl.DPOConfig, loss_type="ropo", per_device_train_batch_size=8, beta=0.5)
    trainer = RobustDPOTrainer(model=tiny_model_path, args=args, train_dataset=preference_dataset)
    perturb_(trainer.model, seed=8, scale=0.2)
    batch = first_batch(trainer)
    loss = trainer.compute_loss(trainer.model, batch)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    ratios = (independent_logps(trainer.model, batch) - independent_logps(reference, batch)).double().chunk(2)
    z = 0.5 * (ratios[0] - ratios[1])
    assert_close(loss.double().item(), reference_loss("ropo", z, alpha=14.0).mean().item(), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize(
    "config_cls, overrides, message",
    [
        (trl.DPOConfig, {"loss_type": "ropoo"}, "did you mean 'ropo'"),
        (trl.DPOConfig, {"loss_type": ["sigmoid", "sympo_sigmod"]}, "did you mean 'sympo_sigmoid'"),
        (trl.DPOConfig, {"beta": float("nan")}, "`beta` must be a finite number"),
    ],
)
def test_bad_config_is_rejected_before_any_model_is_loaded(preference_dataset, tmp_path, config_cls, overrides, message):
    args = train_args(tmp_path, config_cls, **overrides)
    # The model path does not exist: had TRL started loading it, the error would be an OSError.
    with pytest.raises(ValueError, match=f"(?i){message}"):
        RobustDPOTrainer(model=str(tmp_path / "no-such-model"), args=args, train_dataset=preference_dataset)


def test_plain_config_with_bad_robust_hyperparameter_is_rejected_before_loading(preference_dataset, tmp_path):
    args = train_args(tmp_path, trl.DPOConfig, loss_type="ropo")
    args.ropo_alpha = -1.0  # e.g. set on a plain DPOConfig by user code
    with pytest.raises(ValueError, match="ropo_alpha"):
        RobustDPOTrainer(model=str(tmp_path / "no-such-model"), args=args, train_dataset=preference_dataset)


def test_a_reward_clip_that_clips_every_pair_is_warned_about_once(tiny_model_path, preference_dataset, tmp_path):
    # At step 1 policy = reference, so every reward is exactly 0 and nothing is clipped; after one step at lr 0.1
    # every |β·log-ratio| exceeds 1e-6, so from step 2 on every pair is clipped and the loss is constant.
    args = train_args(tmp_path, loss_type="sympo_sigmoid", sympo_reward_clip=1e-6, max_steps=4)
    trainer = RobustDPOTrainer(model=tiny_model_path, args=args, train_dataset=preference_dataset)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    clipped = [w for w in caught if "sympo_reward_clip=1e-06 clipped" in str(w.message)]
    assert len(clipped) == 1, [str(w.message) for w in caught]
    assert "every pair in training step 2" in str(clipped[0].message)
    fractions = [e["sympo_sigmoid/clipped_frac"] for e in trainer.state.log_history if "loss" in e]
    assert fractions == [0.0, 1.0, 1.0, 1.0]


def test_a_reward_clip_that_leaves_pairs_unclipped_is_silent(tiny_model_path, preference_dataset, tmp_path):
    trainer = RobustDPOTrainer(
        model=tiny_model_path, args=train_args(tmp_path, loss_type="sympo_sigmoid"), train_dataset=preference_dataset
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert not [w for w in caught if "sympo_reward_clip" in str(w.message)]


# --- model card and built-in names -------------------------------------------------------------------------------------


def test_model_card_of_a_local_model_names_the_run_and_the_model_instead_of_none(
    tiny_model_path, preference_dataset, tmp_path
):
    # TRL's template reads "Model Card for None" and links "[None](https://huggingface.co/None)" for a local model
    # saved without a model name; [sympo_sigmoid, sft] trains on both losses, and the card named only the first.
    args = train_args(tmp_path, loss_type=["sympo_sigmoid", "sft"], max_steps=1)
    trainer = RobustDPOTrainer(model=tiny_model_path, args=args, train_dataset=preference_dataset)
    trainer.save_model()
    card = (Path(args.output_dir) / "README.md").read_text()
    assert "None" not in card
    assert "# Model Card for out\n" in card  # the output directory's name, as TRL's checkpoints name it
    assert f"fine-tuned version of the local model `{Path(tiny_model_path).name}`" in card
    assert "DPO with the sympo_sigmoid + sft loss (trl-robust)" in card
    for tag in ("sympo_sigmoid", "sft"):
        assert f"- {tag}\n" in card


def test_a_hub_model_id_in_the_card_is_left_to_trl(tiny_model_path, preference_dataset, tmp_path):
    trainer = RobustDPOTrainer(
        model=tiny_model_path, args=train_args(tmp_path, loss_type="ropo"), train_dataset=preference_dataset
    )
    trainer.model.config._name_or_path = "someone/some-model"  # as if loaded from the Hub
    trainer.create_model_card(model_name="run")
    card = (Path(trainer.args.output_dir) / "README.md").read_text()
    assert "[someone/some-model](https://huggingface.co/someone/some-model)" in card
    assert "# Model Card for run\n" in card


def test_the_trainer_accepts_a_builtin_model_name(preference_dataset, tmp_path, monkeypatch):
    # `trl-robust dpo` recipes say `model_name_or_path: builtin:tiny`; in Python TRL took it for a Hub repo id.
    monkeypatch.setenv("TRL_ROBUST_CACHE", str(tmp_path / "cache"))
    args = train_args(tmp_path, loss_type="ropo", max_steps=1)
    trainer = RobustDPOTrainer(model="builtin:tiny", args=args, train_dataset=preference_dataset)
    assert Path(trainer.model.config._name_or_path).is_relative_to(tmp_path / "cache")
    trainer.train()
    trainer.save_model()
    card = (Path(args.output_dir) / "README.md").read_text()
    assert "fine-tuned version of trl-robust's built-in model `builtin:tiny`" in card and "None" not in card


def test_an_unknown_builtin_name_is_refused_before_loading(no_model_loading, preference_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_ROBUST_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="unknown built-in model 'builtin:huge'; the built-in models are 'builtin:tiny'"):
        RobustDPOTrainer(model="builtin:huge", args=train_args(tmp_path), train_dataset=preference_dataset)
    assert not (tmp_path / "cache").exists()
