"""ROPO's noisy-sample filtering: which pairs to distrust, and what to do with them.

The ROPO framework (Liang et al., ICML 2025, arXiv 2404.04102) does not only change the loss: it treats the pairs
with the largest ROPO loss as mislabeled and takes them out of training. Those are the pairs the current model most
confidently contradicts, so for every loss that decreases in the margin z (ROPO, SymPO, DPO) "largest loss" is
"smallest z"; ranking by z keeps the rule well defined for any registered loss.

Two scopes decide which pairs compete:
- `step`: each pair of a micro-batch (gathered over every process, so the same pairs are chosen whatever the number of
  processes) is ranked among a running window of the most recent margins, itself included: about one optimizer step's
  worth of pairs (`filter_window`). A pair is distrusted when it ranks in the window's lowest ρ share; a carried count
  (`debt`) makes up for rounding and for drift of the margins, so the realised share over a run is ρ whatever the
  per-device batch size, the number of processes and the gradient accumulation (`running_suspected_pairs`). Ranking
  each micro-batch on its own (⌊ρ·n⌋ of it) distrusted nothing at all where ρ·n < 1, e.g. 4 pairs per device at ρ 0.2.
- `epoch`: the whole training set, scored once at the start of an epoch by the current model; its ⌊ρ·N⌋ lowest
  margins are the suspects, fixed for that epoch.

Pure functions of tensors; `RobustDPOTrainer` supplies the margins and applies the result.
"""

import math

import torch

FILTER_MODES = ("drop", "correct")
FILTER_SCOPES = ("step", "epoch")
# The per-step filter's window holds at least this many suspects' worth of margins (ρ·W ≥ 10). A small window makes
# "the lowest ρ share" a noisy threshold: with i.i.d. margins at ρ 0.2, the share of suspects that are truly among the
# lowest 20% was 0.77 for W = 20, 0.84 for 40, 0.91 for 64 (W = 1, one pair per optimizer step, could only distrust
# every 1/ρ-th pair whatever its margin). A wider window ranks against older margins; the debt corrects the share.
MIN_WINDOW_SUSPECTS = 10


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


def filter_window(pairs_per_step: int, ratio: float) -> int:
    """How many recent margins the per-step filter ranks each pair among (the window W, the pair itself included).

    One optimizer step's pairs — per-device batch × processes × gradient accumulation, what a "global batch" is to
    the optimizer — so that without accumulation the window is exactly the micro-batch; at least enough for
    `MIN_WINDOW_SUSPECTS` suspects at ratio ρ.
    """
    if not 0 < ratio < 1:
        raise ValueError(f"the filter ratio must be in (0, 1), got {ratio}")
    return max(int(pairs_per_step), math.ceil(MIN_WINDOW_SUSPECTS / ratio - 1e-9))


def rankable(z: torch.Tensor) -> torch.Tensor:
    """Margins as the running window keeps them: a NaN or infinite one as +inf, so it ranks last (never a suspect)."""
    return torch.where(torch.isfinite(z), z, torch.full_like(z, math.inf))


def running_suspected_pairs(
    z: torch.Tensor, history: torch.Tensor, debt: torch.Tensor, ratio: float, max_margin: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-step filter: which of this micro-batch's pairs to distrust, ranked among the recent margins too.

    The window is `history` (earlier margins, oldest first) followed by `z`, m values in all. Its values are ranked
    (ties: the earlier value first, so the older one), and a pair of `z` is suspected when its rank is below the quota
    ⌊ρ·m + debt⌋, clamped to [0, m]. With margins that are exchangeable over the window each pair is thus suspected
    with probability quota/m ≈ ρ; `debt` = ρ·(pairs ranked so far) − (pairs suspected so far) carries what rounding
    and drifting margins left over into the next quota, and the next quota's excess is spread over the window, so
    the debt decays by a factor (1 − n/m) per micro-batch of n and the realised share over a run is ρ to within a
    window's worth of pairs. Without history (m = n) and without debt this is ⌊ρ·n⌋ of the micro-batch.

    Everything stays on the device (the quota is a tensor): no host synchronisation.

    Args:
        z: this micro-batch's margins, gathered over every process (n,).
        history: earlier margins (h,), same dtype and device; may be empty.
        debt: 0-d tensor, the carried count (starts at 0).
        ratio: ρ in (0, 1).
        max_margin: if set, a suspect must also have z < max_margin. The debt counts the suspects by rank, before
            this cap, so the cap lowers the share (ρ becomes a ceiling) instead of pushing the quota up.

    Returns:
        (suspected mask of z, the window — history and z, non-finite margins as +inf, to keep as the next history
        after trimming —, the new debt). Non-finite margins rank last and are never suspected.
    """
    ranked = rankable(z)
    window = torch.cat([history.to(ranked.dtype), ranked])
    m, n = window.numel(), z.numel()
    order = torch.argsort(window, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(m, device=order.device)
    quota = torch.floor(ratio * m + debt).clamp(0, m)
    by_rank = (rank[m - n :] < quota) & torch.isfinite(z)
    new_debt = debt + ratio * n - by_rank.sum()
    suspected = by_rank if max_margin is None else by_rank & (z < max_margin)
    return suspected, window, new_debt


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
