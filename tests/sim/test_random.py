"""RTL bit-exactness in Icarus Verilog and Verilator through cocotb: random networks against the integer reference.

Each case converts the accelerator for a random network to Verilog, runs it on random images at T=10 with random
valid gaps on ``pixels`` and random back-pressure on ``results``, and compares every spike event of every lif
population at every step and the readout's V with sw/reference.py. The comparator itself is tested on results
corrupted on purpose.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from spikeforge.record import Mismatch, SpikeRecord, assert_bit_exact, first_mismatch
from spikeforge.sim.rtl import RtlSimError, run_rtl
from spikeforge.testing import random_images, random_network
from spikeforge.sw.reference import run as reference_run

T = 10

# (seed, layers or None = drawn by spikeforge.testing, input shape, activity): strides 1 and 2, padding 0 and 1, dense
# chains, multi-channel inputs, low thresholds (dense activity: back-to-back updates of one neuron)
CASES = [
    (1, None, (1, 6, 6), 1.0),
    (2, None, (1, 6, 6), 0.5),
    (3, None, (1, 6, 6), 1.0),
    (4, None, (2, 5, 5), 1.0),
    (5, None, (1, 7, 7), 0.3),
    (6, [("conv", 3, 3, 2, 1), ("conv", 4, 3, 1, 1), ("dense", 5)], (2, 8, 8), 0.5),
    (7, [("conv", 2, 3, 1, 0), ("dense", 6), ("dense", 4)], (1, 6, 6), 0.7),
    (8, [("dense", 12), ("dense", 3)], (1, 4, 4), 0.4),
    (9, [("conv", 4, 3, 2, 0), ("conv", 3, 3, 1, 1), ("dense", 7)], (3, 7, 7), 1.0),
    (10, [("conv", 2, 3, 2, 1), ("conv", 2, 3, 2, 1), ("dense", 3)], (1, 9, 9), 0.2),
]


def _case_id(case):
    seed, layers, shape, activity = case
    kind = "drawn" if layers is None else "-".join(f"{l[0]}{l[1]}" + (f"s{l[3]}" if l[0] == "conv" else "")
                                                   for l in layers)
    return f"seed{seed}-{kind}-{'x'.join(map(str, shape))}"


# (case, simulator): every case in Icarus (quick to build), two of them in Verilator as well (a C++ build each)
RUNS = [(case, "icarus") for case in CASES] + [(CASES[5], "verilator"), (CASES[8], "verilator")]


@pytest.mark.parametrize("case,simulator", RUNS, ids=lambda v: v if isinstance(v, str) else _case_id(v))
def test_random_network_bit_exact(case, simulator, tmp_path):
    seed, layers, shape, activity = case
    net = random_network(seed, input_shape=shape, layers=layers, time_steps=T, activity=activity)
    images = random_images(100 + seed, net, 3, density=0.6)
    ref = reference_run(net, images, T)
    rtl = run_rtl(net, images, T, build_dir=tmp_path, seed=seed, jobs=1, simulator=simulator)
    assert_bit_exact(ref, rtl)
    # the comparison must not be vacuous: some neuron somewhere spiked
    assert sum(c for c in ref.spike_counts() if c is not None) > 0
    assert len(rtl.cycles) == len(images) and all(c > 0 for c in rtl.cycles)


@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
def test_half_rate_units_in_the_verilog_are_bit_exact(simulator, tmp_path):
    """A residual network with membranes in SPRAM (half-rate units, the pixel list in block RAM) through the
    generated Verilog, with the testbench's random pixel gaps (the pixels wait for the membranes to be cleared)
    and results back-pressure; the cycle model of the same plan comes within the back-pressure of the RTL."""
    from spikeforge.hw.accelerator import LanePlan
    from spikeforge.hw.cycle_model import CycleModel
    from spikeforge.testing import random_residual_network

    net = random_residual_network(21, input_shape=(1, 7, 7), time_steps=T,
                                  layers=[("conv", 3, 3, 1, 1), ("block", 3, 1), ("block", 4, 2), ("dense", 5)])
    plan = LanePlan({1: 2, 3: 3}, spram={1, 3, 5, 6}, pixel_list_spram=False)
    images = random_images(21, net, 3, density=0.6)
    ref = reference_run(net, images, T)
    rtl = run_rtl(net, images, T, build_dir=tmp_path, seed=21, jobs=1, simulator=simulator, lanes=plan)
    assert_bit_exact(ref, rtl)
    assert min(ref.spike_counts()[p] for p in (1, 3, 5)) > 0  # the half-rate lif units fired
    modelled = [image.cycles for image in CycleModel(net, T, lanes=plan).run(images, ref)]
    assert all(c <= r <= 1.2 * c for c, r in zip(modelled, rtl.cycles)), (modelled, rtl.cycles)


# --- the comparator, on results corrupted on purpose -------------------------------------------------------


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    net = random_network(3, input_shape=(1, 6, 6), time_steps=T, activity=0.5)
    images = random_images(7, net, 2, density=0.8)
    ref = reference_run(net, images, T)
    rtl = run_rtl(net, images, T, build_dir=tmp_path_factory.mktemp("rtl"), jobs=2)
    assert first_mismatch(ref, rtl) is None
    return net, ref, rtl


def _copy(rtl: SpikeRecord) -> SpikeRecord:
    return copy.deepcopy(rtl)


def test_corrupted_spike_is_named(small_run):
    net, ref, rtl = small_run
    p = next(i for i, s in enumerate(rtl.spikes) if s is not None and s.sum() > 0)
    bad = _copy(rtl)
    t, b, *where = (int(v) for v in np.argwhere(bad.spikes[p])[0])
    bad.spikes[p][(t, b, *where)] = 0  # drop one spike
    message = first_mismatch(ref, bad)
    pop = net.populations[p]
    flat = int(np.ravel_multi_index(where, pop.shape))
    assert f"population {p} ('{pop.name}')" in message
    assert f"step {t}" in message and f"image {b}" in message and f"neuron {flat}" in message
    if len(pop.shape) == 3:
        assert f"(c={where[0]}, y={where[1]}, x={where[2]})" in message
    assert "the reference spikes, the RTL does not" in message
    with pytest.raises(Mismatch, match=f"population {p} \\('{pop.name}'\\)"):
        assert_bit_exact(ref, bad)


def test_extra_and_duplicate_spikes_are_named(small_run):
    net, ref, rtl = small_run
    p = max(i for i, s in enumerate(rtl.spikes) if s is not None)
    bad = _copy(rtl)
    flat = bad.spikes[p][T - 1, 1].reshape(-1)
    k = int(np.flatnonzero(flat == 0)[0]) if (flat == 0).any() else 0
    flat[k] = 1 if int(ref.spikes[p][T - 1, 1].reshape(-1)[k]) == 0 else 2
    message = first_mismatch(ref, bad)
    assert f"image 1, step {T - 1}, population {p} ('{net.populations[p].name}'), neuron {k}" in message


def test_corrupted_readout_is_named(small_run):
    net, ref, rtl = small_run
    bad = _copy(rtl)
    bad.readout[1].reshape(-1)[2] += 1
    message = first_mismatch(ref, bad)
    want = int(ref.readout[1].reshape(-1)[2])
    assert message.startswith(f"image 1, readout (population {len(net.populations) - 1} ('readout')) neuron 2")
    assert f"V = {want} in the reference, {want + 1} in the RTL" in message


def test_waves_are_dumped_and_named(tmp_path):
    net = random_network(11, input_shape=(1, 5, 5), layers=[("conv", 2, 3, 1, 0), ("dense", 3)], time_steps=3)
    images = random_images(11, net, 1)
    rtl = run_rtl(net, images, 3, build_dir=tmp_path, waves=True)
    assert rtl.waves is not None and rtl.waves.is_file() and rtl.waves.stat().st_size > 0
    ref = reference_run(net, images, 3)
    bad = _copy(rtl)
    bad.readout[0].reshape(-1)[0] -= 1
    assert str(rtl.waves) in first_mismatch(ref, bad)


def _wrapped_accelerator(net, time_steps, *, misreport=False, stuck=None):
    """The real accelerator behind a wrapper that breaks it on purpose: ``misreport`` makes population 1 report its
    neuron 0 as neuron 1 on the trace port; ``stuck`` cuts a handshake (``"pixels"``: no pixel is ever taken,
    ``"results"``: no result is ever offered)."""
    from amaranth.hdl import Module
    from amaranth.lib import wiring

    from spikeforge.hw.accelerator import Accelerator

    class Wrapped(wiring.Component):
        def __init__(self):
            self.inner = Accelerator(net, time_steps)
            super().__init__(self.inner.signature)

        def elaborate(self, platform):
            m = Module()
            m.submodules.inner = inner = self.inner
            wiring.connect(m, wiring.flipped(self.pixels), inner.pixels)
            wiring.connect(m, inner.results, wiring.flipped(self.results))
            if stuck == "pixels":
                m.d.comb += [self.pixels.ready.eq(0), inner.pixels.valid.eq(0)]
            elif stuck == "results":
                m.d.comb += [self.results.valid.eq(0), inner.results.ready.eq(0)]
            m.d.comb += [self.cycles.eq(inner.cycles), self.busy.eq(inner.busy)]
            for p, pop in enumerate(net.populations):
                if pop.kind == "lif":
                    ours, theirs = getattr(self, f"spikes_p{p}"), getattr(inner, f"spikes_p{p}")
                    index = theirs.index | (theirs.index == 0) if misreport and p == 1 else theirs.index
                    m.d.comb += [ours.valid.eq(theirs.valid), ours.step_end.eq(theirs.step_end),
                                 ours.index.eq(index)]
            return m

    return Wrapped()


def _mutant_accelerator(net, time_steps):
    return _wrapped_accelerator(net, time_steps, misreport=True)


@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
def test_a_mutant_rtl_is_caught_and_named(tmp_path, simulator):
    """End to end through each simulator: a design that misreports one neuron fails the comparison, which names
    image, step, population and neuron."""
    net = random_network(2, input_shape=(1, 6, 6), layers=[("conv", 2, 3, 1, 1), ("dense", 3)], time_steps=T,
                         activity=0.3)
    images = random_images(5, net, 2, density=0.9)
    ref = reference_run(net, images, T)
    first = np.argwhere(ref.spikes[1].reshape(T, 2, -1)[:, :, 0].T)  # (image, step) where neuron 0 spikes
    assert len(first), "the test network must make neuron 0 of layer1 spike"
    image, step = (int(v) for v in first[0])
    rtl = run_rtl(net, images, T, build_dir=tmp_path, design=_mutant_accelerator, jobs=1, simulator=simulator)
    message = first_mismatch(ref, rtl)
    assert message is not None and message.startswith(
        f"image {image}, step {step}, population 1 ('layer1'), neuron 0 (c=0, y=0, x=0): the reference spikes")


def test_relative_build_dir(tmp_path, monkeypatch):
    """The simulator runs in its own folder: a relative build_dir (as `spikeforge run --build-dir` passes) works."""
    monkeypatch.chdir(tmp_path)
    net = random_network(3)
    images = random_images(3, net, 1)
    rtl = run_rtl(net, images, 2, build_dir="relative/rtl", jobs=1)
    assert first_mismatch(reference_run(net, images, 2), rtl) is None


def _stuck_accelerator(stage):
    return lambda net, time_steps: _wrapped_accelerator(net, time_steps, stuck=stage)


@pytest.mark.parametrize("stage,sentence", [
    ("pixels", "image 0: pixels__ready stayed low for 3000 cycles after 0 of 36 pixels were accepted"),
    ("results", "image 0: no result within 3000 cycles after the last pixel (step_end pulses seen: p1: 4)"),
])
def test_a_stuck_design_is_stopped_with_a_sentence(tmp_path, stage, sentence):
    """The testbench's watchdog names the image, the phase and how far it got, rather than hanging."""
    net = random_network(3, input_shape=(1, 6, 6), layers=[("conv", 2, 3, 1, 1), ("dense", 3)], time_steps=4)
    images = random_images(3, net, 2)
    with pytest.raises(RtlSimError) as caught:
        run_rtl(net, images, 4, build_dir=tmp_path, design=_stuck_accelerator(stage), jobs=1, watchdog=3000)
    assert sentence in str(caught.value)


def test_a_population_nobody_reads_finishes_before_its_image_does(tmp_path):
    """layer1 feeds nothing (the readout reads the input): the results wait for its last step, so its spikes are
    counted in their own image and `cycles` covers them (the randomized regression's first find)."""
    from spikeforge.hw.cycle_model import CycleModel
    from spikeforge.netimage import Projection, required_acc_bits, validate

    net = random_network(2, layers=[("conv", 2, 3, 1, 1), ("dense", 3)], time_steps=3)
    readout = net.populations[2]
    readout.projections = [Projection(source=0, kind="dense", wbits=2, weight=np.ones((3, 36), np.int64))]
    readout.acc_bits = required_acc_bits(net, 2)
    validate(net)
    images = random_images(2, net, 3)
    ref = reference_run(net, images, 3)
    assert ref.spike_counts()[1] > 0
    rtl = run_rtl(net, images, 3, build_dir=tmp_path, jobs=1)
    assert_bit_exact(ref, rtl)
    modelled = [c.cycles for c in CycleModel(net, 3).run(images, ref)]
    # the model assumes results always ready; the testbench's back-pressure only adds cycles
    assert all(0 <= r - m <= 3 for r, m in zip(rtl.cycles, modelled))
