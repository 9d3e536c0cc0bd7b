"""Does `trl_robust.noise.estimate_noise` recover the true flip rate ε from margins produced *during* DPO/ROPO training?

Issue 12, step 1 ("choose by measurement"). On the benchmark's synthetic task (`trl_robust.experiments.training_runs`,
its default `Setting` unless told otherwise) each run trains DPO or ROPO on a noisy copy of the training split and, per
epoch, feeds two signals to both estimators (`symmetric_mixture`, `calibrated_em`):

- (a) "free": each training pair's margin z = β·Δ as computed in the training step that sees it (before that step's
  update), collected over the epoch — costs nothing extra in training;
- (b) "scored": a scoring pass over the training set after the epoch (= at the start of the next one), through TRL's
  evaluation loop (`RobustDPOTrainer._score_training_set`, what ROPO's epoch filter does);
- (c) "heldout", a control: the same scoring pass over the benchmark's *noisy validation split* (200 pairs flipped at
  the same rate and mode, never trained on), so memorisation cannot hide its flips;
- and once per run, "unseen": the free margins of the pairs met in the second half of epoch 1 — the model has trained
  half an epoch but not yet on these pairs, so they are out of sample.

Per epoch it records ε̂ and its 90% bootstrap interval per signal × estimator, the AUROC of −z for the truly flipped
pairs, how well the posterior flags the flipped pairs (P(flipped | z) > 1/2: count, precision, recall), and the time
of the training epoch, of the scoring pass and of the estimators. Clean held-out accuracy per epoch is kept for context.

How the margins are recorded, without touching the library: a subclass of `RobustDPOTrainer` overrides
`_registered_per_sequence_loss` and passes the row-index column (`data.ROW_COLUMN`) through TRL's collator with
`_pass_through_column`, as the epoch filter does. Raw per-pair margins go to `<root>/margins/*.npz`. That hook only runs for *registered* loss types, so DPO is trained as
the registered loss `dpo_recorded`, ℓ(z) = −log σ(z): TRL's `sigmoid` loss at label_smoothing 0, same margin
expression, same gradient.

    python benchmarks/noise_estimate_training.py --smoke                      # one run, to time the pipeline
    python benchmarks/noise_estimate_training.py                              # the grid (2 losses × 4 cells × 3 seeds)
    python benchmarks/noise_estimate_training.py --report-only                # rewrite the markdown from the jsonl

Over 400 lines on purpose: one finished experiment (its recording trainer, the run, the estimators, the report), read
top to bottom beside its results; nothing in it is shared with the other scripts.
"""

import argparse
import json
import math
import multiprocessing
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS_JSONL = HERE / "results" / "noise_estimate_training.jsonl"
RESULTS_MD = HERE / "results" / "noise_estimate_training.md"
WORK_ROOT = Path("/tmp/trl_robust_noise_estimate_training")  # tasks (reference policy + pairs) and run dirs

LOSSES = {"DPO": "dpo_recorded", "ROPO": "ropo"}
CELLS = [("symmetric", 0.0), ("symmetric", 0.2), ("symmetric", 0.4), ("prefer_longer", 0.2)]
ESTIMATOR_NAMES = ("symmetric_mixture", "calibrated_em")
SIGNALS = ("free", "scored", "heldout")
N_BOOTSTRAP = 100
TOLERANCE = 0.05  # |ε̂ − ε| counted as "good"


# --- metrics ---------------------------------------------------------------------------------------------------------


def auroc(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """P(score of a random positive > score of a random negative), ties counted half (Mann–Whitney)."""
    positives = positives.astype(bool)
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size)
    sorted_scores = scores[order]
    # average ranks over ties
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [scores.size]])
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def estimates_for(z: np.ndarray, flipped: np.ndarray, n_bootstrap: int) -> tuple[dict, float]:
    """Both estimators on margins `z` (rows in order), with the posterior's flagging quality; and their total time."""
    from trl_robust.noise import estimate_noise

    out = {"n": int(z.size), "auroc": auroc(-z, flipped), "negative_frac": float((z < 0).mean()), "z_median": float(np.median(z))}
    start = time.perf_counter()
    for method in ESTIMATOR_NAMES:
        t0 = time.perf_counter()
        try:
            est = estimate_noise(z, method, n_bootstrap=n_bootstrap, seed=0)
        except ValueError as error:  # e.g. all margins equal
            out[method] = {"error": str(error)[:200]}
            continue
        flagged = est.p_flipped > 0.5
        n_flagged = int(flagged.sum())
        out[method] = {
            "eps": est.flip_rate,
            "low": est.interval[0],
            "high": est.interval[1],
            "n_flagged": n_flagged,
            "precision": float((flagged & flipped).sum() / n_flagged) if n_flagged else None,
            "recall": float((flagged & flipped).sum() / flipped.sum()) if flipped.sum() else None,
            "seconds": time.perf_counter() - t0,
        }
    return out, time.perf_counter() - start


# --- one run ---------------------------------------------------------------------------------------------------------


def register_dpo_recorded() -> None:
    import torch.nn.functional as F

    from trl_robust import register_loss
    from trl_robust.registry import get_loss_spec

    if get_loss_spec("dpo_recorded") is None:
        # TRL's `sigmoid` at label_smoothing 0, as a registered loss so that the margin hook sees it.
        register_loss("dpo_recorded", lambda z: F.softplus(-z))


def run_one(loss: str, noise: str, flip_rate: float, seed: int, epochs: int, root: str, n_bootstrap: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback

    from trl_robust import RobustDPOTrainer
    from trl_robust.data import FLIP_COLUMN, ROW_COLUMN, flip_preferences
    from trl_robust.experiments.training_runs import (
        Job, Setting, build_task, noisy_train_split, task_dir, training_config,
    )

    torch.set_num_threads(1)
    register_dpo_recorded()
    root = Path(root)
    setting = replace(Setting(), epochs=epochs)
    build_task(root, seed, setting)
    job = Job(loss, noise, flip_rate, seed, setting)
    train = noisy_train_split(root, job)
    flipped = np.asarray(train[FLIP_COLUMN], dtype=bool)
    train = train.remove_columns(FLIP_COLUMN).add_column(ROW_COLUMN, np.arange(len(train), dtype=np.int64))
    data = json.loads((task_dir(root, seed) / "pairs.json").read_text())
    test = Dataset.from_list(data["test"])
    validation = flip_preferences(Dataset.from_list(data["validation"]), flip_rate, seed=seed + 1000, mode=noise)
    val_flipped = np.asarray(validation[FLIP_COLUMN], dtype=bool)
    validation = validation.remove_columns(FLIP_COLUMN).add_column(
        ROW_COLUMN, np.arange(len(validation), dtype=np.int64))
    raw = {}

    class RecordingTrainer(RobustDPOTrainer):
        """Records each training pair's margin in the step that sees it (before that step's update)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._pass_through_column(ROW_COLUMN, torch.long)
            self.free_records = []

        def _registered_per_sequence_loss(self, loss_type, chosen_scores, rejected_scores, ref_chosen_logps,
                                          ref_rejected_logps, mode):
            if self._row_margins is None and mode == "train" and ROW_COLUMN in self._batch_columns:
                z = (self.beta * (chosen_scores - rejected_scores)).detach().float().cpu()
                self.free_records.append((self._batch_columns[ROW_COLUMN].cpu(), z, self.state.global_step))
            return super()._registered_per_sequence_loss(
                loss_type, chosen_scores, rejected_scores, ref_chosen_logps, ref_rejected_logps, mode
            )

    epochs_out = []

    class Probe(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            trainer.free_records = []
            self.t0 = time.perf_counter()

        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            train_seconds = time.perf_counter() - self.t0
            n = len(flipped)
            free = np.full(n, np.nan)
            step = np.full(n, -1)
            for rows, z, global_step in trainer.free_records:
                free[rows.numpy()] = z.numpy()
                step[rows.numpy()] = global_step
            t0 = time.perf_counter()
            scored_map = trainer._score_training_set()
            score_seconds = time.perf_counter() - t0
            heldout_map = score_dataset(trainer, trainer.eval_dataset["noisy_val"])
            model.train()
            scored = np.array([scored_map[i] for i in range(n)])
            heldout = np.array([heldout_map[i] for i in range(len(val_flipped))])
            record = {"epoch": len(epochs_out) + 1, "train_seconds": train_seconds, "score_seconds": score_seconds,
                      "free_missing": int(np.isnan(free).sum())}
            for name, z, truth in (("free", free, flipped), ("scored", scored, flipped), ("heldout", heldout, val_flipped)):
                ok = ~np.isnan(z)
                record[name], record[f"{name}_estimator_seconds"] = estimates_for(z[ok], truth[ok], n_bootstrap)
            if not epochs_out:  # epoch 1: the pairs met in its second half, not yet trained on
                late = (step >= (step.min() + step.max() + 1) / 2) & ~np.isnan(free)
                record["unseen"], _ = estimates_for(free[late], flipped[late], n_bootstrap)
                record["unseen"]["n"] = int(late.sum())
            raw[record["epoch"]] = dict(free=free, step=step, scored=scored, heldout=heldout)
            epochs_out.append(record)
            print(f"[{loss} {noise} {flip_rate} s{seed}] epoch {record['epoch']}: train {train_seconds:.1f}s, "
                  f"score {score_seconds:.1f}s, est {record['free_estimator_seconds'] + record['scored_estimator_seconds']:.1f}s; "
                  + "; ".join(f"{s} " + " ".join(f"{m[:3]} {record[s][m].get('eps', float('nan')):.3f}"
                                                 for m in ESTIMATOR_NAMES) + f" auc {record[s]['auroc']}"
                              for s in SIGNALS), flush=True)

    args = training_config(setting, root / "runs" / f"{loss}-{noise}-{flip_rate}-{seed}", LOSSES[loss], seed)
    trainer = RecordingTrainer(
        model=str(task_dir(root, seed) / "reference"),
        args=args,
        train_dataset=train,
        eval_dataset={"clean": test, "noisy_val": validation},
        callbacks=[Probe()],
    )
    trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    trainer.train()
    history = trainer.state.log_history
    margins_dir = root / "margins"
    margins_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        margins_dir / f"{loss}-{noise}-{flip_rate}-{seed}.npz", flipped=flipped, val_flipped=val_flipped,
        **{f"{key}_e{epoch}": value for epoch, entry in raw.items() for key, value in entry.items()},
    )
    return {
        "loss": loss, "noise": noise, "flip_rate": flip_rate, "seed": seed, "epochs": epochs,
        "n_train": len(flipped), "n_flipped": int(flipped.sum()), "n_bootstrap": n_bootstrap,
        "clean_accuracy": [e["eval_rewards/accuracies"] for e in history if "eval_clean_loss" in e],
        "per_epoch": epochs_out,
        "seconds": time.perf_counter() - start,
    }


def score_dataset(trainer, dataset) -> dict[int, float]:
    """`RobustDPOTrainer._score_training_set`, for another (tokenised, row-indexed) dataset: z by row."""
    from collections import defaultdict

    import torch

    saved_metrics = trainer._metrics["eval"]
    trainer._metrics["eval"] = defaultdict(list)
    trainer._row_margins = []
    device = trainer.accelerator.device
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            trainer.evaluation_loop(trainer.get_eval_dataloader(dataset), description="scoring held-out pairs",
                                    prediction_loss_only=True, metric_key_prefix="heldout_score")
        records = trainer._row_margins
    finally:
        trainer._row_margins = None
        trainer._metrics["eval"] = saved_metrics
    margins = {}
    for rows, z in records:
        margins.update(zip(rows.tolist(), z.tolist()))
    return margins


def _run_star(arguments):
    return run_one(*arguments)


# --- report ----------------------------------------------------------------------------------------------------------


def cell_name(noise: str, rate: float) -> str:
    return f"{rate:.0%}" + ("" if noise == "symmetric" else " longer")


def _mean(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.fmean(values) if values else float("nan")


def report(results: list[dict], command: str, minutes: float) -> str:
    from trl_robust.experiments.training_runs import Setting

    setting = Setting()
    epochs = max(r["epochs"] for r in results)
    seeds = sorted({r["seed"] for r in results})
    cells = [c for c in CELLS if any((r["noise"], r["flip_rate"]) == c for r in results)]
    losses = [l for l in LOSSES if any(r["loss"] == l for r in results)]
    groups = {}
    for r in results:
        groups.setdefault((r["loss"], r["noise"], r["flip_rate"]), []).append(r)

    def per_epoch(group, epoch, signal, method, key):
        values = []
        for r in group:
            if epoch - 1 < len(r["per_epoch"]):
                entry = r["per_epoch"][epoch - 1][signal]
                values.append(entry[method].get(key) if method else entry.get(key))
        return values

    lines = [
        "# Flip-rate estimation from margins produced during training",
        f"`{command}` — {len(results)} runs in {minutes:.1f} min (1 worker, 1 thread; the machine shared with other "
        f"jobs, so times are indicative). Synthetic task of `trl_robust.experiments.training_runs` "
        f"(default `Setting`: {setting.n_train} training pairs, β {setting.beta}, AdamW lr {setting.learning_rate} "
        f"constant, batch {setting.batch_size}), {epochs} epochs, seeds {seeds}. DPO is TRL's sigmoid loss (run as "
        "the registered `dpo_recorded`, −log σ(z), so the margin hook sees it); ROPO at its default α 14, no filter.",
        "",
        "Signals, per epoch e: **free** = each pair's z in the training step that saw it during epoch e (before "
        "that step's update); **scored** = a scoring pass over the training set after epoch e (= at the start of "
        "epoch e+1, what ROPO's epoch filter sees); **heldout** (a control, not an option the brief asked about) = "
        "the same scoring pass over the benchmark's noisy validation split (200 pairs, flipped at the same rate and "
        "mode, never trained on); **unseen** (once per run) = epoch 1's free margins of the pairs met in its second "
        "half. Both estimators with 100 bootstrap resamples, 90% intervals. "
        f"Means over seeds; ε̂ is good when within ±{TOLERANCE} of the true ε.",
    ]

    # 0. compact summary: early vs late
    early, late = [e for e in (2, 3, 4) if e <= epochs], list(range(max(1, epochs - 4), epochs + 1))
    lines += ["", f"## Summary: ε̂ early (mean of epochs {early[0]}–{early[-1]}) → late (epochs {late[0]}–{late[-1]}), "
              "mean over seeds", "",
              "| loss | true ε | free sm | free cem | scored sm | scored cem | heldout sm | heldout cem | AUROC scored e2→last |",
              "|---" * 9 + "|"]
    for loss in losses:
        for cell in cells:
            group = groups.get((loss, *cell))
            if not group:
                continue
            parts = []
            for signal in SIGNALS:
                for method in ESTIMATOR_NAMES:
                    a = _mean([v for e in early for v in per_epoch(group, e, signal, method, "eps")])
                    b = _mean([v for e in late for v in per_epoch(group, e, signal, method, "eps")])
                    parts.append(f"{a:.2f} → {b:.2f}")
            auc = (f"{_mean(per_epoch(group, 2, 'scored', None, 'auroc')):.2f} → "
                   f"{_mean(per_epoch(group, epochs, 'scored', None, 'auroc')):.2f}")
            lines.append(f"| {loss} | {cell_name(*cell)} | " + " | ".join(parts) + f" | {auc} |")

    # 1. ε̂ over epochs, per cell
    show_epochs = sorted({1, 2, 3, 4, 5, 6, 8, 10, 12, 15, epochs} & set(range(1, epochs + 1)))
    lines += ["", "## ε̂ by epoch (mean over seeds; `sm` symmetric_mixture, `cem` calibrated_em)", ""]
    header = "| loss | true ε | signal | estimator | " + " | ".join(f"e{e}" for e in show_epochs) + " |"
    lines += [header, "|---" * (4 + len(show_epochs)) + "|"]
    for loss in losses:
        for cell in cells:
            group = groups.get((loss, *cell))
            if not group:
                continue
            for signal in SIGNALS:
                for method, short in zip(ESTIMATOR_NAMES, ("sm", "cem")):
                    row = [f"{_mean(per_epoch(group, e, signal, method, 'eps')):.3f}" for e in show_epochs]
                    lines.append(f"| {loss} | {cell_name(*cell)} | {signal} | {short} | " + " | ".join(row) + " |")

    # 2. first epoch good / share of epochs good / coverage
    lines += ["", "## When is ε̂ good? (per seed, then summarised)", "",
              f"`good`: epochs (of {epochs}) with |ε̂ − ε| ≤ {TOLERANCE}, mean over seeds; `first`: first such epoch "
              "per seed; `cover`: share of (seed, epoch) whose 90% interval contains ε; `ε̂ e≥3`: mean ε̂ over epochs "
              "≥ 3 (range over seeds of that per-seed mean); `ε̂ last`: at the last epoch.", "",
              "| loss | true ε | signal | estimator | good | first | cover | ε̂ e≥3 | ε̂ last |", "|---" * 9 + "|"]
    for loss in losses:
        for cell in cells:
            group = groups.get((loss, *cell))
            if not group:
                continue
            truth = cell[1]
            for signal in SIGNALS:
                for method, short in zip(ESTIMATOR_NAMES, ("sm", "cem")):
                    goods, firsts, covers, lates, lasts = [], [], [], [], []
                    for r in group:
                        eps = [p[signal][method].get("eps") for p in r["per_epoch"]]
                        good = [e is not None and abs(e - truth) <= TOLERANCE for e in eps]
                        goods.append(sum(good))
                        firsts.append(str(good.index(True) + 1) if any(good) else "–")
                        for p in r["per_epoch"]:
                            entry = p[signal][method]
                            if "low" in entry:
                                covers.append(entry["low"] <= truth <= entry["high"])
                        late = [e for e in eps[2:] if e is not None]
                        lates.append(statistics.fmean(late) if late else float("nan"))
                        lasts.append(eps[-1])
                    lines.append(
                        f"| {loss} | {cell_name(*cell)} | {signal} | {short} | {statistics.fmean(goods):.1f} | "
                        f"{','.join(firsts)} | {statistics.fmean(covers):.2f} | {statistics.fmean(lates):.3f} "
                        f"({min(lates):.3f}–{max(lates):.3f}) | {_mean(lasts):.3f} |"
                    )

    # 3. AUROC and posterior flags
    lines += ["", "## AUROC of −z for the truly flipped pairs, and the posterior's flags (symmetric_mixture)", "",
              "`flag`: pairs with P(flipped | z) > 1/2, as a share of the training set; `prec`/`rec`: their precision "
              "and recall against the truly flipped pairs. Epochs 2, 5, last.", ""]
    picks = [e for e in (2, 5, epochs) if e <= epochs]
    header = "| loss | true ε | signal | " + " | ".join(f"AUROC e{e}" for e in picks) + " | " + " | ".join(
        f"flag/prec/rec e{e}" for e in picks) + " |"
    lines += [header, "|---" * (3 + 2 * len(picks)) + "|"]
    for loss in losses:
        for cell in cells:
            group = groups.get((loss, *cell))
            if not group:
                continue
            for signal in SIGNALS:
                aucs = [f"{_mean(per_epoch(group, e, signal, None, 'auroc')):.3f}" for e in picks]
                flags = []
                for e in picks:
                    share = _mean(per_epoch(group, e, signal, "symmetric_mixture", "n_flagged")) / _mean(
                        per_epoch(group, e, signal, None, "n"))
                    prec = _mean(per_epoch(group, e, signal, "symmetric_mixture", "precision"))
                    rec = _mean(per_epoch(group, e, signal, "symmetric_mixture", "recall"))
                    flags.append(f"{share:.2f}/{prec:.2f}/{rec:.2f}")
                lines.append(f"| {loss} | {cell_name(*cell)} | {signal} | " + " | ".join(aucs) + " | "
                             + " | ".join(flags) + " |")

    # 3b. the out-of-sample share of epoch 1's free margins
    lines += ["", "## \"unseen\": epoch 1's free margins of the pairs met in its second half (not yet trained on)", "",
              "ε̂ mean (min–max over seeds), AUROC of −z; about half the training pairs.", "",
              "| loss | true ε | sm | cem | AUROC |", "|---|---|---|---|---|"]
    for loss in losses:
        for cell in cells:
            group = groups.get((loss, *cell))
            if not group or "unseen" not in group[0]["per_epoch"][0]:
                continue
            parts = []
            for method in ESTIMATOR_NAMES:
                eps = [r["per_epoch"][0]["unseen"][method].get("eps") for r in group]
                eps = [e for e in eps if e is not None]
                parts.append(f"{statistics.fmean(eps):.3f} ({min(eps):.3f}–{max(eps):.3f})" if eps else "–")
            auc = _mean([r["per_epoch"][0]["unseen"]["auroc"] for r in group])
            lines.append(f"| {loss} | {cell_name(*cell)} | " + " | ".join(parts) + f" | {auc:.3f} |")

    # 4. clean accuracy (context)
    lines += ["", "## Clean held-out accuracy (%) by epoch, for context", "",
              "| loss | true ε | " + " | ".join(f"e{e}" for e in show_epochs) + " |", "|---" * (2 + len(show_epochs)) + "|"]
    for loss in losses:
        for cell in cells:
            group = groups.get((loss, *cell))
            if group:
                row = [f"{100 * _mean([r['clean_accuracy'][e - 1] for r in group if e - 1 < len(r['clean_accuracy'])]):.1f}"
                       for e in show_epochs]
                lines.append(f"| {loss} | {cell_name(*cell)} | " + " | ".join(row) + " |")

    # 5. cost
    every = [p for r in results for p in r["per_epoch"]]
    train_s = statistics.fmean(p["train_seconds"] for p in every)
    score_s = statistics.fmean(p["score_seconds"] for p in every)
    sm = statistics.fmean(p[s]["symmetric_mixture"].get("seconds", 0) for p in every for s in ("free", "scored"))
    cem = statistics.fmean(p[s]["calibrated_em"].get("seconds", 0) for p in every for s in ("free", "scored"))
    lines += ["", "## Cost, per epoch (mean over all runs and epochs)", "",
              "| training epoch | scoring pass | symmetric_mixture (100 bootstraps) | calibrated_em (100 bootstraps) |",
              "|---|---|---|---|",
              f"| {train_s:.2f} s (1.00) | {score_s:.2f} s ({score_s / train_s:.2f}) | {sm:.3f} s ({sm / train_s:.3f}) | "
              f"{cem:.4f} s ({cem / train_s:.4f}) |", "",
              f"({len(every)} epochs; the estimators' time is per signal, on {results[0]['n_train']} margins; the "
              "training epoch is the time between `on_epoch_begin` and `on_epoch_end`, without the evaluation.)"]
    return "\n".join(lines) + "\n"


# --- main ------------------------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="default: the benchmark Setting's")
    parser.add_argument("--losses", nargs="+", default=list(LOSSES))
    parser.add_argument("--cells", nargs="+", default=[f"{n}:{r}" for n, r in CELLS],
                        help="noise:rate, e.g. symmetric:0.2 prefer_longer:0.2")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--n-bootstrap", type=int, default=N_BOOTSTRAP)
    parser.add_argument("--root", default=str(WORK_ROOT))
    parser.add_argument("--out", default=str(RESULTS_JSONL))
    parser.add_argument("--report", default=str(RESULTS_MD))
    parser.add_argument("--smoke", action="store_true", help="one run (ROPO, 20%% symmetric, seed 0) to time it")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from trl_robust.experiments.training_runs import Setting

    epochs = args.epochs or Setting().epochs
    command = " ".join(["python benchmarks/noise_estimate_training.py",
                        *(a for a in os.sys.argv[1:] if a != "--report-only")])
    out = Path(args.out)
    if args.report_only:
        results = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
        write_report(args.report, report(results, command, sum(r["seconds"] for r in results) / 60))
        return
    cells = [(c.split(":")[0], float(c.split(":")[1])) for c in args.cells]
    if args.smoke:
        jobs = [("ROPO", "symmetric", 0.2, 0, epochs, args.root, args.n_bootstrap)]
    else:
        jobs = [(loss, noise, rate, seed, epochs, args.root, args.n_bootstrap)
                for seed in range(args.seeds) for noise, rate in cells for loss in args.losses]
    done = set()
    if out.exists():  # resume: skip the runs already in the results file
        for line in out.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done.add((r["loss"], r["noise"], r["flip_rate"], r["seed"], r["epochs"]))
    jobs = [j for j in jobs if j[:5] not in done]
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.workers == 1:
        iterator = map(_run_star, jobs)
    else:
        pool = multiprocessing.get_context("spawn").Pool(args.workers)
        iterator = pool.imap_unordered(_run_star, jobs)
    for result in iterator:
        with open(out, "a") as f:
            f.write(json.dumps(result) + "\n")
        print(f"done {result['loss']} {result['noise']} {result['flip_rate']} seed {result['seed']} in "
              f"{result['seconds']:.0f}s ({(time.perf_counter() - start) / 60:.1f} min so far)", flush=True)
    results = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    write_report(args.report, report(results, command, (time.perf_counter() - start) / 60))


FINDINGS_START, FINDINGS_END = "<!-- findings -->", "<!-- /findings -->"


def write_report(path, text: str) -> None:
    """Write the generated report, keeping a hand-written findings block (between the markers) if the file has one."""
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    if FINDINGS_START in old and FINDINGS_END in old:
        block = old[old.index(FINDINGS_START): old.index(FINDINGS_END) + len(FINDINGS_END)]
        title, _, rest = text.partition("\n")
        text = f"{title}\n\n{block}\n\n{rest.lstrip()}"
    path.write_text(text)


if __name__ == "__main__":
    main()
