"""Does the one flag know how noisy the labels are? `ropo_filter_ratio: auto` against a well-stopped DPO, on two tasks.

Through the real `RobustDPOTrainer`, paired by seed (same task, flips, initialisation and optimiser for every method):
- **DPO**, early-stopped at the epoch with the best accuracy on a *noisy* validation split (what a user can do);
- **ROPO auto**: `loss_type: ropo` with `ropo_filter_ratio: auto`, trained to the last epoch, not stopped early;
- **Oracle**: DPO trained only on the pairs whose labels were not flipped, early-stopped (the ceiling of
  identification).
Cells: symmetric flips at 0, 10, 20, 30, 40% and an annotator who prefers the longer answer at 20% (`prefer_longer`);
DPO and the oracle only where the quality targets need them (0, 20, 40% and biased 20%). Two tasks
(`harness.Setting()` and `harness.SECOND_TASK`): different reward structure, pairs, batch, learning
rate and epochs.

    python benchmarks/noise_auto.py                 # 10 seeds, both tasks: ~50 min on 2 CPU cores
    python benchmarks/noise_auto.py --seeds 2 --tasks first   # a smaller look
    python benchmarks/noise_auto.py --report_only   # the tables again from the results file
    python benchmarks/noise_auto.py --quick --output_dir /tmp/auto   # smoke run, ~1 min

Results (`<output_dir>/noise_auto.jsonl`) are appended run by run and reused: an interrupted run continues where it
stopped. Writes `<output_dir>/noise_auto.md`.
"""

import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from transformers import HfArgumentParser  # noqa: E402

import harness as nb  # noqa: E402  benchmarks/harness.py: this folder is on sys.path when a script runs
from trl_robust.filter import auto  # noqa: E402

AUTO = "ROPO auto"
# The true-reward gain only after the last epoch: this grid compares accuracies, and sampling every epoch doubles its time.
TASKS = {name: replace(setting, reward_gain_every_epoch=False)
         for name, setting in {"first": nb.Setting(), "second": nb.SECOND_TASK}.items()}
SYMMETRIC = (0.0, 0.1, 0.2, 0.3, 0.4)
BASELINE_RATES = (0.0, 0.2, 0.4)  # where DPO and the oracle run (and the biased 20%)
BIAS_RATE = 0.2
# Variants of the auto mode, run at 20% and 40% with `--variants` (fewer seeds): its sensitivity to its choices.
VARIANTS = ("ROPO auto (correct)", "ROPO auto (2-epoch warm-up)")
VARIANT_RATES = (0.2, 0.4)
# The targets: share of early-stopped DPO's clean-vs-noisy gap that the one flag recovers, by flip rate.
GAP_TARGETS = {0.2: 0.5, 0.4: 0.3}


@dataclass
class Arguments:
    output_dir: str = field(default="benchmarks/results", metadata={"help": "Where the results and the table go."})
    seeds: int = field(default=10, metadata={"help": "Seeds per cell (paired across methods)."})
    tasks: list[str] = field(default_factory=lambda: list(TASKS), metadata={"help": "Tasks to run: first, second."})
    workers: int = field(default=0, metadata={"help": "Parallel runs (one CPU thread each); 0 = min(2, CPU count)."})
    report_only: bool = field(default=False, metadata={"help": "Only rewrite the report from the results file."})
    quick: bool = field(default=False, metadata={"help": "Smoke run: a 300-pair first task, 3 epochs, 0%% and 40%%, 1 seed."})
    variants: int = field(default=0, metadata={"help": "Also run the auto mode's variants at 20%% and 40%% on this many "
                                                        "seeds (their sensitivity section)."})


QUICK = replace(TASKS["first"], n_train=300, n_validation=100, n_test=100, n_reward_prompts=100, epochs=3)


def jobs_for(setting: nb.Setting, seeds, symmetric=SYMMETRIC, baseline=BASELINE_RATES, bias=True) -> list[nb.Job]:
    jobs = []
    for seed in seeds:  # seed by seed, so that a partial run has complete pairs
        jobs += [nb.Job(AUTO, "symmetric", rate, seed, setting) for rate in symmetric]
        jobs += [nb.Job("DPO", "symmetric", rate, seed, setting) for rate in baseline]
        jobs += [nb.Job(nb.ORACLE, "symmetric", rate, seed, setting) for rate in baseline if rate > 0]
        if bias:
            jobs += [nb.Job(m, "prefer_longer", BIAS_RATE, seed, setting) for m in (AUTO, "DPO", nb.ORACLE)]
    return jobs


def key(result: dict) -> tuple:
    return (result["setting"]["reward"], result["setting"]["n_train"], result["method"], result["noise"],
            result["flip_rate"], result["seed"])


def job_key(job: nb.Job) -> tuple:
    return (job.setting.reward, job.setting.n_train, job.method, job.noise, job.flip_rate, job.seed)


def spread(values: list[float]) -> str:
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):+.1f} ± {std:.1f}"


def estimate_of(result: dict) -> tuple[float | None, float | None]:
    """(mean of the estimates from the third epoch on, the last estimate) of an `auto` run."""
    estimates = [e for e in result["estimated_flip_rate"] if e is not None]
    later = [e for e in result["estimated_flip_rate"][2:] if e is not None]
    return (statistics.fmean(later) if later else None), (estimates[-1] if estimates else None)


def task_report(results: list[dict], name: str, setting: nb.Setting) -> str:
    runs = {(r["method"], r["noise"], r["flip_rate"], r["seed"]): r for r in results}
    seeds = sorted({r["seed"] for r in results})
    cells = [("symmetric", rate) for rate in SYMMETRIC] + [("prefer_longer", BIAS_RATE)]

    def label(noise, rate):
        return f"{rate:.0%}" + ("" if noise == "symmetric" else " longer")

    lines = [
        f"## Task `{name}`: {setting.n_train} pairs, reward `{setting.reward}`, lr {setting.learning_rate}, batch "
        f"{setting.batch_size}, {setting.epochs} epochs; seeds {seeds[0]}–{seeds[-1]} ({len(seeds)})",
        "",
        "### The estimate ε̂ (`noise/estimated_flip_rate`)",
        "",
        "Mean over seeds ± spread (std) of each run's mean estimate from epoch 3 on, and of its last estimate; "
        "`within` = seeds whose mean estimate is within ±0.05 of the true rate; `ρ` = mean share distrusted per epoch "
        "after the first.",
        "",
        "| flips | ε̂ (epochs ≥ 3) | ε̂ last | within ±0.05 | ρ realised | filter precision |",
        "|---|---|---|---|---|---|",
    ]
    for noise, rate in cells:
        autos = [runs[(AUTO, noise, rate, s)] for s in seeds if (AUTO, noise, rate, s) in runs]
        if not autos:
            continue
        means = [m for m, _ in map(estimate_of, autos) if m is not None]
        lasts = [last for _, last in map(estimate_of, autos) if last is not None]
        within = sum(abs(m - rate) <= 0.05 for m in means)
        filtered = [statistics.fmean([f or 0.0 for f in r["filtered_frac"][1:]]) for r in autos]
        precision = [p for r in autos for p in r["filter_precision"] if p is not None]

        def ms(values):
            return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0:.3f}" if values else "–"

        lines.append(f"| {label(noise, rate)} | {ms(means)} | {ms(lasts)} | {within}/{len(means)} | {ms(filtered)} | "
                     f"{ms(precision)} |")
    clean = [e for s in seeds if (AUTO, "symmetric", 0.0, s) in runs
             for e in runs[(AUTO, "symmetric", 0.0, s)]["estimated_flip_rate"] if e is not None]
    lowest = [e for s in seeds if (AUTO, "symmetric", 0.1, s) in runs
              for e in runs[(AUTO, "symmetric", 0.1, s)]["estimated_flip_rate"][2:] if e is not None]
    if clean and lowest:
        lines += ["", f"The floor ({auto.FLOOR}): every estimate at 0% flips was at most {max(clean):.3f}, every one at "
                      f"10% from epoch 3 on at least {min(lowest):.3f}; a floor anywhere between the two takes the same "
                      "decisions on this task" + ("." if max(clean) < min(lowest) else " (they overlap: it cannot)."),]
    lines += [
        "",
        "### Quality: clean held-out accuracy (points), the one flag at its last epoch vs DPO early-stopped",
        "",
        "`auto − DPO`: paired by seed, mean ± std of the differences. `gap recovered`: (auto − DPO) / (DPO at 0% − DPO "
        "at this rate), from the means, DPO early-stopped on the noisy validation split; the oracle's the same for DPO "
        "trained on the unflipped pairs only, early-stopped. Targets (issue 12): ≥ 0.5 at 20%, ≥ 0.3 at 40%, not "
        "below DPO at biased 20%, at most 1 point below at 0%.",
        "",
        "| flips | DPO early-stopped | ROPO auto, last epoch | auto − DPO | gap recovered | oracle | oracle gap "
        "recovered | target met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    clean_dpo = [nb.summarise(runs[("DPO", "symmetric", 0.0, s)])["early_stopped_accuracy"] for s in seeds
                 if ("DPO", "symmetric", 0.0, s) in runs]
    for noise, rate in cells:
        paired = [s for s in seeds if (AUTO, noise, rate, s) in runs and ("DPO", noise, rate, s) in runs]
        if not paired:
            continue
        dpo = [100 * nb.summarise(runs[("DPO", noise, rate, s)])["early_stopped_accuracy"] for s in paired]
        one_flag = [100 * runs[(AUTO, noise, rate, s)]["clean_accuracy"][-1] for s in paired]
        oracle = [100 * nb.summarise(runs[(nb.ORACLE, noise, rate, s)])["early_stopped_accuracy"] for s in paired
                  if (nb.ORACLE, noise, rate, s) in runs]
        diffs = [a - d for a, d in zip(one_flag, dpo)]
        gap = 100 * statistics.fmean(clean_dpo) - statistics.fmean(dpo) if clean_dpo else float("nan")
        recovered = statistics.fmean(diffs) / gap if rate > 0 and gap > 0 else None
        oracle_recovered = (statistics.fmean(oracle) - statistics.fmean(dpo)) / gap if oracle and rate > 0 and gap > 0 else None
        if noise != "symmetric":
            met = statistics.fmean(diffs) >= 0
        elif rate == 0:
            met = statistics.fmean(diffs) >= -1
        elif rate in GAP_TARGETS:
            met = recovered is not None and recovered >= GAP_TARGETS[rate]
        else:
            met = None
        lines.append(
            f"| {label(noise, rate)} | {statistics.fmean(dpo):.1f} | {statistics.fmean(one_flag):.1f} | {spread(diffs)} | "
            + (f"{recovered:+.2f}" if recovered is not None else "–") + " | "
            + (f"{statistics.fmean(oracle):.1f}" if oracle else "–") + " | "
            + (f"{oracle_recovered:+.2f}" if oracle_recovered is not None else "–") + " | "
            + ({True: "yes", False: "**no**", None: "–"}[met]) + " |"
        )
    return "\n".join(lines)


def sensitivity_report(results: list[dict], tasks: dict) -> str:
    """The variants against the auto mode and against DPO early-stopped, paired by seed (points of clean accuracy)."""
    lines = [
        "## Sensitivity of the auto mode",
        "",
        "Last-epoch clean accuracy of each variant minus the auto mode's (and minus DPO early-stopped), paired by seed, "
        "mean ± std; ε̂ = the variant's mean estimate from epoch 3 on.",
        "",
        "| task | flips | variant | seeds | − ROPO auto | − DPO early-stopped | ε̂ |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, setting in tasks.items():
        runs = {(r["method"], r["flip_rate"], r["seed"]): r for r in results if r["noise"] == "symmetric"
                and r["setting"]["reward"] == setting.reward and r["setting"]["n_train"] == setting.n_train}
        for rate in VARIANT_RATES:
            for variant in VARIANTS:
                seeds = sorted(s for (m, f, s) in runs if m == variant and f == rate
                               and (AUTO, rate, s) in runs and ("DPO", rate, s) in runs)
                if not seeds:
                    continue
                last = {s: 100 * runs[(variant, rate, s)]["clean_accuracy"][-1] for s in seeds}
                versus_auto = [last[s] - 100 * runs[(AUTO, rate, s)]["clean_accuracy"][-1] for s in seeds]
                versus_dpo = [last[s] - 100 * nb.summarise(runs[("DPO", rate, s)])["early_stopped_accuracy"] for s in seeds]
                estimates = [m for m, _ in (estimate_of(runs[(variant, rate, s)]) for s in seeds) if m is not None]
                lines.append(f"| {name} | {rate:.0%} | {variant} | {len(seeds)} | {spread(versus_auto)} | "
                             f"{spread(versus_dpo)} | {statistics.fmean(estimates):.3f} |")
    return "\n".join(lines)


def report(results: list[dict], command: str, minutes: float | None, ran: int = 0, tasks=None) -> str:
    sections = [
        "# The one flag: `loss_type: ropo` + `ropo_filter_ratio: auto` against DPO early-stopped",
        f"`{command}` — {nb.runs_note(len(results), ran, minutes)}" + ". "
        f"Auto mode: ε̂ each epoch from the training steps' own margins (`{auto.ESTIMATOR}`), ρ = mean of the last "
        f"{auto.SMOOTHING_EPOCHS} estimates, no filtering while ρ < {auto.FLOOR}, estimates ≥ {auto.UNIDENTIFIED} "
        "unused. Clean accuracy = TRL's `rewards/accuracies` on a clean held-out split.",
    ]
    for name, setting in (tasks or TASKS).items():
        mine = [r for r in results if r["setting"]["reward"] == setting.reward and r["setting"]["n_train"] == setting.n_train]
        if mine:
            sections.append(task_report(mine, name, setting))
    if any(r["method"] in VARIANTS for r in results):
        sections.append(sensitivity_report(results, tasks or TASKS))
    return "\n\n".join(sections) + "\n"


def main(argv=None) -> None:
    (args,) = HfArgumentParser(Arguments).parse_args_into_dataclasses(argv)
    unknown = set(args.tasks) - set(TASKS)
    if unknown:
        raise SystemExit(f"unknown task(s) {sorted(unknown)}; the tasks are {list(TASKS)}")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "noise_auto.jsonl"
    tasks = {"quick": QUICK} if args.quick else {name: TASKS[name] for name in args.tasks}
    done = [json.loads(line) for line in results_file.read_text().splitlines()] if results_file.exists() else []
    start, reused = time.perf_counter(), len(done)
    if not args.report_only:
        seen = {key(r) for r in done}
        # Seed by seed across the tasks, so that an interrupted run has complete, paired seeds on every task.
        if args.quick:
            jobs = jobs_for(QUICK, [0], symmetric=(0.0, 0.4), baseline=(0.0, 0.4), bias=False)
            jobs.append(nb.Job(VARIANTS[0], "symmetric", 0.4, 0, QUICK))
        else:
            jobs = [j for seed in range(args.seeds) for setting in tasks.values() for j in jobs_for(setting, [seed])]
            jobs += [nb.Job(variant, "symmetric", rate, seed, setting) for seed in range(args.variants)
                     for setting in tasks.values() for rate in VARIANT_RATES for variant in VARIANTS]
        jobs = [j for j in jobs if job_key(j) not in seen]
        done += nb.run_grid(jobs, out / "work", workers=args.workers or nb.cpu_workers(), results_file=results_file)
    minutes = (time.perf_counter() - start) / 60 if not args.report_only else None
    command = "python benchmarks/noise_auto.py" + (" --quick" if args.quick else "")
    command += f" --seeds {args.seeds}" if args.seeds != 10 and not args.quick else ""
    text = report(done, command, minutes, ran=len(done) - reused, tasks=tasks)
    (out / "noise_auto.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
