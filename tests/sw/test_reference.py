"""The integer reference against values derived by hand from docs/semantics.md."""

import numpy as np
import pytest
import torch

from spikeforge.netimage import Network, Population, Projection, required_acc_bits, validate
from spikeforge.sw import reference


def one_neuron(weight, *, bias=0, threshold=5, leak=None, vbits=8, readout_weight=1):
    """input 1x1x1 -> one lif neuron (dense) -> one readout neuron that integrates the spikes."""
    pops = [
        Population("input", "input", (1, 1, 1), bits=8),
        Population("n", "lif", (1,), vbits=vbits, leak_shift=leak, bias=np.array([bias]),
                   threshold=np.array([threshold]),
                   projections=[Projection(0, "dense", np.array([[weight]]), wbits=8)]),
        Population("out", "readout", (1,), vbits=16, bias=np.array([0]),
                   projections=[Projection(1, "dense", np.array([[readout_weight]]), wbits=8)]),
    ]
    net = Network(pops, time_steps=6)
    for i in (1, 2):
        pops[i].acc_bits = required_acc_bits(net, i)
    return validate(net)


def hand_run(pixel, weight, bias, threshold, leak, vbits, steps):
    lo, hi = -(1 << (vbits - 1)), (1 << (vbits - 1)) - 1
    v, spikes = 0, []
    for _ in range(steps):
        leaked = v if leak is None else v - (v >> leak)  # Python's >> floors like an arithmetic shift
        v = min(hi, max(lo, leaked + bias + weight * pixel))
        spikes.append(int(v >= threshold))
        if v >= threshold:
            v -= threshold
    return spikes


@pytest.mark.parametrize("pixel,weight,bias,threshold,leak,vbits", [
    (1, 5, 0, 5, None, 8),      # equality fires every step
    (1, 2, 0, 5, None, 8),      # fires every 2.5 steps; reset by subtraction keeps the residue
    (3, 1, 0, 7, 1, 8),         # leak halves: V stays below threshold
    (0, 1, -3, 1, 2, 8),        # negative bias, leak of a negative V floors toward -inf
    (255, 127, 0, 100, None, 8),  # saturation: clamp to 127 before the compare
    (255, -128, 0, 1, 3, 8),    # negative saturation
    (2, 3, 1, 4, 15, 16),
])
def test_single_neuron_matches_hand_derivation(pixel, weight, bias, threshold, leak, vbits):
    net = one_neuron(weight, bias=bias, threshold=threshold, leak=leak, vbits=vbits)
    result = reference.run(net, np.full((1, 1, 1, 1), pixel, np.uint8))
    expected = hand_run(pixel, weight, bias, threshold, leak, vbits, net.time_steps)
    assert result.spikes[1][:, 0, 0].tolist() == expected
    assert int(result.readout[0, 0]) == sum(expected)


def test_leak_floors_negative_potentials():
    v = torch.tensor([7.0, -7.0, -1.0, 1.0, 0.0])
    assert reference.leak(v, 2).tolist() == [6.0, -5.0, -0.0, 1.0, 0.0]
    assert reference.leak(v, None).tolist() == v.tolist()


def test_readout_argmax_takes_lowest_index_on_ties():
    pops = [
        Population("input", "input", (1, 1, 1), bits=8),
        Population("out", "readout", (3,), vbits=12, bias=np.array([0, 4, 4]),
                   projections=[Projection(0, "dense", np.zeros((3, 1), np.int64), wbits=4)]),
    ]
    net = Network(pops, time_steps=3)
    pops[1].acc_bits = required_acc_bits(net, 1)
    result = reference.run(validate(net), np.zeros((1, 1, 1, 1), np.uint8))
    assert result.readout[0].tolist() == [0, 12, 12]
    assert int(result.prediction[0]) == 1


def test_conv_stride_two_padding_against_explicit_loops():
    rng = np.random.default_rng(3)
    weight = rng.integers(-8, 8, size=(2, 1, 3, 3))
    pops = [
        Population("input", "input", (1, 5, 5), bits=8),
        Population("c", "lif", (2, 3, 3), vbits=14, bias=np.array([3, -2]), threshold=np.array([1, 4000]),
                   projections=[Projection(0, "conv2d", weight, wbits=4, stride=(2, 2), padding=(1, 1))]),
        Population("out", "readout", (2,), vbits=12, bias=np.array([0, 0]),
                   projections=[Projection(1, "dense", rng.integers(-8, 8, size=(2, 18)), wbits=4)]),
    ]
    net = Network(pops, time_steps=1)
    for i in (1, 2):
        pops[i].acc_bits = required_acc_bits(net, i)
    image = rng.integers(0, 256, size=(1, 1, 5, 5))
    result = reference.run(validate(net), image)
    padded = np.pad(image[0, 0], 1)
    for c in range(2):
        for oy in range(3):
            for ox in range(3):
                current = int((padded[2 * oy:2 * oy + 3, 2 * ox:2 * ox + 3] * weight[c, 0]).sum()) + [3, -2][c]
                v = min(max(current, -(1 << 13)), (1 << 13) - 1)
                assert result.spikes[1][0, 0, c, oy, ox] == int(v >= [1, 4000][c]), (c, oy, ox)


def test_rejects_images_that_do_not_fit():
    net = one_neuron(1)
    with pytest.raises(ValueError, match="do not fit"):
        reference.run(net, np.zeros((1, 1, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="0..255"):
        reference.run(net, np.full((1, 1, 1, 1), 256))
