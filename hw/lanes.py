"""How many output-channel lanes each layer gets on a given device, and which memories go to SPRAM: the plan.

Lanes buy cycles with block RAM bandwidth and logic: a layer with P lanes reads and writes P membranes per cycle,
so its membrane and weight words are P times wider, and block RAMs give a fixed width per block (16 bits on the
iCE40), while each lane adds an adder and an update datapath. ``plan_lanes`` grows the lanes of the layer with the
most work per step first, as long as the design still fits the device's block RAM and logic estimates, and stops
when no layer can grow. On the iCE40 UP5K, when even one lane per layer does not fit its 30 block RAMs,
``place_memories`` moves membranes into the 4 SPRAM blocks (half-rate layer units) and may move the pixel list
from SPRAM to block RAM to make room; the plan is a ``LanePlan``. ``parse_lanes`` reads the command line's
``--lanes``. Torch-free.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from spikeforge.netimage import Network

from .accelerator import LanePlan, UnsupportedNetworkError, choose_lanes, estimate_memory
from .board import board_memories
from .layers import FanoutWalker, channel_words, grid, is_diagonal, lane_limit
from .spram import spram_blocks

__all__ = ["Device", "DEVICES", "plan_lanes", "place_memories", "parse_lanes", "estimate_logic",
           "estimate_ram_blocks", "estimate_spram_blocks", "spram_memories", "multipliers", "ram_blocks",
           "memory_blocks"]


@dataclass(frozen=True)
class Device:
    """What the lane plan may spend: block RAMs (``ram_configs``: depth x width shapes of one block), logic
    cells and multipliers, and what Yosys weighs when it chooses where a memory goes (``block_cost`` per block,
    LUT RAM or not, how a ROM fills a block)."""
    name: str
    ram_blocks: int
    ram_configs: tuple[tuple[int, int], ...]
    logic_cells: int
    multipliers: int  # DSP blocks: one per lane of a projection from the pixels
    # Yosys memory_libmap's cost of one block (techlibs brams*.txt); a bit in flip-flops costs 1 (1/16 in a ROM)
    block_cost: int = 64
    # LUT RAM (ECP5 TRELLIS_DPR16X4: 16 x 4 bits, cost 4) for RAMs; ROMs never go there (prune_rom)
    lut_ram: bool = False
    # bits one block holds of a ROM when Yosys may spread its words over every bit of the block, the 9th and 18th
    # (parity) bits included (ECP5 DP16KD: 18 kbit; memory_blocks allows two blocks more); None: a ROM takes whole
    # block shapes like a RAM
    rom_block_bits: int | None = None
    # the share of the logic the plan fills at most: place and route needs some slack
    logic_fill: float = 0.96
    # blocks kept free by the lane plan: place and route needs some slack
    ram_margin: int = 1
    spram_blocks: int = 0  # single-port 16K x 16 blocks (iCE40 UltraPlus SPRAM) for the pixel list and membranes


DEVICES = {
    "icebreaker": Device("iCE40 UP5K", 30, ((256, 16), (512, 8), (1024, 4), (2048, 2)), 5280, 8, spram_blocks=4),
    # DP16KD: 16384 x 1, 8192 x 2, 4096 x 4 (16 kbit usable), 2048 x 9, 1024 x 18 and, as PDPW16KD, 512 x 36
    # (18 kbit)
    "ulx3s-85f": Device("ECP5-85F", 208, ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1)),
                        83640, 156, block_cost=128, lut_ram=True, rom_block_bits=18 * 1024, ram_margin=4),
}

# logic cells: a fixed part for up to three layer units, a part per further unit (its walkers, update pipeline,
# emitter, FIFOs) and a part per lane-bit of datapath (accumulate adder, update pipeline), fitted to the UP5K builds
# of the demo network (2,237 cells at one lane per layer, 5,026 at lanes 8 / 8 / 5, with -dsp) and of ResNet-6 x0.25
# (6 units, 5,177 cells at one lane; the same rule gives ResNet-8 x0.125, 8 units, 7,030 where place and route
# counted 5,949: too many rather than too few)
_LOGIC_BASE, _LOGIC_PER_UNIT, _LOGIC_PER_LANE_BIT = 1780, 820, 10.6
# a half-rate unit's SPRAM adaptor: the held word and its multiplexer per bit, the address registers, the clear
# counter and the enables (ResNet-6 x0.375 at one lane with three of them: 5,743 cells, about 170 more each than
# the rule above without them)
_LOGIC_SPRAM_UNIT, _LOGIC_PER_SPRAM_BIT = 150, 1.2


def ram_blocks(depth: int, width: int, device: Device) -> int:
    """Fewest blocks of one shape that hold a depth x width memory (each shape's usable bits: a 4-bit-wide
    DP16KD holds 16 kbit, a 9-bit-wide one 18 kbit)."""
    return min(-(-depth // d) * -(-width // w) for d, w in device.ram_configs)


def memory_blocks(row: dict, device: Device) -> int:
    """Block RAMs that synthesis gives one memory of ``estimate_memory`` (or ``board_memories``).

    Yosys (memory_libmap) puts a memory where it costs least: in flip-flops (1 per bit, 1/16 per bit of a ROM),
    in LUT RAM (ECP5, RAMs only: 4 per 16 x 4 cell, plus a read multiplexer of ``width`` bits for each further
    16 words) or in blocks (``block_cost`` each, the fewest blocks of one
    shape; a ROM on the ECP5 may fill every bit of its blocks: at most two more than its bits fill, a rule fitted
    to the eight large ROMs of the committed networks' builds, 1.6 to 50 blocks each; a read
    port that must see the same cycle's write adds a bypass of ``width`` bits of logic). A tie goes to logic.
    What is in SPRAM (``spram_memories``) is the caller's to leave out.
    """
    depth, width, bits, rom = row["depth"], row["width"], row["bits"], row.get("kind") == "rom"
    if not bits:
        return 0
    blocks = ram_blocks(depth, width, device)
    if rom and device.rom_block_bits:
        blocks = min(blocks, bits // device.rom_block_bits + 2)
    in_blocks = blocks * device.block_cost + (width if row.get("transparent") else 0)
    in_logic = bits / 16 if rom else bits
    if device.lut_ram and not rom:
        banks = -(-depth // 16)
        in_logic = min(in_logic, banks * -(-width // 4) * 4 + (banks - 1) * width)
    return blocks if in_blocks < in_logic else 0


def spram_memories(net: Network, lanes: dict[int, int]) -> set[str]:
    """The names (as ``estimate_memory`` gives them) of the memories that are SPRAM on an iCE40 UltraPlus: a
    LanePlan's membranes and, where it says so, the pixel list; for a plain dict the pixel list."""
    if not isinstance(lanes, LanePlan):
        return {"input.pixel_list"}
    names = {f"{net.populations[p].name}.membrane" for p in lanes.spram}
    if lanes.pixel_list_spram:
        names.add("input.pixel_list")
    return names


def estimate_ram_blocks(net: Network, lanes: dict[int, int], device: Device) -> int:
    """Block RAMs of the board design with these lanes: :func:`memory_blocks` of the accelerator's memories and
    the board core's FIFOs, leaving out what is SPRAM (``spram_memories``, on a device that has SPRAM). Equal to
    what nextpnr reported for the committed networks' builds (tests/hw/test_lanes.py)."""
    rows = estimate_memory(net, lanes=dict(lanes)) + board_memories(net)
    elsewhere = spram_memories(net, lanes) if device.spram_blocks else set()
    return sum(memory_blocks(r, device) for r in rows if r["name"] not in elsewhere)


def estimate_spram_blocks(net: Network, lanes: dict[int, int]) -> int:
    """SPRAM blocks of the memories ``spram_memories`` names: ``ceil(width / 16) x ceil(depth / 16384)`` each."""
    names = spram_memories(net, lanes)
    return sum(spram_blocks(r["width"], r["depth"]) for r in estimate_memory(net, lanes=dict(lanes))
               if r["name"] in names)


def estimate_logic(net: Network, lanes: dict[int, int]) -> int:
    """Logic cells (LUT4 + flip-flop) of the board top with these lanes (and a LanePlan's SPRAM adaptors): a rough
    linear fit (within about 5% on the chain builds it was fitted to, 18% high on a ResNet-8); place and route has
    the last word."""
    lane_bits = sum(P * net.populations[p].acc_bits for p, P in lanes.items())
    cells = _LOGIC_BASE + _LOGIC_PER_UNIT * max(0, len(lanes) - 3) + _LOGIC_PER_LANE_BIT * lane_bits
    for p in getattr(lanes, "spram", ()):
        cells += _LOGIC_SPRAM_UNIT + _LOGIC_PER_SPRAM_BIT * lanes[p] * net.populations[p].acc_bits
    return int(cells)


def _work(net: Network, lanes: dict[int, int], activity: float, pixel_fill: float) -> dict[int, float]:
    """Expected cycles per step of each layer: the words its events land on, plus its update pass, with a fraction
    ``activity`` of each source's neurons spiking per step (``pixel_fill`` of the pixels nonzero)."""
    pops = net.populations
    work = {}
    for p, P in lanes.items():
        pop = pops[p]
        c, h, w = grid(pop)
        words = channel_words(pop, P) * h * w
        total = float(words)
        for proj in pop.projections:
            src = pops[proj.source]
            events = src.size * (pixel_fill if src.kind == "input" else activity)
            if is_diagonal(proj):
                per_event = 1.0
            elif proj.kind == "conv2d":
                _, _, kh, kw = proj.weight.shape
                _, hs, ws = grid(src)
                rows = sum(FanoutWalker.landing_run(y, proj.padding[0], proj.stride[0], kh, h)[1] for y in range(hs))
                cols = sum(FanoutWalker.landing_run(x, proj.padding[1], proj.stride[1], kw, w)[1] for x in range(ws))
                per_event = rows / hs * cols / ws * channel_words(pop, P)
            else:
                per_event = float(words)
            total += events * per_event
        work[p] = total
    return work


def _bottleneck(plan: LanePlan, work: dict[int, float]) -> float:
    """The expected cycles per step of the slowest unit: a half-rate unit's work counts twice."""
    return max(w * (2 if p in plan.spram else 1) for p, w in work.items())


def place_memories(net: Network, lanes: dict[int, int], device: Device, *, activity: float = 0.1,
                   pixel_fill: float = 0.25) -> LanePlan | None:
    """Where the memories go for these lanes on ``device``: a LanePlan whose block RAM estimate fits, or None.

    Without SPRAM on the device, or when the design fits the block RAM with no membrane in SPRAM, the pixel list
    stays SPRAM (where there is some) and every membrane block RAM. Otherwise every set of membranes whose SPRAM
    tilings (``ceil(width / 16) x ceil(depth / 16384)`` blocks each) fit the SPRAM left over, with the pixel list
    in SPRAM or in block RAM, is tried; of those whose block RAM then fits, the plan keeps the slowest unit fastest
    (``_work``, a half-rate unit's counted twice), then uses the fewest half-rate units, then keeps the pixel list
    in SPRAM. A membrane that synthesis puts in logic never moves.
    """
    lanes = dict(lanes)
    budget = device.ram_blocks - device.ram_margin
    plain = LanePlan(lanes)
    if estimate_ram_blocks(net, plain, device) <= budget:
        return plain
    if not device.spram_blocks:
        return None
    rows = {r["name"]: r for r in estimate_memory(net, lanes=lanes)}
    base = estimate_ram_blocks(net, plain, device)
    pixels = rows["input.pixel_list"]
    pixel_spram, pixel_ebr = spram_blocks(pixels["width"], pixels["depth"]), memory_blocks(pixels, device)
    saving, cost = {}, {}
    for p in lanes:
        row = rows[f"{net.populations[p].name}.membrane"]
        if memory_blocks(row, device) and spram_blocks(row["width"], row["depth"]) <= device.spram_blocks:
            saving[p] = memory_blocks(row, device)
            cost[p] = spram_blocks(row["width"], row["depth"])
    work = _work(net, lanes, activity, pixel_fill)
    best, best_key = None, None
    for pixels_in_spram in (True, False):
        left = device.spram_blocks - (pixel_spram if pixels_in_spram else 0)
        ebr = base + (0 if pixels_in_spram else pixel_ebr)
        for size in range(1, min(left, len(saving)) + 1):
            for chosen in itertools.combinations(sorted(saving), size):
                if sum(cost[p] for p in chosen) > left or ebr - sum(saving[p] for p in chosen) > budget:
                    continue
                plan = LanePlan(lanes, spram=chosen, pixel_list_spram=pixels_in_spram)
                key = (_bottleneck(plan, work), size, not pixels_in_spram)
                if best_key is None or key < best_key:
                    best, best_key = plan, key
    return best


def plan_lanes(net: Network, board: str, *, activity: float = 0.1, pixel_fill: float = 0.25) -> LanePlan:
    """The plan for ``board``: starting from one lane each, double the lanes of the layer with the most expected
    work per step (``_work``) while the block RAM, logic and multiplier estimates still fit the device; a layer
    that cannot grow is left as it is and the next one is tried (and tried again after another layer grew: wider
    words can pack into fewer blocks).

    Where one lane per layer does not fit the block RAM, ``place_memories`` puts membranes in SPRAM (half-rate
    units, whose work counts twice) and a doubling is kept only while a placement fits and the slowest unit gets
    no slower. A design that fits nowhere comes back with one lane per layer and the placement that saves the
    most block RAM, for the pre-check to refuse with the figures."""
    device = DEVICES[board]
    lanes = {p: 1 for p in range(1, len(net.populations))}
    plan = _fits(net, lanes, device, activity, pixel_fill)
    if plan is None:
        return _fallback(net, lanes, device)
    with_spram = bool(plan.spram) or not plan.pixel_list_spram
    fixed: set[int] = set()
    while True:
        work = _work(net, lanes, activity, pixel_fill)
        growable = [p for p in lanes if p not in fixed]
        if not growable:
            return plan
        p = max(growable, key=lambda q: work[q] * (2 if q in plan.spram else 1))
        limit = lane_limit(net.populations[p])
        grown = {**lanes, p: min(limit, lanes[p] * 2)}
        grown_plan = None if grown[p] == lanes[p] else _fits(net, grown, device, activity, pixel_fill)
        if grown_plan is not None and not with_spram and (grown_plan.spram or not grown_plan.pixel_list_spram):
            grown_plan = None  # the block RAM sufficed for one lane each: SPRAM membranes only buy lanes if needed
        if grown_plan is not None and with_spram and (
                _bottleneck(grown_plan, _work(net, grown, activity, pixel_fill)) > _bottleneck(plan, work)):
            grown_plan = None
        if grown_plan is None:
            fixed.add(p)
            continue
        lanes, plan, fixed = grown, grown_plan, set()


def multipliers(net: Network, lanes: dict[int, int]) -> int:
    """Pixel multipliers: one per lane of every projection from the input (spikes need none)."""
    return sum(P for p, P in lanes.items() for proj in net.populations[p].projections if proj.source == 0)


def _fits(net: Network, lanes: dict[int, int], device: Device, activity: float = 0.1,
          pixel_fill: float = 0.25) -> LanePlan | None:
    """The placement (``place_memories``) of these lanes if it and the logic and multipliers fit, else None."""
    plan = place_memories(net, lanes, device, activity=activity, pixel_fill=pixel_fill)
    if (plan is None or estimate_logic(net, plan) > device.logic_fill * device.logic_cells
            or multipliers(net, lanes) > device.multipliers):
        return None
    return plan


def _fallback(net: Network, lanes: dict[int, int], device: Device) -> LanePlan:
    """For a design that fits nowhere: one lane per layer, and where the block RAM is what does not fit, the
    placement that leaves the fewest block RAMs (greedily, the largest saving first), so that the pre-check's
    refusal names what is left."""
    plain = LanePlan(lanes)
    if not device.spram_blocks or estimate_ram_blocks(net, plain, device) <= device.ram_blocks - device.ram_margin:
        return plain  # the block RAM is not what fails (the logic or the multipliers are)
    rows = {r["name"]: r for r in estimate_memory(net, lanes=lanes)}
    left = device.spram_blocks - spram_blocks(rows["input.pixel_list"]["width"], rows["input.pixel_list"]["depth"])
    chosen = []
    for p in sorted(lanes, key=lambda q: -memory_blocks(rows[f"{net.populations[q].name}.membrane"], device)):
        row = rows[f"{net.populations[p].name}.membrane"]
        if memory_blocks(row, device) and spram_blocks(row["width"], row["depth"]) <= left:
            chosen.append(p)
            left -= spram_blocks(row["width"], row["depth"])
    return LanePlan(lanes, spram=chosen)


def parse_lanes(text: str | None, net: Network, board: str | None = None) -> dict[int, int]:
    """``--lanes``: "auto" (or None: the plan for ``board``, or one lane per output channel up to 16 without a
    board), a number for every layer, or "name=N,name=N" for named layers (the others as "auto"). With a board
    the result is a LanePlan, its memories placed for those lanes (``place_memories``)."""
    if text is None or text == "auto":
        return plan_lanes(net, board) if board else choose_lanes(net)
    if "=" not in text:
        try:
            count = int(text)
        except ValueError:
            raise UnsupportedNetworkError(f"--lanes {text!r} is not a number, 'auto' or name=N pairs") from None
        return _placed(net, choose_lanes(net, count), board)
    given = {}
    for part in text.split(","):
        name, _, count = part.partition("=")
        try:
            given[name.strip()] = int(count)
        except ValueError:
            raise UnsupportedNetworkError(f"--lanes: {part!r} is not name=N with a whole number N") from None
    checked = choose_lanes(net, given)  # refuses unknown names and impossible counts
    names = {pop.name: p for p, pop in enumerate(net.populations)}
    named = {names[name] for name in given}
    base = plan_lanes(net, board) if board else choose_lanes(net)
    return _placed(net, {p: checked[p] if p in named else base[p] for p in base}, board)


def _placed(net: Network, lanes: dict[int, int], board: str | None) -> dict[int, int]:
    """Lanes given by hand, with their memories placed on ``board`` (plain without a board)."""
    if board is None:
        return lanes
    device = DEVICES[board]
    return place_memories(net, lanes, device) or _fallback(net, lanes, device)
