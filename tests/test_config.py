"""`RobustDPOConfig` validation: errors say what to do next, and come at construction."""

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import trl
from packaging.version import Version

from trl_robust import RobustDPOConfig, available_loss_types
from trl_robust.config import validate_robust_args

from .conftest import train_args


def test_defaults_are_the_papers_values(tmp_path):
    args = train_args(tmp_path)
    assert args.ropo_alpha == 14.0 and args.sympo_reward_clip == 10.0 and args.beta == 0.1


def test_help_strings_cite_the_papers():
    fields = RobustDPOConfig.__dataclass_fields__
    assert "2404.04102" in fields["ropo_alpha"].metadata["help"]
    assert "2505.24709" in fields["sympo_reward_clip"].metadata["help"]


def test_unknown_loss_type_names_the_closest_and_lists_valid(tmp_path):
    with pytest.raises(ValueError) as err:
        train_args(tmp_path, loss_type="sympo_ramps")
    message = str(err.value)
    assert "Did you mean 'sympo_ramp'?" in message
    for name in available_loss_types():  # TRL's built-ins and every registered loss type
        assert name in message


def test_unknown_loss_type_without_close_match_still_lists_valid(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown loss_type 'zzzz'\. Valid loss types: sigmoid"):
        train_args(tmp_path, loss_type="zzzz")


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"ropo_alpha": 0.0}, "ropo_alpha` must be > 0"),
        ({"ropo_alpha": -3.0}, "ropo_alpha` must be > 0"),
        ({"ropo_alpha": math.nan}, "ropo_alpha` must be a finite"),
        ({"ropo_alpha": math.inf}, "ropo_alpha` must be a finite"),
        ({"sympo_reward_clip": 0.0}, "sympo_reward_clip` must be > 0"),
        ({"sympo_reward_clip": -1.0}, "sympo_reward_clip` must be > 0"),
        ({"sympo_reward_clip": math.nan}, "sympo_reward_clip` must be a finite"),
        ({"beta": math.inf}, "beta` must be a finite"),
        # TRL takes any β; at 0 every margin is 0 and below 0 the rejected responses are trained up, for every loss.
        ({"beta": 0.0}, r"beta` must be > 0, got 0.0"),
        ({"beta": -0.1}, r"beta` must be > 0, got -0.1"),
        ({"loss_type": "sigmoid", "beta": -0.1}, r"beta` must be > 0"),
        ({"loss_type": "ipo", "beta": 0.0}, r"beta` must be > 0"),
        ({"label_smoothing": math.nan}, "label_smoothing` must be a finite"),
        ({"loss_type": ["ropo", "sft"], "loss_weights": [1.0, math.nan]}, "loss_weights` must be a finite"),
        ({"drdpo_beta_prime": 0.0}, "drdpo_beta_prime` must be > 0"),
        ({"drdpo_beta_prime": math.inf}, "drdpo_beta_prime` must be a finite"),
        ({"loss_type": "cdpo", "label_smoothing": 0.5}, r"label_smoothing` must be in \[0, 0.5\) with loss_type 'cdpo'.*got 0.5"),
        ({"loss_type": "cdpo", "label_smoothing": -0.1}, r"label_smoothing` must be in \[0, 0.5\) with loss_type 'cdpo'.*got -0.1"),
        ({"loss_type": "sympo_unhinged", "sympo_reward_clip": None}, "'sympo_unhinged' is unbounded below"),
        ({"loss_type": ["sft", "sympo_unhinged"], "sympo_reward_clip": "none"}, "'sympo_unhinged' is unbounded"),
    ],
)
def test_bad_hyperparameters_are_rejected_at_construction(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        train_args(tmp_path, loss_type=overrides.pop("loss_type", "ropo"), **overrides)


def test_reward_clip_can_be_disabled(tmp_path):
    assert train_args(tmp_path, loss_type="sympo_sigmoid", sympo_reward_clip=None).sympo_reward_clip is None


def test_label_smoothing_with_sigmoid_warns_that_trl_ignores_it(tmp_path):
    with pytest.warns(UserWarning, match="no effect with loss_type 'sigmoid'.*Use loss_type 'cdpo'.*'robust'"):
        train_args(tmp_path, loss_type="sigmoid", label_smoothing=0.1)


def test_label_smoothing_with_robust_is_silent(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        train_args(tmp_path, loss_type="robust", label_smoothing=0.1)


def test_string_loss_type_becomes_a_list_like_trl(tmp_path):
    assert train_args(tmp_path, loss_type="ropo").loss_type == ["ropo"]


def test_liger_kernel_is_refused_only_where_it_bypasses_the_loss_chain():
    args = SimpleNamespace(
        loss_type=["ropo"], beta=0.1, label_smoothing=0.0, loss_weights=None, use_liger_kernel=True
    )
    if Version(trl.__version__) < Version("1.14"):
        with pytest.raises(ValueError, match="use_liger_kernel"):
            validate_robust_args(args)
    else:
        validate_robust_args(args)  # from 1.14 Liger no longer replaces the loss chain
    args.loss_type = ["sigmoid"]
    validate_robust_args(args)  # built-in losses are TRL's business either way


def label_smoothing_warnings(caught):
    return [w for w in caught if "has no effect with loss_type 'sigmoid'" in str(w.message)]


def test_label_smoothing_with_sigmoid_warns_once_for_a_config_and_its_trainer(
    tiny_model_path, preference_dataset, tmp_path, monkeypatch
):
    from trl_robust import RobustDPOTrainer

    monkeypatch.setenv("PYTHONWARNINGS", "")  # restored after the test
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # not Python's once-per-location default: count every call
        args = train_args(tmp_path, loss_type="sigmoid", label_smoothing=0.1)
        RobustDPOTrainer(model=tiny_model_path, args=args, train_dataset=preference_dataset)
    assert len(label_smoothing_warnings(caught)) == 1


def test_label_smoothing_warning_is_not_repeated_by_the_processes_this_one_starts(tmp_path, monkeypatch):
    # `trl-robust dpo` builds the config in its own process and again in each training process it launches; these
    # inherit the environment, hence an `ignore` filter for the warning already shown.
    monkeypatch.setenv("PYTHONWARNINGS", "")
    with pytest.warns(UserWarning, match="no effect with loss_type 'sigmoid'"):
        train_args(tmp_path, loss_type="sigmoid", label_smoothing=0.1)
    child = (
        "from tests.conftest import train_args; from pathlib import Path\n"
        f"train_args(Path({str(tmp_path)!r}), loss_type='sigmoid', label_smoothing=0.1)\n"
        f"train_args(Path({str(tmp_path)!r}), loss_type='sigmoid', label_smoothing=0.2)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "label_smoothing=0.1` has no effect" not in result.stderr
    assert "label_smoothing=0.2` has no effect" in result.stderr  # another value is another message
