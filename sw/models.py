"""The model a training config names, the model a checkpoint holds, and their accuracy.

:func:`build_model` turns a :class:`~spikeforge.sw.config.TrainConfig` into the chain (sw/model.py) or the spiking
ResNet / its ANN twin (sw/resnet.py), float or with Brevitas weights; :func:`load_model` rebuilds the QAT model of
a ``checkpoint.pt`` that ``spikeforge train`` wrote. The trainer, the exporter and ``spikeforge run --backend
torch`` share them, so a checkpoint always comes back as the model that was trained.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import RESNET_ARCHS, ConfigError, TrainConfig
from .fused import fused_lif_neuron
from .model import ARCHITECTURES, PIXEL_MAX, Architecture, SpikingNet, spiking_net
from .resnet import RESNETS, lif_neuron

__all__ = ["CheckpointError", "build_model", "read_checkpoint", "load_model", "evaluate", "evaluate_checkpoint"]


class CheckpointError(ValueError):
    """A file that is not a spikeforge training checkpoint; the message names it and what to do."""


def build_model(config: TrainConfig, quantized: bool, input_shape=(1, 28, 28), classes: int = 10,
                surrogate_width: float | None = None, lif: str | None = None) -> nn.Module:
    """The model ``config.arch`` names: a SpikingNet chain (1 x 28 x 28 input) or a SpikingResNet / its ANN twin,
    float (``quantized=False``) or with Brevitas weights; float and QAT versions share parameter names.
    ``lif`` overrides ``config.lif`` (the LIF implementation, one of config.LIF_IMPLEMENTATIONS)."""
    width = float(config.surrogate_width if surrogate_width is None else surrogate_width)
    lif = lif or config.lif
    if lif == "autograd":
        neuron = lif_neuron(config.surrogate, width, leak_shift=config.leak_shift)
    else:
        neuron = fused_lif_neuron(config.surrogate, width, leak_shift=config.leak_shift,
                                  temporal_window=config.temporal_window, compiled=lif == "compiled")
    if not config.is_resnet:
        if tuple(input_shape) != (1, 28, 28) or classes != 10:
            raise ConfigError(f"arch {config.arch!r} is a chain for 1x28x28 images and 10 classes, but dataset "
                              f"{config.dataset!r} has {'x'.join(map(str, input_shape))} images and {classes} "
                              f"classes; use a ResNet (--arch {' | '.join(RESNET_ARCHS)})")
        arch = ARCHITECTURES.get(config.arch) or Architecture.parse(config.arch)
        return SpikingNet(arch, time_steps=config.time_steps, quantized=quantized, neuron=neuron)
    return RESNETS[config.arch](width=config.width, num_classes=classes, in_channels=input_shape[0], stem=config.stem,
                                stem_stride=config.stem_stride, bn=config.bn, time_steps=config.time_steps,
                                neuron=neuron, ann=config.ann,
                                wbits=config.wbits if quantized else None)


def read_checkpoint(checkpoint) -> dict:
    """A checkpoint dict from a path (or the dict itself), checked to be one of ours."""
    ckpt = checkpoint
    if isinstance(checkpoint, (str, Path)):
        path = Path(checkpoint)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such checkpoint; train one with `spikeforge train`")
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{checkpoint}: not a spikeforge checkpoint (needs 'config' and 'model')")
    return ckpt


def load_model(checkpoint) -> tuple[nn.Module, dict]:
    """The QAT model of a checkpoint (eval mode) and its training config, from a path or a loaded checkpoint dict:
    a SpikingNet for a chain, a SpikingResNet (or its ANN twin) for a ResNet checkpoint (``kind == "resnet"``)."""
    ckpt = read_checkpoint(checkpoint)
    cfg = ckpt["config"]
    if ckpt.get("kind") == "resnet":
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


@torch.no_grad()
def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch: int = 1000, *,
             device: torch.device | None = None, dist=None) -> float:
    """Top-1 accuracy of the float/QAT model (eval mode) on uint8 images; with ``dist`` (the trainer's
    :class:`~spikeforge.sw.train.runtime.Dist`), each rank scores its share of the images and the counts are
    summed."""
    was_training = model.training
    model.eval()
    device = device or torch.device("cpu")
    rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
    shard = range(rank * batch, len(images), batch * world)
    correct = 0
    for start in shard:
        x = (torch.as_tensor(images[start:start + batch]).float() / PIXEL_MAX).to(device)
        correct += int((model(x).argmax(1).cpu().numpy() == labels[start:start + batch]).sum())
    model.train(was_training)
    if dist is not None:
        correct = int(dist.all_sum([float(correct)])[0])
    return correct / max(1, len(images))


@torch.no_grad()
def evaluate_checkpoint(checkpoint, images: np.ndarray, labels: np.ndarray, time_steps: int | None = None,
                        batch: int = 1000) -> dict:
    """The QAT model of a checkpoint on uint8 images: ``{"accuracy": float, "spike_counts": {layer: spikes}}``."""
    model, _ = load_model(checkpoint)
    chain = hasattr(model, "arch")
    counts: dict[str, int] = {}
    correct = 0
    for start in range(0, len(images), batch):
        x = torch.as_tensor(images[start:start + batch]).float() / PIXEL_MAX
        out = model.run(x, time_steps) if chain else model.run(x, time_steps, record=not model.ann)
        correct += int((out.logits.argmax(1).numpy() == labels[start:start + batch]).sum())
        named = zip([f"{spec.kind}{i + 1}" for i, spec in enumerate(model.arch.layers[:-1])], out.spikes) \
            if chain else out.spikes.items()
        for name, spikes in named:
            counts[name] = counts.get(name, 0) + int(spikes.sum())
    return {"accuracy": correct / max(1, len(images)), "spike_counts": counts}
