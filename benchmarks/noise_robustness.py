"""Noise-robustness benchmark: which method keeps working as preference labels get noisier?

On the built-in synthetic task (`trl_robust.experiments.synthetic`), through the real `RobustDPOTrainer`, with the same data,
initialisation and optimiser for all, × symmetric flip rates {0, 20, 40}% × 3 seeds (plus a length-biased annotator
at 20% for the loss-only methods):
- DPO, rDPO (given the true flip rate), IPO, and the loss-only robust methods ROPO, SymPO-sigmoid, SymPO-ramp;
- ROPO with its noisy-sample filter, per step and per epoch, dropping or correcting (ρ 0.2, after 2 epochs), and per
  epoch with `ropo_filter_max_margin: 0` (only suspects the model disagrees with);
- audit-clean-retrain: the final DPO and ROPO policies audit the noisy training split (AUROC against the flip
  record), and DPO is retrained without the 20% most suspicious pairs of the ROPO audit.

    python benchmarks/noise_robustness.py            # full grid, ~30 min on 2 CPU cores
    python benchmarks/noise_robustness.py --quick    # smoke run, ~2 min
    python benchmarks/noise_robustness.py --flip_rates 0 0.1 0.2 0.3 0.4 --seeds 5

Writes `<output_dir>/noise_robustness.{jsonl,md,png}`: raw per-epoch curves and audit scores, the tables, the plot.
"""

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from transformers import HfArgumentParser  # noqa: E402

import harness as nb  # noqa: E402  benchmarks/harness.py: this folder is on sys.path when a script runs


@dataclass
class BenchmarkArguments:
    output_dir: str = field(default="benchmarks/results", metadata={"help": "Where results, table and plot go."})
    quick: bool = field(
        default=False, metadata={"help": "Smoke run: DPO, ROPO, the epoch filter and the retrain; 0%% and 40%%; 1 seed."}
    )
    workers: int = field(default=0, metadata={"help": "Parallel runs (one CPU thread each); 0 = min(2, CPU count)."})
    seeds: int = field(default=3, metadata={"help": "Seeds per cell (full grid); each adds ~10 min on 2 cores."})
    flip_rates: list[float] = field(
        default_factory=lambda: [0.0, 0.2, 0.4], metadata={"help": "Symmetric flip rates (full grid)."}
    )


def main(argv=None) -> None:
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(argv)
    # The retrain needs the ROPO runs' audits first; the auto mode's variants belong to `noise_auto.py`.
    phase_one = [m for m in nb.METHODS if m != nb.AUDIT_RETRAIN and not m.startswith("ROPO auto (")]
    if args.quick:
        setting = nb.Setting(n_train=300, n_validation=100, n_test=100, n_reward_prompts=100, epochs=3,
                             filter_warmup_epochs=1)
        jobs = nb.grid_jobs(["DPO", "ROPO", "ROPO + epoch filter (correct)"], [0.0, 0.4], [0], setting)
    else:
        setting = nb.Setting()
        seeds = list(range(args.seeds))
        jobs = nb.grid_jobs(phase_one, args.flip_rates, seeds, setting)
        loss_only = [m for m in phase_one if "filter" not in m]
        jobs += nb.grid_jobs(loss_only, [], seeds, setting, bias_rate=0.2)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "noise_robustness.jsonl"
    results_file.unlink(missing_ok=True)
    start = time.perf_counter()
    results = nb.run_with_audit_retrain(
        jobs, out / "work", workers=args.workers or nb.cpu_workers(), results_file=results_file
    )
    minutes = (time.perf_counter() - start) / 60
    command = "python benchmarks/noise_robustness.py" + (" --quick" if args.quick else "")
    report = nb.report(results, setting, command=command, minutes=minutes)
    (out / "noise_robustness.md").write_text(report)
    nb.plot(results, out / "noise_robustness.png")
    print(report)


if __name__ == "__main__":
    sys.exit(main())
