"""A simulation run's images: checked against the network, split over simulator processes, merged back.

The RTL (spikeforge.sim.rtl) and the gate-level run (spikeforge.sim.gate) share these so that, given the same images,
jobs and seed, both split the images the same way and seed each chunk's testbench the same: the design under test
then sees the same stimulus cycle by cycle, and its ``cycles`` per image can be compared.
"""

from __future__ import annotations

import os

import numpy as np

from spikeforge.netimage import Network
from spikeforge.record import SpikeRecord

__all__ = ["check_images", "chunk_images", "merge_chunks"]


def check_images(net: Network, images, caller: str) -> np.ndarray:
    """``images`` as a [B, C, H, W] array after checking that they fit the network's input (ValueError)."""
    imgs = np.asarray(images)
    if imgs.ndim == 3:
        imgs = imgs[:, None]
    if tuple(imgs.shape[1:]) != tuple(net.input.shape):
        raise ValueError(f"images of shape {list(imgs.shape[1:])} do not fit the network's input "
                         f"{list(net.input.shape)}")
    if imgs.size and (imgs.min() < 0 or imgs.max() > (1 << net.input.bits) - 1):
        raise ValueError(f"input pixels must be integers in 0..{(1 << net.input.bits) - 1}")
    if imgs.shape[0] == 0:
        raise ValueError(f"{caller} needs at least one image")
    return imgs


def chunk_images(count: int, jobs: int | None, waves: bool = False) -> list[np.ndarray]:
    """The image numbers each simulator process runs: ``jobs`` (default: one per CPU core) near-equal runs of
    consecutive images, at most one per image, one with ``waves``. Chunk k runs with the testbench seed ``seed + k``, so two
    runs with the same images, seed and chunks drive the design with the same stimulus."""
    if jobs is None:
        jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    jobs = 1 if waves else max(1, min(int(jobs), count))
    return [c for c in np.array_split(np.arange(count), jobs) if c.size]


def merge_chunks(net: Network, parts: list[SpikeRecord], source: str, sim_s: float) -> SpikeRecord:
    """One record of the images of consecutive chunks' records."""
    return SpikeRecord(
        spikes=[None if parts[0].spikes[p] is None else np.concatenate([r.spikes[p] for r in parts], axis=1)
                for p in range(len(net.populations))],
        readout=np.concatenate([r.readout for r in parts]), source=source,
        population_names=[pop.name for pop in net.populations], cycles=[c for r in parts for c in r.cycles],
        sim_cycles=sum(r.sim_cycles for r in parts), sim_s=sim_s,
        step_ends=np.concatenate([r.step_ends for r in parts]))

