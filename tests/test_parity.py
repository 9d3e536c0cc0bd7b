"""Built-in loss types through `RobustDPOTrainer` are bit-identical to stock `trl.DPOTrainer`."""

import pytest
import torch
import trl

from trl_robust import RobustDPOTrainer

from .conftest import first_batch, perturb_, train_args

pytestmark = pytest.mark.parity  # also run against every TRL minor release in the range (.ci/run)


def loss_and_grads(trainer_cls, model_path, dataset, args):
    trainer = trainer_cls(model=model_path, args=args, train_dataset=dataset)
    perturb_(trainer.model, seed=1)  # identical perturbation for both trainers: non-zero margins
    trainer.model.train()
    batch = first_batch(trainer)
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
    metrics = {k: list(v) for k, v in trainer._metrics["train"].items()}
    return loss.detach(), grads, metrics


@pytest.mark.parametrize(
    "loss_config",
    [
        {"loss_type": ["sigmoid"]},
        {"loss_type": ["robust"], "label_smoothing": 0.2},
        {"loss_type": ["ipo"]},
        {"loss_type": ["hinge"]},
        {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]},
    ],
    ids=["sigmoid", "robust", "ipo", "hinge", "mpo-multi-loss"],
)
def test_builtin_loss_types_are_bit_identical_to_stock_trl(tiny_model_path, preference_dataset, tmp_path, loss_config):
    stock_loss, stock_grads, stock_metrics = loss_and_grads(
        trl.DPOTrainer, tiny_model_path, preference_dataset, train_args(tmp_path, trl.DPOConfig, **loss_config)
    )
    robust_loss, robust_grads, robust_metrics = loss_and_grads(
        RobustDPOTrainer, tiny_model_path, preference_dataset, train_args(tmp_path, trl.DPOConfig, **loss_config)
    )
    assert stock_loss.item() != 0.0
    assert torch.equal(stock_loss, robust_loss), (stock_loss.item(), robust_loss.item())
    assert stock_grads.keys() == robust_grads.keys() and len(stock_grads) > 0
    for name in stock_grads:
        assert torch.equal(stock_grads[name], robust_grads[name]), name
    assert stock_metrics == robust_metrics  # same metrics, no extra ones for built-in losses
