"""The built-in demo: DPO vs ROPO, with and without `ropo_filter_ratio: auto`, on the synthetic task with 40% flipped
labels, over a few seeds, on a CPU, offline.

    trl-robust demo [--output_dir DIR] [--flip_rate 0.4] [--seeds 3] [--seed 0] [--epochs 20]
    python -m trl_robust.experiments.demo

Trains each method through the real `RobustDPOTrainer` (same data, initialisation and optimiser), shows progress,
prints a comparison table (mean ± std over seeds; DPO early-stopped and at its last epoch, the robust losses at their
last epoch, each against early-stopped DPO paired by seed, with a sentence saying whether that difference is larger
than its spread) and writes `training_curves.png` to the output directory: clean accuracy as the mean over seeds with
a band, DPO's early-stopping epoch marked, and the auto mode's flip-rate estimate next to the true rate.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from ..optional import require_matplotlib
from .training_runs import Setting, cpu_workers, early_stop_epoch, grid_jobs, run_grid

DEMO_METHODS = ["DPO", "ROPO", "ROPO auto"]
BASELINE = "DPO early-stopped"


@dataclass
class DemoArguments:
    output_dir: str = field(default="trl-robust-demo", metadata={
        "help": "Where the plot (training_curves.png), the curves (results.jsonl) and the cached tasks (work/) go."
    })
    flip_rate: float = field(default=0.4, metadata={"help": "Fraction of training labels flipped at random, in [0, 1)."})
    seeds: int = field(default=3, metadata={"help": "Seeds per method (task, label noise and training), paired."})
    seed: int = field(default=0, metadata={"help": "The first seed; seeds run from it."})
    epochs: int = field(default=20, metadata={"help": "Training epochs over the 1000 noisy pairs."})


def check_arguments(args: DemoArguments) -> None:
    """Refuse bad values at once, before anything is written or trained."""
    if not 0 <= args.flip_rate < 1:
        raise ValueError(f"--flip_rate must be in [0, 1), got {args.flip_rate}")
    if args.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {args.epochs}")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")


def _mean_std(values: list[float]) -> str:
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.1f}"


def compare_with_baseline(paired: list[float]) -> str:
    """A sentence on a paired difference (percentage points, one per seed) against `BASELINE`: whether its mean is at
    least twice its standard error, the rough line between a difference and seed-to-seed noise."""
    n, mean = len(paired), statistics.fmean(paired)
    if n < 2:
        return f"{mean:+.1f} pts on one seed, which cannot tell a difference from noise (use --seeds 3 or more)."
    twice_se = 2 * statistics.stdev(paired) / math.sqrt(n)
    higher = sum(d > 0 for d in paired)
    if mean == 0 or abs(mean) < twice_se:
        return (f"{mean:+.1f} pts, not distinguishable from {BASELINE} over {n} seeds (the mean is smaller than 2 "
                f"standard errors, {twice_se:.1f} pts; higher in {higher} of {n} seeds).")
    return (f"{mean:+.1f} pts, {'higher' if mean > 0 else 'lower'} than {BASELINE} over {n} seeds (the mean is at "
            f"least 2 standard errors, {twice_se:.1f} pts; higher in {higher} of {n} seeds).")


def comparison_table(results: list[dict], flip_rate: float, methods=DEMO_METHODS) -> str:
    """The demo's table and its reading, from the runs' records (`run_job`'s keys: method, seed, clean_accuracy,
    noisy_val_accuracy, estimated_flip_rate). Rows: DPO stopped early on the noisy validation split (what one can do
    without clean labels), then every method at its last epoch; each row after the first against it, paired by seed."""
    by_method = {m: sorted((r for r in results if r["method"] == m), key=lambda r: r["seed"]) for m in methods}
    stopped = {r["seed"]: 100 * r["clean_accuracy"][early_stop_epoch(r)] for r in by_method["DPO"]}
    rows = [
        "| method, read at | clean accuracy | − DPO early-stopped (paired) | estimated flip rate, last epoch |",
        "|---|---|---|---|",
        f"| DPO, early-stopped | {_mean_std(list(stopped.values()))}% | – | – |",
    ]
    sentences = []
    for method in methods:
        runs = by_method[method]
        last = [100 * r["clean_accuracy"][-1] for r in runs]
        paired = [100 * r["clean_accuracy"][-1] - stopped[r["seed"]] for r in runs]
        estimates = [r["estimated_flip_rate"][-1] for r in runs if r["estimated_flip_rate"][-1] is not None]
        estimate = f"{statistics.fmean(estimates):.0%} (true {flip_rate:.0%})" if estimates else "–"
        sign = "+" if statistics.fmean(paired) >= 0 else ""
        rows.append(f"| {method}, last epoch | {_mean_std(last)}% | {sign}{_mean_std(paired)} pts | {estimate} |")
        sentences.append(f"- {method} at its last epoch: {compare_with_baseline(paired)}")
    return "\n".join(rows + ["", f"Against {BASELINE}, paired by seed:", *sentences])


def run_demo(args: DemoArguments) -> str:
    """Run the demo; return the printed table. Raises ImportError at once where matplotlib (the plot) is missing."""
    check_arguments(args)
    require_matplotlib("trl-robust demo (its plot, training_curves.png)", extra="demo")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    setting = replace(Setting(epochs=args.epochs), reward_gain_every_epoch=False)
    seeds = list(range(args.seed, args.seed + args.seeds))
    jobs = grid_jobs(DEMO_METHODS, [args.flip_rate], seeds, setting)
    workers = cpu_workers()
    print(f"Training {', '.join(DEMO_METHODS)} on the synthetic task with {args.flip_rate:.0%} of the labels flipped, "
          f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} × {args.epochs} epochs: first a task per seed (a "
          f"reference policy and {setting.n_train} training pairs, cached in {out / 'work'}), then {len(jobs)} "
          f"training runs, {workers} at a time.", flush=True)
    start = time.perf_counter()
    results = run_grid(jobs, out / "work", workers=workers, results_file=None)
    results.sort(key=lambda r: (DEMO_METHODS.index(r["method"]), r["seed"]))
    # The raw curves, one run a line, for a reader who wants other numbers than the table's (this run's, not appended)
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    spread = (f"mean over {len(seeds)} seeds ({seeds[0]}–{seeds[-1]}), band = lowest to highest seed"
              if len(seeds) > 1 else f"one seed ({args.seed}): single-run wiggles are noise")
    title = f"Synthetic task, {args.flip_rate:.0%} of the training labels flipped — {spread}"
    plot_training_curves(results, out / "training_curves.png", title=title)
    table = comparison_table(results, args.flip_rate)
    print(table)
    print(
        f"\n{len(results)} runs in {(time.perf_counter() - start) / 60:.1f} min; mean ± std over seeds. "
        "'Early-stopped' = the epoch with the best accuracy on a *noisy* validation split (what you can do without "
        "clean labels); the other rows are read at their last epoch, not stopped early. 'ROPO auto' = `loss_type: "
        "ropo` with `ropo_filter_ratio: auto`, which estimates the flip rate each epoch and distrusts that share. The "
        "same seeds give the same numbers on one machine and other ones on another (floating-point kernels differ): "
        "read the paired differences and their spread, not one run's ranking.\n"
        f"Plot: {out / 'training_curves.png'}; each run's curves: {out / 'results.jsonl'}"
    )
    return table


def plot_training_curves(results: list[dict], path, title: str | None = None) -> None:
    """The demo's plot: clean accuracy over epochs per method — the mean over seeds with a band from the lowest to the
    highest seed (a plain line for one seed) — with the epoch at which DPO would be early-stopped on the noisy
    validation split marked (the median over seeds); and, where a method estimated the flip rate
    (`ropo_filter_ratio: auto`), that estimate over epochs next to the true rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    methods = list(dict.fromkeys(r["method"] for r in results))
    estimating = [m for m in methods if any(e is not None for r in results if r["method"] == m
                                            for e in r.get("estimated_flip_rate", []))]
    fig, axes = plt.subplots(1, 1 + bool(estimating), figsize=(5.5 * (1 + bool(estimating)), 4.4), squeeze=False)
    axes = axes[0]

    def band(ax, curves, label, scale=1.0, **style):
        length = min(map(len, curves))
        columns = [[scale * c[i] for c in curves if c[i] is not None] for i in range(length)]
        epochs = [i + 1 for i, column in enumerate(columns) if column]
        columns = [column for column in columns if column]
        (line,) = ax.plot(epochs, [statistics.fmean(column) for column in columns], marker=".", label=label, **style)
        if len(curves) > 1:
            ax.fill_between(epochs, [min(c) for c in columns], [max(c) for c in columns], color=line.get_color(),
                            alpha=0.2, linewidth=0)

    for method in methods:
        runs = [r for r in results if r["method"] == method]
        band(axes[0], [r["clean_accuracy"] for r in runs], method, scale=100)
    dpo = [r for r in results if r["method"] == "DPO"]
    if dpo:
        stop = statistics.median_low([early_stop_epoch(r) + 1 for r in dpo])
        which = " (median over seeds)" if len(dpo) > 1 else ""
        axes[0].axvline(stop, color="0.4", linestyle="--", linewidth=1, label=f"DPO early-stopped: epoch {stop}{which}")
    axes[0].set_ylabel("clean held-out preference accuracy (%)")
    if estimating:
        ax = axes[1]
        for method in estimating:
            band(ax, [r["estimated_flip_rate"] for r in results if r["method"] == method], f"{method}: estimated")
        for rate in sorted({r["flip_rate"] for r in results}):
            ax.axhline(rate, color="0.2", linestyle=":", linewidth=1.2, label=f"true flip rate {rate:.0%}")
        ax.set_ylabel("flip rate (estimated at each epoch's start)")
        ax.set_ylim(bottom=0)
        ax.set_xlim(axes[0].get_xlim())
        ax.legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Plain argparse over DemoArguments' fields, not transformers' HfArgumentParser: importing transformers takes
    # seconds, and the demo's first line (what it is about to do) should come at once.
    parser = argparse.ArgumentParser(prog="trl-robust demo", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for option in fields(DemoArguments):
        parser.add_argument(f"--{option.name}", type=option.type, default=option.default, help=option.metadata["help"])
    args = DemoArguments(**vars(parser.parse_args(argv)))
    # A message, not a traceback: the fix is a flag (exit 2, as argparse's own errors) or one install (exit 1).
    try:
        check_arguments(args)
    except ValueError as bad:
        parser.exit(2, f"{parser.prog}: error: {bad}\n")
    try:
        require_matplotlib("trl-robust demo (its plot, training_curves.png)", extra="demo")
    except ImportError as missing:
        parser.exit(1, f"{parser.prog}: error: {missing}\n")
    run_demo(args)


if __name__ == "__main__":
    sys.exit(main())
