"""`trl-robust reward`: the drop-in for `trl reward`: every reward recipe parses at its documented values, the recipe
trains end to end through the real command (offline, builtin:tiny), label noise is injected, and bad input fails before
any model is loaded."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import trl
import yaml
from transformers import AutoModelForSequenceClassification

from trl_robust.cli import main as cli_main
from trl_robust.cli.arguments import UsageError, make_parser, parse_reward_args
from trl_robust.reward import RobustRewardConfig, reward_loss_types
from trl_robust.registry import get_loss_spec

REPO = Path(__file__).resolve().parent.parent
REWARD_RECIPES = sorted((REPO / "recipes").glob("reward_*.yaml"))
BIN = Path(sys.executable).parent


def run_command(*args, tmp_path, timeout=180):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TRL_ROBUST_CACHE": str(tmp_path / "builtin-cache"),
        "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"),
    }
    return subprocess.run(
        [str(BIN / "trl-robust"), *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=timeout
    )


def test_there_is_a_reward_recipe():  # recipes are per use case: one for reward models, any loss through `loss_type`
    assert REWARD_RECIPES


@pytest.mark.parametrize("recipe", REWARD_RECIPES, ids=lambda path: path.stem)
def test_reward_recipe_parses_offline_at_the_papers_defaults(recipe):
    args = parse_reward_args(["--config", str(recipe)])
    config = args.training_args
    assert isinstance(config, RobustRewardConfig)
    assert config.loss_type in reward_loss_types()
    spec = get_loss_spec(config.loss_type)
    if spec is not None:  # a robust loss, at its registered (the paper's) defaults
        if spec.uses_reward_clip:
            assert config.sympo_reward_clip == 10.0
        for hyperparameter in spec.hyperparameters.values():
            value = getattr(config, hyperparameter.attribute)
            hyperparameter.validate(value)
            if hyperparameter.attribute not in trl.DPOConfig.__dataclass_fields__:  # (cDPO's ε is TRL's own field)
                assert value == hyperparameter.default
    assert args.model_args.model_name_or_path == "builtin:tiny" and args.script_args.dataset_name == "builtin:tiny"
    assert config.use_cpu and args.launch_args == []
    assert "arXiv" in recipe.read_text()


@pytest.mark.parametrize("recipe", REWARD_RECIPES, ids=lambda path: path.stem)
def test_every_reward_loss_type_can_replace_the_recipes_own(recipe):
    for loss_type in reward_loss_types():
        assert parse_reward_args(["--config", str(recipe), "--loss_type", loss_type]).training_args.loss_type == loss_type


def test_bad_reward_arguments_fail_before_anything_is_loaded(tmp_path):
    recipe = str(REPO / "recipes" / "reward_sympo_sigmoid.yaml")
    with pytest.raises(UsageError, match="called 'bradley_terry' here"):
        parse_reward_args(["--config", recipe, "--loss_type", "sigmoid"])
    with pytest.raises(UsageError, match="unbounded below"):
        parse_reward_args(["--config", recipe, "--loss_type", "sympo_unhinged", "--sympo_reward_clip", "none"])
    with pytest.raises(UsageError, match=r"'--ropo_alpah' \(did you mean '--ropo_alpha'\?\).*trl-robust reward --help"):
        parse_reward_args(["--config", recipe, "--ropo_alpah", "3"])
    # `beta` is DPO's: the reward parser refuses it by name instead of handing it to accelerate.
    with pytest.raises(UsageError, match="unknown argument '--beta'"):
        parse_reward_args(["--config", recipe, "--beta", "0.1"])


def test_several_reward_mistakes_are_reported_together():
    recipe = str(REPO / "recipes" / "reward_sympo_sigmoid.yaml")
    with pytest.raises(UsageError) as error:
        parse_reward_args(["--config", recipe, "--loss_type", "sigmoid", "--ropo_alpah", "3", "--flip_rate", "1",
                           "--max_steps", "two"])
    expected = ["called 'bradley_terry' here", "'--ropo_alpah' (did you mean '--ropo_alpha'?)",
                "`flip_rate` must be in [0, 1)", "argument --max_steps: invalid int value: 'two'"]
    assert len(error.value.problems) == len(expected)
    for fragment in expected:
        assert sum(fragment in problem for problem in error.value.problems) == 1, fragment


def test_reward_help_starts_with_an_example_and_the_trl_robust_options():
    lines = make_parser("trl-robust reward", "reward").format_help().splitlines()

    def option_line(option):
        return next(i for i, line in enumerate(lines) if re.match(rf"\s+{option}(\s|,|$)", line))

    robust = next(i for i, line in enumerate(lines) if line.startswith("trl-robust: loss type"))
    noise = next(i for i, line in enumerate(lines) if line.startswith("trl-robust: label noise"))
    examples = [line for line in lines[:robust] if line.lstrip().startswith("trl-robust reward --")]
    assert examples and robust < 30
    for recipe in re.findall(r"recipes/\S+\.yaml", "\n".join(examples)):
        assert (REPO / recipe).is_file(), recipe
    ours = ["--loss_type", "--sympo_reward_clip", "--ropo_alpha", "--label_smoothing", "--ropo_filter_ratio"]
    assert robust < option_line("--loss_type") < min(option_line(o) for o in ours[1:])
    assert max(option_line(o) for o in ours) < noise < option_line("--flip_rate") < option_line("--learning_rate")


def test_reward_help_lists_the_reward_loss_types():
    help_text = " ".join(make_parser("trl-robust reward", "reward").format_help().split())
    assert "bradley_terry, ropo, sympo_sigmoid" in help_text and "label_smoothing" in help_text


def test_the_command_reports_a_bad_loss_type_with_exit_code_2(capsys):
    assert cli_main(["reward", "--model_name_or_path", "builtin:tiny", "--dataset_name", "builtin:tiny",
                     "--loss_type", "sympo_sigmod"]) == 2
    assert "Did you mean 'sympo_sigmoid'" in capsys.readouterr().err


def test_reward_recipe_trains_and_saves_model_and_card_through_the_real_command(tmp_path):
    out = tmp_path / "out"
    recipe = str(REPO / "recipes" / "reward_sympo_sigmoid.yaml")
    result = run_command("reward", "--config", recipe, "--output_dir", str(out), "--flip_rate", "0.25", tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "Flipping 16 of 64 preference pairs" in result.stderr  # 25% of the 64 built-in training pairs

    model = AutoModelForSequenceClassification.from_pretrained(out)  # a one-output reward model was saved
    assert model.config.num_labels == 1
    front_matter = (out / "README.md").read_text().split("---")[1]
    tags = yaml.safe_load(front_matter)["tags"]
    assert {"trl-robust", "sympo_sigmoid", "reward-trainer"} <= set(tags)
    (state_file,) = out.glob("checkpoint-*/trainer_state.json")
    log = json.loads(state_file.read_text())["log_history"]
    assert any("sympo_sigmoid/grad_weight" in entry for entry in log)  # the robust loss trained the model
    assert any("eval_accuracy" in entry for entry in log)  # TRL's evaluation ran on the test split
