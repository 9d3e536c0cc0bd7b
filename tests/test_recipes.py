"""Every recipe in recipes/ parses with the installed TRL through the CLI's own parser, at the values it documents, and
with any registered loss type in place of its own. Recipes are per use case (full fine-tuning, LoRA, QLoRA, the
filter, the offline smoke test), not per loss: a user switches loss by changing `loss_type`."""

import re
from pathlib import Path

import pytest
import torch
import trl
import yaml

from trl_robust.cli.arguments import UsageError, parse_dpo_args
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


REPO = Path(__file__).resolve().parent.parent


def test_the_readme_lists_exactly_the_recipes_present():
    # The README's recipe table is where users look for a recipe: one row per file in recipes/, no row for a file gone.
    readme = (REPO / "README.md").read_text()
    table = readme.split("### Recipes", 1)[1].split("\n### ", 1)[0]
    listed = set(re.findall(r"^\| `([^`]+)` \|", table, re.M))
    present = {path.name for path in (REPO / "recipes").iterdir() if path.suffix in (".yaml", ".sh")}
    assert listed == present


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_recipe_parses_at_the_papers_defaults(recipe):
    args = parse_recipe(recipe)  # an unknown key, a bad value or an unknown loss type raises here
    config = args.training_args
    (loss_type,) = config.loss_type
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
def test_every_registered_loss_type_can_replace_the_recipes_own(recipe):
    # `--loss_type X` on the command line (or `loss_type: X` in the file) is how a user switches loss in a recipe.
    filtering = parse_recipe(recipe).training_args.ropo_filter_ratio not in (0, 0.0, None)
    for loss_type in registered_loss_types():
        argv = ["--config", str(recipe), *NO_GPU_OVERRIDE, "--loss_type", loss_type]
        if filtering and get_loss_spec(loss_type).couples_batch:  # no per-pair losses to filter: refused, by name
            with pytest.raises(UsageError, match=loss_type):
                parse_dpo_args(argv)
            continue
        assert parse_dpo_args(argv).training_args.loss_type == [loss_type]


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
