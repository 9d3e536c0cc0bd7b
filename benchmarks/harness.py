"""Noise-robustness experiments on the synthetic task, through the real `RobustDPOTrainer`.

Shared by the benchmark (`benchmarks/noise_robustness.py`) and the demo (`trl-robust demo`): build the task once per
seed (reference policy + clean pairs), inject label noise, train each method with identical data, initialisation and
optimiser, and record per epoch

- clean held-out preference accuracy of the implicit reward (TRL's `rewards/accuracies` on a clean split),
- the same accuracy on a *noisy* validation split (what a user without clean labels can see, for early stopping),
- policy improvement: the mean true reward of sampled responses minus the reference policy's.
"""

import json
import math
import multiprocessing
import os
import random
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

# ROPO's filter in the benchmark: ρ = 0.2 whatever the true flip rate (a user does not know it; not tuned), starting
# after `Setting.filter_warmup_epochs`, when DPO's clean accuracy has peaked on this task and the model agrees with
# the clean majority.
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
    # The one flag with no ratio to guess: ρ from the flip rate estimated each epoch (`trl_robust.noise.auto`).
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
AUDITED = ("DPO", "ROPO")  # policies whose final models are audited (AUROC), ROPO's also for the retrain
AUDIT_DROP_SHARE = 0.2  # the share of the most suspicious pairs left out: ρ of the filter, not the true flip rate


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


# A second task that differs in what matters to the defaults: the reward's structure (graded word scores, many
# near-tied pairs), twice the pairs, half the batch, a learning rate 3x lower, half the epochs (so twice the steps per
# epoch and the same pairs seen in all).
SECOND_TASK = Setting(n_train=2000, epochs=10, learning_rate=3e-3, batch_size=32, reward="graded")

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


def build_task(root, seed: int, setting: Setting) -> Path:
    """Fit the reference policy and draw the clean pairs for `seed`, cached under `root/tasks/seed<seed>`."""
    from transformers import AutoModelForCausalLM

    from .synthetic import RewardModel, fit_reference_policy, make_preference_pairs, random_prompts

    directory = task_dir(root, seed, setting)
    data_file = directory / "pairs.json"
    if data_file.exists():
        return directory
    reference_path = fit_reference_policy(directory / "reference", seed=seed)
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


def audit_job(job: Job, root) -> dict:
    """Audit `job`'s noisy training split with its saved final model (`trl_robust.audit`): AUROC, top suspects."""
    import torch

    from ..audit import audit_preferences
    from ..filtering import n_suspected

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


def _run_job_star(arguments):
    return run_job(*arguments)


def quiet_libraries() -> None:
    """One progress bar for the whole grid, and nothing else: no per-run dataset or weight-loading bars interleaved
    from the workers, no third-party FutureWarnings (TRL's and transformers' deprecations are for the tests to show),
    and tqdm's lock a thread lock, so spawned workers leave no semaphore behind ("leaked semaphore" at exit)."""
    import threading
    import warnings

    import datasets
    import transformers
    from tqdm.auto import tqdm

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    tqdm.set_lock(threading.RLock())


def run_grid(jobs: list[Job], root, workers: int = 2, results_file=None, progress=True) -> list[dict]:
    """Run `jobs` (tasks built first), `workers` processes with one thread each; append each result to `results_file`."""
    from tqdm.auto import tqdm

    quiet_libraries()
    root = Path(root)
    for seed, setting in dict.fromkeys((j.seed, j.setting) for j in jobs):
        build_task(root, seed, setting)
    results = []
    context = multiprocessing.get_context("spawn")  # torch + fork is fragile; spawn is what accelerate uses too
    with context.Pool(workers, initializer=quiet_libraries) as pool, tqdm(
        total=len(jobs), disable=not progress, desc="runs"
    ) as bar:
        for result in pool.imap_unordered(_run_job_star, [(job, root) for job in jobs]):
            results.append(result)
            if results_file is not None:
                with open(results_file, "a") as f:
                    f.write(json.dumps(result) + "\n")
            bar.set_postfix_str(f"{result['method']} {result['noise']} {result['flip_rate']} seed {result['seed']}")
            bar.update()
    return results


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


def grid_jobs(methods, flip_rates, seeds, setting: Setting, bias_rate: float | None = None) -> list[Job]:
    jobs = [Job(m, "symmetric", r, s, setting) for s in seeds for r in flip_rates for m in methods]
    if bias_rate is not None:
        jobs += [Job(m, "prefer_longer", bias_rate, s, setting) for s in seeds for m in methods]
    return jobs


def runs_note(total: int, ran: int, minutes: float | None) -> str:
    """"N runs in M min" for a report's header; where earlier calls' results were reused (the benchmarks resume), the
    time is said to be this call's alone."""
    if not minutes or not ran:
        return f"{total} runs"
    if ran == total:
        return f"{total} runs in {minutes:.1f} min"
    return f"{total} runs ({ran} of them run by this call, in {minutes:.1f} min; the others reused)"


def cpu_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


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
