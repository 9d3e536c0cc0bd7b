"""The audit's outputs: the Markdown summary, the JSONL/CSV tables and the histogram of z (matplotlib, imported only
when a histogram is drawn).

What is rounded: only what people read. summary.md (what the command prints) shows p_flipped to three decimals
("<0.001" and ">0.999" at the ends: a probability of 7e-301 says nothing 0.000 does not) and every other number to four
significant digits. audit.jsonl and audit.csv keep each value at full float precision, for programs."""

import json
import math
from pathlib import Path

import numpy as np

from .result import AuditResult, noise_cannot_tell, noise_fits_no_opinion

OUTPUT_FILES = {
    "jsonl": "audit.jsonl",
    "csv": "audit.csv",
    "summary": "summary.md",
    "histogram": "z_histogram.png",
}


def _fmt(value) -> str:
    """Four significant digits, never in exponent notation (a loss of 3e-12 is shown as 0.0000)."""
    if value is None:
        return "n/a"
    text = f"{value:.4g}"
    return text if "e" not in text else f"{value:.4f}" if abs(value) < 1 else f"{value:.0f}"


def _probability(value: float) -> str:
    return "<0.001" if value < 0.0005 else ">0.999" if value > 0.9995 else f"{value:.3f}"


def _cell(column: str, value) -> str:
    if column == "p_flipped":
        return _probability(value)
    return _fmt(value) if isinstance(value, float) else str(value)


def _noise_line(result: AuditResult) -> str:
    """The summary's line on how many labels look flipped: all its wording, "cannot tell" included, is here."""
    estimate = result.noise_estimate
    model = "reward model" if result.model_kind == "reward" else "policy"
    if estimate is None:
        why = "" if result.model_kind == "reward" else " (is the policy identical to its reference?)"
        return (f"estimated flipped labels: cannot tell — every margin is the same{why}, so the ranking below carries "
                "no information and nothing can be cleaned from it")
    if noise_fits_no_opinion(estimate):
        return (
            f"estimated flipped labels: {estimate.describe()}. So no pair gets a `p_flipped`, and the clean step "
            f"(`--clean_share`, `AuditResult.cleaned`) is refused; a {model} trained longer, or more pairs, may tell"
        )
    if noise_cannot_tell(estimate):
        return (
            f"estimated flipped labels: {estimate.describe()}. So no pair gets a `p_flipped`; the ranking by z still "
            "puts the pairs the model disagrees with first, but how many of them to clean is for you to judge"
        )
    return (
        f"estimated flipped labels: {estimate.describe()}. From the margins alone, assuming labels were flipped "
        f"independently of the pair; the interval is the spread over resampled pairs given this {model}, not its error. "
        f"A {model} that fitted the flipped labels in training makes this an underestimate; `p_flipped` in audit.jsonl "
        "is each pair's probability."
    )


def summary(result: AuditResult, policy, reference, n_rows, max_length, flip_column) -> str:
    reward = result.model_kind == "reward"
    z = np.array([pair["z"] for pair in result.pairs])
    loss = np.array([pair["bradley_terry_loss" if reward else "dpo_loss"] for pair in result.pairs])
    quantiles = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
    processes = f"computed on {result.num_processes} process{'es' if result.num_processes > 1 else ''}"
    negative = int((z < 0).sum())
    if reward:
        lines = [
            "# Noisy-pair audit",
            "",
            f"- reward model: {policy.describe()}",
            f"- pairs: {n_rows}; max_length = {max_length}; {processes}",
            f"- pairs with z < 0 (the reward model prefers the rejected response): {negative} ({negative / n_rows:.1%})",
        ]
        definition = "z = r(x, chosen) − r(x, rejected), the reward model's margin"
    else:
        reference_text = reference.describe() if reference is not None else "the base model with the adapter disabled"
        lines = [
            "# Noisy-pair audit",
            "",
            f"- policy: {policy.describe()}",
            f"- reference: {reference_text}",
            f"- pairs: {n_rows}; β = {result.beta:g}; max_length = {max_length}; {processes}",
            f"- pairs with z < 0 (the policy prefers the rejected response): {negative} ({negative / n_rows:.1%})",
        ]
        definition = "z = β·[(log πθ − log πref)(chosen) − (log πθ − log πref)(rejected)]"
    if result.twins:
        lines.append(
            f"- identical pairs (same prompt, chosen and rejected): {sum(map(len, result.twins))} rows in "
            f"{len(result.twins)} groups, e.g. rows {result.twins[0]}; each group has one z and is cleaned or kept whole"
        )
    lines += [
        f"- {_noise_line(result)}",
        "",
        f"{definition}; the lower z, the more suspicious the label.",
        "",
        "| quantile | " + " | ".join(f"{q:.0%}" for q in quantiles) + " |",
        "|---|" + "---|" * len(quantiles),
        "| z | " + " | ".join(_fmt(v) for v in np.quantile(z, quantiles)) + " |",
        f"| {'Bradley–Terry' if reward else 'DPO'} loss −log σ(z) | "
        + " | ".join(_fmt(v) for v in np.quantile(loss, quantiles)) + " |",
    ]
    if result.loss_type:
        extra = np.array([pair[f"{result.loss_type}_loss"] for pair in result.pairs])
        cells = " | ".join(_fmt(v) for v in np.quantile(extra, quantiles))
        lines.append(f"| {result.loss_type} loss | {cells} |")
    if flip_column is not None:
        flipped = np.array([pair[flip_column] for pair in result.pairs], dtype=bool)
        mean = lambda values: float(values.mean()) if len(values) else None  # noqa: E731
        lines += [
            "",
            f"## Against the flip record (`{flip_column}`)",
            "",
            f"- flipped pairs: {int(flipped.sum())} of {n_rows}; mean z flipped {_fmt(mean(z[flipped]))}, "
            f"not flipped {_fmt(mean(z[~flipped]))}",
            f"- AUROC of −z for the flipped pairs: {_fmt(result.auroc)} (0.5 = chance, 1 = perfect)",
            "",
            "| top k | k | precision | recall |",
            "|---|---|---|---|",
        ]
        for name, entry in result.precision_at_k.items():
            label = "k = flipped pairs" if name == "n_flipped" else f"top {name}"
            lines.append(f"| {label} | {entry['k']} | {_fmt(entry['precision'])} | {_fmt(entry['recall'])} |")
    shown = result.pairs[:10]
    columns = [c for c in shown[0] if c != "rank"]
    lines += ["", f"## The {len(shown)} most suspicious pairs", "", "| rank | " + " | ".join(columns) + " |",
              "|---|" + "---|" * len(columns)]
    for pair in shown:
        cells = [_cell(c, pair[c]) for c in columns]
        lines.append(f"| {pair['rank']} | " + " | ".join(cells) + " |")
    if result.paths:
        lines += ["", "Files: " + ", ".join(f"`{Path(p).name}`" for p in result.paths.values())]
    return "\n".join(lines) + "\n"


def write_outputs(result: AuditResult, output_dir: Path, flip_column: str | None) -> None:
    import csv

    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: output_dir / name for kind, name in OUTPUT_FILES.items()}
    with open(paths["jsonl"], "w") as file:
        file.writelines(json.dumps(pair) + "\n" for pair in result.pairs)
    with open(paths["csv"], "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(result.pairs[0]))
        writer.writeheader()
        writer.writerows(result.pairs)
    paths["summary"].write_text(result.summary)
    plot_histogram(result, paths["histogram"], flip_column)


def plot_histogram(result: AuditResult, path: Path, flip_column: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    z = np.array([pair["z"] for pair in result.pairs])
    bins = np.histogram_bin_edges(z, bins=int(min(50, max(10, math.sqrt(len(z))))))
    fig, ax = plt.subplots(figsize=(7, 4))
    if flip_column is None:
        ax.hist(z, bins=bins, color="tab:blue", alpha=0.8, label=f"all pairs ({len(z)})")
    else:
        flipped = np.array([pair[flip_column] for pair in result.pairs], dtype=bool)
        ax.hist(z[~flipped], bins=bins, color="tab:blue", alpha=0.6, label=f"not flipped ({int((~flipped).sum())})")
        ax.hist(z[flipped], bins=bins, color="tab:red", alpha=0.6, label=f"flipped ({int(flipped.sum())})")
    ax.axvline(0.0, color="black", linewidth=1, linestyle="--")
    if result.model_kind == "reward":
        ax.set_xlabel("z = r(chosen) − r(rejected) (reward margin; low = suspicious label)")
    else:
        ax.set_xlabel("z = β·Δ (implicit-reward margin; low = suspicious label)")
    ax.set_ylabel("pairs")
    title = "Noisy-pair audit"
    if result.auroc is not None:
        title += f" — AUROC {result.auroc:.3f}"
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
