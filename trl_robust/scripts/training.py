"""What the training modules of `trl-robust dpo` and `trl-robust reward` share: run TRL's own script for the command
with the robust trainer, and their `python -m` entry point.

TRL's scripts (`trl/scripts/dpo.py`, `trl/scripts/reward.py`) look their trainer up as `trl.<Name>Trainer` when `main`
runs (TRL >= 1.0), or bind it when the module is imported (TRL < 1.0). `trl_robust.compat.check_trl_script` checks
that from the script's source first (and that `main` takes the four dataclasses). After `patch_trl()` we put the
script trainer in both places, then call TRL's `main`: dataset loading, PEFT and 4-bit quantisation, training, saving, the model card
and the Hub stay TRL's code in every supported version.
"""

import importlib
import os
import sys

import trl

from trl_robust import patch_trl
from trl_robust.builtin import materialise_builtins
from trl_robust.cli.arguments import LabelNoiseArguments, UsageError, parse_command_args
from trl_robust.cli.dataset_file import dataset_file_as_mixture
from trl_robust.cli.distributed import end_distributed
from trl_robust.cli.orphans import die_with_launcher
from trl_robust.compat import TRL_SCRIPT_TRAINERS, check_trl_script
from trl_robust.data import flip_preferences


def script_trainer(base: type, noise_args: LabelNoiseArguments | None) -> type:
    """`base` (a robust trainer) as the scripts use it: label noise on the training split (if asked for),
    `--resume_from_checkpoint` honoured with every TRL (TRL < 1.0's scripts call `trainer.train()` without it, so a
    resumed run would silently start again from step 0), and a distributed run ended by `end_distributed`."""

    class ScriptTrainer(base):
        def __init__(self, *args, train_dataset=None, **kwargs):
            if noise_args is not None and noise_args.flip_rate > 0:
                train_dataset = flip_preferences(
                    train_dataset, noise_args.flip_rate, seed=noise_args.flip_seed, mode=noise_args.flip_mode
                )
            super().__init__(*args, train_dataset=train_dataset, **kwargs)

        def train(self, resume_from_checkpoint=None, *args, **kwargs):
            if resume_from_checkpoint is None:
                resume_from_checkpoint = self.args.resume_from_checkpoint
            return super().train(resume_from_checkpoint, *args, **kwargs)

        def end(self):
            """TRL 1.x's scripts call this last: finish the trackers, but leave the process group to
            `end_distributed` (destroying it here made a rank hang later, in gloo's teardown)."""
            for tracker in self.accelerator.trackers:
                tracker.finish()

    # ScriptDPOTrainer, ScriptRewardTrainer: the names in tracebacks and logs.
    ScriptTrainer.__name__ = ScriptTrainer.__qualname__ = f"Script{base.__name__.removeprefix('Robust')}"
    return ScriptTrainer


def run_trl_script(command: str, trainer_cls: type, dataclasses: tuple) -> None:
    """Run TRL's `trl/scripts/<command>.py` `main` on `dataclasses` (its four), training with `trainer_cls`, which is
    installed where that script looks up its trainer (`trl.DPOTrainer` for `dpo`: `compat.TRL_SCRIPT_TRAINERS`)."""
    trainer_name = TRL_SCRIPT_TRAINERS[command]
    script_args, training_args, model_args, dataset_args = dataclasses
    # TRL's script takes the four dataclasses and builds `trl.<trainer_name>`: probed before anything is built or loaded.
    check_trl_script(command)
    # Rank 0 first: in a distributed run only global rank 0's `save_pretrained` writes weights, so it must be the one
    # that builds a built-in model; the other ranks then find it in the cache.
    with training_args.main_process_first(local=False, desc="building builtin: model and data"):
        materialise_builtins(script_args, model_args)
    # A single data file as `dataset_name`: TRL's script would hand it to `load_dataset`, which wants a directory or a
    # Hub id (FileNotFoundError); it becomes the `datasets` mixture TRL's script loads with the file's builder.
    dataset_file_as_mixture(script_args, dataset_args, training_args)
    patch_trl()  # before importing TRL's script: trl < 1.0 binds the trainer when the script module is imported
    trl_script = importlib.import_module(f"trl.scripts.{command}")

    setattr(trl, trainer_name, trainer_cls)  # where TRL's script looks it up
    if getattr(trl_script, trainer_name, trainer_cls) is not trainer_cls:
        setattr(trl_script, trainer_name, trainer_cls)  # that module was imported before the patch (trl < 1.0)
    trl_script.main(script_args, training_args, model_args, dataset_args)
    end_distributed()


def script_entry(command: str, main) -> None:
    """`python -m trl_robust.scripts.<command>`: parse as `trl-robust <command>` does, then `main`."""
    die_with_launcher()  # a rank of a multi-process run ends with its launcher, even one killed by SIGKILL
    prog = f"python -m trl_robust.scripts.{command}"
    # `trl-robust <command>` checked `output_dir` before launching; a rank of a distributed run would find it being
    # written.
    single_process = int(os.environ.get("WORLD_SIZE", "1")) == 1
    try:
        args = parse_command_args(sys.argv[1:], command, prog, check_output_dir=single_process)
    except UsageError as error:
        sys.exit(f"{prog}: error: {error}")
    for notice in args.notices:  # started by hand with `resume_from_checkpoint: true`: which checkpoint, and why
        print(f"{prog}: note: {notice}", file=sys.stderr)
    try:
        main(*args.dataclasses, args.noise_args)
    except UsageError as error:  # refused before any model is loaded (e.g. a `dataset_name` file without a test split)
        sys.exit(f"{prog}: error: {error}")
