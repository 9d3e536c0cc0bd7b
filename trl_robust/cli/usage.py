"""What the argument checks of `trl-robust dpo|reward` share: the error they raise and how they word it."""

import difflib

from trl import TrlParser

# The words YAML reads as booleans; on the command line TRL's parser leaves them strings where a field is not a bool.
_TRUE_WORDS, _FALSE_WORDS = {"true", "yes", "on"}, {"false", "no", "off"}


class UsageError(ValueError):
    """Bad command-line or YAML input, detected before any model is loaded."""


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
