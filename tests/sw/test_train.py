"""The training pipeline end to end on a tiny subset (spikeforge.sw.train): checkpoints, resume, determinism."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spikeforge import netimage
from spikeforge.sw.config import (ADDED_FIELDS, AUTO_WIDTHS, LIF_IMPLEMENTATIONS, PRESETS, ConfigError, TrainConfig,
                                  config_key, preset)
from spikeforge.sw.export import export_network
from spikeforge.sw.models import build_model, evaluate_checkpoint
from spikeforge.sw.spike_conv import SpikeInputConv2d
from spikeforge.sw.train import cli as train_cli, runtime, schedule, steps, train
from fake_datasets import write_mnist_subset


@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory):
    """256 real MNIST train and 64 test images as an IDX folder (the --data-dir path)."""
    return write_mnist_subset(tmp_path_factory.mktemp("tiny-mnist"), 256, 64)


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
    real_evaluate = schedule.evaluate

    def failing_evaluate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(schedule, "evaluate", failing_evaluate)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tiny_mnist, tmp_path / "b"))
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=False)["epochs_done"] == 1
    monkeypatch.setattr(schedule, "evaluate", real_evaluate)
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
    result = evaluate_checkpoint(tmp_path / "a" / "checkpoint.pt", x, y)
    assert result["accuracy"] == summary["qat_accuracy"]
    assert set(result["spike_counts"]) == {"conv1", "conv2"} and result["spike_counts"]["conv1"] > 0
    with pytest.raises(ConfigError, match="different config"):
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
    y = steps.augment(x, 2, torch.Generator().manual_seed(0))
    for b in range(2):
        # every output row/column is a shifted copy of the input or zero fill
        nz = y[b, 0][y[b, 0] > 0]
        assert set(nz.tolist()) <= set(x[b, 0].flatten().tolist())
        assert int((y[b, 0] > 0).sum()) >= 9


def test_augment_flip_mirrors_about_half_and_leaves_the_shift_draws_alone():
    x = torch.rand(400, 1, 6, 6)
    y = steps.augment(x, 0, torch.Generator().manual_seed(1), flip=True)
    mirrored = torch.tensor([torch.equal(y[i], x[i].flip(-1)) for i in range(len(x))])
    kept = torch.tensor([torch.equal(y[i], x[i]) for i in range(len(x))])
    assert bool((mirrored ^ kept).all())            # each image is either mirrored or untouched
    assert 150 < int(mirrored.sum()) < 250
    # without flip no extra random number is drawn: the shifts of older runs are reproduced
    a = steps.augment(x, 1, torch.Generator().manual_seed(2))
    b = steps.augment(x, 1, torch.Generator().manual_seed(2), flip=False)
    assert torch.equal(a, b)


def test_augment_flip_is_a_cli_option_that_leaves_old_config_keys_alone():
    assert "augment_flip" not in config_key(TrainConfig())
    assert config_key(TrainConfig(augment_flip=True))["augment_flip"] is True


# --- the one loop for every model and dataset ----------------------------------------------------------------


class _Abort(Exception):
    pass


def test_killed_mid_epoch_resumes_from_the_last_step_checkpoint(tiny_mnist, tmp_path, monkeypatch):
    # 256 images / batch 64 = 4 steps per epoch; a state every 2 steps
    config = dict(epochs_float=2, epochs_qat=0, checkpoint_every=2)
    whole = train(tiny_config(tiny_mnist, tmp_path / "whole", **config))
    ran = []

    def abort_at(epoch_to_abort, step_to_abort):
        def hook(model, epoch, step):
            ran.append((epoch, step))
            if (epoch, step) == (epoch_to_abort, step_to_abort):
                raise _Abort

        return hook

    # killed at step 3 of epoch 2: epoch 1 and 2 steps of epoch 2 are safe in last.pt
    monkeypatch.setattr(schedule, "after_step", abort_at(1, 3))
    with pytest.raises(_Abort):
        train(tiny_config(tiny_mnist, tmp_path / "cut", **config))
    state = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)
    assert (state["epochs_done"], state["step"]) == (1, 2)
    ran.clear()
    monkeypatch.setattr(schedule, "after_step", abort_at(None, None))
    resumed = train(tiny_config(tiny_mnist, tmp_path / "cut", **config))
    assert ran == [(1, 3), (1, 4)], "the resumed run redoes only the unsaved steps"
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in whole["history"]]
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "a run killed mid-epoch must end where an uninterrupted one does"
    assert resumed["deployed_accuracy"] == whole["deployed_accuracy"]


def test_old_out_dirs_stay_resumable():
    # fields added later are left out of the config key at their defaults: a last.pt written before them matches
    key = config_key(TrainConfig())
    assert not set(ADDED_FIELDS) & set(key)
    assert "arch" in key and "width" in config_key(TrainConfig(width=0.5))


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory):
    from fake_datasets import write_cifar10, write_cifar100

    root = tmp_path_factory.mktemp("fake-cifar")
    write_cifar10(root / "c10", per_batch=8, n_test=8)
    write_cifar100(root / "c100", n_train=8, n_test=4)
    return root


def _resnet_config(data_dir, out, **overrides):
    base = dict(dataset="cifar10", data_dir=str(data_dir), out=str(out), arch="resnet8", width=0.25, time_steps=2,
                epochs_float=1, epochs_qat=1, batch_size=16, bn_calibration_batches=1, threads=1, progress=False)
    base.update(overrides)
    return TrainConfig(**base)


def test_resnet_and_its_ann_twin_through_the_same_loop(fake_cifar, tmp_path, capsys):
    snn = train(_resnet_config(fake_cifar / "c10", tmp_path / "snn", surrogate_width="auto", optimizer="sgd",
                               lr=0.05, label_smoothing=0.1, grad_checkpoint=True))
    assert "surrogate width auto: chose" in capsys.readouterr().out
    assert snn["surrogate_width"] in AUTO_WIDTHS
    assert [h["phase"] for h in snn["history"]] == ["float", "qat"] and snn["train_images"] == 40
    assert 0.0 <= snn["deployed_accuracy"] <= 1.0 and snn["deployed_images"] == 8
    net = netimage.load(tmp_path / "snn" / "network.sfnet")
    assert net.populations[0].shape == (3, 32, 32) and net.populations[-1].shape == (10,)
    ckpt = torch.load(tmp_path / "snn" / "checkpoint.pt", weights_only=False)
    assert ckpt["kind"] == "resnet" and ckpt["surrogate_width"] == snn["surrogate_width"]
    # QAT ran with the exporter's arithmetic in the loop; the plain-BN accuracy of the same weights is reported too
    assert ckpt["deploy_aware"] and snn["qat_unrounded_accuracy"] is not None
    # `spikeforge export` of the ResNet checkpoint rebuilds the model and writes the trainer's network again
    from spikeforge.cli import main as cli_main
    from spikeforge.sw.data import load_dataset

    assert cli_main(["export", str(tmp_path / "snn" / "checkpoint.pt"), "-o", str(tmp_path / "again.sfnet")]) == 0
    again = netimage.load(tmp_path / "again.sfnet")
    assert [p.name for p in again.populations] == [p.name for p in net.populations]
    for a, b in zip(again.populations[1:], net.populations[1:]):
        assert (a.vbits, a.acc_bits) == (b.vbits, b.acc_bits) and np.array_equal(a.bias, b.bias)
        assert all(np.array_equal(pa.weight, pb.weight) for pa, pb in zip(a.projections, b.projections))
    # and the torch backend evaluates it: the QAT accuracy the trainer reported, spikes per population
    x, y = load_dataset("cifar10", "test", fake_cifar / "c10")
    result = evaluate_checkpoint(tmp_path / "snn" / "checkpoint.pt", x, y)
    assert result["accuracy"] == pytest.approx(snn["qat_accuracy"])
    assert list(result["spike_counts"])[:2] == ["stem", "layer1.0.conv1"]

    ann = train(_resnet_config(fake_cifar / "c10", tmp_path / "ann", ann=True, amp="bf16"))
    assert ann["deployed_accuracy"] is None and "ANN" in ann["not_exported"] and ann["time_steps"] == 1
    assert not (tmp_path / "ann" / "network.sfnet").exists()
    assert 0.0 <= ann["qat_accuracy"] <= 1.0
    with pytest.raises(SystemExit, match="ANN twin"):
        cli_main(["export", str(tmp_path / "ann" / "checkpoint.pt"), "-o", str(tmp_path / "ann.sfnet")])


def test_gradient_checkpointing_gives_the_same_gradients():
    from spikeforge.sw.resnet import resnet8

    grads = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = resnet8(width=0.25, time_steps=3)
        if checkpointed:
            runtime.enable_grad_checkpointing(model)
        x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
        torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        assert set(model.state_dict()) == set(resnet8(width=0.25).state_dict())
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], atol=1e-6), name


def test_paper_setting_runs_on_fake_cifar100(fake_cifar, tmp_path):
    # docs/training.md's ResNet-50 / CIFAR-100 / T = 10 command, at toy sizes: one step per phase
    paper = PRESETS["resnet50-cifar100"]
    assert (paper.arch, paper.dataset, paper.time_steps) == ("resnet50", "cifar100", 10)
    summary = train(preset("resnet50-cifar100", data_dir=str(fake_cifar / "c100"), out=str(tmp_path / "r50"),
                           width=1 / 16, time_steps=2, batch_size=8, epochs=1, qat_epochs=1, threads=1,
                           progress=False, bn_calibration_batches=1))
    assert [h["phase"] for h in summary["history"]] == ["float", "qat"]
    assert summary["config"]["optimizer"] == "sgd" and summary["config"]["label_smoothing"] == 0.1
    net = netimage.load(tmp_path / "r50" / "network.sfnet")
    assert net.populations[-1].shape == (100,) and summary["deployed_accuracy"] is not None


def test_config_errors_are_one_sentence(fake_cifar, tmp_path):
    with pytest.raises(ValueError, match="chain for 1x28x28"):
        train(_resnet_config(fake_cifar / "c10", tmp_path / "x", arch="demo"))
    with pytest.raises(ValueError, match="needs a ResNet"):
        TrainConfig(ann=True).validate()
    with pytest.raises(ValueError, match="lif must be one of compiled, fused, autograd"):
        TrainConfig(lif="jit").validate()
    with pytest.raises(ValueError, match="temporal_window 1 needs the fused LIF"):
        TrainConfig(temporal_window=1, lif="autograd").validate()
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8").validate()
    with pytest.raises(ConfigError, match="fp16.*CUDA"):
        train(_resnet_config(fake_cifar / "c10", tmp_path / "y", amp="fp16", device="cpu"))


def test_compile_graphs_parses_and_is_refused_where_cuda_graphs_cannot_run(fake_cifar, tmp_path, monkeypatch,
                                                                           capsys):
    """--compile takes true, false or graphs (CUDA graphs: one CUDA device); anything else, or graphs on the CPU,
    is one clear error."""
    seen = []
    monkeypatch.setattr(schedule, "train", seen.append)
    for text, value in (("graphs", "graphs"), ("true", True), ("off", False)):
        train_cli.main(["--compile", text])
        assert seen[-1].compile == value
    with pytest.raises(SystemExit):
        train_cli.main(["--compile", "fast"])
    assert "expected true, false or graphs, not 'fast'" in capsys.readouterr().err
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="compile must be true, false or 'graphs'"):
        TrainConfig(compile="fast").validate()
    with pytest.raises(ConfigError, match="needs a CUDA device, not device 'cpu'"):
        TrainConfig(compile="graphs", device="cpu").validate()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # device auto: the CPU
    with pytest.raises(ConfigError, match="runs on one CUDA device, not on cpu with 1 process"):
        train(_resnet_config(fake_cifar / "c10", tmp_path / "g", compile="graphs"))


def test_command_line_has_help_for_every_flag(capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--help"])
    text = capsys.readouterr().out
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in text
        assert train_cli.HELP[f.name]
    for flag in ("--epochs", "--qat-epochs", "--surrogate-width", "--preset"):
        assert flag in text


def test_bntt_trains_and_is_not_exported(fake_cifar, tmp_path):
    summary = train(_resnet_config(fake_cifar / "c10", tmp_path / "bntt", bn="bntt", epochs_qat=0))
    assert summary["deployed_accuracy"] is None and "BNTT" in summary["not_exported"]
    assert not torch.load(tmp_path / "bntt" / "checkpoint.pt", weights_only=False)["deploy_aware"]
    assert 0.0 <= summary["qat_accuracy"] <= 1.0 and not (tmp_path / "bntt" / "network.sfnet").exists()


@pytest.mark.parametrize("arch", ["c4s1w8-c6s2w4-d8w4-d10w4", "resnet8"])
def test_lif_implementations_train_the_same_network(arch):
    """--lif compiled (the default), fused and autograd build the neuron they name, and give the same spikes, loss
    and gradients on one batch (float and QAT model); temporal_window reaches the fused neuron of a chain too."""
    from spikeforge.sw.fused import FusedLIF
    from spikeforge.sw.neuron import LIF

    torch.manual_seed(0)
    images = torch.rand(6, 1, 28, 28)
    labels = torch.arange(6) % 10
    for quantized in (False, True):
        results = {}
        for lif in LIF_IMPLEMENTATIONS:
            config = TrainConfig(arch=arch, time_steps=3, lif=lif, width=0.25).validate()
            torch.manual_seed(1)
            model = build_model(config, quantized)
            neurons = [m for m in model.modules() if isinstance(m, LIF)]
            assert neurons and all((type(m) is FusedLIF) == (lif != "autograd") for m in neurons)
            assert all(getattr(m, "compiled", False) == (lif == "compiled") for m in neurons)
            loss = F.cross_entropy(model(images), labels)
            loss.backward()
            results[lif] = (loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None])
        ref_loss, ref_grads = results["autograd"]
        for lif in ("compiled", "fused"):
            loss, grads = results[lif]
            assert torch.equal(loss, ref_loss), (lif, quantized)
            assert len(grads) == len(ref_grads)
            for g, r in zip(grads, ref_grads):
                torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
    window = build_model(TrainConfig(arch=arch, temporal_window=1, width=0.25).validate(), False)
    assert {m.temporal_window for m in window.modules() if isinstance(m, LIF)} == {1}


@pytest.mark.slow
def test_compile_trains_like_eager(fake_cifar, tmp_path):
    """--compile true trains a narrow ResNet (4-8-16 channels: its 1x1 stride-2 shortcut from 4 channels is the
    shape that hangs oneDNN in channels_last, see fused.onednn_weight_grad_hangs) to the same weights as eager."""
    states = []
    for compile_model in (False, True):
        out = tmp_path / f"compile-{compile_model}"
        train(_resnet_config(fake_cifar / "c10", out, epochs_qat=0, compile=compile_model))
        states.append(torch.load(out / "checkpoint.pt", weights_only=False)["model"])
    assert states[0].keys() == states[1].keys()
    for name, value in states[0].items():
        if value.is_floating_point():
            torch.testing.assert_close(states[1][name], value, rtol=1e-3, atol=1e-5, msg=name)


def test_channels_last_is_chosen_where_it_is_safe_and_trains_the_same_network():
    """--channels-last auto: NHWC weights on the CPU, NCHW on CUDA or when asked; a net with a conv that hangs
    oneDNN in NHWC (1x1 stride-2 from < 8 channels) stays NCHW with one log line. The trainer's set-up (NHWC
    weights, bool-saved spike inputs in a ResNet) gives the same loss and gradients as plain NCHW on one batch."""

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    lines = []
    wide = build_model(TrainConfig(arch="resnet8", width=0.5).validate(), False)  # shortcut from 8
    narrow = build_model(TrainConfig(arch="resnet8", width=0.25).validate(), False)  # ... from 4
    assert runtime.memory_format(TrainConfig(), wide, cpu, lines.append) == torch.channels_last
    assert runtime.memory_format(TrainConfig(), wide, cuda, lines.append) == torch.contiguous_format
    assert runtime.memory_format(TrainConfig(channels_last="false"), wide, cpu, lines.append) \
        == torch.contiguous_format
    assert runtime.memory_format(TrainConfig(channels_last="true"), wide, cuda, lines.append) \
        == torch.channels_last
    assert not lines
    assert runtime.memory_format(TrainConfig(channels_last="true"), narrow, cpu, lines.append) \
        == torch.contiguous_format
    assert len(lines) == 1 and "stages.1.0.downsample.conv" in lines[0] and "4 input channels" in lines[0]
    with pytest.raises(ConfigError, match="channels_last must be 'auto', 'true' or 'false'"):
        TrainConfig(channels_last="yes").validate()

    torch.manual_seed(0)
    images = torch.rand(6, 1, 28, 28)
    labels = torch.arange(6) % 10
    for arch in ("c4s1w8-c8s2w4-d8w4-d10w4", "resnet8"):
        for quantized in (False, True):
            config = TrainConfig(arch=arch, time_steps=3, width=0.5).validate()
            results = []
            for fmt in (torch.contiguous_format, torch.channels_last):
                torch.manual_seed(1)
                model = build_model(config, quantized)
                if fmt == torch.channels_last:
                    runtime.prepare_model(model, config, fmt)
                    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
                    assert all(m.weight.is_contiguous(memory_format=fmt) for m in convs)
                    spiking = arch == "resnet8" and not quantized  # plain hidden convs: bool-saved inputs
                    assert any(type(m) is SpikeInputConv2d for m in convs) == spiking
                loss = F.cross_entropy(model(images), labels)
                loss.backward()
                results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
            (ref_loss, ref), (loss, grads) = results
            torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
            assert grads.keys() == ref.keys()
            for name, g in grads.items():
                torch.testing.assert_close(g, ref[name], rtol=1e-3, atol=1e-5, msg=f"{arch} {quantized} {name}")


def test_a_channels_last_run_saves_an_nchw_checkpoint_that_exports(fake_cifar, tmp_path):
    summary = train(_resnet_config(fake_cifar / "c10", tmp_path / "cl", width=0.5, channels_last="true"))
    assert summary["memory_format"] == {"float": "channels_last", "qat": "channels_last"}  # asked for: both phases
    state = torch.load(tmp_path / "cl" / "checkpoint.pt", weights_only=False)["model"]
    assert all(v.is_contiguous() for v in state.values())
    net = netimage.load(tmp_path / "cl" / "network.sfnet")
    assert net.populations[-1].shape == (10,) and 0.0 <= summary["deployed_accuracy"] <= 1.0
    narrow = train(_resnet_config(fake_cifar / "c10", tmp_path / "nchw", epochs_qat=0, channels_last="true"))
    assert narrow["memory_format"] == {"float": "contiguous_format", "qat": "contiguous_format"}
    auto = train(_resnet_config(fake_cifar / "c10", tmp_path / "auto", width=0.5, epochs_float=0))
    assert auto["memory_format"] == {"qat": "contiguous_format"}  # auto: a ResNet's QAT stays NCHW (slower in NHWC)
    assert summary["malloc_cache"] and narrow["malloc_cache"] and auto["malloc_cache"]  # auto / default on the CPU


_MALLOC_CHECK = """
import ctypes, torch
from spikeforge.allocator import malloc_cache

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = MallInfo2

def mmapped_while_held():  # glibc's mallinfo2().hblkhd: the bytes the C heap holds in mmap'd blocks
    x = torch.empty(64 * 2 ** 20, dtype=torch.uint8)
    held = mallinfo2().hblkhd
    del x
    return held

seen = [mmapped_while_held()]
with malloc_cache(True) as cached:
    seen += [cached, mmapped_while_held()]
seen.append(mmapped_while_held())
with malloc_cache(False) as cached:
    seen += [cached, mmapped_while_held()]
print(seen)
"""


def test_malloc_cache_serves_large_tensors_from_the_heap_and_restores_the_default():
    """train's malloc cache: a 64 MiB tensor (above glibc's largest mmap threshold) comes from the heap while it is
    on, from a fresh mmap before and after it, and a bad value is a config error. In a fresh process: in this one,
    earlier tests' training runs can leave a free 64 MiB chunk in the heap that serves the tensor by default too."""
    import ast
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _MALLOC_CHECK], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    before, cached, during, after, not_cached, while_off = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    big = 64 * 2 ** 20
    assert before >= big and cached and during < big and after >= big and not not_cached and while_off >= big
    with pytest.raises(ConfigError, match="malloc_cache must be 'auto', 'true' or 'false'"):
        TrainConfig(malloc_cache="yes").validate()


_HUGE_PAGES_CHECK = """
import os, sys
import spikeforge.sw, spikeforge.sw.train
print(os.environ.get("THP_MEM_ALLOC_ENABLE", "unset"))  # importing changes nothing
from spikeforge.sw.train import cli, schedule
schedule.train = lambda config: print(os.environ.get("THP_MEM_ALLOC_ENABLE", "unset"))
cli.main(sys.argv[1:])
"""


@pytest.mark.parametrize("preset, argv, expected", [(None, [], "1"), ("0", [], "0"),
                                                    ("0", ["--huge-pages", "true"], "1"),
                                                    (None, ["--huge-pages", "false"], "0")])
def test_huge_pages_are_a_training_option_not_an_import_side_effect(preset, argv, expected):
    """Importing spikeforge.sw leaves PyTorch's THP_MEM_ALLOC_ENABLE alone; ``spikeforge train --huge-pages`` sets it
    before the trainer runs: auto (the default) on unless the environment already says, true / false always."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if preset is not None:
        env["THP_MEM_ALLOC_ENABLE"] = preset
    out = subprocess.run([sys.executable, "-c", _HUGE_PAGES_CHECK, *argv], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [preset or "unset", expected]
    with pytest.raises(ConfigError, match="huge_pages must be 'auto', 'true' or 'false'"):
        TrainConfig(huge_pages="on").validate()
