"""Event-driven spike convolutions (sw/event_conv.py, sw/csrc/event_conv.cpp) against torch's conv2d."""

import pytest
import torch
import torch.nn.functional as F

from spikeforge.sw import event_conv
from spikeforge.sw.fused import fused_lif_neuron
from spikeforge.sw.spike_conv import EventInputConv2d, SpikeInputConv2d, spike_input_convs
from spikeforge.sw.resnet import BasicBlock, SpikingResNet


def spikes(shape, density, generator):
    x = (torch.rand(shape, generator=generator) < density).float()
    return x.contiguous(memory_format=torch.channels_last)


def reference(x, w, stride, padding, grad):
    """conv2d and its input and weight gradients in float64 (the exact values the float32 kernels round)."""
    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    y = F.conv2d(x64, w64, stride=stride, padding=padding)
    y.backward(grad.double())
    return y, x64.grad, w64.grad


def close(actual, expected, what):
    scale = max(expected.abs().max().item(), 1.0)
    err = (actual.double() - expected).abs().max().item()
    assert err <= 2e-6 * scale, f"{what}: max error {err} vs scale {scale}"


@pytest.mark.parametrize("c", [5, 37, 150])
def test_event_lists_are_the_active_channels(c):
    """CSR over (pixel, 64-channel block); c = 150 has two full blocks and a tail that is not a multiple of 8."""
    g = torch.Generator().manual_seed(1)
    x = spikes((3, c, 5, 7), 0.3, g)
    offsets, channels = event_conv.extension().events(x.permute(0, 2, 3, 1))
    nhwc = x.permute(0, 2, 3, 1).reshape(-1, c)
    blocks = -(-c // 64)
    padded = torch.nn.functional.pad(nhwc, (0, blocks * 64 - c))
    counts = (padded.view(-1, blocks, 64) != 0).sum(2).flatten()
    assert offsets.tolist() == [0] + counts.cumsum(0).tolist()
    assert channels.tolist() == nhwc.nonzero()[:, 1].tolist()  # row-major: each pixel's channels, ascending


def _random_case(seed):
    g = torch.Generator().manual_seed(seed)
    pick = lambda options: options[torch.randint(len(options), (1,), generator=g).item()]  # noqa: E731
    kernel, stride = pick([1, 3]), pick([1, 2])
    padding = pick([0, 1]) if kernel == 3 else 0
    return (kernel, stride, padding, pick([1, 3, 8, 17, 64, 70]), pick([8, 16, 24, 64, 72, 136]), pick([1, 2, 3]),
            pick([3, 5, 8]), pick([4, 7, 9]), pick([0.0, 0.05, 0.3, 0.7, 1.0]))


# kernel, stride, padding, Cin, Cout, N, H, W, spike density: a ResNet's three conv kinds with a full 64-channel
# chunk, every tail length of 8..56 channels and 64 + tail, edge densities, 4 input blocks (the last 8 wide),
# a 7 x 7 kernel, several pixel tiles and splits;
# then random ones
CASES = [(3, 1, 1, 64, 64, 2, 8, 8, 0.2), (3, 2, 1, 16, 72, 2, 9, 8, 0.3), (1, 2, 0, 70, 136, 2, 7, 7, 0.5),
         (3, 1, 1, 5, 56, 1, 4, 6, 1.0), (3, 1, 1, 9, 40, 1, 5, 5, 0.0), (3, 2, 1, 33, 120, 1, 6, 5, 0.1),
         (3, 1, 0, 3, 32, 2, 4, 4, 0.6), (1, 1, 0, 12, 48, 3, 3, 4, 0.4),
         (3, 1, 1, 200, 128, 2, 5, 6, 0.25), (7, 2, 3, 8, 64, 1, 11, 9, 0.3),
         (3, 1, 1, 64, 64, 3, 16, 12, 0.2)] + [_random_case(s) for s in range(8)]


@pytest.mark.parametrize("case", CASES)
def test_convs_match_conv2d(case):
    kernel, stride, padding, cin, cout, n, h, w, density = case
    g = torch.Generator().manual_seed(sum(case[:-1]))
    x = spikes((n, cin, h, w), density, g).requires_grad_()
    weight = torch.randn(cout, cin, kernel, kernel, generator=g).contiguous(memory_format=torch.channels_last)
    weight.requires_grad_()
    assert event_conv.applies(x, weight, (stride, stride), (padding, padding), min_channels=8)
    y = event_conv.EventConv2dFunction.apply(x, weight, (stride, stride), (padding, padding))
    grad = torch.randn(y.shape, generator=g)
    y.backward(grad)
    y_ref, gx_ref, gw_ref = reference(x, weight, stride, padding, grad)
    assert y.shape == y_ref.shape and y.is_contiguous(memory_format=torch.channels_last)
    close(y, y_ref, "output")
    close(x.grad, gx_ref, "input gradient")
    close(weight.grad, gw_ref, "weight gradient")
    assert weight.grad.is_contiguous(memory_format=torch.channels_last)


def test_falls_back_where_the_kernels_do_not_apply():
    g = torch.Generator().manual_seed(3)
    conv = torch.nn.Conv2d(8, 12, 3, padding=1, bias=False)  # 12 output channels: not a multiple of 8
    spike_input_convs(torch.nn.Sequential(conv), skip=(), events=True)
    assert type(conv) is EventInputConv2d
    x = spikes((2, 8, 6, 6), 0.4, g)
    assert not event_conv.applies(x, conv.weight, conv.stride, conv.padding)
    assert not event_conv.applies(x.contiguous(), torch.zeros(64, 8, 3, 3), (1, 1), (1, 1))  # NCHW input
    assert not event_conv.applies(x.double(), torch.zeros(64, 8, 3, 3).double(), (1, 1), (1, 1))
    assert not event_conv.applies(x, torch.zeros(64, 8, 3, 3), (1, 2), (1, 1))
    assert not event_conv.applies(x, torch.zeros(64, 8, 9, 9), (1, 1), (4, 4))  # wider than a tap mask holds
    assert event_conv.applies(x, torch.zeros(64, 8, 7, 7), (1, 1), (3, 3))
    # fewer output channels than MIN_CHANNELS: the bool-saving conv, unless asked for
    assert event_conv.applies(x, torch.zeros(64, 8, 3, 3), (1, 1), (1, 1))
    assert not event_conv.applies(x, torch.zeros(56, 8, 3, 3), (1, 1), (1, 1))
    assert event_conv.applies(x, torch.zeros(56, 8, 3, 3), (1, 1), (1, 1), min_channels=8)
    with torch.autocast("cpu", torch.bfloat16):
        assert not event_conv.applies(x, torch.zeros(64, 8, 3, 3), (1, 1), (1, 1))
    y = conv(x.requires_grad_())
    assert torch.allclose(y, F.conv2d(x, conv.weight, padding=1), atol=1e-5)


def test_resnet_training_step_matches_the_bool_saving_convs(monkeypatch):
    """The same spiking ResNet, one training step, with and without event-driven convs: equal loss and gradients
    up to float summation order; every hidden conv took the event path."""
    monkeypatch.setattr(event_conv, "MIN_CHANNELS", 8)  # a small network: every hidden conv event-driven
    def model():
        torch.manual_seed(0)
        net = SpikingResNet(BasicBlock, [1, 1], widths=[8, 16], num_classes=10, in_channels=3, time_steps=3,
                            neuron=fused_lif_neuron("arctan", 0.5, leak_shift=1, compiled=False))
        return net.to(memory_format=torch.channels_last)

    g = torch.Generator().manual_seed(5)
    images = torch.rand(4, 3, 12, 12, generator=g).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (4,), generator=g)
    results = []
    for events in (False, True):
        net = spike_input_convs(model(), events=events)
        hidden = [m for m in net.modules() if isinstance(m, SpikeInputConv2d)]
        assert len(hidden) == 5 and all((type(m) is EventInputConv2d) == events for m in hidden)
        calls = []
        original = event_conv.EventConv2dFunction.apply
        event_conv.EventConv2dFunction.apply = lambda *a: calls.append(a[1].shape) or original(*a)
        try:
            loss = F.cross_entropy(net(images), labels)
            loss.backward()
        finally:
            event_conv.EventConv2dFunction.apply = original
        assert len(calls) == (5 if events else 0)
        results.append((loss.item(), {n: p.grad.clone() for n, p in net.named_parameters()}))
    (loss0, grads0), (loss1, grads1) = results
    assert loss1 == pytest.approx(loss0, rel=1e-6)
    for name, grad in grads0.items():
        assert torch.allclose(grads1[name], grad, rtol=1e-4, atol=1e-6), name


def test_trainer_uses_event_convs_where_they_apply(monkeypatch):
    from spikeforge.sw.config import ConfigError, TrainConfig
    from spikeforge.sw.models import build_model
    from spikeforge.sw.train import runtime

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    last = torch.channels_last

    def setup(fmt=last, device=cpu, **fields):
        config = TrainConfig(arch="resnet8", width=4.0, time_steps=2, **fields).validate()  # widths 64-128-256
        model = build_model(config, False)
        lines = []
        count = runtime.prepare_model(model, config, fmt, device, lines.append)
        kinds = {name: type(m) for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
        return count, kinds, lines

    count, kinds, lines = setup()
    events = [n for n, k in kinds.items() if k is EventInputConv2d]
    assert count == len(events) == 8  # every hidden conv (64..256 channels, both shortcuts included), not the stem
    assert "stem.conv" not in events and any("event-driven convs: 8" in line for line in lines)
    for kwargs in (dict(event_convs="false"), dict(fmt=torch.contiguous_format), dict(device=cuda),
                   dict(amp="bf16"), dict(compile=True)):
        count, kinds, _ = setup(**kwargs)
        assert count == 0 and EventInputConv2d not in kinds.values(), kwargs
    with pytest.raises(ConfigError):
        TrainConfig(event_convs="yes").validate()

    def unbuildable():
        raise event_conv.EventConvUnavailable("no compiler here (test)")

    monkeypatch.setattr(event_conv, "extension", unbuildable)
    count, kinds, lines = setup()
    assert count == 0 and EventInputConv2d not in kinds.values()
    assert lines == ["event-driven convs off: no compiler here (test)"]
    with pytest.raises(ConfigError, match="--event-convs true: no compiler here"):
        setup(event_convs="true")
