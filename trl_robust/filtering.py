"""ROPO's noisy-sample filtering: which pairs to distrust, and what to do with them.

The ROPO framework (Liang et al., ICML 2025, arXiv 2404.04102) does not only change the loss: it treats the pairs
with the largest ROPO loss as mislabeled and takes them out of training. Those are the pairs the current model most
confidently contradicts, so for every loss that decreases in the margin z (ROPO, SymPO, DPO) "largest loss" is
"smallest z"; ranking by z keeps the rule well defined for any registered loss.

Two scopes decide which pairs compete for the ⌊ρ·n⌋ places:
- `step`: the pairs of one global batch (gathered over every process, so the same pairs are chosen whatever the
  number of processes);
- `epoch`: the whole training set, scored once at the start of an epoch by the current model; the suspects stay
  fixed for that epoch.

Pure functions of tensors; `RobustDPOTrainer` supplies the margins and applies the result.
"""

import torch

FILTER_MODES = ("drop", "correct")
FILTER_SCOPES = ("step", "epoch")


def n_suspected(ratio: float, n_pairs: int) -> int:
    """How many of `n_pairs` a filter with ratio ρ distrusts: ⌊ρ·n⌋, so never more than a ρ share of the data."""
    return int(ratio * n_pairs + 1e-9)  # the epsilon keeps 0.29 · 100 = 28.999… at 29


def suspected_pairs(z: torch.Tensor, ratio: float, max_margin: float | None = None) -> torch.Tensor:
    """Boolean mask of the ⌊ρ·n⌋ pairs with the lowest margin z (ties: the earlier pair first).

    With `max_margin`, only those of them whose z is below it: e.g. 0 distrusts only pairs the model prefers the
    other way round, so that on clean data, where few pairs have z < 0, little is filtered.
    """
    mask = torch.zeros_like(z, dtype=torch.bool)
    k = n_suspected(ratio, z.numel())
    if k:
        mask[torch.argsort(z, stable=True)[:k]] = True
    if max_margin is not None:
        mask &= z < max_margin
    return mask


def filtered_loss(loss_fn, z: torch.Tensor, suspected: torch.Tensor, mode: str, n_global: int, k_global):
    """Per-pair loss of one process's pairs after filtering.

    `drop`: suspected pairs contribute 0 and the rest are scaled by n/(n − k), so the mean over the global batch —
    what TRL's `per_sequence_loss.mean()` and the gradient all-reduce compute — is the mean over the kept pairs.
    `correct`: a suspected pair is trained as if its label were swapped, ℓ(−z), with no rescaling.

    Args:
        loss_fn: the per-pair loss, z ↦ ℓ(z).
        z: this process's margins.
        suspected: this process's slice of the global `suspected_pairs` mask.
        mode: one of `FILTER_MODES`.
        n_global, k_global: pairs in the global batch, and how many of them are suspected (an int, or a tensor so
            that the epoch scope, whose count varies per batch, needs no host sync). A batch of suspects only
            contributes 0.
    """
    if mode == "correct":
        return torch.where(suspected, loss_fn(-z), loss_fn(z))
    if mode == "drop":
        keep = (~suspected).to(z.dtype)
        kept = torch.as_tensor(n_global - k_global, dtype=z.dtype, device=z.device).clamp_min(1)
        return loss_fn(z) * keep * (n_global / kept)
    raise ValueError(f"filter mode must be one of {FILTER_MODES}, got {mode!r}")
