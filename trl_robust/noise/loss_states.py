"""What a registered loss carries across training steps: RE-PO's annotator reliability η and Hölder-DPO's running
contamination estimate, as `LossState` objects (the state itself and its arithmetic; the trainer side, which builds
them, feeds them each batch and saves them with checkpoints, is `trl_robust.integration.stateful`).

A loss type that needs state registers a factory (`LossSpec.state`, called with the loss's hyperparameters by keyword)
next to its per-pair function. The trainer asks its `LossState`:

- `loss_kwargs()`: keyword values the per-pair function takes from the state rather than from the config (RE-PO's
  current η), bound next to the config's hyperparameters for each batch;
- `batch_values(z)`: 0-d tensors computed from the margins of the *global* training batch (gathered over every process),
  which ride the batch's one device-to-host metrics transfer; `observe(values, n)` then receives them as floats. Every
  process sees the same gathered margins, so every process's state stays the same without another collective;
- `end_step()`: after each optimizer step (RE-PO's moving-average update of η, once per step whatever the gradient
  accumulation, as the paper updates η once per batch);
- `log_values()`: what to log at each training log (`estimated_flip_rate`);
- `export()` / `restore(saved)`: the state as plain numbers for a checkpoint, and back.
"""

import math

import torch
import torch.nn.functional as F

from ..losses import repo_posterior

FLIP_RATE = "noise/estimated_flip_rate"


class LossState:
    """What a stateful loss keeps between steps (see the module docstring); the base class keeps nothing."""

    def loss_kwargs(self) -> dict:
        return {}

    def batch_values(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def observe(self, values: dict[str, float], n_pairs: int) -> None:
        pass

    def end_step(self) -> None:
        pass

    def log_values(self) -> dict[str, float]:
        return {}

    def export(self) -> dict:
        return {}

    def restore(self, saved: dict) -> None:
        pass


class RepoState(LossState):
    """RE-PO's annotator reliability η (one annotator: the dataset). Each training batch's mean posterior
    `repo_posterior(z, η)` is accumulated over the micro-batches and processes of an optimizer step; after the step,
    η ← (1 − α) η + α · (that mean). Logged as the estimated flip rate 1 − η."""

    def __init__(self, eta: float, momentum: float):
        self.initial, self.momentum = float(eta), float(momentum)
        self.restore({})

    def loss_kwargs(self) -> dict:
        return {"eta": self.eta}

    def batch_values(self, z):
        return {"posterior": repo_posterior(z.detach().float(), self.eta).mean()}

    def observe(self, values, n_pairs):
        self.pending_sum += values["posterior"] * n_pairs
        self.pending_n += n_pairs

    def end_step(self):
        if self.pending_n:
            mean = self.pending_sum / self.pending_n
            self.eta = (1.0 - self.momentum) * self.eta + self.momentum * mean
        self.pending_sum, self.pending_n = 0.0, 0

    def log_values(self):
        return {"estimated_flip_rate": 1.0 - self.eta}

    def export(self):
        return {"eta": self.eta, "pending_sum": self.pending_sum, "pending_n": self.pending_n}

    def restore(self, saved):
        self.eta = float(saved.get("eta", self.initial))
        self.pending_sum, self.pending_n = float(saved.get("pending_sum", 0.0)), int(saved.get("pending_n", 0))


def holder_contamination(z: torch.Tensor, gamma: float) -> float:
    r"""Hölder-DPO's estimate of the share ε of mislabelled pairs, from the margins z (p = σ(z) the model's likelihood of
    each pair's label):

        ε̂ = 1 − ξ̂,    ξ̂ = mean(p) · Σ p^γ / Σ p^(1+γ)

    (`HolderState` accumulates the three sums over the pairs trained on between two logs). ξ̂ estimates the clean share
    1 − ε; it is ≤ 1 by Chebyshev's sum inequality (p and p^γ are ordered alike), so ε̂ ≥ 0, and it is 0 when every
    p is equal.
    """
    return _contamination(*(t.item() for t in _holder_means(z, gamma)))


def _holder_means(z: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    log_p = F.logsigmoid(z.detach().double())
    return log_p.exp().mean(), (gamma * log_p).exp().mean(), ((1.0 + gamma) * log_p).exp().mean()


def _contamination(mean_p: float, mean_p_gamma: float, mean_p_gamma1: float) -> float:
    if not mean_p_gamma1 > 0:  # every p underflowed to 0: the model contradicts every label
        return math.nan
    return min(max(1.0 - mean_p * mean_p_gamma / mean_p_gamma1, 0.0), 1.0)  # (clamped against rounding only)


class HolderState(LossState):
    """Hölder-DPO's contamination estimate over the training pairs since the last log (`holder_contamination`)."""

    def __init__(self, gamma: float):
        self.gamma = float(gamma)
        self.restore({})

    def batch_values(self, z):
        return dict(zip(("p", "p_gamma", "p_gamma1"), _holder_means(z, self.gamma)))

    def observe(self, values, n_pairs):
        for key in self.sums:
            self.sums[key] += values[key] * n_pairs
        self.n += n_pairs

    def log_values(self):
        if not self.n:
            return {}
        estimate = _contamination(*(self.sums[key] / self.n for key in ("p", "p_gamma", "p_gamma1")))
        self.restore({})
        return {} if math.isnan(estimate) else {"estimated_flip_rate": estimate}

    def export(self):
        return {"sums": dict(self.sums), "n": self.n}

    def restore(self, saved):
        self.sums = {key: 0.0 for key in ("p", "p_gamma", "p_gamma1")} | dict(saved.get("sums", {}))
        self.n = int(saved.get("n", 0))
