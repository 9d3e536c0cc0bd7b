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
  or the words true/yes/on on the command line, which TRL's parser leaves a string) becomes the latest complete one;
- a `TRL_ROBUST_VERSION_CHECK` or `TRL_ROBUST_CACHE` the training processes could not use (also when the YAML's `env:`
  sets it), which each process would otherwise report with a traceback of its own.
Every problem found is reported in one message (`usage.Problems`): argparse and the dataclasses stop at the first.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, TrlParser

from .. import builtin, compat
from ..config import RobustDPOConfig
from ..data import FLIP_MODES
from ..paths import looks_like_local_path
from ..reward.config import RobustRewardConfig
from . import checkpoints, config_file, dataset_file, help_layout, launcher
from .parser import CommandParser, bad_values
from .usage import Problems, UsageError, dataclass_keys, field_of, suggestion


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
        problems = Problems()
        if not 0 <= self.flip_rate < 1:
            problems.add(f"`flip_rate` must be in [0, 1) (the fraction of pairs to flip), got {self.flip_rate}.")
        if self.flip_mode not in FLIP_MODES:
            problems.add(f"`flip_mode` must be one of {list(FLIP_MODES)}, got {self.flip_mode!r}.")
        problems.raise_any()  # both, where both are wrong


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


def make_parser(prog: str = "trl-robust dpo", command: str = "dpo") -> TrlParser:
    """TRL's `trl dpo` (or `trl reward`) parser, with the robust config (so `--help` lists `ropo_alpha`,
    `sympo_reward_clip`), an example and trl-robust's options first in its help (`help_layout`)."""
    # A short usage line: argparse's default would list several hundred options before every error message.
    parser = CommandParser(
        dataclass_types(command),
        prog=prog,
        usage="%(prog)s [--config FILE.yaml] [--ARGUMENT VALUE ...]",
        description=help_layout.EXAMPLES[command],
        formatter_class=help_layout.HelpFormatter,
    )
    parser.command = command
    parser.value_problems, parser.built = [], None
    help_layout.describe_loss_types(parser)
    help_layout.group_robust_options(parser, command)
    return parser


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
    config = config_file.read(config_path) if config_path is not None else {}  # nothing else to check without it
    launch_options = launcher.options()
    problems = Problems()
    with problems.collecting():
        _check_config_keys(config, parser, launch_options, config_path)
    if "-h" not in argv and "--help" not in argv:  # the help comes first, whatever else is wrong
        problems.extend(bad_values(parser, argv))  # and `argv` keeps the others, to check them too

    command_line = config_file.without_flag(argv)
    cli_launch_args = launch_args = []
    with problems.collecting():  # what the dataclasses do not take (and --help)
        _, cli_launch_args = parser.parse_known_args(command_line)
    cli_launch = cli_launch_args
    with problems.collecting():
        cli_launch = launcher.on_off_flags(cli_launch_args, launch_options)
    with problems.collecting():
        config_launch = launcher.config_args(config, parser, launch_options)
        launch_args = launcher.check_args(config_launch + cli_launch, parser, launch_options)

    built = [None] * len(parser.dataclass_types)
    try:
        *built, _ = parser.parse_args_and_config(argv, return_remaining_strings=True)
    except UsageError as error:  # from the dataclasses' __post_init__: unknown loss type, inconsistent values, ...
        problems.extend(parser.value_problems)
        problems.add(error)
        built = parser.built or built
    except ValueError as error:  # from TRL's parser (an `env:` that is not a mapping)
        problems.add(error)
    else:
        problems.extend(parser.value_problems)
    script_args, training_args, model_args, dataset_args, noise_args, *output_args = built
    if None not in (script_args, model_args, dataset_args):
        _check_sources(script_args, model_args, dataset_args, problems)
        _check_environment(config, script_args, model_args, problems)
    notices, resume_from_latest = [], False
    if training_args is not None:
        if script_args is not None:
            with problems.collecting():  # a single data file: its format, and the one split it makes
                dataset_file.check_dataset_file(script_args, training_args, dataset_args)
        with problems.collecting():
            checkpoints.check_output_dir_is_a_directory(Path(training_args.output_dir))
        resume_from_latest = checkpoints.resumes_from_latest(training_args.resume_from_checkpoint)
        resolved = len(problems.found)
        with problems.collecting():
            notices = checkpoints.resolve_resume(training_args)
        resolved = len(problems.found) == resolved
        if check_output_dir and resolved:  # (where no checkpoint was found, a full `output_dir` says nothing more)
            with problems.collecting():
                overwrite = (output_args[0] if output_args else training_args).overwrite_output_dir
                checkpoints.check_output_dir(training_args, overwrite)
    problems.raise_any()
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


def _check_sources(script_args, model_args, dataset_args, problems: Problems) -> None:
    if not model_args.model_name_or_path:
        problems.add(
            "`model_name_or_path` is required: a Hub model id, a local directory, or 'builtin:tiny' (offline)."
        )
    if not script_args.dataset_name and not dataset_args.datasets:
        problems.add(
            "No dataset: set `dataset_name` (a Hub dataset id, a local path, or 'builtin:tiny') or a `datasets` "
            "mixture."
        )
    with problems.collecting():
        _check_source("model_name_or_path", model_args.model_name_or_path, builtin.MODELS)
    with problems.collecting():
        if script_args.dataset_name:
            _check_source("dataset_name", script_args.dataset_name, tuple(builtin.DATASETS))
    for index, dataset in enumerate(dataset_args.datasets):
        with problems.collecting():
            _check_source(f"datasets[{index}].path", dataset.path, ())


def _check_source(field: str, value: str | None, builtin_names: tuple[str, ...]) -> None:
    if not value:
        return
    if builtin.is_builtin(value):
        if value not in builtin_names:
            available = ", ".join(repr(n) for n in builtin_names) or "none"
            raise UsageError(f"`{field}`: unknown built-in name {value!r}; available here: {available}.")
    elif looks_like_local_path(value) and not Path(value).expanduser().exists():
        raise UsageError(f"`{field}`: {value!r} is a local path that does not exist (in {os.getcwd()}).")


# --- the environment of the training processes ----------------------------------------------------------------------


def _check_environment(config: dict, script_args, model_args, problems: Problems) -> None:
    """What the training processes read from the environment, checked once here instead of failing with a traceback
    in each of them: `TRL_ROBUST_VERSION_CHECK`, and `TRL_ROBUST_CACHE` where a `builtin:` name is to be built in it.
    TRL's parser has already copied the YAML's `env:` mapping into this process's environment, as into theirs."""
    from_yaml = config.get("env") if isinstance(config.get("env"), dict) else {}

    def origin(variable: str) -> str:
        return " (set by the YAML file's `env:`)" if variable in from_yaml else ""

    try:
        compat.version_check_policy()
    except ValueError as error:
        problems.add(f"environment variable {error}{origin(compat.VERSION_CHECK_ENV)}")
    unwritable = builtin.cache_problem(script_args, model_args)
    if unwritable:
        problems.add(f"{unwritable}{origin(builtin.CACHE_ENV)}")


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
