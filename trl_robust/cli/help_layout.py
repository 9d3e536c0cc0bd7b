"""How `trl-robust dpo|reward --help` reads: an example first, then trl-robust's own options in their groups, then
TRL's arguments as `trl dpo|reward --help` lists them, then the `accelerate launch` options (`launcher.help_text`).

TRL's parser (an `HfArgumentParser`) puts every dataclass field in one list in dataclass order, so the robust options
came after the ~200 fields of `TrainingArguments`, 700 lines down. Parsing does not depend on the groups an action is
shown in: the actions are only moved between argparse's help groups after the parser is built.
"""

import argparse

from ..config import ROBUST_FIELDS
from ..registry import available_loss_types, registered_hyperparameters, registered_loss_types
from ..reward.config import reward_loss_types

EXAMPLES = {
    "dpo": """\
`trl dpo` with trl-robust's noise-robust losses: the same arguments, YAML recipes and `accelerate launch` options, \
plus the trl-robust options listed first. Every argument is also a YAML key of `--config`.

examples:
  trl-robust dpo --config recipes/tiny_offline.yaml --output_dir tiny-ropo      # offline, on a CPU, in seconds
  trl-robust dpo --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \\
      --dataset_name trl-lib/ultrafeedback_binarized --loss_type ropo --output_dir Qwen2.5-0.5B-ROPO
  trl-robust dpo --config recipes/ropo_auto.yaml     # ROPO that estimates the flip rate and filters that share""",
    "reward": """\
`trl reward` with trl-robust's noise-robust losses: the same arguments, YAML recipes and `accelerate launch` options, \
plus the trl-robust options listed first. Every argument is also a YAML key of `--config`.

examples:
  trl-robust reward --config recipes/reward_sympo_sigmoid.yaml --output_dir tiny-rm   # offline, on a CPU
  trl-robust reward --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \\
      --dataset_name trl-lib/ultrafeedback_binarized --loss_type sympo_sigmoid --output_dir Qwen2.5-0.5B-RM""",
}
LABEL_NOISE_FIELDS = ("flip_rate", "flip_seed", "flip_mode")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """TRL's help formatter (argparse's, with defaults shown), keeping indented paragraphs (the examples) as written
    and filling the others."""

    def _fill_text(self, text, width, indent):
        paragraphs = text.split("\n\n")
        return "\n\n".join(
            "\n".join(indent + line for line in paragraph.splitlines())
            if any(line.startswith(" ") for line in paragraph.splitlines())
            else super(HelpFormatter, self)._fill_text(paragraph, width, indent)
            for paragraph in paragraphs
        )


def group_robust_options(parser: argparse.ArgumentParser, command: str) -> None:
    """Show `loss_type`, the robust losses' fields and the label-noise options first, each group under a title."""
    robust = {"loss_type", *ROBUST_FIELDS, *registered_hyperparameters()}  # cDPO's ε (`label_smoothing`) included
    groups = [
        (
            "trl-robust: loss type and the robust losses' settings",
            "ROPO (ropo_*), SymPO (sympo_*), Dr. DPO (drdpo_*), cDPO (its ε is `label_smoothing`) and ROPO's "
            "noisy-pair filter, which works with every registered loss type.",
            [action for action in parser._actions if action.dest in robust],
        ),
        (
            "trl-robust: label noise for experiments",
            "Flip a share of the training pairs before training, to reproduce the papers' noisy-label experiments.",
            [action for action in parser._actions if action.dest in LABEL_NOISE_FIELDS],
        ),
    ]
    # `loss_type` first (the one option that turns a robust loss on), then the losses' own settings, then the filter
    settings = ["loss_type", *registered_hyperparameters(), "sympo_reward_clip"]
    groups[0][2].sort(key=lambda action: settings.index(action.dest) if action.dest in settings else len(settings))
    created = []
    for title, description, actions in groups:
        group = parser.add_argument_group(title, description)
        for action in actions:
            for other in parser._action_groups:
                if action in other._group_actions and other is not group:
                    other._group_actions.remove(action)
            group._group_actions.append(action)
        created.append(group)
    parser._optionals.title = f"TRL's arguments (those of `trl {command}`)"
    rest = [g for g in parser._action_groups if g not in created and g is not parser._positionals]
    parser._action_groups = [parser._positionals, *created, *rest]


def describe_loss_types(parser: argparse.ArgumentParser) -> None:
    """`--loss_type`'s help is TRL's, which lists TRL's built-ins only; list every name `loss_type` accepts here,
    including those registered (`register_loss`) before the parser was made."""
    (action,) = [action for action in parser._actions if action.dest == "loss_type"]
    if parser.command == "reward":
        action.help = (
            f"Per-pair loss of the reward margin r_chosen − r_rejected (− margin): {', '.join(reward_loss_types())}. "
            "`bradley_terry` is TRL's loss (the default)."
        )
        return
    ours = registered_loss_types()
    builtins = [name for name in available_loss_types() if name not in ours]
    action.help = (
        f"Type of loss to use. trl-robust's: {', '.join(ours)}. TRL's built-ins: {', '.join(builtins)}. "
        "Several types are combined with the weights in `loss_weights`."
    )
