"""spikeforge.verify: batched comparison of a hardware record with the integer reference."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from spikeforge.testing import random_images, random_network
from spikeforge.sw.reference import run as reference_run
from spikeforge.verify import compare_in_batches

T = 4


def _faithful(net, corrupt_image=None):
    """A stand-in hardware: the reference's own record, with one spike dropped in image ``corrupt_image``."""
    calls = []

    def simulate(chunk, start):
        calls.append((start, len(chunk)))
        record = copy.deepcopy(reference_run(net, chunk, T))
        record.cycles = [100 + start + k for k in range(len(chunk))]
        record.sim_cycles, record.sim_s = 1000, 0.5
        if corrupt_image is not None and start <= corrupt_image < start + len(chunk):
            p = next(i for i, s in enumerate(record.spikes) if s is not None and s[:, corrupt_image - start].any())
            t, *where = np.argwhere(record.spikes[p][:, corrupt_image - start])[0]
            record.spikes[p][(t, corrupt_image - start, *where)] = 0
        return record

    return simulate, calls


def test_batches_cover_every_image_once():
    net = random_network(4, input_shape=(1, 6, 6), time_steps=T, activity=0.5)
    images = random_images(4, net, 11, density=0.8)
    simulate, calls = _faithful(net)
    out = compare_in_batches(net, images, T, simulate, batch=4, progress=False)
    assert calls == [(0, 4), (4, 4), (8, 3)]
    assert out.mismatch is None and out.images == 11 and out.records == 3
    assert out.cycles == [100 + s + k for s, n in calls for k in range(n)]
    ref = reference_run(net, images, T)
    assert out.predictions == [int(v) for v in ref.prediction]
    assert out.spike_counts == ref.spike_counts()
    assert out.sim_cycles == 3000 and out.cycles_per_second == pytest.approx(2000)


def test_a_mismatch_names_the_image_by_its_number_in_the_run_and_stops():
    net = random_network(4, input_shape=(1, 6, 6), time_steps=T, activity=0.5)
    images = random_images(4, net, 12, density=0.8)
    ref = reference_run(net, images, T)
    bad = next(b for b in range(5, 12) if any(s is not None and s[:, b].any() for s in ref.spikes))
    simulate, calls = _faithful(net, corrupt_image=bad)
    out = compare_in_batches(net, images, T, simulate, batch=4, progress=False)
    assert out.mismatch is not None and out.mismatch.startswith(f"image {bad}, step ")
    assert calls[-1][0] == 4 * (bad // 4)  # no batch after the one that differed
    assert out.images == 4 * (bad // 4 + 1)


def test_batch_must_be_positive():
    net = random_network(4, input_shape=(1, 6, 6), time_steps=T)
    with pytest.raises(ValueError, match="batch must be at least 1 image"):
        compare_in_batches(net, random_images(1, net, 2), T, lambda c, s: None, batch=0)
