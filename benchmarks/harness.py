"""The noise-robustness benchmarks' harness (not installed: the benchmark scripts beside it import it): the audits of
the final policies and the audit-clean retrain, the summaries, tables, plots and reports.

The training runs themselves (the synthetic task, `Setting`, `Job`, `METHODS`, `run_job`, `run_grid`, ...) are
`trl_robust.experiments.training_runs`, which the demo uses too; they are re-exported here so a script reads
`harness.Setting`, `harness.run_grid`, ... The scripts run as `python benchmarks/<script>.py`, which puts this folder
on `sys.path` (and spawned workers inherit it), hence `import harness`.
"""

import json
import math
import os
import statistics
from dataclasses import replace
from pathlib import Path

from trl_robust.experiments.training_runs import (  # noqa: F401  re-exported for the scripts
    AUDIT_RETRAIN,
    FILTER,
    FOURTH_TASK,
    METHODS,
    ORACLE,
    SECOND_TASK,
    THIRD_TASK,
    WARMUP_EPOCHS,
    Job,
    Setting,
    build_task,
    cpu_workers,
    early_stop_epoch,
    grid_jobs,
    noisy_train_split,
    quiet_libraries,
    run_dir,
    run_grid,
    run_job,
    summarise,
    task_dir,
    training_config,
)

AUDITED = ("DPO", "ROPO")  # policies whose final models are audited (AUROC), ROPO's also for the retrain
AUDIT_DROP_SHARE = 0.2  # the share of the most suspicious pairs left out: ρ of the filter, not the true flip rate


def audit_job(job: Job, root) -> dict:
    """Audit `job`'s noisy training split with its saved final model (`trl_robust.audit`): AUROC, top suspects."""
    import torch

    from trl_robust.audit import audit_preferences
    from trl_robust.filter.rules import n_suspected

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))  # runs alone, between the two grids
    result = audit_preferences(
        str(run_dir(root, job)),
        noisy_train_split(root, job),
        ref_model=str(task_dir(root, job.seed, job.setting) / "reference"),
        beta=job.setting.beta,
        batch_size=100,
        use_cpu=True,
        show_progress=False,
    )
    k = n_suspected(AUDIT_DROP_SHARE, len(result.pairs))
    flipped = sum(bool(pair["label_flipped"]) for pair in result.pairs[:k])
    return {"audit_auroc": result.auroc, "audit_precision_top": flipped / k if k else None,
            "suspects": result.most_suspicious(k)}


def run_with_audit_retrain(jobs: list[Job], root, workers: int = 2, results_file=None, progress=True) -> list[dict]:
    """`run_grid(jobs)`, then audit the final DPO and ROPO policies and retrain DPO without the ROPO audit's suspects.

    The audited runs get `audit_auroc` and `audit_precision_top` in their results; the retrained runs are the method
    `AUDIT_RETRAIN`. `results_file` is rewritten at the end with every result.
    """
    jobs = [replace(j, save=True) if j.method in AUDITED and j.noise == "symmetric" else j for j in jobs]
    saved = {(j.method, j.noise, j.flip_rate, j.seed): j for j in jobs if j.save}
    results = run_grid(jobs, root, workers=workers, results_file=results_file, progress=progress)
    retrain = []
    for result in results:
        job = saved.get((result["method"], result["noise"], result["flip_rate"], result["seed"]))
        if job is None:
            continue
        audit = audit_job(job, root)
        suspects = audit.pop("suspects")
        result.update(audit)
        if job.method == "ROPO":
            retrain.append(replace(job, method=AUDIT_RETRAIN, drop_rows=tuple(sorted(suspects))))
    results += run_grid(retrain, root, workers=workers, results_file=results_file, progress=progress)
    if results_file is not None:
        Path(results_file).write_text("".join(json.dumps(r) + "\n" for r in results))
    return results



def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(results: list[dict]) -> dict:
    """(noise, flip_rate, method) -> metric -> (mean, std over seeds)."""
    groups: dict = {}
    for result in results:
        groups.setdefault((result["noise"], result["flip_rate"], result["method"]), []).append(summarise(result))
    return {
        key: {metric: mean_std([s[metric] for s in summaries]) for metric in summaries[0]}
        for key, summaries in groups.items()
    }


def markdown_table(results: list[dict], metric: str, scale: float = 100.0, digits: int = 1) -> str:
    """Methods as rows, noise settings as columns, `mean ± std` over seeds (× `scale`)."""
    table = aggregate(results)
    columns = sorted({(k[0], k[1]) for k in table}, key=lambda c: (c[0] != "symmetric", c[0], c[1]))
    methods = [m for m in METHODS if any(k[2] == m for k in table)]
    header = "| method | " + " | ".join(
        f"{int(rate * 100)}%" + ("" if noise == "symmetric" else f" {noise}") for noise, rate in columns
    )
    lines = [header + " |", "|---" * (len(columns) + 1) + "|"]
    for method in methods:
        cells = []
        for noise, rate in columns:
            cell = table.get((noise, rate, method))
            cells.append("–" if cell is None else f"{cell[metric][0] * scale:.{digits}f} ± {cell[metric][1] * scale:.{digits}f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _method_style(method: str) -> dict:
    """One colour per method (METHODS order, 20 colours) and a line style per family: loss only, filter, retrain."""
    import matplotlib

    colour = matplotlib.colormaps["tab20"](list(METHODS).index(method) % 20)
    dashes = "--" if "filter" in method else ":" if method == AUDIT_RETRAIN else "-"
    return {"color": colour, "linestyle": dashes}


def plot(results: list[dict], path) -> None:
    """Metric vs flip rate (one line per method), and clean accuracy over training at the highest flip rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = aggregate(results)
    symmetric = sorted({k[1] for k in table if k[0] == "symmetric"})
    methods = [m for m in METHODS if any(k[2] == m for k in table)]
    panels = [
        ("early_stopped_accuracy", "clean accuracy, DPO-style early stop (%)", 100),
        ("final_accuracy", "clean accuracy after the last epoch (%)", 100),
        ("final_reward_gain", "true-reward gain over reference, last epoch", 1),
    ]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(5 * (len(panels) + 1), 4.6))
    for ax, (metric, label, scale) in zip(axes, panels):
        for method in methods:
            rates = [r for r in symmetric if ("symmetric", r, method) in table]  # not every method runs every rate
            rows = [table[("symmetric", r, method)][metric] for r in rates]
            ax.errorbar(
                [100 * r for r in rates],
                [m * scale for m, _ in rows],
                yerr=[s * scale for _, s in rows],
                marker="o",
                capsize=3,
                label=method,
                **_method_style(method),
            )
        ax.set_xlabel("symmetric flip rate (%)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    worst = max(symmetric)
    ax = axes[-1]
    for method in methods:
        curves = [r["clean_accuracy"] for r in results if r["method"] == method and r["noise"] == "symmetric" and r["flip_rate"] == worst]
        if curves:
            mean_curve = [100 * statistics.fmean(c[i] for c in curves) for i in range(min(map(len, curves)))]
            ax.plot(range(1, len(mean_curve) + 1), mean_curve, marker=".", label=method, **_method_style(method))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"clean accuracy at {int(worst * 100)}% flips (%)")
    ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 * math.ceil(len(labels) / 6), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)



def runs_note(total: int, ran: int, minutes: float | None) -> str:
    """"N runs in M min" for a report's header; where earlier calls' results were reused (the benchmarks resume), the
    time is said to be this call's alone."""
    if not minutes or not ran:
        return f"{total} runs"
    if ran == total:
        return f"{total} runs in {minutes:.1f} min"
    return f"{total} runs ({ran} of them run by this call, in {minutes:.1f} min; the others reused)"



def is_finite_result(result: dict) -> bool:
    return all(math.isfinite(v) for v in result["clean_accuracy"] + result["reward_gain"])


def gap_recovered_table(results: list[dict]) -> str:
    """Per symmetric flip rate > 0: how much of early-stopped DPO's loss to noise each method wins back."""
    table = aggregate(results)
    clean_dpo = table.get(("symmetric", 0.0, "DPO"))
    rates = sorted({k[1] for k in table if k[0] == "symmetric" and k[1] > 0 and ("symmetric", k[1], "DPO") in table})
    if clean_dpo is None or not rates:
        return "(needs DPO at 0% and at a flip rate > 0)"
    methods = [m for m in METHODS if m != "DPO" and any(k[2] == m for k in table)]
    lines = ["| method | " + " | ".join(f"{int(100 * r)}%" for r in rates) + " |", "|---" * (len(rates) + 1) + "|"]
    for method in methods:
        cells = []
        for rate in rates:
            noisy = table[("symmetric", rate, "DPO")]["early_stopped_accuracy"][0]
            cell = table.get(("symmetric", rate, method))
            gap = clean_dpo["early_stopped_accuracy"][0] - noisy
            cells.append("–" if cell is None or gap <= 0 else f"{(cell['early_stopped_accuracy'][0] - noisy) / gap:+.2f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_difference_table(results: list[dict], metric: str = "early_stopped_accuracy") -> str:
    """Per method and symmetric flip rate: (method − DPO) on the same seed, in points, mean ± std over seeds.

    Pairing by seed removes what the methods share within a seed (the task, the flips, the initialisation), so the
    spread left is that of the difference itself; a cell marked ✓ has a mean above its spread.
    """
    by_run = {(r["noise"], r["flip_rate"], r["method"], r["seed"]): summarise(r)[metric] for r in results}
    rates = sorted({k[1] for k in by_run if k[0] == "symmetric" and k[2] == "DPO"})
    methods = [m for m in METHODS if m != "DPO" and any(k[2] == m for k in by_run)]
    lines = ["| method | " + " | ".join(f"{int(100 * r)}%" for r in rates) + " |", "|---" * (len(rates) + 1) + "|"]
    for method in methods:
        cells = []
        for rate in rates:
            seeds = sorted(k[3] for k in by_run if k[:3] == ("symmetric", rate, method))
            diffs = [100 * (by_run[("symmetric", rate, method, s)] - by_run[("symmetric", rate, "DPO", s)])
                     for s in seeds if ("symmetric", rate, "DPO", s) in by_run]
            if not diffs:
                cells.append("–")
                continue
            mean, std = mean_std(diffs)
            cells.append(f"{mean:+.1f} ± {std:.1f}" + (" ✓" if len(diffs) > 1 and mean > std else ""))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def audit_table(results: list[dict]) -> str:
    """Audit AUROC and precision of the top `AUDIT_DROP_SHARE` suspects, by trained policy and flip rate."""
    audited = [r for r in results if r.get("audit_auroc") is not None or r.get("audit_precision_top") is not None]
    rates = sorted({r["flip_rate"] for r in audited})
    if not rates:
        return "(no audited runs)"

    def cell(method, rate, key):
        values = [r[key] for r in audited if r["method"] == method and r["flip_rate"] == rate and r.get(key) is not None]
        if not values:
            return "–"
        mean, std = mean_std(values)
        return f"{mean:.3f} ± {std:.3f}"

    header = "| policy audited | " + " | ".join(f"AUROC at {r:.0%}" for r in rates if r > 0)
    header += " | " + " | ".join(f"precision of the top {AUDIT_DROP_SHARE:.0%} at {r:.0%}" for r in rates if r > 0)
    lines = [header + " |", "|---" * (1 + 2 * len([r for r in rates if r > 0])) + "|"]
    for method in AUDITED:
        cells = [cell(method, r, "audit_auroc") for r in rates if r > 0]
        cells += [cell(method, r, "audit_precision_top") for r in rates if r > 0]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(results: list[dict], setting: Setting, command: str, minutes: float) -> str:
    """The markdown written next to the plot: settings, then one table per metric (mean ± std over seeds)."""
    seeds = sorted({r["seed"] for r in results})
    sections = [
        "# Noise-robustness benchmark",
        f"`{command}` — {len(results)} runs in {minutes:.1f} min. Synthetic task (`trl_robust.experiments.synthetic`), "
        f"{setting.n_train} training pairs, {setting.epochs} epochs, β {setting.beta}, AdamW lr {setting.learning_rate} "
        f"constant, batch {setting.batch_size}; seeds {seeds}; mean ± std over seeds. Columns are label-flip rates "
        "(symmetric unless marked; `prefer_longer` = an annotator who prefers the longer answer).",
    ]
    sections += [
        "## Share of the noise gap recovered, early-stopped accuracy",
        "(method − DPO at this flip rate) / (DPO at 0% − DPO at this flip rate), DPO early-stopped on the noisy "
        "validation split. 0 = no better than early-stopped DPO, 1 = as good as DPO on clean labels.",
        gap_recovered_table(results),
        "## Difference from early-stopped DPO on the same seed (points of clean accuracy)",
        "Early-stopped accuracy of the method minus DPO's, seed by seed; mean ± std over seeds. ✓: the mean is above "
        "the spread of the paired differences.",
        paired_difference_table(results),
        "## Noisy-pair audit of the final policies",
        f"`trl_robust.audit` on the noisy training split with the last-epoch DPO and ROPO models: AUROC of the suspicion "
        f"−z for the truly flipped pairs (0.5 = chance), and the share of flipped pairs among the {AUDIT_DROP_SHARE:.0%} "
        f"most suspicious. `{AUDIT_RETRAIN}` retrains DPO without the ROPO audit's top {AUDIT_DROP_SHARE:.0%}.",
        audit_table(results),
    ]
    for metric, title, scale, digits in [
        ("early_stopped_accuracy", "Clean held-out preference accuracy (%) at the epoch with the best *noisy* validation accuracy", 100, 1),
        ("final_accuracy", "Clean held-out preference accuracy (%) after the last epoch", 100, 1),
        ("peak_accuracy", "Peak clean held-out preference accuracy (%) over epochs (oracle stopping)", 100, 1),
        ("early_stopped_reward_gain", "True-reward gain of the policy over the reference, at the early-stopped epoch", 1, 3),
        ("final_reward_gain", "True-reward gain of the policy over the reference, after the last epoch", 1, 3),
    ]:
        sections += [f"## {title}", markdown_table(results, metric, scale=scale, digits=digits)]
    return "\n\n".join(sections) + "\n"
