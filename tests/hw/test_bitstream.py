"""Bitstreams through Amaranth's platforms and the YoWASP tools: a small network builds, a big one is refused
with one sentence naming what does not fit, and the nextpnr log parser reads utilization and Fmax."""

from __future__ import annotations

import pytest

from spikeforge.hw.bitstream import BitstreamError, build, memory_precheck, parse_nextpnr_log
from spikeforge.testing import random_network


def test_small_network_builds_an_ice40_bitstream(tmp_path):
    net = random_network(5, input_shape=(1, 6, 6), layers=[("conv", 2, 3, 2, 1), ("dense", 4)])
    report = build(net, "icebreaker", tmp_path / "ice40")
    assert report.bitstream.is_file() and report.bitstream.stat().st_size > 100_000  # an UP5K image is ~104 kB
    cells = {u.cell: u for u in report.utilization}
    assert {"ICESTORM_LC", "ICESTORM_RAM", "ICESTORM_SPRAM", "ICESTORM_DSP"} <= set(cells)
    assert 0 < cells["ICESTORM_LC"].used <= cells["ICESTORM_LC"].available == 5280
    assert cells["ICESTORM_RAM"].available == 30
    assert report.target_mhz == 12 and report.fmax_mhz and report.fmax_mhz > 0
    text = report.format()
    assert "ICESTORM_LC" in text and "Fmax" in text and "12 MHz" in text


def test_oversized_network_is_refused_with_one_sentence(tmp_path):
    # 16x48x48 membranes of a 3x3 conv on a 3x48x48 input: far beyond the UP5K's 120 kbit of EBR
    net = random_network(6, input_shape=(3, 48, 48), layers=[("conv", 16, 3, 1, 1), ("dense", 10)])
    with pytest.raises(BitstreamError) as info:
        build(net, "icebreaker", tmp_path / "big")
    message = str(info.value)
    assert "does not fit the icebreaker" in message and "block RAM" in message and "layer1.membrane" in message
    assert "\n" not in message
    assert not (tmp_path / "big" / "spikeforge.bin").exists()
    # the ECP5-85F has 3.7 Mbit of block RAM: the same network passes its pre-check
    assert memory_precheck(net, "ulx3s-85f") > 30 * 4096


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
    assert report.target_mhz == 25 and report.timing_met


@pytest.mark.slow
def test_demo_shaped_network_fits_the_icebreaker(tmp_path):
    net = random_network(0, input_shape=(1, 28, 28), layers=[("conv", 8, 3, 2, 1), ("conv", 16, 3, 2, 1),
                                                             ("dense", 10)], wbits=4)
    report = build(net, "icebreaker", tmp_path / "demo")
    print("\n" + report.format())
    cells = {u.cell: u for u in report.utilization}
    assert cells["ICESTORM_RAM"].used <= 30 and cells["ICESTORM_LC"].used <= 5280
    assert report.timing_met
