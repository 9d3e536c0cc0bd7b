"""Arguments of `trl-robust dpo`: TRL's own `trl dpo` parser with `RobustDPOConfig`, and clear errors up front.

`trl dpo` parses its arguments with `TrlParser((ScriptArguments, DPOConfig, ModelConfig, DatasetMixtureConfig))` and
hands whatever those dataclasses do not consume, YAML keys and flags alike, to `accelerate launch`. We use the same
parser with `RobustDPOConfig` in place of `DPOConfig`, and the same split. What TRL leaves to accelerate or to the
training process we check here, before any model is loaded:
- a missing or malformed YAML file;
- a key or flag that is neither a dataclass field nor an `accelerate launch` option (accelerate would only say
  "unrecognized arguments"): named, with the closest valid name;
- an unknown loss type or a bad robust hyperparameter (`RobustDPOConfig` validates at construction);
- a missing model or dataset: a local-looking path that does not exist, or an unknown `builtin:` name;
- an `output_dir` that already holds files, unless the run resumes from a checkpoint or `overwrite_output_dir` is set
  (the rule of transformers' example scripts; transformers 5 dropped the field, so we keep it).
"""

import difflib
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml
from accelerate.commands.launch import launch_command_parser
from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, TrlParser

from ..config import RobustDPOConfig
from ..data import FLIP_MODES
from ..paths import listing_if_not_empty, looks_like_local_path
from . import builtin


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


DATACLASS_TYPES = (ScriptArguments, RobustDPOConfig, ModelConfig, DatasetMixtureConfig, LabelNoiseArguments)
if not hasattr(RobustDPOConfig, "overwrite_output_dir"):
    DATACLASS_TYPES += (OutputDirArguments,)
_FIELD_OF = "a field of " + ", ".join(t.__name__ for t in DATACLASS_TYPES)
# Handled by TRL's launcher (trl/cli/accelerate_config.py): a shipped accelerate config by name, or a file.
ACCELERATE_CONFIG_OPTION = "--accelerate_config"
# Where a value with this suffix names a file, it can only be a local path, never a Hub id.
_SCRIPT_PLACEHOLDER = "<training-script>"


class UsageError(ValueError):
    """Bad command-line or YAML input, detected before any model is loaded."""


@dataclass
class DPOArguments:
    """The parsed dataclasses, plus how to launch the training process."""

    script_args: ScriptArguments
    training_args: RobustDPOConfig
    model_args: ModelConfig
    dataset_args: DatasetMixtureConfig
    noise_args: LabelNoiseArguments
    launch_args: list[str]  # for `accelerate launch`, from the YAML file and the command line
    script_argv: list[str]  # for the training module: the arguments without the command line's launcher options

    @property
    def dataclasses(self) -> tuple:
        """`(script_args, training_args, model_args, dataset_args)`, as TRL's `main` takes them."""
        return self.script_args, self.training_args, self.model_args, self.dataset_args


def make_parser(prog: str = "trl-robust dpo") -> TrlParser:
    """TRL's `trl dpo` parser, with `RobustDPOConfig` (so `--help` lists `ropo_alpha`, `sympo_reward_clip`)."""
    # A short usage line: argparse's default would list several hundred options before every error message.
    return TrlParser(DATACLASS_TYPES, prog=prog, usage="%(prog)s [--config FILE.yaml] [--ARGUMENT VALUE ...]")


def parse_dpo_args(argv: list[str], prog: str = "trl-robust dpo", check_output_dir: bool = True) -> DPOArguments:
    """Parse `trl-robust dpo` arguments as `trl dpo` does, raising `UsageError` on bad input. Loads no model.

    `-h/--help` prints the help and exits, as in TRL. `check_output_dir=False` skips the non-empty `output_dir` check:
    for the ranks of a distributed run, which would see the directory another rank has begun to write.
    """
    argv = _split_config_assignment(list(argv))
    parser = make_parser(prog)
    config_path = _config_path(argv)
    config = _read_config_file(config_path) if config_path is not None else {}
    launcher = _launcher_options()
    _check_config_keys(config, parser, launcher, config_path)

    command_line = _without_config_flag(argv)
    _, cli_launch_args = parser.parse_known_args(command_line)  # what the dataclasses do not take (handles --help)
    launch_args = _check_launch_args(_config_launch_args(config, parser, launcher) + cli_launch_args, parser, launcher)

    try:
        *dataclasses, _ = parser.parse_args_and_config(argv, return_remaining_strings=True)
    except ValueError as error:  # from a dataclass's __post_init__: unknown loss type, inconsistent values, ...
        raise UsageError(str(error)) from error
    script_args, training_args, model_args, dataset_args, noise_args, *output_args = dataclasses
    _check_sources(script_args, model_args, dataset_args)
    if check_output_dir:
        overwrite = (output_args[0] if output_args else training_args).overwrite_output_dir
        _check_output_dir(training_args, overwrite)
    return DPOArguments(
        script_args,
        training_args,
        model_args,
        dataset_args,
        noise_args,
        launch_args=launch_args,
        script_argv=_remove_subsequence(argv, cli_launch_args),
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
            config = yaml.safe_load(file)
    except yaml.YAMLError as error:
        raise UsageError(f"Config file {path!r} is not valid YAML:\n{error}") from error
    if not isinstance(config, dict):
        raise UsageError(
            f"Config file {path!r} must hold a YAML mapping of argument names to values (`learning_rate: 5.0e-7`), "
            f"not {type(config).__name__}."
        )
    return config


def _check_config_keys(config: dict, parser: TrlParser, launcher: dict, path: str | None) -> None:
    dataclass_keys = _dataclass_keys(parser)
    launcher_keys = {option[2:] for option in launcher if option.startswith("--")}
    valid = dataclass_keys | launcher_keys | {ACCELERATE_CONFIG_OPTION[2:], "env"}  # `env`: TRL sets these variables
    unknown = [key for key in config if key not in valid]
    if unknown:
        canonical = sorted(key for key in valid if "-" not in key)  # suggest the underscore spelling
        problems = "; ".join(f"unknown key {key!r}{_suggestion(str(key), canonical)}" for key in unknown)
        raise UsageError(
            f"{path}: {problems}. A key must be {_FIELD_OF}, an `accelerate launch` option, `accelerate_config` or "
            "`env`; `trl-robust dpo --help` lists the fields."
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
                args += [option] if value else []
            else:
                args += [option, str(value)]
    return args


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
            f"{problems}. An argument must be {_FIELD_OF} or an `accelerate launch` option; "
            "`trl-robust dpo --help` lists the fields."
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


def _check_output_dir(training_args, overwrite: bool) -> None:
    """Refuse to train into a directory that holds files, unless resuming or told to overwrite: a new run would
    replace the model, checkpoints and model card of the last one."""
    output_dir = Path(training_args.output_dir)
    if overwrite or training_args.resume_from_checkpoint:
        return
    shown = listing_if_not_empty(output_dir)
    if shown is None:
        return
    checkpoints = sorted(
        (p for p in output_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    resume = f"`--resume_from_checkpoint {checkpoints[-1]}` to continue that run, " if checkpoints else ""
    raise UsageError(
        f"`output_dir` {str(output_dir)!r} already exists and is not empty ({shown}); training would overwrite it. "
        f"Pass {resume}`--overwrite_output_dir true` to write over it, or choose another `--output_dir`."
    )


# --- helpers --------------------------------------------------------------------------------------------------------


def _dataclass_keys(parser: TrlParser) -> set[str]:
    """The YAML keys TRL's parser consumes (it matches keys against argparse destinations)."""
    return {action.dest for action in parser._actions} - {"help"}


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
