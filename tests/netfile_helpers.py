"""Build network files member by member, for the loader's tests: a valid file's manifest, arrays and ZIP structure
edited in ways spikeforge's own writer never would (wrong JSON types, lying .npy headers, duplicate or encrypted
members, members whose declared size is not their size)."""

from __future__ import annotations

import ast
import io
import json
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np


def read_members(path) -> tuple[dict, list[list]]:
    """A network file as (manifest, [[member name, bytes, compression method], ...]) in archive order."""
    with zipfile.ZipFile(path) as zf:
        members = [[info.filename, zf.read(info), zipfile.ZIP_DEFLATED] for info in zf.infolist()]
    manifest = json.loads(next(data for name, data, _ in members if name == "manifest.json"))
    return manifest, members


def npy_bytes(array: np.ndarray, version=(1, 0), allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asanyarray(array), version=version, allow_pickle=allow_pickle)
    return buf.getvalue()


def npy_header(header: str | dict, version=(1, 0)) -> bytes:
    """The magic string and a header (a dict, or any text) of a .npy file, without data."""
    text = header if isinstance(header, str) else repr(header)
    raw = text.encode("latin1") + b"\n"
    size = struct.pack("<H" if version[0] == 1 else "<I", len(raw))
    return b"\x93NUMPY" + bytes(version) + size + raw


def npy_split(data: bytes) -> tuple[dict, bytes]:
    """(header dict, data bytes) of a well-formed .npy file."""
    fp = io.BytesIO(data)
    version = np.lib.format.read_magic(fp)
    length = struct.unpack("<H" if version[0] == 1 else "<I", fp.read(2 if version[0] == 1 else 4))[0]
    header = ast.literal_eval(fp.read(length).decode("latin1"))
    return header, fp.read()


def zip_bytes(members, manifest=None) -> bytes:
    """A ZIP archive of [name, bytes, method] entries (duplicates allowed); ``manifest`` (a dict or raw bytes)
    replaces the bytes of every member named manifest.json."""
    if isinstance(manifest, dict):
        manifest = json.dumps(manifest).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": duplicates are what some tests want
        for name, data, method in members:
            if name == "manifest.json" and manifest is not None:
                data = manifest
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = method
            with zf.open(info, "w") as f:
                f.write(data)
    return buf.getvalue()


def write(path, members, manifest=None) -> Path:
    path = Path(path)
    path.write_bytes(zip_bytes(members, manifest))
    return path


def patch_entry(archive: bytes, name: str, *, flag_bits=None, method=None, crc=None, file_size=None) -> bytes:
    """Rewrite fields of one member's central-directory entry and local header (the first member of that name)."""
    data = bytearray(archive)
    end = data.rfind(b"PK\x05\x06")
    count, _, cd_offset = struct.unpack_from("<HII", data, end + 10)
    pos = cd_offset
    for _ in range(count):
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, pos + 28)
        local = struct.unpack_from("<I", data, pos + 42)[0]
        if data[pos + 46:pos + 46 + name_len].decode("utf-8", "replace") == name:
            for field, value, cd_at, local_at, fmt in (("flag", flag_bits, 8, 6, "<H"), ("method", method, 10, 8, "<H"),
                                                       ("crc", crc, 16, 14, "<I"),
                                                       ("size", file_size, 24, 22, "<I")):
                if value is not None:
                    struct.pack_into(fmt, data, pos + cd_at, value)
                    struct.pack_into(fmt, data, local + local_at, value)
            return bytes(data)
        pos += 46 + name_len + extra_len + comment_len
    raise KeyError(name)
