"""The events every unit of the accelerator speaks, and the facts about projections that the units share: an event
names one neuron of its population (channel, row, column, flat index) with a value (the pixel for the input, 1 for
a spike); an end-of-step token follows the last event of each time step.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Const, unsigned
from amaranth.lib import data

from spikeforge.netimage import Population, Projection

__all__ = ["times_constant", "index_bits", "event_layout", "projection_groups", "is_diagonal", "weight_words",
           "grid", "channel_words", "lane_limit", "DEFAULT_MAX_LANES"]

# the widest lane count chosen when the caller gives none (one accumulation per lane per cycle)
DEFAULT_MAX_LANES = 16


def times_constant(value, constant: int):
    """``value * constant`` as a sum of shifted copies of ``value``: synth_ice40 -dsp would spend one of the UP5K's
    8 DSP blocks on every multiplication, constants included, and those are reserved for the pixel products."""
    constant = int(constant)
    assert constant >= 0
    terms = [value << bit for bit in range(constant.bit_length()) if constant >> bit & 1]
    if not terms:
        return Const(0, 1)
    result = terms[0]
    for term in terms[1:]:
        result = result + term
    return result


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


def grid(pop: Population) -> tuple[int, int, int]:
    """(C, H, W) of a population; a 1-D ``[N]`` population is N channels of 1 x 1."""
    if len(pop.shape) == 3:
        return tuple(int(v) for v in pop.shape)
    return int(pop.shape[0]), 1, 1


def lane_limit(pop: Population) -> int:
    """The most output-channel lanes a population can use: its channels; a readout with H x W > 1 takes one lane,
    so that its results still leave in flat index order."""
    c, h, w = grid(pop)
    return 1 if pop.kind == "readout" and h * w > 1 else c


def channel_words(pop: Population, lanes: int) -> int:
    """Channel groups of ``lanes`` channels: the membrane holds ``channel_words x H x W`` words of ``lanes``
    neurons, word ``(c // lanes) * H * W + y * W + x``, lane ``c % lanes``."""
    return -(-grid(pop)[0] // lanes)


def weight_words(proj: Projection, pop: Population, lanes: int) -> list[list[int]]:
    """A projection's weight ROM with ``lanes`` weights per word, in the order its walker reads it.

    conv2d: ``[ci][ky][kx][channel word]``, lane b of word g holding output channel ``g * lanes + b``; dense:
    ``[source neuron][membrane word]``, lane b of word ``g * H * W + yx`` holding output neuron
    ``(g * lanes + b) * H * W + yx``; a diagonal 1x1 conv: one weight per channel (the walker puts it in its lane).
    Lanes past the last channel hold 0.
    """
    if is_diagonal(proj):
        return [[int(v)] for v in np.diag(proj.weight[:, :, 0, 0])]
    c, h, w = grid(pop)
    groups = channel_words(pop, lanes)
    if proj.kind == "conv2d":
        weight = np.transpose(proj.weight, (1, 2, 3, 0))  # [ci, ky, kx, co]
        padded = np.zeros((*weight.shape[:3], groups * lanes), np.int64)
        padded[..., :c] = weight
        return padded.reshape(-1, lanes).tolist()
    weight = proj.weight.T.reshape(-1, c, h * w)  # [j, co, yx]
    padded = np.zeros((weight.shape[0], groups * lanes, h * w), np.int64)
    padded[:, :c] = weight
    # [j, g, b, yx] -> [j, g, yx, b]
    return padded.reshape(weight.shape[0], groups, lanes, h * w).transpose(0, 1, 3, 2).reshape(-1, lanes).tolist()
