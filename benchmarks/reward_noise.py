"""Do the symmetric losses, or ROPO's filter, make a better reward model under label noise? Bradley–Terry against SymPO's
three losses, against itself with `ropo_filter_ratio: auto`, and against the ROPO loss with it.

On the two synthetic tasks of the DPO benchmarks (`TASKS`; `trl_robust.experiments`: a known true reward,
`synthetic.RewardModel`), a reward model is the task's reference causal LM with TRL's fresh one-output classification
head (as `RobustRewardTrainer` loads any causal LM path), trained on the same noisy pairs with the same initialisation
and optimiser (paired by seed) by each of `METHODS`: `loss_type` bradley_terry, sympo_sigmoid, sympo_ramp and
sympo_unhinged; bradley_terry and ropo with ROPO's filter at `ropo_filter_ratio: auto` (the flip rate estimated each
epoch from the training margins, that share distrusted); and Bradley–Terry on only the unflipped pairs (the oracle:
what a filter that knew the flips would leave). Per epoch:
- clean held-out pairwise accuracy: TRL's reward `accuracy` on a clean test split;
- the same on a *noisy* validation split (what a user without clean labels can early-stop on);
- Spearman's rank correlation of the reward model's score with the true reward, over held-out (prompt, response)
  samples (both responses of each clean test pair): the ranking SymPO's theory says a symmetric loss keeps;
- what the ranking buys (issue 21): best-of-n with n = 4 and 16 (`BEST_OF`). For each of the task's held-out reward
  prompts, 16 responses sampled from the reference policy (the same candidates for every method of a seed,
  `best_of_n_candidates`); the reward model picks the highest-scoring of each disjoint group of n, and the true reward
  of its picks is compared with the reference's average and with picking by the true reward itself.
Reported: Bradley–Terry early-stopped on the noisy validation split and at its last epoch, each other method at its last
epoch (mean ± std over seeds), the paired differences by seed, and the auto filter's estimated flip rate and precision,
per task. Cells: symmetric flips at 0, 20, 40%, and 20% from an annotator who prefers the longer response
(`prefer_longer`). A task whose runs predate best-of-n (the second, in the results file) has no best-of-n section.

    python benchmarks/reward_noise.py                 # 10 seeds, both tasks, 560 runs: ~50 min on 2 CPU cores
    python benchmarks/reward_noise.py --seeds 3 --tasks first   # a smaller look
    python benchmarks/reward_noise.py --report_only   # the tables again from the results file
    python benchmarks/reward_noise.py --quick --output_dir /tmp/rm   # smoke run: 1 seed, 0% and 40%, 2 epochs

Results (`<output_dir>/reward_noise.jsonl`) are appended run by run and reused: an interrupted run continues where it
stopped. Writes `<output_dir>/reward_noise.md`.

(About 440 lines, over the house's ~400: the runs, the best-of-n candidates and the report of one benchmark, which
read together; the shared parts are in `harness.py`.)
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

from transformers import HfArgumentParser  # noqa: E402

import harness as nb  # noqa: E402  benchmarks/harness.py: this folder is on sys.path when a script runs

BT = "Bradley–Terry"
BT_AUTO = "Bradley–Terry + auto filter"
ORACLE = "Bradley–Terry on the unflipped pairs (oracle)"
# Each method's reward-config fields. The oracle trains Bradley–Terry on the pairs whose label was not flipped: what a
# filter that knew the flips would leave (the ceiling of any filter).
METHODS = {
    BT: {"loss_type": "bradley_terry"},
    "SymPO-sigmoid": {"loss_type": "sympo_sigmoid"},
    "SymPO-ramp": {"loss_type": "sympo_ramp"},
    "SymPO-unhinged": {"loss_type": "sympo_unhinged"},
    BT_AUTO: {"loss_type": "bradley_terry", "ropo_filter_ratio": "auto"},
    "ROPO + auto filter": {"loss_type": "ropo", "ropo_filter_ratio": "auto"},
    ORACLE: {"loss_type": "bradley_terry"},
}
FILTERING = [name for name, config in METHODS.items() if "ropo_filter_ratio" in config]
CELLS = (("symmetric", 0.0), ("symmetric", 0.2), ("symmetric", 0.4), ("prefer_longer", 0.2))
# The two tasks of the DPO benchmarks, trained as reward models at a constant lr 3e-3 for 10 epochs (not tuned for any
# method): the first (1000 pairs, ±1 word rewards with a topic bonus, batch 64) and `SECOND_TASK` (2000 pairs, graded
# word rewards with many near-ties, batch 32).
TASKS = {"first": replace(nb.Setting(), epochs=10, learning_rate=3e-3, reward_gain_every_epoch=False),
         "second": replace(nb.SECOND_TASK, reward_gain_every_epoch=False)}
SETTING = TASKS["first"]
QUICK = replace(SETTING, n_train=200, n_validation=60, n_test=60, n_reward_prompts=20, epochs=2)
QUICK_CELLS = (("symmetric", 0.0), ("symmetric", 0.4))
BEST_OF = (4, 16)  # the n of best-of-n; max(BEST_OF) candidates are sampled per prompt


@dataclass
class Arguments:
    output_dir: str = field(default="benchmarks/results", metadata={"help": "Where the results and the report go."})
    seeds: int = field(default=10, metadata={"help": "Seeds per cell (paired across the losses)."})
    tasks: list[str] = field(default_factory=lambda: list(TASKS), metadata={"help": "Tasks to run: first, second."})
    workers: int = field(default=0, metadata={"help": "Parallel runs (one CPU thread each); 0 = min(2, CPU count)."})
    report_only: bool = field(default=False, metadata={"help": "Only rewrite the report from the results file."})
    quick: bool = field(default=False, metadata={"help": "Smoke run: a 200-pair task, 2 epochs, 0%% and 40%%, 1 seed."})


@dataclass(frozen=True)
class RewardJob:
    method: str
    noise: str
    flip_rate: float
    seed: int
    setting: nb.Setting = SETTING


def key(result: dict) -> tuple:
    return (result["setting"]["n_train"], result["setting"]["epochs"], result["method"], result["noise"],
            result["flip_rate"], result["seed"])


def job_key(job: RewardJob) -> tuple:
    return (job.setting.n_train, job.setting.epochs, job.method, job.noise, job.flip_rate, job.seed)


def spearman(scores, truth) -> float:
    """Spearman's ρ: Pearson's correlation of the average ranks (ties share their rank)."""
    from trl_robust.audit import average_ranks

    a, b = average_ranks(scores), average_ranks(truth)
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator else math.nan


def best_of_n_candidates(directory, seed: int, true_reward) -> dict:
    """max(BEST_OF) responses sampled (temperature 1) from the task's reference policy for each of its held-out reward
    prompts, with their true rewards: what every method's reward model picks from. Cached beside the task's pairs."""
    path = Path(directory) / "best_of_n.json"
    if path.exists():
        return json.loads(path.read_text())
    from transformers import AutoModelForCausalLM

    from trl_robust.experiments.synthetic import sample_responses

    prompts = json.loads((Path(directory) / "pairs.json").read_text())["reward_prompts"]
    reference = AutoModelForCausalLM.from_pretrained(Path(directory) / "reference")
    # Sampling seeds apart from the pairs' (seed·1000 + 2·draw, draw < 8): the candidates are fresh draws.
    draws = [sample_responses(reference, prompts, seed=seed * 1000 + 100 + k) for k in range(max(BEST_OF))]
    responses = [[draw[i] for draw in draws] for i in range(len(prompts))]
    candidates = {"prompts": prompts, "responses": responses,
                  "true_rewards": [[true_reward(p, r) for r in rs] for p, rs in zip(prompts, responses)]}
    path.write_text(json.dumps(candidates))
    return candidates


def best_of_n(scores, true_rewards, n: int) -> float:
    """Mean true reward of the pick: per prompt, each disjoint group of `n` candidates (in sampling order) gives the
    true reward of its highest-scoring candidate (the first on ties); averaged over groups and prompts."""
    picks = []
    for prompt_scores, prompt_rewards in zip(scores, true_rewards):
        for start in range(0, len(prompt_scores) - n + 1, n):
            best = max(range(start, start + n), key=lambda i: (prompt_scores[i], -i))
            picks.append(prompt_rewards[best])
    return statistics.fmean(picks)


def run_reward_job(job: RewardJob, root, trainer_class=None) -> dict:
    """Train one reward model on one noisy copy of the task; return its per-epoch curves. `trainer_class`: a subclass
    of `RobustRewardTrainer` to train with instead (one that records more, as `reward_regimes.py`'s does)."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback

    from trl_robust import RobustRewardConfig, RobustRewardTrainer
    from trl_robust.data import flip_preferences
    from trl_robust.experiments.synthetic import RewardModel

    torch.set_num_threads(1)
    setting = job.setting
    directory = nb.task_dir(root, job.seed, setting)
    data = json.loads((directory / "pairs.json").read_text())
    true_reward = RewardModel.from_seed(job.seed, setting.reward)
    # The same flips as the DPO benchmark's for this seed, rate and mode.
    train = nb.noisy_train_split(root, nb.Job("DPO", job.noise, job.flip_rate, job.seed, setting))
    if job.method == ORACLE:
        train = train.filter(lambda row: not row["label_flipped"])
    validation = flip_preferences(Dataset.from_list(data["validation"]), job.flip_rate, seed=job.seed + 1000,
                                  mode=job.noise).remove_columns("label_flipped")
    test = Dataset.from_list(data["test"])
    samples = [(pair["prompt"], pair[side]) for pair in data["test"] for side in ("chosen", "rejected")]
    truth = [true_reward(prompt, response.strip()) for prompt, response in samples]
    candidates = best_of_n_candidates(directory, job.seed, true_reward)
    candidate_texts = [prompt + " " + response for prompt, responses in zip(candidates["prompts"],
                                                                            candidates["responses"])
                       for response in responses]
    correlations, picks = [], {str(n): [] for n in BEST_OF}

    class HeldOutScores(TrainerCallback):
        """After every epoch: Spearman's ρ of the model's score and the true reward on the held-out samples, and the
        true reward of the model's best-of-n picks among the reference policy's candidates."""

        def on_epoch_end(self, args, state, control, model=None, processing_class=None, **kwargs):
            tokenizer = processing_class

            def score(texts):
                texts = [text + tokenizer.eos_token for text in texts]  # as TRL tokenises
                scores = []
                with torch.no_grad():
                    for start in range(0, len(texts), 256):
                        batch = tokenizer(texts[start : start + 256], return_tensors="pt", padding=True)
                        scores += model(**batch).logits[:, 0].float().tolist()
                return scores

            model.eval()
            correlations.append(spearman(score([prompt + response for prompt, response in samples]), truth))
            flat, k = score(candidate_texts), max(BEST_OF)
            by_prompt = [flat[i : i + k] for i in range(0, len(flat), k)]
            for n in BEST_OF:
                picks[str(n)].append(best_of_n(by_prompt, candidates["true_rewards"], n))
            model.train()

    args = RobustRewardConfig(
        output_dir=str(Path(root) / "runs" / f"{job.method}-{job.noise}-{job.flip_rate}-{job.seed}"),
        **METHODS[job.method], learning_rate=setting.learning_rate, lr_scheduler_type="constant",
        num_train_epochs=setting.epochs, per_device_train_batch_size=setting.batch_size, per_device_eval_batch_size=150,
        eval_strategy="epoch", logging_strategy="epoch", save_strategy="no", report_to="none", use_cpu=True, bf16=False,
        gradient_checkpointing=False, disable_tqdm=True, seed=job.seed, data_seed=job.seed,
    )
    trainer = (trainer_class or RobustRewardTrainer)(
        model=str(directory / "reference"), args=args, train_dataset=train,
        eval_dataset={"clean": test, "noisy_val": validation}, callbacks=[HeldOutScores()],
    )
    trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    trainer.train()
    history = trainer.state.log_history
    # TRL's eval metrics carry no split name: each split's entry is told apart by Trainer's `eval_<split>_loss`.
    return {
        **asdict(job),
        "clean_accuracy": [e["eval_accuracy"] for e in history if "eval_clean_loss" in e],
        "noisy_val_accuracy": [e["eval_accuracy"] for e in history if "eval_noisy_val_loss" in e],
        "spearman": correlations,
        # Best-of-n: the true reward of the picks per epoch ("4", "16"), and the two references of the seed's
        # candidates: their mean (the reference policy's) and picking by the true reward.
        "best_of_n": picks,
        "best_of_n_reference": statistics.fmean(r for rs in candidates["true_rewards"] for r in rs),
        "best_of_n_true_pick": {str(n): best_of_n(candidates["true_rewards"], candidates["true_rewards"], n)
                                for n in BEST_OF},
        # The filter's own log, once per epoch from the second on (`auto`): its estimate, and how well it chose.
        "estimated_flip_rate": [e.get("noise/estimated_flip_rate") for e in history if "noise/filter_ratio" in e],
        "filter_precision": [e.get(f"{args.loss_type}/filter_precision") for e in history
                             if f"{args.loss_type}/filtered_frac" in e],
        "seconds": time.perf_counter() - start,
    }


def _run_star(arguments):
    return run_reward_job(*arguments)


def run_grid(jobs: list[RewardJob], root, workers: int, results_file) -> list[dict]:
    """`nb.run_grid` for reward jobs: tasks built first, spawned workers with one thread each, results appended."""
    nb.quiet_libraries()
    from trl_robust.experiments.synthetic import RewardModel

    for seed, setting in dict.fromkeys((j.seed, j.setting) for j in jobs):
        best_of_n_candidates(nb.build_task(root, seed, setting), seed, RewardModel.from_seed(seed, setting.reward))
    results = []
    with multiprocessing.get_context("spawn").Pool(workers, initializer=nb.quiet_libraries) as pool:
        for result in pool.imap_unordered(_run_star, [(job, root) for job in jobs]):
            results.append(result)
            with open(results_file, "a") as file:
                file.write(json.dumps(result) + "\n")
            print(f"{result['method']} {result['noise']} {result['flip_rate']} seed {result['seed']}: "
                  f"{result['seconds']:.0f}s", flush=True)
    return results


# ---- the report ---------------------------------------------------------------------------------------------------


def outcomes(result: dict) -> dict:
    """Accuracy and ρ at the last epoch and at the epoch with the best noisy validation accuracy (first on ties)."""
    stop = nb.early_stop_epoch(result)
    return {"last": (result["clean_accuracy"][-1], result["spearman"][-1]),
            "early": (result["clean_accuracy"][stop], result["spearman"][stop])}


def ms(values, scale=1.0, digits=3, sign="") -> str:
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values) * scale:{sign}.{digits}f} ± {std * scale:.{digits}f}"


def report(results: list[dict], command: str, minutes: float | None, ran: int = 0) -> str:
    lines = [
        "# Robust reward models under label noise: Bradley–Terry vs SymPO's symmetric losses and ROPO's filter",
        "",
        f"`{command}` — {nb.runs_note(len(results), ran, minutes)}. The reward model is the task's reference LM with a "
        "fresh one-output head. Accuracy: TRL's reward `accuracy` on a clean held-out split (points). ρ: Spearman's rank "
        "correlation of the score with the true reward on held-out (prompt, response) samples. Bradley–Terry "
        "early-stopped = at its epoch with the best accuracy on a *noisy* validation split.",
    ]
    by_task = {}
    for result in results:
        setting = result["setting"]
        by_task.setdefault((setting["reward"], setting["n_train"]), []).append(result)
    names = {(t.reward, t.n_train): name for name, t in TASKS.items()}
    order = list(names)  # the tasks in `TASKS` order, whatever order their results were appended in
    for task, mine in sorted(by_task.items(), key=lambda item: order.index(item[0]) if item[0] in order else -1):
        lines += task_report(mine, names.get(task, "quick"))
    return "\n".join(lines) + "\n"


def task_report(results: list[dict], name: str) -> list[str]:
    """One task's tables: every method at each noise cell, paired against Bradley–Terry; then the filter's estimate."""
    runs = {(r["method"], r["noise"], r["flip_rate"], r["seed"]): outcomes(r) for r in results}
    seeds = sorted({r["seed"] for r in results})
    cells = sorted({(r["noise"], r["flip_rate"]) for r in results}, key=lambda c: (c[0] != "symmetric", c))
    setting = results[0]["setting"]
    lines = [
        "", f"# The {name} task", "",
        f"{setting['n_train']} pairs, reward `{setting['reward']}`, {setting['epochs']} epochs, constant lr "
        f"{setting['learning_rate']}, batch {setting['batch_size']}; {len(results)} runs, seeds {len(seeds)}.",
    ]
    rows = [(f"{BT}, early-stopped", BT, "early"), (f"{BT}, last epoch", BT, "last")]
    rows += [(f"{m}, last epoch", m, "last") for m in METHODS if m != BT]
    for noise, rate in cells:
        label = f"{rate:.0%} " + ("symmetric" if noise == "symmetric" else "prefer_longer")
        lines += ["", f"## {label} flips", "",
                  "| method | clean accuracy | ρ with the true reward | − BT early-stopped (acc., paired) | "
                  "− BT early-stopped (ρ, paired) | − BT last (acc., paired) |",
                  "|---|---|---|---|---|---|"]
        for name, method, when in rows:
            mine = [s for s in seeds if (method, noise, rate, s) in runs]
            if not mine:
                continue
            accuracy = [runs[(method, noise, rate, s)][when][0] for s in mine]
            rho = [runs[(method, noise, rate, s)][when][1] for s in mine]
            paired = [s for s in mine if (BT, noise, rate, s) in runs]
            d_acc = [runs[(method, noise, rate, s)][when][0] - runs[(BT, noise, rate, s)]["early"][0] for s in paired]
            d_rho = [runs[(method, noise, rate, s)][when][1] - runs[(BT, noise, rate, s)]["early"][1] for s in paired]
            d_last = [runs[(method, noise, rate, s)][when][0] - runs[(BT, noise, rate, s)]["last"][0] for s in paired]
            is_bt = method == BT
            lines.append(
                f"| {name} | {ms(accuracy, 100, 1)} | {ms(rho)} | "
                + ("–" if is_bt and when == "early" else ms(d_acc, 100, 1, "+")) + " | "
                + ("–" if is_bt and when == "early" else ms(d_rho, 1, 3, "+")) + " | "
                + ("–" if is_bt and when == "last" else ms(d_last, 100, 1, "+")) + " |"
            )
    return lines + best_of_n_report(results, cells) + filter_report(results, cells)


def best_of_n_report(results: list[dict], cells) -> list[str]:
    """What each reward model buys when it picks the best of n reference samples: the true reward of its picks at the
    same epochs as the accuracy tables, against the reference's average and against picking by the true reward."""
    results = [r for r in results if r.get("best_of_n")]
    if not results:
        return []
    # The candidates are the seed's: the two references are the same for every method of a seed.
    by_seed = {r["seed"]: r for r in results}
    reference = statistics.fmean(r["best_of_n_reference"] for r in by_seed.values())
    ceiling = {n: statistics.fmean(r["best_of_n_true_pick"][str(n)] for r in by_seed.values()) for n in BEST_OF}
    lines = ["", "## What the reward model buys: best-of-n on held-out prompts", "",
             f"For each held-out reward prompt, {max(BEST_OF)} responses sampled from the reference policy; the reward "
             "model picks the highest-scoring response of each disjoint group of n. True reward of the picks (mean over "
             f"groups and prompts, then mean ± std over seeds): the reference's average is {reference:+.3f}; picking by "
             "the true reward gets " + ", ".join(f"{ceiling[n]:+.3f} at n = {n}" for n in BEST_OF) + ". *Share*: "
             "(pick − reference average) / (true-reward pick − reference average), per seed. Paired differences "
             "against Bradley–Terry early-stopped on the noisy validation split."]
    runs = {(r["method"], r["noise"], r["flip_rate"], r["seed"]): r for r in results}
    rows = [(f"{BT}, early-stopped", BT, "early"), (f"{BT}, last epoch", BT, "last")]
    rows += [(f"{m}, last epoch", m, "last") for m in METHODS if m != BT]
    header = " | ".join(f"best-of-{n} | share" for n in BEST_OF)
    lines += ["", f"| flips | method | {header} | − BT early-stopped (best-of-{max(BEST_OF)}, paired) |",
              "|---" * (3 + 2 * len(BEST_OF)) + "|"]

    def pick(result, when, n):
        epoch = nb.early_stop_epoch(result) if when == "early" else -1
        return result["best_of_n"][str(n)][epoch]

    def share(result, when, n):
        gain = result["best_of_n_true_pick"][str(n)] - result["best_of_n_reference"]
        return (pick(result, when, n) - result["best_of_n_reference"]) / gain

    for noise, rate in cells:
        label = f"{rate:.0%} " + ("symmetric" if noise == "symmetric" else "prefer_longer")
        for name, method, when in rows:
            mine = [r for (m, nz, fr, _), r in sorted(runs.items()) if (m, nz, fr) == (method, noise, rate)]
            if not mine:
                continue
            cells_ = [f"{ms([pick(r, when, n) for r in mine], 1, 3)} | {ms([share(r, when, n) for r in mine], 1, 2)}"
                      for n in BEST_OF]
            n = max(BEST_OF)
            paired = [pick(r, when, n) - pick(runs[(BT, noise, rate, r["seed"])], "early", n) for r in mine
                      if (BT, noise, rate, r["seed"]) in runs]
            difference = "–" if (method, when) == (BT, "early") else ms(paired, 1, 3, "+")
            lines.append(f"| {label} | {name} | " + " | ".join(cells_) + f" | {difference} |")
    return lines


def filter_report(results: list[dict], cells) -> list[str]:
    """For the methods with `ropo_filter_ratio: auto`: the flip rate they estimated (mean over the epochs from the third
    on, the first two estimates coming from a barely trained model; then over seeds) and the share of their suspects
    that were truly flipped."""
    filtered = [r for r in results if r["method"] in FILTERING and r.get("estimated_flip_rate")]
    if not filtered:
        return []
    lines = ["", "## The auto filter: estimated flip rate and precision", "",
             "ε̂: mean over the epochs from the third on of the estimate the filter made at the start of each epoch, then "
             "mean ± std over seeds (– where every estimate was refused). Precision: of the pairs it distrusted, the "
             "share whose label was flipped (mean over epochs, then seeds).", "",
             "| method | flips | ε̂ | precision |", "|---|---|---|---|"]
    for method in FILTERING:
        for noise, rate in cells:
            runs = [r for r in filtered if (r["method"], r["noise"], r["flip_rate"]) == (method, noise, rate)]
            if not runs:
                continue
            estimates = []
            for r in runs:
                later = [e for e in r["estimated_flip_rate"][1:] if e is not None]
                if later:
                    estimates.append(statistics.fmean(later))
            precisions = []
            for r in runs:
                values = [v for v in r["filter_precision"] if v is not None]
                if values:
                    precisions.append(statistics.fmean(values))
            label = f"{rate:.0%} " + ("symmetric" if noise == "symmetric" else "prefer_longer")
            lines.append(f"| {method} | {label} | {ms(estimates)} | {ms(precisions, 1, 2)} |")
    return lines


def main(argv=None) -> None:
    (args,) = HfArgumentParser(Arguments).parse_args_into_dataclasses(argv)
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be at least 1, got {args.seeds}")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "reward_noise.jsonl"
    done = [json.loads(line) for line in results_file.read_text().splitlines()] if results_file.exists() else []
    start, reused = time.perf_counter(), len(done)
    if not args.report_only:
        unknown = set(args.tasks) - set(TASKS)
        if unknown:
            raise SystemExit(f"unknown task(s) {sorted(unknown)}; the tasks are {list(TASKS)}")
        tasks = [QUICK] if args.quick else [TASKS[name] for name in args.tasks]
        cells, seeds = (QUICK_CELLS, [0]) if args.quick else (CELLS, range(args.seeds))
        seen = {key(r) for r in done}
        # Seed by seed, so that an interrupted run has complete, paired seeds.
        jobs = [RewardJob(m, noise, rate, seed, setting) for setting in tasks for seed in seeds for noise, rate in cells
                for m in METHODS]
        jobs = [j for j in jobs if job_key(j) not in seen]
        if jobs:
            done += run_grid(jobs, out / "work", workers=args.workers or nb.cpu_workers(), results_file=results_file)
    minutes = (time.perf_counter() - start) / 60 if not args.report_only else None
    command = "python benchmarks/reward_noise.py" + (" --quick" if args.quick else "")
    command += f" --seeds {args.seeds}" if args.seeds != 10 and not args.quick else ""
    text = report(done, command, minutes, len(done) - reused)
    (out / "reward_noise.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
