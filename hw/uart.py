"""An 8N1 UART (receiver and transmitter) with stream interfaces: the board's link to the host.

hw/board.py puts it between the host's serial port and the accelerator; the baud rate is set by ``divisor``, the
number of clock cycles per bit (clock frequency / baud rate). Torch-free, like all of hw/.
"""

from __future__ import annotations

import operator

from amaranth.hdl import Cat, Module, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UartRx", "UartTx", "MIN_DIVISOR"]

MIN_DIVISOR = 4  # fewer clocks per bit leave no middle to sample


def _check_divisor(divisor) -> int:
    divisor = operator.index(divisor)
    if divisor < MIN_DIVISOR:
        raise ValueError(f"divisor (clock cycles per bit) must be at least {MIN_DIVISOR}, not {divisor}")
    return divisor


class UartRx(wiring.Component):
    """8N1 receiver: one start bit, 8 data bits LSB first, one stop bit; the line idles high.

    The pin passes a 2-flip-flop synchronizer; a falling edge starts a frame, and each bit is sampled once, in
    its middle (``divisor // 2`` cycles after the edge, then every ``divisor`` cycles). A start bit that is high
    again in its middle is a glitch and ignored.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (at least 4).

    Members
    -------
    rx : In(1)
        The serial input pin (asynchronous).
    data : Out(stream.Signature(unsigned(8)))
        Received bytes; the byte is held until taken. A byte that arrives while the previous one is still
        held is dropped and pulses ``overrun``.
    framing_error : Out(1)
        One-cycle pulse when a stop bit was low (the byte is dropped).
    overrun : Out(1)
        One-cycle pulse when a complete byte was dropped because ``data`` was not taken in time.
    """

    def __init__(self, divisor: int):
        self.divisor = _check_divisor(divisor)
        super().__init__({
            "rx": In(1, init=1),
            "data": Out(stream.Signature(unsigned(8))),
            "framing_error": Out(1),
            "overrun": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        line = Signal(init=1, name="rx_sync")
        m.submodules.sync = FFSynchronizer(self.rx, line, init=1, stages=2)

        timer = Signal(range(self.divisor), name="bit_timer")
        bit = Signal(range(8), name="bit_index")
        shift = Signal(8, name="rx_shift")

        with m.If(self.data.valid & self.data.ready):
            m.d.sync += self.data.valid.eq(0)
        m.d.sync += [self.framing_error.eq(0), self.overrun.eq(0)]

        with m.FSM(name="rx_fsm"):
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(self.divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    with m.If(line):
                        m.next = "IDLE"  # a glitch, not a start bit
                    with m.Else():
                        m.d.sync += [timer.eq(self.divisor - 1), bit.eq(0)]
                        m.next = "DATA"
            with m.State("DATA"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.sync += [shift.eq(Cat(shift[1:], line)), timer.eq(self.divisor - 1), bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    # back to IDLE in the middle of the stop bit, so that the next start edge is seen in time
                    m.next = "IDLE"
                    with m.If(~line):
                        m.d.sync += self.framing_error.eq(1)
                    with m.Elif(self.data.valid & ~self.data.ready):
                        m.d.sync += self.overrun.eq(1)
                    with m.Else():
                        m.d.sync += [self.data.payload.eq(shift), self.data.valid.eq(1)]
        return m


class UartTx(wiring.Component):
    """8N1 transmitter: sends each byte taken from ``data`` as start bit, 8 data bits LSB first, stop bit.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (at least 4).

    Members
    -------
    data : In(stream.Signature(unsigned(8)))
        Bytes to send; one is taken whenever the transmitter is idle (ready), so back-to-back bytes leave no
        gap: a byte costs ``10 * divisor`` cycles.
    tx : Out(1)
        The serial output pin; idles high.
    """

    def __init__(self, divisor: int):
        self.divisor = _check_divisor(divisor)
        super().__init__({
            "data": In(stream.Signature(unsigned(8))),
            "tx": Out(1, init=1),
        })

    def elaborate(self, platform):
        m = Module()
        frame = Signal(10, init=0b11_1111_1111, name="tx_frame")  # stop, data[7:0], start; bit 0 goes out first
        left = Signal(range(11), name="tx_bits_left")
        timer = Signal(range(self.divisor), name="bit_timer")

        m.d.comb += [self.tx.eq(frame[0]), self.data.ready.eq(left == 0)]
        with m.If(left == 0):
            with m.If(self.data.valid):
                m.d.sync += [frame.eq(Cat(0, self.data.payload, 1)), left.eq(10), timer.eq(self.divisor - 1)]
        with m.Else():
            m.d.sync += timer.eq(timer - 1)
            with m.If(timer == 0):
                m.d.sync += [frame.eq(Cat(frame[1:], 1)), left.eq(left - 1), timer.eq(self.divisor - 1)]
        return m
