"""The cocotb test that exercises the accelerator's Verilog: started by spikeforge.sim.rtl, never by pytest directly.

It reads a job (images, time steps, random seed) from the JSON file named by $SPIKEFORGE_RTL_JOB and, per image,
drives the ``pixels`` stream with random valid gaps, waits for the results, accepts them with random ready
back-pressure, reads ``cycles``, and writes the results to an .npz file. Every spike event is recorded by the
testbench top's Verilog monitor (spikeforge.sim.rtl.generate_harness) into a text file next to it: a monitor
must look at every clock edge, and doing that in Python made the simulation four times slower.

Sampling rule: right after ``RisingEdge(clk)`` every port still holds the value the design saw at that edge,
which is what decides whether a transfer happened; writes made then take effect for the next edge.
"""

from __future__ import annotations

import json
import os
import random

import cocotb
import cocotb.utils
import numpy as np
from cocotb.triggers import First, RisingEdge, Timer

CLOCK_NS = 10


def _save(job: dict, *, error: str, results, cycles, sim_cycles: int) -> None:
    np.savez(job["out"], error=np.str_(error), results=np.asarray(results, dtype=np.int64).reshape(
        -1, job["readout_size"]), cycles=np.asarray(cycles, dtype=np.int64), sim_cycles=np.int64(sim_cycles))


@cocotb.test()
async def accelerator_trace(dut):
    with open(os.environ["SPIKEFORGE_RTL_JOB"]) as f:
        job = json.load(f)
    state = {"results": [], "cycles": []}
    try:
        error = await _run(dut, job, state)
    except ValueError as exc:  # a port holds X or Z: name it, that is the first thing to look at
        names = ["pixels__ready", "results__valid", "results__payload", "cycles"]
        bad = [n for n in names if not getattr(dut, n).value.is_resolvable]
        error = (f"output port(s) {', '.join(bad)} hold X/Z at {cocotb.utils.get_sim_time('ns'):.0f} ns" if bad
                 else f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # hand every failure to the Python side as a sentence, not a lost traceback
        error = f"{type(exc).__name__}: {exc}"
    dut.trace_flush.value = 1
    await RisingEdge(dut.clk)
    await RisingEdge(dut.clk)
    _save(job, error=error, results=state["results"], cycles=state["cycles"],
          sim_cycles=int(cocotb.utils.get_sim_time("ns") // CLOCK_NS))


def _steps(dut, job: dict) -> str:
    return ", ".join(f"p{p}: {getattr(dut, f'steps_p{p}').value.to_unsigned()}" for p in job["lif"])


async def _run(dut, job: dict, state: dict) -> str:
    rng = random.Random(job["seed"])
    readout_size = job["readout_size"]
    p_valid, p_ready = job["pixel_valid_probability"], job["result_ready_probability"]
    watchdog = job["watchdog_cycles"]
    clk = dut.clk
    pix_valid, pix_ready, pix_payload = dut.pixels__valid, dut.pixels__ready, dut.pixels__payload
    res_valid, res_ready, res_payload = dut.results__valid, dut.results__ready, dut.results__payload

    # the testbench top toggles clk itself, every CLOCK_NS / 2
    dut.trace_flush.value = 0
    pix_valid.value = 0
    pix_payload.value = 0
    res_ready.value = 0
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(clk)
    dut.rst.value = 0

    for b, pixels in enumerate(job["images"], job["first_image"]):
        # 1. pixels, with random gaps; valid stays up until the transfer
        next_pixel, offering, idle = 0, False, 0
        while next_pixel < len(pixels):
            if not offering and rng.random() < p_valid:
                offering = True
                pix_payload.value = pixels[next_pixel]
                pix_valid.value = 1
            await RisingEdge(clk)
            idle += 1
            if offering and pix_ready.value:
                offering, idle = False, 0
                next_pixel += 1
                pix_valid.value = 0
            if idle > watchdog:
                return (f"image {b}: pixels__ready stayed low for {watchdog} cycles after {next_pixel} of "
                        f"{len(pixels)} pixels were accepted")
        # 2. the T steps run on their own: wait for the first result (ready may already be up, or not)
        ready_early = rng.random() < 0.5
        res_ready.value = int(ready_early)
        if not res_valid.value:
            fired = await First(RisingEdge(res_valid), Timer(watchdog * CLOCK_NS, unit="ns"))
            if isinstance(fired, Timer):
                return (f"image {b}: no result within {watchdog} cycles after the last pixel (step_end pulses "
                        f"seen: {_steps(dut, job)})")
        # 3. the results, with random back-pressure
        results, idle = [], 0
        ready_now = ready_early
        while len(results) < readout_size:
            await RisingEdge(clk)
            idle += 1
            if ready_now and res_valid.value:
                results.append(res_payload.value.to_signed())
                idle = 0
            ready_now = rng.random() < p_ready
            res_ready.value = int(ready_now) if len(results) < readout_size else 0
            if idle > watchdog:
                return (f"image {b}: results__valid stayed low for {watchdog} cycles after {len(results)} of "
                        f"{readout_size} results (step_end pulses seen: {_steps(dut, job)})")
        res_ready.value = 0
        # `cycles` is updated when the last result is accepted; read it once that has settled
        for _ in range(2):
            await RisingEdge(clk)
        state["results"].append(results)
        state["cycles"].append(dut.cycles.value.to_unsigned())
    return ""
