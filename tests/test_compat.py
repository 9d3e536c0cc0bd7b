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
        from trl_robust.filter.rules import suspected_pairs
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
    # One line per problem, in one error (the fake `_compute_loss` also lacks TRL's "ref" adapter lookup).
    assert "`DPOTrainer._compute_loss` no longer picks the reference adapter" in message
    assert message.count("\n  - ") == 4


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


# --- every other private name: each probe fails on a TRL changed in that one place, naming what changed ------------------


def edit_source(monkeypatch, obj, old: str, new: str) -> None:
    """Make `inspect` (hence the probe) read `obj`'s real source with `old` replaced by `new`: the installed TRL,
    changed in one place."""
    lines, first = inspect.getsourcelines(obj)
    source = "".join(lines)
    assert old in source, f"{old!r} is not in the source of {obj}: the test no longer changes anything"
    edited = source.replace(old, new).splitlines(keepends=True)
    real = inspect.getsourcelines
    monkeypatch.setattr(inspect, "getsourcelines", lambda o: (edited, first) if o is obj else real(o))


def dpo_problems() -> str:
    with pytest.raises(IncompatibleTRLError) as error:
        compat.check_integration()
    message = str(error.value)
    assert f"installed TRL {trl.__version__}" in message and f"trl{supported_trl_text()}" in message
    return message


@pytest.mark.parity  # on every TRL minor release in the range: the probes hold on each
def test_the_installed_trl_passes_every_probe(fresh_probe):
    compat.check_integration()
    compat.check_reward_integration()
    compat.check_trl_script("dpo")
    compat.check_trl_script("reward")
    assert compat.accelerate_launch_validator() is not None


def test_a_trl_whose_dpo_trainer_has_no_beta_is_refused(fresh_probe, monkeypatch):
    edit_source(monkeypatch, trl.DPOTrainer.__init__, "self.beta = args.beta", "self.temperature = args.beta")
    assert "`DPOTrainer.__init__` no longer sets `self.beta`" in dpo_problems()


def test_a_trl_whose_beta_is_no_longer_the_configs_is_refused(fresh_probe, monkeypatch):
    edit_source(monkeypatch, trl.DPOTrainer.__init__, "self.beta = args.beta", "self.beta = 2 * args.beta")
    assert "`DPOTrainer.__init__` now sets `self.beta` to `2 * args.beta`, not to `args.beta`" in dpo_problems()


METRICS = 'self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}'


def test_a_trl_whose_metrics_are_not_lists_by_default_is_refused(fresh_probe, monkeypatch):
    edit_source(monkeypatch, trl.DPOTrainer.__init__, METRICS, 'self._metrics = {"train": {}, "eval": {}}')
    message = dpo_problems()
    assert "`DPOTrainer.__init__` now sets `self._metrics` to `{'train': {}, 'eval': {}}`" in message
    assert "`self._metrics[mode][name]`" in message


def test_a_trl_whose_reward_metrics_are_not_lists_by_default_is_refused(fresh_probe, monkeypatch):
    edit_source(monkeypatch, trl.RewardTrainer.__init__, METRICS, "self._metrics = MetricsStore()")
    with pytest.raises(IncompatibleTRLError) as error:
        compat.check_reward_integration()
    assert "`RewardTrainer.__init__` now sets `self._metrics` to `MetricsStore()`" in str(error.value)


def test_a_trl_whose_reward_logits_come_rejected_first_is_refused(fresh_probe, monkeypatch):
    edit_source(
        monkeypatch,
        trl.RewardTrainer.compute_loss,
        "rewards_chosen, rewards_rejected = torch.chunk(",
        "rewards_rejected, rewards_chosen = torch.chunk(",
    )
    with pytest.raises(IncompatibleTRLError) as error:
        compat.check_reward_integration()
    message = str(error.value)
    assert "no longer splits the model's outputs as `rewards_chosen, rewards_rejected = torch.chunk(" in message
    assert "(it now has `rewards_rejected, rewards_chosen = torch.chunk(outputs.logits.squeeze(-1), chunks=2)`)" in (
        message
    )


def test_a_trl_that_names_its_reference_adapter_otherwise_is_refused(fresh_probe, monkeypatch):
    edit_source(monkeypatch, trl.DPOTrainer.__init__, 'add_adapter("ref"', 'add_adapter("reference"')
    assert "`DPOTrainer.__init__` no longer adds a PEFT model's reference adapter as 'ref'" in dpo_problems()


def test_a_trl_that_looks_its_reference_adapter_up_otherwise_is_refused(fresh_probe, monkeypatch):
    edit_source(monkeypatch, trl.DPOTrainer._compute_loss, '"ref" in', '"reference" in')
    assert "`DPOTrainer._compute_loss` no longer picks the reference adapter by `'ref' in model.peft_config`" in (
        dpo_problems()
    )


def add_f_divergence_check(monkeypatch, condition: str) -> None:
    """TRL's `DPOTrainer.__init__` with one more f-divergence check (older TRLs have none; 1.10+ one, which stays)."""
    anchor = "self.f_divergence_type = args.f_divergence_type\n"
    lines, _ = inspect.getsourcelines(trl.DPOTrainer.__init__)
    indent = next(line for line in lines if anchor in line).split("self.")[0]
    check = f"{indent}if {condition}:\n{indent}    raise ValueError('f-divergence')\n"
    edit_source(monkeypatch, trl.DPOTrainer.__init__, anchor, anchor + check)


def test_a_trl_whose_f_divergence_check_leaves_out_sigmoid_is_refused(fresh_probe, monkeypatch):
    add_f_divergence_check(monkeypatch, 'self.f_divergence_type != "kl" and not set(self.loss_types) <= {"ipo", "hinge"}')
    message = dpo_problems()
    assert "allows a non-default `f_divergence_type` only with the loss types ['hinge', 'ipo'], which no longer " in message
    assert "include 'sigmoid'" in message


def test_a_trl_whose_f_divergence_check_has_another_shape_is_refused(fresh_probe, monkeypatch):
    add_f_divergence_check(monkeypatch, 'self.f_divergence_type != "reverse_kl" and not all(map(ok, self.loss_types))')
    assert "checks `f_divergence_type` against the loss types in a way trl-robust does not recognise (`if " in (
        dpo_problems()
    )


def test_a_trl_whose_f_divergence_check_reads_another_list_is_refused(fresh_probe, monkeypatch):
    add_f_divergence_check(monkeypatch, 'self.f_divergence_type != "kl" and not set(self.args.loss_types) <= {"sigmoid"}')
    assert "checks `f_divergence_type` against loss types other than the config's list" in dpo_problems()


class ConfigChecksFDivergence:
    def __post_init__(self):
        if self.f_divergence_type != "reverse_kl" and not set(self.loss_type) <= {"sigmoid", "ipo"}:
            raise ValueError("f-divergence")


def test_a_trl_whose_config_checks_the_f_divergence_is_refused(fresh_probe, monkeypatch):
    monkeypatch.setattr(trl.DPOConfig, "__post_init__", ConfigChecksFDivergence.__post_init__)
    assert "`DPOConfig.__post_init__` now checks `f_divergence_type` against the loss types" in dpo_problems()


class LigerBypass:  # TRL <= 1.13: Liger's fused DPO loss, computed beside the loss loop
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.use_liger_kernel:
            return self._compute_loss_liger(model, inputs, return_outputs)
        return self._compute_loss(model, inputs, return_outputs)


class LigerThroughTheLoop:  # TRL 1.14: Liger's chunked log-probs, then the loss loop
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.use_liger_kernel:
            unwrapped = self.accelerator.unwrap_model(model)
            return self._compute_loss(unwrapped, inputs, return_outputs)
        return self._compute_loss(model, inputs, return_outputs)


@pytest.mark.parity  # on every TRL minor release in the range: the probes hold on each
def test_the_liger_probe_agrees_with_trls_history_on_the_installed_trl(fresh_probe):
    # TRL 0.29-1.13 compute the DPO loss in a separate Liger path; 1.14 and later in the loss loop.
    assert compat.liger_bypasses_loss_loop() == (Version(trl.__version__) < Version("1.14"))


@pytest.mark.parametrize("fake, bypasses", [(LigerBypass, True), (LigerThroughTheLoop, False)], ids=["bypass", "loop"])
def test_liger_is_refused_with_our_losses_only_where_trl_computes_it_beside_the_loss_loop(
    fresh_probe, monkeypatch, tmp_path, fake, bypasses
):
    monkeypatch.setattr(trl.DPOTrainer, "compute_loss", fake.compute_loss)
    assert compat.liger_bypasses_loss_loop() is bypasses
    if bypasses:
        with pytest.raises(ValueError, match=r"`use_liger_kernel=True` makes TRL .* Liger's fused kernel, which "):
            train_args(tmp_path, loss_type="ropo", use_liger_kernel=True)
    else:
        assert train_args(tmp_path, loss_type="ropo", use_liger_kernel=True).use_liger_kernel
    assert train_args(tmp_path, loss_type="sigmoid", use_liger_kernel=True).use_liger_kernel  # TRL's own: untouched


FAKE_SCRIPT = '''
def main(script_args, training_args, model_args, dataset_args{extra}):
    {import_line}
    trainer = DPOTrainer(model=None, args=training_args)
    trainer.train()
'''


@pytest.mark.parametrize(
    "extra, import_line, problem",
    [
        ("", "from trl import DPOTrainer", None),
        (
            ", callbacks",
            "from trl import DPOTrainer",
            "`main` now takes (script_args, training_args, model_args, dataset_args, callbacks), not (script_args, "
            "training_args, model_args, dataset_args)",
        ),
        (
            "",
            "from trl.trainer.dpo_trainer import DPOTrainer",
            "`main` now imports `DPOTrainer` by `from trl.trainer.dpo_trainer import ...`, not from `trl`",
        ),
        ("", "DPOTrainer = trl.get_trainer('dpo')", "no longer binds `DPOTrainer` by an import trl-robust can replace"),
    ],
    ids=["as-trl", "new-argument", "trainer-imported-elsewhere", "trainer-not-imported"],
)
def test_a_trl_script_of_another_shape_is_refused_before_anything_is_built(
    fresh_probe, monkeypatch, tmp_path, extra, import_line, problem
):
    from trl_robust.compat import launch
    from trl_robust.scripts.training import run_trl_script

    script = tmp_path / "dpo.py"
    script.write_text(FAKE_SCRIPT.format(extra=extra, import_line=import_line))
    monkeypatch.setattr(launch, "script_path", lambda command: script)
    if problem is None:
        compat.check_trl_script("dpo")
        return
    with pytest.raises(IncompatibleTRLError) as error:
        compat.check_trl_script("dpo")
    assert f"TRL's `trl/scripts/dpo.py` {problem}" in str(error.value)
    assert f"installed TRL {trl.__version__}" in str(error.value)
    # What `trl-robust dpo` runs in each process: the probe comes before the built-in model or anything else.
    with pytest.raises(IncompatibleTRLError):
        run_trl_script("dpo", RobustDPOTrainer, (None, None, None, None))


def test_a_trl_script_without_main_is_refused(fresh_probe, monkeypatch, tmp_path):
    from trl_robust.compat import launch

    (tmp_path / "reward.py").write_text("def run(args):\n    pass\n")
    monkeypatch.setattr(launch, "script_path", lambda command: tmp_path / f"{command}.py")
    with pytest.raises(IncompatibleTRLError, match=r"TRL's `trl/scripts/reward.py` has no `main` function any more"):
        compat.check_trl_script("reward")


def test_trl_robust_dpo_names_an_incompatible_trl_script_before_launching(fresh_probe, monkeypatch, tmp_path, capsys):
    import accelerate.commands.launch

    from trl_robust.cli import dpo_command
    from trl_robust.compat import launch

    (tmp_path / "dpo.py").write_text("def run(args):\n    pass\n")
    monkeypatch.setattr(launch, "script_path", lambda command: tmp_path / f"{command}.py")
    launched = []
    monkeypatch.setattr(accelerate.commands.launch, "launch_command", launched.append)
    output_dir = tmp_path / "out"
    argv = ["--model_name_or_path", "builtin:tiny", "--dataset_name", "builtin:tiny", "--bf16", "false"]
    argv += ["--output_dir", str(output_dir)]
    assert dpo_command(argv) == 1
    error = capsys.readouterr().err
    assert "trl-robust dpo: error:" in error and "has no `main` function any more" in error
    assert f"installed TRL {trl.__version__}" in error and "Traceback" not in error
    assert launched == [] and not output_dir.exists()


def validate_two(args):
    return args, None


def validate_with_parser(args, parser):
    return args, None, False


@pytest.mark.parametrize(
    "fake, problem",
    [
        (validate_two, "now returns `return (args, None)`, not (args, defaults, mp_from_config_flag)"),
        (validate_with_parser, "now takes (args, parser), not (args)"),
        (None, "is gone"),
    ],
    ids=["two-values", "new-argument", "gone"],
)
def test_an_accelerate_whose_launch_check_changed_is_named_instead_of_a_usage_error(monkeypatch, fake, problem):
    import argparse

    import accelerate
    import accelerate.commands.launch

    from trl_robust.cli.launcher import check_launch
    from trl_robust.compat import IncompatibleAccelerateError

    if fake is None:
        monkeypatch.delattr(accelerate.commands.launch, "_validate_launch_command")
    else:
        monkeypatch.setattr(accelerate.commands.launch, "_validate_launch_command", fake)
    with pytest.raises(IncompatibleAccelerateError) as error:
        check_launch(argparse.Namespace(num_processes=2, multi_gpu=False, cpu=True))
    message = str(error.value)
    assert f"installed accelerate {accelerate.__version__}" in message
    assert f"`accelerate.commands.launch._validate_launch_command` {problem}" in message
    assert "trl-robust supports accelerate>=1.4.0" in message
