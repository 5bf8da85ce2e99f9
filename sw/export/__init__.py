"""Export: a trained QAT model (or its checkpoint) becomes a spikeforge.netimage.Network of integers.

BN folds into per-channel integer thresholds and biases (spikeforge.sw.folding, derived in docs/training.md). A chain
is exported by :mod:`.chain` (widths from calibration images), a spiking ResNet by :mod:`.resnet` (worst-case
widths); :mod:`.widths` holds what both share. Deployed accuracy is measured by spikeforge.sw.reference.run, the one
implementation of the integer semantics. ``spikeforge export`` is :func:`main`.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from spikeforge import netimage
from spikeforge.netimage import Network

from .. import reference
from ..data import load_dataset
from ..model import SpikingNet
from ..models import load_model, read_checkpoint
from .chain import export_chain
from .resnet import export_resnet
from .widths import VBITS_MAX, ExportError, membrane_statistics

__all__ = ["ExportError", "export_network", "export_chain", "export_resnet", "deployed_accuracy", "deployed_activity",
           "blank_spikes",
           "membrane_statistics", "VBITS_MAX", "build_parser", "main"]


def export_network(checkpoint_or_model, *, max_acc_bits: int = 32, calibration_images=None,
                   time_steps: int | None = None, headroom_bits: int = 1) -> Network:
    """Fold a trained QAT model into an integer Network (validated; spikeforge.netimage.save writes it).

    ``checkpoint_or_model``: a SpikingNet, a checkpoint dict or the path of ``checkpoint.pt``. A chain is exported
    by :func:`export_chain` (``calibration_images``, ``headroom_bits``: see there), a ResNet checkpoint by
    :func:`export_resnet` (worst-case widths, no calibration). An accumulator wider than ``max_acc_bits`` raises
    :class:`ExportError` naming the layer and the width it would need.
    """
    if isinstance(checkpoint_or_model, SpikingNet):
        model, cfg = checkpoint_or_model, {}
    else:
        model, cfg = load_model(checkpoint_or_model)
    if not isinstance(model, SpikingNet):
        return export_resnet(model, max_acc_bits=max_acc_bits, time_steps=time_steps,
                             input_shape=tuple(cfg["input_shape"]))
    return export_chain(model, max_acc_bits=max_acc_bits, calibration_images=calibration_images,
                        time_steps=time_steps, headroom_bits=headroom_bits, dataset=cfg.get("dataset"))


@torch.no_grad()
def deployed_accuracy(net: Network, images, labels, T: int | None = None, batch: int = 1000) -> float:
    """Top-1 accuracy of the integer network (spikeforge.sw.reference.run) on uint8 images."""
    images, labels = np.asarray(images), np.asarray(labels)
    correct = 0
    for start in range(0, len(images), batch):
        result = reference.run(net, images[start:start + batch], time_steps=T, record=False)
        correct += int((result.prediction == labels[start:start + batch]).sum())
    return correct / max(1, len(images))


@torch.no_grad()
def deployed_activity(net: Network, images, labels, T: int | None = None, batch: int = 1000,
                      raster_bytes: int = 1 << 28) -> dict:
    """The integer network's accuracy (as :func:`deployed_accuracy`) and spikes per image of each firing
    population (``{name: mean over the images of its spikes in all T steps}``), from the reference's spike
    rasters; the batch shrinks so that one batch's rasters stay under ``raster_bytes``."""
    images, labels = np.asarray(images), np.asarray(labels)
    steps = net.time_steps if T is None else T
    neurons = sum(p.size for p in net.populations if p.kind == "lif")
    batch = max(1, min(batch, raster_bytes // max(1, steps * neurons)))
    names = [p.name for p in net.populations]
    counts = {p.name: 0 for p in net.populations if p.kind == "lif"}
    correct = 0
    for start in range(0, len(images), batch):
        result = reference.run(net, images[start:start + batch], time_steps=T)
        correct += int((result.prediction == labels[start:start + batch]).sum())
        for name, count in zip(names, result.spike_counts()):
            if count is not None:
                counts[name] += count
    n = max(1, len(images))
    return {"accuracy": correct / n, "spikes_per_image": {name: c / n for name, c in counts.items()}}


@torch.no_grad()
def blank_spikes(net: Network, T: int | None = None) -> dict[str, int]:
    """Spikes of each firing population of the integer network on one all-zero image (all T steps)."""
    result = reference.run(net, np.zeros((1, *net.input.shape), dtype=np.uint8), time_steps=T)
    return {name: count for name, count in zip(result.population_names, result.spike_counts()) if count is not None}


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``spikeforge export``."""
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
    """Command line: ``spikeforge export CHECKPOINT -o NETWORK [--calibration-images N]``."""
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
