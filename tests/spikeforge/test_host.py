"""FpgaClient against fake serial links: frames computed by the reference, short replies and garbage."""

from __future__ import annotations

import numpy as np
import pytest

from spikeforge.host import (FRAME_REPLY, FRAME_START, FpgaClient, FpgaLinkError, decode_reply, encode_request,
                             reply_length)
from spikeforge.testing import random_images, random_network
from spikeforge.sw.reference import run as reference_run


class FakeBoard:
    """A serial-like object that answers each request frame like the board, from the integer reference.

    ``mangle(reply) -> bytes`` lets a test damage the reply; ``chunk`` is the most bytes one read() returns.
    """

    def __init__(self, net, mangle=None, chunk=7, cycles=12345):
        self.net, self.mangle, self.chunk, self.cycles = net, mangle, chunk, cycles
        self.pending = b""
        self.requests: list[bytes] = []
        self.flushes = 0

    def write(self, data: bytes) -> int:
        self.requests.append(bytes(data))
        assert data[0] == FRAME_START
        image = np.frombuffer(data[1:], np.uint8).reshape(self.net.input.shape).copy()
        readout = reference_run(self.net, image[None]).readout[0].reshape(-1)
        reply = bytes([FRAME_REPLY]) + readout.astype("<i4").tobytes() + np.uint32(self.cycles).tobytes()
        self.pending += self.mangle(reply) if self.mangle else reply
        return len(data)

    def read(self, n: int) -> bytes:
        out, self.pending = self.pending[:min(n, self.chunk)], self.pending[min(n, self.chunk):]
        return out

    @property
    def in_waiting(self) -> int:
        return len(self.pending)

    def reset_input_buffer(self):
        self.flushes += 1
        self.pending = b""


@pytest.fixture(scope="module")
def net():
    return random_network(31, input_shape=(1, 6, 6), layers=[("conv", 2, 3, 1, 0), ("dense", 5)])


def test_infer_returns_the_reference_readout(net):
    images = random_images(3, net, 3)
    board = FakeBoard(net)
    client = FpgaClient("/dev/fake0", net=net, link=board, timeout=1.0)
    readouts, cycles = client.infer_batch(images)
    np.testing.assert_array_equal(readouts, reference_run(net, images).readout)
    assert cycles == [12345] * 3
    assert board.requests[0] == bytes([0x53]) + images[0].reshape(-1).tobytes()
    assert board.flushes == 3


def test_short_reply_names_port_and_bytes(net):
    board = FakeBoard(net, mangle=lambda r: r[:9])
    client = FpgaClient("/dev/fake1", net=net, link=board, timeout=0.2)
    with pytest.raises(FpgaLinkError, match=r"^/dev/fake1: short reply, 9 of 25 bytes .*received 9 byte\(s\): 52 "):
        client.infer(random_images(1, net, 1)[0])


def test_silence_names_port(net):
    board = FakeBoard(net, mangle=lambda r: b"")
    client = FpgaClient("/dev/fake2", net=net, link=board, timeout=0.2)
    with pytest.raises(FpgaLinkError, match="^/dev/fake2: no reply within 0.2 s"):
        client.infer(random_images(1, net, 1)[0])


def test_garbage_header_is_rejected(net):
    board = FakeBoard(net, mangle=lambda r: bytes(range(200, 200 + len(r))))
    client = FpgaClient("/dev/fake3", net=net, link=board, timeout=0.2)
    with pytest.raises(FpgaLinkError, match=r"^/dev/fake3: garbage reply \(the reply starts with 0xc8, not 0x52; "
                                            r"received 25 byte\(s\): c8 c9 ca"):
        client.infer(random_images(1, net, 1)[0])


def test_trailing_bytes_are_rejected(net):
    board = FakeBoard(net, mangle=lambda r: r + b"\x00\xff")
    client = FpgaClient("/dev/fake4", net=net, link=board, timeout=0.2)
    with pytest.raises(FpgaLinkError, match="^/dev/fake4: 2 unexpected byte"):
        client.infer(random_images(1, net, 1)[0])


def test_frames_and_checks():
    image = np.arange(12, dtype=np.uint8).reshape(1, 3, 4)
    assert encode_request(image, (1, 3, 4)) == bytes([0x53, *range(12)])
    assert encode_request(np.full((1, 1, 2), 300), (1, 1, 2), bits=9) == bytes([0x53, 0x2C, 0x01, 0x2C, 0x01])
    with pytest.raises(ValueError, match="does not fit the network's input"):
        encode_request(image, (1, 4, 4))
    with pytest.raises(ValueError, match="0..255"):
        encode_request(image.astype(int) + 250, (1, 3, 4))
    reply = bytes([0x52]) + np.array([-5, 7], "<i4").tobytes() + np.uint32(99).tobytes()
    readout, cycles = decode_reply(reply, 2)
    assert readout.tolist() == [-5, 7] and cycles == 99 and reply_length(2) == len(reply)
    with pytest.raises(ValueError, match="FpgaClient needs the network"):
        FpgaClient("/dev/null", link=object())


def test_unopenable_port_is_one_sentence(net):
    with pytest.raises(FpgaLinkError, match="cannot open serial port /dev/spikeforge-no-such-port"):
        FpgaClient("/dev/spikeforge-no-such-port", net=net)
