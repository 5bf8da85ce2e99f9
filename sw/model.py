"""Spiking CNNs that the accelerator can run: a chain of conv/dense -> BN -> LIF blocks and an integrating readout.

The architecture is data (:class:`Architecture`, a list of :class:`LayerSpec`); the neuron is a parameter (any
factory returning a :class:`~spikeforge.sw.neuron.LIF`-like module). Weights are quantized with Brevitas
(QAT) when a layer has ``wbits``; ``wbits=None`` (or ``quantized=False``) gives the float variant with the same
parameter names, so a float checkpoint loads into the QAT model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

import torch
from torch import nn

from .folding import bn_affine, fold_channels, integer_current, round_ste, start_half_up
from .neuron import LIF

__all__ = ["LayerSpec", "Architecture", "ARCHITECTURES", "SpikingBlock", "IntegratorReadout", "SpikingNet",
           "spiking_net", "PIXEL_MAX"]

PIXEL_MAX = 255.0  # the model sees pixel / 255 (no mean shift: zero padding is pixel 0 in both worlds)
KERNEL, PADDING = 3, 1  # the accelerator's conv: 3x3, zero padding 1, stride 1 or 2


@dataclass(frozen=True)
class LayerSpec:
    """One population: ``kind`` "conv" (3x3, padding 1, ``stride`` 1 or 2, ``out`` channels) or "dense" (``out``
    neurons); ``wbits`` the signed weight width (None = float)."""

    kind: str
    out: int
    stride: int = 1
    wbits: int | None = 4

    def __post_init__(self):
        if self.kind not in ("conv", "dense"):
            raise ValueError(f"a layer's kind must be 'conv' or 'dense', not {self.kind!r}")
        if self.out < 1:
            raise ValueError(f"a layer needs at least one output, not {self.out}")
        if self.kind == "conv" and self.stride not in (1, 2):
            raise ValueError(f"the accelerator's convs have stride 1 or 2, not {self.stride}")
        if self.wbits is not None and not 2 <= self.wbits <= 8:
            raise ValueError(f"wbits must be None (float) or 2..8, not {self.wbits}")

    def __str__(self):
        w = "f" if self.wbits is None else f"w{self.wbits}"
        return f"c{self.out}s{self.stride}{w}" if self.kind == "conv" else f"d{self.out}{w}"


_SPEC = re.compile(r"^(?:c(?P<c>\d+)(?:s(?P<s>\d+))?|d(?P<d>\d+))(?:w(?P<w>\d+)|(?P<f>f))?$")


@dataclass(frozen=True)
class Architecture:
    """A chain: ``input_shape`` then ``layers``; the last layer (dense) is the non-firing readout.

    The compact string form is dash-separated layers: ``c8s2w8-c16s2w4-d10w4`` = conv 8 channels stride 2 with
    8-bit weights, conv 16 stride 2 4-bit, dense readout of 10 with 4-bit weights; ``f`` instead of ``wN`` is float.
    """

    layers: tuple[LayerSpec, ...]
    input_shape: tuple[int, int, int] = (1, 28, 28)

    def __post_init__(self):
        if not self.layers:
            raise ValueError("an architecture needs at least the readout layer")
        if self.layers[-1].kind != "dense":
            raise ValueError("the last layer is the readout and must be dense")
        seen_dense = False
        for spec in self.layers:
            if spec.kind == "conv" and seen_dense:
                raise ValueError("a conv layer cannot follow a dense layer")
            seen_dense |= spec.kind == "dense"

    @classmethod
    def parse(cls, text: str, input_shape=(1, 28, 28)) -> "Architecture":
        specs = []
        for part in text.strip().split("-"):
            m = _SPEC.match(part.strip())
            if not m:
                raise ValueError(f"cannot read layer {part!r} of architecture {text!r}; write e.g. "
                                 "'c8s2w8-c16s2w4-d10w4' (cN[sS][wB|f] conv, dN[wB|f] dense)")
            wbits = None if m["f"] else int(m["w"]) if m["w"] else 4
            if m["c"]:
                specs.append(LayerSpec("conv", int(m["c"]), int(m["s"] or 1), wbits))
            else:
                specs.append(LayerSpec("dense", int(m["d"]), 1, wbits))
        return cls(tuple(specs), tuple(input_shape))

    def __str__(self):
        return "-".join(map(str, self.layers))

    def shapes(self) -> list[tuple[int, ...]]:
        """Shape of every population, input first."""
        shapes = [tuple(self.input_shape)]
        for spec in self.layers:
            prev = shapes[-1]
            if spec.kind == "conv":
                h, w = ((n + 2 * PADDING - KERNEL) // spec.stride + 1 for n in prev[1:])
                shapes.append((spec.out, h, w))
            else:
                shapes.append((spec.out,))
        return shapes


ARCHITECTURES = {
    # fits the iCE40 UP5K: 8x14x14 -> 16x7x7 -> 10, 8-bit first conv, 4-bit elsewhere
    "demo": Architecture.parse("c8s2w8-c16s2w4-d10w4"),
    # the first growth step if the demo misses an accuracy target
    "demo24": Architecture.parse("c8s2w8-c24s2w4-d10w4"),
    "wide": Architecture.parse("c16s2w8-c32s2w4-d10w4"),
}


def _weight_layer(spec: LayerSpec, in_features: int, *, readout: bool, quantized: bool) -> nn.Module:
    """A conv or linear layer; Brevitas QAT when quantized and the spec has wbits.

    Hidden layers get per-channel weight scales (BN folding absorbs any per-channel scale); the readout gets one
    scale for the whole tensor, since its integer potentials of all classes must share one scale for argmax.
    """
    bias = readout  # BN's shift makes a hidden layer's bias redundant
    if not quantized or spec.wbits is None:
        if spec.kind == "conv":
            return nn.Conv2d(in_features, spec.out, KERNEL, spec.stride, PADDING, bias=bias)
        return nn.Linear(in_features, spec.out, bias=bias)
    import brevitas.nn as qnn
    from brevitas.quant import Int8WeightPerChannelFloat, Int8WeightPerTensorFloat

    quant = Int8WeightPerTensorFloat if readout else Int8WeightPerChannelFloat
    if spec.kind == "conv":
        return qnn.QuantConv2d(in_features, spec.out, KERNEL, spec.stride, PADDING, bias=bias, weight_quant=quant,
                               weight_bit_width=spec.wbits)
    return qnn.QuantLinear(in_features, spec.out, bias=bias, weight_quant=quant, weight_bit_width=spec.wbits,
                           bias_quant=None)


def weight_scale(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(integer weights, per-output scale) of a Brevitas layer, or None for a float layer."""
    if not hasattr(layer, "quant_weight"):
        return None
    q = layer.quant_weight()
    scale = q.scale.reshape(-1) if q.scale.numel() > 1 else q.scale.reshape(1).expand(layer.weight.shape[0])
    return q.int().to(torch.int64), scale


class SpikingBlock(nn.Module):
    """Weights -> BN (on the neurons' input current) -> spiking neuron, over [T, B, ...] inputs.

    A ``static`` block (the first one) receives one image [B, ...]: its current is the same at every step, so it
    is computed once and repeated T times, which is what the hardware's graded first layer does. ``input_scale``
    is the value of one input unit (1/255 for pixels, 1 for spikes); it matters only for deploy-aware folding.
    """

    def __init__(self, layer: nn.Module, bn: nn.Module, neuron: nn.Module, *, static: bool = False,
                 input_scale: float = 1.0, flatten: bool = False):
        super().__init__()
        self.layer, self.bn, self.neuron = layer, bn, neuron
        self.static, self.input_scale, self.flatten = static, input_scale, flatten
        self.deploy_aware = False

    def folded_parameters(self, rounding=torch.round):
        """(sign, integer threshold, integer bias, unit) of this block's channels; needs a quantized layer."""
        ws = weight_scale(self.layer)
        if ws is None:
            raise ValueError("a float layer has no integer weights to fold into")
        _, scale = ws
        a, d = bn_affine(self.bn, getattr(self.layer, "bias", None))
        unit = scale * self.input_scale
        sign, theta, bias = fold_channels(a, d, unit, rounding=rounding)
        return sign, theta, bias, unit

    def current(self, x: torch.Tensor) -> torch.Tensor:
        """The neurons' input current for x [N, ...] (N = B for a static block, T*B otherwise)."""
        if self.flatten:
            x = x.flatten(1)
        out = self.layer(x)
        if not self.deploy_aware:
            return self.bn(out)
        # Deployed arithmetic with straight-through rounding: (sign * W_int x + bias_int) / theta_int. W_int x is
        # an integer (integer weights, integer pixels or spikes): rounding it only removes the float error of
        # out / unit, and passes the gradient straight through (as sw/resnet.py's deployed_current does)
        sign, theta, bias, unit = self.folded_parameters(rounding=round_ste)
        view = (1, -1) + (1,) * (out.ndim - 2)
        return integer_current(out, sign.view(view), unit.view(view), bias.view(view), theta.view(view),
                               compiled=getattr(self.neuron, "compiled", False))

    def forward(self, x: torch.Tensor, time_steps: int | None = None) -> torch.Tensor:
        if self.static:
            current = self.current(x)
            current = current.unsqueeze(0).expand(time_steps, *current.shape)
        else:
            T, B = x.shape[:2]
            current = self.current(x.flatten(0, 1))
            current = current.reshape(T, B, *current.shape[1:])
        if self.deploy_aware and getattr(self.neuron, "leak_shift", None) is None:
            _, theta, _, _ = self.folded_parameters()
            current = start_half_up(current, getattr(self.neuron, "threshold", 1.0) / theta)
        return self.neuron(current)


class IntegratorReadout(nn.Module):
    """A non-firing integrator: V = sum over t of (W x[t] + b); ``forward`` returns V (logits are V / T)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer
        self.deploy_aware = False

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        T, B = spikes.shape[:2]
        x = spikes.flatten(0, 1).flatten(1)
        if self.deploy_aware and self.layer.bias is not None and weight_scale(self.layer) is not None:
            _, scale = weight_scale(self.layer)
            current = nn.functional.linear(x, self.layer.quant_weight().value)
            current = current + scale * round_ste(self.layer.bias / scale)
        else:
            current = self.layer(x)
        return current.reshape(T, B, -1).sum(0)


class SpikingNet(nn.Module):
    """The chain: blocks then readout. ``forward(images01)`` takes pixel/255 in [0, 1], [B, C, H, W], and returns
    logits = V_readout / T."""

    def __init__(self, arch: Architecture, *, time_steps: int = 10, quantized: bool = True,
                 neuron: Callable[[], nn.Module] = LIF):
        super().__init__()
        self.arch, self.time_steps, self.quantized = arch, time_steps, quantized
        shapes = arch.shapes()
        blocks = []
        for i, spec in enumerate(arch.layers[:-1]):
            src = shapes[i]
            in_features = src[0] if spec.kind == "conv" else int(torch.tensor(src).prod())
            layer = _weight_layer(spec, in_features, readout=False, quantized=quantized)
            bn = nn.BatchNorm2d(spec.out) if spec.kind == "conv" else nn.BatchNorm1d(spec.out)
            blocks.append(SpikingBlock(layer, bn, neuron(), static=i == 0,
                                       input_scale=1.0 / PIXEL_MAX if i == 0 else 1.0,
                                       flatten=spec.kind == "dense" and len(src) == 3))
        self.blocks = nn.ModuleList(blocks)
        last = arch.layers[-1]
        self.readout = IntegratorReadout(_weight_layer(last, int(torch.tensor(shapes[-2]).prod()), readout=True,
                                                       quantized=quantized))

    def set_deploy_aware(self, enabled: bool = True) -> "SpikingNet":
        """Train with the exporter's rounded integer thresholds/biases in the loop (BN must be in eval mode)."""
        for m in [*self.blocks, self.readout]:
            m.deploy_aware = enabled
        return self

    def run(self, images01: torch.Tensor, time_steps: int | None = None) -> SimpleNamespace:
        """Forward pass that also returns every block's spikes [T, B, ...] and the readout potential V [B, N]."""
        T = time_steps or self.time_steps
        x = images01
        if not self.blocks:
            x = x.unsqueeze(0).expand(T, *x.shape)
        spikes = []
        for i, block in enumerate(self.blocks):
            x = block(x, T) if i == 0 else block(x)
            spikes.append(x)
        v = self.readout(x)
        return SimpleNamespace(spikes=spikes, readout=v, logits=v / T)

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        return self.run(images01).logits


def spiking_net(arch: Architecture | str = "demo", *, time_steps: int = 10, quantized: bool = True,
                surrogate: str = "arctan", width: float = 0.5, leak_shift: int | None = None,
                detach_reset: bool = False) -> SpikingNet:
    """Builder: an architecture (object, preset name or compact string) with LIF neurons of the given surrogate."""
    if isinstance(arch, str):
        arch = ARCHITECTURES[arch] if arch in ARCHITECTURES else Architecture.parse(arch)

    def neuron():
        return LIF(surrogate, width, leak_shift=leak_shift, detach_reset=detach_reset)

    return SpikingNet(arch, time_steps=time_steps, quantized=quantized, neuron=neuron)
