"""The spiking ResNet family (spikeforge.sw.resnet) and its exporter: the float model equals the integer reference
spike for spike on networks whose folded parameters are exact integers."""

import itertools

import numpy as np
import pytest
import torch

from spikeforge import netimage
from spikeforge.sw import reference
from spikeforge.sw.bn import BNTT, SharedBN, TdBN, bn_affine, make_bn
from spikeforge.sw.export import ExportError, export_resnet
from spikeforge.sw.resnet import (BasicBlock, Bottleneck, ConvBN, SpikingResNet, lif_neuron, resnet6, resnet8, resnet10,
                                  resnet18, resnet50)
from sw_helpers import set_exact_weights

# exact_resnet's downsample scales widen shortcut projections on purpose; the join test checks that warning
pytestmark = pytest.mark.filterwarnings("ignore:export_resnet:UserWarning")

T = 4
SCALE = 0.125  # every weight scale: a power of two, so that float products stay exact


def _set_weights(layer, rng, wmax=7):
    """Integer weights in [-wmax, wmax] whose Brevitas max-abs scale is exactly SCALE (test_sw_export's helper)."""
    set_exact_weights(layer, rng, SCALE, wmax)


def _set_bn(bn, a, d):
    norm = bn.norm
    norm.eps = 0.0
    norm.running_var.fill_(1.0)
    norm.running_mean.zero_()
    norm.weight.data = torch.tensor(a, dtype=torch.float32)
    norm.bias.data = torch.tensor(d, dtype=torch.float32)


# BN scales whose folded thresholds 8/|a| (2040/|a| for pixels) are integers; a zero-scale channel from the 6th on
MAIN_SCALES = [1.0, -2.0, 0.5, 2.0, -1.0, 0.0]


def exact_resnet(model, seed=0):
    """Give a quantized SpikingResNet weights and BNs whose folded numbers are exact integers.

    Hidden populations: u_c = |a_c| / 8, so theta = 8 / |a| and bias = 8 d / |a| with d in quarters; a downsample
    BN scale a' = k |a| (k integer) makes the requantized shortcut weights a' W' / |a| integers; an identity
    shortcut becomes the diagonal weight 8 / |a|.
    """
    rng = np.random.default_rng(seed)
    for module in model.modules():
        if isinstance(module, ConvBN):
            _set_weights(module.conv, rng)
            c = module.conv.out_channels
            a = list(itertools.islice(itertools.cycle(MAIN_SCALES), c))
            d = (rng.integers(-1, 4, size=c) / 4).tolist()
            _set_bn(module.bn, a, d)
    for module in model.modules():
        if isinstance(module, (BasicBlock, Bottleneck)) and module.downsample is not None:
            last = module.conv2 if isinstance(module, BasicBlock) else module.conv3
            a_main = last.bn.norm.weight.detach().abs()
            k = torch.tensor(list(itertools.islice(itertools.cycle([1.0, -1.0, 2.0]), len(a_main))))
            a_short = torch.where(a_main == 0, torch.ones_like(a_main), a_main * k)
            _set_bn(module.downsample.bn, a_short.tolist(), (rng.integers(-1, 2, size=len(a_main)) / 4).tolist())
    _set_weights(model.fc, rng)
    model.fc.bias.data = torch.tensor(rng.integers(-4, 5, size=model.fc.out_features) * SCALE, dtype=torch.float32)
    return model.eval()


def binary_images(seed, n, shape):
    # pixels 0 or 255: pixel / 255 is exact in float, as the bit-exact comparison needs
    rng = np.random.default_rng(seed)
    return (rng.random((n, *shape)) < 0.5).astype(np.uint8) * 255


def tiny_basic():
    return resnet8(width=0.25, num_classes=3, wbits=4, stem_wbits=4, time_steps=T, neuron=lif_neuron())


def tiny_bottleneck():
    return SpikingResNet(Bottleneck, [1, 1], widths=(2, 4), num_classes=3, in_channels=1, wbits=4, stem_wbits=4,
                         time_steps=T)


def tiny_imagenet_conv():
    return resnet8(width=0.25, num_classes=3, wbits=4, stem_wbits=4, time_steps=T, stem="imagenet_conv")


@pytest.mark.parametrize("deploy_aware", [False, True])
@pytest.mark.parametrize("build,size", [(tiny_basic, 8), (tiny_bottleneck, 8), (tiny_imagenet_conv, 16)])
def test_float_resnet_equals_integer_reference_exactly(build, size, deploy_aware):
    model = exact_resnet(build()).set_deploy_aware(deploy_aware)
    shape = (1, size, size)
    net = export_resnet(model, input_shape=shape)
    images = binary_images(1, 3, shape)
    with torch.no_grad():
        out = model.run(torch.tensor(images, dtype=torch.float32) / 255.0, record=True)
    ref = reference.run(net, images, time_steps=T)
    assert [p.name for p in net.populations[1:-1]] == model.population_names() == list(out.spikes)
    for k, name in enumerate(model.population_names(), 1):
        got = torch.from_numpy(ref.spikes[k]).to(torch.float32)
        assert int(got.sum()) > 0, f"population {name} is silent: a weak test"
        mismatch = (out.spikes[name] != got).nonzero()
        assert mismatch.numel() == 0, f"{name}: first spike mismatch at (t, b, c, y, x) {mismatch[0].tolist()}"
    area = int(np.prod(net.populations[-2].shape[1:]))
    v_int = out.readout * area / SCALE
    assert torch.equal(v_int, torch.from_numpy(ref.readout).to(torch.float32)), "readout potentials differ"
    for k, pop in enumerate(net.populations[1:], 1):
        assert pop.acc_bits == netimage.required_acc_bits(net, k)


@pytest.mark.parametrize("compiled", [False, True])
def test_deploy_aware_forward_tracks_the_integer_reference(compiled):
    """On a network whose folded numbers are NOT exact (BN statistics of random data, real pixels), the
    deploy-aware forward (rounded thresholds, biases and shortcuts in the loop) spikes as the integer reference
    does, where plain float BN drifts away from it; also with compiled neurons, whose deploy-aware current is a
    compiled kernel (folding.integer_current)."""
    from spikeforge.sw.fused import fused_lif_neuron

    torch.manual_seed(1)
    model = resnet8(width=0.5, num_classes=5, wbits=4, time_steps=T,
                    **({"neuron": fused_lif_neuron(compiled=True)} if compiled else {}))
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(32, 1, 12, 12))
    model.eval()
    images = (np.random.default_rng(1).random((64, 1, 12, 12)) * 256).astype(np.uint8)
    ref = reference.run(export_resnet(model, input_shape=(1, 12, 12)), images, time_steps=T)
    mismatch = {}
    for deploy_aware in (False, True):
        with torch.no_grad():
            out = model.set_deploy_aware(deploy_aware).run(torch.tensor(images) / 255.0, record=True)
        mismatch[deploy_aware] = [
            float((out.spikes[name] != torch.from_numpy(ref.spikes[k]).to(torch.float32)).float().mean())
            for k, name in enumerate(model.population_names(), 1)]
    assert sum(mismatch[False]) > 0.01, mismatch
    # integrate-and-fire: the float membrane starts half an integer unit up (folding.start_half_up), which makes
    # every spike of every population the integer reference's
    assert max(mismatch[True]) == 0, mismatch


def test_deploy_aware_needs_an_integer_form():
    with pytest.raises(ValueError, match="quantized spiking"):
        resnet8(width=0.25).set_deploy_aware(True)
    with pytest.raises(ValueError, match="quantized spiking"):
        resnet8(width=0.25, wbits=4, ann=True).set_deploy_aware(True)
    with pytest.raises(ValueError, match="BNTT"):
        resnet8(width=0.25, wbits=4, bn="bntt", time_steps=2).set_deploy_aware(True)
    resnet8(width=0.25, wbits=4, bn="bntt", time_steps=2).set_deploy_aware(False)  # switching off always works


def test_join_populations_have_two_projections_on_one_scale(tmp_path):
    model = exact_resnet(tiny_basic())
    with pytest.warns(UserWarning, match="widened from 4 to 5 weight bits"):
        exported = export_resnet(model, input_shape=(1, 8, 8))
    net = netimage.load(netimage.save(exported, tmp_path / "resnet8.sfnet"))
    identity = net.populations[net.index("layer1.0")]
    assert len(identity.projections) == 2
    diagonal = identity.projections[1].weight[:, :, 0, 0]
    # the identity shortcut adds exactly one threshold per input spike: weight round(1/u_c) = theta_c
    assert np.array_equal(np.diag(diagonal), identity.threshold)
    assert not (diagonal - np.diag(np.diag(diagonal))).any()
    down = net.populations[net.index("layer2.0")]
    assert down.projections[1].weight.shape[2:] == (1, 1) and down.projections[1].stride == (2, 2)
    # shortcut weights a' W' / |a|: k = 2 doubles the 4-bit range, so that projection is widened to 5 bits
    assert down.projections[1].wbits == 5 and net.metadata["widened"]


def test_export_refuses_what_does_not_deploy():
    with pytest.raises(ExportError, match="max-pool"):
        export_resnet(resnet8(width=0.25, wbits=4, stem="imagenet"))
    with pytest.raises(ExportError, match="float weights"):
        export_resnet(resnet8(width=0.25))
    with pytest.raises(ExportError, match="ANN twin"):
        export_resnet(resnet8(width=0.25, wbits=4, ann=True))
    model = resnet8(width=0.25, wbits=4, bn="bntt", time_steps=2)
    model.stem.bn.norms[1].weight.data.fill_(2.0)
    with pytest.raises(ExportError, match="bn='shared'"):
        export_resnet(model)


@pytest.mark.parametrize("build,blocks,out_channels", [(resnet6, 2, 8), (resnet8, 3, 16), (resnet10, 4, 32),
                                                       (resnet18, 8, 128), (resnet50, 16, 512)])
def test_builders_follow_torchvision(build, blocks, out_channels):
    model = build(width=0.25)
    assert sum(len(s) for s in model.stages) == blocks
    assert model.fc.in_features == out_channels


@pytest.mark.parametrize("bn", ["shared", "tdbn", "bntt"])
def test_multi_step_forward_static_and_sequence(bn):
    torch.manual_seed(0)
    model = resnet8(width=0.25, time_steps=3, bn=bn).eval()
    image = torch.rand(2, 1, 12, 12)
    static = model.run(image, record=True)
    sequence = model.run(image.unsqueeze(0).expand(3, *image.shape), record=True)
    assert torch.allclose(static.logits, sequence.logits)
    assert all(s.shape[:2] == (3, 2) for s in static.spikes.values())
    assert set(torch.unique(torch.cat([s.flatten() for s in static.spikes.values()])).tolist()) <= {0.0, 1.0}


def test_ann_twin_has_the_same_parameters():
    snn, ann = resnet8(width=0.5), resnet8(width=0.5, ann=True)
    assert [n for n, _ in snn.named_parameters()] == [n for n, _ in ann.named_parameters()]
    ann.load_state_dict(snn.state_dict())
    assert ann(torch.rand(2, 1, 28, 28)).shape == (2, 10) and ann.time_steps == 1


def test_bn_kinds_fold():
    x = torch.randn(3, 4, 2, 5, 5)
    for bn in (make_bn("shared", 2), make_bn("tdbn", 2, join=True), make_bn("bntt", 2, time_steps=3)):
        bn.train()(x)
        bn.eval()
        for norm in ([bn.norm] if not isinstance(bn, BNTT) else bn.norms):
            norm.running_mean.copy_(torch.tensor([0.5, -1.0]))
            norm.running_var.copy_(torch.tensor([4.0, 0.25]))
        a, d = bn_affine(bn)
        assert torch.allclose(bn(x), a.view(1, 1, -1, 1, 1) * x + d.view(1, 1, -1, 1, 1), atol=1e-5)
    assert isinstance(make_bn("tdbn", 2), TdBN) and isinstance(make_bn("shared", 2), SharedBN)
    assert make_bn("tdbn", 2, join=True).scale == pytest.approx(2 ** -0.5)


def test_stride_two_stem_quarters_the_positions_and_exports():
    """``stem_stride=2`` (the cifar stem's conv at stride 2): every later population has a quarter of the
    positions, the exporter carries the stride into the stem's projection, and other stems refuse it."""
    torch.manual_seed(0)
    model = resnet6(width=0.25, stem_stride=2, time_steps=2, wbits=4).eval()
    spikes = model.run(torch.rand(2, 1, 28, 28), record=True).spikes
    assert spikes["stem"].shape[-2:] == (14, 14) and spikes["layer2.0"].shape[-2:] == (7, 7)
    net = export_resnet(model)
    stem = next(pop for pop in net.populations if pop.name == "stem")
    assert tuple(stem.projections[0].stride) == (2, 2) and stem.shape[1:] == (14, 14)
    assert net.metadata["stem_stride"] == 2
    netimage.validate(net)
    with pytest.raises(ValueError, match="stem_stride"):
        resnet6(stem="imagenet_conv", stem_stride=2)
