"""The training module that `trl-robust reward` starts in each process through `accelerate launch`.

It runs TRL's own reward script, `trl/scripts/reward.py`, with the robust classes: after `trl_robust.patch_trl()`,
TRL's `main` (dataset loading, PEFT and 4-bit quantisation, training, saving, the model card, push to the Hub) builds
a `RobustRewardTrainer` from a `RobustRewardConfig`. None of TRL's script body is copied. It can also be started by
hand:

    accelerate launch -m trl_robust.scripts.reward --config recipes/reward_sympo_sigmoid.yaml
    python -m trl_robust.scripts.reward --config recipes/reward_sympo_sigmoid.yaml
"""

from trl_robust import RobustRewardTrainer
from trl_robust.cli.arguments import LabelNoiseArguments
from trl_robust.scripts.training import run_trl_script, script_entry, script_trainer


def main(script_args, training_args, model_args, dataset_args, noise_args: LabelNoiseArguments | None = None):
    """Train as `trl reward` does, with the robust reward trainer. Takes what TRL's `trl.scripts.reward.main` takes,
    plus the optional label noise (`--flip_rate`: chosen and rejected swapped, recorded in `label_flipped`)."""
    dataclasses = (script_args, training_args, model_args, dataset_args)
    run_trl_script("reward", script_trainer(RobustRewardTrainer, noise_args), dataclasses)


if __name__ == "__main__":
    script_entry("reward", main)
