"""A fused multi-step LIF neuron for fast training: the whole [T, B, ...] sequence is one autograd node.

Mathematically it is :class:`~spikeforge.sw.neuron.LIF` (same charge / fire / reset, same surrogate objects), but
autograd no longer records ~10 small nodes per time step: the forward loop runs without a graph and saves only the
membrane before firing, and the backward loop is written by hand (exact BPTT, or a truncated/SLTT variant).
"""

from __future__ import annotations

import torch
from torch import nn

from .bn import SharedBN
from .kernels import accumulable, compiled as compiled_kernel
from .neuron import LIF, Surrogate, membrane_dtype as _compute_dtype

__all__ = ["lif_forward", "FusedLIFFunction", "FusedLIF", "fused_lif_neuron", "BNLIFFunction", "can_fuse_bn",
           "bn_lif"]


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
        before_fire = _charge(after_reset, current[t].to(compute), leak_shift)
        fired = (before_fire >= threshold).to(current.dtype)
        spikes.append(fired)
        membranes.append(before_fire.to(membrane_dtype))
        after_reset = before_fire - fired * threshold
    return torch.stack(spikes), torch.stack(membranes)


def _backward_kernel(grad_spikes, membranes, surrogate, threshold: float, leak_shift: int | None,
                     detach_reset: bool, window: int | None, dtype: torch.dtype):
    """The whole T-step exact/truncated BPTT backward as one elementwise program (see FusedLIFFunction)."""
    steps = [membranes[t].to(dtype) for t in range(membranes.shape[0])]
    return torch.stack(_bptt(grad_spikes, steps, surrogate, threshold, leak_shift, detach_reset, window))


def _bptt(grad_spikes, membranes: list, surrogate, threshold: float, leak_shift: int | None, detach_reset: bool,
          window: int | None) -> list:
    """dL/dI_t for every step from dL/dS_t and the membranes before firing V_t (FusedLIFFunction's equations)."""
    decay = 1.0 if leak_shift is None else 1.0 - 2.0 ** -leak_shift
    grad_after_reset, grads = None, []
    for t in range(len(membranes) - 1, -1, -1):
        membrane = membranes[t]
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
    return grads[::-1]


# ------------------------------------------------------------------- BN + LIF (+ residual current) as one node
# A population's training-mode current is BN(conv output) (+ the shortcut's current at a residual join). Run as
# separate modules, BN writes its output, the LIF reads it and saves its membranes, and BN's backward reads its
# input and the LIF's gradient twice more. Fused, the forward reads the conv output twice (statistics, then
# normalize + integrate + fire in one loop) and writes only the spikes; backward recomputes the membranes from the
# conv output and the SAVED spikes (so the reset path is the forward's, bit for bit, whatever the rounding of the
# recomputation) and produces BN's gradients in the same program. Saved per neuron: the conv output (which BN saves
# anyway) and 1 byte of spikes, instead of the conv output + a float membrane.

def _rows(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """x [T, ...] as a view in which each step is one dense block in memory order, so the compiled kernels run ONE
    flat vectorized loop (given [T, B, C, H, W] with channels_last steps, Inductor transposes 8x8 tiles in and out
    of NCHW order and splits the program into several loops; measured 1.6 GB/s instead of ~8). ``channels_last``
    (5-D only): [T, B*H*W, C]; otherwise [T, B, C, H*W] (5-D) or [T, n]. Copies only if x is not in that order;
    a step-expanded x (stride 0 over T) stays a view."""
    if channels_last:
        steps, batch, channels, height, width = x.shape
        return x.permute(0, 1, 3, 4, 2).reshape(steps, batch * height * width, channels)
    if x.ndim == 5:
        return x.reshape(*x.shape[:3], -1)
    return x.reshape(x.shape[0], -1)


def _unrows(rows: torch.Tensor, shape: torch.Size, channels_last: bool) -> torch.Tensor:
    """The inverse of :func:`_rows`: ``rows`` back to ``shape`` (channels_last steps when ``channels_last``)."""
    if channels_last:
        steps, batch, channels, height, width = shape
        return rows.view(steps, batch, height, width, channels).permute(0, 1, 4, 2, 3)
    return rows.view(shape)


def _steps_channels_last(x: torch.Tensor) -> bool:
    step = x[0]
    return x.ndim == 5 and step.is_contiguous(memory_format=torch.channels_last) and not step.is_contiguous()


def _charge(after_reset, current, leak_shift: int | None):
    """The membrane before firing: leak the membrane after the last reset (None at t = 0), add the current."""
    if after_reset is None:
        return current
    if leak_shift is None:
        return after_reset + current
    return after_reset - after_reset * (2.0 ** -leak_shift) + current


def _bn_lif_affine(gamma, beta, mean, var, eps: float, scale: float, channels_last: bool, compute: torch.dtype):
    """Per-channel a, d of BN(y) = a * y + d, shaped to broadcast over :func:`_rows` of y."""
    a = gamma.to(compute) * scale * torch.rsqrt(var + eps)  # tdBN: gamma * (scale * x_hat) + beta
    d = beta.to(compute) - mean * a
    return (a, d) if channels_last else (a.view(-1, 1), d.view(-1, 1))


def _bn_current(y, a, d, extra, t: int, compute: torch.dtype):
    """Step t's current: BN(y_t) = a * y_t + d, plus the shortcut's current (extra, or None) at a residual join."""
    current = y[t].to(compute) * a + d
    return current if extra is None else current + extra[t].to(compute)


def _bn_lif_forward_kernel(y, gamma, beta, extra, eps: float, scale: float, threshold: float,
                           leak_shift: int | None, channels_last: bool, compute: torch.dtype):
    """Batch statistics of y (rows of a [T, B, C, H, W] conv output), then the T-step LIF on a * y + d (+ extra):
    (spikes, the same spikes as uint8 for backward, mean, var), both spike tensors written by the same loop."""
    var, mean = torch.var_mean(y.to(compute), dim=(0, 1) if channels_last else (0, 1, 3), correction=0)
    a, d = _bn_lif_affine(gamma, beta, mean, var, eps, scale, channels_last, compute)
    after_reset, spikes, saved = None, [], []
    for t in range(y.shape[0]):
        before_fire = _charge(after_reset, _bn_current(y, a, d, extra, t, compute), leak_shift)
        fired = (before_fire >= threshold).to(y.dtype)
        spikes.append(fired)
        saved.append(fired.to(torch.uint8))
        after_reset = before_fire - fired * threshold
    return torch.stack(spikes), torch.stack(saved), mean, var


def _bn_lif_backward_kernel(grad_spikes, y, fired, extra, gamma, beta, mean, var, eps: float, scale: float,
                            surrogate, threshold: float, leak_shift: int | None, detach_reset: bool,
                            window: int | None, channels_last: bool, compute: torch.dtype,
                            extra_dtype: torch.dtype | None):
    """The node's whole backward: the membranes recomputed with the saved spikes (the forward's reset path, bit for
    bit), BPTT to dL/dcurrent, then BN's backward (of out = gamma' x_hat + beta, gamma' = scale * gamma) in the same
    program (one loop over the neurons for BPTT and the per-step terms of BN's two sums, one for dL/dy): returns
    (dL/dy, dL/dgamma, dL/dbeta, dL/dcurrent), the last for a residual join's shortcut (None without one), dL/dy in
    y's dtype and dL/dcurrent in ``extra_dtype`` (the casts of a bf16 run fused into the loops)."""
    a, d = _bn_lif_affine(gamma, beta, mean, var, eps, scale, channels_last, compute)
    after_reset, membranes = None, []
    for t in range(y.shape[0]):
        before_fire = _charge(after_reset, _bn_current(y, a, d, extra, t, compute), leak_shift)
        membranes.append(before_fire)
        after_reset = before_fire - fired[t].to(compute) * threshold
    grads = _bptt(grad_spikes.to(compute), membranes, surrogate, threshold, leak_shift, detach_reset, window)
    shape = (-1,) if channels_last else (-1, 1)
    invstd = torch.rsqrt(var + eps)

    def x_hat(t: int):
        return (y[t].to(compute) - mean.view(shape)) * invstd.view(shape)

    # BN's sums over (T, rows) as sums over the T steps first, elementwise in the BPTT loop, so the reductions
    # proper read [rows, C], not [T, rows, C] (with torch.sum over the stacked gradient, Inductor reread it in a
    # separate loop); x_hat is recomputed where needed, never stored
    dims = (0,) if channels_last else (0, 2)
    grad_beta = sum(grads).sum(dims)
    grad_gamma = sum(g * x_hat(t) for t, g in enumerate(grads)).sum(dims)  # of gamma'
    count = len(grads) * grads[0].numel() // gamma.shape[0]
    k = (gamma.to(compute) * scale * invstd).view(shape)
    mean_g, mean_gx = (grad_beta / count).view(shape), (grad_gamma / count).view(shape)
    grad_current = torch.stack(grads)  # written once, read back by dL/dy (indexing grads there stored it twice)
    grad_y = torch.stack([k * (grad_current[t] - mean_g - x_hat(t) * mean_gx) for t in range(len(grads))])
    return grad_y.to(y.dtype), grad_gamma * scale, grad_beta, None if extra is None else grad_current.to(extra_dtype)


def _widen(x: torch.Tensor | None) -> torch.Tensor | None:
    """A bf16 / fp16 CUDA tensor as float32 for the compiled kernels (others unchanged). Triton 3.6 with torch 2.11
    on an H200 failed to compile the kernels for bf16 inputs ("PassManager::run failed" in make_ttgir, 2026-12-04),
    and they compute in float32 anyway (``neuron.membrane_dtype``): widening first costs one copy and gives the
    same spikes and gradients. On the CPU the 16-bit kernels compile and run as they are."""
    if x is not None and x.is_cuda and x.dtype in (torch.bfloat16, torch.float16):
        return x.float()
    return x


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
        if compiled:  # on the flat steps (see _rows), returned in the current's shape and layout
            channels_last = _steps_channels_last(current)
            spikes, membranes = compiled_kernel(_forward_kernel)(
                _rows(_widen(current), channels_last).flatten(1), threshold, leak_shift, membrane_dtype or compute,
                compute)
            spikes = _unrows(spikes.to(current.dtype), current.shape, channels_last)
            membranes = _unrows(membranes, current.shape, channels_last)
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
            channels_last = _steps_channels_last(membranes)
            grad_current = compiled_kernel(_backward_kernel)(
                _rows(_widen(grad_spikes), channels_last).flatten(1), _rows(membranes, channels_last).flatten(1),
                surrogate, theta, ctx.leak_shift, ctx.detach_reset, window, ctx.dtype)
            grad_current = _unrows(grad_current, membranes.shape, channels_last)
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


# FusedLIF._traced runs a current whose steps are channels_last as [T, B, H, W, C] memory. Without it (False: the
# benchmark's "-nchwloop" ablation), the whole-model compile of the CPU benchmark took 1.249 s per step instead of
# 1.176 s (ResNet-18 widths / 4, in lockstep, 2026-12-04).
TRACE_STEPS_LAST = True


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
    * ``fuse_bn`` (with ``compiled``): where a model asks for it (:func:`bn_lif`, used by the spiking ResNet's
      blocks), the training-mode BN before this neuron and a residual join's shortcut current run inside the
      neuron's kernels (:class:`BNLIFFunction`); False keeps BN a separate module.

    Inside ``torch.compile`` of a whole model it traces LIF's step loop instead (see :meth:`_traced`).
    """

    def __init__(self, surrogate: Surrogate | str = "arctan", width: float = 0.5, *, threshold: float = 1.0,
                 leak_shift: int | None = None, detach_reset: bool = False, temporal_window: int | None = None,
                 membrane_dtype: torch.dtype | None = None, compiled: bool = False, fuse_bn: bool = True):
        # the same neuron as LIF (arguments, checks, charge/fire/reset); only forward runs fused
        super().__init__(surrogate, width, threshold=threshold, leak_shift=leak_shift, detach_reset=detach_reset)
        self.temporal_window = _check_window(temporal_window)
        self.membrane_dtype = membrane_dtype
        self.compiled = bool(compiled)
        self.fuse_bn = bool(fuse_bn)

    def extra_repr(self) -> str:
        return (f"surrogate={self.surrogate}, threshold={self.threshold:g}, leak_shift={self.leak_shift}, "
                f"detach_reset={self.detach_reset}, temporal_window={self.temporal_window}")

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        if current.ndim < 2:
            raise ValueError(f"FusedLIF takes a multi-step current [T, B, ...], not shape {list(current.shape)}")
        if torch.compiler.is_compiling():
            return self._traced(current)
        if not (torch.is_grad_enabled() and current.requires_grad):
            return lif_forward(current, threshold=self.threshold, leak_shift=self.leak_shift)[0]
        return FusedLIFFunction.apply(current, self.surrogate, self.threshold, self.leak_shift, self.detach_reset,
                                      self.temporal_window, self.membrane_dtype, self.compiled)

    def _traced(self, current: torch.Tensor) -> torch.Tensor:
        """What torch.compile of a whole model traces instead of the hand-written node: LIF's step loop (Inductor
        fuses it and picks what to save for backward), with the membrane detached at each ``temporal_window``
        boundary (the same truncation as FusedLIFFunction's backward; ``membrane_dtype`` does not apply).

        As in the node, a 16-bit CUDA current is widened to float32 first (:func:`_widen`), and here the spikes
        stay float32 (the node casts them back; 0 and 1 are exact either way, and a conv under autocast casts them
        to bf16 itself): the bf16 graph of the whole ResNet-18 failed to compile in Triton 3.6 on an H200
        (``PassManager::run failed`` in TritonGPURemoveLayoutConversions, "operand does not dominate this use", in
        the first stage's fused LIF kernel), and with float32 in and out it compiled and trained (2026-12-04).
        Channels_last steps run as plain [T, B, H, W, C] memory and go out in the node's layout
        (:func:`_empty_steps`)."""
        current = _widen(current)
        steps_last = TRACE_STEPS_LAST and _steps_channels_last(current)
        flat = current.permute(0, 1, 3, 4, 2) if steps_last else current
        membrane = torch.zeros_like(flat[0], dtype=_compute_dtype(flat.dtype))
        spikes = []
        for t in range(flat.shape[0]):
            if self.temporal_window is not None and t > 0 and t % self.temporal_window == 0:
                membrane = membrane.detach()
            fired, membrane = self.single_step(membrane, flat[t])
            spikes.append(fired)
        out = torch.stack(spikes).to(flat.dtype)
        return out.permute(0, 1, 4, 2, 3) if steps_last else out


def fused_lif_neuron(surrogate: str | Surrogate = "arctan", width: float = 0.5, *, leak_shift: int | None = None,
                     detach_reset: bool = False, threshold: float = 1.0, temporal_window: int | None = None,
                     sltt: bool = False, membrane_dtype: torch.dtype | None = None, compiled: bool = False,
                     fuse_bn: bool = True):
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
                        temporal_window=temporal_window, membrane_dtype=membrane_dtype, compiled=compiled,
                        fuse_bn=fuse_bn)

    return neuron


class BNLIFFunction(torch.autograd.Function):
    """``apply(y, gamma, beta, extra, extra_binary, eps, scale, neuron) -> (spikes, mean, var)``: training-mode
    batch norm of the conv output ``y [T, B, C, H, W]`` (statistics over T, B, H, W: the paper's BN shared by all
    steps; ``scale`` is tdBN's alpha * V_th, 1 for plain BN), plus ``extra`` (the shortcut current of a residual
    join, or None), integrated and fired by ``neuron`` (a FusedLIF) over the T steps, in two compiled kernels (see
    the comment above ``_bn_lif_forward_kernel``). ``mean`` and ``var`` (biased) are the batch statistics, for the
    caller's running-statistics update. ``extra_binary``: extra is spikes (an identity shortcut), saved as uint8.

    The gradients are exact BPTT through the LIF (the neuron's ``temporal_window`` applies) and exact BN backward;
    they equal the unfused modules' up to float rounding (the normalization is computed as a * y + d).
    """

    @staticmethod
    def forward(ctx, y, gamma, beta, extra, extra_binary, eps, scale, neuron):
        compute, channels_last = _compute_dtype(y.dtype), _steps_channels_last(y)
        extra = None if extra is None else _rows(extra, channels_last)
        spikes, fired, mean, var = compiled_kernel(_bn_lif_forward_kernel)(
            _rows(_widen(y), channels_last), gamma, beta, _widen(extra), eps, scale, neuron.threshold,
            neuron.leak_shift, channels_last, compute)
        spikes = spikes.to(y.dtype)
        # 0/1 saved as uint8, not bool: Inductor's CPU kernels load bool through a slow mask path (the backward
        # took 65 ms instead of 34 ms for a [10, 32768, 64] node with an identity shortcut, 2026-12-04)
        saved_extra = None if extra is None else (extra.to(torch.uint8) if extra_binary else extra)
        ctx.save_for_backward(y, fired, saved_extra, gamma, beta, mean, var)
        ctx.eps, ctx.scale, ctx.neuron, ctx.compute, ctx.channels_last = eps, scale, neuron, compute, channels_last
        ctx.extra_dtype = None if extra is None else extra.dtype
        ctx.mark_non_differentiable(mean, var)
        return _unrows(spikes, y.shape, channels_last), mean, var

    @staticmethod
    def backward(ctx, grad_spikes, _grad_mean, _grad_var):
        y, fired, extra, gamma, beta, mean, var = ctx.saved_tensors
        n, channels_last = ctx.neuron, ctx.channels_last
        grad_y, grad_weight, grad_beta, grad_current = compiled_kernel(_bn_lif_backward_kernel)(
            _rows(_widen(grad_spikes), channels_last), _rows(_widen(y), channels_last), fired, _widen(extra), gamma,
            beta, mean, var,
            ctx.eps, ctx.scale, n.surrogate, n.threshold, n.leak_shift, n.detach_reset, n.temporal_window,
            channels_last, ctx.compute, ctx.extra_dtype)
        # (the casts are no-ops but where _widen gave the kernel a float32 copy of a 16-bit CUDA tensor)
        grad_extra = None if ctx.extra_dtype is None else \
            accumulable(_unrows(grad_current, y.shape, channels_last).to(ctx.extra_dtype))
        return (_unrows(grad_y, y.shape, channels_last).to(y.dtype), grad_weight.to(gamma.dtype),
                grad_beta.to(beta.dtype), grad_extra, None, None, None, None)


def _plain_bn(bn: nn.Module):
    """The BatchNorm2d inside a SharedBN / TdBN that the fused node can replace, or None."""
    norm = getattr(bn, "norm", None)  # TdBN is a SharedBN with a scale
    if not isinstance(bn, SharedBN) or type(norm) is not nn.BatchNorm2d:
        return None
    if not (norm.training and norm.affine and norm.track_running_stats):
        return None
    return norm


def can_fuse_bn(bn: nn.Module, neuron: nn.Module, y: torch.Tensor) -> bool:
    """Whether :func:`bn_lif` can run ``bn`` and ``neuron`` on the conv output ``y`` as one node: a training
    step (grad enabled, BN in training mode with affine and running statistics) of a compiled FusedLIF with
    ``fuse_bn``, a shared BN or tdBN over [T, B, C, H, W], and nobody watching the current (a hook on the neuron,
    as ``spikeforge gradflow`` places, needs the current as a tensor: then the modules run separately). Never
    inside torch.compile of a whole model: Inductor traces the separate modules and fuses them itself."""
    return (type(neuron) is FusedLIF and neuron.compiled and neuron.fuse_bn and y.ndim == 5
            and torch.is_grad_enabled() and not torch.compiler.is_compiling() and _plain_bn(bn) is not None
            and not (neuron._forward_pre_hooks or neuron._forward_hooks))


def bn_lif(bn: nn.Module, neuron: FusedLIF, y: torch.Tensor, extra: torch.Tensor | None = None, *,
           extra_binary: bool = False) -> torch.Tensor:
    """``neuron(bn(y) + extra)`` as one fused node (:class:`BNLIFFunction`), updating BN's running statistics as
    ``nn.BatchNorm2d`` does; call only where :func:`can_fuse_bn` holds."""
    norm = _plain_bn(bn)
    spikes, mean, var = BNLIFFunction.apply(y, norm.weight, norm.bias, extra, extra_binary, norm.eps,
                                            float(bn.scale), neuron)
    with torch.no_grad():  # nn.BatchNorm2d's running-statistics update, unbiased variance
        norm.num_batches_tracked.add_(1)
        factor = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
        count = y.numel() // y.shape[2]
        norm.running_mean.lerp_(mean.to(norm.running_mean.dtype), factor)
        norm.running_var.lerp_((var * (count / max(count - 1, 1))).to(norm.running_var.dtype), factor)
    return spikes
