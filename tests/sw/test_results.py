"""docs/results.md generator: reproducible commands, the tables, the targets and the accuracy-vs-T curve."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from spikeforge import netimage
from spikeforge.sw import results
from spikeforge.sw.config import TrainConfig
from spikeforge.sw.train import cli as train_cli, schedule

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo-mnist.sfnet"


def test_train_command_reproduces_the_config(monkeypatch):
    config = TrainConfig(dataset="fashion-mnist", arch="resnet8", width=0.5, bn="tdbn", temporal_window=1,
                         epochs_float=3, epochs_qat=1, train_subset=20000, lr=0.05, optimizer="sgd",
                         surrogate_width="auto", deploy_aware=False, out="build/r8-sltt", threads=1)
    command = results.train_command(dataclasses.asdict(config))
    assert command.startswith("spikeforge train ") and "--threads" not in command
    monkeypatch.setattr(schedule, "train", lambda c: c)
    parsed = train_cli.main(command.split()[2:])
    assert dataclasses.replace(parsed, threads=1) == config


def _summary(dataset, arch, deployed, qat, *, ann=False, window=None, width=0.5, bn="shared", T=10, stem=1):
    cfg = dataclasses.asdict(TrainConfig(dataset=dataset, arch=arch, ann=ann, temporal_window=window, width=width,
                                         bn=bn, stem_stride=stem))
    return {"dataset": dataset, "arch": arch, "model": "spiking chain" if not arch.startswith("resnet") else arch,
            "time_steps": 1 if ann else T, "train_images": 60000, "test_images": 10000, "float_accuracy": qat,
            "qat_accuracy": qat, "deployed_accuracy": deployed, "deployed_images": 10000,
            "seconds": {"float_s": 600.0, "qat_s": 60.0}, "config": cfg}


def test_render_pairs_the_ann_twin_and_checks_the_targets():
    runs = [dict(_summary("mnist", "demo", 0.9834, 0.9832), run="build/train"),
            dict(_summary("fashion-mnist", "resnet8", 0.9361, 0.9370), run="build/f-bptt"),
            dict(_summary("fashion-mnist", "resnet8", 0.9290, 0.9300, window=1), run="build/f-sltt"),
            dict(_summary("fashion-mnist", "resnet8", None, 0.9420, ann=True), run="build/f-ann")]
    text = results.render(runs)
    assert "| `build/f-sltt` | fashion-mnist | resnet8 x0.5 bn=shared SLTT | 10 | 24+4 | 60000 | 11.0 min |" in text
    # the ANN twin pairs with the exact-BPTT run only: +0.50 points
    assert "| fashion-mnist | resnet8 x0.5 bn=shared exact BPTT | 93.70% | 94.20% | +0.50 points |" in text
    assert "| mnist | 99.40% | `build/train` | 98.34% | no | - | - |" in text
    # summaries before ResNets had deploy-aware QAT do not say; the chain's followed its config, ResNets' was plain
    assert text.count("| 10000 | yes |") == 1 and text.count("| 10000 | no |") == 2 and "| 10000 | - |" in text
    runs[1]["deploy_aware_qat"] = True
    assert results.render(runs).count("| 10000 | yes |") == 2
    assert "| fashion-mnist | 93.50% | `build/f-bptt` | 93.61% | yes | 94.40% | no |" in text
    runs[1]["deployed_accuracy"] = 0.9440  # the stretch is met at exactly 94.40%
    assert "| fashion-mnist | 93.50% | `build/f-bptt` | 94.40% | yes | 94.40% | yes |" in results.render(runs)
    assert ("`build/f-ann`: `spikeforge train --dataset fashion-mnist --arch resnet8 --out build/f-ann --width 0.5 "
            "--ann True`") in text


def test_missing_run_folder_is_one_sentence(tmp_path):
    with pytest.raises(results.ResultsError, match=r"nowhere: no summary.json; .*spikeforge train --out .*nowhere"):
        results.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "r.md")])


def test_accuracy_vs_t_of_the_trained_demo_network(tmp_path, monkeypatch):
    from spikeforge.sw.data import load_dataset
    from spikeforge.sw.export import deployed_accuracy

    monkeypatch.chdir(tmp_path)  # the default archive, bench/runs, is relative to the working directory
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(DEMO, run / "network.sfnet")
    (run / "summary.json").write_text(json.dumps(_summary("mnist", "demo", 0.9834, 0.9832)))
    text = results.main([str(run), "--accuracy-vs-t", str(run), "--images", "300", "--out",
                         str(tmp_path / "docs" / "results.md"), "--png", str(tmp_path / "docs" / "acc.png")])
    assert (tmp_path / "docs" / "acc.png").stat().st_size > 1000 and "![accuracy vs T](acc.png)" in text
    row = next(line for line in text.splitlines() if line.startswith("| accuracy |"))
    accs = [float(v) / 100 for v in row.strip("| ").split(" | ")[1:]]
    assert len(accs) == 10
    x, y = load_dataset("mnist", "test")
    net = netimage.load(DEMO)
    assert accs[9] == pytest.approx(deployed_accuracy(net, x[:300], y[:300], 10), abs=5e-5)
    # one step of a network trained for ten is a poor classifier; ten steps are a good one
    assert accs[0] < accs[9] - 0.05 and accs[9] > 0.9
    assert np.all(np.isfinite(accs))
    # the curve is archived with the run, so the page (table and plot) comes back once the folder is gone
    archived = tmp_path / "bench" / "runs" / "run.json"
    assert json.loads(archived.read_text())["accuracy_vs_t"]["images"] == 300
    shutil.rmtree(run)
    (tmp_path / "docs" / "acc.png").unlink()
    again = results.main([str(archived), "--accuracy-vs-t", str(archived), "--out",
                          str(tmp_path / "docs" / "results.md"), "--png", str(tmp_path / "docs" / "acc.png")])
    assert row in again and f"## Accuracy vs T ({run})" in again
    assert (tmp_path / "docs" / "acc.png").stat().st_size > 1000
    # a summary with neither a network nor a stored curve is one sentence
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(dict(_summary("mnist", "demo", 0.98, 0.98), run="build/bare")))
    with pytest.raises(results.ResultsError, match=r"bare.json: no network.sfnet to evaluate and no accuracy-vs-T"):
        results.main([str(bare), "--accuracy-vs-t", str(bare), "--out", str(tmp_path / "r.md")])


def test_the_cli_names_the_command_that_wrote_the_page(tmp_path, capsys, monkeypatch):
    from spikeforge import cli

    monkeypatch.chdir(tmp_path)  # the default archive, bench/runs, is relative to the working directory
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps(_summary("mnist", "demo", 0.9834, 0.9832)))
    out = tmp_path / "results.md"
    assert cli.main(["results", str(run), "--out", str(out)]) == 0
    assert f"Produced by `spikeforge results {run} --out {out}`" in out.read_text()
    assert json.loads((tmp_path / "bench" / "runs" / "run.json").read_text())["run"] == str(run)  # the default archive
    assert cli.main(["results", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "nowhere: no summary.json" in capsys.readouterr().err


def test_archived_summaries_rebuild_the_page_without_the_run_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default archive, bench/runs, is relative to the working directory
    run = tmp_path / "build" / "fm"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps(_summary("fashion-mnist", "resnet8", 0.9361, 0.9370)))
    out = tmp_path / "docs" / "results.md"
    first = results.main([str(run), "--out", str(out)])
    archived = tmp_path / "bench" / "runs" / "fm.json"
    assert json.loads(archived.read_text())["run"] == str(run)
    shutil.rmtree(tmp_path / "build")
    # the archive alone gives the same rows; an older archived run stays, marked where it was rebuilt from a page
    old = dict(_summary("mnist", "demo", 0.9941, 0.9941), run="build/old", reconstructed_from="docs/results.md@abc")
    (tmp_path / "bench" / "runs" / "old.json").write_text(json.dumps(old))
    again = results.main([str(archived), str(tmp_path / "bench" / "runs" / "old.json"), "--out", str(out)])
    row = next(line for line in first.splitlines() if line.startswith(f"| `{run}`"))
    assert row in again
    assert "| `build/old` (r) | mnist |" in again and "docs/results.md@abc" in again
    assert "| mnist | 99.40% | `build/old` | 99.41% | yes |" in again
    # a folder given with its archived copy counts once, with the folder's figures
    assert len(results.load_runs([archived, archived])) == 1
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(results.ResultsError, match=r"bad.json: not a training summary"):
        results.load_runs([bad])


def test_an_ann_twin_pairs_only_with_the_same_stem_and_budget():
    """A stride-2-stem ANN run is not the twin of a stride-1-stem spiking run, nor of one trained longer."""
    snn = dict(_summary("fashion-mnist", "resnet8", 0.80, 0.80, stem=2), run="build/s2")
    other = [dict(_summary("fashion-mnist", "resnet8", 0.77, 0.77), run="build/s1"),
             dict(_summary("fashion-mnist", "resnet8", 0.85, 0.85, stem=2), run="build/s2-long")]
    other[1]["config"]["epochs_float"] = 40
    ann = dict(_summary("fashion-mnist", "resnet8", None, 0.83, ann=True, stem=2), run="build/s2-ann")
    text = results.render([snn, *other, ann])
    pairs = text.split("## SNN vs ANN twin")[1].split("##")[0]
    assert "| 80.00% | 83.00% | +3.00 points |" in pairs
    assert "77.00%" not in pairs and "85.00%" not in pairs
