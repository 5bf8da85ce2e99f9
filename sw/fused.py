"""A fused multi-step LIF neuron for fast training: the whole [T, B, ...] sequence is one autograd node.

Mathematically it is :class:`~spikeforge.sw.neuron.LIF` (same charge / fire / reset, same surrogate objects), but
autograd no longer records ~10 small nodes per time step: the forward loop runs without a graph and saves only the
membrane before firing, and the backward loop is written by hand (exact BPTT, or a truncated/SLTT variant).
"""

from __future__ import annotations

import torch
from torch import nn

from .neuron import LIF, Surrogate, membrane_dtype as _compute_dtype

__all__ = ["lif_forward", "FusedLIFFunction", "FusedLIF", "fused_lif_neuron", "SpikeConv2dFunction",
           "spike_input_convs"]


def _check_window(temporal_window: int | None) -> int | None:
    if temporal_window is not None and not (isinstance(temporal_window, int) and temporal_window >= 1):
        raise ValueError(f"temporal_window must be None (exact BPTT) or a positive integer (1 = SLTT), "
                         f"not {temporal_window!r}")
    return temporal_window


def _empty_steps(like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized [T, B, ...] tensor whose steps have the memory format of ``like[0]`` (channels_last
    stays channels_last, so the next conv gets it without a reorder); ``like`` may be expanded over T."""
    step = like[0]
    if step.ndim == 4 and step.is_contiguous(memory_format=torch.channels_last) and not step.is_contiguous():
        batch, channels, height, width = step.shape
        return torch.empty(like.shape[0], batch, height, width, channels, dtype=dtype,
                           device=like.device).permute(0, 1, 4, 2, 3)
    return torch.empty(like.shape, dtype=dtype, device=like.device)


def lif_forward(current: torch.Tensor, *, threshold: float, leak_shift: int | None,
                membrane_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The LIF recurrence over ``current[T, B, ...]`` without autograd: returns (spikes, membrane before firing).

    The float operations are those of :meth:`LIF.single_step` in the same order (leak as V - V * 2^-k, then + I;
    reset as V - S * theta), so the spikes are bit-identical. ``(V - theta) / theta >= 0`` is ``V >= theta``: IEEE
    subtraction of two different finite numbers is never 0, and dividing by theta > 0 keeps the sign. A bf16 / fp16
    current integrates in float32, like LIF (``neuron.membrane_dtype``); the spikes have the current's dtype.
    """
    compute = _compute_dtype(current.dtype)
    spikes = _empty_steps(current, current.dtype)
    membranes = _empty_steps(current, membrane_dtype or compute)
    exact_store = membranes.dtype == compute
    after_reset = before_fire = None
    for t in range(current.shape[0]):
        # written with out= into preallocated buffers: ~4 memory passes per step, no temporaries
        before_fire = membranes[t] if exact_store else before_fire
        if t == 0:
            before_fire = before_fire.copy_(current[0]) if exact_store else current[0].to(compute, copy=True)
        elif leak_shift is not None:
            # u + (-2^-k) u rounds u (1 - 2^-k) once, like LIF's u - u * 2^-k (u * 2^-k is exact)
            before_fire = torch.add(after_reset, after_reset, alpha=-(2.0 ** -leak_shift), out=before_fire)
            before_fire.add_(current[t])
        else:
            before_fire = torch.add(after_reset, current[t], out=before_fire)
        if not exact_store:
            membranes[t].copy_(before_fire)
        torch.ge(before_fire, threshold, out=spikes[t])
        # V - theta * S: theta * S is exact for S in {0, 1}, so this is LIF's reset bit for bit
        after_reset = torch.sub(before_fire, spikes[t], alpha=threshold, out=after_reset)
    return spikes, membranes


def _forward_kernel(current, threshold: float, leak_shift: int | None, membrane_dtype: torch.dtype,
                    compute: torch.dtype):
    """The whole T-step forward as one elementwise program, returning (spikes, membranes before firing): under
    torch.compile the unrolled loop becomes ONE fused loop over the neurons that reads each current once and
    writes each spike and membrane once. The membrane is kept in ``compute`` (float32 for a bf16 / fp16 current)."""
    after_reset, spikes, membranes = None, [], []
    for t in range(current.shape[0]):
        step = current[t].to(compute)
        if after_reset is None:
            before_fire = step
        elif leak_shift is None:
            before_fire = after_reset + step
        else:
            before_fire = after_reset - after_reset * (2.0 ** -leak_shift) + step
        fired = (before_fire >= threshold).to(current.dtype)
        spikes.append(fired)
        membranes.append(before_fire.to(membrane_dtype))
        after_reset = before_fire - fired * threshold
    return torch.stack(spikes), torch.stack(membranes)


def _backward_kernel(grad_spikes, membranes, surrogate, threshold: float, leak_shift: int | None,
                     detach_reset: bool, window: int | None, dtype: torch.dtype):
    """The whole T-step exact/truncated BPTT backward as one elementwise program (see FusedLIFFunction)."""
    decay = 1.0 if leak_shift is None else 1.0 - 2.0 ** -leak_shift
    grad_after_reset, grads = None, []
    for t in range(membranes.shape[0] - 1, -1, -1):
        membrane = membranes[t].to(dtype)
        if threshold == 1.0:
            slope = surrogate.derivative(membrane - 1.0)
        else:
            slope = surrogate.derivative((membrane - threshold) / threshold) / threshold
        if grad_after_reset is None:
            grad_membrane = grad_spikes[t] * slope
        else:
            fire = grad_spikes[t] if detach_reset else grad_spikes[t] - threshold * grad_after_reset
            grad_membrane = grad_after_reset + fire * slope
        grads.append(grad_membrane)
        cut = t == 0 or (window is not None and t % window == 0)
        grad_after_reset = None if cut else grad_membrane * decay
    return torch.stack(grads[::-1])


_COMPILED: dict[str, object] = {}
# Each kernel is specialized (one compilation each) on T (the loop is unrolled), the current's rank and layout (an
# expanded first-layer current has stride 0 over T), the neuron's constants and the surrogate: a process that trains
# several configurations (a test session, a sweep) needs more than dynamo's default 8 versions of a kernel, and with
# fullgraph=True running out is an error, not a fallback. The higher limit applies to these two kernels only.
RECOMPILE_LIMIT = 64


def _compiled(name: str):
    """torch.compile of a kernel above, made on first use (compiling takes seconds; eager users never pay it)."""
    if name not in _COMPILED:
        kernel = torch.compile({"forward": _forward_kernel, "backward": _backward_kernel}[name], dynamic=True,
                               fullgraph=True)

        def run(*args):
            with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
                return kernel(*args)

        _COMPILED[name] = run
    return _COMPILED[name]


class FusedLIFFunction(torch.autograd.Function):
    """``apply(current, surrogate, threshold, leak_shift, detach_reset, temporal_window, membrane_dtype)``.

    Backward, with x_t = (V_t - theta) / theta, g = surrogate.derivative(x_t) / theta = dS_t/dV_t and
    lambda = 1 - 2^-k (1 without leak), going from t = T-1 down to 0::

        dL/dS_t (total) = grad_spikes[t] - theta * dL/dU_t        (the reset; no second term with detach_reset)
        dL/dV_t         = dL/dU_t + dL/dS_t (total) * g
        dL/dI_t         = dL/dV_t,    dL/dU_{t-1} = lambda * dL/dV_t

    where U_t = V_t - theta S_t is the membrane after the reset. ``temporal_window = k`` zeroes dL/dU_{t-1} at
    every step boundary where t is a multiple of k (truncated BPTT in windows of k steps; k = 1 is SLTT, whose
    backward then needs no loop at all).
    """

    @staticmethod
    def forward(ctx, current, surrogate, threshold, leak_shift, detach_reset, temporal_window, membrane_dtype,
                compiled=False):
        compute = _compute_dtype(current.dtype)
        if compiled:
            spikes, membranes = _compiled("forward")(current, threshold, leak_shift, membrane_dtype or compute,
                                                     compute)
        else:
            spikes, membranes = lif_forward(current, threshold=threshold, leak_shift=leak_shift,
                                            membrane_dtype=membrane_dtype)
        ctx.compiled = compiled
        ctx.save_for_backward(membranes)
        ctx.surrogate, ctx.threshold, ctx.leak_shift = surrogate, threshold, leak_shift
        ctx.detach_reset, ctx.temporal_window, ctx.dtype = detach_reset, temporal_window, compute
        ctx.current_dtype = current.dtype  # the gradient goes back in it; the recurrence runs in ctx.dtype
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        (membranes,) = ctx.saved_tensors
        theta, surrogate, window = ctx.threshold, ctx.surrogate, ctx.temporal_window

        def slope(t):  # dS/dV = g = derivative((V - theta) / theta) / theta; theta = 1 skips two exact no-ops
            membrane = membranes[t].to(ctx.dtype)
            if theta == 1.0:
                return surrogate.derivative(membrane - 1.0)
            return surrogate.derivative((membrane - theta) / theta) / theta

        if ctx.compiled and window != 1:
            grad_current = _compiled("backward")(grad_spikes, membranes, surrogate, theta, ctx.leak_shift,
                                                 ctx.detach_reset, window, ctx.dtype)
            return grad_current.to(ctx.current_dtype), None, None, None, None, None, None, None
        slope = slope(slice(None))  # all steps at once: a few large vectorized passes
        if window == 1:  # SLTT: no temporal path at all
            return (grad_spikes * slope).to(ctx.current_dtype), None, None, None, None, None, None, None
        # dL/dV_t = b_t + c_t * dL/dV_{t+1} with b_t = grad_spikes[t] * g_t and c_t = lambda (1 - theta g_t)
        # (c_t = lambda with detach_reset): a linear recurrence, one fused multiply-add per step
        decay = 1.0 if ctx.leak_shift is None else 1.0 - 2.0 ** -ctx.leak_shift
        grad_current = torch.mul(grad_spikes, slope)
        if not ctx.detach_reset:
            carry = slope.mul_(-theta * decay).add_(decay)
        for t in range(membranes.shape[0] - 2, -1, -1):
            if window is not None and (t + 1) % window == 0:
                continue  # the membrane was cut between t and t + 1
            if ctx.detach_reset:
                grad_current[t].add_(grad_current[t + 1], alpha=decay)
            else:
                grad_current[t].addcmul_(carry[t], grad_current[t + 1])
        return grad_current.to(ctx.current_dtype), None, None, None, None, None, None, None


class FusedLIF(LIF):
    """:class:`~spikeforge.sw.neuron.LIF` with a fused forward/backward over all T steps (same arguments, same
    ``forward(current[T, B, ...]) -> spikes[T, B, ...]``, same spikes and exact BPTT gradients).

    Extra options:

    * ``temporal_window``: None = exact BPTT; k = truncated BPTT (the gradient through the membrane is cut every
      k steps); 1 = SLTT (spatial learning through time: no gradient through the membrane between steps).
    * ``membrane_dtype``: the dtype in which the membrane is kept for backward (None = the current's dtype, exact;
      ``torch.bfloat16`` halves that memory at the cost of surrogate slopes evaluated at a rounded membrane).
    * ``compiled``: run the T-step forward and backward loops as two torch.compile'd elementwise kernels (one
      pass over memory each instead of ~5 per step; the first call of each shape compiles for seconds).
    """

    def __init__(self, surrogate: Surrogate | str = "arctan", width: float = 0.5, *, threshold: float = 1.0,
                 leak_shift: int | None = None, detach_reset: bool = False, temporal_window: int | None = None,
                 membrane_dtype: torch.dtype | None = None, compiled: bool = False):
        # the same neuron as LIF (arguments, checks, charge/fire/reset); only forward runs fused
        super().__init__(surrogate, width, threshold=threshold, leak_shift=leak_shift, detach_reset=detach_reset)
        self.temporal_window = _check_window(temporal_window)
        self.membrane_dtype = membrane_dtype
        self.compiled = bool(compiled)

    def extra_repr(self) -> str:
        return (f"surrogate={self.surrogate}, threshold={self.threshold:g}, leak_shift={self.leak_shift}, "
                f"detach_reset={self.detach_reset}, temporal_window={self.temporal_window}")

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        if current.ndim < 2:
            raise ValueError(f"FusedLIF takes a multi-step current [T, B, ...], not shape {list(current.shape)}")
        if not (torch.is_grad_enabled() and current.requires_grad):
            return lif_forward(current, threshold=self.threshold, leak_shift=self.leak_shift)[0]
        return FusedLIFFunction.apply(current, self.surrogate, self.threshold, self.leak_shift, self.detach_reset,
                                      self.temporal_window, self.membrane_dtype, self.compiled)


def fused_lif_neuron(surrogate: str | Surrogate = "arctan", width: float = 0.5, *, leak_shift: int | None = None,
                     detach_reset: bool = False, threshold: float = 1.0, temporal_window: int | None = None,
                     sltt: bool = False, membrane_dtype: torch.dtype | None = None, compiled: bool = False):
    """A neuron factory for :class:`~spikeforge.sw.resnet.SpikingResNet` (``neuron=``), like
    :func:`~spikeforge.sw.resnet.lif_neuron` but building :class:`FusedLIF`; ``sltt=True`` is
    ``temporal_window=1``."""
    if sltt:
        if temporal_window not in (None, 1):
            raise ValueError(f"sltt=True means temporal_window=1; do not also pass temporal_window={temporal_window!r}")
        temporal_window = 1
    _check_window(temporal_window)

    def neuron() -> FusedLIF:
        return FusedLIF(surrogate, width, threshold=threshold, leak_shift=leak_shift, detach_reset=detach_reset,
                        temporal_window=temporal_window, membrane_dtype=membrane_dtype, compiled=compiled)

    return neuron


class SpikeConv2dFunction(torch.autograd.Function):
    """conv2d whose input is known to be binary spikes: saved for the weight gradient as bool (1 byte instead of
    4) and turned back into float, exactly, in backward. ``apply(x, weight, stride, padding)``, no bias.

    Under autocast (``torch.autocast(device, dtype)``) it computes like autocast's own conv2d: input, weight and
    (in backward) the output gradient in the autocast dtype; the gradients go back in the input's and the
    weight's own dtypes."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding):
        device = x.device.type
        dtype = torch.promote_types(x.dtype, weight.dtype)
        if torch.is_autocast_enabled(device) and dtype != torch.float64:  # autocast leaves float64 alone
            dtype = torch.get_autocast_dtype(device)
        ctx.save_for_backward(x.to(torch.bool) if x.requires_grad or weight.requires_grad else x, weight)
        ctx.dtype, ctx.x_dtype, ctx.stride, ctx.padding = dtype, x.dtype, stride, padding
        ctx.channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous()
        with torch.autocast(device, enabled=False):
            return torch.nn.functional.conv2d(x.to(dtype), weight.to(dtype), None, stride, padding)

    @staticmethod
    def backward(ctx, grad_out):
        packed, weight = ctx.saved_tensors
        x = packed.to(ctx.dtype)
        if ctx.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad_out.to(ctx.dtype), x, weight.to(ctx.dtype), None, list(ctx.stride), list(ctx.padding), [1, 1],
            False, [0, 0], 1, [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False])
        return (None if grad_x is None else grad_x.to(ctx.x_dtype),
                None if grad_w is None else grad_w.to(weight.dtype), None, None)


class _SpikeInputConv2d(nn.Conv2d):
    """An nn.Conv2d (same parameters and state dict) whose training forward saves its binary input as bool."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is not None or self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros" \
                or not torch.is_grad_enabled() or isinstance(self.padding, str):
            return super().forward(x)
        return SpikeConv2dFunction.apply(x, self.weight, self.stride, self.padding)


def spike_input_convs(model: nn.Module, *, skip: tuple[str, ...] = ("stem",)) -> nn.Module:
    """Make every plain ``nn.Conv2d`` of a spiking model (all but the modules named in ``skip``, whose input is the
    graded image) save its input as bool for backward; parameters, state dict and results are unchanged.

    Only valid where each such conv's input is spikes (0/1): true of every hidden conv of
    :class:`~spikeforge.sw.resnet.SpikingResNet`. Returns ``model``.
    """
    for name, module in model.named_modules():
        if type(module) is nn.Conv2d and not any(name == s or name.startswith(s + ".") for s in skip):
            module.__class__ = _SpikeInputConv2d
    return model
