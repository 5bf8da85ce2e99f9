"""The input unit of the accelerator: it holds one image as the list of its nonzero pixels and replays the list as
graded events, once per time step."""

from __future__ import annotations

import operator

from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from spikeforge.netimage import Population

from ..spram import SinglePortRam
from .events import event_layout, times_constant

__all__ = ["InputUnit"]


class InputUnit(wiring.Component):
    """Holds one image as the list of its nonzero pixels and replays that list as graded events, once per time
    step: a zero pixel costs nothing after the load.

    Parameters
    ----------
    pop : Population
        The input population (``C x H x W`` of ``bits``-bit pixels).
    time_steps : int
        How many times the image is replayed.
    pixel_list_spram : bool
        Whether the pixel list may be SPRAM on an iCE40 UltraPlus (``SinglePortRam``); False keeps it in block
        RAM, to leave the SPRAM to membranes (``spikeforge.hw.lanes.plan_memories``).

    Members
    -------
    pixels : In(stream.Signature(unsigned(bits)))
        The ``C*H*W`` pixels of one image in (c, y, x) row-major order, one per cycle; ready only while no image
        is in flight. Each nonzero pixel is appended, with its position, to the list memory.
    events : Out(stream.Signature(event_layout(pop)))
        For each step, one event per nonzero pixel in index order, then an end-of-step token: ``nonzero + 1``
        cycles per step when ``events`` is always ready.
    loaded : Out(1)
        High in the cycle the last pixel of an image is accepted.
    release : In(1)
        Pulse when the image's results are out; the unit then accepts the next image.
    """

    def __init__(self, pop: Population, time_steps: int, *, pixel_list_spram: bool = True):
        assert pop.kind == "input" and len(pop.shape) == 3
        self.pop = pop
        self.pixel_list_spram = bool(pixel_list_spram)
        self.time_steps = operator.index(time_steps)
        assert self.time_steps >= 1
        super().__init__({
            "pixels": In(stream.Signature(unsigned(pop.bits))),
            "events": Out(stream.Signature(event_layout(pop))),
            "loaded": Out(1),
            "release": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        C, H, W = self.pop.shape
        N = C * H * W
        T = self.time_steps
        layout = event_layout(self.pop)

        entry = data.StructLayout({"c": layout["c"].shape, "y": layout["y"].shape, "x": layout["x"].shape,
                                   "value": layout["value"].shape})
        # one port is enough: the list is written while loading and read while replaying, never both; on the
        # iCE40 UltraPlus it is SPRAM (unless the plan gives the SPRAM to membranes), which leaves the block RAM
        # to the layers
        m.submodules.pixel_list = pixel_list = SinglePortRam(entry.size, N, spram=self.pixel_list_spram)
        written = data.View(entry, pixel_list.write_data)

        # load: walk the positions, append the nonzero pixels
        load_c = Signal(range(C), name="load_c")
        load_y = Signal(range(H), name="load_y")
        load_x = Signal(range(W), name="load_x")
        load_last = Signal(name="load_last")
        m.d.comb += load_last.eq((load_c == C - 1) & (load_y == H - 1) & (load_x == W - 1))
        count = Signal(range(N + 1), name="nonzero")  # entries in the list
        scan = Signal(range(N + 1), name="scan")  # entry presented to the memory; `count` = the end token
        step = Signal(range(T), name="step")
        scanning = Signal(name="scanning")
        waiting = Signal(name="waiting")  # all steps scanned, results not out yet
        # pipeline register: what was presented to the memory in the previous cycle
        p_valid = Signal(name="p_valid")
        p_end = Signal(name="p_end")

        e = data.View(entry, pixel_list.read_data)
        m.d.comb += [
            self.events.valid.eq(p_valid),
            self.events.payload.c.eq(e.c),
            self.events.payload.y.eq(e.y),
            self.events.payload.x.eq(e.x),
            self.events.payload.index.eq(times_constant(e.c, H * W) + times_constant(e.y, W) + e.x),
            self.events.payload.value.eq(e.value),
            self.events.payload.end.eq(p_end),
        ]
        stall = Signal(name="stall")
        m.d.comb += stall.eq(self.events.valid & ~self.events.ready)

        accepted = Signal(name="pixel_accepted")
        m.d.comb += [
            self.pixels.ready.eq(~scanning & ~waiting & ~p_valid),
            accepted.eq(self.pixels.valid & self.pixels.ready),
            written.c.eq(load_c), written.y.eq(load_y), written.x.eq(load_x),
            written.value.eq(self.pixels.payload),
        ]
        with m.If(accepted):
            with m.If(self.pixels.payload != 0):
                m.d.sync += count.eq(count + 1)
            with m.If(load_last):
                m.d.sync += [load_c.eq(0), load_y.eq(0), load_x.eq(0), scanning.eq(1), step.eq(0), scan.eq(0)]
                m.d.comb += self.loaded.eq(1)
            with m.Elif(load_x == W - 1):
                m.d.sync += load_x.eq(0)
                with m.If(load_y == H - 1):
                    m.d.sync += [load_y.eq(0), load_c.eq(load_c + 1)]
                with m.Else():
                    m.d.sync += load_y.eq(load_y + 1)
            with m.Else():
                m.d.sync += load_x.eq(load_x + 1)

        # scan: present an entry, see it one cycle later; hold everything while the consumer stalls
        with m.If(scanning | p_valid):
            m.d.comb += [pixel_list.addr.eq(scan), pixel_list.enable.eq(~stall)]
        with m.Else():
            m.d.comb += [pixel_list.addr.eq(count), pixel_list.write_enable.eq(1),
                         pixel_list.enable.eq(accepted & (self.pixels.payload != 0))]
        with m.If(~stall):
            m.d.sync += [p_valid.eq(scanning), p_end.eq(scan == count)]
            with m.If(scanning):
                with m.If(scan == count):
                    m.d.sync += scan.eq(0)
                    with m.If(step == T - 1):
                        m.d.sync += [scanning.eq(0), waiting.eq(1), step.eq(0), count.eq(0)]
                    with m.Else():
                        m.d.sync += step.eq(step + 1)
                with m.Else():
                    m.d.sync += scan.eq(scan + 1)
        with m.If(self.release):
            m.d.sync += waiting.eq(0)
        return m
