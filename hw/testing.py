"""Test support for the gateware: run the generated accelerator in Amaranth's Python simulator, images in, trace
events and results out.

Only the tests use it (the product's simulations run the Verilog, spikeforge.sim.rtl). The result is a
:class:`spikeforge.record.SpikeRecord`, the type the integer reference returns, so the tests compare the two sides
with spikeforge.record's comparator. numpy only, no torch.
"""

from __future__ import annotations

import numpy as np
from amaranth.sim import Simulator

from spikeforge.netimage import Network
from spikeforge.record import SpikeRecord

from .accelerator import Accelerator

__all__ = ["simulate", "SOURCE"]

SOURCE = "Amaranth simulation"  # the record's name in mismatch messages


def simulate(net: Network, images, time_steps: int | None = None, *, lanes=None, fifo_depth: int = 4,
             results_ready: float = 1.0, seed: int = 0, max_cycles: int = 5_000_000,
             vcd: str | None = None) -> SpikeRecord:
    """Simulate the accelerator on ``images`` (uint8-valued [B, C, H, W]).

    The record's ``spikes`` count the events of the trace ports per neuron and step (2 or more: a neuron reported
    twice, which the comparator names); ``events`` keeps every event as (image, population, step, neuron) in the
    order the hardware emitted them; ``cycles`` is the accelerator's ``cycles`` after each image and
    ``sim_cycles`` the cycles the whole simulation ran.

    ``lanes`` and ``fifo_depth`` go to the Accelerator. ``results_ready`` < 1 drops the results stream's ready at
    random (that fraction of cycles ready) to exercise back-pressure. Raises RuntimeError if an image does not
    finish within ``max_cycles``.
    """
    T = net.time_steps if time_steps is None else time_steps
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[:, None]
    B = images.shape[0]
    dut = Accelerator(net, T, lanes=lanes, fifo_depth=fifo_depth)
    pops = net.populations
    lif = [p for p, pop in enumerate(pops) if pop.kind == "lif"]
    spikes = [np.zeros((T, B, *pop.shape), np.uint8) if pop.kind == "lif" else None for pop in pops]
    readout = np.zeros((B, pops[-1].size), np.int64)
    cycles: list[int] = []
    events: list[tuple[int, int, int, int]] = []
    rng = np.random.default_rng(seed)
    state = {"image": 0, "result": 0, "steps": {p: 0 for p in lif}, "cycle": 0}  # steps: step ends so far

    traces = [getattr(dut, f"spikes_p{p}") for p in lif]
    watched = [dut.results.valid, dut.results.ready, dut.results.payload]
    for tr in traces:
        watched += [tr.valid, tr.index, tr.step_end]

    async def monitor(ctx):
        async for _clk, _rst, *values in ctx.tick().sample(*watched):
            state["cycle"] += 1
            rv, rr, rp = values[:3]
            for k, p in enumerate(lif):
                valid, index, step_end = values[3 + 3 * k: 6 + 3 * k]
                # each population's own count of step ends says which image and step its events belong to: a
                # population that nobody reads may still finish an image after the readout has
                b, t = divmod(state["steps"][p], T)
                if valid:
                    if b < B:
                        spikes[p][t, b].reshape(-1)[index] += 1  # counted: a repeat shows as 2
                    events.append((b, p, t, int(index)))
                if step_end:
                    state["steps"][p] += 1
            b = state["image"]
            if rv and rr and b < B:
                readout[b, state["result"]] = rp
                state["result"] += 1

    async def bench(ctx):
        size = readout.shape[1]
        for b in range(B):
            for pixel in images[b].reshape(-1):
                ctx.set(dut.pixels.payload, int(pixel))
                ctx.set(dut.pixels.valid, 1)
                await ctx.tick().until(dut.pixels.ready)
            ctx.set(dut.pixels.valid, 0)
            start = state["cycle"]
            while state["result"] < size:
                ctx.set(dut.results.ready, int(rng.random() < results_ready))
                await ctx.tick()
                if state["cycle"] - start > max_cycles:
                    progress = ", ".join(f"population {p}: {state['steps'][p] - b * T}" for p in lif)
                    raise RuntimeError(f"image {b} did not finish within {max_cycles} cycles (step ends of this "
                                       f"image so far: {progress or 'no lif populations'})")
            ctx.set(dut.results.ready, 0)
            await ctx.tick()
            cycles.append(ctx.get(dut.cycles))
            state["result"] = 0
            state["image"] += 1
        start = state["cycle"]
        while any(state["steps"][p] < B * T for p in lif) and state["cycle"] - start <= max_cycles:
            await ctx.tick()
        for p in lif:
            if state["steps"][p] != B * T:
                raise RuntimeError(f"population {p} signalled {state['steps'][p]} step ends for {B} images, "
                                   f"not {B * T}")

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_process(monitor)
    sim.add_testbench(bench)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    return SpikeRecord(spikes=spikes, readout=readout.reshape(B, *pops[-1].shape), source=SOURCE,
                       population_names=[pop.name for pop in pops], cycles=cycles, events=events,
                       sim_cycles=state["cycle"])
