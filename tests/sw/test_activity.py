"""Spike activity in training (spikeforge.sw.train.activity): the activity and blank-image penalties, and the spike
counts per layer that the log and the summary report."""

import numpy as np
import pytest
import torch

from spikeforge import netimage
from spikeforge.cli import main as cli_main
from spikeforge.sw import reference
from spikeforge.sw.config import ConfigError, TrainConfig, config_key
from spikeforge.sw.models import build_model
from spikeforge.sw.train import train
from spikeforge.sw.train.activity import Activity, spiking_layers
from fake_datasets import write_mnist_subset


@pytest.fixture(scope="module")
def small_mnist(tmp_path_factory):
    """512 real MNIST train and 100 test images as an IDX folder."""
    return write_mnist_subset(tmp_path_factory.mktemp("small-mnist"), 512, 100)


def _config(data_dir, out, **overrides):
    base = dict(dataset="mnist", data_dir=str(data_dir), out=str(out), epochs_float=1, epochs_qat=1, batch_size=64,
                time_steps=4, calibration_images=64, bn_calibration_batches=2, threads=1, progress=False,
                eval_batch=100)
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def plain_run(small_mnist, tmp_path_factory):
    """(summary, out dir) of a run without penalties."""
    out = tmp_path_factory.mktemp("plain")
    return train(_config(small_mnist, out)), out


def _total(spikes: dict) -> float:
    return sum(spikes.values())


def _recount(out, data_dir, time_steps):
    """Spikes per test image per population and on a blank image, recounted from the saved network file."""
    from spikeforge.sw.data import load_dataset

    net = netimage.load(out / "network.sfnet")
    x, _ = load_dataset("mnist", "test", root=data_dir)
    images = reference.run(net, x, time_steps)
    blank = reference.run(net, np.zeros((1, 1, 28, 28), np.uint8), time_steps)
    names = [p.name for p in net.populations]
    per_image = {n: c / len(x) for n, c in zip(names, images.spike_counts()) if c is not None}
    return per_image, {n: c for n, c in zip(names, blank.spike_counts()) if c is not None}


def test_the_summary_reports_spikes_per_layer_and_on_a_blank_image(plain_run, small_mnist):
    s, out = plain_run
    assert s["config"]["activity_penalty"] == 0 and s["config"]["silent_blank"] == 0
    for key in ("float_spikes_per_image", "qat_spikes_per_image", "deployed_spikes_per_image", "blank_spikes"):
        assert set(s[key]) == {"conv1", "conv2"}, key
    assert all(set(h["spikes_per_image"]) == {"conv1", "conv2"} for h in s["history"])
    assert "train_rate" not in s["history"][0]  # no penalty: no training hooks
    # the deployed numbers are the integer reference's on the saved network
    per_image, blank = _recount(out, small_mnist, 4)
    assert s["deployed_spikes_per_image"] == pytest.approx(per_image) and s["blank_spikes"] == blank
    # deploy-aware QAT computes what the integer network computes: the same spikes
    assert s["qat_spikes_per_image"] == pytest.approx(s["deployed_spikes_per_image"])
    assert _total(s["deployed_spikes_per_image"]) > 0


def test_the_activity_penalty_lowers_the_spike_count(plain_run, small_mnist, tmp_path):
    plain, _ = plain_run
    sparse = train(_config(small_mnist, tmp_path / "sparse", activity_penalty=5.0))
    assert sparse["config"]["activity_penalty"] == 5.0
    assert all(h["train_rate"] > 0 for h in sparse["history"])
    for key in ("float_spikes_per_image", "deployed_spikes_per_image"):
        assert _total(sparse[key]) < 0.9 * _total(plain[key]), key
    per_image, blank = _recount(tmp_path / "sparse", small_mnist, 4)
    assert sparse["deployed_spikes_per_image"] == pytest.approx(per_image) and sparse["blank_spikes"] == blank


def test_silent_blank_lowers_the_spikes_on_a_blank_image(plain_run, small_mnist, tmp_path):
    plain, _ = plain_run
    quiet = train(_config(small_mnist, tmp_path / "quiet", silent_blank=20.0))
    assert _total(plain["blank_spikes"]) > 0
    assert _total(quiet["blank_spikes"]) < _total(plain["blank_spikes"])
    assert quiet["blank_spikes"]["conv2"] < 0.5 * plain["blank_spikes"]["conv2"]
    assert quiet["history"][-1]["blank_hinge"] < quiet["history"][0]["blank_hinge"]
    # more steps, fewer blank spikes (the full MNIST runs of docs/training.md reach 0)
    longer = train(_config(small_mnist, tmp_path / "longer", silent_blank=20.0, epochs_float=6))
    assert _total(longer["blank_spikes"]) < _total(quiet["blank_spikes"])
    # the blank image joined every batch but is not a training image: accuracy and counts are of real images
    assert 0.0 <= quiet["deployed_accuracy"] <= 1.0 and quiet["train_images"] == 512


@pytest.mark.parametrize("arch", ["demo", "resnet8"])
def test_the_hooks_see_every_spiking_layer_and_give_the_penalties_a_gradient(arch):
    torch.manual_seed(0)
    resnet = arch == "resnet8"
    config = TrainConfig(arch=arch, time_steps=3, width=0.25, lif="fused",
                         dataset="cifar10" if resnet else "mnist")
    shape = (3, 16, 16) if resnet else (1, 28, 28)
    model = build_model(config, False, shape, 10).eval()
    x = torch.rand(6, *shape)
    recorded = model.run(x, record=True).spikes if resnet else \
        dict(zip(["conv1", "conv2"], model.run(x).spikes))
    assert [name for name, _ in spiking_layers(model)] == list(recorded)
    with Activity(model) as counter:
        model(x)
    assert counter.images == 6
    assert counter.counts == pytest.approx({k: float(v.detach().sum()) for k, v in recorded.items()})
    # with the blank image last, the counts are those of the real images alone (eval mode: BN does not mix images)
    with Activity(model, penalties=True, blank=True) as monitor:
        model(torch.cat([x, torch.zeros_like(x[:1])]))
        penalty, rate, hinge = monitor.loss(1.0, 1.0, 3)
    assert monitor.counts == pytest.approx(counter.counts) and monitor.images == 6
    neurons = sum(v[0, 0].numel() for v in recorded.values())
    assert rate == pytest.approx(sum(counter.counts.values()) / (3 * 6 * neurons))
    assert hinge >= 0 and penalty.requires_grad
    model.zero_grad()
    penalty.backward()
    first = next(p for n, p in model.named_parameters() if "weight" in n)
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_bad_penalties_are_one_sentence(tmp_path, capsys):
    for field in ("activity_penalty", "silent_blank"):
        with pytest.raises(ConfigError, match=f"^{field} must be a finite number >= 0 \\(0: off\\), not -1$"):
            TrainConfig(**{field: -1}).validate()
    with pytest.raises(ConfigError, match="use compile false"):
        TrainConfig(activity_penalty=0.1, compile=True).validate()
    with pytest.raises(ConfigError, match="ANN twin"):
        TrainConfig(arch="resnet8", ann=True, silent_blank=1.0).validate()
    assert cli_main(["train", "--activity-penalty", "-0.5", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "spikeforge: error: activity_penalty must be a finite number >= 0 (0: off), not -0.5"
    # old out dirs (written before these fields) stay resumable: at 0 they are not part of the config key
    assert "activity_penalty" not in config_key(TrainConfig())
    assert config_key(TrainConfig(silent_blank=1.0))["silent_blank"] == 1.0


def test_a_resnet_trains_with_both_penalties_and_reports_its_populations(tmp_path):
    from fake_datasets import write_cifar10

    write_cifar10(tmp_path / "c10", per_batch=8, n_test=8)
    s = train(TrainConfig(dataset="cifar10", data_dir=str(tmp_path / "c10"), out=str(tmp_path / "r8"), arch="resnet8",
                          width=0.25, time_steps=2, epochs_float=1, epochs_qat=1, batch_size=16,
                          bn_calibration_batches=1, threads=1, progress=False, activity_penalty=1.0,
                          silent_blank=1.0))
    names = [p.name for p in netimage.load(tmp_path / "r8" / "network.sfnet").populations if p.kind == "lif"]
    assert list(s["deployed_spikes_per_image"]) == names == list(s["blank_spikes"])
    assert list(s["qat_spikes_per_image"]) == names and names[:2] == ["stem", "layer1.0.conv1"]
    assert all(h["train_rate"] > 0 and h["blank_hinge"] >= 0 for h in s["history"])


def test_the_presets_train_the_chain_with_the_penalties_and_a_resnet_without():
    from spikeforge.sw.config import SPARSE, preset

    assert SPARSE["activity_penalty"] > 0 and SPARSE["silent_blank"] > 0
    for name in ("default", "demo"):
        chain = preset(name)
        assert (chain.activity_penalty, chain.silent_blank) == (SPARSE["activity_penalty"], SPARSE["silent_blank"])
    resnet = preset("default", arch="resnet8", ann=True).validate()  # the ANN twin refuses penalties: none here
    assert (resnet.activity_penalty, resnet.silent_blank) == (0.0, 0.0)
    assert preset("default", arch="resnet8", activity_penalty=0.5).activity_penalty == 0.5
    # the dataclass itself keeps them off: a TrainConfig built in code trains as before
    assert (TrainConfig().activity_penalty, TrainConfig().silent_blank) == (0.0, 0.0)


def test_the_log_line_names_a_few_layers_and_totals_many():
    from spikeforge.sw.train.activity import rates

    assert rates({"conv1": 1274.4, "conv2": 1275.1}) == "conv1 1,274, conv2 1,275"
    assert rates({f"layer{i}": 250.0 for i in range(9)}) == "2,250 in all over 9 populations"
