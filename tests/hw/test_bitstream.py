"""Bitstreams through Amaranth's platforms and the YoWASP tools: a small network builds, a big one is refused
with one sentence naming what does not fit, and the nextpnr log parser reads utilization and Fmax."""

from __future__ import annotations

import pytest

from spikeforge.hw.bitstream import (BitstreamError, build, memory_precheck, parse_nextpnr_log,
                                      paths_through_constant_clocks)
from spikeforge.testing import random_network


def test_small_network_builds_an_ice40_bitstream_and_a_json_report(tmp_path):
    import json

    net = random_network(5, input_shape=(1, 6, 6), layers=[("conv", 2, 3, 2, 1), ("dense", 4)])
    # 60 MHz is beyond this design: the report says so, and allow_timing_fail keeps the bitstream
    report = build(net, "icebreaker", tmp_path / "ice40", clock_mhz=60, allow_timing_fail=True)
    assert report.bitstream.is_file() and report.bitstream.stat().st_size > 100_000  # an UP5K image is ~104 kB
    cells = {u.cell: u for u in report.utilization}
    assert {"ICESTORM_LC", "ICESTORM_RAM", "ICESTORM_SPRAM", "ICESTORM_DSP", "ICESTORM_PLL"} <= set(cells)
    assert 0 < cells["ICESTORM_LC"].used <= cells["ICESTORM_LC"].available == 5280
    assert cells["ICESTORM_RAM"].available == 30 and cells["ICESTORM_PLL"].used == 1
    assert report.requested_mhz == report.target_mhz == 60 and report.pll["DIVF"] == 79
    assert report.fmax_mhz and 0 < report.fmax_mhz < 60 and not report.timing_met
    # nextpnr was told the PLL's clock (derived from the 12 MHz pin and the dividers)
    assert [c for _, c in report.clocks.values()] == [pytest.approx(60, rel=0.01)]
    text = report.format()
    assert "ICESTORM_LC" in text and "Fmax" in text and "60 MHz clock (the PLL)" in text and "NOT MET" in text
    saved = json.loads((tmp_path / "ice40" / "report.json").read_text())
    assert saved == json.loads(json.dumps(report.to_json()))
    assert saved["clock"]["fmax_mhz"] == report.fmax_mhz and saved["clock"]["timing_met"] is False
    assert saved["resources"]["ICESTORM_LC"]["used"] == cells["ICESTORM_LC"].used
    # the memory pre-check's block count is what nextpnr placed
    assert saved["memory_blocks"] == report.memory_blocks == cells["ICESTORM_RAM"].used


def test_a_missed_clock_is_one_sentence_with_the_clock_that_would_pass(tmp_path):
    from spikeforge.hw.bitstream import BuildReport, timing_failure_sentence

    report = BuildReport(board="icebreaker", device="iCE40UP5K-SG48", bitstream=tmp_path / "x.bin",
                         out_dir=tmp_path, utilization=[], fmax_mhz=17.2, target_mhz=19.875, build_s=1.0,
                         requested_mhz=20.0, clocks={"clk": (17.2, 19.875)})
    assert not report.timing_met
    sentence = timing_failure_sentence(report, "iCE40", 12.0, tmp_path / "x.tim")
    assert sentence == (f"the design does not meet the 19.875 MHz clock on the icebreaker: it reaches 17.20 MHz "
                        f"(see {tmp_path / 'x.tim'}); build with --clock 16.875 or lower, or with "
                        f"--allow-timing-fail to keep the bitstream anyway")
    slow = BuildReport(**{**report.__dict__, "fmax_mhz": 9.0})
    assert "--clock 12 (the oscillator, no PLL)" in timing_failure_sentence(slow, "iCE40", 12.0, tmp_path / "x.tim")


def test_impossible_clock_is_refused_before_any_tool_runs(tmp_path):
    net = random_network(1, input_shape=(1, 4, 4), layers=[("dense", 2)])
    with pytest.raises(BitstreamError, match=r"^the iCE40 PLL cannot make a 300 MHz clock from 12 MHz"):
        build(net, "icebreaker", tmp_path / "x", clock_mhz=300)
    assert not (tmp_path / "x").exists()


def test_oversized_network_is_refused_with_one_sentence(tmp_path):
    # 16x40x40 membranes of a 3x3 conv on a 3x40x40 input: far beyond the UP5K's 30 blocks of 4 kbit
    net = random_network(6, input_shape=(3, 40, 40), layers=[("conv", 16, 3, 1, 1), ("dense", 10)])
    with pytest.raises(BitstreamError) as info:
        build(net, "icebreaker", tmp_path / "big")
    message = str(info.value)
    assert "does not fit the icebreaker" in message and "block RAM" in message and "layer1.membrane" in message
    assert "\n" not in message
    assert not (tmp_path / "big" / "spikeforge.bin").exists()
    assert "blocks" in message and "--board ulx3s-85f" in message
    # the ECP5-85F has 208 blocks of 16 to 18 kbit: the same network passes its pre-check at one lane per layer
    bits, blocks = memory_precheck(net, "ulx3s-85f", 1)
    assert bits > 30 * 4096 and 30 < blocks <= 208


NEXTPNR_OVERFULL = """\
Info: Device utilisation:
Info: 	         ICESTORM_LC:  4100/  5280    77%
Info: 	        ICESTORM_RAM:    36/    30   120%
Info: 	               SB_IO:     5/    96     5%
Info: 	         ICESTORM_DSP:     0/     8     0%
ERROR: Unable to place cell 'core.accelerator.layer1.membrane', no BELs remaining to implement cell type 'ICESTORM_RAM'
"""


def test_place_and_route_failure_becomes_a_sentence():
    from spikeforge.hw.bitstream import BOARDS, _not_fit_sentence

    sentence = _not_fit_sentence(NEXTPNR_OVERFULL, BOARDS["icebreaker"], "the network")
    assert sentence == ("the network does not fit: it needs 36 block RAM (EBR, 4 kbit) (ICESTORM_RAM) but the "
                        "device has 30")
    only_error = NEXTPNR_OVERFULL.splitlines()[-1]
    assert "ICESTORM_RAM" in _not_fit_sentence(only_error, BOARDS["icebreaker"], "the network")


def test_parse_utilization_and_fmax():
    log = NEXTPNR_OVERFULL.replace("36/    30   120%", " 6/    30    20%").rsplit("ERROR", 1)[0] + (
        "Info: Max frequency for clock 'cd_sync.clk': 17.99 MHz (PASS at 12.00 MHz)\n"
        "Info: 	         ICESTORM_LC:  4000/  5280    75%\n"
        "Info: Max frequency for clock 'cd_sync.clk': 16.75 MHz (PASS at 12.00 MHz)\n")
    util, clocks = parse_nextpnr_log(log)
    assert util["ICESTORM_RAM"] == (6, 30) and util["ICESTORM_LC"] == (4000, 5280)  # the last report wins
    assert clocks == {"cd_sync.clk": (16.75, 12.0)}


NEXTPNR_DSP = """\
Info: Max frequency for clock 'clk_$glb_clk': 16.77 MHz (PASS at 16.50 MHz)
Info: Max delay posedge $PACKER_GND_NET_$glb_clk -> posedge clk_$glb_clk            : 18.15 ns
Info: Max delay posedge clk_$glb_clk             -> posedge $PACKER_GND_NET_$glb_clk: 5.09 ns
Info: Max delay posedge clk_$glb_clk             -> <async>                         : 11.49 ns
"""


def test_paths_through_combinational_dsps_are_bounded():
    # a combinational SB_MAC16 has CLK tied low: nextpnr reports its paths as to and from a GND "clock"
    assert paths_through_constant_clocks(NEXTPNR_DSP) == {"clk_$glb_clk": pytest.approx(23.24)}
    assert paths_through_constant_clocks(NEXTPNR_DSP.replace("$PACKER_GND_NET", "other")) == {}


def test_unknown_board_is_named():
    net = random_network(1, input_shape=(1, 4, 4), layers=[("dense", 2)])
    with pytest.raises(BitstreamError, match="unknown board 'de10'.*icebreaker, ulx3s-85f"):
        build(net, "de10", "unused")


@pytest.mark.slow
def test_small_network_builds_an_ecp5_bitstream(tmp_path):
    net = random_network(5, input_shape=(1, 6, 6), layers=[("conv", 2, 3, 2, 1), ("dense", 4)])
    report = build(net, "ulx3s-85f", tmp_path / "ecp5")
    assert report.bitstream.suffix == ".bit" and report.bitstream.is_file()
    cells = {u.cell: u for u in report.utilization}
    assert cells["TRELLIS_COMB"].used > 0 and cells["DP16KD"].available == 208
    assert report.memory_blocks == cells["DP16KD"].used
    assert report.target_mhz == 50 and report.pll["cell"] == "EHXPLLL" and report.timing_met


@pytest.mark.slow
def test_demo_shaped_network_fits_the_icebreaker(tmp_path):
    net = random_network(0, input_shape=(1, 28, 28), layers=[("conv", 8, 3, 2, 1), ("conv", 16, 3, 2, 1),
                                                             ("dense", 10)], wbits=4)
    report = build(net, "icebreaker", tmp_path / "demo")
    print("\n" + report.format())
    cells = {u.cell: u for u in report.utilization}
    assert cells["ICESTORM_RAM"].used <= 30 and cells["ICESTORM_LC"].used <= 5280
    assert report.memory_blocks == cells["ICESTORM_RAM"].used
    assert report.timing_met
