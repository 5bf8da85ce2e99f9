# amaranth: UnusedElaboratable=no
"""SinglePortRam: its contract in Amaranth's simulator against a dict, and its SB_SPRAM256KA tiling on the iCE40.

The simulator runs no Instance, so the tiled design is simulated with each SB_SPRAM256KA replaced by a model of
Yosys's cells_sim.v (read: DATAOUT <= mem[ADDRESS]; write: DATAOUT <= X, modelled as a poison value; no
CHIPSELECT: DATAOUT holds).
"""

from __future__ import annotations

import random

import pytest
from amaranth.hdl import Elaboratable, Fragment, Instance, Signal
from amaranth.sim import Simulator

from spikeforge.hw.spram import SinglePortRam, spram_tiles
from hw_helpers import ModelledSpramRam

def reference_run(width, depth, ops):
    """The contract in Python: the read_data seen the cycle after each read."""
    store, seen = {}, []
    for op, addr, value in ops:
        if op == "w":
            store[addr] = value
        elif op == "r":
            seen.append(store[addr])
    return seen


def random_ops(seed, width, depth, count, addresses=None):
    rng = random.Random(seed)
    pool = addresses or [rng.randrange(depth) for _ in range(24)] + [0, depth - 1]
    written, ops = set(), []
    for _ in range(count):
        addr = rng.choice(pool)
        if addr not in written or rng.random() < 0.4:
            ops.append(("w", addr, rng.randrange(1 << width)))
            written.add(addr)
        else:
            ops.append(("r", addr, None))
        if rng.random() < 0.3:
            ops.append(("idle", None, None))
    return ops


def rtl_run(dut, ops):
    seen = []

    async def bench(ctx):
        held = None  # what read_data must show: the last read, until the next access
        for op, addr, value in ops:
            ctx.set(dut.enable, op != "idle")
            ctx.set(dut.write_enable, op == "w")
            ctx.set(dut.addr, addr or 0)
            ctx.set(dut.write_data, value or 0)
            await ctx.tick()
            if op == "r":
                held = ctx.get(dut.read_data)
                seen.append(held)
            elif op == "w":
                held = None  # undefined after a write
            elif held is not None:
                assert ctx.get(dut.read_data) == held, "read_data changed while enable was low"

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return seen


@pytest.mark.parametrize("width, depth", [(8, 100), (18, 784), (1, 3)])
def test_memory_model_matches_the_contract(width, depth):
    ops = random_ops(width * depth, width, depth, 300)
    assert rtl_run(SinglePortRam(width, depth), ops) == reference_run(width, depth, ops)


@pytest.mark.parametrize("width, depth", [(18, 784), (16, 20000), (20, 16385)])
def test_spram_tiling_matches_the_contract(width, depth):
    # addresses on both sides of every 16K bank boundary, so the bank select and the output mux are exercised
    edges = sorted({a for b in range(1, -(-depth // 16384)) for a in (b * 16384 - 1, b * 16384)} | {0, depth - 1})
    ops = random_ops(depth, width, depth, 300, addresses=edges + [depth // 3, depth // 2])
    assert rtl_run(ModelledSpramRam(width, depth), ops) == reference_run(width, depth, ops)


def spram_instances(dut, platform):
    fragment = Fragment.get(dut, platform)
    found = []

    def walk(frag):
        for sub, _, _ in frag.subfragments:
            if isinstance(sub, Instance):
                found.append(sub)
            else:
                walk(sub)
    walk(fragment)
    return [i for i in found if i.type == "SB_SPRAM256KA"], found


@pytest.mark.parametrize("width, depth, expected", [(18, 784, 2), (16, 20000, 2), (16, 16384, 1), (32, 32768, 4)])
def test_ice40_elaboration_instantiates_spram_blocks(width, depth, expected):
    from amaranth_boards.icebreaker import ICEBreakerPlatform

    assert spram_tiles(width, depth)[0] * spram_tiles(width, depth)[1] == expected
    dut = SinglePortRam(width, depth)
    blocks, everything = spram_instances(dut, ICEBreakerPlatform())
    assert len(blocks) == expected and len(everything) == expected
    for block in blocks:
        ports = {name: value for name, (value, kind) in block.ports.items()}
        assert repr(ports["MASKWREN"]) == "(const 4'd15)"
        assert repr(ports["POWEROFF"]) == "(const 1'd1)"
        assert repr(ports["SLEEP"]) == "(const 1'd0)" and repr(ports["STANDBY"]) == "(const 1'd0)"
        assert len(ports["ADDRESS"]) == 14 and len(ports["DATAIN"]) == 16 and len(ports["DATAOUT"]) == 16
        assert repr(ports["WREN"]) == repr(dut.write_enable)
        assert "clk" in repr(ports["CLOCK"])


def test_other_platforms_get_a_memory_and_oversize_is_refused():
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    from amaranth_boards.icebreaker import ICEBreakerPlatform

    blocks, everything = spram_instances(SinglePortRam(18, 784), ULX3S_85F_Platform())
    assert blocks == [] and everything == []
    with pytest.raises(ValueError, match="needs 6 SPRAM blocks of 16K x 16, the iCE40UP5K has 4"):
        Fragment.get(SinglePortRam(48, 20000), ICEBreakerPlatform())
    with pytest.raises(ValueError, match="positive width and depth, not 0 x 5"):
        SinglePortRam(0, 5)


@pytest.mark.slow
def test_spram_blocks_place_on_the_up5k(tmp_path):
    """A tiny board build: an 18 x 20000 SinglePortRam swept by a counter, its read data folded onto an LED."""
    from amaranth.hdl import Module as Top
    from amaranth.lib import io
    from amaranth_boards.icebreaker import ICEBreakerPlatform

    from spikeforge.hw.bitstream import _set_tool_env, parse_nextpnr_log

    class SweepTop(Elaboratable):
        def elaborate(self, platform):
            m = Top()
            m.submodules.ram = ram = SinglePortRam(18, 20000)
            counter = Signal(17)
            m.d.sync += counter.eq(counter + 1)
            m.d.comb += [ram.addr.eq(counter[:15]), ram.enable.eq(1), ram.write_enable.eq(counter[16]),
                         ram.write_data.eq(counter * 3)]
            m.submodules.led = led = io.Buffer("o", platform.request("led", 0, dir="-"))
            m.d.sync += led.o.eq(ram.read_data.xor())
            return m

    _set_tool_env()
    ICEBreakerPlatform().build(SweepTop(), name="sweep", build_dir=str(tmp_path), do_program=False)
    util, _ = parse_nextpnr_log((tmp_path / "sweep.tim").read_text())
    assert util["ICESTORM_SPRAM"] == (4, 4)  # 2 columns of 16 bits x 2 banks of 16K words
