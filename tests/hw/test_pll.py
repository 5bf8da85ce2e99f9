"""The PLL settings against the published outputs of icepll (IceStorm) and ecppll (Trellis), the limits, and the
board top's PLL instance with those settings (elaboration only, no build)."""

from __future__ import annotations

import pytest

from spikeforge.hw.pll import (ECP5_VCO_MHZ, ICE40_PFD_MHZ, ICE40_VCO_MHZ, PllError, ecp5_pll, ice40_pll)
from spikeforge.testing import random_network

# (F_in, F_out requested) -> (DIVR, DIVF, DIVQ, FILTER_RANGE), as `icepll -i F_in -o F_out` prints them
ICEPLL = {
    (12, 30): (0, 79, 5, 1),
    (12, 96): (0, 63, 3, 1),
    (48, 60): (0, 19, 4, 4),
    (48, 100): (2, 49, 3, 1),
    (48, 150): (1, 24, 2, 2),
    (96, 16): (2, 31, 6, 3),
}
# `ecppll -i 25 -o F_out`: (CLKI_DIV, CLKFB_DIV, CLKOP_DIV)
ECPPLL = {120: (5, 24, 5), 100: (1, 4, 6), 95: (5, 19, 6), 60: (5, 12, 10), 50: (1, 2, 12)}


@pytest.mark.parametrize("f_in, f_out", sorted(ICEPLL))
def test_ice40_settings_match_icepll(f_in, f_out):
    pll = ice40_pll(f_in, f_out)
    assert (pll.divr, pll.divf, pll.divq, pll.filter_range) == ICEPLL[f_in, f_out]
    assert pll.f_out_mhz == pytest.approx(f_in * (pll.divf + 1) / ((pll.divr + 1) * 2 ** pll.divq))
    assert pll.f_out_mhz == pytest.approx(f_out)


@pytest.mark.parametrize("f_out", sorted(ECPPLL))
def test_ecp5_settings_match_ecppll(f_out):
    pll = ecp5_pll(25, f_out)
    assert (pll.clki_div, pll.clkfb_div, pll.clkop_div) == ECPPLL[f_out]
    assert pll.f_out_mhz == pytest.approx(f_out)


@pytest.mark.parametrize("f_req", [16.2, 16.6, 17.0, 19.9, 33.3, 47.1, 101.0, 275.0])
def test_ice40_is_the_nearest_setting_at_or_below_the_request(f_req):
    pll = ice40_pll(12, f_req)
    assert pll.f_out_mhz <= f_req + 1e-9
    assert ICE40_PFD_MHZ[0] <= pll.f_pfd_mhz <= ICE40_PFD_MHZ[1]
    assert ICE40_VCO_MHZ[0] <= pll.f_vco_mhz <= ICE40_VCO_MHZ[1]
    # no legal setting lies between it and the request (brute force over the whole space)
    better = [12 * (f + 1) / ((r + 1) * 2 ** q) for r in range(16) for f in range(128) for q in range(1, 7)
              if 10 <= 12 / (r + 1) <= 133 and 533 <= 12 / (r + 1) * (f + 1) <= 1066
              and pll.f_out_mhz + 1e-9 < 12 * (f + 1) / ((r + 1) * 2 ** q) <= f_req + 1e-9]
    assert better == []


def test_ecp5_rounds_down_and_stays_in_range():
    pll = ecp5_pll(25, 47)
    assert pll.f_out_mhz == pytest.approx(46.875) and ECP5_VCO_MHZ[0] <= pll.f_vco_mhz <= ECP5_VCO_MHZ[1]


def test_impossible_requests_are_one_sentence():
    with pytest.raises(PllError, match=r"^the iCE40 PLL cannot make a 10 MHz clock from 12 MHz: its output runs from "
                                       r"16 to 275 MHz; choose a --clock in that range$"):
        ice40_pll(12, 10)
    # 16 MHz is in range, but the settings nearest to it are 15.9375 (below the output's minimum) and 16.125
    with pytest.raises(PllError, match="cannot make a clock of at most 16 MHz from 12 MHz within its 16-275 MHz"):
        ice40_pll(12, 16)
    with pytest.raises(PllError, match="the ECP5 PLL cannot make a 500 MHz clock from 25 MHz"):
        ecp5_pll(25, 500)


def elaborated_instances(top, platform):
    from amaranth.hdl import Fragment, Instance

    found = []

    def walk(fragment):
        for sub, _, _ in fragment.subfragments:
            found.append(sub) if isinstance(sub, Instance) else walk(sub)
    walk(Fragment.get(top, platform))
    return found


def test_board_top_runs_on_the_pll_with_the_computed_settings():
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    from spikeforge.hw.board import BoardTop

    net = random_network(22, input_shape=(1, 4, 4), layers=[("dense", 3)], time_steps=2)
    top = BoardTop(net, clock_mhz=30)
    plls = [i for i in elaborated_instances(top, ICEBreakerPlatform()) if i.type.startswith("SB_PLL40")]
    assert len(plls) == 1 and plls[0].type == "SB_PLL40_PAD"
    assert {k: plls[0].parameters[k] for k in ("DIVR", "DIVF", "DIVQ", "FILTER_RANGE", "FEEDBACK_PATH")} == {
        "DIVR": 0, "DIVF": 79, "DIVQ": 5, "FILTER_RANGE": 1, "FEEDBACK_PATH": "SIMPLE"}
    assert "clk12" in repr(plls[0].ports["PACKAGEPIN"][0])
    assert top.divisor(top.clock_hz(ICEBreakerPlatform())) == 260  # 30 MHz / 115200 baud

    top = BoardTop(net, clock_mhz=60)
    plls = [i for i in elaborated_instances(top, ULX3S_85F_Platform()) if i.type == "EHXPLLL"]
    assert len(plls) == 1
    assert {k: plls[0].parameters[k] for k in ("CLKI_DIV", "CLKFB_DIV", "CLKOP_DIV", "FEEDBK_PATH")} == {
        "CLKI_DIV": 5, "CLKFB_DIV": 12, "CLKOP_DIV": 10, "FEEDBK_PATH": "CLKOP"}
    # at the oscillator's own frequency there is no PLL
    assert not [i for i in elaborated_instances(BoardTop(net, clock_mhz=12), ICEBreakerPlatform())
                if i.type.startswith("SB_PLL")]
