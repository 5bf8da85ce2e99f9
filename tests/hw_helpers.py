"""Shared helpers of the tests/test_hw_*.py files (no tests here): hand-edited networks and the golden-reference
comparison."""

from __future__ import annotations

import numpy as np
import pytest

from spikeforge.hw.simulate import rtl_run
from spikeforge.netgen import random_network, random_residual_network
from spikeforge.netimage import Network, required_acc_bits, signed_range, validate
from spikeforge.sw import reference


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
    """rtl_run(case) == reference.run(case): every spike of every lif population at every step, and the readout.

    A mismatch names the population, the image, the step and the neuron.
    """
    T = net.time_steps if time_steps is None else time_steps
    rtl = rtl_run(net, images, T, **kwargs)
    ref = reference.run(net, images, T)
    for p, ref_spikes in enumerate(ref.spikes):
        if ref_spikes is None:
            continue
        pop = net.populations[p]
        want = ref_spikes.numpy().reshape(T, len(images), -1)
        got = rtl.spikes[p].reshape(T, len(images), -1)
        bad = np.argwhere(want != got)
        if bad.size:
            t, b, n = bad[0]
            pytest.fail(f"population {p} ('{pop.name}'), image {b}, step {t}, neuron {n}: the reference "
                        f"{'fires' if want[t, b, n] else 'does not fire'}, the RTL "
                        f"{'fires' if got[t, b, n] else 'does not'} ({len(bad)} mismatches in all)")
        emitted = sum(1 for e in rtl.events if e[1] == p)
        assert emitted == int(want.sum()), (f"population {p} ('{pop.name}') emitted {emitted} spike events for "
                                            f"{int(want.sum())} spikes (an event was duplicated or dropped)")
    want = ref.readout.numpy().reshape(len(images), -1)
    got = rtl.readout.reshape(len(images), -1)
    bad = np.argwhere(want != got)
    if bad.size:
        b, n = bad[0]
        pytest.fail(f"readout population {len(net.populations) - 1}, image {b}, after step {T - 1}, neuron {n}: "
                    f"reference V={want[b, n]}, RTL V={got[b, n]} ({len(bad)} mismatches in all)")
    return rtl, ref
