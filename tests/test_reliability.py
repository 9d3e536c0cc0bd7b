"""Training under hostile numerics and interruption: extreme margins in three dtypes, non-finite log-probs reported
instead of trained on, and checkpoint/resume ending where an uninterrupted run ends."""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from trl_robust import RobustDPOTrainer
from trl_robust.registry import get_loss_spec, registered_loss_types

from .conftest import first_batch, perturb_, train_args

ALL_ROBUST = registered_loss_types()  # every loss type of the package, read from the registry
# NaN must be reported whether or not a reward clip would bound the margin: one loss without the clip, one with it.
ROBUST = [next(name for name in ALL_ROBUST if get_loss_spec(name).uses_reward_clip == clip) for clip in (False, True)]


def load(path, dtype=torch.float32):
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)


# --- extreme margins --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("loss_type", ALL_ROBUST)
def test_a_training_step_at_margins_in_the_thousands_has_finite_loss_and_gradients(
    tiny_model_path, preference_dataset, tmp_path, loss_type, dtype
):
    # A policy far from its reference and a large β put |β·Δ| in the thousands: DPO's −log σ(z) written naively
    # overflows there (exp(1000) = inf), and float16 tops out at 65504.
    policy, reference = load(tiny_model_path, dtype), load(tiny_model_path, dtype)
    perturb_(policy, seed=3, scale=1.0)
    clip = 10.0 if get_loss_spec(loss_type).requires_reward_clip else None  # (refused without it); others go unclipped
    args = train_args(tmp_path, loss_type=loss_type, beta=100.0, sympo_reward_clip=clip, label_smoothing=0.1)
    trainer = RobustDPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=preference_dataset)

    trainer.model.train()  # as `Trainer.training_step` does (from_pretrained returns a model in eval mode)
    loss = trainer.compute_loss(trainer.model, first_batch(trainer))
    trainer.accelerator.backward(loss)  # as `Trainer.training_step` does

    margins = trainer._metrics["train"]["rewards/margins"]  # TRL's mean β·Δ over the batch
    assert abs(margins[-1]) > 1000, f"the test did not reach extreme margins: mean β·Δ = {margins[-1]}"
    assert trainer._metrics["train"][f"{loss_type}/grad_weight"]  # the robust branch ran and logged
    assert math.isfinite(loss.item())
    grads = [p.grad for p in trainer.model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


# --- non-finite log-probs ---------------------------------------------------------------------------------------------


def poison_(model):
    """One NaN weight in the last layer norm: every sequence's log-probs become NaN."""
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")


@pytest.mark.parametrize("loss_type", ROBUST)
def test_nan_reference_log_probs_stop_training_with_a_message_naming_the_reference(
    tiny_model_path, preference_dataset, tmp_path, loss_type
):
    policy, reference = load(tiny_model_path), load(tiny_model_path)
    poison_(reference)
    before = {name: p.clone() for name, p in policy.named_parameters()}
    args = train_args(tmp_path, loss_type=loss_type)
    trainer = RobustDPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=preference_dataset)

    with pytest.raises(FloatingPointError, match=r"reference log-probs of 4 pair\(s\) are NaN") as error:
        trainer.train()
    assert "policy" not in str(error.value)
    # Nothing was trained on the NaN batch.
    assert all(torch.equal(before[name], p) for name, p in trainer.model.named_parameters())


def test_nan_policy_log_probs_are_reported_as_the_policy(tiny_model_path, preference_dataset, tmp_path):
    policy, reference = load(tiny_model_path), load(tiny_model_path)
    poison_(policy)
    args = train_args(tmp_path, loss_type="sympo_sigmoid")  # its reward clip would turn an inf margin into ±10
    trainer = RobustDPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=preference_dataset)
    with pytest.raises(FloatingPointError, match=r"policy's log-probs of 4 pair\(s\) are NaN") as error:
        trainer.compute_loss(trainer.model, first_batch(trainer))
    assert "reference log-probs" not in str(error.value)


def test_nan_in_precomputed_reference_columns_is_reported(tiny_model_path, preference_dataset, tmp_path):
    reference = load(tiny_model_path)
    poison_(reference)
    # TRL precomputes the reference log-probs once, before training; a NaN there would be reused every epoch.
    args = train_args(tmp_path, loss_type="ropo", precompute_ref_log_probs=True)
    trainer = RobustDPOTrainer(
        model=load(tiny_model_path), ref_model=reference, args=args, train_dataset=preference_dataset
    )
    with pytest.raises(FloatingPointError, match="reference log-probs"):
        trainer.train()


# --- checkpoint and resume --------------------------------------------------------------------------------------------


class CountSteps(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


class Interrupt(TrainerCallback):
    """Kill the run at a given step, after the checkpoint before it was written (as a pre-empted job would die)."""

    def __init__(self, at_step):
        self.at_step = at_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise KeyboardInterrupt(f"interrupted at step {state.global_step}")


@pytest.mark.parametrize(
    "loss_type, extra",
    [
        ("ropo", {}),
        ("sympo_ramp", {}),
        # ROPO's step filter under gradient accumulation, 2 pairs per device: it starts at step 3 (after the warm-up)
        # with a window filled since step 1, and the checkpoint at step 3 holds its window and debt, which the resumed
        # run must take up to distrust the same pairs at steps 4-6.
        ("ropo", {"ropo_filter_ratio": 0.2, "ropo_filter_warmup_steps": 2, "per_device_train_batch_size": 2,
                  "gradient_accumulation_steps": 2}),
    ],
)
def test_a_run_resumed_from_a_checkpoint_ends_like_an_uninterrupted_run(
    tiny_model_path, preference_dataset, tmp_path, loss_type, extra
):
    def run(output_dir, resume=None, callbacks=()):
        args = train_args(
            tmp_path,
            output_dir=str(output_dir),
            loss_type=loss_type,
            max_steps=6,
            learning_rate=0.05,
            lr_scheduler_type="linear",  # scheduler and optimizer state must come back from the checkpoint too
            save_strategy="steps",
            save_steps=3,
            **extra,
        )
        trainer = RobustDPOTrainer(
            model=tiny_model_path, args=args, train_dataset=preference_dataset, callbacks=list(callbacks)
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    uninterrupted = run(tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "interrupted", callbacks=[Interrupt(at_step=5)])
    steps_after_resume = CountSteps()
    resumed = run(
        tmp_path / "interrupted", resume=str(tmp_path / "interrupted" / "checkpoint-3"), callbacks=[steps_after_resume]
    )
    assert steps_after_resume.steps == [4, 5, 6]  # it did resume, rather than train again from scratch

    # Steps 1-3 come from the checkpoint's log, 4-6 were computed again after the resume.
    def by_step(trainer):
        return {e["step"]: e for e in trainer.state.log_history if "loss" in e}

    full, again = by_step(uninterrupted), by_step(resumed)
    assert sorted(full) == sorted(again) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        keys = ["loss", f"{loss_type}/grad_weight", f"{loss_type}/negative_margin_frac", "rewards/margins"]
        for key in keys + ([f"{loss_type}/filtered_frac"] if extra else []):
            assert again[step][key] == pytest.approx(full[step][key], rel=1e-4, abs=1e-6), (step, key)
    if extra:
        fractions = [full[step][f"{loss_type}/filtered_frac"] for step in range(1, 7)]
        assert fractions[:2] == [0, 0] and sum(fractions[3:]) > 0  # ⌊0.2 · 2⌋ = 0 per micro-batch would be 0
        saved = json.loads((tmp_path / "interrupted" / "checkpoint-3" / "trainer_state.json").read_text())
        state = saved["stateful_callbacks"]["trl_robust.RopoStepFilter"]["attributes"]["ropo"]
        # Every margin so far (3 steps x 2 micro-batches x 2 pairs; the window would hold up to 50 − 2), the first 4
        # at 0 (policy = reference at step 1), and the debt of the one step filtered so far.
        assert len(state["history"]) == 12 and state["history"][:4] == [0.0] * 4
        assert state["debt"] == pytest.approx(0.2 * 4 - full[3][f"{loss_type}/filtered_frac"] * 4, abs=1e-6)
    for (name, p_full), (_, p_resumed) in zip(
        uninterrupted.model.named_parameters(), resumed.model.named_parameters(), strict=True
    ):
        torch.testing.assert_close(p_resumed, p_full, rtol=1e-5, atol=1e-6, msg=name)


def test_a_run_resumed_inside_an_epoch_keeps_that_epochs_suspects_of_the_epoch_filter(
    tiny_model_path, preference_dataset, tmp_path
):
    # 16 pairs in batches of 4: epochs begin at steps 0, 4, 8. The filter chooses its suspects at steps 4 and 8 with
    # the model of that moment; the checkpoint at step 6 lies inside epoch 1, whose model at step 4 is gone after the
    # interruption, so the resumed run must take epoch 1's suspects from the checkpoint and score afresh at step 8.
    scored_at = []

    class Trainer(RobustDPOTrainer):
        def _choose_epoch_suspects(self):
            scored_at.append(self.state.global_step)
            return super()._choose_epoch_suspects()

    def run(output_dir, resume=None, callbacks=()):
        args = train_args(
            tmp_path, output_dir=str(output_dir), loss_type="ropo", max_steps=10, learning_rate=0.05,
            save_strategy="steps", save_steps=6, ropo_filter_ratio=0.5, ropo_filter_scope="epoch",
        )
        trainer = Trainer(model=tiny_model_path, args=args, train_dataset=preference_dataset, callbacks=list(callbacks))
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    uninterrupted = run(tmp_path / "full")
    assert scored_at == [4, 8]
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "interrupted", callbacks=[Interrupt(at_step=8)])
    scored_at.clear()
    resumed = run(tmp_path / "interrupted", resume=str(tmp_path / "interrupted" / "checkpoint-6"))
    assert scored_at == [8]  # not again at the resume inside epoch 1

    def by_step(trainer):
        return {e["step"]: e for e in trainer.state.log_history if "loss" in e}

    full, again = by_step(uninterrupted), by_step(resumed)
    # Epoch 1 distrusts 8 of the 16 pairs: steps 7-8 (after the resume) must filter exactly as before it.
    assert sum(full[step]["ropo/filtered_frac"] for step in (5, 6, 7, 8)) * 4 == 8
    assert full[7]["ropo/filtered_frac"] + full[8]["ropo/filtered_frac"] > 0  # the test checks a real restore
    for step in range(7, 11):
        for key in ("loss", "ropo/filtered_frac", "ropo/grad_weight", "rewards/margins"):
            assert again[step][key] == pytest.approx(full[step][key], rel=1e-4, abs=1e-6), (step, key)
    for (name, p_full), (_, p_resumed) in zip(
        uninterrupted.model.named_parameters(), resumed.model.named_parameters(), strict=True
    ):
        torch.testing.assert_close(p_resumed, p_full, rtol=1e-5, atol=1e-6, msg=name)


# --- non-finite log-probs under fp16 mixed precision --------------------------------------------------------------------
# fp16 mixed precision needs a GPU; on this CPU the trainer is built in fp32 and then given what an fp16 run has:
# `args.fp16` and accelerate's loss scaler (torch's GradScaler, which skips an optimizer step whose gradients are not
# finite, on CPU as on GPU). The decisions and the skipping are then those of a real fp16 run; autocast is not.


def as_if_fp16(trainer):
    trainer.args.fp16 = True
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu")
    return trainer


@pytest.mark.parametrize("loss_type", ROBUST)
def test_under_fp16_steps_with_nan_margins_are_skipped_counted_and_logged(
    tiny_model_path, preference_dataset, tmp_path, loss_type
):
    policy, reference = load(tiny_model_path), load(tiny_model_path)
    poison_(reference)  # every step's margins are NaN
    before = {name: p.clone() for name, p in policy.named_parameters()}
    args = train_args(tmp_path, loss_type=loss_type, max_steps=3, gradient_accumulation_steps=2)
    trainer = as_if_fp16(
        RobustDPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=preference_dataset)
    )
    trainer.train()  # no FloatingPointError: stock TRL's scaler would skip these steps and go on, and so do we

    # Skipped by the scaler: not one weight moved, with 3 optimizer steps of 2 micro-batches each.
    assert all(torch.equal(before[name], p) for name, p in trainer.model.named_parameters())
    logged = [e[f"{loss_type}/skipped_non_finite_steps"] for e in trainer.state.log_history if "loss" in e]
    assert logged == [1, 2, 3]  # once per optimizer step, not per micro-batch
    assert trainer.state.global_step == 3


def test_under_fp16_non_finite_margins_can_be_made_fatal(tiny_model_path, preference_dataset, tmp_path):
    policy, reference = load(tiny_model_path), load(tiny_model_path)
    poison_(reference)
    args = train_args(tmp_path, loss_type="ropo", non_finite_margins="error")
    trainer = as_if_fp16(
        RobustDPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=preference_dataset)
    )
    with pytest.raises(FloatingPointError, match=r"reference log-probs of 4 pair\(s\).*'auto' skips such steps"):
        trainer.train()


def test_fp16_without_a_loss_scaler_still_stops(tiny_model_path, preference_dataset, tmp_path):
    # Nothing would skip the step (e.g. accelerate on a CPU has no scaler): going on would train NaN into the weights.
    policy, reference = load(tiny_model_path), load(tiny_model_path)
    poison_(reference)
    trainer = RobustDPOTrainer(
        model=policy, ref_model=reference, args=train_args(tmp_path, loss_type="ropo"), train_dataset=preference_dataset
    )
    trainer.args.fp16 = True
    assert trainer.accelerator.scaler is None
    with pytest.raises(FloatingPointError, match="no loss scaler would skip this step"):
        trainer.train()


def test_margins_are_computed_in_float32_from_float16_scores(tiny_model_path, preference_dataset, tmp_path):
    trainer = RobustDPOTrainer(
        model=tiny_model_path, args=train_args(tmp_path, loss_type="ropo", beta=0.1), train_dataset=preference_dataset
    )
    chosen = torch.tensor([0.3, -12.7, 5.1], dtype=torch.float16)
    rejected = torch.tensor([0.2, -12.5, -3.3], dtype=torch.float16)
    zeros = torch.zeros(3, dtype=torch.float16)
    loss = trainer._registered_per_sequence_loss("ropo", chosen, rejected, zeros, zeros, "eval")
    # Independently, in float64 from the same float16 inputs: z = β·(chosen − rejected), ROPO with α = 14.
    z = 0.1 * (chosen.double() - rejected.double())
    c = 4 * 14 / 15**2
    expected = c * torch.log1p(torch.exp(-z)) + c * 14 / (1 + torch.exp(z))
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=0)  # float16 keeps ~3 digits
