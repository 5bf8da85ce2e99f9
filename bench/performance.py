"""Writes docs/performance.md (and docs/performance.png): per network and board, the integer accuracy on the full
test set, the cycle model's cycles and latency per image at the clock the bitstream meets, images/s, synaptic
operations per second, lane utilization, and the build's resources and Fmax, next to published FPGA MNIST
accelerators as ratios.

    .venv/bin/python -m bench.performance                 # builds the bitstreams, models every test image
    .venv/bin/python -m bench.performance --images 1000   # a quicker look (the page states the image counts)
    .venv/bin/python -m bench.performance --reuse         # keep the last run's rows, measure only new ones

Each board's bitstream is built with `spikeforge.hw.bitstream.build` at the board's clock for this network
(``NETWORKS`` below: the highest PLL clock the design met); a build that misses it fails here, loudly. Not a test:
it takes about half an hour on two cores, most of it the cycle model over the 10,000 images of the first row.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import numpy as np

from spikeforge import netimage
from spikeforge.hw.accelerator import choose_lanes
from spikeforge.hw.bitstream import build
from spikeforge.hw.lanes import plan_lanes
from spikeforge.perf import predict
from spikeforge.sw.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]

# (label, network file, dataset, board, clock in MHz the bitstream is built for, test images: None = all); the
# first row is the headline (README, the anchors' ratios) and always uses every test image
NETWORKS = [
    ("MNIST, sparse demo network", "tests/data/demo-mnist-sparse.sfnet", "mnist", "icebreaker", 30.0, None),
    ("MNIST, sparse demo network", "tests/data/demo-mnist-sparse.sfnet", "mnist", "ulx3s-85f", 65.0, 2000),
    ("MNIST, demo network trained without the activity penalty", "tests/data/demo-mnist.sfnet", "mnist",
     "icebreaker", 30.0, 2000),
    ("Fashion-MNIST, a larger chain (c16s1-c32s2-c64s2-d128)", "bench/runs/fm-d128-ecp5.sfnet", "fashion-mnist",
     "ulx3s-85f", 45.0, 500),
    ("Fashion-MNIST, spiking ResNet-8 x1.5, stride-2 stem (docs/resnet.md)", "tests/data/resnet8-fm-ulx3s.sfnet",
     "fashion-mnist", "ulx3s-85f", 50.0, 200),
    ("Fashion-MNIST, spiking ResNet-6 x0.25, stride-2 stem (docs/resnet.md)",
     "tests/data/resnet6-fm-icebreaker.sfnet", "fashion-mnist", "icebreaker", 24.0, 300),
]
# lanes where the board's plan does not build: with the plan's 16 / 32 / 32 / 16 / 10 lanes Yosys 0.70 stops in
# synth_ecp5 on an internal assertion ("GetSize(conn.first) == GetSize(conn.second)", ABC9), with 8 it builds
# (the ResNet-8 on the ECP5: 8 lanes build in 6-14 minutes on two cores; the plan's 24-96 lanes would take
# several times that. The ResNet-6 on the UP5K: one lane per layer is what its logic allows)
LANES = {("bench/runs/fm-d128-ecp5.sfnet", "ulx3s-85f"): 8, ("tests/data/resnet8-fm-ulx3s.sfnet", "ulx3s-85f"): 8,
         ("tests/data/resnet6-fm-icebreaker.sfnet", "icebreaker"): 1}
# the Yosys flow where ABC9 stops on the design (the same assertion; docs/hardware-flow.md)
SYNTH = {("tests/data/resnet8-fm-ulx3s.sfnet", "ulx3s-85f"): "abc"}

# how each network file was trained (docs/training.md has the runs)
TRAINING = {
    "tests/data/demo-mnist-sparse.sfnet": "spikeforge train --threads 1 --activity-penalty 0.3 --silent-blank 1 "
                                          "--out build/full/w0.3-b1",
    "tests/data/demo-mnist.sfnet": "the default schedule before the spike penalties (`build/tune-a`, docs/results.md)",
    "bench/runs/fm-d128-ecp5.sfnet": "spikeforge train --dataset fashion-mnist --arch "
                                     "c16s1w8-c32s2w4-c64s2w4-d128w4-d10w4 --epochs-float 4 --epochs-qat 1 --threads 2 "
                                     "--progress false --activity-penalty 0.1 --silent-blank 0 --out build/fm-d128-ecp5",
    "tests/data/resnet8-fm-ulx3s.sfnet": "spikeforge train --dataset fashion-mnist --arch resnet8 --width 1.5 "
                                         "--stem-stride 2 --time-steps 10 --epochs-float 24 --epochs-qat 2 "
                                         "--augment-flip true --surrogate-width auto --out build/fm-resnet8-ecp5-e24",
    "tests/data/resnet6-fm-icebreaker.sfnet": "spikeforge train --dataset fashion-mnist --arch resnet6 --width 0.25 "
                                              "--stem-stride 2 --time-steps 10 --epochs-float 12 --epochs-qat 1 "
                                              "--augment-flip true --surrogate-width auto --threads 1 "
                                              "--out build/fm-resnet6-ice40",
}

# published MNIST accelerators on FPGAs (latency per image in microseconds); see issue 26 and the papers
ANCHORS = [
    ("Spiker+", "Artix-7", 780.0, "7,612 LC, 18 BRAM", "93.85%"),
    ("Flexi-NeurA", "", 1100.0, "1,623 LC", "97.23%"),
    ("snn-fpga (Fan and Levy)", "Artix-7, 100 MHz", 520.0, "6,358 LUT, 40.5 BRAM", ""),
    ("LIF-only accelerator with time encoding (Windhager et al.)", "UltraScale+", 290.0, "", "> 99%"),
    ("Skydiver", "Zynq XC7Z045", 44.0, "large", "98.5%"),
]
# the training run of each ResNet row (float / QAT / deployed accuracy on the full test set, docs/results.md)
RESNET_RUNS = {"tests/data/resnet8-fm-ulx3s.sfnet": "bench/runs/fm-resnet8-ecp5-e24.json",
               "tests/data/resnet6-fm-icebreaker.sfnet": "bench/runs/fm-resnet6-ice40.json"}
# published FPGA spiking ResNets (CIFAR-10 class: colour 32x32 images, against our 28x28 grey Fashion-MNIST, so
# the ratios compare designs, not like-for-like workloads): (design, device, task, accuracy, latency per image in
# microseconds or None, throughput text)
RESNET_ANCHORS = [
    ("Hou et al. 2025, lightweight residual SNN processor (arXiv 2601.00802)", "FPGA, full pipeline, 8-bit",
     "CIFAR-10, 1 time step, 0.69 M parameters", "87.11%", 3980.0, "183.5 images/s per W"),
    ("Nimbekar et al. 2024, reconfigurable spiking inference accelerator (arXiv 2410.16298)", "PYNQ-Z2 (Zynq-7020)",
     "ResNet-18 / VGG-11 SNN, CIFAR-10, 8 time steps", "within 1% of the float DNN", None, "38.4 GOPS at 1.54 W"),
]
SHORT_NAMES = {"snn-fpga (Fan and Levy)": "snn-fpga",
               "LIF-only accelerator with time encoding (Windhager et al.)": "Windhager\net al."}


def measure(label, path, dataset, board, clock, images, build_root) -> dict:
    net = netimage.load(ROOT / path)
    x, y = load_dataset(dataset, "test")
    if images:
        x, y = x[:images], y[:images]
    lanes = choose_lanes(net, LANES[(path, board)]) if (path, board) in LANES else plan_lanes(net, board)
    started = time.perf_counter()
    out = build_root / f"{Path(path).stem}-{board}"
    report = build(net, board=board, out_dir=out, clock_mhz=clock, lanes=lanes,
                   synth=SYNTH.get((path, board), "default"))
    build_s = time.perf_counter() - started
    perf = predict(net, x, y, lanes=lanes, clock_mhz=report.target_mhz)
    resources = {u.cell: (u.used, u.available) for u in report.utilization}
    return {"label": label, "network": path, "dataset": dataset, "board": board, "device": report.device,
            "clock_mhz": report.target_mhz, "fmax_mhz": report.fmax_mhz, "build_s": round(build_s),
            "resources": resources, "perf": perf,
            "lanes": {net.populations[p].name: n for p, n in lanes.items()}}


def _res(row, cell):
    used, available = row["resources"].get(cell, (0, 0))
    return f"{used:,} / {available:,}"


def write_markdown(rows, images_note, path: Path, plot: Path) -> None:
    lines = [
        "# Performance",
        "",
        "Written by `bench/performance.py` (`.venv/bin/python -m bench.performance`); do not edit by hand. "
        f"Measured {datetime.date.today().isoformat()} on {platform.machine()} ({images_note}).",
        "",
        "**Latency** is the accelerator's cycles from an image's first pixel accepted to its last result out "
        "(`C*H*W` pixel-load cycles at one pixel per cycle plus the cycle model's count after the last pixel, "
        "which equals the RTL's: docs/architecture.md), divided by the clock the bitstream meets. The UART link is "
        "not included (docs/hardware-flow.md). **Images/s** is one image after the other (the next image's load "
        "waits for the results). **Synaptic operations** are neuron updates made by the layers' walkers; "
        "**lane use** is synaptic operations / (lanes x word updates): how full the lanes of each word are.",
        "",
        "| network | board | integer accuracy | lanes | cycles / image (mean, after load) | latency (mean / max) "
        "| images/s | synaptic ops/s | lane use | logic | block RAM | SPRAM | DSP | clock (Fmax) |",
        "|---|---|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        p = row["perf"]
        ice = row["board"] == "icebreaker"
        logic = _res(row, "ICESTORM_LC" if ice else "TRELLIS_COMB")
        ram = _res(row, "ICESTORM_RAM" if ice else "DP16KD")
        spram = _res(row, "ICESTORM_SPRAM") if ice else "-"
        dsp = _res(row, "ICESTORM_DSP" if ice else "MULT18X18D")
        lanes = " / ".join(str(n) for n in row["lanes"].values())
        use = " / ".join(f"{layer['lane_utilization'] * 100:.0f}%" for layer in p["layers"])
        lines.append(
            f"| {row['label']} (`{row['network']}`) | {row['board']} ({row['device']}) | {p['accuracy'] * 100:.2f}% "
            f"on {p['images']:,} | {lanes} | {p['cycles']['mean']:,.0f} | {p['latency_us']['mean']:.0f} / "
            f"{p['latency_us']['max']:.0f} us | {p['images_per_s']:,.0f} | {p['synaptic_ops_per_s'] / 1e6:,.0f} M "
            f"| {use} | {logic} | {ram} | {spram} | {dsp} | {row['clock_mhz']:.2f} MHz ({row['fmax_mhz']:.1f}) |")
    best = rows[0]["perf"]["latency_us"]["mean"]
    lines += [
        "",
        f"## Next to published FPGA MNIST accelerators (ratio = their latency / ours, ours = {best:.0f} us, the "
        "first row above)",
        "",
        "| design | device | latency per image | ratio | logic | accuracy |",
        "|---|---|---:|---:|---|---|",
    ]
    for name, device, latency, logic, accuracy in ANCHORS:
        lines.append(f"| {name} | {device} | {latency:,.0f} us | {latency / best:.2f}x | {logic} | {accuracy} |")
    lines += _resnet_section(rows)
    lines += ["", "The networks (integer accuracy above is on the images the row used; full test sets: "
                  "docs/training.md):", ""]
    for network in dict.fromkeys(row["network"] for row in rows):
        command = TRAINING.get(network, "")
        lines.append(f"* `{network}`: " + (f"`{command}`" if command.startswith("spikeforge") else command))
    lines += ["", f"![latency per MNIST image]({plot.name})", "",
              "Per layer (first row): spikes per image, word updates per image and cycles per step:", ""]
    lines.append("| layer | lanes | spikes / image | word updates / image | lane use | cycles per step (mean) |")
    lines.append("|---|---:|---:|---:|---:|---|")
    for layer in rows[0]["perf"]["layers"]:
        spikes = "-" if layer["spikes_per_image"] is None else f"{layer['spikes_per_image']:,.0f}"
        steps = " ".join(f"{d:.0f}" for d in layer["step_cycles"])
        lines.append(f"| {layer['name']} | {layer['lanes']} | {spikes} | {layer['word_updates_per_image']:,.0f} | "
                     f"{layer['lane_utilization'] * 100:.1f}% | {steps} |")
    path.write_text("\n".join(lines) + "\n")


def _resnet_section(rows) -> list[str]:
    """The spiking ResNet rows with their training accuracies, next to published FPGA spiking ResNets."""
    resnets = [row for row in rows if row["network"] in RESNET_RUNS]
    if not resnets:
        return []
    lines = ["", "## The spiking ResNets (docs/resnet.md) next to published FPGA spiking ResNets", "",
             "Float / QAT / deployed integer accuracy on the full Fashion-MNIST test set (docs/results.md); latency "
             "and synaptic operations/s by the cycle model at the bitstream's clock, as in the first table.", "",
             "| network | board | float / QAT / deployed | latency (mean) | images/s | synaptic ops/s | logic | "
             "block RAM | clock (Fmax) |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in resnets:
        run = json.loads((ROOT / RESNET_RUNS[row["network"]]).read_text())
        acc = " / ".join(f"{run[k] * 100:.2f}%" for k in ("float_accuracy", "qat_accuracy", "deployed_accuracy"))
        ice = row["board"] == "icebreaker"
        p = row["perf"]
        lines.append(f"| `{row['network']}` | {row['board']} | {acc} | {p['latency_us']['mean'] / 1000:.2f} ms | "
                     f"{p['images_per_s']:,.0f} | {p['synaptic_ops_per_s'] / 1e6:,.0f} M | "
                     f"{_res(row, 'ICESTORM_LC' if ice else 'TRELLIS_COMB')} | "
                     f"{_res(row, 'ICESTORM_RAM' if ice else 'DP16KD')} | "
                     f"{row['clock_mhz']:.2f} MHz ({row['fmax_mhz']:.1f}) |")
    ours = resnets[0]
    best = ours["perf"]["latency_us"]["mean"]
    lines += ["", f"Published (ratio = their latency / ours, ours = {best / 1000:.2f} ms, `{ours['network']}` on "
                  f"the {ours['board']}; their task is CIFAR-10, ours Fashion-MNIST):", "",
              "| design | device | task | accuracy | latency per image | ratio | throughput |",
              "|---|---|---|---|---:|---:|---|"]
    for name, device, task, accuracy, latency, throughput in RESNET_ANCHORS:
        shown = "-" if latency is None else f"{latency / 1000:.2f} ms"
        ratio = "-" if latency is None else f"{latency / best:.2f}x"
        lines.append(f"| {name} | {device} | {task} | {accuracy} | {shown} | {ratio} | {throughput} |")
    return lines


def write_plot(rows, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["dataset"] == "mnist"]  # the anchors are MNIST designs
    names = ([f"spikeforge\n{r['board']}\n{Path(r['network']).stem}" for r in rows]
             + [SHORT_NAMES.get(a[0], a[0]) for a in ANCHORS])
    values = [r["perf"]["latency_us"]["mean"] for r in rows] + [a[2] for a in ANCHORS]
    colors = ["tab:blue"] * len(rows) + ["tab:gray"] * len(ANCHORS)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.bar(range(len(values)), values, color=colors)
    ax.set_xticks(range(len(values)), names, fontsize=7)
    ax.set_ylabel("latency per MNIST image (us)")
    ax.set_title("spikeforge (blue, cycle model at the clock the bitstream meets) vs published FPGA designs")
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.0f}", ha="center", va="bottom", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, help="first N test images only (default: all)")
    parser.add_argument("--build-root", default="build/performance")
    parser.add_argument("--out", default=str(ROOT / "docs" / "performance.md"))
    parser.add_argument("--reuse", action="store_true",
                        help="keep the rows the last run measured (build-root/performance.json) and measure only the "
                             "rows of NETWORKS it lacks")
    args = parser.parse_args(argv)
    raw = Path(args.build_root) / "performance.json"
    saved = {}
    if args.reuse and raw.is_file():
        saved = {(row["network"], row["board"]): row for row in json.loads(raw.read_text())}
    rows = []
    for label, path, dataset, board, clock, images in NETWORKS:
        if (path, board) in saved:
            rows.append(saved[(path, board)])
            continue
        print(f"== {label} on {board}", flush=True)
        count = min(n for n in (images, args.images) if n) if (images or args.images) else None
        rows.append(measure(label, path, dataset, board, clock, count, Path(args.build_root)))
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(rows, indent=1, default=str))
    out = Path(args.out)
    note = (f"at most the first {args.images:,} test images per row" if args.images
            else "the first row on every test image, the others on the image counts shown")
    plot = out.with_suffix(".png")
    write_plot(rows, plot)
    write_markdown(rows, note, out, plot)
    print(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
