"""Export a quantized spiking chain (sw/model.py) to an integer spikeforge.netimage.Network.

Every BN folds into per-channel integer thresholds and biases (spikeforge.sw.folding, derived in docs/training.md);
membrane widths come from calibration images run through the integer reference (or a worst-case bound without
them).
"""

from __future__ import annotations

import numpy as np
import torch

from spikeforge.netimage import Network, Population, Projection, signed_bits_for, signed_range, validate
from spikeforge.record import SpikeRecord, first_mismatch

from .. import reference
from ..model import PADDING, SpikingNet, weight_scale
from .widths import VBITS_MAX, ExportError, membrane_statistics, set_widths, worst_case_range

__all__ = ["export_chain"]


def _channel_view(values: torch.Tensor, ndim: int) -> torch.Tensor:
    return values.reshape((-1,) + (1,) * (ndim - 1))


@torch.no_grad()
def _integer_layers(model: SpikingNet):
    """Yield per population: (name, kind, shape, projection, bias, threshold, leak_shift) as integers."""
    shapes = model.arch.shapes()
    for i, (spec, block) in enumerate(zip(model.arch.layers[:-1], model.blocks)):
        name = f"{spec.kind}{i + 1}"
        ws = weight_scale(block.layer)
        if ws is None:
            raise ExportError(f"layer '{name}' has float weights (wbits=None); only a quantized (QAT) model "
                              "can be exported: train it with integer wbits")
        w_int, _ = ws
        sign, theta, bias, _ = block.folded_parameters(rounding=torch.round)
        weight = _channel_view(sign, w_int.ndim).to(torch.int64) * w_int
        lo, hi = signed_range(spec.wbits)
        if weight.numel() and (weight.min() < lo or weight.max() > hi):
            raise ExportError(f"layer '{name}': flipping the signs of channels with negative BN scale takes weights "
                              f"outside {spec.wbits} bits; use a narrow-range (symmetric) weight quantizer")
        if spec.kind == "conv":
            proj = Projection(source=i, kind="conv2d", weight=weight.numpy().astype(np.int64), wbits=spec.wbits,
                              stride=(spec.stride, spec.stride), padding=(PADDING, PADDING))
        else:
            proj = Projection(source=i, kind="dense", weight=weight.reshape(weight.shape[0], -1).numpy()
                              .astype(np.int64), wbits=spec.wbits)
        yield (name, "lif", shapes[i + 1], proj, torch.round(bias).to(torch.int64).numpy(),
               theta.to(torch.int64).numpy(), block.neuron.leak_shift)
    spec = model.arch.layers[-1]
    layer = model.readout.layer
    ws = weight_scale(layer)
    if ws is None:
        raise ExportError("the readout has float weights (wbits=None); only a quantized model can be exported")
    w_int, scale = ws
    # one scale for all classes (per-tensor quantizer), so round(b / s) keeps the argmax of V / s
    b = layer.bias if layer.bias is not None else torch.zeros(spec.out)
    bias = torch.round(b / scale).to(torch.int64)
    proj = Projection(source=len(model.blocks), kind="dense", weight=w_int.numpy().astype(np.int64),
                      wbits=spec.wbits)
    yield "readout", "readout", shapes[-1], proj, bias.numpy(), None, None


def export_chain(model: SpikingNet, *, max_acc_bits: int = 32, calibration_images=None,
                 time_steps: int | None = None, headroom_bits: int = 1, dataset: str | None = None) -> Network:
    """Fold a trained QAT chain into an integer Network (validated; spikeforge.netimage.save writes it).

    Membrane widths: with ``calibration_images`` (uint8 [N, 1, H, W]) each firing population gets the fewest
    vbits at which spikes and readout of every calibration image stay exactly those of an unclamped network
    (clamping a potential that could never have fired anyway, e.g. a first-layer neuron with a constant negative
    current, is harmless and allowed), plus ``headroom_bits``; the readout gets the range its potentials reached,
    plus ``headroom_bits``. Without calibration images vbits come from a worst-case bound (wider, never clamps).
    Potential ranges and the clamping fraction at the chosen widths are stored in ``net.metadata["calibration"]``.
    An accumulator wider than ``max_acc_bits`` raises :class:`ExportError` naming the layer and the width it
    would need.
    """
    model = model.eval()
    T = time_steps or model.time_steps
    shapes = model.arch.shapes()
    pops = [Population(name="input", kind="input", shape=tuple(shapes[0]), bits=8)]
    for name, kind, shape, proj, bias, theta, leak in _integer_layers(model):
        pops.append(Population(name=name, kind=kind, shape=tuple(int(n) for n in shape), vbits=VBITS_MAX,
                               acc_bits=0, leak_shift=leak, bias=bias.astype(np.int64),
                               threshold=None if theta is None else theta.astype(np.int64), projections=[proj]))
    net = Network(pops, time_steps=T, metadata={"arch": str(model.arch), "time_steps": T,
                                                "exporter": "spikeforge.sw.export", **(
                                                    {"dataset": dataset} if dataset is not None else {})})
    calibrate = calibration_images is not None and len(calibration_images) > 0
    # widest first (so that calibration sees unclamped potentials), then narrowed
    if calibrate:
        calibration_images = np.asarray(calibration_images)
        wide = membrane_statistics(net, calibration_images, T)
        ranges = [(s["min"], s["max"]) for s in wide[1:]]
        unclamped = reference.run(net, calibration_images, T)
    else:
        ranges = [worst_case_range(net, i, T) for i in range(1, len(pops))]
    for i, (lo, hi) in enumerate(ranges, 1):
        pop = pops[i]
        floor_bits = signed_bits_for(-1, max(1, int(pop.threshold.max()) if pop.threshold is not None else 1))
        if pop.leak_shift is not None:
            floor_bits = max(floor_bits, pop.leak_shift + 1)
        vbits = max(floor_bits, signed_bits_for(int(np.floor(min(lo, 0))), int(np.ceil(max(hi, 1)))))
        if calibrate and pop.kind == "lif":
            # bisect for the fewest bits that keep every calibration outcome (wider never changes fewer)
            lo_bits, hi_bits = floor_bits, vbits  # hi_bits is known to keep them
            while lo_bits < hi_bits:
                pop.vbits = (lo_bits + hi_bits) // 2
                if _same_outcome(reference.run(net, calibration_images, T, record=True), unclamped):
                    hi_bits = pop.vbits
                else:
                    lo_bits = pop.vbits + 1
            vbits = hi_bits
            pop.vbits = VBITS_MAX
        if calibrate:
            vbits += headroom_bits  # unseen images may reach a little beyond the calibration set
        ranges[i - 1] = vbits
    for i, vbits in enumerate(ranges, 1):
        set_widths(net, i, vbits, max_acc_bits)
    if calibrate:
        stats = membrane_statistics(net, calibration_images, T)
        net.metadata["calibration"] = {"images": int(len(calibration_images)), "headroom_bits": headroom_bits,
                                       "populations": {
            pops[i].name: {"v_min": wide[i]["min"], "v_max": wide[i]["max"], "clamp_fraction": s["clamp_fraction"]}
            for i, s in enumerate(stats) if s is not None}}
    return validate(net, "exported network")


def _same_outcome(a: SpikeRecord, b: SpikeRecord) -> bool:
    return first_mismatch(a, b) is None  # every spike and the readout
