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
    ("run", ["--backend", "{torch,int,rtl,fpga}", "--images", "--waves", "--port"]),
    ("bitstream", ["--board", "{icebreaker,ulx3s-85f}"]),
    ("demo", ["--rtl-images", "--board"]),
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
