"""The network image: the one file that couples training (spikeforge.sw) and hardware (spikeforge.hw).

A network image is a ZIP archive holding ``manifest.json`` (layer descriptors and widths) and one NumPy ``.npy``
array per parameter tensor. docs/network-file.md documents every field so that a third party can write one
without this code. This module is torch-free on purpose: the gateware generator imports it.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT_NAME = "spikeforge-network"
FORMAT_VERSION = 1
MAX_ACC_BITS = 48  # the float64 reference is exact far beyond this; the limit only keeps files sane
KINDS = ("input", "lif", "readout")
PROJECTION_KINDS = ("conv2d", "dense")


class NetworkFileError(ValueError):
    """A network image (file or in-memory) breaks the format; the message names the file and the field."""


@dataclass
class Projection:
    """Synapses from one earlier population into a population.

    ``weight`` is int64: conv2d ``[C_out, C_in, KH, KW]``; dense ``[N_out, N_in]`` with the source flattened in
    (c, y, x) row-major order.
    """

    source: int
    kind: str
    weight: np.ndarray
    wbits: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)

    @property
    def kernel(self) -> tuple[int, int]:
        return tuple(self.weight.shape[2:]) if self.kind == "conv2d" else (1, 1)


@dataclass
class Population:
    """A group of neurons that shares one shape and one set of widths.

    ``shape`` is ``(C, H, W)`` or ``(N,)``; the channel of a neuron is its first index (for ``(N,)`` every neuron
    is its own channel). ``bias`` and ``threshold`` have one integer per channel (``threshold`` is None for the
    input and the readout). ``leak_shift`` is None for integrate-and-fire.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    bits: int = 8  # input only: unsigned pixel width
    vbits: int = 0
    acc_bits: int = 0
    leak_shift: int | None = None
    bias: np.ndarray | None = None
    threshold: np.ndarray | None = None
    projections: list[Projection] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class Network:
    populations: list[Population]
    time_steps: int = 10
    metadata: dict = field(default_factory=dict)

    @property
    def input(self) -> Population:
        return self.populations[0]

    @property
    def readout(self) -> Population:
        return self.populations[-1]

    def index(self, name: str) -> int:
        for i, pop in enumerate(self.populations):
            if pop.name == name:
                return i
        raise KeyError(name)


# --- integer facts the exporter, the loader and the hardware generator share ------------------------------


def signed_range(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def signed_bits_for(lo: int, hi: int) -> int:
    """Fewest bits of a two's-complement number that holds every integer in [lo, hi]."""
    bits = 1
    while not (signed_range(bits)[0] <= lo and hi <= signed_range(bits)[1]):
        bits += 1
    return bits


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def source_max(net: Network, source: int) -> int:
    """Largest value a source population puts on a synapse: 2^bits - 1 for pixels, 1 for spikes."""
    pop = net.populations[source]
    return (1 << pop.bits) - 1 if pop.kind == "input" else 1


def partial_sum_bounds(net: Network, index: int) -> tuple[int, int]:
    """Bounds on any partial sum of a population's weighted inputs (bias excluded), over all neurons.

    Any subset of the inputs may be active and they may arrive in any order, so the bound adds up every positive
    (for the maximum) or every negative (for the minimum) weight of a neuron times the source's largest value. The
    full kernel is counted even at padded borders, which can only make the bound larger.
    """
    pop = net.populations[index]
    lo = np.zeros(pop.size, np.int64)
    hi = np.zeros(pop.size, np.int64)
    for proj in pop.projections:
        xmax = source_max(net, proj.source)
        w = proj.weight.reshape(proj.weight.shape[0], -1)
        pos = np.where(w > 0, w, 0).sum(axis=1) * xmax
        neg = np.where(w < 0, w, 0).sum(axis=1) * xmax
        if proj.kind == "conv2d":  # one kernel per output channel, shared by its H x W neurons
            pos, neg = np.repeat(pos, pop.size // pop.channels), np.repeat(neg, pop.size // pop.channels)
        hi += pos
        lo += neg
    return int(lo.min()), int(hi.max())


def required_acc_bits(net: Network, index: int) -> int:
    """Width of a signed accumulator that holds leak(V) plus any partial sum of the inputs without overflow."""
    pop = net.populations[index]
    vlo, vhi = signed_range(pop.vbits)
    plo, phi = partial_sum_bounds(net, index)
    return signed_bits_for(vlo + plo, vhi + phi)


# --- validation ---------------------------------------------------------------------------------------------


def validate(net: Network, where: str = "network") -> Network:
    """Check every rule of docs/network-file.md; raise NetworkFileError naming the first broken one."""

    def fail(msg: str):
        raise NetworkFileError(f"{where}: {msg}")

    pops = net.populations
    if not isinstance(net.time_steps, int) or not 1 <= net.time_steps <= 65535:
        fail(f"time_steps must be an integer in 1..65535, not {net.time_steps!r}")
    if len(pops) < 2:
        fail("a network needs an input population and at least a readout population")
    names = set()
    for i, pop in enumerate(pops):
        tag = f"population {i} ('{pop.name}')"
        if not isinstance(pop.name, str) or not pop.name or pop.name in names:
            fail(f"{tag}: names must be non-empty and unique")
        names.add(pop.name)
        if pop.kind not in KINDS:
            fail(f"{tag}: kind must be one of {KINDS}, not {pop.kind!r}")
        want_kind = "input" if i == 0 else "readout" if i == len(pops) - 1 else "lif"
        if pop.kind != want_kind:
            fail(f"{tag}: must be of kind '{want_kind}' (population 0 is the input, the last is the readout, "
                 f"all others are lif), not '{pop.kind}'")
        if len(pop.shape) not in (1, 3) or any((not isinstance(d, int)) or d < 1 for d in pop.shape):
            fail(f"{tag}: shape must be [C, H, W] or [N] of positive integers, not {list(pop.shape)}")
        if pop.kind == "input":
            if len(pop.shape) != 3:
                fail(f"{tag}: the input's shape must be [C, H, W], not {list(pop.shape)}")
            if not 1 <= pop.bits <= 16:
                fail(f"{tag}: input bits must be in 1..16, not {pop.bits}")
            if pop.projections:
                fail(f"{tag}: the input population receives no projections")
            continue
        if not 2 <= pop.vbits <= 32:
            fail(f"{tag}: vbits must be in 2..32, not {pop.vbits}")
        if pop.leak_shift is not None and not (1 <= pop.leak_shift <= 15 and pop.leak_shift < pop.vbits):
            fail(f"{tag}: leak_shift must be null or in 1..15 and below vbits, not {pop.leak_shift}")
        vlo, vhi = signed_range(pop.vbits)
        if pop.bias is None or pop.bias.shape != (pop.channels,):
            fail(f"{tag}: bias must have one integer per channel, shape [{pop.channels}]")
        if pop.kind == "lif":
            th = pop.threshold
            if th is None or th.shape != (pop.channels,):
                fail(f"{tag}: threshold must have one integer per channel, shape [{pop.channels}]")
            if th.min() < 1 or th.max() > vhi:
                fail(f"{tag}: thresholds must lie in 1..{vhi} (vbits={pop.vbits}), found {th.min()}..{th.max()}")
        elif pop.threshold is not None:
            fail(f"{tag}: the readout does not fire and has no threshold")
        if not pop.projections:
            fail(f"{tag}: receives no projection")
        for k, proj in enumerate(pop.projections):
            ptag = f"{tag}, projection {k}"
            if not (isinstance(proj.source, int) and 0 <= proj.source < i):
                fail(f"{ptag}: source must be an earlier population's index (0..{i - 1}), not {proj.source!r}")
            src = pops[proj.source]
            if proj.kind not in PROJECTION_KINDS:
                fail(f"{ptag}: kind must be one of {PROJECTION_KINDS}, not {proj.kind!r}")
            if not 2 <= proj.wbits <= 16:
                fail(f"{ptag}: wbits must be in 2..16, not {proj.wbits}")
            wlo, whi = signed_range(proj.wbits)
            w = proj.weight
            if w.size and (w.min() < wlo or w.max() > whi):
                fail(f"{ptag}: weights must fit {proj.wbits} signed bits ({wlo}..{whi}), found {w.min()}..{w.max()}")
            if proj.kind == "conv2d":
                if len(pop.shape) != 3 or len(src.shape) != 3:
                    fail(f"{ptag}: conv2d connects C x H x W populations ({list(src.shape)} -> {list(pop.shape)})")
                if w.ndim != 4 or w.shape[0] != pop.shape[0] or w.shape[1] != src.shape[0]:
                    fail(f"{ptag}: conv2d weight must have shape [{pop.shape[0]}, {src.shape[0]}, KH, KW], "
                         f"not {list(w.shape)}")
                if any(s < 1 for s in proj.stride) or any(p < 0 for p in proj.padding):
                    fail(f"{ptag}: stride must be >= 1 and padding >= 0, not {proj.stride} / {proj.padding}")
                out = tuple(conv_output_size(src.shape[1 + a], w.shape[2 + a], proj.stride[a], proj.padding[a])
                            for a in range(2))
                if out != tuple(pop.shape[1:]):
                    fail(f"{ptag}: a {w.shape[2]}x{w.shape[3]} conv with stride {proj.stride} and padding "
                         f"{proj.padding} maps {list(src.shape)} to {[pop.shape[0], *out]}, not {list(pop.shape)}")
            else:
                if w.ndim != 2 or w.shape != (pop.size, src.size):
                    fail(f"{ptag}: dense weight must have shape [{pop.size}, {src.size}], not {list(w.shape)}")
        need = required_acc_bits(net, i)
        if need > MAX_ACC_BITS:
            fail(f"{tag}: its inputs can reach sums that need a {need}-bit accumulator, more than {MAX_ACC_BITS}")
        if pop.acc_bits < need:
            fail(f"{tag}: acc_bits={pop.acc_bits} is too narrow: leak(V) plus a partial sum of its inputs can "
                 f"need {need} bits; set acc_bits to at least {need}")
        blo, bhi = signed_range(pop.acc_bits)
        if pop.bias.min() < blo or pop.bias.max() > bhi:
            fail(f"{tag}: biases must fit acc_bits={pop.acc_bits} signed bits")
    return net


# --- reading and writing ------------------------------------------------------------------------------------


def _array_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.int64), allow_pickle=False)
    return buf.getvalue()


def save(net: Network, path: str | Path) -> Path:
    """Validate and write a network image."""
    path = Path(path)
    validate(net, str(path))
    arrays: dict[str, np.ndarray] = {}
    manifest_pops = []
    for pop in net.populations:
        entry: dict = {"name": pop.name, "kind": pop.kind, "shape": list(pop.shape)}
        if pop.kind == "input":
            entry["bits"] = pop.bits
        else:
            entry.update(vbits=pop.vbits, acc_bits=pop.acc_bits, leak_shift=pop.leak_shift)
            arrays[f"{pop.name}.bias"] = pop.bias
            entry["bias"] = f"{pop.name}.bias"
            if pop.threshold is not None:
                arrays[f"{pop.name}.threshold"] = pop.threshold
                entry["threshold"] = f"{pop.name}.threshold"
            entry["projections"] = []
            for k, proj in enumerate(pop.projections):
                key = f"{pop.name}.p{k}.weight"
                arrays[key] = proj.weight
                pe = {"source": net.populations[proj.source].name, "kind": proj.kind, "wbits": proj.wbits,
                      "weight": key}
                if proj.kind == "conv2d":
                    pe.update(stride=list(proj.stride), padding=list(proj.padding))
                entry["projections"].append(pe)
        manifest_pops.append(entry)
    manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "time_steps": net.time_steps,
                "metadata": net.metadata, "populations": manifest_pops}
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps(manifest, indent=1))
        for key, array in arrays.items():
            zf.writestr(f"arrays/{key}.npy", _array_bytes(array))
    return path


def load(path: str | Path) -> Network:
    """Read and validate a network image; any defect raises NetworkFileError naming the file and the field."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise NetworkFileError(f"{where}: no such network file; create one with `spikeforge export`")
    try:
        with zipfile.ZipFile(path) as zf:
            try:
                manifest = json.loads(zf.read("manifest.json"))
            except KeyError:
                raise NetworkFileError(f"{where}: not a spikeforge network image (no manifest.json inside)") from None
            members = set(zf.namelist())

            def array(key, tag):
                if not isinstance(key, str) or f"arrays/{key}.npy" not in members:
                    raise NetworkFileError(f"{where}: {tag} names array {key!r}, which the file does not contain")
                try:
                    a = np.load(io.BytesIO(zf.read(f"arrays/{key}.npy")), allow_pickle=False)
                except ValueError as exc:
                    raise NetworkFileError(f"{where}: array {key!r} is not a valid .npy array ({exc})") from None
                if a.dtype.kind not in "iu":
                    raise NetworkFileError(f"{where}: array {key!r} must hold integers, not {a.dtype}")
                return a.astype(np.int64)

            return _from_manifest(manifest, array, where)
    except zipfile.BadZipFile:
        raise NetworkFileError(f"{where}: not a spikeforge network image (not a ZIP archive); "
                               "create one with `spikeforge export`") from None
    except json.JSONDecodeError as exc:
        raise NetworkFileError(f"{where}: manifest.json is not valid JSON ({exc})") from None


def _from_manifest(manifest, array, where: str) -> Network:
    def fail(msg):
        raise NetworkFileError(f"{where}: {msg}")

    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        fail(f"manifest.json must have \"format\": \"{FORMAT_NAME}\"")
    if manifest.get("version") != FORMAT_VERSION:
        fail(f"format version {manifest.get('version')!r} is not supported (this spikeforge reads version "
             f"{FORMAT_VERSION}); re-export the network with this version")
    raw_pops = manifest.get("populations")
    if not isinstance(raw_pops, list):
        fail("manifest.json needs a list \"populations\"")
    names: dict[str, int] = {}
    pops = []
    for i, rp in enumerate(raw_pops):
        tag = f"population {i}"
        if not isinstance(rp, dict):
            fail(f"{tag} must be a JSON object")
        try:
            pop = Population(name=rp["name"], kind=rp["kind"], shape=tuple(rp["shape"]))
            if pop.kind == "input":
                pop.bits = rp.get("bits", 8)
            else:
                pop.vbits, pop.acc_bits, pop.leak_shift = rp["vbits"], rp["acc_bits"], rp.get("leak_shift")
                pop.bias = array(rp["bias"], f"{tag} bias")
                if rp.get("threshold") is not None:
                    pop.threshold = array(rp["threshold"], f"{tag} threshold")
                for k, rj in enumerate(rp["projections"]):
                    if rj.get("source") not in names:
                        fail(f"{tag}, projection {k}: source {rj.get('source')!r} is not an earlier population")
                    pop.projections.append(Projection(
                        source=names[rj["source"]], kind=rj["kind"], weight=array(rj["weight"], f"{tag} weight"),
                        wbits=rj["wbits"], stride=tuple(rj.get("stride", (1, 1))),
                        padding=tuple(rj.get("padding", (0, 0)))))
        except (KeyError, TypeError) as exc:
            fail(f"{tag} is missing or mistypes field {exc}")
        for attr in ("bits", "vbits", "acc_bits"):
            if not isinstance(getattr(pop, attr), int):
                fail(f"{tag}: {attr} must be an integer")
        if not isinstance(pop.name, str):
            fail(f"{tag}: name must be a string")
        names[pop.name] = i
        pops.append(pop)
    net = Network(pops, time_steps=manifest.get("time_steps", 10), metadata=manifest.get("metadata", {}))
    return validate(net, where)


def summary(net: Network) -> str:
    """A human-readable table of the populations, their widths and parameter counts."""
    lines = [f"{'#':>2} {'name':<10} {'kind':<8} {'shape':<14} {'vbits':>5} {'acc':>4} {'leak':>4}  projections"]
    for i, pop in enumerate(net.populations):
        projs = ", ".join(
            f"{p.kind}<-{net.populations[p.source].name} w{p.wbits}"
            + (f" k{p.kernel[0]} s{p.stride[0]} p{p.padding[0]}" if p.kind == "conv2d" else "")
            for p in pop.projections)
        shape = "x".join(map(str, pop.shape))
        if pop.kind == "input":
            lines.append(f"{i:>2} {pop.name:<10} {pop.kind:<8} {shape:<14} {'u' + str(pop.bits):>5}")
        else:
            leak = "-" if pop.leak_shift is None else str(pop.leak_shift)
            lines.append(f"{i:>2} {pop.name:<10} {pop.kind:<8} {shape:<14} {pop.vbits:>5} {pop.acc_bits:>4} "
                         f"{leak:>4}  {projs}")
    return "\n".join(lines)


def parameter_bits(net: Network) -> int:
    return sum(int(p.weight.size) * p.wbits for pop in net.populations for p in pop.projections)


__all__ = ["Network", "Population", "Projection", "NetworkFileError", "load", "save", "validate", "summary",
           "required_acc_bits", "partial_sum_bounds", "signed_range", "signed_bits_for", "conv_output_size",
           "source_max", "FORMAT_VERSION"]
