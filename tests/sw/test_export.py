"""BN folding and export (spikeforge.sw.export): the QAT model and the integer reference agree exactly."""

import copy

import numpy as np
import pytest
import torch

from spikeforge import netimage
from spikeforge.sw import reference
from spikeforge.sw.export import ExportError, deployed_accuracy, export_network, membrane_statistics
from spikeforge.sw.folding import fold_channels, start_half_up
from spikeforge.sw.model import Architecture, SpikingNet
from sw_helpers import set_exact_weights

T = 6


def _set_bn(bn, a, d):
    bn.eps = 0.0
    bn.running_var.fill_(1.0)
    bn.running_mean.zero_()
    bn.weight.data = torch.tensor(a, dtype=torch.float32)
    bn.bias.data = torch.tensor(d, dtype=torch.float32)


def exact_model(seed=0):
    """A tiny QAT model whose folded thresholds and biases are exact integers (dyadic scales, leak None).

    conv1 (4-bit, s_w = 1/8, pixels/255): theta = 255 / (|a| s_w) = 2040 / |a|: a = 2 -> 1020, -4 -> 510,
    0 -> the zero-scale rule (the layer's largest threshold, 1020, and bias d * 1020). conv2 (s_w = 1/8):
    theta = 8 / |a|. The readout's per-tensor s_w = 1/8 with biases multiple of 1/8.
    """
    rng = np.random.default_rng(seed)
    arch = Architecture.parse("c3s2w4-c4s1w4-d3w4", input_shape=(1, 6, 6))
    model = SpikingNet(arch, time_steps=T)
    b1, b2 = model.blocks
    set_exact_weights(b1.layer, rng, 0.125, 7)
    _set_bn(b1.bn, [2.0, -4.0, 0.0], [0.25, 0.5, 0.25])
    set_exact_weights(b2.layer, rng, 0.125, 7)
    _set_bn(b2.bn, [1.0, -2.0, 0.5, 0.0], [0.125, -0.25, 0.0, 0.375])
    set_exact_weights(model.readout.layer, rng, 0.125, 7)
    model.readout.layer.bias.data = torch.tensor([0.125, -0.5, 0.0])
    return model.eval()


def binary_images(seed, n=32):
    # pixels 0 or 255: x / 255 is then exact in float, as the bit-exact comparison needs
    rng = np.random.default_rng(seed)
    return (rng.random((n, 1, 6, 6)) < 0.5).astype(np.uint8) * 255


def test_fold_channels_negative_and_zero_scale():
    sign, theta, bias = fold_channels(torch.tensor([2.0, -4.0, 0.0]), torch.tensor([0.25, 0.5, 0.25]),
                                      torch.tensor(0.125 / 255))
    assert sign.tolist() == [1.0, -1.0, 0.0]
    assert theta.tolist() == [1020.0, 510.0, 1020.0]
    assert bias.tolist() == [255.0, 255.0, 255.0]


@pytest.mark.parametrize("deploy_aware", [False, True])
def test_qat_model_equals_integer_reference_exactly(deploy_aware):
    model = exact_model()
    model.set_deploy_aware(deploy_aware)
    images = binary_images(1)
    net = export_network(model, calibration_images=images)
    assert net.populations[1].threshold.tolist() == [1020, 510, 1020]
    assert net.populations[1].bias.tolist() == [255, 255, 255]
    assert net.populations[2].threshold.tolist() == [8, 4, 16, 16]
    assert net.populations[2].bias.tolist() == [1, -1, 0, 6]
    assert net.readout.bias.tolist() == [1, -4, 0]
    # the negative-scale channel's weights are flipped, the zero-scale channel's are zero
    w1 = model.blocks[0].layer.quant_weight().int().long().numpy()
    assert np.array_equal(net.populations[1].projections[0].weight[1], -w1[1])
    assert not net.populations[1].projections[0].weight[2].any()

    with torch.no_grad():
        out = model.run(torch.tensor(images, dtype=torch.float32) / 255.0)
    ref = reference.run(net, images, time_steps=T)
    for k, spikes in enumerate(out.spikes):
        got = torch.from_numpy(ref.spikes[k + 1]).to(torch.float32)
        assert 0 < int(got.sum()) < got.numel(), f"layer {k + 1} is silent or saturated: a weak test"
        mismatch = (spikes != got).nonzero()
        assert mismatch.numel() == 0, f"layer {k + 1}: first spike mismatch at (t, b, ...) {mismatch[0].tolist()}"
    v_int = out.readout / 0.125
    assert torch.equal(v_int, torch.from_numpy(ref.readout).to(torch.float32)), "readout potentials differ"
    assert torch.equal(out.logits.argmax(1), torch.from_numpy(ref.prediction))


def test_exported_network_saves_loads_and_evaluates(tmp_path):
    model = exact_model()
    images = binary_images(2, 40)
    net = export_network(model, calibration_images=images)
    loaded = netimage.load(netimage.save(net, tmp_path / "tiny.sfnet"))
    labels = reference.run(loaded, images).prediction
    labels[:10] = (labels[:10] + 1) % 3
    assert deployed_accuracy(loaded, images, labels, T, batch=7) == pytest.approx(30 / 40)
    # the chosen widths keep every calibration outcome of the unclamped network
    wide = copy.deepcopy(loaded)
    for pop in wide.populations[1:]:
        pop.vbits = 32
    a, b = reference.run(loaded, images), reference.run(wide, images)
    assert all(x is None or np.array_equal(x, y) for x, y in zip(a.spikes, b.spikes))
    assert np.array_equal(a.readout, b.readout)
    assert membrane_statistics(loaded, images)[-1]["clamp_fraction"] == 0  # the readout never clamps
    assert set(loaded.metadata["calibration"]["populations"]) == {"conv1", "conv2", "readout"}
    for pop in loaded.populations[1:]:
        assert pop.acc_bits == netimage.required_acc_bits(loaded, loaded.index(pop.name))


def test_export_without_calibration_uses_a_safe_bound():
    net = export_network(exact_model())
    stats = membrane_statistics(net, binary_images(3))
    assert all(s["clamp_fraction"] == 0 for s in stats[1:])


def test_export_refuses_an_accumulator_wider_than_allowed():
    with pytest.raises(ExportError, match=r"layer 'conv1' would need a \d+-bit accumulator .*max_acc_bits=12"):
        export_network(exact_model(), max_acc_bits=12, calibration_images=binary_images(4))


def test_export_refuses_a_float_model():
    model = SpikingNet(Architecture.parse("c2s2f-d3w4", input_shape=(1, 6, 6)), time_steps=T).eval()
    with pytest.raises(ExportError, match="float weights"):
        export_network(model)


def test_deployed_accuracy_agrees_with_reference_on_real_pixels():
    # arbitrary pixels: x / 255 is inexact in float, so only near-agreement is expected here
    model = exact_model()
    images = np.random.default_rng(5).integers(0, 256, (64, 1, 6, 6)).astype(np.uint8)
    net = export_network(model, calibration_images=images)
    with torch.no_grad():
        pred = model(torch.tensor(images, dtype=torch.float32) / 255.0).argmax(1).numpy()
    assert (reference.run(net, images).prediction == pred).mean() > 0.9


def test_hidden_dense_layer_and_leak_export():
    """A general chain (stride 1 and 2, a hidden dense layer, a leak): deploy-aware model ~= integer reference."""
    from spikeforge.sw.model import spiking_net

    torch.manual_seed(0)
    model = spiking_net(Architecture.parse("c4s1w4-c4s2w4-d12w4-d3w4", input_shape=(1, 8, 8)), time_steps=8,
                        leak_shift=3)
    for _ in range(3):  # BN statistics of random data
        model(torch.rand(64, 1, 8, 8))
    model.eval().set_deploy_aware(True)
    images = (np.random.default_rng(0).random((64, 1, 8, 8)) * 256).astype(np.uint8)
    net = export_network(model, calibration_images=images)
    assert [p.kind for p in net.populations] == ["input", "lif", "lif", "lif", "readout"]
    assert [p.leak_shift for p in net.populations[1:]] == [3, 3, 3, None]
    assert net.populations[3].projections[0].kind == "dense"
    with torch.no_grad():
        pred = model(torch.tensor(images, dtype=torch.float32) / 255.0).argmax(1)
    # the float leak has no floor, so only near-agreement is expected
    assert (torch.from_numpy(reference.run(net, images).prediction) == pred).float().mean() > 0.85


@pytest.mark.parametrize("lif", ["autograd", "fused"])
def test_half_unit_start_fires_where_the_integer_membrane_reaches_theta(lif):
    """Hand-picked: integer currents whose running sum first reaches theta = 49 exactly at the last step. The
    integer neuron fires there; the float sum of I / theta lands below 1 and does not, unless the membrane starts
    half an integer unit up."""
    from spikeforge.sw.fused import FusedLIF
    from spikeforge.sw.neuron import LIF

    theta = torch.tensor([49.0])
    currents = torch.tensor([9.0, 11.0, 24.0, -3.0, -13.0, -5.0, 1.0, 2.0, -6.0, 29.0])
    assert currents.cumsum(0)[-1] == 49 and (currents.cumsum(0)[:-1] < 49).all()
    current = (currents / theta).view(10, 1, 1)                        # [T, B, C]
    neuron = LIF() if lif == "autograd" else FusedLIF(compiled=False)
    integer = (currents.cumsum(0) >= 49).float()                      # no earlier spike: no reset before step 9
    plain, half_up = neuron(current).flatten(), neuron(start_half_up(current, 1.0 / theta)).flatten()
    assert plain[-1] == 0 and torch.equal(half_up, integer)


@pytest.mark.parametrize("compiled", [False, True])
def test_chain_deploy_aware_forward_tracks_the_integer_reference(compiled):
    """On a chain whose folded numbers are NOT exact (BN statistics of random data, real pixels), the deploy-aware
    forward spikes as the integer reference does, where plain float BN drifts away from it; also with the compiled
    neurons that training uses, whose deploy-aware current is a compiled kernel (folding.integer_current)."""
    from spikeforge.sw.fused import fused_lif_neuron
    from spikeforge.sw.model import spiking_net

    torch.manual_seed(1)
    arch = Architecture.parse("c6s1w8-c8s2w4-d12w4-d5w4", input_shape=(1, 12, 12))
    model = SpikingNet(arch, time_steps=T, neuron=fused_lif_neuron(compiled=True)) if compiled \
        else spiking_net(arch, time_steps=T)
    with torch.no_grad():
        for _ in range(3):  # BN statistics of random data
            model(torch.rand(32, 1, 12, 12))
    model.eval()
    images = (np.random.default_rng(1).random((64, 1, 12, 12)) * 256).astype(np.uint8)
    ref = reference.run(export_network(model, calibration_images=images), images, time_steps=T)
    mismatch = {}
    for deploy_aware in (False, True):
        with torch.no_grad():
            out = model.set_deploy_aware(deploy_aware).run(torch.tensor(images) / 255.0)
        mismatch[deploy_aware] = [float((s != torch.from_numpy(r).to(torch.float32)).float().mean())
                                  for s, r in zip(out.spikes, ref.spikes[1:-1])]
        assert torch.equal(out.readout.argmax(1), torch.from_numpy(ref.prediction))
    assert sum(mismatch[False]) > 1e-4, mismatch
    assert max(mismatch[True]) == 0, mismatch  # exact: folding.start_half_up
