"""The YAML file of `trl-robust dpo|reward --config FILE`: read as TRL reads it, refusing what TRL would let through
silently (a key set twice) or report late."""

from pathlib import Path

import yaml

from .usage import UsageError


def split_assignment(argv: list[str]) -> list[str]:
    """`--config=FILE` -> `--config FILE`: TRL's parser only recognises the two-token form."""
    result = []
    for token in argv:
        result.extend(token.split("=", 1) if token.startswith("--config=") else [token])
    return result


def path_given(argv: list[str]) -> str | None:
    if "--config" not in argv:
        return None
    index = argv.index("--config")
    if index + 1 >= len(argv) or argv[index + 1].startswith("--"):
        raise UsageError("`--config` needs the path of a YAML file, e.g. `--config recipes/ropo.yaml`.")
    return argv[index + 1]


def without_flag(argv: list[str]) -> list[str]:
    if "--config" not in argv:
        return argv
    index = argv.index("--config")
    return argv[:index] + argv[index + 2 :]


def read(path: str) -> dict:
    if not Path(path).is_file():
        raise UsageError(f"Config file {path!r} does not exist (or is not a file).")
    try:
        with open(path) as file:
            config = yaml.load(file, Loader=_UniqueKeyLoader)
    except _DuplicateKey as duplicate:
        raise UsageError(
            f"Config file {path!r}: key {duplicate.key!r} is set twice, on lines {duplicate.lines[0]} and "
            f"{duplicate.lines[1]} (YAML would silently keep the second value); remove one of them."
        ) from None
    except yaml.YAMLError as error:
        raise UsageError(f"Config file {path!r} is not valid YAML:\n{error}") from error
    if not isinstance(config, dict):
        raise UsageError(
            f"Config file {path!r} must hold a YAML mapping of argument names to values (`learning_rate: 5.0e-7`), "
            f"not {type(config).__name__}."
        )
    return config


class _DuplicateKey(Exception):
    def __init__(self, key, lines: tuple[int, int]):
        super().__init__(key, lines)
        self.key, self.lines = key, lines


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.safe_load`, refusing a mapping that sets a key twice: YAML keeps the last value, so a recipe with `beta`
    twice trains with the second one without a word. (Keys merged in with `<<:` may still be overridden.)"""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_line = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                if key in first_line:
                    raise _DuplicateKey(key, (first_line[key], line))
                first_line[key] = line
        return super().construct_mapping(node, deep=deep)
