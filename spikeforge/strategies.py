"""Hypothesis strategies for the randomized regression: whole cases (a network that the file format and the hardware
both accept, images, T, a lane plan, a testbench seed), the features a case covers, and the replayable folder a
failing case is written to.

tests/sim/test_regress.py compares the integer reference with the RTL on every case. The strategies draw sizes
before contents and prefer small values, so that hypothesis shrinks a failure towards few, small populations, a
chain, zero weights, T = 1 and one image. Test support only: numpy, hypothesis, the network file and two facts of
the generator (its accumulator limit and each population's lane limit).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from spikeforge.hw.accelerator import DEFAULT_MAX_ACC_BITS
from spikeforge.hw.layers import is_diagonal, lane_limit
from spikeforge.netimage import (Network, Population, Projection, content_hash, conv_output_size,
                                 partial_sum_bounds, save, signed_bits_for, signed_range, validate)

__all__ = ["Case", "cases", "case_id", "features", "summarize", "write_case", "replay_command", "MAX_KERNEL",
           "MAX_STRIDE", "MAX_PADDING"]

# the conv2d geometry drawn per axis: kernels 1..5, strides 1..3, padding 0..2 (padding up to the kernel's size
# and beyond: an output that sees only zeros is legal)
MAX_KERNEL, MAX_STRIDE, MAX_PADDING = 5, 3, 2


@dataclass
class Case:
    """One regression case: ``images`` [B, C, H, W] (uint8, or uint16 for inputs of more than 8 bits) run for
    ``time_steps`` steps, with ``lanes`` output-channel lanes for every non-input population and the testbench's
    random gaps and back-pressure drawn from ``seed``."""

    net: Network
    images: np.ndarray
    time_steps: int
    lanes: dict[int, int]
    seed: int


def _flip(k: int, last: int) -> int:
    return last - k  # a source index that shrinks towards the previous population: a chain


def _conv_geometry(draw, size: int) -> tuple[int, int, int]:
    """(kernel, stride, padding) along one axis of ``size`` inputs with at least one output."""
    padding = draw(st.integers(0, MAX_PADDING))
    kernel = draw(st.integers(1, min(MAX_KERNEL, size + 2 * padding)))
    stride = draw(st.integers(1, MAX_STRIDE))
    return kernel, stride, padding


def _fitting_geometries(size: int, want: int) -> list[tuple[int, int, int]]:
    """Every (kernel, stride, padding) within the drawn ranges that maps ``size`` inputs to ``want`` outputs."""
    return [(k, s, p) for k in range(1, MAX_KERNEL + 1) for s in range(1, MAX_STRIDE + 1)
            for p in range(MAX_PADDING + 1) if size + 2 * p >= k and conv_output_size(size, k, s, p) == want]


def _values(lo: int, hi: int) -> st.SearchStrategy[int]:
    """Integers in lo..hi, often exactly at either end (shrinking towards the first: small values)."""
    return st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi]))


def _weights(draw, shape, wbits: int) -> np.ndarray:
    lo, hi = signed_range(wbits)
    return draw(arrays(np.int64, shape, elements=_values(lo, hi)))


def _projection(draw, pops: list[Population], source: int, shape: tuple[int, ...], kind: str) -> Projection:
    """A projection of ``kind`` (conv2d, identity or dense) from ``source`` into a population of ``shape``."""
    src = pops[source]
    wbits = draw(st.integers(2, 16))
    if kind == "dense":
        return Projection(source, "dense", _weights(draw, (int(np.prod(shape)), src.size), wbits), wbits)
    if kind == "identity":  # a diagonal 1x1 conv, as sw/export_resnet.py writes an identity shortcut
        lo, hi = signed_range(wbits)
        weight = np.zeros((shape[0], shape[0], 1, 1), np.int64)
        diagonal = draw(arrays(np.int64, shape[0], elements=_values(lo, hi)))
        weight[np.arange(shape[0]), np.arange(shape[0]), 0, 0] = diagonal
        return Projection(source, "conv2d", weight, wbits)
    (ky, sy, py), (kx, sx, px) = (draw(st.sampled_from(_fitting_geometries(src.shape[1 + a], shape[1 + a])))
                                  for a in range(2))
    return Projection(source, "conv2d", _weights(draw, (shape[0], src.shape[0], ky, kx), wbits), wbits, (sy, sx),
                      (py, px))


def _main_projection(draw, pops: list[Population], index: int, sizes: dict):
    """The first projection of population ``index``, which also decides its shape."""
    source = _flip(draw(st.integers(0, index - 1)), index - 1)
    src = pops[source]
    kind = draw(st.sampled_from(["conv2d", "dense"])) if len(src.shape) == 3 else "dense"
    wbits = draw(st.integers(2, 16))
    if kind == "conv2d":
        channels = draw(st.integers(1, sizes["channels"]))
        (ky, sy, py), (kx, sx, px) = (_conv_geometry(draw, src.shape[1 + a]) for a in range(2))
        shape = (channels, conv_output_size(src.shape[1], ky, sy, py), conv_output_size(src.shape[2], kx, sx, px))
        weight = _weights(draw, (channels, src.shape[0], ky, kx), wbits)
        return shape, Projection(source, "conv2d", weight, wbits, (sy, sx), (py, px))
    # dense: mostly into N neurons; sometimes into C x H x W (row r feeds the neuron of flat index r)
    if draw(st.integers(0, 3)) == 3:
        shape = (draw(st.integers(1, sizes["channels"])), draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    else:
        shape = (draw(st.integers(1, sizes["neurons"])),)
    weight = _weights(draw, (int(np.prod(shape)), src.size), wbits)
    return shape, Projection(source, "dense", weight, wbits)


def _extra_kinds(pops: list[Population], source: int, shape: tuple[int, ...]) -> list[str]:
    src = pops[source]
    kinds = []
    if len(src.shape) == 3 and len(shape) == 3:
        if all(_fitting_geometries(src.shape[1 + a], shape[1 + a]) for a in range(2)):
            kinds.append("conv2d")
        if tuple(src.shape) == tuple(shape):
            kinds.append("identity")
    return kinds + ["dense"]


def _bounds(pops: list[Population], pop: Population) -> tuple[int, int]:
    return partial_sum_bounds(Network([*pops, pop]), len(pops))


def _sinks(pops: list[Population]) -> list[int]:
    """The lif populations that no later population reads."""
    read = {proj.source for pop in pops[1:] for proj in pop.projections}
    return [p for p, pop in enumerate(pops) if pop.kind == "lif" and p not in read]


def _population(draw, pops: list[Population], index: int, readout: bool, sizes: dict) -> Population:
    shape, main = _main_projection(draw, pops, index, sizes)
    projections = [main]
    sources = [_flip(draw(st.integers(0, index - 1)), index - 1)
               for _ in range(draw(st.integers(0, sizes["extra_projections"])))]
    if readout and not sizes["dead_branches"]:  # the readout reads every sink: every population reaches it
        sources = [p for p in _sinks(pops) if p != main.source] + sources
    for source in sources:  # a join: more sources add to one current
        kind = draw(st.sampled_from(_extra_kinds(pops, source, shape)))
        projections.append(_projection(draw, pops, source, shape, kind))
    pop = Population(name="readout" if readout else f"p{index}", kind="readout" if readout else "lif",
                     shape=tuple(int(n) for n in shape), vbits=2, projections=projections)
    # the hardware's accumulator holds at most DEFAULT_MAX_ACC_BITS: halve the weights until even the narrowest
    # membrane fits (only wide pixels times wide weights over many taps need it), then draw vbits up to the widest
    # that fits
    while signed_bits_for(*(a + b for a, b in zip(signed_range(2), _bounds(pops, pop)))) > DEFAULT_MAX_ACC_BITS:
        for proj in projections:
            proj.weight = proj.weight >> 1
    lo, hi = _bounds(pops, pop)
    widest = max(v for v in range(2, 33) if signed_bits_for(signed_range(v)[0] + lo, signed_range(v)[1] + hi)
                 <= DEFAULT_MAX_ACC_BITS)
    pop.vbits = draw(st.integers(2, widest))
    vlo, vhi = signed_range(pop.vbits)
    required = signed_bits_for(vlo + lo, vhi + hi)
    pop.acc_bits = required + draw(st.integers(0, DEFAULT_MAX_ACC_BITS - required))  # room for larger biases
    pop.leak_shift = draw(st.one_of(st.none(), st.integers(1, min(15, pop.vbits - 1))))
    # a typical current sets the scale of thresholds and biases, so that neurons do fire; the extremes (a bias
    # that saturates the membrane at once, thresholds 1 and the largest) are drawn as often
    typical = 1
    for proj in projections:
        xmax = (1 << pops[proj.source].bits) - 1 if pops[proj.source].kind == "input" else 1
        typical += int(np.abs(proj.weight.reshape(proj.weight.shape[0], -1)).sum(axis=1).mean() * xmax // 3)
    alo, ahi = signed_range(pop.acc_bits)
    scale = min(typical, vhi)
    channels = pop.shape[0]
    pop.bias = draw(arrays(np.int64, channels, elements=st.one_of(
        st.integers(-scale, scale), st.sampled_from([alo, ahi, vlo, vhi]))))
    if not readout:
        pop.threshold = draw(arrays(np.int64, channels, elements=st.one_of(
            st.integers(1, scale), st.sampled_from([1, vhi]), st.integers(1, vhi))))
    return pop


@st.composite
def cases(draw, *, max_populations: int = 5, max_side: int = 8, max_channels: int = 4, max_neurons: int = 10,
          max_extra_projections: int = 2, max_images: int = 3, max_time_steps: int = 64,
          dead_branches: bool | None = None) -> Case:
    """A whole regression case; the network passes ``validate`` and the generator's ``check_supported``.

    Populations (``max_populations`` after the input, the last the readout) take a conv2d (any kernel, stride and
    padding within MAX_*, per axis) or dense projection from any earlier population, and up to
    ``max_extra_projections`` more (a join: conv2d, dense or an identity shortcut, from any earlier population,
    the same one again included). Every width is drawn from its whole range: input bits 1..16, wbits 2..16, vbits
    up to what a 32-bit accumulator allows, acc_bits beyond the bound, every leak shift and none. T is 1..64,
    mostly at most 10; lanes are 1..lane_limit per population.

    ``dead_branches``: whether lif populations whose spikes reach no readout (dead ends) may occur (None: drawn
    per case; False: the readout reads every population no other one reads). They were the regression's first
    find (the accelerator used to finish an image without waiting for them; tests/sim/test_regress.py).
    """
    if dead_branches is None:
        dead_branches = draw(st.booleans())
    sizes = {"channels": max_channels, "neurons": max_neurons, "extra_projections": max_extra_projections,
             "dead_branches": dead_branches}
    bits = draw(st.one_of(st.just(8), st.integers(1, 16)))
    channels, height, width = (draw(st.integers(1, n)) for n in (3, max_side, max_side))
    pops = [Population(name="input", kind="input", shape=(channels, height, width), bits=bits)]
    count = draw(st.sampled_from(range(1, max_populations + 1)))  # uniform: st.integers favours 1
    for index in range(1, count + 1):
        pops.append(_population(draw, pops, index, index == count, sizes))
    time_steps = draw(st.one_of(st.integers(1, 10), st.integers(1, max_time_steps)))
    net = validate(Network(pops, time_steps=time_steps, metadata={"generator": "spikeforge.strategies.cases"}))
    top = (1 << bits) - 1
    images = draw(arrays(np.uint8 if bits <= 8 else np.uint16, (draw(st.integers(1, max_images)), *net.input.shape),
                         elements=_values(0, top)))
    lanes = {p: draw(st.integers(1, lane_limit(pop))) for p, pop in enumerate(pops) if p > 0}
    return Case(net=net, images=images, time_steps=time_steps, lanes=lanes, seed=draw(st.integers(1, 1000)))


def case_id(case: Case) -> str:
    """A short hash of everything that decides a case's outcome: the network, the images, T, lanes and seed."""
    h = content_hash(case.net)
    h.update(repr((case.time_steps, sorted(case.lanes.items()), case.seed, case.images.shape,
                   case.images.dtype.str)).encode())
    h.update(np.ascontiguousarray(case.images).tobytes())
    return h.hexdigest()[:12]


def features(case: Case, spikes: list | None = None) -> dict:
    """What a case covers, for the regression's summary: JSON-ready counts and labels. ``spikes`` (the reference
    record's ``spikes``) adds each lif population's activity: silent, saturated (every neuron every step) or some."""
    net = case.net
    pops = net.populations
    projections = [proj for pop in pops[1:] for proj in pop.projections]
    convs = [proj for proj in projections if proj.kind == "conv2d"]
    out = {
        "populations": len(pops) - 1,
        "input": "x".join(map(str, net.input.shape)),
        "input_bits": net.input.bits,
        "time_steps": case.time_steps,
        "images": int(case.images.shape[0]),
        "kernels": sorted({f"{p.weight.shape[2]}x{p.weight.shape[3]}" for p in convs}),
        "strides": sorted({f"{p.stride[0]}x{p.stride[1]}" for p in convs}),
        "paddings": sorted({f"{p.padding[0]}x{p.padding[1]}" for p in convs}),
        "dense": sum(p.kind == "dense" for p in projections),
        "dense_into_chw": sum(p.kind == "dense" for pop in pops[1:] if len(pop.shape) == 3 for p in pop.projections),
        "joins": sum(len(pop.projections) > 1 for pop in pops[1:]),
        "skips": sum(p.source != i - 1 for i, pop in enumerate(pops[1:], 1) for p in pop.projections),
        "identity": sum(is_diagonal(p) for p in convs),
        "wbits": sorted({p.wbits for p in projections}),
        "weight_extremes": sum(bool(np.any(p.weight == signed_range(p.wbits)[0])) for p in projections),
        "vbits": sorted({pop.vbits for pop in pops[1:]}),
        "acc_bits": sorted({pop.acc_bits for pop in pops[1:]}),
        "leak_shifts": sorted({-1 if pop.leak_shift is None else pop.leak_shift for pop in pops[1:]}),
        "threshold_1": sum(int(np.any(pop.threshold == 1)) for pop in pops[1:-1]),
        "threshold_max": sum(int(np.any(pop.threshold == signed_range(pop.vbits)[1])) for pop in pops[1:-1]),
        "saturating_bias": sum(int(np.any(np.abs(pop.bias) > signed_range(pop.vbits)[1])) for pop in pops[1:]),
        "readout": "x".join(map(str, net.readout.shape)),
        "lanes": [case.lanes[p] for p in sorted(case.lanes)],
        "lanes_below_channels": sum(case.lanes[p] < lane_limit(pops[p]) for p in case.lanes),
        "blank_images": int(sum(not image.any() for image in case.images)),
    }
    if spikes is not None:
        activity = []
        for s in spikes:
            if s is not None:
                activity.append("silent" if not s.any() else "saturated" if s.all() else "some")
        out["activity"] = activity
    return out


def _shown(path: Path) -> str:
    """A path as a command line shows it: relative to the working folder when inside it."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def replay_command(case: Case, folder: str | Path, simulator: str = "verilator") -> str:
    """The command line that reruns a case folder's network and input through the RTL and the reference (run from
    the working folder it was written in)."""
    folder = Path(folder)
    program = Path(sys.executable).parent / "spikeforge"
    lanes = ",".join(f"{case.net.populations[p].name}={n}" for p, n in sorted(case.lanes.items()))
    words = [_shown(program) if program.is_file() else "spikeforge", "run", _shown(folder / "network.sfnet"),
             "--backend", "rtl", "--input", _shown(folder / "input.npy"), "--time-steps", str(case.time_steps),
             "--lanes", lanes, "--simulator", simulator, "--seed", str(case.seed), "--jobs", "1"]
    return shlex.join(words)


def write_case(case: Case, folder: str | Path, simulator: str = "verilator", message: str = "") -> str:
    """Write ``folder``: ``network.sfnet`` (its time_steps set to the case's T), ``input.npy``, ``command.txt``
    (the replay command), ``case.json`` (lanes, seed, features) and ``README.md`` (``message``, the command).
    Returns the command."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    case.net.time_steps = case.time_steps
    save(case.net, folder / "network.sfnet")
    np.save(folder / "input.npy", case.images)
    command = replay_command(case, folder, simulator)
    (folder / "command.txt").write_text(command + "\n")
    (folder / "case.json").write_text(json.dumps({
        "time_steps": case.time_steps, "lanes": {case.net.populations[p].name: n for p, n in case.lanes.items()},
        "seed": case.seed, "simulator": simulator, "features": features(case)}, indent=1) + "\n")
    (folder / "README.md").write_text(
        f"# A regression case that the RTL and the integer reference disagree on\n\n{message}\n\n"
        f"Replay it from `{os.getcwd()}`:\n\n```sh\n{command}\n```\n")
    return command


def summarize(results: list[dict]) -> dict:
    """The regression's coverage and timing over passed cases (``{"features", "wall_s", "sim_s"}`` each): how many
    networks had each feature, and the values seen."""
    feats = [r["features"] for r in results]

    def having(key):
        return sum(bool(f[key]) for f in feats)

    def values(key):
        found = sorted({v for f in feats for v in (f[key] if isinstance(f[key], list) else [f[key]])})
        return found

    activity = [a for f in feats for a in f.get("activity", [])]
    steps = [f["time_steps"] for f in feats]
    wall = sum(r["wall_s"] for r in results)
    sim = sum(r["sim_s"] for r in results)
    return {
        "networks": len(results),
        "rtl_wall_s_per_network": round(wall / max(1, len(results)), 2),
        "rtl_sim_s_per_network": round(sim / max(1, len(results)), 2),
        "populations": {n: sum(f["populations"] == n for f in feats) for n in values("populations")},
        "time_steps": {"1": steps.count(1), "2-10": sum(2 <= t <= 10 for t in steps),
                       "11-32": sum(11 <= t <= 32 for t in steps), "33-64": sum(t >= 33 for t in steps)},
        "kernels": values("kernels"), "strides": values("strides"), "paddings": values("paddings"),
        "leak_shifts": values("leak_shifts"), "input_bits": values("input_bits"), "wbits": values("wbits"),
        "vbits": values("vbits"), "acc_bits": values("acc_bits"), "lanes": values("lanes"),
        "with": {key: having(key) for key in ("joins", "skips", "identity", "dense", "dense_into_chw", "threshold_1",
                                               "threshold_max", "saturating_bias", "weight_extremes",
                                               "lanes_below_channels", "blank_images")},
        "lif_populations": {kind: activity.count(kind) for kind in ("silent", "some", "saturated")},
    }
