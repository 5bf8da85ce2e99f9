"""The spiking ResNet family (ResNet-8/10 for 28x28, ResNet-18/34/50), built like torchvision's resnet.py.

Every residual join fires ONCE: the block's output population integrates the main path's BN(conv) current plus
the shortcut's current (the block input's spikes, or BN(1x1 conv) when the shape changes) and one LIF fires on the
sum. That is two projections into one population of the integer semantics, so sw/export_resnet.py deploys it
(docs/resnet.md). The neuron (LIF with any surrogate, or ReLU for the ANN twin) and the BN kind are parameters.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .bn import BNTT, make_bn
from .folding import integer_current, round_ste, start_half_up
from .fused import bn_lif, can_fuse_bn
from .kernels import accumulable
from .model import PIXEL_MAX, weight_scale
from .neuron import LIF, Surrogate
from .resnet_fold import fold_population

__all__ = ["STEMS", "NeuronFactory", "lif_neuron", "ReLUNeuron", "conv_layer", "readout_layer", "over_time", "ConvBN",
           "deployed_current", "BasicBlock", "Bottleneck", "SpikingResNet", "resnet6", "resnet8", "resnet10", "resnet18",
           "resnet34", "resnet50", "RESNETS"]

STEMS = ("cifar", "imagenet", "imagenet_conv")
NeuronFactory = Callable[[], nn.Module]


def lif_neuron(surrogate: str | Surrogate = "arctan", width: float = 0.5, *, leak_shift: int | None = None,
               detach_reset: bool = False, threshold: float = 1.0) -> NeuronFactory:
    """A factory of :class:`~spikeforge.sw.neuron.LIF` neurons with one surrogate kind and width (or a
    :class:`~spikeforge.sw.neuron.Surrogate` object, shared by all of them: surrogates are stateless)."""

    def neuron() -> LIF:
        return LIF(surrogate, width, threshold=threshold, leak_shift=leak_shift, detach_reset=detach_reset)

    return neuron


class ReLUNeuron(nn.Module):
    """The ANN twin's "neuron": ReLU on the current, no state, no time (the twin runs with T = 1)."""

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        return torch.relu(current)


def conv_layer(in_channels: int, out_channels: int, kernel: int, stride: int = 1, *,
               wbits: int | None = None) -> nn.Module:
    """A bias-free conv ("same" padding kernel // 2); Brevitas per-channel weight QAT when ``wbits`` is set.

    Hidden layers need no bias (BN's shift replaces it) and may use per-channel scales (BN folding absorbs them).
    """
    padding = kernel // 2
    if wbits is None:
        return nn.Conv2d(in_channels, out_channels, kernel, stride, padding, bias=False)
    import brevitas.nn as qnn
    from brevitas.quant import Int8WeightPerChannelFloat

    return qnn.QuantConv2d(in_channels, out_channels, kernel, stride, padding, bias=False,
                           weight_quant=Int8WeightPerChannelFloat, weight_bit_width=wbits)


def readout_layer(in_features: int, classes: int, *, wbits: int | None = None) -> nn.Module:
    """The readout's dense layer: one scale for the whole tensor, since argmax compares all classes on it."""
    if wbits is None:
        return nn.Linear(in_features, classes)
    import brevitas.nn as qnn
    from brevitas.quant import Int8WeightPerTensorFloat

    return qnn.QuantLinear(in_features, classes, bias=True, weight_quant=Int8WeightPerTensorFloat,
                           weight_bit_width=wbits, bias_quant=None)


def over_time(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a stateless layer to a multi-step tensor [T, B, ...] on the folded T*B batch."""
    out = layer(_FoldTime.apply(x) if x.requires_grad else x.flatten(0, 1))
    return out.reshape(x.shape[0], x.shape[1], *out.shape[1:])


class _FoldTime(torch.autograd.Function):
    """``x.flatten(0, 1)`` whose backward returns the unfolded gradient in a form autograd can add another gradient
    of ``x`` into in place (kernels.accumulable): a downsampling block's input feeds two convs (the main path and the
    shortcut), and a plain flatten's gradient is a view, which made the engine sum the two into a fresh tensor."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return x.flatten(0, 1)

    @staticmethod
    def backward(ctx, grad):
        return accumulable(grad.reshape(ctx.shape))


class ConvBN(nn.Module):
    """One projection's contribution to a population's current: BN(conv(x)) over [T, B, C, H, W].

    ``forward_static(image[B, ...], T)`` is the graded first layer: the current of a static image is the same at
    every step, so conv (and a time-shared BN) run once and the result is repeated T times.
    """

    def __init__(self, conv: nn.Module, bn: nn.Module):
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(over_time(self.conv, x))

    def forward_static(self, image: torch.Tensor, time_steps: int) -> torch.Tensor:
        return self.bn.forward_static(self.conv(image), time_steps)


def deployed_current(term: ConvBN, conv_out: torch.Tensor, source_unit: float, threshold: float, *,
                     shortcut: ConvBN | str | None = None, shortcut_input: torch.Tensor | None = None,
                     half_up: bool = False, compiled: bool = False) -> torch.Tensor:
    """The current the deployed integer population integrates, on the float neuron's scale, with straight-through
    rounding (deploy-aware QAT): ``threshold * (sign * W_int x + shortcut_int + bias) / theta``
    (folding.integer_current; ``compiled``: its torch.compile'd kernel, as the population's compiled FusedLIF).

    ``conv_out`` is the main quantized conv's output (``[N, C, H, W]`` or ``[T, B, C, H, W]``), ``shortcut`` None,
    ``"identity"`` or the shortcut's ConvBN applied to ``shortcut_input`` (same leading shape); the integer
    parameters come from sw/resnet_fold.py, the exporter's own arithmetic. ``half_up`` (integrate-and-fire
    neurons, ``conv_out`` [T, B, ...]): step 0 also carries half an integer unit, so that the float neuron fires
    exactly where the integer one does (folding.start_half_up).
    """
    folded = fold_population(term, source_unit, threshold, shortcut, train=True)

    def per_channel(t: torch.Tensor) -> torch.Tensor:
        return t.view(-1, 1, 1)

    extra, extra_scale = None, None
    if shortcut == "identity":
        extra, extra_scale = shortcut_input, per_channel(folded.shortcut)
    elif shortcut is not None:
        conv = shortcut.conv
        extra = over_time(lambda z: F.conv2d(z, folded.shortcut, None, conv.stride, conv.padding), shortcut_input)
    current = integer_current(conv_out, per_channel(folded.sign), per_channel(folded.unit), per_channel(folded.bias),
                              per_channel(folded.threshold), threshold, extra, extra_scale, compiled=compiled)
    return start_half_up(current, threshold / folded.threshold) if half_up else current


class _Block(nn.Module):
    """What both block types share: the spikes of every population they hold, recorded by ``forward``."""

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int, *, bn: str, time_steps: int,
                 wbits: int | None, threshold: float):
        super().__init__()
        self._bn_kind, self._time_steps, self._threshold = bn, time_steps, threshold
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = ConvBN(conv_layer(in_channels, out_channels, 1, stride, wbits=wbits),
                                     self._bn(out_channels, join=True))
        self.record = False
        self.recorded: dict[str, torch.Tensor] = {}
        self.deploy_aware = self.half_up = False

    def fire(self, neuron: nn.Module, term: ConvBN, x: torch.Tensor, block_input: torch.Tensor | None = None):
        """A population's spikes from spikes x: the neuron fires on BN(conv(x)) or, given the block's input (the
        residual join), on BN(conv(x)) + the shortcut of the block input; when deploy-aware, on the deployed form
        of that current. In training, BN, the shortcut's current and a compiled FusedLIF run as one node where
        they can (sw/fused.py's bn_lif: same spikes, gradients up to float rounding)."""
        y = over_time(term.conv, x)
        if self.deploy_aware:
            shortcut = None if block_input is None else self.downsample or "identity"
            return neuron(deployed_current(term, y, 1.0, self._threshold, shortcut=shortcut,
                                           shortcut_input=block_input, half_up=self.half_up,
                                           compiled=getattr(neuron, "compiled", False)))
        extra = None if block_input is None else self.shortcut(block_input)
        if can_fuse_bn(term.bn, neuron, y):
            return bn_lif(term.bn, neuron, y, extra, extra_binary=extra is not None and self.downsample is None)
        current = term.bn(y)
        return neuron(current if extra is None else current + extra)

    def _bn(self, channels: int, join: bool = False) -> nn.Module:
        return make_bn(self._bn_kind, channels, time_steps=self._time_steps, join=join, threshold=self._threshold)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)

    def _keep(self, name: str, spikes: torch.Tensor) -> torch.Tensor:
        if self.record:
            self.recorded[name] = spikes
        return spikes


class BasicBlock(_Block):
    """conv3x3 -> BN -> LIF -> conv3x3 -> BN, plus the shortcut current, -> one LIF (fires once on the sum)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, *, neuron: NeuronFactory,
                 bn: str = "shared", time_steps: int = 1, wbits: int | None = None, threshold: float = 1.0):
        super().__init__(in_channels, channels * self.expansion, stride, bn=bn, time_steps=time_steps, wbits=wbits,
                         threshold=threshold)
        self.conv1 = ConvBN(conv_layer(in_channels, channels, 3, stride, wbits=wbits), self._bn(channels))
        self.neuron1 = neuron()
        self.conv2 = ConvBN(conv_layer(channels, channels, 3, wbits=wbits), self._bn(channels, join=True))
        self.neuron2 = neuron()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self._keep("conv1", self.fire(self.neuron1, self.conv1, x))
        return self._keep("out", self.fire(self.neuron2, self.conv2, s1, x))


class Bottleneck(_Block):
    """conv1x1 -> BN -> LIF -> conv3x3 (stride) -> BN -> LIF -> conv1x1 (x4) -> BN, plus the shortcut, -> one LIF."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, *, neuron: NeuronFactory,
                 bn: str = "shared", time_steps: int = 1, wbits: int | None = None, threshold: float = 1.0):
        super().__init__(in_channels, channels * self.expansion, stride, bn=bn, time_steps=time_steps, wbits=wbits,
                         threshold=threshold)
        self.conv1 = ConvBN(conv_layer(in_channels, channels, 1, wbits=wbits), self._bn(channels))
        self.neuron1 = neuron()
        self.conv2 = ConvBN(conv_layer(channels, channels, 3, stride, wbits=wbits), self._bn(channels))
        self.neuron2 = neuron()
        self.conv3 = ConvBN(conv_layer(channels, channels * self.expansion, 1, wbits=wbits),
                            self._bn(channels * self.expansion, join=True))
        self.neuron3 = neuron()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self._keep("conv1", self.fire(self.neuron1, self.conv1, x))
        s2 = self._keep("conv2", self.fire(self.neuron2, self.conv2, s1))
        return self._keep("out", self.fire(self.neuron3, self.conv3, s2, x))


class SpikingResNet(nn.Module):
    """A spiking ResNet from a block type and the number of blocks per stage (torchvision's ``ResNet``).

    ``forward(images01)`` takes pixel/255 in [0, 1]: a static image [B, C, H, W] (direct encoding: the stem's
    conv + BN run once and repeat over T) or a sequence [T, B, C, H, W]; it returns logits = V_readout / T, where
    V integrates fc(global average of the last spikes) over the steps. Stateless layers run on the folded T*B batch.

    * ``stem``: ``"cifar"`` (3x3 conv, stride ``stem_stride`` = 1 or 2, no pooling; deployable), ``"imagenet"`` (7x7 stride-2 conv and a
      3x3 stride-2 max-pool: NOT deployable, the integer semantics has no max), ``"imagenet_conv"`` (the max-pool
      replaced by a spiking 3x3 stride-2 conv + BN + LIF; deployable).
    * ``neuron``: a factory (see :func:`lif_neuron`); ``bn``: ``"shared"``, ``"bntt"`` or ``"tdbn"`` (sw/bn.py).
    * ``wbits``: Brevitas weight bits of every hidden conv (None = float); ``stem_wbits`` (default 8 when
      quantized) and ``readout_wbits`` (default ``wbits``) for the first and last layers.
    * ``ann=True``: the ANN twin: same layers, ReLU instead of LIF, one time step.
    """

    def __init__(self, block: type[_Block], layers: Sequence[int], *, widths: Sequence[int] = (64, 128, 256, 512),
                 num_classes: int = 10, in_channels: int = 3, stem: str = "cifar", stem_width: int | None = None,
                 stem_stride: int = 1,
                 neuron: NeuronFactory | None = None, bn: str = "shared", time_steps: int = 4,
                 wbits: int | None = None, stem_wbits: int | None = None, readout_wbits: int | None = None,
                 ann: bool = False):
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; choose one of {STEMS}")
        if stem_stride not in (1, 2) or (stem_stride != 1 and stem != "cifar"):
            raise ValueError(f"stem_stride {stem_stride!r}: the 'cifar' stem's 3x3 conv takes stride 1 or 2 (the "
                             "'imagenet' stems already have stride 2)")
        if len(layers) != len(widths) or not layers or min(layers) < 1:
            raise ValueError(f"layers {list(layers)} and widths {list(widths)} need one positive entry per stage")
        self.block, self.layers, self.widths = block, tuple(layers), tuple(widths)
        self.stem_kind, self.stem_stride, self.bn_kind, self.ann = stem, stem_stride, bn, ann
        self.time_steps = 1 if ann else int(time_steps)
        neuron = ReLUNeuron if ann else (neuron or lif_neuron())
        threshold = float(getattr(neuron(), "threshold", 1.0))
        self.threshold, self.wbits, self.deploy_aware, self.half_up = threshold, wbits, False, False
        stem_wbits = (8 if wbits is not None else None) if stem_wbits is None else stem_wbits
        readout_wbits = wbits if readout_wbits is None else readout_wbits
        kw = dict(time_steps=self.time_steps, threshold=threshold)
        stem_width = stem_width or widths[0]

        if stem == "cifar":
            self.stem = ConvBN(conv_layer(in_channels, stem_width, 3, stem_stride, wbits=stem_wbits),
                               make_bn(bn, stem_width, **kw))
        else:
            self.stem = ConvBN(conv_layer(in_channels, stem_width, 7, 2, wbits=stem_wbits),
                               make_bn(bn, stem_width, **kw))
        self.stem_neuron = neuron()
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem == "imagenet" else None
        self.stem_pool = None
        if stem == "imagenet_conv":
            self.stem_pool = ConvBN(conv_layer(stem_width, stem_width, 3, 2, wbits=wbits),
                                    make_bn(bn, stem_width, **kw))
            self.stem_pool_neuron = neuron()

        stages, channels = [], stem_width
        for i, (count, width) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(channels, width, stride, neuron=neuron, bn=bn, wbits=wbits, **kw))
                channels = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.fc = readout_layer(channels, num_classes, wbits=readout_wbits)

    def population_names(self) -> list[str]:
        """The firing populations in order, as :meth:`run` and the exporter name them."""
        names = ["stem"] + (["stem_pool"] if self.stem_pool is not None else [])
        for i, stage in enumerate(self.stages, 1):
            for j, blk in enumerate(stage):
                inner = ["conv1"] if isinstance(blk, BasicBlock) else ["conv1", "conv2"]
                names += [f"layer{i}.{j}.{n}" for n in inner] + [f"layer{i}.{j}"]
        return names

    def run(self, images01: torch.Tensor, time_steps: int | None = None, *, record: bool = False) -> SimpleNamespace:
        """Forward pass returning ``logits``, the readout potential ``readout`` (V, [B, classes]) and, with
        ``record``, ``spikes``: {population name: [T, B, ...]} in :meth:`population_names` order."""
        T = self.time_steps if self.ann else (time_steps or self.time_steps)
        spikes: dict[str, torch.Tensor] = {}
        if images01.ndim == 4:
            if self.deploy_aware:
                current = deployed_current(self.stem, self.stem.conv(images01), 1.0 / PIXEL_MAX, self.threshold,
                                           compiled=getattr(self.stem_neuron, "compiled", False))
                current = current.unsqueeze(0).expand(T, *current.shape)
                if self.half_up:
                    theta = fold_population(self.stem, 1.0 / PIXEL_MAX, self.threshold, None, train=True).threshold
                    current = start_half_up(current, self.threshold / theta)
            else:
                current = self.stem.forward_static(images01, T)
        elif images01.ndim == 5:
            if self.ann and images01.shape[0] != 1:
                raise ValueError("the ANN twin takes static images [B, C, H, W], not a sequence")
            T = images01.shape[0]
            current = deployed_current(self.stem, over_time(self.stem.conv, images01), 1.0 / PIXEL_MAX,
                                       self.threshold, half_up=self.half_up,
                                       compiled=getattr(self.stem_neuron, "compiled", False)) if self.deploy_aware \
                else self.stem(images01)
        else:
            raise ValueError(f"images must be [B, C, H, W] or [T, B, C, H, W], not {list(images01.shape)}")
        x = spikes["stem"] = self.stem_neuron(current)
        if self.maxpool is not None:
            x = over_time(self.maxpool, x)
        if self.stem_pool is not None:
            current = deployed_current(self.stem_pool, over_time(self.stem_pool.conv, x), 1.0, self.threshold,
                                       half_up=self.half_up, compiled=getattr(self.stem_pool_neuron, "compiled", False)
                                       ) if self.deploy_aware else self.stem_pool(x)
            x = spikes["stem_pool"] = self.stem_pool_neuron(current)
        for i, stage in enumerate(self.stages, 1):
            for j, blk in enumerate(stage):
                blk.record, blk.recorded = record, {}
                x = blk(x)
                for name, s in blk.recorded.items():
                    spikes[f"layer{i}.{j}" + ("" if name == "out" else f".{name}")] = s
                blk.record, blk.recorded = False, {}
        area = x.shape[-2] * x.shape[-1]
        v = over_time(lambda pooled: self._readout(pooled, area), x.mean(dim=(-2, -1))).sum(0)
        return SimpleNamespace(logits=v / T, readout=v, spikes=spikes if record else {})

    def _readout(self, pooled: torch.Tensor, area: int) -> torch.Tensor:
        if not (self.deploy_aware and self.fc.bias is not None):
            return self.fc(pooled)
        # the exporter's readout bias is round(b * H * W / s_fc), in units of s_fc / (H * W) (H x W: last spikes)
        _, scale = weight_scale(self.fc)
        bias = scale * round_ste(self.fc.bias * area / scale) / area
        return F.linear(pooled, self.fc.quant_weight().value, bias)

    def set_deploy_aware(self, enabled: bool = True) -> "SpikingResNet":
        """Train with the exporter's integer arithmetic in the loop: every population integrates the deployed
        current (rounded thresholds and biases, requantized shortcuts; sw/resnet_fold.py) and the readout the
        rounded bias. BN must be in eval mode (frozen statistics) while this is on."""
        if enabled:
            if self.ann or self.wbits is None:
                raise ValueError("deploy-aware training needs a quantized spiking model (wbits set, ann=False)")
            if any(isinstance(m, BNTT) for m in self.modules()):
                raise ValueError("a BNTT model has no single integer threshold per channel to train against; "
                                 "use bn='shared' or bn='tdbn'")
            if self.maxpool is not None:
                raise ValueError("the 'imagenet' stem's max-pool is not deployable; use stem='imagenet_conv'")
        self.deploy_aware = bool(enabled)
        # integrate-and-fire neurons start half an integer unit up (folding.start_half_up); leaky ones cannot
        self.half_up = self.deploy_aware and all(m.leak_shift is None for m in self.modules() if isinstance(m, LIF))
        for stage in self.stages:
            for blk in stage:
                blk.deploy_aware, blk.half_up = bool(enabled), self.half_up
        return self

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        return self.run(images01).logits

    def neurons(self) -> list[tuple[str, nn.Module]]:
        """(population name, neuron module) in depth order."""
        mods = [("stem", self.stem_neuron)] + ([("stem_pool", self.stem_pool_neuron)] if self.stem_pool else [])
        for i, stage in enumerate(self.stages, 1):
            for j, blk in enumerate(stage):
                inner = [("conv1", blk.neuron1)] if isinstance(blk, BasicBlock) else \
                    [("conv1", blk.neuron1), ("conv2", blk.neuron2)]
                mods += [(f"layer{i}.{j}.{n}", m) for n, m in inner]
                mods.append((f"layer{i}.{j}", blk.neuron2 if isinstance(blk, BasicBlock) else blk.neuron3))
        return mods


def _scaled(widths: Sequence[int], width: float) -> tuple[int, ...]:
    if not width > 0:
        raise ValueError(f"the width multiplier must be positive, not {width!r}")
    return tuple(max(1, round(w * width)) for w in widths)


def resnet6(*, width: float = 1.0, num_classes: int = 10, in_channels: int = 1, **kwargs) -> SpikingResNet:
    """ResNet-6 for 28x28 inputs on small FPGAs: CIFAR stem + 2 stages of one BasicBlock, widths 16-32 times
    ``width`` (six populations: the fewest layer units of a ResNet with an identity and a downsampling join)."""
    return SpikingResNet(BasicBlock, [1, 1], widths=_scaled((16, 32), width), num_classes=num_classes,
                         in_channels=in_channels, **kwargs)


def resnet8(*, width: float = 1.0, num_classes: int = 10, in_channels: int = 1, **kwargs) -> SpikingResNet:
    """ResNet-8 for 28x28 inputs: CIFAR stem + 3 stages of one BasicBlock, widths 16-32-64 times ``width``."""
    return SpikingResNet(BasicBlock, [1, 1, 1], widths=_scaled((16, 32, 64), width), num_classes=num_classes,
                         in_channels=in_channels, **kwargs)


def resnet10(*, width: float = 1.0, num_classes: int = 10, in_channels: int = 1, **kwargs) -> SpikingResNet:
    """ResNet-10 for 28x28 inputs: CIFAR stem + 4 stages of one BasicBlock, widths 16-32-64-128 times ``width``."""
    return SpikingResNet(BasicBlock, [1, 1, 1, 1], widths=_scaled((16, 32, 64, 128), width),
                         num_classes=num_classes, in_channels=in_channels, **kwargs)


def resnet18(*, width: float = 1.0, **kwargs) -> SpikingResNet:
    return SpikingResNet(BasicBlock, [2, 2, 2, 2], widths=_scaled((64, 128, 256, 512), width), **kwargs)


def resnet34(*, width: float = 1.0, **kwargs) -> SpikingResNet:
    return SpikingResNet(BasicBlock, [3, 4, 6, 3], widths=_scaled((64, 128, 256, 512), width), **kwargs)


def resnet50(*, width: float = 1.0, **kwargs) -> SpikingResNet:
    """ResNet-50: Bottleneck blocks [3, 4, 6, 3], widths 64-128-256-512 (outputs x4: 256..2048)."""
    return SpikingResNet(Bottleneck, [3, 4, 6, 3], widths=_scaled((64, 128, 256, 512), width), **kwargs)


RESNETS = {"resnet6": resnet6, "resnet8": resnet8, "resnet10": resnet10, "resnet18": resnet18, "resnet34": resnet34,
           "resnet50": resnet50}
