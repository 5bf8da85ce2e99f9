"""What one run of a deployed network did, whoever ran it, and the one comparator of two such runs.

Every side that executes docs/semantics.md returns a :class:`SpikeRecord`: the integer reference
(spikeforge.sw.reference), the generated Verilog in a simulator (spikeforge.sim.rtl), the accelerator in Amaranth's
simulator (spikeforge.hw.testing) and a board over UART (the readout only). :func:`first_mismatch` compares two of
them spike by spike and names the first difference. numpy only, no torch, so that the hardware side needs none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spikeforge.netimage import Network

__all__ = ["SpikeRecord", "Mismatch", "first_mismatch", "first_cycle_mismatch", "assert_bit_exact"]


@dataclass
class SpikeRecord:
    """One run of a network on a batch of B images for T steps.

    ``spikes[p]`` is a uint8 array [T, B, *shape] for every lif population p (None for the input, the readout, and
    populations that were not recorded): 1 where the neuron spiked at that step. A hardware record counts the
    spike events it saw, so 2 or more means the same neuron was reported more than once, a bug the comparator
    names. ``readout`` is the int64 readout potential V after the last step, [B, *shape]. ``source`` names who ran
    it in messages ("reference", "RTL", ...).

    Hardware runs also fill ``cycles`` (the accelerator's ``cycles`` output per image) and, from a simulator,
    ``sim_cycles`` (clock cycles the whole simulation ran), ``sim_s`` (the simulators' wall time), ``wall_s`` (build
    and run), ``waves`` (the waveform file), ``build_dir``, ``step_ends`` ([B, populations]: step_end pulses seen)
    and ``events`` (every trace event as (image, population, step, neuron), in the order the hardware emitted them,
    where the simulator keeps them).
    """

    spikes: list[np.ndarray | None]
    readout: np.ndarray
    source: str = "reference"
    population_names: list[str] | None = None
    cycles: list[int] | None = None
    sim_cycles: int = 0
    sim_s: float = 0.0
    wall_s: float = 0.0
    waves: Path | None = None
    build_dir: Path | None = None
    step_ends: np.ndarray | None = field(default=None, repr=False)
    events: list[tuple[int, int, int, int]] | None = field(default=None, repr=False)

    @property
    def prediction(self) -> np.ndarray:
        """The predicted class of each image: the argmax of the flattened readout, the lowest index on ties."""
        return self.readout.reshape(self.readout.shape[0], -1).argmax(axis=1)

    @property
    def cycles_per_second(self) -> float:
        """Simulated clock cycles per second of simulator wall time (0 where no simulator ran)."""
        return self.sim_cycles / self.sim_s if self.sim_s > 0 else 0.0

    def spike_counts(self) -> list[int | None]:
        """Spikes of each population over all images and steps (None where there are no spikes)."""
        return [None if s is None else int(s.sum()) for s in self.spikes]


class Mismatch(AssertionError):
    """Two records of the same network and images differ; the message names the first difference."""


def _neuron(shape: tuple[int, ...], flat: int) -> str:
    if len(shape) == 3:
        c, y, x = np.unravel_index(flat, shape)
        return f"neuron {flat} (c={c}, y={y}, x={x})"
    return f"neuron {flat}"


def _pop_tag(names: list[str] | None, p: int) -> str:
    if names is not None and p < len(names):
        return f"population {p} ('{names[p]}')"
    return f"population {p}"


def first_mismatch(expected: SpikeRecord, actual: SpikeRecord, net: Network | None = None, *,
                   first_image: int = 0) -> str | None:
    """None when ``actual`` reproduces ``expected`` exactly, else one sentence naming the first difference.

    "First" is causal: per image, the earliest step, and within a step the earliest population (a wrong spike in
    layer 1 at step 3 explains every later difference); the readout is compared after all spikes of that image.
    Populations are named from ``net`` when given, else from either record's ``population_names``. Images are
    numbered from ``first_image`` (the records hold a batch that starts there).
    """
    names = ([pop.name for pop in net.populations] if net is not None
             else actual.population_names or expected.population_names)
    want, got = expected.source, actual.source
    suffix = f"; waves: {actual.waves}" if actual.waves else ""
    ref_spikes, hw_spikes = expected.spikes, actual.spikes
    ref_readout, hw_readout = np.asarray(expected.readout), np.asarray(actual.readout)
    if len(ref_spikes) != len(hw_spikes):
        return f"the {want} has {len(ref_spikes)} populations, the {got} {len(hw_spikes)}{suffix}"
    if ref_readout.shape != hw_readout.shape:
        return (f"the readout has shape {list(ref_readout.shape)} in the {want}, {list(hw_readout.shape)} in the "
                f"{got}{suffix}")
    for p, (a, b) in enumerate(zip(ref_spikes, hw_spikes)):
        if (a is None) != (b is None):
            return f"{_pop_tag(names, p)} has spikes in only one of the two records{suffix}"
        if a is not None and a.shape != b.shape:
            return (f"{_pop_tag(names, p)}: spikes have shape {list(a.shape)} in the {want}, {list(b.shape)} in the "
                    f"{got} (T, images, neurons){suffix}")
    lif = [p for p, a in enumerate(ref_spikes) if a is not None]
    if all(np.array_equal(ref_spikes[p], hw_spikes[p]) for p in lif) and np.array_equal(ref_readout, hw_readout):
        return None
    steps = ref_spikes[lif[0]].shape[0] if lif else 0
    for image in range(ref_readout.shape[0]):
        for t in range(steps):
            for p in lif:
                a = ref_spikes[p][t, image].reshape(-1)
                b = hw_spikes[p][t, image].reshape(-1)
                diff = np.nonzero(a != b)[0]
                if diff.size:
                    k = int(diff[0])
                    if b[k] > 1:
                        what = f"the {got} reported it {int(b[k])} times (the {want}: {'spike' if a[k] else 'none'})"
                    else:
                        what = (f"the {want} spikes, the {got} does not" if a[k] else
                                f"the {got} spikes, the {want} does not")
                    return (f"image {image + first_image}, step {t}, {_pop_tag(names, p)}, {_neuron(ref_spikes[p].shape[2:], k)}: "
                            f"{what} ({diff.size} neuron(s) of this population differ at this step){suffix}")
        a = ref_readout[image].reshape(-1).astype(np.int64)
        b = hw_readout[image].reshape(-1).astype(np.int64)
        diff = np.nonzero(a != b)[0]
        if diff.size:
            k = int(diff[0])
            return (f"image {image + first_image}, readout ({_pop_tag(names, len(ref_spikes) - 1)}) "
                    f"{_neuron(ref_readout.shape[1:], k)}: V = {a[k]} in the {want}, {b[k]} in the {got} "
                    f"({diff.size} readout neuron(s) differ){suffix}")
    return None


def first_cycle_mismatch(expected: SpikeRecord, actual: SpikeRecord) -> str | None:
    """None when both hardware records took the same ``cycles`` on every image, else one sentence naming the first
    image that differs. Only two runs of the same design under the same stimulus (testbench seed and image
    chunks) can be compared this way: the RTL and a netlist of it."""
    want, got = expected.source, actual.source
    if expected.cycles is None or actual.cycles is None:
        return f"the {want if expected.cycles is None else got} recorded no cycles"
    if len(expected.cycles) != len(actual.cycles):
        return f"the {want} recorded cycles of {len(expected.cycles)} images, the {got} of {len(actual.cycles)}"
    differ = [b for b, (a, c) in enumerate(zip(expected.cycles, actual.cycles)) if a != c]
    if not differ:
        return None
    b = differ[0]
    return (f"image {b}: {expected.cycles[b]} cycles in the {want}, {actual.cycles[b]} in the {got} "
            f"({len(differ)} of {len(expected.cycles)} images differ)")


def assert_bit_exact(expected: SpikeRecord, actual: SpikeRecord, net: Network | None = None) -> None:
    """Raise :class:`Mismatch` naming the first difference unless ``actual`` reproduces ``expected`` exactly."""
    message = first_mismatch(expected, actual, net)
    if message:
        raise Mismatch(f"the {actual.source} differs from the {expected.source}: {message}")
