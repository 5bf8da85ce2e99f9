"""The randomized regression over the whole network space, RTL against the integer reference.

Cases come from spikeforge.strategies: conv2d of any kernel, stride and padding, dense (into N or C x H x W), joins
from any earlier populations, identity shortcuts, thresholds 1 and the largest, every leak shift and none, weights
at both ends of their range, biases that saturate the membrane, blank and saturated images, T from 1 to 64, lane
plans. Each case runs through sw/reference.py and the generated Verilog and every spike and the readout must agree;
hypothesis shrinks a failure to a minimal case, which is written as a replayable folder (network.sfnet, input.npy,
command.txt: the `spikeforge run ... --input` line that reruns it) under build/regress/failures/.

`make test` runs FAST_EXAMPLES networks in Icarus and the failure path with a mismatch injected on purpose.
`make regress N=...` runs N networks in Verilator (quick builds), SHARD per test across the cores (pytest-xdist),
each shard a hypothesis run with its own seed (MINUTES=... skips the shards that would start later than that);
tests/conftest.py prints the summary and writes build/regress/summary.json.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, assume, given, seed, settings

from spikeforge import cli, netimage
from spikeforge.record import first_mismatch
from spikeforge.sim.rtl import RtlSimError, run_rtl
from spikeforge.strategies import Case, case_id, cases, features, write_case
from spikeforge.sw import reference
from spikeforge.testing import random_images, random_network

ROOT = Path(__file__).resolve().parents[2]
REGRESS = ROOT / "build" / "regress"
FAILURES = REGRESS / "failures"
N = int(os.environ.get("SPIKEFORGE_REGRESS_N", "200"))
BASE_SEED = int(os.environ.get("SPIKEFORGE_REGRESS_SEED", "0"))
SIMULATOR = os.environ.get("SPIKEFORGE_REGRESS_SIM", "verilator")
# `make regress MINUTES=...`: shards that would start after this time (seconds since the epoch) are skipped
DEADLINE = float(os.environ.get("SPIKEFORGE_REGRESS_DEADLINE", "inf"))
SHARD = 10
FAST_EXAMPLES = 6

SETTINGS = settings(deadline=None, database=None, phases=[Phase.explicit, Phase.generate, Phase.shrink],
                    report_multiple_bugs=False, suppress_health_check=list(HealthCheck))


class RegressionFailure(AssertionError):
    """The RTL differs from the reference on a case (or fails to run it); ``folder`` holds the written case."""

    def __init__(self, message: str, folder: Path):
        super().__init__(message)
        self.folder = folder


def rtl_run(case: Case, simulator: str, build_root: Path):
    return run_rtl(case.net, case.images, case.time_steps, build_dir=build_root, seed=case.seed, jobs=1,
                   lanes=case.lanes, simulator=simulator, quick_build=True)


def check(case: Case, *, simulator: str, build_root: Path, failures: Path, simulate=rtl_run) -> dict:
    """One case through the reference and ``simulate`` (the RTL); a difference, or an RTL run that fails, writes
    the case to ``failures/<case id>`` and raises RegressionFailure naming the folder and the replay command.
    Returns the case's features and timings."""
    ref = reference.run(case.net, case.images, case.time_steps)
    try:
        rtl = simulate(case, simulator, build_root)
        message = first_mismatch(ref, rtl)
    except RtlSimError as exc:
        rtl, message = None, f"the RTL run failed: {exc}"
    if message:
        folder = failures / case_id(case)
        command = write_case(case, folder, simulator, message)
        raise RegressionFailure(f"{message}\n  case: {folder}\n  replay: {command}", folder)
    if rtl.build_dir is not None:
        shutil.rmtree(rtl.build_dir, ignore_errors=True)  # a passed build is not worth its disk space
    return {"features": features(case, ref.spikes), "wall_s": round(rtl.wall_s, 3), "sim_s": round(rtl.sim_s, 3),
            "cycles": int(sum(rtl.cycles or []))}


def regress(seed_value: int, examples: int, *, simulator: str, build_root: Path, failures: Path,
            strategy=None, seen: Path | None = None, simulate=rtl_run, results: list | None = None) -> list[dict]:
    """A hypothesis run of ``examples`` cases from ``strategy`` (default: ``cases()``) with a fixed seed; returns
    the passed cases' results (also appended to ``results`` as they pass). ``seen``: a folder shared by the
    shards of one run, so that no two of them run the same case (each shard's first case is the same minimal one).

    On a failure hypothesis shrinks the case; only the minimal case's folder is kept, and its RegressionFailure
    propagates."""
    results = [] if results is None else results
    written: list[Path] = []
    failed = []

    @seed(seed_value)
    @settings(SETTINGS, max_examples=examples)
    @given(strategy if strategy is not None else cases())
    def one(case):
        if seen is not None and not failed:  # shrinking may revisit any case: only generation skips
            try:
                (seen / case_id(case)).open("x").close()
            except FileExistsError:
                assume(False)
        try:
            outcome = check(case, simulator=simulator, build_root=build_root, failures=failures, simulate=simulate)
        except RegressionFailure as exc:
            failed.append(case)
            written.append(exc.folder)
            raise
        if not failed:
            results.append(outcome)

    try:
        one()
    except RegressionFailure as exc:
        for folder in set(written) - {exc.folder}:  # the larger cases hypothesis shrank away
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return results


# --- make regress: N networks in Verilator, in shards over the cores --------------------------------------


@pytest.mark.regress
@pytest.mark.parametrize("shard", range(-(-N // SHARD)))
def test_regress(shard, testrun_uid, worker_id, record_property):
    if time.time() > DEADLINE:
        pytest.skip("the regression's time (MINUTES) ran out before this shard")
    examples = min(SHARD, N - shard * SHARD)
    seen = REGRESS / "runs" / testrun_uid / "seen"
    seen.mkdir(parents=True, exist_ok=True)
    results, failure = [], None
    try:
        regress(BASE_SEED * 100_000 + shard, examples, simulator=SIMULATOR, build_root=REGRESS / "rtl" / worker_id,
                failures=FAILURES, seen=seen, results=results)
    except RegressionFailure as exc:
        failure = {"folder": str(exc.folder), "message": str(exc)}
        raise
    finally:
        # tests/conftest.py sums these up on the controller (user properties travel with xdist's reports)
        record_property("regress", json.dumps({"shard": shard, "examples": examples, "simulator": SIMULATOR,
                                               "results": results, "failure": failure}))


# --- make test: a fast subset, and the failure path -------------------------------------------------------


def test_regress_fast_subset(tmp_path):
    """A few drawn networks (at most 4 populations, T at most 16) in Icarus, bit-exact."""
    results = regress(20_26, FAST_EXAMPLES, simulator="icarus", build_root=tmp_path / "rtl", failures=FAILURES,
                      strategy=cases(max_populations=4, max_time_steps=16))
    assert len(results) == FAST_EXAMPLES
    assert not list((tmp_path / "rtl").glob("[0-9a-f]*")), "passed builds are deleted"


def _off_by_one(run):
    """The reference, except that the readout's neuron 1 (where there is one) ends one higher: a bug on purpose."""
    def wrong(net, images, time_steps=None, **kwargs):
        record = run(net, images, time_steps, **kwargs)
        if net.readout.size >= 2:
            record.readout.reshape(len(record.readout), -1)[:, 1] += 1
        return record
    return wrong


def test_a_mismatch_is_shrunk_and_written_as_a_replayable_case(tmp_path, monkeypatch, capsys):
    """A mismatch injected into the reference: hypothesis shrinks it to a minimal case (one readout of two neurons
    on an input of at most two pixels, T = 1, one image), whose folder alone is kept and named with its replay
    command; the command, run with the same injection, reproduces the difference in the real RTL."""
    true_run = reference.run

    def simulate(case, simulator, build_root):  # stands in for the RTL while shrinking: the true reference
        record = true_run(case.net, case.images, case.time_steps)
        record.source = "RTL"
        return record

    monkeypatch.setattr(reference, "run", _off_by_one(true_run))
    failures = tmp_path / "failures"
    with pytest.raises(RegressionFailure) as caught:
        regress(7, 50, simulator="icarus", build_root=tmp_path / "rtl", failures=failures, simulate=simulate)
    folder = caught.value.folder
    assert list(failures.iterdir()) == [folder]
    message = str(caught.value)
    command = (folder / "command.txt").read_text().strip()
    assert f"case: {folder}" in message and f"replay: {command}" in message
    assert "readout (population 1 ('readout')) neuron 1" in message
    net = netimage.load(folder / "network.sfnet")
    images = np.load(folder / "input.npy")
    assert len(net.populations) == 2 and net.readout.size == 2 and net.input.size <= 2 and net.time_steps == 1
    assert images.shape == (1, *net.input.shape)
    assert command in (folder / "README.md").read_text()

    capsys.readouterr()
    words = shlex.split(command)
    assert words[1:3] == ["run", str(folder / "network.sfnet")] and "--input" in words
    assert cli.main(words[1:]) == 1  # the replay, in this process: the injection still holds
    out = capsys.readouterr().out
    assert "RTL DIFFERS from the integer reference: image 0, readout (population 1 ('readout')) neuron 1" in out


def test_the_replay_command_runs_as_written(tmp_path):
    """A written case's command.txt, run by the shell as written, reruns the case through the RTL and reports it."""
    net = random_network(4, input_shape=(2, 5, 4), layers=[("conv", 3, 3, 2, 1), ("dense", 4)], time_steps=3)
    case = Case(net=net, images=random_images(4, net, 2), time_steps=3, lanes={1: 2, 2: 1}, seed=5)
    command = write_case(case, tmp_path / "case", "icarus", "a passing case, written to test the command")
    done = subprocess.run(command, shell=True, capture_output=True, text=True, cwd=Path.cwd(), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"on 2 images from {tmp_path / 'case' / 'input.npy'}" in done.stdout
    assert "lanes (icebreaker): layer1 2, readout 1" in done.stdout
    assert "RTL bit-exact with the integer reference at T=3 on 2 images" in done.stdout


def test_drawn_cases_are_valid_and_supported_and_cover_the_space():
    """The strategy alone (no simulation): every drawn network passes validate and check_supported, its lanes
    choose_lanes, it round-trips through the file; and 300 of them reach every feature the issue names."""
    from spikeforge.hw.accelerator import check_supported, choose_lanes

    seen = {"kernels": set(), "strides": set(), "paddings": set(), "leak_shifts": set(), "lanes": set(),
            "time_steps": set()}
    counts = dict.fromkeys(["joins", "skips", "identity", "dense_into_chw", "threshold_1", "threshold_max",
                            "saturating_bias", "weight_extremes", "blank_images"], 0)

    @seed(1)
    @settings(SETTINGS, max_examples=300)
    @given(cases())
    def one(case):
        check_supported(case.net)
        assert choose_lanes(case.net, case.lanes) == case.lanes
        f = features(case)
        for key in ("kernels", "strides", "paddings", "leak_shifts", "lanes"):
            seen[key].update(f[key])
        seen["time_steps"].add(case.time_steps)
        for key in counts:
            counts[key] += bool(f[key])

    one()
    geometry = [f"{a}x{b}" for a in range(1, 6) for b in range(1, 6)]
    assert seen["kernels"] == set(geometry)
    assert seen["strides"] == {g for g in geometry if max(map(int, g.split("x"))) <= 3}
    assert seen["paddings"] == {f"{a}x{b}" for a in range(3) for b in range(3)}
    assert seen["leak_shifts"] == {-1, *range(1, 16)}  # -1: no leak
    assert {1, 2, 3, 4} <= seen["lanes"] and {1, 10} <= seen["time_steps"] and max(seen["time_steps"]) > 50
    assert all(counts.values()), counts


# --- what the regression found ----------------------------------------------------------------------------

DEAD_BRANCH = ROOT / "tests" / "data" / "regress" / "dead-branch"


def test_the_dead_branch_case_now_replays_bit_exact(capsys, monkeypatch):
    """The regression's first find, kept as its replayable case: input -> p1 (1 neuron, read by nobody) and
    input -> readout. The readout used to finish the image before p1 had signalled its step_end, so the trace
    missed p1's step (with more images, p1's events landed in the next image); the results now wait for p1
    (hw/accelerator.py), and spikeforge.strategies.cases draws such networks again."""
    monkeypatch.chdir(ROOT)
    words = shlex.split((DEAD_BRANCH / "command.txt").read_text())
    status = cli.main(words[1:])
    assert status == 0, capsys.readouterr().err


@pytest.mark.slow
def test_quick_verilator_builds_reuse_the_runtime_across_networks(tmp_path):
    """Quick Verilator builds (the regression's) in one folder: the first leaves Verilator's runtime objects and
    precompiled headers, the second compiles only its model, though the two testbench tops differ (no lif
    population, then two); both bit-exact."""
    first = random_network(1, input_shape=(1, 4, 4), layers=[("dense", 3)], time_steps=4)
    second = random_network(2, input_shape=(2, 5, 5), layers=[("conv", 3, 3, 1, 1), ("dense", 6), ("dense", 4)],
                            time_steps=4, activity=0.5)
    logs = []
    for net in (first, second):
        images = random_images(3, net, 2)
        rtl = run_rtl(net, images, 4, build_dir=tmp_path, jobs=1, simulator="verilator", quick_build=True)
        assert first_mismatch(reference.run(net, images, 4), rtl) is None
        logs.append((rtl.build_dir / "verilator.log").read_text())
    assert "verilated.cpp" in logs[0] and "verilated.cpp" not in logs[1]
    assert "-include" in logs[1] and "spikeforge_verilated.h.fast" in logs[1]
    assert "--public-flat-rw" not in logs[1] and "Vtop__ALL.cpp" in logs[1]
