"""A single-port RAM that is the iCE40 UltraPlus's SPRAM on that device and an Amaranth Memory elsewhere.

The UP5K has 4 SPRAM blocks of 16K x 16 bits (1 Mbit, eight times its 30 block RAMs), but Yosys does not infer
them from a Memory (docs/hardware-flow.md), so ``SinglePortRam`` instantiates ``SB_SPRAM256KA`` itself, tiled in
width and depth. In simulation (no platform) and on other devices it is a Memory with the same contract.
"""

from __future__ import annotations

import operator

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SinglePortRam", "SPRAM_WIDTH", "SPRAM_DEPTH", "SPRAM_BLOCKS", "spram_blocks", "spram_tiles", "uses_spram"]

SPRAM_WIDTH = 16
SPRAM_DEPTH = 16384
# SPRAM blocks per device (iCE40 UltraPlus family)
SPRAM_BLOCKS = {"iCE40UP5K": 4, "iCE40UP3K": 4}


def spram_tiles(width: int, depth: int) -> tuple[int, int]:
    """``(columns, banks)``: SB_SPRAM256KA blocks side by side for the width, and stacked for the depth."""
    return -(-width // SPRAM_WIDTH), -(-depth // SPRAM_DEPTH)


def spram_blocks(width: int, depth: int) -> int:
    """SB_SPRAM256KA blocks a ``width x depth`` SinglePortRam takes: columns x banks."""
    columns, banks = spram_tiles(width, depth)
    return columns * banks


def uses_spram(platform) -> bool:
    """True on an iCE40 UltraPlus platform (the devices that have SPRAM)."""
    return (platform is not None and getattr(platform, "family", "").lower() == "ice40"
            and getattr(platform, "device", "") in SPRAM_BLOCKS)


class SinglePortRam(wiring.Component):
    """``depth`` words of ``width`` bits behind one port: one read or one write per cycle.

    On an iCE40 UltraPlus platform this is ``ceil(width / 16) * ceil(depth / 16384)`` SB_SPRAM256KA blocks (the
    UP5K has 4); otherwise an ``amaranth.lib.memory.Memory``. The SPRAM has no initial contents: **every word
    is undefined at power-up** (and after a write, see below), so write a word before reading it.

    Parameters
    ----------
    width : int
        Bits per word (1 or more).
    depth : int
        Words (1 or more).
    spram : bool
        False: a Memory on every device (block RAM on the iCE40), for a memory the SPRAM plan leaves out.

    Members
    -------
    addr : In(range(depth))
        The word read or written this cycle (when ``enable``).
    enable : In(1)
        Do an access this cycle. While low, nothing is written and ``read_data`` holds its value.
    write_enable : In(1)
        With ``enable``: write ``write_data`` at ``addr``; without it the access is a read.
    write_data : In(width)
    read_data : Out(width)
        The word at ``addr`` of the last read, from the cycle after that read (one cycle of latency) until the
        next access. After a write it is undefined until the next read (the SPRAM outputs X; the Memory model
        holds the old value).
    """

    def __init__(self, width: int, depth: int, *, spram: bool = True):
        self.width = operator.index(width)
        self.depth = operator.index(depth)
        self.spram = bool(spram)
        if self.width < 1 or self.depth < 1:
            raise ValueError(f"a SinglePortRam needs a positive width and depth, not {self.width} x {self.depth}")
        super().__init__({
            "addr": In(range(self.depth)),
            "enable": In(1),
            "write_enable": In(1),
            "write_data": In(self.width),
            "read_data": Out(self.width),
        })

    def elaborate(self, platform):
        if self.spram and uses_spram(platform):
            return self._elaborate_spram(platform)
        m = Module()
        m.submodules.memory = mem = memory.Memory(shape=self.width, depth=self.depth, init=[])
        write = mem.write_port()
        read = mem.read_port(domain="sync")
        m.d.comb += [
            write.addr.eq(self.addr), write.data.eq(self.write_data), write.en.eq(self.enable & self.write_enable),
            read.addr.eq(self.addr), read.en.eq(self.enable & ~self.write_enable),
            self.read_data.eq(read.data),
        ]
        return m

    def _spram_block(self, *, address, data_in, write, select, data_out):
        """One SB_SPRAM256KA; a test swaps in a behavioural model (the Amaranth simulator runs no Instance)."""
        return Instance(
            "SB_SPRAM256KA",
            i_ADDRESS=address, i_DATAIN=data_in, i_MASKWREN=Const(0b1111, 4), i_WREN=write,
            i_CHIPSELECT=select, i_CLOCK=ClockSignal("sync"),
            # awake and powered: POWEROFF is active low, and SLEEP or a low POWEROFF clears DATAOUT
            i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1,
            o_DATAOUT=data_out)

    def _elaborate_spram(self, platform):
        columns, banks = spram_tiles(self.width, self.depth)
        available = SPRAM_BLOCKS[platform.device]
        if columns * banks > available:
            raise ValueError(f"a {self.width} x {self.depth} SinglePortRam needs {columns * banks} SPRAM blocks of "
                             f"16K x 16, the {platform.device} has {available}; make it narrower or shallower")
        m = Module()
        address = self.addr[:14] if len(self.addr) > 14 else self.addr
        bank_index = self.addr[14:] if banks > 1 else Const(0, 1)
        data_in = Signal(columns * SPRAM_WIDTH, name="spram_data_in")
        m.d.comb += data_in.eq(self.write_data)
        read_bank = Signal(range(banks), name="spram_read_bank")  # the bank of the last read, for the output mux
        with m.If(self.enable & ~self.write_enable):
            m.d.sync += read_bank.eq(bank_index)
        bank_outputs = []
        for bank in range(banks):
            select = Signal(name=f"spram_select_{bank}")
            m.d.comb += select.eq(self.enable & (bank_index == bank))
            out = Signal(columns * SPRAM_WIDTH, name=f"spram_bank_{bank}_out")
            for column in range(columns):
                m.submodules[f"spram_{bank}_{column}"] = self._spram_block(
                    address=Cat(address, Const(0, 14 - len(address))),
                    data_in=data_in[column * SPRAM_WIDTH:(column + 1) * SPRAM_WIDTH], write=self.write_enable,
                    select=select, data_out=out[column * SPRAM_WIDTH:(column + 1) * SPRAM_WIDTH])
            bank_outputs.append(out)
        with m.Switch(read_bank):
            for bank, out in enumerate(bank_outputs):
                with m.Case(bank):
                    m.d.comb += self.read_data.eq(out[:self.width])
        return m
