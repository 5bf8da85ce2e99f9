"""A property-based fuzzer for the network-file loader: no file may crash it, hang it or exhaust its memory.

Starting from valid files (random networks of spikeforge.testing and the committed demo network), hypothesis
applies up to three mutations: to the manifest (fields deleted, retyped, replaced by edge values, huge shapes,
reordered populations, other encodings), to the arrays (dtypes, shapes, values, garbage, truncation, lying
headers) and to the ZIP archive (duplicate, extra, missing, encrypted or recompressed members, lying sizes and CRCs,
flipped bytes). Every file must either load to a network that says what the file says and round-trips through
save/load unchanged, or be refused with one NetworkFileError naming the file, within TIME_BOUND_S seconds and
MEMORY_BOUND bytes of traced allocation. The run is derandomized, so CI sees the same cases every time;
SPIKEFORGE_FUZZ_EXAMPLES=10000 runs more than `make test`'s FUZZ_EXAMPLES (SPIKEFORGE_FUZZ_REPORT=1 lists the
refusals reached). About 500 lines in one file on purpose: the catalogue of mutations reads best beside the
properties it is checked against.
"""

import copy
import io
import json
import os
import re
import struct
import time
import tracemalloc
import warnings
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netfile_helpers import npy_bytes, npy_header, npy_split, patch_entry, read_members, zip_bytes
from spikeforge import netimage
from spikeforge.testing import random_network, random_residual_network
from spikeforge.netimage import NetworkFileError

FUZZ_EXAMPLES = int(os.environ.get("SPIKEFORGE_FUZZ_EXAMPLES", "2000"))  # about 20 s on 2 cores
TIME_BOUND_S = 2.0
MEMORY_BOUND = 100 << 20
DEMO = Path(__file__).resolve().parents[1] / "data" / "demo-mnist.sfnet"

EDGE_INTEGERS = [0, 1, -1, 2, 3, 7, 8, 15, 16, 17, 31, 32, 33, 47, 48, 49, 64, 255, 256, 65535, 65536, 1 << 22,
                 (1 << 22) + 1, (1 << 24) + 1, (1 << 31) - 1, 1 << 31, 1 << 32, (1 << 63) - 1, 1 << 63, 1 << 64,
                 -(1 << 63) - 1, 10 ** 30]
ODD_VALUES = [True, False, None, 0.0, 1.0, 2.0, 0.5, -1.5, 1e300, "", "8", "lif", "input", "readout", "dense",
              "conv2d", "spikeforge-network", [], {}, [1], [1, 1], [2, 2], [0, 0], [1, 2, 3], [[1]], [True, 1],
              [1.0, 1.0], {"a": 1}]
HUGE_SHAPES = [[6000, 6000], [65535, 65535], [1, 6000, 6000], [1, 65535, 65535], [1 << 22], [(1 << 22) + 1],
               [2048, 2048, 2], [1, 1, 1], [1], [10 ** 30], [1, 2048, 2048], [0, 3, 3], [2, 3, -3]]
FIELD_NAMES = ["extra", "comment", "bias", "threshold", "stride", "padding", "projections", "bits", "vbits",
               "acc_bits", "leak_shift", "name", "kind", "shape", "source", "weight", "wbits", "metadata"]
DTYPES = ["|i1", "|u1", "<i2", ">i2", "<u2", "<i4", ">u4", "<i8", ">i8", "<u8", "<f4", "<f8", "|b1", "<c8", "|S4",
          "<M8[s]", "object", "structured"]
HEADER_TEXTS = ["garbage", "{}", "(" * 300, "{'descr': '<i8'}", "{'descr': '<i8', 'fortran_order': 1, 'shape': (2,)}",
                "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), 'extra': 1}",
                "{'descr': 'O', 'fortran_order': False, 'shape': (2,)}",
                "{'descr': [('a', '<i8')], 'fortran_order': False, 'shape': (2,)}",
                "{'descr': '<i8', 'fortran_order': False, 'shape': (2.0,)}", "-" * 2000 + "1",
                "{'descr': '<i8', 'fortran_order': False, 'shape': (" + "9" * 5000 + ",)}"]
EXTRA_MEMBERS = ["README.txt", "arrays/extra.npy", "arrays/", "manifest.json/", "__MACOSX/manifest.json",
                 "arrays/layer1.bias.npy.bak", "Manifest.json", "arrays/readout.bias.npy"]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Valid files as (manifest, members): drawn chains and residual nets, a dense projection into a C x H x W
    population, and the committed demo network."""
    folder = tmp_path_factory.mktemp("bases")
    nets = [random_network(seed) for seed in range(4)] + [random_residual_network(seed) for seed in range(3)]
    nets.append(random_residual_network(5, layers=[("conv", 2, 3, 1, 1, [("dense", 0)]), ("dense", 3)]))
    files = [netimage.save(net, folder / f"base{i}.sfnet") for i, net in enumerate(nets)] + [DEMO]
    return [read_members(path) for path in files]


class Case:
    """One file under construction."""

    def __init__(self, base, method):
        self.manifest = copy.deepcopy(base[0])
        self.members = [[name, data, method] for name, data, _ in base[1]]
        self.text_edits = []  # functions on the manifest's JSON text (bytes)
        self.archive_edits = []  # functions on the whole archive (bytes)

    def nodes(self):
        out = []

        def walk(value):
            items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
            for key, child in items:
                out.append((value, key))
                walk(child)

        walk(self.manifest)
        return out

    def dicts(self):
        return [self.manifest] + [parent[key] for parent, key in self.nodes() if isinstance(parent[key], dict)]

    def populations(self):
        pops = self.manifest.get("populations")
        return [p for p in pops if isinstance(p, dict)] if isinstance(pops, list) else []

    def array_members(self):
        return [m for m in self.members if m[0].startswith("arrays/") and m[0].endswith(".npy")]

    def archive(self) -> bytes:
        text = json.dumps(self.manifest).encode()
        for edit in self.text_edits:
            text = edit(text)
        data = zip_bytes(self.members, text)
        for edit in self.archive_edits:
            data = edit(data)
        return data


def values(case):
    names = [p.get("name") for p in case.populations()] + [m[0][7:-4] for m in case.array_members()]
    # copies: a later mutation may edit the value in place, and the constants must stay what they are
    return st.one_of(st.sampled_from(EDGE_INTEGERS), st.integers(-(1 << 70), 1 << 70), st.sampled_from(ODD_VALUES),
                     st.sampled_from(names or [""]), st.text(max_size=6),
                     st.lists(st.integers(-3, 70000), max_size=4)).map(copy.deepcopy)


# --- mutations of the manifest ------------------------------------------------------------------------------------

def replace_value(draw, case):
    nodes = case.nodes()
    if nodes:
        parent, key = draw(st.sampled_from(nodes))
        parent[key] = draw(values(case))


def delete_value(draw, case):
    nodes = case.nodes()
    if nodes:
        parent, key = draw(st.sampled_from(nodes))
        del parent[key]


def add_field(draw, case):
    target = draw(st.sampled_from(case.dicts()))
    target[draw(st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=4)))] = draw(values(case))


def retype_value(draw, case):
    nodes = [(p, k) for p, k in case.nodes() if isinstance(p[k], (int, list, str)) and not isinstance(p[k], bool)]
    if nodes:
        parent, key = draw(st.sampled_from(nodes))
        value = parent[key]
        how = draw(st.sampled_from(["float", "str", "bool", "list", "object", "tuple_str"]))
        parent[key] = {"float": lambda v: float(v) if isinstance(v, int) else 1.0, "str": str,
                       "bool": bool, "list": lambda v: [v], "object": lambda v: {"value": v},
                       "tuple_str": lambda v: repr(tuple(v)) if isinstance(v, list) else v}[how](value)


def huge_shape(draw, case):
    pops = case.populations()
    if pops:
        draw(st.sampled_from(pops))["shape"] = list(draw(st.sampled_from(HUGE_SHAPES)))


def restructure(draw, case):
    pops = case.manifest.get("populations")
    if not isinstance(pops, list) or not pops:
        return
    i, j = draw(st.integers(0, len(pops) - 1)), draw(st.integers(0, len(pops) - 1))
    how = draw(st.sampled_from(["swap", "duplicate", "remove", "reverse", "copy_projection", "drop_projections",
                                "self_source"]))
    if how == "swap":
        pops[i], pops[j] = pops[j], pops[i]
    elif how == "duplicate":
        pops.insert(j, copy.deepcopy(pops[i]))
    elif how == "remove":
        del pops[i]
    elif how == "reverse":
        pops.reverse()
    elif isinstance(pops[i], dict) and isinstance(pops[i].get("projections"), list):
        projections = pops[i]["projections"]
        if how == "copy_projection" and projections:
            projections.append(copy.deepcopy(projections[0]))
        elif how == "drop_projections":
            projections.clear()
        elif how == "self_source" and projections and isinstance(projections[0], dict):
            projections[0]["source"] = pops[i].get("name")


def alias_key(draw, case):
    fields = [(p, "bias") for p in case.populations() if "bias" in p] + \
             [(p, "threshold") for p in case.populations() if "threshold" in p] + \
             [(r, "weight") for p in case.populations() if isinstance(p.get("projections"), list)
              for r in p["projections"] if isinstance(r, dict) and "weight" in r]
    keys = [m[0][7:-4] for m in case.array_members()]
    if fields and keys:
        parent, field = draw(st.sampled_from(fields))
        parent[field] = draw(st.sampled_from(keys + ["missing", "../manifest", "arrays/x"]))


def manifest_text(draw, case):
    how = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32", "utf-8-sig", "latin-1", "bad_byte", "truncate",
                                "duplicate_key", "nan", "infinity", "big_number", "huge_int", "nul", "deep", "pad"]))
    cut = draw(st.integers(0, 400))
    depth = draw(st.sampled_from([63, 64, 65, 2000, 200000]))

    def edit(text: bytes) -> bytes:
        if how in ("utf-16", "utf-16-le", "utf-32", "utf-8-sig"):
            try:
                return text.decode().encode(how)
            except UnicodeDecodeError:  # an earlier edit left bytes that are not UTF-8
                return text
        if how == "latin-1":
            return text.replace(b'"format"', '"f\u00f6rmat"'.encode("latin-1"), 1)
        if how == "bad_byte":
            return text[:cut] + b"\xc3\x28" + text[cut:]
        if how == "truncate":
            return text[:cut]
        if how == "duplicate_key":
            return text.replace(b'"time_steps": ', b'"time_steps": 1, "time_steps": ', 1)
        if how in ("nan", "infinity", "big_number", "huge_int"):
            literal = {"nan": b"NaN", "infinity": b"-Infinity", "big_number": b"1e400", "huge_int": b"1" * 5000}[how]
            return text.replace(b'"time_steps": ', b'"time_steps": ' + literal + b', "x": ', 1)
        if how == "nul":
            return text[:cut] + b"\x00" + text[cut:]
        if how == "deep":
            return text.replace(b'"metadata": {', b'"metadata": {"deep": ' + b"[" * depth + b"]" * depth + b", ", 1)
        return text + b" " * (1 << 20)

    case.text_edits.append(edit)


# --- mutations of the arrays --------------------------------------------------------------------------------------

def pick_array(draw, case):
    members = case.array_members()
    return draw(st.sampled_from(members)) if members else None


def parsed(member):
    """The member's integer array, or None where an earlier mutation broke it (this one then leaves it alone)."""
    try:
        array = np.load(io.BytesIO(member[1]), allow_pickle=False)
    except Exception:
        return None
    return array if array.dtype.kind in "iu" else None


def retype_array(draw, case):
    member = pick_array(draw, case)
    array = parsed(member) if member else None
    if array is None:
        return
    dtype = draw(st.sampled_from(DTYPES))
    if dtype == "object":
        member[1] = npy_bytes(array.astype(object), allow_pickle=True)
    elif dtype == "structured":
        member[1] = npy_bytes(np.zeros(array.shape, [("a", "<i4")]))
    else:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # complex to real, and the like: the cast is the point
            member[1] = npy_bytes(array.astype(dtype))


RESHAPES = {"add_dim": lambda a: a[None], "ravel": np.ravel, "transpose": np.transpose,
            "scalar": lambda a: a.ravel()[:1].reshape(()) if a.size else np.array(0),
            "empty": lambda a: np.atleast_1d(a)[:0], "fortran": np.asfortranarray,
            "reverse": lambda a: np.atleast_1d(a)[::-1], "repeat": lambda a: np.concatenate([np.atleast_1d(a)] * 2)}


def reshape_array(draw, case):
    member = pick_array(draw, case)
    array = parsed(member) if member else None
    if array is None:
        return
    how = draw(st.sampled_from(sorted(RESHAPES)))
    array = RESHAPES[how](array)
    member[1] = npy_bytes(array, version=draw(st.sampled_from([(1, 0), (2, 0)])))


def edit_values(draw, case):
    member = pick_array(draw, case)
    array = parsed(member) if member else None
    if array is None or not array.size:
        return
    value = draw(st.one_of(st.sampled_from(EDGE_INTEGERS), st.integers(-(1 << 64), 1 << 64)))
    index = draw(st.integers(0, array.size - 1))
    if -(1 << 63) <= value < (1 << 63):
        array = array.astype(np.int64)
    elif 0 <= value < (1 << 64):
        array = array.astype(np.int64).astype(np.uint64)  # negative values wrap here: the file says what it says
    else:
        return
    array.flat[index] = value
    member[1] = npy_bytes(array)


def garbage_array(draw, case):
    member = pick_array(draw, case)
    if member:
        member[1] = draw(st.one_of(st.binary(max_size=200), st.sampled_from([b"", b"\x93NUMPY", b"\x80\x04\x95",
                                                                              b"PK\x03\x04"])))


def cut_array(draw, case):
    member = pick_array(draw, case)
    if member:
        how = draw(st.sampled_from(["truncate", "append", "flip", "zeros"]))
        data = bytearray(member[1])
        if how == "truncate" and data:
            data = data[:draw(st.integers(0, len(data) - 1))]
        elif how == "append":
            data += draw(st.binary(min_size=1, max_size=20))
        elif how == "flip" and data:
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        elif how == "zeros":
            data += bytes(draw(st.sampled_from([1 << 20, 8 << 20])))  # inflates to megabytes from kilobytes
            member[2] = zipfile.ZIP_DEFLATED
        member[1] = bytes(data)


def lying_header(draw, case):
    member = pick_array(draw, case)
    if not member:
        return
    try:
        header, payload = npy_split(member[1])
    except Exception:  # an earlier mutation already broke it: this one leaves it alone
        return
    if not (isinstance(header, dict) and {"shape", "descr", "fortran_order"} <= header.keys()
            and isinstance(header["shape"], tuple)):
        return
    how = draw(st.sampled_from(["shape", "descr", "fortran", "text", "version"]))
    version = (1, 0)
    if how == "shape":
        shape = header["shape"]
        header["shape"] = draw(st.sampled_from([(1 << 31,), (1 << 20, 1 << 20), (0,), (), (-1,), (True,),
                                                shape + (1,), shape[::-1], (1 << 62, 4), (4, 1 << 62)]))
    elif how == "descr":
        header["descr"] = draw(st.sampled_from(["<i8", ">i8", "|u1", "<u8", "<f8", "|b1", "O", "<i4", "<V8", "|i9"]))
    elif how == "fortran":
        header["fortran_order"] = not header["fortran_order"]
    elif how == "version":
        version = draw(st.sampled_from([(2, 0), (3, 0), (9, 9)]))
    if how == "text":
        member[1] = npy_header(draw(st.sampled_from(HEADER_TEXTS))) + payload
    else:
        member[1] = npy_header(header, version if version in ((1, 0), (2, 0)) else (1, 0)) + payload
        if version not in ((1, 0), (2, 0)):
            member[1] = member[1][:6] + bytes(version) + member[1][8:]


# --- mutations of the archive -------------------------------------------------------------------------------------

def zip_members(draw, case):
    how = draw(st.sampled_from(["duplicate", "drop", "extra", "method", "directory"]))
    if how == "extra" or not case.members:
        case.members.append([draw(st.sampled_from(EXTRA_MEMBERS)), draw(st.binary(max_size=64)),
                             zipfile.ZIP_DEFLATED])
        return
    member = draw(st.sampled_from(case.members))
    if how == "duplicate":
        case.members.append([member[0], draw(st.sampled_from([member[1], b"", b"{}"])), member[2]])
    elif how == "drop":
        case.members.remove(member)
    elif how == "method":
        member[2] = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                                          zipfile.ZIP_LZMA]))
    else:
        case.members.insert(0, ["arrays/", b"", zipfile.ZIP_STORED])


def zip_entry(draw, case):
    if not case.members:
        return
    name = draw(st.sampled_from(case.members))[0]
    field = draw(st.sampled_from(["flag_bits", "method", "crc", "file_size"]))
    value = draw({"flag_bits": st.sampled_from([1, 8, 0x41, 0x800, 0xFFFF]),
                  "method": st.sampled_from([1, 9, 12, 14, 99]),
                  "crc": st.integers(0, (1 << 32) - 1),
                  "file_size": st.sampled_from([0, 1, 100, 1 << 20, 1 << 31, (1 << 32) - 2, (1 << 32) - 1])}[field])

    def edit(data: bytes) -> bytes:
        try:
            return patch_entry(data, name, **{field: value})
        except (KeyError, ValueError, struct.error):  # an earlier edit broke the archive's directory
            return data

    case.archive_edits.append(edit)


def zip_bytes_edit(draw, case):
    how = draw(st.sampled_from(["truncate", "flip", "prepend", "append"]))
    position, xor = draw(st.integers(0, 1 << 20)), draw(st.integers(1, 255))
    junk = draw(st.binary(min_size=1, max_size=64))

    def edit(data: bytes) -> bytes:
        if not data:  # an earlier edit truncated it all away
            return junk
        if how == "truncate":
            return data[:position % len(data)]
        if how == "flip":
            data = bytearray(data)
            data[position % len(data)] ^= xor
            return bytes(data)
        return junk + data if how == "prepend" else data + junk

    case.archive_edits.append(edit)


MUTATIONS = [replace_value, delete_value, add_field, retype_value, huge_shape, restructure, alias_key, manifest_text,
             retype_array, reshape_array, edit_values, garbage_array, cut_array, lying_header, zip_members,
             zip_entry, zip_bytes_edit]


# --- the properties -----------------------------------------------------------------------------------------------

def assert_says_what_the_file_says(path, net):
    """An accepted file: every number of the network is literally the file's (no bool for 1, no wrapped value)."""
    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        arrays = {n[7:-4]: np.load(io.BytesIO(zf.read(n)), allow_pickle=False)
                  for n in zf.namelist() if n.startswith("arrays/") and n.endswith(".npy")}

    def same_int(json_value, value):
        assert type(json_value) is int and type(value) is int and json_value == value, (json_value, value)

    same_int(manifest["time_steps"], net.time_steps)
    assert manifest["metadata"] == net.metadata
    assert len(manifest["populations"]) == len(net.populations)
    for rp, pop in zip(manifest["populations"], net.populations):
        assert (rp["name"], rp["kind"], len(rp["shape"])) == (pop.name, pop.kind, len(pop.shape))
        for a, b in zip(rp["shape"], pop.shape):
            same_int(a, b)
        if pop.kind == "input":
            same_int(rp["bits"], pop.bits)
            continue
        for field in ("vbits", "acc_bits"):
            same_int(rp[field], getattr(pop, field))
        assert (rp["leak_shift"] is None) == (pop.leak_shift is None)
        if pop.leak_shift is not None:
            same_int(rp["leak_shift"], pop.leak_shift)
        assert arrays[rp["bias"]].tolist() == pop.bias.tolist()
        if pop.threshold is not None:
            assert arrays[rp["threshold"]].tolist() == pop.threshold.tolist()
        assert len(rp["projections"]) == len(pop.projections)
        for rj, proj in zip(rp["projections"], pop.projections):
            assert rj["source"] == net.populations[proj.source].name and rj["kind"] == proj.kind
            same_int(rj["wbits"], proj.wbits)
            for field, default in (("stride", [1, 1]), ("padding", [0, 0])):
                for a, b in zip(rj.get(field, default), getattr(proj, field)):
                    same_int(a, b)
            assert arrays[rj["weight"]].tolist() == proj.weight.tolist()


def assert_same_network(a, b):
    assert (a.time_steps, a.metadata, len(a.populations)) == (b.time_steps, b.metadata, len(b.populations))
    for p, q in zip(a.populations, b.populations):
        assert (p.name, p.kind, p.shape, p.bits, p.vbits, p.acc_bits, p.leak_shift) == \
               (q.name, q.kind, q.shape, q.bits, q.vbits, q.acc_bits, q.leak_shift)
        for x, y in ((p.bias, q.bias), (p.threshold, q.threshold)):
            assert (x is None and y is None) or (x.dtype == y.dtype == np.int64 and x.tolist() == y.tolist())
        assert len(p.projections) == len(q.projections)
        for r, s in zip(p.projections, q.projections):
            assert (r.source, r.kind, r.wbits, r.stride, r.padding) == (s.source, s.kind, s.wbits, s.stride, s.padding)
            assert r.weight.dtype == s.weight.dtype == np.int64 and r.weight.tolist() == s.weight.tolist()


def check_file(path: Path, folder: Path) -> str:
    """Load one file under the time and memory bounds; "accepted" (and round-tripped) or the refusal's message."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        net = netimage.load(path)
    except NetworkFileError as exc:
        net, message = None, str(exc)
    finally:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < TIME_BOUND_S, f"loading took {elapsed:.2f} s"
    assert peak < MEMORY_BOUND, f"loading allocated {peak / 2 ** 20:.0f} MiB"
    if net is None:
        assert message.startswith(f"{path}: ") and "\n" not in message, message
        return message[len(f"{path}: "):]
    assert_says_what_the_file_says(path, net)
    assert_same_network(net, netimage.load(netimage.save(net, folder / "again.sfnet")))
    return "accepted"


def test_mutated_files_load_and_round_trip_or_are_refused(bases, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    outcomes = Counter()

    @settings(max_examples=FUZZ_EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(st.data())
    def one_file(data):
        case = Case(bases[data.draw(st.integers(0, len(bases) - 1), label="base")],
                    data.draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]), label="compression"))
        for _ in range(data.draw(st.integers(0, 3), label="mutations")):
            data.draw(st.sampled_from(MUTATIONS), label="mutation")(data.draw, case)
        path = folder / "case.sfnet"
        path.write_bytes(case.archive())
        outcomes[check_file(path, folder)] += 1

    one_file()
    accepted = outcomes.pop("accepted", 0)
    refused = sum(outcomes.values())
    if os.environ.get("SPIKEFORGE_FUZZ_REPORT"):  # which refusals the run reached, most common first
        kinds = Counter(re.sub(r"'[^']*'|\d+", "_", message)[:90] for message in outcomes.elements())
        print(f"\n{accepted} accepted, {refused} refused, {len(kinds)} kinds of refusal:")
        print("\n".join(f"{n:6d}  {kind}" for kind, n in kinds.most_common()))
    # both outcomes must be common, or the fuzzer would test only one side of the loader
    assert accepted >= FUZZ_EXAMPLES // 20 and refused >= FUZZ_EXAMPLES // 2, (accepted, refused)
