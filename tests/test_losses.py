"""The loss math, checked against numbers worked out by hand (torchtune style)."""

import math

import pytest
import torch
from torch.testing import assert_close

from trl_robust.losses import (
    cdpo_loss,
    drdpo_loss,
    ropo_loss,
    sympo_ramp_loss,
    sympo_sigmoid_loss,
    sympo_unhinged_loss,
)

ALL_LOSSES = {
    "ropo": ropo_loss,
    "sympo_sigmoid": sympo_sigmoid_loss,
    "sympo_ramp": sympo_ramp_loss,
    "sympo_unhinged": sympo_unhinged_loss,
    "cdpo": lambda z: cdpo_loss(z, epsilon=0.1),
    "drdpo": drdpo_loss,
}


def grad_weight(fn, z, **kwargs):
    """w(z) = −∂ℓ/∂z by autograd."""
    z = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(z, **kwargs).sum(), z)
    return -grad


def test_ropo_loss_matches_hand_computed_values():
    # α = 14: scale c = 4·14/15² = 56/225 = 0.248889, and c·α = 784/225 = 3.484444.
    # z = 0:  c·ln 2 + cα·σ(0)          = 0.248889·0.693147 + 3.484444·0.5      = 1.914739
    # z = 2:  c·ln(1+e^−2) + cα·σ(−2)   = 0.248889·0.126928 + 3.484444·0.119203 = 0.446947
    # z = −2: c·ln(1+e^2) + cα·σ(2)     = 0.248889·2.126928 + 3.484444·0.880797 = 3.598457
    z = torch.tensor([0.0, 2.0, -2.0], dtype=torch.float64)
    assert_close(ropo_loss(z), torch.tensor([1.914739, 0.446947, 3.598457], dtype=torch.float64), atol=1e-6, rtol=0)
    # α = 6, z = 1: c = 24/49; c·ln(1+e^−1) + 6c·σ(−1) = 0.489796·0.313262 + 2.938776·0.268941 = 0.943793
    assert_close(ropo_loss(torch.tensor([1.0], dtype=torch.float64), alpha=6.0).item(), 0.943793, atol=1e-6, rtol=0)


def test_sympo_sigmoid_loss_matches_hand_computed_values():
    # σ(−z): σ(0) = 0.5, σ(−2) = 1/(1+e^2) = 0.119203, σ(2) = 0.880797
    z = torch.tensor([0.0, 2.0, -2.0], dtype=torch.float64)
    assert_close(sympo_sigmoid_loss(z), torch.tensor([0.5, 0.119203, 0.880797], dtype=torch.float64), atol=1e-6, rtol=0)


def test_sympo_ramp_loss_matches_hand_computed_values():
    # clip((1 − z)/2, 0, 1): z=0 → 0.5, z=0.5 → 0.25, z=−0.5 → 0.75, z=3 → clip(−1) = 0, z=−3 → clip(2) = 1
    z = torch.tensor([0.0, 0.5, -0.5, 3.0, -3.0])
    assert_close(sympo_ramp_loss(z), torch.tensor([0.5, 0.25, 0.75, 0.0, 1.0]))


def test_sympo_unhinged_loss_matches_hand_computed_values():
    # 1 − z: z=0 → 1, z=2 → −1, z=−3 → 4; its gradient weight is 1 everywhere.
    z = torch.tensor([0.0, 2.0, -3.0], dtype=torch.float64)
    assert_close(sympo_unhinged_loss(z), torch.tensor([1.0, -1.0, 4.0], dtype=torch.float64))
    assert_close(grad_weight(sympo_unhinged_loss, z), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("name, total", [("sympo_sigmoid", 1.0), ("sympo_ramp", 1.0), ("sympo_unhinged", 2.0)])
def test_sympo_losses_are_symmetric(name, total):
    # ℓ(z) + ℓ(−z) = constant is the property that makes symmetric label noise harmless.
    z = torch.linspace(-30, 30, 601, dtype=torch.float64)
    fn = ALL_LOSSES[name]
    assert_close(fn(z) + fn(-z), torch.full_like(z, total))


def test_cdpo_loss_matches_hand_computed_values():
    # ε = 0.1: 0.9·ln(1+e^−z) + 0.1·ln(1+e^z)
    # z = 0:  (0.9 + 0.1)·ln 2                        = 0.693147
    # z = 2:  0.9·0.126928 + 0.1·2.126928              = 0.326928
    # z = −2: 0.9·2.126928 + 0.1·0.126928              = 1.926928
    z = torch.tensor([0.0, 2.0, -2.0], dtype=torch.float64)
    assert_close(cdpo_loss(z, epsilon=0.1), torch.tensor([0.693147, 0.326928, 1.926928], dtype=torch.float64), atol=1e-6, rtol=0)
    # ε = 0 is DPO's −log σ(z).
    assert_close(cdpo_loss(z), -torch.nn.functional.logsigmoid(z))


def test_cdpo_gradient_weight_vanishes_at_a_finite_margin():
    # w(z) = 0.9·σ(−z) − 0.1·σ(z): 0.4 at z = 0, zero at z* = ln(0.9/0.1) = ln 9, negative beyond (pushes back).
    z = torch.tensor([0.0, math.log(9.0), 5.0], dtype=torch.float64)
    w = grad_weight(cdpo_loss, z, epsilon=0.1)
    assert_close(w[0].item(), 0.4, atol=1e-12, rtol=0)
    assert_close(w[1].item(), 0.0, atol=1e-12, rtol=0)
    assert w[2].item() < 0


def test_drdpo_loss_matches_hand_computed_values():
    # With ℓᵢ = −log σ(zᵢ), exp(−ℓᵢ/β′) = σ(zᵢ)^(1/β′), so L = −β′·log mean σ(zᵢ)^(1/β′).
    # z = (2, 0), β′ = 1: −log((0.880797 + 0.5)/2)                  = −log 0.690399 = 0.370486
    # z = (2, 0), β′ = 2: −2·log((√0.880797 + √0.5)/2) = −2·log 0.822807 = 0.390066
    z = torch.tensor([2.0, 0.0], dtype=torch.float64)
    assert_close(drdpo_loss(z), torch.full((2,), 0.370486, dtype=torch.float64), atol=1e-6, rtol=0)
    assert_close(drdpo_loss(z, beta_prime=2.0), torch.full((2,), 0.390066, dtype=torch.float64), atol=1e-6, rtol=0)
    # Its mean over the pairs is the batch objective; with every pair alike it is DPO's loss.
    assert_close(drdpo_loss(torch.zeros(4, dtype=torch.float64)), torch.full((4,), math.log(2), dtype=torch.float64))
    # β′ → ∞ is DPO: the mean of −log σ(zᵢ) = (0.126928 + 0.693147)/2 = 0.410038
    assert_close(drdpo_loss(z, beta_prime=1e6)[0].item(), 0.410038, atol=1e-5, rtol=0)


def test_drdpo_gradient_weight_down_weights_the_contradicted_pairs():
    # wᵢ = n·softmax(−ℓ/β′)ᵢ·σ(−zᵢ); β′ = 1, z = (2, 0): softmax = σ(zᵢ)/Σσ = (0.637890, 0.362110),
    # w = 2·0.637890·0.119203 = 0.152077 and 2·0.362110·0.5 = 0.362110 (DPO: 0.119203 and 0.5).
    z = torch.tensor([2.0, 0.0], dtype=torch.float64)
    assert_close(grad_weight(drdpo_loss, z), torch.tensor([0.152077, 0.362110], dtype=torch.float64), atol=1e-6, rtol=0)


def test_ropo_is_not_symmetric_but_tends_to_four_times_sympo_sigmoid():
    z = torch.linspace(-10, 10, 101, dtype=torch.float64)
    assert not torch.allclose(ropo_loss(z) + ropo_loss(-z), ropo_loss(z[:1]) + ropo_loss(-z[:1]))
    # c → 0 and cα → 4 as α → ∞
    assert_close(ropo_loss(z, alpha=1e7), 4 * torch.sigmoid(-z), atol=1e-5, rtol=0)


def test_ropo_gradient_weight_peaks_at_exactly_one():
    # w(z) = c·σ(−z)·(1 + α·σ(z)); its maximum is at σ(−z) = (1+α)/(2α) = 15/28, i.e. z = −ln(15/13) = −0.143101,
    # where w = c·(1+α)²/(4α) = 1.
    z_star = torch.tensor([-math.log(15 / 13)], dtype=torch.float64)
    assert_close(grad_weight(ropo_loss, z_star).item(), 1.0, atol=1e-12, rtol=0)
    grid = torch.linspace(-40, 40, 80001, dtype=torch.float64)
    assert grad_weight(ropo_loss, grid).max().item() <= 1.0 + 1e-12
    # At z = 0: c·0.5·(1 + 7) = 4c = 224/225
    assert_close(grad_weight(ropo_loss, torch.zeros(1, dtype=torch.float64)).item(), 224 / 225, atol=1e-12, rtol=0)
    # Confidently contradicted pairs (z → −∞) keep only c = 0.248889 of DPO's weight 1.
    assert_close(grad_weight(ropo_loss, torch.tensor([-50.0], dtype=torch.float64)).item(), 56 / 225, atol=1e-9, rtol=0)


def test_sympo_sigmoid_gradient_weight_vanishes_far_from_zero():
    # w(z) = σ(z)σ(−z): 1/4 at 0, e^−20/(1+e^−20)² ≈ 2.06e−9 at |z| = 20.
    z = torch.tensor([0.0, -20.0, 20.0], dtype=torch.float64)
    w = grad_weight(sympo_sigmoid_loss, z)
    assert_close(w[0].item(), 0.25, atol=1e-12, rtol=0)
    assert_close(w[1:], torch.full((2,), math.exp(-20) / (1 + math.exp(-20)) ** 2, dtype=torch.float64))
    # DPO's weight σ(−z) at z = −20 is ≈ 1: the flipped-looking pair keeps pulling under DPO, not under SymPO.
    assert grad_weight(lambda t: -torch.nn.functional.logsigmoid(t), z[1:2]).item() > 0.999


def test_sympo_ramp_gradient_weight_is_half_inside_and_zero_outside():
    z = torch.tensor([-0.9, 0.0, 0.9, -2.0, 2.0, 50.0])
    assert_close(grad_weight(sympo_ramp_loss, z), torch.tensor([0.5, 0.5, 0.5, 0.0, 0.0, 0.0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_losses_stay_finite_at_extreme_margins(name, dtype):
    z = torch.tensor([-1e4, -1e3, -88.0, -1.0, 0.0, 1.0, 88.0, 1e3, 1e4], dtype=dtype, requires_grad=True)
    loss = ALL_LOSSES[name](z)
    (grad,) = torch.autograd.grad(loss.sum(), z)
    assert loss.dtype == dtype and loss.shape == z.shape
    assert torch.isfinite(loss).all(), loss
    assert torch.isfinite(grad).all(), grad
    # Values are bounded where the math says so; the unbounded ones grow linearly at the extremes, as the formula says.
    if name in ("sympo_sigmoid", "sympo_ramp"):
        assert (loss >= 0).all() and (loss <= 1).all()
    elif name == "ropo":  # ≈ c·|z| for z ≪ 0
        assert loss[0].float().item() == pytest.approx(56 / 225 * 1e4 + 784 / 225, rel=1e-2)
    elif name == "sympo_unhinged":
        assert loss[0].float().item() == pytest.approx(1 + 1e4, rel=1e-2)
    elif name == "cdpo":  # ≈ 0.9·|z| for z ≪ 0 and 0.1·z for z ≫ 0
        assert (loss[0].float().item(), loss[-1].float().item()) == pytest.approx((0.9e4, 0.1e4), rel=1e-2)
    else:  # drdpo: −log mean σ(zᵢ), σ summing to 0 + 0 + 0 + 0.268941 + 0.5 + 0.731059 + 1 + 1 + 1 = 4.5 over 9
        assert loss[0].float().item() == pytest.approx(math.log(2), rel=2e-2)


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_losses_keep_the_input_shape(name):  # (drdpo's value is the batch objective, repeated)
    z = torch.randn(3, 5)
    assert ALL_LOSSES[name](z).shape == (3, 5)
