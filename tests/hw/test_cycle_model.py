"""The cycle model (spikeforge.hw.cycle_model) against the hardware: the same cycle count for every image, on
chains and residual networks, with every lane configuration, FIFO depth and activity level tried here.

tests/hw_helpers.assert_rtl_matches_reference makes the same check on every network the other hardware tests
simulate; this file adds the configurations chosen to stress the timing (back-pressure, padded lanes, one-lane
layers, FIFOs of depth 1 and 2, silent and saturated layers) and checks the model's other counts.
"""

from __future__ import annotations

import numpy as np
import pytest

from spikeforge.hw.accelerator import LanePlan
from spikeforge.hw.cycle_model import CycleModel
from spikeforge.hw.layers import channel_words
from spikeforge.sw import reference
from spikeforge.testing import random_images, random_network, random_residual_network
from hw_helpers import assert_rtl_matches_reference

CHAIN = [("conv", 5, 3, 2, 1), ("conv", 6, 3, 1, 1), ("dense", 7), ("dense", 5)]
RESIDUAL = [("conv", 3, 3, 1, 1), ("block", 3, 1), ("block", 5, 2), ("dense", 4)]


@pytest.mark.parametrize("lanes", [1, 2, 3, {"layer1": 5, "layer2": 4, "layer3": 7, "readout": 2}, None])
@pytest.mark.parametrize("activity", [0.3, 1.0, 4.0])
def test_model_equals_hardware_on_a_chain(lanes, activity):
    net = random_network(11, input_shape=(2, 7, 7), layers=CHAIN, time_steps=3, activity=activity)
    assert_rtl_matches_reference(net, random_images(2, net, 2), lanes=lanes)


@pytest.mark.parametrize("lanes", [1, 2, None])
def test_model_equals_hardware_on_a_residual_network(lanes):
    net = random_residual_network(4, input_shape=(1, 6, 6), layers=RESIDUAL, time_steps=3)
    assert_rtl_matches_reference(net, random_images(5, net, 2), lanes=lanes)


@pytest.mark.parametrize("fifo_depth", [1, 2, 8])
def test_model_equals_hardware_with_other_fifo_depths(fifo_depth):
    net = random_network(12, input_shape=(1, 6, 6), layers=[("conv", 4, 3, 1, 1), ("dense", 9), ("dense", 3)],
                         time_steps=3, activity=0.5)
    assert_rtl_matches_reference(net, random_images(3, net, 2), lanes=2, fifo_depth=fifo_depth)


def test_model_counts_updates_and_synaptic_operations():
    """Input -> conv 3x3 stride 1 pad 1 (6 channels) -> dense readout: every nonzero pixel makes (landing taps) x
    ceil(6 / lanes) word updates and (landing taps) x 6 synaptic operations per step; every layer-1 spike one
    word per readout channel word and N_out operations."""
    net = random_network(13, input_shape=(1, 5, 5), layers=[("conv", 6, 3, 1, 1), ("dense", 4)], time_steps=2)
    images = random_images(6, net, 1)
    ref = reference.run(net, images)
    lanes = {1: 4, 2: 3}
    got = CycleModel(net, lanes=lanes).run(images, ref)[0]
    taps = 0
    for y, x in zip(*np.nonzero(images[0, 0])):
        taps += (3 - (y == 0) - (y == 4)) * (3 - (x == 0) - (x == 4))
    words1 = channel_words(net.populations[1], 4)
    assert got.updates[1] == 2 * taps * words1 and got.synaptic_ops[1] == 2 * taps * 6
    spikes = int(ref.spikes[1].sum())
    assert got.updates[2] == spikes * channel_words(net.populations[2], 3) and got.synaptic_ops[2] == spikes * 4
    assert len(got.step_ends[1]) == 2 and got.step_ends[1][0] < got.step_ends[1][1] < got.cycles


@pytest.mark.parametrize("spram", [{1, 3}, {2, 4, 5, 6}])
def test_model_equals_hardware_with_half_rate_units(spram):
    """Half-rate units (membranes in SPRAM) advance in odd cycles only: the model skips quiet cycles by their own
    cycles too."""
    net = random_residual_network(4, input_shape=(1, 6, 6), layers=RESIDUAL, time_steps=3)
    assert_rtl_matches_reference(net, random_images(5, net, 2), lanes=LanePlan({1: 2, 4: 3}, spram=spram))
