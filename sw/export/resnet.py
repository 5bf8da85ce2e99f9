"""Export a quantized spiking ResNet (sw/resnet.py) to an integer spikeforge.netimage.Network.

Every BN folds into per-channel integer thresholds and biases (sw/folding.py). A residual join is one population
with two projections (main path and shortcut) whose currents must share one integer scale per output channel: the
main branch sets the unit u_c = |a_c| s_w, the shortcut's weights are requantized onto it (docs/resnet.md).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from spikeforge.netimage import Network, Population, Projection, signed_bits_for, signed_range, validate

from ..bn import BNFoldError
from ..model import PIXEL_MAX, weight_scale
from ..resnet import BasicBlock, ConvBN, SpikingResNet
from ..resnet_fold import fold_population
from .widths import VBITS_MAX, ExportError, set_widths, worst_case_range

__all__ = ["export_resnet", "ExportError", "MAX_WBITS"]

MAX_WBITS = 16  # the network file's widest weight


def _int_weights(conv: torch.nn.Module, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    ws = weight_scale(conv)
    if ws is None:
        raise ExportError(f"'{where}' has float weights (wbits=None); only a quantized model can be exported: "
                          "build it with integer wbits and train it with QAT")
    return ws


def _wbits(layer: torch.nn.Module) -> int:
    return int(layer.quant_weight().bit_width)


def _fits(weight: torch.Tensor, wbits: int) -> int:
    """The fewest signed bits (at least ``wbits``) that hold every weight."""
    if weight.numel() == 0:
        return wbits
    return max(wbits, signed_bits_for(int(weight.min()), int(weight.max())))


@torch.no_grad()
def _fold_population(name: str, main: tuple[ConvBN, int, float], neuron, *, shortcut=None,
                     notes: list[str]) -> tuple[list[Projection], np.ndarray, np.ndarray]:
    """Projections, bias and threshold of one population (the arithmetic is sw/resnet_fold.py's).

    ``main`` is (conv+BN, source index, source unit: 1/255 for pixels, 1 for spikes). ``shortcut`` is None,
    ("identity", source index, channels) or (conv+BN, source index, 1.0) for a residual join.
    """
    threshold = float(getattr(neuron, "threshold", 1.0))
    term, source, source_unit = main
    w_int, _ = _int_weights(term.conv, f"{name} (main conv)")
    if shortcut is not None and shortcut[0] != "identity":
        _int_weights(shortcut[0].conv, f"{name} (shortcut conv)")
    try:
        folded = fold_population(term, source_unit, threshold, None if shortcut is None else shortcut[0])
    except BNFoldError as exc:
        raise ExportError(f"'{name}': {exc}") from None
    weight = folded.sign.view(-1, 1, 1, 1).to(torch.int64) * w_int
    wbits = _wbits(term.conv)
    lo, hi = signed_range(wbits)
    if weight.numel() and (weight.min() < lo or weight.max() > hi):
        raise ExportError(f"'{name}': flipping the signs of channels with negative BN scale takes weights outside "
                          f"{wbits} bits; use a narrow-range (symmetric) weight quantizer")
    projections = [Projection(source=source, kind="conv2d", weight=weight.numpy().astype(np.int64), wbits=wbits,
                              stride=tuple(term.conv.stride), padding=tuple(term.conv.padding))]
    if shortcut is not None:
        if shortcut[0] == "identity":
            _, sc_source, channels = shortcut
            sc_weight = torch.diag_embed(folded.shortcut.to(torch.int64)).reshape(channels, channels, 1, 1)
            # no trained width to keep: the identity gets the width its diagonal needs
            stride, padding, what = (1, 1), (0, 0), "identity shortcut (diagonal 1x1, round(1/u_c))"
            sc_wbits = _fits(sc_weight, 2)
        else:
            sc_term, sc_source, _ = shortcut
            sc_weight = folded.shortcut.to(torch.int64)
            stride, padding = tuple(sc_term.conv.stride), tuple(sc_term.conv.padding)
            sc_wbits, what = _wbits(sc_term.conv), "shortcut conv requantized to the main branch's scale"
        need = _fits(sc_weight, sc_wbits)
        if need > MAX_WBITS:
            raise ExportError(f"'{name}': the {what} needs {need}-bit weights, more than the network file's "
                              f"{MAX_WBITS}; the two branches' BN scales are too far apart")
        if need > sc_wbits:
            notes.append(f"{name}: {what} widened from {sc_wbits} to {need} weight bits")
        projections.append(Projection(source=sc_source, kind="conv2d", weight=sc_weight.numpy().astype(np.int64),
                                      wbits=need, stride=stride, padding=padding))
    return projections, folded.bias.to(torch.int64).numpy(), folded.threshold.to(torch.int64).numpy()


@torch.no_grad()
def export_resnet(model: SpikingResNet, *, max_acc_bits: int = 32, time_steps: int | None = None,
                  input_shape: tuple[int, int, int] | None = None) -> Network:
    """Fold a quantized SpikingResNet into a validated integer Network (spikeforge.netimage.save writes it).

    Populations, in order: ``input``, ``stem`` (``stem_pool``), per block ``layerI.J.conv1`` (``.conv2`` for a
    Bottleneck) and the join ``layerI.J``, then ``readout``, whose dense projection is the global average pool and
    fc folded together (V_int = V * H * W / s_fc). ``input_shape`` (C, H, W) defaults to 28x28 for one input channel
    and 32x32 otherwise. Membrane widths come from a worst-case bound (never clamps); accumulator widths from
    spikeforge.netimage.required_acc_bits. A shortcut whose requantized weights need more bits than it was trained
    with is widened; ``net.metadata["widened"]`` lists it and a warning says so.
    """
    if not isinstance(model, SpikingResNet):
        raise ExportError(f"export_resnet takes a SpikingResNet, not {type(model).__name__}")
    if model.ann:
        raise ExportError("the ANN twin (ann=True) has no spiking neurons to deploy; export the spiking model")
    if model.maxpool is not None:
        raise ExportError("the 'imagenet' stem's max-pool has no integer-semantics equivalent (no max operation); "
                          "build the model with stem='imagenet_conv' (a stride-2 3x3 spiking conv) or 'cifar'")
    model = model.eval()
    T = time_steps or model.time_steps
    in_channels = model.stem.conv.in_channels
    if input_shape is None:
        input_shape = (in_channels, 28, 28) if in_channels == 1 else (in_channels, 32, 32)
    with torch.no_grad():
        probe = model.run(torch.zeros(1, *input_shape), 1, record=True).spikes
    shapes = {name: tuple(int(n) for n in s.shape[2:]) for name, s in probe.items()}
    pops = [Population(name="input", kind="input", shape=tuple(input_shape), bits=8)]
    notes: list[str] = []

    def add(name, neuron, main, shortcut=None):
        projections, bias, theta = _fold_population(name, main, neuron, shortcut=shortcut, notes=notes)
        pops.append(Population(name=name, kind="lif", shape=shapes[name], vbits=VBITS_MAX, acc_bits=0,
                               leak_shift=getattr(neuron, "leak_shift", None), bias=bias, threshold=theta,
                               projections=projections))
        return len(pops) - 1

    src = add("stem", model.stem_neuron, (model.stem, 0, 1.0 / PIXEL_MAX))
    if model.stem_pool is not None:
        src = add("stem_pool", model.stem_pool_neuron, (model.stem_pool, src, 1.0))
    for i, stage in enumerate(model.stages, 1):
        for j, blk in enumerate(stage):
            prefix, block_input = f"layer{i}.{j}", src
            src = add(f"{prefix}.conv1", blk.neuron1, (blk.conv1, src, 1.0))
            if isinstance(blk, BasicBlock):
                last_conv, last_neuron = blk.conv2, blk.neuron2
            else:
                src = add(f"{prefix}.conv2", blk.neuron2, (blk.conv2, src, 1.0))
                last_conv, last_neuron = blk.conv3, blk.neuron3
            shortcut = ("identity", block_input, pops[block_input].channels) if blk.downsample is None else \
                (blk.downsample, block_input, 1.0)
            src = add(prefix, last_neuron, (last_conv, src, 1.0), shortcut)

    w_int, scale = _int_weights(model.fc, "readout (fc)")
    channels, height, width = pops[src].shape
    area = height * width
    # avg-pool then fc == one dense projection with fc's integer weights repeated over the H x W positions
    dense = w_int.to(torch.int64).repeat_interleave(area, dim=1)
    b = model.fc.bias if model.fc.bias is not None else torch.zeros(w_int.shape[0])
    bias = torch.round(b.double() * area / scale.double()).to(torch.int64)
    pops.append(Population(name="readout", kind="readout", shape=(int(w_int.shape[0]),), vbits=VBITS_MAX,
                           acc_bits=0, leak_shift=None, bias=bias.numpy(), threshold=None,
                           projections=[Projection(source=src, kind="dense", weight=dense.numpy().astype(np.int64),
                                                   wbits=_wbits(model.fc))]))
    net = Network(pops, time_steps=T, metadata={
        "arch": f"{model.block.__name__}{list(model.layers)}",
        "widths": list(model.widths), "stem": model.stem_kind, "stem_stride": model.stem_stride,
        "bn": model.bn_kind,
        "exporter": "spikeforge.sw.export.resnet", "readout_scale": f"V_int = V * {area} / s_fc", "widened": notes})
    for note in notes:
        warnings.warn(f"export_resnet: {note}", stacklevel=3)
    for k in range(1, len(pops)):
        pop = pops[k]
        lo, hi = worst_case_range(net, k, T)
        floor = signed_bits_for(-1, int(pop.threshold.max()) if pop.threshold is not None else 1)
        if pop.leak_shift is not None:
            floor = max(floor, pop.leak_shift + 1)
        set_widths(net, k, max(floor, signed_bits_for(int(min(lo, 0)), int(max(hi, 1)))), max_acc_bits)
    return validate(net, "exported resnet")
