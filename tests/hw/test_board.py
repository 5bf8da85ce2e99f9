# amaranth: UnusedElaboratable=no
"""The board top end to end in Amaranth's simulator: serial bytes in, serial reply out, against the reference.

A host model drives the rx pin bit by bit with the request frame of spikeforge.host (0x53 + pixels) and decodes
the tx pin; the readout must equal sw/reference.py's and ``cycles`` the bare accelerator's own count. The UART runs at
5 clock cycles per bit so that a frame takes a few thousand cycles.
"""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from spikeforge.host import decode_reply, encode_request, reply_length
from spikeforge.hw.board import BoardCore, BoardTop
from spikeforge.hw.testing import simulate
from spikeforge.testing import random_images, random_network
from spikeforge.netimage import required_acc_bits, validate
from spikeforge.sw.reference import run as reference_run
from hw_helpers import receive_byte, send_byte

DIVISOR = 5


def board_run(net, images, time_steps, divisor=DIVISOR):
    """Every image through BoardCore's pins; returns the decoded (readout, cycles) per image."""
    dut = BoardCore(net, time_steps, divisor=divisor)
    n = reply_length(net.readout.size)
    replies: list[bytes] = []

    async def host(ctx):
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(10)
        await send_byte(ctx, dut.rx, 0x00, divisor)  # noise before the frame byte is ignored
        for k, image in enumerate(images):
            for value in encode_request(image, net.input.shape, net.input.bits):
                await send_byte(ctx, dut.rx, value, divisor)
            while len(replies) <= k:  # one image at a time, as FpgaClient does
                await ctx.tick()

    async def listener(ctx):
        for _ in images:
            reply = bytes([await receive_byte(ctx, dut.tx, divisor) for _ in range(n)])
            replies.append(reply)
        assert ctx.get(dut.error) == 0

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(host, background=True)
    sim.add_testbench(listener)
    sim.run()
    return [decode_reply(r, net.readout.size) for r in replies]


def test_board_end_to_end_matches_reference():
    T = 4
    net = random_network(21, input_shape=(1, 5, 5), layers=[("conv", 2, 3, 2, 1), ("dense", 4)], time_steps=T,
                         activity=0.5)
    images = random_images(21, net, 2, density=0.8)
    ref = reference_run(net, images, T)
    got = board_run(net, images, T)
    # the board buffers all results, so the accelerator never sees back-pressure: its cycle count must equal
    # that of the bare accelerator with results always ready
    bare_cycles = simulate(net, images, T).cycles
    assert len(got) == len(images)
    for b, (readout, cycles) in enumerate(got):
        np.testing.assert_array_equal(readout, ref.readout[b].reshape(-1),
                                      err_msg=f"image {b}: readout over the UART differs from the reference")
        assert cycles == bare_cycles[b], f"image {b}: cycles {cycles} over the UART, {bare_cycles[b]} bare"


def test_board_with_wide_pixels_takes_two_bytes_per_pixel():
    """A 10-bit input travels as two little-endian bytes per pixel."""
    T = 3
    net = random_network(26, input_shape=(1, 4, 4), layers=[("conv", 2, 3, 2, 1), ("dense", 3)], time_steps=T,
                         activity=0.5)
    net.input.bits = 10
    for i in range(1, len(net.populations)):
        net.populations[i].acc_bits = required_acc_bits(net, i)
    validate(net)
    rng = np.random.default_rng(26)
    images = rng.integers(0, 1024, size=(2, 1, 4, 4)) // np.array([1, 4]).reshape(2, 1, 1, 1)
    ref = reference_run(net, images, T)
    assert sum(ref.spike_counts()[1:-1]) > 0
    for b, (readout, _) in enumerate(board_run(net, images, T)):
        np.testing.assert_array_equal(readout, ref.readout[b].reshape(-1), err_msg=f"image {b}")


def test_board_top_elaborates_for_both_boards():
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    net = random_network(22, input_shape=(1, 4, 4), layers=[("dense", 3)], time_steps=2)
    for platform in (ICEBreakerPlatform(), ULX3S_85F_Platform()):
        plan = platform.prepare(BoardTop(net, baudrate=115200), name="spikeforge")  # pins, clock, RTLIL
        assert "spikeforge.il" in plan.files
    assert BoardTop(net).divisor(12e6) == 104
    with pytest.raises(ValueError, match="cannot make 1400000 baud"):
        BoardTop(net, baudrate=1_400_000).divisor(12e6)


def test_hardware_side_does_not_load_torch():
    import subprocess
    import sys

    code = ("import sys, spikeforge.hw.uart, spikeforge.hw.board, spikeforge.hw.bitstream, spikeforge.host; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('spikeforge.sw')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
