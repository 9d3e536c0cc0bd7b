"""The training module that `trl-robust dpo` starts in each process through `accelerate launch`.

It runs TRL's own DPO script, `trl/scripts/dpo.py`, with the robust classes: after `trl_robust.patch_trl()`, TRL's
`main` (dataset loading, PEFT and 4-bit quantisation, training, saving the model, the model card written with each
checkpoint, push to the Hub) builds a `RobustDPOTrainer` from a `RobustDPOConfig`. None of TRL's script body is
copied, so it stays TRL's in every supported version. It can also be started by hand:

    accelerate launch -m trl_robust.scripts.dpo --config recipes/ropo.yaml
    python -m trl_robust.scripts.dpo --config recipes/tiny_offline.yaml
"""

import os
import sys

import trl

from trl_robust import RobustDPOTrainer, patch_trl
from trl_robust.cli.distributed import end_distributed
from trl_robust.cli.arguments import LabelNoiseArguments, UsageError, parse_dpo_args
from trl_robust.builtin import materialise_builtins
from trl_robust.data import flip_preferences


def script_trainer(noise_args: LabelNoiseArguments | None) -> type[RobustDPOTrainer]:
    """`RobustDPOTrainer` as the script uses it: label noise on the training split (if asked for),
    `--resume_from_checkpoint` honoured with every TRL (TRL < 1.0's script calls `trainer.train()` without it, so a
    resumed run would silently start again from step 0), and a distributed run ended by `end_distributed`."""

    class ScriptDPOTrainer(RobustDPOTrainer):
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
            """TRL 1.x's script calls this last: finish the trackers, but leave the process group to
            `end_distributed` (destroying it here made a rank hang later, in gloo's teardown)."""
            for tracker in self.accelerator.trackers:
                tracker.finish()

    return ScriptDPOTrainer


def main(script_args, training_args, model_args, dataset_args, noise_args: LabelNoiseArguments | None = None):
    """Train as `trl dpo` does, with the robust trainer. Takes what TRL's `trl.scripts.dpo.main` takes, plus the
    optional label noise."""
    # Rank 0 first: in a distributed run only global rank 0's `save_pretrained` writes weights, so it must be the one
    # that builds a built-in model; the other ranks then find it in the cache.
    with training_args.main_process_first(local=False, desc="building builtin: model and data"):
        materialise_builtins(script_args, model_args)
    patch_trl()  # before importing TRL's script: trl < 1.0 binds `DPOTrainer` when the script module is imported
    from trl.scripts import dpo as trl_dpo_script

    trainer_cls = trl.DPOTrainer = script_trainer(noise_args)  # where TRL's script looks it up
    if getattr(trl_dpo_script, "DPOTrainer", trainer_cls) is not trainer_cls:
        trl_dpo_script.DPOTrainer = trainer_cls  # that module was imported before the patch (trl < 1.0)
    trl_dpo_script.main(script_args, training_args, model_args, dataset_args)
    end_distributed()


if __name__ == "__main__":
    prog = "python -m trl_robust.scripts.dpo"
    # `trl-robust dpo` checked `output_dir` before launching; a rank of a distributed run would find it being written.
    single_process = int(os.environ.get("WORLD_SIZE", "1")) == 1
    try:
        args = parse_dpo_args(sys.argv[1:], prog=prog, check_output_dir=single_process)
    except UsageError as error:
        sys.exit(f"{prog}: error: {error}")
    for notice in args.notices:  # started by hand with `resume_from_checkpoint: true`: which checkpoint, and why
        print(f"{prog}: note: {notice}", file=sys.stderr)
    main(*args.dataclasses, args.noise_args)
