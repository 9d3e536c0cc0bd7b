"""ROPO's step filter through real training: it distrusts the share ρ of the pairs for any per-device batch size and
gradient accumulation, and two processes make the same decisions as one with the same global batch.

Before the running filter, each micro-batch distrusted its own ⌊ρ·n⌋ pairs: at ρ 0.2 none at all for 1, 2 or 4 pairs
per device, whatever the accumulation, so every run below would have distrusted 0 pairs.
"""


import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from trl_robust import RobustDPOConfig, RobustDPOTrainer
from trl_robust.data import flip_preferences
from trl_robust.filter.rules import filter_window
from trl_robust.tiny import tiny_preference_records

from .conftest import run_two_ranks

RATIO = 0.2


def run_filtered_training(model_path, output_dir, per_device, accumulation, max_steps, warmup=1):
    """Train ROPO with its step filter on 64 pairs (25% flipped); used in this process and by the two-rank worker."""
    pairs = flip_preferences(Dataset.from_list(tiny_preference_records(n=64, seed=0)), 0.25, seed=1)
    args = RobustDPOConfig(
        output_dir=str(output_dir), use_cpu=True, report_to="none", save_strategy="no", bf16=False, seed=0,
        per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation, max_steps=max_steps,
        learning_rate=0.01, logging_steps=1, disable_tqdm=True, loss_type="ropo", gradient_checkpointing=False,
        ropo_filter_ratio=RATIO, ropo_filter_warmup_steps=warmup,
    )
    trainer = RobustDPOTrainer(model=str(model_path), args=args, train_dataset=pairs)
    trainer.train()
    return trainer


def filtered_per_step(trainer) -> dict[int, float]:
    return {e["step"]: e["ropo/filtered_frac"] for e in trainer.state.log_history if "ropo/filtered_frac" in e}


@pytest.mark.parametrize("per_device, accumulation, steps", [(1, 8, 9), (2, 4, 9), (4, 4, 5)])
def test_the_step_filter_distrusts_its_share_for_small_batches_under_accumulation(
    tiny_model_path, tmp_path, per_device, accumulation, steps
):
    trainer = run_filtered_training(tiny_model_path, tmp_path / "out", per_device, accumulation, steps)
    per_step = filtered_per_step(trainer)
    assert sorted(per_step) == list(range(1, steps + 1))
    assert per_step[1] == 0.0  # the warm-up of 1 step
    # Each logged value is the mean over the step's micro-batches of equal size, so the pairs distrusted are:
    pairs_per_step = per_device * accumulation
    seen = (steps - 1) * pairs_per_step  # 64 pairs after the warm-up in every setting
    distrusted = sum(per_step.values()) * pairs_per_step
    assert seen == 64
    # The count is ρ·S less the carried debt (exactly), and the debt stays within the stated tolerance of 6 pairs:
    # 12.8 ± 6 of the 64 (0.2 ± 0.094); the old per-micro-batch rule distrusted 0.
    running = trainer._step_filters["ropo"]
    assert distrusted == pytest.approx(RATIO * seen - running.host_debt, abs=1e-4)
    assert abs(distrusted - RATIO * seen) <= 6
    # The host copy (what checkpoints save) is the device window, trimmed to W − n margins.
    window = filter_window(pairs_per_step, RATIO)
    assert len(running.host_history) == window - per_device == 50 - per_device
    assert running.history.tolist() == pytest.approx(running.host_history)
    assert running.debt.item() == pytest.approx(running.host_debt)


WORKER = """
import json, os, sys
import torch
from tests.test_training_filter_share import filtered_per_step, run_filtered_training

model_path, output_dir = sys.argv[1], sys.argv[2]
trainer = run_filtered_training(model_path, output_dir, per_device=2, accumulation=4, max_steps=8)
assert trainer.accelerator.num_processes == 2, trainer.accelerator.num_processes
trainer.save_model()
if trainer.accelerator.is_main_process:
    running = trainer._step_filters["ropo"]
    losses = {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}
    result = dict(filtered=filtered_per_step(trainer), losses=losses, history=running.host_history,
                  debt=running.host_debt)
    with open(os.path.join(output_dir, "result.json"), "w") as file:
        json.dump(result, file)
torch.distributed.barrier()  # then leave without gloo's teardown, as trl_robust.cli.distributed does
sys.stdout.flush(); sys.stderr.flush()
os._exit(0)
"""


def test_two_processes_distrust_the_same_pairs_as_one_with_the_same_global_batch(tiny_model_path, tmp_path):
    # Two gloo ranks with 2 pairs each against one process with 4, both with 4 accumulation steps: the same 4 pairs
    # per micro-batch and 16 per optimizer step, so the same window (50) and the same decisions at every step.
    two = run_two_ranks(WORKER, tmp_path, tiny_model_path)

    one = run_filtered_training(tiny_model_path, tmp_path / "one", per_device=4, accumulation=4, max_steps=8)
    assert one.accelerator.num_processes == 1
    one.save_model()

    filtered = {str(step): value for step, value in filtered_per_step(one).items()}  # JSON keys are strings
    assert two["filtered"] == filtered
    assert sum(filtered.values()) > 0  # the comparison covers real decisions (0.2 · 112 pairs after the warm-up)
    running = one._step_filters["ropo"]
    assert two["history"] == pytest.approx(running.host_history, rel=1e-4, abs=1e-6)
    assert two["debt"] == pytest.approx(running.host_debt, abs=1e-4)
    losses = {str(e["step"]): e["loss"] for e in one.state.log_history if "loss" in e}
    assert two["losses"] == pytest.approx(losses, rel=1e-3)
    # Final weights: Adam turns float-rounding differences of near-zero gradients (the all-reduce sums in another
    # order) into differences of ~1e-5 at lr 0.01; 1e-4 is 1% of one step.
    weights = {name: AutoModelForCausalLM.from_pretrained(tmp_path / name).state_dict() for name in ("one", "two")}
    for name, weight in weights["one"].items():
        torch.testing.assert_close(weights["two"][name], weight, rtol=1e-4, atol=1e-4, msg=lambda m, name=name: f"{name}: {m}")
