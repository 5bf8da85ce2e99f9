# amaranth: UnusedElaboratable=no
"""The 8N1 UART in Amaranth's simulator: a byte-level loopback through the pins, bit timing, glitches, errors."""

from __future__ import annotations

import random

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from spikeforge.hw.uart import UartRx, UartTx
from hw_helpers import receive_byte, send_byte


@pytest.mark.parametrize("divisor", [4, 5, 8, 13])
def test_loopback_through_the_pins(divisor):
    """Bytes into the transmitter come out of the receiver, with the tx pin wired to the rx pin."""
    m = Module()
    m.submodules.tx = tx = UartTx(divisor)
    m.submodules.rx = rx = UartRx(divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    rng = random.Random(divisor)
    data = [0x00, 0xFF, 0x55, 0xAA, 0x53, 0x01, 0x80] + [rng.randrange(256) for _ in range(25)]
    received = []

    async def producer(ctx):
        for value in data:
            ctx.set(tx.data.payload, value)
            ctx.set(tx.data.valid, 1)
            await ctx.tick().until(tx.data.ready)
            ctx.set(tx.data.valid, 0)
            gap = rng.randrange(3)  # sometimes back-to-back, sometimes a gap
            if gap:
                await ctx.tick().repeat(gap)

    async def consumer(ctx):
        while len(received) < len(data):
            ready = rng.random() < 0.5
            ctx.set(rx.data.ready, ready)
            # sample() returns the values at the clock edge, which decide the transfer
            *_, valid, payload, framing, overrun = await ctx.tick().sample(
                rx.data.valid, rx.data.payload, rx.framing_error, rx.overrun)
            if valid and ready:
                received.append(payload)
            assert not framing and not overrun

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run_until(1e-6 * (len(data) * (10 * divisor + 4) + 200))
    assert received == data


@pytest.mark.parametrize("divisor", [4, 10])
def test_transmitter_bit_timing(divisor):
    """Each bit lasts exactly ``divisor`` cycles: a receiver model sampling mid-bit decodes every byte."""
    dut = UartTx(divisor)
    data = [0x53, 0x00, 0xFF, 0x3C, 0x81]
    got = []

    async def producer(ctx):
        for value in data:
            ctx.set(dut.data.payload, value)
            ctx.set(dut.data.valid, 1)
            await ctx.tick().until(dut.data.ready)
        ctx.set(dut.data.valid, 0)

    async def line(ctx):
        for _ in data:
            got.append(await receive_byte(ctx, dut.tx, divisor))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(line)
    sim.run_until(1e-6 * (len(data) + 1) * 10 * divisor + 1e-5)
    assert got == data


def test_receiver_rejects_glitches_and_reports_errors():
    divisor = 8
    dut = UartRx(divisor)
    events = {"bytes": [], "framing": 0, "overrun": 0}

    async def host(ctx):
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(20)
        ctx.set(dut.rx, 0)  # a glitch shorter than half a bit: no byte
        await ctx.tick().repeat(2)
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(3 * divisor)
        await send_byte(ctx, dut.rx, 0xA5, divisor)
        await send_byte(ctx, dut.rx, 0x3C, divisor, stop=0)  # broken stop bit: framing error, dropped
        await ctx.tick().repeat(2 * divisor)  # the line back high, a gap, then two bytes nobody reads
        ctx.set(dut.data.ready, 0)
        await send_byte(ctx, dut.rx, 0x11, divisor)
        await send_byte(ctx, dut.rx, 0x22, divisor)
        await ctx.tick().repeat(2 * divisor)
        ctx.set(dut.data.ready, 1)
        await ctx.tick().repeat(4)

    async def monitor(ctx):
        ctx.set(dut.data.ready, 1)
        while True:
            *_, valid, ready, payload, framing, overrun = await ctx.tick().sample(
                dut.data.valid, dut.data.ready, dut.data.payload, dut.framing_error, dut.overrun)
            if valid and ready:
                events["bytes"].append(payload)
            events["framing"] += framing
            events["overrun"] += overrun

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(host)
    sim.add_process(monitor)
    sim.run_until(1e-6 * (60 + 6 * 10 * divisor))
    assert events == {"bytes": [0xA5, 0x11], "framing": 1, "overrun": 1}


def test_divisor_is_checked():
    with pytest.raises(ValueError, match="at least 4"):
        UartRx(3)
    with pytest.raises(ValueError, match="at least 4"):
        UartTx(2)
