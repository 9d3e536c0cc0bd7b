"""ROPO's noisy-sample filter inside a TRL trainer: the glue shared by `RobustDPOTrainer` and `RobustRewardTrainer`.

The pure rules (which pairs to distrust, what to do with them) live in `trl_robust.filtering` and, for
`ropo_filter_ratio="auto"`, `trl_robust.noise.auto`; this module applies them to a `transformers.Trainer` whose loss
sees each pair's margin z:

- `RopoFilterMixin`, mixed in before TRL's trainer class, carries dataset columns that are not model inputs (the row
  index, the `label_flipped` record) through TRL's collator to the loss, keeps the filter's state (the step filter's
  running window, the epoch's suspects, the margins `auto` records), scores the training set through TRL's own
  evaluation loop and decides which pairs to distrust;
- `_StepFilterCallback` and `_EpochFilterCallback` make those decisions at the right moments and put their state into
  every checkpoint's `trainer_state.json`, so that a resumed run distrusts what the uninterrupted run would have.

The trainer supplies the margins: it calls `_record_scored_margins` (during `_score_training_set`'s pass),
`_record_free_margins` (`auto`, in training), `_suspected_pairs` and `_filtered_loss` from its loss, and logs
`_filter_values`. z is the trainer's margin: β·Δ for DPO, the reward difference for a reward model.
"""

import contextlib
import inspect
import math
import warnings
from collections import defaultdict

import numpy as np
import torch
from datasets import Dataset
from transformers import TrainerCallback

from ..config import filter_ratio, filter_scope, filters, robust_hyperparameter
from ..data import FLIP_COLUMN, ROW_COLUMN
from ..filtering import filter_window, filtered_loss, rankable, running_suspected_pairs, suspected_pairs
from ..noise.auto import AUTO, auto_filter_ratio, estimate_flip_rate


class RopoFilterMixin:
    """ROPO's training filter and the dataset columns it needs, for a TRL trainer (mixed in before TRL's class).

    The trainer calls `_set_up_ropo_filter()` at the end of its `__init__`, takes the passed-through columns out of
    each batch with `_columns_taken_out(inputs)` around TRL's `compute_loss`, and in its loss: records margins
    (`_row_margins`, `_free_margins`), asks `_suspected_pairs` which pairs of the gathered batch to distrust and trains
    on `_filtered_loss`.
    """

    _passed_columns: dict = {}  # column -> dtype; per instance once `_pass_through_column` is called
    _batch_columns: dict = {}  # this batch's values of those columns
    _epoch_suspects = None  # per input row: distrusted this epoch (epoch scope only)
    _row_margins = None  # while the epoch filter scores the training set: the gathered (rows, z) batches
    _free_margins = None  # `auto`: this epoch's training margins, gathered (rows, z) batches still on the device
    _step_filters: dict = {}  # loss type -> _RunningFilter (step scope only)

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
            self.add_callback(_EpochFilterCallback(self))
        else:
            self._step_filters = {}
            self.add_callback(_StepFilterCallback(self))
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
            self.data_collator = _PassThroughCollator(self.data_collator, self._passed_columns)
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
            running = self._step_filters[loss_type] = _RunningFilter(self.accelerator.device)
        z = pairs["z"]
        if self.state.global_step < robust_hyperparameter(self.args, "ropo_filter_warmup_steps"):
            suspected, window, debt = None, torch.cat([running.history, rankable(z)]), running.debt
        else:
            max_margin = robust_hyperparameter(self.args, "ropo_filter_max_margin")
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
        warmup = robust_hyperparameter(self.args, "ropo_filter_warmup_steps")
        if warmup >= total:
            warnings.warn(
                f"ropo_filter_warmup_steps={warmup} is at or beyond the {total} optimizer steps of this run: ROPO's "
                "filter will distrust nothing. Lower the warm-up (it trains on every pair first; 10-20% of the steps "
                "is a common choice) or train for longer.",
                UserWarning,
                stacklevel=3,
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
                stacklevel=3,
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
        mode_name = robust_hyperparameter(self.args, "ropo_filter_mode")
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

    def _to_host(self, values: dict, running) -> dict[str, float]:
        """`values` (name -> 0-d tensor) as floats, and the step filter's host copy of its window and count
        (`running`, None outside the step scope) committed: one device-to-host transfer for all of them, not one
        `.item()` sync each."""
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
        chosen = suspected_pairs(z, ratio, robust_hyperparameter(self.args, "ropo_filter_max_margin"))
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
        n_rows = max(self.train_dataset[ROW_COLUMN]) + 1
        mask = torch.zeros(n_rows, dtype=torch.bool)
        mask[torch.tensor(rows, dtype=torch.long)] = True
        self._epoch_suspects = mask.to(self.accelerator.device)

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



class _RunningFilter:
    """The state of ROPO's step filter for one loss type: the window of recent margins and the carried count (debt) of
    `trl_robust.filtering.running_suspected_pairs`.

    Kept on the device, where the decisions are made without a host sync, and mirrored on the host from the values
    that ride on each step's one metrics transfer, so that `_StepFilterCallback` can put it into every checkpoint
    without touching the device.
    """

    def __init__(self, device, history=(), debt=0.0):
        self.history = torch.tensor(list(history), dtype=torch.float32, device=device)
        self.debt = torch.tensor(float(debt), dtype=torch.float32, device=device)
        self.host_history, self.host_debt = [float(v) for v in history], float(debt)
        self.pending = None  # (this micro-batch's margins as kept, new debt, how many to keep) until the transfer

    def commit(self, margins: list[float], debt: float) -> None:
        """Mirror the device state on the host once this step's values have arrived."""
        keep, combined = self.pending[2], self.host_history + margins
        self.host_history = combined[max(len(combined) - keep, 0) :]
        self.host_debt = debt
        self.pending = None

    def export(self) -> dict:
        return {"history": list(self.host_history), "debt": self.host_debt}


class _StepFilterCallback(TrainerCallback):
    """ROPO's step filter across checkpoints: its window and count go into `state.stateful_callbacks[STATE_KEY]` after
    every optimizer step (from the host copy: no device sync), which transformers writes into each checkpoint's
    `trainer_state.json`; a run resumed from it ranks its next pairs against the same window with the same count, so
    it distrusts the pairs the uninterrupted run would have."""

    STATE_KEY = "trl_robust.RopoStepFilter"

    def __init__(self, trainer: RopoFilterMixin):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        saved = (state.stateful_callbacks or {}).get(self.STATE_KEY)  # present when resuming from our checkpoint
        device = self.trainer.accelerator.device
        self.trainer._step_filters = {
            loss_type: _RunningFilter(device, values["history"], values["debt"])
            for loss_type, values in (saved["attributes"] if saved else {}).items()
        }

    def on_step_end(self, args, state, control, **kwargs):
        attributes = {loss_type: running.export() for loss_type, running in self.trainer._step_filters.items()}
        state.stateful_callbacks[self.STATE_KEY] = {"args": {}, "attributes": attributes}


class _EpochFilterCallback(TrainerCallback):
    """ROPO's per-epoch filter: at the start of each epoch, decide which training rows to distrust for that epoch.

    The decision is kept in `state.stateful_callbacks[STATE_KEY]`, which transformers writes into every checkpoint's
    `trainer_state.json`, so a run resumed inside an epoch distrusts the same rows as the uninterrupted run (its
    model at the start of that epoch is gone by then) and a run resumed at an epoch boundary scores afresh with the
    same model the uninterrupted run would have used.

    With `ropo_filter_ratio="auto"` the decision at the start of epoch e uses the margins the training steps of epoch
    e − 1 recorded (`trl_robust.noise.auto`): their flip-rate estimate joins the list of estimates, and ρ follows from
    that list. The estimates, and the margins of the current epoch so far, go into the checkpoints too (written only
    when a checkpoint is about to be saved), so that a resumed run estimates from the same margins.
    """

    STATE_KEY = "trl_robust.RopoEpochFilter"

    def __init__(self, trainer: RopoFilterMixin):
        self.trainer = trainer
        self.decided_epoch = None  # the epoch whose suspects `trainer._epoch_suspects` holds
        self.auto = filter_ratio(trainer.args) == AUTO
        self.estimates = []  # auto: ε̂ per epoch trained, oldest first (None where nothing could be estimated)
        self.margins = {}  # auto: row -> margin, of the current epoch so far (on the host)

    def on_train_begin(self, args, state, control, **kwargs):
        saved = (state.stateful_callbacks or {}).get(self.STATE_KEY)  # present when resuming from our checkpoint
        attributes = saved["attributes"] if saved else {}
        self.decided_epoch = attributes.get("epoch")
        self.trainer._set_epoch_suspects(attributes.get("rows"))
        self.estimates = list(attributes.get("estimates", []))
        self.margins = {int(row): z for row, z in zip(*attributes.get("margins", ([], [])))}
        if self.trainer._free_margins:
            self.trainer._take_free_margins()  # (a previous `train()` call's leftovers)
        if state.num_train_epochs is not None and state.num_train_epochs <= 1:
            warnings.warn(
                "ropo_filter_scope='epoch' chooses its suspects at the start of each epoch after the first, and this "
                f"run trains for {state.num_train_epochs} epoch: nothing will be filtered. Train for more epochs or "
                "use ropo_filter_scope='step'"
                + (" with a fixed ropo_filter_ratio (e.g. the flip rate `trl-robust audit` estimates)." if self.auto else "."),
                UserWarning,
                stacklevel=2,
            )

    def on_epoch_begin(self, args, state, control, **kwargs):
        position = state.epoch or 0.0
        epoch = math.floor(position + 1e-6)
        if epoch == self.decided_epoch:
            return  # resumed inside this epoch: its suspects came back with the checkpoint
        warmup = robust_hyperparameter(args, "ropo_filter_warmup_steps")
        inside_an_epoch = abs(position - round(position)) > 1e-6  # resumed mid-epoch from a checkpoint without them
        untrained = state.global_step == 0 or inside_an_epoch  # never with the untrained model
        if self.auto:
            rows = None if untrained else self._decide_from_the_last_epoch(state.global_step >= warmup)
        elif untrained or state.global_step < warmup:
            rows = None
        else:
            rows = self.trainer._choose_epoch_suspects()
        self.trainer._set_epoch_suspects(rows)
        self.decided_epoch = epoch
        self._export(state, rows)

    def _decide_from_the_last_epoch(self, filtering: bool) -> list[int] | None:
        """`auto`: estimate ε from the epoch that just ended and choose this epoch's suspects (None: filter nothing)."""
        margins = {**self.margins, **self.trainer._take_free_margins()}
        self.margins = {}
        estimate = estimate_flip_rate([margins[row] for row in sorted(margins)]) if margins else None
        self.estimates.append(estimate)
        ratio = auto_filter_ratio(self.estimates) if filtering else 0.0
        metrics = self.trainer._metrics["train"]
        if estimate is not None:
            metrics["noise/estimated_flip_rate"].append(estimate)
        metrics["noise/filter_ratio"].append(ratio)
        return self.trainer._lowest_margin_rows(margins, ratio) if ratio > 0 else None

    def _export(self, state, rows) -> None:
        attributes = {"epoch": self.decided_epoch, "rows": rows}
        if self.auto:
            attributes.update(estimates=self.estimates, margins=[list(self.margins), list(self.margins.values())])
        state.stateful_callbacks[self.STATE_KEY] = {"args": {}, "attributes": attributes}

    def _before_a_save(self, state, control) -> None:
        """`auto`: put the margins recorded so far this epoch into the checkpoint about to be written."""
        if self.auto and control.should_save:
            self.margins.update(self.trainer._take_free_margins())
            saved = state.stateful_callbacks.get(self.STATE_KEY, {}).get("attributes", {})
            self._export(state, saved.get("rows"))

    def on_step_end(self, args, state, control, **kwargs):
        self._before_a_save(state, control)  # (transformers' flow callback, earlier in the list, has set should_save)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._before_a_save(state, control)


def rows_indexed_for_the_filter(args, trainer_init, leading: tuple, pargs, kwargs):
    """`with_row_index` where ROPO's epoch filter is on (it traces every score to its row: the rows are indexed before
    TRL sees them); the arguments unchanged otherwise."""
    if filters(args) and filter_scope(args) == "epoch":
        return with_row_index(trainer_init, leading, pargs, kwargs)
    return pargs, kwargs


def with_row_index(trainer_init, leading: tuple, pargs, kwargs):
    """A trainer's remaining arguments (`pargs`, `kwargs`, after the `leading` ones) with a row-index column added to
    `train_dataset`, as `trainer_init` (TRL's `__init__`) would bind them: for the per-epoch filter.

    Checked before any model is loaded: the epoch filter needs a map-style dataset to score and index.
    """
    try:
        bound = inspect.signature(trainer_init).bind(None, *leading, *pargs, **kwargs)
    except TypeError:
        return pargs, kwargs  # a call TRL will reject with its own message
    train_dataset = bound.arguments.get("train_dataset")
    if train_dataset is None:
        return pargs, kwargs
    if not isinstance(train_dataset, Dataset):
        raise ValueError(
            f"ropo_filter_scope='epoch' scores the whole training set at the start of each epoch, so it needs a "
            f"map-style `datasets.Dataset` as train_dataset, got {type(train_dataset).__name__}. Use "
            "ropo_filter_scope='step' for streamed data."
        )
    if ROW_COLUMN in train_dataset.column_names:
        raise ValueError(f"train_dataset has a column named {ROW_COLUMN!r}, which trl-robust reserves; rename it.")
    bound.arguments["train_dataset"] = train_dataset.add_column(ROW_COLUMN, np.arange(len(train_dataset), dtype=np.int64))
    return bound.args[1 + len(leading) :], bound.kwargs


class _PassThroughCollator:
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


