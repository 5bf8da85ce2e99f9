"""The training pipeline end to end on a tiny subset (spikeforge.sw.train): checkpoints, resume, determinism."""

import json

import numpy as np
import pytest
import torch

from spikeforge import netimage
from spikeforge.sw import train as train_module
from spikeforge.sw.export import export_network
from spikeforge.sw.train import PRESETS, TrainConfig, preset, train
from test_sw_data import write_idx


@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory):
    """256 real MNIST train and 64 test images as an IDX folder (the --data-dir path)."""
    from spikeforge.sw.data import load_dataset

    folder = tmp_path_factory.mktemp("tiny-mnist")
    for split, n in (("train", 256), ("test", 64)):
        x, y = load_dataset("mnist", split)
        stem_i, stem_l = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}[split]
        write_idx(folder / (stem_i + ".gz"), x[:n, 0])
        write_idx(folder / (stem_l + ".gz"), y[:n])
    return folder


def tiny_config(data_dir, out, **overrides):
    base = dict(dataset="mnist", data_dir=str(data_dir), out=str(out), epochs_float=1, epochs_qat=1,
                batch_size=64, time_steps=4, calibration_images=64, bn_calibration_batches=2, threads=1,
                progress=False, eval_batch=64)
    base.update(overrides)
    return TrainConfig(**base)


def test_one_epoch_each_runs_end_to_end_and_resumes(tiny_mnist, tmp_path, monkeypatch):
    summary = train(tiny_config(tiny_mnist, tmp_path / "a"))
    for name in ("checkpoint.pt", "last.pt", "network.sfnet", "summary.json"):
        assert (tmp_path / "a" / name).is_file(), name
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["deployed_accuracy"] == summary["deployed_accuracy"]
    for key in ("float_accuracy", "qat_accuracy", "deployed_accuracy"):
        assert 0.0 <= summary[key] <= 1.0
    assert [h["phase"] for h in summary["history"]] == ["float", "qat"]
    net = netimage.load(tmp_path / "a" / "network.sfnet")
    assert [p.name for p in net.populations] == ["input", "conv1", "conv2", "readout"]
    # the final checkpoint alone is enough to export the same network
    again = export_network(tmp_path / "a" / "checkpoint.pt", calibration_images=None)
    for p, q in zip(net.populations[1:], again.populations[1:]):
        assert np.array_equal(p.threshold, q.threshold) if p.threshold is not None else q.threshold is None
        assert np.array_equal(p.projections[0].weight, q.projections[0].weight)

    # interrupted after the float epoch (the QAT epoch's evaluation fails), then resumed: same result
    calls = {"n": 0}
    real_evaluate = train_module.evaluate

    def failing_evaluate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", failing_evaluate)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tiny_mnist, tmp_path / "b"))
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=False)["epochs_done"] == 1
    monkeypatch.setattr(train_module, "evaluate", real_evaluate)
    resumed = train(tiny_config(tiny_mnist, tmp_path / "b"))
    assert [h["phase"] for h in resumed["history"]] == ["float", "qat"]
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "a resumed run must end where an uninterrupted one does"
    assert resumed["deployed_accuracy"] == summary["deployed_accuracy"]

    # a finished out dir: nothing to train, same numbers; a different config: refused
    done = train(tiny_config(tiny_mnist, tmp_path / "a"))
    assert done["qat_accuracy"] == summary["qat_accuracy"]
    assert done["deployed_accuracy"] == summary["deployed_accuracy"]
    # the command line's view of the checkpoint: same QAT accuracy on the same test images
    from spikeforge.sw.data import load_dataset

    x, y = load_dataset("mnist", "test", root=tiny_mnist)
    result = train_module.evaluate_checkpoint(tmp_path / "a" / "checkpoint.pt", x, y)
    assert result["accuracy"] == summary["qat_accuracy"]
    assert set(result["spike_counts"]) == {"conv1", "conv2"} and result["spike_counts"]["conv1"] > 0
    with pytest.raises(RuntimeError, match="different config"):
        train(tiny_config(tiny_mnist, tmp_path / "a", lr=1e-2))


def test_presets_and_config_checks():
    assert PRESETS["default"].dataset == "mnist" and PRESETS["default"].time_steps == 10
    demo = preset("demo", out="x")
    assert demo.out == "x" and demo.epochs_float + demo.epochs_qat < PRESETS["default"].epochs_float
    with pytest.raises(ValueError, match="surrogate"):
        TrainConfig(surrogate="nope").validate()
    with pytest.raises(ValueError, match="unknown preset"):
        preset("nope")
    # the command line's spelling
    cli = TrainConfig.preset("demo", epochs=2, qat_epochs=0, out="y")
    assert (cli.epochs_float, cli.epochs_qat, cli.out) == (2, 0, "y")


def test_augment_is_a_zero_filled_shift():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).reshape(2, 1, 5, 5) + 1
    y = train_module._augment(x, 2, torch.Generator().manual_seed(0))
    for b in range(2):
        # every output row/column is a shifted copy of the input or zero fill
        nz = y[b, 0][y[b, 0] > 0]
        assert set(nz.tolist()) <= set(x[b, 0].flatten().tolist())
        assert int((y[b, 0] > 0).sum()) >= 9
