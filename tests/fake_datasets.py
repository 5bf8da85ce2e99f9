"""Writers of tiny fake datasets in the real on-disk formats (MNIST-style IDX files, CIFAR-10/100 "python version"
pickles, an Imagenette-style class-folder tree of PNG and JPEG files), for tests: the real ones cannot be downloaded
here.

Each writer returns what it wrote, so a test can compare the loader's output with the truth.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np

def write_idx(path, array, compress=True):
    """One IDX file of unsigned bytes (gzip-compressed unless ``compress`` is False), as MNIST ships them."""
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    raw = header + array.tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)
    return path



CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class _Python2Pickler(pickle._Pickler):
    """Writes every str and bytes as a Python 2 byte string (SHORT_BINSTRING/BINSTRING), as cPickle did."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_string(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = save_python2_string
    dispatch[bytes] = save_python2_string


def write_mnist_subset(folder, train: int, test: int) -> Path:
    """The first ``train`` and ``test`` real MNIST images as an IDX folder (what ``--data-dir`` reads)."""
    from spikeforge.sw.data import load_dataset

    folder = Path(folder)
    for split, n in (("train", train), ("test", test)):
        x, y = load_dataset("mnist", split)
        images, labels = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}[split]
        write_idx(folder / (images + ".gz"), x[:n, 0])
        write_idx(folder / (labels + ".gz"), y[:n])
    return folder


def _dump_cifar_pickle(path: Path, entry: dict) -> None:
    """Pickle like the published files, which Python 2's cPickle wrote with NumPy 1: protocol 2, keys and the
    array's raw bytes as Python 2 strings, arrays rebuilt through numpy.core.multiarray._reconstruct."""
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(entry)
    path.write_bytes(buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))


def _random_batch(rng, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)


def write_cifar10(root, per_batch: int = 3, n_test: int = 4, seed: int = 0) -> dict:
    """``root/cifar-10-batches-py`` with data_batch_1..5 (``per_batch`` images each), test_batch, batches.meta.

    Returns {"folder": Path, "classes": names, "train": (images [N,3,32,32], labels), "test": (...)}.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    out = {"folder": folder, "classes": list(CIFAR10_NAMES)}
    splits = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    for split, names in splits.items():
        images, labels = [], []
        for name in names:
            n = per_batch if split == "train" else n_test
            data, batch_labels = _random_batch(rng, n), [int(v) for v in rng.integers(0, 10, n)]
            _dump_cifar_pickle(folder / name, {b"batch_label": f"{name} of 5".encode(), b"labels": batch_labels,
                                               b"data": data,
                                               b"filenames": [f"img_{i}.png".encode() for i in range(n)]})
            images.append(data.reshape(n, 3, 32, 32))
            labels += batch_labels
        out[split] = (np.concatenate(images), np.asarray(labels, np.int64))
    _dump_cifar_pickle(folder / "batches.meta", {b"num_cases_per_batch": per_batch,
                                                 b"label_names": [n.encode() for n in CIFAR10_NAMES],
                                                 b"num_vis": 3072})
    return out


def write_cifar100(root, n_train: int = 6, n_test: int = 4, seed: int = 0) -> dict:
    """``root/cifar-100-python`` with train, test and meta (100 fine, 20 coarse class names).

    Returns {"folder", "fine_classes", "coarse_classes", "train": (images, fine, coarse), "test": (...)}.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    fine_names = [f"fine{i:02d}" for i in range(100)]
    coarse_names = [f"coarse{i:02d}" for i in range(20)]
    out = {"folder": folder, "fine_classes": fine_names, "coarse_classes": coarse_names}
    for split, n in (("train", n_train), ("test", n_test)):
        data = _random_batch(rng, n)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        coarse = [v // 5 for v in fine]
        _dump_cifar_pickle(folder / split, {b"filenames": [f"img_{i}.png".encode() for i in range(n)],
                                            b"batch_label": f"{split}ing batch 1 of 1".encode(),
                                            b"fine_labels": fine, b"coarse_labels": coarse, b"data": data})
        out[split] = (data.reshape(n, 3, 32, 32), np.asarray(fine, np.int64), np.asarray(coarse, np.int64))
    _dump_cifar_pickle(folder / "meta", {b"fine_label_names": [n.encode() for n in fine_names],
                                         b"coarse_label_names": [n.encode() for n in coarse_names]})
    return out


def write_cifar_pickle(path, entry: dict) -> Path:
    """One pickle in the CIFAR style, for tests that write malformed batches."""
    path = Path(path)
    _dump_cifar_pickle(path, entry)
    return path


IMAGENETTE_WNIDS = ("n01440764", "n02102040", "n02979186")


def write_image_folder(root, size: int = 16, per_class=None, classes=IMAGENETTE_WNIDS, seed: int = 0) -> dict:
    """An Imagenette-style tree: ``root/{train,val}/<class>/``, one PNG of random pixels per class and split
    whose centre crop is exact (``size`` + 8 pixels wide, ``size`` high: no resizing, columns 4..4+size kept), and
    the rest solid-colour JPEGs of varied shapes (lossy, so only their colour is known).

    Returns {"root": Path, "classes": sorted classes, "size": size, split: list of (path, label, expected)}, where
    ``expected`` is the exact uint8 [3, size, size] for PNGs and the RGB colour (3,) for JPEGs.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    per_class = per_class or {"train": 3, "val": 2}
    classes = sorted(classes)
    out = {"root": root, "classes": classes, "size": size}
    jpeg_shapes = [(size * 3, size * 2), (size * 2, size * 3), (size * 4, size * 4)]  # (width, height)
    for split, count in per_class.items():
        entries = []
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                if i == 0:
                    pixels = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)  # H, W, RGB
                    path = folder / f"{name}_{i}.png"
                    Image.fromarray(pixels).save(path)
                    entries.append((path, label, pixels[:, 4:4 + size].transpose(2, 0, 1).copy()))
                else:
                    colour = rng.integers(30, 226, 3).astype(np.uint8)
                    width, height = jpeg_shapes[i % len(jpeg_shapes)]
                    path = folder / f"ILSVRC2012_val_{label:02d}{i:04d}.JPEG"
                    Image.new("RGB", (width, height), tuple(int(v) for v in colour)).save(path, quality=95)
                    entries.append((path, label, colour))
        out[split] = sorted(entries, key=lambda e: (e[1], str(e[0])))
    return out
