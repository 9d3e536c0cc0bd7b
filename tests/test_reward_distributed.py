"""A robust reward model trained by two processes is the one a single process trains with the same global batch: the
same loss at every step and the same final weights (the robust loss's metrics are gathered over ranks, the loss is the
mean over each rank's pairs and DDP averages the gradients, so nothing may depend on how the batch is split)."""


import pytest
import torch
from datasets import load_dataset
from transformers import AutoModelForSequenceClassification, set_seed

from trl_robust import RobustRewardConfig, RobustRewardTrainer, builtin

from .conftest import run_two_ranks

GLOBAL_PAIRS_PER_MICRO_BATCH = 4


def run_reward_training(output_dir, per_device, max_steps=6):
    """`sympo_sigmoid` on the built-in tiny model and data, 2 accumulation steps; in this process or on each rank."""
    pairs = load_dataset(builtin.dataset_path("builtin:tiny"))["train"]
    args = RobustRewardConfig(
        output_dir=str(output_dir), use_cpu=True, report_to="none", save_strategy="no", bf16=False, seed=0,
        per_device_train_batch_size=per_device, gradient_accumulation_steps=2, max_steps=max_steps,
        learning_rate=0.01, logging_steps=1, disable_tqdm=True, loss_type="sympo_sigmoid",
    )
    set_seed(0)  # TRL draws the new one-output score head when it loads the causal LM: the same head in both runs
    trainer = RobustRewardTrainer(model="builtin:tiny", args=args, train_dataset=pairs)
    trainer.train()
    return trainer


def per_step(trainer, key) -> dict[str, float]:
    return {str(e["step"]): e[key] for e in trainer.state.log_history if key in e}  # string keys, as JSON has them


WORKER = """
import json, os, sys
import torch
from tests.test_reward_distributed import per_step, run_reward_training

output_dir = sys.argv[1]
trainer = run_reward_training(output_dir, per_device=2)
assert trainer.accelerator.num_processes == 2, trainer.accelerator.num_processes
trainer.save_model()
if trainer.accelerator.is_main_process:
    keys = ("loss", "accuracy", "sympo_sigmoid/grad_weight")
    with open(os.path.join(output_dir, "result.json"), "w") as file:
        json.dump({key: per_step(trainer, key) for key in keys}, file)
torch.distributed.barrier()  # then leave without gloo's teardown, as trl_robust.cli.distributed does
sys.stdout.flush(); sys.stderr.flush()
os._exit(0)
"""


def test_two_processes_train_the_same_reward_model_as_one_with_the_same_global_batch(tmp_path):
    # Two gloo ranks with 2 pairs each against one process with 4, both accumulating 2 micro-batches: the same 8 pairs
    # per optimizer step, in the same order (accelerate hands rank r the r-th slice of each global batch).
    builtin.model_path("builtin:tiny"), builtin.dataset_path("builtin:tiny")  # built once, before the ranks race
    two = run_two_ranks(WORKER, tmp_path)

    one = run_reward_training(tmp_path / "one", per_device=GLOBAL_PAIRS_PER_MICRO_BATCH)
    assert one.accelerator.num_processes == 1
    one.save_model()

    losses = per_step(one, "loss")
    assert sorted(losses, key=int) == [str(step) for step in range(1, 7)]
    assert len(set(losses.values())) > 1  # the model moved: the steps differ, so a shifted sequence would not match
    assert two["loss"] == pytest.approx(losses, rel=1e-3)
    # The robust loss's own metric is gathered over both ranks: the same global-batch mean as one process computes.
    assert two["sympo_sigmoid/grad_weight"] == pytest.approx(per_step(one, "sympo_sigmoid/grad_weight"), rel=1e-3)
    assert two["accuracy"] == pytest.approx(per_step(one, "accuracy"), abs=1e-6)
    # Final weights, the score head included (the tolerance of the DPO two-process test: Adam turns all-reduce rounding
    # of near-zero gradients into ~1e-5 at lr 0.01).
    weights = {
        name: AutoModelForSequenceClassification.from_pretrained(tmp_path / name, num_labels=1).state_dict()
        for name in ("one", "two")
    }
    assert "score.weight" in weights["one"]
    initial = AutoModelForSequenceClassification.from_pretrained(builtin.model_path("builtin:tiny"), num_labels=1)
    assert not torch.allclose(initial.model.embed_tokens.weight, weights["one"]["model.embed_tokens.weight"])
    for name, weight in weights["one"].items():
        torch.testing.assert_close(weights["two"][name], weight, rtol=1e-4, atol=1e-4, msg=lambda m, name=name: f"{name}: {m}")
