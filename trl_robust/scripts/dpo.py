"""The training module that `trl-robust dpo` starts in each process through `accelerate launch`.

It runs TRL's own DPO script, `trl/scripts/dpo.py`, with the robust classes: after `trl_robust.patch_trl()`, TRL's
`main` (dataset loading, PEFT and 4-bit quantisation, training, saving the model, the model card written with each
checkpoint, push to the Hub) builds a `RobustDPOTrainer` from a `RobustDPOConfig`. None of TRL's script body is
copied, so it stays TRL's in every supported version. It can also be started by hand:

    accelerate launch -m trl_robust.scripts.dpo --config recipes/ropo.yaml
    python -m trl_robust.scripts.dpo --config recipes/tiny_offline.yaml
"""

from trl_robust import RobustDPOTrainer
from trl_robust.cli.arguments import LabelNoiseArguments
from trl_robust.scripts.training import run_trl_script, script_entry
from trl_robust.scripts.training import script_trainer as _script_trainer


def script_trainer(noise_args: LabelNoiseArguments | None) -> type[RobustDPOTrainer]:
    """`RobustDPOTrainer` as the script uses it (see `trl_robust.scripts.training.script_trainer`)."""
    return _script_trainer(RobustDPOTrainer, noise_args)


def main(script_args, training_args, model_args, dataset_args, noise_args: LabelNoiseArguments | None = None):
    """Train as `trl dpo` does, with the robust trainer. Takes what TRL's `trl.scripts.dpo.main` takes, plus the
    optional label noise."""
    dataclasses = (script_args, training_args, model_args, dataset_args)
    run_trl_script("dpo", script_trainer(noise_args), dataclasses)


if __name__ == "__main__":
    script_entry("dpo", main)
