"""Event fan-out: one producer's event stream broadcast to several consumers (EventFanout), and the walker that
visits the targets of each event of one projection, one membrane update per cycle (FanoutWalker).
"""

from __future__ import annotations

import operator

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from spikeforge.netimage import Network

from .events import times_constant, channel_words, event_layout, grid, index_bits, is_diagonal, lane_limit, weight_words

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
    """The fan-out of one projection: visits the membrane words that each source event lands on, one word of
    ``lanes`` neurons per cycle.

    Owns the projection's weight ROM (``weight_words``), ``lanes`` weights per word, laid out so that a walk only
    steps addresses by constants. A conv2d event at (ci, y, x) visits only the kernel taps that land inside the
    output: for stride s and padding p, tap ky lands on row (y + p - ky) / s when that division is exact and in
    range, so the landing rows form an arithmetic run ky0, ky0 + s, ... whose start, length and first target row
    come from a table over y (likewise for columns). A dense projection is a 1x1 conv whose input channels are the
    source's flat neurons and whose "channel words" are all the population's membrane words. The membrane belongs
    to the layer unit, which gives its port to the walker that is busy.

    Parameters
    ----------
    net : Network
    index : int
        The population the projection feeds.
    projection : int
        The projection's index ``k`` in ``net.populations[index].projections``.
    lanes : int
        Neurons per membrane word (output channels updated per cycle), at least 1.

    Members
    -------
    events : In(stream.Signature(event_layout(source)))
        Events of the source (never an end token; the layer unit consumes those). Ready while idle and in the
        cycle of the last update of the current event, so that events run back to back. A conv2d event costs
        ``ceil(C_out / lanes)`` cycles per landing tap, a dense event one cycle per membrane word, a diagonal one
        cycle; an event with no landing tap is taken in one cycle and costs nothing more.
    read : Out(Signature({"valid": Out(1), "addr": Out(...)}))
        Stage A: this cycle's update reads membrane word ``addr``.
    add : Out(Signature({"valid": Out(1), "addr": Out(...), "value": Out(ArrayLayout(signed(...), lanes))}))
        Stage B, one cycle later: write ``membrane[addr] + value`` (lane by lane; value = weight x pixel, or the
        weight for a spike) back, the membrane's read port now showing that word.
    """

    def __init__(self, net: Network, index: int, projection: int, lanes: int = 1):
        self.net = net
        self.index = operator.index(index)
        self.pop = pop = net.populations[self.index]
        assert pop.kind in ("lif", "readout")
        self.proj = pop.projections[operator.index(projection)]
        self.lanes = operator.index(lanes)
        assert 1 <= self.lanes <= lane_limit(pop)
        self.source = net.populations[self.proj.source]
        self.graded = self.source.kind == "input"
        c, h, w = grid(pop)
        self.words = channel_words(pop, self.lanes) * h * w
        addr = unsigned(index_bits(self.words))
        value = signed(self.proj.wbits + self.source.bits + 1) if self.graded else signed(self.proj.wbits)
        super().__init__({
            "events": In(stream.Signature(event_layout(self.source))),
            "read": Out(wiring.Signature({"valid": Out(1), "addr": Out(addr)})),
            "add": Out(wiring.Signature({"valid": Out(1), "addr": Out(addr),
                                         "value": Out(data.ArrayLayout(value, self.lanes))})),
        })

    # --- generation-time tables -------------------------------------------------------------------------

    def fanout_geometry(self):
        """(C_in, KH, KW, words per tap, H_in, W_in, H_out, W_out, stride, padding), with dense as a 1x1 conv
        whose input channels are the source's flat neurons and whose words per tap are all membrane words."""
        proj, pop, src = self.proj, self.pop, self.source
        if proj.kind == "conv2d":
            co, ci, kh, kw = proj.weight.shape
            return (ci, kh, kw, channel_words(pop, self.lanes), src.shape[1], src.shape[2], pop.shape[1],
                    pop.shape[2], tuple(proj.stride), tuple(proj.padding))
        return src.size, 1, 1, self.words, 1, 1, 1, 1, (1, 1), (0, 0)

    @staticmethod
    def landing_run(pos: int, pad: int, stride: int, kernel: int, size_out: int) -> tuple[int, int, int]:
        """The taps of one axis that land for a source coordinate ``pos``: (first tap k0, how many, the output
        coordinate of k0). Tap k lands on (pos + pad - k) / stride when exact and in [0, size_out); the landing
        taps are k0, k0 + stride, ... with output coordinates q0, q0 - 1, ..."""
        taps = [k for k in range(kernel)
                if (pos + pad - k) % stride == 0 and 0 <= (pos + pad - k) // stride < size_out]
        if not taps:
            return 0, 0, 0
        return taps[0], len(taps), (pos + pad - taps[0]) // stride

    def elaborate(self, platform):
        if is_diagonal(self.proj):
            return self._elaborate_diagonal()
        m = Module()
        proj, P = self.proj, self.lanes
        ci_n, KH, KW, CW, H_in, W_in, H_out, W_out, (sy, sx), (py, px) = self.fanout_geometry()
        HW_out = H_out * W_out
        TAP = KH * KW * CW  # weight words per source channel

        words = weight_words(proj, self.pop, P)
        m.submodules.weights = weight_mem = memory.Memory(
            shape=data.ArrayLayout(signed(proj.wbits), P), depth=len(words), init=words)
        w_rd = weight_mem.read_port()

        ev = self.events.payload
        busy = Signal(name="walk_busy")
        value = Signal.like(ev.value, name="walk_value")
        cw = Signal(range(CW), name="cw")
        iy_left = Signal(range(KH), name="iy_left")  # landing rows still to visit after this one
        ix_left = Signal(range(KW), name="ix_left")
        nx_last = Signal(range(KW), name="nx_last")  # landing columns of this event minus one
        qx = Signal(range(W_out), name="qx")
        qx0 = Signal(range(W_out), name="qx0")
        row_base = Signal(range(HW_out), name="row_base")  # qy * W_out
        co_offset = Signal(range(CW * HW_out), name="co_offset")  # cw * H_out * W_out
        w_row = Signal(range(len(words) + 1), name="w_row")  # weight word of (ci, ky, kx0, 0)
        w_tap = Signal.like(w_row, name="w_tap")  # weight word of (ci, ky, kx, 0)
        w_addr = Signal.like(w_row, name="w_addr")
        target = Signal(range(self.words), name="target")
        m.d.comb += target.eq(row_base + qx + co_offset)

        last_word = Signal(name="last_word")
        m.d.comb += last_word.eq(cw == CW - 1)
        finishing = Signal(name="walk_finishing")
        m.d.comb += finishing.eq(busy & last_word & (ix_left == 0) & (iy_left == 0))

        # stage A: present the target and the weight word; stage B (registered): the additions
        add_value = Signal.like(value, name="add_value")
        m.d.comb += [
            self.events.ready.eq(~busy | finishing),
            w_rd.addr.eq(w_addr),
            self.read.valid.eq(busy),
            self.read.addr.eq(target),
        ]
        for b in range(P):
            # a spike's value is 1: no multiplier
            m.d.comb += self.add.value[b].eq(w_rd.data[b] * add_value if self.graded else w_rd.data[b])
        m.d.sync += [
            self.add.valid.eq(busy),
            self.add.addr.eq(target),
            add_value.eq(value),
        ]

        # entry values of a new event: the landing runs of its row and column, from tables
        ev_ci = ev.c if proj.kind == "conv2d" else ev.index
        ny_in = Signal(range(KH + 1), name="ny_in")
        nx_in = Signal(range(KW + 1), name="nx_in")
        row_in = Signal.like(row_base, name="row_base_in")
        qx_in = Signal.like(qx, name="qx_in")
        w_y_in = Signal(range(TAP + 1), name="w_y_in")  # ky0 * KW * CW
        w_x_in = Signal(range(KW * CW + 1), name="w_x_in")  # kx0 * CW
        if proj.kind == "conv2d":
            with m.Switch(ev.y):
                for y in range(H_in):
                    k0, n, q0 = self.landing_run(y, py, sy, KH, H_out)
                    with m.Case(y):
                        m.d.comb += [ny_in.eq(n), row_in.eq(q0 * W_out), w_y_in.eq(k0 * KW * CW)]
            with m.Switch(ev.x):
                for x in range(W_in):
                    k0, n, q0 = self.landing_run(x, px, sx, KW, W_out)
                    with m.Case(x):
                        m.d.comb += [nx_in.eq(n), qx_in.eq(q0), w_x_in.eq(k0 * CW)]
        else:
            m.d.comb += [ny_in.eq(1), nx_in.eq(1)]  # the only tap; target words 0 .. words - 1

        # walk one word
        with m.If(busy):
            with m.If(~last_word):
                m.d.sync += [cw.eq(cw + 1), co_offset.eq(co_offset + HW_out), w_addr.eq(w_addr + 1)]
            with m.Else():
                m.d.sync += [cw.eq(0), co_offset.eq(0)]
                with m.If(ix_left != 0):
                    m.d.sync += [ix_left.eq(ix_left - 1), qx.eq(qx - 1),
                                 w_tap.eq(w_tap + sx * CW), w_addr.eq(w_tap + sx * CW)]
                with m.Else():
                    m.d.sync += [ix_left.eq(nx_last), qx.eq(qx0)]
                    with m.If(iy_left != 0):
                        m.d.sync += [iy_left.eq(iy_left - 1), row_base.eq(row_base - W_out),
                                     w_row.eq(w_row + sy * KW * CW), w_tap.eq(w_row + sy * KW * CW),
                                     w_addr.eq(w_row + sy * KW * CW)]
                    with m.Else():
                        m.d.sync += busy.eq(0)
        # take the next event; one that lands nowhere is taken and dropped
        with m.If(self.events.valid & self.events.ready):
            start = times_constant(ev_ci, TAP) + w_y_in + w_x_in  # one constant multiply per event, not per update
            m.d.sync += [
                busy.eq((ny_in != 0) & (nx_in != 0)), value.eq(ev.value),
                cw.eq(0), co_offset.eq(0),
                iy_left.eq(ny_in - 1), ix_left.eq(nx_in - 1), nx_last.eq(nx_in - 1),
                row_base.eq(row_in), qx.eq(qx_in), qx0.eq(qx_in),
                w_row.eq(start), w_tap.eq(start), w_addr.eq(start),
            ]
        return m

    def _elaborate_diagonal(self):
        """An identity shortcut: the target is the event's own neuron (word (c // lanes) * H * W + y * W + x, lane
        c % lanes), its channel the weight address; one update per event, so events pass at one per cycle (same
        two stages as the general walk)."""
        m = Module()
        P = self.lanes
        c_n, h, w = grid(self.pop)
        weights = [word[0] for word in weight_words(self.proj, self.pop, P)]
        m.submodules.weights = weight_mem = memory.Memory(shape=signed(self.proj.wbits), depth=len(weights),
                                                          init=weights)
        w_rd = weight_mem.read_port()
        ev = self.events.payload
        busy = Signal(name="walk_busy")
        target = Signal.like(self.read.addr, name="target")
        lane = Signal(range(P), name="lane")
        add_lane = Signal.like(lane, name="add_lane")
        w_addr = Signal(range(len(weights)), name="w_addr")
        value = Signal.like(ev.value, name="walk_value")
        add_value = Signal.like(ev.value, name="add_value")
        m.d.comb += [
            self.events.ready.eq(1),  # a busy walker issues its only update in this very cycle
            self.read.valid.eq(busy),
            self.read.addr.eq(target),
            w_rd.addr.eq(w_addr),
        ]
        product = w_rd.data * add_value if self.graded else w_rd.data
        for b in range(P):
            m.d.comb += self.add.value[b].eq(Mux(add_lane == b, product, 0))
        m.d.sync += [self.add.valid.eq(busy), self.add.addr.eq(target), add_value.eq(value), add_lane.eq(lane),
                     busy.eq(0)]
        with m.If(self.events.valid):
            m.d.sync += [busy.eq(1), w_addr.eq(ev.c), value.eq(ev.value)]
            if P == 1:
                m.d.sync += [target.eq(ev.index), lane.eq(0)]
            else:
                # word (c // P) * H * W + y * W + x: the channel's part from a table over channels
                m.d.sync += target.eq(ev.index)  # overwritten below per channel
                with m.Switch(ev.c):
                    for c in range(c_n):
                        with m.Case(c):
                            m.d.sync += [target.eq(ev.index - c * h * w + (c // P) * h * w), lane.eq(c % P)]
        return m
