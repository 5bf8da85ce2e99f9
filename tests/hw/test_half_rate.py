# amaranth: UnusedElaboratable=no
"""Half-rate layer units (membranes in single-port SPRAM): the RTL against sw/reference.py, spike for spike, and
against the cycle model, cycle for cycle; the SPRAM cell model's undefined words; the UP5K elaboration; the
refusals.

Every case runs the same network with and without half-rate units: the spikes must not change, only the cycles
(which the cycle model must predict exactly).
"""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.hdl import Fragment, Instance

from spikeforge.hw.accelerator import Accelerator, LanePlan, UnsupportedNetworkError, choose_spram
from spikeforge.hw.layers import half_rate
from spikeforge.testing import random_images, random_network
from hw_helpers import POISON, ModelledSpramRam, assert_rtl_matches_reference, make_residual_net


def _fire_a_lot(net):
    for pop in net.populations[1:-1]:
        pop.threshold[:] = 1
        pop.bias[:] = np.abs(pop.bias) + 1


# (name, layers, input shape, T, edit, lanes, half-rate populations, options)
CASES = [
    ("chain_all_half_rate", [("conv", 3, 3, 2, 1), ("conv", 4, 3, 1, 1), ("dense", 5)], (2, 7, 7), 3, None,
     {}, {1, 2, 3}, {}),
    ("chain_some_with_lanes", [("conv", 3, 3, 2, 1), ("conv", 4, 3, 1, 1), ("dense", 5)], (2, 7, 7), 3, None,
     {1: 2, 2: 3, 3: 2}, {2}, {}),
    ("identity_join_half_rate", [("conv", 2, 3, 1, 1), ("block", 2, 1), ("dense", 4)], (1, 6, 6), 4, None,
     {}, {3}, {}),
    ("strided_join_and_stem", [("conv", 2, 3, 1, 1), ("block", 3, 2), ("dense", 4)], (1, 8, 8), 4, None,
     {1: 2}, {1, 3}, {}),
    # the read of a word written in the same unit cycle (a one-neuron readout fed by two walkers)
    ("two_walkers_same_address", [("conv", 2, 3, 1, 1), ("dense", 1, [("dense", 1)])], (1, 5, 5), 5,
     _fire_a_lot, {}, {2}, {}),
    ("graded_identity_from_input", [("conv", 1, 3, 1, 1, [("identity", 0)]), ("dense", 3)], (1, 5, 5), 3, None,
     {}, {1}, {}),
    ("fifo_depth_1", [("conv", 2, 3, 1, 1), ("block", 2, 1), ("dense", 4)], (1, 6, 6), 3, _fire_a_lot,
     {}, {2, 4}, {"fifo_depth": 1}),
    ("backpressure_on_results", [("conv", 2, 3, 1, 1), ("block", 2, 1), ("dense", 6)], (1, 6, 6), 3, None,
     {}, {1, 4}, {"results_ready": 0.3}),
]


@pytest.mark.parametrize("name, layers, shape, T, edit, lanes, spram, options", CASES, ids=[c[0] for c in CASES])
def test_half_rate_units_are_bit_and_cycle_exact(name, layers, shape, T, edit, lanes, spram, options):
    net = make_residual_net(len(name), layers, shape, T, edit=edit)
    images = random_images(len(name), net, 2, density=0.6)
    full, ref = assert_rtl_matches_reference(net, images, T, lanes=LanePlan(lanes), **options)
    half, _ = assert_rtl_matches_reference(net, images, T, lanes=LanePlan(lanes, spram=spram), **options)
    counts = ref.spike_counts()
    assert any(net.populations[p].kind == "readout" or counts[p] > 0 for p in spram), "a weak case: " + str(counts)
    if "results_ready" not in options:
        assert all(h > f for h, f in zip(half.cycles, full.cycles)), (half.cycles, full.cycles)


def test_pixel_list_in_block_ram_changes_nothing():
    net = random_network(5, input_shape=(1, 6, 6), layers=[("conv", 2, 3, 1, 1), ("dense", 3)], time_steps=3)
    images = random_images(5, net, 2)
    assert_rtl_matches_reference(net, images, 3, lanes=LanePlan({}, spram={1}, pixel_list_spram=False))


def test_spram_words_power_up_undefined_and_read_undefined_after_a_write(monkeypatch):
    """The half-rate unit over the SB_SPRAM256KA model: every word starts as POISON and DATAOUT is POISON after a
    write, so a membrane not cleared, or a read of the output after a write, would corrupt the spikes."""

    class PoisonedSpram(ModelledSpramRam):
        power_up = POISON

    monkeypatch.setattr(half_rate, "SinglePortRam", PoisonedSpram)
    net = make_residual_net(3, [("conv", 2, 3, 1, 1), ("block", 2, 1), ("dense", 4)], (1, 5, 5), 3)
    images = random_images(3, net, 2, density=0.7)
    assert_rtl_matches_reference(net, images, 3, lanes=LanePlan({1: 2}, spram={1, 3, 4}))


def _instances(fragment, path=()):
    for sub, name, _ in fragment.subfragments:
        if isinstance(sub, Instance):
            yield path + (name,), sub
        else:
            yield from _instances(sub, path + (name,))


def test_up5k_elaboration_puts_those_membranes_in_spram_blocks():
    from amaranth_boards.icebreaker import ICEBreakerPlatform

    net = random_network(2, input_shape=(1, 6, 6), layers=[("conv", 3, 3, 1, 1), ("conv", 4, 3, 1, 1),
                                                           ("dense", 3)])
    net.populations[1].acc_bits = 20  # 2 lanes x 20 bits: 3 SPRAM columns; the pixel list's 15 bits: 1
    plan = LanePlan({1: 2, 2: 1, 3: 1}, spram={1})
    design = Accelerator(net, lanes=plan)
    assert design.spram_blocks() == 1 + 3
    found = [(path, inst) for path, inst in _instances(Fragment.get(design, ICEBreakerPlatform()))
             if inst.type == "SB_SPRAM256KA"]
    where = sorted(path[0] for path, _ in found)  # the accelerator's submodule each block is under
    assert where == ["input"] + ["layer1"] * 3, where
    # without the plan, only the pixel list is SPRAM; with it in block RAM, only the membrane
    assert len([i for _, i in _instances(Fragment.get(Accelerator(net), ICEBreakerPlatform()))
                if i.type == "SB_SPRAM256KA"]) == 1
    in_ebr = LanePlan({1: 2, 2: 1, 3: 1}, spram={1}, pixel_list_spram=False)
    assert len([i for _, i in _instances(Fragment.get(Accelerator(net, lanes=in_ebr), ICEBreakerPlatform()))
                if i.type == "SB_SPRAM256KA"]) == 3


def test_more_spram_than_the_device_has_is_refused_in_one_sentence():
    from amaranth_boards.icebreaker import ICEBreakerPlatform

    net = random_network(2, input_shape=(1, 6, 6), layers=[("conv", 3, 3, 1, 1), ("conv", 4, 3, 1, 1),
                                                           ("dense", 3)])
    net.populations[1].acc_bits = 20
    greedy = Accelerator(net, lanes=LanePlan({1: 3, 2: 1, 3: 1}, spram={1, 2}))  # 4 columns + 1 + the pixel list's 1
    with pytest.raises(UnsupportedNetworkError, match=r"the membranes of layer1, layer2 and the pixel list need 6 "
                                                      r"SPRAM blocks .* the iCE40UP5K has 4; put fewer"):
        Fragment.get(greedy, ICEBreakerPlatform())
    with pytest.raises(UnsupportedNetworkError, match="asked for 'conv9', which is not a layer"):
        choose_spram(net, ["conv9"])
    with pytest.raises(UnsupportedNetworkError, match="asked for 0, which is not a layer"):
        Accelerator(net, spram=[0])
    assert Accelerator(net, spram=["layer2"]).spram == {2}


def test_the_bitstream_pre_check_counts_spram_blocks():
    from spikeforge.hw.bitstream import BitstreamError, spram_precheck

    net = random_network(2, input_shape=(1, 6, 6), layers=[("conv", 3, 3, 1, 1), ("conv", 4, 3, 1, 1),
                                                           ("dense", 3)])
    net.populations[1].acc_bits = 20
    assert spram_precheck(net, "icebreaker", LanePlan({1: 2, 2: 1, 3: 1}, spram={1})) == {
        "spram_membranes": ["layer1"], "pixel_list": "SPRAM", "spram_blocks": 4}
    with pytest.raises(BitstreamError, match=r"^the plan puts 6 SPRAM blocks of 16K x 16 on the icebreaker, which has "
                                             r"4 \(membranes layer1, layer2, pixel list in SPRAM\); put fewer"):
        spram_precheck(net, "icebreaker", LanePlan({1: 3, 2: 1, 3: 1}, spram={1, 2}))
    with pytest.raises(BitstreamError, match="the ulx3s-85f has no SPRAM"):
        spram_precheck(net, "ulx3s-85f", LanePlan({}, spram={1}))
