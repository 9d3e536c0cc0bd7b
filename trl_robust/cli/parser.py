"""The parser of `trl-robust dpo|reward`: TRL's `TrlParser`, reporting every problem it finds instead of the first.

argparse stops at the first value it cannot convert, and `HfArgumentParser` at the first dataclass that refuses its
values; a user with three mistakes would run the command three times, waiting seconds each time. Here each flag's
values are converted on their own (`bad_values`), YAML values too, every dataclass is built even after one has
refused, and the robust config's one-field rules run one by one (`field_problems`).
"""

import argparse
import dataclasses

from trl import DPOConfig, TrlParser

from ..config import ROBUST_FIELDS, RobustDPOConfig
from ..registry import available_loss_types, registered_hyperparameters, unknown_loss_type_error
from ..reward.config import reward_loss_types, unknown_reward_loss_error
from . import launcher
from .usage import Problems, UsageError


class CommandParser(TrlParser):
    """TRL's parser; its help ends with the `accelerate launch` options, which it hands on without declaring them
    (declared, they would come back from `parse_args_and_config` as one more namespace). `command` names the
    `trl-robust` command it parses for, in its messages.

    Where argparse and `HfArgumentParser` stop at the first bad value, this one goes on: a YAML value argparse cannot
    convert is set aside in `value_problems`, and where a dataclass refuses its values, every dataclass is built and
    each refusal reported (`UsageError.problems`); `built` then holds those that could be built (None for the others).
    """

    command = "dpo"

    def format_help(self) -> str:
        return super().format_help() + launcher.help_text(self)

    def error(self, message):  # argparse prints the usage and exits; ours is one problem in the message of them all
        raise UsageError(message)

    def set_defaults_with_config(self, **config) -> list[str]:
        """TRL's, without the YAML values argparse could not convert (recorded in `value_problems`): argparse would
        stop at the first when it converts the defaults, after the command line."""
        actions = {action.dest: action for action in self._actions if action.option_strings}
        for key, value in list(config.items()):
            if key in actions and isinstance(value, str):
                try:
                    self._get_value(actions[key], value)  # what argparse does to a string default
                except argparse.ArgumentError as error:
                    self.value_problems.append(f"YAML key {key!r}: {error.message}")
                    del config[key]
        return super().set_defaults_with_config(**config)

    def parse_args_into_dataclasses(self, args=None, return_remaining_strings=False, **kwargs):
        try:
            return super().parse_args_into_dataclasses(args, return_remaining_strings, **kwargs)
        except ValueError as error:  # a dataclass's __post_init__ refused: find every refusal, not the first only
            namespace, _ = self.parse_known_args(args)  # (argparse's own error raises here again, alone)
            problems = Problems()
            self.built = []
            for dtype in self.dataclass_types:
                names = {f.name for f in dataclasses.fields(dtype) if f.init}
                values = {name: value for name, value in vars(namespace).items() if name in names}
                for problem in field_problems(self.command, values):
                    problems.add(problem)
                try:
                    self.built.append(dtype(**values))
                except ValueError as refusal:
                    problems.add(refusal)
                    self.built.append(None)
            problems.add(error)  # already there, unless building it alone succeeded
            problems.raise_any()


def field_problems(command: str, values: dict) -> list[str]:
    """The rules of the robust config that read one field each (`values`: a dataclass's, before it is built), so that
    several bad ones are reported at once: each `loss_type` name, and each hyperparameter trl-robust adds (checked by
    its registered rule whatever the loss type, as the config does; TRL's own fields are left to the config)."""
    problems = []
    loss_type = values.get("loss_type")
    if command == "reward":
        if isinstance(loss_type, str) and loss_type not in reward_loss_types():
            problems.append(str(unknown_reward_loss_error(loss_type)))
    elif loss_type is not None:
        valid = available_loss_types()
        names = [loss_type] if isinstance(loss_type, str) else loss_type
        problems += [str(unknown_loss_type_error(name)) for name in names if name not in valid]
    # What the configs check whatever the loss type: the fields trl-robust adds to TRL's (`config.py`'s rule).
    added = {f.name for f in dataclasses.fields(RobustDPOConfig)} - {f.name for f in dataclasses.fields(DPOConfig)}
    ours = ROBUST_FIELDS | added
    for attribute, hyperparameter in registered_hyperparameters().items():
        value = values.get(attribute)
        if attribute in ours and isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                hyperparameter.validate(value)
            except ValueError as error:
                problems.append(str(error))
    return problems


def bad_values(parser: TrlParser, argv: list[str]) -> list[str]:
    """The command line's values argparse cannot take (`--learning_rate 1e-5x`, `--non_finite_margins skip`), each
    converted and checked as argparse does; argparse would report the first only. The flags with a bad value are
    removed from `argv`, so that what follows can check the rest."""
    options = {option: action for action in parser._actions for option in action.option_strings}
    problems, index = [], 0
    while index < len(argv):
        name, equals, inline = argv[index].partition("=")
        action = options.get(name) if name.startswith("--") else None
        following = []
        for token in argv[index + 1 :] if not equals else []:
            if token.startswith("--"):
                break
            following.append(token)
        if action is None or action.nargs == 0:
            index += 1
            continue
        count = len(following) if action.nargs in ("*", "+") else action.nargs if isinstance(action.nargs, int) else 1
        values = [inline] if equals else following[:count]
        if not values or (isinstance(action.nargs, int) and len(values) < action.nargs):
            index += 1  # a missing value: argparse says so
            continue
        try:
            parser._get_values(action, values)  # argparse's own conversion and `choices` check
        except argparse.ArgumentError as error:
            problems.append(f"argument {name}: {error.message}")  # as typed (argparse: `--a_b/--a-b`)
            del argv[index : index + 1 + (0 if equals else len(values))]
            continue
        index += 1
    return problems
