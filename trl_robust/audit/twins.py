"""Identical pairs ("twins": rows with the same prompt, chosen and rejected) are treated alike by the audit.

A dataset can hold the same pair twice (a merge of two sources, an upsampled split). The models score twins alike up to
rounding (each sits in another batch, padded to another length), so ranked by their raw z with ties broken by row they
could land on both sides of the clean step's cut: one twin dropped, the other kept with the very label judged
suspicious. So each group of twins gets one score, the mean of its members' (they differ by rounding only), and with it
one rank position after the other, one `p_flipped`; and the clean step cleans a group whole or not at all: a group is
cleaned when any of its members is among the ⌊share·n⌋ most suspicious, so up to (group size − 1) more pairs than that
can be cleaned, and the command says how many were.
"""

import json

import torch

# The columns TRL reads to score a pair; a row's other columns (a flip record, a margin) do not make it another pair.
PAIR_COLUMNS = ("prompt", "chosen", "rejected")


def twin_groups(dataset) -> list[list[int]]:
    """The groups of rows holding the same pair (two or more rows each, rows ascending), in order of their first row."""
    columns = [dataset[name] for name in PAIR_COLUMNS if name in dataset.column_names]
    rows_of = {}
    for row, values in enumerate(zip(*columns)):
        # JSON: conversational rows are lists of dicts, which do not hash; sort_keys, so key order does not matter.
        rows_of.setdefault(json.dumps(values, sort_keys=True, default=str), []).append(row)
    return [rows for rows in rows_of.values() if len(rows) > 1]


def share_within_twins(values: torch.Tensor, groups: list[list[int]]) -> torch.Tensor:
    """`values` (one per row) with every group of twins given its members' mean."""
    values = values.clone()
    for rows in groups:
        index = torch.tensor(rows)
        values[index] = values[index].mean()
    return values
