"""Event-driven spike convolutions for training on the CPU (``spike_input_convs(model, events=True)``; used by
``spikeforge train`` by default, ``--event-convs auto``, in a spiking ResNet's float phase).

A hidden conv of a spiking network sees 0/1 inputs. Its forward pass and its weight gradient then only need the
active inputs: the forward sums the weight rows of the spikes under each output's window (no multiplies), the
weight gradient adds each output gradient row to the weight rows of those spikes. Both cost ~ spikes x K^2 x Cout
instead of neurons x K^2 x Cin x Cout, the accelerator's principle applied to training. The input gradient has no
such form (the output gradient is dense) and stays oneDNN's. The kernels (csrc/event_conv.cpp, AVX2) are compiled
on first use with torch.utils.cpp_extension (a C++ compiler and ninja are needed; the build is cached).

Results equal ``F.conv2d`` and its gradients up to float rounding (sums in another order). Where the kernels do not
apply (not CPU, not float32, autocast, fewer than MIN_CHANNELS (64) or a non-multiple of 8 output channels,
NCHW input, unequal strides or paddings, kernels over 8 x 8), the conv runs as
:class:`~spikeforge.sw.spike_conv.SpikeConv2dFunction` does. Measured speed: docs/benchmarks.md ("Event-driven
convolutions")."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "event_conv.cpp"


class EventConvUnavailable(RuntimeError):
    """The event-driven kernels cannot run on this machine (no AVX2, or no compiler to build them)."""


@functools.cache
def extension():
    """The compiled kernels (built on first call, cached); :class:`EventConvUnavailable` says why they cannot be."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        raise EventConvUnavailable(f"the event-driven convs need an AVX2 CPU, and torch reports {capability!r}; "
                                   "train without --event-convs")
    from torch.utils.cpp_extension import load

    try:
        return load("spikeforge_event_conv", [str(SOURCE)], extra_cflags=["-O3", "-mavx2", "-mfma", "-fopenmp"],
                    extra_ldflags=["-fopenmp"])
    except Exception as error:  # a missing compiler or ninja surfaces as many exception types
        raise EventConvUnavailable(
            f"the event-driven conv kernels ({SOURCE}) did not build ({type(error).__name__}: {error}); they need a "
            "C++ compiler and ninja (Debian: apt-get install g++ ninja-build), or train without --event-convs") from error


def available() -> bool:
    """Whether the kernels can run here (builds them on first call)."""
    try:
        extension()
    except EventConvUnavailable:
        return False
    return True


# Fewest output channels worth an event-driven conv: below a full 64-channel chunk the per-pixel list handling
# dominates (ResNet-18 at width / 4, 16-128 channels, all event-driven: 0.87x; bench/LOG.md)
MIN_CHANNELS = 64


def applies(x: torch.Tensor, weight: torch.Tensor, stride, padding, min_channels: int | None = None) -> bool:
    """Whether :class:`EventConv2dFunction` computes this conv (else the caller falls back): CPU float32 without
    autocast, channels_last input, equal strides and paddings, a square kernel of at most 8 x 8, and a multiple of 8
    output channels, at least ``min_channels`` (default :data:`MIN_CHANNELS`)."""
    least = MIN_CHANNELS if min_channels is None else min_channels
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu") and x.dim() == 4 and weight.shape[0] % 8 == 0
            and weight.shape[0] >= least
            and x.is_contiguous(memory_format=torch.channels_last) and len(set(stride)) == 1
            and len(set(padding)) == 1 and weight.shape[2] == weight.shape[3] <= 8)


class EventConv2dFunction(torch.autograd.Function):
    """``apply(x, weight, stride, padding)``: conv2d (no bias) of channels_last spikes ``x`` (0/1 float32) with the
    event-driven forward and weight gradient. Saved for backward: the spikes as events (one int64 offset per pixel,
    one int16 channel index per spike) and the weight."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding):
        ext = extension()
        nhwc = x.detach().permute(0, 2, 3, 1)  # the channels_last memory, as a contiguous [N, H, W, C]
        offsets, channels = ext.events(nhwc)
        out = ext.forward(offsets, channels, list(nhwc.shape), _packed(weight.detach()), weight.shape[0], stride[0],
                          padding[0])
        ctx.save_for_backward(offsets, channels, weight)
        ctx.in_shape, ctx.stride, ctx.padding = tuple(x.shape), stride, padding
        return out.permute(0, 3, 1, 2)  # [N, Cout, Ho, Wo], channels_last

    @staticmethod
    def backward(ctx, grad_out):
        offsets, channels, weight = ctx.saved_tensors
        grad = grad_out.contiguous(memory_format=torch.channels_last)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            shape_only = torch.empty(ctx.in_shape, memory_format=torch.channels_last)  # not read: layout and shape
            grad_x = torch.ops.aten.convolution_backward(
                grad, shape_only, weight, None, list(ctx.stride), list(ctx.padding), [1, 1], False, [0, 0], 1,
                [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            n, c, h, w = ctx.in_shape
            packed = extension().weight_grad(offsets, channels, [n, h, w, c], grad.permute(0, 2, 3, 1),
                                              weight.shape[2], ctx.stride[0], ctx.padding[0])
            layout = torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last) \
                else torch.contiguous_format
            grad_w = _unpacked(packed, weight.shape).contiguous(memory_format=layout)
        return grad_x, grad_w, None, None


_BLOCK = 64  # channels per block and chunk in csrc/event_conv.cpp


def _packed(weight: torch.Tensor) -> torch.Tensor:
    """[Cout, Cin, K, K] -> the kernels' [nc, K, K, Cin, 64] (output channels in chunks of 64, the last zero-padded)."""
    cout, cin, k, _ = weight.shape
    chunks = -(-cout // _BLOCK)
    padded = torch.nn.functional.pad(weight, (0, 0, 0, 0, 0, 0, 0, chunks * _BLOCK - cout))
    return padded.view(chunks, _BLOCK, cin, k, k).permute(0, 3, 4, 2, 1).contiguous()


def _unpacked(packed: torch.Tensor, shape) -> torch.Tensor:
    """The kernels' weight gradient [nb, nc, K, K, 64, 64] -> a [Cout, Cin, K, K] view."""
    cout, cin, k, _ = shape
    blocks, chunks = packed.shape[:2]
    rows = packed.permute(1, 5, 0, 4, 2, 3).reshape(chunks * _BLOCK, blocks * _BLOCK, k, k)
    return rows[:cout, :cin]
