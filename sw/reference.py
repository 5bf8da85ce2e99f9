"""The integer reference: docs/semantics.md executed in PyTorch.

This is the deployed network's meaning, the "deploy mode" of every trained model and the oracle every hardware
test compares against. It computes on float64 tensors holding integers: the loader proves every partial sum fits
``acc_bits`` (at most 48 bits), far inside float64's exact range (2^53), so every operation here is exact. The
result is a :class:`spikeforge.record.SpikeRecord` (numpy), the type every hardware backend returns too.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from spikeforge.netimage import Network, Population, Projection, signed_range
from spikeforge.record import SpikeRecord

__all__ = ["run", "leak", "projection_current", "per_channel", "Observer"]

# run()'s hook: called as observe(step, population index, leak(V) + I before the clamp [B, *shape] float64)
Observer = Callable[[int, int, torch.Tensor], None]


def leak(v: torch.Tensor, shift: int | None) -> torch.Tensor:
    """leak(V) = V - (V >> k) with an arithmetic (flooring) shift; the identity for integrate-and-fire."""
    if shift is None:
        return v
    return v - torch.floor(v / (1 << shift))


def projection_current(proj: Projection, x: torch.Tensor, pop: Population) -> torch.Tensor:
    """Sum over sources of w_ij * x_j for one projection; x is [B, *source shape], the result [B, *pop shape]."""
    w = torch.as_tensor(proj.weight, dtype=torch.float64)
    if proj.kind == "conv2d":
        return F.conv2d(x, w, stride=proj.stride, padding=proj.padding)
    return (x.flatten(1) @ w.T).reshape(x.shape[0], *pop.shape)


def per_channel(values: np.ndarray, pop: Population) -> torch.Tensor:
    """Broadcast one integer per channel over a [B, *shape] tensor."""
    t = torch.as_tensor(values, dtype=torch.float64)
    return t.reshape(-1, 1, 1) if len(pop.shape) == 3 else t


def run(net: Network, images, time_steps: int | None = None, record: bool = True,
        observe: Observer | None = None) -> SpikeRecord:
    """Run the integer semantics on a batch of images (uint8-valued, [B, C, H, W]) for T time steps.

    ``record=False`` keeps no spike rasters (the readout only). ``observe``, when given, sees every population's
    potential leak(V) + I of every step before the clamp, for tools that measure the arithmetic (the exporter's
    membrane statistics) without a second copy of this loop."""
    T = net.time_steps if time_steps is None else time_steps
    pops = net.populations
    x0 = torch.as_tensor(np.asarray(images), dtype=torch.float64)
    if x0.ndim == 3:
        x0 = x0.unsqueeze(1)
    if tuple(x0.shape[1:]) != tuple(net.input.shape):
        raise ValueError(f"images of shape {list(x0.shape[1:])} do not fit the network's input "
                         f"{list(net.input.shape)}")
    if x0.numel() and (x0.min() < 0 or x0.max() > (1 << net.input.bits) - 1 or (x0 != x0.round()).any()):
        raise ValueError(f"input pixels must be integers in 0..{(1 << net.input.bits) - 1}")
    B = x0.shape[0]
    # The input is the same at every step, so the current it drives is computed once (exactly the same sum).
    graded = {}
    for i, pop in enumerate(pops[1:], 1):
        graded[i] = sum((projection_current(p, x0, pop) for p in pop.projections if p.source == 0),
                        torch.zeros(B, *pop.shape, dtype=torch.float64))
    v = [None] + [torch.zeros(B, *pop.shape, dtype=torch.float64) for pop in pops[1:]]
    out = [None] * len(pops)
    spikes = [None] + [torch.zeros(T, B, *pop.shape, dtype=torch.uint8) if record and pop.kind == "lif" else None
                       for pop in pops[1:]]
    for t in range(T):
        for i, pop in enumerate(pops[1:], 1):
            current = graded[i] + per_channel(pop.bias, pop)
            for proj in pop.projections:
                if proj.source != 0:
                    current = current + projection_current(proj, out[proj.source], pop)
            vlo, vhi = signed_range(pop.vbits)
            potential = leak(v[i], pop.leak_shift) + current
            if observe is not None:
                observe(t, i, potential)
            v[i] = torch.clamp(potential, vlo, vhi)
            if pop.kind == "lif":
                theta = per_channel(pop.threshold, pop)
                fired = v[i] >= theta
                v[i] = v[i] - fired * theta
                out[i] = fired.to(torch.float64)
                if record:
                    spikes[i][t] = fired
    return SpikeRecord(spikes=[None if s is None else s.numpy() for s in spikes],
                       readout=v[-1].to(torch.int64).numpy(), source="reference",
                       population_names=[pop.name for pop in pops])
