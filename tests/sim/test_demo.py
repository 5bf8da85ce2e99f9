"""RTL bit-exactness of the trained demo network in Icarus Verilog (cocotb) on real MNIST test images.

tests/data/demo-mnist.sfnet is the committed, trained demo network (1x28x28 -> conv3x3 s2 p1 8 -> conv3x3 s2 p1
16 -> dense 10). Twenty MNIST test images run through the generated Verilog at T=10; every spike of both conv
populations at every step and the ten readout potentials must equal the integer reference. About 200k clock
cycles per image: the images are split over two Icarus processes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from spikeforge import netimage
from spikeforge.record import assert_bit_exact
from spikeforge.sim.rtl import run_rtl
from spikeforge.sw.data import load_dataset
from spikeforge.sw.reference import run as reference_run

DEMO_NETWORK = Path(__file__).resolve().parents[1] / "data" / "demo-mnist.sfnet"
IMAGES = 20
T = 10


def test_demo_network_bit_exact_on_mnist(tmp_path):
    if not DEMO_NETWORK.is_file():
        pytest.fail(f"{DEMO_NETWORK} is missing: this test needs the trained demo network committed there "
                    f"(make demo, then copy build/demo/network.sfnet to tests/data/demo-mnist.sfnet)")
    net = netimage.load(DEMO_NETWORK)
    assert tuple(net.input.shape) == (1, 28, 28), f"{DEMO_NETWORK} is not the MNIST demo network"
    images, labels = load_dataset("mnist", "test")
    images, labels = images[:IMAGES], labels[:IMAGES]
    ref = reference_run(net, images, T)
    rtl = run_rtl(net, images, T, build_dir=tmp_path, jobs=2)
    assert_bit_exact(ref, rtl)
    assert len(rtl.cycles) == IMAGES
    print(f"\n{IMAGES} images, T={T}: {rtl.sim_cycles} cycles in {rtl.sim_s:.1f} s "
          f"({rtl.cycles_per_second:.0f} cycles/s over 2 processes), cycles per image "
          f"{min(rtl.cycles)}..{max(rtl.cycles)}, spikes {ref.spike_counts()}")
