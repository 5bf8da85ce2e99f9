"""Shared helpers of the hardware tests (no tests here): hand-edited networks, the demo-shaped network, the
golden-reference comparison, a simulatable model of the UP5K's SPRAM, and a host's side of the UART."""

from __future__ import annotations

import numpy as np
import pytest

from amaranth.hdl import Elaboratable, Module
from amaranth.lib import memory

from spikeforge.hw.cycle_model import CycleModel
from spikeforge.hw.spram import SinglePortRam
from spikeforge.hw.testing import simulate
from spikeforge.netimage import Network, required_acc_bits, signed_range, validate
from spikeforge.record import first_mismatch
from spikeforge.sw import reference
from spikeforge.testing import random_network, random_residual_network


def make_net(seed: int, layers, input_shape=(1, 6, 6), time_steps: int = 4, edit=None, **kwargs) -> Network:
    """A spikeforge.testing network, optionally edited by ``edit(net)``; acc_bits and biases are then made legal again."""
    net = random_network(seed, input_shape=input_shape, layers=layers, time_steps=time_steps, **kwargs)
    return legalize(net, edit)


def make_residual_net(seed: int, layers, input_shape=(1, 6, 6), time_steps: int = 4, edit=None,
                      **kwargs) -> Network:
    """A spikeforge.testing residual network (``random_residual_network``), optionally edited like ``make_net``."""
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
    image); and the cycle model (spikeforge.hw.cycle_model) predicts the hardware's cycle count of every image
    exactly from the reference's spikes (when the results are always accepted, as the model assumes).
    """
    T = net.time_steps if time_steps is None else time_steps
    rtl = simulate(net, images, T, **kwargs)
    ref = reference.run(net, images, T)
    mismatch = first_mismatch(ref, rtl, net)
    if mismatch:
        pytest.fail(mismatch)
    if kwargs.get("results_ready", 1.0) == 1.0:
        model = CycleModel(net, T, lanes=kwargs.get("lanes"), fifo_depth=kwargs.get("fifo_depth", 4))
        predicted = [image.cycles for image in model.run(np.asarray(images).reshape(-1, *net.input.shape), ref)]
        assert predicted == list(rtl.cycles), f"cycle model {predicted}, hardware {list(rtl.cycles)}"
    for p, ref_spikes in enumerate(ref.spikes):
        if ref_spikes is not None:
            emitted = sum(1 for e in rtl.events if e[1] == p)
            assert emitted == int(ref_spikes.sum()), (
                f"population {p} ('{net.populations[p].name}') emitted {emitted} spike events for "
                f"{int(ref_spikes.sum())} spikes (an event was duplicated or dropped)")
    return rtl, ref


POISON = 0xDEAD


class SpramModel(Elaboratable):
    """SB_SPRAM256KA as cells_sim.v describes it, with MASKWREN all ones and the block awake; ``power_up`` is what
    every word holds at first (the real block: undefined)."""

    def __init__(self, address, data_in, write, select, data_out, power_up=0):
        self.address, self.data_in, self.write, self.select, self.data_out = address, data_in, write, select, data_out
        self.power_up = power_up

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = memory.Memory(shape=16, depth=16384, init=[self.power_up] * 16384)
        w = mem.write_port()
        r = mem.read_port(domain="comb")
        m.d.comb += [w.addr.eq(self.address), r.addr.eq(self.address), w.data.eq(self.data_in),
                     w.en.eq(self.select & self.write)]
        with m.If(self.select):
            m.d.sync += self.data_out.eq(r.data)
            with m.If(self.write):
                m.d.sync += self.data_out.eq(POISON)
        return m


class UltraPlus:
    family, device = "iCE40", "iCE40UP5K"


class ModelledSpramRam(SinglePortRam):
    """A SinglePortRam tiled from SB_SPRAM256KA models, as on the UP5K, that the Amaranth simulator can run; its
    words power up as POISON (``power_up``)."""
    power_up = 0

    def elaborate(self, platform):
        return self._elaborate_spram(UltraPlus())

    def _spram_block(self, *, address, data_in, write, select, data_out):
        return SpramModel(address, data_in, write, select, data_out, self.power_up)


DEMO_LAYERS = [("conv", 8, 3, 2, 1), ("conv", 16, 3, 2, 1), ("dense", 10)]


def demo_shaped_network(seed=7):
    """input 1x28x28, conv3x3 s2 p1 1->8, conv3x3 s2 p1 8->16, dense 784->10 readout, 4-bit weights."""
    return random_network(seed, input_shape=(1, 28, 28), layers=DEMO_LAYERS, wbits=4, time_steps=10)


async def send_byte(ctx, pin, value: int, divisor: int, stop: int = 1) -> None:
    """Drive one 8N1 frame onto ``pin`` (as a host's UART would), bit by bit."""
    for bit in [0] + [(value >> i) & 1 for i in range(8)] + [stop]:
        ctx.set(pin, bit)
        await ctx.tick().repeat(divisor)
    ctx.set(pin, 1)


async def receive_byte(ctx, pin, divisor: int) -> int:
    """Wait for a start bit on ``pin`` and sample the frame in the middle of each bit; checks the stop bit."""
    while ctx.get(pin):
        await ctx.tick()
    await ctx.tick().repeat(divisor // 2)
    assert ctx.get(pin) == 0, "start bit not low in its middle"
    value = 0
    for i in range(8):
        await ctx.tick().repeat(divisor)
        value |= ctx.get(pin) << i
    await ctx.tick().repeat(divisor)
    assert ctx.get(pin) == 1, "stop bit not high"
    return value
