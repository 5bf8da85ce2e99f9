"""Colour vision datasets that cannot be downloaded here, read from folders the user already has, and batch
augmentation in plain torch (torchvision does not import beside our torch build).

Loaders follow spikeforge.sw.data.load_dataset: raw pixels, uint8 [N, 3, H, W], and int64 labels, so the trainer divides by 255
itself and the deployed network sees the bytes unchanged. CIFAR-10/100 come from their "python version" pickles;
Imagenette (or any ImageNet-style class-folder tree) is decoded once with Pillow and cached as a NumPy file.
"""

from __future__ import annotations

import hashlib
import operator
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .errors import DatasetError

__all__ = ["DatasetError", "DATASETS", "load", "load_cifar10", "load_cifar100", "load_image_folder",
           "load_imagenette", "imagenette_folder", "IMAGENETTE_CLASSES", "IMAGENETTE_FOLDERS", "IMAGE_EXTENSIONS",
           "default_cache_dir", "random_crop", "random_hflip", "augment", "to_float", "channel_stats", "normalize"]

DATASETS = ("cifar10", "cifar100", "imagenette", "imagefolder")

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR10_LAYOUT = "expected the CIFAR-10 python version: data_batch_1..5, test_batch, batches.meta"
CIFAR100_LAYOUT = "expected the CIFAR-100 python version: train, test, meta"
_CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_CIFAR_PIXELS = 3 * 32 * 32

IMAGE_EXTENSIONS = frozenset({".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})
IMAGE_FOLDER_LAYOUT = "expected class folders: <root>/train/<class>/*.JPEG|*.png and <root>/val/<class>/..."
# ImageNet WordNet ids of the ten Imagenette classes (the folder names) and what they show.
IMAGENETTE_CLASSES = {
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player",
    "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn", "n03417042": "garbage truck",
    "n03425413": "gas pump", "n03445777": "golf ball", "n03888257": "parachute",
}
# The three Imagenette downloads (folder names as unpacked) and the shorter side of their images (None: full size),
# smallest first.
IMAGENETTE_FOLDERS = {"imagenette2-160": 160, "imagenette2-320": 320, "imagenette2": None}
_IMAGENETTE_FOLDER_TEXT = "an imagenette2-160, imagenette2-320 or imagenette2 folder"
# Bump when the decoding changes, so that old cache files are not reused.
_CACHE_FORMAT = 1


# ----------------------------------------------------------------------------------------------------- CIFAR pickles

class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds (dicts, lists, bytes, NumPy arrays): a pickle can run any code it
    names, and these files come from outside, so every other global is refused."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR file never does")
        return super().find_class(module, name)


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _unpickle(path: Path, what: str, layout: str) -> dict:
    """The dict in one CIFAR pickle, its keys as str."""
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # a corrupt pickle can raise almost anything; all mean "not a CIFAR file"
        raise DatasetError(f"{what}: {path} is not a readable CIFAR pickle ({type(exc).__name__}: {exc}); "
                           f"{layout}") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{what}: {path} holds a {type(obj).__name__}, not a dict; {layout}")
    return {_text(k): v for k, v in obj.items()}


def _batch(path: Path, what: str, layout: str, label_keys: dict[str, int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Images [N, 3, 32, 32] and one int64 label array per key of ``label_keys`` (key -> number of classes)."""
    entry = _unpickle(path, what, layout)

    def malformed(problem):
        return DatasetError(f"{what}: {path} is malformed ({problem}); {layout}")

    data = entry.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR_PIXELS:
        described = (f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__)
        raise malformed(f"'data' is {described}, not uint8 [N, {_CIFAR_PIXELS}]")
    labels = []
    for key, n_classes in label_keys.items():
        if key not in entry:
            raise malformed(f"no '{key}' entry")
        try:
            values = np.asarray(entry[key])
        except (TypeError, ValueError):
            values = np.asarray([])
        if values.ndim != 1 or values.dtype.kind not in "iu" or len(values) != len(data):
            raise malformed(f"'{key}' is not {len(data)} integer labels")
        if len(values) and (values.min() < 0 or values.max() >= n_classes):
            raise malformed(f"'{key}' has values outside 0..{n_classes - 1}")
        labels.append(values.astype(np.int64))
    # rows are channel-major (1024 red, 1024 green, 1024 blue), each plane row by row
    return data.reshape(-1, 3, 32, 32), labels


def _names(entry: dict, key: str, count: int, path: Path, what: str, layout: str) -> list[str]:
    names = entry.get(key)
    if not isinstance(names, (list, tuple)) or len(names) != count:
        raise DatasetError(f"{what}: {path} is malformed (no '{key}' list of {count} names); {layout}")
    return [_text(n) for n in names]


def _cifar_folder(root, folder_name: str, needed: list[str], what: str, layout: str) -> Path:
    """The folder holding the pickles: ``root`` itself or ``root/folder_name``; every file in ``needed`` present."""
    if root is None:
        raise DatasetError(f"{what} cannot be downloaded here: pass the folder where you unpacked it "
                           f"(root=..., the {folder_name} folder or its parent); see docs/datasets.md")
    root = Path(root).expanduser()
    folder = root / folder_name if (root / folder_name).is_dir() else root
    if not folder.is_dir():
        raise DatasetError(f"{what}: {folder} is not a folder; {layout} (unpack the archive and pass its "
                           f"{folder_name} folder, see docs/datasets.md)")
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise DatasetError(f"{what}: {folder}: missing {', '.join(missing)}; {layout}")
    return folder


def _check_split(split: str, splits: tuple[str, ...]) -> None:
    if split not in splits:
        raise ValueError(f"split must be one of {splits}, not {split!r}")


def load_cifar10(root, split: str = "train") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(images uint8 [N, 3, 32, 32], labels int64 [N], class names)`` of CIFAR-10's ``split``.

    ``root`` is the unpacked ``cifar-10-batches-py`` folder or the folder that contains it; "train" is
    data_batch_1..5 in order (50,000 images), "test" is test_batch (10,000).
    """
    _check_split(split, ("train", "test"))
    what = "CIFAR-10"
    files = _CIFAR10_FILES[split]
    folder = _cifar_folder(root, CIFAR10_FOLDER, files + ["batches.meta"], what, CIFAR10_LAYOUT)
    meta_path = folder / "batches.meta"
    classes = _names(_unpickle(meta_path, what, CIFAR10_LAYOUT), "label_names", 10, meta_path, what, CIFAR10_LAYOUT)
    parts = [_batch(folder / name, what, CIFAR10_LAYOUT, {"labels": 10}) for name in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1][0] for p in parts])
    return images, labels, classes


def load_cifar100(root, split: str = "train", label_kind: str = "fine") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(images uint8 [N, 3, 32, 32], labels int64 [N], class names)`` of CIFAR-100's ``split``.

    ``root`` is the unpacked ``cifar-100-python`` folder or the folder that contains it; "train" has 50,000 images,
    "test" 10,000. ``label_kind`` "fine" gives the 100 classes, "coarse" the 20 superclasses.
    """
    _check_split(split, ("train", "test"))
    if label_kind not in ("fine", "coarse"):
        raise ValueError(f"label_kind must be 'fine' or 'coarse', not {label_kind!r}")
    what = "CIFAR-100"
    folder = _cifar_folder(root, CIFAR100_FOLDER, [split, "meta"], what, CIFAR100_LAYOUT)
    meta_path = folder / "meta"
    count = 100 if label_kind == "fine" else 20
    key = f"{label_kind}_labels"
    classes = _names(_unpickle(meta_path, what, CIFAR100_LAYOUT), f"{label_kind}_label_names", count, meta_path,
                     what, CIFAR100_LAYOUT)
    images, (labels,) = _batch(folder / split, what, CIFAR100_LAYOUT, {key: count})
    return images.copy(), labels, classes


# ------------------------------------------------------------------------------------------------ class-folder trees

def default_cache_dir() -> Path:
    """``$SPIKEFORGE_CACHE``, else ``$XDG_CACHE_HOME/spikeforge``, else ``~/.cache/spikeforge``."""
    if os.environ.get("SPIKEFORGE_CACHE"):
        return Path(os.environ["SPIKEFORGE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "spikeforge"


def _split_folder(root: Path, split: str, what: str) -> Path:
    # Imagenette and ImageNet call their held-out split "val"; "test" (load_dataset's name) means the same
    candidates = {"train": ["train"], "val": ["val", "test"], "test": ["val", "test"]}[split]
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    raise DatasetError(f"{what}: {root} has no {' or '.join(candidates)} folder; {IMAGE_FOLDER_LAYOUT}")


def _class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _list_images(root: Path, split_dir: Path, what: str) -> tuple[list[str], list[Path], np.ndarray]:
    """Class names (the sorted folder names of train/), image files and their labels for one split folder."""
    class_root = root / "train" if (root / "train").is_dir() else split_dir
    classes = _class_folders(class_root)
    if not classes:
        raise DatasetError(f"{what}: {class_root} has no class folders; {IMAGE_FOLDER_LAYOUT}")
    unknown = sorted(set(_class_folders(split_dir)) - set(classes))
    if unknown:
        raise DatasetError(f"{what}: {split_dir} has class folders that {class_root} lacks ({', '.join(unknown)}); "
                           f"both splits must use the same classes")
    files, labels = [], []
    for label, name in enumerate(classes):
        folder = split_dir / name
        if not folder.is_dir():
            continue
        found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        files += found
        labels += [label] * len(found)
    if not files:
        raise DatasetError(f"{what}: {split_dir} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in its "
                           f"class folders; {IMAGE_FOLDER_LAYOUT}")
    return classes, files, np.asarray(labels, np.int64)


def _cache_key(split_dir: Path, size: int, classes: list[str], files: list[Path]) -> str:
    """Changes whenever the tree, a file's size or modification time, the image size or the decoding changes."""
    digest = hashlib.sha256(f"{_CACHE_FORMAT}|{split_dir.resolve()}|{size}|{'/'.join(classes)}".encode())
    for path in files:
        stat = path.stat()
        digest.update(f"|{path.relative_to(split_dir)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def _decode(path: Path, size: int) -> np.ndarray:
    """One image as uint8 [3, size, size]: RGB, shorter side resized to ``size``, then the centre square."""
    from PIL import Image

    with Image.open(path) as img:
        img.draft("RGB", (size, size))  # JPEG only: decode at 1/2, 1/4 or 1/8 scale while both sides stay >= size
        img = img.convert("RGB")
        width, height = img.size
        scale = size / min(width, height)
        new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
        if new_size != img.size:
            img = img.resize(new_size, Image.Resampling.BILINEAR)
        left, top = (new_size[0] - size) // 2, (new_size[1] - size) // 2
        img = img.crop((left, top, left + size, top + size))
        return np.asarray(img, np.uint8).transpose(2, 0, 1)


def _read_cache(path: Path, n: int, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as cached:
            images, labels = cached["images"], cached["labels"]
    except (OSError, ValueError, KeyError, EOFError):
        return None  # unreadable or half-written: decode again
    if images.shape != (n, 3, size, size) or images.dtype != np.uint8 or labels.shape != (n,):
        return None
    return images, labels.astype(np.int64)


def load_image_folder(root, split: str = "train", size: int = 64, cache_dir=None, cache: bool = True,
                      progress: bool = True, workers: int | None = None,
                      what: str = "image folder") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(images uint8 [N, 3, size, size], labels int64 [N], class names)`` of an ImageNet-style tree.

    ``root/train/<class>/*`` and ``root/val/<class>/*`` (``split`` "test" reads val/, or test/ when there is no
    val/); labels index the sorted class folder names of train/. Each image is converted to RGB, its shorter side
    resized to ``size`` (bilinear), and the centre ``size`` x ``size`` square kept. The decoded array is cached in
    ``cache_dir`` (default: :func:`default_cache_dir`) under a key of the folder, ``size`` and every file's size and
    modification time, so a second load reads one file; ``cache=False`` neither reads nor writes it.
    """
    _check_split(split, ("train", "val", "test"))
    size = operator.index(size)
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, not {size}")
    if root is None:
        raise DatasetError(f"{what}: pass the folder that holds train/ and val/ (root=...); see docs/datasets.md")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{what}: {root} is not a folder; {IMAGE_FOLDER_LAYOUT}")
    split_dir = _split_folder(root, split, what)
    classes, files, labels = _list_images(root, split_dir, what)

    cache_path = None
    if cache:
        cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        key = _cache_key(split_dir, size, classes, files)
        cache_path = cache_dir / f"{root.name}-{split_dir.name}-{size}px-{key}.npz"
        cached = _read_cache(cache_path, len(files), size) if cache_path.is_file() else None
        if cached is not None:
            return cached[0], cached[1], classes

    try:
        import PIL  # noqa: F401
    except ImportError:
        raise DatasetError(f"{what}: decoding images needs Pillow, which is not installed; install it with "
                           "`pip install Pillow`") from None

    def decode(path):
        try:
            return _decode(path, size)
        except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError, DecompressionBombError, ...
            raise DatasetError(f"{what}: cannot decode {path} ({type(exc).__name__}: {exc}); remove or replace "
                               "that file") from None

    images = np.empty((len(files), 3, size, size), np.uint8)
    workers = min(8, os.cpu_count() or 1) if workers is None else max(1, operator.index(workers))
    bar = tqdm(total=len(files), desc=f"decoding {split_dir} at {size}px", unit="img", disable=not progress)
    with bar, ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow releases the GIL while decoding
        try:
            for i, image in enumerate(pool.map(decode, files)):
                images[i] = image
                bar.update()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # report a bad file now, not after decoding the rest
            raise

    if cache_path is not None:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            partial = cache_path.with_name(cache_path.name + f".{os.getpid()}.tmp")
            with open(partial, "wb") as f:
                np.savez(f, images=images, labels=labels)
            os.replace(partial, cache_path)  # atomic: a concurrent or interrupted run never sees half a file
        except OSError:
            pass  # an unwritable cache only costs the next load another decode
    return images, labels, classes


def imagenette_folder(root, size: int = 64) -> Path:
    """The Imagenette tree to read: ``root`` itself when it holds train/, else the one of its subfolders
    :data:`IMAGENETTE_FOLDERS` (the three downloads) with the smallest images that are still at least ``size``
    pixels on their shorter side, so that nothing is upscaled and the least is decoded (imagenette2-160 for sizes
    up to 160, then imagenette2-320, then the full-size imagenette2); without such a one, the largest present."""
    if root is None:
        raise DatasetError("Imagenette cannot be downloaded here: pass the folder where you unpacked it (root=..., "
                           f"{_IMAGENETTE_FOLDER_TEXT} or its parent); see docs/datasets.md")
    root = Path(root).expanduser()
    if not root.is_dir() or (root / "train").is_dir():
        return root  # load_image_folder names a missing folder
    present = [name for name in IMAGENETTE_FOLDERS if (root / name).is_dir()]
    if not present:
        raise DatasetError(f"Imagenette: {root} holds neither train/ nor {_IMAGENETTE_FOLDER_TEXT}; pass the "
                           "unpacked folder or the folder that contains it (see docs/datasets.md)")
    large_enough = [name for name in present if IMAGENETTE_FOLDERS[name] is None or IMAGENETTE_FOLDERS[name] >= size]
    return root / (large_enough[0] if large_enough else present[-1])


def load_imagenette(root, split: str = "train", size: int = 64, **kw) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Imagenette (fast.ai's 10-class ImageNet subset): :func:`load_image_folder` on the unpacked
    ``imagenette2-160``, ``imagenette2-320`` or ``imagenette2`` folder, or on the folder that contains one or more
    of them (:func:`imagenette_folder` picks one for ``size``). Class names are the WordNet ids of the folders;
    :data:`IMAGENETTE_CLASSES` says what each one shows."""
    return load_image_folder(imagenette_folder(root, operator.index(size)), split, size, what="Imagenette", **kw)


def load(name: str, split: str, root=None, **kw) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 3, H, W], labels int64 [N])``, the convention of sw.data.load_dataset.

    ``name``: "cifar10", "cifar100" (``label_kind="fine"|"coarse"``), "imagenette" or "imagefolder" (``size``,
    ``cache_dir``, ``cache``, ``progress``, ``workers``: see :func:`load_image_folder`). ``root`` is the folder the
    user unpacked the dataset into; nothing is downloaded.
    """
    loaders = {"cifar10": load_cifar10, "cifar100": load_cifar100, "imagenette": load_imagenette,
               "imagefolder": load_image_folder}
    if name not in loaders:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    images, labels, _ = loaders[name](root, split, **kw)
    return images, labels


# ---------------------------------------------------------------------------------------------------- augmentation

def _check_batch(images) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise TypeError(f"images must be a torch.Tensor [N, C, H, W], not {type(images).__name__}"
                        f"{list(images.shape) if hasattr(images, 'shape') else ''}")


def _draw_device(images: torch.Tensor, generator: torch.Generator | None) -> torch.device:
    # random numbers are drawn where the generator lives, so a CPU generator gives the same batch on any device
    return generator.device if generator is not None else images.device


def _crop_offsets(images: torch.Tensor, padding: int, generator: torch.Generator | None) -> torch.Tensor:
    """[2, N] top-left corners of the crops in the padded images, each in 0..2 * padding."""
    padding = operator.index(padding)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, not {padding}")
    offsets = torch.randint(0, 2 * padding + 1, (2, len(images)), generator=generator,
                            device=_draw_device(images, generator))
    return offsets.to(images.device)


def _flips(images: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    flip = torch.rand(len(images), generator=generator, device=_draw_device(images, generator)) < p
    return flip.to(images.device)


def _shift_and_mirror(images: torch.Tensor, padding: int, offsets: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Crop each zero-padded image at its ``offsets`` and mirror those where ``flip``, in one gather: the output
    pixel (y, x) is the padded pixel (oy + y, ox + x), or (oy + y, ox + W - 1 - x) when mirrored."""
    n, c, h, w = images.shape
    device = images.device
    source = images
    if padding:
        source = images.new_zeros((n, c, h + 2 * padding, w + 2 * padding))
        source[:, :, padding:padding + h, padding:padding + w] = images
    x = torch.arange(w, device=device)
    cols = torch.where(flip[:, None], w - 1 - x, x) + offsets[1, :, None]  # [N, W]
    rows = offsets[0, :, None] + torch.arange(h, device=device)  # [N, H]
    index = rows[:, :, None] * source.shape[-1] + cols[:, None, :]  # [N, H, W] into the flattened padded image
    flat = source.flatten(2).gather(2, index.flatten(1)[:, None, :].expand(n, c, h * w))
    return flat.view(n, c, h, w)


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image padded with ``padding`` zeros on every side, then cropped back to its size at its own random
    offset: the content moves by up to ``padding`` pixels in each direction and zeros fill the vacated border.

    Any dtype and device; one gather for the whole batch, no loop over images.
    """
    _check_batch(images)
    offsets = _crop_offsets(images, padding, generator)
    no_flip = torch.zeros(len(images), dtype=torch.bool, device=images.device)
    return _shift_and_mirror(images, padding, offsets, no_flip)


def random_hflip(images: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """Each image mirrored left-right with probability ``p``, independently."""
    _check_batch(images)
    flip = _flips(images, p, generator)
    return _shift_and_mirror(images, 0, torch.zeros(2, len(images), dtype=torch.long, device=images.device), flip)


def augment(images: torch.Tensor, generator: torch.Generator | None = None, padding: int = 4,
            flip: bool = True) -> torch.Tensor:
    """The usual CIFAR training augmentation: :func:`random_crop` with ``padding``, then :func:`random_hflip`,
    fused into one gather (same random draws, same result as calling the two in turn).

    Deterministic for a given generator state; dtype, shape and device are kept.
    """
    _check_batch(images)
    offsets = _crop_offsets(images, padding, generator)
    flips = _flips(images, 0.5, generator) if flip else torch.zeros(len(images), dtype=torch.bool,
                                                                    device=images.device)
    return _shift_and_mirror(images, padding, offsets, flips)


# --------------------------------------------------------------------------------------------------- normalization

def to_float(images) -> torch.Tensor:
    """float32 pixels in [0, 1]: uint8 divided by 255; floating-point input returned as float32 unchanged.
    This is what the deployable models train on (no mean shift; see docs/datasets.md)."""
    images = torch.as_tensor(images)
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def channel_stats(images, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) standard deviation of ``to_float(images)`` [N, C, H, W], as float32 [C].

    Accumulated in float64 over chunks of ``chunk`` images, so a whole training set never exists in float.
    """
    images = torch.as_tensor(images)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images must be a non-empty [N, C, H, W] batch, not {list(images.shape)}")
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        part = to_float(images[start:start + chunk]).double().cpu()
        total += part.sum(dim=(0, 2, 3))
        squares += (part * part).sum(dim=(0, 2, 3))
    count = images.numel() / images.shape[1]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    return mean.float(), std.float()


def normalize(images, mean, std) -> torch.Tensor:
    """``(to_float(images) - mean) / std`` per channel; ``mean`` and ``std`` are sequences of C numbers."""
    x = to_float(images)
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
    return (x - mean) / std
