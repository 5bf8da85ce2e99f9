"""Batch-norm folding: the one place that turns a trained block's float scales into integer neuron parameters.

Both the exporter (which rounds) and the deploy-aware fine-tune (which rounds with a straight-through gradient)
call :func:`fold_channels`, so training and deployment cannot drift apart. docs/training.md derives the math.
"""

from __future__ import annotations

import torch

from .kernels import compiled as compiled_kernel

__all__ = ["bn_affine", "fold_channels", "zero_scale_threshold", "round_ste", "integer_current", "start_half_up",
           "ZERO_SCALE_DEFAULT_THRESHOLD"]

# The integer threshold of a zero-scale channel when no other channel of its layer sets the scale.
ZERO_SCALE_DEFAULT_THRESHOLD = 256


def bn_affine(bn: torch.nn.modules.batchnorm._BatchNorm, conv_bias: torch.Tensor | None = None):
    """Eval-mode batch norm as BN(I) = a * I + d per channel (a conv bias b folds in: d += a * b)."""
    a = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(bn.running_var + bn.eps)
    beta = bn.bias if bn.affine else torch.zeros_like(a)
    d = beta - a * bn.running_mean
    if conv_bias is not None:
        d = d + a * conv_bias
    return a, d


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def start_half_up(current: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """``current`` [T, B, C, ...] with half of one integer membrane unit (``unit`` [C]: one integer unit on the
    float neuron's scale, threshold / theta) added to step 0, i.e. an integrate-and-fire float membrane that starts
    half a unit up.

    A deploy-aware float neuron integrates I_int * threshold / theta and fires at ``threshold``; summed in floating
    point, those quotients can land a hair below the threshold exactly where the integer membrane equals theta
    (integer currents hit that often), and the integer neuron fires there. Half a unit up, every integer decision is
    half a unit away from the float threshold, far beyond the float error, so the float neuron fires exactly when
    V_int >= theta (reset by subtraction keeps the offset). Without it a trained Fashion-MNIST chain's deploy-aware
    forward missed 0.25-2.3% of the integer reference's spikes per layer; with it, none (docs/training.md).
    Only for neurons without a leak: the deployed leak's floored shift is not what the float leak does anyway."""
    half = (0.5 * unit).detach().to(current.dtype).view((1, 1, -1) + (1,) * (current.ndim - 3))
    # one broadcast add of [T, 1, C, ...] (half at step 0, +0.0 after: the same values as concatenating step 0 +
    # half with the rest), whose backward passes the gradient through instead of slicing and re-assembling it
    first = torch.zeros((current.shape[0],) + (1,) * (current.ndim - 1), dtype=current.dtype, device=current.device)
    first[0] = 1
    return current + first * half


def _integer_current(out, sign, unit, bias, theta, threshold: float, extra, extra_scale):
    integer = round_ste(sign * out / unit) + bias
    if extra is not None:
        integer = integer + (extra if extra_scale is None else extra_scale * extra)
    return threshold * integer / theta


def integer_current(out: torch.Tensor, sign: torch.Tensor, unit: torch.Tensor, bias: torch.Tensor,
                    theta: torch.Tensor, threshold: float = 1.0, extra: torch.Tensor | None = None,
                    extra_scale: torch.Tensor | None = None, *, compiled: bool = False) -> torch.Tensor:
    """The current a deployed integer population integrates, on the float neuron's scale, with straight-through
    rounding (deploy-aware QAT): ``threshold * (round(sign * out / unit) + bias + extra_scale * extra) / theta``.

    ``out`` is the quantized layer's output (``unit`` per channel: the float value of one integer unit of
    ``W_int x``, so ``out / unit`` is an integer up to float error, which the rounding removes while passing the
    gradient straight through); ``extra`` an integer-valued term added before the division (a residual join's
    shortcut: its spikes, scaled by ``extra_scale``, or its requantized conv). The per-channel tensors come shaped
    to broadcast against ``out``. ``compiled``: one torch.compile'd elementwise kernel each way instead of ~6 eager
    passes over the [T*B, C, ...] tensor and ~12 back (5-6x faster for one chain layer, docs/training.md);
    the same operations in the same order, so the same values (gradients up to float rounding)."""
    args = (out, sign, unit, bias, theta, float(threshold), extra, extra_scale)
    if compiled and not torch.compiler.is_compiling():  # a whole-model torch.compile traces the eager form
        return compiled_kernel(_integer_current)(*args)
    return _integer_current(*args)


def zero_scale_threshold(theta: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """The integer threshold given to zero-scale channels: the layer's largest other threshold (so the layer's
    vbits need not grow), or ZERO_SCALE_DEFAULT_THRESHOLD if every channel has scale zero."""
    finite = theta[~zero]
    if finite.numel() == 0:
        return torch.tensor(float(ZERO_SCALE_DEFAULT_THRESHOLD), dtype=theta.dtype)
    return torch.clamp(torch.round(finite.detach().max()), min=1.0)


def fold_channels(a: torch.Tensor, d: torch.Tensor, unit: torch.Tensor, *, rounding=torch.round):
    """Fold BN(I) = a*I + d with I = unit * (W_int x) into an integer neuron; everything per channel.

    ``unit`` is the weight scale s_w (per channel or broadcast) times the source's scale (1/255 for pixels, 1 for
    spikes). The float neuron fires at a*unit*(W_int x) + d >= 1 (threshold 1.0); dividing by u = |a|*unit gives the
    integer neuron: it integrates ``sign * W_int x + bias`` against ``threshold`` with

    * sign = sign(a), bias = d / u, threshold = 1 / u (a < 0 flips the channel's weights; the comparison with the
      positive threshold keeps its direction because u > 0);
    * a == 0: the channel's current is the constant d whatever the input, so its weights become zero (sign 0), its
      threshold is the layer's largest other threshold theta_z (see :func:`zero_scale_threshold`) and its bias
      d * theta_z: the same firing rate, expressed on that integer scale.

    Returns ``(sign, threshold, bias)``; ``rounding`` (``torch.round`` to export, :func:`round_ste` to train)
    rounds threshold (to at least 1) and bias.
    """
    a = torch.as_tensor(a)
    unit = torch.broadcast_to(torch.as_tensor(unit, dtype=a.dtype), a.shape)
    zero = a == 0
    u = torch.where(zero, torch.ones_like(a), a.abs() * unit)
    theta = 1.0 / u
    theta_zero = zero_scale_threshold(theta, zero)
    theta = torch.where(zero, theta_zero.to(a.dtype), theta)
    bias = torch.where(zero, d * theta_zero.to(a.dtype), d / u)
    theta = torch.clamp(rounding(theta), min=1.0)
    return torch.sign(a), theta, rounding(bias)
