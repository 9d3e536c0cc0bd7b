"""Ranks (of training, or of an audit) that die with their launcher.

`trl-robust dpo|reward --num_processes N` runs accelerate's launch inside the `trl-robust` process (as `accelerate
launch -m trl_robust.scripts.audit` does in its own), and accelerate runs torch's elastic agent there, which starts
each rank as a child process in a session of its own. A SIGTERM or SIGINT to the command reaches the agent, which stops
the ranks; a SIGKILL (an OOM killer, `kill -9`, a scheduler's hard stop) does not, and the ranks, which need the agent
only to start, went on training and writing checkpoints into `output_dir`, where a concurrent `--resume_from_checkpoint
true` picked one up. So each rank asks the kernel to send it SIGTERM when its parent dies (Linux's
`prctl(PR_SET_PDEATHSIG)`).
"""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_launcher(signal_number: int = signal.SIGTERM) -> bool:
    """In a rank started by torch's elastic agent (torchrun, `accelerate launch`, `trl-robust` with several processes),
    have the kernel send `signal_number` to this process when the launcher dies; return whether that is now so.

    Does nothing elsewhere: outside Linux, and in a process started otherwise (`python -m trl_robust.scripts.dpo` from
    a shell, a scheduler's own ranks), whose parent may end on purpose (`nohup`). The signal goes when the thread that
    started the process ends; the elastic agent starts its workers from its main thread, and restarts them there too.
    A launcher that died before this call leaves the rank with a new parent and sends nothing: then the process is
    signalled here (where no subreaper adopted it, the new parent is init, pid 1).
    """
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return False
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # a libc without it: keep the old behaviour rather than fail the run
        return False
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    if prctl(PR_SET_PDEATHSIG, int(signal_number), 0, 0, 0) != 0:
        return False
    if os.getppid() == 1:  # the launcher died first (the race): nobody will send the signal
        os.kill(os.getpid(), signal_number)
    return True
