"""The loss math: every registered loss type against its independent reference formula and the values worked out by
hand in `loss_reference.py` (parametrised from the registry, so a new loss without a table entry fails), plus the
properties the papers claim for particular losses."""

import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from trl_robust.losses import cdpo_loss, drdpo_loss, ropo_loss, sympo_ramp_loss, sympo_sigmoid_loss
from trl_robust.registry import get_loss_spec, registered_loss_types

from .loss_reference import REFERENCE, reference_grad_weight, reference_loss

REGISTERED = registered_loss_types()  # the package's own loss types (and any installed plugin's)
SYMMETRIC = [name for name in REGISTERED if name in REFERENCE and REFERENCE[name].symmetric_sum is not None]
F64 = torch.float64


def grad_weight(fn, z, **kwargs):
    """w(z) = −∂ℓ/∂z by autograd (for a batch objective repeated per pair, −n · ∂L/∂zᵢ)."""
    z = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(z, **kwargs).sum(), z)
    return -grad


def test_the_reference_table_covers_exactly_the_registered_loss_types():
    # A loss registered without a line in loss_reference.py (or a line left for a removed loss) fails here.
    assert sorted(REFERENCE) == sorted(REGISTERED)


@pytest.mark.parametrize("name", REGISTERED)
def test_the_reference_formula_gives_the_hand_computed_values(name):
    for case in REFERENCE[name].hand:
        z = np.array(case.z)
        np.testing.assert_allclose(reference_loss(name, z, **case.hyperparameters), case.loss, atol=1e-6, rtol=0)
        np.testing.assert_allclose(
            reference_grad_weight(name, z, **case.hyperparameters), case.grad_weight, atol=1e-6, rtol=0
        )


@pytest.mark.parametrize("name", REGISTERED)
def test_the_registered_function_gives_the_hand_computed_values(name):
    spec = get_loss_spec(name)
    for case in REFERENCE[name].hand:
        assert set(case.hyperparameters) <= set(spec.hyperparameters)  # the function's own keyword names
        z = torch.tensor(case.z, dtype=F64)
        assert_close(spec.fn(z, **case.hyperparameters), torch.tensor(case.loss, dtype=F64), atol=1e-6, rtol=0)
        assert_close(
            grad_weight(spec.fn, z, **case.hyperparameters), torch.tensor(case.grad_weight, dtype=F64), atol=1e-6, rtol=0
        )


SETTINGS = [(name, "defaults") for name in REGISTERED]
SETTINGS += [(name, "off-default") for name in REGISTERED if name in REFERENCE and REFERENCE[name].extra]


@pytest.mark.parametrize("name, setting", SETTINGS)
def test_the_registered_function_matches_the_reference_formula_everywhere(name, setting):
    # On a grid over [−30, 30] (off the kinks at ±1) and on a random batch; at the registered defaults (so the
    # registration's defaults are the reference's) and at the table's other hyperparameter values.
    spec = get_loss_spec(name)
    kwargs = {} if setting == "defaults" else REFERENCE[name].extra
    assert all(kw in spec.hyperparameters and spec.hyperparameters[kw].default != v for kw, v in kwargs.items())
    generator = torch.Generator().manual_seed(0)
    for z in (torch.linspace(-30, 30, 601, dtype=F64) + 0.01, 3 * torch.randn(16, generator=generator, dtype=F64)):
        assert_close(spec.fn(z, **kwargs), reference_loss(name, z, **kwargs), atol=1e-9, rtol=1e-9)
        assert_close(grad_weight(spec.fn, z, **kwargs), reference_grad_weight(name, z, **kwargs), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", SYMMETRIC)
def test_symmetric_losses_sum_to_a_constant(name):
    # ℓ(z) + ℓ(−z) = constant is the property that makes symmetric label noise harmless.
    fn = get_loss_spec(name).fn
    z = torch.linspace(-30, 30, 601, dtype=F64)
    assert_close(fn(z) + fn(-z), torch.full_like(z, REFERENCE[name].symmetric_sum))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", REGISTERED)
def test_losses_stay_finite_at_extreme_margins(name, dtype):
    fn = get_loss_spec(name).fn
    z = torch.tensor([-1e4, -1e3, -88.0, -1.0, 0.0, 1.0, 88.0, 1e3, 1e4], dtype=dtype, requires_grad=True)
    loss = fn(z)
    (grad,) = torch.autograd.grad(loss.sum(), z)
    assert loss.dtype == dtype and loss.shape == z.shape
    assert torch.isfinite(loss).all(), loss
    assert torch.isfinite(grad).all(), grad
    # And right, not merely finite: the reference at the same (rounded) margins, to the dtype's precision.
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    expected = reference_loss(name, z.detach().double())
    assert_close(loss.detach().double(), expected, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("name", REGISTERED)
def test_losses_keep_the_input_shape(name):  # (a batch objective's value is repeated per pair)
    z = torch.randn(3, 5)
    assert get_loss_spec(name).fn(z).shape == (3, 5)


# --- properties the papers claim for particular losses -----------------------------------------------------------------


def test_cdpo_gradient_weight_vanishes_at_a_finite_margin():
    # w(z) = 0.9·σ(−z) − 0.1·σ(z): 0.4 at z = 0, zero at z* = ln(0.9/0.1) = ln 9, negative beyond (pushes back).
    z = torch.tensor([0.0, math.log(9.0), 5.0], dtype=torch.float64)
    w = grad_weight(cdpo_loss, z, epsilon=0.1)
    assert_close(w[0].item(), 0.4, atol=1e-12, rtol=0)
    assert_close(w[1].item(), 0.0, atol=1e-12, rtol=0)
    assert w[2].item() < 0


def test_drdpo_tends_to_dpo_for_large_beta_prime():
    # β′ → ∞ is DPO: the mean of −log σ(zᵢ) = (0.126928 + 0.693147)/2 = 0.410038 at z = (2, 0)
    z = torch.tensor([2.0, 0.0], dtype=F64)
    assert_close(drdpo_loss(z, beta_prime=1e6)[0].item(), 0.410038, atol=1e-5, rtol=0)


def test_cdpo_with_zero_epsilon_is_dpo():
    z = torch.linspace(-10, 10, 101, dtype=F64)
    assert_close(cdpo_loss(z), -torch.nn.functional.logsigmoid(z))


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


