"""The generator's contract: refusals with one clear sentence, Verilog generation, the memory estimate."""

from __future__ import annotations

import time

import numpy as np
import pytest
from amaranth.back import verilog

from spikeforge.hw.accelerator import Accelerator, UnsupportedNetworkError, consumers, estimate_memory
from spikeforge.testing import random_images, random_network, random_residual_network
from spikeforge.netimage import Projection, required_acc_bits, validate
from hw_helpers import assert_rtl_matches_reference, demo_shaped_network

def test_builds_skip_connection():
    """What the chain-only generator refused (a readout fed by layer1 and, skipping it, by the input) now builds
    and is bit-exact."""
    net = random_network(1, layers=[("conv", 2, 3, 1, 1), ("dense", 3)], time_steps=3)
    readout = net.populations[2]
    readout.projections.append(Projection(source=0, kind="dense", wbits=2,
                                          weight=np.ones((3, net.input.size), np.int64)))
    readout.acc_bits = required_acc_bits(net, 2)
    validate(net)
    assert consumers(net) == {0: [1, 2], 1: [2], 2: []}
    assert_rtl_matches_reference(net, random_images(1, net, 1), 3)


def test_builds_population_that_nobody_reads():
    """layer1 feeds nothing (the readout reads the input only): its spikes still show on its trace port."""
    net = random_network(2, layers=[("conv", 2, 3, 1, 1), ("dense", 3)], time_steps=3)
    readout = net.populations[2]
    readout.projections = [Projection(source=0, kind="dense", wbits=2, weight=np.ones((3, 36), np.int64))]
    readout.acc_bits = required_acc_bits(net, 2)
    validate(net)
    assert consumers(net)[1] == []
    assert_rtl_matches_reference(net, random_images(2, net, 1), 3)


def test_refuses_wide_accumulator():
    net = random_network(3, layers=[("conv", 2, 3, 1, 1), ("dense", 3)])
    net.populations[1].acc_bits = 40
    validate(net)
    with pytest.raises(UnsupportedNetworkError, match=r"population 1 \('layer1'\) needs a 40-bit accumulator.*"
                                                      r"max_acc_bits=32"):
        Accelerator(net)
    with pytest.raises(UnsupportedNetworkError, match="max_acc_bits=8"):
        Accelerator(random_network(3), max_acc_bits=8)


def test_verilog_random_network():
    net = random_network(4, time_steps=5)
    text = verilog.convert(Accelerator(net), name="spikeforge_top")
    assert "module spikeforge_top" in text
    for port in ("pixels__valid", "pixels__ready", "results__payload", "cycles", "busy", "spikes_p1__valid",
                 "spikes_p1__index", "spikes_p1__step_end"):
        assert port in text, port


def test_verilog_demo_shaped_network():
    net = demo_shaped_network()
    start = time.perf_counter()
    text = verilog.convert(Accelerator(net), name="spikeforge_top")
    assert time.perf_counter() - start < 60
    assert "module spikeforge_top" in text
    assert "spikes_p2__index" in text


def test_estimate_memory_demo():
    net = demo_shaped_network()
    rows = {r["name"]: r for r in estimate_memory(net, lanes=1)}
    # the pixel list: row and column (5 bits each), pixel (8 bits); a one-channel input's channel bit is constant
    assert rows["input.pixel_list"] == {"name": "input.pixel_list", "depth": 784, "width": 18, "bits": 784 * 18,
                                        "kind": "ram", "ice40_ebr": 5}
    assert rows["layer1.membrane"]["transparent"] and rows["layer1.weights"]["kind"] == "rom"
    assert rows["layer1.membrane"]["depth"] == 8 * 14 * 14
    assert rows["layer1.membrane"]["width"] == net.populations[1].acc_bits
    assert rows["layer2.weights"]["depth"] == 16 * 8 * 9 and rows["layer2.weights"]["width"] == 4
    assert rows["readout.weights"]["bits"] == 784 * 10 * 4
    assert all(r["bits"] == r["depth"] * r["width"] for r in rows.values())


def test_estimate_memory_with_lanes():
    """Lanes widen the words and shorten the memories; a lane count that does not divide the channels pads the
    last channel word."""
    net = demo_shaped_network()
    rows = {r["name"]: r for r in estimate_memory(net, lanes={"layer1": 8, "layer2": 16, "readout": 10})}
    assert (rows["layer1.membrane"]["depth"], rows["layer1.membrane"]["width"]) == (14 * 14, 8 * net.populations[1].acc_bits)
    assert (rows["layer2.weights"]["depth"], rows["layer2.weights"]["width"]) == (8 * 9, 16 * 4)
    assert (rows["readout.weights"]["depth"], rows["readout.weights"]["width"]) == (784, 10 * 4)
    padded = {r["name"]: r for r in estimate_memory(net, lanes={"layer2": 6})}
    assert padded["layer2.membrane"]["depth"] == 3 * 7 * 7 and padded["layer2.params"]["depth"] == 3
    with pytest.raises(UnsupportedNetworkError, match=r"population 2 \('layer2'\) can use 1 to 16 lanes"):
        estimate_memory(net, lanes={"layer2": 17})
    with pytest.raises(UnsupportedNetworkError, match="'conv9', which is not a layer"):
        estimate_memory(net, lanes={"conv9": 2})


def test_verilog_residual_network():
    net = random_residual_network(5, layers=[("conv", 2, 3, 1, 1), ("block", 2, 1), ("block", 3, 2), ("dense", 4)],
                                  time_steps=5)
    text = verilog.convert(Accelerator(net), name="spikeforge_top")
    for p in range(1, 6):
        for field in ("valid", "index", "step_end"):
            assert f"spikes_p{p}__{field}" in text, (p, field)
    assert "spikes_p6" not in text  # the readout has no trace


def test_refuses_wide_accumulator_in_a_join():
    net = random_residual_network(6, layers=[("conv", 2, 3, 1, 1), ("block", 2, 1), ("dense", 3)])
    net.populations[3].acc_bits = 40
    validate(net)
    with pytest.raises(UnsupportedNetworkError, match=r"population 3 \('block1'\) needs a 40-bit accumulator"):
        Accelerator(net)


def test_estimate_memory_residual():
    """One weight ROM per projection, one FIFO per (reader, source population); a join reads two sources."""
    net = random_residual_network(7, input_shape=(1, 8, 8),
                                  layers=[("conv", 2, 3, 1, 1), ("block", 4, 2), ("dense", 3, [("dense", 1)])])
    pops = net.populations
    rows = {r["name"]: r for r in estimate_memory(net, lanes=1)}
    join = pops[3]
    assert join.name == "block1" and [p.source for p in join.projections] == [2, 1]
    assert rows["block1.p0.weights"]["depth"] == 4 * 4 * 9                       # 3x3 main conv 4 -> 4
    assert rows["block1.p1.weights"]["depth"] == 4 * 2                           # 1x1 stride-2 shortcut 2 -> 4
    assert "block1.weights" not in rows and "block1.conv1.weights" in rows
    assert {n for n in rows if ".fifo" in n} == {
        "layer1.fifo", "block1.conv1.fifo", "block1.fifo<-layer1", "block1.fifo<-block1.conv1",
        "readout.fifo<-layer1", "readout.fifo<-block1"}
    assert rows["readout.p1.weights"]["bits"] == 3 * pops[1].size * net.readout.projections[1].wbits
    fifos = sum(len(readers) for readers in consumers(net).values())
    assert fifos == 6
    assert all(r["bits"] == r["depth"] * r["width"] for r in rows.values())


def test_hw_does_not_import_torch():
    import subprocess
    import sys
    code = ("import sys, spikeforge.hw.accelerator, spikeforge.hw.layers, spikeforge.hw.testing; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('spikeforge.sw')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
