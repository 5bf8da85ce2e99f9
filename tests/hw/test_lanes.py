"""The lane plan (spikeforge.hw.lanes): what it picks for the demo network on each board, that its picks fit
the device's estimates, when it puts membranes in the UP5K's SPRAM, and the --lanes option's forms and
refusals."""

from __future__ import annotations

import pytest

from spikeforge import netimage
from spikeforge.hw.accelerator import LanePlan, UnsupportedNetworkError, choose_lanes
from spikeforge.hw.lanes import (DEVICES, estimate_logic, estimate_ram_blocks, estimate_spram_blocks, parse_lanes,
                                 place_memories, plan_lanes)
from spikeforge.testing import random_network, random_residual_network
from hw_helpers import demo_shaped_network

DEMO = "tests/data/demo-mnist.sfnet"


@pytest.mark.parametrize("board", ["icebreaker", "ulx3s-85f"])
def test_plan_fits_the_device_and_cannot_grow(board):
    net = netimage.load(DEMO)
    device = DEVICES[board]
    lanes = plan_lanes(net, board)
    assert estimate_ram_blocks(net, lanes, device) <= device.ram_blocks - device.ram_margin
    assert estimate_logic(net, lanes) <= device.logic_fill * device.logic_cells
    for p, count in lanes.items():
        limit = net.populations[p].channels
        grown = {**lanes, p: min(limit, count * 2)}
        if grown[p] != count:  # every layer below its limit would break a budget by doubling
            assert (estimate_ram_blocks(net, grown, device) > device.ram_blocks - device.ram_margin
                    or estimate_logic(net, grown) > device.logic_fill * device.logic_cells), (p, lanes)


def test_demo_plans():
    """The UP5K's 30 block RAMs and 5,280 cells hold 8 lanes for both convs; the ECP5-85F takes every channel."""
    net = netimage.load(DEMO)
    assert [plan_lanes(net, "icebreaker")[p] for p in (1, 2)] == [8, 8]
    assert plan_lanes(net, "ulx3s-85f") == {1: 8, 2: 16, 3: 10}


def test_parse_lanes_forms_and_refusals():
    net = demo_shaped_network()
    assert parse_lanes("3", net) == {1: 3, 2: 3, 3: 3}
    assert parse_lanes(None, net) == choose_lanes(net) == {1: 8, 2: 16, 3: 10}
    assert parse_lanes("layer2=4", net) == {1: 8, 2: 4, 3: 10}
    assert parse_lanes("layer2=4", net, "icebreaker")[2] == 4
    for bad, match in (("many", "not a number"), ("layer2=x", "whole number"), ("conv7=2", "not a layer"),
                       ("layer1=9", "can use 1 to 8 lanes"), ("0", "at least 1")):
        with pytest.raises(UnsupportedNetworkError, match=match):
            parse_lanes(bad, net)


def test_a_readout_with_rows_takes_one_lane():
    """Results leave in flat index order, so a conv readout (H x W > 1) keeps one lane whatever is asked."""
    net = random_network(2, input_shape=(1, 6, 6), layers=[("conv", 4, 3, 1, 1), ("conv", 3, 3, 2, 1)])
    assert choose_lanes(net, 4) == {1: 4, 2: 1}
    with pytest.raises(UnsupportedNetworkError, match="can use 1 to 1 lanes"):
        choose_lanes(net, {"readout": 2})


def _nextpnr_builds():
    import json

    return json.loads(open("tests/data/nextpnr-block-ram.json").read())["builds"]


@pytest.mark.parametrize("built", _nextpnr_builds(), ids=lambda b: f"{b['network'].rsplit('/', 1)[-1]}-{b['board']}")
def test_memory_precheck_counts_the_blocks_nextpnr_placed(built):
    """The pre-check's block count (each memory in its best block shape, shallow ones in logic, ROMs over the
    ECP5's parity bits) equals nextpnr's for every committed network's build, with that build's lanes."""
    from spikeforge.hw.bitstream import memory_precheck

    net = netimage.load(built["network"])
    names = {pop.name: p for p, pop in enumerate(net.populations)}
    lanes = choose_lanes(net, {names[name]: count for name, count in built["lanes"].items()})
    _, blocks = memory_precheck(net, built["board"], lanes)
    assert blocks == built["used"]
    assert estimate_ram_blocks(net, lanes, DEVICES[built["board"]]) == built["used"]


def test_block_shapes_count_usable_bits():
    """A 4-bit-wide DP16KD holds 16 kbit (4096 x 4), a 9-bit-wide one 18 kbit (2048 x 9); iCE40 EBR 4 kbit at
    every width; memories that cost less in logic or LUT RAM go there."""
    from spikeforge.hw.lanes import memory_blocks

    ecp5, ice40 = DEVICES["ulx3s-85f"], DEVICES["icebreaker"]

    def row(depth, width, kind="ram", name="x.membrane"):
        return {"name": name, "depth": depth, "width": width, "bits": depth * width, "kind": kind,
                "transparent": name.endswith(".membrane")}

    assert memory_blocks(row(8192, 4), ecp5) == 2          # 32 kbit of 4-bit words: two 16 kbit blocks
    assert memory_blocks(row(4096, 9), ecp5) == 2          # 36 kbit of 9-bit words: two 18 kbit blocks
    assert memory_blocks(row(4096, 8), ecp5) == 2          # 2048 x 9 holds 8-bit words too
    assert memory_blocks(row(16384, 1), ecp5) == 1 and memory_blocks(row(16385, 1), ecp5) == 2
    assert memory_blocks(row(512, 36), ecp5) == 1 and memory_blocks(row(512, 37), ecp5) == 2
    assert memory_blocks(row(16, 104), ecp5) == 0          # LUT RAM (nextpnr: TRELLIS_DPR16X4)
    assert memory_blocks(row(49, 144), ecp5) == 4          # 4 banks of LUT RAM and their multiplexer cost more
    assert memory_blocks(row(50176, 32, "rom"), ecp5) == 89  # a ROM spreads over the parity bits (nextpnr: 89)
    assert memory_blocks(row(50176, 32), ecp5) == 98       # a RAM does not
    assert memory_blocks(row(256, 16), ice40) == memory_blocks(row(2048, 2), ice40) == 1
    assert memory_blocks(row(2048, 3, 'rom'), ice40) == 2 and memory_blocks(row(60, 10, 'rom'), ice40) == 0  # 600 ROM bits: logic
    assert memory_blocks(row(9, 38), ice40) == 3  # 342 flip-flops cost more than 3 blocks (nextpnr: 3)
    assert memory_blocks(row(5, 26), ice40) == 0  # 130 flip-flops cost less than 2 blocks and a bypass
    assert memory_blocks(row(60, 10), ice40) == 1  # 600 flip-flops cost more than a block
    assert memory_blocks(row(784, 18, name="input.pixel_list"), ecp5) == 1


def _resnet_beyond_the_block_ram():
    """A small residual network (28x28 input, a stride-1 stem of 8 channels, one strided block of 8): one lane per
    layer needs 59 block RAMs of the UP5K's 30 (one kept free), mostly the 8x28x28 stem membrane."""
    return random_residual_network(1, input_shape=(1, 28, 28), layers=[
        ("conv", 8, 3, 1, 1), ("block", 8, 2), ("dense", 10)], wbits=4, time_steps=4)


def test_the_plan_moves_membranes_to_spram_when_the_block_ram_does_not_suffice():
    net = _resnet_beyond_the_block_ram()
    device = DEVICES["icebreaker"]
    one = {p: 1 for p in range(1, len(net.populations))}
    assert estimate_ram_blocks(net, LanePlan(one), device) > device.ram_blocks - device.ram_margin
    plan = plan_lanes(net, "icebreaker")
    assert isinstance(plan, LanePlan) and plan.spram, plan
    assert estimate_ram_blocks(net, plan, device) <= device.ram_blocks - device.ram_margin
    assert estimate_spram_blocks(net, plan) <= device.spram_blocks
    assert estimate_logic(net, plan) <= device.logic_fill * device.logic_cells
    # the placement of those lanes is the best one place_memories finds, and it needs SPRAM
    assert place_memories(net, plan, device) == plan
    # the ECP5 has no SPRAM: every membrane stays in block RAM there
    assert not plan_lanes(net, "ulx3s-85f").spram
    # lanes given by hand get their memories placed too
    by_hand = parse_lanes("1", net, "icebreaker")
    assert by_hand.spram and estimate_ram_blocks(net, by_hand, device) <= device.ram_blocks - device.ram_margin


def test_the_demo_needs_no_spram_membranes():
    plan = plan_lanes(netimage.load(DEMO), "icebreaker")
    assert plan.spram == frozenset() and plan.pixel_list_spram


def test_a_network_that_fits_nowhere_gets_the_placement_that_saves_most():
    net = random_residual_network(1, input_shape=(1, 28, 28), layers=[
        ("conv", 8, 3, 2, 1), ("block", 8, 1), ("block", 16, 2), ("block", 32, 2), ("dense", 10)], wbits=4)
    device = DEVICES["icebreaker"]
    plan = plan_lanes(net, "icebreaker")
    assert set(plan.values()) == {1} and plan.spram
    assert estimate_spram_blocks(net, plan) <= device.spram_blocks
    assert estimate_ram_blocks(net, plan, device) > device.ram_blocks - device.ram_margin
