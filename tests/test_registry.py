"""The loss registry: open to third parties, refusing clashes."""

from dataclasses import dataclass, field

import pytest
import torch
import trl

import trl_robust
from trl_robust import RobustDPOConfig, RobustDPOTrainer, register_loss, unregister_loss
from trl_robust.compat import trl_builtin_loss_types

from .conftest import train_args


@pytest.fixture
def tanh_loss():
    """A third-party loss, 1 − tanh(scale·z), whose `scale` comes from a subclassed config."""
    spec = register_loss("tanh_margin", lambda z, scale=1.0: 1 - torch.tanh(scale * z), hyperparameters={"scale": "tanh_scale"})
    yield spec
    unregister_loss("tanh_margin")


@dataclass
class TanhConfig(RobustDPOConfig):
    tanh_scale: float = field(default=2.0, metadata={"help": "scale of the tanh margin loss"})


def test_available_loss_types_lists_trl_builtins_then_registered():
    names = trl_robust.available_loss_types()
    builtins = list(trl_builtin_loss_types())
    assert names[: len(builtins)] == builtins
    assert {"sigmoid", "ipo", "robust", "hinge", "sft"} <= set(builtins)
    assert names[len(builtins) :] == ["ropo", "sympo_sigmoid", "sympo_ramp", "sympo_unhinged", "cdpo", "drdpo"]


def test_builtin_names_are_read_from_the_installed_trl_source():
    # Every built-in TRL checks in its loss chain, and nothing else: the final error message lists them.
    import inspect

    source = inspect.getsource(trl.DPOTrainer._compute_loss)
    for name in trl_builtin_loss_types():
        assert f'loss_type == "{name}"' in source


@pytest.mark.parametrize("name", ["ropo", "sigmoid", "ipo"])
def test_register_refuses_duplicates_and_trl_builtins(name):
    with pytest.raises(ValueError, match="already registered|TRL built-in"):
        register_loss(name, torch.sigmoid)


@pytest.mark.parametrize("name", ["My-Loss", "", "1loss", "has space"])
def test_register_refuses_malformed_names(name):
    with pytest.raises(ValueError, match="invalid"):
        register_loss(name, torch.sigmoid)


def test_register_refuses_non_callables():
    with pytest.raises(TypeError, match="callable"):
        register_loss("not_a_function", 3.0)
    assert "not_a_function" not in trl_robust.available_loss_types()


def test_third_party_loss_trains_with_its_own_hyperparameter(tanh_loss, tiny_model_path, preference_dataset, tmp_path):
    args = train_args(tmp_path, TanhConfig, loss_type=["tanh_margin"], tanh_scale=3.0, max_steps=2)
    trainer = RobustDPOTrainer(model=tiny_model_path, args=args, train_dataset=preference_dataset)
    trainer.train()
    history = [e for e in trainer.state.log_history if "loss" in e]
    assert history[0]["loss"] == pytest.approx(1.0)  # 1 − tanh(0)
    # w(0) = scale · (1 − tanh²(0)) = 3: the hyperparameter reached the loss.
    assert history[0]["tanh_margin/grad_weight"] == pytest.approx(3.0)


def test_third_party_loss_without_its_config_field_is_rejected(tanh_loss, tmp_path):
    with pytest.raises(ValueError, match="tanh_scale"):
        train_args(tmp_path, RobustDPOConfig, loss_type="tanh_margin")


def test_unregistered_names_are_rejected_again(tmp_path):
    spec = register_loss("temporary_loss", torch.sigmoid)
    assert trl_robust.get_loss_spec("temporary_loss") is spec
    unregister_loss("temporary_loss")
    with pytest.raises(ValueError, match="Unknown loss_type 'temporary_loss'"):
        train_args(tmp_path, loss_type="temporary_loss")
    with pytest.raises(KeyError):
        unregister_loss("temporary_loss")
