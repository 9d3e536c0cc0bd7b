"""A rank of a multi-process run asks to die with its launcher (`trl_robust.cli.orphans`), here against a stand-in for
libc's `prctl` (the real call would bind this test process to its own parent). The real thing, a two-rank run whose
command is killed with SIGKILL, is in test_distributed_exit.py."""

import os
import signal
import types

import pytest

from trl_robust.cli import orphans

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class Prctl:
    def __init__(self, result=0):
        self.calls, self.result = [], result

    def __call__(self, *args):
        self.calls.append(args)
        return self.result


@pytest.fixture
def prctl(monkeypatch):
    """A Linux process started by torch's elastic agent, whose launcher is alive (parent pid 4242)."""
    stand_in = Prctl()
    monkeypatch.setattr(orphans.ctypes, "CDLL", lambda name, use_errno=False: types.SimpleNamespace(prctl=stand_in))
    monkeypatch.setattr(orphans.sys, "platform", "linux")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setattr(orphans.os, "getppid", lambda: 4242)
    signalled = []
    monkeypatch.setattr(orphans.os, "kill", lambda pid, number: signalled.append((pid, number)))
    stand_in.signalled = signalled
    return stand_in


def test_a_rank_asks_for_sigterm_when_its_launcher_dies(prctl):
    assert orphans.die_with_launcher() is True
    assert prctl.calls == [(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)]
    assert prctl.signalled == []


def test_a_rank_whose_launcher_died_first_ends_itself(prctl, monkeypatch):
    # The launcher died between starting the rank and the call: the rank was adopted by init, and no signal will come.
    monkeypatch.setattr(orphans.os, "getppid", lambda: 1)
    assert orphans.die_with_launcher() is True
    assert prctl.signalled == [(os.getpid(), signal.SIGTERM)]


@pytest.mark.parametrize("where", ["started from a shell", "not Linux", "prctl refused"])
def test_elsewhere_nothing_changes(prctl, monkeypatch, where):
    # A process started by hand (`python -m trl_robust.scripts.dpo`, perhaps under nohup) keeps running when its
    # parent ends, as before.
    if where == "started from a shell":
        monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    elif where == "not Linux":
        monkeypatch.setattr(orphans.sys, "platform", "darwin")
    else:
        prctl.result = -1
    monkeypatch.setattr(orphans.os, "getppid", lambda: 1)
    assert orphans.die_with_launcher() is False
    assert prctl.signalled == []
    assert prctl.calls == ([] if where != "prctl refused" else [(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)])
