"""Colour datasets read from user folders and batch augmentation (spikeforge.sw.data.vision), on tiny fake
datasets in the real formats that tests/fake_datasets.py writes."""

import os
import pickle

import numpy as np
import pytest
import torch

import fake_datasets
from spikeforge.sw.data import vision as vision_data
from spikeforge.sw.data import DatasetError
from spikeforge.sw.data.vision import (augment, channel_stats, load, load_cifar10, load_cifar100, load_image_folder,
                                       load_imagenette, normalize, random_crop, random_hflip, to_float)


def one_sentence(info, *parts):
    """The DatasetError is one line naming every one of ``parts``."""
    msg = str(info.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert str(part) in msg, f"{part!r} not in {msg!r}"
    return msg


# ------------------------------------------------------------------------------------------------------------ CIFAR

@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar10_reads_the_python_version(tmp_path, split):
    truth = fake_datasets.write_cifar10(tmp_path)
    for root in (tmp_path, truth["folder"]):  # the parent or the batches folder itself
        images, labels, classes = load_cifar10(root, split)
        assert images.dtype == np.uint8 and images.shape == truth[split][0].shape
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(images, truth[split][0])
        np.testing.assert_array_equal(labels, truth[split][1])
        assert classes == truth["classes"]
    assert len(images) == (15 if split == "train" else 4)  # five batches of 3


def test_cifar10_channel_layout(tmp_path):
    """A batch row is 1024 red, 1024 green, 1024 blue bytes, each plane row by row."""
    folder = fake_datasets.write_cifar10(tmp_path)["folder"]
    row = np.concatenate([np.full(1024, 10), np.full(1024, 20), np.arange(1024) % 256]).astype(np.uint8)
    fake_datasets.write_cifar_pickle(folder / "test_batch", {b"data": row[None], b"labels": [7]})
    images, labels, _ = load_cifar10(folder, "test")
    assert (images[0, 0] == 10).all() and (images[0, 1] == 20).all()
    assert images[0, 2, 1, 0] == 32 and images[0, 2, 0, 5] == 5
    assert labels.tolist() == [7]


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar100_fine_and_coarse(tmp_path, split):
    truth = fake_datasets.write_cifar100(tmp_path)
    images, fine, classes = load_cifar100(tmp_path, split)
    np.testing.assert_array_equal(images, truth[split][0])
    np.testing.assert_array_equal(fine, truth[split][1])
    assert fine.dtype == np.int64 and classes == truth["fine_classes"]
    _, coarse, coarse_classes = load_cifar100(truth["folder"], split, label_kind="coarse")
    np.testing.assert_array_equal(coarse, truth[split][2])
    assert coarse_classes == truth["coarse_classes"]


def test_cifar_pickles_written_by_python3_load_too(tmp_path):
    """Somebody may re-save the batches with Python 3 (bytes through _codecs.encode, or protocol 5)."""
    folder = fake_datasets.write_cifar10(tmp_path)["folder"]
    data = np.arange(2 * 3072).astype(np.uint8).reshape(2, 3072)
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        (folder / "test_batch").write_bytes(pickle.dumps({b"data": data, "labels": [3, 4]}, protocol=protocol))
        images, labels, _ = load_cifar10(folder, "test")
        np.testing.assert_array_equal(images.reshape(2, -1), data)
        assert labels.tolist() == [3, 4]


def test_cifar10_missing_batch_names_it_and_the_layout(tmp_path):
    folder = fake_datasets.write_cifar10(tmp_path)["folder"]
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetError) as info:
        load_cifar10(tmp_path, "train")
    one_sentence(info, folder, "missing data_batch_3",
                 "expected the CIFAR-10 python version: data_batch_1..5, test_batch, batches.meta")
    load_cifar10(tmp_path, "test")  # the test split does not need the training batches


def test_cifar_missing_folder_and_no_root(tmp_path):
    with pytest.raises(DatasetError) as info:
        load_cifar10(tmp_path / "nowhere", "train")
    one_sentence(info, tmp_path / "nowhere", "is not a folder", "cifar-10-batches-py")
    with pytest.raises(DatasetError) as info:
        load_cifar100(tmp_path, "train")
    one_sentence(info, tmp_path, "missing train, meta", "expected the CIFAR-100 python version")
    with pytest.raises(DatasetError) as info:
        load("cifar10", "train", None)
    one_sentence(info, "cannot be downloaded", "docs/datasets.md")


@pytest.mark.parametrize("entry, problem", [
    ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, "'data' is uint8 [2, 3000], not uint8 [N, 3072]"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "'data' is float32"),
    ({b"data": [1, 2, 3], b"labels": [0]}, "'data' is list"),
    ({b"data": np.zeros((2, 3072), np.uint8)}, "no 'labels' entry"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "'labels' is not 2 integer labels"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "outside 0..9"),
    ([1, 2], "holds a list, not a dict"),
])
def test_cifar10_malformed_batch(tmp_path, entry, problem):
    folder = fake_datasets.write_cifar10(tmp_path)["folder"]
    fake_datasets.write_cifar_pickle(folder / "test_batch", entry)
    with pytest.raises(DatasetError) as info:
        load_cifar10(folder, "test")
    one_sentence(info, folder / "test_batch", problem, "expected the CIFAR-10 python version")


def test_cifar_garbage_and_bad_meta(tmp_path):
    folder = fake_datasets.write_cifar10(tmp_path)["folder"]
    (folder / "test_batch").write_bytes(b"this is not a pickle")
    with pytest.raises(DatasetError) as info:
        load_cifar10(folder, "test")
    one_sentence(info, folder / "test_batch", "is not a readable CIFAR pickle")
    fake_datasets.write_cifar_pickle(folder / "batches.meta", {b"label_names": [b"cat"]})
    with pytest.raises(DatasetError) as info:
        load_cifar10(folder, "train")
    one_sentence(info, folder / "batches.meta", "no 'label_names' list of 10 names")
    cifar100 = fake_datasets.write_cifar100(tmp_path)["folder"]
    (cifar100 / "train").write_bytes((cifar100 / "train").read_bytes()[:100])  # truncated download
    with pytest.raises(DatasetError) as info:
        load_cifar100(cifar100, "train")
    one_sentence(info, cifar100 / "train", "is not a readable CIFAR pickle", "expected the CIFAR-100")


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.makedirs, (self.target,)


def test_cifar_pickle_cannot_run_code(tmp_path):
    folder = fake_datasets.write_cifar10(tmp_path)["folder"]
    target = tmp_path / "created-by-the-pickle"
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Payload(str(target)), b"labels": []}))
    with pytest.raises(DatasetError) as info:
        load_cifar10(folder, "test")
    one_sentence(info, "refers to", "makedirs")
    assert not target.exists()


# ---------------------------------------------------------------------------------------------- class-folder trees

def check_against_truth(images, labels, entries, size):
    assert images.dtype == np.uint8 and images.shape == (len(entries), 3, size, size)
    assert labels.dtype == np.int64 and labels.tolist() == [e[1] for e in entries]
    for image, (path, _, expected) in zip(images, entries):
        if expected.ndim == 3:  # PNG: exact
            np.testing.assert_array_equal(image, expected, err_msg=str(path))
        else:  # solid-colour JPEG
            assert np.abs(image.reshape(3, -1).astype(int) - expected[:, None]).max() <= 6, path


def test_imagenette_tree_decodes_resizes_and_crops(tmp_path):
    truth = fake_datasets.write_image_folder(tmp_path / "imagenette2-160", size=16)
    for split in ("train", "val"):
        images, labels, classes = load_imagenette(truth["root"], split, size=16, cache_dir=tmp_path / "cache",
                                                  progress=False)
        check_against_truth(images, labels, truth[split], 16)
        assert classes == truth["classes"] and all(c in vision_data.IMAGENETTE_CLASSES for c in classes)
    x_test, y_test = load("imagenette", "test", truth["root"], size=16, cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(x_test, images)  # "test" reads val/
    np.testing.assert_array_equal(y_test, labels)
    small, _, _ = load_image_folder(truth["root"], "val", size=8, cache=False, progress=False, workers=1)
    assert small.shape == (len(truth["val"]), 3, 8, 8)


@pytest.mark.parametrize("download", ["imagenette2-160", "imagenette2-320", "imagenette2"])
def test_imagenette_from_the_unpacked_folder_or_its_parent(tmp_path, download):
    truth = fake_datasets.write_image_folder(tmp_path / "data" / download, size=16)
    for root in (truth["root"], tmp_path / "data"):
        images, labels = load("imagenette", "test", root, size=16, cache=False, progress=False)
        check_against_truth(images, labels, truth["val"], 16)


def test_imagenette_parent_with_several_sizes_reads_the_smallest_that_is_large_enough(tmp_path):
    parent = tmp_path / "data"
    small = fake_datasets.write_image_folder(parent / "imagenette2-160", size=16, seed=1)
    fake_datasets.write_image_folder(parent / "imagenette2-320", size=16, seed=2)
    assert vision_data.imagenette_folder(parent, 64) == parent / "imagenette2-160"
    assert vision_data.imagenette_folder(parent, 160) == parent / "imagenette2-160"
    assert vision_data.imagenette_folder(parent, 224) == parent / "imagenette2-320"
    assert vision_data.imagenette_folder(parent, 400) == parent / "imagenette2-320"  # the largest there is
    fake_datasets.write_image_folder(parent / "imagenette2", size=16, seed=3)
    assert vision_data.imagenette_folder(parent, 400) == parent / "imagenette2"
    assert vision_data.imagenette_folder(small["root"], 400) == small["root"]  # a tree itself is read as given
    images, labels = load("imagenette", "train", parent, size=16, cache=False, progress=False)
    check_against_truth(images, labels, small["train"], 16)


def test_imagenette_folder_errors_name_what_to_pass(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as info:
        load_imagenette(tmp_path / "empty", "train", cache=False)
    one_sentence(info, tmp_path / "empty", "imagenette2-160", "imagenette2-320", "or the folder that contains it")
    from spikeforge.sw.data import load_dataset

    with pytest.raises(DatasetError) as info:
        load_dataset("imagenette", "test")
    one_sentence(info, "--data-dir", "imagenette2-160", "imagenette2-320", "or its parent", "docs/datasets.md")


def test_image_folder_converts_every_mode_to_rgb(tmp_path):
    from PIL import Image

    folder = tmp_path / "tree" / "train" / "mixed"
    folder.mkdir(parents=True)
    Image.new("L", (40, 24), 120).save(folder / "a_grey.jpg")
    Image.new("RGBA", (12, 12), (10, 20, 30, 0)).save(folder / "b_alpha.png")
    Image.new("P", (9, 14), 3).save(folder / "c_palette.gif")
    images, labels, classes = load_image_folder(tmp_path / "tree", "train", size=8, cache=False, progress=False)
    assert images.shape == (3, 3, 8, 8) and classes == ["mixed"] and labels.tolist() == [0, 0, 0]
    assert np.abs(images[0].astype(int) - 120).max() <= 2
    assert (images[1].reshape(3, -1) == np.array([[10], [20], [30]])).all()


def test_image_folder_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    truth = fake_datasets.write_image_folder(tmp_path / "tree", size=16)
    cache = tmp_path / "cache"
    first = load("imagefolder", "train", truth["root"], size=16, cache_dir=cache, progress=False)
    assert len(list(cache.glob("tree-train-16px-*.npz"))) == 1

    calls = []
    real_decode = vision_data._decode
    monkeypatch.setattr(vision_data, "_decode", lambda path, size: calls.append(path) or real_decode(path, size))
    second = load("imagefolder", "train", truth["root"], size=16, cache_dir=cache, progress=False)
    assert calls == []  # read from the cache
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])

    changed = truth["train"][0][0]
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    load("imagefolder", "train", truth["root"], size=16, cache_dir=cache, progress=False)
    assert len(calls) == len(truth["train"])  # a newer file: decoded again
    assert len(list(cache.glob("tree-train-16px-*.npz"))) == 2

    calls.clear()
    load("imagefolder", "train", truth["root"], size=12, cache_dir=cache, progress=False)
    assert len(calls) == len(truth["train"])  # another size: another cache entry

    calls.clear()
    for path in cache.glob("tree-train-12px-*.npz"):
        path.write_bytes(b"half a file")
    again = load("imagefolder", "train", truth["root"], size=12, cache_dir=cache, progress=False)
    assert len(calls) == len(truth["train"]) and again[0].shape[-1] == 12  # a broken cache is rebuilt


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SPIKEFORGE_CACHE", str(tmp_path / "sf"))
    assert vision_data.default_cache_dir() == tmp_path / "sf"
    monkeypatch.delenv("SPIKEFORGE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert vision_data.default_cache_dir() == tmp_path / "xdg" / "spikeforge"


def test_image_folder_errors(tmp_path):
    with pytest.raises(DatasetError) as info:
        load_imagenette(tmp_path / "nowhere", "train", cache=False)
    one_sentence(info, "Imagenette", tmp_path / "nowhere", "<root>/train/<class>/")

    (tmp_path / "only-train" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError) as info:
        load_imagenette(tmp_path / "only-train", "val", cache=False)
    one_sentence(info, tmp_path / "only-train", "no val or test folder")
    with pytest.raises(DatasetError) as info:
        load_imagenette(tmp_path / "only-train", "train", cache=False)
    one_sentence(info, tmp_path / "only-train" / "train", "has no class folders")

    (tmp_path / "only-train" / "train" / "n01440764").mkdir()
    (tmp_path / "only-train" / "train" / "n01440764" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError) as info:
        load_imagenette(tmp_path / "only-train", "train", cache=False)
    one_sentence(info, tmp_path / "only-train" / "train", "holds no images")


def test_image_folder_bad_files(tmp_path):
    truth = fake_datasets.write_image_folder(tmp_path / "tree", size=8)
    broken = truth["root"] / "val" / truth["classes"][1] / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(DatasetError) as info:
        load_image_folder(truth["root"], "val", size=8, cache=False, progress=False)
    one_sentence(info, broken, "cannot decode", "remove or replace")
    broken.unlink()
    (truth["root"] / "val" / "n99999999").mkdir()
    with pytest.raises(DatasetError) as info:
        load_image_folder(truth["root"], "val", size=8, cache=False, progress=False)
    one_sentence(info, "n99999999", truth["root"] / "train")


def test_load_entry_names_and_splits(tmp_path):
    truth = fake_datasets.write_cifar10(tmp_path)
    images, labels = load("cifar10", "test", tmp_path)
    np.testing.assert_array_equal(images, truth["test"][0])
    fake_datasets.write_cifar100(tmp_path)
    images, labels = load("cifar100", "train", tmp_path, label_kind="coarse")
    assert images.shape == (6, 3, 32, 32) and labels.max() < 20
    with pytest.raises(DatasetError) as info:
        load("svhn", "train", tmp_path)
    one_sentence(info, "svhn", "cifar10")
    with pytest.raises(ValueError, match="split"):
        load("cifar10", "val", tmp_path)


# ---------------------------------------------------------------------------------------------------- augmentation

def generator(seed):
    return torch.Generator().manual_seed(seed)


def shifted(image, dy, dx):
    """The reference crop: content moved by (dy, dx), zeros where it came from outside."""
    out = torch.zeros_like(image)
    h, w = image.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_augment_keeps_shape_and_dtype_and_is_deterministic(dtype):
    images = torch.randint(0, 256, (16, 3, 12, 10), generator=generator(0)).to(dtype)
    a = augment(images, generator(1))
    assert a.shape == images.shape and a.dtype == dtype
    assert torch.equal(a, augment(images, generator(1)))
    assert not torch.equal(a, augment(images, generator(2)))
    assert torch.equal(augment(images, generator(1), padding=0, flip=False), images)


def test_augment_is_crop_then_flip():
    images = torch.randint(0, 256, (64, 3, 8, 8), generator=generator(0), dtype=torch.uint8)
    g = generator(3)
    assert torch.equal(augment(images, generator(3), padding=2), random_hflip(random_crop(images, 2, g), g))


def test_random_crop_only_moves_content():
    padding = 3
    images = torch.arange(1, 1 + 40 * 2 * 9 * 7, dtype=torch.float32).reshape(40, 2, 9, 7)  # all values distinct
    out = random_crop(images, padding, generator(5))
    shifts = []
    for image, cropped in zip(images, out):
        matches = [(dy, dx) for dy in range(-padding, padding + 1) for dx in range(-padding, padding + 1)
                   if torch.equal(cropped, shifted(image, dy, dx))]
        assert len(matches) == 1, "the output is not a zero-filled shift of its input"
        shifts.append(matches[0])
    assert len(set(shifts)) > 10  # offsets are drawn per sample
    assert torch.equal(random_crop(images, 0, generator(5)), images)


def test_random_crop_uint8_fills_zeros():
    images = torch.full((32, 3, 6, 6), 200, dtype=torch.uint8)
    out = random_crop(images, 2, generator(0))
    assert out.dtype == torch.uint8 and set(out.unique().tolist()) <= {0, 200}
    assert (out == 0).any() and ((out == 200).sum(dim=(1, 2, 3)) >= 3 * 4 * 4).all()


def test_random_hflip_flips_per_sample():
    images = torch.arange(64 * 2 * 3 * 5, dtype=torch.float32).reshape(64, 2, 3, 5)
    assert torch.equal(random_hflip(images, generator(0), p=1.0), images.flip(-1))
    assert torch.equal(random_hflip(images, generator(0), p=0.0), images)
    out = random_hflip(images, generator(0))
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images)]
    kept = [torch.equal(o, i) for o, i in zip(out, images)]
    assert all(f != k for f, k in zip(flipped, kept))
    assert 10 < sum(flipped) < 54


def test_augment_rejects_non_batches():
    with pytest.raises(TypeError, match="torch.Tensor"):
        augment(np.zeros((2, 3, 4, 4), np.uint8))
    with pytest.raises(TypeError, match=r"\[3, 4, 4\]"):
        random_hflip(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="padding"):
        random_crop(torch.zeros(1, 1, 4, 4), -1)


def test_normalization_helpers():
    images = np.zeros((4, 3, 2, 2), np.uint8)
    images[:, 0] = 255
    images[:2, 1] = 255
    mean, std = channel_stats(images, chunk=3)
    torch.testing.assert_close(mean, torch.tensor([1.0, 0.5, 0.0]))
    torch.testing.assert_close(std, torch.tensor([0.0, 0.5, 0.0]))
    x = to_float(images)
    assert x.dtype == torch.float32 and x.max() == 1.0
    assert torch.equal(to_float(x), x)
    normed = normalize(images, [0.5, 0.5, 0.5], [0.5, 0.25, 1.0])
    assert normed[0, 0, 0, 0] == 1.0 and normed[0, 1, 0, 0] == 2.0 and normed[3, 1, 0, 0] == -2.0
    assert normed[0, 2, 0, 0] == -0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_augment_on_gpu_matches_cpu_with_a_cpu_generator():
    images = torch.randint(0, 256, (32, 3, 16, 16), generator=generator(0), dtype=torch.uint8)
    on_gpu = augment(images.cuda(), generator(7))
    assert on_gpu.is_cuda and torch.equal(on_gpu.cpu(), augment(images, generator(7)))
