"""Compare what the RTL did with what the integer reference says, and name the first difference.

"First" is causal: per image, the earliest step, and within a step the earliest population (a wrong spike in
layer 1 at step 3 explains every later difference); the readout is compared after all spikes of that image.
"""

from __future__ import annotations

import numpy as np

from spikeforge.netimage import Network

__all__ = ["first_mismatch", "assert_bit_exact", "RtlMismatch"]


class RtlMismatch(AssertionError):
    """The RTL and the reference differ; the message names the first difference."""


def _np(x) -> np.ndarray | None:
    if x is None:
        return None
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def _neuron(shape: tuple[int, ...], flat: int) -> str:
    if len(shape) == 3:
        c, y, x = np.unravel_index(flat, shape)
        return f"neuron {flat} (c={c}, y={y}, x={x})"
    return f"neuron {flat}"


def _pop_tag(names: list[str] | None, p: int) -> str:
    if names is not None and p < len(names):
        return f"population {p} ('{names[p]}')"
    return f"population {p}"


def first_mismatch(ref, rtl, net: Network | None = None) -> str | None:
    """None when ``rtl`` reproduces ``ref`` exactly, else one sentence naming the first difference.

    ``ref`` is a spikeforge.sw.reference.ReferenceResult, ``rtl`` a spikeforge.sim.rtl.RtlResult (or anything
    with ``spikes`` [T, B, *shape] per population and ``readout`` [B, *shape]). Populations are named from ``net``
    when given, else from ``rtl.population_names`` (an RtlResult carries them).
    """
    names = [pop.name for pop in net.populations] if net is not None else getattr(rtl, "population_names", None)
    ref_spikes = [_np(s) for s in ref.spikes]
    rtl_spikes = [_np(s) for s in rtl.spikes]
    ref_readout, rtl_readout = _np(ref.readout), _np(rtl.readout)
    waves = getattr(rtl, "waves", None)
    suffix = f"; waves: {waves}" if waves else ""
    if len(ref_spikes) != len(rtl_spikes):
        return f"the reference has {len(ref_spikes)} populations, the RTL result {len(rtl_spikes)}{suffix}"
    if ref_readout.shape != rtl_readout.shape:
        return (f"the readout has shape {list(ref_readout.shape)} in the reference, {list(rtl_readout.shape)} in "
                f"the RTL result{suffix}")
    for p, (a, b) in enumerate(zip(ref_spikes, rtl_spikes)):
        if (a is None) != (b is None):
            return f"{_pop_tag(names, p)} has spikes in only one of the two results{suffix}"
        if a is not None and a.shape != b.shape:
            return (f"{_pop_tag(names, p)}: spikes have shape {list(a.shape)} in the reference, {list(b.shape)} in "
                    f"the RTL result (T, images, neurons){suffix}")
    B = ref_readout.shape[0]
    lif = [p for p, a in enumerate(ref_spikes) if a is not None]
    for image in range(B):
        T = ref_spikes[lif[0]].shape[0] if lif else 0
        for t in range(T):
            for p in lif:
                a = ref_spikes[p][t, image].reshape(-1)
                b = rtl_spikes[p][t, image].reshape(-1)
                diff = np.nonzero(a != b)[0]
                if diff.size:
                    k = int(diff[0])
                    shape = ref_spikes[p].shape[2:]
                    if b[k] > 1:
                        what = f"the RTL reported it {int(b[k])} times (the reference: {'spike' if a[k] else 'none'})"
                    else:
                        what = ("the reference spikes, the RTL does not" if a[k] else
                                "the RTL spikes, the reference does not")
                    return (f"image {image}, step {t}, {_pop_tag(names, p)}, {_neuron(shape, k)}: {what} "
                            f"({diff.size} neuron(s) of this population differ at this step){suffix}")
        a = ref_readout[image].reshape(-1).astype(np.int64)
        b = rtl_readout[image].reshape(-1).astype(np.int64)
        diff = np.nonzero(a != b)[0]
        if diff.size:
            k = int(diff[0])
            p = len(ref_spikes) - 1
            return (f"image {image}, readout ({_pop_tag(names, p)}) {_neuron(ref_readout.shape[1:], k)}: "
                    f"V = {a[k]} in the reference, {b[k]} in the RTL ({diff.size} readout neuron(s) differ)"
                    f"{suffix}")
    return None


def assert_bit_exact(ref, rtl, net: Network | None = None) -> None:
    """Raise RtlMismatch naming the first difference unless the RTL reproduces the reference exactly."""
    message = first_mismatch(ref, rtl, net)
    if message:
        raise RtlMismatch(f"RTL differs from the integer reference: {message}")
