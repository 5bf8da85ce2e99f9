"""Run the generated accelerator's Verilog in Icarus Verilog through cocotb and read back what it did.

This is the RTL backend of `spikeforge run --backend rtl`: the design from spikeforge.hw is converted to Verilog and
wrapped in a testbench top whose Verilog monitor records every spike event; cocotb_tools' runner builds it in
Icarus and runs the cocotb test (spikeforge.sim.cocotb_accel), which drives the pixels with random gaps and
accepts the results with random back-pressure. This module turns the files they write into arrays shaped like
the reference's (docs/hardware-flow.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from spikeforge.netimage import Network
from spikeforge.record import SpikeRecord

__all__ = ["RtlSimError", "run_rtl", "generate_verilog", "TOPLEVEL", "SOURCE"]

TOPLEVEL = "spikeforge_accelerator"
TEST_MODULE = "spikeforge.sim.cocotb_accel"


class RtlSimError(RuntimeError):
    """The simulation could not run, or the design broke the accelerator's interface contract."""


SOURCE = "RTL"  # the record's name in mismatch messages


def _default_design(net: Network, time_steps: int):
    from spikeforge.hw.accelerator import Accelerator

    return Accelerator(net, time_steps)


def _network_digest(net: Network, time_steps: int) -> str:
    """A short content hash of everything that shapes the gateware, to reuse a build folder safely."""
    h = hashlib.sha256(f"T={time_steps}".encode())
    for pop in net.populations:
        h.update(repr((pop.name, pop.kind, pop.shape, pop.bits, pop.vbits, pop.acc_bits, pop.leak_shift)).encode())
        for arr in (pop.bias, pop.threshold):
            if arr is not None:
                h.update(np.ascontiguousarray(arr, np.int64).tobytes())
        for proj in pop.projections:
            h.update(repr((proj.source, proj.kind, proj.wbits, proj.stride, proj.padding, proj.weight.shape)).encode())
            h.update(np.ascontiguousarray(proj.weight, np.int64).tobytes())
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


HARNESS = "spikeforge_tb"
CLOCK_NS = 10


def generate_harness(net: Network, build_dir: str | Path) -> Path:
    """Write the testbench top that cocotb drives: the accelerator plus a trace monitor in Verilog.

    The top has the accelerator's ports (pixels, results, cycles, busy, rst; ``clk`` is a register inside that
    toggles every 5 ns) and ``trace_flush`` (a rising
    edge flushes the trace file) and ``steps_p{p}`` (step_end pulses seen in the current image). The monitor writes
    one line ``image population step neuron`` per spike event and, after the last result of an
    image, one line ``image population -1 step_ends`` per population; the file is named by the plusarg
    ``+trace=<path>``. It is Verilog because it has to look at
    every clock edge: the same monitor as a cocotb coroutine ran at 5k cycles/s, Icarus alone at ~20k.
    """
    lif = [p for p, pop in enumerate(net.populations) if pop.kind == "lif"]
    bits = net.input.bits
    ports = ["input rst", "input pixels__valid", "output pixels__ready",
             f"input [{bits - 1}:0] pixels__payload", "output results__valid", "input results__ready",
             "output [31:0] results__payload", "output [31:0] cycles", "output busy", "input trace_flush"]
    ports += [f"output [31:0] steps_p{p}" for p in lif]
    conns = [".clk(clk)", ".rst(rst)", ".pixels__valid(pixels__valid)", ".pixels__ready(pixels__ready)",
             ".pixels__payload(pixels__payload)", ".results__valid(results__valid)",
             ".results__ready(results__ready)", ".results__payload(results__payload)", ".cycles(cycles)",
             ".busy(busy)"]
    decls, body, close = [], [], []
    for p in lif:
        decls += [f"  wire valid_p{p}, end_p{p};", f"  wire [31:0] index_p{p};",  # wider than any index port
                  f"  reg [31:0] steps_p{p} = 0;"]
        conns += [f".spikes_p{p}__valid(valid_p{p})", f".spikes_p{p}__index(index_p{p})",
                  f".spikes_p{p}__step_end(end_p{p})"]
        body += [f"      if (valid_p{p}) $fwrite(fd, \"%0d {p} %0d %0d\\n\", image, steps_p{p}, index_p{p});",
                 f"      if (end_p{p}) steps_p{p} = steps_p{p} + 1;"]
        close += [f"          $fwrite(fd, \"%0d {p} -1 %0d\\n\", image, steps_p{p});", f"          steps_p{p} = 0;"]
    nl = "\n"
    text = f"""`timescale 1ns/1ps
// Generated by spikeforge.sim.rtl: the accelerator under test and its trace monitor.
module {HARNESS}({", ".join(port.split()[-1] for port in ports)});
{nl.join(f"  {port};" for port in ports)}
{nl.join(decls)}
  // the clock lives here: driven from Python through VPI it halved the simulation speed
  reg clk = 1'b0;
  always #{CLOCK_NS // 2} clk = ~clk;
  integer fd;
  integer image = 0;
  integer results_seen = 0;
  reg [8 * 1024 - 1:0] trace_file;
  initial begin
    if (!$value$plusargs("trace=%s", trace_file)) trace_file = "trace.txt";
    fd = $fopen(trace_file, "w");
  end
  always @(posedge trace_flush) $fflush(fd);
  {TOPLEVEL} dut({", ".join(conns)});
  always @(posedge clk) begin
    if (!rst) begin
{nl.join(body)}
      if (results__valid && results__ready) begin
        results_seen = results_seen + 1;
        if (results_seen == {net.readout.size}) begin
{nl.join(close)}
          results_seen = 0;
          image = image + 1;
        end
      end
    end
  end
endmodule
"""
    out = Path(build_dir) / f"{HARNESS}.v"
    out.write_text(text)
    return out


def _job(net: Network, images: np.ndarray, time_steps: int, out: Path, seed: int, first_image: int) -> dict:
    lif = [i for i, pop in enumerate(net.populations) if pop.kind == "lif"]
    # A generous watchdog: no design that is correct needs more cycles than this for one image.
    work = sum(pop.size for pop in net.populations) * time_steps
    fanout = sum(int(proj.weight.size) for pop in net.populations for proj in pop.projections)
    return {
        "images": images.reshape(images.shape[0], -1).astype(int).tolist(),
        "lif": lif,
        "sizes": {str(i): net.populations[i].size for i in lif},
        "readout_size": net.readout.size,
        "time_steps": time_steps,
        "seed": seed,
        "pixel_valid_probability": 0.75,
        "result_ready_probability": 0.6,
        "watchdog_cycles": 200_000 + 8 * (work + fanout * time_steps),
        "out": str(out),
        "first_image": first_image,
    }


def run_rtl(net: Network, images, time_steps: int | None = None, build_dir: str | Path | None = None,
            waves: bool = False, *, seed: int = 1, jobs: int | None = None, design=None,
            lanes=None) -> SpikeRecord:
    """Simulate the accelerator for ``net`` on ``images`` (uint8-valued [B, C, H, W]) for T steps in Icarus.

    The record's ``spikes[p]`` count the spike events population p emitted for each neuron in each step (1 =
    spiked; 2 or more = the same neuron was reported more than once, which the comparator names); ``cycles`` is the
    accelerator's ``cycles`` output per image, ``sim_cycles`` the clock cycles the whole simulation ran, ``sim_s``
    the simulators' wall time and ``wall_s`` that of the build and the run, ``waves`` the waveform file or None.

    ``build_dir`` keeps the Verilog, the simulator build, the job and result files and the waveform
    (``waves=True``: ``<build_dir>/<toplevel>.fst``); by default a fresh temporary folder (deleted afterwards
    unless waves are kept). ``seed`` draws the random valid gaps and ready back-pressure. ``jobs`` splits the
    images over that many Icarus processes running at once (one build; default: one per CPU core, at most one
    per image; always 1 with ``waves``). ``lanes`` goes to the Accelerator (``choose_lanes``) unless ``design``
    is given.
    """
    from cocotb_tools.runner import get_runner

    started = time.perf_counter()
    T = net.time_steps if time_steps is None else int(time_steps)
    imgs = np.asarray(images)
    if imgs.ndim == 3:
        imgs = imgs[:, None]
    if tuple(imgs.shape[1:]) != tuple(net.input.shape):
        raise ValueError(f"images of shape {list(imgs.shape[1:])} do not fit the network's input "
                         f"{list(net.input.shape)}")
    if imgs.size and (imgs.min() < 0 or imgs.max() > (1 << net.input.bits) - 1):
        raise ValueError(f"input pixels must be integers in 0..{(1 << net.input.bits) - 1}")
    B = imgs.shape[0]
    if B == 0:
        raise ValueError("run_rtl needs at least one image")

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
        else:
            tag = "-custom" if design is not None else ""
        digest = _network_digest(net, T) + tag
        work = root / digest
        verilog_path = work / f"{TOPLEVEL}.v"
        generate_verilog(net, T, work, design)  # always: the generator may have changed since the last run
        harness = generate_harness(net, work)
        sim_build = work / ("sim_build_waves" if waves else "sim_build")
        log = work / "icarus.log"
        if jobs is None:
            jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        jobs = 1 if waves else max(1, min(int(jobs), B))
        chunks = [c for c in np.array_split(np.arange(B), jobs) if c.size]
        runners = []
        for k in range(len(chunks)):  # a runner only tests what it built; the later builds find sim.vvp current
            runners.append(get_runner("icarus"))
            try:
                runners[-1].build(sources=[verilog_path, harness], hdl_toplevel=HARNESS, build_dir=sim_build,
                                  waves=waves, timescale=("1ns", "1ps"), log_file=log, always=k == 0)
            except BaseException as exc:  # the runner raises SystemExit / CalledProcessError with no detail
                if isinstance(exc, KeyboardInterrupt):
                    raise
                raise RtlSimError(f"Icarus could not build {verilog_path}: {exc}; see {log}") from None
        sim_started = time.perf_counter()
        with ThreadPoolExecutor(len(chunks)) as pool:
            parts = list(pool.map(lambda k: _simulate_chunk(runners[k], net, imgs, chunks[k], T, work / f"run{k}",
                                                            sim_build, seed + k, waves), range(len(chunks))))
        sim_s = time.perf_counter() - sim_started
        wave_path = _find_waves(sim_build, work / "run0") if waves else None
        for part in parts:
            if isinstance(part, str):
                where = f"; waves: {wave_path}" if wave_path else "; rerun with waves=True for a waveform"
                raise RtlSimError(f"RTL simulation of {B} image(s) at T={T} failed: {part}{where}")
        result = SpikeRecord(
            spikes=[None if parts[0].spikes[p] is None else np.concatenate([r.spikes[p] for r in parts], axis=1)
                    for p in range(len(net.populations))],
            readout=np.concatenate([r.readout for r in parts]), source=SOURCE,
            population_names=[pop.name for pop in net.populations], cycles=[c for r in parts for c in r.cycles],
            sim_cycles=sum(r.sim_cycles for r in parts), sim_s=sim_s,
            step_ends=np.concatenate([r.step_ends for r in parts]))
        result.waves = wave_path
        result.build_dir = None if temporary and not waves else work  # a temporary folder is kept for its waves
        result.wall_s = time.perf_counter() - started
        return result
    finally:
        if temporary and not waves:
            shutil.rmtree(root, ignore_errors=True)


def _simulate_chunk(runner, net: Network, imgs: np.ndarray, which: np.ndarray, T: int, folder: Path, sim_build: Path,
                    seed: int, waves: bool) -> SpikeRecord | str:
    """One cocotb run over the images ``which``; the decoded result, or the failure as a sentence."""
    folder.mkdir(parents=True, exist_ok=True)
    out, trace_path, job_path = folder / "results.npz", folder / "trace.txt", folder / "job.json"
    for stale in (out, trace_path):
        stale.unlink(missing_ok=True)
    job_path.write_text(json.dumps(_job(net, imgs[which], T, out, seed, int(which[0]))))
    # cocotb starts its own interpreter from the libpython; make this process's packages visible to it
    env = {"SPIKEFORGE_RTL_JOB": str(job_path), "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    log = folder / "cocotb.log"
    try:
        runner.test(test_module=TEST_MODULE, hdl_toplevel=HARNESS, build_dir=sim_build, test_dir=folder,
                    extra_env=env, waves=waves, plusargs=[f"+trace={trace_path}"],
                    results_xml=str(folder / "results.xml"), log_file=log)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        return f"the cocotb run failed ({exc}); see {log}"
    if not out.is_file() or not trace_path.is_file():
        return f"the cocotb run wrote no results ({out}); see {log}"
    saved = np.load(out)
    if str(saved["error"]):
        return str(saved["error"])
    try:
        result = _decode(net, saved, _read_trace(trace_path), len(which), T)
    except RtlSimError as exc:
        return f"{exc} (image numbers count from {int(which[0])})" if which[0] else str(exc)
    return result


def _read_trace(path: Path) -> np.ndarray:
    """The monitor's lines ``image population step neuron`` as an int64 array [events, 4]."""
    text = path.read_text()
    if not text.strip():
        return np.zeros((0, 4), np.int64)
    return np.array(text.split(), dtype=np.int64).reshape(-1, 4)


def _find_waves(*folders: Path) -> Path | None:
    for folder in folders:
        for pattern in ("*.fst", "*.vcd"):
            found = sorted(folder.glob(pattern))
            if found:
                return found[0]
    return None


def _decode(net: Network, saved, trace: np.ndarray, B: int, T: int) -> SpikeRecord:
    pops = net.populations
    markers = trace[:, 2] < 0  # per image and population: how many step_end pulses it saw
    step_ends = np.zeros((B, len(pops)), np.int64)
    for image, p, _, count in trace[markers]:
        if image < B:
            step_ends[image, p] = count
    events = trace[~markers]
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
    readout = saved["results"].astype(np.int64).reshape(B, *net.readout.shape)
    return SpikeRecord(spikes=spikes, readout=readout, source=SOURCE, population_names=[pop.name for pop in pops],
                       cycles=[int(c) for c in saved["cycles"]], sim_cycles=int(saved["sim_cycles"]),
                       step_ends=step_ends)
