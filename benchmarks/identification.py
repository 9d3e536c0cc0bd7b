"""Which signal finds the flipped pairs, and does retraining without what it finds beat a well-stopped DPO?

Issue 20's identification study, through the real `RobustDPOTrainer` on the synthetic task (`harness.Setting()`),
paired by seed. For each seed and flip rate, signals that rank the N noisy training pairs (lowest margin = most
suspicious):

- `DPO last` / `DPO at stop` / `DPO mean`: the in-training margins z of DPO (the margin each training step computes
  for its pairs, before that step's update: free), at the last epoch, at the epoch the noisy validation split picks,
  and averaged over all epochs (AUM-style);
- `ROPO last` / `ROPO mean`: the same under ROPO's bounded loss (the margins a bounded loss leaves on flipped pairs);
- `out-of-fold`: K models, each trained without one fold and scoring it every epoch (cross-fitting, as Selective DPO
  and confident learning do); each fold's margins averaged over the epochs up to that model's noisy-validation stop;
- `clean auditor`: a DPO model trained on a separate *clean* set of N pairs from the same task, scoring the noisy pairs
  at the epoch its clean validation split picks: the ceiling of a data-only signal from a model of this class;
- `oracle`: the true flips.

Per signal: AUROC, precision at the signal's own ε̂·N cut (ε̂ from `estimate_noise` on its margins), precision at
the true ε·N cut, and next to them the bound εa/(εa + (1−ε)(1−a)) of a ranking by a model of clean accuracy a (a =
this seed's early-stopped DPO). Then the act: plain DPO retrained without each signal's ε̂·N most suspicious pairs,
early-stopped on the noisy validation split, against DPO early-stopped (paired by seed). Wall time of each signal as a
multiple of one DPO training.

    python benchmarks/identification.py                       # 10 seeds at 0, 20, 40% flips
    python benchmarks/identification.py --seeds 3 --rates 0.4  # a smaller look
    python benchmarks/identification.py --report_only
    python benchmarks/identification.py --quick --output_dir /tmp/ident   # smoke run: 1 seed, 40%, 2 epochs

Every training run is cached under `<output_dir>/work/cells/` and each cell's result appended to
`<output_dir>/identification.jsonl`: an interrupted run continues where it stopped. Writes
`<output_dir>/identification.md`. `--dpo_only` runs DPO alone (its own file, `identification_stopping.jsonl`), for the
stopping rules (`rule_epochs`), which read only DPO's per-epoch curves.

(About 540 lines: the recording trainer, the cell with its signals and retrains, the stopping rules and the report
belong to one study and are read together; the shared parts are in `harness.py`.)
"""

import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

import harness as nb  # noqa: E402  benchmarks/harness.py: this folder is on sys.path when a script runs

SETTING = replace(nb.Setting(), reward_gain_every_epoch=False)
TASKS = {"first": SETTING, "second": replace(nb.SECOND_TASK, reward_gain_every_epoch=False),
         "third": replace(nb.THIRD_TASK, reward_gain_every_epoch=False),
         "fourth": replace(nb.FOURTH_TASK, reward_gain_every_epoch=False)}
QUICK = replace(SETTING, n_train=200, n_validation=60, n_test=60, n_reward_prompts=20, epochs=2)
RATES = (0.0, 0.2, 0.4)
FOLDS = 2
ROW = "identification_row"  # the row index this script passes through to the loss (not trl-robust's own column)

# signal -> (scoring run, which margins); the retrain drops each signal's ε̂·N lowest.
SIGNALS = {
    "DPO last": ("dpo", "last"),
    "DPO at stop": ("dpo", "stop"),
    "DPO mean": ("dpo", "mean"),
    "ROPO last": ("ropo", "last"),
    "ROPO mean": ("ropo", "mean"),
    "out-of-fold": ("oof", "mean to stop"),
    "clean auditor": ("auditor", "stop"),
    "oracle": (None, None),
}
RETRAINED = ("ROPO mean", "out-of-fold", "clean auditor", "oracle")
# The field's robust losses, trained on the noisy pairs like DPO (their default hyperparameters), compared at their last
# epoch and at their noisy-validation pick with DPO early-stopped.
TRAINED = {"ROPO": "ropo"}


@dataclass
class Arguments:
    seeds: int = field(default=10, metadata={"help": "paired seeds 0..seeds-1"})
    task: str = field(default="first", metadata={"help": "first, second, third or fourth (harness.SECOND_TASK, ...)"})
    rates: list[float] = field(default_factory=lambda: list(RATES), metadata={"help": "symmetric flip rates"})
    dpo_only: bool = field(default=False, metadata={"help": "only DPO's runs, for the stopping rules (their own file)"})
    workers: int = field(default=0, metadata={"help": "processes (0: one per core, at most 2)"})
    output_dir: str = field(default="benchmarks/results", metadata={"help": "where the results and work files go"})
    report_only: bool = field(default=False, metadata={"help": "only write the report from the results file"})
    quick: bool = field(default=False, metadata={"help": "smoke run: 1 seed, flip rate 0.4, a tiny task, 2 epochs"})


# ---- one training run that records every scored pair's margin, per epoch --------------------------------------------


def _recording_trainer_class():
    """`RobustDPOTrainer` that records each pair's margin z = β·Δ as the loss sees it, by row, per epoch and split.

    The loss runs through trl-robust's registered path (DPO as `cdpo` with ε = 0: the same loss), whose filter hook
    (`_ropo_filter_batch`) sees every batch's margins; the row index is passed through as the filter's own is."""
    import torch
    from transformers import TrainerCallback

    from trl_robust import RobustDPOTrainer

    class EpochCounter(TrainerCallback):
        def __init__(self, trainer):
            self.trainer = trainer

        def on_epoch_begin(self, args, state, control, **kwargs):
            self.trainer.epoch_index += 1

    class Recording(RobustDPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._pass_through_column(ROW, torch.long)
            self.epoch_index, self.split = 0, "train"
            self.margins = {}  # (split, epoch) -> {row: z}
            self.add_callback(EpochCounter(self))

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            self.split = metric_key_prefix.removeprefix("eval_")
            try:
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            finally:
                self.split = "train"

        def _ropo_filter_batch(self, loss_type, margins, columns, mode, records_margins=True):
            rows = self._batch_columns.get(ROW)
            if rows is not None and records_margins:
                split = "train" if mode == "train" else self.split
                record = self.margins.setdefault((split, self.epoch_index), {})
                record.update(zip(rows.tolist(), margins.detach().float().cpu().tolist()))
            return super()._ropo_filter_batch(loss_type, margins, columns, mode, records_margins)

    return Recording


def recorded_run(directory: Path, setting, seed: int, loss_type: str, train, evals: dict, scored: str) -> dict:
    """Train on `train` (evaluating `evals` each epoch); return the clean and noisy-validation accuracy per epoch and
    the margins of the rows of split `scored` ("train": the in-training margins) per epoch, as [epoch][row]."""
    import torch

    torch.set_num_threads(1)
    cached = directory / "result.json"
    if cached.exists():
        return json.loads(cached.read_text())
    from transformers import PrinterCallback

    indexed = lambda d: d.add_column(ROW, list(range(len(d))))  # noqa: E731
    args = nb.training_config(setting, directory, loss_type, seed, label_smoothing=0.0)
    task = nb.task_dir(ROOT, seed, setting)
    start = time.perf_counter()
    trainer = _recording_trainer_class()(
        model=str(task / "reference"), args=args, train_dataset=indexed(train),
        eval_dataset={name: indexed(d) for name, d in evals.items()},
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    history = trainer.state.log_history
    n = len(train) if scored == "train" else len(evals[scored])
    margins = [[trainer.margins[(scored, e)][row] for row in range(n)] for e in range(1, setting.epochs + 1)]
    result = {
        "clean_accuracy": [e["eval_rewards/accuracies"] for e in history if "eval_clean_loss" in e],
        "noisy_val_accuracy": [e["eval_rewards/accuracies"] for e in history if "eval_noisy_val_loss" in e],
        "margins": margins,
        "seconds": time.perf_counter() - start,
    }
    _write(cached, result)
    return result


ROOT = None  # the work directory, set in each process by `run_cell`


def auditor_pairs(seed: int, setting) -> list[dict]:
    """A second, clean set of `n_train` pairs from the task's reference policy and reward (other prompts and samples),
    cached beside the task."""
    from transformers import AutoModelForCausalLM

    from trl_robust.experiments.synthetic import RewardModel, make_preference_pairs

    path = nb.task_dir(ROOT, seed, setting) / "auditor_pairs.json"
    if not path.exists():
        reference = AutoModelForCausalLM.from_pretrained(nb.task_dir(ROOT, seed, setting) / "reference")
        reward = RewardModel.from_seed(seed, setting.reward)
        pairs = make_preference_pairs(reference, reward, setting.n_train, seed=10_000 + seed)
        _write(path, pairs)
    return json.loads(path.read_text())


def _write(path: Path, value) -> None:
    """Write JSON whole or not at all: a run killed while writing leaves no half file for the next one to read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(value))
    partial.replace(path)


def stop_epoch(curve: list[float]) -> int:
    """Index of the best epoch of `curve` (the first on ties): the noisy-validation selection."""
    return max(range(len(curve)), key=lambda i: (curve[i], -i))


def margins_of(run: dict, which: str) -> np.ndarray:
    m = np.asarray(run["margins"])
    stop = stop_epoch(run["noisy_val_accuracy"])
    return {"last": m[-1], "stop": m[stop], "mean": m.mean(0), "mean to stop": m[: stop + 1].mean(0)}[which]


# ---- one cell: every scoring run, the signals, the retrains ---------------------------------------------------------


def cell_splits(seed: int, rate: float, setting):
    """A cell's noisy training pairs (without their record of flips), which of them were flipped, and the evaluation
    splits every run of the cell reports on: the clean test pairs, and the validation pairs flipped at the same rate."""
    from datasets import Dataset

    from trl_robust.data import flip_preferences

    data = json.loads((nb.task_dir(ROOT, seed, setting) / "pairs.json").read_text())
    train = nb.noisy_train_split(ROOT, nb.Job("DPO", "symmetric", rate, seed, setting))
    flipped = np.asarray(train["label_flipped"], dtype=bool)
    noisy_val = flip_preferences(Dataset.from_list(data["validation"]), rate, seed=seed + 1000).remove_columns(
        "label_flipped")
    evals = {"clean": Dataset.from_list(data["test"]), "noisy_val": noisy_val}
    return train.remove_columns("label_flipped"), flipped, evals


def cell_dir(seed: int, rate: float, setting) -> Path:
    return ROOT / "cells" / f"{setting.task_name or 'first'}-{rate}-{seed}"


def run_cell(root: str, seed: int, rate: float, setting, folds: int, dpo_only: bool = False) -> dict:
    """Everything for one (seed, flip rate): the scoring runs, each signal's identification metrics, the retrains;
    with `dpo_only`, DPO's run alone (what the stopping rules read)."""
    import torch
    from datasets import Dataset

    from trl_robust.audit.metrics import auroc, precision_at_k
    from trl_robust.noise import estimate_noise

    global ROOT
    ROOT = Path(root)
    nb.quiet_libraries()
    torch.set_num_threads(1)
    nb.build_task(ROOT, seed, setting)
    data = json.loads((nb.task_dir(ROOT, seed, setting) / "pairs.json").read_text())
    job = nb.Job("DPO", "symmetric", rate, seed, setting)
    train, flipped, evals = cell_splits(seed, rate, setting)
    clean = evals["clean"]
    cell = cell_dir(seed, rate, setting)

    dpo = recorded_run(cell / "dpo", setting, seed, "cdpo", train, evals, "train")
    if dpo_only:
        return {"seed": seed, "flip_rate": rate, "task": task_name(setting), "dpo": run_summary(dpo),
                "curves": {"dpo": _curves(dpo)}}
    runs = {
        "dpo": dpo,
        "ropo": recorded_run(cell / "ropo", setting, seed, "ropo", train, evals, "train"),
    }
    for name, loss_type in TRAINED.items():
        if loss_type != "ropo":
            runs[loss_type] = recorded_run(cell / loss_type, setting, seed, loss_type, train, evals, "train")
    # Out-of-fold: fold k = rows ≡ k (mod K) of the shuffled order; its model trains on the others and scores it.
    order = np.random.default_rng(seed).permutation(len(train))
    oof, oof_seconds = np.zeros(len(train)), 0.0
    for k in range(folds):
        held = np.sort(order[k::folds])
        kept = np.setdiff1d(np.arange(len(train)), held)
        run = recorded_run(cell / f"oof{k}", setting, seed, "cdpo", train.select(kept),
                           {**evals, "held": train.select(held)}, "held")
        oof[held] = margins_of(run, "mean to stop")
        oof_seconds += run["seconds"]
    auditor_train = Dataset.from_list(auditor_pairs(seed, setting))
    runs["auditor"] = recorded_run(
        cell / "auditor", setting, seed, "cdpo", auditor_train,
        {"clean": clean, "noisy_val": Dataset.from_list(data["validation"]), "noisy_train": train}, "noisy_train",
    )  # its "noisy_val" is the clean validation split: an auditor's owner has clean labels

    accuracy = dpo["clean_accuracy"][stop_epoch(dpo["noisy_val_accuracy"])]
    signals = {}
    for name, (source, which) in SIGNALS.items():
        if source is None:
            z, seconds = np.where(flipped, -1.0, 1.0), 0.0
        elif source == "oof":
            z, seconds = oof, oof_seconds
        else:
            z, seconds = margins_of(runs[source], which), runs[source]["seconds"]
        estimate = estimate_noise(z, n_bootstrap=0)
        k_hat = round(estimate.flip_rate * len(z)) if source is not None else int(flipped.sum())
        k_true = int(flipped.sum())
        suspicion = -z
        signals[name] = {
            "auroc": auroc(suspicion, flipped),
            "estimated_flip_rate": estimate.flip_rate if source is not None else None,
            "cannot_tell": bool(estimate.cannot_tell) if source is not None else False,
            "n_dropped": k_hat,
            "precision_at_estimate": precision_at_k(suspicion, flipped, k_hat) if k_hat and k_true else None,
            "precision_at_truth": precision_at_k(suspicion, flipped, k_true) if k_true else None,
            "seconds": seconds,
            "dropped": np.argsort(z, kind="stable")[:k_hat].tolist(),
        }
    retrains = {}
    for name in RETRAINED:
        rows = tuple(sorted(signals[name]["dropped"]))
        retrains[name] = _retrain(cell / f"retrain-{name.replace(' ', '_')}", replace(job, drop_rows=rows))
    for s in signals.values():
        s.pop("dropped")
    return {
        "seed": seed, "flip_rate": rate, "task": task_name(setting), "folds": folds,
        "bound_accuracy": accuracy,
        "bound": (rate * accuracy / (rate * accuracy + (1 - rate) * (1 - accuracy))) if rate else None,
        "dpo": run_summary(dpo), "auditor": run_summary(runs["auditor"]),
        "trained": {name: run_summary(runs[loss_type]) for name, loss_type in TRAINED.items()},
        "dpo_seconds": dpo["seconds"], "curves": {"dpo": _curves(dpo), "ropo": _curves(runs["ropo"])},
        "signals": signals, "retrains": retrains,
    }


def _curves(run: dict) -> dict:
    """Per epoch: the share of training labels the model agrees with (z > 0, in-training margins), the flip rate
    estimated from those margins, and the clean and noisy-validation accuracies: what a stopping rule can read."""
    from trl_robust.noise import estimate_noise

    margins = np.asarray(run["margins"])
    return {
        "agreement": (margins > 0).mean(1).tolist(),
        "estimated_flip_rate": [estimate_noise(m, n_bootstrap=0).flip_rate for m in margins],
        "clean_accuracy": run["clean_accuracy"],
        "noisy_val_accuracy": run["noisy_val_accuracy"],
    }


def task_name(setting) -> str:
    return next((name for name, s in TASKS.items() if s == setting), setting.task_name)


def run_summary(run: dict) -> dict:
    stop = stop_epoch(run["noisy_val_accuracy"])
    return {"stopped": run["clean_accuracy"][stop], "last": run["clean_accuracy"][-1], "stop_epoch": stop + 1,
            "best": max(run["clean_accuracy"]), "noisy_val": run["noisy_val_accuracy"][stop]}


def _retrain(directory: Path, job) -> dict:
    """Plain DPO (TRL's `sigmoid`) on the training split without `job.drop_rows`, cached; its accuracies."""
    cached = directory / "summary.json"
    if cached.exists():
        return json.loads(cached.read_text())
    result = nb.run_job(job, ROOT)
    summary = {**run_summary(result), "seconds": result["seconds"]}
    _write(cached, summary)
    return summary


# ---- stopping without a clean split ------------------------------------------------------------------------------

COLLAPSE = 0.5  # the ε̂-collapse rule stops once ε̂ falls below this share of its running maximum
FLOOR = 0.08  # ... of a maximum at least this (the auto filter's floor): on clean data ε̂ wanders near 0


def rule_epochs(curves: dict) -> dict:
    """The epoch (0-based) each selection rule picks from one run's curves.

    - `noisy validation`: the best noisy-validation accuracy (what `load_best_model_at_end` gives);
    - `last`: no selection;
    - `agreement > 1 − ε̂`: the last epoch before the model agrees with more than 1 − ε̂ of its training labels, ε̂ the
      running maximum of the per-epoch estimates from the second epoch on (issue 20's suggestion);
    - `ε̂ collapse`: the last epoch before ε̂ falls below `COLLAPSE` × its running maximum (from the second epoch,
      where that maximum is at least `FLOOR`): memorised flips stop looking flipped, so the estimate from the
      in-training margins falls;
    - `ε̂ collapse, stop there`: the same rule, keeping the model of the epoch whose margins collapsed (what a trainer
      can do without keeping the previous epoch's weights);
    - `best (clean)`: the best clean accuracy, which no user can see (the ceiling of any rule).
    """
    agreement, estimates = curves["agreement"], curves["estimated_flip_rate"]
    n = len(agreement)
    by_agreement = by_collapse = n - 1
    running = 0.0
    for e in range(1, n):
        running = max(running, estimates[e])
        if by_agreement == n - 1 and agreement[e] > 1 - running:
            by_agreement = e - 1
        if by_collapse == n - 1 and running >= FLOOR and estimates[e] < COLLAPSE * running:
            by_collapse = e - 1
    clean = curves["clean_accuracy"]
    return {
        "noisy validation": stop_epoch(curves["noisy_val_accuracy"]),
        "last": n - 1,
        "agreement > 1 − ε̂": by_agreement,
        "ε̂ collapse": by_collapse,
        "ε̂ collapse, stop there": min(by_collapse + 1, n - 1),
        "best (clean)": max(range(n), key=lambda i: (clean[i], -i)),
    }


# ---- the report ------------------------------------------------------------------------------------------------------


def mean_std_text(values, scale=1.0, digits=3) -> str:
    values = [v * scale for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def report(cells: list[dict], command: str, minutes: float | None, setting=SETTING) -> str:
    ms = mean_std_text
    cells_by = sorted({(c.get("task", "first"), c["flip_rate"]) for c in cells})
    seeds = sorted({c["seed"] for c in cells}) or [None]
    lines = [
        "# Which signal finds the flipped pairs, and does retraining without them beat a well-stopped DPO?",
        "",
        f"`{command}`" + (f" ({minutes:.0f} min for the cells run this time)" if minutes else "") + ". "
        + " ".join(f"Task `{name}`: {s.n_train} pairs, reward `{s.reward}`, lr {s.learning_rate}, batch {s.batch_size}, "
                   f"{s.epochs} epochs." for name, s in ({**TASKS, task_name(setting): setting}).items()
                   if any(c.get("task", "first") == name for c in cells))
        + f" Seeds {seeds[0]}–{seeds[-1]}; "
        f"{cells[0]['folds'] if cells else FOLDS} folds out-of-fold. Mean ± std over seeds.",
        "",
        "Signals: in-training margins of DPO (last epoch, at its noisy-validation stop, mean over epochs) and of ROPO "
        "(last, mean); out-of-fold margins (each fold scored by a model trained without it, averaged over the epochs "
        "up to its noisy-validation stop); a clean auditor (DPO trained on a separate clean set of the same size, at "
        "its clean-validation stop); the oracle. ε̂ is each signal's own `estimate_noise` (symmetric_mixture) on its "
        "margins; the cut drops the ε̂·N lowest. `bound` = εa/(εa + (1−ε)(1−a)), a = DPO early-stopped clean "
        "accuracy of the same seed. `cost` = the signal's training time as a multiple of one DPO training.",
    ]
    for task, rate in cells_by:
        group = [c for c in cells if c["flip_rate"] == rate and c.get("task", "first") == task]
        lines += ["", f"## {rate:.0%} symmetric flips, task `{task}` ({len(group)} seed{'s' if len(group) > 1 else ''})",
                  ""]
        dpo_stop = [c["dpo"]["stopped"] for c in group]
        lines += [
            f"DPO early-stopped: {ms(dpo_stop, 100, 1)} clean accuracy (stop epoch "
            f"{ms([c['dpo']['stop_epoch'] for c in group], 1, 1)}); last epoch {ms([c['dpo']['last'] for c in group], 100, 1)}; "
            f"clean auditor stopped "
            f"{ms([c['auditor']['stopped'] for c in group], 100, 1)}."
            + (f" Bound on precision: {ms([c['bound'] for c in group])}." if rate else ""),
            "",
            "| signal | AUROC | ε̂ | precision at ε̂·N | precision at ε·N | cost | retrained DPO, stopped | − DPO stopped | "
            "retrained, last | − DPO stopped |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name in SIGNALS:
            s = [c["signals"][name] for c in group]
            row = [name, ms([x["auroc"] for x in s]), ms([x["estimated_flip_rate"] for x in s]),
                   ms([x["precision_at_estimate"] for x in s]), ms([x["precision_at_truth"] for x in s]),
                   ms([x["seconds"] / c["dpo_seconds"] for x, c in zip(s, group)], 1, 1)]
            if name in RETRAINED:
                r = [c["retrains"][name] for c in group]
                row += [ms([x["stopped"] for x in r], 100, 1),
                        ms([x["stopped"] - d for x, d in zip(r, dpo_stop)], 100, 1),
                        ms([x["last"] for x in r], 100, 1),
                        ms([x["last"] - d for x, d in zip(r, dpo_stop)], 100, 1)]
            else:
                row += ["", "", "", ""]
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", "Robust losses trained on the noisy pairs (default hyperparameters), at the last epoch and at the "
                  "noisy-validation pick, paired against DPO early-stopped:", "",
                  "| loss | last epoch | − DPO stopped | noisy-validation pick | − DPO stopped |", "|---|---|---|---|---|"]
        for name in TRAINED:
            runs = [c["trained"][name] for c in group if name in c.get("trained", {})]
            base = [c["dpo"]["stopped"] for c in group if name in c.get("trained", {})]
            lines.append(f"| {name} | {ms([r['last'] for r in runs], 100, 1)} | "
                         f"{ms([r['last'] - b for r, b in zip(runs, base)], 100, 1)} | "
                         f"{ms([r['stopped'] for r in runs], 100, 1)} | "
                         f"{ms([r['stopped'] - b for r, b in zip(runs, base)], 100, 1)} |")
        cannot = {n: sum(c["signals"][n]["cannot_tell"] for c in group) for n in SIGNALS if n != "oracle"}
        told = ", ".join(f"{n} {k}" for n, k in cannot.items() if k)
        if told:
            lines += ["", f"Seeds whose margins could not tell the rate (estimate flagged `cannot_tell`): {told}."]
    return "\n".join(lines) + "\n"


def stopping_report(records: list[dict]) -> str:
    """Clean accuracy at the epoch each stopping rule picks (`rule_epochs`), per flip rate, from every run with curves
    (the full cells' DPO and ROPO runs, and `--dpo_only` runs)."""
    ms = mean_std_text
    lines = ["## Stopping without a clean split", "",
             "Clean accuracy at the epoch each rule picks, and its paired difference against the same run's "
             "noisy-validation pick (`load_best_model_at_end` on `eval_rewards/accuracies`); `epoch`: mean epoch "
             "picked (1-based). The rules are defined in `rule_epochs`.", "",
             "| task | flips | run | seeds | rule | epoch | clean accuracy | − noisy-validation pick |",
             "|---|---|---|---|---|---|---|---|"]
    for task, rate in sorted({(r.get("task", "first"), r["flip_rate"]) for r in records}):
        for run in ("dpo", "ropo"):
            curves = [r["curves"][run] for r in records if r["flip_rate"] == rate and r.get("task", "first") == task
                      and run in r.get("curves", {})]
            picks = [(c, rule_epochs(c)) for c in curves]
            for rule in (picks[0][1] if picks else {}):
                accuracy = [c["clean_accuracy"][p[rule]] for c, p in picks]
                base = [c["clean_accuracy"][p["noisy validation"]] for c, p in picks]
                lines.append(f"| {task} | {rate:.0%} | {run.upper()} | {len(picks)} | {rule} | "
                             f"{ms([p[rule] + 1 for _, p in picks], 1, 1)} | {ms(accuracy, 100, 1)} | "
                             f"{ms([a - b for a, b in zip(accuracy, base)], 100, 1)} |")
    return "\n".join(lines) + "\n"


# ---- driver ----------------------------------------------------------------------------------------------------------


def _cell_in_worker(arguments):
    return run_cell(*arguments)


def read_cells(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _prepare_seed(arguments) -> None:
    """Build a seed's task and auditor pairs before its cells run: two cells of one seed in two workers would
    otherwise both write them."""
    global ROOT
    root, seed, setting = arguments
    ROOT = Path(root)
    nb.quiet_libraries()
    import torch

    torch.set_num_threads(1)
    nb.build_task(ROOT, seed, setting)
    auditor_pairs(seed, setting)


def main(argv=None) -> None:
    (args,) = HfArgumentParser(Arguments).parse_args_into_dataclasses(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cells_file, stopping_file = out / "identification.jsonl", out / "identification_stopping.jsonl"
    results_file = stopping_file if args.dpo_only else cells_file
    if args.task not in TASKS:
        raise SystemExit(f"unknown --task {args.task!r}; the tasks are {list(TASKS)}")
    setting, seeds, rates = (QUICK, [0], [0.4]) if args.quick else (TASKS[args.task], range(args.seeds), args.rates)
    done = read_cells(results_file)
    start = time.perf_counter()
    if not args.report_only:
        seen = {(c.get("task", "first"), c["seed"], c["flip_rate"]) for c in done}
        # Seed by seed, so that an interrupted run has complete, paired seeds.
        todo = [(str(out / "work"), s, r, setting, FOLDS, args.dpo_only) for s in seeds for r in rates
                if (task_name(setting), s, r) not in seen]
        workers = args.workers or nb.cpu_workers()
        context = multiprocessing.get_context("spawn")
        with context.Pool(min(workers, max(1, len(todo)))) as pool:
            pool.map(_prepare_seed, [(str(out / "work"), s, setting) for s in dict.fromkeys(t[1] for t in todo)])
            for cell in pool.imap_unordered(_cell_in_worker, todo):
                done.append(cell)
                with open(results_file, "a") as f:
                    f.write(json.dumps(cell) + "\n")
                print(f"cell seed {cell['seed']} rate {cell['flip_rate']} done", flush=True)
    minutes = (time.perf_counter() - start) / 60 if not args.report_only else None
    command = "python benchmarks/identification.py" + (" --quick" if args.quick else "")
    cells = read_cells(cells_file)
    full = {(c.get("task", "first"), c["seed"], c["flip_rate"]) for c in cells}
    stopping = cells + [r for r in read_cells(stopping_file) if (r.get("task", "first"), r["seed"], r["flip_rate"]) not in full]
    text = report(cells, command, minutes, setting) + "\n" + stopping_report(stopping)
    (out / "identification.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
