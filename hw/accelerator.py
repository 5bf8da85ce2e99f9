"""The time-stepped, event-driven LIF accelerator, generated from a network image.

An input unit replays the image as graded events once per time step; one layer unit per population accumulates
its source's events into membrane memory and then updates, fires and streams its own spikes to the next unit.
docs/architecture.md explains the schedule, the cycle cost and the memory budget. Torch-free on purpose.
"""

from __future__ import annotations

import operator

from amaranth.hdl import Module, Signal, unsigned, signed
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from spikeforge.netimage import Network

from .layers import InputUnit, LayerUnit, event_layout, index_bits

__all__ = ["Accelerator", "UnsupportedNetworkError", "check_supported", "estimate_memory", "ice40_ebr_blocks",
           "DEFAULT_MAX_ACC_BITS"]

DEFAULT_MAX_ACC_BITS = 32


class UnsupportedNetworkError(ValueError):
    """A valid network image that this generator cannot build yet; the message names the population."""


def check_supported(net: Network, max_acc_bits: int = DEFAULT_MAX_ACC_BITS) -> None:
    """Raise UnsupportedNetworkError unless ``net`` is a chain this generator can build."""
    pops = net.populations
    for i, pop in enumerate(pops[1:], 1):
        tag = f"population {i} ('{pop.name}')"
        sources = [pops[p.source].name for p in pop.projections]
        if len(pop.projections) != 1 or pop.projections[0].source != i - 1:
            raise UnsupportedNetworkError(
                f"{tag} receives projections from {sources}, but this generator supports only chains where each "
                f"population has exactly one projection from the population just before it "
                f"('{pops[i - 1].name}'); several projections and skip connections are not supported by this "
                f"generator yet (the file format and the reference support them)")
        if pop.acc_bits > max_acc_bits:
            raise UnsupportedNetworkError(
                f"{tag} needs a {pop.acc_bits}-bit accumulator, wider than this generator's max_acc_bits="
                f"{max_acc_bits}; retrain with narrower weights or inputs, or raise max_acc_bits")


# iCE40 EBR (SB_RAM40_4K) configurations: depth x width of one 4-kbit block
ICE40_EBR_CONFIGS = ((256, 16), (512, 8), (1024, 4), (2048, 2))


def ice40_ebr_blocks(depth: int, width: int) -> int:
    """Fewest iCE40 4-kbit EBR blocks that hold a depth x width memory (one configuration for all blocks)."""
    return min(-(-depth // d) * -(-width // w) for d, w in ICE40_EBR_CONFIGS)


def estimate_memory(net: Network, fifo_depth: int = 4) -> list[dict]:
    """Every memory the generated accelerator holds: ``name``, ``depth``, ``width``, ``bits`` (= depth x width),
    and ``ice40_ebr``, the EBR blocks it would take if mapped to iCE40 block RAM (Yosys may put the smallest ones,
    the params and FIFOs, into logic instead).

    Pure arithmetic over the network image; nothing is elaborated.
    """
    pops = net.populations
    rows = [{"name": "input.image", "depth": net.input.size, "width": net.input.bits}]
    for i, pop in enumerate(pops[1:], 1):
        proj = pop.projections[0]
        rows.append({"name": f"{pop.name}.membrane", "depth": pop.size, "width": pop.acc_bits})
        rows.append({"name": f"{pop.name}.weights", "depth": int(proj.weight.size), "width": proj.wbits})
        rows.append({"name": f"{pop.name}.params", "depth": pop.channels,
                     "width": pop.acc_bits + pop.vbits})
        rows.append({"name": f"{pop.name}.fifo", "depth": fifo_depth,
                     "width": event_layout(pops[i - 1]).size})
    for row in rows:
        row["bits"] = row["depth"] * row["width"]
        row["ice40_ebr"] = ice40_ebr_blocks(row["depth"], row["width"])
    return rows


class Accelerator(wiring.Component):
    """A spiking network in gateware: pixels in, the readout's potentials out, bit-exact with sw/reference.py.

    Parameters
    ----------
    net : Network
        A chain network (each population fed by exactly one projection from the one before it).
    time_steps : int or None
        Steps per image; ``net.time_steps`` by default.
    max_acc_bits : int
        Refuse populations whose ``acc_bits`` is wider.
    fifo_depth : int
        Depth of the event FIFO in front of each layer unit.

    Members
    -------
    pixels : In(stream.Signature(unsigned(net.input.bits)))
        The ``C*H*W`` pixels of one image in (c, y, x) row-major order, one per cycle at most. Ready while the
        accelerator is idle; after the last pixel it runs the T steps and streams the results, then is ready
        for the next image.
    results : Out(stream.Signature(signed(32)))
        The readout's V after the last step, one transfer per readout neuron, in index order; back-pressure
        stalls the readout's update pass.
    cycles : Out(32)
        Clock cycles the last finished image took: from the cycle after its last pixel was accepted to the
        cycle its last result was accepted, inclusive.
    busy : Out(1)
        High from the cycle after the last pixel was accepted until the last result was accepted.
    spikes_p{p} : Out(Signature({"valid": Out(1), "index": Out(...), "step_end": Out(1)}))
        One per lif population ``p``: ``valid`` is high for one cycle per spike, in the cycle the spike is
        handed downstream, with ``index`` = the neuron's flat index; ``step_end`` is high for one cycle when the
        population has emitted all spikes of a time step.

    Throughput: the input unit scans ``C*H*W + 1`` cycles per step; a layer spends one cycle per fan-out
    update in its accumulate phase (a conv tap outside the output costs one cycle) and ``size + 3`` cycles per
    update pass; the layers of a chain overlap (layer k accumulates step t+1 while layer k+1 processes step t).
    """

    def __init__(self, net: Network, time_steps: int | None = None, *, max_acc_bits: int = DEFAULT_MAX_ACC_BITS,
                 fifo_depth: int = 4):
        try:
            check_supported(net, max_acc_bits)
        except UnsupportedNetworkError:
            self._MustUse__silence = True  # a refused network is not an unused elaboratable
            raise
        self.net = net
        self.time_steps = operator.index(net.time_steps if time_steps is None else time_steps)
        if self.time_steps < 1:
            raise ValueError(f"time_steps must be at least 1, not {self.time_steps}")
        self.fifo_depth = operator.index(fifo_depth)
        members = {
            "pixels": In(stream.Signature(unsigned(net.input.bits))),
            "results": Out(stream.Signature(signed(32))),
            "cycles": Out(32),
            "busy": Out(1),
        }
        for p, pop in enumerate(net.populations):
            if pop.kind == "lif":
                members[f"spikes_p{p}"] = Out(wiring.Signature({
                    "valid": Out(1), "index": Out(unsigned(index_bits(pop.size))), "step_end": Out(1)}))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        net, T = self.net, self.time_steps

        m.submodules.input = input_unit = InputUnit(net.input, T)
        wiring.connect(m, wiring.flipped(self.pixels), input_unit.pixels)

        upstream = input_unit.events
        upstream_layout = event_layout(net.input)
        readout = None
        for p, pop in enumerate(net.populations[1:], 1):
            unit = LayerUnit(net, p, T)
            m.submodules[f"layer{p}"] = unit
            queue = fifo.SyncFIFOBuffered(width=upstream_layout.size, depth=self.fifo_depth)
            m.submodules[f"fifo{p}"] = queue
            m.d.comb += [
                queue.w_data.eq(upstream.payload.as_value()),
                queue.w_en.eq(upstream.valid),
                upstream.ready.eq(queue.w_rdy),
                unit.events.payload.eq(queue.r_data),
                unit.events.valid.eq(queue.r_rdy),
                queue.r_en.eq(unit.events.ready),
            ]
            if pop.kind == "lif":
                out, trace = unit.spikes, getattr(self, f"spikes_p{p}")
                handed = out.valid & out.ready
                m.d.comb += [
                    trace.valid.eq(handed & ~out.payload.end),
                    trace.step_end.eq(handed & out.payload.end),
                    trace.index.eq(out.payload.index),
                ]
                upstream, upstream_layout = out, event_layout(pop)
            else:
                readout = unit
        wiring.connect(m, readout.results, wiring.flipped(self.results))
        m.d.comb += input_unit.release.eq(readout.done)

        count = Signal(32, name="cycle_count")
        m.d.sync += count.eq(count + 1)
        with m.If(input_unit.loaded):
            m.d.sync += [self.busy.eq(1), count.eq(0)]
        with m.If(readout.done):
            m.d.sync += [self.busy.eq(0), self.cycles.eq(count + 1)]
        return m
