"""ROPO's filter across optimizer steps, epochs and checkpoints: the step filter's running state and the callbacks that
decide at the right moments and put the filter's state into every checkpoint's `trainer_state.json`, so that a resumed
run distrusts what the uninterrupted run would have. The trainer side is `trl_robust.filter.trainer`."""

import json
import math
import warnings
from pathlib import Path

import torch
from transformers import TrainerCallback

from .auto import AUTO, auto_filter_ratio, estimate_flip_rate
from .settings import filter_ratio, setting


class RunningFilter:
    """The state of ROPO's step filter for one loss type: the window of recent margins and the carried count (debt) of
    `trl_robust.filter.rules.running_suspected_pairs`.

    Kept on the device, where the decisions are made without a host sync, and mirrored on the host from the values
    that ride on each step's one metrics transfer, so that `StepFilterCallback` can put it into every checkpoint
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


class StepFilterCallback(TrainerCallback):
    """ROPO's step filter across checkpoints: its window and count go into `state.stateful_callbacks[STATE_KEY]` after
    every optimizer step (from the host copy: no device sync), which transformers writes into each checkpoint's
    `trainer_state.json`; a run resumed from it ranks its next pairs against the same window with the same count, so
    it distrusts the pairs the uninterrupted run would have."""

    STATE_KEY = "trl_robust.RopoStepFilter"

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        saved = (state.stateful_callbacks or {}).get(self.STATE_KEY)  # present when resuming from our checkpoint
        device = self.trainer.accelerator.device
        self.trainer._step_filters = {
            loss_type: RunningFilter(device, values["history"], values["debt"])
            for loss_type, values in (saved["attributes"] if saved else {}).items()
        }

    def on_step_end(self, args, state, control, **kwargs):
        attributes = {loss_type: running.export() for loss_type, running in self.trainer._step_filters.items()}
        state.stateful_callbacks[self.STATE_KEY] = {"args": {}, "attributes": attributes}


class EpochFilterCallback(TrainerCallback):
    """ROPO's per-epoch filter: at the start of each epoch, decide which training rows to distrust for that epoch.

    The decision is kept in `state.stateful_callbacks[STATE_KEY]`, which transformers writes into every checkpoint's
    `trainer_state.json`, so a run resumed inside an epoch distrusts the same rows as the uninterrupted run (its
    model at the start of that epoch is gone by then) and a run resumed at an epoch boundary scores afresh with the
    same model the uninterrupted run would have used.

    With `ropo_filter_ratio="auto"` the decision at the start of epoch e uses the margins the training steps of epoch
    e − 1 recorded (`trl_robust.filter.auto`): their flip-rate estimate joins the list of estimates, and ρ follows from
    that list. The estimates, and the margins of the current epoch so far, go into the checkpoints too (written only
    when a checkpoint is about to be saved), so that a resumed run estimates from the same margins.
    """

    STATE_KEY = "trl_robust.RopoEpochFilter"

    def __init__(self, trainer):
        self.trainer = trainer
        self.decided_epoch = None  # the epoch whose suspects `trainer._epoch_suspects` holds
        self.auto = filter_ratio(trainer.args) == AUTO
        self.estimates = []  # auto: ε̂ per epoch trained, oldest first (None where nothing could be estimated)
        self.margins = {}  # auto: row -> margin, of the current epoch so far (on the host)
        self.n_rows = None  # how many rows the training set's row index spans (from `on_train_begin`)

    def on_train_begin(self, args, state, control, **kwargs):
        saved = (state.stateful_callbacks or {}).get(self.STATE_KEY)  # present when resuming from our checkpoint
        attributes = saved["attributes"] if saved else {}
        self.n_rows = self.trainer._indexed_rows()
        if saved:  # (for a caller who passed the checkpoint to `train()` only: the trainer could not check it earlier)
            check_resumed_rows(attributes, self.n_rows, "the checkpoint resumed from")
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
        warmup = setting(args, "ropo_filter_warmup_steps")
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
        margins = {**self.trainer._take_free_margins(), **self.margins}  # a row met twice: its first margin
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
        attributes = {"epoch": self.decided_epoch, "rows": rows, "n_rows": self.n_rows}
        if self.auto:
            attributes.update(estimates=self.estimates, margins=[list(self.margins), list(self.margins.values())])
        state.stateful_callbacks[self.STATE_KEY] = {"args": {}, "attributes": attributes}

    def _before_a_save(self, state, may_save: bool) -> None:
        """`auto`: put the margins recorded so far this epoch into the checkpoint that may be written next (a host
        transfer, so only then)."""
        if self.auto and may_save:
            for row, z in self.trainer._take_free_margins().items():
                self.margins.setdefault(row, z)  # a row met twice keeps its first margin (`_take_free_margins`)
            saved = state.stateful_callbacks.get(self.STATE_KEY, {}).get("attributes", {})
            self._export(state, saved.get("rows"))

    def on_step_end(self, args, state, control, **kwargs):
        self._before_a_save(state, control.should_save)  # (set by transformers' flow callback, earlier in the list)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._before_a_save(state, control.should_save)

    def on_evaluate(self, args, state, control, **kwargs):
        # transformers decides some saves only after an evaluation, once `on_step_end` has run: `save_strategy="best"`
        # saves when the metric improved (`Trainer._maybe_log_save_evaluate`), and a callback may ask here. A
        # checkpoint written then without this epoch's margins made the resumed run estimate from part of an epoch.
        self._before_a_save(state, True)


def check_resumed_rows(attributes: dict, n_rows: int, checkpoint: str, at_least: bool = False) -> None:
    """Refuse to resume the epoch filter's state (`attributes`, from a checkpoint) with a training set whose row index
    spans `n_rows` rows (`at_least`: a set of `n_rows` rows before TRL drops any, so at most that many), where the
    state was built on another: its suspects and margins are indexed by row, so they would name other pairs, or rows
    that are not there. Checkpoints written before the size was recorded are checked by the rows they name."""
    saved = attributes.get("n_rows")
    if saved is None:  # an older checkpoint: only rows beyond this set can be told
        named = [*(attributes.get("rows") or []), *attributes.get("margins", ([], []))[0]]
        if not named or max(named) < n_rows:
            return
        built_on = f"at least {max(named) + 1} rows"
    elif saved == n_rows or (at_least and saved <= n_rows):
        return
    else:
        built_on = f"{saved} rows"
    raise ValueError(
        f"ROPO's epoch filter state in {checkpoint} was built on a training set of {built_on}, and this run's training "
        f"set has {n_rows}: its suspects and margins are indexed by row, so they belong to that set. Resume with the "
        "same training data (dataset, split, flip_rate and max_length), or start a new run (without "
        "resume_from_checkpoint, in a new output_dir)."
    )


def saved_epoch_filter_state(args) -> tuple[dict, str] | None:
    """The epoch filter's state in the checkpoint `args.resume_from_checkpoint` names (a path, or True: the latest in
    `output_dir`, as `Trainer.train` resolves it), and that checkpoint's path; None where there is none to read (the
    trainer then fails or starts afresh with its own message)."""
    from transformers.trainer_utils import get_last_checkpoint

    resume = getattr(args, "resume_from_checkpoint", None)
    if resume is True and Path(args.output_dir).is_dir():
        resume = get_last_checkpoint(args.output_dir)
    if not isinstance(resume, str | Path) or not resume:
        return None
    try:
        state = json.loads((Path(resume) / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None
    saved = (state.get("stateful_callbacks") or {}).get(EpochFilterCallback.STATE_KEY)
    return (saved.get("attributes") or {}, str(resume)) if isinstance(saved, dict) else None
