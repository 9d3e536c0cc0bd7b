"""Where does Bradley–Terry start to memorise the flips, in learning rate × epochs × data size, and does the symmetric
losses' advantage follow it? A regime map on both reward tasks (issue 21, item 4), and the digits with the authors'
temperature-1 labels. (About 450 lines, over the house's ~400: one experiment's grid, its one addition to the runs and
its report, which read together.)

The runs are the two reward benchmarks' own, imported: `reward_digits.run_digits_job` (the handwritten digits, a small
CNN; its `Setting.train_images` takes the first k of a seed's training images) and `reward_noise.run_reward_job` (the
synthetic language task `reward_noise.TASKS["first"]`, its reference LM with a one-output head), with the setting
varied. At 40% symmetric flips (and 0%, for the cost on clean labels), Bradley–Terry and SymPO-sigmoid, 3 paired seeds:
- digits: lr {3e-4, 1e-3, 3e-3} × training images {300, 600, 1197} (~135/270/535 pairs), 100 epochs;
- synthetic: lr {1e-3, 3e-3, 1e-2} × training pairs {500, 1000, 2000}, 30 epochs. The sizes are nested: one task of
  2,000 pairs is built per seed and the smaller ones keep its first pairs and the same validation and test pairs
  (`nested_tasks`), so that a size's effect is not a different test set's.
Epochs cost nothing extra: both schedules are constant, so epoch k of the longest run is a run of k epochs, and the
per-epoch curves are read at several epoch counts (`Grid.epochs_read`).

Memorisation: Bradley–Terry's agreement with the flipped training labels after each epoch (recorded by the digits
benchmark; on the synthetic task, which does not record it, by `recording_agreement`, the trainer subclass it passes
to `run_reward_job`), and its *late drop*: the best clean accuracy up to epoch k minus the clean accuracy at
epoch k (what a user would lose by training on; on a 300-pair test split partly sampling noise). The symmetric
advantage: SymPO-sigmoid − Bradley–Terry in clean accuracy at the same epoch, paired by seed (same pairs, flips,
initial weights and batch order); and SymPO-sigmoid at the last epoch against Bradley–Terry early-stopped on the noisy
validation split.

The temperature-1 section: the digits benchmark's default setting with `labels="bt1"` (the authors' labels: the higher
digit chosen with probability σ(d₁ − d₂), then the symmetric flips), 10 paired seeds at 0/20/40%, Bradley–Terry,
SymPO-sigmoid and SymPO-ramp, reported with the digits benchmark's own tables.

    python benchmarks/reward_regimes.py                # the map (216 runs), the bt1 cell (90): ~95 min, 1 shared core
    python benchmarks/reward_regimes.py --seeds 2      # the map with fewer seeds (the bt1 cell keeps its 10)
    python benchmarks/reward_regimes.py --report_only
    python benchmarks/reward_regimes.py --quick --output_dir /tmp/rr   # smoke run: one cell per task, 2 epochs

Results (`<output_dir>/reward_regimes.jsonl`) are appended run by run and reused; runs are ordered by priority (40%
map, then the bt1 cell, then the 0% map: `jobs_for`) and seed by seed, so an interrupted grid leaves paired seeds.
Writes `<output_dir>/reward_regimes.md`. Needs scikit-learn for the digits (`pip install trl-robust[benchmark]`).
"""

import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

import harness as nb  # noqa: E402  beside this script, as are the two benchmarks
import reward_digits as rd  # noqa: E402
import reward_noise as rn  # noqa: E402

BT, SYMPO, RAMP = rd.BT, "SymPO-sigmoid", "SymPO-ramp"
assert rn.BT == BT  # the two benchmarks name the methods alike
MAP_METHODS = (BT, SYMPO)
BT1_METHODS = (BT, SYMPO, RAMP)
BT1_RATES = (0.0, 0.2, 0.4)
BT1_SEEDS = 10


@dataclass(frozen=True)
class Grid:
    """One task's map: learning rates × sizes, trained `epochs` once, read at `epochs_read`."""

    learning_rates: tuple[float, ...]
    sizes: tuple[int, ...]  # digits: training images; synthetic: training pairs
    epochs: int
    epochs_read: tuple[int, ...]


GRIDS = {"digits": Grid((3e-4, 1e-3, 3e-3), (300, 600, 1197), 100, (10, 25, 50, 100)),
         "synthetic": Grid((1e-3, 3e-3, 1e-2), (500, 1000, 2000), 30, (5, 10, 20, 30))}
QUICK_GRIDS = {"digits": Grid((1e-3,), (300,), 2, (2,)), "synthetic": Grid((3e-3,), (100, 200), 2, (2,))}
SYNTHETIC = rn.TASKS["first"]  # its validation and test sizes and batch; n_train, lr and epochs are the map's
QUICK_SYNTHETIC = rn.QUICK
LATE_DROP_ONSET = 0.02  # "memorising" in the onset column: the late drop reaches 2 points (a choice; see the tables)


@dataclass
class Arguments:
    output_dir: str = field(default="benchmarks/results", metadata={"help": "Where the results and the report go."})
    seeds: int = field(default=3, metadata={"help": "Paired seeds per cell of the map (the bt1 cell has 10)."})
    report_only: bool = field(default=False, metadata={"help": "Only rewrite the report from the results file."})
    quick: bool = field(default=False, metadata={"help": "Smoke run: one cell per task at 40%%, 2 epochs, 1 seed."})


# ---- the runs -----------------------------------------------------------------------------------------------------


def synthetic_setting(base, size: int, lr: float, epochs: int):
    return replace(base, n_train=size, learning_rate=lr, epochs=epochs)


def nested_tasks(root, seed: int, base, sizes) -> None:
    """Build the seed's task at the largest size (`harness.build_task`), then each smaller size's task directory as
    its first `size` training pairs with the same validation and test pairs, reward prompts and reference model."""
    largest = replace(base, n_train=max(sizes))
    full = nb.build_task(root, seed, largest)
    data = json.loads((full / "pairs.json").read_text())
    for size in sizes:
        directory = nb.task_dir(root, seed, replace(base, n_train=size))
        if size == max(sizes) or (directory / "pairs.json").exists():
            continue
        directory.mkdir(parents=True, exist_ok=True)
        if not (directory / "reference").exists():
            link = os.path.relpath(full / "reference", directory)  # relative: the work folder can move
            (directory / "reference").symlink_to(link, target_is_directory=True)
        (directory / "pairs.json").write_text(json.dumps({**data, "train": data["train"][:size]}))


def jobs_for(quick: bool, seeds) -> list[tuple[str, object]]:
    """(task, job) in priority order: the 40% map (seed by seed, both tasks), the bt1 cell (seed by seed), the digits'
    0% map, then the synthetic 0% map learning rate by learning rate (its lr 3e-3 first, `reward_noise.py`'s), each
    seed by seed: an interrupted grid leaves paired seeds, and rows whole."""
    grids = QUICK_GRIDS if quick else GRIDS
    base = QUICK_SYNTHETIC if quick else SYNTHETIC

    def digits(rate, seed, lrs):
        g = grids["digits"]
        return [("digits", rd.DigitsJob(m, "symmetric", rate, seed, rd.Setting(
            epochs=g.epochs, learning_rate=lr, train_images=None if size >= 1197 else size)))
            for lr in lrs for size in g.sizes for m in MAP_METHODS]

    def synthetic(rate, seed, lrs):
        g = grids["synthetic"]
        return [("synthetic", rn.RewardJob(m, "symmetric", rate, seed, synthetic_setting(base, size, lr, g.epochs)))
                for lr in lrs for size in g.sizes for m in MAP_METHODS]

    jobs = [job for seed in seeds for job in digits(0.4, seed, grids["digits"].learning_rates)
            + synthetic(0.4, seed, grids["synthetic"].learning_rates)]
    jobs += [("digits", rd.DigitsJob(m, "symmetric", rate, seed, replace(rd.QUICK if quick else rd.Setting(),
                                                                          labels="bt1")))
             for seed in (seeds if quick else range(BT1_SEEDS)) for rate in ((0.0, 0.4) if quick else BT1_RATES)
             for m in BT1_METHODS if not (quick and m == RAMP)]
    if quick:
        return jobs
    jobs += [job for seed in seeds for job in digits(0.0, seed, grids["digits"].learning_rates)]
    lrs = sorted(grids["synthetic"].learning_rates, key=lambda lr: lr != SYNTHETIC.learning_rate)
    return jobs + [job for lr in lrs for seed in seeds for job in synthetic(0.0, seed, [lr])]


def unique(results: list[dict]) -> list[dict]:
    """The newest result of each run (a run made again replaces the earlier one, in its place)."""
    return list({result_key(r["task"], r): r for r in results}.values())


def result_key(task: str, result: dict) -> tuple:
    if task == "digits":
        return ("digits",) + rd.job_key(result)
    s = result["setting"]
    return ("synthetic", s["n_train"], s["learning_rate"], s["epochs"], result["method"], result["noise"],
            result["flip_rate"], result["seed"])


def recording_agreement(trainer_class, curves: dict):
    """`trainer_class` that also records, after every epoch, the model's agreement with the flipped and the unflipped
    training labels into `curves` (what the digits benchmark records and `reward_noise.run_reward_job` does not), the
    pairs batched by TRL's own collator. Scoring in eval mode under no_grad draws no random numbers: the run trains as
    it would without it."""
    from transformers import TrainerCallback

    class AgreementTrainer(trainer_class):
        def __init__(self, *args, train_dataset=None, **kwargs):
            flipped = np.array(train_dataset["label_flipped"], dtype=bool)
            super().__init__(*args, train_dataset=train_dataset, **kwargs)
            pairs = self.train_dataset
            if len(pairs) != len(flipped):  # TRL dropped over-long pairs: the flags no longer line up
                raise RuntimeError(f"{len(flipped) - len(pairs)} training pairs were dropped; cannot align the flips")
            trainer = self

            class Agreement(TrainerCallback):
                def on_epoch_end(self, args, state, control, model=None, **kwargs):
                    model.eval()
                    agree = []
                    with torch.no_grad():
                        for start in range(0, len(pairs), 256):
                            rows = pairs[start : start + 256]
                            batch = trainer.data_collator([{"chosen_ids": c, "rejected_ids": r} for c, r in
                                                           zip(rows["chosen_ids"], rows["rejected_ids"])])
                            scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                            chosen, rejected = scores.logits[:, 0].float().chunk(2)
                            agree += (chosen > rejected).tolist()
                    model.train()
                    agree = np.array(agree)
                    curves["flipped_agreement"].append(float(agree[flipped].mean()) if flipped.any() else None)
                    curves["unflipped_agreement"].append(float(agree[~flipped].mean()))

            self.add_callback(Agreement())

    return AgreementTrainer


def run(task: str, job, root, base, sizes) -> dict:
    """One run of either benchmark, its result marked with its task; a synthetic seed's nested tasks built first, its
    trainer recording the agreement with the training labels (`recording_agreement`)."""
    if task == "digits":
        return {"task": task, **rd.run_digits_job(job, Path(root) / "digits")}
    nested_tasks(root, job.seed, base, sizes)
    from trl_robust import RobustRewardTrainer

    curves = {"flipped_agreement": [], "unflipped_agreement": []}
    return {"task": task, **rn.run_reward_job(job, root, recording_agreement(RobustRewardTrainer, curves)), **curves}


# ---- the report ---------------------------------------------------------------------------------------------------


def size_of(result: dict) -> int:
    s = result["setting"]
    return s["n_train"] if result["task"] == "synthetic" else (s.get("train_images") or 1197)


def is_map(result: dict) -> bool:
    return result["task"] == "synthetic" or result["setting"]["labels"] == "deterministic"


def late_drop(curve, epoch: int) -> float:
    """Best clean accuracy up to `epoch` (1-based) minus the clean accuracy at `epoch`."""
    return max(curve[:epoch]) - curve[epoch - 1]


def ms(values, scale=100.0, digits=1, sign="") -> str:
    return rd.ms(values, scale, digits, sign)


def map_cells(results, task: str, rate: float) -> dict:
    """{(lr, size): {(method, seed): result}} for one task's map at one flip rate."""
    cells = {}
    for r in results:
        if r["task"] == task and is_map(r) and r["flip_rate"] == rate and r["noise"] == "symmetric":
            cells.setdefault((r["setting"]["learning_rate"], size_of(r)), {})[(r["method"], r["seed"])] = r
    return dict(sorted(cells.items()))


def paired_at(runs, epoch: int) -> list[float]:
    """SymPO-sigmoid − Bradley–Terry clean accuracy at `epoch`, per seed run by both."""
    seeds = sorted(s for (m, s) in runs if m == SYMPO and (BT, s) in runs)
    return [runs[(SYMPO, s)]["clean_accuracy"][epoch - 1] - runs[(BT, s)]["clean_accuracy"][epoch - 1] for s in seeds]


def epochs_shown(cells, task: str) -> list[int]:
    length = min(len(r["clean_accuracy"]) for runs in cells.values() for r in runs.values())
    return sorted({e for e in GRIDS[task].epochs_read if e <= length} | {length})


def map_report(results, task: str) -> list[str]:
    cells = map_cells(results, task, 0.4)
    if not cells:
        return []
    epochs = epochs_shown(cells, task)
    unit = "training images" if task == "digits" else "training pairs"
    header = f"| lr | {unit} | " + " | ".join(f"epoch {e}" for e in epochs) + " |"
    rule = "|---|---|" + "---|" * len(epochs)
    n_runs = sum(len(runs) for runs in cells.values())

    def row(lr, size, values):
        return f"| {lr:g} | {size} | " + " | ".join(values) + " |"

    def bt(runs):
        return [r for (m, _), r in sorted(runs.items()) if m == BT]

    lines = ["", f"## {'Digits' if task == 'digits' else 'Synthetic language task (first)'}: the map at 40% flips",
             "", f"{n_runs} runs, seeds {len({s for runs in cells.values() for _, s in runs})}. Mean (± std) over "
             "seeds; accuracies and differences in points.", "", "Bradley–Terry's clean accuracy:", "", header, rule]
    lines += [row(lr, size, [ms([r["clean_accuracy"][e - 1] for r in bt(runs)]) for e in epochs])
              for (lr, size), runs in cells.items()]
    if agreement_recorded(cells):
        lines += ["", "Memorisation: agreement with the *flipped* training labels (%; 0 = every flip resisted, 100 = "
                  "every flip learnt), Bradley–Terry / SymPO-sigmoid, and Bradley–Terry's late drop (best clean "
                  "accuracy so far − now, points) in brackets:", "", header, rule]

        def agreement(runs, method, e):
            return statistics.fmean(r["flipped_agreement"][e - 1] for (m, _), r in runs.items() if m == method) * 100

        lines += [row(lr, size, [f"{agreement(runs, BT, e):.0f} / {agreement(runs, SYMPO, e):.0f} "
                                 f"({statistics.fmean(late_drop(r['clean_accuracy'], e) for r in bt(runs)) * 100:.1f})"
                                 for e in epochs]) for (lr, size), runs in cells.items()]
    else:
        lines += ["", "Bradley–Terry's memorisation, measured as its late drop (best clean accuracy up to that epoch "
                  "− "
                  "the accuracy at it, points; the synthetic benchmark does not record agreement with the flipped "
                  "labels):", "", header, rule]
        lines += [row(lr, size, [ms([late_drop(r["clean_accuracy"], e) for r in bt(runs)]) for e in epochs])
                  for (lr, size), runs in cells.items()]
    lines += ["", "SymPO-sigmoid − Bradley–Terry at the same epoch (clean accuracy, paired by seed):", "", header,
              rule]
    lines += [row(lr, size, [ms(paired_at(runs, e), sign="+") for e in epochs]) for (lr, size), runs in cells.items()]
    lines += follow_report(cells, epochs) + stopped_report(cells, epochs, unit)
    return lines


def agreement_recorded(cells) -> bool:
    """Whether every run of the map recorded its agreement with the flipped training labels (older synthetic runs
    did not: their memorisation measure is the late drop)."""
    return all(r.get("flipped_agreement") for runs in cells.values() for r in runs.values())


def memorisation(runs, epoch: int, agreement: bool) -> float:
    """The map's memorisation measure for one cell: BT's agreement with the flipped labels, else its late drop."""
    mine = [r for (m, _), r in runs.items() if m == BT]
    if agreement:
        return statistics.fmean(r["flipped_agreement"][epoch - 1] for r in mine)
    return statistics.fmean(late_drop(r["clean_accuracy"], epoch) for r in mine)


def follow_report(cells, epochs) -> list[str]:
    """Does the advantage follow memorisation? Across the map's (lr, size, epoch) cells: the correlation of BT's
    memorisation measure with the mean paired difference."""
    agreement = agreement_recorded(cells)
    points = [(memorisation(runs, e, agreement), statistics.fmean(d)) for runs in cells.values() for e in epochs
              if (d := paired_at(runs, e))]
    if len(points) < 3 or len({p[0] for p in points}) < 2 or len({p[1] for p in points}) < 2:
        return []
    x, y = zip(*points)
    what = "agreement with the flipped labels" if agreement else "late drop"
    return ["", f"Across the {len(points)} (lr, size, epoch) cells above, Pearson's correlation of Bradley–Terry's "
            f"{what} with the mean SymPO-sigmoid − Bradley–Terry difference: {statistics.correlation(x, y):+.2f}."]


def stopped_report(cells, epochs, unit: str) -> list[str]:
    """Per (lr, size): BT early-stopped on the noisy validation split (over the whole run) and SymPO-sigmoid at the
    last epoch, their paired difference, and the first epoch read where BT's late drop reached `LATE_DROP_ONSET`."""
    from trl_robust.experiments.training_runs import early_stop_epoch

    lines = ["", f"Bradley–Terry early-stopped on the noisy validation split (best epoch of the whole run) against "
             f"SymPO-sigmoid at its last epoch; *onset*: the first epoch shown where Bradley–Terry's mean late drop "
             f"reaches {LATE_DROP_ONSET * 100:.0f} points (– if none).", "",
             f"| lr | {unit} | pairs | BT early-stopped | its epoch | SymPO-sigmoid last | − BT early-stopped "
             "(paired) | SymPO-sigmoid − BT, both last (paired) | onset |", "|---|---|---|---|---|---|---|---|---|"]
    for (lr, size), runs in cells.items():
        seeds = sorted(s for (m, s) in runs if m == SYMPO and (BT, s) in runs)
        stops = {s: early_stop_epoch(runs[(BT, s)]) for s in seeds}
        stopped = [runs[(BT, s)]["clean_accuracy"][stops[s]] for s in seeds]
        last = [runs[(SYMPO, s)]["clean_accuracy"][-1] for s in seeds]
        both_last = [runs[(SYMPO, s)]["clean_accuracy"][-1] - runs[(BT, s)]["clean_accuracy"][-1] for s in seeds]
        pairs = statistics.fmean(r.get("n_train", size) for r in runs.values())
        onset = next((e for e in epochs if statistics.fmean(
            late_drop(runs[(BT, s)]["clean_accuracy"], e) for s in seeds) >= LATE_DROP_ONSET), None) if seeds else None
        lines.append(f"| {lr:g} | {size} | {pairs:.0f} | {ms(stopped)} | "
                     f"{statistics.fmean(stops[s] + 1 for s in seeds) if seeds else 0:.0f} | {ms(last)} | "
                     f"{ms([a - b for a, b in zip(last, stopped)], sign='+')} | {ms(both_last, sign='+')} | "
                     f"{onset or '–'} |")
    return lines


def clean_cost_report(results, task: str) -> list[str]:
    """Without flips: SymPO-sigmoid − Bradley–Terry at the last epoch and BT's early-stopped accuracy, per cell."""
    cells = map_cells(results, task, 0.0)
    if not cells:
        return []
    epochs = epochs_shown(cells, task)
    lines = ["", f"Without flips ({task}): SymPO-sigmoid − Bradley–Terry at the same epoch (paired):", "",
             "| lr | size | " + " | ".join(f"epoch {e}" for e in epochs) + " |", "|---|---|" + "---|" * len(epochs)]
    lines += [f"| {lr:g} | {size} | " + " | ".join(ms(paired_at(runs, e), sign="+") for e in epochs) + " |"
              for (lr, size), runs in cells.items()]
    return lines


def bt1_report(results) -> list[str]:
    """The temperature-1 cell, through the digits benchmark's own tables (its learning and per-cell reports)."""
    cells = {}
    for r in results:
        if r["task"] == "digits" and not is_map(r):
            cells.setdefault((r["noise"], r["flip_rate"]), {})[(r["method"], r["seed"])] = r
    if not cells:
        return []
    cells = dict(sorted(cells.items()))
    setting = next(iter(next(iter(cells.values())).values()))["setting"]
    lines = ["", "# Digits with the authors' temperature-1 labels", "",
             f"`labels=\"bt1\"`: the higher digit chosen with probability σ(d₁ − d₂) (pairs one digit apart are "
             f"mislabelled 27% of the time before any flip), then the symmetric flips; the digits benchmark's setting "
             f"otherwise (lr {setting['learning_rate']}, {setting['epochs']} epochs, all training images). "
             f"{sum(len(runs) for runs in cells.values())} runs. *Selected*: at the best epoch on the noisy "
             "validation "
             "split (its labels drawn the same way); differences paired by seed."]
    learning = rd.learning_report(cells)
    lines += [line.replace("## ", "### ", 1) for line in learning]
    for (noise, rate), runs in cells.items():
        lines += [line.replace("## ", "### ", 1) for line in rd.cell_report(noise, rate, runs)]
    return lines


def report(results: list[dict], command: str, minutes: float | None, ran: int = 0) -> str:
    lines = ["# Regime map: where Bradley–Terry memorises the flips, and whether SymPO's advantage follows", "",
             f"`{command}` — {nb.runs_note(len(results), ran, minutes)}. Set-up and reasons: the docstring of "
             "`benchmarks/reward_regimes.py`; the runs are `reward_digits.py`'s and `reward_noise.py`'s, with the "
             "learning rate, the data size and the epochs varied (constant lr: epoch k of a long run is a run of k "
             "epochs). 40% symmetric flips unless said otherwise."]
    for task in ("digits", "synthetic"):
        lines += map_report(results, task) + clean_cost_report(results, task)
    return "\n".join(lines + bt1_report(results)) + "\n"


def main(argv=None) -> None:
    (args,) = HfArgumentParser(Arguments).parse_args_into_dataclasses(argv)
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be at least 1, got {args.seeds}")
    rd.load_images()  # scikit-learn missing: say so before anything runs
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "reward_regimes.jsonl"
    lines = results_file.read_text().splitlines() if results_file.exists() else []
    done = unique([json.loads(line) for line in lines])
    start, ran = time.perf_counter(), 0
    if not args.report_only:
        nb.quiet_libraries()
        grids, base = (QUICK_GRIDS, QUICK_SYNTHETIC) if args.quick else (GRIDS, SYNTHETIC)
        # A synthetic run from before the agreement was recorded is run again (the same run: its curves come back
        # the same) and replaces the old record.
        seen = {result_key(r["task"], r) for r in done if "flipped_agreement" in r}
        # One run at a time, in this process, one thread: the machine's cores are shared.
        for task, job in jobs_for(args.quick, [0] if args.quick else range(args.seeds)):
            if result_key(task, {"task": task, **asdict(job)}) in seen:
                continue
            result = run(task, job, out / "work" / "regimes", base, grids["synthetic"].sizes)
            done, ran = unique(done + [result]), ran + 1
            with open(results_file, "a") as file:
                file.write(json.dumps(result) + "\n")
            print(f"{task} {job.method} {job.flip_rate} seed {job.seed} lr {job.setting.learning_rate} "
                  f"size {size_of(result)} {job.setting.epochs} ep: {result['seconds']:.0f}s", flush=True)
        if len(done) < len(results_file.read_text().splitlines()):  # replaced records: keep the newest only
            results_file.write_text("".join(json.dumps(r) + "\n" for r in done))
    minutes = (time.perf_counter() - start) / 60 if not args.report_only else None
    command = "python benchmarks/reward_regimes.py" + (" --quick" if args.quick else "")
    command += f" --seeds {args.seeds}" if args.seeds != 3 and not args.quick else ""
    text = report(done, command, minutes, ran)
    (out / "reward_regimes.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
