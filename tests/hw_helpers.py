"""Shared helpers of the tests/test_hw_*.py files (no tests here): hand-edited networks and the golden-reference
comparison."""

from __future__ import annotations

import numpy as np
import pytest

from spikeforge.hw.testing import simulate
from spikeforge.netimage import Network, required_acc_bits, signed_range, validate
from spikeforge.record import first_mismatch
from spikeforge.sw import reference
from spikeforge.testing import random_network, random_residual_network


def make_net(seed: int, layers, input_shape=(1, 6, 6), time_steps: int = 4, edit=None, **kwargs) -> Network:
    """A netgen network, optionally edited by ``edit(net)``; acc_bits and biases are then made legal again."""
    net = random_network(seed, input_shape=input_shape, layers=layers, time_steps=time_steps, **kwargs)
    return legalize(net, edit)


def make_residual_net(seed: int, layers, input_shape=(1, 6, 6), time_steps: int = 4, edit=None,
                      **kwargs) -> Network:
    """A netgen residual network (``random_residual_network``), optionally edited like ``make_net``."""
    net = random_residual_network(seed, input_shape=input_shape, layers=layers, time_steps=time_steps, **kwargs)
    return legalize(net, edit)


def legalize(net: Network, edit=None) -> Network:
    """Apply ``edit(net)``, then widen acc_bits and clip biases so that the network is valid again."""
    if edit is not None:
        edit(net)
    for i, pop in enumerate(net.populations[1:], 1):
        pop.acc_bits = max(pop.acc_bits, required_acc_bits(net, i))
        lo, hi = signed_range(pop.acc_bits)
        pop.bias = np.clip(pop.bias, lo, hi)
    return validate(net)


def assert_rtl_matches_reference(net: Network, images, time_steps: int | None = None, **kwargs):
    """simulate(case) == reference.run(case): every spike of every lif population at every step, and the readout
    (spikeforge.record's comparator: a mismatch names the population, the image, the step and the neuron); and
    every spike event the hardware emitted belongs to one of those spikes (none duplicated, none after the last
    image).
    """
    T = net.time_steps if time_steps is None else time_steps
    rtl = simulate(net, images, T, **kwargs)
    ref = reference.run(net, images, T)
    mismatch = first_mismatch(ref, rtl, net)
    if mismatch:
        pytest.fail(mismatch)
    for p, ref_spikes in enumerate(ref.spikes):
        if ref_spikes is not None:
            emitted = sum(1 for e in rtl.events if e[1] == p)
            assert emitted == int(ref_spikes.sum()), (
                f"population {p} ('{net.populations[p].name}') emitted {emitted} spike events for "
                f"{int(ref_spikes.sum())} spikes (an event was duplicated or dropped)")
    return rtl, ref
