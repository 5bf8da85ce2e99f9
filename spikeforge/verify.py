"""Compare a hardware backend with the integer reference over many images, a batch at a time.

``spikeforge run --backend rtl`` (and the gate-level backend) go through :func:`compare_in_batches`: the reference
and the simulation run on one batch of images, the two records are compared, and only what the report needs
(predictions, cycles, spike counts, the first mismatch) is kept, so 10,000 test images cost the memory of one
batch. The first mismatch stops the run; it names the image by its number in the whole run. Torch and the
simulators are imported only when a comparison runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from spikeforge.netimage import Network
from spikeforge.record import SpikeRecord, first_mismatch

__all__ = ["BatchOutcome", "compare_in_batches", "DEFAULT_BATCH"]

DEFAULT_BATCH = 1000


@dataclass
class BatchOutcome:
    """What a batched comparison found: per image compared, the hardware's prediction and ``cycles``; per
    population, the spikes it emitted (None for the input and the readout); the first mismatch (None when every
    image matched); and the time spent."""

    images: int = 0
    predictions: list[int] = field(default_factory=list)
    cycles: list[int] = field(default_factory=list)
    spike_counts: list[int | None] = field(default_factory=list)
    mismatch: str | None = None
    sim_cycles: int = 0
    sim_s: float = 0.0
    reference_s: float = 0.0
    wall_s: float = 0.0
    processes: int = 1
    records: int = 0  # batches run

    @property
    def cycles_per_second(self) -> float:
        return self.sim_cycles / self.sim_s if self.sim_s > 0 else 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.wall_s if self.wall_s > 0 else 0.0


def compare_in_batches(net: Network, images: np.ndarray, time_steps: int,
                       simulate: Callable[[np.ndarray, int], SpikeRecord], *, batch: int = DEFAULT_BATCH,
                       progress: bool | None = None, label: str = "simulating",
                       each_batch: Callable[[SpikeRecord, SpikeRecord, int], None] | None = None) -> BatchOutcome:
    """Run ``simulate(images[a:b], a)`` and the integer reference on each batch of ``batch`` images and compare
    them; stop at the first batch with a mismatch. ``progress``: a tqdm bar over the images (None: on a terminal
    only). ``each_batch(reference, hardware, a)`` sees both records of every batch before they are dropped."""
    from tqdm import tqdm

    from spikeforge.sw import reference

    if batch < 1:
        raise ValueError(f"batch must be at least 1 image, not {batch}")
    started = time.perf_counter()
    out = BatchOutcome()
    images = np.asarray(images)
    with tqdm(total=len(images), unit="image", desc=label, disable=(not progress) if progress is not None
              else None) as bar:
        for start in range(0, len(images), batch):
            chunk = images[start:start + batch]
            t0 = time.perf_counter()
            ref = reference.run(net, chunk, time_steps)
            out.reference_s += time.perf_counter() - t0
            hw = simulate(chunk, start)
            out.records += 1
            out.images += len(chunk)
            out.predictions += [int(v) for v in hw.prediction]
            out.cycles += [int(c) for c in (hw.cycles or [])]
            counts = hw.spike_counts()
            out.spike_counts = counts if not out.spike_counts else [
                None if a is None else a + b for a, b in zip(out.spike_counts, counts)]
            out.sim_cycles += int(hw.sim_cycles or 0)
            out.sim_s += float(hw.sim_s or 0.0)
            out.processes = int(getattr(hw, "processes", 1) or 1)
            bar.update(len(chunk))
            if each_batch is not None:
                each_batch(ref, hw, start)
            out.mismatch = first_mismatch(ref, hw, net, first_image=start)
            if out.mismatch:
                break
    out.wall_s = time.perf_counter() - started
    return out
