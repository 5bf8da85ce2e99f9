"""The half-rate layer unit: a LayerUnit whose membrane lives in a single-port RAM (the iCE40 UltraPlus's SPRAM).

A layer unit reads one membrane word and writes one per cycle; a single-port RAM does one or the other. So the
unit runs on every other cycle (its logic clock-enabled by the accelerator's phase bit) and the RAM, which is not
clock-enabled, does the unit's write in the unit's cycle and its read in the cycle between: the same accesses in
the same order, at half the rate. docs/architecture.md ("Membranes in SPRAM") explains why the result is exact.
"""

from __future__ import annotations

import operator

from amaranth.hdl import EnableInserter, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from spikeforge.netimage import Network

from ..spram import SinglePortRam
from .layer_unit import LayerUnit

__all__ = ["HalfRateLayerUnit"]


class HalfRateLayerUnit(wiring.Component):
    """A ``LayerUnit`` that advances only in the cycles where ``phase`` is high, with its membrane in a
    ``SinglePortRam`` (SPRAM on an iCE40 UltraPlus, a Memory elsewhere: simulation runs the same schedule).

    Every cycle of the unit costs two clock cycles; what it computes, and the order of its events, are those of a
    ``LayerUnit`` (the membrane accesses are the same, one cycle apart instead of in the same cycle).

    Parameters
    ----------
    net, index, time_steps, lanes
        As for ``LayerUnit``.

    Members
    -------
    events_p{s}, spikes / results, done
        As for ``LayerUnit``, handshaking only in cycles where ``phase`` is high (and ``cleared``): a ready,
        valid or done is masked low in the other cycles.
    phase : In(1)
        High every other cycle (never in two consecutive cycles): the cycles in which the unit advances.
    cleared : Out(1)
        Low after reset while the unit writes 0 into every membrane word (the SPRAM powers up undefined): one
        word per cycle, ``words`` cycles. The unit is frozen until then; the accelerator takes no pixel before.

    The RAM schedule, for a unit cycle E (phase high), the cycle D after it and the next unit cycle E':
    in E the unit's write (its data is computed from the read data shown in E) goes to the RAM and its read
    request is registered; in D the RAM reads; in E' the unit sees that word. With no read in D (the unit's read
    enable was low) the unit sees a held copy of the last word read, as a Memory read port with ``en`` low holds
    its data; this also covers the SPRAM's undefined output after a write. The write in E comes before the read
    in D, so a read of the word written in the same unit cycle sees the new value: the transparency the
    LayerUnit's read port has.
    """

    def __init__(self, net: Network, index: int, time_steps: int, lanes: int = 1):
        self.unit = LayerUnit(net, index, time_steps, lanes, membrane_port=True)
        self.index = operator.index(index)
        self.lanes = self.unit.lanes
        self.groups = self.unit.groups
        members = {name: member for name, member in self.unit.signature.members.items()
                   if not name.startswith("membrane_")}
        members["phase"] = In(1)
        members["cleared"] = Out(1)
        super().__init__(members)

    def events_from(self, source: int):
        """The input stream that carries population ``source``'s events."""
        return getattr(self, f"events_p{source}")

    @property
    def ram_width(self) -> int:
        return self.unit.membrane_layout.size

    def elaborate(self, platform):
        m = Module()
        unit = self.unit
        enable = Signal(name="unit_enable")
        m.d.comb += enable.eq(self.phase & self.cleared)
        m.submodules.unit = EnableInserter(enable)(unit)

        # the unit's streams, handshaking only in its own cycles
        for source, _ in self.groups:
            outer, inner = self.events_from(source), unit.events_from(source)
            m.d.comb += [inner.valid.eq(outer.valid), inner.payload.eq(outer.payload),
                         outer.ready.eq(inner.ready & enable)]
        name = "spikes" if unit.pop.kind == "lif" else "results"
        outer, inner = getattr(self, name), getattr(unit, name)
        m.d.comb += [outer.valid.eq(inner.valid & enable), outer.payload.eq(inner.payload),
                     inner.ready.eq(outer.ready)]
        if unit.pop.kind != "lif":
            m.d.comb += self.done.eq(unit.done & enable)

        # the membrane: one single-port RAM, not clock-enabled
        words = unit.membrane_words
        m.submodules.membrane = ram = SinglePortRam(self.ram_width, words)
        read, write = unit.membrane_read, unit.membrane_write
        pending = Signal(name="read_pending")  # the unit's read request, done in the cycle after its own
        pending_addr = Signal.like(read.addr, name="read_pending_addr")
        did_read = Signal(name="ram_did_read")  # the RAM read in the previous cycle: read_data is that word
        held = Signal(self.ram_width, name="membrane_held")  # the last word read
        clear_addr = Signal(range(words), name="clear_addr")

        with m.If(~self.cleared):
            m.d.comb += [ram.addr.eq(clear_addr), ram.enable.eq(1), ram.write_enable.eq(1), ram.write_data.eq(0)]
            m.d.sync += clear_addr.eq(clear_addr + 1)
            with m.If(clear_addr == words - 1):
                m.d.sync += self.cleared.eq(1)
        with m.Elif(enable):
            m.d.comb += [ram.addr.eq(write.addr), ram.enable.eq(write.en), ram.write_enable.eq(1),
                         ram.write_data.eq(write.data.as_value())]
            m.d.sync += [pending.eq(read.en), pending_addr.eq(read.addr)]
        with m.Else():
            m.d.comb += [ram.addr.eq(pending_addr), ram.enable.eq(pending)]
            m.d.sync += pending.eq(0)
        m.d.sync += did_read.eq(ram.enable & ~ram.write_enable)
        with m.If(did_read):
            m.d.sync += held.eq(ram.read_data)
        m.d.comb += read.data.eq(Mux(did_read, ram.read_data, held))
        return m
