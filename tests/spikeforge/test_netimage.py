"""The network file: round trip, and one clear refusal per broken rule."""

import io
import json
import zipfile

import numpy as np
import pytest

from spikeforge import netimage
from spikeforge.testing import random_network
from spikeforge.netimage import NetworkFileError


def test_round_trip_preserves_everything(tmp_path):
    for seed in range(5):
        net = random_network(seed)
        path = netimage.save(net, tmp_path / f"n{seed}.sfnet")
        back = netimage.load(path)
        assert back.time_steps == net.time_steps
        for a, b in zip(net.populations, back.populations):
            assert (a.name, a.kind, a.shape, a.vbits, a.acc_bits, a.leak_shift) == \
                   (b.name, b.kind, b.shape, b.vbits, b.acc_bits, b.leak_shift)
            for x, y in ((a.bias, b.bias), (a.threshold, b.threshold)):
                assert (x is None and y is None) or np.array_equal(x, y)
            for p, q in zip(a.projections, b.projections):
                assert (p.source, p.kind, p.wbits, p.stride, p.padding) == (q.source, q.kind, q.wbits, q.stride,
                                                                            q.padding)
                assert np.array_equal(p.weight, q.weight)


def test_acc_bits_bound_is_tight_for_a_known_case():
    net = random_network(0, input_shape=(1, 3, 3), layers=[("dense", 2)], wbits=4, vbits=8)
    w = net.readout.projections[0].weight
    pos = max(int(np.clip(row, 0, None).sum()) for row in w) * 255
    neg = min(int(np.clip(row, None, 0).sum()) for row in w) * 255
    lo, hi = -128 + neg, 127 + pos
    bits = netimage.required_acc_bits(net, 1)
    assert -(1 << (bits - 1)) <= lo and hi <= (1 << (bits - 1)) - 1
    assert not (-(1 << (bits - 2)) <= lo and hi <= (1 << (bits - 2)) - 1)


def rewrite(path, tmp_path, edit=None, arrays=None, drop=None):
    """Copy a network file with its manifest edited and arrays replaced or dropped."""
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(members["manifest.json"])
    if edit:
        edit(manifest)
    members["manifest.json"] = json.dumps(manifest).encode()
    for key, value in (arrays or {}).items():
        buf = io.BytesIO()
        np.save(buf, value)
        members[f"arrays/{key}.npy"] = buf.getvalue()
    for key in drop or ():
        del members[f"arrays/{key}.npy"]
    out = tmp_path / "edited.sfnet"
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out


@pytest.fixture
def good_file(tmp_path):
    net = random_network(7, input_shape=(1, 6, 6), layers=[("conv", 2, 3, 2, 1), ("dense", 4)], wbits=4)
    return netimage.save(net, tmp_path / "good.sfnet")


def set_pop(i, **fields):
    def edit(m):
        m["populations"][i].update(fields)
    return edit


@pytest.mark.parametrize("edit,arrays,drop,message", [
    (lambda m: m.update(version=2), None, None, "format version 2 is not supported"),
    (lambda m: m.update(format="onnx"), None, None, "must have \"format\""),
    (set_pop(1, acc_bits=4), None, None, "acc_bits=4 is too narrow"),
    (set_pop(1, vbits=40), None, None, "vbits must be in 2..32"),
    (set_pop(1, leak_shift=16), None, None, "leak_shift must be null or in 1..15"),
    (set_pop(1, kind="readout"), None, None, "must be of kind 'lif'"),
    (set_pop(1, shape=[2, 4, 4]), None, None, "maps [1, 6, 6] to [2, 3, 3], not [2, 4, 4]"),
    (None, {"layer1.threshold": np.array([0, 3])}, None, "thresholds must lie in 1.."),
    (None, {"layer1.p0.weight": np.full((2, 1, 3, 3), 9)}, None, "weights must fit 4 signed bits"),
    (None, {"layer1.p0.weight": np.zeros((2, 1, 3, 3), np.float32)}, None, "must hold integers"),
    (None, None, ["layer1.bias"], "names array 'layer1.bias', which the file does not contain"),
    (lambda m: m["populations"][2]["projections"][0].update(source="nowhere"), None, None,
     "source 'nowhere' is not an earlier population"),
    (lambda m: m["populations"][1].pop("vbits"), None, None, "missing or mistypes field 'vbits'"),
])
def test_refuses_broken_files_with_one_clear_sentence(good_file, tmp_path, edit, arrays, drop, message):
    bad = rewrite(good_file, tmp_path, edit, arrays, drop)
    with pytest.raises(NetworkFileError) as info:
        netimage.load(bad)
    assert message in str(info.value)
    assert str(bad) in str(info.value)


def test_refuses_files_that_are_not_network_images(tmp_path):
    junk = tmp_path / "junk.sfnet"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(NetworkFileError, match="not a ZIP archive"):
        netimage.load(junk)
    with pytest.raises(NetworkFileError, match="no such network file"):
        netimage.load(tmp_path / "missing.sfnet")
    empty = tmp_path / "empty.sfnet"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(NetworkFileError, match="no manifest.json"):
        netimage.load(empty)


def test_save_refuses_an_invalid_network(tmp_path):
    net = random_network(1)
    net.populations[1].acc_bits = 2
    with pytest.raises(NetworkFileError, match="too narrow"):
        netimage.save(net, tmp_path / "x.sfnet")
    assert not (tmp_path / "x.sfnet").exists()
