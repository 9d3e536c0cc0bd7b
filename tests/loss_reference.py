"""The one table of the registered loss types in the tests: for each name, its formula written again, independently
of `trl_robust.losses` (plain numpy), and values worked out by hand (how, in the comment beside them).

Adding a loss type to the package = its function, its `register_loss` line, one entry here, a row in docs/losses.md.
`test_losses.py` checks that this table covers exactly `registered_loss_types()`, that the hand values are the
reference's and the registered function's, and that the two agree everywhere else; the trainer tests
(`test_trainer.py`) take their expected losses and gradient weights from here.

`loss(z, **hyperparameters)` is ℓ per pair (for a loss that couples the batch, the batch objective repeated per pair,
as the registered function returns it); `grad_weight` is w = −∂ℓ/∂z per pair (for a batch objective, −n · ∂L/∂zᵢ,
the weight relative to DPO's 1/n per pair). Keyword names are the registered function's (`LossSpec.hyperparameters`).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch


def _sigmoid(z):
    return 0.5 * (1 + np.tanh(z / 2))  # σ(z), finite for any z


def _softplus(z):
    return np.logaddexp(0.0, z)  # log(1 + e^z), finite for any z


@dataclass(frozen=True)
class HandCase:
    z: tuple[float, ...]
    hyperparameters: dict
    loss: tuple[float, ...]
    grad_weight: tuple[float, ...]


@dataclass(frozen=True)
class Reference:
    loss: Callable
    grad_weight: Callable
    hand: tuple[HandCase, ...]
    symmetric_sum: float | None = None  # ℓ(z) + ℓ(−z) for a symmetric loss
    extra: dict = field(default_factory=dict)  # hyperparameter values off the defaults, for the trainer tests


def _ropo(z, alpha=14.0):
    c = 4 * alpha / (1 + alpha) ** 2
    return c * _softplus(-z) + c * alpha * _sigmoid(-z)


def _ropo_weight(z, alpha=14.0):
    c = 4 * alpha / (1 + alpha) ** 2
    return c * _sigmoid(-z) * (1 + alpha * _sigmoid(z))


def _cdpo(z, epsilon=0.0):
    return (1 - epsilon) * _softplus(-z) + epsilon * _softplus(z)


def _cdpo_weight(z, epsilon=0.0):
    return (1 - epsilon) * _sigmoid(-z) - epsilon * _sigmoid(z)


def _drdpo(z, beta_prime=1.0):
    dpo = _softplus(-z).ravel()
    objective = -beta_prime * (np.logaddexp.reduce(-dpo / beta_prime) - math.log(dpo.size))
    return np.full(np.shape(z), objective)


def _drdpo_weight(z, beta_prime=1.0):
    # n · softmax(−ℓ/β′)ᵢ · σ(−zᵢ), with exp(−ℓᵢ/β′) = σ(zᵢ)^(1/β′)
    logits = -_softplus(-z) / beta_prime
    share = np.exp(logits - np.logaddexp.reduce(logits.ravel()))
    return np.size(z) * share * _sigmoid(-z)


def _holder(z, gamma=2.0):
    p = _sigmoid(z)
    return -(1 + gamma) * p**gamma + gamma * p ** (1 + gamma)  # the paper's form, not the code's factored one


def _holder_weight(z, gamma=2.0):
    return gamma * (1 + gamma) * _sigmoid(z) ** gamma * _sigmoid(-z) ** 2


def _repo_posterior(z, eta):
    # Bayes' rule as the paper writes it: η σ(z) / (η σ(z) + (1 − η) σ(−z))
    right, wrong = eta * _sigmoid(z), (1 - eta) * _sigmoid(-z)
    return right / (right + wrong)


def _repo(z, eta=0.9):
    w = _repo_posterior(z, eta)
    return w * _softplus(-z) + (1 - w) * _softplus(z)  # −[w log σ(z) + (1 − w) log σ(−z)]


def _repo_weight(z, eta=0.9):
    # −∂ℓ/∂z with w held fixed: w σ(−z) − (1 − w) σ(z)
    w = _repo_posterior(z, eta)
    return w * _sigmoid(-z) - (1 - w) * _sigmoid(z)


REFERENCE: dict[str, Reference] = {
    "ropo": Reference(
        loss=_ropo,
        grad_weight=_ropo_weight,
        hand=(
            # α = 14: c = 4·14/15² = 56/225 = 0.248889, c·α = 784/225 = 3.484444.
            # ℓ: z = 0:  c·ln 2 + cα·σ(0)        = 0.248889·0.693147 + 3.484444·0.5      = 1.914739
            #    z = 2:  c·ln(1+e^−2) + cα·σ(−2) = 0.248889·0.126928 + 3.484444·0.119203 = 0.446947
            #    z = −2: c·ln(1+e^2) + cα·σ(2)   = 0.248889·2.126928 + 3.484444·0.880797 = 3.598457
            # w = c·σ(−z)·(1 + α·σ(z)): z = 0: c·0.5·8 = 224/225 = 0.995556;
            #    z = 2: 0.248889·0.119203·13.331158 = 0.395513; z = −2: 0.248889·0.880797·2.668842 = 0.585065
            HandCase((0.0, 2.0, -2.0), {}, (1.914739, 0.446947, 3.598457), (0.995556, 0.395513, 0.585065)),
            # α = 6, z = 1: c = 24/49 = 0.489796; ℓ = c·ln(1+e^−1) + 6c·σ(−1) = 0.489796·0.313262 + 2.938776·0.268941
            # = 0.943793; w = c·σ(−1)·(1 + 6σ(1)) = 0.489796·0.268941·5.386354 = 0.709525
            HandCase((1.0,), {"alpha": 6.0}, (0.943793,), (0.709525,)),
        ),
        extra={"alpha": 6.0},
    ),
    "sympo_sigmoid": Reference(
        loss=lambda z: _sigmoid(-z),
        grad_weight=lambda z: _sigmoid(z) * _sigmoid(-z),
        hand=(
            # ℓ = σ(−z): σ(0) = 0.5, σ(−2) = 1/(1+e^2) = 0.119203, σ(2) = 0.880797
            # w = σ(z)σ(−z): 0.25 at 0, 0.880797·0.119203 = 0.104994 at ±2
            HandCase((0.0, 2.0, -2.0), {}, (0.5, 0.119203, 0.880797), (0.25, 0.104994, 0.104994)),
        ),
        symmetric_sum=1.0,
    ),
    "sympo_ramp": Reference(
        loss=lambda z: np.minimum(np.maximum((1 - z) / 2, 0.0), 1.0),
        grad_weight=lambda z: np.where(np.abs(z) < 1, 0.5, 0.0),
        hand=(
            # clip((1 − z)/2, 0, 1): z=0 → 0.5, 0.5 → 0.25, −0.5 → 0.75, 3 → clip(−1) = 0, −3 → clip(2) = 1;
            # w = ½ inside |z| < 1, 0 outside
            HandCase((0.0, 0.5, -0.5, 3.0, -3.0), {}, (0.5, 0.25, 0.75, 0.0, 1.0), (0.5, 0.5, 0.5, 0.0, 0.0)),
        ),
        symmetric_sum=1.0,
    ),
    "sympo_unhinged": Reference(
        loss=lambda z: 1 - z,
        grad_weight=lambda z: np.ones_like(z),
        hand=(
            # 1 − z: z=0 → 1, 2 → −1, −3 → 4; w = 1 everywhere
            HandCase((0.0, 2.0, -3.0), {}, (1.0, -1.0, 4.0), (1.0, 1.0, 1.0)),
        ),
        symmetric_sum=2.0,
    ),
    "cdpo": Reference(
        loss=_cdpo,
        grad_weight=_cdpo_weight,
        hand=(
            # ε = 0.1: ℓ = 0.9·ln(1+e^−z) + 0.1·ln(1+e^z)
            #   z = 0: (0.9 + 0.1)·ln 2 = 0.693147; z = 2: 0.9·0.126928 + 0.1·2.126928 = 0.326928;
            #   z = −2: 0.9·2.126928 + 0.1·0.126928 = 1.926928
            # w = 0.9·σ(−z) − 0.1·σ(z): 0.4 at 0; 0.9·0.119203 − 0.1·0.880797 = 0.019203 at 2;
            #   0.9·0.880797 − 0.1·0.119203 = 0.780797 at −2; 0 at z* = ln 9 = 2.197225
            #   ℓ(ln 9) = 0.9·ln(10/9) + 0.1·ln 10 = 0.9·0.105361 + 0.1·2.302585 = 0.325083
            HandCase((0.0, 2.0, -2.0, math.log(9.0)), {"epsilon": 0.1}, (0.693147, 0.326928, 1.926928, 0.325083),
                     (0.4, 0.019203, 0.780797, 0.0)),
            # ε = 0 is DPO: ln 2 at 0 (w = ½), ln(1+e^−2) = 0.126928 at 2 (w = σ(−2) = 0.119203)
            HandCase((0.0, 2.0), {}, (0.693147, 0.126928), (0.5, 0.119203)),
        ),
        extra={"epsilon": 0.2},
    ),
    "drdpo": Reference(
        loss=_drdpo,
        grad_weight=_drdpo_weight,
        hand=(
            # ℓᵢ = −log σ(zᵢ), so exp(−ℓᵢ/β′) = σ(zᵢ)^(1/β′) and L = −β′·log mean σ(zᵢ)^(1/β′).
            # z = (2, 0), β′ = 1: L = −log((0.880797 + 0.5)/2) = −log 0.690399 = 0.370486;
            #   softmax = σ(zᵢ)/Σσ = (0.637890, 0.362110), w = 2·0.637890·0.119203 = 0.152077, 2·0.362110·0.5 = 0.362110
            HandCase((2.0, 0.0), {}, (0.370486, 0.370486), (0.152077, 0.362110)),
            # β′ = 2: L = −2·log((√0.880797 + √0.5)/2) = −2·log 0.822807 = 0.390066; softmax ∝ √σ = (0.938508,
            #   0.707107)/1.645615 = (0.570308, 0.429692), w = 2·0.570308·0.119203 = 0.135965, 2·0.429692·0.5 = 0.429692
            HandCase((2.0, 0.0), {"beta_prime": 2.0}, (0.390066, 0.390066), (0.135965, 0.429692)),
            # every pair alike: L is DPO's loss, ln 2 at z = 0, and w is DPO's σ(0) = ½
            HandCase((0.0, 0.0, 0.0, 0.0), {}, (0.693147,) * 4, (0.5,) * 4),
        ),
        extra={"beta_prime": 0.5},
    ),
    "holder": Reference(
        loss=_holder,
        grad_weight=_holder_weight,
        hand=(
            # γ = 2: ℓ = −3σ² + 2σ³ = −σ²(1 + 2σ(−z)), w = 6σ²σ(−z)² (at γ = 2 the weight is even in z)
            #   z = 0:  σ² = 0.25:     ℓ = −0.25·2 = −0.5;                         w = 6·0.25·0.25 = 0.375
            #   z = 2:  σ² = 0.775803: ℓ = −0.775803·1.238406 = −0.960760;         w = 6·0.775803·0.014209 = 0.066142
            #   z = −2: σ² = 0.014209: ℓ = −0.014209·2.761594 = −0.039240;         w = 6·0.014209·0.775803 = 0.066142
            HandCase((0.0, 2.0, -2.0), {}, (-0.5, -0.960760, -0.039240), (0.375, 0.066142, 0.066142)),
            # γ = 1, z = 1: ℓ = −σ(1)·(1 + σ(−1)) = −0.731059·1.268941 = −0.927671; w = 2·0.731059·0.268941² = 0.105754
            HandCase((1.0,), {"gamma": 1.0}, (-0.927671,), (0.105754,)),
        ),
        extra={"gamma": 1.0},
    ),
    "repo": Reference(
        loss=_repo,
        grad_weight=_repo_weight,
        hand=(
            # η = 0.9: w = σ(z + ln 9), ln 9 = 2.197225; ℓ = w·ln(1+e^−z) + (1−w)·ln(1+e^z); weight = w − σ(z)
            #   z = 0:  w = 0.9;                 ℓ = ln 2 = 0.693147;                               weight = 0.4
            #   z = 2:  w = σ(4.197225) = 0.985186; ℓ = 0.985186·0.126928 + 0.014814·2.126928 = 0.156557;
            #           weight = 0.985186 − 0.880797 = 0.104388 (to 6 digits)
            #   z = −2: w = σ(0.197225) = 0.549147; ℓ = 0.549147·2.126928 + 0.450853·0.126928 = 1.225222;
            #           weight = 0.549147 − 0.119203 = 0.429944
            HandCase((0.0, 2.0, -2.0), {}, (0.693147, 0.156557, 1.225222), (0.4, 0.104388, 0.429944)),
            # η = 0.7, z = 1: w = σ(1 + ln(7/3)) = σ(1.847298) = 0.863810; ℓ = 0.863810·0.313262 + 0.136190·1.313262
            #   = 0.449452; weight = 0.863810 − 0.731059 = 0.132751.  η = 1 is DPO: ln(1+e^−2) = 0.126928, σ(−2)
            HandCase((1.0,), {"eta": 0.7}, (0.449452,), (0.132751,)),
            HandCase((2.0,), {"eta": 1.0}, (0.126928,), (0.119203,)),
        ),
        extra={"eta": 0.7},
    ),
}


def reference_loss(name, z, **hyperparameters):
    """ℓ of the loss type `name` at the margins `z` (a tensor: the result is a float64 tensor like it)."""
    return _apply(REFERENCE[name].loss, z, hyperparameters)


def reference_grad_weight(name, z, **hyperparameters):
    """w = −∂ℓ/∂z of the loss type `name` at the margins `z` (a tensor: the result is a float64 tensor like it)."""
    return _apply(REFERENCE[name].grad_weight, z, hyperparameters)


def _apply(fn, z, hyperparameters):
    if torch.is_tensor(z):
        return torch.from_numpy(np.asarray(fn(z.detach().double().cpu().numpy(), **hyperparameters), dtype=np.float64))
    return np.asarray(fn(np.asarray(z, dtype=np.float64), **hyperparameters), dtype=np.float64)
