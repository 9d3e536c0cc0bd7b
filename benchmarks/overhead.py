"""Overhead of the robust losses against stock TRL, measured side by side in one run.

For each model size, stock `trl.DPOTrainer` with `loss_type="sigmoid"` and `RobustDPOTrainer` with `sigmoid`, `ropo`,
`sympo_sigmoid`, `sympo_ramp`, `ropo` with ROPO's per-step filter (ρ 0.2, from the first step) and `ropo` with
`ropo_filter_ratio: auto` (which records every margin and estimates the flip rate at each epoch's start) train the same
model on the same data, over 3 epochs. For `auto` the estimator's own time per epoch is also reported as a share of an
epoch's training time. Then the same for reward models: stock `trl.RewardTrainer` against `trl_robust.RewardTrainer`
with `bradley_terry`, `sympo_sigmoid` and `ropo`. Every measurement runs in a fresh process
(so peak memory is that configuration's own; `--quick`, a smoke run, runs them all in one), and the configurations are interleaved over several rounds so that
drift in machine load hits all of them alike; the median over rounds is reported, as a ratio to stock TRL.

    python benchmarks/overhead.py            # tiny (~0.03M) and small (~25M parameter) Llama, CPU
    python benchmarks/overhead.py --quick    # tiny model only, fewer steps, all in one process: a smoke run

Peak memory is the process's peak resident set size on CPU, and `torch.cuda.max_memory_allocated` on a GPU.
"""

import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from transformers import HfArgumentParser  # noqa: E402

# (trainer, loss_type, extra config fields)
CONFIGS = [("stock TRL", "sigmoid", ()), ("trl-robust", "sigmoid", ()), ("trl-robust", "ropo", ()),
           ("trl-robust", "sympo_sigmoid", ()), ("trl-robust", "sympo_ramp", ()),
           ("trl-robust", "ropo", (("ropo_filter_ratio", 0.2),)),
           ("trl-robust", "ropo", (("ropo_filter_ratio", "auto"),))]
# Reward models: stock `trl.RewardTrainer` (Bradley–Terry) against `RobustRewardTrainer`, its own baseline.
REWARD_CONFIGS = [("stock TRL", "bradley_terry", ()), ("trl-robust", "bradley_terry", ()),
                  ("trl-robust", "sympo_sigmoid", ()), ("trl-robust", "ropo", ()),
                  ("trl-robust", "bradley_terry", (("ropo_filter_ratio", "auto"),))]
EPOCHS = 3  # every run spans 3 epochs, so that `ropo_filter_ratio: auto` records, estimates and filters twice
MODELS = {"tiny": dict(hidden_size=32, num_layers=2), "small": dict(hidden_size=512, num_layers=8)}


@dataclass
class OverheadArguments:
    output_dir: str = field(default="benchmarks/results", metadata={"help": "Where overhead.md goes."})
    quick: bool = field(default=False, metadata={
        "help": "Smoke run: tiny model only, fewer steps and rounds, every configuration in one process."})
    rounds: int = field(default=5, metadata={"help": "Interleaved rounds; the median is reported."})


def measure(trainer_kind: str, loss_type: str, extra: tuple, model_path: str, steps: int, batch_size: int,
            family: str = "dpo") -> dict:
    """Train `steps` steps after 3 warm-up steps in this (fresh) process; return steps/s and peak memory. `family`:
    `dpo` (the DPO trainers) or `reward` (the reward trainers, a one-output head on the same model)."""
    import resource

    import torch
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback

    import trl_robust
    from trl_robust.tiny import tiny_preference_records

    torch.set_num_threads(1)
    timings = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            timings.append(time.perf_counter())

        def on_train_end(self, args, state, control, **kwargs):
            timings.append(time.perf_counter())

    stock = trainer_kind == "stock TRL"
    config_cls, trainer_cls = {
        ("dpo", True): (trl.DPOConfig, trl.DPOTrainer),
        ("dpo", False): (trl_robust.DPOConfig, trl_robust.DPOTrainer),
        ("reward", True): (trl.RewardConfig, trl.RewardTrainer),
        ("reward", False): (trl_robust.RewardConfig, trl_robust.RewardTrainer),
    }[family, stock]
    # Stock TRL's reward config has no `loss_type`: its loss is Bradley–Terry.
    loss = {} if family == "reward" and stock else {"loss_type": loss_type}
    args = config_cls(
        output_dir=f"/tmp/trl-robust-overhead-{os.getpid()}",
        **loss,
        max_steps=steps + 3,
        per_device_train_batch_size=batch_size,
        learning_rate=1e-4,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        save_strategy="no",
        logging_steps=10_000,
        gradient_checkpointing=False,
        disable_tqdm=True,
        bf16=False,
        **dict(extra),
    )
    dataset = Dataset.from_list(tiny_preference_records(n=batch_size * -(-(steps + 3) // EPOCHS), seed=0))
    trainer = trainer_cls(model=model_path, args=args, train_dataset=dataset, callbacks=[Clock()])
    estimator_seconds = []
    for callback in trainer.callback_handler.callbacks:
        if hasattr(callback, "_decide_from_the_last_epoch"):  # `auto`: time the estimate and the choice of suspects
            decide = callback._decide_from_the_last_epoch

            def timed(*a, decide=decide, **k):
                start = time.perf_counter()
                try:
                    return decide(*a, **k)
                finally:
                    estimator_seconds.append(time.perf_counter() - start)

            callback._decide_from_the_last_epoch = timed
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    steady = timings[3:]  # from the start of step 4 to the end of training
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if torch.cuda.is_available()
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    steps_per_second = (len(steady) - 1) / (steady[-1] - steady[0])
    epoch_seconds = len(dataset) / batch_size / steps_per_second
    estimator_share = statistics.fmean(estimator_seconds) / epoch_seconds if estimator_seconds else None
    return {"steps_per_second": steps_per_second, "peak_memory_mib": peak, "estimator_share": estimator_share}


def table_rows(configs, family: str, paths: dict, rounds: int, quick: bool, context) -> list[str]:
    """Measure every configuration on every model, interleaved over `rounds`, each in a fresh process; one table row
    each, with ratios against the first configuration."""
    from transformers import AutoModelForCausalLM

    rows = []
    for name, path in paths.items():
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(path).parameters())
        steps, batch = {"tiny": (60, 16), "small": (24, 8)}[name] if not quick else (10, 8)
        samples = {config: [] for config in configs}
        for _ in range(rounds):
            # A fresh process for each measurement, so that its peak memory is its own; `--quick` (a smoke run of the
            # code paths, which CI runs) measures them all in one process: one start-up instead of one each.
            with context.Pool(1, maxtasksperchild=None if quick else 1) as pool:
                for config in configs:
                    samples[config].append(pool.apply(measure, (*config, str(path), steps, batch, family)))
        base_speed = statistics.median(s["steps_per_second"] for s in samples[configs[0]])
        base_memory = statistics.median(s["peak_memory_mib"] for s in samples[configs[0]])
        for config in configs:
            speed = statistics.median(s["steps_per_second"] for s in samples[config])
            memory = statistics.median(s["peak_memory_mib"] for s in samples[config])
            ratio = dict(config[2]).get("ropo_filter_ratio")
            label = f"`{config[1]}`" + {None: "", 0.2: " + filter (ρ 0.2, per step)", "auto": " + `ropo_filter_ratio: auto`"}[ratio]
            shares = [s["estimator_share"] for s in samples[config] if s["estimator_share"] is not None]
            share = f"{statistics.median(shares):.4f}" if shares else "–"
            rows.append(
                f"| {name} ({n_params / 1e6:.2f}M) | {config[0]} | {label} | {speed:.2f} | {speed / base_speed:.3f} "
                f"| {memory:.0f} | {memory / base_memory:.3f} | {share} |"
            )
    return rows


def main(argv=None) -> None:
    (args,) = HfArgumentParser(OverheadArguments).parse_args_into_dataclasses(argv)
    from trl_robust.tiny import make_tiny_model

    rounds = min(args.rounds, 2) if args.quick else args.rounds
    models = {"tiny": MODELS["tiny"]} if args.quick else MODELS
    # The models in a directory of this run's own: two runs at once must not overwrite each other's.
    work = Path(tempfile.mkdtemp(prefix="trl-robust-overhead-models-"))
    lines = [
        "# Overhead of the robust losses vs stock TRL",
        f"`python benchmarks/overhead.py{' --quick' if args.quick else ''}`: median of {rounds} interleaved rounds, "
        + ("every configuration in one process (a smoke run: the memory column is that process's running peak, not "
           "each configuration's own)" if args.quick else "each configuration in a fresh process")
        + ", one CPU thread. Ratios are against stock `trl.DPOTrainer` with "
        "`sigmoid` on the same model and data, measured in the same run (> 1 = faster / more memory). `estimator / "
        "epoch`: for `ropo_filter_ratio: auto`, the time of each epoch's estimate and choice of suspects as a share of "
        "the time of one training epoch (here an epoch is a third of the run's steps; it scales with the data, the "
        "estimate hardly: the margins are binned).",
        "",
        "| model | trainer | loss_type | steps/s | ratio | peak memory (MiB) | ratio | estimator / epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    context = multiprocessing.get_context("spawn")
    try:
        paths = {name: make_tiny_model(work / name, **shape) for name, shape in models.items()}
        lines += table_rows(CONFIGS, "dpo", paths, rounds, args.quick, context)
        lines += [
            "",
            "## Reward models",
            "",
            "Stock `trl.RewardTrainer` (Bradley–Terry) against `trl_robust.RewardTrainer` on the same model with a "
            "one-output head, same data and steps, same rounds (ratios against the first row, > 1 = faster / more memory). "
            "`bradley_terry` with `ropo_filter_ratio: auto` is computed by trl-robust per pair (TRL's code runs otherwise).",
            "",
            "| model | trainer | loss_type | steps/s | ratio | peak memory (MiB) | ratio | estimator / epoch |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += table_rows(REWARD_CONFIGS, "reward", paths, rounds, args.quick, context)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = "\n".join(lines) + "\n"
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "overhead.md").write_text(report)
    print(report)


if __name__ == "__main__":
    sys.exit(main())
