"""The layer unit of the accelerator: one population's membrane memory, its fan-out walkers (one per projection)
that accumulate the events of its sources, and the update pass that fires its neurons at the end of each step.
"""

from __future__ import annotations

import operator

import numpy as np
from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from spikeforge.netimage import Network, signed_range

from .events import channel_words, event_layout, grid, lane_limit, projection_groups, times_constant
from .fanout import FanoutWalker

__all__ = ["LayerUnit"]


class LayerUnit(wiring.Component):
    """One population: accumulates the events of all its projections into membranes, then updates and fires.

    The unit owns the membrane memory (``channel_words x H x W`` words of ``lanes`` neurons, one ``acc_bits``
    value per neuron holding leak(V) between steps: word ``(c // lanes) * H * W + y * W + x``, lane ``c %
    lanes``), one ``FanoutWalker`` (with its weight ROM) per projection, and a ROM of the per-channel bias and
    threshold, ``lanes`` channels per word. Each step it reads its sources' event streams one after the other,
    earliest source first, each up to its end-of-step token (``projection_groups``); the projections of one source
    walk every event in turn, each updating ``lanes`` neurons per cycle. Then one update pass fires the neurons,
    ``lanes`` per cycle.

    Parameters
    ----------
    net : Network
    index : int
        The population this unit implements (a lif population or the readout).
    time_steps : int
        Steps per image.
    lanes : int
        Output-channel lanes: neurons per membrane word, updated in parallel (1 .. ``lane_limit(pop)``).
    membrane_port : bool
        False: the unit owns its membrane (a Memory, init 0). True: the membrane is outside and the unit drives
        the two ports below instead (``HalfRateLayerUnit`` puts it in single-port SPRAM).

    Members
    -------
    events_p{s} : In(stream.Signature(event_layout(net.populations[s])))
        One per source population ``s`` of a projection: that source's events, each step ended by a token. One
        membrane word costs one cycle (see ``FanoutWalker``); the next event (for the next walker of the same
        source, or the next event) is taken in the cycle of the last update of the previous one, so a stream runs
        without bubbles; each end token costs one cycle. After the last source's end token the update phase starts.
    spikes : Out(stream.Signature(event_layout(population)))
        lif populations only. The update pass reads one word per cycle, in address order, through a five-stage
        pipeline (read; add the bias; clamp; fire and reset; leak and write back) and hands the word's spikes, lowest
        lane first, to an emitter that sends one per cycle; the pipeline stalls while the emitter still holds
        spikes of an earlier word when a word with spikes reaches the last stage, or while ``spikes`` is not
        ready. Then an end-of-step token. One pass costs ``words + 5`` cycles plus one per spike beyond the first
        of each word (more when ``spikes`` stalls).
    results : Out(stream.Signature(signed(32)))
        Readout only. At the last step the update pass emits every neuron's V (sign-extended), one per cycle, in
        flat index order (``lanes`` is 1 for a readout with H x W > 1).
    done : Out(1)
        Readout only: high in the cycle the last result of an image is accepted.
    membrane_read : In(memory.ReadPort.Signature(...)), membrane_write : In(memory.WritePort.Signature(...))
        With ``membrane_port`` only: the membrane's read port (1 cycle latency, transparent for the write port:
        a read of the word written in the same cycle returns the new value; with ``en`` low ``data`` holds)
        and write port, ``channel_words x H x W`` words of ``lanes`` signed ``acc_bits`` values, all 0 before
        the first image. The unit writes a word in the cycle after it read it, from the read data it sees then.
    """

    def __init__(self, net: Network, index: int, time_steps: int, lanes: int = 1, *, membrane_port: bool = False):
        self.net = net
        self.index = operator.index(index)
        self.pop = pop = net.populations[self.index]
        self.time_steps = operator.index(time_steps)
        self.lanes = operator.index(lanes)
        assert pop.kind in ("lif", "readout") and pop.projections
        if not 1 <= self.lanes <= lane_limit(pop):
            raise ValueError(f"population {self.index} ('{pop.name}') can use 1 to {lane_limit(pop)} lanes, "
                             f"not {self.lanes}")
        self.groups = projection_groups(pop)
        assert all(s < self.index for s, _ in self.groups)
        members = {f"events_p{s}": In(stream.Signature(event_layout(net.populations[s]))) for s, _ in self.groups}
        if pop.kind == "lif":
            members["spikes"] = Out(stream.Signature(event_layout(pop)))
        else:
            members["results"] = Out(stream.Signature(signed(32)))
            members["done"] = Out(1)
        self.membrane_port = bool(membrane_port)
        self.membrane_layout = data.ArrayLayout(signed(pop.acc_bits), self.lanes)
        c, h, w = grid(pop)
        self.membrane_words = channel_words(pop, self.lanes) * h * w
        if self.membrane_port:
            addr_width = (self.membrane_words - 1).bit_length()  # as a Memory of that depth has
            members["membrane_read"] = In(memory.ReadPort.Signature(addr_width=addr_width,
                                                                    shape=self.membrane_layout))
            members["membrane_write"] = In(memory.WritePort.Signature(addr_width=addr_width,
                                                                      shape=self.membrane_layout))
        super().__init__(members)

    def events_from(self, source: int):
        """The input stream that carries population ``source``'s events."""
        return getattr(self, f"events_p{source}")

    def elaborate(self, platform):
        m = Module()
        pop, P = self.pop, self.lanes
        T = self.time_steps
        A = pop.acc_bits
        vbits = pop.vbits
        lif = pop.kind == "lif"
        C, H, W = grid(pop)
        HW = H * W
        CW = channel_words(pop, P)
        WORDS = CW * HW

        # --- memories --------------------------------------------------------------------------------------
        if self.membrane_port:
            mem_rd, mem_wr = self.membrane_read, self.membrane_write
        else:
            m.submodules.membrane = membrane = memory.Memory(shape=self.membrane_layout, depth=WORDS, init=[])
            mem_wr = membrane.write_port()
            mem_rd = membrane.read_port(transparent_for=(mem_wr,))

        # per channel word: the lanes' biases and thresholds, and which lanes are real channels
        param_layout = data.StructLayout({"bias": data.ArrayLayout(signed(A), P),
                                          "threshold": data.ArrayLayout(signed(vbits), P),
                                          "live": unsigned(P)})
        bias = np.zeros(CW * P, np.int64)
        bias[:C] = pop.bias
        threshold = np.zeros(CW * P, np.int64)
        if lif:
            threshold[:C] = pop.threshold
        params = [{"bias": bias[g * P:(g + 1) * P].tolist(), "threshold": threshold[g * P:(g + 1) * P].tolist(),
                   "live": sum(1 << b for b in range(P) if g * P + b < C)} for g in range(CW)]
        m.submodules.params = param_mem = memory.Memory(shape=param_layout, depth=CW, init=params)
        p_rd = param_mem.read_port()

        step = Signal(range(T), name="step")
        last_step = Signal(name="last_step")
        m.d.comb += last_step.eq(step == T - 1)

        # --- the walkers, one per projection ---------------------------------------------------------------
        walkers = {}
        for s, ks in self.groups:
            for k in ks:
                walkers[k] = m.submodules[f"walker{k}"] = FanoutWalker(self.net, self.index, k, P)
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

        # --- the update pass: five stages, all advancing together ------------------------------------------
        # stage 0 presents word `u_addr`; stage 1 sees it and its params and adds the bias; stage 2 clamps;
        # stage 3 fires and resets; stage 4 leaks, writes back and hands the spikes (or results) to the emitter
        vlo, vhi = signed_range(vbits)
        advance = Signal(name="u_advance")
        u_run = Signal(name="u_run")  # stage 0 is issuing words
        u_addr = Signal(range(WORDS + 1), name="u_addr")
        u_g = Signal(range(CW), name="u_g")
        u_yx = Signal(range(HW), name="u_yx")
        u_index = Signal(range(C * HW + 1), name="u_index")  # flat index of lane 0: g * P * H * W + yx
        s_valid = [Signal(name=f"u{i}_valid") for i in (1, 2, 3, 4)]
        s_addr = [Signal(range(WORDS), name=f"u{i}_addr") for i in (1, 2, 3, 4)]
        s_g = [Signal(range(CW), name=f"u{i}_g") for i in (1, 2, 3, 4)]
        s_yx = [Signal(range(HW), name=f"u{i}_yx") for i in (1, 2, 3, 4)]
        s_index = [Signal.like(u_index, name=f"u{i}_index") for i in (1, 2, 3, 4)]
        v_sum = Signal(data.ArrayLayout(signed(A + 1), P), name="u2_sum")
        v = Signal(data.ArrayLayout(signed(vbits), P), name="u3_v")
        thr2 = Signal(data.ArrayLayout(signed(vbits), P), name="u2_threshold")
        thr3 = Signal.like(thr2, name="u3_threshold")
        live2 = Signal(P, name="u2_live")
        live3 = Signal(P, name="u3_live")

        with m.If(advance):
            m.d.sync += [s_valid[0].eq(u_run & (u_addr != WORDS)), s_addr[0].eq(u_addr), s_g[0].eq(u_g),
                         s_yx[0].eq(u_yx), s_index[0].eq(u_index)]
            for i in (1, 2, 3):
                m.d.sync += [s_valid[i].eq(s_valid[i - 1]), s_addr[i].eq(s_addr[i - 1]), s_g[i].eq(s_g[i - 1]),
                             s_yx[i].eq(s_yx[i - 1]), s_index[i].eq(s_index[i - 1])]
            m.d.sync += [thr2.eq(p_rd.data.threshold), live2.eq(p_rd.data.live), thr3.eq(thr2), live3.eq(live2)]
            for b in range(P):
                m.d.sync += [
                    v_sum[b].eq(mem_rd.data[b] + p_rd.data.bias[b]),
                    v[b].eq(Mux(v_sum[b] > vhi, vhi, Mux(v_sum[b] < vlo, vlo, v_sum[b]))),
                ]

        # stage 3 fires and resets; stage 4 leaks, writes back and hands over
        fire3 = Signal(P, name="u3_fire")
        fire = Signal(P, name="u4_fire")
        live4 = Signal(P, name="u4_live")
        v_after = Signal(data.ArrayLayout(signed(vbits), P), name="u4_after")
        v_leaked = Signal(data.ArrayLayout(signed(vbits), P), name="u4_leaked")
        with m.If(advance):
            m.d.sync += [fire.eq(fire3), live4.eq(live3)]
        for b in range(P):
            after3 = Signal(signed(vbits), name=f"u3_after{b}")
            if lif:
                m.d.comb += [fire3[b].eq(live3[b] & (thr3[b] <= v[b])),
                             after3.eq(Mux(fire3[b], v[b] - thr3[b], v[b]))]
            else:
                m.d.comb += after3.eq(v[b])
            with m.If(advance):
                m.d.sync += v_after[b].eq(after3)
            if pop.leak_shift is None:
                m.d.comb += v_leaked[b].eq(v_after[b])
            else:
                m.d.comb += v_leaked[b].eq(v_after[b] - (v_after[b] >> pop.leak_shift))

        # the emitter: one word's spikes (or results), sent one per cycle, lowest lane first
        pending = Signal(P, name="emit_pending")
        e_g = Signal(range(CW), name="emit_g")
        e_yx = Signal(range(HW), name="emit_yx")
        e_index = Signal.like(u_index, name="emit_index")
        e_values = Signal(data.ArrayLayout(signed(vbits), P), name="emit_values")
        lane = Signal(range(P), name="emit_lane")
        for b in reversed(range(P)):
            with m.If(pending[b]):
                m.d.comb += lane.eq(b)
        out = self.spikes if lif else self.results
        sent = Signal(name="emit_sent")
        m.d.comb += sent.eq(out.valid & out.ready & ~(out.payload.end if lif else 0))
        single = Signal(name="emit_single")
        m.d.comb += single.eq((pending & (pending - 1)) == 0)
        emitter_free = Signal(name="emit_free")
        m.d.comb += emitter_free.eq((pending == 0) | (sent & single))
        handing = Signal(P, name="u4_handing")  # what stage 4 hands to the emitter
        if lif:
            m.d.comb += handing.eq(fire)
        else:
            m.d.comb += handing.eq(Mux(last_step, live4, 0))
        m.d.comb += advance.eq(~s_valid[3] | (handing == 0) | emitter_free)
        with m.If(sent):
            m.d.sync += pending.eq(pending & (pending - 1))  # clear the lowest set bit
        with m.If(s_valid[3] & advance & (handing != 0)):
            m.d.sync += [pending.eq(handing), e_g.eq(s_g[3]), e_yx.eq(s_yx[3]), e_index.eq(s_index[3]),
                         e_values.eq(v_after)]
        lane_index = Signal.like(u_index, name="emit_lane_index")
        if P == 1:
            m.d.comb += lane_index.eq(e_index)
        else:
            with m.Switch(lane):
                for b in range(P):
                    with m.Case(b):
                        m.d.comb += lane_index.eq(e_index + b * HW)
        if lif:
            y = Signal(range(H), name="emit_y")
            x = Signal(range(W), name="emit_x")
            if HW > 1:
                with m.Switch(e_yx):
                    for yx in range(HW):
                        with m.Case(yx):
                            m.d.comb += [y.eq(yx // W), x.eq(yx % W)]
            m.d.comb += [
                out.payload.c.eq(times_constant(e_g, P) + lane), out.payload.y.eq(y), out.payload.x.eq(x),
                out.payload.index.eq(lane_index), out.payload.value.eq(1),
            ]
        else:
            m.d.comb += [out.payload.eq(e_values[lane]),
                         self.done.eq(sent & (lane_index == C * HW - 1))]

        drained = Signal(name="u_drained")
        m.d.comb += drained.eq(~s_valid[0] & ~s_valid[1] & ~s_valid[2] & ~s_valid[3] & (pending == 0))

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
                                    m.d.sync += [group.eq(0), u_run.eq(1)]
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

            with m.State("UPDATE"):
                m.d.comb += [
                    mem_rd.addr.eq(u_addr), p_rd.addr.eq(u_g),
                    mem_rd.en.eq(advance), p_rd.en.eq(advance),
                    mem_wr.addr.eq(s_addr[3]),
                    mem_wr.en.eq(s_valid[3] & advance),
                ]
                for b in range(P):
                    m.d.comb += mem_wr.data[b].eq(Mux(last_step, 0, v_leaked[b]))
                m.d.comb += out.valid.eq(pending != 0)
                with m.If(advance & u_run):
                    with m.If(u_addr != WORDS):
                        m.d.sync += u_addr.eq(u_addr + 1)
                        with m.If(u_yx == HW - 1):
                            m.d.sync += [u_yx.eq(0), u_g.eq(u_g + 1), u_index.eq(u_index + (P - 1) * HW + 1)]
                        with m.Else():
                            m.d.sync += [u_yx.eq(u_yx + 1), u_index.eq(u_index + 1)]
                    with m.Else():
                        m.d.sync += u_run.eq(0)
                with m.If(~u_run & drained):
                    m.d.sync += [u_addr.eq(0), u_g.eq(0), u_yx.eq(0), u_index.eq(0)]
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
        # UPDATE, whose own first write comes four cycles later)
        for n, w in enumerate(walkers.values()):
            with (m.If if n == 0 else m.Elif)(w.add.valid):
                m.d.comb += [mem_wr.addr.eq(w.add.addr), mem_wr.en.eq(1)]
                for b in range(P):
                    m.d.comb += mem_wr.data[b].eq(mem_rd.data[b] + w.add.value[b])
        return m


def _all(bits):
    """The AND of a list of 1-bit values (1 for an empty list)."""
    result = Const(1, 1)
    for bit in bits:
        result = result & bit
    return result
