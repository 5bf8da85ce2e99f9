"""The fused LIF against the autograd LIF of sw/neuron.py: same spikes, same BPTT gradients (and the truncated /
SLTT variants against autograd with the membrane detached between steps)."""

import pytest
import torch
from torch import nn

from spikeforge.sw.fused import FusedLIF, fused_lif_neuron
from spikeforge.sw.spike_conv import spike_input_convs
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


@pytest.mark.parametrize("compiled", [False, True])
def test_channels_last_and_expanded_inputs(compiled):
    """The stem's current is one image repeated over T (an expanded view), in channels_last; the compiled kernels
    run on its flat steps (fused._rows) and give spikes and gradient back in that layout."""
    image_current = _current(shape=(4, 5, 6, 7))[0:4].contiguous(memory_format=torch.channels_last)
    current = image_current.unsqueeze(0).expand(6, *image_current.shape)
    weights = torch.randn(current.shape, generator=torch.Generator().manual_seed(4), dtype=current.dtype)
    ref_spikes, ref_grad = _grads(LIF("sigmoid"), current.contiguous(), weights)
    spikes, grad = _grads(FusedLIF("sigmoid", compiled=compiled), current, weights)
    assert spikes[0].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(spikes, ref_spikes)
    if compiled:  # the expanded view itself (the clone in _grads makes it dense): stride 0 over T stays a view
        expanded = FusedLIF("sigmoid", compiled=True)(current.requires_grad_(True))
        assert torch.equal(expanded, ref_spikes)
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


def _bn_lif_case(bn_kind, extra_kind, seed=11, dtype=torch.float64, channels_last=True):
    """A conv output y [T, B, C, H, W] (channels_last steps unless told), a BN of the kind, and a shortcut current."""
    from spikeforge.sw.bn import make_bn
    g = torch.Generator().manual_seed(seed)
    y = (torch.randn(4 * 3, 5, 6, 7, generator=g, dtype=dtype) * 1.5 + 0.4)
    if channels_last:
        y = y.contiguous(memory_format=torch.channels_last)
    y = y.view(4, 3, 5, 6, 7)
    bn = make_bn(bn_kind, 5, join=extra_kind is not None).to(dtype)
    with torch.no_grad():
        bn.norm.weight.uniform_(0.5, 1.5, generator=g)
        bn.norm.bias.uniform_(-0.3, 0.6, generator=g)
        bn.norm.running_var.uniform_(0.5, 2.0, generator=g)
    extra = None
    if extra_kind == "spikes":
        extra = (torch.rand(y.shape, generator=g) < 0.3).to(dtype)
    elif extra_kind == "current":
        extra = torch.randn(y.shape, generator=g, dtype=dtype) * 0.5
    return y, bn, extra, torch.randn(y.shape, generator=g, dtype=dtype)


def _bn_lif_run(bn, neuron, y, extra, weights, fused):
    from spikeforge.sw.fused import bn_lif, can_fuse_bn
    y = y.detach().clone().requires_grad_(True)
    extra = None if extra is None else extra.detach().clone().requires_grad_(True)
    assert can_fuse_bn(bn, neuron, y) == fused
    if fused:
        spikes = bn_lif(bn, neuron, y, extra, extra_binary=extra is not None and bool(((extra == 0) | (extra == 1)).all()))
    else:
        current = bn(y)
        spikes = neuron(current if extra is None else current + extra)
    (spikes * weights).sum().backward()
    grads = [y.grad, bn.norm.weight.grad, bn.norm.bias.grad] + ([] if extra is None else [extra.grad])
    return spikes.detach(), grads


@pytest.mark.parametrize("bn_kind,extra_kind,window,momentum,channels_last", [
    ("shared", None, None, 0.1, True),
    ("tdbn", "spikes", None, None, True),
    ("shared", "spikes", None, 0.1, False),
    pytest.param("shared", "current", 2, 0.1, True, marks=pytest.mark.slow),
])
def test_bn_lif_matches_separate_modules(bn_kind, extra_kind, window, momentum, channels_last):
    """BN + LIF (+ a residual join's shortcut current) as one compiled node: the same spikes, gradients of the conv
    output, BN's affine and the shortcut, and the same running statistics as BN and the neuron run separately (BN's
    backward runs inside the node's compiled kernel; NCHW steps take its other reduction layout)."""
    import copy
    y, bn, extra, weights = _bn_lif_case(bn_kind, extra_kind, channels_last=channels_last)
    bn.norm.momentum = momentum
    ref_bn, ref_neuron = copy.deepcopy(bn), FusedLIF("arctan", 0.5, leak_shift=1, threshold=0.9,
                                                     temporal_window=window, compiled=False)
    neuron = FusedLIF("arctan", 0.5, leak_shift=1, threshold=0.9, temporal_window=window, compiled=True)
    ref_spikes, ref_grads = _bn_lif_run(ref_bn, ref_neuron, y, extra, weights, fused=False)
    spikes, grads = _bn_lif_run(bn, neuron, y, extra, weights, fused=True)
    assert 0.05 < ref_spikes.mean() < 0.6
    assert torch.equal(spikes, ref_spikes)
    # the next conv reads the spikes in the conv output's layout, without a reorder
    assert spikes[0].is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    for got, want in zip(grads, ref_grads):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    for name, value in ref_bn.state_dict().items():
        torch.testing.assert_close(bn.state_dict()[name], value, rtol=1e-12, atol=1e-14, msg=name)


def test_bn_lif_saves_less_and_falls_back():
    """The fused node keeps the conv output and 1-byte spikes for backward instead of the conv output and a float
    membrane; it steps aside (separate modules) in eval mode, without grad, with fuse_bn=False, for BNTT, and when
    a hook watches the neuron's input (spikeforge gradflow)."""
    from spikeforge.sw.bn import make_bn
    from spikeforge.sw.fused import can_fuse_bn
    y, bn, _, weights = _bn_lif_case("shared", None, dtype=torch.float32)

    def saved_bytes(fused):
        total = []

        def pack(t):
            total.append(t.numel() * t.element_size())
            return t
        neuron = FusedLIF("arctan", leak_shift=1, compiled=True, fuse_bn=fused)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _bn_lif_run(bn, neuron, y, None, weights, fused=fused)
        return sum(total)
    # Both runs also save the loss's weights for (spikes * weights); the rest is what BN + LIF keep.
    own = weights.numel() * weights.element_size()
    unfused, fused = saved_bytes(False) - own, saved_bytes(True) - own
    assert y.numel() * y.element_size() * 2 <= unfused  # the conv output and the float current
    assert fused < 0.7 * unfused, (fused, unfused)  # the conv output and 1-byte spikes
    neuron = FusedLIF(compiled=True)
    x = y.detach().requires_grad_(True)
    assert can_fuse_bn(bn, neuron, x)
    assert not can_fuse_bn(make_bn("bntt", 5, time_steps=4), neuron, x)
    assert not can_fuse_bn(bn, FusedLIF(compiled=False), x)
    with torch.no_grad():
        assert not can_fuse_bn(bn, neuron, x)
    handle = neuron.register_forward_pre_hook(lambda mod, inp: None)
    assert not can_fuse_bn(bn, neuron, x)
    handle.remove()
    bn.eval()
    assert not can_fuse_bn(bn, neuron, x)


def _count_nodes(output, kind):
    seen, stack, count = set(), [output.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        count += type(node).__name__ == kind
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return count


def test_resnet_blocks_fuse_bn():
    """A spiking ResNet whose compiled neurons fuse their BNs trains like the unfused one: same spikes of every
    population, same parameter gradients and running statistics (float64)."""
    models = []
    for fuse in (False, True):
        torch.manual_seed(3)
        neuron = fused_lif_neuron("arctan", leak_shift=1, compiled=True, fuse_bn=fuse)
        models.append(resnet8(width=0.5, time_steps=3, neuron=neuron).double())
    images = torch.rand(4, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    runs = []
    for model in models:
        run = model.run(images, record=True)
        run.logits.square().sum().backward()
        runs.append(run)
    assert [_count_nodes(run.logits, "BNLIFFunctionBackward") for run in runs] == [0, 6]  # 3 blocks x 2 BNs
    for name, spikes in runs[0].spikes.items():
        assert torch.equal(runs[1].spikes[name], spikes), name
    for (name, p), (_, q) in zip(models[1].named_parameters(), models[0].named_parameters()):
        assert q.grad is not None and q.grad.abs().max() > 0, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-12, msg=name)
    for (name, a), (_, b) in zip(models[1].named_buffers(), models[0].named_buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=name)


@pytest.mark.parametrize("channels_last", [False, True])
def test_residual_gradients_accumulate_in_place(channels_last):
    """Every block input feeds two paths (the block's first conv and the shortcut: identity or a 1x1 conv); autograd
    sums their gradients in place only when the first to arrive is not a view (kernels.accumulable, resnet._FoldTime),
    else each join allocates a fresh [T, B, C, H, W] tensor (an out-of-place aten::add)."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(5)
    model = resnet8(width=0.5, time_steps=3, neuron=fused_lif_neuron("arctan", leak_shift=1, compiled=True))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    images = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(6))
    logits = model(images)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        logits.square().sum().backward()
    ops = prof.key_averages(group_by_input_shape=True)
    joins = [e for e in ops if e.key in ("aten::add", "aten::add_") and len(e.input_shapes[0]) == 5
             and e.input_shapes[0] == e.input_shapes[1]]
    assert sum(e.count for e in joins if e.key == "aten::add_") == 3  # one per block
    assert not [e for e in joins if e.key == "aten::add"], [(e.input_shapes[0], e.count) for e in joins]


def test_bn_lif_under_bf16_autocast():
    """Under bf16 autocast the conv output is bf16: the fused node normalizes and integrates in float32 (the
    unfused BN rounds its output to bf16 first), so a spike may flip where a membrane sits within bf16 rounding of
    the threshold; everything else matches the unfused modules to bf16 precision, in the same dtypes."""
    import copy
    y, bn, extra, weights = _bn_lif_case("shared", "current", dtype=torch.float32)
    y, extra = y.to(torch.bfloat16), extra.to(torch.bfloat16)
    ref_bn = copy.deepcopy(bn)
    results = []
    for norm, fused in ((ref_bn, False), (bn, True)):
        neuron = FusedLIF("arctan", 0.5, leak_shift=1, compiled=True, fuse_bn=fused)
        with torch.autocast("cpu", torch.bfloat16):
            results.append(_bn_lif_run(norm, neuron, y, extra, weights.to(torch.bfloat16), fused=fused))
    (ref_spikes, ref_grads), (spikes, grads) = results
    assert spikes.dtype == ref_spikes.dtype == torch.bfloat16
    assert (spikes != ref_spikes).float().mean() < 0.01
    for got, want in zip(grads, ref_grads):
        assert got.dtype == want.dtype
        assert (got.float() - want.float()).norm() < 0.05 * want.float().norm()
    torch.testing.assert_close(bn.norm.running_mean, ref_bn.norm.running_mean, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(bn.norm.running_var, ref_bn.norm.running_var, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("window", [None, 2, 1])
def test_traced_path_matches_fused_node(window, monkeypatch):
    """Inside torch.compile of a whole model, FusedLIF traces LIF's step loop (which Inductor fuses) instead of its
    hand-written node, and a ResNet block does not fuse BN: same spikes, same (truncated) BPTT gradients."""
    from spikeforge.sw.bn import make_bn
    from spikeforge.sw.fused import can_fuse_bn
    current = _current()
    weights = torch.randn(current.shape, generator=torch.Generator().manual_seed(5), dtype=current.dtype)
    neuron = FusedLIF("fast_sigmoid", leak_shift=2, threshold=0.75, temporal_window=window, compiled=True)
    want_spikes, want_grad = _grads(neuron, current, weights)
    assert can_fuse_bn(make_bn("shared", 5), neuron, torch.zeros(2, 3, 5, 4, 4, requires_grad=True))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not can_fuse_bn(make_bn("shared", 5), neuron, torch.zeros(2, 3, 5, 4, 4, requires_grad=True))
    spikes, grad = _grads(neuron, current, weights)
    assert 0.05 < want_spikes.mean() < 0.6 and torch.equal(spikes, want_spikes)
    torch.testing.assert_close(grad, want_grad, rtol=1e-9, atol=1e-12)


def test_traced_path_keeps_channels_last_steps(monkeypatch):
    """A current whose steps are channels_last goes through the traced loop as [T, B, H, W, C] memory and comes
    out in the hand-written node's layout: same spikes, same gradients, same strides."""
    current = _current(shape=(4, 2, 6, 3, 5)).permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    weights = torch.randn(current.shape, generator=torch.Generator().manual_seed(6), dtype=current.dtype)
    neuron = FusedLIF("arctan", leak_shift=1, compiled=True)
    want_spikes, want_grad = _grads(neuron, current, weights)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    spikes = neuron(current)
    assert spikes.stride() == want_spikes.stride() and spikes[0].is_contiguous(memory_format=torch.channels_last)
    got_spikes, got_grad = _grads(neuron, current, weights)
    assert 0.05 < want_spikes.mean() < 0.6 and torch.equal(got_spikes, want_spikes)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-9, atol=1e-12)


def test_traced_path_widens_like_the_node(monkeypatch):
    """The traced loop widens a 16-bit current exactly where the node does (``_widen``: CUDA only; here made to
    widen on the CPU) and keeps the spikes float32 (the form that compiled on the H200), with the node's values and
    a bf16 gradient; unwidened, bf16 spikes."""
    from spikeforge.sw import fused
    current = _current(torch.bfloat16, shape=(5, 2, 3, 4, 4))
    neuron = FusedLIF("arctan", leak_shift=1, compiled=False)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert neuron(current).dtype == torch.bfloat16
    monkeypatch.setattr(fused, "_widen", lambda x: None if x is None else x.float())
    x = current.clone().requires_grad_(True)
    spikes = neuron(x)
    spikes.sum().backward()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    assert spikes.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    assert torch.equal(spikes, neuron(current.clone().requires_grad_(True)))


@pytest.mark.slow
def test_whole_model_torch_compile():
    """torch.compile of a whole spiking ResNet (fused neurons, bool-saved spike convs) trains like the eager model."""
    runs = []
    for compile_model in (False, True):
        torch.manual_seed(3)
        model = spike_input_convs(resnet8(width=0.5, time_steps=3, neuron=fused_lif_neuron("arctan", leak_shift=1,
                                                                                            compiled=True)))
        run = torch.compile(model) if compile_model else model
        logits = run(torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(4)))
        logits.square().sum().backward()
        runs.append((logits.detach(), model))
    (want, ref), (got, model) = runs
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert q.grad.abs().max() > 0, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_spike_conv_weight_grad_avoids_the_onednn_hang():
    """A channels_last 1x1 stride-2 spike conv from 4 channels (a narrow ResNet's downsample) computes its weight
    gradient in NCHW (oneDNN hangs on it in channels_last) and matches the plain conv's gradients."""
    from spikeforge.sw.spike_conv import SpikeConv2dFunction, onednn_hang_conv, onednn_weight_grad_hangs
    assert onednn_weight_grad_hangs(4, (1, 1), (2, 2)) and not onednn_weight_grad_hangs(4, (3, 3), (2, 2))
    assert not onednn_weight_grad_hangs(16, (1, 1), (2, 2)) and not onednn_weight_grad_hangs(4, (1, 1), (1, 1))
    narrow = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 4, 3, 2), torch.nn.Conv2d(4, 8, 1, 2))
    assert onednn_hang_conv(narrow) == "2" and onednn_hang_conv(torch.nn.Conv2d(16, 32, 1, 2)) is None
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(64, 4, 28, 28, generator=g) < 0.3).float().contiguous(memory_format=torch.channels_last)
    weight = torch.randn(8, 4, 1, 1, generator=g)
    upstream = torch.randn(64, 8, 14, 14, generator=g).contiguous(memory_format=torch.channels_last)
    grads = []
    for conv in (lambda a, w: SpikeConv2dFunction.apply(a, w, (2, 2), (0, 0)),
                 lambda a, w: torch.nn.functional.conv2d(a.contiguous(), w, stride=2)):
        a, w = x.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        (conv(a, w) * upstream).sum().backward()
        grads.append((a.grad, w.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


@pytest.mark.parametrize("shape, extra_kind, layout", [
    ((12, 5, 6, 6), None, "nchw"), ((12, 5, 6, 6), None, "channels_last"), ((3, 4, 5, 6, 6), "identity", "nchw"),
    ((3, 4, 5, 6, 6), "conv", "nchw"), ((12, 5), None, "nchw")])
def test_compiled_integer_current_matches_eager(shape, extra_kind, layout):
    """Deploy-aware QAT's current (folding.integer_current) as one compiled kernel: the eager form's values
    bit for bit (they decide spikes against the integer reference) and its gradients, for every input."""
    from spikeforge.sw.folding import integer_current

    g = torch.Generator().manual_seed(len(shape) + (extra_kind is not None))
    channels = shape[-3] if len(shape) > 2 else shape[1]
    view = (-1, 1, 1) if len(shape) > 2 else (1, -1)
    unit = torch.rand(channels, generator=g, dtype=torch.float64).float() * 0.01 + 1e-3
    out = torch.randint(-60, 60, shape, generator=g).float() * unit.view(view)
    out = out * (1 + 1e-6 * torch.randn(shape, generator=g))  # the float error the rounding removes
    if layout == "channels_last":
        out = out.contiguous(memory_format=torch.channels_last)
    sign = torch.where(torch.rand(channels, generator=g) < 0.3, -1.0, 1.0)
    bias = torch.randint(-20, 20, (channels,), generator=g).float()
    theta = torch.randint(1, 50, (channels,), generator=g).float()
    extra = extra_scale = None
    if extra_kind is not None:
        extra = torch.randint(-3, 4, shape, generator=g).float()
        if extra_kind == "identity":
            extra = (extra > 0).float()
            extra_scale = torch.randint(1, 9, (channels,), generator=g).float()
    results = []
    for compiled in (False, True):
        leaves = [t.clone().requires_grad_(True) for t in (out, unit, bias, theta)]
        if extra is not None:
            leaves.append(extra.clone().requires_grad_(True))
        if extra_scale is not None:
            leaves.append(extra_scale.clone().requires_grad_(True))
        o, u, b, th = leaves[:4]
        e = leaves[4] if extra is not None else None
        es = leaves[5].view(view) if extra_scale is not None else None
        y = integer_current(o, sign.view(view), u.view(view), b.view(view), th.view(view), 0.75, e, es,
                            compiled=compiled)
        (y * torch.linspace(-1, 1, y.numel()).view(y.shape)).sum().backward()
        results.append((y.detach(), [leaf.grad for leaf in leaves]))
    (eager, eager_grads), (fused, fused_grads) = results
    assert torch.equal(eager, fused)
    expected = 0.75 * (torch.round(sign.view(view) * out / unit.view(view)) + bias.view(view)
                       + (0 if extra is None else extra * (1 if extra_scale is None else extra_scale.view(view)))
                       ) / theta.view(view)
    assert torch.allclose(eager, expected, rtol=1e-6, atol=0)
    for a, b in zip(eager_grads, fused_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * float(a.abs().max()))


def test_start_half_up_adds_half_a_unit_to_step_zero_only():
    """folding.start_half_up as a broadcast add: step 0 gets half a unit per channel, every later step is unchanged
    (also for an expanded first-layer current), and the gradient reaches the current untouched."""
    from spikeforge.sw.folding import start_half_up

    unit = torch.tensor([0.5, 0.25, 0.125])
    for current in (_current(torch.float32, (4, 2, 3, 5)), _current(torch.float32, (2, 3, 5)).expand(4, 2, 3, 5)):
        current = current.detach().requires_grad_(True)
        shifted = start_half_up(current, unit)
        assert torch.equal(shifted[1:], current[1:])
        assert torch.equal(shifted[0], current[0] + 0.5 * unit.view(1, -1, 1))
        grad = torch.randn(shifted.shape)
        shifted.backward(grad)
        assert torch.equal(current.grad, grad)


def test_nchw_gives_row_major_strides_to_tensors_contiguous_in_both_layouts():
    """oneDNN reads channels_last from strides that ``.contiguous()`` leaves alone: a channels_last model's 1x1
    weight, a 1-channel input with a unit channel stride, an expanded (zero-stride) output gradient."""
    from spikeforge.sw import spike_conv

    weight = torch.nn.Conv2d(2, 4, 1, 2, bias=False).to(memory_format=torch.channels_last).weight.detach()
    one_channel = torch.randn(10, 1, 32, 32).as_strided((10, 1, 32, 32), (1024, 1, 32, 1))
    expanded = torch.ones(()).expand(10, 2, 16, 16)
    assert weight.stride() == (2, 1, 2, 2) and weight.is_contiguous() and one_channel.is_contiguous()
    for t, want in ((weight, (2, 1, 1, 1)), (one_channel, (1024, 1024, 32, 1)), (expanded, (512, 256, 16, 1))):
        got = spike_conv._nchw(t)
        assert got.stride() == want and torch.equal(got, t)
    plain = torch.randn(3, 4, 5, 6)
    assert spike_conv._nchw(plain) is plain


def test_narrow_resnet_trains_without_the_intermittent_onednn_hang():
    """ResNet-18 at widths 1-2-4-8 (the bench's --width-div 64, channels_last, spike-input convs): oneDNN's weight
    gradient of the 2-channel 1x1 stride-2 shortcut hung after 5-16 steps (2026-12-04) while its channels_last
    1x1 weight kept channels_last strides in the "NCHW" fallback. 60 steps in a child process must finish."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import argparse, torch\n"
            "torch.set_num_threads(2)\n"
            "from bench import models as b\n"
            "args = argparse.Namespace(width_div=64, time_steps=10, device='cpu', batch=1)\n"
            "model, run, _ = b.spikeforge_model(b.SPIKEFORGE['spikeforge-eager'], args)\n"
            "opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)\n"
            "x, y = torch.rand(1, 3, 32, 32), torch.tensor([3])\n"
            "for _ in range(60):\n"
            "    opt.zero_grad(); torch.nn.functional.cross_entropy(run(x), y).backward(); opt.step()\n"
            "print('done')\n")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             cwd=Path(__file__).resolve().parents[2])  # the repository root: bench/ is not installed
    except subprocess.TimeoutExpired:
        pytest.fail("60 training steps of the width-1-2-4-8 ResNet-18 did not finish in 120 s (oneDNN hang)")
    assert out.returncode == 0 and out.stdout.strip() == "done", out.stderr[-2000:]


def test_compiled_kernels_get_their_own_recompile_limit_and_restore_the_global_one():
    """Each T is a new specialization of a compiled kernel; with fullgraph=True, running past dynamo's limit is an
    error. The kernels raise the limit around each call only: the user's own setting (here 1) is back afterwards."""
    from spikeforge.sw import fused
    from spikeforge.sw.fused import lif_forward
    from spikeforge.sw.kernels import RECOMPILE_LIMIT, compiled

    config = torch._dynamo.config
    saved = config.recompile_limit
    config.recompile_limit = 1
    try:
        for steps in (13, 14):  # T values no other test uses: two new specializations past a limit of 1
            current = torch.randn(steps, 6, generator=torch.Generator().manual_seed(steps))
            with torch.no_grad():
                spikes, membranes = compiled(fused._forward_kernel)(current, 1.0, 1, torch.float32, torch.float32)
            want_spikes, want_membranes = lif_forward(current, threshold=1.0, leak_shift=1)
            assert torch.equal(spikes, want_spikes) and torch.equal(membranes, want_membranes)
            assert config.recompile_limit == 1
    finally:
        config.recompile_limit = saved
    assert RECOMPILE_LIMIT > 8


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_widen_leaves_cpu_tensors_alone(dtype):
    """The compiled kernels get 16-bit inputs widened only on CUDA (a Triton failure seen there); CPU unchanged."""
    from spikeforge.sw import fused

    x = torch.zeros(3, dtype=dtype)
    assert fused._widen(x) is x and fused._widen(None) is None
