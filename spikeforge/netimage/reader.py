"""Reading a network file that nobody vouches for: ``spikeforge.netimage.load``.

Every declared size (the manifest's bytes, population shapes, each ``.npy`` header's dtype and shape, each ZIP
member's length) is checked against the limits of docs/network-file.md before anything is allocated or
decompressed, and every defect becomes one NetworkFileError naming the file and the field. The network it builds
then passes ``netimage.validate`` like any other. Torch-free, like netimage.
"""

from __future__ import annotations

import json
import math
import struct
import tokenize
import warnings
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from numpy.lib import format as npy_format

from .model import (FORMAT_NAME, FORMAT_VERSION, KINDS, MAX_ACC_BITS, MAX_ARRAY_ELEMENTS,
                    MAX_JSON_DEPTH, MAX_MANIFEST_BYTES, MAX_NETWORK_NEURONS, MAX_POPULATION_NEURONS,
                    MAX_POPULATIONS, MAX_PROJECTIONS, MAX_TIME_STEPS, MAX_TOTAL_ELEMENTS,
                    PROJECTION_KINDS, Network, NetworkFileError, Population, Projection,
                    projection_shape_problem, validate)

MANIFEST = "manifest.json"
NPY_VERSIONS = ((1, 0), (2, 0))
NPY_MAX_HEADER = 10000  # numpy's own bound on a header it will parse
# Only stored and deflated members: Python's zipfile inflates bzip2 and LZMA members without an output bound, so a
# few kilobytes of them could become gigabytes before the member's declared size is enforced.
ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
INT64_MAX = np.iinfo(np.int64).max

TOP_FIELDS = ("format", "version", "time_steps", "metadata", "populations")
POPULATION_FIELDS = {
    "input": ("name", "kind", "shape", "bits"),
    "lif": ("name", "kind", "shape", "vbits", "acc_bits", "leak_shift", "bias", "threshold", "projections"),
    "readout": ("name", "kind", "shape", "vbits", "acc_bits", "leak_shift", "bias", "projections"),
}
PROJECTION_FIELDS = ("source", "kind", "wbits", "weight")
CONV_DEFAULTS = {"stride": (1, 1), "padding": (0, 0)}  # the only fields with a default (docs/network-file.md)
WHAT = {  # what a field holds, for the message that asks for it
    "format": f'the string "{FORMAT_NAME}"', "version": f"the integer {FORMAT_VERSION}",
    "time_steps": f"an integer in 1..{MAX_TIME_STEPS}", "metadata": "a JSON object, {} if there is nothing to say",
    "populations": "a list of populations", "name": "a unique non-empty string", "kind": "a string",
    "shape": "[C, H, W] or [N]", "bits": "an integer in 1..16", "vbits": "an integer in 2..32",
    "acc_bits": f"an integer of at most {MAX_ACC_BITS}", "leak_shift": "null or an integer in 1..15",
    "bias": "the key of an array", "threshold": "the key of an array", "projections": "a list of projections",
    "source": "the name of an earlier population", "wbits": "an integer in 2..16", "weight": "the key of an array",
}


def shown(value) -> str:
    """A value as the file spells it (JSON), cut short for a message."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_json_integer(value) -> bool:
    return type(value) is int  # JSON true and false arrive as bool, which Python counts as int


# --- manifest.json: UTF-8 JSON, strictly ----------------------------------------------------------------------


def decode_manifest(raw: bytes, where: str):
    """Decode manifest.json's bytes by the rules of docs/network-file.md, "JSON": UTF-8 without a byte-order mark,
    no repeated keys, no NaN or Infinity, at most MAX_JSON_DEPTH levels of nesting, at most MAX_MANIFEST_BYTES."""

    def fail(msg):
        raise NetworkFileError(f"{where}: manifest.json {msg}")

    def unique_keys(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                fail(f"repeats the key {shown(key)} in one object; write each key once")
            seen.add(key)
        return dict(pairs)

    def no_constants(name):
        fail(f"holds {name}, which is not JSON; write a number or null")

    def finite(text):
        value = float(text)
        if not math.isfinite(value):
            fail(f"holds the number {text[:40]}, which is out of range for a double")
        return value

    if len(raw) > MAX_MANIFEST_BYTES:
        fail(f"is {len(raw)} bytes long, more than the limit of {MAX_MANIFEST_BYTES}")
    if raw.startswith(b"\xef\xbb\xbf"):
        fail("starts with a byte-order mark; write it as UTF-8 without one")
    if b"\x00" in raw:  # no JSON text holds a NUL byte; UTF-16 and UTF-32 text does
        fail("holds NUL bytes (is it UTF-16 or UTF-32?); write it as UTF-8")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        fail(f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); write it as UTF-8")
    try:
        value = json.loads(text, object_pairs_hook=unique_keys, parse_constant=no_constants, parse_float=finite)
    except NetworkFileError:
        raise
    except json.JSONDecodeError as exc:
        fail(f"is not valid JSON ({exc})")
    except RecursionError:
        fail(f"nests deeper than {MAX_JSON_DEPTH} levels")
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        fail(f"is not valid JSON ({exc})")
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                fail(f"nests deeper than {MAX_JSON_DEPTH} levels (objects and lists within one another)")
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return value


# --- the manifest's structure -----------------------------------------------------------------------------------


@dataclass
class ArrayField:
    """A manifest field that names an array, and where the array goes once it is read."""

    key: str
    label: str  # "population 1 ('conv1') bias"
    tag: str  # "population 1 ('conv1')" or "population 1 ('conv1'), projection 0"
    target: object  # the Population or Projection that receives it
    attr: str
    shape_problem: Callable[[tuple], str | None]


class ManifestReader:
    """Turns a decoded manifest into a Network without its arrays, and the list of array fields to fill in.

    It checks the structure (every field present, of its JSON type, no unknown field, sources and array keys that
    resolve) and the sizes the limits bound; ranges and the arithmetic rules are left to ``validate``.
    """

    def __init__(self, where: str):
        self.where = where
        self.arrays: dict[str, ArrayField] = {}  # by key, in the order the manifest names them
        self.names: dict[str, int] = {}  # the populations read so far: possible sources
        self.shapes: list[tuple] = []
        self.neurons = self.projections = 0

    def fail(self, msg: str):
        raise NetworkFileError(f"{self.where}: {msg}")

    def fields(self, obj: dict, tag: str, allowed, required, what: str):
        for key in obj:
            if key not in allowed:
                self.fail(f"{tag} has unknown field {shown(key)}; {what} has only the fields {', '.join(allowed)}")
        for key in required:
            if key not in obj:
                self.fail(f"{tag} is missing or mistypes field '{key}': add it ({WHAT[key]})")

    def integer(self, value, tag: str, name: str):
        if not is_json_integer(value):
            self.fail(f"{tag}: {name} must be {WHAT[name]}, not {shown(value)}")
        return value

    def array(self, key, tag: str, name: str, target, attr: str, shape_problem) -> None:
        label = f"{tag} {name}"
        if not isinstance(key, str) or not key:
            self.fail(f"{tag}: {name} must be {WHAT[name]} (a non-empty string), not {shown(key)}")
        if key in self.arrays:
            self.fail(f"{label} names array {key!r}, which {self.arrays[key].label} names too; give each field "
                      "its own array")
        self.arrays[key] = ArrayField(key, label, tag, target, attr, shape_problem)

    def network(self, manifest) -> Network:
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
            self.fail(f'manifest.json must have "format": "{FORMAT_NAME}"')
        if "version" not in manifest:
            self.fail(f"manifest.json is missing or mistypes field 'version': add it ({WHAT['version']})")
        version = manifest["version"]
        if not (is_json_integer(version) and version == FORMAT_VERSION):
            self.fail(f"format version {shown(version)} is not supported (this spikeforge reads version "
                      f"{FORMAT_VERSION}); re-export the network with this version")
        self.fields(manifest, "manifest.json", TOP_FIELDS, TOP_FIELDS, "the top level")
        time_steps = self.integer(manifest["time_steps"], "manifest.json", "time_steps")
        metadata = manifest["metadata"]
        if not isinstance(metadata, dict):
            self.fail(f"manifest.json: metadata must be a JSON object, not {shown(metadata)}")
        raw_pops = manifest["populations"]
        if not isinstance(raw_pops, list):
            self.fail(f"manifest.json: populations must be a list, not {shown(raw_pops)}")
        if len(raw_pops) > MAX_POPULATIONS:
            self.fail(f"manifest.json: a network has at most {MAX_POPULATIONS} populations, not {len(raw_pops)}")
        pops = [self.population(i, rp, len(raw_pops)) for i, rp in enumerate(raw_pops)]
        return Network(pops, time_steps=time_steps, metadata=metadata)

    def population(self, i: int, rp, count: int) -> Population:
        tag = f"population {i}"
        if not isinstance(rp, dict):
            self.fail(f"{tag} must be a JSON object, not {shown(rp)}")
        if "name" not in rp:
            self.fail(f"{tag} is missing or mistypes field 'name': add it ({WHAT['name']})")
        name = rp["name"]
        if not isinstance(name, str) or not name:
            self.fail(f"{tag}: name must be a non-empty string, not {shown(name)}")
        tag = f"population {i} ({name!r})"
        if name in self.names:
            self.fail(f"{tag}: names must be non-empty and unique")
        if "kind" not in rp:
            self.fail(f"{tag} is missing or mistypes field 'kind': add it (\"input\", \"lif\" or \"readout\")")
        kind = rp["kind"]
        if not isinstance(kind, str) or kind not in KINDS:
            self.fail(f"{tag}: kind must be one of {KINDS}, not {shown(kind)}")
        want_kind = "input" if i == 0 else "readout" if i == count - 1 else "lif"
        if kind != want_kind:
            self.fail(f"{tag}: must be of kind '{want_kind}' (population 0 is the input, the last is the readout, "
                      f"all others are lif), not '{kind}'")
        if kind == "input" and "projections" in rp:
            self.fail(f"{tag}: the input population receives no projections; remove its \"projections\" field")
        allowed = POPULATION_FIELDS[kind] + (("threshold",) if kind == "readout" else ())
        self.fields(rp, tag, allowed, POPULATION_FIELDS[kind], f"a{'n' if kind == 'input' else ''} {kind} population")
        shape = rp["shape"]
        if (not isinstance(shape, list) or len(shape) not in (1, 3)
                or not all(is_json_integer(d) and d >= 1 for d in shape)):
            self.fail(f"{tag}: shape must be [C, H, W] or [N] of positive integers, not {shown(shape)}")
        # each factor first, so that an absurd shape is refused before its product is formed
        if any(d > MAX_POPULATION_NEURONS for d in shape) or math.prod(shape) > MAX_POPULATION_NEURONS:
            dims = " x ".join(map(str, shape))
            self.fail(f"{tag}: a population has at most {MAX_POPULATION_NEURONS} neurons, not "
                      f"{dims if len(dims) <= 60 else shown(shape)}")
        self.neurons += math.prod(shape)
        if self.neurons > MAX_NETWORK_NEURONS:
            self.fail(f"{tag}: the populations up to this one hold {self.neurons} neurons, more than the limit of "
                      f"{MAX_NETWORK_NEURONS} for a network")
        pop = Population(name=name, kind=kind, shape=tuple(shape))
        self.shapes.append(pop.shape)
        if kind == "input":
            pop.bits = self.integer(rp["bits"], tag, "bits")
            self.names[name] = i
            return pop
        pop.vbits = self.integer(rp["vbits"], tag, "vbits")
        pop.acc_bits = self.integer(rp["acc_bits"], tag, "acc_bits")
        if rp["leak_shift"] is not None:
            pop.leak_shift = self.integer(rp["leak_shift"], tag, "leak_shift")
        channels = shape[0]

        def per_channel(name):
            return lambda got: (None if tuple(got) == (channels,) else
                                f"{name} must have one integer per channel, shape [{channels}], not {list(got)}")

        self.array(rp["bias"], tag, "bias", pop, "bias", per_channel("bias"))
        if kind == "lif":
            self.array(rp["threshold"], tag, "threshold", pop, "threshold", per_channel("threshold"))
        elif rp.get("threshold") is not None:
            self.fail(f"{tag}: the readout does not fire and has no threshold; remove its \"threshold\" field")
        if not isinstance(rp["projections"], list):
            self.fail(f"{tag}: projections must be a list, not {shown(rp['projections'])}")
        for k, rj in enumerate(rp["projections"]):
            pop.projections.append(self.projection(f"{tag}, projection {k}", rj, pop))
        self.names[name] = i  # only now: a projection's source is an earlier population, never this one
        return pop

    def projection(self, tag: str, rj, pop: Population) -> Projection:
        self.projections += 1
        if self.projections > MAX_PROJECTIONS:
            self.fail(f"{tag}: a network has at most {MAX_PROJECTIONS} projections")
        if not isinstance(rj, dict):
            self.fail(f"{tag} must be a JSON object, not {shown(rj)}")
        if "kind" not in rj:
            self.fail(f"{tag} is missing or mistypes field 'kind': add it (\"conv2d\" or \"dense\")")
        kind = rj["kind"]
        if not isinstance(kind, str) or kind not in PROJECTION_KINDS:
            self.fail(f"{tag}: kind must be one of {PROJECTION_KINDS}, not {shown(kind)}")
        if kind == "dense" and ("stride" in rj or "padding" in rj):
            self.fail(f"{tag}: stride and padding belong to conv2d projections; remove them from this dense projection")
        allowed = PROJECTION_FIELDS + (tuple(CONV_DEFAULTS) if kind == "conv2d" else ())
        self.fields(rj, tag, allowed, PROJECTION_FIELDS, f"a {kind} projection")
        source = rj["source"]
        if not isinstance(source, str):
            self.fail(f"{tag}: source must be the name of an earlier population (a string), not {shown(source)}")
        if source not in self.names:
            self.fail(f"{tag}: source {source!r} is not an earlier population")
        proj = Projection(source=self.names[source], kind=kind, weight=np.zeros(0, np.int64),
                          wbits=self.integer(rj["wbits"], tag, "wbits"))
        for name, default in CONV_DEFAULTS.items():
            value = rj.get(name, list(default))
            if not (isinstance(value, list) and len(value) == 2 and all(is_json_integer(v) for v in value)):
                self.fail(f"{tag}: {name} must be a list of two integers [{name[0]}y, {name[0]}x], not {shown(value)}")
            setattr(proj, name, tuple(value))
        src_shape, pop_shape = self.shapes[proj.source], pop.shape
        self.array(rj["weight"], tag, "weight", proj, "weight",
                   lambda got: projection_shape_problem(kind, src_shape, pop_shape, got, proj.stride, proj.padding))
        return proj


# --- the archive --------------------------------------------------------------------------------------------------


class ArchiveReader:
    """Reads the members of an open ZIP archive with bounded effort; knows the ZIP and .npy rules."""

    def __init__(self, zf: zipfile.ZipFile, where: str):
        self.zf = zf
        self.where = where
        self.elements = 0

    def fail(self, msg: str):
        raise NetworkFileError(f"{self.where}: {msg}")

    def members(self) -> dict[str, zipfile.ZipInfo]:
        infos = self.zf.infolist()
        counts = Counter(info.filename for info in infos)
        for name, n in counts.items():
            if n > 1:
                self.fail(f"the ZIP archive holds {n} members named {name!r}; write each member once")
        return {info.filename: info for info in infos}

    def check_member(self, info: zipfile.ZipInfo, label: str) -> None:
        if info.flag_bits & 0x1:
            self.fail(f"{label} is encrypted; write the archive without a password")
        if info.compress_type not in ZIP_METHODS:
            self.fail(f"{label} uses ZIP compression method {info.compress_type}; write it stored (0) or deflated (8)")

    def read_manifest(self, info: zipfile.ZipInfo):
        self.check_member(info, "manifest.json")
        if info.file_size > MAX_MANIFEST_BYTES:
            self.fail(f"manifest.json is {info.file_size} bytes long, more than the limit of {MAX_MANIFEST_BYTES}")
        with self.opened(info, "manifest.json") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
            f.read(1)  # reaching the end checks the CRC
        return decode_manifest(raw, self.where)

    def opened(self, info: zipfile.ZipInfo, label: str):
        return GuardedMember(self, info, label)

    def read_array(self, info: zipfile.ZipInfo, field: ArrayField) -> np.ndarray:
        label = f"{field.label}: array {field.key!r}"
        self.check_member(info, f"{label} ({info.filename})")
        with self.opened(info, f"{label} ({info.filename})") as f:
            try:
                version = npy_format.read_magic(f)
            except ValueError:
                self.fail(f"{label} is not a valid .npy array (it does not start with the .npy magic string); "
                          "write it with numpy.save")
            if version not in NPY_VERSIONS:
                self.fail(f"{label} is a .npy file of version {version[0]}.{version[1]}; write version 1.0 or 2.0")
            read_header = (npy_format.read_array_header_1_0 if version == (1, 0) else
                           npy_format.read_array_header_2_0)
            try:
                with warnings.catch_warnings():  # a header that needs numpy's Python 2 repair is refused below
                    warnings.simplefilter("ignore")
                    shape, fortran_order, dtype = read_header(f, max_header_size=NPY_MAX_HEADER)
            except (ValueError, SyntaxError, tokenize.TokenError, TypeError, RecursionError, OverflowError,
                    MemoryError) as exc:  # what numpy's literal_eval of a hostile header can raise
                reason = str(exc).split("\n")[0][:120]
                self.fail(f"{label} is not a valid .npy array (its header cannot be read: {reason}); "
                          "write it with numpy.save")
            if dtype.kind not in "iu" or dtype.fields is not None or dtype.subdtype is not None:
                self.fail(f"{label} must hold integers, not {dtype}")
            if not all(is_json_integer(d) and d >= 0 for d in shape):
                self.fail(f"{label} has an invalid shape {shape!r} in its .npy header")
            problem = field.shape_problem(shape)
            if problem is not None:
                self.fail(f"{field.tag}: {problem}")
            count = math.prod(shape)
            if count > MAX_ARRAY_ELEMENTS:
                self.fail(f"{label} has {count} elements, more than the limit of {MAX_ARRAY_ELEMENTS} per array")
            self.elements += count
            if self.elements > MAX_TOTAL_ELEMENTS:
                self.fail(f"{label}: the arrays up to this one hold {self.elements} integers, more than the limit "
                          f"of {MAX_TOTAL_ELEMENTS} for a network")
            # The member's declared length must be exactly header plus data: then at most that is ever inflated.
            nbytes = count * dtype.itemsize
            expected = f.tell() + nbytes
            if info.file_size != expected:
                self.fail(f"{label} is {info.file_size} bytes long, but its .npy header promises {expected} "
                          f"({list(shape)} of {dtype}); write it again")
            data = f.read(nbytes)
            if len(data) != nbytes or f.read(1):
                self.fail(f"{label} does not hold the {nbytes} bytes of data its header promises; write it again")
        values = np.frombuffer(data, dtype=dtype)
        values = values.reshape(shape[::-1]).T if fortran_order else values.reshape(shape)
        if dtype.kind == "u" and dtype.itemsize == 8 and count and int(values.max()) > INT64_MAX:
            self.fail(f"{label} holds {int(values.max())}, beyond the int64 range of the format")
        return np.array(values, dtype=np.int64, order="C")


class GuardedMember:
    """``zf.open(info)`` whose low-level failures (bad CRC, corrupt deflate data, a lying local header) become one
    NetworkFileError naming the member."""

    ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError, struct.error)

    def __init__(self, archive: ArchiveReader, info: zipfile.ZipInfo, label: str):
        self.archive, self.info, self.label = archive, info, label
        self.stream = None

    def __enter__(self):
        try:
            self.stream = self.archive.zf.open(self.info)
        except self.ERRORS as exc:
            self.broken(exc)
        return self.stream

    def __exit__(self, kind, exc, tb):
        self.stream.close()
        if exc is not None and not isinstance(exc, NetworkFileError) and isinstance(exc, self.ERRORS):
            self.broken(exc)
        return False

    def broken(self, exc):
        self.archive.fail(f"{self.label} cannot be read from the ZIP archive ({exc}); write the file again")


# --- the whole file -----------------------------------------------------------------------------------------------


def load(path: str | Path) -> Network:
    """Read and validate a network image; any defect raises NetworkFileError naming the file and the field.

    Every declared size is checked against the limits before anything is allocated or decompressed, so no file can
    crash the reader, hang it or exhaust memory."""
    path = Path(path)
    where = str(path)
    if not path.exists():
        raise NetworkFileError(f"{where}: no such network file; create one with `spikeforge export`")
    if not path.is_file():
        raise NetworkFileError(f"{where}: not a regular file; pass the path of a .sfnet network file")
    try:
        zf = zipfile.ZipFile(path)
    except OSError as exc:
        raise NetworkFileError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    except (zipfile.BadZipFile, EOFError, ValueError, struct.error, NotImplementedError) as exc:
        raise NetworkFileError(f"{where}: not a spikeforge network image (not a ZIP archive: {exc}); "
                               "create one with `spikeforge export`") from None
    with zf:
        archive = ArchiveReader(zf, where)
        members = archive.members()
        if MANIFEST not in members:
            archive.fail("not a spikeforge network image (no manifest.json inside)")
        manifest = archive.read_manifest(members[MANIFEST])
        reader = ManifestReader(where)
        net = reader.network(manifest)
        wanted = {f"arrays/{key}.npy": field for key, field in reader.arrays.items()}
        for name, field in wanted.items():
            if name not in members:
                archive.fail(f"{field.label} names array {field.key!r}, which the file does not contain")
        for name, info in members.items():
            if name == MANIFEST or name in wanted or (name.endswith("/") and info.file_size == 0):
                continue  # directory entries, as `zip -r` writes them, are allowed
            what = (f"array {name[7:-4]!r} that no field of the manifest names" if name.startswith("arrays/")
                    and name.endswith(".npy") else "a member that is neither manifest.json nor an array")
            archive.fail(f"the ZIP archive holds {name!r}, {what}; remove it")
        for name, field in wanted.items():
            setattr(field.target, field.attr, archive.read_array(members[name], field))
    return validate(net, where)
