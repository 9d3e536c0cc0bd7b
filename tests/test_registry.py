"""The loss registry: open to third parties (in code, or installed: the `trl_robust.losses` entry points), refusing
clashes, and never skipping a plugin it cannot load. (tests/test_plugin.py installs a real plugin with pip.)"""

import importlib.metadata
import sys
from dataclasses import dataclass, field

import pytest
import torch
import trl

import trl_robust
from trl_robust import RobustDPOConfig, RobustDPOTrainer, register_loss, registry, unregister_loss
from trl_robust.compat import trl_builtin_loss_types
from trl_robust.registry import ENTRY_POINT_GROUP, LossPluginError, get_loss_spec, registered_loss_types

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
    assert names[len(builtins) :] == registered_loss_types()
    # The package's own: its functions in trl_robust.losses (no plugin is installed where the tests run).
    assert all(get_loss_spec(name).fn.__module__ == "trl_robust.losses" for name in registered_loss_types())


def test_builtin_names_are_read_from_the_installed_trl_source():
    # Every built-in TRL checks in its loss chain, and nothing else: the final error message lists them.
    import inspect

    source = inspect.getsource(trl.DPOTrainer._compute_loss)
    for name in trl_builtin_loss_types():
        assert f'loss_type == "{name}"' in source


@pytest.mark.parametrize("name", [registered_loss_types()[0], "sigmoid", "ipo"])
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


# --- plugins: the `trl_robust.losses` entry points ------------------------------------------------------------------


PLUGIN_CALLS = []


def plugin_register():
    """A plugin's entry point object: registers a loss, and resolves loss types while doing so (no recursion)."""
    PLUGIN_CALLS.append(list(registered_loss_types()))
    register_loss("plugin_margin", lambda z: torch.sigmoid(-2 * z))


def plugin_that_fails():
    raise RuntimeError("bad plugin")


@pytest.fixture
def entry_points(monkeypatch):
    """Install fake entry points for the registry (which has not loaded any in this test yet); undo it afterwards."""
    installed = []

    def fake_entry_points(*, group):
        assert group == ENTRY_POINT_GROUP
        return [importlib.metadata.EntryPoint(name, value, group) for name, value in installed]

    monkeypatch.setattr(registry.importlib.metadata, "entry_points", fake_entry_points)
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setattr(registry, "_loaded_entry_points", set())
    PLUGIN_CALLS.clear()
    yield installed
    for name in ("plugin_margin", "module_margin"):
        if name in registry._REGISTRY:
            unregister_loss(name)
    sys.modules.pop("trl_robust_test_plugin_module", None)


def test_an_entry_point_is_loaded_lazily_once_and_may_resolve_loss_types(entry_points):
    entry_points.append(("plugin_margin", f"{__name__}:plugin_register"))
    assert PLUGIN_CALLS == []  # nothing happens until a loss type is resolved
    assert get_loss_spec("plugin_margin") is not None
    assert "plugin_margin" in trl_robust.available_loss_types() and "plugin_margin" in registered_loss_types()
    assert len(PLUGIN_CALLS) == 1  # once per process, however often resolved
    assert "plugin_margin" not in PLUGIN_CALLS[0]  # it resolved the loss types from inside the plugin: no recursion


def test_a_registration_in_code_meets_the_installed_plugins_first(entry_points):
    entry_points.append(("plugin_margin", f"{__name__}:plugin_register"))
    with pytest.raises(ValueError, match="'plugin_margin' is already registered"):
        register_loss("plugin_margin", torch.sigmoid)


def test_a_module_entry_point_is_imported_not_called(entry_points, tmp_path, monkeypatch):
    # `name = "package.module"`: importing the module registers its losses.
    module = tmp_path / "trl_robust_test_plugin_module.py"
    module.write_text("import torch\nfrom trl_robust import register_loss\nregister_loss('module_margin', torch.sigmoid)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    entry_points.append(("module_margin", "trl_robust_test_plugin_module"))
    assert get_loss_spec("module_margin").fn is torch.sigmoid


@pytest.mark.parametrize(
    "value, message",
    [
        ("no_such_plugin_module:register", r"failed to import: ModuleNotFoundError: No module named 'no_such_plugin_module'"),
        (f"{__name__}:plugin_that_fails", "failed while registering its losses: RuntimeError: bad plugin"),
    ],
)
def test_a_broken_plugin_is_named_every_time_not_skipped(entry_points, value, message):
    entry_points.append(("broken", value))
    for _ in range(2):  # and again at the next resolution
        with pytest.raises(LossPluginError, match=message) as error:
            registered_loss_types()
        assert f"entry point 'broken' = '{value}' in group 'trl_robust.losses'" in str(error.value)
