"""Noise-robust preference losses as pure per-pair functions of the scaled margin.

Every function here takes the DPO margin

    z = β · [(log πθ(y_w|x) − log πref(y_w|x)) − (log πθ(y_l|x) − log πref(y_l|x))]

as a tensor of any shape and returns the per-pair loss with the same shape. Nothing else: no reduction,
no trainer state. The trainer glue (`trl_robust.trainer`) builds z from TRL's `delta_score` and averages.

The *gradient weight* of a loss is w(z) = −∂ℓ/∂z: how hard one pair pulls the policy. DPO's weight is
σ(−z), which tends to 1 on the pairs the model confidently contradicts — exactly the pairs whose label is
most likely wrong — so DPO memorises flipped labels. The losses below bound or vanish that weight.

All functions are written so that values and gradients stay finite for |z| up to 1e4 in float32, bfloat16
and float16: −log σ(z) is `softplus(−z)`, σ(−z) is `torch.sigmoid(−z)`, and nothing is exponentiated.
"""

import math

import torch
import torch.nn.functional as F


def ropo_loss(z: torch.Tensor, alpha: float = 14.0) -> torch.Tensor:
    r"""ROPO loss: a DPO term plus a symmetric regulariser, scaled so the largest gradient weight is 1.

    Paper: Liang et al., "ROPO: Robust Preference Optimization for Large Language Models", ICML 2025,
    arXiv 2404.04102 — the paper's noise-tolerant loss: the DPO loss plus α · σ(−z), normalised by
    4α/(1+α)² (equation numbers differ between the arXiv versions, so the formula is given in full).

    Formula:
        ℓ(z) = 4α/(1+α)² · (−log σ(z)) + 4α²/(1+α)² · σ(−z)

    Gradient weight:
        w(z) = −ℓ'(z) = 4α/(1+α)² · σ(−z) · (1 + α · σ(z))

    For α > 1 its maximum over z is exactly 1 (at σ(−z) = (1+α)/(2α)), as for DPO; but unlike DPO's σ(−z),
    it falls back to 4α/(1+α)² (≈ 0.25 at α = 14) for z → −∞, so confidently contradicted pairs — likely
    mislabeled — pull far less. As α → ∞, ℓ approaches 4 · σ(−z) (four times the SymPO sigmoid loss).

    Args:
        z: scaled margin β·Δ, any shape.
        alpha: trade-off α > 0. The paper's default is 14; its ablation uses {6, 14, 30}. Larger α is
            more robust to noise and less like DPO.
    """
    scale = 4.0 * alpha / (1.0 + alpha) ** 2
    return scale * F.softplus(-z) + scale * alpha * torch.sigmoid(-z)


def sympo_sigmoid_loss(z: torch.Tensor) -> torch.Tensor:
    r"""SymPO with the sigmoid loss: a symmetric loss, so symmetric label noise does not move its minimiser.

    Paper: Nishimori et al., "On Symmetric Losses for Robust Policy Optimization with Noisy Preferences",
    2025, arXiv 2505.24709 — the SymPO objective, E[ℓ(z)] over the preference pairs, with the symmetric
    sigmoid loss.

    Formula:
        ℓ(z) = σ(−z)            symmetric: ℓ(z) + ℓ(−z) = 1

    Gradient weight:
        w(z) = σ(z) · σ(−z)      at most 1/4 (at z = 0), → 0 for |z| → ∞

    Under symmetric flips at rate ε < 1/2 the noisy risk equals (1 − 2ε) · clean risk + constant, so the
    minimiser is unchanged. The price is smaller steps: near z = 0 the gradient is half of DPO's.
    """
    return torch.sigmoid(-z)


def sympo_ramp_loss(z: torch.Tensor) -> torch.Tensor:
    r"""SymPO with the (symmetric) ramp loss.

    Paper: Nishimori et al., 2025, arXiv 2505.24709 — the SymPO objective with the paper's ramp loss,
    which is the symmetric ramp. (The authors' code also has a non-symmetric ``clip(1 − z, 0, 1)``;
    that one is not the paper's loss and is not what this function computes.)

    Formula:
        ℓ(z) = clip((1 − z) / 2, 0, 1)     symmetric: ℓ(z) + ℓ(−z) = 1

    Gradient weight:
        w(z) = 1/2 for |z| < 1, and 0 for |z| > 1 (the pair is "saturated" and contributes nothing)
    """
    return torch.clamp((1.0 - z) / 2.0, min=0.0, max=1.0)


def sympo_unhinged_loss(z: torch.Tensor) -> torch.Tensor:
    r"""SymPO with the unhinged loss: linear in the margin, so every pair pulls equally hard.

    Paper: Nishimori et al., 2025, arXiv 2505.24709 — the SymPO objective with the unhinged loss
    (van Rooyen et al., "Learning with Symmetric Label Noise: The Importance of Being Unhinged", NeurIPS 2015).

    Formula:
        ℓ(z) = 1 − z            symmetric: ℓ(z) + ℓ(−z) = 2

    Gradient weight:
        w(z) = 1 for every z (0 only where SymPO's reward clip holds a side at its bound)

    Unbounded below: without a bound on the margin the minimiser is z → +∞, so the trainer only accepts it with
    `sympo_reward_clip` set (the margin then lies in [−2c, 2c]).
    """
    return 1.0 - z


def bradley_terry_loss(z: torch.Tensor) -> torch.Tensor:
    r"""The Bradley–Terry negative log-likelihood: DPO's `sigmoid` loss, and TRL's reward-model loss.

    Formula:
        ℓ(z) = −log σ(z)

    Gradient weight:
        w(z) = σ(−z)

    TRL computes it itself; trl-robust computes it only where its filter needs the per-pair values (a reward model
    trained with `loss_type="bradley_terry"` and ROPO's filter on).
    """
    return -F.logsigmoid(z)


def cdpo_loss(z: torch.Tensor, epsilon: float = 0.0) -> torch.Tensor:
    r"""Conservative DPO (cDPO): DPO with label smoothing, for labels flipped with probability ε.

    Source: Mitchell, "A note on DPO with noisy preferences & relationship to IPO", 2023
    (https://ericmitchell.ai/cdpo.pdf); TRL's `sigmoid` loss computed it from `label_smoothing` until v0.29,
    when it silently started to ignore `label_smoothing`.

    Formula:
        ℓ(z) = −(1 − ε) · log σ(z) − ε · log σ(−z)

    Gradient weight:
        w(z) = (1 − ε) · σ(−z) − ε · σ(z)     zero at z* = log((1 − ε)/ε), negative beyond it

    So, unlike DPO, it stops pushing a margin once it reaches z*: the loss's minimum is at a finite margin.
    ε = 0 is DPO. ε must be in [0, 0.5).
    """
    return (1.0 - epsilon) * F.softplus(-z) + epsilon * F.softplus(z)


def drdpo_loss(z: torch.Tensor, beta_prime: float = 1.0) -> torch.Tensor:
    r"""Dr. DPO: distributionally robust DPO over the pairs of a batch.

    Paper: Wu et al., "Towards Robust Alignment of Language Models: Distributionally Robustifying Direct
    Preference Optimization", arXiv 2407.07880 — the Dr. DPO objective.

    Formula (over all n pairs passed in, with ℓᵢ = −log σ(zᵢ) the DPO loss of pair i):
        L = −β′ · log( (1/n) Σᵢ exp(−ℓᵢ / β′) )

    Returned as a tensor of the input's shape filled with L, so the trainer's mean over pairs is L itself.
    Unlike every other loss here it COUPLES the pairs: the loss of one pair depends on the others in the batch
    (per process and per micro-batch under gradient accumulation, as in the paper's code).

    Gradient weight of pair i (relative to DPO's 1/n per pair, i.e. −n · ∂L/∂zᵢ):
        wᵢ = n · softmax(−ℓ/β′)ᵢ · σ(−zᵢ)

    Pairs the model contradicts (large ℓᵢ) get exponentially less weight; β′ → ∞ gives DPO, small β′ trusts only
    the easiest pairs. β′ must be > 0 (the paper uses 1).
    """
    per_pair = F.softplus(-z)
    n = per_pair.numel()
    objective = -beta_prime * (torch.logsumexp(-per_pair.flatten() / beta_prime, dim=0) - math.log(n))
    return objective.expand_as(z)


def holder_loss(z: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    r"""Hölder-DPO: DPO's Bradley–Terry likelihood p = σ(z) scored with a density-power (Hölder) divergence.

    Paper: Fujisawa, Adachi and Osborne, "Scalable Valuation of Human Feedback through Provably Robust Model
    Alignment", NeurIPS 2025, arXiv 2505.17859 (authors' code: github.com/ma921/HolderDPO) — the Hölder-DPO loss, with
    the paper's γ = 2 as the default.

    Formula (p = σ(z), the model's probability of the pair's label):
        ℓ(z) = −(1 + γ) · p^γ + γ · p^(1+γ)  =  −σ(z)^γ · (1 + γ · σ(−z))      in (−1, 0)

    Gradient weight:
        w(z) = γ (1 + γ) · σ(z)^γ · σ(−z)²

    Redescending: w → 0 both for z → +∞ (a settled pair) and for z → −∞ (a pair the model confidently contradicts,
    the likely flips), as σ(z)^γ. Its largest weight, at σ(z) = γ/(γ + 2) (z = 0 for γ = 2, where w = 3/8), is below
    DPO's. The same γ also gives the paper's estimate of the share of mislabelled pairs
    (`trl_robust.noise.loss_states.holder_contamination`). γ must be > 0.

    σ(z)^γ is computed as exp(γ · log σ(z)), finite for any z.
    """
    return -torch.exp(gamma * F.logsigmoid(z)) * (1.0 + gamma * torch.sigmoid(-z))


def repo_posterior(z: torch.Tensor, eta: float) -> torch.Tensor:
    r"""RE-PO's E-step: the posterior probability that a pair's label is right, given its margin z and the annotator
    reliability η (the prior probability that a label is right).

        w = η σ(z) / (η σ(z) + (1 − η) σ(−z))  =  σ(z + log(η / (1 − η)))

    η = 1 trusts every label (w = 1), η = ½ leaves the model's own σ(z). In log-odds form, finite for any z.
    """
    if eta >= 1.0:
        return torch.ones_like(z)
    return torch.sigmoid(z + (math.log(eta) - math.log1p(-eta)))


def repo_loss(z: torch.Tensor, eta: float = 0.9) -> torch.Tensor:
    r"""RE-PO (RE-DPO): DPO's loss for the labeled order and for the reversed one, mixed by the posterior that the
    label is right (EM over whether each label is correct).

    Paper: Cao et al., "RE-PO: Robust Enhanced Policy Optimization as a General Framework for LLM Alignment", ICLR 2026,
    arXiv 2509.24159 — its M-step policy loss for DPO (p(y_w ≻ y_l) = σ(z)), with the E-step's posterior w
    (`repo_posterior`) held fixed (detached) at the current reliability η.

    Formula:
        ℓ(z) = −[ w · log σ(z) + (1 − w) · log σ(−z) ],    w = η σ(z) / (η σ(z) + (1 − η) σ(−z)), detached

    Gradient weight:
        w(z) = w − σ(z)      (η = 1: σ(−z), DPO's; η = ½: 0)

    So a pair the model contradicts (σ(z) small) has w → 0 and is pushed *towards the reversed label*, as the paper
    describes. This function is the loss at a given η; the trainer carries η across steps and updates it after each
    optimizer step as a moving average of the mean posterior, η ← (1 − α) η + α · mean(w), from `repo_eta_init`
    (the paper's 0.9) with momentum `repo_momentum` (the paper's 0.1) — `trl_robust.noise.loss_states.RepoState`.
    η must be in (½, 1].
    """
    w = repo_posterior(z.detach(), eta)
    return w * F.softplus(-z) + (1.0 - w) * F.softplus(z)
