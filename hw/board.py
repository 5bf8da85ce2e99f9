"""The board top: the accelerator behind a UART, speaking the frame protocol of docs/hardware-flow.md.

Host -> board: 0x53 ('S'), then the C*H*W pixels in (c, y, x) order, one byte each (two bytes, little-endian, when
the input is wider than 8 bits). Board -> host: 0x52 ('R'), each readout V as int32 little-endian in index order,
then ``cycles`` as uint32 little-endian. ``BoardCore`` is the portable part (simulated in tests); ``BoardTop``
binds it to an amaranth-boards platform's UART pins and clock.
"""

from __future__ import annotations

import operator

from amaranth.hdl import ClockDomain, Elaboratable, Module, Signal
from amaranth.build import ResourceError
from amaranth.lib import fifo, io, wiring
from amaranth.lib.wiring import In, Out

from spikeforge.netimage import Network

from .pll import PllClock, pll_for
from .uart import MIN_DIVISOR, UartRx, UartTx

__all__ = ["BoardCore", "BoardTop", "FRAME_START", "FRAME_REPLY", "DEFAULT_BAUDRATE", "PIXEL_FIFO_DEPTH", "pixel_bytes",
           "board_memories"]

PIXEL_FIFO_DEPTH = 64

FRAME_START = 0x53  # 'S'
FRAME_REPLY = 0x52  # 'R'
DEFAULT_BAUDRATE = 115200


def pixel_bytes(net: Network) -> int:
    """Bytes per pixel on the link: 1 for inputs of up to 8 bits, else 2 (little-endian)."""
    return 1 if net.input.bits <= 8 else 2


def board_memories(net: Network, pixel_fifo_depth: int = PIXEL_FIFO_DEPTH) -> list[dict]:
    """The board core's own memories, as ``estimate_memory`` lists the accelerator's: the pixel and the result
    FIFO (SyncFIFOBuffered: ``depth - 1`` entries in memory)."""
    rows = [{"name": "board.pixel_fifo", "depth": pixel_fifo_depth - 1, "width": net.input.bits, "kind": "ram"},
            {"name": "board.result_fifo", "depth": max(2, net.readout.size) - 1, "width": 32, "kind": "ram"}]
    for row in rows:
        row["bits"] = row["depth"] * row["width"]
    return rows


def _default_accelerator(net: Network, time_steps: int):
    from .accelerator import Accelerator

    return Accelerator(net, time_steps)


class BoardCore(wiring.Component):
    """UART receiver, frame decoder, accelerator, result buffer and reply encoder.

    Pixels pass a FIFO (``pixel_fifo_depth``) on their way in, so the accelerator may take them more slowly
    than the link delivers them for a while; the results are buffered in full before the reply starts, so the
    accelerator's ``cycles`` counts its own work and not the link.

    Parameters
    ----------
    net : Network
    time_steps : int or None
        Steps per image; ``net.time_steps`` by default.
    divisor : int
        Clock cycles per UART bit (clock frequency / baud rate).
    accelerator : callable or None
        ``(net, time_steps) -> component`` with the Accelerator's interface; spikeforge.hw.accelerator's by
        default.

    Members
    -------
    rx : In(1)
        Serial input from the host (asynchronous; idles high).
    tx : Out(1)
        Serial output to the host (idles high).
    busy : Out(1)
        The accelerator is running an image.
    error : Out(1)
        Sticky: a framing error, a byte lost to overrun, or a pixel lost to a full FIFO has occurred since reset.
    """

    def __init__(self, net: Network, time_steps: int | None = None, *, divisor: int, accelerator=None,
                 pixel_fifo_depth: int = PIXEL_FIFO_DEPTH):
        self.net = net
        self.time_steps = operator.index(net.time_steps if time_steps is None else time_steps)
        self.divisor = operator.index(divisor)
        self.pixel_fifo_depth = operator.index(pixel_fifo_depth)
        self._accelerator = accelerator or _default_accelerator
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "busy": Out(1), "error": Out(1)})

    def elaborate(self, platform):
        m = Module()
        net = self.net
        n_pixels, n_results = net.input.size, net.readout.size
        width = pixel_bytes(net)

        m.submodules.uart_rx = rx = UartRx(self.divisor)
        m.submodules.uart_tx = tx = UartTx(self.divisor)
        m.submodules.accelerator = accel = self._accelerator(net, self.time_steps)
        m.submodules.pixel_fifo = pixel_fifo = fifo.SyncFIFOBuffered(width=net.input.bits,
                                                                     depth=self.pixel_fifo_depth)
        m.submodules.result_fifo = result_fifo = fifo.SyncFIFOBuffered(width=32, depth=max(2, n_results))
        m.d.comb += [
            rx.rx.eq(self.rx),
            self.tx.eq(tx.tx),
            self.busy.eq(accel.busy),
            # pixel FIFO -> accelerator
            accel.pixels.payload.eq(pixel_fifo.r_data),
            accel.pixels.valid.eq(pixel_fifo.r_rdy),
            pixel_fifo.r_en.eq(accel.pixels.ready),
            # accelerator -> result FIFO (deep enough for every result: never stalls the accelerator)
            result_fifo.w_data.eq(accel.results.payload),
            result_fifo.w_en.eq(accel.results.valid),
            accel.results.ready.eq(result_fifo.w_rdy),
        ]
        with m.If(rx.framing_error | rx.overrun):
            m.d.sync += self.error.eq(1)

        pixels_left = Signal(range(n_pixels + 1), name="pixels_left")
        low_byte = Signal(8, name="pixel_low_byte")
        high_half = Signal(name="pixel_high_half")
        results_left = Signal(range(n_results + 1), name="results_left")
        settle = Signal(2, name="settle")
        cycles = Signal(32, name="cycles_latched")
        byte_index = Signal(2, name="byte_index")

        m.d.comb += rx.data.ready.eq(1)  # the link has no flow control: every byte is taken (or counted lost)
        with m.FSM(name="protocol"):
            with m.State("FRAME"):
                with m.If(rx.data.valid & (rx.data.payload == FRAME_START)):
                    m.d.sync += [pixels_left.eq(n_pixels), high_half.eq(0)]
                    m.next = "PIXELS"
            with m.State("PIXELS"):
                with m.If(rx.data.valid):
                    if width == 1:
                        complete = Signal(name="pixel_complete")
                        m.d.comb += [complete.eq(1), pixel_fifo.w_data.eq(rx.data.payload)]
                    else:
                        complete = high_half
                        m.d.sync += [low_byte.eq(rx.data.payload), high_half.eq(~high_half)]
                        m.d.comb += pixel_fifo.w_data.eq((rx.data.payload << 8) | low_byte)
                    with m.If(complete):
                        m.d.comb += pixel_fifo.w_en.eq(1)
                        with m.If(~pixel_fifo.w_rdy):
                            m.d.sync += self.error.eq(1)
                        m.d.sync += pixels_left.eq(pixels_left - 1)
                        with m.If(pixels_left == 1):
                            m.d.sync += results_left.eq(n_results)
                            m.next = "RUN"
            with m.State("RUN"):
                with m.If(accel.results.valid & accel.results.ready):
                    m.d.sync += results_left.eq(results_left - 1)
                    with m.If(results_left == 1):
                        m.d.sync += settle.eq(3)
                        m.next = "SETTLE"
            with m.State("SETTLE"):
                # `cycles` is registered when the last result is taken; give it time to appear
                m.d.sync += settle.eq(settle - 1)
                with m.If(settle == 0):
                    m.d.sync += cycles.eq(accel.cycles)
                    m.next = "REPLY_HEADER"
            with m.State("REPLY_HEADER"):
                m.d.comb += [tx.data.payload.eq(FRAME_REPLY), tx.data.valid.eq(1)]
                with m.If(tx.data.ready):
                    m.d.sync += byte_index.eq(0)
                    m.next = "REPLY_RESULTS"
            with m.State("REPLY_RESULTS"):
                m.d.comb += [tx.data.payload.eq(result_fifo.r_data.word_select(byte_index, 8)),
                             tx.data.valid.eq(result_fifo.r_rdy)]
                with m.If(tx.data.valid & tx.data.ready):
                    m.d.sync += byte_index.eq(byte_index + 1)
                    with m.If(byte_index == 3):
                        m.d.comb += result_fifo.r_en.eq(1)
                        with m.If(result_fifo.r_level == 1):
                            m.next = "REPLY_CYCLES"
            with m.State("REPLY_CYCLES"):
                m.d.comb += [tx.data.payload.eq(cycles.word_select(byte_index, 8)), tx.data.valid.eq(1)]
                with m.If(tx.data.ready):
                    m.d.sync += byte_index.eq(byte_index + 1)
                    with m.If(byte_index == 3):
                        m.next = "FRAME"
        return m


class BoardTop(Elaboratable):
    """BoardCore on an amaranth-boards platform: UART 0's pins, LED 0 = busy, LED 1 = error, and the clock.

    With ``clock_mhz`` None (or equal to the board's oscillator) everything runs on the oscillator (iCEBreaker
    12 MHz, ULX3S 25 MHz); otherwise on the PLL's nearest frequency at or below ``clock_mhz`` (hw/pll.py), in the
    ``sync`` domain that this top defines. The UART divisor is the clock frequency over ``baudrate``
    (rounded; refused if the baud rate is off by more than 2%).
    """

    def __init__(self, net: Network, time_steps: int | None = None, *, baudrate: int = DEFAULT_BAUDRATE,
                 accelerator=None, clock_mhz: float | None = None):
        self.net = net
        self.time_steps = time_steps
        self.baudrate = operator.index(baudrate)
        self.accelerator = accelerator
        self.clock_mhz = None if clock_mhz is None else float(clock_mhz)

    def pll_setting(self, platform):
        """The PLL setting this top uses on ``platform``, or None when it runs on the oscillator."""
        oscillator_mhz = platform.default_clk_frequency / 1e6
        if self.clock_mhz is None or abs(self.clock_mhz - oscillator_mhz) < 1e-9:
            return None
        return pll_for(platform.family, oscillator_mhz, self.clock_mhz)

    def clock_hz(self, platform) -> float:
        """The frequency the design runs at on ``platform`` (the PLL's achieved output, or the oscillator)."""
        setting = self.pll_setting(platform)
        return platform.default_clk_frequency if setting is None else setting.f_out_mhz * 1e6

    def divisor(self, clock_hz: float) -> int:
        divisor = round(clock_hz / self.baudrate)
        if divisor < MIN_DIVISOR or abs(clock_hz / divisor - self.baudrate) > 0.02 * self.baudrate:
            raise ValueError(f"a {clock_hz / 1e6:g} MHz clock cannot make {self.baudrate} baud within 2% "
                             f"(divisor {divisor}); choose another baud rate")
        return divisor

    def elaborate(self, platform):
        m = Module()
        setting = self.pll_setting(platform)
        if setting is not None:
            m.domains.sync = ClockDomain("sync")
            m.submodules.clock = PllClock(setting)
        m.submodules.core = core = BoardCore(self.net, self.time_steps,
                                             divisor=self.divisor(self.clock_hz(platform)),
                                             accelerator=self.accelerator)
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx_pin = rx_pin = io.Buffer("i", uart.rx)
        m.submodules.uart_tx_pin = tx_pin = io.Buffer("o", uart.tx)
        m.d.comb += [core.rx.eq(rx_pin.i), tx_pin.o.eq(core.tx)]
        for number, signal in enumerate((core.busy, core.error)):
            try:
                led = platform.request("led", number, dir="-")
            except ResourceError:  # a board with fewer LEDs simply does not show it
                continue
            m.submodules[f"led{number}"] = led_pin = io.Buffer("o", led)
            m.d.comb += led_pin.o.eq(signal)
        return m
