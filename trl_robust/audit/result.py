"""`AuditResult`: what an audit found, per pair and in total, and the clean step of clean-and-retrain."""

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from ..data import FLIP_COLUMN
from ..filter.rules import n_suspected
from ..noise.mixture_em import FLIP_RATE_MAX
from .twins import twin_groups

CLEAN_MODES = ("drop", "swap")  # what clean-and-retrain does with the most suspicious pairs
DEFAULT_FLIP_COLUMN = FLIP_COLUMN  # what `trl_robust.data.flip_preferences` writes


@dataclass
class AuditResult:
    """What `audit_preferences` found.

    Attributes:
        pairs: one dict per input row, most suspicious (lowest z) first: ``rank`` (1 = most suspicious), ``row`` (index
            in the input dataset), ``z`` (β·Δ), ``dpo_loss`` (−log σ(z)), ``<loss_type>_loss`` if a registered
            `loss_type` was given, ``p_flipped`` (the noise estimate's probability that the label is flipped) when
            there is an estimate and it can tell (`noise_cannot_tell`), and the flip-record column
            (``label_flipped``) if the dataset has one. Identical pairs (`twins`) share one z and sit side by side.
            Full float precision, as in audit.jsonl and audit.csv; only summary.md rounds.
        beta: the β used; None for a reward model (its margin z = r_chosen − r_rejected has none).
        loss_type: the registered loss type also scored, or None.
        auroc: with a flip record, the AUROC of the suspicion −z for the flipped pairs (1 = every flipped pair ranked
            above every clean one, 0.5 = chance); None without a flip record or if all or none are flipped.
        precision_at_k: with a flip record, ``{name: {"k", "precision", "recall"}}`` for k = the number of flipped
            pairs (name ``"n_flipped"``) and k = 5%, 10%, 20% of the pairs (names ``"5%"`` ...); None without one.
        summary: the Markdown summary (what `summary.md` holds).
        paths: the files written, by kind (``jsonl``, ``csv``, ``summary``, ``histogram``); empty without `output_dir`.
        trl_metrics: TRL's own evaluation metrics over the same pass (``eval_rewards/margins``, ...).
        num_processes: how many processes computed the scores.
        noise_estimate: the share of flipped labels estimated from the margins alone
            (`trl_robust.noise.estimate_noise`, ``symmetric_mixture``), or None where every margin is the same (e.g.
            a policy identical to its reference). Where the margins do not separate the pairs its ``cannot_tell`` is
            True: the summary says "cannot tell" and the pairs carry no ``p_flipped``; `cleaned` refuses where the
            margins fit a model with no opinion (`uninformative`).
        model_kind: ``"policy"`` (z = β·Δ of a DPO policy against its reference) or ``"reward"`` (z = r_chosen −
            r_rejected of a reward model; then each pair has ``reward_chosen``, ``reward_rejected`` and
            ``bradley_terry_loss`` (−log σ(z)) in place of ``dpo_loss``).
        twins: the groups of rows holding the same pair (prompt, chosen and rejected), two or more rows each
            (`trl_robust.audit.twins`); empty when every pair is different.
    """

    pairs: list[dict[str, Any]]
    beta: float | None
    loss_type: str | None = None
    auroc: float | None = None
    precision_at_k: dict[str, dict[str, float]] | None = None
    summary: str = ""
    paths: dict[str, str] = field(default_factory=dict)
    trl_metrics: dict[str, float] = field(default_factory=dict)
    num_processes: int = 1
    noise_estimate: Any = None  # a `trl_robust.noise.NoiseEstimate`
    model_kind: str = "policy"
    twins: list[list[int]] = field(default_factory=list)

    def to_dataset(self):
        """The per-pair table as a `datasets.Dataset`, in rank order."""
        from datasets import Dataset

        return Dataset.from_list(self.pairs)

    def most_suspicious(self, k: int) -> list[int]:
        """Input row indices of the `k` most suspicious pairs (lowest z first)."""
        return [pair["row"] for pair in self.pairs[:k]]

    def uninformative(self) -> str | None:
        """Why this ranking cannot say which pairs to clean, or None when it can: every z is the same (the order would
        be the rows' own), or the margins fit a model with no opinion (`noise_fits_no_opinion`). A noise estimate that
        cannot tell only how *many* labels are flipped (its interval is wide, as on a few dozen pairs even when the
        margins separate them well) leaves the ranking usable."""
        if len({pair["z"] for pair in self.pairs}) <= 1:
            why = "" if self.model_kind == "reward" else " (is the policy identical to its reference?)"
            return (f"every pair has the same z{why}, so the ranking carries no information: the 'most suspicious' "
                    "pairs would just be the first rows")
        if noise_fits_no_opinion(self.noise_estimate):
            return (f"the margins do not separate the pairs ({self.noise_estimate.reason}), so the ranking cannot say "
                    "which labels are wrong; audit with a model trained longer or on more pairs, or look at the ranking "
                    "yourself (audit.jsonl)")
        return None

    def rows_to_clean(self, dataset, share: float) -> list[int]:
        """The rows the clean step cleans, ascending: the ⌊share·n⌋ most suspicious, each with all its twins (rows of
        `dataset` holding the same pair), so identical pairs are cleaned alike (`trl_robust.audit.twins`)."""
        if len(dataset) != len(self.pairs):
            raise ValueError(f"the audit scored {len(self.pairs)} pairs; this dataset has {len(dataset)}: pass the "
                             "dataset that was audited")
        if isinstance(share, bool) or not isinstance(share, numbers.Real) or not 0 <= share < 1:
            raise ValueError(f"share must be in [0, 1) (the share of the most suspicious pairs to clean), got {share!r}")
        suspects = set(self.most_suspicious(n_suspected(share, len(self.pairs))))
        if suspects:
            reason = self.uninformative()
            if reason is not None:
                raise ValueError(f"nothing cleaned: {reason}")
        for rows in twin_groups(dataset):
            if suspects.intersection(rows):
                suspects.update(rows)
        return sorted(suspects)

    def cleaned(self, dataset, share: float, mode: str = "drop", flip_column: str | None = DEFAULT_FLIP_COLUMN):
        """`dataset` (the one audited) with its ⌊share·n⌋ most suspicious pairs dropped or their labels swapped.

        The clean step of clean-and-retrain. `mode="drop"` leaves the suspects out (rows keep their order);
        `mode="swap"` exchanges their chosen and rejected responses, and toggles `flip_column` where the data has
        it (the label is now the other one), so the cleaned data can be audited or benchmarked again. Identical pairs
        are cleaned together (`rows_to_clean`). A ranking that carries no information (`uninformative`) is refused
        with a ValueError rather than used.
        """
        if mode not in CLEAN_MODES:
            raise ValueError(f"mode must be one of {list(CLEAN_MODES)}, got {mode!r}")
        suspects = set(self.rows_to_clean(dataset, share))
        if mode == "drop":
            return dataset.select([row for row in range(len(dataset)) if row not in suspects])
        toggles = flip_column is not None and flip_column in dataset.column_names

        def swap(example, row):
            if row not in suspects:
                return {}
            swapped = {"chosen": example["rejected"], "rejected": example["chosen"]}
            if toggles:
                swapped[flip_column] = not example[flip_column]
            return swapped

        return dataset.map(swap, with_indices=True)

    def z_by_row(self) -> list[float]:
        """z for each input row, in input order."""
        z = [math.nan] * len(self.pairs)
        for pair in self.pairs:
            z[pair["row"]] = pair["z"]
        return z


def noise_fits_no_opinion(estimate) -> bool:
    """Whether the noise estimate finds the margins compatible with a flip rate of 1/2 (its likelihood interval reaches
    it: `trl_robust.noise.identification`), at which their density is its own mirror image: as a model with no opinion
    gives them, whatever the labels. The order of such margins is no better than chance."""
    return noise_cannot_tell(estimate) and estimate.likelihood_interval[1] >= FLIP_RATE_MAX


def noise_cannot_tell(estimate) -> bool:
    """Whether a noise estimate says its margins do not separate the pairs (`NoiseEstimate.cannot_tell`): then its flip
    rate, interval and `p_flipped` are not worth acting on, and the audit says "cannot tell" instead of a number."""
    return estimate is not None and bool(estimate.cannot_tell)
