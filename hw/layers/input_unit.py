"""The input unit of the accelerator: it holds one image and replays it as graded events, once per time step."""

from __future__ import annotations

import operator

from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from spikeforge.netimage import Population

from .events import event_layout

__all__ = ["InputUnit"]


class InputUnit(wiring.Component):
    """Holds one image and replays it as graded events, once per time step.

    Parameters
    ----------
    pop : Population
        The input population (``C x H x W`` of ``bits``-bit pixels).
    time_steps : int
        How many times the image is replayed.

    Members
    -------
    pixels : In(stream.Signature(unsigned(bits)))
        The ``C*H*W`` pixels of one image in (c, y, x) row-major order; ready only while no image is in flight.
    events : Out(stream.Signature(event_layout(pop)))
        For each step, one event per nonzero pixel in index order, then an end-of-step token. The scan costs one
        cycle per pixel (zero or not) plus one for the token, when ``events`` is always ready.
    loaded : Out(1)
        High in the cycle the last pixel of an image is accepted.
    release : In(1)
        Pulse when the image's results are out; the unit then accepts the next image.
    """

    def __init__(self, pop: Population, time_steps: int):
        assert pop.kind == "input" and len(pop.shape) == 3
        self.pop = pop
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

        m.submodules.image = image = memory.Memory(shape=unsigned(self.pop.bits), depth=N, init=[])
        wr = image.write_port()
        rd = image.read_port()

        load_addr = Signal(range(N), name="load_addr")
        # scan position: index N stands for the end-of-step token
        scan_index = Signal(range(N + 1), name="scan_index")
        scan_c = Signal(range(C), name="scan_c")
        scan_y = Signal(range(H), name="scan_y")
        scan_x = Signal(range(W), name="scan_x")
        step = Signal(range(T), name="step")
        scanning = Signal(name="scanning")
        # pipeline register: the address presented to the memory in the previous cycle
        p_valid = Signal(name="p_valid")
        p_end = Signal(name="p_end")
        p_c = Signal.like(scan_c, name="p_c")
        p_y = Signal.like(scan_y, name="p_y")
        p_x = Signal.like(scan_x, name="p_x")
        p_index = Signal(range(N), name="p_index")
        waiting = Signal(name="waiting")  # all steps scanned, results not out yet

        m.d.comb += [
            self.events.valid.eq(p_valid & (p_end | (rd.data != 0))),
            self.events.payload.c.eq(p_c),
            self.events.payload.y.eq(p_y),
            self.events.payload.x.eq(p_x),
            self.events.payload.index.eq(p_index),
            self.events.payload.value.eq(rd.data),
            self.events.payload.end.eq(p_end),
        ]
        stall = Signal(name="stall")
        m.d.comb += stall.eq(self.events.valid & ~self.events.ready)

        # load
        m.d.comb += [
            self.pixels.ready.eq(~scanning & ~waiting & ~p_valid),
            wr.addr.eq(load_addr),
            wr.data.eq(self.pixels.payload),
            wr.en.eq(self.pixels.valid & self.pixels.ready),
        ]
        with m.If(self.pixels.valid & self.pixels.ready):
            with m.If(load_addr == N - 1):
                m.d.sync += [load_addr.eq(0), scanning.eq(1), step.eq(0)]
                m.d.comb += self.loaded.eq(1)
            with m.Else():
                m.d.sync += load_addr.eq(load_addr + 1)

        # scan: present an address, see its pixel one cycle later; hold everything while the consumer stalls
        m.d.comb += [rd.addr.eq(scan_index), rd.en.eq(~stall)]
        with m.If(~stall):
            m.d.sync += [
                p_valid.eq(scanning),
                p_end.eq(scan_index == N),
                p_c.eq(scan_c), p_y.eq(scan_y), p_x.eq(scan_x), p_index.eq(scan_index),
            ]
            with m.If(scanning):
                with m.If(scan_index == N):
                    m.d.sync += [scan_index.eq(0), scan_c.eq(0), scan_y.eq(0), scan_x.eq(0)]
                    with m.If(step == T - 1):
                        m.d.sync += [scanning.eq(0), waiting.eq(1), step.eq(0)]
                    with m.Else():
                        m.d.sync += step.eq(step + 1)
                with m.Else():
                    m.d.sync += scan_index.eq(scan_index + 1)
                    with m.If(scan_x == W - 1):
                        m.d.sync += scan_x.eq(0)
                        with m.If(scan_y == H - 1):
                            m.d.sync += [scan_y.eq(0), scan_c.eq(scan_c + 1)]
                        with m.Else():
                            m.d.sync += scan_y.eq(scan_y + 1)
                    with m.Else():
                        m.d.sync += scan_x.eq(scan_x + 1)
        with m.If(self.release):
            m.d.sync += waiting.eq(0)
        return m
