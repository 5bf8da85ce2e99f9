"""Shared machinery of the hand-written autograd nodes (sw/fused.py's neurons, sw/folding.py's integer current):
torch.compile'd kernels made on first use, each with its own recompile limit, and gradients that autograd may
accumulate into in place.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["compiled", "accumulable", "RECOMPILE_LIMIT"]

_COMPILED: dict[Callable, Callable] = {}
# Each kernel is specialized (one compilation each) on T (the loop is unrolled), the current's rank and layout (an
# expanded first-layer current has stride 0 over T), the neuron's constants and the surrogate: a process that trains
# several configurations (a test session, a sweep) needs more than dynamo's default 8 versions of a kernel, and with
# fullgraph=True running out is an error, not a fallback. The higher limit applies to these kernels only. Since BN's
# backward (reductions) runs inside the backward kernel, Inductor also guards on the sizes its reduction plan depends
# on (e.g. rows <= 4096), and the full test session passed 64 versions of it (2026-12-04): hence 256.
RECOMPILE_LIMIT = 256


def compiled(kernel: Callable) -> Callable:
    """``torch.compile(kernel, dynamic=True, fullgraph=True)``, made on first use (compiling takes seconds; eager
    users never pay it) and kept for the process; each call runs under :data:`RECOMPILE_LIMIT`."""
    if kernel not in _COMPILED:
        compiled_kernel = torch.compile(kernel, dynamic=True, fullgraph=True)

        def run(*args):
            # the limit raised around the call, as config.patch(recompile_limit=...) would, but set and restored
            # by hand: patch() cost ~45 us per call (~35 calls per training step), this ~10 us (2026-12-04)
            config = torch._dynamo.config
            limit = config.recompile_limit
            config.recompile_limit = max(limit, RECOMPILE_LIMIT)
            try:
                return compiled_kernel(*args)
            finally:
                config.recompile_limit = limit

        _COMPILED[kernel] = run
    return _COMPILED[kernel]


def accumulable(grad: torch.Tensor) -> torch.Tensor:
    """A gradient a backward returns, as a tensor autograd may add the block's other gradient into in place. The
    engine sums two gradients of one tensor in place only if it holds the last reference to the first one and to its
    storage; a view (a permute, a reshape) keeps its base alive, so every residual join's two gradients were summed
    into a fresh [T, B, C, H, W] tensor (~0.35 s of a 10 s full-width benchmark step, 2026-12-04). ``detach()``
    gives the same memory without the view's hold on its base. Not under create_graph, where the gradient must stay
    in the graph."""
    return grad if torch.is_grad_enabled() else grad.detach()
