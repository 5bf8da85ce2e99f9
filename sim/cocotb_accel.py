"""The cocotb test that runs the accelerator's testbench top: started by spikeforge.sim.rtl, never by pytest directly.

It reads a job (images, watchdog) from the JSON file named by $SPIKEFORGE_RTL_JOB, holds the design in reset for
three cycles, releases it and waits for the top's ``done``. The stimulus, the handshakes and the trace are the
top's Verilog (spikeforge.sim.harness): Python looks at no clock edge, which keeps the handshakes' meaning the same
in every simulator and lets each run at its own speed. On a timeout it writes which image and which step_end counts
it had reached; the outcome goes to the .npz file named in the job.
"""

from __future__ import annotations

import json
import os

import cocotb
import cocotb.utils
import numpy as np
from cocotb.triggers import First, RisingEdge, Timer

CLOCK_NS = 10
PROGRESS_CYCLES = 500_000


def _save(job: dict, *, error: str, sim_cycles: int) -> None:
    np.savez(job["out"], error=np.str_(error), sim_cycles=np.int64(sim_cycles))


@cocotb.test()
async def accelerator_trace(dut):
    with open(os.environ["SPIKEFORGE_RTL_JOB"]) as f:
        job = json.load(f)
    error = ""
    dut.trace_flush.value = 0
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    # the top's own watchdog stops a stuck image; this one only stops a top that never raises done
    limit = (job["images"] + 1) * (3 * job["watchdog_cycles"] + job["pixels"] + 64)
    waited, fired = 0, None
    progress = job.get("progress")
    while waited < limit and not dut.done.value:
        # wake now and then to write the images finished so far (the parent shows them as a progress bar)
        span = min(PROGRESS_CYCLES, limit - waited)
        fired = await First(RisingEdge(dut.done), Timer(span * CLOCK_NS, unit="ns"))
        waited += span
        if progress:
            with open(progress, "w") as f:
                f.write(str(dut.images_done.value.to_unsigned()))
        if not isinstance(fired, Timer):
            break
    if not dut.done.value:
        steps = ", ".join(f"p{p}: {getattr(dut, f'steps_p{p}').value.to_unsigned()}" for p in job["lif"])
        error = (f"the testbench did not finish within {limit} cycles (at image "
                 f"{job['first_image'] + dut.images_done.value.to_unsigned()}; step_end pulses seen: {steps})")
    dut.trace_flush.value = 1
    await RisingEdge(dut.clk)
    await RisingEdge(dut.clk)
    _save(job, error=error, sim_cycles=int(cocotb.utils.get_sim_time("ns") // CLOCK_NS))
