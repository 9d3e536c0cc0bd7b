"""The `slow` mark (tests/conftest.py) that splits CI: tests that start another process run once, on the newest TRL;
the rest run on the oldest TRL too. A launch the mark misses runs twice in CI; these tests pin down where it looks."""

import subprocess
from types import SimpleNamespace

from .conftest import _starts_a_process, pytest_collection_modifyitems


def _launch():
    return subprocess.run(["true"], check=True)


def _two_helpers_away():
    return _launch()


def _pure(n):
    return sum(range(n))


# The tests' stand-ins live out here: a launch written inside a test would (rightly) mark that test slow.
def _launches_directly():
    subprocess.run(["true"], check=True)


def _launches_two_helpers_away():
    _two_helpers_away()


def _calls_only_pure_code():
    assert _pure(3) == 3


def _launching_fixture():
    return _two_helpers_away()


def _plain_fixture():
    return _pure(2)


def _a_test(fixture):
    assert fixture


def test_a_launch_in_the_test_or_in_helpers_it_calls_is_found():
    assert _starts_a_process(_launches_directly, set())
    assert _starts_a_process(_launches_two_helpers_away, set())
    assert not _starts_a_process(_calls_only_pure_code, set())


def test_a_launch_in_a_fixture_marks_the_tests_using_it():
    def item(fixture):
        marks = []
        return SimpleNamespace(function=_a_test, add_marker=marks.append, marks=marks,
                               _fixtureinfo=SimpleNamespace(name2fixturedefs={"f": [SimpleNamespace(func=fixture)]}))

    launching, plain = item(_launching_fixture), item(_plain_fixture)
    pytest_collection_modifyitems(None, [launching, plain])
    assert [mark.name for mark in launching.marks] == ["slow"]
    assert plain.marks == []


def test_the_two_rank_fsdp_test_is_slow():
    """It launches torchrun through a module helper (`train`), which the first version of the mark did not see."""
    from . import test_fsdp

    assert _starts_a_process(test_fsdp.test_two_fsdp2_ranks_on_the_cpu_train_like_one_unsharded_process, set())
