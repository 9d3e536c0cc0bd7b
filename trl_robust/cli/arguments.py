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

import argparse
import copy
import difflib
import logging
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml
from accelerate.commands.launch import launch_command_parser
from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, TrlParser

from ..config import RobustDPOConfig
from ..data import FLIP_MODES
from ..paths import listing_if_not_empty, looks_like_local_path
from ..registry import available_loss_types, registered_loss_types
from ..reward.config import RobustRewardConfig, reward_loss_types
from .. import builtin


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


def _field_of(parser) -> str:
    return "a field of " + ", ".join(t.__name__ for t in parser.dataclass_types)
# Handled by TRL's launcher (trl/cli/accelerate_config.py): a shipped accelerate config by name, or a file.
ACCELERATE_CONFIG_OPTION = "--accelerate_config"
_SCRIPT_PLACEHOLDER = "<training-script>"
# The words YAML reads as booleans; on the command line TRL's parser leaves them strings where a field is not a bool.
_TRUE_WORDS, _FALSE_WORDS = {"true", "yes", "on"}, {"false", "no", "off"}
# transformers' `Trainer._save_checkpoint` writes this file last (after the weights, optimizer, scheduler and RNG
# states), and `train()` reads it to resume: a `checkpoint-N/` without it was cut short while saving.
TRAINER_STATE = "trainer_state.json"
_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")  # transformers' `get_last_checkpoint` rule


class UsageError(ValueError):
    """Bad command-line or YAML input, detected before any model is loaded."""


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
        return super().format_help() + _launcher_help(self)


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
    argv = _split_config_assignment(list(argv))
    parser = make_parser(prog, command)
    config_path = _config_path(argv)
    config = _read_config_file(config_path) if config_path is not None else {}
    launcher = _launcher_options()
    _check_config_keys(config, parser, launcher, config_path)

    command_line = _without_config_flag(argv)
    _, cli_launch_args = parser.parse_known_args(command_line)  # what the dataclasses do not take (handles --help)
    cli_launch = _on_off_flags(cli_launch_args, launcher)
    launch_args = _check_launch_args(_config_launch_args(config, parser, launcher) + cli_launch, parser, launcher)

    try:
        *dataclasses, _ = parser.parse_args_and_config(argv, return_remaining_strings=True)
    except ValueError as error:  # from a dataclass's __post_init__: unknown loss type, inconsistent values, ...
        raise UsageError(str(error)) from error
    script_args, training_args, model_args, dataset_args, noise_args, *output_args = dataclasses
    _check_sources(script_args, model_args, dataset_args)
    _check_output_dir_is_a_directory(Path(training_args.output_dir))
    resume_from_latest = _resumes_from_latest(training_args.resume_from_checkpoint)
    notices = _resolve_resume(training_args)
    if check_output_dir:
        overwrite = (output_args[0] if output_args else training_args).overwrite_output_dir
        _check_output_dir(training_args, overwrite)
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


# --- the YAML file ------------------------------------------------------------------------------------------------


def _split_config_assignment(argv: list[str]) -> list[str]:
    """`--config=FILE` -> `--config FILE`: TRL's parser only recognises the two-token form."""
    result = []
    for token in argv:
        result.extend(token.split("=", 1) if token.startswith("--config=") else [token])
    return result


def _config_path(argv: list[str]) -> str | None:
    if "--config" not in argv:
        return None
    index = argv.index("--config")
    if index + 1 >= len(argv) or argv[index + 1].startswith("--"):
        raise UsageError("`--config` needs the path of a YAML file, e.g. `--config recipes/ropo.yaml`.")
    return argv[index + 1]


def _without_config_flag(argv: list[str]) -> list[str]:
    if "--config" not in argv:
        return argv
    index = argv.index("--config")
    return argv[:index] + argv[index + 2 :]


def _read_config_file(path: str) -> dict:
    if not Path(path).is_file():
        raise UsageError(f"Config file {path!r} does not exist (or is not a file).")
    try:
        with open(path) as file:
            config = yaml.load(file, Loader=_UniqueKeyLoader)
    except _DuplicateKey as duplicate:
        raise UsageError(
            f"Config file {path!r}: key {duplicate.key!r} is set twice, on lines {duplicate.lines[0]} and "
            f"{duplicate.lines[1]} (YAML would silently keep the second value); remove one of them."
        ) from None
    except yaml.YAMLError as error:
        raise UsageError(f"Config file {path!r} is not valid YAML:\n{error}") from error
    if not isinstance(config, dict):
        raise UsageError(
            f"Config file {path!r} must hold a YAML mapping of argument names to values (`learning_rate: 5.0e-7`), "
            f"not {type(config).__name__}."
        )
    return config


class _DuplicateKey(Exception):
    def __init__(self, key, lines: tuple[int, int]):
        super().__init__(key, lines)
        self.key, self.lines = key, lines


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.safe_load`, refusing a mapping that sets a key twice: YAML keeps the last value, so a recipe with `beta`
    twice trains with the second one without a word. (Keys merged in with `<<:` may still be overridden.)"""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_line = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                if key in first_line:
                    raise _DuplicateKey(key, (first_line[key], line))
                first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def _check_config_keys(config: dict, parser: TrlParser, launcher: dict, path: str | None) -> None:
    dataclass_keys = _dataclass_keys(parser)
    launcher_keys = {option[2:] for option in launcher if option.startswith("--")}
    valid = dataclass_keys | launcher_keys | {ACCELERATE_CONFIG_OPTION[2:], "env"}  # `env`: TRL sets these variables
    unknown = [key for key in config if key not in valid]
    if unknown:
        canonical = sorted(key for key in valid if "-" not in key)  # suggest the underscore spelling
        problems = "; ".join(f"unknown key {key!r}{_suggestion(str(key), canonical)}" for key in unknown)
        raise UsageError(
            f"{path}: {problems}. A key must be {_field_of(parser)}, an `accelerate launch` option, `accelerate_config` "
            f"or `env`; `trl-robust {parser.command} --help` lists the fields."
        )


# --- what goes to `accelerate launch` -------------------------------------------------------------------------------


def _launcher_options() -> dict:
    """`accelerate launch` option string -> argparse action, without those that would stop it running our module."""
    excluded = {"-h", "--help", "-m", "--module", "--no_python", "--no-python"}
    return {
        option: action
        for action in launch_command_parser()._actions
        for option in action.option_strings
        if option not in excluded
    }


def _config_launch_args(config: dict, parser: TrlParser, launcher: dict) -> list[str]:
    """The YAML keys no dataclass takes, as launcher flags. TRL writes each as `--key value`; for accelerate's on/off
    flags (`multi_gpu: true`) that makes `True` the training script, so those become a bare `--multi_gpu`, or nothing.
    """
    dataclass_keys = _dataclass_keys(parser)  # `gradient_accumulation_steps` is in both: the dataclass's, as in TRL
    args = []
    for key, value in config.items():
        option = f"--{key}"
        if key in dataclass_keys or key == "env":  # `env:` is TRL's (environment variables), not accelerate's --env
            continue
        if option == ACCELERATE_CONFIG_OPTION:
            args += [option, str(value)]
        elif option in launcher:
            if launcher[option].nargs == 0:
                args += [option] if _on_off_value(option, value) else []
            else:
                args += [option, str(value)]
    return args


def _on_off_flags(launch_args: list[str], launcher: dict) -> list[str]:
    """accelerate's on/off flags take no value (`--multi_gpu`), so `--multi_gpu true` made `true` the training
    script. Accept `--multi_gpu`, `--multi_gpu true|false` and `--multi_gpu=true|false`, like the dataclasses' own
    booleans: a true value leaves the bare flag, a false one drops it."""
    result, index = [], 0
    while index < len(launch_args):
        name, equals, value = launch_args[index].partition("=")
        index += 1
        action = launcher.get(name)
        if action is None or action.nargs != 0:
            result.append(launch_args[index - 1])
            continue
        if not equals and index < len(launch_args) and _bool_word(launch_args[index]) is not None:
            value, equals = launch_args[index], "="  # the value is consumed with its flag
            index += 1
        result += [name] if not equals or _on_off_value(name, value) else []
    return result


def _on_off_value(option: str, value) -> bool:
    flag = bool(value) if isinstance(value, int) and value in (0, 1) else _bool_word(value)
    if flag is None:
        raise UsageError(f"`{option}` is on or off: write `{option}` alone, or `{option} true|false`; got {value!r}.")
    return flag


def _check_launch_args(launch_args: list[str], parser: TrlParser, launcher: dict) -> list[str]:
    """Validate launcher arguments with accelerate's own parser; return them with `--accelerate_config` resolved."""
    resolved = _resolve_accelerate_config(launch_args)
    accelerate_parser = launch_command_parser()
    accelerate_parser.exit_on_error = False  # raise, so the message comes out as ours, not after accelerate's usage
    try:
        # The placeholder stands where the training module goes; a stray value before it would take its place.
        namespace, unknown = accelerate_parser.parse_known_args([*resolved, _SCRIPT_PLACEHOLDER])
    except Exception as error:  # argparse.ArgumentError: e.g. `--num_processes two`
        raise UsageError(f"accelerate launch: {error}") from error
    if unknown:
        options = sorted({o for a in parser._actions for o in a.option_strings} | set(launcher))
        names = [token.split("=", 1)[0] for token in unknown if token.startswith("-")] or unknown
        problems = "; ".join(f"unknown argument {name!r}{_suggestion(name, options)}" for name in names)
        raise UsageError(
            f"{problems}. An argument must be {_field_of(parser)} or an `accelerate launch` option; "
            f"`trl-robust {parser.command} --help` lists the fields."
        )
    if namespace.training_script != _SCRIPT_PLACEHOLDER:
        stray = namespace.training_script
        hint = f" Did you mean `--config {stray}`?" if stray.endswith((".yaml", ".yml")) else ""
        raise UsageError(f"unexpected argument {stray!r}: every value needs its `--name` before it.{hint}")
    return resolved


def _resolve_accelerate_config(launch_args: list[str]) -> list[str]:
    """`--accelerate_config NAME|FILE` -> accelerate's `--config_file PATH`, NAME being a config TRL ships (zero2,
    fsdp2, ...). TRL's own rule (`resolve_accelerate_config_argument`), restated because importing that module runs
    `trl.cli`'s __init__, which in trl 0.29 imports every TRL trainer (GRPO's needs packages DPO does not)."""
    if ACCELERATE_CONFIG_OPTION not in launch_args:
        return launch_args
    index = launch_args.index(ACCELERATE_CONFIG_OPTION)
    if index + 1 >= len(launch_args):
        raise UsageError("`accelerate_config` needs a value: a file, or one of TRL's configs such as 'zero2'.")
    value = launch_args[index + 1]
    path = Path(value) if Path(value).is_file() else resources.files("trl.accelerate_configs") / f"{value}.yaml"
    if not path.is_file():
        configs = resources.files("trl.accelerate_configs").iterdir()
        shipped = sorted(c.name.removesuffix(".yaml") for c in configs if c.name.endswith(".yaml"))
        raise UsageError(
            f"`accelerate_config` {value!r} is neither a file nor a config shipped with TRL"
            f"{_suggestion(value, shipped)}; TRL ships: {', '.join(shipped)}."
        )
    return ["--config_file", str(path), *launch_args[:index], *launch_args[index + 2 :]]


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


def _check_output_dir_is_a_directory(output_dir: Path) -> None:
    """transformers would fail on a file only when it first saves, after the model, data and training."""
    existing = next((path for path in (output_dir, *output_dir.parents) if path.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file, not a directory" if existing == output_dir else f"lies under {str(existing)!r}, a file"
        raise UsageError(f"`output_dir` {str(output_dir)!r} {where}; choose another `--output_dir`.")


def _check_output_dir(training_args, overwrite: bool) -> None:
    """Refuse to train into a directory that holds files, unless resuming or told to overwrite: a new run would
    replace the model, checkpoints and model card of the last one."""
    output_dir = Path(training_args.output_dir)
    if overwrite or training_args.resume_from_checkpoint:
        return
    shown = listing_if_not_empty(output_dir)
    if shown is None:
        return
    complete, incomplete = _checkpoints(output_dir)
    resume = f"`--resume_from_checkpoint {complete[-1]}` (or `true`) to continue that run, " if complete else ""
    raise UsageError(
        f"`output_dir` {str(output_dir)!r} already exists and is not empty ({shown}); training would overwrite it. "
        f"Pass {resume}`--overwrite_output_dir true` to write over it, or choose another `--output_dir`."
        + (f" Never resumed from, being incomplete: {_incomplete_text(incomplete)}." if incomplete else "")
    )


# --- resuming -------------------------------------------------------------------------------------------------------


def _resumes_from_latest(value) -> bool:
    return value is True or _bool_word(value) is True


def _resolve_resume(training_args) -> list[str]:
    """Set `resume_from_checkpoint` to a complete checkpoint's path, or None, before any model is loaded; transformers
    would fail after loading the model and data (on `true` from the command line, a missing path, or a checkpoint
    cut short while saving, which its `get_last_checkpoint` still picks). Returns what to tell the user."""
    value, output_dir = training_args.resume_from_checkpoint, Path(training_args.output_dir)
    if value is None or value is False or _bool_word(value) is False:
        training_args.resume_from_checkpoint = None
        return []
    if not _resumes_from_latest(value):
        _check_checkpoint(Path(value), output_dir)
        return []
    complete, incomplete = _checkpoints(output_dir)
    if not complete:
        found = f"only incomplete ones: {_incomplete_text(incomplete)}." if incomplete else "no `checkpoint-N/`."
        raise UsageError(
            f"`resume_from_checkpoint true` continues from the latest complete checkpoint in `output_dir` "
            f"{str(output_dir)!r}, which holds {found} Set `--output_dir` to the run to continue, pass "
            "`--resume_from_checkpoint PATH`, or leave `resume_from_checkpoint` out to start a new run "
            "(with `--overwrite_output_dir true` if `output_dir` holds files)."
        )
    training_args.resume_from_checkpoint = str(complete[-1])
    skipped = [path for path in incomplete if _step(path) > _step(complete[-1])]
    notice = f"resuming from {complete[-1]}, the latest complete checkpoint"
    return [notice + (f"; skipped the incomplete {_incomplete_text(skipped)}." if skipped else ".")]


def _check_checkpoint(path: Path, output_dir: Path) -> None:
    alternatives = _checkpoints(path.parent)[0] or _checkpoints(output_dir)[0]
    instead = (
        f" Complete checkpoints: {', '.join(str(p) for p in alternatives[-3:])} (or pass `true` for the latest)."
        if alternatives
        else ""
    )
    prefix = f"`resume_from_checkpoint` {str(path)!r}"
    if not path.exists():
        raise UsageError(f"{prefix} does not exist (in {os.getcwd()}).{instead}")
    if not path.is_dir():
        raise UsageError(f"{prefix} is a file, not a checkpoint directory (`checkpoint-N/`).{instead}")
    if (path / TRAINER_STATE).is_file():
        return
    inside = _checkpoints(path)[0]
    if inside:  # the run's output directory instead of one of its checkpoints
        raise UsageError(
            f"{prefix} is a training output directory, not a checkpoint: pass `--resume_from_checkpoint "
            f"{inside[-1]}`, or `--output_dir {path} --resume_from_checkpoint true` for its latest complete one."
        )
    raise UsageError(
        f"{prefix} is not a complete checkpoint: it has no {TRAINER_STATE}, which transformers writes last, so the "
        f"run was stopped while saving it.{instead}"
    )


def _checkpoints(directory: Path) -> tuple[list[Path], list[Path]]:
    """The `checkpoint-N` directories of `directory` by step: (complete ones, incomplete ones)."""
    if not directory.is_dir():
        return [], []
    found = sorted(
        (path for path in directory.iterdir() if _CHECKPOINT_NAME.fullmatch(path.name) and path.is_dir()), key=_step
    )
    return [p for p in found if (p / TRAINER_STATE).is_file()], [p for p in found if not (p / TRAINER_STATE).is_file()]


def _step(checkpoint: Path) -> int:
    return int(_CHECKPOINT_NAME.fullmatch(checkpoint.name).group(1))


def _incomplete_text(incomplete: list[Path]) -> str:
    names = ", ".join(str(path) for path in incomplete)
    return f"{names} (no {TRAINER_STATE}, which transformers writes last: the run was stopped while saving)"


# --- how many processes `accelerate launch` will start ---------------------------------------------------------------


def check_launch(launch: argparse.Namespace) -> list[str]:
    """Run accelerate's own checks of `launch` (accelerate's launch namespace) before anything starts, and say where
    it would start fewer processes than asked for: `--num_processes 2` alone, on a machine without GPUs (or with
    `--cpu`), starts ONE process. Returns what to tell the user; raises `UsageError` where accelerate would refuse."""
    from ..compat import accelerate_launch_validator

    # accelerate's private `_validate_launch_command`, probed: a clear error naming accelerate's version if it changed
    _validate_launch_command = accelerate_launch_validator()
    validated = copy.deepcopy(launch)
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # accelerate logs its defaults; the real launch will log them once
    try:
        validated, defaults, _ = _validate_launch_command(validated)
    except ValueError as error:  # e.g. "You need to use at least 2 processes to use `--multi_gpu`."
        raise UsageError(f"accelerate launch: {error}") from error
    finally:
        logging.disable(previous)
    # `--multi_gpu` wins over the config file's distributed type: with an FSDP or DeepSpeed config accelerate would
    # silently train plain DDP, every rank holding the whole model.
    configured = str(getattr(defaults, "distributed_type", "") or "")
    sharded = ("FSDP", "DEEPSPEED", "MEGATRON")
    if launch.multi_gpu and any(kind in configured for kind in sharded) and not (validated.use_fsdp or validated.use_deepspeed):
        raise UsageError(
            f"`--multi_gpu` with an accelerate config for {configured.split('.')[-1]} would run plain DDP instead "
            "(accelerate lets `--multi_gpu` override the config's distributed type). Remove `--multi_gpu` (YAML "
            "`multi_gpu`): the config starts `num_processes` ranks itself, on CPUs too."
        )
    # accelerate's `launch_command` starts its "simple launcher", one process (without an MPI hostfile), unless one
    # of these is set; a config for another compute environment (SageMaker) goes its own way.
    several = ("multi_gpu", "use_deepspeed", "use_fsdp", "use_megatron_lm", "tpu")
    distributed = any(getattr(validated, name, False) for name in several) and not validated.cpu
    elsewhere = getattr(defaults, "compute_environment", "LOCAL_MACHINE") != "LOCAL_MACHINE"
    asked = validated.num_processes  # from the command line, the YAML, or an accelerate config file
    if asked is None or asked < 2 or distributed or elsewhere or getattr(validated, "mpirun_hostfile", None):
        return []
    return [
        f"`num_processes {asked}`, but accelerate will start ONE process: without `--multi_gpu`, DeepSpeed or FSDP "
        "(which it turns on by itself only where it sees 2 or more GPUs), or with `--cpu`, `accelerate launch` runs a "
        f"single process. For {asked} CPU processes (torch.distributed with gloo), add `--multi_gpu` (YAML "
        "`multi_gpu: true`) and `--use_cpu true`."
    ]


# --- help -----------------------------------------------------------------------------------------------------------


def _launcher_help(parser: TrlParser) -> str:
    """The `accelerate launch` options this command takes, in accelerate's groups, after the dataclasses' fields."""
    taken = {option for action in parser._actions for option in action.option_strings}
    accelerate_config = argparse.ArgumentParser(add_help=False).add_argument(
        ACCELERATE_CONFIG_OPTION,
        metavar="NAME|FILE",
        help="A config TRL ships (zero1, zero2, zero3, fsdp1, fsdp2, multi_gpu, single_gpu) or a file: accelerate's "
        "`--config_file`.",
    )
    formatter = parser._get_formatter()
    formatter.add_text(
        "accelerate launch options: flags or YAML keys, passed to `accelerate launch`, which starts the training "
        "processes. On a machine without GPUs, `--num_processes N` needs `--multi_gpu` (and `--use_cpu true`) to "
        "start N processes."
    )
    groups = [("accelerate launch: a config TRL ships, or a file", [accelerate_config])]
    launcher = _launcher_options()
    for group in launch_command_parser()._action_groups:
        shown = [
            action
            for action in group._group_actions
            if action.option_strings
            and all(option in launcher and option not in taken for option in action.option_strings)
        ]
        title = "general" if group.title in ("options", "optional arguments") else group.title
        groups += [(f"accelerate launch: {title}", shown)] if shown else []
    for title, actions in groups:
        formatter.start_section(title)
        formatter.add_arguments(actions)
        formatter.end_section()
    return "\n" + formatter.format_help()


# --- helpers --------------------------------------------------------------------------------------------------------


def _dataclass_keys(parser: TrlParser) -> set[str]:
    """The YAML keys TRL's parser consumes (it matches keys against argparse destinations)."""
    return {action.dest for action in parser._actions} - {"help"}


def _bool_word(value) -> bool | None:
    """True or False for the words YAML reads as booleans (any case), None for anything else."""
    word = value.strip().lower() if isinstance(value, str) else None
    return True if word in _TRUE_WORDS else False if word in _FALSE_WORDS else None


def _suggestion(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


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
