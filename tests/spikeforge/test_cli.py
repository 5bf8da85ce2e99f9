"""The command line: every command has accurate help, and bad input gets one clear sentence."""

import subprocess
import sys

import numpy as np
import pytest

from spikeforge import cli, netimage
from spikeforge.testing import random_network


@pytest.mark.parametrize("command,expected", [
    ("train", ["--dataset", "--preset", "--out", "--surrogate-width", "--arch", "--epochs-float"]),
    ("export", ["checkpoint", "--output", "--max-acc-bits"]),
    ("inspect", ["network"]),
    ("run", ["--backend", "{torch,int,rtl,fpga,gate}", "--images", "--waves", "--port", "--simulator",
             "{icarus,verilator}", "--input", "--seed", "--synth", "{default,abc}", "--gate-simulator"]),
    ("bitstream", ["--board", "{icebreaker,ulx3s-85f}", "--lanes", "--clock", "--synth", "{default,abc}"]),
    ("perf", ["--board", "--lanes", "--clock", "--images", "--json"]),
    ("demo", ["--rtl-images", "--board", "--arch", "{chain,resnet}"]),
])
def test_help_lists_the_options(command, expected):
    out = subprocess.run([sys.executable, "-m", "spikeforge.cli", command, "--help"], capture_output=True,
                         text=True, check=True).stdout
    for word in expected:
        assert word in out


def test_missing_network_file_is_one_sentence(tmp_path, capsys):
    status = cli.main(["run", str(tmp_path / "nope.sfnet"), "--backend", "int"])
    err = capsys.readouterr().err
    assert status == 2
    assert "nope.sfnet: no such network file; create one with `spikeforge export`" in err
    assert err.count("\n") == 1


def test_checkpoint_given_where_a_network_file_belongs(tmp_path, capsys):
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"")
    assert cli.main(["inspect", str(ckpt)]) == 2
    assert "spikeforge export" in capsys.readouterr().err


def test_inspect_prints_widths_and_memories(tmp_path, capsys):
    net = random_network(4)
    path = netimage.save(net, tmp_path / "n.sfnet")
    assert cli.main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    for pop in net.populations:
        assert pop.name in out
    assert "on-chip memories" in out


def test_missing_dataset_folder_is_one_sentence(tmp_path, capsys):
    net = netimage.save(random_network(2, input_shape=(1, 28, 28), layers=[("dense", 3)]), tmp_path / "n.sfnet")
    status = cli.main(["run", str(net), "--backend", "int", "--dataset", "fashion-mnist",
                       "--data-dir", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert status == 2
    assert "nowhere" in err and err.startswith("spikeforge: error: ")


@pytest.mark.parametrize("args, expected", [
    (["--epochs", "0", "--qat-epochs", "0"], "at least one epoch"),
    (["--arch", "c8x"], "arch 'c8x' is neither a ResNet"),
    (["--dataset", "cifar10"], "cifar10 cannot be downloaded here: pass --data-dir"),
])
def test_train_refuses_bad_input_in_one_sentence(tmp_path, capsys, args, expected):
    status = cli.main(["train", *args, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("spikeforge: error: ") and expected in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_fpga_backend_reports_an_unopenable_port(tmp_path, capsys):
    net = netimage.save(random_network(2, input_shape=(1, 28, 28), layers=[("dense", 3)]), tmp_path / "n.sfnet")
    status = cli.main(["run", str(net), "--backend", "fpga", "--images", "2", "--port", str(tmp_path / "ttyNONE")])
    err = capsys.readouterr().err
    assert status == 2
    assert "cannot open serial port" in err and "ttyNONE" in err


# --- run: datasets and input shapes ------------------------------------------------------------------------


def one_sentence(capsys, status, *parts):
    """``status`` is 2 and stderr is one `spikeforge: error:` line naming every one of ``parts``."""
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("spikeforge: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for part in parts:
        assert str(part) in err, f"{part!r} not in {err!r}"
    return err


def save_network(tmp_path, input_shape, dataset=None, name="n.sfnet"):
    net = random_network(2, input_shape=input_shape, layers=[("conv", 2, 3, 4, 1), ("dense", 10)], time_steps=2)
    if dataset:
        net.metadata["dataset"] = dataset
    return str(netimage.save(net, tmp_path / name))


def test_run_accepts_every_dataset_load_dataset_reads():
    from spikeforge.sw import data

    assert cli.DATASETS == data.DATASETS and set(cli.DATASETS) == set(data.IMAGE_SHAPES)
    run = cli.build_parser().parse_args(["run", "n.sfnet", "--dataset", "cifar100", "--data-dir", "d"])
    assert run.dataset == "cifar100"


@pytest.mark.parametrize("backend", ["int", "rtl", "fpga"])
def test_run_names_the_dataset_a_network_was_trained_on(tmp_path, capsys, backend):
    path = save_network(tmp_path, (3, 32, 32), dataset="cifar10")
    status = cli.main(["run", path, "--backend", backend, "--images", "2", "--port", str(tmp_path / "ttyNONE")])
    one_sentence(capsys, status, path, "takes 3x32x32 inputs", "the mnist test images are 1x28x28",
                 "`--dataset cifar10 --data-dir FOLDER`", "docs/datasets.md")


def test_run_suggests_the_datasets_whose_images_fit(tmp_path, capsys):
    path = save_network(tmp_path, (1, 28, 28))
    status = cli.main(["run", path, "--dataset", "cifar100", "--data-dir", str(tmp_path / "not-needed")])
    one_sentence(capsys, status, path, "takes 1x28x28 inputs", "cifar100 test images are 3x32x32",
                 "`--dataset mnist` or `--dataset fashion-mnist`")

    path = save_network(tmp_path, (3, 32, 32), name="colour.sfnet")
    status = cli.main(["run", path])
    one_sentence(capsys, status, "`--dataset cifar10 --data-dir FOLDER` or `--dataset cifar100 --data-dir FOLDER` "
                                 "or `--dataset imagenette --data-dir FOLDER`")

    path = save_network(tmp_path, (2, 12, 12), name="odd.sfnet")
    status = cli.main(["run", path, "--backend", "rtl"])
    one_sentence(capsys, status, "takes 2x12x12 inputs", "no dataset spikeforge reads has images of that shape")


def test_run_checks_the_images_it_loaded_too(tmp_path, capsys):
    """An IDX --data-dir may hold images of another size than the dataset's."""
    folder = tmp_path / "idx"
    folder.mkdir()
    for name, array in (("t10k-images-idx3-ubyte", np.zeros((3, 20, 20), np.uint8)),
                        ("t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))):
        header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
        (folder / name).write_bytes(header + array.tobytes())
    path = save_network(tmp_path, (1, 28, 28), dataset="fashion-mnist")
    status = cli.main(["run", path, "--dataset", "fashion-mnist", "--data-dir", str(folder)])
    one_sentence(capsys, status, "fashion-mnist test images are 1x20x20", "point --data-dir at a folder", folder)


@pytest.mark.parametrize("args, expected", [
    (["--images", "0"], "--images 0: give a positive number of test images"),
    (["--images", "-3"], "--images -3: give a positive number of test images"),
    (["--time-steps", "0"], "--time-steps 0: give a positive number of time steps"),
    (["--dataset", "cifar10"], "cifar10 cannot be downloaded here: pass --data-dir"),
    (["--backend", "rtl", "--batch", "0", "--images", "2"], "--batch 0: give a positive number of images"),
])
def test_run_refuses_bad_options_in_one_sentence(tmp_path, capsys, args, expected):
    path = save_network(tmp_path, (1, 28, 28) if "cifar10" not in args else (3, 32, 32))
    one_sentence(capsys, cli.main(["run", path, *args]), expected)


@pytest.mark.parametrize("write, expected", [
    (None, "is not a readable .npy file"),
    (lambda path: path.write_text("pixels"), "is not a readable .npy file"),
    (lambda path: np.save(path, np.zeros((2, 1, 28, 28), np.float32)), "holds float32 values, not integer pixels"),
    (lambda path: np.save(path, np.zeros((2, 3, 28, 28), np.uint8)),
     "holds an array of shape [2, 3, 28, 28], but"),
    (lambda path: np.save(path, np.zeros((0, 1, 28, 28), np.uint8)), "[B, C, H, W] = [B, 1, 28, 28] with B at least 1"),
    (lambda path: np.save(path, np.full((1, 1, 28, 28), 256, np.uint16)), "holds pixels outside 0..255, the range of"),
])
def test_run_refuses_a_bad_input_file_in_one_sentence(tmp_path, capsys, write, expected):
    path, images = save_network(tmp_path, (1, 28, 28)), tmp_path / "images.npy"
    if write:
        write(images)
    one_sentence(capsys, cli.main(["run", path, "--backend", "rtl", "--input", str(images)]), expected, images)


def test_run_on_an_input_file(tmp_path, capsys):
    """--input: the images of a .npy file ([B, H, W] for one channel), no labels, no accuracy; --images takes the
    first N; the board backends refuse it."""
    path, images = save_network(tmp_path, (1, 28, 28)), tmp_path / "images.npy"
    np.save(images, np.random.default_rng(0).integers(0, 256, (3, 28, 28)).astype(np.uint8))
    assert cli.main(["run", path, "--input", str(images), "--images", "2"]) == 0
    out = capsys.readouterr().out
    assert f"int (reference) on 2 images from {images}, T=2" in out and "accuracy" not in out
    one_sentence(capsys, cli.main(["run", path, "--backend", "fpga", "--input", str(images)]),
                 "--input works with --backend int, rtl and gate, not fpga")


def test_demo_refuses_no_rtl_images_before_training(tmp_path, capsys):
    status = cli.main(["demo", "--rtl-images", "0", "--out", str(tmp_path / "demo")])
    one_sentence(capsys, status, "--rtl-images 0: give a positive number")
    assert not (tmp_path / "demo").exists()


def test_resnet_demo_refuses_another_dataset_before_any_step(tmp_path, capsys):
    status = cli.main(["demo", "--arch", "resnet", "--dataset", "mnist", "--out", str(tmp_path / "demo")])
    one_sentence(capsys, status, "--arch resnet: the committed ResNets are trained on fashion-mnist, not mnist")
    assert not (tmp_path / "demo").exists()


def test_resnet_demo_networks_are_committed():
    """`make demo-resnet` runs from these files: each exists, is a spiking ResNet with joins, and fits its board's
    block RAM with the lanes the demo builds it with."""
    from spikeforge.hw.bitstream import memory_precheck
    from spikeforge.hw.lanes import parse_lanes

    expected_joins = {"ulx3s-85f": 3, "icebreaker": 2}  # ResNet-8: one join per stage; ResNet-6: two stages
    for board, (name, lanes, _) in cli.RESNET_DEMO.items():
        net = netimage.load(name)
        joins = [pop for pop in net.populations if len({proj.source for proj in pop.projections}) == 2]
        assert len(joins) == expected_joins[board], name
        assert net.time_steps == 10 and net.metadata["dataset"] == "fashion-mnist", name
        memory_precheck(net, board, parse_lanes(lanes, net, board))


def test_run_missing_colour_dataset_folder(tmp_path, capsys):
    path = save_network(tmp_path, (3, 32, 32), dataset="cifar10")
    status = cli.main(["run", path, "--dataset", "cifar10", "--data-dir", str(tmp_path / "nowhere")])
    one_sentence(capsys, status, tmp_path / "nowhere", "cifar-10-batches-py")


def test_run_a_cifar10_network_on_its_dataset(tmp_path, capsys):
    import fake_datasets

    truth = fake_datasets.write_cifar10(tmp_path / "data", n_test=4)
    path = save_network(tmp_path, (3, 32, 32), dataset="cifar10")
    assert cli.main(["run", path, "--dataset", "cifar10", "--data-dir", str(tmp_path / "data")]) == 0
    assert f"on {len(truth['test'][1])} cifar10 test images" in capsys.readouterr().out


def test_run_imagenette_from_the_parent_folder_at_the_network_size(tmp_path, capsys, monkeypatch):
    import fake_datasets

    monkeypatch.setenv("SPIKEFORGE_CACHE", str(tmp_path / "cache"))
    truth = fake_datasets.write_image_folder(tmp_path / "data" / "imagenette2-160", size=16)
    path = save_network(tmp_path, (3, 16, 16), dataset="imagenette")
    status = cli.main(["run", path, "--dataset", "imagenette", "--data-dir", str(tmp_path / "data"), "--images", "4"])
    assert status == 0
    assert "on 4 imagenette test images" in capsys.readouterr().out and len(truth["val"]) > 4


def test_run_torch_backend_errors_are_one_sentence(tmp_path, capsys):
    import torch

    path = save_network(tmp_path, (1, 28, 28))
    one_sentence(capsys, cli.main(["run", path, "--backend", "torch"]), "give its checkpoint (.pt)", path)
    one_sentence(capsys, cli.main(["run", str(tmp_path / "none.pt"), "--backend", "torch"]),
                 "none.pt: no such checkpoint")
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint")
    one_sentence(capsys, cli.main(["run", str(garbage), "--backend", "torch"]),
                 garbage, "is not a readable checkpoint", "that `spikeforge train` wrote")
    resnet = tmp_path / "resnet.pt"
    torch.save({"kind": "resnet", "input_shape": [3, 32, 32], "classes": 100, "config": {"dataset": "cifar100"},
                "model": {}}, resnet)
    one_sentence(capsys, cli.main(["run", str(resnet), "--backend", "torch"]),
                 resnet, "takes 3x32x32 inputs", "`--dataset cifar100 --data-dir FOLDER`")


def test_bitstream_clock_defaults_match_the_boards_and_a_bad_clock_is_one_sentence(tmp_path, capsys):
    from spikeforge.hw.bitstream import BOARDS

    assert cli.DEFAULT_CLOCK_MHZ == {board: spec.default_clock_mhz for board, spec in BOARDS.items()}
    args = cli.build_parser().parse_args(["bitstream", "n.sfnet", "--clock", "33.3", "--allow-timing-fail"])
    assert args.clock == 33.3 and args.allow_timing_fail
    net = save_network(tmp_path, (1, 6, 6))
    status = cli.main(["bitstream", net, "--clock", "300", "--out", str(tmp_path / "bs")])
    one_sentence(capsys, status, "the iCE40 PLL cannot make a 300 MHz clock from 12 MHz", "choose a --clock")


def test_perf_reports_latency_lanes_and_writes_json(tmp_path, capsys):
    """`spikeforge perf` on the committed demo network: the iCEBreaker's lane plan, latency = (cycles + pixel
    load) / clock, and the JSON agrees with the cycle model run directly."""
    import json

    from spikeforge.hw.cycle_model import CycleModel
    from spikeforge.hw.lanes import plan_lanes
    from spikeforge.sw import reference
    from spikeforge.sw.data import load_dataset

    out = tmp_path / "perf.json"
    status = cli.main(["perf", "tests/data/demo-mnist.sfnet", "--images", "3", "--clock", "20", "--jobs", "1",
                       "--json", str(out)])
    text = capsys.readouterr().out
    assert status == 0 and "latency per image" in text and "lane use" in text
    report = json.loads(out.read_text())
    net = netimage.load("tests/data/demo-mnist.sfnet")
    images = load_dataset("mnist", "test")[0][:3]
    lanes = plan_lanes(net, "icebreaker")
    want = [c.cycles for c in CycleModel(net, lanes=lanes).run(images, reference.run(net, images))]
    assert report["per_image_cycles"] == want
    assert [layer["lanes"] for layer in report["layers"]] == [lanes[p] for p in sorted(lanes)]
    assert report["latency_us"]["mean"] == pytest.approx((np.mean(want) + 784) / 20)
    assert 0 < report["layers"][0]["lane_utilization"] <= 1


@pytest.mark.parametrize("option,sentence", [
    (["--lanes", "conv9=2"], "'conv9', which is not a layer"),
    (["--lanes", "conv1=9"], "can use 1 to 8 lanes"),
    (["--clock", "-5"], "--clock -5.0: give the clock in MHz, a positive number"),
    (["--images", "0"], "--images 0: give a positive number of test images"),
])
def test_perf_bad_options_are_one_sentence(capsys, option, sentence):
    assert cli.main(["perf", "tests/data/demo-mnist.sfnet", "--images", "1", *option]) == 2
    err = capsys.readouterr().err
    assert sentence in err and err.count("\n") == 1
