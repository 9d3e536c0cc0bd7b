"""Arguments of `trl-robust dpo` and `trl-robust reward`: TRL's own `trl dpo`/`trl reward` parser with `RobustDPOConfig`
/`RobustRewardConfig`, and clear errors up front.

`trl dpo` parses its arguments with `TrlParser((ScriptArguments, DPOConfig, ModelConfig, DatasetMixtureConfig))` and
hands whatever those dataclasses do not consume, YAML keys and flags alike, to `accelerate launch`. We use the same
parser with `RobustDPOConfig` in place of `DPOConfig`, and the same split; `trl reward` is built the same way from
`RewardConfig`, and `trl-robust reward` uses `RobustRewardConfig` with every check below. What TRL leaves to accelerate or to the
training process we check here, before any model is loaded:
- a missing or malformed YAML file;
- a key or flag that is neither a dataclass field nor an `accelerate launch` option (accelerate would only say
  "unrecognized arguments"): named, with the closest valid name;
- an unknown loss type or a bad robust hyperparameter (`RobustDPOConfig` validates at construction);
- a key set twice in the YAML file (YAML keeps the last value without a word);
- an on/off launcher flag given a value (`--multi_gpu true`): accelerate takes it bare, so the value became its script;
- a missing model or dataset: a local-looking path that does not exist, or an unknown `builtin:` name;
- an `output_dir` that is a file, or that already holds files, unless the run resumes from a checkpoint or
  `overwrite_output_dir` is set (the rule of transformers' example scripts; transformers 5 dropped the field);
- a `resume_from_checkpoint` that is missing, not a directory, or incomplete (cut short while saving); `true` (YAML's,
  or the words true/yes/on on the command line, which TRL's parser leaves a string) becomes the latest complete one.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, TrlParser

from .. import builtin
from ..config import RobustDPOConfig
from ..data import FLIP_MODES
from ..paths import looks_like_local_path
from ..registry import available_loss_types, registered_loss_types
from ..reward.config import RobustRewardConfig, reward_loss_types
from . import checkpoints, config_file, launcher
from .usage import UsageError, dataclass_keys, field_of, suggestion


@dataclass
class LabelNoiseArguments:
    """Optional label noise injected into the training split, to reproduce the papers' noisy-label experiments."""

    flip_rate: float = field(
        default=0.0,
        metadata={
            "help": "Fraction of training pairs whose chosen/rejected are swapped before training, in [0, 1) "
            "(`trl_robust.data.flip_preferences`; the ROPO and SymPO papers use 0.1–0.4). 0 = the data as it is. "
            "The flipped rows are recorded in a `label_flipped` column."
        },
    )
    flip_seed: int = field(default=0, metadata={"help": "Seed choosing which pairs are flipped."})
    flip_mode: str = field(
        default="symmetric",
        metadata={
            "help": "`symmetric`: any pair may be flipped (random label noise); `prefer_longer`: only pairs whose "
            "rejected response is longer (an annotator biased towards long answers)."
        },
    )

    def __post_init__(self):
        if not 0 <= self.flip_rate < 1:
            raise ValueError(f"`flip_rate` must be in [0, 1) (the fraction of pairs to flip), got {self.flip_rate}.")
        if self.flip_mode not in FLIP_MODES:
            raise ValueError(f"`flip_mode` must be one of {list(FLIP_MODES)}, got {self.flip_mode!r}.")


@dataclass
class OutputDirArguments:
    """`overwrite_output_dir`, which transformers 5 removed from `TrainingArguments` (4.x still has it there)."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Allow training into an `output_dir` that already holds files (they may be overwritten). "
            "Without it, a non-empty `output_dir` is refused unless `resume_from_checkpoint` is set."
        },
    )


# The training config of each command: TRL's command of the same name parses the same dataclasses with TRL's config.
TRAINING_CONFIGS = {"dpo": RobustDPOConfig, "reward": RobustRewardConfig}


def dataclass_types(command: str = "dpo") -> tuple:
    """The dataclasses `trl-robust COMMAND` parses: TRL's `trl COMMAND` ones, with the robust config, and ours."""
    config_cls = TRAINING_CONFIGS[command]
    types = (ScriptArguments, config_cls, ModelConfig, DatasetMixtureConfig, LabelNoiseArguments)
    if not hasattr(config_cls, "overwrite_output_dir"):
        types += (OutputDirArguments,)
    return types


DATACLASS_TYPES = dataclass_types("dpo")


@dataclass
class DPOArguments:
    """The parsed dataclasses, plus how to launch the training process (of `trl-robust dpo`, and of `trl-robust reward`
    with a `RobustRewardConfig` as `training_args`)."""

    script_args: ScriptArguments
    training_args: RobustDPOConfig | RobustRewardConfig
    model_args: ModelConfig
    dataset_args: DatasetMixtureConfig
    noise_args: LabelNoiseArguments
    launch_args: list[str]  # for `accelerate launch`, from the YAML file and the command line
    script_argv: list[str]  # for the training module: the arguments without the command line's launcher options
    notices: list[str] = field(default_factory=list)  # for the user, before training: e.g. a checkpoint skipped

    @property
    def dataclasses(self) -> tuple:
        """`(script_args, training_args, model_args, dataset_args)`, as TRL's `main` takes them."""
        return self.script_args, self.training_args, self.model_args, self.dataset_args


class _DPOParser(TrlParser):
    """TRL's parser; its help ends with the `accelerate launch` options, which it hands on without declaring them
    (declared, they would come back from `parse_args_and_config` as one more namespace). `command` names the
    `trl-robust` command it parses for, in its messages."""

    command = "dpo"

    def format_help(self) -> str:
        return super().format_help() + launcher.help_text(self)


def make_parser(prog: str = "trl-robust dpo", command: str = "dpo") -> TrlParser:
    """TRL's `trl dpo` (or `trl reward`) parser, with the robust config (so `--help` lists `ropo_alpha`,
    `sympo_reward_clip`)."""
    # A short usage line: argparse's default would list several hundred options before every error message.
    parser = _DPOParser(
        dataclass_types(command), prog=prog, usage="%(prog)s [--config FILE.yaml] [--ARGUMENT VALUE ...]"
    )
    parser.command = command
    _describe_loss_types(parser)
    return parser


def _describe_loss_types(parser: TrlParser) -> None:
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


def parse_dpo_args(argv: list[str], prog: str = "trl-robust dpo", check_output_dir: bool = True) -> DPOArguments:
    """Parse `trl-robust dpo` arguments as `trl dpo` does, raising `UsageError` on bad input. Loads no model.
    (See `parse_command_args`.)"""
    return parse_command_args(argv, "dpo", prog, check_output_dir)


def parse_reward_args(argv: list[str], prog: str = "trl-robust reward", check_output_dir: bool = True) -> DPOArguments:
    """Parse `trl-robust reward` arguments as `trl reward` does, with `RobustRewardConfig`; see `parse_command_args`."""
    return parse_command_args(argv, "reward", prog, check_output_dir)


def parse_command_args(argv: list[str], command: str, prog: str, check_output_dir: bool = True) -> DPOArguments:
    """Parse `trl-robust COMMAND` arguments as `trl COMMAND` does, raising `UsageError` on bad input. Loads no model.

    `-h/--help` prints the help and exits, as in TRL. `check_output_dir=False` skips the non-empty `output_dir` check:
    for the ranks of a distributed run, which would see the directory another rank has begun to write.
    `resume_from_checkpoint` comes back as a complete checkpoint's path or None (`true` resolved, `false` dropped).
    """
    argv = config_file.split_assignment(list(argv))
    parser = make_parser(prog, command)
    config_path = config_file.path_given(argv)
    config = config_file.read(config_path) if config_path is not None else {}
    launch_options = launcher.options()
    _check_config_keys(config, parser, launch_options, config_path)

    command_line = config_file.without_flag(argv)
    _, cli_launch_args = parser.parse_known_args(command_line)  # what the dataclasses do not take (handles --help)
    cli_launch = launcher.on_off_flags(cli_launch_args, launch_options)
    config_launch = launcher.config_args(config, parser, launch_options)
    launch_args = launcher.check_args(config_launch + cli_launch, parser, launch_options)

    try:
        *dataclasses, _ = parser.parse_args_and_config(argv, return_remaining_strings=True)
    except ValueError as error:  # from a dataclass's __post_init__: unknown loss type, inconsistent values, ...
        raise UsageError(str(error)) from error
    script_args, training_args, model_args, dataset_args, noise_args, *output_args = dataclasses
    _check_sources(script_args, model_args, dataset_args)
    checkpoints.check_output_dir_is_a_directory(Path(training_args.output_dir))
    resume_from_latest = checkpoints.resumes_from_latest(training_args.resume_from_checkpoint)
    notices = checkpoints.resolve_resume(training_args)
    if check_output_dir:
        overwrite = (output_args[0] if output_args else training_args).overwrite_output_dir
        checkpoints.check_output_dir(training_args, overwrite)
    script_argv = _remove_subsequence(argv, cli_launch_args)
    if resume_from_latest:  # every training process resumes from the checkpoint chosen here (the last flag wins)
        script_argv += ["--resume_from_checkpoint", training_args.resume_from_checkpoint]
    return DPOArguments(
        script_args,
        training_args,
        model_args,
        dataset_args,
        noise_args,
        launch_args=launch_args,
        script_argv=script_argv,
        notices=notices,
    )


# --- the YAML file's keys ------------------------------------------------------------------------------------------


def _check_config_keys(config: dict, parser: TrlParser, launch_options: dict, path: str | None) -> None:
    fields = dataclass_keys(parser)
    launcher_keys = {option[2:] for option in launch_options if option.startswith("--")}
    # `env`: environment variables, which TRL sets in the training processes
    valid = fields | launcher_keys | {launcher.ACCELERATE_CONFIG_OPTION[2:], "env"}
    unknown = [key for key in config if key not in valid]
    if unknown:
        canonical = sorted(key for key in valid if "-" not in key)  # suggest the underscore spelling
        problems = "; ".join(f"unknown key {key!r}{suggestion(str(key), canonical)}" for key in unknown)
        raise UsageError(
            f"{path}: {problems}. A key must be {field_of(parser)}, an `accelerate launch` option, `accelerate_config` "
            f"or `env`; `trl-robust {parser.command} --help` lists the fields."
        )


# --- model and dataset ----------------------------------------------------------------------------------------------


def _check_sources(script_args, model_args, dataset_args) -> None:
    if not model_args.model_name_or_path:
        raise UsageError(
            "`model_name_or_path` is required: a Hub model id, a local directory, or 'builtin:tiny' (offline)."
        )
    if not script_args.dataset_name and not dataset_args.datasets:
        raise UsageError(
            "No dataset: set `dataset_name` (a Hub dataset id, a local path, or 'builtin:tiny') or a `datasets` "
            "mixture."
        )
    _check_source("model_name_or_path", model_args.model_name_or_path, builtin.MODELS)
    if script_args.dataset_name:
        _check_source("dataset_name", script_args.dataset_name, tuple(builtin.DATASETS))
    for index, dataset in enumerate(dataset_args.datasets):
        _check_source(f"datasets[{index}].path", dataset.path, ())


def _check_source(field: str, value: str, builtin_names: tuple[str, ...]) -> None:
    if builtin.is_builtin(value):
        if value not in builtin_names:
            available = ", ".join(repr(n) for n in builtin_names) or "none"
            raise UsageError(f"`{field}`: unknown built-in name {value!r}; available here: {available}.")
    elif looks_like_local_path(value) and not Path(value).expanduser().exists():
        raise UsageError(f"`{field}`: {value!r} is a local path that does not exist (in {os.getcwd()}).")


def _remove_subsequence(tokens: list[str], subsequence: list[str]) -> list[str]:
    """`tokens` without the ordered `subsequence` (argparse returns leftovers in command-line order)."""
    result, pending = [], iter(subsequence)
    current = next(pending, None)
    for token in tokens:
        if current is not None and token == current:
            current = next(pending, None)
        else:
            result.append(token)
    return result
