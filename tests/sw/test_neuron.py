"""Surrogate spike functions and the LIF neuron (spikeforge.sw.neuron)."""

import math

import pytest
import torch

from spikeforge.sw.neuron import LIF, SURROGATES, make_surrogate

WIDTHS = (0.25, 1.0)


@pytest.mark.parametrize("kind", sorted(SURROGATES))
def test_forward_is_heaviside(kind):
    x = torch.tensor([-2.0, -1e-6, 0.0, 1e-6, 3.0])
    assert torch.equal(make_surrogate(kind, 0.5)(x), torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0]))


@pytest.mark.parametrize("kind", sorted(SURROGATES))
@pytest.mark.parametrize("width", WIDTHS)
def test_backward_is_the_derivative_of_the_smooth_step(kind, width):
    sg = make_surrogate(kind, width)
    # avoid the kinks of the rectangular/triangular steps, where the derivative jumps
    x = torch.linspace(-3, 3, 601, dtype=torch.float64)
    x = x[(x.abs() - width / 2).abs().gt(1e-3) & (x.abs() - width).abs().gt(1e-3)].requires_grad_()
    sg(x).sum().backward()
    h = 1e-6
    numeric = (sg.primitive(x.detach() + h) - sg.primitive(x.detach() - h)) / (2 * h)
    torch.testing.assert_close(x.grad, numeric, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, sg.derivative(x.detach()))


@pytest.mark.parametrize("kind", sorted(SURROGATES))
def test_surrogate_is_a_unit_step(kind):
    sg = make_surrogate(kind, 0.5)
    x = torch.linspace(-2000, 2000, 2_000_001, dtype=torch.float64)
    area = torch.trapezoid(sg.derivative(x), x)
    assert abs(float(area) - 1.0) < 5e-3  # the box's edges cost one grid step
    assert float(sg.primitive(torch.tensor(-1e4, dtype=torch.float64))) < 1e-3
    assert float(sg.primitive(torch.tensor(1e4, dtype=torch.float64))) > 1 - 1e-3


def test_analytic_derivatives_at_known_points():
    w = 0.5
    zero = torch.zeros(1, dtype=torch.float64)
    expect = {"rectangular": 1 / w, "triangular": 1 / w, "fast_sigmoid": 0.5 / w, "arctan": 0.5 / w,
              "sigmoid": 0.25 / w}
    for kind, value in expect.items():
        assert math.isclose(float(make_surrogate(kind, w).derivative(zero)), value)


@pytest.mark.parametrize("kind", sorted(SURROGATES))
def test_width_changes_the_gradient(kind):
    x = torch.tensor([0.0, 0.3], requires_grad=True)
    grads = []
    for width in (0.25, 2.0):
        x.grad = None
        make_surrogate(kind, width)(x).sum().backward()
        grads.append(x.grad.clone())
    assert grads[0][0] > grads[1][0]  # narrower: taller at the threshold
    assert not torch.allclose(grads[0], grads[1])


def test_bad_surrogate_arguments():
    with pytest.raises(ValueError, match="width"):
        make_surrogate("arctan", 0.0)
    with pytest.raises(ValueError, match="unknown surrogate"):
        make_surrogate("nope")
    with pytest.raises(ValueError, match="leak_shift"):
        LIF(leak_shift=0)


@pytest.mark.parametrize("leak_shift", [None, 1, 3])
def test_lif_multistep_equals_a_hand_loop(leak_shift):
    torch.manual_seed(0)
    current = torch.randn(12, 4, 3, 5) * 0.8
    lif = LIF("sigmoid", 0.3, leak_shift=leak_shift)
    spikes = lif(current)
    v = torch.zeros(4, 3, 5)
    for t in range(12):
        if leak_shift is not None:
            v = v - v / 2 ** leak_shift
        v = v + current[t]
        s = (v >= 1.0).float()
        assert torch.equal(spikes[t], s), f"step {t}"
        v = v - s
    assert spikes.shape == current.shape


def test_lif_reset_by_subtraction_and_gradient_flows():
    lif = LIF("arctan", 0.5)
    current = torch.full((4, 1), 0.6, requires_grad=True)
    spikes = lif(current)
    # V: 0.6 -> 1.2 fires (0.2) -> 0.8 -> 1.4 fires
    assert spikes.flatten().tolist() == [0.0, 1.0, 0.0, 1.0]
    spikes.sum().backward()
    assert current.grad.abs().sum() > 0
