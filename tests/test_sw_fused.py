"""The fused LIF against the autograd LIF of sw/neuron.py: same spikes, same BPTT gradients (and the truncated /
SLTT variants against autograd with the membrane detached between steps)."""

import pytest
import torch
from torch import nn

from spikeforge.sw.fused import FusedLIF, fused_lif_neuron, spike_input_convs
from spikeforge.sw.neuron import LIF, SURROGATES
from spikeforge.sw.resnet import lif_neuron, resnet8


def _current(dtype=torch.float64, shape=(7, 3, 4, 5, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    # mean 0.35, sd 0.8: many membranes end near the threshold, where every surrogate passes gradient
    return (torch.randn(shape, generator=g, dtype=dtype) * 0.8 + 0.35)


def _reference(lif: LIF, current: torch.Tensor, cut_every: int | None) -> torch.Tensor:
    """neuron.LIF step by step, the membrane detached at every step boundary t where t % cut_every == 0."""
    membrane = torch.zeros_like(current[0])
    spikes = []
    for t in range(current.shape[0]):
        if cut_every is not None and t > 0 and t % cut_every == 0:
            membrane = membrane.detach()
        s, membrane = lif.single_step(membrane, current[t])
        spikes.append(s)
    return torch.stack(spikes)


def _grads(module_or_fn, current, weights):
    x = current.clone().requires_grad_(True)
    out = module_or_fn(x)
    (out * weights).sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
@pytest.mark.parametrize("leak_shift", [None, 2])
@pytest.mark.parametrize("threshold,detach_reset", [(1.0, False), (0.75, True), (1.5, False)])
def test_exact_bptt_matches_autograd(surrogate, leak_shift, threshold, detach_reset):
    kw = dict(threshold=threshold, leak_shift=leak_shift, detach_reset=detach_reset)
    current = _current() * threshold
    weights = torch.randn(current.shape, generator=torch.Generator().manual_seed(1), dtype=current.dtype)
    ref_spikes, ref_grad = _grads(LIF(surrogate, 0.6, **kw), current, weights)
    spikes, grad = _grads(FusedLIF(surrogate, 0.6, **kw), current, weights)
    assert torch.equal(spikes, ref_spikes)
    assert ref_grad.abs().max() > 0
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
@pytest.mark.parametrize("leak_shift", [None, 1])
@pytest.mark.parametrize("window", [1, 3])
def test_sltt_and_truncation_match_detached_autograd(surrogate, leak_shift, window):
    current = _current()
    weights = torch.randn(current.shape, generator=torch.Generator().manual_seed(2), dtype=current.dtype)
    lif = LIF(surrogate, 0.5, leak_shift=leak_shift)
    ref_spikes, ref_grad = _grads(lambda x: _reference(lif, x, window), current, weights)
    fused = FusedLIF(surrogate, 0.5, leak_shift=leak_shift, temporal_window=window)
    spikes, grad = _grads(fused, current, weights)
    assert torch.equal(spikes, ref_spikes)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    # and it really differs from exact BPTT
    _, exact = _grads(FusedLIF(surrogate, 0.5, leak_shift=leak_shift), current, weights)
    assert not torch.allclose(grad, exact)


@pytest.mark.parametrize("leak_shift", [None, 3])
def test_float32_spikes_bit_identical(leak_shift):
    current = _current(torch.float32, shape=(10, 8, 16, 9, 9), seed=3)
    with torch.no_grad():
        ref = LIF("arctan", leak_shift=leak_shift)(current)
    assert torch.equal(FusedLIF("arctan", leak_shift=leak_shift)(current), ref)
    spikes = FusedLIF("arctan", leak_shift=leak_shift)(current.requires_grad_(True))
    assert torch.equal(spikes.detach(), ref)


def test_channels_last_and_expanded_inputs():
    """The stem's current is one image repeated over T (an expanded view), in channels_last."""
    image_current = _current(shape=(4, 5, 6, 7))[0:4].contiguous(memory_format=torch.channels_last)
    current = image_current.unsqueeze(0).expand(6, *image_current.shape)
    weights = torch.randn(current.shape, generator=torch.Generator().manual_seed(4), dtype=current.dtype)
    ref_spikes, ref_grad = _grads(LIF("sigmoid"), current.contiguous(), weights)
    spikes, grad = _grads(FusedLIF("sigmoid"), current, weights)
    assert spikes[0].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(spikes, ref_spikes)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_membrane_dtype_bf16_is_close():
    current = _current(torch.float32)
    weights = torch.randn(current.shape, generator=torch.Generator().manual_seed(5))
    _, ref_grad = _grads(LIF("arctan"), current, weights)
    spikes, grad = _grads(FusedLIF("arctan", membrane_dtype=torch.bfloat16), current, weights)
    assert torch.equal(spikes, LIF("arctan")(current).detach())
    assert (grad - ref_grad).norm() < 0.05 * ref_grad.norm()


def test_resnet_with_fused_neurons_and_bool_saved_convs():
    torch.manual_seed(0)
    ref_model = resnet8(width=0.5, time_steps=4, neuron=lif_neuron("arctan", leak_shift=2)).double()
    model = resnet8(width=0.5, time_steps=4, neuron=fused_lif_neuron("arctan", leak_shift=2)).double()
    model.load_state_dict(ref_model.state_dict())
    spike_input_convs(model)
    assert model.state_dict().keys() == ref_model.state_dict().keys()
    images = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    for m in (ref_model, model):
        m(images).square().sum().backward()
    torch.testing.assert_close(model(images), ref_model(images))
    for (name, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
        assert q.grad is not None and q.grad.abs().max() > 0, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_factory_and_errors():
    neuron = fused_lif_neuron("triangular", 0.3, leak_shift=4, sltt=True)()
    assert isinstance(neuron, nn.Module) and neuron.temporal_window == 1 and neuron.threshold == 1.0
    with pytest.raises(ValueError, match="temporal_window"):
        FusedLIF(temporal_window=0)
    with pytest.raises(ValueError, match="leak_shift"):
        FusedLIF(leak_shift=0)
    with pytest.raises(ValueError, match="sltt"):
        fused_lif_neuron(sltt=True, temporal_window=2)
    with pytest.raises(ValueError, match="multi-step"):
        FusedLIF()(torch.zeros(3))


@pytest.mark.parametrize("window", [None, pytest.param(3, marks=pytest.mark.slow)])
def test_compiled_kernels_match_autograd(window):
    """The torch.compile'd forward/backward programs: same spikes, same gradients (one surrogate: compiling
    takes seconds per variant)."""
    current = _current()
    weights = torch.randn(current.shape, generator=torch.Generator().manual_seed(6), dtype=current.dtype)
    lif = LIF("fast_sigmoid", 0.5, leak_shift=2, threshold=0.8)
    ref_spikes, ref_grad = _grads(lambda x: _reference(lif, x, window), current, weights)
    fused = FusedLIF("fast_sigmoid", 0.5, leak_shift=2, threshold=0.8, temporal_window=window, compiled=True)
    spikes, grad = _grads(fused, current, weights)
    assert torch.equal(spikes, ref_spikes)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    current32 = _current(torch.float32, seed=7)
    with torch.no_grad():
        expected = LIF("arctan", leak_shift=1)(current32)
    assert torch.equal(FusedLIF("arctan", leak_shift=1, compiled=True)(current32.requires_grad_(True)), expected)


@pytest.mark.parametrize("compiled", [False, True])
def test_bf16_current_integrates_in_float32(compiled):
    """Under mixed precision a layer's current arrives in bf16: the membrane still integrates in float32 (the
    spikes are those of the float32 neuron on the same values), spikes and gradient go back in bf16."""
    current = _current(torch.float32, seed=8).to(torch.bfloat16)
    weights = torch.randn(current.shape, generator=torch.Generator().manual_seed(9)).to(torch.bfloat16)
    fused = FusedLIF("arctan", leak_shift=1, compiled=compiled)
    spikes, grad = _grads(fused, current, weights)
    ref_spikes, ref_grad = _grads(FusedLIF("arctan", leak_shift=1, compiled=compiled), current.float(),
                                  weights.float())
    assert spikes.dtype == grad.dtype == torch.bfloat16
    assert torch.equal(spikes.float(), ref_spikes) and 0 < ref_spikes.mean() < 1
    assert torch.equal(grad, ref_grad.to(torch.bfloat16))
    # the autograd LIF keeps the same float32 membrane: same spikes, and in bf16 (a bf16 membrane would differ)
    assert torch.equal(LIF("arctan", leak_shift=1)(current), spikes.detach())
    bf16_membrane = _reference(LIF("arctan", leak_shift=1), current, None)
    assert not torch.equal(bf16_membrane, spikes.detach())


def test_spike_input_conv_under_autocast():
    """A bool-saved spike conv computes like autocast's own conv2d: bf16 forward, gradients in the inputs' dtypes."""
    g = torch.Generator().manual_seed(10)
    x = (torch.rand(6, 8, 7, 7, generator=g) < 0.3).float().contiguous(memory_format=torch.channels_last)
    conv, ref = nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.Conv2d(8, 16, 3, padding=1, bias=False)
    ref.load_state_dict(conv.state_dict())
    spike_input_convs(nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), conv), skip=("0",))
    assert type(conv) is not nn.Conv2d
    weights = torch.randn(6, 16, 7, 7, generator=g)
    results = []
    for module in (conv, ref):
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", torch.bfloat16):
            out = module(xi)
        (out.float() * weights).sum().backward()
        results.append((out, xi.grad, module.weight.grad))
    (out, gx, gw), (ref_out, ref_gx, ref_gw) = results
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref_out)
    assert gx.dtype == gw.dtype == torch.float32
    torch.testing.assert_close(gx, ref_gx)
    torch.testing.assert_close(gw, ref_gw)
