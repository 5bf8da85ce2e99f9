"""Event fan-out: one producer's event stream broadcast to several consumers (EventFanout), and the walker that
visits the targets of each event of one projection, one membrane update per cycle (FanoutWalker).
"""

from __future__ import annotations

import operator

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from spikeforge.netimage import Network

from .events import event_layout, index_bits, is_diagonal, weight_rom

__all__ = ["EventFanout", "FanoutWalker"]


class EventFanout(wiring.Component):
    """Broadcasts one producer's event stream to several consumers, each behind its own FIFO.

    Parameters
    ----------
    layout : data.StructLayout
        The events' payload (``event_layout`` of the producing population).
    consumers : int
        How many consumers (at least one).
    depth : int
        Depth of each consumer's FIFO.

    Members
    -------
    events : In(stream.Signature(layout))
        The producer's stream. An event is taken in a cycle in which every consumer's FIFO has room, and then it
        is written into all of them at once: nothing is dropped, a full FIFO back-pressures the producer.
    outputs : Out(stream.Signature(layout)).array(consumers)
        One stream per consumer, in the producer's order; each drains at its own pace (up to ``depth`` events
        apart from the slowest). One event per cycle in and out.
    """

    def __init__(self, layout: data.StructLayout, consumers: int, depth: int = 4):
        self.layout = layout
        self.consumers = operator.index(consumers)
        self.depth = operator.index(depth)
        assert self.consumers >= 1 and self.depth >= 1
        super().__init__({
            "events": In(stream.Signature(layout)),
            "outputs": Out(stream.Signature(layout)).array(self.consumers),
        })

    def elaborate(self, platform):
        m = Module()
        room = []
        for i in range(self.consumers):
            queue = fifo.SyncFIFOBuffered(width=self.layout.size, depth=self.depth)
            m.submodules[f"fifo{i}"] = queue
            out = self.outputs[i]
            m.d.comb += [
                queue.w_data.eq(self.events.payload.as_value()),
                queue.w_en.eq(self.events.valid & self.events.ready),
                out.payload.eq(queue.r_data),
                out.valid.eq(queue.r_rdy),
                queue.r_en.eq(out.ready),
            ]
            room.append(queue.w_rdy)
        all_room = room[0]
        for r in room[1:]:
            all_room = all_room & r
        m.d.comb += self.events.ready.eq(all_room)
        return m


class FanoutWalker(wiring.Component):
    """The fan-out of one projection: walks the targets of each source event, one membrane update per cycle.

    Owns the projection's weight ROM, laid out ``[source channel][ky][kx][output channel]`` (dense:
    ``[source neuron][output neuron]``, a 1x1 conv whose input channels are the source's flat neurons) so that a
    walk advances the address by one. The membrane memory belongs to the layer unit, which gives its port to the
    walker that is busy.

    Parameters
    ----------
    net : Network
    index : int
        The population the projection feeds.
    projection : int
        The projection's index ``k`` in ``net.populations[index].projections``.

    Members
    -------
    events : In(stream.Signature(event_layout(source)))
        Events of the source (never an end token; the layer unit consumes those). Ready while idle and in the
        cycle of the last update of the current event, so that events run back to back. A conv2d event costs
        ``C_out`` cycles per kernel tap that lands inside the output and one per tap that misses; a dense event
        ``N_out`` cycles.
    read : Out(Signature({"valid": Out(1), "addr": Out(...)}))
        Stage A: this cycle's update reads membrane word ``addr`` (``valid`` when the tap lands).
    add : Out(Signature({"valid": Out(1), "addr": Out(...), "value": Out(signed(...))}))
        Stage B, one cycle later: write ``membrane[addr] + value`` (value = weight x pixel, or the weight for a
        spike) back, the membrane's read port now showing that word.
    """

    def __init__(self, net: Network, index: int, projection: int):
        self.net = net
        self.index = operator.index(index)
        self.pop = pop = net.populations[self.index]
        assert pop.kind in ("lif", "readout")
        self.proj = pop.projections[operator.index(projection)]
        self.source = net.populations[self.proj.source]
        self.graded = self.source.kind == "input"
        addr = unsigned(index_bits(pop.size))
        value = signed(self.proj.wbits + self.source.bits + 1) if self.graded else signed(self.proj.wbits)
        super().__init__({
            "events": In(stream.Signature(event_layout(self.source))),
            "read": Out(wiring.Signature({"valid": Out(1), "addr": Out(addr)})),
            "add": Out(wiring.Signature({"valid": Out(1), "addr": Out(addr), "value": Out(value)})),
        })

    # --- generation-time tables -------------------------------------------------------------------------

    def fanout_geometry(self):
        """(C_in, KH, KW, C_out, H_in, W_in, H_out, W_out, stride, padding) with dense as a 1x1 conv whose input
        channels are the source's flat neurons and whose output channels are the population's flat neurons."""
        proj, pop, src = self.proj, self.pop, self.source
        if proj.kind == "conv2d":
            co, ci, kh, kw = proj.weight.shape
            return ci, kh, kw, co, src.shape[1], src.shape[2], pop.shape[1], pop.shape[2], proj.stride, proj.padding
        return src.size, 1, 1, pop.size, 1, 1, 1, 1, (1, 1), (0, 0)

    def elaborate(self, platform):
        if is_diagonal(self.proj):
            return self._elaborate_diagonal()
        m = Module()
        proj = self.proj
        ci_n, KH, KW, CO, H_in, W_in, H_out, W_out, (sy, sx), (py, px) = self.fanout_geometry()
        HW_out = H_out * W_out
        TAPS_CO = KH * KW * CO

        weights = weight_rom(proj)
        m.submodules.weights = weight_mem = memory.Memory(shape=signed(proj.wbits), depth=len(weights),
                                                          init=weights)
        w_rd = weight_mem.read_port()

        ev = self.events.payload
        busy = Signal(name="walk_busy")
        value = Signal.like(ev.value, name="walk_value")
        ky = Signal(range(KH), name="ky")
        kx = Signal(range(KW), name="kx")
        co = Signal(range(CO), name="co")
        # y + p - ky = qy * s + ry with 0 <= ry < s; likewise for x (qx0/rx0 restart each kernel row)
        q_lo = -max(KH, KW) - 1  # below any quotient a tap can reach
        qy = Signal(range(q_lo, H_in + py + 1), name="qy")
        ry = Signal(range(max(sy, 1)), name="ry")
        qx = Signal(range(q_lo, W_in + px + 1), name="qx")
        rx = Signal(range(max(sx, 1)), name="rx")
        qx0 = Signal.like(qx, name="qx0")
        rx0 = Signal.like(rx, name="rx0")
        row_base = Signal(range(q_lo * W_out - 1, (H_in + py + 1) * W_out + 1), name="row_base")  # qy * W_out
        co_offset = Signal(range(CO * HW_out + 1), name="co_offset")  # co * H_out * W_out
        w_addr = Signal(range(len(weights) + TAPS_CO + 1), name="w_addr")
        w_tap = Signal.like(w_addr, name="w_tap")  # weight address of (ci, ky, kx, co=0)

        tap_hits = Signal(name="tap_hits")
        m.d.comb += tap_hits.eq((ry == 0) & (rx == 0) & (qy >= 0) & (qy < H_out) & (qx >= 0) & (qx < W_out))
        target = Signal(range(q_lo * W_out + q_lo - 1, (CO - 1) * HW_out + (H_in + py + 1) * W_out + W_in + px + 2),
                        name="target")  # out of range (and unused) when the tap misses
        m.d.comb += target.eq(row_base + qx + co_offset)
        last_of_tap = Signal(name="last_of_tap")
        last_tap = Signal(name="last_tap")
        m.d.comb += [
            last_of_tap.eq(~tap_hits | (co == CO - 1)),
            last_tap.eq((ky == KH - 1) & (kx == KW - 1)),
        ]
        finishing = Signal(name="walk_finishing")
        m.d.comb += finishing.eq(busy & last_of_tap & last_tap)

        # stage A: present the target and the weight address; stage B (registered): the addition
        add_value = Signal.like(value, name="add_value")
        m.d.comb += [
            self.events.ready.eq(~busy | finishing),
            w_rd.addr.eq(w_addr),
            self.read.valid.eq(busy & tap_hits),
            self.read.addr.eq(target),
            # a spike's value is 1: no multiplier
            self.add.value.eq(w_rd.data * add_value if self.graded else w_rd.data),
        ]
        m.d.sync += [
            self.add.valid.eq(busy & tap_hits),
            self.add.addr.eq(target),
            add_value.eq(value),
        ]

        # entry values of a new event: divmod tables over the source's rows and columns
        ev_ci = ev.c if proj.kind == "conv2d" else ev.index
        qy_in = Signal.like(qy, name="qy_in")
        ry_in = Signal.like(ry, name="ry_in")
        qx_in = Signal.like(qx, name="qx_in")
        rx_in = Signal.like(rx, name="rx_in")
        row_base_in = Signal.like(row_base, name="row_base_in")
        if proj.kind == "conv2d":
            with m.Switch(ev.y):
                for y in range(H_in):
                    with m.Case(y):
                        m.d.comb += [qy_in.eq((y + py) // sy), ry_in.eq((y + py) % sy),
                                     row_base_in.eq((y + py) // sy * W_out)]
            with m.Switch(ev.x):
                for x in range(W_in):
                    with m.Case(x):
                        m.d.comb += [qx_in.eq((x + px) // sx), rx_in.eq((x + px) % sx)]
        # (dense: all zero, the only tap hits output "row 0, column 0" and co walks the outputs)

        # walk one step
        with m.If(busy):
            with m.If(~last_of_tap):
                m.d.sync += [co.eq(co + 1), co_offset.eq(co_offset + HW_out), w_addr.eq(w_addr + 1)]
            with m.Else():
                m.d.sync += [co.eq(0), co_offset.eq(0), w_tap.eq(w_tap + CO), w_addr.eq(w_tap + CO)]
                with m.If(kx == KW - 1):
                    m.d.sync += [kx.eq(0), qx.eq(qx0), rx.eq(rx0), ky.eq(ky + 1)]
                    with m.If(ry == 0):
                        m.d.sync += [ry.eq(sy - 1), qy.eq(qy - 1), row_base.eq(row_base - W_out)]
                    with m.Else():
                        m.d.sync += ry.eq(ry - 1)
                with m.Else():
                    m.d.sync += kx.eq(kx + 1)
                    with m.If(rx == 0):
                        m.d.sync += [rx.eq(sx - 1), qx.eq(qx - 1)]
                    with m.Else():
                        m.d.sync += rx.eq(rx - 1)
                with m.If(last_tap):
                    m.d.sync += busy.eq(0)
        # take the next event
        with m.If(self.events.valid & self.events.ready):
            start = ev_ci * TAPS_CO  # one constant multiply per event, not per update
            m.d.sync += [
                busy.eq(1), value.eq(ev.value),
                ky.eq(0), kx.eq(0), co.eq(0), co_offset.eq(0),
                qy.eq(qy_in), ry.eq(ry_in), qx.eq(qx_in), rx.eq(rx_in), qx0.eq(qx_in), rx0.eq(rx_in),
                row_base.eq(row_base_in),
                w_tap.eq(start), w_addr.eq(start),
            ]
        return m

    def _elaborate_diagonal(self):
        """An identity shortcut: the event's own flat index is the target, its channel the weight address; one
        update per event, so events pass at one per cycle (same two stages as the general walk)."""
        m = Module()
        weights = weight_rom(self.proj)
        m.submodules.weights = weight_mem = memory.Memory(shape=signed(self.proj.wbits), depth=len(weights),
                                                          init=weights)
        w_rd = weight_mem.read_port()
        ev = self.events.payload
        busy = Signal(name="walk_busy")
        target = Signal.like(self.read.addr, name="target")
        w_addr = Signal(range(len(weights)), name="w_addr")
        value = Signal.like(ev.value, name="walk_value")
        add_value = Signal.like(ev.value, name="add_value")
        m.d.comb += [
            self.events.ready.eq(1),  # a busy walker issues its only update in this very cycle
            self.read.valid.eq(busy),
            self.read.addr.eq(target),
            w_rd.addr.eq(w_addr),
            self.add.value.eq(w_rd.data * add_value if self.graded else w_rd.data),
        ]
        m.d.sync += [self.add.valid.eq(busy), self.add.addr.eq(target), add_value.eq(value), busy.eq(0)]
        with m.If(self.events.valid):
            m.d.sync += [busy.eq(1), target.eq(ev.index), w_addr.eq(ev.c), value.eq(ev.value)]
        return m
