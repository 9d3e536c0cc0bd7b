"""How much do the noisy pairs themselves allow? Linear auditors that cannot memorise them, and DPO relabelled by them.

Issue 20 asks for a signal that finds flipped pairs better than the model being trained. The identification study
(`identification.py`) found that, on the easy third task at 40% flips, no data-only signal gave a better model, while
a clean auditor gained +12.5 points. Before looking for a better signal, this asks whether the noisy pairs contain a
better model at all: a linear reward r(x, y) = w · φ(x, y), fitted by maximum likelihood on the N noisy pairs (N ≫ the
number of weights, so it cannot memorise the flips), on

- `true form`: the features the task's true reward is linear in (`true_form_features`: the response's word counts;
  per word of the response's length, and doubled where the prompt names it, or signed by the prompt's stance, where
  the reward kind has those). A model that knows the reward's form, not its scores: how much the labels hold, not a
  method a user has;
- `true form, knows ε`: the same, fitted with the likelihood of symmetric flips at the true rate ε,
  p(label) = (1 − ε) σ(z) + ε σ(−z) (forward correction; ε = 0 is Bradley–Terry);
- `bag of tokens`: the count of each token of the tokenizer's vocabulary in the response: data-only and generic (no
  knowledge of the reward), and too small to memorise N pairs. On the first three synthetic tasks, whose rewards are
  built from word scores, it is close to well specified (on the third task it is the true form); on the fourth
  (`stance`: half the reward's sign set by the prompt, which it does not read) it sees half the reward, as it would
  see only part of real preferences (style, correctness, the prompt's intent);
- `frozen embeddings`: the sum over the response's tokens of the reference model's input embeddings (DPO's implicit
  reward is a sum over tokens too): a data-only auditor a user could build from the model they start from;
- `bag of tokens, confident`: its relabelling less the ε̂·N pairs of smallest out-of-fold |z| (least sure of, swapped
  or not), ε̂ the flip rate its own flip likelihood fits best (`fit_flip_rate`): a cut, as the clean auditor's is.

Per auditor: the accuracy of its class fitted on the *true* labels of the same pairs (how well the class can fit the
reward), its own clean accuracy on the held-out clean pairs (against DPO early-stopped, the same seed), the AUROC and
precision at the true ε·N cut of its out-of-fold margins, the share of training labels that are right once
relabelled by it (a pair whose out-of-fold margin is negative has its chosen and rejected swapped), and DPO trained on
the relabelled pairs (the identification study's recording run, cached per cell), early-stopped on the noisy
validation split and at its last epoch. Paired by seed. Then what a user can decide without clean labels
(`guarded_acts`): relabel only where the auditor beats DPO early-stopped on the noisy validation split, or keep
whichever of the two trained models that split prefers.

    python benchmarks/linear_auditors.py --task third                   # 10 seeds at 40% and 20% flips
    python benchmarks/linear_auditors.py --task first --seeds 5 --rates 0.0
    python benchmarks/linear_auditors.py --report_only
    python benchmarks/linear_auditors.py --quick --output_dir /tmp/linear   # smoke run: 1 seed, 40%, a tiny task

Under `--output_dir`: the tasks, DPO's runs (cached: the identification study's where it ran there), and
`identification.jsonl` for the clean auditor's ceiling; writes `linear_auditors.jsonl` (a cell a line) and `.md`.
"""

import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

import harness as nb  # noqa: E402  benchmarks/ is on sys.path when a script runs
import identification as study  # noqa: E402

FOLDS = 2
L2 = 1.0  # ridge on standardised features: N ≫ the weights here, so it matters little
AUDITORS = ("bag of tokens", "true form", "true form, knows ε", "frozen embeddings", "bag of tokens, confident")
CONFIDENT = "bag of tokens, confident"  # the bag of tokens' relabelling, less the ε̂·N pairs it is least sure of


@dataclass
class Arguments:
    seeds: int = field(default=10, metadata={"help": "paired seeds 0..seeds-1"})
    task: str = field(default="third", metadata={"help": "first, second, third or fourth (as identification.py)"})
    rates: list[float] = field(default_factory=lambda: [0.4, 0.2], metadata={"help": "symmetric flip rates"})
    workers: int = field(default=0, metadata={"help": "processes (0: one per core, at most 2)"})
    output_dir: str = field(default="benchmarks/results", metadata={"help": "where the results and work files go"})
    report_only: bool = field(default=False, metadata={"help": "only write the report from the results file"})
    quick: bool = field(default=False, metadata={"help": "smoke run: 1 seed, flip rate 0.4, a tiny task, 2 epochs"})


# ---- the auditors: features and a linear fit --------------------------------------------------------------------


def true_form_features(reward, prompt: str, response: str, words: list[str]) -> np.ndarray:
    """φ(x, y) such that the true reward is r(x, y) = s · φ(x, y) for the reward's unknown scores s: counts of each
    word of `words` in the response, divided by its length where the reward averages; a second block for the words
    the prompt names where the reward doubles them, or of the counts signed by the prompt's stance c(x) where the
    reward has one (`synthetic.RewardModel`)."""
    index = {w: i for i, w in enumerate(words)}
    response_words, topic = response.split(), set(prompt.split())
    topical, stance = reward.topic_weight != 1, reward.stance_scores is not None
    phi = np.zeros(len(words) * (2 if topical or stance else 1))
    for w in response_words:
        if w in index:
            phi[index[w]] += 1
            if topical and w in topic:
                phi[len(words) + index[w]] += 1
            if stance:
                phi[len(words) + index[w]] += reward.stance(prompt)
    return phi if reward.total or not response_words else phi / len(response_words)


def bag_of_tokens_features(pairs: list[dict]) -> np.ndarray:
    """Per pair, the chosen response's count of each vocabulary token minus the rejected one's."""
    from trl_robust.tiny import make_tokenizer

    tokenizer = make_tokenizer()

    def counts(response):
        return np.bincount(tokenizer(response)["input_ids"], minlength=len(tokenizer)).astype(float)

    return np.array([counts(p["chosen"]) - counts(p["rejected"]) for p in pairs])


def embedding_features(model, pairs: list[dict]):
    """Per pair, Σ over the chosen response's tokens (and its end) of the reference model's input embeddings, minus
    the same for the rejected one."""
    import torch

    from trl_robust.tiny import make_tokenizer

    tokenizer = make_tokenizer()
    table = model.get_input_embeddings().weight.detach()

    def summed(response):
        ids = tokenizer(response)["input_ids"] + [tokenizer.eos_token_id]
        return table[torch.tensor(ids)].sum(0)

    return torch.stack([summed(p["chosen"]) - summed(p["rejected"]) for p in pairs]).numpy()


def flip_log_likelihood(z, epsilon: float):
    """Per pair, log[(1 − ε) σ(z) + ε σ(−z)]: the likelihood of a label under Bradley–Terry with symmetric flips at
    rate ε (torch tensors)."""
    import torch

    return torch.logsumexp(torch.stack([torch.nn.functional.logsigmoid(z) + np.log1p(-epsilon),
                                        torch.nn.functional.logsigmoid(-z) + np.log(max(epsilon, 1e-300))]), 0)


def fit_linear(x: np.ndarray, epsilon: float = 0.0, l2: float = L2) -> np.ndarray:
    """w maximising Σ_i log[(1 − ε) σ(x_i·w) + ε σ(−x_i·w)] − l2/2 |w|²: each row x_i is a pair's chosen minus
    rejected features, labelled chosen. ε = 0 is Bradley–Terry's logistic regression; ε > 0 the likelihood of labels
    flipped at rate ε. Convex for ε = 0; L-BFGS from w = 0 otherwise too."""
    import torch

    xs = torch.as_tensor(x, dtype=torch.float64)
    w = torch.zeros(xs.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = -flip_log_likelihood(xs @ w, epsilon).sum() + 0.5 * l2 * (w @ w)
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach().numpy()


def out_of_fold_margins(x: np.ndarray, seed: int, epsilon: float = 0.0, folds: int = FOLDS) -> np.ndarray:
    """Each pair's margin x·w under the fit on the other folds (fold k: rows ≡ k (mod K) of a seeded shuffle)."""
    order = np.random.default_rng(seed).permutation(len(x))
    z = np.zeros(len(x))
    for k in range(folds):
        held = order[k::folds]
        kept = np.setdiff1d(np.arange(len(x)), held)
        z[held] = x[held] @ fit_linear(x[kept], epsilon)
    return z


def fit_flip_rate(x: np.ndarray, grid: np.ndarray = np.arange(0.0, 0.5, 0.025)) -> float:
    """ε̂: the flip rate on `grid` whose flip likelihood, maximised over w (`fit_linear`), is highest (a profile
    likelihood; data-only). Under the ridge and a misspecified class it reads low rather than high."""
    import torch

    xs = torch.as_tensor(x, dtype=torch.float64)
    return float(max(grid, key=lambda e: flip_log_likelihood(xs @ torch.as_tensor(fit_linear(x, e)), e).sum().item()))


def standardised(train: np.ndarray, *others: np.ndarray):
    scale = train.std(0) + 1e-8
    return (train / scale, *(o / scale for o in others))


# ---- one cell --------------------------------------------------------------------------------------------------------


def run_cell(root: str, seed: int, rate: float, setting) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from trl_robust.audit.metrics import auroc, precision_at_k
    from trl_robust.experiments.synthetic import RewardModel
    from trl_robust.tiny import WORDS

    study.ROOT = Path(root)
    nb.quiet_libraries()
    torch.set_num_threads(1)
    nb.build_task(study.ROOT, seed, setting)
    train, flipped, evals = study.cell_splits(seed, rate, setting)
    pairs, test, validation = train.to_list(), evals["clean"].to_list(), evals["noisy_val"].to_list()
    reward = RewardModel.from_seed(seed, setting.reward)
    phi = lambda p: (true_form_features(reward, p["prompt"], p["chosen"], WORDS)  # noqa: E731
                     - true_form_features(reward, p["prompt"], p["rejected"], WORDS))
    reference = AutoModelForCausalLM.from_pretrained(nb.task_dir(study.ROOT, seed, setting) / "reference")
    features = {"bag of tokens": bag_of_tokens_features,
                "true form": lambda ps: np.array([phi(p) for p in ps]),
                "frozen embeddings": lambda ps: embedding_features(reference, ps)}
    # Each auditor: its features of the training, clean test and noisy validation pairs (standardised on the
    # training pairs), and the flip rate its likelihood assumes.
    scaled = {name: standardised(f(pairs), f(test), f(validation)) for name, f in features.items()}
    inputs = {"bag of tokens": (*scaled["bag of tokens"], 0.0), "true form": (*scaled["true form"], 0.0),
              "true form, knows ε": (*scaled["true form"], rate), "frozen embeddings": (*scaled["frozen embeddings"], 0.0)}
    # DPO's own recording run, as identification.py trains it (cached: that study's run where it ran here); its noisy-
    # validation accuracy is what a guard can compare an auditor with.
    dpo = study.recorded_run(study.cell_dir(seed, rate, setting) / "dpo", setting, seed, "cdpo", train, evals, "train")
    unflip = np.where(flipped, -1.0, 1.0)[:, None]  # a pair's features with its true label: the class's own ceiling
    k = int(flipped.sum())
    auditors = {}

    def retrained_on(name, rows, swap):
        """DPO's recording run on the training pairs `rows`, chosen and rejected swapped where `swap`."""
        relabelled = Dataset.from_list([{**pairs[i], "chosen": pairs[i]["rejected"], "rejected": pairs[i]["chosen"]}
                                        if swap[i] else pairs[i] for i in rows])
        directory = study.cell_dir(seed, rate, setting) / f"relabelled-{name.replace(' ', '_').replace(',', '')}"
        return study.run_summary(study.recorded_run(directory, setting, seed, "cdpo", relabelled, evals, "train"))

    for name, (x, x_test, x_validation, epsilon) in inputs.items():
        w = fit_linear(x, epsilon)
        z = out_of_fold_margins(x, seed, epsilon)
        swap = z < 0
        auditors[name] = {
            "clean_accuracy": float((x_test @ w > 0).mean()),
            "noisy_val_accuracy": float((x_validation @ w > 0).mean()),
            "clean_fit_accuracy": float((x_test @ fit_linear(x * unflip) > 0).mean()),
            "auroc": auroc(-z, flipped) if 0 < k < len(z) else None,
            "precision_at_truth": precision_at_k(-z, flipped, k) if k else None,
            "labels_right_after": float((swap == flipped).mean()),
            "retrained": retrained_on(name, range(len(pairs)), swap),
        }
        if name == "bag of tokens":
            # Relabelled as above, then the ε̂·N pairs with the smallest |z| left out: those whose label, swapped or
            # not, the auditor is least sure of; ε̂ its own flip likelihood's (0 on clean pairs: nothing left out).
            epsilon_hat = fit_flip_rate(x)
            kept = np.sort(np.argsort(-np.abs(z), kind="stable")[: len(z) - round(epsilon_hat * len(z))])
            auditors[CONFIDENT] = {**auditors[name], "estimated_flip_rate": epsilon_hat, "kept": len(kept) / len(z),
                                   "labels_right_after": float((swap[kept] == flipped[kept]).mean()),
                                   "retrained": (retrained_on(CONFIDENT, kept, swap) if len(kept) < len(z)
                                                 else auditors[name]["retrained"])}  # nothing left out: the same run
    return {"seed": seed, "flip_rate": rate, "task": study.task_name(setting), "dpo": study.run_summary(dpo),
            "labels_right_before": float(1 - flipped.mean()), "auditors": auditors}


def _cell_in_worker(arguments):
    return run_cell(*arguments)


def _build_task(arguments) -> None:
    """A seed's task, built before its cells run (two cells of one seed in two workers would both write it)."""
    import torch

    root, seed, setting = arguments
    nb.quiet_libraries()
    torch.set_num_threads(1)
    nb.build_task(Path(root), seed, setting)


def _write_lines(path: Path, records: list[dict]) -> None:
    """The results file whole or not at all (a cell may replace an older line of its own)."""
    partial = path.with_suffix(".partial")
    partial.write_text("".join(json.dumps(r) + "\n" for r in records))
    partial.replace(path)


# ---- the report ------------------------------------------------------------------------------------------------------


def guarded_acts(dpo: dict, auditor: dict) -> dict:
    """What the noisy validation split decides for one seed: `guarded` relabels only if the auditor is more accurate
    on it than DPO at its stop; `picked` keeps the relabelled DPO only if that model, at its own stop, is. Each
    gain is the chosen model's clean accuracy minus DPO early-stopped's (0 where DPO is kept). Ties keep DPO; TRL
    logs accuracies in float32, hence the tolerance."""
    retrained = auditor["retrained"]
    guarded_in = auditor["noisy_val_accuracy"] > dpo["noisy_val"] + 1e-6
    picked = retrained["noisy_val"] > dpo["noisy_val"] + 1e-6
    gain = retrained["stopped"] - dpo["stopped"]
    return {"auditor_lead": auditor["noisy_val_accuracy"] - dpo["noisy_val"], "guarded_in": guarded_in,
            "guarded": gain if guarded_in else 0.0, "picked": picked, "picked_gain": gain if picked else 0.0}


def report(cells: list[dict], command: str, minutes: float | None, identification: list[dict] = ()) -> str:
    """The tables; `identification`: that study's cells, for the precision bound and the clean auditor's ceiling of
    the same seeds."""
    ms = study.mean_std_text
    ceiling = {(c.get("task", "first"), c["flip_rate"], c["seed"]): c["retrains"]["clean auditor"]["stopped"]
               - c["dpo"]["stopped"] for c in identification}
    lines = [
        "# How much do the noisy pairs allow? Linear auditors, and DPO relabelled by them",
        "",
        f"`{command}`" + (f" ({minutes:.0f} min for the cells run this time)" if minutes else "")
        + " (each section names its task, flip rate and seeds). "
        "Mean ± std over seeds; `−` columns are paired by seed against DPO early-stopped on the noisy validation split "
        "(the run `identification.py` records). Auditors (see the script's docstring): `bag of tokens` (token counts) "
        "and `frozen embeddings` (the reference model's input embeddings, summed) are data-only; `true form` knows the "
        "features the true reward is linear in, not its scores; `knows ε` also fits the flip likelihood at the true "
        "rate. `fitted on clean labels`: the auditor's class fitted on the pairs' true labels (how well it can fit "
        "the reward). Margins are out-of-fold (2 folds); a pair with a negative margin is relabelled (chosen and "
        "rejected swapped) and DPO is retrained on the relabelled pairs; `bag of tokens, confident` also leaves out "
        "the ε̂·N pairs with the smallest |margin|.",
    ]
    order = list(study.TASKS)  # first, second, third, fourth; the quick run's task after them
    for task, rate in sorted({(c["task"], c["flip_rate"]) for c in cells},
                             key=lambda k: (order.index(k[0]) if k[0] in order else len(order), k[1])):
        group = [c for c in cells if c["task"] == task and c["flip_rate"] == rate]
        base = [c["dpo"]["stopped"] for c in group]
        lines += ["", f"## {rate:.0%} symmetric flips, task `{task}` ({len(group)} seed{'s' * (len(group) > 1)})", "",
                  f"DPO early-stopped: {ms(base, 100, 1)}; last epoch {ms([c['dpo']['last'] for c in group], 100, 1)}. "
                  f"Training labels right: {ms([c['labels_right_before'] for c in group], 100, 1)}%."
                  + (f" Bound on precision, εa/(εa + (1−ε)(1−a)) with a = DPO early-stopped: "
                     f"{ms([rate * a / (rate * a + (1 - rate) * (1 - a)) for a in base])}." if rate else "")
                  + (f" Clean auditor's drop-retrain (`identification.py`), early-stopped − DPO stopped: "
                     f"{ms([ceiling[(task, rate, c['seed'])] for c in group], 100, 1)}."
                     if all((task, rate, c["seed"]) in ceiling for c in group) else ""), "",
                  "| auditor | fitted on clean labels | its clean accuracy | − DPO stopped | AUROC | precision at ε·N "
                  "| labels right after relabelling | DPO on its labels, stopped | − DPO stopped | last | − DPO stopped |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        guards = ["", "Acting only where the noisy validation split says so (a user's own check; − DPO stopped, paired): "
                  "`guarded` relabels only where the auditor's accuracy on the noisy validation split is above DPO's "
                  "at its stop, else keeps DPO early-stopped; `picked` keeps whichever of DPO and the relabelled DPO, "
                  "each early-stopped, is more accurate on that split.", "",
                  "| auditor | auditor − DPO on noisy validation | seeds guarded in | guarded − DPO stopped | "
                  "seeds picked | picked − DPO stopped |", "|---|---|---|---|---|---|"]
        for name in AUDITORS:
            a = [c["auditors"][name] for c in group if name in c["auditors"]]
            base = [c["dpo"]["stopped"] for c in group if name in c["auditors"]]  # a cell from before `name`: none
            retrained = [x["retrained"] for x in a]
            lines.append("| " + " | ".join([
                name, ms([x.get("clean_fit_accuracy") for x in a], 100, 1), ms([x["clean_accuracy"] for x in a], 100, 1),
                ms([x["clean_accuracy"] - b for x, b in zip(a, base)], 100, 1),
                ms([x["auroc"] for x in a]), ms([x["precision_at_truth"] for x in a]),
                ms([x["labels_right_after"] for x in a], 100, 1),
                ms([r["stopped"] for r in retrained], 100, 1),
                ms([r["stopped"] - b for r, b in zip(retrained, base)], 100, 1),
                ms([r["last"] for r in retrained], 100, 1),
                ms([r["last"] - b for r, b in zip(retrained, base)], 100, 1)]) + " |")
            acts = [guarded_acts(c["dpo"], c["auditors"][name]) for c in group
                    if "noisy_val_accuracy" in c["auditors"].get(name, {})]
            if acts:
                guards.append("| " + " | ".join([
                    name, ms([x["auditor_lead"] for x in acts], 100, 1),
                    f"{sum(x['guarded_in'] for x in acts)}/{len(acts)}", ms([x["guarded"] for x in acts], 100, 1),
                    f"{sum(x['picked'] for x in acts)}/{len(acts)}", ms([x["picked_gain"] for x in acts], 100, 1)])
                    + " |")
        confident = [c["auditors"][CONFIDENT] for c in group if CONFIDENT in c["auditors"]]
        if confident:
            lines += ["", f"`{CONFIDENT}`: the bag of tokens' relabelling less the ε̂·N pairs with the smallest |z|; ε̂ "
                      f"(its flip likelihood's, fitted): {ms([x['estimated_flip_rate'] for x in confident])}; pairs "
                      f"kept: {ms([x['kept'] for x in confident], 100, 1)}%; its `labels right` column counts the "
                      "kept pairs."]
        lines += guards if len(guards) > 5 else []
    return "\n".join(lines) + "\n"


# ---- driver ----------------------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    (args,) = HfArgumentParser(Arguments).parse_args_into_dataclasses(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.task not in study.TASKS:
        raise SystemExit(f"unknown --task {args.task!r}; the tasks are {list(study.TASKS)}")
    results_file = out / "linear_auditors.jsonl"
    setting, seeds, rates = ((study.QUICK, [0], [0.4]) if args.quick
                             else (study.TASKS[args.task], range(args.seeds), args.rates))
    task = study.task_name(setting)
    done = study.read_cells(results_file)
    start = time.perf_counter()
    if not args.report_only:
        # A cell is done once it has every auditor and the guards' figures; an older one is run again (its cached
        # trainings reused) and replaced.
        seen = {(c["task"], c["seed"], c["flip_rate"]) for c in done if set(AUDITORS) <= set(c["auditors"])
                and all("noisy_val_accuracy" in a for a in c["auditors"].values())}
        todo = [(str(out / "work"), s, r, setting) for s in seeds for r in rates if (task, s, r) not in seen]
        context = multiprocessing.get_context("spawn")
        with context.Pool(min(args.workers or nb.cpu_workers(), max(1, len(todo)))) as pool:
            pool.map(_build_task, [(str(out / "work"), s, setting) for s in dict.fromkeys(t[1] for t in todo)])
            for cell in pool.imap_unordered(_cell_in_worker, todo):
                key = (cell["task"], cell["seed"], cell["flip_rate"])
                done = [c for c in done if (c["task"], c["seed"], c["flip_rate"]) != key] + [cell]
                _write_lines(results_file, done)
                print(f"cell seed {cell['seed']} rate {cell['flip_rate']} done", flush=True)
    minutes = (time.perf_counter() - start) / 60 if not args.report_only else None
    command = "python benchmarks/linear_auditors.py" + (" --quick" if args.quick else
                                                        " --task <task> --seeds <n> --rates <rates>")
    text = report(done, command, minutes, study.read_cells(out / "identification.jsonl"))
    (out / "linear_auditors.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
