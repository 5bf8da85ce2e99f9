"""The layer unit of the accelerator: one population's membrane memory, its fan-out walkers (one per projection)
that accumulate the events of its sources, and the update pass that fires its neurons at the end of each step.
"""

from __future__ import annotations

import operator

import numpy as np
from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from spikeforge.netimage import Network, signed_range

from .events import event_layout, projection_groups
from .fanout import FanoutWalker

__all__ = ["LayerUnit"]


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
