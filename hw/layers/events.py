"""The events every unit of the accelerator speaks, and the facts about projections that the units share: an event
names one neuron of its population (channel, row, column, flat index) with a value (the pixel for the input, 1 for
a spike); an end-of-step token follows the last event of each time step.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import unsigned
from amaranth.lib import data

from spikeforge.netimage import Population, Projection

__all__ = ["index_bits", "event_layout", "projection_groups", "is_diagonal", "weight_rom"]


def index_bits(count: int) -> int:
    """Width of an unsigned counter over 0..count-1 (at least one bit)."""
    return max(1, (int(count) - 1).bit_length())


def event_layout(pop: Population) -> data.StructLayout:
    """The payload of the events a population emits.

    ``c``, ``y``, ``x`` locate the neuron (a 1-D ``[N]`` population has ``c`` = index and ``y`` = ``x`` = 0),
    ``index`` is its flat index ``c*H*W + y*W + x``, ``value`` the pixel (input) or 1 (spike), ``end`` marks the
    end-of-step token (whose other fields are meaningless).
    """
    if len(pop.shape) == 3:
        c, h, w = pop.shape
    else:
        c, h, w = pop.shape[0], 1, 1
    return data.StructLayout({
        "c": unsigned(index_bits(c)),
        "y": unsigned(index_bits(h)),
        "x": unsigned(index_bits(w)),
        "index": unsigned(index_bits(pop.size)),
        "value": unsigned(pop.bits if pop.kind == "input" else 1),
        "end": unsigned(1),
    })


def projection_groups(pop: Population) -> list[tuple[int, list[int]]]:
    """The projections of a population grouped by source, earliest source first: ``[(source, [k, ...]), ...]``.

    A layer unit reads one event stream per group, in this order (docs/architecture.md explains why this order
    cannot deadlock); the projections of one group share that stream and walk each event in turn, in the order
    ``k`` of the file.
    """
    groups: dict[int, list[int]] = {}
    for k, proj in enumerate(pop.projections):
        groups.setdefault(proj.source, []).append(k)
    return sorted(groups.items())


def is_diagonal(proj: Projection) -> bool:
    """A 1x1 conv, stride 1, no padding, C_in = C_out, whose weights are zero off the diagonal: how
    sw/export_resnet.py deploys an identity shortcut. Its walker makes one update per event (the neuron of the
    same flat index) and its ROM holds only the C diagonal weights."""
    w = proj.weight
    if proj.kind != "conv2d" or w.shape[2:] != (1, 1) or w.shape[0] != w.shape[1]:
        return False
    if tuple(proj.stride) != (1, 1) or tuple(proj.padding) != (0, 0):
        return False
    square = w[:, :, 0, 0]
    return not (square - np.diag(np.diag(square))).any()


def weight_rom(proj: Projection) -> list[int]:
    """A projection's weight ROM, in the order its walker reads it: ``[ci][ky][kx][co]`` (dense: ``[j][o]``), or
    just the diagonal for a diagonal 1x1 conv."""
    if is_diagonal(proj):
        return [int(v) for v in np.diag(proj.weight[:, :, 0, 0])]
    if proj.kind == "conv2d":
        w = np.transpose(proj.weight, (1, 2, 3, 0))  # [ci, ky, kx, co]
    else:
        w = proj.weight.T  # [j, o]
    return [int(v) for v in w.reshape(-1)]
