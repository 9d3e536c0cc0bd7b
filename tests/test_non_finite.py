"""NaN or infinite margins are never trained on silently, by either trainer: both stop with a message naming what went
non-finite, and under fp16 with a loss scaler both skip the step as stock TRL's scaler would (counted and logged), or
stop where `non_finite_margins="error"`. One shared loss path (`trl_robust.integration.core`), one behaviour."""

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from trl_robust import RobustDPOConfig, RobustDPOTrainer, RobustRewardConfig, RobustRewardTrainer
from trl_robust.reward import reward_loss_types
from trl_robust.tiny import tiny_preference_records

from .conftest import train_args

# Every reward loss trl-robust computes: the registered per-pair losses, and Bradley–Terry once ROPO's filter is on.
REWARD_SETTINGS = [
    *({"loss_type": name} for name in reward_loss_types() if name != "bradley_terry"),
    {"loss_type": "bradley_terry", "ropo_filter_ratio": 0.25},
]


def poison_(model):
    """One NaN weight in the last layer norm: every sequence's log-probs (DPO) or reward (reward model) become NaN."""
    backbone = model.model
    with torch.no_grad():
        backbone.norm.weight[0] = float("nan")


def build(kind, model_path, tmp_path, **overrides):
    """A trainer of `kind` ("dpo": its reference poisoned, so the margins are NaN; "reward": its model poisoned)."""
    dataset = Dataset.from_list(tiny_preference_records(n=16, seed=0))
    if kind == "dpo":
        args = train_args(tmp_path, **{"loss_type": "ropo", **overrides})
        reference = AutoModelForCausalLM.from_pretrained(model_path)
        poison_(reference)
        policy = AutoModelForCausalLM.from_pretrained(model_path)
        trainer = RobustDPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=dataset)
    else:
        args = train_args(tmp_path, config_cls=RobustRewardConfig, **{"loss_type": "ropo", **overrides})
        trainer = RobustRewardTrainer(model=model_path, args=args, train_dataset=dataset)
        poison_(trainer.model)
    return trainer


def same(a, b) -> bool:
    """Equal, NaN included (the poisoned weight stays NaN where nothing was trained)."""
    return bool(torch.all((a == b) | (a.isnan() & b.isnan())))


def as_if_fp16(trainer):
    """fp16 mixed precision as on a GPU: a loss scaler that skips steps whose gradients are not finite."""
    trainer.args.fp16 = True
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu")
    return trainer


MESSAGES = {"dpo": r"reference log-probs of 4 pair\(s\) are NaN", "reward": r"the rewards of 4 pair\(s\) are NaN"}


@pytest.mark.parametrize("settings", REWARD_SETTINGS, ids=lambda s: "+".join(map(str, s.values())))
def test_a_nan_reward_stops_reward_training_with_a_message(tiny_model_path, tmp_path, settings):
    trainer = build("reward", tiny_model_path, tmp_path, **settings)
    before = {name: p.clone() for name, p in trainer.model.named_parameters()}
    with pytest.raises(FloatingPointError, match=r"Non-finite reward margins in a train batch .*" + MESSAGES["reward"]):
        trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if not same(before[n], p)]
    assert not changed, f"NaN was trained into {changed}"


@pytest.mark.parametrize("kind", ["dpo", "reward"])
def test_under_fp16_both_trainers_skip_count_and_log_non_finite_steps(tiny_model_path, tmp_path, kind):
    trainer = as_if_fp16(build(kind, tiny_model_path, tmp_path, max_steps=3, gradient_accumulation_steps=2))
    before = {name: p.clone() for name, p in trainer.model.named_parameters()}
    trainer.train()  # no FloatingPointError: the scaler skips these steps, as it would for stock TRL

    # Skipped by the scaler: not one weight moved (the NaN weight stays NaN), 3 optimizer steps of 2 micro-batches.
    assert all(same(before[name], p) for name, p in trainer.model.named_parameters())
    logged = [e["ropo/skipped_non_finite_steps"] for e in trainer.state.log_history if "loss" in e]
    assert logged == [1, 2, 3]  # once per optimizer step, not per micro-batch
    assert trainer.state.global_step == 3


@pytest.mark.parametrize("kind", ["dpo", "reward"])
def test_under_fp16_both_trainers_stop_when_told_to(tiny_model_path, tmp_path, kind):
    trainer = as_if_fp16(build(kind, tiny_model_path, tmp_path, non_finite_margins="error"))
    with pytest.raises(FloatingPointError, match=MESSAGES[kind] + r".*'auto' skips such steps"):
        trainer.train()


@pytest.mark.parametrize("kind", ["dpo", "reward"])
def test_fp16_without_a_loss_scaler_stops_both_trainers(tiny_model_path, tmp_path, kind):
    trainer = build(kind, tiny_model_path, tmp_path)
    trainer.args.fp16 = True
    assert trainer.accelerator.scaler is None
    with pytest.raises(FloatingPointError, match=MESSAGES[kind] + r".*no loss scaler would skip this step"):
        trainer.train()


@pytest.mark.parametrize("config_cls", [RobustDPOConfig, RobustRewardConfig])
def test_both_configs_refuse_an_unknown_non_finite_policy(tmp_path, config_cls):
    with pytest.raises(ValueError, match=r"`non_finite_margins` must be one of \['auto', 'error'\]"):
        train_args(tmp_path, config_cls=config_cls, loss_type="ropo", non_finite_margins="skip")
