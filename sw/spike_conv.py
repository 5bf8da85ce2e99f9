"""Convolutions whose input is binary spikes, for training spiking ResNets: the hidden convs save their input for
the weight gradient as bool (exact, a quarter of the bytes) and, on the CPU, compute forward and weight gradient
from the active spikes only (sw/event_conv.py's kernels: cost follows spikes, not neurons).

:func:`spike_input_convs` turns a model's plain convs into these; parameters, state dict and results stay those of
``nn.Conv2d`` (up to float summation order for the event-driven ones). Also here: the oneDNN weight-gradient hang
that decides which convs must stay in NCHW.
"""

from __future__ import annotations

import torch
from torch import nn

from . import event_conv

__all__ = ["SpikeConv2dFunction", "SpikeInputConv2d", "EventInputConv2d", "spike_input_convs",
           "onednn_weight_grad_hangs", "onednn_hang_conv"]


def onednn_weight_grad_hangs(in_channels: int, kernel_size, stride) -> bool:
    """oneDNN in torch 2.13's CPU build (seen on AVX2 EPYCs) hangs, or corrupts the heap, computing the weight
    gradient of a 1x1 stride-2 conv in channels_last with few input channels (a narrow ResNet's downsample
    shortcut): 3, 4 or 6 at once, 1 and 2 after a few to a few tens of steps (2026-12-04). True for the shapes to keep
    in NCHW (all below 8 input channels), where every operand must have NCHW's own strides (``_nchw``). Whole-model
    torch.compile avoids it by turning off Inductor's channels_last layout choice on CPU."""
    return tuple(kernel_size) == (1, 1) and tuple(stride) != (1, 1) and in_channels < 8


def onednn_hang_conv(model: nn.Module) -> str | None:
    """The name of ``model``'s first conv with the shape of :func:`onednn_weight_grad_hangs`, or None."""
    return next((name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)
                 and onednn_weight_grad_hangs(m.in_channels, m.kernel_size, m.stride)), None)


def _nchw(t: torch.Tensor) -> torch.Tensor:
    """``t`` with NCHW's own (row-major) strides. ``.contiguous()`` is not enough for oneDNN's layout choice: a
    tensor with a size-1 dimension (a 1x1 weight, a 1-channel input) counts as contiguous in both layouts and keeps
    strides that oneDNN reads as channels_last, and an expanded output gradient has zero strides."""
    stride, strides = 1, []
    for size in reversed(t.shape):
        strides.append(stride)
        stride *= max(size, 1)
    return t if t.stride() == tuple(reversed(strides)) else t.clone(memory_format=torch.contiguous_format)


class SpikeConv2dFunction(torch.autograd.Function):
    """conv2d whose input is known to be binary spikes: saved for the weight gradient as bool (1 byte instead of
    4) and turned back into float, exactly, in backward (16-bit spikes in the conv's own dtype are saved as they
    are). ``apply(x, weight, stride, padding)``, no bias.

    Under autocast (``torch.autocast(device, dtype)``) it computes like autocast's own conv2d: input, weight and
    (in backward) the output gradient in the autocast dtype; the gradients go back in the input's and the
    weight's own dtypes."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding):
        device = x.device.type
        dtype = torch.promote_types(x.dtype, weight.dtype)
        if torch.is_autocast_enabled(device) and dtype != torch.float64:  # autocast leaves float64 alone
            dtype = torch.get_autocast_dtype(device)
        # spikes already in the conv's 16-bit dtype (bf16 autocast: the fused node's spikes are bf16) are saved as
        # they are: bool and back cost two passes for one byte (2 x ~3 ms per [320, 16, 32, 32] input, 2026-12-04)
        as_is = x.dtype == dtype and x.dtype in (torch.bfloat16, torch.float16)
        ctx.save_for_backward(x.to(torch.bool) if not as_is and (x.requires_grad or weight.requires_grad) else x,
                              weight)
        ctx.dtype, ctx.x_dtype, ctx.stride, ctx.padding = dtype, x.dtype, stride, padding
        ctx.channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous()
        with torch.autocast(device, enabled=False):
            return torch.nn.functional.conv2d(x.to(dtype), weight.to(dtype), None, stride, padding)

    @staticmethod
    def backward(ctx, grad_out):
        packed, weight = ctx.saved_tensors
        x = packed.to(ctx.dtype)
        if ctx.channels_last and not onednn_weight_grad_hangs(x.shape[1], weight.shape[2:], ctx.stride):
            x = x.contiguous(memory_format=torch.channels_last)
        else:  # NCHW: any operand with channels_last-looking strides can still send oneDNN into that kernel
            x, grad_out, weight = _nchw(x), _nchw(grad_out), _nchw(weight)
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad_out.to(ctx.dtype), x, weight.to(ctx.dtype), None, list(ctx.stride), list(ctx.padding), [1, 1],
            False, [0, 0], 1, [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False])
        return (None if grad_x is None else grad_x.to(ctx.x_dtype),
                None if grad_w is None else grad_w.to(weight.dtype), None, None)


class SpikeInputConv2d(nn.Conv2d):
    """An nn.Conv2d (same parameters and state dict) whose training forward saves its binary input as bool."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is not None or self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros" \
                or not torch.is_grad_enabled() or isinstance(self.padding, str) or torch.compiler.is_compiling():
            return super().forward(x)  # (whole-model torch.compile: 1.10 s instead of 1.32 s per bench step)
        return SpikeConv2dFunction.apply(x, self.weight, self.stride, self.padding)


class EventInputConv2d(SpikeInputConv2d):
    """A :class:`SpikeInputConv2d` whose training forward and weight gradient are event-driven where the kernels
    apply (sw/event_conv.py); elsewhere it is the bool-saving conv."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None and self.groups == 1 and self.dilation == (1, 1) and self.padding_mode == "zeros" \
                and torch.is_grad_enabled() and not isinstance(self.padding, str) \
                and not torch.compiler.is_compiling() and event_conv.applies(x, self.weight, self.stride, self.padding):
            return event_conv.EventConv2dFunction.apply(x, self.weight, self.stride, self.padding)
        return super().forward(x)


def spike_input_convs(model: nn.Module, *, skip: tuple[str, ...] = ("stem",), events: bool = False) -> nn.Module:
    """Make every plain ``nn.Conv2d`` of a spiking model (all but the modules named in ``skip``, whose input is the
    graded image) save its input as bool for backward; parameters, state dict and results are unchanged. With
    ``events=True`` (CPU training, channels_last, float32) their forward and weight gradient are also event-driven
    (sw/event_conv.py: cost ~ spikes, not neurons; results equal up to float summation order); the kernels are
    built here, and :class:`~spikeforge.sw.event_conv.EventConvUnavailable` says why when they cannot be.

    Only valid where each such conv's input is spikes (0/1): true of every hidden conv of
    :class:`~spikeforge.sw.resnet.SpikingResNet`. Returns ``model``.
    """
    if events:
        event_conv.extension()
    cls = EventInputConv2d if events else SpikeInputConv2d
    for name, module in model.named_modules():
        if type(module) in (nn.Conv2d, SpikeInputConv2d, EventInputConv2d) \
                and not any(name == s or name.startswith(s + ".") for s in skip):
            module.__class__ = cls
    return model
