"""Host side of the board's serial protocol (docs/hardware-flow.md): send an image, read back the readout.

Request: 0x53, then the C*H*W pixels in (c, y, x) order, one byte each (two bytes little-endian when the input is
wider than 8 bits). Reply: 0x52, each readout V as int32 little-endian in index order, then the accelerator's
``cycles`` as uint32 little-endian. numpy and pyserial only.
"""

from __future__ import annotations

import time

import numpy as np

from spikeforge.netimage import Network

__all__ = ["FpgaClient", "FpgaLinkError", "encode_request", "decode_reply", "reply_length", "FRAME_START",
           "FRAME_REPLY"]

FRAME_START = 0x53
FRAME_REPLY = 0x52


class FpgaLinkError(RuntimeError):
    """The board did not answer as the protocol says; the message names the port and what was received."""


def _bytes_per_pixel(bits: int) -> int:
    return 1 if bits <= 8 else 2


def encode_request(image, input_shape: tuple[int, ...], bits: int = 8) -> bytes:
    """The request frame for one image (integers in 0..2^bits-1, shape ``input_shape`` = (C, H, W))."""
    pixels = np.asarray(image)
    if pixels.ndim == 2 and len(input_shape) == 3 and input_shape[0] == 1:
        pixels = pixels[None]
    if tuple(pixels.shape) != tuple(input_shape):
        raise ValueError(f"an image of shape {list(pixels.shape)} does not fit the network's input "
                         f"{list(input_shape)}")
    flat = pixels.reshape(-1).astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() > (1 << bits) - 1 or not np.array_equal(flat, pixels.reshape(-1))):
        raise ValueError(f"pixels must be integers in 0..{(1 << bits) - 1}")
    dtype = "<u1" if _bytes_per_pixel(bits) == 1 else "<u2"
    return bytes([FRAME_START]) + flat.astype(dtype).tobytes()


def reply_length(readout_size: int) -> int:
    return 1 + 4 * readout_size + 4


def decode_reply(reply: bytes, readout_size: int) -> tuple[np.ndarray, int]:
    """``(readout int64 [readout_size], cycles)`` from a complete reply; ValueError naming the defect."""
    want = reply_length(readout_size)
    if len(reply) != want:
        raise ValueError(f"the reply has {len(reply)} bytes, not {want} (1 + 4 x {readout_size} + 4)")
    if reply[0] != FRAME_REPLY:
        raise ValueError(f"the reply starts with 0x{reply[0]:02x}, not 0x{FRAME_REPLY:02x}")
    readout = np.frombuffer(reply, dtype="<i4", count=readout_size, offset=1).astype(np.int64)
    cycles = int(np.frombuffer(reply, dtype="<u4", count=1, offset=1 + 4 * readout_size)[0])
    return readout, cycles


def _show(data: bytes, limit: int = 24) -> str:
    if not data:
        return "nothing"
    text = data[:limit].hex(" ")
    return f"{len(data)} byte(s): {text}{' ...' if len(data) > limit else ''}"


class FpgaClient:
    """Inference on a board running the spikeforge bitstream, over a serial port.

    Parameters
    ----------
    port : str
        The serial device (``/dev/ttyUSB1`` for the iCEBreaker's second FTDI channel, for example).
    baudrate : int
        Must match the bitstream's (115200 by default).
    net : Network
        The network the bitstream was built for: sets the image shape and the reply length. Alternatively give
        ``input_shape``, ``readout_shape`` and ``input_bits``.
    timeout : float
        Seconds to wait for a complete reply.
    link : object or None
        Anything with ``read(n) -> bytes`` and ``write(bytes)`` to use instead of opening ``port`` with pyserial
        (tests pass a fake; ``read`` may return fewer bytes than asked, as pyserial does on its timeout).
    """

    def __init__(self, port: str, baudrate: int = 115200, *, net: Network | None = None,
                 input_shape: tuple[int, ...] | None = None, readout_shape: tuple[int, ...] | None = None,
                 input_bits: int = 8, timeout: float = 5.0, link=None):
        if net is not None:
            input_shape, readout_shape, input_bits = net.input.shape, net.readout.shape, net.input.bits
        if input_shape is None or readout_shape is None:
            raise ValueError("FpgaClient needs the network (net=) or input_shape= and readout_shape= to know the "
                             "frame sizes")
        self.port = port
        self.baudrate = int(baudrate)
        self.input_shape = tuple(input_shape)
        self.readout_shape = tuple(readout_shape)
        self.input_bits = int(input_bits)
        self.timeout = float(timeout)
        self.readout_size = int(np.prod(self.readout_shape))
        if link is None:
            import serial

            try:
                link = serial.Serial(port, self.baudrate, timeout=min(0.5, self.timeout))
            except (serial.SerialException, OSError) as exc:
                raise FpgaLinkError(f"cannot open serial port {port} ({exc}); check the board is plugged in and "
                                    f"the port name (and your permission to use it)") from None
        self.link = link

    def close(self) -> None:
        close = getattr(self.link, "close", None)
        if close:
            close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _read(self, count: int) -> bytes:
        data = b""
        deadline = time.monotonic() + self.timeout
        while len(data) < count and time.monotonic() < deadline:
            chunk = self.link.read(count - len(data))
            if chunk:
                data += bytes(chunk)
        return data

    def infer(self, image) -> tuple[np.ndarray, int]:
        """Run one image (integers [C, H, W]); returns ``(readout int64 [*readout_shape], cycles)``."""
        request = encode_request(image, self.input_shape, self.input_bits)
        flush = getattr(self.link, "reset_input_buffer", None)
        if flush:
            flush()  # a stale byte from an earlier, interrupted exchange would shift the whole reply
        self.link.write(request)
        want = reply_length(self.readout_size)
        reply = self._read(want)
        if len(reply) < want:
            if not reply:
                raise FpgaLinkError(f"{self.port}: no reply within {self.timeout:g} s after sending an image; is the "
                                    f"spikeforge bitstream for this network loaded, at {self.baudrate} baud?")
            raise FpgaLinkError(f"{self.port}: short reply, {len(reply)} of {want} bytes within {self.timeout:g} s "
                                f"(received {_show(reply)}); does the bitstream's network match this one?")
        try:
            readout, cycles = decode_reply(reply, self.readout_size)
        except ValueError as exc:
            raise FpgaLinkError(f"{self.port}: garbage reply ({exc}; received {_show(reply)}); check the baud rate "
                                f"({self.baudrate}) and that the spikeforge bitstream is loaded") from None
        extra = getattr(self.link, "in_waiting", 0)
        if extra:
            raise FpgaLinkError(f"{self.port}: {extra} unexpected byte(s) after a complete reply (received "
                                f"{_show(reply + bytes(self.link.read(extra)))}); the link is out of step: reset "
                                f"the board, check the baud rate ({self.baudrate})")
        return readout.reshape(self.readout_shape), cycles

    def infer_batch(self, images) -> tuple[np.ndarray, list[int]]:
        """``infer`` over a batch [B, C, H, W]: readouts [B, *readout_shape] and cycles per image."""
        results = [self.infer(image) for image in images]
        return (np.stack([r for r, _ in results]) if results else np.zeros((0, *self.readout_shape), np.int64),
                [c for _, c in results])
