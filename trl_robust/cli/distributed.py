"""How a distributed run of ours (training, or an audit) ends."""

import logging
import os
import sys

import torch


def end_distributed() -> None:
    """End a distributed run (training, or an audit) once its work is done: a barrier, then exit without teardown.

    Tearing gloo down is what fails on CPU runs, after the model is saved: with TRL 1.x's script, which destroys the
    process group in `trainer.end()`, DDP's gradient reducer later frees the group's last reference and one rank hung
    in `~ProcessGroupGloo` joining a worker thread (3 of 15 two-rank runs here); with TRL 0.29's, which never destroys
    it, a rank could abort at interpreter exit ("terminate called without an active exception"). So the script
    trainer's `end()` keeps the group (see `trl_robust.scripts.dpo`), every rank meets here once everything is written,
    and the process leaves with `os._exit(0)`, after flushing, without running those destructors.
    Returns normally, doing nothing, outside a distributed run.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    torch.distributed.barrier()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
