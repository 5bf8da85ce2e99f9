"""How many output-channel lanes each layer gets on a given device: the lane plan.

Lanes buy cycles with block RAM bandwidth and logic: a layer with P lanes reads and writes P membranes per cycle,
so its membrane and weight words are P times wider, and block RAMs give a fixed width per block (16 bits on the
iCE40), while each lane adds an adder and an update datapath. ``plan_lanes`` grows the lanes of the layer with the
most work per step first, as long as the design still fits the device's block RAM and logic estimates, and stops
when no layer can grow. ``parse_lanes`` reads the command line's ``--lanes``. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from spikeforge.netimage import Network

from .accelerator import UnsupportedNetworkError, choose_lanes, estimate_memory
from .board import board_memories
from .layers import FanoutWalker, channel_words, grid, is_diagonal, lane_limit

__all__ = ["Device", "DEVICES", "plan_lanes", "parse_lanes", "estimate_logic", "estimate_ram_blocks", "multipliers",
           "ram_blocks", "memory_blocks"]


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
    # (parity) bits included (ECP5 DP16KD: 18 kbit); None: a ROM takes whole block shapes like a RAM
    rom_block_bits: int | None = None
    # the input's pixel list is in SPRAM (iCE40 UltraPlus), not in block RAM
    pixel_list_in_spram: bool = False
    # the share of the logic the plan fills at most: place and route needs some slack
    logic_fill: float = 0.96
    # blocks kept free by the lane plan: place and route needs some slack
    ram_margin: int = 1


DEVICES = {
    "icebreaker": Device("iCE40 UP5K", 30, ((256, 16), (512, 8), (1024, 4), (2048, 2)), 5280, 8,
                         pixel_list_in_spram=True),
    # DP16KD: 16384 x 1, 8192 x 2, 4096 x 4 (16 kbit usable), 2048 x 9, 1024 x 18 and, as PDPW16KD, 512 x 36
    # (18 kbit)
    "ulx3s-85f": Device("ECP5-85F", 208, ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1)),
                        83640, 156, block_cost=128, lut_ram=True, rom_block_bits=18 * 1024, ram_margin=4),
}

# logic cells: a fixed part and a part per lane-bit of datapath (accumulate adder, update pipeline), fitted to the
# UP5K builds of the demo network (2,237 cells at one lane per layer, 5,026 at lanes 8 / 8 / 5, with -dsp)
_LOGIC_BASE, _LOGIC_PER_LANE_BIT = 1780, 10.6


def ram_blocks(depth: int, width: int, device: Device) -> int:
    """Fewest blocks of one shape that hold a depth x width memory (each shape's usable bits: a 4-bit-wide
    DP16KD holds 16 kbit, a 9-bit-wide one 18 kbit)."""
    return min(-(-depth // d) * -(-width // w) for d, w in device.ram_configs)


def memory_blocks(row: dict, device: Device) -> int:
    """Block RAMs that synthesis gives one memory of ``estimate_memory`` (or ``board_memories``).

    Yosys (memory_libmap) puts a memory where it costs least: in flip-flops (1 per bit, 1/16 per bit of a ROM),
    in LUT RAM (ECP5, RAMs only: 4 per 16 x 4 cell, plus a read multiplexer of ``width`` bits for each further
    16 words) or in blocks (``block_cost`` each, the fewest blocks of one
    shape; a ROM on the ECP5 may fill every bit of its blocks, so at most one more than its bits need; a read
    port that must see the same cycle's write adds a bypass of ``width`` bits of logic). The iCE40's pixel list
    is in SPRAM. A tie goes to logic.
    """
    if row["name"] == "input.pixel_list" and device.pixel_list_in_spram:
        return 0
    depth, width, bits, rom = row["depth"], row["width"], row["bits"], row.get("kind") == "rom"
    if not bits:
        return 0
    blocks = ram_blocks(depth, width, device)
    if rom and device.rom_block_bits:
        blocks = min(blocks, -(-bits // device.rom_block_bits) + 1)
    in_blocks = blocks * device.block_cost + (width if row.get("transparent") else 0)
    in_logic = bits / 16 if rom else bits
    if device.lut_ram and not rom:
        banks = -(-depth // 16)
        in_logic = min(in_logic, banks * -(-width // 4) * 4 + (banks - 1) * width)
    return blocks if in_blocks < in_logic else 0


def estimate_ram_blocks(net: Network, lanes: dict[int, int], device: Device) -> int:
    """Block RAMs of the board design with these lanes: :func:`memory_blocks` of the accelerator's memories and
    the board core's FIFOs. Equal to what nextpnr reported for the committed networks' builds
    (tests/hw/test_lanes.py)."""
    rows = estimate_memory(net, lanes=lanes) + board_memories(net)
    return sum(memory_blocks(r, device) for r in rows)


def estimate_logic(net: Network, lanes: dict[int, int]) -> int:
    """Logic cells (LUT4 + flip-flop) of the board top with these lanes: a rough linear fit, within about 5% on
    the builds it was fitted to; place and route has the last word."""
    lane_bits = sum(P * net.populations[p].acc_bits for p, P in lanes.items())
    return int(_LOGIC_BASE + _LOGIC_PER_LANE_BIT * lane_bits)


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


def plan_lanes(net: Network, board: str, *, activity: float = 0.1, pixel_fill: float = 0.25) -> dict[int, int]:
    """Lanes per layer for ``board``: starting from one lane each, double the lanes of the layer with the most
    expected work per step (``_work``) while the block RAM, logic and multiplier estimates still fit the device;
    a layer that cannot grow is left as it is and the next one is tried (and it is tried again after another
    layer grew)."""
    device = DEVICES[board]
    lanes = {p: 1 for p in range(1, len(net.populations))}
    fixed: set[int] = set()
    while True:
        work = _work(net, lanes, activity, pixel_fill)
        growable = [p for p in lanes if p not in fixed]
        if not growable:
            return lanes
        p = max(growable, key=lambda q: work[q])
        limit = lane_limit(net.populations[p])
        grown = {**lanes, p: min(limit, lanes[p] * 2)}
        if grown[p] == lanes[p] or not _fits(net, grown, device):
            fixed.add(p)
            continue
        # a layer that did not fit may fit after this one grew (wider words can pack into fewer blocks)
        lanes, fixed = grown, set()


def multipliers(net: Network, lanes: dict[int, int]) -> int:
    """Pixel multipliers: one per lane of every projection from the input (spikes need none)."""
    return sum(P for p, P in lanes.items() for proj in net.populations[p].projections if proj.source == 0)


def _fits(net: Network, lanes: dict[int, int], device: Device) -> bool:
    return (estimate_ram_blocks(net, lanes, device) <= device.ram_blocks - device.ram_margin
            and estimate_logic(net, lanes) <= device.logic_fill * device.logic_cells
            and multipliers(net, lanes) <= device.multipliers)


def parse_lanes(text: str | None, net: Network, board: str | None = None) -> dict[int, int]:
    """``--lanes``: "auto" (or None: the plan for ``board``, or one lane per output channel up to 16 without a
    board), a number for every layer, or "name=N,name=N" for named layers (the others as "auto")."""
    if text is None or text == "auto":
        return plan_lanes(net, board) if board else choose_lanes(net)
    if "=" not in text:
        try:
            count = int(text)
        except ValueError:
            raise UnsupportedNetworkError(f"--lanes {text!r} is not a number, 'auto' or name=N pairs") from None
        return choose_lanes(net, count)
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
    return {p: checked[p] if p in named else base[p] for p in base}
