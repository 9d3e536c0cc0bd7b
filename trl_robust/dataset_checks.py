"""`check_preference_dataset` validates a preference dataset before TRL tokenises it, so a missing column, a `None` or
an empty response is reported by split, column and row instead of as an error deep inside `map`;
`check_trainer_datasets` applies it to the datasets a trainer is given, before any model is loaded. Both trainers use
them: DPO's and the reward model's (TRL's `RewardTrainer` reads the same prompt/chosen/rejected columns)."""

import difflib
import inspect
import numbers
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from datasets import Dataset, IterableDataset, Value

from .data import FLIP_COLUMN


# Columns of a dataset that is already tokenised (TRL 0.29 and 1.x write `prompt_ids`/`chosen_ids`/`rejected_ids`,
# earlier releases `*_input_ids`): its text, if any is left, is not what the model will see, so it is not checked.
TOKENIZED_COLUMNS = (
    "prompt_ids",
    "chosen_ids",
    "rejected_ids",
    "prompt_input_ids",
    "chosen_input_ids",
    "rejected_input_ids",
)
# How many offending rows an error or warning lists; the total is always given.
SHOWN_ROWS = 5
# What each task calls itself in messages, and what it does without a 'prompt' column.
TASKS = {
    "dpo": ("DPO", "TRL takes the shared start of chosen and rejected as the prompt"),
    "reward": ("a reward model", "chosen and rejected are each scored whole, prompt included"),
}
# What each format requires of prompt/chosen/rejected, for the error message.
FORMAT_RULES = {
    "standard": "in the standard format, prompt, chosen and rejected are strings",
    "conversational": (
        "in the conversational format, prompt, chosen and rejected are lists of messages, each a dict with a "
        "str 'role' and a 'content' that is a str (or a list of parts, or None for a tool call)"
    ),
    None: (
        "prompt, chosen and rejected must be strings (standard format) or lists of {'role', 'content'} messages "
        "(conversational format)"
    ),
}


def check_preference_dataset(
    dataset: Dataset | IterableDataset, name: str = "dataset", *, batch_size: int = 1000, task: str = "dpo"
) -> dict[str, Any]:
    """Check that `DPOTrainer` (or, with ``task="reward"``, `RewardTrainer`) can train on a preference dataset, before
    it tokenises it; raise a `ValueError` if not.

    Why: TRL meets a bad row only while tokenising, inside `Dataset.map`, possibly minutes into preprocessing a
    large dataset, and then fails with an error that names neither the row nor the column (`KeyError: 'chosen'`,
    `'NoneType' object has no attribute 'endswith'`, an `IndexError`, an `UnboundLocalError` in `extract_prompt`)
    — or does not fail at all: an empty response trains on the EOS token alone. This reads the text columns once,
    in batches, and reports what is wrong by split, column and row (the first `SHOWN_ROWS` rows, and how many).

    Checks, for the standard format (strings) and the conversational one (lists of ``{"role", "content"}``
    messages):

    - ``chosen`` and ``rejected`` columns exist; a missing one is reported with the columns there are and the
      closest match, if one looks like it. ``prompt`` is optional: without it TRL takes the prompt to be the
      shared start of ``chosen`` and ``rejected`` (the "implicit prompt" format).
    - Every ``prompt``, ``chosen`` and ``rejected`` is a string, or a list of messages each a dict with a str
      ``role`` and a ``content`` that is a str, a list of parts (multimodal) or None (tool calls); and the three
      columns are in the same format (TRL concatenates prompt and response).
    - No ``chosen`` or ``rejected`` is empty: a blank string, no messages, or only messages without content.
    - A ``label_flipped`` column (the record `flip_preferences` writes, which ROPO's filter and the audit read) holds
      only True/False (or 0/1): a string or None there would otherwise fail inside the DataLoader with a message that
      does not name the column.
    - ``chosen`` identical to ``rejected`` is allowed but warned about (`UserWarning`, with the count): such a
      pair carries no preference. Its margin is 0 whatever the model, so under a margin-based loss (DPO's
      sigmoid, IPO, ROPO, SymPO, ...) it adds a constant to the loss and nothing to the gradient.

    Skipped, with ``skipped`` set in the result: an `IterableDataset` (it cannot be scanned without consuming
    it), and a dataset that is already tokenised (has one of `TOKENIZED_COLUMNS`). The dataset is not modified.

    Args:
        dataset: a `datasets.Dataset` (an `IterableDataset` is skipped). For a `DatasetDict`, check each split.
        name: what messages call the dataset, e.g. ``"train_dataset"`` or ``"eval_dataset['clean']"``.
        batch_size: rows read at a time.
        task: ``"dpo"`` or ``"reward"``: the trainer the messages name (the checks are the same).

    Returns:
        ``{"rows": int, "identical_pairs": int, "format": "standard" | "conversational", "skipped": None}``; for a
        skipped dataset ``skipped`` is ``"iterable"`` or ``"tokenized"`` and the values not counted are None.

    Raises:
        ValueError: the dataset has no rows, lacks ``chosen`` or ``rejected``, mixes formats, or has rows of the
            wrong type or with an empty response.

    Example:
        >>> from datasets import Dataset
        >>> pairs = Dataset.from_list([{"prompt": "2+2?", "chosen": "4", "rejected": "5"}] * 3)
        >>> check_preference_dataset(pairs, "train_dataset")
        {'rows': 3, 'identical_pairs': 0, 'format': 'standard', 'skipped': None}
        >>> check_preference_dataset(pairs.rename_column("chosen", "chosen_response"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: dataset has no 'chosen' column; ... 'chosen_response' looks like 'chosen': rename it ...
    """
    if isinstance(dataset, IterableDataset):
        return {"rows": None, "identical_pairs": None, "format": None, "skipped": "iterable"}
    if not isinstance(dataset, Dataset):
        hint = "; for a DatasetDict, check each split, e.g. dataset['train']" if isinstance(dataset, Mapping) else ""
        raise TypeError(f"{name}: expected a datasets.Dataset, got {type(dataset).__name__}{hint}")
    columns = dataset.column_names
    if any(column in columns for column in TOKENIZED_COLUMNS):
        return {"rows": dataset.num_rows, "identical_pairs": None, "format": None, "skipped": "tokenized"}
    missing = [column for column in ("chosen", "rejected") if column not in columns]
    if missing:
        raise ValueError(_missing_columns_message(dataset, name, missing, task))
    if dataset.num_rows == 0:  # (TRL's RewardTrainer would stop on it with a bare StopIteration)
        raise ValueError(f"{name} has no rows; {TASKS[task][0]} needs at least one chosen/rejected pair")

    text_columns = [column for column in ("prompt", "chosen", "rejected") if column in columns]
    wrong_type, empty, identical = [], [], []  # (row, column, what was found) for the first two; rows for the last
    formats = {column: set() for column in text_columns}
    # Only the text columns, as plain Python values whatever format the caller set (e.g. "torch"); both calls
    # return new dataset objects over the same Arrow data, so `dataset` itself is untouched and nothing is copied.
    texts = dataset.select_columns(text_columns).with_format(None)
    row = 0
    for batch in texts.iter(batch_size=batch_size):
        for values in zip(*(batch[column] for column in text_columns)):
            example = dict(zip(text_columns, values))
            row_ok = True
            for column, value in example.items():
                value_format, problem = _text_format(value)
                if problem is not None:
                    wrong_type.append((row, column, problem))
                    row_ok = False
                    continue
                formats[column].add(value_format)
                if column != "prompt" and (emptiness := _emptiness(value)):
                    empty.append((row, column, emptiness))
                    row_ok = False
            if row_ok and example["chosen"] == example["rejected"]:
                identical.append(row)
            row += 1

    found_formats = {f for column_formats in formats.values() for f in column_formats}
    dataset_format = next(iter(formats["chosen"] or formats["rejected"] or found_formats), None)
    sections = []
    if len(found_formats) > 1:
        by_column = ", ".join(f"{column!r} is {' / '.join(sorted(f))}" for column, f in formats.items() if f)
        fix = (
            "remove the 'prompt' column with `dataset.remove_columns('prompt')` if chosen and rejected already "
            "contain it (TRL then extracts it as their shared start), or convert it to a list of messages"
            if formats.get("prompt") == {"standard"} and formats["chosen"] == {"conversational"}
            else "convert them to one format"
        )
        sections.append(
            f"its columns mix the standard and the conversational format ({by_column}); TRL concatenates prompt "
            f"and response, so they must be in the same format: {fix}."
        )
    if wrong_type:
        example_filter = (
            f" e.g. `dataset.filter(lambda ex: all(isinstance(ex[c], str) for c in {tuple(text_columns)}))`"
            if dataset_format == "standard"
            else " with `dataset.filter`"
        )
        rule = FORMAT_RULES[dataset_format]
        sections.append(
            _rows_section(wrong_type, "a value of the wrong type")
            + f"\n{rule[0].upper()}{rule[1:]}. Fix these rows or drop them,{example_filter}."
        )
    if empty:
        example_filter = (
            ' e.g. `dataset.filter(lambda ex: ex["chosen"].strip() != "" and ex["rejected"].strip() != "")`'
            if dataset_format == "standard"
            else " with `dataset.filter`"
        )
        sections.append(
            _rows_section(empty, "an empty response")
            + "\nAn empty response leaves nothing to compare: the pair would train on the end-of-sequence token "
            "alone, or TRL fails on it with an error that does not name the row. "
            f"Fix these rows or drop them,{example_filter}."
        )
    flip_problems = _flip_record_problems(dataset, batch_size) if FLIP_COLUMN in columns else []
    if flip_problems:
        sections.append(
            _rows_section(flip_problems, f"a {FLIP_COLUMN!r} value that is not True or False")
            + f"\n{FLIP_COLUMN!r} records which pairs `flip_preferences` (or `--flip_rate`) flipped; ROPO's filter and "
            "the audit read it as True/False (0/1 also works). Fix these rows, or remove the column with "
            f"`dataset = dataset.remove_columns({FLIP_COLUMN!r})` if it means something else."
        )
    if sections:
        raise ValueError(f"{name}: " + "\n\n".join(sections))

    if identical:
        warnings.warn(
            f"{name}: {len(identical)} of {dataset.num_rows} pairs have chosen identical to rejected "
            f"({_rows_list(identical)}). They carry no preference signal: their margin is 0 whatever the model, so "
            "with a margin-based loss (DPO's sigmoid, IPO, Bradley–Terry, ROPO, SymPO, ...) each adds a constant to "
            "the loss and nothing to the gradient, while diluting the batch. Drop them with "
            '`dataset = dataset.filter(lambda ex: ex["chosen"] != ex["rejected"])`.',
            UserWarning,
            stacklevel=2,
        )
    return {"rows": dataset.num_rows, "identical_pairs": len(identical), "format": dataset_format, "skipped": None}


def check_trainer_datasets(trainer_init: Callable, /, *args, task: str = "dpo", **kwargs) -> dict[str, dict[str, Any]]:
    """Run `check_preference_dataset` on the train and eval datasets of a call ``trainer_init(self, *args, **kwargs)``.

    Why: the trainer must check its datasets before TRL's `__init__` tokenises them, and they may arrive by keyword
    or by position (after ``data_collator`` in `DPOTrainer`), so the call is bound to `trainer_init`'s signature
    rather than assuming either. An ``eval_dataset`` that is a dict (or `DatasetDict`) is checked per split, named
    like ``eval_dataset['clean']`` in messages. Values that are not datasets (None, ...) are left to the trainer,
    as is a call that does not fit the signature: the trainer raises its own `TypeError`. `task` is
    `check_preference_dataset`'s (``"reward"`` for `RewardTrainer.__init__`).

    Returns:
        The result of `check_preference_dataset` for each dataset checked, by name.
    """
    try:
        arguments = inspect.signature(trainer_init).bind_partial(None, *args, **kwargs).arguments
    except TypeError:
        arguments = kwargs  # a call the trainer will reject: check what is passed by name, let it say what is wrong
    results = {}
    for parameter in ("train_dataset", "eval_dataset"):
        datasets_by_name = arguments.get(parameter)
        if isinstance(datasets_by_name, Mapping):
            datasets_by_name = {f"{parameter}[{key!r}]": split for key, split in datasets_by_name.items()}
        else:
            datasets_by_name = {parameter: datasets_by_name}
        for name, dataset in datasets_by_name.items():
            if isinstance(dataset, (Dataset, IterableDataset)):
                results[name] = check_preference_dataset(dataset, name, task=task)
    return results


def _flip_record_problems(dataset: Dataset, batch_size: int) -> list[tuple[int, str, str]]:
    """(row, column, what was found) for each `FLIP_COLUMN` value that is neither a bool nor the number 0 or 1."""
    problems, row = [], 0
    for batch in dataset.select_columns([FLIP_COLUMN]).with_format(None).iter(batch_size=batch_size):
        for value in batch[FLIP_COLUMN]:
            is_flag = isinstance(value, bool) or (isinstance(value, numbers.Real) and value in (0, 1))
            if not is_flag:
                problems.append((row, FLIP_COLUMN, f"got {type(value).__name__} ({_short_repr(value)})"))
            row += 1
    return problems


def _text_format(value: Any) -> tuple[str | None, str | None]:
    """The format of one prompt/chosen/rejected value ("standard" or "conversational") and what is wrong with it."""
    if isinstance(value, str):
        return "standard", None
    if not isinstance(value, list):
        return None, f"got {type(value).__name__} ({_short_repr(value)})"
    for i, message in enumerate(value):
        if not isinstance(message, Mapping):
            return None, (
                f"message {i} is a {type(message).__name__} ({_short_repr(message)}), "
                "not a dict with 'role' and 'content'"
            )
        role = message.get("role")
        if not isinstance(role, str):
            return None, f"message {i} has role {_short_repr(role)} ({type(role).__name__}), not a str"
        # Permissive on content: a str, a list of parts (multimodal), or None / absent (a tool-call message).
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            return None, (
                f"message {i} has content {_short_repr(content)} ({type(content).__name__}), "
                "not a str, a list of parts or None"
            )
    return "conversational", None


def _emptiness(response: str | list[dict[str, Any]]) -> str | None:
    """How a chosen/rejected response is empty (for the message), or None if it is not."""
    if isinstance(response, str):
        if response.strip():
            return None
        return "empty string" if not response else f"whitespace only ({response!r})"
    if not response:
        return "no messages"
    for message in response:
        content = message.get("content")
        if (content.strip() if isinstance(content, str) else content):
            return None
        # A tool call and the like: its payload is in another key (Arrow fills absent keys with None).
        if any(value for key, value in message.items() if key not in ("role", "content")):
            return None
    return f"{len(response)} message{'s' if len(response) > 1 else ''}, none with content"


def _missing_columns_message(dataset: Dataset, name: str, missing: list[str], task: str) -> str:
    """Which required columns are missing, which columns there are, and which of them may be meant."""
    trainer, without_prompt = TASKS[task]
    trainer = trainer[0].upper() + trainer[1:]  # it starts a sentence
    lines = [
        f"{name} has no {' or '.join(map(repr, missing))} column; its columns are {dataset.column_names}. "
        f"{trainer} needs a 'chosen' (preferred) and a 'rejected' response in each row; 'prompt' is optional "
        f"(without it, {without_prompt})."
    ]
    taken = set()
    for column in missing:
        candidate = _closest_column(dataset, column, exclude=taken)
        if candidate is not None:
            taken.add(candidate)
            lines.append(
                f"{candidate!r} looks like {column!r}: rename it with "
                f"`dataset = dataset.rename_column({candidate!r}, {column!r})`."
            )
    if "completion" in dataset.column_names and "label" in dataset.column_names:
        lines.append(
            "Its 'completion' and 'label' columns look like an unpaired preference dataset (KTO's format); "
            f"{trainer} needs paired responses."
        )
    return " ".join(lines)


def _closest_column(dataset: Dataset, wanted: str, exclude: set[str]) -> str | None:
    """A text column whose name contains `wanted` (e.g. "chosen_response"), else one spelled like it ("choosen")."""

    def is_text(feature):
        # Strings or lists (of messages); not a numeric column such as "score_chosen".
        if isinstance(feature, Value):
            return feature.dtype in ("string", "large_string")
        return isinstance(feature, list) or type(feature).__name__ in ("List", "LargeList", "Sequence")

    candidates = [
        column
        for column, feature in dataset.features.items()
        if column not in ("prompt", "chosen", "rejected") and column not in exclude and is_text(feature)
    ]
    containing = [column for column in candidates if wanted in column.lower()]
    if containing:
        return max(containing, key=lambda column: difflib.SequenceMatcher(None, wanted, column.lower()).ratio())
    lowered = {column.lower(): column for column in candidates}
    close = difflib.get_close_matches(wanted, list(lowered), n=1, cutoff=0.75)
    return lowered[close[0]] if close else None


def _rows_section(problems: list[tuple[int, str, str]], what: str) -> str:
    """`len(rows) rows have <what> (rows ...):` and one line for each of the first problems."""
    rows = sorted({row for row, _, _ in problems})
    rows_have = f"{len(rows)} rows have" if len(rows) > 1 else "1 row has"
    lines = [f"{rows_have} {what} ({_rows_list(rows)}):"]
    lines += [f"  row {row}, column {column!r}: {problem}" for row, column, problem in problems[:SHOWN_ROWS]]
    if len(problems) > SHOWN_ROWS:
        lines.append(f"  ... and {len(problems) - SHOWN_ROWS} more")
    return "\n".join(lines)


def _rows_list(rows: list[int]) -> str:
    """"rows 3, 7" or "rows 0, 1, 2, 3, 4, ... (12 in total)"."""
    shown = ", ".join(map(str, rows[:SHOWN_ROWS]))
    more = f", ... ({len(rows)} in total)" if len(rows) > SHOWN_ROWS else ""
    return f"row{'s' if len(rows) > 1 else ''} {shown}{more}"


def _short_repr(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
