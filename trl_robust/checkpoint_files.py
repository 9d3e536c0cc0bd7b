"""What transformers writes into a `checkpoint-N/`, read from the directory listing (nothing is loaded): used by
`trl-robust dpo|reward` before launching and by both trainers' `train(resume_from_checkpoint=...)`."""

import re
from pathlib import Path

# What transformers' `Trainer._save_optimizer_and_scheduler` writes for the optimizer: `optimizer.pt` (one process,
# DDP; `rank*-of-*-optimizer.pt` on TPUs), `optimizer.bin` or an `optimizer_0/` folder (FSDP), `optimizer.pt_*`
# (SageMaker), or a `global_step*/` folder (DeepSpeed's own checkpoint). With `save_only_model: true` it writes none of
# them, nor `scheduler.pt`, and `train(resume_from_checkpoint=...)` then silently starts a fresh optimizer and
# learning-rate schedule: only the weights and the step count carry over.
_OPTIMIZER_STATE = re.compile(r"(.*optimizer.*|global_step\d+)")


def weights_only(checkpoint: Path) -> bool:
    """Whether `checkpoint` (a complete `checkpoint-N/`) holds no optimizer state: saved with `save_only_model`."""
    return not any(_OPTIMIZER_STATE.fullmatch(entry.name) for entry in Path(checkpoint).iterdir())


def refuse_weights_only_resume(resume_from_checkpoint, output_dir) -> None:
    """For `Trainer.train(resume_from_checkpoint=...)` in Python (the command line refuses it before launching):
    a ValueError, before anything trains, where the checkpoint to resume from — the path given, or with True the latest
    in `output_dir`, as transformers picks it — holds the weights only."""
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return
    if resume_from_checkpoint is True:
        from transformers.trainer_utils import get_last_checkpoint

        latest = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
        if latest is None:
            return  # transformers' own error: no checkpoint to resume from
        checkpoint = Path(latest)
    else:
        checkpoint = Path(resume_from_checkpoint)
    if not checkpoint.is_dir() or not weights_only(checkpoint):
        return  # a missing path: transformers says so
    raise ValueError(
        f"resume_from_checkpoint: {str(checkpoint)!r} holds the model weights only (saved with `save_only_model=True`):"
        " no optimizer, learning-rate scheduler or RNG state, so training cannot continue where it stopped "
        "(transformers would restart the optimizer and schedule without a word). To train on from these weights as a "
        f"new run, pass {str(checkpoint)!r} as the model of a new trainer with another `output_dir` and call `train()` "
        "without `resume_from_checkpoint`. To be able to resume a run, save its checkpoints with "
        "`save_only_model=False`."
    )
