"""The building blocks of the accelerator: the input unit, the layer unit (with one fan-out walker per
projection) and the event fan-out, joined by event streams.

Every unit speaks the same protocol: a stream of events, each naming one neuron of its population (channel, row,
column, flat index) with a value (the pixel for the input, 1 for a spike), and an end-of-step token after the
last event of each time step. hw/accelerator.py wires the units into the network's graph; this module knows
nothing of the graph.
"""

from __future__ import annotations

import operator

import numpy as np
from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from spikeforge.netimage import Network, Population, Projection, signed_range

__all__ = ["event_layout", "index_bits", "projection_groups", "is_diagonal", "weight_rom", "InputUnit",
           "EventFanout", "FanoutWalker", "LayerUnit"]


def index_bits(count: int) -> int:
    """Width of an unsigned counter over 0..count-1 (at least one bit)."""
    return max(1, (int(count) - 1).bit_length())


def event_layout(pop: Population) -> data.StructLayout:
    """The payload of the events a population emits.

    ``c``, ``y``, ``x`` locate the neuron (a 1-D ``[N]`` population has ``c`` = index and ``y`` = ``x`` = 0),
    ``index`` is its flat index ``c*H*W + y*W + x``, ``value`` the pixel (input) or 1 (spike), ``end`` marks the
    end-of-step token (whose other fields are meaningless).
    """
    if len(pop.shape) == 3:
        c, h, w = pop.shape
    else:
        c, h, w = pop.shape[0], 1, 1
    return data.StructLayout({
        "c": unsigned(index_bits(c)),
        "y": unsigned(index_bits(h)),
        "x": unsigned(index_bits(w)),
        "index": unsigned(index_bits(pop.size)),
        "value": unsigned(pop.bits if pop.kind == "input" else 1),
        "end": unsigned(1),
    })


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


def projection_groups(pop: Population) -> list[tuple[int, list[int]]]:
    """The projections of a population grouped by source, earliest source first: ``[(source, [k, ...]), ...]``.

    A layer unit reads one event stream per group, in this order (docs/architecture.md explains why this order
    cannot deadlock); the projections of one group share that stream and walk each event in turn, in the order
    ``k`` of the file.
    """
    groups: dict[int, list[int]] = {}
    for k, proj in enumerate(pop.projections):
        groups.setdefault(proj.source, []).append(k)
    return sorted(groups.items())


def is_diagonal(proj: Projection) -> bool:
    """A 1x1 conv, stride 1, no padding, C_in = C_out, whose weights are zero off the diagonal: how
    sw/export_resnet.py deploys an identity shortcut. Its walker makes one update per event (the neuron of the
    same flat index) and its ROM holds only the C diagonal weights."""
    w = proj.weight
    if proj.kind != "conv2d" or w.shape[2:] != (1, 1) or w.shape[0] != w.shape[1]:
        return False
    if tuple(proj.stride) != (1, 1) or tuple(proj.padding) != (0, 0):
        return False
    square = w[:, :, 0, 0]
    return not (square - np.diag(np.diag(square))).any()


def weight_rom(proj: Projection) -> list[int]:
    """A projection's weight ROM, in the order its walker reads it: ``[ci][ky][kx][co]`` (dense: ``[j][o]``), or
    just the diagonal for a diagonal 1x1 conv."""
    if is_diagonal(proj):
        return [int(v) for v in np.diag(proj.weight[:, :, 0, 0])]
    if proj.kind == "conv2d":
        w = np.transpose(proj.weight, (1, 2, 3, 0))  # [ci, ky, kx, co]
    else:
        w = proj.weight.T  # [j, o]
    return [int(v) for v in w.reshape(-1)]


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


class LayerUnit(wiring.Component):
    """One population: accumulates the events of all its projections into membranes, then updates and fires.

    The unit owns the membrane memory (one ``acc_bits`` word per neuron, holding leak(V) between steps), one
    ``FanoutWalker`` (with its weight ROM) per projection, and a ROM of the per-channel bias and threshold. Each
    step it reads its sources' event streams one after the other, earliest source first, each up to its
    end-of-step token (``projection_groups``); the projections of one source walk every event in turn. Then one
    update pass fires the neurons.

    Parameters
    ----------
    net : Network
    index : int
        The population this unit implements (a lif population or the readout).
    time_steps : int
        Steps per image.

    Members
    -------
    events_p{s} : In(stream.Signature(event_layout(net.populations[s])))
        One per source population ``s`` of a projection: that source's events, each step ended by a token. One
        fan-out update costs one cycle (see ``FanoutWalker``); the next event (for the next walker of the same
        source, or the next event) is taken in the cycle of the last update of the previous one, so a stream runs
        without bubbles; each end token costs one cycle. After the last source's end token the update phase starts.
    spikes : Out(stream.Signature(event_layout(population)))
        lif populations only. The update phase reads one neuron per cycle and emits an event for each neuron that
        fires, in index order, then an end-of-step token; it stalls while ``spikes`` is not ready. One update pass
        costs ``size + 3`` cycles plus the cycles ``spikes`` is not ready.
    results : Out(stream.Signature(signed(32)))
        Readout only. At the last step the update pass emits every neuron's V (sign-extended) in index order.
    done : Out(1)
        Readout only: high in the cycle the last result of an image is accepted.
    """

    def __init__(self, net: Network, index: int, time_steps: int):
        self.net = net
        self.index = operator.index(index)
        self.pop = pop = net.populations[self.index]
        self.time_steps = operator.index(time_steps)
        assert pop.kind in ("lif", "readout") and pop.projections
        self.groups = projection_groups(pop)
        assert all(s < self.index for s, _ in self.groups)
        members = {f"events_p{s}": In(stream.Signature(event_layout(net.populations[s]))) for s, _ in self.groups}
        if pop.kind == "lif":
            members["spikes"] = Out(stream.Signature(event_layout(pop)))
        else:
            members["results"] = Out(stream.Signature(signed(32)))
            members["done"] = Out(1)
        super().__init__(members)

    def events_from(self, source: int):
        """The input stream that carries population ``source``'s events."""
        return getattr(self, f"events_p{source}")

    def elaborate(self, platform):
        m = Module()
        pop = self.pop
        T = self.time_steps
        N = pop.size
        A = pop.acc_bits
        lif = pop.kind == "lif"

        # --- memories --------------------------------------------------------------------------------------
        m.submodules.membrane = membrane = memory.Memory(shape=signed(A), depth=N, init=[])
        mem_wr = membrane.write_port()
        mem_rd = membrane.read_port(transparent_for=(mem_wr,))

        vbits = pop.vbits
        param_layout = data.StructLayout({"bias": signed(A), "threshold": signed(vbits)})
        params = [{"bias": int(b), "threshold": int(t) if lif else 0}
                  for b, t in zip(pop.bias, pop.threshold if lif else np.zeros(pop.channels, np.int64))]
        m.submodules.params = param_mem = memory.Memory(shape=param_layout, depth=pop.channels, init=params)
        p_rd = param_mem.read_port()

        step = Signal(range(T), name="step")
        last_step = Signal(name="last_step")
        m.d.comb += last_step.eq(step == T - 1)

        # --- the walkers, one per projection ---------------------------------------------------------------
        walkers = {}
        for s, ks in self.groups:
            for k in ks:
                walkers[k] = m.submodules[f"walker{k}"] = FanoutWalker(self.net, self.index, k)
                m.d.comb += walkers[k].events.payload.eq(self.events_from(s).payload)
        # a walker is free when idle or in the cycle of its last update; at most one walker is ever busy, so
        # the membrane port needs no arbitration, only a multiplexer
        free = {k: w.events.ready for k, w in walkers.items()}
        all_free = Signal(name="walkers_free")
        m.d.comb += all_free.eq(_all([free[k] for k in walkers]))
        group = Signal(range(max(2, len(self.groups))), name="source_group")
        turn = Signal(range(max(2, max(len(ks) for _, ks in self.groups))), name="walker_turn")

        read_addr = Const(0, mem_rd.addr.shape())
        for w in walkers.values():
            read_addr = Mux(w.read.valid, w.read.addr, read_addr)

        with m.FSM(name="phase"):
            with m.State("ACCUMULATE"):
                m.d.comb += mem_rd.addr.eq(read_addr)
                for g, (s, ks) in enumerate(self.groups):
                    head = self.events_from(s)
                    with m.If(group == g):
                        with m.If(head.valid & head.payload.end):
                            # the end token passes once the last event's last update has been issued
                            with m.If(all_free):
                                m.d.comb += head.ready.eq(1)
                                if g == len(self.groups) - 1:
                                    m.d.sync += group.eq(0)
                                    m.next = "UPDATE"
                                else:
                                    m.d.sync += group.eq(g + 1)
                        with m.Elif(head.valid):
                            # the walkers of this source take the event in turn, each after the previous one
                            for j, k in enumerate(ks):
                                others = _all([free[i] for i in walkers if i != k])
                                w = walkers[k]
                                m.d.comb += w.events.valid.eq((turn == j) & others)
                                with m.If(w.events.valid & w.events.ready):
                                    if j == len(ks) - 1:
                                        m.d.comb += head.ready.eq(1)
                                        m.d.sync += turn.eq(0)
                                    else:
                                        m.d.sync += turn.eq(j + 1)

            # --- update: one neuron per cycle, read in stage U1, written back in stage U2 ------------------
            u_index = Signal(range(N + 1), name="u_index")
            u_c = Signal(range(pop.channels), name="u_c")
            H, W = (pop.shape[1], pop.shape[2]) if len(pop.shape) == 3 else (1, 1)
            u_y = Signal(range(H), name="u_y")
            u_x = Signal(range(W), name="u_x")
            q_valid = Signal(name="u_valid")
            q_index = Signal(range(N), name="u_q_index")
            q_c = Signal.like(u_c, name="u_q_c")
            q_y = Signal.like(u_y, name="u_q_y")
            q_x = Signal.like(u_x, name="u_q_x")

            # the neuron's arithmetic, at full width until the clamp
            vlo, vhi = signed_range(vbits)
            param = p_rd.data
            v_sum = Signal(signed(A + 1), name="v_sum")
            v = Signal(signed(vbits), name="v")
            fire = Signal(name="fire")
            v_after = Signal(signed(vbits), name="v_after")
            v_leaked = Signal(signed(vbits), name="v_leaked")
            m.d.comb += [
                v_sum.eq(mem_rd.data + param.bias),
                v.eq(Mux(v_sum > vhi, vhi, Mux(v_sum < vlo, vlo, v_sum))),
                fire.eq((param.threshold <= v) if lif else 0),
                v_after.eq(Mux(fire, v - param.threshold, v)),
            ]
            if pop.leak_shift is None:
                m.d.comb += v_leaked.eq(v_after)
            else:
                m.d.comb += v_leaked.eq(v_after - (v_after >> pop.leak_shift))

            stall = Signal(name="u_stall")
            if lif:
                out = self.spikes
                m.d.comb += [
                    out.payload.c.eq(q_c), out.payload.y.eq(q_y), out.payload.x.eq(q_x),
                    out.payload.index.eq(q_index), out.payload.value.eq(1),
                ]
            else:
                out = self.results

            with m.State("UPDATE"):
                m.d.comb += [
                    mem_rd.addr.eq(u_index), p_rd.addr.eq(u_c),
                    mem_rd.en.eq(~stall), p_rd.en.eq(~stall),
                    mem_wr.addr.eq(q_index),
                    mem_wr.data.eq(Mux(last_step, 0, v_leaked)),
                    mem_wr.en.eq(q_valid & ~stall),
                ]
                if lif:
                    m.d.comb += out.valid.eq(q_valid & fire)
                else:
                    m.d.comb += [
                        out.valid.eq(q_valid & last_step),
                        out.payload.eq(v),
                        self.done.eq(out.valid & out.ready & (q_index == N - 1)),
                    ]
                m.d.comb += stall.eq(out.valid & ~out.ready)
                with m.If(~stall):
                    m.d.sync += [
                        q_valid.eq(u_index != N),
                        q_index.eq(u_index), q_c.eq(u_c), q_y.eq(u_y), q_x.eq(u_x),
                    ]
                    with m.If(u_index != N):
                        m.d.sync += u_index.eq(u_index + 1)
                        if len(pop.shape) == 3:
                            with m.If(u_x == W - 1):
                                m.d.sync += u_x.eq(0)
                                with m.If(u_y == H - 1):
                                    m.d.sync += [u_y.eq(0), u_c.eq(u_c + 1)]
                                with m.Else():
                                    m.d.sync += u_y.eq(u_y + 1)
                            with m.Else():
                                m.d.sync += u_x.eq(u_x + 1)
                        else:
                            m.d.sync += u_c.eq(u_c + 1)
                    with m.Elif(~q_valid):
                        m.d.sync += [u_index.eq(0), u_c.eq(0), u_y.eq(0), u_x.eq(0)]
                        m.next = "STEP_END" if lif else "NEXT_STEP"

            if lif:
                with m.State("STEP_END"):
                    m.d.comb += [out.valid.eq(1), out.payload.end.eq(1)]
                    with m.If(out.ready):
                        m.next = "NEXT_STEP"

            with m.State("NEXT_STEP"):
                m.d.sync += step.eq(Mux(last_step, 0, step + 1))
                m.next = "ACCUMULATE"

        # stage B of the accumulate: at most one walker adds per cycle (its write may land in the first cycle of
        # UPDATE, whose own first write comes a cycle later)
        for n, w in enumerate(walkers.values()):
            with (m.If if n == 0 else m.Elif)(w.add.valid):
                m.d.comb += [
                    mem_wr.addr.eq(w.add.addr),
                    mem_wr.data.eq(mem_rd.data + w.add.value),
                    mem_wr.en.eq(1),
                ]
        return m


def _all(bits):
    """The AND of a list of 1-bit values (1 for an empty list)."""
    result = Const(1, 1)
    for bit in bits:
        result = result & bit
    return result
