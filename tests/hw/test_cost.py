"""The accelerator's cost grows with events (pixels and spikes), not with neurons x fan-in."""

from __future__ import annotations

import numpy as np
import pytest

from spikeforge.hw.testing import simulate
from spikeforge.testing import random_network
from spikeforge.sw import reference


def _images_with_pixels(counts) -> np.ndarray:
    """One 1x6x6 image per count k: k randomly placed pixels of value 200, the rest 0."""
    images = np.zeros((len(counts), 1, 6, 6), np.uint8)
    for image, k in zip(images, counts):
        image.reshape(-1)[np.random.default_rng(k).permutation(36)[:k]] = 200
    return images


def test_sparse_input_costs_fewer_cycles_than_dense():
    net = random_network(3, input_shape=(1, 8, 8), layers=[("conv", 4, 3, 1, 1), ("dense", 5)], time_steps=4)
    images = np.stack([np.zeros((1, 8, 8), np.uint8), np.full((1, 8, 8), 255, np.uint8)])
    sparse, dense = simulate(net, images).cycles
    # the all-zero image only pays the input scan and the update passes
    assert sparse * 4 < dense, f"all-zero image took {sparse} cycles, all-255 image {dense}"


def test_few_spikes_cost_fewer_cycles_than_many():
    """Same image, same weights: thresholds that make few spikes cost less downstream than thresholds of 1."""
    def net_with(threshold):
        net = random_network(5, input_shape=(1, 6, 6), layers=[("conv", 3, 3, 1, 1), ("dense", 12)], time_steps=4)
        net.populations[1].threshold[:] = threshold
        return net
    image = np.full((1, 1, 6, 6), 9, np.uint8)
    quiet, busy = net_with(np.iinfo(np.int32).max >> (32 - net_with(1).populations[1].vbits)), net_with(1)
    counts = [reference.run(n, image).spike_counts()[1] for n in (quiet, busy)]
    cycles = [simulate(n, image, lanes=1).cycles[0] for n in (quiet, busy)]
    assert counts[0] < counts[1]
    # one lane: each spike of layer1 costs 12 accumulation cycles in the dense readout; part of them hides behind layer1's
    # own work on the next step (the layers overlap), so only most of that cost shows in the total
    assert cycles[1] - cycles[0] >= 0.6 * 12 * (counts[1] - counts[0]), (counts, cycles)


@pytest.mark.parametrize("lanes", [1, 4])
def test_accumulate_cycles_track_event_count(lanes):
    """Input -> dense(16): every nonzero pixel adds exactly T x 16 / lanes cycles (one membrane word of ``lanes``
    neurons per cycle, no bubbles between events), wherever the pixel lies."""
    T, n_out = 4, 16
    net = random_network(3, input_shape=(1, 6, 6), layers=[("dense", n_out)], time_steps=T)
    counts = (0, 8, 16, 24, 36)
    cycles = simulate(net, _images_with_pixels(counts), lanes=lanes).cycles
    assert cycles[0] * 5 < cycles[-1], cycles
    for i in range(1, len(counts) - 1):
        want = T * n_out // lanes * (counts[i + 1] - counts[i])
        got = cycles[i + 1] - cycles[i]
        assert abs(got - want) <= 2 * T, f"{counts[i]} -> {counts[i + 1]} events: {got} more cycles, model {want}"


@pytest.mark.slow
def test_demo_shaped_network_on_a_digit_like_image():
    """The demo shape (1x28x28 -> conv s2 8 -> conv s2 16 -> dense 10, 4-bit weights), T=10, one image with a
    stroke-like blob of ~120 nonzero pixels: bit-exact, and the cycle count is reported (2-3 minutes)."""
    from hw_helpers import assert_rtl_matches_reference, demo_shaped_network
    net = demo_shaped_network()
    yy, xx = np.mgrid[0:28, 0:28]
    ring = np.abs(np.hypot(yy - 14, xx - 14) - 7) < 1.6
    image = np.where(ring, 128 + (yy * 5 + xx * 3) % 128, 0).astype(np.uint8)[None, None]
    rtl, _ = assert_rtl_matches_reference(net, image, 10)
    print(f"demo-shaped network, {int((image > 0).sum())} nonzero pixels: {rtl.cycles[0]} cycles")


@pytest.mark.parametrize("lanes", [1, 4])
def test_join_cycles_add_up_over_projections(lanes):
    """Input -> readout through two dense projections of the input (16 + 16 outputs, one stream, two walkers):
    every nonzero pixel adds exactly T x 32 / lanes cycles, the second walker taking each event without a
    bubble."""
    from spikeforge.testing import random_residual_network
    T = 4
    net = random_residual_network(3, input_shape=(1, 6, 6), layers=[("dense", 16, [("dense", 0)])], time_steps=T)
    assert len(net.readout.projections) == 2
    counts = (0, 12, 24, 36)
    cycles = simulate(net, _images_with_pixels(counts), lanes=lanes).cycles
    for i in range(1, len(counts) - 1):
        want = T * 32 // lanes * (counts[i + 1] - counts[i])
        got = cycles[i + 1] - cycles[i]
        assert abs(got - want) <= 2 * T, f"{counts[i]} -> {counts[i + 1]} events: {got} more cycles, model {want}"
