"""Data-parallel training (spikeforge.sw.train under torchrun-style env): 2 CPU processes on gloo, tiny fake CIFAR-10.

Each rank trains on its half of every global batch; DDP averages the gradients, so both ranks must end with the
same parameters, and only rank 0 writes the out dir.
"""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from fake_datasets import write_cifar10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(data_dir, out):
    from spikeforge.sw.config import TrainConfig

    return TrainConfig(dataset="cifar10", data_dir=str(data_dir), out=str(out), arch="resnet8", width=0.25,
                       time_steps=2, epochs_float=1, epochs_qat=1, batch_size=16, bn_calibration_batches=1,
                       threads=1, progress=False, device="cpu", deployed_images=8)


def _worker(rank, world, port, data_dir, out, results):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from spikeforge.sw.train import schedule

    seen = {}

    def after_step(model, epoch, step):
        seen["model"] = model
        seen["steps"] = seen.get("steps", 0) + 1

    schedule.after_step = after_step
    summary = schedule.train(_config(data_dir, out))
    torch.save({"params": {k: v.detach().cpu() for k, v in seen["model"].state_dict().items()},
                "steps": seen["steps"], "summary": summary}, results / f"rank{rank}.pt")


def test_two_gloo_ranks_end_with_the_same_parameters(tmp_path):
    data = tmp_path / "data"
    write_cifar10(data, per_batch=13, n_test=8)  # 65 train images: 5 global batches of 16 (the last one has 1)
    results = tmp_path / "results"
    results.mkdir()
    out = tmp_path / "out"
    mp.spawn(_worker, args=(2, _free_port(), data, out, results), nprocs=2, join=True)
    r0 = torch.load(results / "rank0.pt", weights_only=False)
    r1 = torch.load(results / "rank1.pt", weights_only=False)
    # the 1-image last batch cannot be split over 2 ranks: dropped, 4 steps per epoch on both
    assert r0["steps"] == r1["steps"] == 8
    for name, value in r0["params"].items():
        assert torch.equal(value, r1["params"][name]), f"ranks differ in {name}: gradients were not averaged"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and 0.0 <= summary["deployed_accuracy"] <= 1.0
    assert r1["summary"]["deployed_accuracy"] is None  # only rank 0 exports
    # all-reduced metrics: both ranks saw the same test accuracy and the whole epoch's images
    assert [h["test_acc"] for h in r0["summary"]["history"]] == [h["test_acc"] for h in r1["summary"]["history"]]
    assert [h["loss"] for h in r0["summary"]["history"]] == pytest.approx(
        [h["loss"] for h in r1["summary"]["history"]])
    assert (out / "network.sfnet").is_file() and (out / "last.pt").is_file()
