"""The `trl-robust` command: TRL's `trl` command, with robust DPO and robust reward models.

    trl-robust dpo [--config FILE.yaml] [ARGS...]   `trl dpo`, training with RobustDPOConfig / RobustDPOTrainer
    trl-robust reward [--config FILE.yaml] [ARGS...]  `trl reward`, with RobustRewardConfig / RobustRewardTrainer
    trl-robust env                                  what `trl env` prints, plus trl-robust's version
    trl-robust demo [--flip_rate 0.4 ...]           DPO, ROPO and ROPO auto on a built-in noisy task (CPU)
    trl-robust audit --model_name_or_path ...       rank preference pairs by how likely their label is wrong
    trl-robust COMMAND ...                          any other TRL command, run by `trl` unchanged (sft, grpo, ...)

Why a command of its own: `trl dpo` runs TRL's script in a fresh interpreter through `accelerate launch`, where
this package is never imported, and it forwards every YAML key its dataclasses lack (`ropo_alpha`) to accelerate,
which stops with "unrecognized arguments". `trl-robust dpo` parses with the same TRL parser plus our config and
launches `trl_robust.scripts.dpo`, which runs TRL's own script body after `patch_trl()`. `trl-robust reward` is the
same for `trl reward` (`trl_robust.scripts.reward`).

What runs before the arguments are parsed is kept small: `--version` reads the versions from package metadata (no
torch, transformers or TRL import), and each command imports only what it needs.
"""

import argparse
import contextlib
import io
import subprocess
import sys

from .. import __version__

TRAINING_MODULE = "trl_robust.scripts.dpo"
# The module each training command launches in every process.
TRAINING_MODULES = {"dpo": TRAINING_MODULE, "reward": "trl_robust.scripts.reward"}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `trl-robust` console script and of `python -m trl_robust`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    if command in TRAINING_MODULES:
        return training_command(argv[1:], command)
    if command == "env":
        return env_command()
    if command == "demo":
        from ..experiments.demo import main as demo_main

        demo_main(argv[1:])
        return 0
    if command == "audit":
        from .audit import main as audit_main

        return audit_main(argv[1:])
    if argv[:1] == ["--version"]:  # answered without importing TRL, transformers or torch
        print(version_text())
        return 0
    trl_commands = _trl_commands()
    is_option = command is None or command.startswith("-")
    if not is_option and (command in trl_commands or not trl_commands):  # TRL's (if its CLI is broken, fail as it)
        from trl.cli import main as trl_main

        return trl_main(argv)
    # No command, --help, --version, or an unknown command: argparse answers (help, or "invalid choice").
    parser = _help_parser(trl_commands)
    parser.parse_args(argv[:1])
    parser.print_help()
    return 0


def dpo_command(argv: list[str], prog: str = "trl-robust dpo") -> int:
    """`trl-robust dpo ARGS`: check the arguments here, then train in processes started by `accelerate launch`."""
    return training_command(argv, "dpo", prog)


def reward_command(argv: list[str], prog: str = "trl-robust reward") -> int:
    """`trl-robust reward ARGS`: `trl reward` with the robust reward losses, launched as `dpo_command` launches."""
    return training_command(argv, "reward", prog)


def training_command(argv: list[str], command: str, prog: str | None = None) -> int:
    """`trl-robust COMMAND ARGS` (dpo, reward): check the arguments here, then train in processes started by
    `accelerate launch`."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    from ..builtin import materialise_builtins
    from ..compat import IncompatibleAccelerateError, IncompatibleTRLError, check_trl_script
    from .arguments import UsageError, parse_command_args
    from .launcher import check_launch

    prog = prog or f"trl-robust {command}"
    try:
        args = parse_command_args(argv, command, prog)
        # The training processes probe TRL's script again; probed here too, an incompatible TRL is one clear message
        # before any process starts rather than one traceback per process.
        check_trl_script(command)
        # TRL's `launch_training_script` only starts scripts inside `trl/scripts`; this is its body, aimed at our
        # module. accelerate's own checks of it run first, so that they too come before anything is loaded.
        launch_argv = [*args.launch_args, "--module", TRAINING_MODULES[command], *args.script_argv]
        launch = launch_command_parser().parse_args(launch_argv)
        notices = [*args.notices, *check_launch(launch)]
    except UsageError as error:
        print(f"{prog}: error: {error}\nRun `{prog} --help` to list every argument.", file=sys.stderr)
        return 2
    except (IncompatibleTRLError, IncompatibleAccelerateError) as error:  # the installation, not the arguments
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    for notice in notices:
        print(f"{prog}: note: {notice}", file=sys.stderr)
    # Build `builtin:` names here, outside any distributed run and on every machine of a multi-machine one; the
    # training processes then find them in the cache.
    materialise_builtins(args.script_args, args.model_args)
    try:
        launch_command(launch)
    except subprocess.CalledProcessError as error:  # the training process has already printed its traceback
        return error.returncode
    return 0


def env_command() -> int:
    """Print `trl env`'s report with trl-robust's line added, so one copy-paste describes the whole setup."""
    from trl.scripts.env import print_env

    from ..compat import supported_trl_text
    from ..registry import registered_loss_types

    report = io.StringIO()
    with contextlib.redirect_stdout(report):
        print_env()
    ours = f"- trl-robust version: {__version__} (supports trl{supported_trl_text()}; loss types: "
    ours += f"{', '.join(registered_loss_types())})"
    lines = report.getvalue().splitlines()
    trl_line = next((i for i, line in enumerate(lines) if line.startswith("- TRL version")), len(lines) - 1)
    lines.insert(trl_line + 1, ours)
    print("\n".join(lines))
    return 0


def _trl_commands() -> dict[str, str]:
    """TRL's own command names and help texts, from the installed TRL (empty if its CLI cannot be imported)."""
    try:
        from trl.cli.commands import get_commands  # in trl 0.29 this imports every trainer, GRPO's extras included
    except Exception:  # `trl-robust --help` and `trl-robust dpo` must not depend on them
        return {}
    return {command.name: command.help_text for command in get_commands()}


def version_text() -> str:
    """"trl-robust 0.1.0 (trl 1.16.0)": TRL's version from its package metadata, which is what `trl.__version__` reads,
    so that `trl-robust --version` need not import TRL (seconds: it pulls in torch and transformers)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        trl_version = version("trl")
    except PackageNotFoundError:
        trl_version = "not installed"
    return f"trl-robust {__version__} (trl {trl_version})"


def _help_parser(trl_commands: dict[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trl-robust",
        description="TRL's command line with noise-robust DPO losses (ROPO, SymPO). Replace `trl` by `trl-robust`.",
    )
    parser.add_argument("--version", action="version", version=version_text())
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    commands.add_parser("dpo", help="`trl dpo` with trl-robust's loss types (loss_type: ropo, ...) and fields")
    commands.add_parser("reward", help="`trl reward` with trl-robust's loss types (loss_type: sympo_sigmoid, ...)")
    commands.add_parser("env", help="what `trl env` prints, plus trl-robust's version")
    commands.add_parser(
        "demo",
        help="DPO, ROPO and ROPO with `ropo_filter_ratio: auto` on a built-in task with 40%% flipped labels "
        "(CPU, offline)",
    )
    commands.add_parser("audit", help="rank preference pairs by how likely their label is wrong (noisy-pair audit)")
    for name, help_text in trl_commands.items():
        if name not in ("dpo", "reward", "env", "demo", "audit"):
            commands.add_parser(name, help=f"{help_text} (TRL's `trl {name}`, unchanged)")
    return parser
