"""The `spikeforge` command line: train, export, inspect, run, bitstream and the end-to-end demo.

It sits on top of the three parts (sw, hw, sim) and imports each lazily, so that hardware commands never load
torch and `--help` is instant. Longer than 500 lines because every subcommand's options and their one-sentence
refusals live here, next to the parser; the work itself is in the packages.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from spikeforge import netimage
from spikeforge.allocator import malloc_cache, use_huge_pages

# what spikeforge.sw.data.load_dataset reads (a test keeps the two equal; importing it here would slow --help)
DATASETS = ("mnist", "fashion-mnist", "cifar10", "cifar100", "imagenette")
EMBEDDED_DATASETS = ("mnist", "fashion-mnist")  # installed with spikeforge: no --data-dir needed
BACKENDS = ("torch", "int", "rtl", "fpga", "gate")
SIMULATORS = ("icarus", "verilator")
SIMULATOR_NAMES = {"icarus": "Icarus", "verilator": "Verilator"}
# spikeforge.sim.gate.SYNTH_FLOWS (a test keeps the two equal)
SYNTH_FLOWS = ("default", "abc")
# test images the simulating backends run when --images is not given
DEFAULT_IMAGES = {"rtl": 20, "gate": 5}
BOARDS = ("icebreaker", "ulx3s-85f")
# spikeforge.hw.bitstream.BOARDS[b].default_clock_mhz (a test keeps the two equal; importing it here would slow --help)
# rtl: the cycle model is compared with the RTL on the first CYCLE_MODEL_IMAGES images, stopping early once the
# images it modelled took CYCLE_MODEL_CYCLES RTL cycles (it models about 100,000 cycles/s: 10-20 MNIST images/s,
# but about 9 s for one image of the ULX3S ResNet-8, where 200 images would take half an hour)
CYCLE_MODEL_IMAGES = 200
CYCLE_MODEL_CYCLES = 20_000_000
DEFAULT_CLOCK_MHZ = {"icebreaker": 24.0, "ulx3s-85f": 50.0}


class CliError(Exception):
    """A user-facing failure: printed as one sentence, exit status 2."""


def _load_network(path: str) -> netimage.Network:
    if str(path).endswith(".pt"):
        raise CliError(f"{path} is a training checkpoint; turn it into a network file first with "
                       f"`spikeforge export {path} -o network.sfnet`")
    return netimage.load(path)


def _shape_text(shape) -> str:
    return "x".join(str(n) for n in shape)


def _check_input_shape(model: str, input_shape, trained_on: str | None, dataset: str, image_shape,
                       data_dir: str | None = None) -> None:
    """CliError unless ``dataset``'s images (``image_shape``; None: Imagenette, square at any size) fit the input
    of ``model``, with the --dataset to use instead: the one it was trained on, else those whose images fit."""
    from spikeforge.sw.data import IMAGE_SHAPES, VISION_DATASETS

    want = tuple(int(n) for n in input_shape)
    if image_shape is not None and tuple(int(n) for n in image_shape) == want:
        return

    def fits(name):
        shape = IMAGE_SHAPES[name]
        return shape == want if shape is not None else len(want) == 3 and want[0] == 3 and want[1] == want[2]

    def flag(name):
        return f"`--dataset {name}" + (" --data-dir FOLDER`" if name in VISION_DATASETS else "`")

    others = [name for name in DATASETS if name != dataset and fits(name)]
    if fits(dataset):  # the dataset's images would fit: the folder given holds others
        hint = f"point --data-dir at a folder of {dataset} test images of that shape instead of {data_dir}"
        others = []
    elif trained_on in DATASETS and trained_on != dataset and fits(trained_on):
        hint = f"run it on the dataset it was trained on, {flag(trained_on)}"
        others = [trained_on]
    elif others:
        hint = f"run it on a dataset with {_shape_text(want)} images, " + " or ".join(flag(name) for name in others)
    else:
        hint = "no dataset spikeforge reads has images of that shape"
    if any(name in VISION_DATASETS for name in others) or not others:
        hint += " (see docs/datasets.md)"
    got = _shape_text(image_shape) if image_shape is not None else "3 x size x size (square)"
    raise CliError(f"{model} takes {_shape_text(want)} inputs, but the {dataset} test images are {got}; {hint}")


def _test_images(args, input_shape, trained_on: str | None):
    """The first ``args.images`` test images of ``args.dataset`` (all when None) and their labels, refused in one
    sentence, before and after loading, unless they fit ``input_shape`` (Imagenette is decoded at that size)."""
    from spikeforge.sw.data import IMAGE_SHAPES, load_dataset

    shape = tuple(int(n) for n in input_shape)
    options, expected = {}, IMAGE_SHAPES[args.dataset]
    if expected is None and len(shape) == 3 and shape[0] == 3 and shape[1] == shape[2]:
        options, expected = {"size": shape[1]}, shape
    _check_input_shape(args.model, shape, trained_on, args.dataset, expected)
    images, labels = load_dataset(args.dataset, "test", root=args.data_dir, **options)
    _check_input_shape(args.model, shape, trained_on, args.dataset, images.shape[1:], args.data_dir)
    if args.images is not None:
        images, labels = images[:args.images], labels[:args.images]
    return images, labels


def _input_images(path: str, net: netimage.Network, model: str):
    """``--input``: a .npy file's [B, C, H, W] integer images that fit the network's input ([B, H, W] for one
    channel), refused in one sentence otherwise."""
    import numpy as np

    top, shape = (1 << net.input.bits) - 1, tuple(int(n) for n in net.input.shape)
    try:
        images = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise CliError(f"--input {path} is not a readable .npy file ({(str(exc).splitlines() or [''])[0]}); write "
                       f"the images with numpy.save") from None
    if not isinstance(images, np.ndarray) or images.dtype.kind not in "ui":
        raise CliError(f"--input {path} holds {getattr(images, 'dtype', 'no')} values, not integer pixels; save an "
                       f"integer array (uint8 for 8-bit pixels)")
    images = images[:, None] if images.ndim == 3 and shape[0] == 1 else images
    if images.ndim != 4 or tuple(images.shape[1:]) != shape or images.shape[0] == 0:
        raise CliError(f"--input {path} holds an array of shape {list(images.shape)}, but {model} takes images "
                       f"[B, C, H, W] = [B, {', '.join(map(str, shape))}] with B at least 1")
    if images.min() < 0 or images.max() > top:
        raise CliError(f"--input {path} holds pixels outside 0..{top}, the range of the network's "
                       f"{net.input.bits}-bit input")
    return images


def _outcome(args, prediction, labels, count: int) -> str:
    """The accuracy on the test images or, with --input, which images ran."""
    if labels is None:
        return f"on {count} images from {args.input}"
    return f"accuracy: {float((prediction == labels).mean()) * 100:.2f}% on {len(labels)} {args.dataset} test images"


def _print_counts(net: netimage.Network, counts, images: int, time_steps: int) -> None:
    print(f"{'population':<12} {'neurons':>8} {'spikes':>10} {'per neuron-step':>16}")
    for pop, count in zip(net.populations, counts):
        if count is None:
            continue
        rate = count / max(1, pop.size * images * time_steps)
        print(f"{pop.name:<12} {pop.size:>8} {count:>10} {rate:>16.4f}")


# --- commands ----------------------------------------------------------------------------------------------


def cmd_inspect(args) -> int:
    net = _load_network(args.network)
    print(f"{args.network}: format v{netimage.FORMAT_VERSION}, T={net.time_steps}, "
          f"{netimage.parameter_bits(net)} weight bits")
    print(netimage.summary(net))
    from spikeforge.hw.accelerator import estimate_memory

    from spikeforge.hw.lanes import DEVICES, spram_memories

    lanes = _lanes(args, net, args.board)
    memories = estimate_memory(net, lanes=lanes)
    total = sum(m["bits"] for m in memories)
    print(f"\non-chip memories with the {args.board} lane plan ({_plan_text(net, lanes)} lanes): {total} bits = "
          f"{total / 1024:.1f} kbit")
    in_spram = spram_memories(net, lanes) if DEVICES[args.board].spram_blocks else set()
    for m in memories:
        where = "  SPRAM" if m["name"] in in_spram else ""
        print(f"  {m['name']:<28} {m['depth']:>7} x {m['width']:>2} = {m['bits']:>8} bits{where}")
    return 0


def cmd_run(args) -> int:
    if args.images is not None and args.images < 1:
        raise CliError(f"--images {args.images}: give a positive number of test images, or leave the option out to "
                       f"use them all")
    if args.time_steps is not None and args.time_steps < 1:
        raise CliError(f"--time-steps {args.time_steps}: give a positive number of time steps, or leave the option "
                       f"out to use the network's own")
    if args.input is not None and args.backend not in ("int", "rtl", "gate"):
        raise CliError(f"--input works with --backend int, rtl and gate, not {args.backend}; leave it out to run on "
                       f"the test set (--dataset)")
    if args.backend == "torch":
        return _run_torch(args)

    net = _load_network(args.model)
    if args.input is not None:
        images, labels = _input_images(args.input, net, args.model), None
        if args.images is not None:
            images = images[:args.images]
    else:
        images, labels = _test_images(args, net.input.shape, net.metadata.get("dataset"))
    T = args.time_steps or net.time_steps
    if args.backend == "rtl":
        return _run_rtl(args, net, images, labels, T)
    from spikeforge.sw import reference

    started = time.perf_counter()
    ref = reference.run(net, images, T)
    ref_s = time.perf_counter() - started
    if args.backend == "int":
        print(f"int (reference) {_outcome(args, ref.prediction, labels, len(images))}, T={T}, {ref_s:.1f} s")
        _print_counts(net, ref.spike_counts(), len(images), T)
        return 0

    if args.backend == "fpga":
        return _run_fpga(args, net, images, labels, ref)
    if args.backend == "gate":
        return _run_gate(args, net, images, labels, ref, T, ref_s)

    raise AssertionError(f"unknown backend {args.backend}")  # argparse's choices stop it first


def _run_rtl(args, net, images, labels, T: int) -> int:
    """``run --backend rtl``: the Verilog against the reference, a batch at a time (spikeforge.verify)."""
    import tempfile

    import numpy as np

    from spikeforge.hw.cycle_model import CycleModel
    from spikeforge.sim.rtl import run_rtl
    from spikeforge.verify import compare_in_batches

    if args.batch < 1:
        raise CliError(f"--batch {args.batch}: give a positive number of images per simulation")
    lanes = _lanes(args, net, args.board)
    build_dir = args.build_dir or tempfile.mkdtemp(prefix="spikeforge-rtl-")  # one build for every batch
    modelled: list[tuple[int, int]] = []

    def simulate(chunk, start):
        return run_rtl(net, chunk, time_steps=T, build_dir=build_dir, waves=args.waves, lanes=lanes,
                       simulator=args.simulator, jobs=args.jobs, seed=args.seed + start, progress=False)

    def model(ref, rtl, start):  # the cycle model next to the RTL, within CYCLE_MODEL_IMAGES / CYCLE_MODEL_CYCLES
        keep, spent = 0, sum(c for _, c in modelled)
        while (keep < len(rtl.cycles) and len(modelled) + keep < CYCLE_MODEL_IMAGES
               and spent < CYCLE_MODEL_CYCLES):
            spent += rtl.cycles[keep]
            keep += 1
        if keep:
            predicted = CycleModel(net, T, lanes=lanes).run(images[start:start + keep], ref)
            modelled.extend(zip((c.cycles for c in predicted), rtl.cycles[:keep]))

    try:
        out = compare_in_batches(net, images, T, simulate, batch=args.batch, each_batch=model,
                                 label=f"RTL ({SIMULATOR_NAMES[args.simulator]})")
    finally:
        if not args.build_dir and not args.waves:
            import shutil

            shutil.rmtree(build_dir, ignore_errors=True)
    n = out.images
    cycles = out.cycles
    outcome = _outcome(args, np.asarray(out.predictions), None if labels is None else labels[:n], n)
    print(f"rtl ({SIMULATOR_NAMES[args.simulator]}) {outcome}, T={T}, {out.wall_s:.1f} s, "
          f"{out.images_per_second:.1f} images/s "
          f"({out.cycles_per_second:,.0f} simulated cycles/s over {out.processes} process(es))")
    print(f"lanes ({args.board}): {_plan_text(net, lanes)}")
    print(f"cycles per image: mean {sum(cycles) / len(cycles):.0f}, min {min(cycles)}, max {max(cycles)}")
    if modelled:
        worst = max(abs(p - c) / c for p, c in modelled)
        print(f"cycle model (spikeforge perf) on the first {len(modelled)} images: mean "
              f"{sum(p for p, _ in modelled) / len(modelled):.0f}, largest difference from the RTL {worst * 100:.2f}% "
              f"({sum(p == c for p, c in modelled)} exact; the testbench stalls the results stream at random, the "
              f"model assumes it always ready)")
    _print_counts(net, out.spike_counts, n, T)
    if out.mismatch:
        print(f"RTL DIFFERS from the integer reference: {out.mismatch}")
        return 1
    print(f"RTL bit-exact with the integer reference at T={T} on {n} images: every spike of every population at "
          f"every step, and the readout potentials")
    return 0


def _run_gate(args, net, images, labels, ref, T: int, ref_s: float) -> int:
    """``run --backend gate``: the board's synthesized netlist in Icarus or Verilator, checked against the
    reference (spikes, readout) and against the RTL under the same stimulus (spikes, readout, cycles per image)."""
    from spikeforge.sim.gate import compare, run_gate
    from spikeforge.sim.rtl import run_rtl

    lanes = _lanes(args, net, args.board)
    count = len(images)
    print(f"reference: T={T}, {count} image(s), {ref_s:.1f} s")
    print(f"lanes ({args.board}): {_plan_text(net, lanes)}")
    rtl = run_rtl(net, images, time_steps=T, build_dir=args.build_dir, waves=args.waves, lanes=lanes,
                  simulator=args.simulator, jobs=args.jobs, seed=args.seed)
    print(f"rtl ({SIMULATOR_NAMES[args.simulator]}): {rtl.wall_s:.1f} s, {rtl.cycles_per_second:,.0f} simulated "
          f"cycles/s over {rtl.processes} process(es)")
    # a correct netlist takes the RTL's cycles: a stuck one is stopped long before run_rtl's generous watchdog
    gate = run_gate(net, images, T, args.board, args.build_dir, lanes=lanes, jobs=args.jobs, seed=args.seed,
                    synth=args.synth, waves=args.waves, watchdog=2 * max(rtl.cycles) + 1000,
                    simulator=args.gate_simulator)
    netlist = gate.netlist
    synthesis = "reused from the build folder" if netlist.cached else f"{netlist.synth_s:.1f} s"
    print(f"{gate.source} netlist: {netlist.flow}, synthesis {synthesis}; {netlist.cells_text()}")
    print(f"{gate.source} {_outcome(args, gate.prediction, labels, count)}, {gate.wall_s:.1f} s, "
          f"{gate.cycles_per_second:,.0f} simulated cycles/s over {gate.processes} process(es) "
          f"({SIMULATOR_NAMES[args.gate_simulator]})")
    cycles = list(gate.cycles)
    detail = {"spikes and readout vs the reference": f" (every spike of every population at every step and the "
                                                     f"readout potentials, {count} image(s))",
              "cycles per image vs the RTL": f" (mean {sum(cycles) / count:,.0f}, min {min(cycles):,}, max "
                                             f"{max(cycles):,})"}
    failed = False
    for what, mismatch in compare(ref, rtl, gate, net):
        print(f"{what}: " + (f"DIFFER: {mismatch}" if mismatch else "equal" + detail.get(what, "")))
        failed = failed or mismatch is not None
    return 1 if failed else 0


def _run_torch(args) -> int:
    """The trained PyTorch (QAT) model of a checkpoint on the test images."""
    if not str(args.model).endswith(".pt"):
        raise CliError(f"--backend torch runs the trained PyTorch model: give its checkpoint (.pt), "
                       f"not {args.model}")
    from spikeforge.sw.models import evaluate_checkpoint, read_checkpoint

    try:
        checkpoint = read_checkpoint(args.model)
    except Exception as exc:  # torch.load of a file that is not a checkpoint raises almost anything
        if type(exc).__module__.startswith("spikeforge"):
            raise
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise CliError(f"{args.model} is not a readable checkpoint ({type(exc).__name__}: {reason}); give the "
                       f"checkpoint.pt that `spikeforge train` wrote") from None
    config = checkpoint["config"]
    # a chain takes MNIST-sized images; a ResNet checkpoint records its input shape
    input_shape = checkpoint.get("input_shape") or (1, 28, 28)
    images, labels = _test_images(args, input_shape, config.get("dataset"))
    result = evaluate_checkpoint(checkpoint, images, labels, time_steps=args.time_steps)
    print(f"torch (QAT) accuracy: {result['accuracy'] * 100:.2f}% on {len(labels)} {args.dataset} test images")
    for name, count in result.get("spike_counts", {}).items():
        print(f"  {name:<12} {count:>10} spikes")
    return 0


def _run_fpga(args, net, images, labels, ref) -> int:
    """Host-side inference on a board over UART, checked against the integer reference image by image."""
    import numpy as np
    from tqdm import tqdm

    from spikeforge.host import FpgaClient

    readouts, cycles = [], []
    with FpgaClient(args.port, args.baudrate, net=net) as board:
        for image in tqdm(images, desc=f"fpga {args.port}", unit="image"):
            readout, count = board.infer(image)
            readouts.append(readout)
            cycles.append(count)
    readouts = np.stack(readouts)
    accuracy = float((readouts.reshape(len(labels), -1).argmax(1) == labels).mean())
    print(f"fpga accuracy: {accuracy * 100:.2f}% on {len(labels)} {args.dataset} test images; cycles per image: "
          f"mean {sum(cycles) / len(cycles):.0f}")
    differ = np.flatnonzero((readouts.reshape(len(labels), -1) != ref.readout.reshape(len(labels), -1)).any(1))
    if len(differ):
        print(f"the board's readout DIFFERS from the integer reference on {len(differ)} images, first: image "
              f"{differ[0]}")
        return 1
    print(f"board readout equal to the integer reference on all {len(labels)} images")
    return 0


# test images `spikeforge demo` runs through the cycle model (the ResNet's take about 9 s each: docs/resnet.md)
DEMO_PERF_IMAGES = {"chain": 500, "resnet": 50}

LANES_HELP = ("output-channel lanes per layer: 'auto' (the board's lane plan), one number for every layer, or "
              "name=N,name=N for some layers (default: auto)")


def _plan_text(net, lanes) -> str:
    """The lanes per layer, and (for a LanePlan) what is placed in SPRAM unusually."""
    if hasattr(lanes, "describe"):
        return lanes.describe(net)
    return ", ".join(f"{net.populations[p].name} {n}" for p, n in lanes.items())


def _lanes(args, net, board):
    """``--lanes`` of run, bitstream and perf (the board's lane plan by default)."""
    from spikeforge.hw.accelerator import UnsupportedNetworkError
    from spikeforge.hw.lanes import parse_lanes

    try:
        return parse_lanes(getattr(args, "lanes", None), net, board)
    except UnsupportedNetworkError as error:
        raise CliError(str(error)) from None


def cmd_perf(args) -> int:
    import json

    from spikeforge.perf import format_report, predict

    if args.images is not None and args.images < 1:
        raise CliError(f"--images {args.images}: give a positive number of test images, or leave the option out to "
                       f"use them all")
    if args.clock is not None and args.clock <= 0:
        raise CliError(f"--clock {args.clock}: give the clock in MHz, a positive number")
    net = _load_network(args.model)
    images, labels = _test_images(args, net.input.shape, net.metadata.get("dataset"))
    lanes = _lanes(args, net, args.board)
    clock = args.clock or DEFAULT_CLOCK_MHZ[args.board]
    report = predict(net, images, labels, lanes=lanes, clock_mhz=clock, time_steps=args.time_steps,
                     jobs=args.jobs, progress=True)
    report["board"], report["dataset"] = args.board, args.dataset
    print(format_report(report, args.board))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"report: {args.json}")
    return 0


def cmd_bitstream(args) -> int:
    from spikeforge.hw.bitstream import build

    net = _load_network(args.network)
    report = build(net, board=args.board, out_dir=args.out, time_steps=args.time_steps,
                   clock_mhz=getattr(args, "clock", None),
                   allow_timing_fail=getattr(args, "allow_timing_fail", False),
                   lanes=_lanes(args, net, args.board), synth=args.synth)
    print(report.format())
    return 0


# `spikeforge demo --arch resnet`: the committed spiking ResNets (docs/resnet.md) per board, with the lanes and the
# Yosys flow their bitstreams are built with (docs/resnet.md says why)
RESNET_DEMO = {
    "ulx3s-85f": ("tests/data/resnet8-fm-ulx3s.sfnet", "8", "abc"),
    "icebreaker": ("tests/data/resnet6-fm-icebreaker.sfnet", "1", "default"),
}
RESNET_DEMO_DATASET = "fashion-mnist"


def cmd_demo(args) -> int:
    resnet = args.arch == "resnet"
    board = args.board or ("ulx3s-85f" if resnet else "icebreaker")
    dataset = args.dataset or (RESNET_DEMO_DATASET if resnet else "mnist")
    rtl_images = args.rtl_images if args.rtl_images is not None else (100 if resnet else 20)
    if rtl_images < 1:  # found before the training, not after it
        raise CliError(f"--rtl-images {rtl_images}: give a positive number of test images to simulate")
    if resnet and dataset != RESNET_DEMO_DATASET:
        raise CliError(f"--arch resnet: the committed ResNets are trained on {RESNET_DEMO_DATASET}, not {dataset}; "
                       f"leave --dataset out")
    out = Path(args.out or ("build/demo-resnet" if resnet else "build/demo"))
    started = time.perf_counter()
    summary = None
    if resnet:
        name, lanes, synth = RESNET_DEMO[board]
        network_path = Path(__file__).resolve().parents[1] / name
        print(f"== 1/5 the committed spiking ResNet for the {board}: {name}")
        print(netimage.summary(_load_network(str(network_path))))
    else:
        from spikeforge.sw.train import preset, train

        lanes, synth = "auto", "default"
        print(f"== 1/5 train ({dataset}, demo schedule) -> {out}")
        summary = train(preset("demo", dataset=dataset, out=str(out), data_dir=args.data_dir))
        network_path = out / "network.sfnet"  # the trainer exports its network there
        print(netimage.summary(netimage.load(network_path)))

    print(f"== 2/5 deployed integer network on the {dataset} test set")
    # the steps' options go through the parser, so that every option a command has gets its default
    data = ["--dataset", dataset] + (["--data-dir", str(args.data_dir)] if args.data_dir else [])
    parser = build_parser()
    cmd_run(parser.parse_args(["run", str(network_path), "--backend", "int", *data]))

    simulator = "verilator" if resnet else "icarus"
    print(f"== 3/5 RTL simulation ({SIMULATOR_NAMES[simulator]}) on {rtl_images} test images, compared with the "
          f"reference")
    status = cmd_run(parser.parse_args(["run", str(network_path), "--backend", "rtl", *data, "--images",
                                        str(rtl_images), "--build-dir", str(out / "rtl"), "--board", board,
                                        "--lanes", lanes, "--simulator", simulator]))
    if status:
        return status

    print(f"== 4/5 bitstream ({board}, lanes {lanes})")
    cmd_bitstream(parser.parse_args(["bitstream", str(network_path), "--board", board, "--out", str(out / "bitstream"),
                                     "--lanes", lanes, "--synth", synth]))
    import json

    clock = json.loads((out / "bitstream" / "report.json").read_text())["clock"]["target_mhz"]
    perf_images = DEMO_PERF_IMAGES["resnet" if resnet else "chain"]
    print(f"== 5/5 latency per image at the bitstream's {clock:g} MHz (cycle model, {perf_images} test images)")
    cmd_perf(parser.parse_args(["perf", str(network_path), *data, "--images", str(perf_images), "--board",
                                board, "--lanes", lanes, "--clock", str(clock), "--json", str(out / "perf.json")]))
    if summary is not None:
        print("\nfloat / QAT / deployed accuracy: " + " / ".join(
            f"{summary.get(k, float('nan')) * 100:.2f}%" for k in ("float_accuracy", "qat_accuracy",
                                                                    "deployed_accuracy")))
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return 0


# --- parser ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spikeforge", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    idx_dir_help = "read the dataset from this folder instead of the installed package (IDX .gz files as in " \
                   "Fashion-MNIST)"

    def data_args(p, datasets, dataset_help, data_dir_help):
        p.add_argument("--dataset", choices=datasets, default="mnist", help=dataset_help)
        p.add_argument("--data-dir", help=data_dir_help)

    # train has its own parser (spikeforge.sw.train.main, one flag per TrainConfig field); main() hands it over
    sub.add_parser("train", add_help=False,
                   help="train a quantized spiking network (float phase, then QAT), export and evaluate it")

    # export has its own parser (spikeforge.sw.export.main); main() hands it the arguments directly
    sub.add_parser("export", add_help=False,
                   help="fold BN and write the integer network file (.sfnet) from a checkpoint")

    # results has its own parser too (spikeforge.sw.results.main)
    sub.add_parser("results", add_help=False,
                   help="write docs/results.md (and the accuracy-vs-T plot) from finished training runs")

    p = sub.add_parser("inspect", help="print a network file's populations, widths and memory estimate")
    p.add_argument("network", help="network file (.sfnet)")
    p.add_argument("--board", choices=BOARDS, default="icebreaker",
                   help="the board whose lane plan shapes the memories (default: icebreaker)")
    p.add_argument("--lanes", default="auto", help=LANES_HELP)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("run", help="run test images through the trained model (torch), the integer reference "
                                   "(int), the generated Verilog in Icarus (rtl), a board over UART (fpga) or the "
                                   "board's synthesized netlist with the vendor cell models (gate)")
    p.add_argument("model", help="network file (.sfnet) for int, rtl, gate and fpga; checkpoint (.pt) for torch")
    p.add_argument("--backend", choices=BACKENDS, default="int")
    data_args(p, DATASETS, "the test set (default: mnist); cifar10, cifar100 and imagenette are read from "
                           "--data-dir (see docs/datasets.md)",
              f"mnist, fashion-mnist: {idx_dir_help}; cifar10, cifar100, imagenette: the folder you unpacked the "
              f"dataset into, or its parent")

    p.add_argument("--images", type=int, help="use only the first N test images (default: all; rtl: 20; gate: 5)")
    p.add_argument("--input", metavar="FILE.npy",
                   help="int, rtl, gate: run on the images of this .npy file ([B, C, H, W] integers) instead of a test "
                        "set; no accuracy, the RTL is still compared with the reference (a regression case's replay)")
    p.add_argument("--time-steps", type=int, help="T (default: the network file's)")
    p.add_argument("--build-dir", help="rtl, gate: folder for the Verilog, the netlist (reused while the design is "
                                       "unchanged) and the simulator build (default: a temp folder)")
    p.add_argument("--seed", type=int, default=1,
                   help="rtl, gate: seed of the testbench's random gaps between pixels and back-pressure on the "
                        "results (default 1; with --jobs, process k uses seed + k)")
    p.add_argument("--waves", action="store_true", help="rtl, gate: dump a waveform file")
    p.add_argument("--simulator", choices=SIMULATORS, default="icarus",
                   help="rtl (and gate's RTL run): the Verilog simulator (default: icarus; verilator builds for "
                        "~10-60 s, then runs many times faster: use it for hundreds of images)")
    p.add_argument("--gate-simulator", choices=SIMULATORS, default="icarus",
                   help="gate: the simulator of the netlist (default: icarus; verilator compiles the netlist with "
                        "the cell models for minutes, then runs it tens of times faster: large netlists at T=10)")
    p.add_argument("--synth", choices=SYNTH_FLOWS, default="default",
                   help="gate: the Yosys flow (default: the bitstream's synth_ice40 -dsp / synth_ecp5; abc: LUTs "
                        "mapped by the classic abc pass, for designs where Yosys 0.70's ABC9 fails)")
    p.add_argument("--jobs", type=int, help="rtl, gate: simulator processes (default: one per core)")
    p.add_argument("--batch", type=int, default=1000,
                   help="rtl: images per simulation; each batch is compared and dropped, which bounds memory "
                        "(default 1000)")
    p.add_argument("--port", default="/dev/ttyUSB1", help="fpga: the board's serial port (default /dev/ttyUSB1)")
    p.add_argument("--baudrate", type=int, default=115200, help="fpga: must match the bitstream (default 115200)")
    p.add_argument("--lanes", default="auto", help="rtl, gate: " + LANES_HELP)
    p.add_argument("--board", choices=BOARDS, default="icebreaker",
                   help="rtl: simulate the design with this board's lane plan; gate: also synthesize it for this "
                        "board's FPGA (default: icebreaker)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("perf", help="predict cycles, latency and throughput per image on a board from the cycle "
                                    "model and the integer reference's spikes (no simulation)")
    p.add_argument("model", metavar="network", help="network file (.sfnet)")
    data_args(p, DATASETS, "the test set (default: mnist)", f"mnist, fashion-mnist: {idx_dir_help}; others: the "
                                                          f"folder you unpacked the dataset into")
    p.add_argument("--images", type=int, help="use only the first N test images (default: all)")
    p.add_argument("--time-steps", type=int, help="T (default: the network file's)")
    p.add_argument("--board", choices=BOARDS, default="icebreaker", help="board whose lane plan and default clock "
                                                                         "to use (default: icebreaker)")
    p.add_argument("--lanes", default="auto", help=LANES_HELP)
    p.add_argument("--clock", type=float, metavar="MHZ", help="clock in MHz (default: the board's default clock; "
                                                              "give the Fmax a build reported to see that speed)")
    p.add_argument("--jobs", type=int, help="processes (default: one per core)")
    p.add_argument("--json", help="also write the report as JSON to this file")
    p.set_defaults(func=cmd_perf)

    p = sub.add_parser("bitstream", help="build an FPGA bitstream of the accelerator for a network and print "
                                         "utilization and Fmax")
    p.add_argument("network", help="network file (.sfnet)")
    p.add_argument("--board", choices=BOARDS, default="icebreaker", help="target board (default: icebreaker, "
                                                                         "iCE40 UP5K)")
    p.add_argument("--out", default="build/bitstream", help="build folder")
    p.add_argument("--time-steps", type=int, help="T (default: the network file's)")
    p.add_argument("--clock", type=float, metavar="MHZ",
                   help="clock the accelerator runs at, made by the PLL (rounded down to a frequency it can make; the "
                        "oscillator's own 12 or 25 MHz uses no PLL); default: "
                        + ", ".join(f"{b} {mhz:g}" for b, mhz in DEFAULT_CLOCK_MHZ.items()))
    p.add_argument("--allow-timing-fail", action="store_true",
                   help="keep the bitstream when the design's Fmax is below the clock (default: refuse it)")
    p.add_argument("--lanes", default="auto", help=LANES_HELP)
    p.add_argument("--synth", choices=SYNTH_FLOWS, default="default",
                   help="Yosys flow: default (ABC9) or abc (the classic abc -lut 4; for designs where Yosys 0.70's "
                        "ABC9 stops on an internal assertion)")
    p.set_defaults(func=cmd_bitstream)

    # gradflow has its own parser (spikeforge.sw.gradflow.main); main() hands it the arguments directly
    sub.add_parser("gradflow", add_help=False,
                   help="gradient norm vs depth at initialization for several surrogate widths (table + PNG)")

    p = sub.add_parser("demo", help="end to end: train (short), deploy, prove the RTL bit-exact, build a bitstream; "
                                    "--arch resnet: the same from the committed spiking ResNet, without training")
    data_args(p, EMBEDDED_DATASETS, "embedded dataset (default: mnist; fashion-mnist with --arch resnet)",
              idx_dir_help)
    p.set_defaults(dataset=None)
    p.add_argument("--arch", choices=("chain", "resnet"), default="chain",
                   help="chain: train the demo network first (default); resnet: the committed ResNet for --board")
    p.add_argument("--out", help="output folder (default build/demo, build/demo-resnet)")
    p.add_argument("--rtl-images", type=int, help="test images to simulate (default 20 in Icarus; resnet: 100 in "
                                                  "Verilator)")
    p.add_argument("--board", choices=BOARDS, help="default icebreaker (resnet: ulx3s-85f)")
    p.set_defaults(func=cmd_demo)
    return parser


# subcommands with their own parsers: main() hands them the arguments directly
DELEGATED = {"gradflow": "spikeforge.sw.gradflow", "train": "spikeforge.sw.train", "export": "spikeforge.sw.export",
             "results": "spikeforge.sw.results"}


# subcommands whose torch / integer-reference work on [T*B, C, H, W] tensors runs in glibc's malloc cache
# (spikeforge.allocator.malloc_cache: no page-faulted mmap per large tensor; export measured 3x faster); train has
# its own --malloc-cache option
CACHED = {"export", "results", "run"}
# subcommands that run torch: PyTorch's tensors of 2 MiB and more go on huge pages (spikeforge.allocator
# .use_huge_pages, "auto": unless THP_MEM_ALLOC_ENABLE is set), set before torch allocates anything; train applies
# its own --huge-pages option
HUGE_PAGES = {"export", "results", "run", "gradflow", "demo"}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        cache = contextlib.nullcontext()
        if argv[:1] and argv[0] in HUGE_PAGES:
            use_huge_pages("auto")
        if argv[:1] and argv[0] in CACHED:
            cache = malloc_cache(True)
        with cache:
            if argv[:1] and argv[0] in DELEGATED:
                import importlib

                importlib.import_module(DELEGATED[argv[0]]).main(argv[1:])
                return 0
            args = build_parser().parse_args(argv)
            if getattr(args, "backend", None) in DEFAULT_IMAGES and args.images is None and args.input is None:
                args.images = DEFAULT_IMAGES[args.backend]
            return args.func(args)
    except Exception as exc:
        # Every error class defined in spikeforge carries one user-facing sentence (a bad file, a missing
        # dataset, a bad training config, a network the hardware cannot hold, a garbled serial link): print it,
        # no traceback.
        if not type(exc).__module__.startswith("spikeforge"):
            raise
        print(f"spikeforge: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
