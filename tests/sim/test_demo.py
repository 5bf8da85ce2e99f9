"""RTL bit-exactness of the trained demo networks in Icarus Verilog and Verilator (cocotb) on real MNIST test images.

tests/data/demo-mnist.sfnet is the committed, trained demo network (1x28x28 -> conv3x3 s2 p1 8 -> conv3x3 s2 p1
16 -> dense 10), simulated with a lane per channel; tests/data/demo-mnist-sparse.sfnet the same architecture
trained with the activity penalty, simulated with the iCEBreaker's lane plan (the design its bitstream holds).
Twenty MNIST test images (200 in Verilator) run through the generated Verilog at T=10; every spike of both conv
populations at every step and the ten readout potentials must equal the integer reference. The images are split
over two simulator processes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from spikeforge import netimage
from spikeforge.record import assert_bit_exact
from spikeforge.sim.rtl import run_rtl
from spikeforge.sw.data import load_dataset
from spikeforge.sw.reference import run as reference_run

DATA = Path(__file__).resolve().parents[1] / "data"
IMAGES = 20
T = 10


@pytest.mark.parametrize("name,board,simulator,count", [
    ("demo-mnist.sfnet", None, "icarus", IMAGES),
    ("demo-mnist-sparse.sfnet", "icebreaker", "icarus", IMAGES),
    ("demo-mnist-sparse.sfnet", "icebreaker", "verilator", 200),
])
def test_demo_network_bit_exact_on_mnist(tmp_path, name, board, simulator, count):
    from spikeforge.hw.lanes import plan_lanes

    network = DATA / name
    if not network.is_file():
        pytest.fail(f"{network} is missing: this test needs the trained demo network committed there")
    net = netimage.load(network)
    assert tuple(net.input.shape) == (1, 28, 28), f"{network} is not an MNIST demo network"
    images, labels = load_dataset("mnist", "test")
    images, labels = images[:count], labels[:count]
    ref = reference_run(net, images, T)
    rtl = run_rtl(net, images, T, build_dir=tmp_path, jobs=2, lanes=plan_lanes(net, board) if board else None,
                  simulator=simulator)
    assert_bit_exact(ref, rtl)
    assert len(rtl.cycles) == count
    print(f"\n{simulator}, {count} images, T={T}: {rtl.sim_cycles} cycles in {rtl.sim_s:.1f} s "
          f"({rtl.cycles_per_second:.0f} cycles/s over 2 processes), cycles per image "
          f"{min(rtl.cycles)}..{max(rtl.cycles)}, spikes {ref.spike_counts()}")


def test_the_cycle_model_check_stops_at_its_cycle_budget(tmp_path, capsys, monkeypatch):
    """`spikeforge run --backend rtl` sets the cycle model beside the RTL on the first images only until they took
    CYCLE_MODEL_CYCLES RTL cycles (one image of the ULX3S ResNet takes the model ~9 s): with the budget of one cycle
    it models exactly one of three images, with the default budget all three, and the RTL checks all three."""
    from spikeforge import cli
    from spikeforge.testing import random_network

    net = random_network(5, input_shape=(1, 28, 28), layers=[("conv", 2, 3, 2, 1), ("dense", 4)], time_steps=2,
                         activity=0.5)
    path = str(netimage.save(net, tmp_path / "tiny.sfnet"))
    args = ["run", path, "--backend", "rtl", "--images", "3", "--jobs", "1", "--build-dir", str(tmp_path / "rtl")]
    for budget, modelled in ((1, 1), (cli.CYCLE_MODEL_CYCLES, 3)):
        monkeypatch.setattr(cli, "CYCLE_MODEL_CYCLES", budget)
        status = cli.main(args)
        out = capsys.readouterr().out
        assert status == 0, out
        assert f"cycle model (spikeforge perf) on the first {modelled} images" in out, out
        assert "RTL bit-exact with the integer reference at T=2 on 3 images" in out, out
