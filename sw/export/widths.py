"""The widths of an exported network: how many bits each membrane and accumulator gets, and what the exporters do
when a layer cannot fit. Shared by the chain exporter (sw/export/chain.py, widths from calibration images) and the
ResNet exporter (sw/export/resnet.py, worst-case widths).
"""

from __future__ import annotations

import numpy as np
import torch

from spikeforge.netimage import Network, partial_sum_bounds, required_acc_bits, signed_bits_for, signed_range

from .. import reference

__all__ = ["ExportError", "VBITS_MAX", "membrane_statistics", "set_widths", "worst_case_range"]

VBITS_MAX = 32  # the network file's limit on a membrane's width


class ExportError(ValueError):
    """The trained model cannot become a deployable network; the message names the layer and the fix."""


@torch.no_grad()
def membrane_statistics(net: Network, images, time_steps: int | None = None, batch: int = 500) -> list[dict | None]:
    """Per population: the range of leak(V) + I before clamping and the fraction of neuron-steps it clamps.

    Runs the integer reference (spikeforge.sw.reference.run) and watches the potential it does not return (the
    unclamped one) through its ``observe`` hook. Input population: None.
    """
    pops = net.populations
    stats = [None] + [{"min": None, "max": None, "clamped": 0, "neuron_steps": 0} for _ in pops[1:]]

    def observe(_step: int, i: int, potential: torch.Tensor) -> None:
        vlo, vhi = signed_range(pops[i].vbits)
        s = stats[i]
        lo, hi = float(potential.min()), float(potential.max())
        s["min"] = lo if s["min"] is None else min(s["min"], lo)
        s["max"] = hi if s["max"] is None else max(s["max"], hi)
        s["clamped"] += int(((potential < vlo) | (potential > vhi)).sum())
        s["neuron_steps"] += potential.numel()

    images = np.asarray(images)
    for start in range(0, len(images), batch):
        reference.run(net, images[start:start + batch], time_steps, record=False, observe=observe)
    for s in stats[1:]:
        s["clamp_fraction"] = s["clamped"] / max(1, s["neuron_steps"])
    return stats


def set_widths(net: Network, i: int, vbits: int, max_acc_bits: int) -> None:
    """Give population ``i`` ``vbits``-bit membranes and the accumulator its weights, widths and bias need;
    :class:`ExportError` when either exceeds its limit."""
    pop = net.populations[i]
    if vbits > VBITS_MAX:
        raise ExportError(f"layer '{pop.name}' would need {vbits}-bit membrane potentials, more than the "
                          f"network file's {VBITS_MAX}; its BN scales are too small for its weight scale")
    pop.vbits = vbits
    need = required_acc_bits(net, i)
    blo, bhi = int(pop.bias.min()), int(pop.bias.max())
    need = max(need, signed_bits_for(min(blo, 0), max(bhi, 0)))
    if need > max_acc_bits:
        raise ExportError(f"layer '{pop.name}' would need a {need}-bit accumulator (vbits={vbits}), more than "
                          f"max_acc_bits={max_acc_bits}; raise max_acc_bits or retrain with fewer weight bits")
    pop.acc_bits = need


def worst_case_range(net: Network, i: int, T: int) -> tuple[float, float]:
    """Potential bounds without data: a neuron gains at most (max current) per step and, below zero, can fall by at
    most (min current) per step for T steps (the leak only shrinks |V|)."""
    pop = net.populations[i]
    plo, phi = partial_sum_bounds(net, i)
    lo_step = plo + min(int(pop.bias.min()), 0)
    hi_step = phi + max(int(pop.bias.max()), 0)
    theta = int(pop.threshold.max()) if pop.threshold is not None else 0
    if pop.kind == "readout":
        return T * min(lo_step, 0), T * max(hi_step, 0)
    return T * min(lo_step, 0), max(theta - 1, 0) + max(hi_step, 0)


