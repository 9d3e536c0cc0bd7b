"""What the argument checks of `trl-robust dpo|reward` share: the error they raise, how they word it, and how the
problems of one command line are gathered into one message."""

from __future__ import annotations

import contextlib
import difflib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trl import TrlParser

# The words YAML reads as booleans; on the command line TRL's parser leaves them strings where a field is not a bool.
_TRUE_WORDS, _FALSE_WORDS = {"true", "yes", "on"}, {"false", "no", "off"}


class UsageError(ValueError):
    """Bad command-line or YAML input, detected before any model is loaded. `problems`: each problem it reports (one,
    or several gathered by `Problems`)."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems else [message]


class Problems:
    """Every problem of one command line, reported together: fixing one mistake per run, with seconds of start-up
    each time, is the dead end this avoids. A check that raises `UsageError` inside `collecting()` adds its problems
    and the next check still runs; `raise_any()` raises one `UsageError` listing them all."""

    def __init__(self):
        self.found: list[str] = []

    def add(self, error: Exception | str) -> None:
        for problem in getattr(error, "problems", None) or [str(error)]:
            if problem not in self.found:  # the same check reached twice (a dataclass re-validates a field)
                self.found.append(problem)

    def extend(self, errors) -> None:
        for error in errors:
            self.add(error)

    @contextlib.contextmanager
    def collecting(self):
        try:
            yield
        except UsageError as error:
            self.add(error)

    def raise_any(self) -> None:
        if len(self.found) == 1:
            raise UsageError(self.found[0])
        if self.found:
            listed = "\n".join("  - " + problem.replace("\n", "\n    ") for problem in self.found)
            raise UsageError(f"{len(self.found)} problems:\n{listed}", self.found)


def dataclass_keys(parser: TrlParser) -> set[str]:
    """The YAML keys TRL's parser consumes (it matches keys against argparse destinations)."""
    return {action.dest for action in parser._actions} - {"help"}


def bool_word(value) -> bool | None:
    """True or False for the words YAML reads as booleans (any case), None for anything else."""
    word = value.strip().lower() if isinstance(value, str) else None
    return True if word in _TRUE_WORDS else False if word in _FALSE_WORDS else None


def suggestion(name: str, candidates) -> str:
    """" (did you mean 'x'?)" for the closest of `candidates` to a mistyped `name`, or nothing."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def field_of(parser: TrlParser) -> str:
    """"a field of ScriptArguments, RobustDPOConfig, ...": what a valid argument name is, for error messages."""
    return "a field of " + ", ".join(t.__name__ for t in parser.dataclass_types)
