"""The accelerator's cycle model: how many clock cycles an image takes, predicted from the network, the lane
configuration and the spikes (which the integer reference gives), without simulating any gateware.

It replays, cycle by cycle, exactly the handshakes that hw/accelerator.py and hw/layers/ generate: the input
unit's replay of the nonzero pixels, every fan-out FIFO (Amaranth's ``SyncFIFOBuffered``: a write is readable two
cycles later; ``depth - 1`` entries plus the output register), every layer unit's walkers (one cycle per membrane
word an event lands on, events back to back), its end tokens, its five-stage update pass and its spike emitter
(one spike per cycle); a half-rate unit (membrane in SPRAM) makes the same decisions in odd cycles only. Only
timing is modelled, no arithmetic: which neurons fire comes from the caller. Because
it follows the same rules as the gateware, its count equals the RTL's (tests/hw/test_cycle_model.py checks that
on every network the hardware tests simulate), and it runs where RTL simulation is too slow (spiking ResNets,
full test sets). docs/architecture.md explains the rules; numpy only, no torch.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from spikeforge.netimage import Network

from .accelerator import LanePlan, choose_lanes, choose_spram, consumers
from .layers import FanoutWalker, channel_words, grid, is_diagonal, projection_groups

__all__ = ["CycleModel", "ImageCycles"]

_TOKEN = -1  # the end-of-step token in a modelled stream; events are flat neuron indices
_STAGES = 4  # registered stages of the update pass after the memory read (bias, clamp, fire, leak and write)


@dataclass
class ImageCycles:
    """The model's account of one image.

    ``cycles`` counts like the accelerator's ``cycles`` port: from the cycle after the last pixel was accepted to
    the cycle the last result was accepted, inclusive (cycle 0 is the first of them). ``step_ends[p][t]`` is the
    cycle in which population p finished step t (a lif population handed on its end token; the readout finished
    its update pass, or at the last step sent its last result).
    ``updates[p]`` counts membrane-word updates of population p's walkers (each one cycle), ``synaptic_ops[p]``
    the neuron updates they made (``lanes`` per word, padding lanes excluded).
    """
    cycles: int
    step_ends: dict[int, list[int]] = field(default_factory=dict)
    updates: dict[int, int] = field(default_factory=dict)
    synaptic_ops: dict[int, int] = field(default_factory=dict)


class _Fifo:
    """Amaranth's SyncFIFOBuffered of ``depth``: ``depth - 1`` entries in memory plus an output register."""

    def __init__(self, depth: int):
        self.depth = depth
        self.inner: deque[int] = deque()
        self.out: int | None = None  # the output register (r_rdy when not None)

    def w_rdy(self) -> bool:
        if self.depth == 1:
            return self.out is None
        return len(self.inner) < self.depth - 1

    def tick(self, write: int | None, read: bool) -> None:
        if self.depth == 1:
            if read:
                self.out = None
            if write is not None:
                self.out = write
            return
        if self.inner and (self.out is None or read):
            self.out = self.inner.popleft()
        elif read:
            self.out = None
        if write is not None:
            self.inner.append(write)


class CycleModel:
    """The cycle model of ``Accelerator(net, time_steps, lanes=lanes, fifo_depth=fifo_depth)``.

    Parameters
    ----------
    net : Network
    time_steps : int or None
    lanes : None, int, dict or LanePlan
        As ``Accelerator`` takes it (``choose_lanes``); a LanePlan's ``spram`` units are half rate.
    fifo_depth : int
    spram : None or iterable
        As ``Accelerator`` takes it: the half-rate units (None: the LanePlan's).

    A half-rate unit advances only in odd cycles (the accelerator's phase is low in cycle 0); in even cycles it
    takes, hands on and changes nothing, and every other part of the design goes on as usual.
    """

    def __init__(self, net: Network, time_steps: int | None = None, *, lanes=None, fifo_depth: int = 4,
                 spram=None):
        self.net = net
        self.T = int(net.time_steps if time_steps is None else time_steps)
        self.lanes = choose_lanes(net, lanes)
        plan = lanes if isinstance(lanes, LanePlan) else LanePlan()
        self.half_rate = choose_spram(net, plan.spram if spram is None else spram)
        self.fifo_depth = int(fifo_depth)
        pops = net.populations
        self.readers = consumers(net)
        # lif populations nobody reads: the readout's results wait for them (hw/accelerator.py)
        self.dead = [q for q, rs in self.readers.items() if net.populations[q].kind == "lif" and not rs]
        self.groups = {p: projection_groups(pops[p]) for p in range(1, len(pops))}
        # per population: membrane words, and per projection the words each source neuron's event lands on
        self.words: dict[int, int] = {}
        self.costs: dict[int, dict[int, np.ndarray]] = {}
        self.lanes_live: dict[int, np.ndarray] = {}
        self.ops: dict[int, dict[int, np.ndarray]] = {}
        for p in range(1, len(pops)):
            pop, P = pops[p], self.lanes[p]
            c, h, w = grid(pop)
            self.words[p] = channel_words(pop, P) * h * w
            self.lanes_live[p] = np.array([min(P, c - (word // (h * w)) * P) for word in range(self.words[p])])
            self.costs[p] = {k: self._event_costs(p, k) for k in range(len(pop.projections))}
            self.ops[p] = {k: self._event_costs(p, k, neurons=True) for k in range(len(pop.projections))}

    def _event_costs(self, p: int, k: int, neurons: bool = False) -> np.ndarray:
        """Membrane words (or, with ``neurons``, neurons: synaptic operations) that an event of each source neuron
        makes projection k of population p update."""
        pop = self.net.populations[p]
        proj = pop.projections[k]
        src = self.net.populations[proj.source]
        if is_diagonal(proj):
            return np.ones(src.size, np.int64)
        if proj.kind != "conv2d":
            return np.full(src.size, pop.size if neurons else self.words[p], np.int64)
        co, ci, kh, kw = proj.weight.shape
        cs, hs, ws = grid(src)
        _, ho, wo = grid(pop)
        rows = np.array([FanoutWalker.landing_run(y, proj.padding[0], proj.stride[0], kh, ho)[1] for y in range(hs)])
        cols = np.array([FanoutWalker.landing_run(x, proj.padding[1], proj.stride[1], kw, wo)[1] for x in range(ws)])
        per_position = np.outer(rows, cols) * (co if neurons else channel_words(pop, self.lanes[p]))
        return np.broadcast_to(per_position, (cs, hs, ws)).reshape(-1).astype(np.int64)

    def _emission(self, p: int, fired: np.ndarray) -> dict[int, list[int]]:
        """One step's spikes of population p as the update pass emits them: {word: [flat index, ...]} with the
        lanes of a word in increasing order."""
        pop, P = self.net.populations[p], self.lanes[p]
        c, h, w = grid(pop)
        order: dict[int, list[int]] = {}
        for flat in np.flatnonzero(fired.reshape(-1)):
            ch, yx = divmod(int(flat), h * w)
            order.setdefault((ch // P) * h * w + yx, []).append(int(flat))
        return order  # flat indices ascend, and within a word the lane (channel) order is the flat order

    def run(self, images, record, progress=None) -> list[ImageCycles]:
        """Every image of ``images`` ([B, C, H, W]) with the spikes of ``record`` (a SpikeRecord of the same
        images, e.g. the integer reference's). ``progress`` wraps the image range (e.g. tqdm)."""
        images = np.asarray(images)
        lif = [p for p, pop in enumerate(self.net.populations) if pop.kind == "lif"]
        steps = range(len(images)) if progress is None else progress(range(len(images)))
        return [self.image(images[b], {p: record.spikes[p][:, b] for p in lif}) for b in steps]

    def image(self, pixels: np.ndarray, spikes: dict[int, np.ndarray], *, max_cycles: int = 50_000_000
              ) -> ImageCycles:
        """Cycles of one image: ``pixels`` its [C, H, W] input, ``spikes[p]`` a [T, *shape] array of which
        neurons of each lif population p fire at each step (the integer reference's record)."""
        net, T = self.net, self.T
        pops = net.populations
        last = len(pops) - 1
        nonzero = [int(i) for i in np.flatnonzero(np.asarray(pixels).reshape(-1))]
        emissions = {p: [self._emission(p, spikes[p][t]) for t in range(T)]
                     for p in range(1, last) if pops[p].kind == "lif"}
        fifos = {(q, r): _Fifo(self.fifo_depth) for q, rs in self.readers.items() for r in rs}
        result = ImageCycles(cycles=0, step_ends={p: [] for p in range(1, len(pops))},
                             updates={p: 0 for p in range(1, len(pops))},
                             synaptic_ops={p: 0 for p in range(1, len(pops))})

        # the input unit
        inp = {"scanning": True, "scan": 0, "step": 0, "p_valid": False, "p_item": 0}
        # the layer units
        units = {}
        for p in range(1, len(pops)):
            walkers = [k for _, ks in self.groups[p] for k in ks]
            units[p] = {"state": "ACC", "group": 0, "turn": 0, "left": {k: 0 for k in walkers}, "step": 0,
                        "u_run": False, "u_addr": 0, "s": [None] * _STAGES, "pending": deque()}
        cycle = 0
        while cycle < max_cycles:
            writes: dict[tuple[int, int], int] = {}
            reads: set[tuple[int, int]] = set()

            def hand(q: int, item: int) -> bool:
                """Producer q offers ``item`` to its fan-out this cycle; True when every reader has room."""
                targets = [fifos[(q, r)] for r in self.readers[q]]
                if all(f.w_rdy() for f in targets):
                    for r in self.readers[q]:
                        writes[(q, r)] = item
                    return True
                return False

            def peek(q: int, item: int) -> bool:
                """Whether producer q's fan-out has room, without handing anything."""
                return all(fifos[(q, r)].w_rdy() for r in self.readers[q])

            # --- input unit (decisions from this cycle's registers) ---
            stall_in = inp["p_valid"] and not hand(0, inp["p_item"])
            # --- layer units ---
            plans, seen = {}, {}
            for p, u in units.items():
                if self._advances(p, cycle):
                    plans[p] = seen[p] = self._decide(p, u, fifos, hand, reads, cycle, emissions, result)
                else:
                    # a half-rate unit between its cycles does nothing; what it would decide, had it advanced
                    # now, is what it decides in its next cycle if nothing else moves: that tells the skip below
                    plans[p] = None
                    seen[p] = self._decide(p, u, fifos, peek, set(), cycle, emissions, result)
            done = plans[last] is not None and plans[last].get("done", False)

            skip = self._quiet_cycles(inp, stall_in, writes, reads, seen, units, fifos, cycle)
            if skip:
                # nothing but walks in progress for `skip` cycles: jump to the cycle in which a walker frees up
                for p, u in units.items():
                    ticks = self._ticks(p, cycle, skip)
                    for k, left in u["left"].items():
                        u["left"][k] = max(0, left - ticks)
                cycle += skip
                continue

            # --- clock edge ---
            if not stall_in:
                inp["p_valid"] = inp["scanning"]
                inp["p_item"] = _TOKEN if inp["scan"] == len(nonzero) else nonzero[inp["scan"]]
                if inp["scanning"]:
                    if inp["scan"] == len(nonzero):
                        inp["scan"] = 0
                        if inp["step"] == T - 1:
                            inp["scanning"] = False
                        else:
                            inp["step"] += 1
                    else:
                        inp["scan"] += 1
            for key, fifo in fifos.items():
                fifo.tick(writes.get(key), key in reads)
            for p, u in units.items():
                if plans[p] is not None:
                    self._tick(p, u, plans[p], emissions, result, cycle)
            if done:
                result.step_ends[last].append(cycle)
                result.cycles = cycle + 1
                return result
            cycle += 1
        raise RuntimeError(f"the cycle model did not finish the image within {max_cycles} cycles")

    def _advances(self, p: int, cycle: int) -> bool:
        """Whether unit p advances in ``cycle``: every cycle, or the odd ones for a half-rate unit."""
        return p not in self.half_rate or cycle % 2 == 1

    def _ticks(self, p: int, cycle: int, count: int) -> int:
        """How many of the ``count`` cycles from ``cycle`` on unit p advances in."""
        if p not in self.half_rate:
            return count
        return (cycle + count) // 2 - cycle // 2  # odd cycles in [cycle, cycle + count)

    def _quiet_cycles(self, inp, stall_in, writes, reads, plans, units, fifos, cycle) -> int:
        """How many cycles from this one change nothing but the walkers' remaining updates (0 if this one
        changes more): no handshake, every unit accumulating with no event or token taken or stalled on a full
        FIFO downstream, the input unit stalled or idle, no FIFO moving an entry to its output register. Those
        cycles last until the first busy walker frees up (for a half-rate unit: its first own cycle after that).
        ``plans`` has, for a half-rate unit between its cycles, what it would decide if it advanced."""
        if writes or reads:
            return 0
        if not (stall_in or (not inp["scanning"] and not inp["p_valid"])):
            return 0
        for p, u in units.items():
            plan = plans[p]
            if u["state"] == "ACC":
                if plan:
                    return 0
            elif u["state"] == "UPDATE":
                if plan["sent"] or plan["advance"]:  # a stalled update pass waits for room downstream
                    return 0
            elif u["state"] != "STEP_END" or plan["token_out"]:
                return 0
        if any(f.depth > 1 and f.inner and f.out is None for f in fifos.values()):
            return 0
        waits = []
        for p, u in units.items():
            for left in u["left"].values():
                if left < 2:
                    continue
                if p not in self.half_rate:
                    waits.append(left - 1)
                else:  # its (left)-th own cycle from now, the first in which the walker is free
                    waits.append(2 * (left - 1) + (0 if cycle % 2 == 1 else 1))
        return min(waits) if waits else 0

    def _decide(self, p, u, fifos, hand, reads, cycle, emissions, result) -> dict:
        """This cycle's combinational decisions of layer unit p."""
        pop = self.net.populations[p]
        plan: dict = {}
        left = u["left"]
        all_free = all(v <= 1 for v in left.values())
        if u["state"] == "ACC":
            source, ks = self.groups[p][u["group"]]
            head = fifos[(source, p)]
            if head.out is not None:
                if head.out == _TOKEN:
                    if all_free:
                        reads.add((source, p))
                        plan["token"] = True
                elif all_free:
                    k = ks[u["turn"]]
                    plan["accept"] = (k, int(self.costs[p][k][head.out]), int(self.ops[p][k][head.out]))
                    if u["turn"] == len(ks) - 1:
                        reads.add((source, p))
        elif u["state"] == "UPDATE":
            s3 = u["s"][-1]
            lif = pop.kind == "lif"
            if s3 is None:
                handing = 0
            elif lif:
                handing = len(emissions[p][u["step"]].get(s3, ()))
            else:
                handing = int(self.lanes_live[p][s3]) if u["step"] == self.T - 1 else 0
            pending = u["pending"]
            sent = False
            if pending:
                # the results stream is always ready here, once every population nobody reads has finished
                sent = hand(p, pending[0]) if lif else all(len(result.step_ends[q]) == self.T for q in self.dead)
            free = not pending or (sent and len(pending) == 1)
            plan["sent"] = sent
            plan["advance"] = s3 is None or handing == 0 or free
            plan["handing"] = handing
            plan["drained"] = all(word is None for word in u["s"]) and not pending
            if not lif and sent and pending[0] == pop.size - 1:
                plan["done"] = True
        elif u["state"] == "STEP_END":
            plan["token_out"] = hand(p, _TOKEN)
        return plan

    def _tick(self, p, u, plan, emissions, result, cycle) -> None:
        """The clock edge of layer unit p."""
        pop = self.net.populations[p]
        T = self.T
        for k in u["left"]:
            if u["left"][k] > 0:
                u["left"][k] -= 1
        state = u["state"]
        if state == "ACC":
            if "accept" in plan:
                k, n, ops = plan["accept"]
                u["left"][k] = n
                result.updates[p] += n
                result.synaptic_ops[p] += ops
                _, ks = self.groups[p][u["group"]]
                u["turn"] = 0 if u["turn"] == len(ks) - 1 else u["turn"] + 1
            if plan.get("token"):
                if u["group"] == len(self.groups[p]) - 1:
                    u["group"] = 0
                    u["u_run"] = True
                    u["state"] = "UPDATE"
                else:
                    u["group"] += 1
        elif state == "UPDATE":
            s = u["s"]
            if plan["sent"]:
                u["pending"].popleft()
            if s[-1] is not None and plan["advance"] and plan["handing"]:
                if pop.kind == "lif":
                    u["pending"] = deque(emissions[p][u["step"]][s[-1]])
                else:
                    P = self.lanes[p]
                    c, h, w = grid(pop)
                    g, yx = divmod(s[-1], h * w)
                    u["pending"] = deque((g * P + b) * h * w + yx for b in range(plan["handing"]))
            if plan["advance"]:
                issue = u["u_addr"] if u["u_run"] and u["u_addr"] != self.words[p] else None
                u["s"] = [issue] + s[:-1]
                if u["u_run"]:
                    if u["u_addr"] != self.words[p]:
                        u["u_addr"] += 1
                    else:
                        u["u_run"] = False
            if not u["u_run"] and plan["drained"]:
                u["u_addr"] = 0
                if pop.kind == "lif":
                    u["state"] = "STEP_END"
                else:
                    u["state"] = "NEXT"
                    result.step_ends[p].append(cycle)
        elif state == "STEP_END":
            if plan["token_out"]:
                u["state"] = "NEXT"
                result.step_ends[p].append(cycle)
        else:  # NEXT_STEP
            u["step"] = 0 if u["step"] == T - 1 else u["step"] + 1
            u["state"] = "ACC"
        if state != "UPDATE":
            # the update pipeline's registers shift in every state (they hold nothing outside UPDATE)
            u["s"] = [None] + u["s"][:-1]
