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
from .layers import FanoutWalker, channel_words, grid, is_diagonal, lane_limit

__all__ = ["Device", "DEVICES", "plan_lanes", "parse_lanes", "estimate_logic", "estimate_ram_blocks", "multipliers",
           "ram_blocks"]


@dataclass(frozen=True)
class Device:
    """What the lane plan may spend: block RAMs (``ram_configs``: depth x width shapes of one block), logic
    cells, and the block RAMs and cells the board top needs besides the accelerator (UART, pixel and result
    FIFOs)."""
    name: str
    ram_blocks: int
    ram_configs: tuple[tuple[int, int], ...]
    logic_cells: int
    multipliers: int  # DSP blocks: one per lane of a projection from the pixels
    board_ram_blocks: int = 2
    # the share of the logic the plan fills at most: place and route needs some slack
    logic_fill: float = 0.96
    # blocks kept free: Yosys does not always find the best block shape (the demo's 2,352 x 16 readout ROM took 11
    # blocks where 10 of 256 x 16 would do)
    ram_margin: int = 1


DEVICES = {
    "icebreaker": Device("iCE40 UP5K", 30, ((256, 16), (512, 8), (1024, 4), (2048, 2)), 5280, 8),
    "ulx3s-85f": Device("ECP5-85F", 208, ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1)),
                        83640, 156, ram_margin=4),
}

# memories smaller than this go to logic (Yosys maps them to flip-flops and LUTs, measured on the UP5K builds)
_LOGIC_MEMORY_BITS = 1024
# logic cells: a fixed part and a part per lane-bit of datapath (accumulate adder, update pipeline), fitted to the
# UP5K builds of the demo network (2,237 cells at one lane per layer, 5,026 at lanes 8 / 8 / 5, with -dsp)
_LOGIC_BASE, _LOGIC_PER_LANE_BIT = 1780, 10.6


def ram_blocks(depth: int, width: int, device: Device) -> int:
    """Fewest blocks of one shape that hold a depth x width memory."""
    return min(-(-depth // d) * -(-width // w) for d, w in device.ram_configs)


def estimate_ram_blocks(net: Network, lanes: dict[int, int], device: Device) -> int:
    """Block RAMs of the accelerator's memories with these lanes (the pixel list excluded: SPRAM on the UP5K,
    a few blocks of the hundreds elsewhere), plus the board top's own."""
    rows = estimate_memory(net, lanes=lanes)
    blocks = sum(ram_blocks(r["depth"], r["width"], device) for r in rows
                 if r["bits"] >= _LOGIC_MEMORY_BITS and r["name"] != "input.pixel_list")
    return blocks + device.board_ram_blocks


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
    a layer that cannot grow is left as it is and the next one is tried."""
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
        lanes = grown


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
