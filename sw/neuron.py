"""Spiking neurons for training: surrogate-gradient spike functions and a multi-step LIF neuron.

The forward pass is the deployed arithmetic's shape (Heaviside spikes, reset by subtraction, a shift leak); the
backward pass replaces the Heaviside's zero-almost-everywhere derivative by a surrogate of adjustable width.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["Surrogate", "Rectangular", "Triangular", "FastSigmoid", "ArcTan", "Sigmoid", "SURROGATES",
           "make_surrogate", "membrane_dtype", "spike", "LIF"]


class _SpikeFunction(torch.autograd.Function):
    """Heaviside forward (x >= 0 spikes), the surrogate's derivative backward."""

    @staticmethod
    def forward(ctx, x, surrogate):
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * ctx.surrogate.derivative(x), None


class Surrogate:
    """A smoothed Heaviside step used only for its derivative.

    Every surrogate here is a proper smoothed step: its derivative integrates to 1 over the real line, and ``width``
    measures how far from the threshold (in units of the threshold, x = (V - theta) / theta) it still passes a
    gradient. A wider surrogate lets gradient reach neurons far from firing (fights vanishing gradients) but
    adds more mismatch per layer (products of many large derivatives explode); a narrower one is more faithful but
    starves neurons that never come near the threshold.
    """

    name = "surrogate"

    def __init__(self, width: float = 0.5):
        width = float(width)
        if not width > 0 or not math.isfinite(width):
            raise ValueError(f"a surrogate's width must be a positive number, not {width!r}")
        self.width = width

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _SpikeFunction.apply(x, self)

    def primitive(self, x: torch.Tensor) -> torch.Tensor:
        """The smooth step whose derivative is :meth:`derivative` (rises from 0 to 1 around x = 0)."""
        raise NotImplementedError

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(width={self.width:g})"


class Rectangular(Surrogate):
    """Box: 1/w on |x| < w/2, else 0."""

    name = "rectangular"

    def primitive(self, x):
        return torch.clamp(x / self.width + 0.5, 0.0, 1.0)

    def derivative(self, x):
        return (x.abs() < self.width / 2).to(x.dtype) / self.width


class Triangular(Surrogate):
    """Triangle: (1/w) * max(0, 1 - |x|/w), support [-w, w]."""

    name = "triangular"

    def primitive(self, x):
        w = self.width
        y = torch.clamp(x / w, -1.0, 1.0)
        return 0.5 + y - y * y.abs() / 2

    def derivative(self, x):
        return torch.clamp(1.0 - x.abs() / self.width, min=0.0) / self.width


class FastSigmoid(Surrogate):
    """SuperSpike's fast sigmoid: w / (2 (w + |x|)^2), i.e. 1/(1 + |x|/w)^2 scaled to unit area."""

    name = "fast_sigmoid"

    def primitive(self, x):
        return 0.5 + 0.5 * x / (self.width + x.abs())

    def derivative(self, x):
        return 0.5 * self.width / (self.width + x.abs()) ** 2


class ArcTan(Surrogate):
    """Arctan: (1/2w) / (1 + (pi x / 2w)^2); SpikingJelly's ATan(alpha) is width = 1/alpha."""

    name = "arctan"

    def primitive(self, x):
        return 0.5 + torch.atan(math.pi / 2 * x / self.width) / math.pi

    def derivative(self, x):
        return (0.5 / self.width) / (1.0 + (math.pi / 2 * x / self.width) ** 2)


class Sigmoid(Surrogate):
    """Logistic: sigmoid(x/w)' = s (1 - s) / w; SpikingJelly's Sigmoid(alpha) is width = 1/alpha."""

    name = "sigmoid"

    def primitive(self, x):
        return torch.sigmoid(x / self.width)

    def derivative(self, x):
        s = torch.sigmoid(x / self.width)
        return s * (1.0 - s) / self.width


SURROGATES = {cls.name: cls for cls in (Rectangular, Triangular, FastSigmoid, ArcTan, Sigmoid)}


def membrane_dtype(current_dtype: torch.dtype) -> torch.dtype:
    """The dtype a neuron integrates its membrane in: float32 for a low-precision current (bf16 / fp16 under
    mixed precision, where rounding the running membrane every step would move the spike times), else the
    current's own dtype. Spikes go out in the current's dtype (0 and 1 are exact in every float format)."""
    return torch.float32 if current_dtype in (torch.float16, torch.bfloat16) else current_dtype


def make_surrogate(kind: str | Surrogate = "arctan", width: float = 0.5) -> Surrogate:
    """A surrogate by name (one of :data:`SURROGATES`), or the given object unchanged."""
    if isinstance(kind, Surrogate):
        return kind
    try:
        return SURROGATES[kind](width)
    except KeyError:
        raise ValueError(f"unknown surrogate {kind!r}; choose one of {sorted(SURROGATES)}") from None


def spike(x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:
    """Heaviside(x) with the surrogate's gradient."""
    return surrogate(x)


class LIF(nn.Module):
    """A leaky integrate-and-fire neuron, multi-step: ``forward(current[T, B, ...]) -> spikes[T, B, ...]``.

    One step is three named stages, the integer semantics of docs/semantics.md in float:

    * ``charge``: V <- leak(V) + I, with leak(V) = V - V * 2^-k (k = ``leak_shift``; None = integrate-and-fire).
      The deployed leak floors V >> k on an integer scale the float model does not know; the float step is the
      same map without the flooring (a straight-through view of it).
    * ``fire``: S = Heaviside(V - theta), theta = ``threshold`` (1.0: the exporter puts each channel's scale into
      its integer threshold); the surrogate sees (V - theta) / theta.
    * ``reset``: V <- V - S * theta (reset by subtraction, as in the hardware).

    V starts at 0 for every sequence and is kept in :func:`membrane_dtype` (float32 for a bf16 / fp16 current
    under mixed precision); the spikes have the current's dtype. ``detach_reset`` stops the gradient through the
    reset path (SpikingJelly's option; off by default).
    """

    def __init__(self, surrogate: Surrogate | str = "arctan", width: float = 0.5, *, threshold: float = 1.0,
                 leak_shift: int | None = None, detach_reset: bool = False):
        super().__init__()
        if leak_shift is not None and not (isinstance(leak_shift, int) and 1 <= leak_shift <= 15):
            raise ValueError(f"leak_shift must be None (integrate-and-fire) or an integer in 1..15, not {leak_shift!r}")
        if not threshold > 0:
            raise ValueError(f"threshold must be positive, not {threshold!r}")
        self.surrogate = make_surrogate(surrogate, width)
        self.threshold = float(threshold)
        self.leak_shift = leak_shift
        self.detach_reset = detach_reset

    def extra_repr(self) -> str:
        return (f"surrogate={self.surrogate}, threshold={self.threshold:g}, leak_shift={self.leak_shift}, "
                f"detach_reset={self.detach_reset}")

    def leak(self, membrane: torch.Tensor) -> torch.Tensor:
        if self.leak_shift is None:
            return membrane
        return membrane - membrane * (2.0 ** -self.leak_shift)

    def charge(self, membrane: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        return self.leak(membrane) + current

    def fire(self, membrane: torch.Tensor) -> torch.Tensor:
        return self.surrogate((membrane - self.threshold) / self.threshold)

    def reset(self, membrane: torch.Tensor, spikes: torch.Tensor) -> torch.Tensor:
        if self.detach_reset:
            spikes = spikes.detach()
        return membrane - spikes * self.threshold

    def single_step(self, membrane: torch.Tensor, current: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step: returns (spikes, new membrane)."""
        membrane = self.charge(membrane, current)
        spikes = self.fire(membrane)
        return spikes, self.reset(membrane, spikes)

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        membrane = torch.zeros_like(current[0], dtype=membrane_dtype(current.dtype))
        spikes = []
        for t in range(current.shape[0]):
            s, membrane = self.single_step(membrane, current[t])
            spikes.append(s)
        return torch.stack(spikes).to(current.dtype)
