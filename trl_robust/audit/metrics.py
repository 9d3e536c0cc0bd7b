"""Ranking metrics of an audit against a flip record: AUROC and precision/recall at k (pure functions)."""

from collections.abc import Sequence

import numpy as np

TOP_FRACTIONS = (0.05, 0.10, 0.20)  # precision@k is also reported at k = these shares of the pairs


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks of `values` in ascending order, tied values sharing the average of their ranks."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1  # mean of the 1-based positions start+1 .. end+1
        start = end + 1
    return ranks


def auroc(suspicion: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Area under the ROC curve of `suspicion` for the `positive` pairs, by the rank-sum (Mann–Whitney U) formula.

    AUROC = (R₊ − n₊(n₊+1)/2) / (n₊·n₋), R₊ = sum of the ranks of the positives with tied scores given their average
    rank: the probability that a random positive scores above a random negative, ties counting one half. None when
    there are no positives or no negatives.
    """
    positive = np.asarray(positive, dtype=bool)
    if len(positive) != len(suspicion):
        raise ValueError(f"{len(suspicion)} scores but {len(positive)} labels")
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    rank_sum = float(average_ranks(suspicion)[positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def precision_at_k(suspicion: Sequence[float], positive: Sequence[bool], k: int) -> float:
    """Share of positives among the `k` most suspicious pairs.

    Ties at the cut-off are not broken by position: when the k-th score is shared by pairs on both sides of the cut,
    those pairs count in proportion (the expected precision over a random order of the ties), so the value does not
    depend on how the pairs happen to be ordered.
    """
    suspicion = np.asarray(suspicion, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    if not 1 <= k <= len(suspicion):
        raise ValueError(f"k must be in [1, {len(suspicion)}], got {k}")
    threshold = np.sort(suspicion)[::-1][k - 1]
    above, tied = suspicion > threshold, suspicion == threshold
    from_tied = k - int(above.sum())
    hits = positive[above].sum() + from_tied * positive[tied].sum() / tied.sum()
    return float(hits / k)


def flip_metrics(
    z: Sequence[float], flipped: Sequence[bool], fractions: Sequence[float] = TOP_FRACTIONS
) -> tuple[float | None, dict[str, dict[str, float]]]:
    """AUROC and precision/recall at k of the suspicion −z against a flip record."""
    suspicion = -np.asarray(z, dtype=np.float64)
    flipped = np.asarray(flipped, dtype=bool)
    n, n_flipped = len(flipped), int(flipped.sum())
    ks = {}
    if n_flipped:
        ks["n_flipped"] = n_flipped
    for fraction in fractions:
        ks[f"{fraction:.0%}"] = min(n, max(1, round(fraction * n)))
    table = {}
    for name, k in ks.items():
        precision = precision_at_k(suspicion, flipped, k)
        table[name] = {"k": k, "precision": precision, "recall": precision * k / n_flipped if n_flipped else None}
    return auroc(suspicion, flipped), table
