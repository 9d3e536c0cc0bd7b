"""Label-noise injection for preference datasets: flip chosen/rejected on a known set of pairs.

The robust losses are only worth their price where preference labels are wrong, and a benchmark needs to
know which ones are. The noisy-label experiments of ROPO (Liang et al., arXiv 2404.04102) and SymPO
(Nishimori et al., arXiv 2505.24709) flip a random fraction of the training pairs (symmetric noise);
`flip_preferences` does that, records the flipped rows, and can also inject a systematic bias (an
annotator who prefers longer answers) that symmetric losses are not guaranteed to undo.

The checks of a preference dataset before TRL tokenises it are in `trl_robust.dataset_checks`.
"""

import numbers
import random
from collections.abc import Callable
from typing import Any

import numpy as np
from datasets import Dataset, Value

FLIP_MODES = ("symmetric", "prefer_longer")
# The column `flip_preferences` records flipped rows in; ROPO's filter reports its precision against it.
FLIP_COLUMN = "label_flipped"
# The input row index that trl-robust adds to a dataset it must score per row (the audit, ROPO's per-epoch filter), so
# that every score can be traced back to its row through TRL's preprocessing, batching and processes.
ROW_COLUMN = "__trl_robust_row__"


def response_length(response: str | list[dict[str, Any]]) -> int:
    """Characters in a response: the string itself, or the total over the contents of its chat messages.

    Message contents that are lists of parts (multimodal chat format) count their text parts only.
    """
    if isinstance(response, str):
        return len(response)
    total = 0
    for message in response:
        content = message["content"]
        if isinstance(content, str):
            total += len(content)
        elif content:  # None for e.g. a tool-call message
            total += sum(len(part.get("text") or "") for part in content)
    return total


def rejected_is_longer(example: dict[str, Any]) -> bool:
    """The pairs a length-biased annotator would flip: the rejected response is strictly longer."""
    return response_length(example["rejected"]) > response_length(example["chosen"])


def flip_preferences(
    dataset: Dataset,
    rate: float,
    *,
    seed: int = 0,
    mode: str | Callable[[dict[str, Any]], bool] = "symmetric",
    column: str = FLIP_COLUMN,
) -> Dataset:
    """Return a copy of a preference dataset with chosen and rejected swapped on a random subset of pairs.

    Why: to measure how a loss copes with mislabeled preferences you need mislabeled preferences whose
    positions you know. The noisy-label experiments of ROPO (arXiv 2404.04102) and SymPO
    (arXiv 2505.24709) inject symmetric noise — each pair's label flipped at random — which is `mode=
    "symmetric"` here. Real annotators also err systematically; `mode="prefer_longer"` models one who picks
    the longer response regardless of quality, a bias the symmetric-loss guarantee does not cover.

    Exactly ``round(rate * len(dataset))`` pairs are flipped (Python's `round`, ties to even), chosen
    uniformly at random among the eligible pairs — an exact count, not an independent coin per pair, so a
    "20% noise" run has exactly 20% flipped pairs. The choice depends only on `seed` and on which pairs
    are eligible, and with the same seed a higher rate flips a superset of the pairs a lower rate flips
    (noise levels are nested, so a sweep over rates adds noise rather than redrawing it).

    Works for the standard format (strings) and the conversational format (lists of ``{"role",
    "content"}`` messages), with an explicit ``prompt`` column or with the prompt implicit in
    ``chosen``/``rejected``. Other columns are kept as they are. The input dataset is not modified.

    Args:
        dataset: a `datasets.Dataset` with ``chosen`` and ``rejected`` columns (for a `DatasetDict`, call
            this once per split, e.g. on ``dataset["train"]``).
        rate: fraction of the *whole* dataset to flip, in [0, 1) — also in the biased modes, so rates are
            comparable across modes. Papers use 0.1–0.4; 0.5 makes the labels uninformative.
        seed: seed of the random choice of pairs (an int; the same seed gives the same pairs).
        mode: which pairs may be flipped.
            ``"symmetric"``: any pair (uniform random label noise).
            ``"prefer_longer"``: only pairs whose rejected response is longer than the chosen one (length
            in characters; for chat messages, the total characters of their contents), so after flipping
            every flipped pair prefers the longer response.
            A callable ``example -> bool``: your own bias; it receives each row as a dict (all columns)
            and returns True where the pair may be flipped.
            In the biased modes a `ValueError` says how many pairs are eligible when there are fewer than
            the rate asks for.
        column: name of the new bool column recording which rows were flipped. An existing column of that
            name is never overwritten (it may hold the record of an earlier flip); pass another name.

    Returns:
        A new `Dataset`: the same rows in the same order, ``chosen`` and ``rejected`` swapped where
        ``column`` is True, and ``column`` appended as the last column.

    Example:
        >>> from datasets import Dataset
        >>> clean = Dataset.from_list(
        ...     [{"prompt": f"Q{i}", "chosen": f"right {i}", "rejected": f"wrong {i}"} for i in range(10)]
        ... )
        >>> noisy = flip_preferences(clean, 0.2, seed=0)
        >>> sum(noisy["label_flipped"])
        2
        >>> all(row["chosen"].startswith("wrong") == row["label_flipped"] for row in noisy)
        True
    """
    # Validate everything before touching a row: a typo should not cost a pass over a large dataset.
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 <= rate < 1:
        raise ValueError(f"rate must be a number in [0, 1) (the fraction of pairs to flip); got {rate!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an int; got {seed!r}")
    if callable(mode):
        is_eligible = mode
    elif mode == "symmetric":
        is_eligible = None  # every pair: no need to read the rows
    elif mode == "prefer_longer":
        is_eligible = rejected_is_longer
    else:
        raise ValueError(f"unknown mode {mode!r}; use one of {list(FLIP_MODES)} or a callable example -> bool")
    if not isinstance(dataset, Dataset):
        raise TypeError(
            f"expected a datasets.Dataset, got {type(dataset).__name__}; "
            "for a DatasetDict, flip each split separately, e.g. dataset['train']"
        )
    for required in ("chosen", "rejected"):
        if required not in dataset.column_names:
            raise ValueError(
                f"dataset has no {required!r} column (columns: {dataset.column_names}); "
                "flip_preferences needs a preference dataset with 'chosen' and 'rejected'"
            )
    if column in dataset.column_names:
        raise ValueError(
            f"dataset already has a {column!r} column, perhaps from an earlier flip; refusing to overwrite it. "
            f"Pass another name, e.g. column='{column}_2', or remove it with dataset.remove_columns({column!r})"
        )
    if dataset.features["chosen"] != dataset.features["rejected"]:
        # Swapping values between columns of different types would silently cast or fail inside `map`.
        raise ValueError(
            "'chosen' and 'rejected' have different feature types, so they cannot be swapped: "
            f"{dataset.features['chosen']} vs {dataset.features['rejected']}"
        )

    n_rows = len(dataset)
    n_flips = round(rate * n_rows)
    if is_eligible is None:
        eligible = list(range(n_rows))
    else:
        eligible = [i for i, example in enumerate(dataset) if is_eligible(example)]
        if len(eligible) < n_flips:
            mode_name = mode if isinstance(mode, str) else getattr(mode, "__name__", "callable")
            raise ValueError(
                f"mode={mode_name!r}: only {len(eligible)} of {n_rows} pairs are eligible for flipping, "
                f"but rate={rate} asks for {n_flips}; the maximum achievable rate is "
                f"{len(eligible) / n_rows:.4g} ({len(eligible)}/{n_rows})"
            )

    # Shuffle once and take a prefix: that is what makes a higher rate a superset of a lower one.
    random.Random(seed).shuffle(eligible)
    flipped = set(eligible[:n_flips])

    def swap_flipped(chosen, rejected, indices):
        flags = [i in flipped for i in indices]
        return {
            "chosen": [r if f else c for c, r, f in zip(chosen, rejected, flags)],
            "rejected": [c if f else r for c, r, f in zip(chosen, rejected, flags)],
            column: flags,
        }

    if n_rows == 0:
        # `map` returns an empty dataset unchanged, without the record column the caller relies on.
        # (A numpy bool array, not `feature=`, which older `datasets` lack; `cast_column` skips empty datasets.)
        return dataset.add_column(column, np.zeros(0, dtype=bool))
    features = dataset.features.copy()
    features[column] = Value("bool")
    return dataset.map(
        swap_flipped,
        input_columns=["chosen", "rejected"],
        with_indices=True,
        batched=True,
        features=features,
        desc=f"Flipping {n_flips} of {n_rows} preference pairs",
    )
