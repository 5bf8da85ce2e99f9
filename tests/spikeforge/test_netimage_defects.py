"""The loader against malformed files, one defect class at a time (docs/network-file.md, "What a reader refuses").

Each refusal must be one sentence that names the file and the field; each acceptance must mean exactly what the
file says. tests/test_netimage_fuzz.py then throws thousands of random mutations at the same loader.
"""

import copy
import json
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from netfile_helpers import npy_bytes, npy_header, patch_entry, read_members, write, zip_bytes
from spikeforge import netimage
from spikeforge.netimage import reader as netreader
from spikeforge.testing import random_network
from spikeforge.netimage import Network, NetworkFileError, Population, Projection


@pytest.fixture
def good(tmp_path):
    """(manifest, members) of a valid file: input [1, 6, 6] -conv2d s2 p1-> layer1 [2, 3, 3] -dense-> readout [4]."""
    net = random_network(7, input_shape=(1, 6, 6), layers=[("conv", 2, 3, 2, 1), ("dense", 4)], wbits=4)
    return read_members(netimage.save(net, tmp_path / "good.sfnet"))


def refused(path) -> str:
    """Load a file that must be refused; return the message after checking it names the file in one line."""
    with pytest.raises(NetworkFileError) as info:
        netimage.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    return message


def edited(good, tmp_path, edit):
    manifest, members = good
    manifest = copy.deepcopy(manifest)
    edit(manifest)
    return write(tmp_path / "edited.sfnet", members, manifest)


def with_member(good, tmp_path, name, data, method=zipfile.ZIP_DEFLATED):
    manifest, members = good
    members = [[n, data if n == name else d, method if n == name else m] for n, d, m in members]
    return write(tmp_path / "edited.sfnet", members)


def pop(i, **fields):
    return lambda m: m["populations"][i].update(fields)


def proj(i, k, **fields):
    return lambda m: m["populations"][i]["projections"][k].update(fields)


def drop(*path):
    def edit(m):
        node = m
        for step in path[:-1]:
            node = node[step]
        del node[path[-1]]
    return edit


# --- type confusion: JSON true, 2.0 and "8" are not integers ------------------------------------------------------

@pytest.mark.parametrize("edit,message", [
    (lambda m: m.update(time_steps=True), "manifest.json: time_steps must be an integer in 1..65535, not true"),
    (lambda m: m.update(time_steps=10.0), "time_steps must be an integer in 1..65535, not 10.0"),
    (lambda m: m.update(time_steps="10"), 'time_steps must be an integer in 1..65535, not "10"'),
    (lambda m: m.update(version=True), "format version true is not supported"),
    (lambda m: m.update(version=1.0), "format version 1.0 is not supported"),
    (pop(0, bits=True), "population 0 ('input'): bits must be an integer in 1..16, not true"),
    (pop(0, bits=8.0), "population 0 ('input'): bits must be an integer in 1..16, not 8.0"),
    (pop(1, vbits=2.0), "population 1 ('layer1'): vbits must be an integer in 2..32, not 2.0"),
    (pop(1, acc_bits="20"), "population 1 ('layer1'): acc_bits must be an integer of at most 48, not \"20\""),
    (pop(1, leak_shift=False), "population 1 ('layer1'): leak_shift must be null or an integer in 1..15, not false"),
    (pop(1, shape=[2, 3.0, 3]), "population 1 ('layer1'): shape must be [C, H, W] or [N] of positive integers"),
    (pop(1, shape=[2, True, 3]), "population 1 ('layer1'): shape must be [C, H, W] or [N] of positive integers"),
    (pop(1, shape="2x3x3"), "population 1 ('layer1'): shape must be [C, H, W] or [N] of positive integers"),
    (pop(1, name=7), "population 1: name must be a non-empty string, not 7"),
    (pop(1, kind=1), "population 1 ('layer1'): kind must be one of ('input', 'lif', 'readout'), not 1"),
    (pop(1, bias=5), "population 1 ('layer1'): bias must be the key of an array (a non-empty string), not 5"),
    (pop(1, projections={}), "population 1 ('layer1'): projections must be a list, not {}"),
    (proj(1, 0, wbits=True), "population 1 ('layer1'), projection 0: wbits must be an integer in 2..16, not true"),
    (proj(1, 0, stride=2), "population 1 ('layer1'), projection 0: stride must be a list of two integers [sy, sx], "
                           "not 2"),
    (proj(1, 0, stride=[2]), "projection 0: stride must be a list of two integers [sy, sx], not [2]"),
    (proj(1, 0, stride="2, 2"), "projection 0: stride must be a list of two integers [sy, sx], not \"2, 2\""),
    (proj(1, 0, padding=[1, 1, 1]), "projection 0: padding must be a list of two integers [py, px], not [1, 1, 1]"),
    (proj(1, 0, padding=[1, True]), "projection 0: padding must be a list of two integers [py, px], not [1, true]"),
    (proj(1, 0, padding=[1.0, 1]), "projection 0: padding must be a list of two integers [py, px], not [1.0, 1]"),
    (proj(1, 0, source=0), "projection 0: source must be the name of an earlier population (a string), not 0"),
    (proj(1, 0, kind="conv3d"), "projection 0: kind must be one of ('conv2d', 'dense'), not \"conv3d\""),
    (lambda m: m.update(populations={}), "manifest.json: populations must be a list, not {}"),
    (lambda m: m["populations"].__setitem__(1, []), "population 1 must be a JSON object, not []"),
])
def test_integers_are_json_integers(good, tmp_path, edit, message):
    assert message in refused(edited(good, tmp_path, edit))


# --- documented ranges and limits ---------------------------------------------------------------------------------

@pytest.mark.parametrize("edit,message", [
    (pop(1, acc_bits=49), "population 1 ('layer1'): acc_bits must be an integer of at most 48, not 49"),
    (pop(1, acc_bits=10 ** 30), "acc_bits must be an integer of at most 48"),
    (pop(1, vbits=33), "population 1 ('layer1'): vbits must be in 2..32, not 33"),
    (pop(1, leak_shift=0), "population 1 ('layer1'): leak_shift must be null or in 1..15 and below vbits, not 0"),
    (pop(0, bits=17), "population 0 ('input'): input bits must be in 1..16, not 17"),
    (proj(1, 0, wbits=17), "population 1 ('layer1'), projection 0: wbits must be in 2..16, not 17"),
    (proj(1, 0, stride=[0, 2]), "projection 0: stride must be in 1..65535 and padding in 0..65535"),
    (proj(1, 0, padding=[-1, 1]), "projection 0: stride must be in 1..65535 and padding in 0..65535"),
    (proj(1, 0, stride=[2, 65536]), "projection 0: stride must be in 1..65535 and padding in 0..65535"),
    (lambda m: m.update(time_steps=0), "time_steps must be an integer in 1..65535, not 0"),
    (lambda m: m.update(time_steps=65536), "time_steps must be an integer in 1..65535, not 65536"),
    (pop(2, name="a" * 257), "the name must be at most 256 characters long"),
    (pop(2, name="layer\n1"), "the name must not contain control characters or unpaired surrogates (found U+000A)"),
    (pop(2, name="layer\ud8001"), "the name must not contain control characters or unpaired surrogates (found U+D800)"),
    (pop(2, name="input"), "population 2 ('input'): names must be non-empty and unique"),
    (proj(2, 0, source="readout"), "population 2 ('readout'), projection 0: source 'readout' is not an earlier"),
])
def test_documented_ranges_are_enforced(good, tmp_path, edit, message):
    assert message in refused(edited(good, tmp_path, edit))


def test_threshold_range_is_one_to_the_largest_membrane_value(good, tmp_path):
    manifest = good[0]
    vbits = manifest["populations"][1]["vbits"]
    top = (1 << (vbits - 1)) - 1
    ok = with_member(good, tmp_path, "arrays/layer1.threshold.npy", npy_bytes(np.array([1, top])))
    assert list(netimage.load(ok).populations[1].threshold) == [1, top]
    bad = with_member(good, tmp_path, "arrays/layer1.threshold.npy", npy_bytes(np.array([1, top + 1])))
    assert f"population 1 ('layer1'): thresholds must lie in 1..{top} (vbits={vbits})" in refused(bad)


# --- no silent defaults, no ignored fields ------------------------------------------------------------------------

REQUIRED = [("time_steps",), ("metadata",), ("populations",), ("populations", 0, "bits"),
            ("populations", 0, "shape"), ("populations", 1, "name"), ("populations", 1, "kind"),
            ("populations", 1, "vbits"), ("populations", 1, "acc_bits"), ("populations", 1, "leak_shift"),
            ("populations", 1, "bias"), ("populations", 1, "threshold"), ("populations", 1, "projections"),
            ("populations", 2, "leak_shift"), ("populations", 1, "projections", 0, "source"),
            ("populations", 1, "projections", 0, "kind"), ("populations", 1, "projections", 0, "wbits"),
            ("populations", 1, "projections", 0, "weight")]


@pytest.mark.parametrize("path", REQUIRED, ids=lambda p: ".".join(map(str, p)))
def test_every_field_without_a_documented_default_is_required(good, tmp_path, path):
    message = refused(edited(good, tmp_path, drop(*path)))
    assert f"missing or mistypes field '{path[-1]}': add it" in message


def test_stride_and_padding_are_the_only_defaults(tmp_path):
    net = random_network(3, input_shape=(1, 6, 6), layers=[("conv", 2, 3, 1, 0), ("dense", 4)], wbits=4)
    manifest, members = read_members(netimage.save(net, tmp_path / "s1.sfnet"))
    del manifest["populations"][1]["projections"][0]["stride"]
    del manifest["populations"][1]["projections"][0]["padding"]
    back = netimage.load(write(tmp_path / "defaults.sfnet", members, manifest))
    assert (back.populations[1].projections[0].stride, back.populations[1].projections[0].padding) == ((1, 1), (0, 0))


@pytest.mark.parametrize("edit,message", [
    (lambda m: m.update(comment="hi"), "manifest.json has unknown field \"comment\"; the top level has only the fields "
                                       "format, version, time_steps, metadata, populations"),
    (pop(1, bais="layer1.bias"), "population 1 ('layer1') has unknown field \"bais\"; a lif population has only"),
    (pop(0, vbits=8), "population 0 ('input') has unknown field \"vbits\"; an input population has only the fields "
                      "name, kind, shape, bits"),
    (pop(0, projections=[]), "population 0 ('input'): the input population receives no projections; remove its "
                             "\"projections\" field"),
    (pop(2, threshold="layer1.threshold"), "population 2 ('readout'): the readout does not fire and has no threshold"),
    (proj(1, 0, strides=[2, 2]), "population 1 ('layer1'), projection 0 has unknown field \"strides\""),
    (proj(2, 0, stride=[1, 1]), "population 2 ('readout'), projection 0: stride and padding belong to conv2d "
                                "projections; remove them from this dense projection"),
    (proj(2, 0, padding=[0, 0]), "stride and padding belong to conv2d projections"),
    (lambda m: m.update(metadata=[]), "manifest.json: metadata must be a JSON object, not []"),
    (lambda m: m.update(metadata=None), "manifest.json: metadata must be a JSON object, not null"),
    (lambda m: m.update(metadata="mnist"), "manifest.json: metadata must be a JSON object, not \"mnist\""),
    (lambda m: m.update(format="onnx"), "manifest.json must have \"format\": \"spikeforge-network\""),
    (drop("version"), "manifest.json is missing or mistypes field 'version': add it (the integer 1)"),
])
def test_unknown_and_misplaced_fields_are_refused(good, tmp_path, edit, message):
    assert message in refused(edited(good, tmp_path, edit))


def test_a_readout_threshold_may_be_null(good, tmp_path):
    back = netimage.load(edited(good, tmp_path, pop(2, threshold=None)))
    assert back.readout.threshold is None


# --- manifest.json is UTF-8 JSON, strictly ------------------------------------------------------------------------

def manifest_text(good) -> str:
    return json.dumps(good[0])


@pytest.mark.parametrize("encode,message", [
    (lambda t: t.encode("utf-16"), "manifest.json holds NUL bytes (is it UTF-16 or UTF-32?); write it as UTF-8"),
    (lambda t: t.encode("utf-16-le"), "manifest.json holds NUL bytes"),
    (lambda t: t.encode("utf-32"), "manifest.json holds NUL bytes"),
    (lambda t: t.encode("utf-8-sig"), "manifest.json starts with a byte-order mark; write it as UTF-8 without one"),
    (lambda t: t.replace('"generator"', '"gen\u00e9rator"').encode("latin-1"), "manifest.json is not UTF-8 text "
                                                                               "(byte 0xe9 at offset"),
    (lambda t: t.encode() + b"\xff", "manifest.json is not UTF-8 text (byte 0xff"),
    (lambda t: t.replace('"generator"', '"gen\\ud800"').encode(), None),  # an escape is JSON: decoded, then checked
    (lambda t: t.replace('"random_network"', '"x"').encode()[:-5], "manifest.json is not valid JSON"),
    (lambda t: t.replace('"time_steps": 10', '"time_steps": 10, "time_steps": 12').encode(),
     "manifest.json repeats the key \"time_steps\" in one object; write each key once"),
    (lambda t: t.replace('"vbits"', '"vbits": 8, "vbits"', 1).encode(), "repeats the key \"vbits\""),
    (lambda t: t.replace('"time_steps": 10', '"time_steps": NaN').encode(), "manifest.json holds NaN, which is not "
                                                                           "JSON; write a number or null"),
    (lambda t: t.replace('"time_steps": 10', '"time_steps": -Infinity').encode(), "holds -Infinity"),
    (lambda t: t.replace('"time_steps": 10', '"time_steps": 1e999').encode(), "holds the number 1e999, which is out "
                                                                              "of range for a double"),
    (lambda t: t.replace('"time_steps": 10', '"time_steps": 1' + "0" * 5000).encode(), "is not valid JSON"),
    (lambda t: b"[]", "manifest.json must have \"format\": \"spikeforge-network\""),
])
def test_manifest_is_strict_utf8_json(good, tmp_path, encode, message):
    path = write(tmp_path / "text.sfnet", good[1], encode(manifest_text(good)))
    if message is None:  # the lone surrogate lands in metadata, which is free-form: accepted, and it round-trips
        net = netimage.load(path)
        assert netimage.load(netimage.save(net, tmp_path / "again.sfnet")).metadata == net.metadata
    else:
        assert message in refused(path)


def test_nesting_and_size_of_the_manifest_are_bounded(good, tmp_path):
    manifest, members = good

    def nested(depth):
        value = {}
        for _ in range(depth - 2):  # the manifest is level 1, metadata level 2
            value = {"x": value}
        return value

    ok = dict(manifest, metadata=nested(64))
    assert netimage.load(write(tmp_path / "deep.sfnet", members, ok)).metadata == ok["metadata"]
    assert "manifest.json nests deeper than 64 levels" in refused(write(tmp_path / "deeper.sfnet", members,
                                                                        dict(manifest, metadata=nested(65))))
    text = json.dumps(dict(manifest, metadata={"x": "y" * 2000}))
    assert "deeper than 64" in refused(write(tmp_path / "recursion.sfnet", members, text.replace(
        '"metadata": {', '"metadata": {"deep": ' + "[" * 100000 + "]" * 100000 + ", ", 1).encode()))
    big = dict(manifest, metadata={"notes": "x" * netimage.MAX_MANIFEST_BYTES})
    assert "more than the limit of 1048576" in refused(write(tmp_path / "big.sfnet", members, big))


# --- resources: declared sizes are checked before anything is allocated or inflated -----------------------------

def bounded_refusal(path, seconds=1.0, megabytes=20) -> str:
    tracemalloc.start()
    start = time.perf_counter()
    try:
        message = refused(path)
    finally:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < seconds and peak < megabytes << 20, (elapsed, peak)
    return message


@pytest.mark.parametrize("shape,message", [
    ([1, 6000, 6000], "population 1 ('layer1'): a population has at most 4194304 neurons, not 1 x 6000 x 6000"),
    ([1, 65535, 65535], "a population has at most 4194304 neurons, not 1 x 65535 x 65535"),
    ([65535 * 65535], "a population has at most 4194304 neurons, not 4294836225"),
    ([10 ** 40, 1, 1], "a population has at most 4194304 neurons"),
])
def test_huge_declared_populations_are_refused_before_anything_is_allocated(good, tmp_path, shape, message):
    assert message in bounded_refusal(edited(good, tmp_path, pop(1, shape=shape)))


def test_the_network_wide_neuron_limit(good, tmp_path):
    def edit(m):  # five populations of 2^22 neurons (only the manifest matters: it is refused before any array)
        m["populations"][0]["shape"] = [1, 2048, 2048]
        layer = m["populations"][1]
        m["populations"][1:2] = [dict(layer, name=f"layer{k}", shape=[1, 2048, 2048], bias=f"b{k}", threshold=f"t{k}",
                                      projections=[dict(layer["projections"][0], weight=f"w{k}")]) for k in range(1, 6)]
    message = bounded_refusal(edited(good, tmp_path, edit))
    assert "population 4 ('layer4'): the populations up to this one hold 20971520 neurons, more than the limit of " \
           "16777216 for a network" in message


def test_an_array_header_is_checked_before_its_data_is_read(good, tmp_path):
    manifest, members = good
    manifest = copy.deepcopy(manifest)
    manifest["populations"][2]["shape"] = [1 << 20]  # a dense weight of [2^20, 18] is over 2^24 elements
    big_bias = npy_bytes(np.zeros(1 << 20, np.int8))
    weight = npy_header({"descr": "|i1", "fortran_order": False, "shape": (1 << 20, 18)})
    members = [[n, big_bias if n.endswith("readout.bias.npy") else weight if n.endswith("readout.p0.weight.npy")
                else d, m] for n, d, m in members]
    message = bounded_refusal(write(tmp_path / "wide.sfnet", members, manifest), megabytes=40)
    assert ("population 2 ('readout'), projection 0 weight: array 'readout.p0.weight' has 18874368 elements, more than the limit "
            "of 16777216 per array") in message


def test_a_small_member_that_inflates_to_more_than_its_header_promises_is_not_inflated(good, tmp_path):
    bias = npy_header({"descr": "<i8", "fortran_order": False, "shape": (2,)}) + bytes(16)
    path = with_member(good, tmp_path, "arrays/layer1.bias.npy", bias + bytes(64 << 20))
    assert path.stat().st_size < 1 << 20
    message = bounded_refusal(path)
    assert (f"population 1 ('layer1') bias: array 'layer1.bias' is {len(bias) + (64 << 20)} bytes long, but its .npy "
            f"header promises {len(bias)} ([2] of int64)") in message


def test_a_member_whose_declared_size_lies_is_refused(good, tmp_path):
    archive = zip_bytes(good[1])
    path = tmp_path / "lie.sfnet"
    path.write_bytes(patch_entry(archive, "arrays/layer1.bias.npy", file_size=4_000_000_000))
    assert "array 'layer1.bias' is 4000000000 bytes long, but its .npy header promises 144" in bounded_refusal(path)
    path.write_bytes(patch_entry(archive, "arrays/layer1.bias.npy", file_size=100))
    assert "population 1 ('layer1') bias: array 'layer1.bias'" in bounded_refusal(path)
    path.write_bytes(patch_entry(archive, "manifest.json", file_size=2_000_000_000))
    assert "manifest.json is 2000000000 bytes long, more than the limit of 1048576" in bounded_refusal(path)


def test_the_total_array_limit(good, tmp_path, monkeypatch):
    monkeypatch.setattr(netreader, "MAX_TOTAL_ELEMENTS", 30)  # the file holds 2 + 2 + 18 + 4 + 72 integers
    message = refused(write(tmp_path / "t.sfnet", good[1]))
    assert "population 2 ('readout'), projection 0 weight: array 'readout.p0.weight': the arrays up to this one hold 98 integers, " \
           "more than the limit of 30 for a network" in message


# --- arrays: integers only, never wrapped ------------------------------------------------------------------------

@pytest.mark.parametrize("array", [np.array([3, -2], np.int8), np.array([3, 2], np.uint8),
                                   np.array([3, -2], ">i2"), np.array([3, 2], np.uint32),
                                   np.array([3, 2], np.uint64), np.array([3, -2], ">i8")])
def test_any_integer_dtype_is_read_as_its_values(good, tmp_path, array):
    path = with_member(good, tmp_path, "arrays/layer1.bias.npy", npy_bytes(array))
    bias = netimage.load(path).populations[1].bias
    assert bias.dtype == np.int64 and bias.tolist() == array.tolist()


def test_fortran_order_and_npy_version_2(good, tmp_path):
    weight = np.arange(18 * 4).reshape(4, 18) % 7 - 3
    path = with_member(good, tmp_path, "arrays/readout.p0.weight.npy", npy_bytes(np.asfortranarray(weight), (2, 0)))
    back = netimage.load(path).readout.projections[0].weight
    assert back.flags.c_contiguous and back.tolist() == weight.tolist()


@pytest.mark.parametrize("data,message", [
    (npy_bytes(np.array([1, 2], np.uint64) << np.uint64(63)), "population 1 ('layer1') bias: array 'layer1.bias' "
                                                              "holds 9223372036854775808, beyond the int64 range"),
    (npy_bytes(np.array([1, 0], bool)), "population 1 ('layer1') bias: array 'layer1.bias' must hold integers, not "
                                        "bool"),
    (npy_bytes(np.array([1.0, 2.0])), "must hold integers, not float64"),
    (npy_bytes(np.array([1, 2], np.complex64)), "must hold integers, not complex64"),
    (npy_bytes(np.array([1, 2], object), allow_pickle=True), "must hold integers, not object"),
    (npy_bytes(np.zeros(2, [("a", "<i4")])), "must hold integers, not [('a', '<i4')]"),
    (npy_bytes(np.array([b"ab", b"cd"])), "must hold integers, not |S2"),
    (npy_bytes(np.array(5)), "population 1 ('layer1'): bias must have one integer per channel, shape [2], not []"),
    (npy_bytes(np.array([[1, 2]])), "bias must have one integer per channel, shape [2], not [1, 2]"),
    (b"\x80\x04garbage that is no .npy", "population 1 ('layer1') bias: array 'layer1.bias' is not a valid .npy "
                                         "array (it does not start with the .npy magic string)"),
    (b"", "array 'layer1.bias' is not a valid .npy array"),
    (npy_bytes(np.array([1, 2]))[:-3], "array 'layer1.bias' is 141 bytes long, but its .npy header promises 144"),
    (npy_bytes(np.array([1, 2])) + b"x", "array 'layer1.bias' is 145 bytes long, but its .npy header promises 144"),
    (npy_header("{'descr': '<i8', 'fortran_order': False, 'shape': (-2,)}"), "has an invalid shape (-2,)"),
    (npy_header("{'descr': '<i8', 'fortran_order': False, 'shape': (True, 2)}"), "has an invalid shape (True, 2)"),
    (npy_header("{'descr': '<i8', 'fortran_order': False}"), "is not a valid .npy array (its header cannot be read"),
    (npy_header("{'descr': 7, 'fortran_order': False, 'shape': (2,)}"), "its header cannot be read"),
    (npy_header("(" * 5000), "its header cannot be read"),
    (npy_header({"descr": "<i8", "fortran_order": False, "shape": (2,)}, (3, 0)) + bytes(16),
     "array 'layer1.bias' is a .npy file of version 3.0; write version 1.0 or 2.0"),
])
def test_arrays_that_are_not_plain_integer_npy_files_are_refused(good, tmp_path, data, message):
    text = refused(with_member(good, tmp_path, "arrays/layer1.bias.npy", data))
    assert message in text and "pickle" not in text


# --- the ZIP container --------------------------------------------------------------------------------------------

def test_zip_rules(good, tmp_path):
    manifest, members = good
    path = tmp_path / "zip.sfnet"
    bias = next(m for m in members if m[0] == "arrays/layer1.bias.npy")
    assert "the ZIP archive holds 2 members named 'arrays/layer1.bias.npy'; write each member once" in refused(
        write(path, members + [bias]))
    assert "holds 2 members named 'manifest.json'" in refused(write(path, members + [members[0]]))
    assert "the ZIP archive holds 'arrays/spare.npy', array 'spare' that no field of the manifest names; remove it" \
        in refused(write(path, members + [["arrays/spare.npy", bias[1], 8]]))
    assert "the ZIP archive holds 'README.txt', a member that is neither manifest.json nor an array; remove it" \
        in refused(write(path, members + [["README.txt", b"hello", 8]]))
    netimage.load(write(path, [["arrays/", b"", 0]] + members))  # a directory entry, as `zip -r` writes it
    stored = netimage.load(write(path, [[n, d, zipfile.ZIP_STORED] for n, d, _ in members]))
    assert stored.populations[1].bias.tolist() == netimage.load(write(path, members)).populations[1].bias.tolist()
    for method in (zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        assert (f"population 1 ('layer1') bias: array 'layer1.bias' (arrays/layer1.bias.npy) uses ZIP compression "
                f"method {method}; write it stored (0) or deflated (8)") in refused(
            with_member(good, tmp_path, "arrays/layer1.bias.npy", bias[1], method))
    archive = zip_bytes(members)
    path.write_bytes(patch_entry(archive, "arrays/layer1.bias.npy", flag_bits=1))
    assert "array 'layer1.bias' (arrays/layer1.bias.npy) is encrypted; write the archive without a password" in \
        refused(path)
    path.write_bytes(patch_entry(archive, "arrays/layer1.bias.npy", crc=12345))
    assert "array 'layer1.bias' (arrays/layer1.bias.npy) cannot be read from the ZIP archive (Bad CRC-32" in \
        refused(path)
    path.write_bytes(patch_entry(archive, "manifest.json", crc=12345))
    assert "manifest.json cannot be read from the ZIP archive (Bad CRC-32" in refused(path)
    path.write_bytes(archive[:len(archive) // 2])
    assert "not a spikeforge network image (not a ZIP archive" in refused(path)
    (tmp_path / "folder.sfnet").mkdir()
    assert "not a regular file" in refused(tmp_path / "folder.sfnet")


def test_each_field_names_its_own_array(good, tmp_path):
    message = refused(edited(good, tmp_path, pop(2, bias="layer1.bias")))
    assert "population 2 ('readout') bias names array 'layer1.bias', which population 1 ('layer1') bias names too; " \
           "give each field its own array" in message


# --- meaning: what an accepted file says is what the network is ---------------------------------------------------

def test_a_dense_projection_into_a_chw_population_indexes_c_h_w_row_major(tmp_path):
    rng = np.random.default_rng(0)
    weight = rng.integers(-8, 8, size=(2 * 2 * 3, 1 * 4 * 4))
    pops = [Population("input", "input", (1, 4, 4), bits=8),
            Population("hidden", "lif", (2, 2, 3), vbits=12, leak_shift=None, bias=np.array([1, -1]),
                       threshold=np.array([5, 7]), projections=[Projection(0, "dense", weight, wbits=4)]),
            Population("readout", "readout", (3,), vbits=12, bias=np.zeros(3, np.int64),
                       projections=[Projection(1, "dense", rng.integers(-2, 2, size=(3, 12)), wbits=2)])]
    net = Network(pops)
    for i in (1, 2):
        pops[i].acc_bits = netimage.required_acc_bits(net, i)
    back = netimage.load(netimage.save(net, tmp_path / "dense3d.sfnet"))
    assert back.populations[1].projections[0].weight.tolist() == weight.tolist()
    # row c*H*W + y*W + x feeds neuron (c, y, x), whose channel c gives bias and threshold
    pos = np.clip(weight, 0, None).sum(axis=1) * 255
    neg = np.clip(weight, None, 0).sum(axis=1) * 255
    assert netimage.partial_sum_bounds(back, 1) == (int(neg.min()), int(pos.max()))


def test_a_neuron_that_never_fires_is_zero_weights_and_a_bias_of_at_most_zero(tmp_path):
    net = random_network(1, input_shape=(1, 4, 4), layers=[("conv", 2, 3, 1, 1), ("dense", 3)], wbits=4)
    layer = net.populations[1]
    layer.projections[0].weight[1] = 0
    layer.bias[1] = -3
    back = netimage.load(netimage.save(net, tmp_path / "silent.sfnet"))
    assert back.populations[1].bias[1] == -3 and not back.populations[1].projections[0].weight[1].any()


def test_save_refuses_what_load_would_refuse(tmp_path):
    net = random_network(2)
    net.metadata = {"accuracy": float("nan")}
    with pytest.raises(NetworkFileError, match="metadata cannot be written as JSON"):
        netimage.save(net, tmp_path / "nan.sfnet")
    deep = {}
    for _ in range(70):
        deep = {"x": deep}
    net.metadata = deep
    with pytest.raises(NetworkFileError, match="nests deeper than 64 levels"):
        netimage.save(net, tmp_path / "deep.sfnet")
    net.metadata = {}
    net.populations[1].vbits = True
    with pytest.raises(NetworkFileError, match="vbits must be in 2..32, not True"):
        netimage.save(net, tmp_path / "bool.sfnet")
    assert not list(tmp_path.iterdir())
