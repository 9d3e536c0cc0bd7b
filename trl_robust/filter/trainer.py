"""ROPO's noisy-sample filter inside a TRL trainer: the mixin the robust loss path (`trl_robust.integration.core`) of
both trainers calls.

The pure rules (which pairs to distrust, what to do with them) live in `trl_robust.filter.rules` and, for
`ropo_filter_ratio="auto"`, `trl_robust.filter.auto`; this module applies them to a `transformers.Trainer` whose loss
sees each pair's margin z (β·Δ for DPO, the reward difference for a reward model). The trainer's loss calls one
method, `_ropo_filter_batch`, with this batch's margins: it records what the epoch filter's scoring pass and `auto`
need, gathers the batch's per-pair values over every process, and returns a `FilterBatch` that says which pairs to
distrust, what to log about them, and how to apply the decision to the loss. The callbacks that decide at the right
moments and save the filter's state with checkpoints are in `trl_robust.filter.state`; the passed-through columns in
`trl_robust.filter.columns`.
"""

import contextlib
import math
import warnings
from collections import defaultdict
from dataclasses import dataclass

import torch

from ..data import FLIP_COLUMN, ROW_COLUMN
from .auto import AUTO
from .columns import PassThroughCollator, values_by_row
from .rules import filter_window, filtered_loss, rankable, running_suspected_pairs, suspected_pairs
from .settings import filter_ratio, filter_scope, filters, setting
from .state import EpochFilterCallback, RunningFilter, StepFilterCallback


@dataclass
class FilterBatch:
    """What ROPO's filter made of one batch: its per-pair values gathered over every process (`pairs`: the trainer's
    columns and the filter's), which of them to distrust (`suspected`, None where the filter does not act), the
    filter's metrics as tensors, and the step filter's state awaiting the batch's one host transfer (`running`)."""

    pairs: dict
    suspected: torch.Tensor | None
    metrics: dict
    running: "RunningFilter | None"
    trainer: "RopoFilterMixin"

    def loss(self, loss_fn, z: torch.Tensor) -> torch.Tensor:
        """This process's per-pair losses ℓ(z), with the suspects dropped or corrected (`ropo_filter_mode`)."""
        return self.trainer._filtered_loss(loss_fn, z, self.suspected)


class RopoFilterMixin:
    """ROPO's training filter and the dataset columns it needs, for a TRL trainer (mixed in before TRL's class).

    The trainer calls `_set_up_ropo_filter()` at the end of its `__init__`, takes the passed-through columns out of
    each batch with `_columns_taken_out(inputs)` around TRL's `compute_loss`, and hands each batch's margins to
    `_ropo_filter_batch` (the one entry point).
    """

    _passed_columns: dict = {}  # column -> dtype; per instance once `_pass_through_column` is called
    _batch_columns: dict = {}  # this batch's values of those columns
    _epoch_suspects = None  # per input row: distrusted this epoch (epoch scope only)
    _row_margins = None  # while the epoch filter scores the training set: the gathered (rows, z) batches
    _free_margins = None  # `auto`: this epoch's training margins, gathered (rows, z) batches still on the device
    _step_filters: dict = {}  # loss type -> RunningFilter (step scope only)

    def _set_up_ropo_filter(self) -> None:
        """After TRL's `__init__`: pass the row index and flip record through, and add the filter's callback."""
        if not filters(self.args):
            return
        per_epoch = filter_scope(self.args) == "epoch"
        # ROPO's filter reports its precision where the training data records which labels were flipped.
        if FLIP_COLUMN in (getattr(self.train_dataset, "column_names", None) or []):
            self._pass_through_column(FLIP_COLUMN, torch.bool)
        if per_epoch:
            self._free_margins = [] if filter_ratio(self.args) == AUTO else None
            self._pass_through_column(ROW_COLUMN, torch.long)
            self.add_callback(EpochFilterCallback(self))
        else:
            self._step_filters = {}
            self.add_callback(StepFilterCallback(self))
        self._warn_where_the_filter_cannot_reach_its_ratio()

    @property
    def _flip_record(self):
        """This batch's `label_flipped` values, where the training data carries them and the filter needs them."""
        return self._batch_columns.get(FLIP_COLUMN)

    def _pass_through_column(self, column: str, dtype: torch.dtype) -> None:
        """Carry a dataset column through to `compute_loss` as a tensor of `dtype`, in `self._batch_columns`.

        TRL drops it twice otherwise: `remove_unused_columns` keeps only its signature columns, and its collator
        builds the batch from the keys it knows. Rows without the column are collated without it.
        """
        if not self._passed_columns:
            self._passed_columns = {}
            self.data_collator = PassThroughCollator(self.data_collator, self._passed_columns)
        self._passed_columns[column] = dtype

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        missing = [column for column in self._passed_columns if column not in self._signature_columns]
        if missing:
            self._signature_columns = [*self._signature_columns, *missing]

    @contextlib.contextmanager
    def _columns_taken_out(self, inputs):
        """Take the passed-through columns out of the batch (they are not model inputs) into `_batch_columns` while
        TRL's `compute_loss` runs. Nested use is harmless: an inner call finds the columns gone and leaves them."""
        taken = {column: inputs.pop(column) for column in self._passed_columns if column in inputs}
        if not taken:
            yield
            return
        self._batch_columns = taken
        try:
            yield
        finally:
            self._batch_columns = {}

    def _ropo_filter_batch(self, loss_type: str, margins, columns: dict, mode: str, records_margins: bool = True):
        """The filter's one entry point, for each batch of the loss `loss_type`; None during the epoch filter's scoring
        pass (the loss then trains nothing and logs nothing).

        Records `margins` (unclipped z: what the epoch filter and `auto` rank the pairs by) where a mode needs them and
        `records_margins` is set, gathers `columns` (the trainer's per-pair values, `z` among them) together with the
        filter's own over every process in one call, and decides which pairs of the global batch to distrust.
        """
        if self._row_margins is not None:
            if records_margins:
                self._record_scored_margins(margins)
            return None
        if self._free_margins is not None and mode == "train" and records_margins:  # `auto`: the next epoch's estimate
            self._record_free_margins(margins)
        pairs = self._gather_pairs(**columns, **self._filter_columns(columns["z"], mode))
        suspected, running = self._suspected_pairs(loss_type, pairs, mode)
        return FilterBatch(pairs, suspected, self._filter_values(pairs, suspected, mode), running, self)

    def _gather_pairs(self, **columns) -> dict:
        """Every process's per-pair values, in one gather (flags as float: not every backend gathers bool)."""
        stacked = torch.stack([column.float() for column in columns.values()], dim=-1)
        return dict(zip(columns, self.accelerator.gather(stacked).unbind(-1)))

    def _suspected_pairs(self, loss_type, pairs, mode):
        """ROPO's filter: the mask of distrusted pairs of the global batch (None where it does not apply), and for the
        step scope the running filter with the device values its host copy needs after this step's one transfer."""
        if not filters(self.args) or mode != "train":
            return None, None
        if filter_scope(self.args) == "epoch":  # chosen at the start of the epoch
            return (pairs["epoch_suspect"].bool() if "epoch_suspect" in pairs else None), None
        # The step scope: each pair ranked among the recent margins of this loss type (`running_suspected_pairs`).
        # The window fills during the warm-up too, so that the first filtered pairs meet a full window.
        running = self._step_filters.get(loss_type)
        if running is None:
            running = self._step_filters[loss_type] = RunningFilter(self.accelerator.device)
        z = pairs["z"]
        if self.state.global_step < setting(self.args, "ropo_filter_warmup_steps"):
            suspected, window, debt = None, torch.cat([running.history, rankable(z)]), running.debt
        else:
            max_margin = setting(self.args, "ropo_filter_max_margin")
            ratio = filter_ratio(self.args)
            suspected, window, debt = running_suspected_pairs(z, running.history, running.debt, ratio, max_margin)
        keep = max(self._filter_window() - len(z), 0)
        running.history, running.debt = window[max(len(window) - keep, 0) :], debt
        running.pending = (rankable(z), debt, keep)
        return suspected, running

    def _filter_window(self) -> int:
        """How many recent margins the step filter ranks a pair among: one optimizer step's pairs, at least 10/ρ."""
        pairs_per_step = (
            self.args.per_device_train_batch_size * self.accelerator.num_processes * self.args.gradient_accumulation_steps
        )
        return filter_window(pairs_per_step, filter_ratio(self.args))

    def _planned_optimizer_steps(self) -> int | None:
        """The run's optimizer steps as `Trainer.train` will count them, or None where the data has no length."""
        args = self.args
        if args.max_steps > 0:
            return args.max_steps
        try:
            n_rows = len(self.train_dataset)
        except TypeError:
            return None
        per_step = args.per_device_train_batch_size * args.world_size
        batches = n_rows // per_step if args.dataloader_drop_last else math.ceil(n_rows / per_step)
        return math.ceil(args.num_train_epochs * max(math.ceil(batches / args.gradient_accumulation_steps), 1))

    def _warn_where_the_filter_cannot_reach_its_ratio(self) -> None:
        """Say at construction when ROPO's filter will distrust nothing, or cannot reach its share ρ, in this run."""
        if not filters(self.args) or self.train_dataset is None:
            return
        total = self._planned_optimizer_steps()
        if total is None:
            return
        warmup = setting(self.args, "ropo_filter_warmup_steps")
        if warmup >= total:
            warnings.warn(
                f"ropo_filter_warmup_steps={warmup} is at or beyond the {total} optimizer steps of this run: ROPO's "
                "filter will distrust nothing. Lower the warm-up (it trains on every pair first; 10-20% of the steps "
                "is a common choice) or train for longer.",
                UserWarning,
                stacklevel=4,
            )
            return
        if filter_scope(self.args) != "step":
            return
        ratio = filter_ratio(self.args)
        window = self._filter_window()
        filtered = (total - warmup) * (
            self.args.per_device_train_batch_size * self.args.world_size * self.args.gradient_accumulation_steps
        )
        if filtered < window:
            warnings.warn(
                f"ROPO's step filter ranks each pair among the last {window} margins and reaches its share "
                f"ρ={ratio} over about that many pairs, but this run trains on only {filtered} pairs after its "
                f"{warmup} warm-up step{'' if warmup == 1 else 's'}: it will distrust about {math.floor(ratio * filtered)}, "
                "and the share it realises can differ from ρ. Train for longer or shorten the warm-up.",
                UserWarning,
                stacklevel=4,
            )

    def _filter_columns(self, z: torch.Tensor, mode: str) -> dict:
        """The per-pair values the filter needs gathered with the margins `z`: the flip record (all False without
        one) and, in an epoch-scope training step, which pairs this epoch distrusts."""
        columns = {"flipped": self._flip_record if self._flip_record is not None else torch.zeros_like(z, dtype=torch.bool)}
        if self._epoch_suspects is not None and mode == "train":
            columns["epoch_suspect"] = self._epoch_suspects[self._batch_columns[ROW_COLUMN].to(z.device)]
        return columns

    def _filtered_loss(self, loss_fn, z: torch.Tensor, suspected) -> torch.Tensor:
        """This process's per-pair losses ℓ(z), with the suspects of the global batch dropped or corrected
        (`ropo_filter_mode`); `suspected` None: unfiltered."""
        if suspected is None:
            return loss_fn(z)
        start = self.accelerator.process_index * len(z)  # `gather` concatenates the processes in rank order
        local = suspected[start : start + len(z)]
        mode_name = setting(self.args, "ropo_filter_mode")
        return filtered_loss(loss_fn, z, local, mode_name, n_global=len(suspected), k_global=suspected.sum())

    def _filter_values(self, pairs: dict, suspected, mode: str) -> dict:
        """The filter's metrics of a gathered batch, as tensors: `filtered_frac` and, where the data records which
        labels were flipped, `filter_precision` (NaN for a batch without suspects: not logged)."""
        if mode != "train" or not filters(self.args):
            return {}
        filtered = suspected if suspected is not None else torch.zeros_like(pairs["z"], dtype=torch.bool)
        values = {"filtered_frac": filtered.float().mean()}
        if self._flip_record is not None and suspected is not None:
            # Of the distrusted pairs, the share whose label was truly flipped (`flip_preferences`'s record).
            values["filter_precision"] = (filtered & pairs["flipped"].bool()).float().sum() / filtered.sum()
        return values

    def _to_host(self, values: dict, batch: FilterBatch) -> dict[str, float]:
        """`values` (name -> 0-d tensor) as floats, and the step filter's host copy of its window and count (the
        batch's `running`, None outside the step scope) committed: one device-to-host transfer for all of them, not one
        `.item()` sync each."""
        running = batch.running
        pieces = [torch.stack([value.float() for value in values.values()])] if values else []
        if running is not None:
            window_z, debt, _ = running.pending
            pieces += [window_z.float(), debt.reshape(1).float()]
        host = torch.cat(pieces).tolist() if pieces else []
        if running is not None:
            running.commit(host[len(values) : -1], host[-1])
        return dict(zip(values, host[: len(values)]))

    # --- ROPO's per-epoch filter -----------------------------------------------------------------------------------

    def _record_by_row(self, records: list, *values: torch.Tensor) -> None:
        """Append this batch's input rows and per-pair `values` to `records`, gathered over every process without the
        pairs accelerate repeats to even out the last batch; `values_by_row` puts them in row order. What the epoch
        filter's scoring pass and the audit record."""
        rows = self._batch_columns.get(ROW_COLUMN)
        if rows is None:
            raise RuntimeError("a batch was scored without its row indices")
        gathered = self.accelerator.gather_for_metrics((rows, *(value.detach().float() for value in values)))
        records.append([t.cpu() for t in gathered])

    def _score_training_set(self) -> dict[int, float]:
        """The margin z of every training pair under the current model, by input row.

        TRL's own evaluation pass (`prediction_step` → `compute_loss` → its forward code) over the tokenised training
        set, in eval mode, batched by `per_device_eval_batch_size`, on every process; the trainer's loss records each
        pair's margin (`_record_scored_margins`: for DPO TRL's unclipped β·Δ). The pass leaves no trace: TRL's
        evaluation metrics are set aside and restored, and the random number generators are restored so that training
        draws what it would have drawn.
        """
        saved_metrics = self._metrics["eval"]
        self._metrics["eval"] = defaultdict(list)
        self._row_margins = []
        device = self.accelerator.device
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                self.evaluation_loop(
                    self.get_eval_dataloader(self.train_dataset),
                    description="ROPO filter: scoring the training pairs",
                    prediction_loss_only=True,
                    metric_key_prefix="ropo_filter",
                )
            records = self._row_margins
        finally:
            self._row_margins = None
            self._metrics["eval"] = saved_metrics
        rows = sorted(set(self.train_dataset[ROW_COLUMN]))  # (TRL may have dropped rows that do not fit max_length)
        (z,) = values_by_row(records, rows)
        margins = dict(zip(rows, z.tolist()))
        bad = [row for row, value in margins.items() if not math.isfinite(value)]
        if bad:
            raise FloatingPointError(
                f"ROPO's epoch filter found non-finite margins for {len(bad)} training pair(s) (rows {sorted(bad)[:10]}): "
                "NaN or infinite scores from the model (or, for DPO, the reference). trl-robust stops rather than train on "
                "them."
            )
        return margins

    def _choose_epoch_suspects(self) -> list[int]:
        """Score the training set and distrust its lowest-margin ρ share (`_lowest_margin_rows`)."""
        return self._lowest_margin_rows(self._score_training_set(), filter_ratio(self.args))

    def _lowest_margin_rows(self, margins: dict[int, float], ratio: float) -> list[int]:
        """Of the rows in `margins` (row -> z), the ⌊ρ·N⌋ with the lowest margin (ties: the lower row first), only those
        below `ropo_filter_max_margin` if it is set."""
        rows = sorted(margins)
        z = torch.tensor([margins[row] for row in rows], dtype=torch.float64)
        chosen = suspected_pairs(z, ratio, setting(self.args, "ropo_filter_max_margin"))
        return [row for row, suspect in zip(rows, chosen.tolist()) if suspect]

    def _take_free_margins(self) -> dict[int, float]:
        """The training margins recorded since the last call (`auto`), by input row, and start afresh.

        A row met twice (in the padding accelerate adds to the last batch of an epoch, so that every process has one)
        keeps its first margin; a row not met (dropped with `dataloader_drop_last`) is absent.
        """
        records, self._free_margins = self._free_margins, []
        if not records:
            return {}
        records = [[t.cpu() for t in record] for record in records]
        rows = list(dict.fromkeys(torch.cat([record[0] for record in records]).long().tolist()))
        (z,) = values_by_row(records, rows)
        return dict(zip(rows, z.tolist()))

    def _set_epoch_suspects(self, rows: list[int] | None) -> None:
        """Distrust these input rows until the next epoch's choice (None: no filtering this epoch)."""
        if rows is None:
            self._epoch_suspects = None
            return
        mask = torch.zeros(self._indexed_rows(), dtype=torch.bool)
        mask[torch.tensor(rows, dtype=torch.long)] = True
        self._epoch_suspects = mask.to(self.accelerator.device)

    def _indexed_rows(self) -> int:
        """How many input rows the training set's row index spans (rows TRL dropped for their length included)."""
        return max(self.train_dataset[ROW_COLUMN]) + 1

    def _record_scored_margins(self, z: torch.Tensor) -> None:
        """During `_score_training_set`'s pass: record this batch's margins by row (the loss then trains nothing)."""
        self._record_by_row(self._row_margins, z)

    def _record_free_margins(self, z: torch.Tensor) -> None:
        """`auto`: every pair's margin in the training step that trains on it, for the next epoch's estimate (no extra
        pass). Plain `gather`, kept on the device (no host sync per step): `gather_for_metrics` would cut the wrong
        micro-batch where transformers fetches a whole accumulation window ahead. The last batch's padding repeats
        rows already met this epoch, and `_take_free_margins` keeps a row's first margin."""
        rows = self._batch_columns[ROW_COLUMN].to(z.device)
        self._free_margins.append(self.accelerator.gather((rows, z.detach().float())))
