"""Export: a trained QAT model (or its checkpoint) becomes a spikeforge.netimage.Network of integers.

BN folds into per-channel integer thresholds and biases (spikeforge.sw.folding, derived in docs/training.md);
widths are chosen from calibration images; deployed accuracy is measured by spikeforge.sw.reference.run, the one
implementation of the integer semantics.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from spikeforge.netimage import (Network, Population, Projection, required_acc_bits, signed_bits_for,
                                 signed_range, validate)

from . import reference
from .model import PADDING, SpikingNet, spiking_net, weight_scale

__all__ = ["ExportError", "export_network", "deployed_accuracy", "membrane_statistics", "load_model", "read_checkpoint",
           "VBITS_MAX"]

VBITS_MAX = 32  # the network file's limit on a membrane's width


class ExportError(ValueError):
    """The trained model cannot become a deployable network; the message names the layer and the fix."""


def read_checkpoint(checkpoint) -> dict:
    """A checkpoint dict from a path (or the dict itself), checked to be one of ours."""
    ckpt = checkpoint
    if isinstance(checkpoint, (str, Path)):
        path = Path(checkpoint)
        if not path.is_file():
            raise ExportError(f"{path}: no such checkpoint; train one with `spikeforge train`")
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ExportError(f"{checkpoint}: not a spikeforge checkpoint (needs 'config' and 'model')")
    return ckpt


def load_model(checkpoint) -> tuple[torch.nn.Module, dict]:
    """The QAT model of a checkpoint (eval mode) and its training config, from a path or a loaded checkpoint dict:
    a SpikingNet for a chain, a SpikingResNet (or its ANN twin) for a ResNet checkpoint (``kind == "resnet"``)."""
    ckpt = read_checkpoint(checkpoint)
    cfg = ckpt["config"]
    if ckpt.get("kind") == "resnet":
        from .train import TrainConfig, build_model

        known = {f.name for f in dataclasses.fields(TrainConfig)}
        config = TrainConfig(**{k: v for k, v in cfg.items() if k in known})
        model = build_model(config, quantized=True, input_shape=tuple(ckpt["input_shape"]), classes=ckpt["classes"],
                            surrogate_width=None if config.ann else float(cfg["surrogate_width"]))
        model.load_state_dict(ckpt["model"])
        model.set_deploy_aware(bool(ckpt.get("deploy_aware", False)))
        return model.eval(), {**cfg, "input_shape": list(ckpt["input_shape"])}
    model = spiking_net(cfg["arch"], time_steps=cfg["time_steps"], quantized=True, surrogate=cfg["surrogate"],
                        width=cfg["surrogate_width"], leak_shift=cfg["leak_shift"])
    model.load_state_dict(ckpt["model"])
    model.set_deploy_aware(bool(ckpt.get("deploy_aware", False)))
    return model.eval(), cfg


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


@torch.no_grad()
def membrane_statistics(net: Network, images, time_steps: int | None = None, batch: int = 500) -> list[dict | None]:
    """Per population: the range of leak(V) + I before clamping and the fraction of neuron-steps it clamps.

    Runs the integer semantics step by step with the reference's own building blocks, recording what
    reference.run does not expose (the unclamped potential). Input population: None.
    """
    T = net.time_steps if time_steps is None else time_steps
    pops = net.populations
    stats = [None] + [{"min": None, "max": None, "clamped": 0, "neuron_steps": 0} for _ in pops[1:]]
    images = np.asarray(images)
    for start in range(0, len(images), batch):
        x0 = torch.as_tensor(images[start:start + batch], dtype=torch.float64)
        B = x0.shape[0]
        graded = {i: sum((reference.projection_current(p, x0, pop) for p in pop.projections if p.source == 0),
                         torch.zeros(B, *pop.shape, dtype=torch.float64)) for i, pop in enumerate(pops[1:], 1)}
        v = [None] + [torch.zeros(B, *pop.shape, dtype=torch.float64) for pop in pops[1:]]
        out = [None] * len(pops)
        for _ in range(T):
            for i, pop in enumerate(pops[1:], 1):
                current = graded[i] + reference.per_channel(pop.bias, pop)
                for proj in pop.projections:
                    if proj.source != 0:
                        current = current + reference.projection_current(proj, out[proj.source], pop)
                raw = reference.leak(v[i], pop.leak_shift) + current
                vlo, vhi = signed_range(pop.vbits)
                s = stats[i]
                lo, hi = float(raw.min()), float(raw.max())
                s["min"] = lo if s["min"] is None else min(s["min"], lo)
                s["max"] = hi if s["max"] is None else max(s["max"], hi)
                s["clamped"] += int(((raw < vlo) | (raw > vhi)).sum())
                s["neuron_steps"] += raw.numel()
                v[i] = torch.clamp(raw, vlo, vhi)
                if pop.kind == "lif":
                    theta = reference.per_channel(pop.threshold, pop)
                    fired = v[i] >= theta
                    v[i] = v[i] - fired * theta
                    out[i] = fired.to(torch.float64)
    for s in stats[1:]:
        s["clamp_fraction"] = s["clamped"] / max(1, s["neuron_steps"])
    return stats


def _set_widths(net: Network, i: int, vbits: int, max_acc_bits: int) -> None:
    pop = net.populations[i]
    if vbits > VBITS_MAX:
        raise ExportError(f"layer '{pop.name}' would need {vbits}-bit membrane potentials, more than the "
                          f"network file's {VBITS_MAX}; its BN scales are too small for its weight scale")
    pop.vbits = vbits
    need = required_acc_bits(net, i)
    blo, bhi = int(pop.bias.min()), int(pop.bias.max())
    need = max(need, signed_bits_for(min(blo, 0), max(bhi, 0)))
    if need > max_acc_bits:
        raise ExportError(f"layer '{pop.name}' would need a {need}-bit accumulator (vbits={vbits}), more than "
                          f"max_acc_bits={max_acc_bits}; raise max_acc_bits or retrain with fewer weight bits")
    pop.acc_bits = need


def export_network(checkpoint_or_model, *, max_acc_bits: int = 32, calibration_images=None,
                   time_steps: int | None = None, headroom_bits: int = 1) -> Network:
    """Fold a trained QAT model into an integer Network (validated; spikeforge.netimage.save writes it).

    ``checkpoint_or_model``: a SpikingNet, a checkpoint dict or the path of ``checkpoint.pt``; a ResNet checkpoint
    is handed to :func:`spikeforge.sw.export_resnet.export_resnet` (worst-case widths, no calibration).

    Membrane widths: with ``calibration_images`` (uint8 [N, 1, H, W]) each firing population gets the fewest
    vbits at which spikes and readout of every calibration image stay exactly those of an unclamped network
    (clamping a potential that could never have fired anyway, e.g. a first-layer neuron with a constant negative
    current, is harmless and allowed), plus ``headroom_bits``; the readout gets the range its potentials reached,
    plus ``headroom_bits``. Without calibration images vbits come from a worst-case bound (wider, never clamps).
    Potential ranges and the clamping fraction at the chosen widths are stored in ``net.metadata["calibration"]``.
    An accumulator wider than ``max_acc_bits`` raises :class:`ExportError` naming the layer and the width it
    would need.
    """
    if isinstance(checkpoint_or_model, SpikingNet):
        model, cfg = checkpoint_or_model.eval(), {}
    else:
        model, cfg = load_model(checkpoint_or_model)
    if not isinstance(model, SpikingNet):  # a ResNet checkpoint: sw/export_resnet.py (worst-case widths)
        from .export_resnet import export_resnet

        return export_resnet(model, max_acc_bits=max_acc_bits, time_steps=time_steps,
                             input_shape=tuple(cfg["input_shape"]))
    T = time_steps or model.time_steps
    shapes = model.arch.shapes()
    pops = [Population(name="input", kind="input", shape=tuple(shapes[0]), bits=8)]
    for name, kind, shape, proj, bias, theta, leak in _integer_layers(model):
        pops.append(Population(name=name, kind=kind, shape=tuple(int(n) for n in shape), vbits=VBITS_MAX,
                               acc_bits=0, leak_shift=leak, bias=bias.astype(np.int64),
                               threshold=None if theta is None else theta.astype(np.int64), projections=[proj]))
    net = Network(pops, time_steps=T, metadata={"arch": str(model.arch), "time_steps": T,
                                                "exporter": "spikeforge.sw.export", **(
                                                    {"dataset": cfg.get("dataset")} if cfg else {})})
    calibrate = calibration_images is not None and len(calibration_images) > 0
    # widest first (so that calibration sees unclamped potentials), then narrowed
    if calibrate:
        calibration_images = np.asarray(calibration_images)
        wide = membrane_statistics(net, calibration_images, T)
        ranges = [(s["min"], s["max"]) for s in wide[1:]]
        unclamped = reference.run(net, calibration_images, T)
    else:
        ranges = [_worst_case_range(net, i, T) for i in range(1, len(pops))]
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
        _set_widths(net, i, vbits, max_acc_bits)
    if calibrate:
        stats = membrane_statistics(net, calibration_images, T)
        net.metadata["calibration"] = {"images": int(len(calibration_images)), "headroom_bits": headroom_bits,
                                       "populations": {
            pops[i].name: {"v_min": wide[i]["min"], "v_max": wide[i]["max"], "clamp_fraction": s["clamp_fraction"]}
            for i, s in enumerate(stats) if s is not None}}
    return validate(net, "exported network")


def _same_outcome(a: reference.ReferenceResult, b: reference.ReferenceResult) -> bool:
    spikes = all(x is None or torch.equal(x, y) for x, y in zip(a.spikes, b.spikes))
    return spikes and torch.equal(a.readout, b.readout)


def _worst_case_range(net: Network, i: int, T: int) -> tuple[float, float]:
    """Potential bounds without data: a neuron gains at most (max current) per step and, below zero, can fall by at
    most (min current) per step for T steps (the leak only shrinks |V|)."""
    from spikeforge.netimage import partial_sum_bounds

    pop = net.populations[i]
    plo, phi = partial_sum_bounds(net, i)
    lo_step = plo + min(int(pop.bias.min()), 0)
    hi_step = phi + max(int(pop.bias.max()), 0)
    theta = int(pop.threshold.max()) if pop.threshold is not None else 0
    if pop.kind == "readout":
        return T * min(lo_step, 0), T * max(hi_step, 0)
    return T * min(lo_step, 0), max(theta - 1, 0) + max(hi_step, 0)


@torch.no_grad()
def deployed_accuracy(net: Network, images, labels, T: int | None = None, batch: int = 1000) -> float:
    """Top-1 accuracy of the integer network (spikeforge.sw.reference.run) on uint8 images."""
    images, labels = np.asarray(images), np.asarray(labels)
    correct = 0
    for start in range(0, len(images), batch):
        result = reference.run(net, images[start:start + batch], time_steps=T, record=False)
        correct += int((result.prediction.numpy() == labels[start:start + batch]).sum())
    return correct / max(1, len(images))


def build_parser():
    """The parser of ``spikeforge export``."""
    import argparse

    p = argparse.ArgumentParser(prog="spikeforge export",
                                description="Fold a QAT checkpoint (a chain or a spiking ResNet) into a network image.")
    p.add_argument("checkpoint")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--calibration-images", type=int, default=1000,
                   help="train images that set a chain's membrane widths (0: a worst-case bound; a ResNet "
                        "always uses the worst-case bound)")
    p.add_argument("--max-acc-bits", type=int, default=32)
    p.add_argument("--data-dir", default=None)
    return p


def main(argv=None) -> Network:
    """Command line: ``python -m spikeforge.sw.export CHECKPOINT -o NETWORK [--calibration-images N]``."""
    from spikeforge import netimage

    from .data import load_dataset

    args = build_parser().parse_args(argv)
    try:
        ckpt = read_checkpoint(args.checkpoint)
        cfg = ckpt["config"]
        calib = None
        if args.calibration_images > 0 and ckpt.get("kind") != "resnet":
            calib = load_dataset(cfg["dataset"], "train",
                                 args.data_dir or cfg.get("data_dir"))[0][:args.calibration_images]
        net = export_network(ckpt, max_acc_bits=args.max_acc_bits, calibration_images=calib)
    except ExportError as exc:
        raise SystemExit(f"spikeforge export: {exc}") from None
    net.metadata.update(dataset=cfg["dataset"])
    netimage.save(net, args.output)
    print(netimage.summary(net))
    print(f"wrote {args.output}")
    return net


if __name__ == "__main__":
    main()
