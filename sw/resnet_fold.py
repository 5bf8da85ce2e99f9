"""The integer form of one spiking-ResNet population, written once for both of its users.

The exporter (sw/export_resnet.py) calls :func:`fold_population` with ``train=False``: float64, ``torch.round``,
the exact integer weights, and writes the result into the network file. Deploy-aware QAT (sw/resnet.py,
``SpikingResNet.set_deploy_aware``) calls it with ``train=True``: the model's dtype, straight-through rounding and
differentiable weights, and feeds the neurons the deployed current ``threshold * (I_int + bias) / theta`` so that
training sees the exporter's rounded thresholds, biases and requantized shortcuts (docs/resnet.md).

A population integrates its main projection, BN(conv(x)), and at a residual join a shortcut as well. The main
branch sets the integer unit ``u_c = |a_c| s_w,c * source_unit`` (:func:`~spikeforge.sw.folding.fold_channels`); an
identity shortcut becomes the diagonal ``round(1 / u_c)``, a 1x1 conv + BN shortcut the weights
``round(a'_c s'_w,c / u_c * W'_int)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .bn import bn_affine
from .folding import fold_channels, round_ste, zero_scale_threshold
from .model import weight_scale

__all__ = ["FoldedPopulation", "fold_population", "integer_unit", "quantized_weights"]


@dataclass
class FoldedPopulation:
    """One population's integer parameters (integer-valued tensors; float with gradients when trained).

    ``sign * conv_out / unit`` is the main projection's integer current (``conv_out`` = the quantized conv's output);
    ``shortcut`` is None, the identity's diagonal ``[C]`` or a requantized 1x1 conv weight ``[C, C_in, 1, 1]``.
    """

    sign: torch.Tensor
    threshold: torch.Tensor
    bias: torch.Tensor
    unit: torch.Tensor
    shortcut: torch.Tensor | None


def quantized_weights(conv: torch.nn.Module, *, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(integer weights, per-output-channel scale) of a Brevitas layer; ``train`` keeps the straight-through
    gradient (value / scale, integer-valued up to float error), otherwise the exact int64 weights."""
    w_int, scale = weight_scale(conv)
    if not train:
        return w_int, scale
    value = conv.quant_weight().value
    return value / scale.view(-1, *([1] * (value.ndim - 1))), scale


def integer_unit(a: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """u_c = |a_c| * unit_c, the float value of one integer step of channel c; a zero-scale channel gets the scale
    of the threshold fold_channels gives it (the layer's largest, theta_z): u_c = 1 / theta_z."""
    zero = a == 0
    scaled = a.abs() * unit
    theta_zero = zero_scale_threshold(1.0 / torch.where(zero, torch.ones_like(scaled), scaled), zero)
    return torch.where(zero, 1.0 / theta_zero.to(scaled.dtype), scaled)


def _affine(term, threshold: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """BN(I) = a I + d, divided by the float neuron's threshold so that the neuron fires at >= 1."""
    a, d = bn_affine(term.bn)
    return a.to(dtype) / threshold, d.to(dtype) / threshold


def fold_population(main, source_unit: float, threshold: float, shortcut=None, *,
                    train: bool = False) -> FoldedPopulation:
    """Fold one population: ``main`` is its ConvBN (a quantized conv and an eval-mode BN), ``source_unit`` the
    value of one unit of its input (1/255 for pixels, 1 for spikes), ``threshold`` the float neuron's V_th;
    ``shortcut`` is None, ``"identity"`` or the shortcut's ConvBN (residual joins).

    Raises :class:`~spikeforge.sw.bn.BNFoldError` for a BN that has no single per-channel affine (BNTT).
    """
    rounding = round_ste if train else torch.round
    dtype = main.conv.weight.dtype if train else torch.float64
    _, s_w = quantized_weights(main.conv, train=train)
    a, d = _affine(main, threshold, dtype)
    unit = s_w.to(dtype) * source_unit
    sc_weight, sc_d = None, torch.zeros_like(d)
    if shortcut is not None and shortcut != "identity":
        sc_a, sc_d = _affine(shortcut, threshold, dtype)
    sign, theta, bias = fold_channels(a, d + sc_d, unit, rounding=rounding)
    if shortcut is not None:
        u = integer_unit(a, unit)
        if shortcut == "identity":
            sc_weight = rounding(1.0 / u)
        else:
            sc_int, sc_scale = quantized_weights(shortcut.conv, train=train)
            factor = sc_a * sc_scale.to(dtype) / u  # the shortcut's value of one integer weight step, in units u_c
            sc_weight = rounding(factor.view(-1, 1, 1, 1) * sc_int.to(dtype))
    return FoldedPopulation(sign=sign, threshold=theta, bias=bias, unit=unit, shortcut=sc_weight)
