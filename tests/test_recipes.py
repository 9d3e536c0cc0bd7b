"""Every recipe in recipes/ parses with the installed TRL through the CLI's own parser, at the values it documents."""

import re
from pathlib import Path

import pytest
import torch
import trl
import yaml

from trl_robust.cli.arguments import parse_dpo_args
from trl_robust.builtin import is_builtin
from trl_robust.config import RobustDPOConfig
from trl_robust.registry import get_loss_spec, registered_loss_types

TRL_FIELDS = set(trl.DPOConfig.__dataclass_fields__)  # TRL's own fields

# The DPO recipes; the reward-model recipes (`reward_*.yaml`, for `trl-robust reward`) are tested in test_reward_cli.py.
RECIPES = sorted(
    path for path in (Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml") if not path.stem.startswith("reward_")
)
# The GPU recipes set `bf16: true`, which TrainingArguments refuses on a machine without a GPU unless `use_cpu` is set.
# That is the only value these tests override, and only where there is no GPU.
NO_GPU_OVERRIDE = [] if torch.cuda.is_available() else ["--use_cpu", "true"]


def parse_recipe(recipe: Path):
    return parse_dpo_args(["--config", str(recipe), *NO_GPU_OVERRIDE])


def test_recipes_cover_every_loss_of_the_package_and_the_adapter_variants():
    names = {recipe.stem for recipe in RECIPES}
    ours = {name for name in registered_loss_types() if get_loss_spec(name).fn.__module__ == "trl_robust.losses"}
    assert ours and ours <= names  # (a third party's loss may come without a recipe)
    assert {"ropo_lora", "ropo_qlora", "tiny_offline"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_recipe_parses_at_the_papers_defaults(recipe):
    args = parse_recipe(recipe)  # an unknown key, a bad value or an unknown loss type raises here
    config = args.training_args
    (loss_type,) = config.loss_type
    assert recipe.stem.startswith(loss_type) or recipe.stem == "tiny_offline"
    assert loss_type in registered_loss_types()
    assert config.beta == 0.1
    spec = get_loss_spec(loss_type)
    for hyperparameter in spec.hyperparameters.values():
        value = getattr(config, hyperparameter.attribute)
        if hyperparameter.attribute in TRL_FIELDS:  # a TRL field the loss reads (cDPO's ε): set, and valid for it
            assert value != hyperparameter.default
            hyperparameter.validate(value)
        else:  # a field trl-robust adds: the registered (paper's) default
            assert value == hyperparameter.default
    if spec.uses_reward_clip:
        assert config.sympo_reward_clip == RobustDPOConfig.sympo_reward_clip == 10.0
    if recipe.stem == "ropo_filter":
        assert config.ropo_filter_ratio > 0 and config.ropo_filter_warmup_steps > 0
    if recipe.stem == "ropo_auto":  # the filter with no ratio to set: epoch scope, and the epochs it needs
        assert config.ropo_filter_ratio == "auto" and config.ropo_filter_scope is None and config.num_train_epochs >= 2
    assert args.launch_args == []  # single-process recipes: nothing for `accelerate launch`


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_recipe_documents_its_sources_and_hardware(recipe):
    text = recipe.read_text()
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    assert "arXiv" in comments  # the paper behind the loss
    if recipe.stem == "tiny_offline":
        assert "CPU" in comments
        return
    assert "Where the numbers come from" in comments and "Hardware" in comments
    # The effective batch the comment states is the one the values give on one GPU.
    stated = int(re.search(r"Effective batch = .*= (\d+)", comments).group(1))
    config = yaml.safe_load(text)
    assert config["per_device_train_batch_size"] * config["gradient_accumulation_steps"] == stated


def test_adapter_recipes_set_lora_and_4bit():
    lora = parse_recipe(next(r for r in RECIPES if r.stem == "ropo_lora")).model_args
    qlora = parse_recipe(next(r for r in RECIPES if r.stem == "ropo_qlora")).model_args
    assert lora.use_peft and not lora.load_in_4bit and lora.lora_target_modules == "all-linear"
    assert qlora.use_peft and qlora.load_in_4bit and qlora.bnb_4bit_quant_type == "nf4"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_only_the_offline_recipe_uses_builtin_names(recipe):
    args = parse_recipe(recipe)
    names = (args.model_args.model_name_or_path, args.script_args.dataset_name)
    if recipe.stem == "tiny_offline":
        assert all(is_builtin(name) for name in names) and args.training_args.use_cpu
    else:
        assert not any(is_builtin(name) for name in names)
        assert args.script_args.dataset_name == "trl-lib/ultrafeedback_binarized"
