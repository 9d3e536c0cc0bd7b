"""The TRL probe: importing never fails because of TRL, the tested range has one definition, an untested TRL warns (or,
on request, fails) at the first trainer, and a structural change fails with one message before any model loads."""

import inspect
import re
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest
import trl
from packaging.requirements import Requirement
from packaging.version import Version

import trl_robust
from trl_robust import IncompatibleTRLError, RobustDPOTrainer, compat
from trl_robust.compat import SUPPORTED_TRL, VERSION_CHECK_ENV, supported_trl_text

from .conftest import train_args
from .test_dispatch import NoFinalRaise  # a TRL whose loss chain no longer ends in `raise`

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fresh_probe():
    """Run the probe anew in this test, and again afterwards with TRL as it really is."""
    compat.reset_integration_check()
    yield
    compat.reset_integration_check()


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=300
    )


# --- one definition of the range -----------------------------------------------------------------------------------------


def test_pyproject_readme_and_makefile_state_the_range_the_package_checks():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    trl_requirement = next(Requirement(r) for r in pyproject["project"]["dependencies"] if r.startswith("trl"))
    assert trl_requirement.specifier == SUPPORTED_TRL
    assert f"trl{supported_trl_text()}" in (ROOT / "README.md").read_text()
    oldest = re.search(r"^OLDEST_TRL \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    lower = next(s.version for s in SUPPORTED_TRL if s.operator == ">=")
    assert Version(oldest) == Version(lower)


def test_the_version_string_lives_in_the_package_only():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in pyproject["project"]["dynamic"] and "version" not in pyproject["project"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "trl_robust.__version__"}
    from importlib.metadata import version

    assert version("trl-robust") == trl_robust.__version__


# --- import never depends on TRL's version or shape ------------------------------------------------------------------------

OUTSIDE_RANGE = "import trl; trl.__version__ = '9.0.0'\n"


def test_with_an_untested_trl_the_package_and_its_pure_parts_import_and_work():
    code = OUTSIDE_RANGE + inspect.cleandoc("""
        import math
        import torch
        import trl_robust
        from trl_robust.losses import ropo_loss
        from trl_robust.filtering import suspected_pairs
        from trl_robust.data import flip_preferences
        from trl_robust.audit import auroc
        from datasets import Dataset
        assert abs(ropo_loss(torch.tensor([0.0]), alpha=1.0).item() - (math.log(2) + 0.5)) < 1e-6  # c = 1: log 2 + σ(0)
        assert suspected_pairs(torch.tensor([1.0, -2.0, 3.0, 0.5]), 0.5).tolist() == [False, True, False, True]
        rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 10
        assert sum(flip_preferences(Dataset.from_list(rows), 0.3, seed=0)["label_flipped"]) == 3
        assert auroc([0.9, 0.1, 0.8], [True, False, True]) == 1.0
        print("ok")
    """)
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert "Warning" not in result.stderr  # importing warns about nothing either


def test_an_untested_trl_warns_at_the_probe_and_the_env_var_makes_it_an_error_or_silent():
    code = OUTSIDE_RANGE + "import trl_robust.compat as c\nc.check_integration()\nprint('probed')"
    warned = run_python(code)
    assert warned.returncode == 0, warned.stderr
    assert f"UserWarning: trl-robust is tested with trl{supported_trl_text()}, and TRL 9.0.0 is installed" in warned.stderr
    assert f"{VERSION_CHECK_ENV}=error" in warned.stderr
    refused = run_python(code, **{VERSION_CHECK_ENV: "error"})
    assert refused.returncode != 0 and "IncompatibleTRLError" in refused.stderr and "TRL 9.0.0" in refused.stderr
    silent = run_python(code, **{VERSION_CHECK_ENV: "ignore"})
    assert silent.returncode == 0 and "Warning" not in silent.stderr and "probed" in silent.stdout
    bad = run_python(code, **{VERSION_CHECK_ENV: "sometimes"})
    assert bad.returncode != 0 and "use one of warn, error, ignore" in bad.stderr


def test_inside_the_range_the_probe_is_silent(fresh_probe):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compat.check_integration()


def test_constructing_a_trainer_with_an_untested_trl_warns_then_trains(
    fresh_probe, monkeypatch, tiny_model_path, preference_dataset, tmp_path
):
    monkeypatch.setattr(trl, "__version__", "9.0.0")
    with pytest.warns(UserWarning, match=rf"tested with {re.escape('trl' + supported_trl_text())}, and TRL 9\.0\.0 is installed"):
        trainer = RobustDPOTrainer(
            model=tiny_model_path, args=train_args(tmp_path, loss_type="ropo", max_steps=1), train_dataset=preference_dataset
        )
    trainer.train()  # the probe found TRL's structure intact, so it trains
    assert trainer.state.global_step == 1


# --- structural changes: one message, before any model loads -----------------------------------------------------------


class BuiltinCdpo:
    def _compute_loss(self, model, inputs, return_outputs):
        chosen_scores = rejected_scores = ref_chosen_logps = ref_rejected_logps = mode = None
        for loss_type, loss_weight in zip(self.loss_types, self.loss_weights, strict=True):
            if loss_type == "sigmoid":
                per_sequence_loss = chosen_scores - rejected_scores
            elif loss_type == "cdpo":
                per_sequence_loss = rejected_scores - chosen_scores
            else:
                raise ValueError(f"Unknown loss type: {loss_type}")
        return per_sequence_loss


def _construct(tiny_model_path, preference_dataset, tmp_path):
    return RobustDPOTrainer(
        model=tiny_model_path, args=train_args(tmp_path, loss_type="ropo"), train_dataset=preference_dataset
    )


def test_every_structural_change_is_named_in_one_error_before_any_model_loads(
    fresh_probe, monkeypatch, no_model_loading, tiny_model_path, preference_dataset, tmp_path
):
    args = train_args(tmp_path, loss_type="ropo")  # the config is built while TRL is intact
    monkeypatch.setattr(trl.DPOTrainer, "_compute_loss", NoFinalRaise._compute_loss)
    monkeypatch.setattr(trl.DPOTrainer, "_paper", None)
    monkeypatch.setattr(trl.DPOTrainer, "create_model_card", None)
    with pytest.raises(IncompatibleTRLError) as error:
        RobustDPOTrainer(model=tiny_model_path, args=args, train_dataset=preference_dataset)
    message = str(error.value)
    assert f"installed TRL {trl.__version__}" in message and f"trl{supported_trl_text()}" in message
    assert "does not end in `else: raise ValueError" in message
    assert "`DPOTrainer._paper` is no longer a dict" in message
    assert "`DPOTrainer.create_model_card` is gone" in message
    assert message.count("\n  - ") == 3  # one line per problem, in one error


def test_patch_trl_runs_the_probe_and_changes_nothing_when_it_fails(fresh_probe, monkeypatch):
    monkeypatch.setattr(trl.DPOTrainer, "_compute_loss", NoFinalRaise._compute_loss)
    with pytest.raises(IncompatibleTRLError, match="does not end in `else: raise ValueError"):
        trl_robust.patch_trl()
    assert not trl_robust.is_trl_patched()


def test_a_trl_without_source_files_is_reported_as_such(fresh_probe, monkeypatch, no_model_loading, tmp_path):
    def no_source(obj):
        raise OSError("could not get source code")

    monkeypatch.setattr(inspect, "getsourcelines", no_source)
    with pytest.raises(IncompatibleTRLError, match=r"cannot be read \(could not get source code\).*\.py files"):
        compat.check_integration()


def test_a_new_trl_builtin_with_the_name_of_ours_is_reported_naming_both(fresh_probe, monkeypatch):
    from trl_robust.integration.trainer import integrate_with_trl

    monkeypatch.setattr(trl.DPOTrainer, "_compute_loss", BuiltinCdpo._compute_loss)
    with pytest.raises(IncompatibleTRLError) as error:
        integrate_with_trl()
    message = str(error.value)
    assert "TRL now has a built-in loss type 'cdpo'" in message
    assert "trl_robust.losses.cdpo_loss" in message


def test_the_derived_method_is_named_after_trl_robust(tiny_model_path):
    from trl_robust.integration.trainer import integrate_with_trl

    integrate_with_trl()
    method = RobustDPOTrainer._compute_loss
    assert method.__module__ == "trl_robust.integration.trainer"
    assert method.__qualname__ == "RobustDPOTrainer._compute_loss"
    assert method.__code__.co_filename.startswith("<trl_robust.integration.dispatch:")  # TRL's lines, in linecache
