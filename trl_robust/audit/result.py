"""`AuditResult`: what an audit found, per pair and in total, and the clean step of clean-and-retrain."""

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from ..data import FLIP_COLUMN
from ..filter.rules import n_suspected

CLEAN_MODES = ("drop", "swap")  # what clean-and-retrain does with the most suspicious pairs
DEFAULT_FLIP_COLUMN = FLIP_COLUMN  # what `trl_robust.data.flip_preferences` writes


@dataclass
class AuditResult:
    """What `audit_preferences` found.

    Attributes:
        pairs: one dict per input row, most suspicious (lowest z) first: ``rank`` (1 = most suspicious), ``row`` (index
            in the input dataset), ``z`` (β·Δ), ``dpo_loss`` (−log σ(z)), ``<loss_type>_loss`` if a registered
            `loss_type` was given, ``p_flipped`` (the noise estimate's probability that the label is flipped) when
            there is an estimate, and the flip-record column (``label_flipped``) if the dataset has one.
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
            (`trl_robust.noise.estimate_noise`, ``symmetric_mixture``), or None where the margins cannot tell (all
            equal, e.g. a policy identical to its reference).
        model_kind: ``"policy"`` (z = β·Δ of a DPO policy against its reference) or ``"reward"`` (z = r_chosen −
            r_rejected of a reward model; then each pair has ``reward_chosen``, ``reward_rejected`` and
            ``bradley_terry_loss`` (−log σ(z)) in place of ``dpo_loss``).
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

    def to_dataset(self):
        """The per-pair table as a `datasets.Dataset`, in rank order."""
        from datasets import Dataset

        return Dataset.from_list(self.pairs)

    def most_suspicious(self, k: int) -> list[int]:
        """Input row indices of the `k` most suspicious pairs (lowest z first)."""
        return [pair["row"] for pair in self.pairs[:k]]

    def cleaned(self, dataset, share: float, mode: str = "drop", flip_column: str | None = DEFAULT_FLIP_COLUMN):
        """`dataset` (the one audited) with its ⌊share·n⌋ most suspicious pairs dropped or their labels swapped.

        The clean step of clean-and-retrain. `mode="drop"` leaves the suspects out (rows keep their order);
        `mode="swap"` exchanges their chosen and rejected responses, and toggles `flip_column` where the data has
        it (the label is now the other one), so the cleaned data can be audited or benchmarked again.
        """
        if len(dataset) != len(self.pairs):
            raise ValueError(f"the audit scored {len(self.pairs)} pairs; this dataset has {len(dataset)}: pass the "
                             "dataset that was audited")
        if isinstance(share, bool) or not isinstance(share, numbers.Real) or not 0 <= share < 1:
            raise ValueError(f"share must be in [0, 1) (the share of the most suspicious pairs to clean), got {share!r}")
        if mode not in CLEAN_MODES:
            raise ValueError(f"mode must be one of {list(CLEAN_MODES)}, got {mode!r}")
        suspects = set(self.most_suspicious(n_suspected(share, len(self.pairs))))
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
