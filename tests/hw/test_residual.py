"""Golden-reference tests of residual joins and fan-out: populations with several projections from earlier
populations (ResNet joins, skips), and populations read by several later ones, RTL against sw/reference.py.

Every case compares every spike of every lif population at every step and the readout's V; the hand-picked cases
also check that the populations feeding a join do spike, so that both branches are exercised.
"""

from __future__ import annotations

import numpy as np
import pytest

from spikeforge.hw.accelerator import consumers
from spikeforge.hw.layers import is_diagonal, projection_groups
from spikeforge.testing import random_images, random_residual_network
from hw_helpers import assert_rtl_matches_reference, make_residual_net


def _fire_a_lot(net):
    for pop in net.populations[1:-1]:
        pop.threshold[:] = 1
        pop.bias[:] = np.abs(pop.bias) + 1


# (name, layers, input shape, time steps, edit, images, simulate options, populations that must spike)
CASES = [
    ("identity_shortcut", [("conv", 2, 3, 1, 1), ("block", 2, 1), ("dense", 4)], (1, 6, 6), 10, None,
     "random", {}, [1, 2, 3]),
    ("strided_1x1_shortcut", [("conv", 2, 3, 1, 1), ("block", 3, 2), ("dense", 4)], (1, 8, 8), 6, None,
     "random", {}, [1, 2, 3]),
    ("strided_1x1_shortcut_odd_size", [("conv", 2, 3, 1, 1), ("block", 2, 2), ("dense", 3)], (1, 7, 7), 5,
     _fire_a_lot, "random", {}, [1, 2, 3]),
    ("two_joins_in_a_row", [("conv", 2, 3, 1, 1), ("block", 2, 1), ("block", 2, 1), ("dense", 3)], (1, 6, 6), 6,
     None, "random", {}, [1, 2, 3, 4, 5]),
    ("consumed_by_three", [("conv", 2, 3, 1, 1), ("conv", 2, 3, 1, 1), ("conv", 2, 3, 1, 1, [("identity", 1)]),
                           ("dense", 4, [("dense", 1)])], (1, 6, 6), 6, None, "random", {}, [1, 2, 3]),
    ("dense_and_conv_into_one", [("conv", 2, 3, 1, 1), ("conv", 2, 3, 2, 1, [("dense", 0), ("dense", 1)]),
                                 ("dense", 3)], (1, 6, 6), 5, None, "random", {}, [1, 2]),
    ("graded_conv_skip_to_conv_readout", [("conv", 2, 3, 2, 1), ("conv", 3, 3, 1, 0, [("conv", 0, 6, 1, 0)])],
     (1, 6, 6), 4, None, "random", {}, [1]),
    ("two_walkers_same_address", [("conv", 2, 3, 1, 1), ("dense", 1, [("dense", 1)])], (1, 5, 5), 5,
     _fire_a_lot, "random", {}, [1]),
    ("busy_join_with_backpressure", [("conv", 3, 3, 1, 1), ("block", 3, 1), ("dense", 6, [("dense", 1)])],
     (1, 6, 6), 4, _fire_a_lot, "random", {"results_ready": 0.3}, [1, 2, 3]),
    ("graded_identity_from_input", [("conv", 1, 3, 1, 1, [("identity", 0)]), ("dense", 3)], (1, 5, 5), 4, None,
     "random", {}, [1]),
    ("all_zero_image", [("conv", 2, 3, 1, 1), ("block", 2, 1), ("dense", 4)], (1, 6, 6), 3, None, "zero", {}, []),
]


def _images(kind, net, seed):
    if kind == "zero":
        return np.zeros((1, *net.input.shape), np.uint8)
    return random_images(seed, net, 1, density=0.6)


@pytest.mark.parametrize("name, layers, shape, T, edit, images, options, spiking", CASES, ids=[c[0] for c in CASES])
def test_residual_case(name, layers, shape, T, edit, images, options, spiking):
    net = make_residual_net(len(name), layers, shape, T, edit=edit)
    assert any(len(pop.projections) > 1 for pop in net.populations), "the case has no join"
    rtl, ref = assert_rtl_matches_reference(net, _images(images, net, seed=len(name)), T, **options)
    counts = ref.spike_counts()
    silent = [net.populations[p].name for p in spiking if counts[p] == 0]
    assert not silent, f"{name}: populations {silent} never spike, so the case does not exercise them"


def test_case_topologies():
    """The hand-picked cases have the structure their names promise."""
    nets = {c[0]: make_residual_net(len(c[0]), c[1], c[2], c[3], edit=c[4]) for c in CASES}
    join = nets["identity_shortcut"].populations[3]
    assert [p.source for p in join.projections] == [2, 1]
    diagonal = join.projections[1].weight[:, :, 0, 0]
    assert np.array_equal(diagonal, np.diag(join.threshold)), "the identity is the diagonal of the thresholds"
    strided = nets["strided_1x1_shortcut"].populations[3].projections[1]
    assert strided.kernel == (1, 1) and strided.stride == (2, 2)
    assert consumers(nets["two_joins_in_a_row"])[3] == [4, 5]
    assert consumers(nets["consumed_by_three"])[1] == [2, 3, 4]
    assert is_diagonal(join.projections[1]) and not is_diagonal(strided)
    assert is_diagonal(nets["graded_identity_from_input"].populations[1].projections[1])
    mixed = nets["dense_and_conv_into_one"].populations[2]
    assert [(p.source, p.kind) for p in mixed.projections] == [(1, "conv2d"), (0, "dense"), (1, "dense")]
    assert projection_groups(mixed) == [(0, [1]), (1, [0, 2])]


@pytest.mark.parametrize("seed", range(5))
def test_random_residual_network(seed):
    """Random residual networks (stem, 1-3 BasicBlocks with identity or strided 1x1 shortcuts, a dense readout
    with an occasional skip) at T = 10."""
    shape = [(1, 6, 6), (2, 5, 5), (1, 7, 7), (1, 6, 6), (2, 6, 6)][seed]
    net = random_residual_network(300 + seed, input_shape=shape, time_steps=10,
                                  activity=0.5 if seed % 2 else 1.0)
    assert any(len(pop.projections) > 1 for pop in net.populations)
    images = random_images(seed, net, 1, density=0.6)
    assert_rtl_matches_reference(net, images, 10, results_ready=0.5 if seed == 3 else 1.0, seed=seed)
