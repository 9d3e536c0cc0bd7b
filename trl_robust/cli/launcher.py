"""What `trl-robust dpo|reward` hands to `accelerate launch`: the YAML keys and flags no dataclass takes, checked with
accelerate's own parser and validator before anything starts, and listed at the end of `--help`."""

import argparse
import copy
import logging
import re
from importlib import resources
from pathlib import Path

from accelerate.commands.launch import launch_command_parser
from trl import TrlParser

from .usage import Problems, UsageError, bool_word, dataclass_keys, field_of, suggestion

# Handled by TRL's launcher (trl/cli/accelerate_config.py): a shipped accelerate config by name, or a file.
ACCELERATE_CONFIG_OPTION = "--accelerate_config"
_SCRIPT_PLACEHOLDER = "<training-script>"
_OPTION = re.compile(r"--?[A-Za-z]")  # `--name` or `-n`, not a value such as `-1`


def options() -> dict:
    """`accelerate launch` option string -> argparse action, without those that would stop it running our module."""
    excluded = {"-h", "--help", "-m", "--module", "--no_python", "--no-python"}
    return {
        option: action
        for action in launch_command_parser()._actions
        for option in action.option_strings
        if option not in excluded
    }


def config_args(config: dict, parser: TrlParser, launcher: dict) -> list[str]:
    """The YAML keys no dataclass takes, as launcher flags. TRL writes each as `--key value`; for accelerate's on/off
    flags (`multi_gpu: true`) that makes `True` the training script, so those become a bare `--multi_gpu`, or nothing.
    """
    fields = dataclass_keys(parser)  # `gradient_accumulation_steps` is in both: the dataclass's, as in TRL
    args = []
    for key, value in config.items():
        option = f"--{key}"
        if key in fields or key == "env":  # `env:` is TRL's (environment variables), not accelerate's --env
            continue
        if option == ACCELERATE_CONFIG_OPTION:
            args += [option, str(value)]
        elif option in launcher:
            if launcher[option].nargs == 0:
                args += [option] if _on_off_value(option, value) else []
            else:
                args += [option, str(value)]
    return args


def on_off_flags(launch_args: list[str], launcher: dict) -> list[str]:
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
        if not equals and index < len(launch_args) and bool_word(launch_args[index]) is not None:
            value, equals = launch_args[index], "="  # the value is consumed with its flag
            index += 1
        result += [name] if not equals or _on_off_value(name, value) else []
    return result


def _on_off_value(option: str, value) -> bool:
    flag = bool(value) if isinstance(value, int) and value in (0, 1) else bool_word(value)
    if flag is None:
        raise UsageError(f"`{option}` is on or off: write `{option}` alone, or `{option} true|false`; got {value!r}.")
    return flag


def check_args(launch_args: list[str], parser: TrlParser, launcher: dict) -> list[str]:
    """Validate launcher arguments with accelerate's own parser; return them with `--accelerate_config` resolved.
    Reports every unknown name and every bad value at once (`UsageError.problems`)."""
    resolved = resolve_accelerate_config(launch_args)
    problems = Problems()
    # An unknown name is found before accelerate parses: there its value would become the training script, and the
    # rest that script's arguments (`--lerning_rate 1 --bta 2` hid `--bta`). It goes with its value, if it has one.
    known, unknown, index = [], [], 0
    while index < len(resolved):
        name = resolved[index].split("=", 1)[0]
        index += 1
        if not _OPTION.match(name) or name in launcher:
            known.append(resolved[index - 1])
            continue
        unknown.append(name)
        if "=" not in resolved[index - 1] and index < len(resolved) and not _OPTION.match(resolved[index]):
            index += 1
    if unknown:
        options = sorted({o for a in parser._actions for o in a.option_strings} | set(launcher))
        listed = "; ".join(f"unknown argument {name!r}{suggestion(name, options)}" for name in unknown)
        problems.add(
            f"{listed}. An argument must be {field_of(parser)} or an `accelerate launch` option; "
            f"`trl-robust {parser.command} --help` lists the fields."
        )
    accelerate_parser = launch_command_parser()
    accelerate_parser.exit_on_error = False  # raise, so the message comes out as ours, not after accelerate's usage
    try:
        # The placeholder stands where the training module goes; a stray value before it would take its place.
        namespace, _ = accelerate_parser.parse_known_args([*known, _SCRIPT_PLACEHOLDER])
    except Exception as error:  # argparse.ArgumentError: e.g. `--num_processes two`
        problems.add(f"accelerate launch: {error}")
    else:
        if namespace.training_script != _SCRIPT_PLACEHOLDER:
            stray = namespace.training_script
            hint = f" Did you mean `--config {stray}`?" if stray.endswith((".yaml", ".yml")) else ""
            problems.add(f"unexpected argument {stray!r}: every value needs its `--name` before it.{hint}")
    problems.raise_any()
    return resolved


def resolve_accelerate_config(launch_args: list[str]) -> list[str]:
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
            f"{suggestion(value, shipped)}; TRL ships: {', '.join(shipped)}."
        )
    return ["--config_file", str(path), *launch_args[:index], *launch_args[index + 2 :]]


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


def help_text(parser: TrlParser) -> str:
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
    launcher = options()
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
