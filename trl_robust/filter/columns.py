"""Dataset columns ROPO's filter needs that are not model inputs: the row index (by which the epoch filter and the audit
trace every margin to its pair) and the `label_flipped` record (for the filter's precision), carried through TRL's
collator to the loss, and the per-pair values recorded by row."""

import inspect

import numpy as np
import torch
from datasets import Dataset

from ..data import ROW_COLUMN
from .auto import AUTO
from .settings import filter_ratio, filter_scope, filters
from .state import check_resumed_rows, saved_epoch_filter_state


def rows_indexed_for_the_filter(args, trainer_init, leading: tuple, pargs, kwargs):
    """`with_row_index` where ROPO's epoch filter is on (it traces every score to its row: the rows are indexed before
    TRL sees them); the arguments unchanged otherwise."""
    if filters(args) and filter_scope(args) == "epoch":
        return with_row_index(args, trainer_init, leading, pargs, kwargs)
    return pargs, kwargs


def with_row_index(args, trainer_init, leading: tuple, pargs, kwargs):
    """A trainer's remaining arguments (`pargs`, `kwargs`, after the `leading` ones) with a row-index column added to
    `train_dataset`, as `trainer_init` (TRL's `__init__`) would bind them: for the per-epoch filter.

    Checked before any model is loaded: the epoch filter needs a map-style dataset to score and index, and a run
    resumed (`args.resume_from_checkpoint`) with a smaller one than its filter's state was built on is refused.
    """
    try:
        bound = inspect.signature(trainer_init).bind(None, *leading, *pargs, **kwargs)
    except TypeError:
        return pargs, kwargs  # a call TRL will reject with its own message
    train_dataset = bound.arguments.get("train_dataset")
    if train_dataset is None:
        return pargs, kwargs
    if not isinstance(train_dataset, Dataset):
        if filter_ratio(args) == AUTO:  # (auto refuses the step scope: suggest what works)
            need, instead = (
                "ropo_filter_ratio='auto' estimates the flip rate from a whole epoch's margins by row",
                "Load the data without streaming (`dataset_streaming: false`) to keep auto, or, for streamed data, set "
                "a fixed ropo_filter_ratio (e.g. the flip rate `trl-robust audit` estimates on a sample) with "
                "ropo_filter_scope='step'.",
            )
        else:
            need = "ropo_filter_scope='epoch' scores the whole training set at the start of each epoch"
            instead = "Use ropo_filter_scope='step' for streamed data."
        raise ValueError(
            f"{need}, so it needs a map-style `datasets.Dataset` as train_dataset, got "
            f"{type(train_dataset).__name__}. {instead}"
        )
    if ROW_COLUMN in train_dataset.column_names:
        raise ValueError(f"train_dataset has a column named {ROW_COLUMN!r}, which trl-robust reserves; rename it.")
    resumed = saved_epoch_filter_state(args)
    if resumed is not None:  # resuming (as `trl-robust` passes it, in `args`): checked before the model loads
        check_resumed_rows(resumed[0], len(train_dataset), resumed[1], at_least=True)
    bound.arguments["train_dataset"] = train_dataset.add_column(ROW_COLUMN, np.arange(len(train_dataset), dtype=np.int64))
    return bound.args[1 + len(leading) :], bound.kwargs


class PassThroughCollator:
    """TRL's collator, plus the given columns as tensors (TRL's collator ignores keys it does not know)."""

    def __init__(self, collator, columns: dict):
        self.collator = collator
        self.columns = columns  # column -> dtype, shared with the trainer

    def __call__(self, examples):
        batch = self.collator(examples)
        for column, dtype in self.columns.items():
            if examples and all(column in example for example in examples):
                batch[column] = torch.tensor([example[column] for example in examples], dtype=dtype)
        return batch


def values_by_row(records: list, rows) -> list[torch.Tensor]:
    """The per-pair values `_record_by_row` recorded, one tensor per value, in the order of `rows` (the input rows
    expected). A row recorded twice counts once; a row expected but never recorded is an error."""
    if not records:
        raise RuntimeError("no batch was scored")
    columns = [torch.cat(parts) for parts in zip(*records)]
    first = {}
    for position, row in enumerate(columns[0].long().tolist()):
        first.setdefault(row, position)
    absent = [row for row in rows if row not in first]
    if absent:
        raise RuntimeError(f"rows {absent[:10]} were lost between TRL's data loader and the loss")
    positions = torch.tensor([first[row] for row in rows], dtype=torch.long)
    return [column.float()[positions] for column in columns[1:]]
