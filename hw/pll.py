"""The board clock: a PLL that turns the board's oscillator into the clock the accelerator runs at.

``ice40_pll`` and ``ecp5_pll`` are pure functions from (input, requested) frequency to divider settings, the same
search as Project IceStorm's ``icepll`` and Project Trellis' ``ecppll``, but never above the request.
``PllClock`` instantiates the PLL on an amaranth-boards platform and drives the ``sync`` domain (defined by its
parent) from it, held in reset until the PLL has locked. Torch-free, like all of hw/.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import ClockDomain, ClockSignal, Elaboratable, Instance, Module, Signal
from amaranth.lib import io
from amaranth.lib.cdc import FFSynchronizer, ResetSynchronizer

__all__ = ["PllError", "Ice40Pll", "Ecp5Pll", "ice40_pll", "ecp5_pll", "pll_for", "PllClock"]


class PllError(ValueError):
    """A requested clock the PLL cannot make; the message names it and the range that can be made."""


# iCE40 sysCLOCK PLL (iCE40 sysCLOCK PLL Design and Usage Guide, TN1251; the limits icepll checks)
ICE40_PFD_MHZ = (10.0, 133.0)
ICE40_VCO_MHZ = (533.0, 1066.0)
ICE40_OUT_MHZ = (16.0, 275.0)
# ECP5 EHXPLLL (the limits ecppll checks)
ECP5_PFD_MHZ = (3.125, 400.0)
ECP5_VCO_MHZ = (400.0, 800.0)
ECP5_OUT_MHZ = (3.125, 400.0)
_EPS = 1e-9


@dataclass(frozen=True)
class Ice40Pll:
    """SB_PLL40 settings in simple feedback mode: F_out = F_in * (DIVF+1) / ((DIVR+1) * 2**DIVQ)."""

    f_in_mhz: float
    divr: int
    divf: int
    divq: int

    @property
    def f_pfd_mhz(self) -> float:
        return self.f_in_mhz / (self.divr + 1)

    @property
    def f_vco_mhz(self) -> float:
        return self.f_pfd_mhz * (self.divf + 1)

    @property
    def f_out_mhz(self) -> float:
        return self.f_vco_mhz / 2 ** self.divq

    @property
    def filter_range(self) -> int:
        # icepll's loop-filter table, by PFD frequency
        pfd = self.f_pfd_mhz
        return next((i for i, limit in enumerate((17, 26, 44, 66, 101), 1) if pfd < limit), 6)


@dataclass(frozen=True)
class Ecp5Pll:
    """EHXPLLL settings with CLKOP as its own feedback: F_out = F_in * CLKFB_DIV / CLKI_DIV, the VCO at
    F_out * CLKOP_DIV."""

    f_in_mhz: float
    clki_div: int
    clkfb_div: int
    clkop_div: int

    @property
    def f_pfd_mhz(self) -> float:
        return self.f_in_mhz / self.clki_div

    @property
    def f_out_mhz(self) -> float:
        return self.f_pfd_mhz * self.clkfb_div

    @property
    def f_vco_mhz(self) -> float:
        return self.f_out_mhz * self.clkop_div


def _check_request(family: str, f_in_mhz: float, f_req_mhz: float, out_range: tuple[float, float]) -> None:
    low, high = out_range
    if not low <= f_req_mhz <= high:
        raise PllError(f"the {family} PLL cannot make a {f_req_mhz:g} MHz clock from {f_in_mhz:g} MHz: its output "
                       f"runs from {low:g} to {high:g} MHz; choose a --clock in that range")


def ice40_pll(f_in_mhz: float, f_req_mhz: float) -> Ice40Pll:
    """The iCE40 PLL setting nearest to ``f_req_mhz`` without exceeding it (icepll's search order: DIVR, DIVF,
    DIVQ ascending; the first of equally good settings wins, so exact requests match icepll's output)."""
    _check_request("iCE40", f_in_mhz, f_req_mhz, ICE40_OUT_MHZ)
    best = None
    for divr in range(16):
        pfd = f_in_mhz / (divr + 1)
        if not ICE40_PFD_MHZ[0] <= pfd <= ICE40_PFD_MHZ[1]:
            continue
        for divf in range(128):
            vco = pfd * (divf + 1)
            if not ICE40_VCO_MHZ[0] <= vco <= ICE40_VCO_MHZ[1]:
                continue
            for divq in range(1, 7):
                candidate = Ice40Pll(f_in_mhz, divr, divf, divq)
                if candidate.f_out_mhz <= f_req_mhz + _EPS and (
                        best is None or candidate.f_out_mhz > best.f_out_mhz + _EPS):
                    best = candidate
    if best is None or best.f_out_mhz < ICE40_OUT_MHZ[0] - _EPS:
        raise PllError(f"the iCE40 PLL cannot make a clock of at most {f_req_mhz:g} MHz from {f_in_mhz:g} MHz "
                       f"within its {ICE40_OUT_MHZ[0]:g}-{ICE40_OUT_MHZ[1]:g} MHz output range; choose a higher "
                       f"--clock")
    return best


def ecp5_pll(f_in_mhz: float, f_req_mhz: float) -> Ecp5Pll:
    """The ECP5 PLL setting nearest to ``f_req_mhz`` without exceeding it; among equal ones the VCO nearest
    600 MHz (ecppll's preference)."""
    _check_request("ECP5", f_in_mhz, f_req_mhz, ECP5_OUT_MHZ)
    best = None
    for clki_div in range(1, 129):
        pfd = f_in_mhz / clki_div
        if not ECP5_PFD_MHZ[0] <= pfd <= ECP5_PFD_MHZ[1]:
            continue
        for clkfb_div in range(1, 81):
            out = pfd * clkfb_div
            if out > f_req_mhz + _EPS:
                break
            for clkop_div in range(1, 129):
                candidate = Ecp5Pll(f_in_mhz, clki_div, clkfb_div, clkop_div)
                if not ECP5_VCO_MHZ[0] <= candidate.f_vco_mhz <= ECP5_VCO_MHZ[1]:
                    continue
                if best is None or out > best.f_out_mhz + _EPS or (
                        abs(out - best.f_out_mhz) <= _EPS
                        and abs(candidate.f_vco_mhz - 600) < abs(best.f_vco_mhz - 600)):
                    best = candidate
    if best is None:
        raise PllError(f"the ECP5 PLL cannot make a clock of at most {f_req_mhz:g} MHz from {f_in_mhz:g} MHz; "
                       f"choose a higher --clock")
    return best


def pll_for(family: str, f_in_mhz: float, f_req_mhz: float) -> Ice40Pll | Ecp5Pll:
    """``ice40_pll`` or ``ecp5_pll`` by platform family (amaranth's ``platform.family``: "iCE40", "ecp5")."""
    if family.lower() == "ice40":
        return ice40_pll(f_in_mhz, f_req_mhz)
    if family == "ecp5":
        return ecp5_pll(f_in_mhz, f_req_mhz)
    raise PllError(f"no PLL support for the {family!r} FPGA family; use an iCE40 or ECP5 board")


class PllClock(Elaboratable):
    """Clock and reset of the ``sync`` domain at ``setting.f_out_mhz``, from the platform's default clock through
    its PLL; the parent module defines ``sync``.

    ``sync`` is held in reset until the PLL reports lock and then for ``hold_us`` more microseconds (iCE40
    block RAMs read as zeros for about 3 us after configuration; Amaranth's own reset waits 15 us). The PLL's
    output is ``clk``; ``locked`` is its LOCK.
    """

    def __init__(self, setting: Ice40Pll | Ecp5Pll, *, hold_us: float = 15.0):
        self.setting = setting
        self.hold_us = hold_us
        self.clk = Signal(name="pll_clk")
        self.locked = Signal(name="pll_locked")

    def elaborate(self, platform):
        m = Module()
        s = self.setting
        clk_port = platform.request(platform.default_clk, dir="-")
        if isinstance(s, Ice40Pll):
            # the iCEBreaker's 12 MHz oscillator sits on the PLL's dedicated pad: the PLL takes the pin itself
            m.submodules.pll = Instance(
                "SB_PLL40_PAD",
                p_FEEDBACK_PATH="SIMPLE", p_DIVR=s.divr, p_DIVF=s.divf, p_DIVQ=s.divq,
                p_FILTER_RANGE=s.filter_range,
                i_PACKAGEPIN=clk_port.io, i_RESETB=1, i_BYPASS=0,
                o_PLLOUTCORE=self.clk, o_LOCK=self.locked)
        else:
            m.submodules.clk_buf = clk_buf = io.Buffer("i", clk_port)
            m.submodules.pll = Instance(
                "EHXPLLL",
                a_FREQUENCY_PIN_CLKI=f"{s.f_in_mhz:g}", a_FREQUENCY_PIN_CLKOP=f"{s.f_out_mhz:g}",
                a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
                p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_CLKOP_ENABLE="ENABLED",
                p_CLKI_DIV=s.clki_div, p_CLKFB_DIV=s.clkfb_div, p_CLKOP_DIV=s.clkop_div,
                # Lattice's convention for 0 degrees; with CLKOP as feedback the phase is locked to CLKI anyway
                p_CLKOP_CPHASE=s.clkop_div - 1, p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
                i_CLKI=clk_buf.i, i_CLKFB=self.clk, i_RST=0, i_STDBY=0, i_PHASESEL0=0, i_PHASESEL1=0,
                i_PHASEDIR=0, i_PHASESTEP=0, i_PHASELOADREG=0, i_PLLWAKESYNC=0, i_ENCLKOP=0,
                o_CLKOP=self.clk, o_LOCK=self.locked)

        # power-on reset: count hold_us of PLL cycles once locked (counting up: FFs start at zero)
        m.domains.por = ClockDomain("por", reset_less=True, local=True)
        m.d.comb += [ClockSignal("por").eq(self.clk), ClockSignal("sync").eq(self.clk)]
        delay = max(1, int(self.hold_us * s.f_out_mhz))
        locked = Signal(name="pll_locked_sync")
        timer = Signal(range(delay + 1), name="por_timer")
        ready = Signal(name="por_ready")
        m.submodules.lock_sync = FFSynchronizer(self.locked, locked, o_domain="por")
        with m.If(~locked):
            m.d.por += [timer.eq(0), ready.eq(0)]
        with m.Elif(timer == delay):
            m.d.por += ready.eq(1)
        with m.Else():
            m.d.por += timer.eq(timer + 1)
        m.submodules.reset_sync = ResetSynchronizer(~ready, domain="sync")
        return m
