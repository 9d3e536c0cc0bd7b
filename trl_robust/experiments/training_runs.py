"""Training runs on the synthetic task, through the real `RobustDPOTrainer`: what the demo (`trl-robust demo`) runs,
and the part of the benchmark harness (`benchmarks/harness.py`, not installed) that trains.

Build the task once per seed (reference policy + clean pairs), inject label noise, train each method with identical
data, initialisation and optimiser (in spawned worker processes, one thread each), and record per epoch

- clean held-out preference accuracy of the implicit reward (TRL's `rewards/accuracies` on a clean split),
- the same accuracy on a *noisy* validation split (what a user without clean labels can see, for early stopping),
- policy improvement: the mean true reward of sampled responses minus the reference policy's.

`METHODS` names every configuration a run can train (the benchmarks use all of them, the demo three). The tables,
plots, audits and reports of the benchmarks live in `benchmarks/harness.py`.
"""

import json
import math
import multiprocessing
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

# ROPO's filter in the benchmark: ρ = 0.2 whatever the true flip rate (a user does not know it; not tuned), from
# `Setting.filter_warmup_epochs` on, when DPO's clean accuracy has peaked and the model agrees with the clean majority.
FILTER = {"ropo_filter_ratio": 0.2}

# Methods compared: display name -> (loss_type, uses the true flip rate as label_smoothing, other config fields)
METHODS = {
    "DPO": ("sigmoid", False, {}),
    "rDPO": ("robust", True, {}),
    "IPO": ("ipo", False, {}),
    "ROPO": ("ropo", False, {}),
    "SymPO-sigmoid": ("sympo_sigmoid", False, {}),
    "SymPO-ramp": ("sympo_ramp", False, {}),
    "ROPO + filter (drop)": ("ropo", False, {**FILTER, "ropo_filter_mode": "drop"}),
    "ROPO + filter (correct)": ("ropo", False, {**FILTER, "ropo_filter_mode": "correct"}),
    "ROPO + epoch filter (drop)": ("ropo", False, {**FILTER, "ropo_filter_scope": "epoch", "ropo_filter_mode": "drop"}),
    "ROPO + epoch filter (correct)": (
        "ropo", False, {**FILTER, "ropo_filter_scope": "epoch", "ropo_filter_mode": "correct"}
    ),
    # The filter only where the model disagrees with the label (z < 0), at most ρ: less lost on clean data.
    "ROPO + epoch filter (drop, z < 0)": (
        "ropo", False, {**FILTER, "ropo_filter_scope": "epoch", "ropo_filter_mode": "drop", "ropo_filter_max_margin": 0.0}
    ),
    "ROPO + epoch filter (correct, z < 0)": (
        "ropo", False,
        {**FILTER, "ropo_filter_scope": "epoch", "ropo_filter_mode": "correct", "ropo_filter_max_margin": 0.0},
    ),
    # Trained on what the audit of the final ROPO policy kept: the training split without its most suspicious pairs.
    "Audit-clean-retrain (DPO)": ("sigmoid", False, {}),
    # The one flag with no ratio to guess: ρ from the flip rate estimated each epoch (`trl_robust.filter.auto`).
    "ROPO auto": ("ropo", False, {"ropo_filter_ratio": "auto"}),
    # Sensitivity of the auto mode to its choices: what it does with the suspects, and a longer warm-up.
    "ROPO auto (correct)": ("ropo", False, {"ropo_filter_ratio": "auto", "ropo_filter_mode": "correct"}),
    "ROPO auto (2-epoch warm-up)": ("ropo", False, {"ropo_filter_ratio": "auto", "warmup_epochs": 2}),
    # The ceiling of identification: DPO trained only on the pairs whose labels were not flipped.
    "Oracle (DPO on unflipped pairs)": ("sigmoid", False, {}),
}
WARMUP_EPOCHS = "warmup_epochs"  # not a config field: a method's filter warm-up in epochs, see `run_job`
AUDIT_RETRAIN = "Audit-clean-retrain (DPO)"
ORACLE = "Oracle (DPO on unflipped pairs)"


@dataclass(frozen=True)
class Setting:
    """How the task is built and trained; the same for every method in a grid."""

    n_train: int = 1000
    n_validation: int = 200
    n_test: int = 300
    n_reward_prompts: int = 300
    epochs: int = 20
    learning_rate: float = 1e-2
    beta: float = 0.1
    batch_size: int = 64
    filter_warmup_epochs: int = 2  # for the methods with ROPO's filter at a fixed ratio (`auto` has its own)
    reward: str = "topic"  # `synthetic.RewardModel.from_seed`'s kind
    # The true-reward gain samples responses for every reward prompt: each epoch (for the curves), or only after the
    # last one (a grid that compares accuracies only; the other epochs then record NaN).
    reward_gain_every_epoch: bool = True

    @property
    def task_name(self) -> str:
        """Names the task (what `build_task` builds): "" for the default one, else its sizes and reward kind."""
        default = Setting()
        fields = ("n_train", "n_validation", "n_test", "n_reward_prompts", "reward")
        if all(getattr(self, f) == getattr(default, f) for f in fields):
            return ""
        return f"{self.reward}-{self.n_train}-{self.n_validation}-{self.n_test}-{self.n_reward_prompts}"


# A second: graded word scores (many near-tied pairs), twice the pairs, half the batch, lr 3x lower, half the epochs.
SECOND_TASK = Setting(n_train=2000, epochs=10, learning_rate=3e-3, batch_size=32, reward="graded")
# A third at the easy end (issue 20, item 5): summed ±1 word scores, 4000 pairs; DPO reaches ~99% on clean labels.
THIRD_TASK = Setting(n_train=4000, epochs=10, learning_rate=3e-3, reward="sum")
# A fourth: the third's sizes, half the reward signed by the prompt (`stance`): unseen by a bag of response words.
FOURTH_TASK = Setting(n_train=4000, epochs=10, learning_rate=3e-3, reward="stance")


@dataclass(frozen=True)
class Job:
    method: str
    noise: str  # "symmetric" or "prefer_longer"
    flip_rate: float
    seed: int
    setting: Setting = field(default_factory=Setting)
    drop_rows: tuple[int, ...] = ()  # training rows left out (after the flips), e.g. an audit's top suspects
    save: bool = False  # keep the final model, for an audit


def task_dir(root: Path, seed: int, setting: Setting | None = None) -> Path:
    name = setting.task_name if setting is not None else ""
    return Path(root) / "tasks" / (f"{name}-seed{seed}" if name else f"seed{seed}")


# A task's work in the reference policy's fitting steps, for a progress bar: drawing the pairs takes about 100 more.
TASK_STEPS, PAIR_DRAWING_STEPS = 300, 100


def build_task(root, seed: int, setting: Setting, progress=None) -> Path:
    """Fit the reference policy and draw the clean pairs for `seed`, cached under `root/tasks/seed<seed>`.
    `progress(n)`, where given, is told of the work done, `TASK_STEPS + PAIR_DRAWING_STEPS` in all."""
    from transformers import AutoModelForCausalLM

    from .synthetic import RewardModel, fit_reference_policy, make_preference_pairs, random_prompts

    directory = task_dir(root, seed, setting)
    data_file = directory / "pairs.json"
    if data_file.exists():
        return directory
    reference_path = fit_reference_policy(directory / "reference", seed=seed, steps=TASK_STEPS,
                                          on_step=(lambda: progress(1)) if progress else None)
    reference = AutoModelForCausalLM.from_pretrained(reference_path)
    reward = RewardModel.from_seed(seed, setting.reward)
    n_pairs = setting.n_train + setting.n_validation + setting.n_test
    pairs = make_preference_pairs(reference, reward, n_pairs, seed=seed)
    data = {
        "train": pairs[: setting.n_train],
        "validation": pairs[setting.n_train : setting.n_train + setting.n_validation],
        "test": pairs[setting.n_train + setting.n_validation :],
        "reward_prompts": random_prompts(setting.n_reward_prompts, random.Random(f"reward-prompts-{seed}")),
    }
    data_file.write_text(json.dumps(data))
    if progress:
        progress(PAIR_DRAWING_STEPS)
    return directory


def run_dir(root, job: Job) -> Path:
    dropped = f"-drop{len(job.drop_rows)}" if job.drop_rows else ""
    task = f"{job.setting.task_name}-" if job.setting.task_name else ""
    return Path(root) / "runs" / f"{task}{job.method}-{job.noise}-{job.flip_rate}-{job.seed}{dropped}"


def noisy_train_split(root, job: Job):
    """The training split `job` trains on (before any `drop_rows`), with its `label_flipped` record."""
    from datasets import Dataset

    from ..data import flip_preferences

    data = json.loads((task_dir(root, job.seed, job.setting) / "pairs.json").read_text())
    return flip_preferences(Dataset.from_list(data["train"]), job.flip_rate, seed=job.seed, mode=job.noise)


def training_config(setting: Setting, output_dir, loss_type, seed: int, **overrides):
    """The benchmark's training arguments: the same optimiser, schedule, batches and evaluation for every method."""
    from .. import RobustDPOConfig

    return RobustDPOConfig(
        output_dir=str(output_dir),
        loss_type=loss_type,
        beta=setting.beta,
        learning_rate=setting.learning_rate,
        lr_scheduler_type="constant",
        num_train_epochs=setting.epochs,
        per_device_train_batch_size=setting.batch_size,
        per_device_eval_batch_size=150,
        eval_strategy="epoch",
        logging_strategy="epoch",
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        disable_tqdm=True,
        seed=seed,
        data_seed=seed,
        **overrides,
    )


def run_job(job: Job, root) -> dict:
    """Train one method on one noisy copy of the task; return its per-epoch curves."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PrinterCallback, TrainerCallback

    from .. import RobustDPOTrainer
    from ..data import flip_preferences
    from .synthetic import RewardModel, mean_true_reward

    torch.set_num_threads(1)
    setting = job.setting
    directory = task_dir(root, job.seed, setting)
    data = json.loads((directory / "pairs.json").read_text())
    reward = RewardModel.from_seed(job.seed, setting.reward)
    prompts = data["reward_prompts"]
    train = noisy_train_split(root, job)
    if job.method == ORACLE:
        job = replace(job, drop_rows=tuple(i for i, flipped in enumerate(train["label_flipped"]) if flipped))
    if job.drop_rows:
        dropped = set(job.drop_rows)
        train = train.select([i for i in range(len(train)) if i not in dropped])
    validation = flip_preferences(
        Dataset.from_list(data["validation"]), job.flip_rate, seed=job.seed + 1000, mode=job.noise
    )
    test = Dataset.from_list(data["test"])
    loss_type, smoothing_is_flip_rate, extra = METHODS[job.method]
    extra = dict(extra)
    # The filter's warm-up in epochs (a method's own, else the setting's for a fixed ratio; `auto` has none of its
    # own by default: it first decides after one epoch), turned into the optimizer steps the config counts.
    warmup_epochs = extra.pop(WARMUP_EPOCHS, None)
    if warmup_epochs is None and "ropo_filter_ratio" in extra and extra["ropo_filter_ratio"] != "auto":
        warmup_epochs = setting.filter_warmup_epochs
    if warmup_epochs is not None:
        extra["ropo_filter_warmup_steps"] = warmup_epochs * math.ceil(setting.n_train / setting.batch_size)
    reference = AutoModelForCausalLM.from_pretrained(directory / "reference")
    reference_reward = mean_true_reward(reference, reward, prompts, seed=job.seed)

    policy_rewards = []

    class PolicyReward(TrainerCallback):
        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            if _reports is not None:  # run_grid's bar moves at every epoch, not only when a run ends (minutes apart)
                _reports.put(1)
            if not setting.reward_gain_every_epoch and state.epoch < setting.epochs - 1e-6:
                policy_rewards.append(math.nan)
                return
            policy_rewards.append(mean_true_reward(model, reward, prompts, seed=job.seed) - reference_reward)
            model.train()

    args = training_config(
        setting, run_dir(root, job), loss_type, job.seed,
        label_smoothing=job.flip_rate if smoothing_is_flip_rate else 0.0, **extra,
    )
    trainer = RobustDPOTrainer(
        model=str(directory / "reference"),
        args=args,
        train_dataset=train,  # the flip record only feeds the filter's precision metric
        eval_dataset={"clean": test, "noisy_val": validation.remove_columns("label_flipped")},
        callbacks=[PolicyReward()],
    )
    trainer.remove_callback(PrinterCallback)  # one progress bar for the grid, not a dict per log line
    start = time.perf_counter()
    trainer.train()
    if job.save:
        trainer.save_model()
    history = trainer.state.log_history
    # TRL prefixes its own metrics with "eval_" only, so each split's accuracy is told apart by the loss key that
    # Trainer.evaluate logs in the same entry (`eval_<split>_loss`).
    return {
        **asdict(job),
        "drop_rows": len(job.drop_rows),
        "clean_accuracy": [e["eval_rewards/accuracies"] for e in history if "eval_clean_loss" in e],
        "noisy_val_accuracy": [e["eval_rewards/accuracies"] for e in history if "eval_noisy_val_loss" in e],
        "reward_gain": policy_rewards,
        # ROPO's filter: share of the distrusted pairs that were truly flipped, per epoch (None before it starts)
        "filter_precision": [e.get(f"{loss_type}/filter_precision") for e in history if "loss" in e],
        "filtered_frac": [e.get(f"{loss_type}/filtered_frac") for e in history if "loss" in e],
        # `auto`: the flip rate estimated at the start of each epoch from the previous one's margins (None in epoch 1)
        "estimated_flip_rate": [e.get("noise/estimated_flip_rate") for e in history if "loss" in e],
        "seconds": time.perf_counter() - start,
    }

# In a worker process of `run_grid`: the queue to which the work done is reported, for its progress bars; and in any
# process, where the warnings already shown were raised (`_show_warning_once`).
_reports, _warned = None, set()


def _start_worker(reports) -> None:
    import torch

    global _reports
    quiet_libraries()
    torch.set_num_threads(1)  # `workers` processes share the cores; one thread each is faster for a model this small
    _reports = reports


def _build_task_in_worker(arguments) -> Path:
    return build_task(*arguments, progress=_reports.put if _reports is not None else None)


def quiet_libraries() -> None:
    """The grid's progress bars, and little else: no per-run dataset or weight-loading bars from the workers, no
    third-party FutureWarnings (TRL's and transformers' deprecations are for the tests to show), other warnings once
    each, and tqdm's lock a thread lock, so spawned workers leave no semaphore behind ("leaked semaphore" at exit)."""
    import threading
    import warnings

    import datasets
    import transformers
    from tqdm.auto import tqdm

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.showwarning = _show_warning_once
    tqdm.set_lock(threading.RLock())


def _show_warning_once(message, category, filename, lineno, file=None, line=None) -> None:
    """Each warning (by where it is raised) once per process, on lines of its own: the auto mode's "cannot tell" came
    at every such epoch, ten lines each time, glued to the end of the progress bar's line."""
    if (filename, lineno) not in _warned:
        _warned.add((filename, lineno))
        sys.stderr.write(f"\n{filename}:{lineno}: {category.__name__}: {message}\n")


def run_grid(jobs: list[Job], root, workers: int = 2, results_file=None, progress=True) -> list[dict]:
    """Run `jobs`, `workers` processes with one thread each; append each result to `results_file`. The tasks (one per
    seed and setting) are built first, in the same workers, once (cached under `root`). With `progress`, a bar for the
    tasks that moves at every fitting step and one for the training that moves at every epoch of every run: a task or
    a run takes minutes on a small CPU, and a bar that moved only when one ended looked like a hang."""
    from tqdm.auto import tqdm

    if not jobs:
        return []
    quiet_libraries()
    root = Path(root)
    tasks = [(root, seed, setting) for seed, setting in dict.fromkeys((j.seed, j.setting) for j in jobs)
             if not (task_dir(root, seed, setting) / "pairs.json").exists()]
    context = multiprocessing.get_context("spawn")  # torch + fork is fragile; spawn is what accelerate uses too
    reports = context.SimpleQueue() if progress else None
    results = []

    def record(result):
        results.append(result)
        if results_file is not None:
            with open(results_file, "a") as f:
                f.write(json.dumps(result) + "\n")
        bar.set_postfix_str(f"{len(results)}/{len(jobs)} runs done, last: {result['method']} {result['noise']} "
                            f"{result['flip_rate']} seed {result['seed']}")

    with context.Pool(workers, initializer=_start_worker, initargs=(reports,)) as pool:
        with tqdm(total=len(tasks) * (TASK_STEPS + PAIR_DRAWING_STEPS), disable=not progress or not tasks,
                  desc="building the task (reference policy, clean pairs)", unit="step") as bar:
            _follow([pool.apply_async(_build_task_in_worker, (task,)) for task in tasks], reports, bar, lambda _: None)
        with tqdm(total=sum(job.setting.epochs for job in jobs), disable=not progress, desc="training",
                  unit="epoch") as bar:
            _follow([pool.apply_async(run_job, (job, root)) for job in jobs], reports, bar, record)
    return results


def _follow(pending: list, reports, bar, on_result) -> None:
    """Wait for the workers' `pending` results, each to `on_result` as it comes; move `bar` by the work reported."""
    while pending:
        for finished in [p for p in pending if p.ready()]:
            pending.remove(finished)
            on_result(finished.get())  # a worker's exception is raised here
        while reports is not None and not reports.empty():
            bar.update(reports.get())
        if pending:
            pending[0].wait(0.5)
    while reports is not None and not reports.empty():
        reports.get()  # what was still in flight: the bar ends full below, and the next one starts from zero
    bar.update(bar.total - bar.n)


# ---- summaries -------------------------------------------------------------------------------------------------


def early_stop_epoch(result: dict) -> int:
    """Epoch with the best *noisy* validation accuracy (the first, on ties): what a user without clean labels picks."""
    curve = result["noisy_val_accuracy"]
    return max(range(len(curve)), key=lambda i: (curve[i], -i))


def summarise(result: dict) -> dict:
    stop = early_stop_epoch(result)
    return {
        "final_accuracy": result["clean_accuracy"][-1],
        "peak_accuracy": max(result["clean_accuracy"]),
        "early_stopped_accuracy": result["clean_accuracy"][stop],
        "final_reward_gain": result["reward_gain"][-1],
        "early_stopped_reward_gain": result["reward_gain"][stop],
    }


def grid_jobs(methods, flip_rates, seeds, setting: Setting, bias_rate: float | None = None) -> list[Job]:
    jobs = [Job(m, "symmetric", r, s, setting) for s in seeds for r in flip_rates for m in methods]
    if bias_rate is not None:
        jobs += [Job(m, "prefer_longer", bias_rate, s, setting) for s in seeds for m in methods]
    return jobs


def cpu_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))
