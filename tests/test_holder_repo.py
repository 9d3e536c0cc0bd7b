"""Hölder-DPO (`holder`) and RE-PO (`repo`) beyond their per-pair formulas (which `test_losses.py` checks against
`loss_reference.py`): Hölder-DPO's contamination estimate, RE-PO's E-step and η update worked out by hand, and both in
real `RobustDPOTrainer` / `RobustRewardTrainer` runs on the tiny model — the flip-rate estimate logged, η carried from
step to step and through a checkpoint. Expected values come from plain numpy written here, not from the code."""

import math

import numpy as np
import pytest
import torch
from datasets import Dataset

from trl_robust import RobustDPOTrainer, RobustRewardConfig, RobustRewardTrainer
from trl_robust.config import RobustDPOConfig
from trl_robust.noise.estimate import estimate_noise
from trl_robust.noise.loss_states import HolderState, RepoState, holder_contamination
from trl_robust.tiny import tiny_preference_records

from .conftest import train_args
from .loss_reference import reference_loss

pytestmark = pytest.mark.usefixtures("one_thread")

LN9 = math.log(9.0)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def numpy_holder_flip_rate(z, gamma):
    p = sigmoid(z)
    return 1.0 - p.mean() * (p**gamma).sum() / (p ** (1 + gamma)).sum()


def numpy_repo_eta(steps, eta, momentum):
    """η after each optimizer step: `steps` is a list of steps, each the list of its micro-batches' margins."""
    etas = []
    for micro_batches in steps:
        z = np.concatenate([np.asarray(m, dtype=np.float64) for m in micro_batches])
        p = sigmoid(z)
        posterior = eta * p / (eta * p + (1 - eta) * (1 - p))
        eta = (1 - momentum) * eta + momentum * posterior.mean()
        etas.append(eta)
    return etas


# --- Hölder-DPO's contamination estimate ----------------------------------------------------------------------------


def test_holder_contamination_by_hand():
    # σ(z) = (0.9, 0.9, 0.1) at z = (ln 9, ln 9, −ln 9); γ = 2:
    # mean p = 1.9/3 = 0.633333, Σp² = 0.81 + 0.81 + 0.01 = 1.63, Σp³ = 0.729 + 0.729 + 0.001 = 1.459,
    # ξ̂ = 0.633333 · 1.63 / 1.459 = 0.707562, ε̂ = 1 − ξ̂ = 0.292438
    z = torch.tensor([LN9, LN9, -LN9])
    assert holder_contamination(z, 2.0) == pytest.approx(0.292438, abs=1e-6)
    # γ = 1: ξ̂ = 0.633333 · 1.9 / 1.63 = 0.738241, ε̂ = 0.261759
    assert holder_contamination(z, 1.0) == pytest.approx(0.261759, abs=1e-6)


def test_holder_contamination_is_zero_when_every_pair_looks_alike_and_grows_with_contradicted_pairs():
    assert holder_contamination(torch.full((5,), 3.0), 2.0) == pytest.approx(0.0, abs=1e-12)
    clean = torch.full((80,), 4.0)
    estimates = [holder_contamination(torch.cat([clean, torch.full((k,), -4.0)]), 2.0) for k in (0, 10, 20, 40)]
    assert estimates == sorted(estimates) and estimates[0] == pytest.approx(0.0, abs=1e-12)
    # Well separated (p = σ(±4) = 0.982, 0.018), the estimate is close to the contaminated share k/(80 + k).
    assert estimates[-1] == pytest.approx(40 / 120, abs=0.02)


def test_holder_state_accumulates_pairs_between_logs_and_starts_afresh():
    state = HolderState(gamma=2.0)
    z1, z2 = torch.tensor([LN9, -LN9]), torch.tensor([LN9])  # two batches, 3 pairs: the hand example above
    for z in (z1, z2):
        state.observe({k: v.item() for k, v in state.batch_values(z).items()}, len(z))
    assert state.log_values() == {"estimated_flip_rate": pytest.approx(0.292438, abs=1e-6)}
    assert state.log_values() == {}  # nothing trained on since the last log: nothing to say


# --- RE-PO's E-step and η update ---------------------------------------------------------------------------------------


def test_repo_posterior_and_eta_update_by_hand():
    # η = 0.9, σ(z) = (0.9, 0.5, 0.1) at z = (ln 9, 0, −ln 9). E-step, w = η σ / (η σ + (1 − η)(1 − σ)):
    #   0.81/0.82 = 0.987805, 0.45/0.5 = 0.9, 0.09/0.18 = 0.5; mean = 2.387805/3 = 0.795935
    # Update with α = 0.1: η = 0.9·0.9 + 0.1·0.795935 = 0.889593; logged flip rate 1 − η = 0.110407.
    state = RepoState(eta=0.9, momentum=0.1)
    # One optimizer step of two micro-batches (2 pairs, then 1): one update, from the mean over the step's 3 pairs.
    for z in (torch.tensor([LN9, 0.0]), torch.tensor([-LN9])):
        assert state.loss_kwargs() == {"eta": 0.9}  # η is held for the whole step
        state.observe({k: v.item() for k, v in state.batch_values(z).items()}, len(z))
    state.end_step()
    assert state.eta == pytest.approx(0.889593, abs=1e-6)
    assert state.log_values() == {"estimated_flip_rate": pytest.approx(0.110407, abs=1e-6)}
    state.end_step()  # a step without a training batch (nothing observed) leaves η alone
    assert state.eta == pytest.approx(0.889593, abs=1e-6)


def test_repo_eta_converges_to_the_calibrated_em_fixed_point():
    # Iterated on fixed margins, η's moving average settles where η = mean posterior(η): the fixed point of RE-PO's EM,
    # which `calibrated_em` (trl_robust.noise.estimate, written separately) finds by bisection for ε = 1 − η.
    rng = np.random.default_rng(0)
    z = np.where(rng.random(400) < 0.25, -1.0, 1.0) * rng.gamma(4.0, 0.6, 400)
    state = RepoState(eta=0.9, momentum=0.1)
    values = None
    for _ in range(400):
        values = {k: v.item() for k, v in state.batch_values(torch.from_numpy(z)).items()}
        state.observe(values, len(z))
        state.end_step()
    fixed_point = estimate_noise(z, "calibrated_em", n_bootstrap=0).flip_rate
    assert 1 - state.eta == pytest.approx(fixed_point, abs=0.01)  # (calibrated_em bins the margins)
    assert values["posterior"] == pytest.approx(state.eta, abs=1e-6)  # at the fixed point, mean posterior = η


# --- in the real trainers ----------------------------------------------------------------------------------------------


def record_margins(trainer) -> list:
    """Every training batch's margins z as the loss sees them (single process: this batch is the global batch)."""
    seen = []
    original = trainer._robust_margin

    def spy(*args, **kwargs):
        margin = original(*args, **kwargs)
        if trainer.model.training:
            seen.append(margin.z.detach().double().cpu().numpy())
        return margin

    trainer._robust_margin = spy
    return seen


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def test_repo_trains_with_eta_carried_across_optimizer_steps(tiny_model_path, preference_dataset, tmp_path):
    # 4 optimizer steps of 2 micro-batches of 4 pairs; η updated once per step from its 8 pairs, the loss of each step
    # computed at the η of the step before, and 1 − η logged at each step.
    args = train_args(tmp_path, loss_type="repo", max_steps=4, gradient_accumulation_steps=2, repo_eta_init=0.8,
                      repo_momentum=0.3, beta=1.0, learning_rate=0.3)
    trainer = RobustDPOTrainer(model=tiny_model_path, args=args, train_dataset=preference_dataset)
    seen = record_margins(trainer)
    trainer.train()
    steps = [seen[i : i + 2] for i in range(0, len(seen), 2)]
    assert len(steps) == 4
    etas = numpy_repo_eta(steps, 0.8, 0.3)
    assert logged(trainer, "noise/estimated_flip_rate") == pytest.approx([1 - e for e in etas], abs=1e-6)
    # The logged loss of each step: the mean over its micro-batches of RE-PO's loss at the η in force.
    in_force = [0.8, *etas[:-1]]
    expected = [np.mean([reference_loss("repo", torch.from_numpy(m), eta=eta).mean().item() for m in step])
                for step, eta in zip(steps, in_force)]
    assert logged(trainer, "loss") == pytest.approx(expected, rel=1e-4)
    assert any(abs(e - 0.8) > 1e-3 for e in etas)  # η moved


def test_repo_resumed_from_a_checkpoint_continues_with_the_saved_eta(tiny_model_path, preference_dataset, tmp_path):
    def run(output, resume=None, **overrides):
        args = train_args(tmp_path / output, loss_type="repo", max_steps=4, repo_momentum=0.5, beta=1.0,
                          learning_rate=0.3, **overrides)
        trainer = RobustDPOTrainer(model=tiny_model_path, args=args, train_dataset=preference_dataset)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    whole = run("whole")
    first = run("first", save_strategy="steps", save_steps=2)
    resumed = run("first", resume=str(tmp_path / "first" / "out" / "checkpoint-2"))
    expected = logged(whole, "noise/estimated_flip_rate")
    assert len(expected) == 4 and len(set(expected)) > 1
    assert logged(first, "noise/estimated_flip_rate") == pytest.approx(expected, abs=1e-6)
    # Resumed at step 2: steps 3 and 4 start from the η saved after step 2, not from repo_eta_init.
    assert logged(resumed, "noise/estimated_flip_rate")[-2:] == pytest.approx(expected[-2:], abs=1e-5)


def test_holder_trains_and_logs_its_contamination_estimate(tiny_model_path, preference_dataset, tmp_path):
    args = train_args(tmp_path, loss_type="holder", max_steps=3, holder_gamma=1.5, beta=1.0, learning_rate=0.3)
    trainer = RobustDPOTrainer(model=tiny_model_path, args=args, train_dataset=preference_dataset)
    seen = record_margins(trainer)
    trainer.train()
    # logging_steps = 1: each log's estimate is over the pairs of that one step.
    expected = [numpy_holder_flip_rate(z, 1.5) for z in seen]
    assert logged(trainer, "noise/estimated_flip_rate") == pytest.approx(expected, abs=1e-6)
    assert expected[0] == pytest.approx(0.0, abs=1e-12)  # step 1: policy = reference, every p = ½


def test_with_the_auto_filter_the_loss_logs_its_estimate_under_its_own_name(tiny_model_path, preference_dataset, tmp_path):
    # ROPO's auto filter logs its own noise/estimated_flip_rate; two estimates must not be averaged into one number.
    args = train_args(tmp_path, loss_type="repo", max_steps=2, ropo_filter_ratio="auto", num_train_epochs=2)
    trainer = RobustDPOTrainer(model=tiny_model_path, args=args, train_dataset=preference_dataset)
    trainer.train()
    assert len(logged(trainer, "repo/estimated_flip_rate")) == 2
    assert not [e for e in trainer.state.log_history if "loss" in e and "noise/estimated_flip_rate" in e]


def test_reward_model_trains_with_repo_and_logs_the_flip_rate(tiny_model_path, tmp_path):
    dataset = Dataset.from_list(tiny_preference_records(n=16, seed=0))
    args = train_args(tmp_path, config_cls=RobustRewardConfig, loss_type="repo", max_steps=2, repo_momentum=0.5)
    trainer = RobustRewardTrainer(model=tiny_model_path, args=args, train_dataset=dataset)
    seen = record_margins(trainer)
    trainer.train()
    etas = numpy_repo_eta([[z] for z in seen], 0.9, 0.5)
    assert logged(trainer, "noise/estimated_flip_rate") == pytest.approx([1 - e for e in etas], abs=1e-6)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"holder_gamma": 0.0}, "`holder_gamma` must be > 0"),
        ({"repo_eta_init": 0.5}, r"`repo_eta_init` must be in \(0.5, 1\]"),
        ({"repo_eta_init": 1.2}, r"`repo_eta_init` must be in \(0.5, 1\]"),
        ({"repo_momentum": 0.0}, r"`repo_momentum` must be in \(0, 1\]"),
    ],
)
def test_bad_settings_fail_at_the_config(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        RobustDPOConfig(str(tmp_path), **overrides)


def test_a_state_only_hyperparameter_is_registered_checked_and_given_to_the_state(tmp_path):
    # A third party's stateful loss: the state's own config value (no keyword of the per-pair function) is listed with
    # the registered hyperparameters (so the CLI and the audit get a flag), checked by its rule where the loss is in use,
    # and passed to the state's factory with the loss's own hyperparameters.
    from dataclasses import dataclass

    from trl_robust import Hyperparameter, register_loss, unregister_loss
    from trl_robust.integration.stateful import build_loss_states
    from trl_robust.registry import get_loss_spec, registered_hyperparameters

    made = []
    register_loss(
        "state_test_margin",
        lambda z, scale=1.0: -scale * z,
        hyperparameters={"scale": Hyperparameter("state_test_scale", default=1.0)},
        state=lambda **kwargs: made.append(kwargs) or RepoState(0.9, 0.1),
        state_hyperparameters={"rate": Hyperparameter("state_test_rate", default=0.5, check=lambda v: v > 0, rule="> 0")},
    )
    try:
        assert "state_test_rate" in registered_hyperparameters()

        @dataclass
        class Config(RobustDPOConfig):
            state_test_rate: float = 0.5

        with pytest.raises(ValueError, match="`state_test_rate` must be > 0"):
            Config(str(tmp_path), loss_type="state_test_margin", state_test_rate=-1.0, use_cpu=True, bf16=False)
        config = Config(str(tmp_path), loss_type="state_test_margin", state_test_rate=0.25, use_cpu=True, bf16=False)
        states = build_loss_states({"state_test_margin": get_loss_spec("state_test_margin")},
                                   lambda name: getattr(config, name, 1.0))
        assert made == [{"scale": 1.0, "rate": 0.25}] and isinstance(states["state_test_margin"], RepoState)
    finally:
        unregister_loss("state_test_margin")
