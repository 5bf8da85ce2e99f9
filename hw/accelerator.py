"""The time-stepped, event-driven LIF accelerator, generated from a network image.

An input unit replays the image as graded events once per time step; one layer unit per population accumulates
the events of all its projections' sources into membrane memory and then updates, fires and streams its own
spikes to every later unit that reads them (a fan-out with one FIFO per reader). A layer whose membrane the plan
(``LanePlan``) puts in single-port SPRAM runs at half rate (``HalfRateLayerUnit``). docs/architecture.md explains
the schedule, why it cannot deadlock, the cycle cost and the memory budget. Torch-free on purpose.
"""

from __future__ import annotations

import functools
import operator

from amaranth.hdl import Module, Mux, Signal, unsigned, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from spikeforge.netimage import Network

from .layers import (DEFAULT_MAX_LANES, EventFanout, HalfRateLayerUnit, InputUnit, LayerUnit, channel_words,
                     event_layout, grid, index_bits, lane_limit, projection_groups, weight_words)
from .spram import SPRAM_BLOCKS, spram_blocks, uses_spram

__all__ = ["Accelerator", "UnsupportedNetworkError", "check_supported", "consumers", "estimate_memory",
           "ice40_ebr_blocks", "choose_lanes", "choose_spram", "LanePlan", "DEFAULT_MAX_ACC_BITS",
           "DEFAULT_MAX_LANES"]

DEFAULT_MAX_ACC_BITS = 32


class UnsupportedNetworkError(ValueError):
    """A valid network image that this generator cannot build; the message names the population."""


def check_supported(net: Network, max_acc_bits: int = DEFAULT_MAX_ACC_BITS) -> None:
    """Raise UnsupportedNetworkError unless this generator can build ``net``.

    Every topology the file format allows is built: a population may receive any number of conv2d (any kernel,
    stride, padding) and dense projections from any earlier populations, and a population's events may feed any
    number of later ones. What remains refused is an accumulator wider than ``max_acc_bits``.
    """
    for i, pop in enumerate(net.populations[1:], 1):
        if pop.acc_bits > max_acc_bits:
            raise UnsupportedNetworkError(
                f"population {i} ('{pop.name}') needs a {pop.acc_bits}-bit accumulator, wider than this "
                f"generator's max_acc_bits={max_acc_bits}; retrain with narrower weights or inputs, or raise "
                f"max_acc_bits")


def consumers(net: Network) -> dict[int, list[int]]:
    """For every population, the later populations that read its events (one event stream each, however many
    projections they take from it), in population order. The readout's list is empty."""
    readers: dict[int, list[int]] = {i: [] for i in range(len(net.populations))}
    for p, pop in enumerate(net.populations[1:], 1):
        for source, _ in projection_groups(pop):
            readers[source].append(p)
    return readers


class LanePlan(dict):
    """The plan of a design: ``{population index: lanes}`` (a dict, so it goes wherever lanes go) and where the
    memories that may be SPRAM live.

    ``spram``: the populations whose membranes are in single-port SPRAM (``HalfRateLayerUnit``: half rate);
    ``pixel_list_spram``: whether the input's pixel list is SPRAM (on an iCE40 UltraPlus; block RAM when False).
    ``spikeforge.hw.lanes.plan_lanes`` makes one; ``Accelerator`` and ``CycleModel`` read it from ``lanes``.
    """

    def __init__(self, lanes=(), *, spram=(), pixel_list_spram: bool = True):
        super().__init__(lanes)
        self.spram = frozenset(spram)
        self.pixel_list_spram = bool(pixel_list_spram)

    def __repr__(self):
        return (f"LanePlan({dict(self)!r}, spram={sorted(self.spram)!r}, "
                f"pixel_list_spram={self.pixel_list_spram!r})")

    def __eq__(self, other):
        if isinstance(other, LanePlan):
            return (dict(self) == dict(other) and self.spram == other.spram
                    and self.pixel_list_spram == other.pixel_list_spram)
        return dict.__eq__(self, other) if not self.spram and self.pixel_list_spram else False

    __hash__ = None

    def describe(self, net: Network) -> str:
        """One line: the lanes per layer, then what differs from the usual placement (membranes in SPRAM, the
        pixel list in block RAM)."""
        text = ", ".join(f"{net.populations[p].name} {n}" for p, n in self.items())
        if self.spram:
            text += ("; membranes in SPRAM (half rate): "
                     + ", ".join(net.populations[p].name for p in sorted(self.spram)))
        if not self.pixel_list_spram:
            text += "; pixel list in block RAM"
        return text


def choose_spram(net: Network, spram) -> frozenset[int]:
    """The populations named by ``spram`` (indices or names of layers; None: none), as a set of indices; an
    unknown name or the input is refused with a sentence naming it."""
    if spram is None:
        return frozenset()
    pops = net.populations
    names = {pop.name: p for p, pop in enumerate(pops)}
    chosen = set()
    for key in spram:
        p = names.get(key, key)
        if not isinstance(p, int) or not 1 <= p < len(pops):
            raise UnsupportedNetworkError(f"a membrane in SPRAM was asked for {key!r}, which is not a layer of this "
                                          f"network (layers: {', '.join(pop.name for pop in pops[1:])})")
        chosen.add(p)
    return frozenset(chosen)


def choose_lanes(net: Network, lanes=None, *, max_lanes: int = DEFAULT_MAX_LANES) -> dict[int, int]:
    """Output-channel lanes per non-input population: ``{population index: lanes}``.

    ``lanes`` may be None (every population gets as many lanes as it has channels, at most ``max_lanes``), one
    int for all populations (capped at each population's ``lane_limit``), or a dict from population index or name
    to lanes (the others as for None). A lane count outside 1 .. ``lane_limit`` for a named population is refused
    with a sentence naming it. A ``LanePlan`` comes back as a LanePlan with the same memory placement.
    """
    if isinstance(lanes, LanePlan):
        return LanePlan(choose_lanes(net, dict(lanes), max_lanes=max_lanes),
                        spram=choose_spram(net, lanes.spram), pixel_list_spram=lanes.pixel_list_spram)
    pops = net.populations
    chosen = {p: min(lane_limit(pop), max_lanes) for p, pop in enumerate(pops) if p > 0}
    if lanes is None:
        return chosen
    if not isinstance(lanes, dict):
        count = operator.index(lanes)
        if count < 1:
            raise UnsupportedNetworkError(f"lanes must be at least 1, not {count}")
        return {p: min(lane_limit(pops[p]), count) for p in chosen}
    names = {pop.name: p for p, pop in enumerate(pops)}
    for key, count in lanes.items():
        p = names.get(key, key)
        if p not in chosen:
            raise UnsupportedNetworkError(f"lanes were given for {key!r}, which is not a layer of this network "
                                          f"(layers: {', '.join(pop.name for pop in pops[1:])})")
        limit = lane_limit(pops[p])
        if not 1 <= operator.index(count) <= limit:
            raise UnsupportedNetworkError(f"population {p} ('{pops[p].name}') can use 1 to {limit} lanes "
                                          f"(its output channels), not {count}")
        chosen[p] = operator.index(count)
    return chosen


# iCE40 EBR (SB_RAM40_4K) configurations: depth x width of one 4-kbit block
ICE40_EBR_CONFIGS = ((256, 16), (512, 8), (1024, 4), (2048, 2))


def ice40_ebr_blocks(depth: int, width: int) -> int:
    """Fewest iCE40 4-kbit EBR blocks that hold a depth x width memory (one configuration for all blocks)."""
    return min(-(-depth // d) * -(-width // w) for d, w in ICE40_EBR_CONFIGS)


def estimate_memory(net: Network, fifo_depth: int = 4, lanes=None) -> list[dict]:
    """Every memory the generated accelerator holds: ``name``, ``depth``, ``width``, ``bits`` (= depth x width),
    ``kind`` (``"ram"``, written while running, or ``"rom"``, fixed contents) and ``ice40_ebr``, the EBR blocks it would take if mapped to iCE40 block RAM (Yosys may put the smallest ones,
    the params and FIFOs, into logic instead).

    The input's pixel list, and per population, with ``lanes`` as ``choose_lanes`` takes it: the membrane
    (``channel_words x H x W`` words of lanes x acc_bits), one weight ROM per projection with lanes x wbits per
    word (``name.weights``, or ``name.p{k}.weights`` when the population has several projections; an identity
    shortcut, a diagonal 1x1 conv, stores only its diagonal), the params ROM, and one event FIFO per source
    population it reads (``name.fifo``, or ``name.fifo<-source`` when it reads several; Amaranth's
    SyncFIFOBuffered keeps ``fifo_depth - 1`` entries in memory and one in its output register). A membrane's
    row has ``transparent``: its read port sees the write of the same cycle. Pure arithmetic over the
    network image; nothing is elaborated.
    """
    pops = net.populations
    per_pop = choose_lanes(net, lanes)
    position = event_layout(net.input)
    # a one-channel input's channel bit is constant 0: synthesis drops it from the stored entries
    c_bits = position["c"].shape.width if net.input.shape[0] > 1 else 0
    rows = [{"name": "input.pixel_list", "depth": net.input.size, "kind": "ram",
             "width": c_bits + position["y"].shape.width + position["x"].shape.width + net.input.bits}]
    for p, pop in enumerate(pops[1:], 1):
        P = per_pop[p]
        c, h, w = grid(pop)
        rows.append({"name": f"{pop.name}.membrane", "depth": channel_words(pop, P) * h * w,
                     "width": P * pop.acc_bits, "kind": "ram", "transparent": True})
        several = len(pop.projections) > 1
        for k, proj in enumerate(pop.projections):
            words = weight_words(proj, pop, P)
            rows.append({"name": f"{pop.name}.p{k}.weights" if several else f"{pop.name}.weights",
                         "depth": len(words), "width": len(words[0]) * proj.wbits, "kind": "rom"})
        rows.append({"name": f"{pop.name}.params", "depth": channel_words(pop, P),
                     "width": P * (pop.acc_bits + pop.vbits + 1), "kind": "rom"})
        groups = projection_groups(pop)
        for source, _ in groups:
            rows.append({"name": f"{pop.name}.fifo<-{pops[source].name}" if len(groups) > 1 else f"{pop.name}.fifo",
                         "depth": fifo_depth - 1, "width": event_layout(pops[source]).size, "kind": "ram"})
    for row in rows:
        row["bits"] = row["depth"] * row["width"]
        row["ice40_ebr"] = ice40_ebr_blocks(row["depth"], row["width"])
    return rows


class Accelerator(wiring.Component):
    """A spiking network in gateware: pixels in, the readout's potentials out, bit-exact with sw/reference.py.

    Parameters
    ----------
    net : Network
        Any valid network image: a population may receive several projections (conv2d, dense) from any earlier
        populations, whose currents add before its one clamp and fire (residual joins, skip connections).
    time_steps : int or None
        Steps per image; ``net.time_steps`` by default.
    max_acc_bits : int
        Refuse populations whose ``acc_bits`` is wider.
    fifo_depth : int
        Depth of the event FIFOs: one per (reader, source population) pair, at least 1.
    lanes : None, int, dict or LanePlan
        Output-channel lanes per population (``choose_lanes``): each layer updates that many neurons per cycle.
        A ``LanePlan`` (``spikeforge.hw.lanes.plan_lanes``) also says which membranes are SPRAM and where the
        pixel list is.
    spram : None or iterable of population indices or names
        The layers whose membranes go to single-port SPRAM: each becomes a ``HalfRateLayerUnit`` (two clock
        cycles per unit cycle; same spikes). None: the LanePlan's choice (none for a plain dict).
    pixel_list_spram : None or bool
        Whether the input's pixel list may be SPRAM (on an iCE40 UltraPlus); None: the LanePlan's choice (True
        for a plain dict).

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

    Throughput: the input unit replays ``nonzero + 1`` cycles per step; a layer spends one cycle per membrane
    word that an event lands on, for each of its projections (taps that miss cost nothing), one cycle per
    source's end token, and about ``words + 5`` cycles per update pass plus one per extra spike in a word; the
    layers overlap (a layer accumulates step t+1 while its readers still process step t). A half-rate layer
    (``spram``) takes two clock cycles for each of its own. docs/architecture.md gives the exact cycle model
    (``spikeforge perf``).
    """

    def __init__(self, net: Network, time_steps: int | None = None, *, max_acc_bits: int = DEFAULT_MAX_ACC_BITS,
                 fifo_depth: int = 4, lanes=None, spram=None, pixel_list_spram: bool | None = None):
        try:
            check_supported(net, max_acc_bits)
            self.lanes = choose_lanes(net, lanes)
            plan = lanes if isinstance(lanes, LanePlan) else LanePlan()
            self.spram = choose_spram(net, plan.spram if spram is None else spram)
            self.pixel_list_spram = plan.pixel_list_spram if pixel_list_spram is None else bool(pixel_list_spram)
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
        if uses_spram(platform):
            self._check_spram_blocks(platform)
        m = Module()
        net, T = self.net, self.time_steps
        pops = net.populations

        m.submodules.input = input_unit = InputUnit(net.input, T, pixel_list_spram=self.pixel_list_spram)

        units = {}
        for p in range(1, len(pops)):
            unit = HalfRateLayerUnit if p in self.spram else LayerUnit
            units[p] = m.submodules[f"layer{p}"] = unit(net, p, T, self.lanes[p])
        readout = units[len(pops) - 1]

        # the half-rate units advance when `phase` is high: every other cycle, low in the first cycle of an image
        # (the cycle after its last pixel), so that an image's cycle count does not depend on what came before;
        # forcing it low never makes two consecutive high cycles. Pixels wait until their membranes are cleared.
        ready = Signal(init=1, name="membranes_cleared")
        if self.spram:
            phase = Signal(name="half_rate_phase")
            m.d.sync += phase.eq(Mux(input_unit.loaded, 0, ~phase))
            for p in sorted(self.spram):
                m.d.comb += units[p].phase.eq(phase)
            m.d.comb += ready.eq(functools.reduce(operator.and_, [units[p].cleared for p in sorted(self.spram)]))
        m.d.comb += [
            input_unit.pixels.payload.eq(self.pixels.payload),
            input_unit.pixels.valid.eq(self.pixels.valid & ready),
            self.pixels.ready.eq(input_unit.pixels.ready & ready),
        ]

        # every producer's stream goes to all its readers, one FIFO each
        for q, readers in consumers(net).items():
            if pops[q].kind == "readout":
                continue
            producer = input_unit.events if q == 0 else units[q].spikes
            if readers:
                fanout = m.submodules[f"fanout{q}"] = EventFanout(event_layout(pops[q]), len(readers),
                                                                   self.fifo_depth)
                wiring.connect(m, producer, fanout.events)
                for i, p in enumerate(readers):
                    wiring.connect(m, fanout.outputs[i], units[p].events_from(q))
            else:
                m.d.comb += producer.ready.eq(1)  # nobody reads this population: its events only show on the trace
            if pops[q].kind == "lif":
                trace = getattr(self, f"spikes_p{q}")
                handed = producer.valid & producer.ready
                m.d.comb += [
                    trace.valid.eq(handed & ~producer.payload.end),
                    trace.step_end.eq(handed & producer.payload.end),
                    trace.index.eq(producer.payload.index),
                ]
        # A lif population nobody reads (its spikes reach no readout) would still be finishing its last step when
        # the readout is done: the results wait until it has handed on its T-th end token, so that an image is
        # only over when every population is (the randomized regression's first find, docs/verification.md).
        dead = [q for q, readers in consumers(net).items() if pops[q].kind == "lif" and not readers]
        finished = Signal(init=1, name="dead_finished")
        if dead:
            checks = []
            for q in dead:
                ends = Signal(range(T + 1), name=f"ends_p{q}")
                with m.If(readout.done):
                    m.d.sync += ends.eq(0)
                with m.Elif(units[q].spikes.valid & units[q].spikes.ready & units[q].spikes.payload.end):
                    m.d.sync += ends.eq(ends + 1)
                checks.append(ends == T)
            m.d.comb += finished.eq(functools.reduce(operator.and_, checks))
        m.d.comb += [
            self.results.valid.eq(readout.results.valid & finished),
            self.results.payload.eq(readout.results.payload),
            readout.results.ready.eq(self.results.ready & finished),
            input_unit.release.eq(readout.done),
        ]

        count = Signal(32, name="cycle_count")
        m.d.sync += count.eq(count + 1)
        with m.If(input_unit.loaded):
            m.d.sync += [self.busy.eq(1), count.eq(0)]
        with m.If(readout.done):
            m.d.sync += [self.busy.eq(0), self.cycles.eq(count + 1)]
        return m

    def spram_blocks(self) -> int:
        """SB_SPRAM256KA blocks this design takes on an iCE40 UltraPlus: the pixel list's (if there) and one
        ``ceil(width / 16) x ceil(depth / 16384)`` tiling per membrane in ``spram``."""
        rows = {r["name"]: r for r in estimate_memory(self.net, lanes=dict(self.lanes))}
        names = ["input.pixel_list"] if self.pixel_list_spram else []
        names += [f"{self.net.populations[p].name}.membrane" for p in sorted(self.spram)]
        return sum(spram_blocks(rows[n]["width"], rows[n]["depth"]) for n in names)

    def _check_spram_blocks(self, platform) -> None:
        available = SPRAM_BLOCKS[platform.device]
        needed = self.spram_blocks()
        if needed > available:
            what = ", ".join(self.net.populations[p].name for p in sorted(self.spram))
            also = " and the pixel list" if self.pixel_list_spram else ""
            raise UnsupportedNetworkError(
                f"the membranes of {what}{also} need {needed} SPRAM blocks of 16K x 16 in SPRAM, the "
                f"{platform.device} has {available}; put fewer membranes in SPRAM (or the pixel list in block RAM), "
                f"or give them fewer lanes")
