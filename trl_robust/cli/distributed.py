"""How a distributed run of ours (training, or an audit) ends."""

import atexit
import logging
import os
import sys

import torch


def end_distributed(exit_code: int = 0) -> None:
    """End a distributed run (training, or an audit) once its work is done.

    With NCCL (GPUs) and any backend other than gloo: destroy the process group and return, so the interpreter exits
    normally. With gloo (CPU runs) the teardown itself fails, after the model is saved: with TRL 1.x's script, which
    destroys the process group in `trainer.end()`, DDP's gradient reducer later frees the group's last reference and one
    rank hung in `~ProcessGroupGloo` joining a worker thread (3 of 15 two-rank runs here); with TRL 0.29's, which never
    destroys it, a rank could abort at interpreter exit ("terminate called without an active exception"). So there the
    script trainer's `end()` keeps the group (see `trl_robust.scripts.dpo`), every rank meets at a barrier once
    everything is written, the `atexit` handlers run (experiment trackers and uploads finish in them), the logs and
    streams are flushed, and the process leaves with `os._exit(0)` without running the gloo destructors.
    Returns normally, doing nothing, outside a distributed run. `exit_code`: what a gloo rank exits with (an audit
    that refuses its clean step after scoring ends with 2).
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    torch.distributed.barrier()
    if torch.distributed.get_backend() != "gloo":
        torch.distributed.destroy_process_group()
        return
    atexit._run_exitfuncs()  # what a normal exit would run first; then skip only the interpreter's teardown
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
