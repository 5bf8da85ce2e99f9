"""Golden-reference tests of the accelerator: the RTL (Amaranth's simulator) against sw/reference.py.

Every case compares every spike of every lif population at every step and the readout's V. The networks are
tiny so that the Python simulator finishes in seconds.
"""

from __future__ import annotations

import numpy as np
import pytest

from spikeforge.testing import random_images, random_network
from hw_helpers import assert_rtl_matches_reference, make_net


def _set_leak(shift):
    def edit(net):
        for pop in net.populations[1:]:
            pop.leak_shift = shift
    return edit


def _threshold_one_negative_bias(net):
    layer1, layer2 = net.populations[1], net.populations[2]
    layer1.threshold[:] = 1                      # fires whenever V >= 1
    layer1.bias[0] = -abs(int(layer1.bias[0])) - 50
    layer2.bias[:] = -np.abs(layer2.bias) - 3    # negative biases everywhere


def _one_neuron_that_fires_sometimes(net):
    # layer1 = dense(1) from the pixels: positive weights and a threshold near 0.6 x the largest current, so that
    # its spike train depends on every accumulation being exact
    layer1 = net.populations[1]
    w = layer1.projections[0].weight
    w[:] = np.abs(w) + 1
    w[:] = np.minimum(w, (1 << (layer1.projections[0].wbits - 1)) - 1)
    layer1.bias[:] = 0
    layer1.threshold[:] = min(int(255 * w.sum() * 0.6), (1 << (layer1.vbits - 1)) - 1)


def _fire_a_lot(net):
    for pop in net.populations[1:-1]:
        pop.threshold[:] = 1
        pop.bias[:] = np.abs(pop.bias) + 1


# (name, net factory, images factory, time steps, simulate options)
EDGE_CASES = [
    ("conv3x3_stride2_pad1", lambda: make_net(1, [("conv", 3, 3, 2, 1), ("dense", 5)], (2, 7, 7), 10),
     "random", 10, {}),
    ("conv_stride1_dense_after_conv", lambda: make_net(2, [("conv", 2, 3, 1, 1), ("dense", 6), ("dense", 3)],
                                                       (1, 5, 5), 5), "random", 5, {}),
    ("threshold_one_negative_bias", lambda: make_net(3, [("conv", 2, 3, 1, 1), ("dense", 4), ("dense", 3)],
                                                     (1, 5, 5), 6, edit=_threshold_one_negative_bias),
     "random", 6, {}),
    ("saturation_vbits4", lambda: make_net(4, [("conv", 2, 3, 1, 0), ("dense", 4)], (1, 5, 5), 5, vbits=4,
                                           wbits=8), "random", 5, {}),
    ("leak_none", lambda: make_net(5, [("conv", 2, 3, 2, 1), ("dense", 4)], (1, 6, 6), 6,
                                   edit=_set_leak(None)), "random", 6, {}),
    ("leak_1", lambda: make_net(6, [("conv", 2, 3, 2, 1), ("dense", 4)], (1, 6, 6), 6, edit=_set_leak(1)),
     "random", 6, {}),
    ("leak_15", lambda: make_net(7, [("conv", 2, 3, 2, 1), ("dense", 4)], (1, 6, 6), 6, vbits=20,
                                 edit=_set_leak(15)), "random", 6, {}),
    ("same_address_graded_dense1", lambda: make_net(8, [("dense", 1)], (1, 4, 4), 3), "all255", 3, {}),
    ("same_address_spikes_dense1", lambda: make_net(9, [("conv", 2, 3, 1, 1), ("dense", 1)], (1, 4, 4), 4,
                                                    edit=_fire_a_lot), "random", 4, {}),
    ("same_address_lif_dense1", lambda: make_net(10, [("dense", 1), ("dense", 3)], (1, 3, 4), 5, vbits=20,
                                                edit=_one_neuron_that_fires_sometimes),
     "all255", 5, {}),
    ("all_zero_image", lambda: make_net(11, [("conv", 2, 3, 2, 1), ("dense", 4)], (1, 6, 6), 4), "zero", 4, {}),
    ("all_255_image", lambda: make_net(12, [("conv", 2, 3, 2, 1), ("dense", 4)], (1, 6, 6), 4), "all255", 4, {}),
    ("even_kernels_conv_readout", lambda: make_net(13, [("conv", 2, 2, 2, 0), ("conv", 2, 4, 1, 2)], (1, 6, 6),
                                                   4), "random", 4, {}),
    ("kernel1_kernel5_stride3", lambda: make_net(14, [("conv", 2, 1, 1, 0), ("conv", 3, 5, 3, 2), ("dense", 3)],
                                                 (2, 7, 7), 4), "random", 4, {}),
    ("single_step", lambda: make_net(15, [("conv", 2, 3, 1, 1), ("dense", 3)], (1, 4, 4), 1), "random", 1, {}),
    ("results_backpressure", lambda: make_net(16, [("conv", 2, 3, 2, 1), ("dense", 6)], (1, 6, 6), 3),
     "random", 3, {"results_ready": 0.3}),
]


def _images(kind, net, seed):
    if kind == "zero":
        return np.zeros((2, *net.input.shape), np.uint8)
    if kind == "all255":
        return np.full((2, *net.input.shape), 255, np.uint8)
    return random_images(seed, net, 2, density=0.6)


@pytest.mark.parametrize("name, net_factory, images, T, options", EDGE_CASES, ids=[c[0] for c in EDGE_CASES])
def test_edge_case(name, net_factory, images, T, options):
    net = net_factory()
    assert_rtl_matches_reference(net, _images(images, net, seed=len(name)), T, **options)


@pytest.mark.parametrize("seed", range(6))
def test_random_network(seed):
    T = 10 if seed % 2 == 0 else 4
    net = random_network(100 + seed, input_shape=(1 + seed % 2, 5 + seed % 3, 6), time_steps=T)
    images = random_images(seed, net, 3 if T < 10 else 2, density=0.5)
    images[0] = 0 if seed == 3 else images[0]
    assert_rtl_matches_reference(net, images, T, results_ready=0.5 if seed % 3 == 1 else 1.0, seed=seed)


@pytest.mark.parametrize("seed", range(3))
def test_random_network_same_address(seed):
    """A one-neuron fan-out (dense N=1) updates one membrane word in consecutive cycles: the read-modify-write
    pipeline must forward (the only place where this architecture meets the hazard; the tests above with wider
    fan-outs never hit the same word twice in a row)."""
    rng = np.random.default_rng(seed)
    layers = [("conv", int(rng.integers(1, 4)), 3, int(rng.integers(1, 3)), 1), ("dense", 1)]
    if seed == 2:
        layers = [("dense", 1), ("dense", int(rng.integers(2, 5)))]
    if seed == 2:
        net = make_net(202, layers, (1, 5, 5), 6, vbits=20, edit=_one_neuron_that_fires_sometimes)
    else:
        net = random_network(200 + seed, input_shape=(1, 5, 5), layers=layers, time_steps=6, activity=0.3)
    assert_rtl_matches_reference(net, random_images(seed, net, 2, density=0.9), 6)
