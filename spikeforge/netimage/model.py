"""What a network image holds: the types (Network, Population, Projection), the limits and rules of
docs/network-file.md (``validate``), and the integer facts the exporter, the loader and the gateware share (partial
sum bounds, accumulator widths). The reader (.reader) and the writer (.writer) build on it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

FORMAT_NAME = "spikeforge-network"
FORMAT_VERSION = 1
MAX_ACC_BITS = 48  # the float64 reference is exact far beyond this; the limit only keeps files sane
KINDS = ("input", "lif", "readout")
PROJECTION_KINDS = ("conv2d", "dense")

# Limits (docs/network-file.md, "Limits"). The reader checks each declared size against them before it allocates or
# decompresses anything, so a small file cannot make it allocate more than the largest legal network needs. They
# are generous: a full-width ResNet-50 on 3 x 224 x 224 images (25.5 M weights, 0.8 M neurons in its largest
# population, 9.8 M in all) fits. They also keep every partial sum below 2^56 (at most 2^25 weights of
# magnitude <= 2^15 times pixels < 2^16), so the int64 arithmetic of partial_sum_bounds cannot overflow.
MAX_TIME_STEPS = 65535
MAX_MANIFEST_BYTES = 1 << 20
MAX_JSON_DEPTH = 64
MAX_NAME_CHARS = 256
MAX_POPULATIONS = 1024
MAX_PROJECTIONS = 4096
MAX_POPULATION_NEURONS = 1 << 22
MAX_NETWORK_NEURONS = 1 << 24
MAX_ARRAY_ELEMENTS = 1 << 24
MAX_TOTAL_ELEMENTS = 1 << 25
MAX_STRIDE = 65535
MAX_PADDING = 65535


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
        return math.prod(int(d) for d in self.shape)


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
    # Per channel, not per neuron: a conv kernel is shared by a channel's H x W neurons, and a file's shape alone
    # must not make this allocate. Only a dense projection has per-neuron rows, and it already holds them.
    per_channel = pop.size // pop.channels
    lo = np.zeros((pop.channels, 1), np.int64)
    hi = np.zeros((pop.channels, 1), np.int64)
    for proj in pop.projections:
        xmax = source_max(net, proj.source)
        w = proj.weight.reshape(proj.weight.shape[0], -1)
        pos = np.where(w > 0, w, 0).sum(axis=1) * xmax
        neg = np.where(w < 0, w, 0).sum(axis=1) * xmax
        if proj.kind == "conv2d":  # one kernel per output channel
            pos, neg = pos[:, None], neg[:, None]
        else:  # row r is the neuron of flat index r, in channel r // per_channel
            pos, neg = pos.reshape(pop.channels, per_channel), neg.reshape(pop.channels, per_channel)
        hi = hi + pos
        lo = lo + neg
    return int(lo.min()), int(hi.max())


def required_acc_bits(net: Network, index: int) -> int:
    """Width of a signed accumulator that holds leak(V) plus any partial sum of the inputs without overflow."""
    pop = net.populations[index]
    vlo, vhi = signed_range(pop.vbits)
    plo, phi = partial_sum_bounds(net, index)
    return signed_bits_for(vlo + plo, vhi + phi)


# --- validation ---------------------------------------------------------------------------------------------


def is_integer(value) -> bool:
    """An integer in the file's sense: a Python or NumPy integer, never a bool (``True`` is not 1 here)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_integer_array(value) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.kind in "iu"


def is_integer_pair(value) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 2 and all(is_integer(x) for x in value)


def name_problem(name) -> str | None:
    """Why a population name is not allowed, or None. Names become ZIP member names when saved (a NUL would cut
    one short, a lone surrogate cannot be encoded), hence the character rules."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if len(name) > MAX_NAME_CHARS:
        return f"must be at most {MAX_NAME_CHARS} characters long, not {len(name)}"
    for c in name:
        if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF:
            return f"must not contain control characters or unpaired surrogates (found U+{ord(c):04X})"
    return None


def projection_shape_problem(kind: str, src_shape, pop_shape, weight_shape, stride, padding) -> str | None:
    """Why a projection's weight shape (and for conv2d its stride and padding) does not connect ``src_shape`` to
    ``pop_shape``, or None. Shared by ``validate`` and the reader, which asks before it reads the weights."""
    if kind == "conv2d":
        if len(pop_shape) != 3 or len(src_shape) != 3:
            return f"conv2d connects C x H x W populations ({list(src_shape)} -> {list(pop_shape)})"
        if len(weight_shape) != 4 or weight_shape[0] != pop_shape[0] or weight_shape[1] != src_shape[0]:
            return f"conv2d weight must have shape [{pop_shape[0]}, {src_shape[0]}, KH, KW], not {list(weight_shape)}"
        if weight_shape[2] < 1 or weight_shape[3] < 1:
            return f"a conv2d kernel must be at least 1x1, not {weight_shape[2]}x{weight_shape[3]}"
        if not (all(1 <= s <= MAX_STRIDE for s in stride) and all(0 <= p <= MAX_PADDING for p in padding)):
            return (f"stride must be in 1..{MAX_STRIDE} and padding in 0..{MAX_PADDING}, not {list(stride)} / "
                    f"{list(padding)}")
        out = tuple(conv_output_size(src_shape[1 + a], weight_shape[2 + a], stride[a], padding[a]) for a in range(2))
        if out != tuple(pop_shape[1:]):
            return (f"a {weight_shape[2]}x{weight_shape[3]} conv with stride {tuple(stride)} and padding "
                    f"{tuple(padding)} maps {list(src_shape)} to {[pop_shape[0], *out]}, not {list(pop_shape)}")
        return None
    want = (math.prod(pop_shape), math.prod(src_shape))
    if tuple(weight_shape) != want:
        return f"dense weight must have shape [{want[0]}, {want[1]}], not {list(weight_shape)}"
    return None


def validate(net: Network, where: str = "network") -> Network:
    """Check every rule and limit of docs/network-file.md; raise NetworkFileError naming the first broken one."""

    def fail(msg: str):
        raise NetworkFileError(f"{where}: {msg}")

    pops = net.populations
    if not is_integer(net.time_steps) or not 1 <= net.time_steps <= MAX_TIME_STEPS:
        fail(f"time_steps must be an integer in 1..{MAX_TIME_STEPS}, not {net.time_steps!r}")
    if not isinstance(net.metadata, dict):
        fail(f"metadata must be a dict (a JSON object), not {type(net.metadata).__name__}")
    if len(pops) < 2:
        fail("a network needs an input population and at least a readout population")
    if len(pops) > MAX_POPULATIONS:
        fail(f"a network has at most {MAX_POPULATIONS} populations, not {len(pops)}")
    names = set()
    neurons = elements = projections = 0
    for i, pop in enumerate(pops):
        tag = f"population {i} ({pop.name!r})"
        problem = name_problem(pop.name)
        if problem is not None:
            fail(f"{tag}: the name {problem}")
        if pop.name in names:
            fail(f"{tag}: names must be non-empty and unique")
        names.add(pop.name)
        if pop.kind not in KINDS:
            fail(f"{tag}: kind must be one of {KINDS}, not {pop.kind!r}")
        want_kind = "input" if i == 0 else "readout" if i == len(pops) - 1 else "lif"
        if pop.kind != want_kind:
            fail(f"{tag}: must be of kind '{want_kind}' (population 0 is the input, the last is the readout, "
                 f"all others are lif), not '{pop.kind}'")
        shape = pop.shape
        if (not isinstance(shape, (tuple, list)) or len(shape) not in (1, 3)
                or not all(is_integer(d) and d >= 1 for d in shape)):
            fail(f"{tag}: shape must be [C, H, W] or [N] of positive integers, not {shape!r}")
        # each factor first, so that an absurd shape is refused before its product is formed
        if any(d > MAX_POPULATION_NEURONS for d in shape) or pop.size > MAX_POPULATION_NEURONS:
            fail(f"{tag}: a population has at most {MAX_POPULATION_NEURONS} neurons, not {' x '.join(map(str, shape))}")
        neurons += pop.size
        if neurons > MAX_NETWORK_NEURONS:
            fail(f"{tag}: the populations up to this one hold {neurons} neurons, more than the limit of "
                 f"{MAX_NETWORK_NEURONS} for a network")
        if pop.kind == "input":
            if len(shape) != 3:
                fail(f"{tag}: the input's shape must be [C, H, W], not {list(shape)}")
            if not is_integer(pop.bits) or not 1 <= pop.bits <= 16:
                fail(f"{tag}: input bits must be in 1..16, not {pop.bits!r}")
            if pop.projections:
                fail(f"{tag}: the input population receives no projections")
            if pop.bias is not None or pop.threshold is not None or pop.leak_shift is not None:
                fail(f"{tag}: the input population has no bias, threshold or leak_shift")
            continue
        if not is_integer(pop.vbits) or not 2 <= pop.vbits <= 32:
            fail(f"{tag}: vbits must be in 2..32, not {pop.vbits!r}")
        if pop.leak_shift is not None and not (is_integer(pop.leak_shift) and 1 <= pop.leak_shift <= 15
                                               and pop.leak_shift < pop.vbits):
            fail(f"{tag}: leak_shift must be null or in 1..15 and below vbits, not {pop.leak_shift!r}")
        if not is_integer(pop.acc_bits) or not 1 <= pop.acc_bits <= MAX_ACC_BITS:
            fail(f"{tag}: acc_bits must be an integer of at most {MAX_ACC_BITS}, not {pop.acc_bits!r}")
        vlo, vhi = signed_range(pop.vbits)
        if not is_integer_array(pop.bias) or pop.bias.shape != (pop.channels,):
            fail(f"{tag}: bias must have one integer per channel, shape [{pop.channels}]")
        elements += pop.bias.size
        if pop.kind == "lif":
            th = pop.threshold
            if not is_integer_array(th) or th.shape != (pop.channels,):
                fail(f"{tag}: threshold must have one integer per channel, shape [{pop.channels}]")
            if int(th.min()) < 1 or int(th.max()) > vhi:
                fail(f"{tag}: thresholds must lie in 1..{vhi} (vbits={pop.vbits}), found {th.min()}..{th.max()}")
            elements += th.size
        elif pop.threshold is not None:
            fail(f"{tag}: the readout does not fire and has no threshold")
        if not pop.projections:
            fail(f"{tag}: receives no projection")
        for k, proj in enumerate(pop.projections):
            ptag = f"{tag}, projection {k}"
            projections += 1
            if projections > MAX_PROJECTIONS:
                fail(f"{ptag}: a network has at most {MAX_PROJECTIONS} projections")
            if not (is_integer(proj.source) and 0 <= proj.source < i):
                fail(f"{ptag}: source must be an earlier population's index (0..{i - 1}), not {proj.source!r}")
            src = pops[proj.source]
            if proj.kind not in PROJECTION_KINDS:
                fail(f"{ptag}: kind must be one of {PROJECTION_KINDS}, not {proj.kind!r}")
            if not is_integer(proj.wbits) or not 2 <= proj.wbits <= 16:
                fail(f"{ptag}: wbits must be in 2..16, not {proj.wbits!r}")
            w = proj.weight
            if not is_integer_array(w):
                fail(f"{ptag}: weight must be an array of integers")
            if w.size > MAX_ARRAY_ELEMENTS:
                fail(f"{ptag}: an array has at most {MAX_ARRAY_ELEMENTS} elements, not {w.size}")
            elements += w.size
            if elements > MAX_TOTAL_ELEMENTS:
                fail(f"{ptag}: the arrays up to this one hold {elements} integers, more than the limit of "
                     f"{MAX_TOTAL_ELEMENTS} for a network")
            if not (is_integer_pair(proj.stride) and is_integer_pair(proj.padding)):
                fail(f"{ptag}: stride and padding must be pairs of integers, not {proj.stride!r} / {proj.padding!r}")
            if proj.kind == "dense" and (tuple(proj.stride) != (1, 1) or tuple(proj.padding) != (0, 0)):
                fail(f"{ptag}: a dense projection has no stride or padding, not {proj.stride!r} / {proj.padding!r}")
            problem = projection_shape_problem(proj.kind, src.shape, pop.shape, w.shape, proj.stride, proj.padding)
            if problem is not None:
                fail(f"{ptag}: {problem}")
            wlo, whi = signed_range(proj.wbits)
            if w.size and (int(w.min()) < wlo or int(w.max()) > whi):
                fail(f"{ptag}: weights must fit {proj.wbits} signed bits ({wlo}..{whi}), found {w.min()}..{w.max()}")
        need = required_acc_bits(net, i)
        if need > MAX_ACC_BITS:
            fail(f"{tag}: its inputs can reach sums that need a {need}-bit accumulator, more than {MAX_ACC_BITS}")
        if pop.acc_bits < need:
            fail(f"{tag}: acc_bits={pop.acc_bits} is too narrow: leak(V) plus a partial sum of its inputs can "
                 f"need {need} bits; set acc_bits to at least {need}")
        blo, bhi = signed_range(pop.acc_bits)
        if int(pop.bias.min()) < blo or int(pop.bias.max()) > bhi:
            fail(f"{tag}: biases must fit acc_bits={pop.acc_bits} signed bits")
    return net


# --- reading and writing ------------------------------------------------------------------------------------


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


def content_hash(net: Network):
    """A sha256 object fed with everything that decides what a network computes: every population's name, kind,
    shape and widths, biases, thresholds, and every projection's geometry and weights (not the metadata). Callers
    add their own context (T, lanes, images) and take a digest, e.g. to name a build folder or a test case."""
    h = hashlib.sha256()
    for pop in net.populations:
        h.update(repr((pop.name, pop.kind, pop.shape, pop.bits, pop.vbits, pop.acc_bits, pop.leak_shift)).encode())
        for values in (pop.bias, pop.threshold):
            if values is not None:
                h.update(np.ascontiguousarray(values, np.int64).tobytes())
        for proj in pop.projections:
            h.update(repr((proj.source, proj.kind, proj.wbits, proj.stride, proj.padding, proj.weight.shape)).encode())
            h.update(np.ascontiguousarray(proj.weight, np.int64).tobytes())
    return h


def parameter_bits(net: Network) -> int:
    return sum(int(p.weight.size) * p.wbits for pop in net.populations for p in pop.projections)
