"""The training-speed benchmark's machinery (bench/bench_train.py): children, tables, CPU and CUDA reports.

The peers (SpikingJelly, snnTorch) are optional extras; these tests use spikeforge's eager configuration and the
bare conv stack, which need neither."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import bench_train, models as bench_models

ROOT = Path(__file__).resolve().parents[2]


def _result(name, seconds, rss_gib, gpu_gib=None, reserved_gib=None):
    r = dict(name=name, seconds=seconds, images_per_s=32 / seconds, ru_maxrss=rss_gib * 2**30,
             step_peak_rss=rss_gib * 2**30, baseline_rss=0)
    if gpu_gib is not None:
        r["step_peak_gpu"] = gpu_gib * 2**30
    if reserved_gib is not None:
        r["step_peak_gpu_reserved"] = reserved_gib * 2**30
    return r


def _row(table, name):
    return next(line for line in table.splitlines() if line.startswith(f"| {name} |")).split(" | ")


def test_cpu_table_ratios_against_the_fastest_and_leanest_peer():
    args = bench_train.build_parser().parse_args([])
    results = [_result("spikeforge", 0.5, 1.0), _result("spikingjelly", 1.0, 2.0), _result("snntorch", 2.0, 4.0),
               {"name": "spikingjelly-compile", "error": "died: no compiler"}]
    table = bench_train._table(results, args)
    assert _row(table, "spikeforge")[3] == "2.00x" and _row(table, "spikeforge")[5] == "0.50x"
    assert _row(table, "snntorch")[3] == "0.50x" and _row(table, "snntorch")[5] == "2.00x"
    assert "failed: died: no compiler" in table and "peak RSS (ru_maxrss)" in table


def test_gpu_table_reports_gpu_memory():
    args = bench_train.build_parser().parse_args(["--device", "cuda"])
    results = [_result("spikeforge-graphs", 0.01, 2.0, gpu_gib=1.5), _result("spikingjelly-compile", 0.02, 1.5, 3.0),
               _result("conv-stack", 0.005, 1.0, 0.5)]
    table = bench_train._table(results, args)
    assert "peak GPU memory (timed steps)" in table and "ru_maxrss" not in table
    row = _row(table, "spikeforge-graphs")
    assert row[3] == "2.00x" and row[4] == "1.50 GiB" and row[5] == "0.50x" and row[7] == "50% |"


def test_gpu_table_compares_the_memory_held_when_every_row_has_it():
    """A CUDA-graph replay allocates nothing (its pool was reserved when the graph was recorded): the memory ratio
    uses what each process holds (reserved), the allocated peak stays as a column without a ratio."""
    args = bench_train.build_parser().parse_args(["--device", "cuda"])
    results = [_result("spikeforge-graphs", 0.01, 2.0, gpu_gib=0.1, reserved_gib=1.2),
               _result("spikingjelly-compile", 0.02, 1.5, 2.4, 3.0), _result("snntorch", 0.2, 1.5, 2.0, 2.4)]
    table = bench_train._table(results, args)
    assert "GPU memory held (timed steps)" in table and "peak GPU memory (timed steps)" not in table
    row = _row(table, "spikeforge-graphs")
    assert row[4] == "1.20 GiB" and row[5] == "0.50x" and row[6] == "0.10 GiB" and row[7] == "2.00 GiB"


def test_a_child_that_never_answers_is_killed():
    child = object.__new__(bench_train._Child)
    child.name = "stuck"
    child.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start = time.monotonic()
    assert child.finish(timeout=0.5) == {}
    assert child.proc.returncode is not None and time.monotonic() - start < 10


def test_a_child_that_warns_a_lot_is_not_blocked_and_a_dead_one_says_why():
    """A child's stderr goes to a file: 200 KiB of warnings (more than a pipe holds) before its first answer
    must not block it, and a child that dies has its last stderr lines in the error."""
    chatty = object.__new__(bench_train._Child)
    chatty.name = "chatty"
    chatty._start([sys.executable, "-c", "import sys, json\nsys.stderr.write('warning: x' * 20000 + '\\n')\n"
                   "sys.stderr.flush()\nprint(json.dumps({'ready': 'chatty'}), flush=True)\nsys.stdin.readline()"])
    assert chatty._read(timeout=30) == {"ready": "chatty"}
    chatty.finish(timeout=5)
    dead = object.__new__(bench_train._Child)
    dead.name = "dead"
    dead._start([sys.executable, "-c", "import sys; sys.exit('out of memory in layer 3')"])
    with pytest.raises(RuntimeError, match="dead died: out of memory in layer 3"):
        dead._read(timeout=30)


def test_every_framework_is_known_and_unknown_ones_are_refused(capsys):
    names = bench_train.all_frameworks()
    assert len(names) == len(set(names))
    assert {"spikeforge-graphs", "spikingjelly-graphs", *bench_train.PEERS} <= set(names)
    assert bench_train.main(["--frameworks", "spikeforge,tensorflow"]) == 2
    assert "unknown framework(s) ['tensorflow']" in capsys.readouterr().err


def test_a_real_cpu_run_writes_table_and_json(tmp_path):
    """Two children, lockstep, tiny widths: the report carries one result per framework with its timed steps.
    (Widths below 8 channels: the conv stack keeps the shortcut convs that oneDNN's channels_last weight gradient
    would hang or corrupt the heap on in NCHW, as the trainer does; it crashed with munmap_chunk() before.)"""
    out, raw = tmp_path / "bench.md", tmp_path / "bench.json"
    assert bench_train.main(["--width-div", "32", "--warmup", "1", "--steps", "2", "--threads", "1",
                             "--frameworks", "spikeforge-autograd,conv-stack", "--out", str(out),
                             "--json", str(raw)]) == 0
    report = json.loads(raw.read_text())
    assert [r["name"] for r in report["results"]] == ["spikeforge-autograd", "conv-stack"]
    for r in report["results"]:
        assert len(r["times"]) == 2 and r["seconds"] > 0 and r["step_peak_rss"] > 0
    # huge-page allocation as shipped: spikeforge's child has it, the plain-PyTorch conv stack has PyTorch's default
    assert [r["hugepages"] for r in report["results"]] == ["1", "0"]
    assert "widths 2-4-8-16" in out.read_text() and "| spikeforge-autograd |" in out.read_text()
    assert "huge-page allocation (THP_MEM_ALLOC_ENABLE=1): spikeforge's children only" in out.read_text()


@pytest.mark.parametrize("policy,expected", [("shipped", ["1", "0", "0", "0"]), ("all", ["1"] * 4),
                                             ("none", ["0"] * 4)])
def test_hugepage_allocation_per_child(policy, expected):
    assert [bench_train._hugepages(name, policy)
            for name in ("spikeforge", "snntorch", "spikingjelly-compile", "conv-stack")] == expected


@pytest.mark.parametrize("parent", [None, "0", "1"])
def test_each_child_environment_sets_its_hugepage_allocation_whatever_the_parent_has(parent):
    """The harness sets THP_MEM_ALLOC_ENABLE itself in every child's environment (it does not rely on what importing
    spikeforge does), and puts the repository root on the child's PYTHONPATH (bench/ is not installed)."""
    environ = {"PATH": "/usr/bin", "PYTHONPATH": "/elsewhere"}
    if parent is not None:
        environ["THP_MEM_ALLOC_ENABLE"] = parent
    names = ("spikeforge", "spikeforge-bf16", "snntorch", "spikingjelly-compile", "conv-stack")
    for policy, expected in (("shipped", ["1", "1", "0", "0", "0"]), ("all", ["1"] * 5), ("none", ["0"] * 5)):
        args = bench_train.build_parser().parse_args(["--hugepages", policy, "--threads", "3"])
        envs = [bench_train._child_env(name, args, environ) for name in names]
        assert [env["THP_MEM_ALLOC_ENABLE"] for env in envs] == expected
        for env in envs:
            assert env["OMP_NUM_THREADS"] == "3" and env["PATH"] == "/usr/bin"
            assert env["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/elsewhere"]
    assert environ.get("THP_MEM_ALLOC_ENABLE") == parent  # the parent's own environment is left alone


def test_the_harness_runs_from_the_repository_root_as_a_module():
    """``python -m bench.bench_train`` from the repository root with a clean environment (no PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-m", "bench.bench_train", "--help"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("usage: python -m bench.bench_train") and "--hugepages" in out


@pytest.mark.parametrize("width_div, device, layout_choice", [(64, "cpu", False), (4, "cpu", True),
                                                              (64, "cuda", True)])
def test_compiled_frameworks_avoid_the_onednn_hang_at_narrow_widths(monkeypatch, width_div, device, layout_choice):
    """A CPU network with a downsample from fewer than 8 channels compiles with Inductor's channels_last choice
    off (SpikingJelly + torch.compile hung in oneDNN's 1x1 weight gradient at --width-div 64), the others as they
    are; the same rule for every compiled framework."""
    from torch import nn

    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: calls.append(kw) or model)
    widths = bench_models.widths(width_div)
    model = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1), nn.Conv2d(widths[0], widths[1], 1, 2))
    bench_models.compile_model(model, True, device)
    assert calls == [{"options": {"layout_optimization": False}} if not layout_choice else {}]


def test_the_nchwloop_ablation_switches_the_traced_loop_layout(monkeypatch):
    """``-nchwloop`` rows run the traced LIF loop on the current's own strides; every other row as [T, B, H, W, C]."""
    import types

    from spikeforge.sw import fused
    monkeypatch.setattr(fused, "TRACE_STEPS_LAST", True)
    args = types.SimpleNamespace(width_div=64, time_steps=2, device="cpu", batch=1)
    bench_models.spikeforge_model(bench_models.SPIKEFORGE["spikeforge-compile-nchwloop"], args)
    assert fused.TRACE_STEPS_LAST is False
    bench_models.spikeforge_model(bench_models.SPIKEFORGE["spikeforge-graphs-bf16"], args)
    assert fused.TRACE_STEPS_LAST is True
