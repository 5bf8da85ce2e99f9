"""Training schedule for every model and dataset: float phase -> QAT fine-tune (deploy-aware for the chain) -> export
-> deployed integer evaluation.

``train(TrainConfig(...))`` is the whole pipeline for the demo chain (sw/model.py) and the spiking ResNets
(sw/resnet.py, or their ANN twins), on MNIST-style or colour datasets (sw/data.py), on one CPU/GPU or many through
torchrun (DDP). Every epoch (and every ``checkpoint_every`` steps) leaves a resumable state in the out dir; the end
writes checkpoint.pt (config + QAT weights), network.sfnet and summary.json (float / QAT / deployed accuracy side by
side, wall times).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from spikeforge import netimage

from .data import MNIST_STYLE, NUM_CLASSES, load_dataset
from .export import deployed_accuracy, export_network, membrane_statistics
from .model import ARCHITECTURES, PIXEL_MAX, Architecture, SpikingNet
from .neuron import SURROGATES

__all__ = ["ConfigError", "TrainConfig", "PRESETS", "preset", "train", "evaluate", "evaluate_checkpoint", "build_model", "main"]

RESNET_ARCHS = ("resnet8", "resnet10", "resnet18", "resnet34", "resnet50")
AUTO_WIDTHS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)  # the candidates of --surrogate-width auto
# compiled: sw/fused.py's FusedLIF with its torch.compile'd T-step kernels (the default: fastest); fused: the same
# without torch.compile; autograd: sw/neuron.py's LIF, recorded step by step by autograd. Same spikes; gradients
# equal up to float rounding (tests/test_sw_fused.py).
LIF_IMPLEMENTATIONS = ("compiled", "fused", "autograd")


class ConfigError(ValueError):
    """A training config (or out dir) that cannot run; the message names the field and what to do."""


@dataclass
class TrainConfig:
    """Everything a run depends on; the defaults are the default schedule (``make train``)."""

    dataset: str = "mnist"                # mnist | fashion-mnist | cifar10 | cifar100 | imagenette (sw/data.py)
    data_dir: str | None = None           # IDX folder (MNIST-style) or the unpacked dataset folder (colour sets)
    arch: str = "demo"                    # a chain (model.ARCHITECTURES name or c8s2w8-c16s2w4-d10w4) or resnet8..50
    time_steps: int = 10
    epochs_float: int = 24
    epochs_qat: int = 4
    batch_size: int = 128                 # the global batch: split over the DDP ranks
    lr: float = 5e-3                      # peak LR of the float phase
    lr_qat: float = 5e-4                  # start LR of the QAT phase (cosine to 0)
    weight_decay: float = 1e-4
    optimizer: str = "adamw"              # "adamw" | "sgd"
    schedule: str = "onecycle"            # float phase: "onecycle" | "cosine"
    surrogate: str = "arctan"             # one of neuron.SURROGATES
    surrogate_width: float | str = 0.5    # or "auto": sw.gradflow.auto_width picks one of AUTO_WIDTHS at the start
    leak_shift: int | None = None         # None = integrate-and-fire
    augment_shift: int = 1                # MNIST-style: random translation of +-n pixels (zero fill), train only
    deploy_aware: bool = True             # QAT with the exporter's integer arithmetic in the loop (no BNTT/ANN)
    bn_calibration_batches: int = 50      # BN statistics re-measured on the quantized weights before QAT
    seed: int = 0
    out: str = "build/train"
    train_subset: int | None = None       # first N shuffled train images only (demo, tests)
    test_subset: int | None = None        # first N test images only (tests); None = the full test set
    calibration_images: int = 1000        # train images that set the exported vbits (chain)
    eval_batch: int = 1000
    max_acc_bits: int = 32
    threads: int | None = None            # torch threads; None = all cores (at most 4)
    progress: bool = True                 # tqdm bars
    # --- added with the ResNet / colour / DDP loop; their defaults keep older out dirs resumable
    width: float = 1.0                    # ResNet width multiplier
    stem: str = "cifar"                   # ResNet stem: cifar | imagenet | imagenet_conv (sw/resnet.py)
    bn: str = "shared"                    # ResNet BN kind: shared | bntt | tdbn
    wbits: int = 4                        # ResNet QAT weight bits of the hidden convs (stem 8, readout = wbits)
    ann: bool = False                     # ResNet only: the ANN twin (ReLU, T = 1); trained the same way, not exported
    image_size: int = 64                  # imagenette: decoded image side
    crop_padding: int = 4                 # colour sets: random crop with this zero padding + horizontal flip
    label_smoothing: float = 0.0
    momentum: float = 0.9                 # sgd
    nesterov: bool = True                 # sgd
    amp: str = "off"                      # off | bf16 | fp16 (torch.autocast; fp16 needs CUDA)
    compile: bool | str = False           # torch.compile the training model: False | True | "graphs" (CUDA graphs)
    deterministic: bool = False           # torch.use_deterministic_algorithms (warn-only) and no cuDNN autotuning
    grad_checkpoint: bool = False         # recompute every block's forward in backward (deep nets, long T)
    temporal_window: int | None = None    # truncated BPTT every k steps (1 = SLTT; needs a fused lif); None = exact
    checkpoint_every: int = 0             # also save the resumable state every N optimizer steps (0: per epoch)
    device: str = "auto"                  # auto (CUDA when available) | cpu | cuda
    deployed_images: int | None = None    # test images for the integer evaluation; None = all of them
    lif: str = "compiled"                 # LIF implementation: compiled | fused | autograd (same spikes, see docs)
    augment_flip: bool = False            # MNIST-style: random horizontal flip in training (clothes, not digits)
    channels_last: str = "auto"           # conv memory layout: auto (channels_last on CPU) | true | false
    malloc_cache: str = "auto"            # keep freed tensors in glibc's heap: auto (on the CPU) | true | false
    event_convs: str = "auto"             # event-driven hidden convs (sw/event_conv.py): auto | true | false

    @classmethod
    def preset(cls, name: str, **overrides) -> "TrainConfig":
        """A copy of preset ``name`` with fields replaced; ``epochs`` / ``qat_epochs`` are accepted as the command
        line's names of ``epochs_float`` / ``epochs_qat``."""
        return preset(name, **overrides)

    @property
    def is_resnet(self) -> bool:
        return self.arch in RESNET_ARCHS

    def validate(self) -> "TrainConfig":
        if self.surrogate not in SURROGATES:
            raise ConfigError(f"surrogate must be one of {sorted(SURROGATES)}, not {self.surrogate!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"optimizer must be 'adamw' or 'sgd', not {self.optimizer!r}")
        if self.schedule not in ("onecycle", "cosine"):
            raise ConfigError(f"schedule must be 'onecycle' or 'cosine', not {self.schedule!r}")
        if self.epochs_float < 0 or self.epochs_qat < 0 or self.epochs_float + self.epochs_qat == 0:
            raise ConfigError("epochs_float and epochs_qat must be >= 0, with at least one epoch in all")
        if self.amp not in ("off", "bf16", "fp16"):
            raise ConfigError(f"amp must be 'off', 'bf16' or 'fp16', not {self.amp!r}")
        if self.channels_last not in ("auto", "true", "false"):
            raise ConfigError(f"channels_last must be 'auto', 'true' or 'false', not {self.channels_last!r}")
        if self.malloc_cache not in ("auto", "true", "false"):
            raise ConfigError(f"malloc_cache must be 'auto', 'true' or 'false', not {self.malloc_cache!r}")
        if self.event_convs not in ("auto", "true", "false"):
            raise ConfigError(f"event_convs must be 'auto', 'true' or 'false', not {self.event_convs!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', not {self.device!r}")
        if self.compile not in (False, True, "graphs"):
            raise ConfigError(f"compile must be true, false or 'graphs', not {self.compile!r}")
        if self.compile == "graphs" and self.device == "cpu":
            raise ConfigError("compile 'graphs' (CUDA graphs) needs a CUDA device, not device 'cpu'; "
                              "use compile true on the CPU")
        if isinstance(self.surrogate_width, str) and self.surrogate_width != "auto":
            try:
                self.surrogate_width = float(self.surrogate_width)
            except ValueError:
                raise ConfigError(f"surrogate_width must be a number or 'auto', not {self.surrogate_width!r}") from None
        if not self.is_resnet and self.ann:
            raise ConfigError(f"ann (the ANN twin) needs a ResNet arch ({', '.join(RESNET_ARCHS)}), not {self.arch!r}")
        if self.lif not in LIF_IMPLEMENTATIONS:
            raise ConfigError(f"lif must be one of {', '.join(LIF_IMPLEMENTATIONS)}, not {self.lif!r}")
        if self.temporal_window is not None and self.lif == "autograd":
            raise ConfigError(f"temporal_window {self.temporal_window} needs the fused LIF (lif compiled or fused); "
                              "lif autograd always trains with exact BPTT")
        if self.ann and self.surrogate_width == "auto":
            raise ConfigError("surrogate_width 'auto' measures spiking neurons; the ANN twin (ann) has none")
        if not self.is_resnet:
            try:
                ARCHITECTURES.get(self.arch) or Architecture.parse(self.arch)
            except ValueError as exc:
                raise ConfigError(f"arch {self.arch!r} is neither a ResNet ({', '.join(RESNET_ARCHS)}) nor a chain "
                                  f"({', '.join(ARCHITECTURES)} or a string like c8s2w8-c16s2w4-d10w4): {exc}") from None
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0 steps, not {self.checkpoint_every}")
        return self


# Run-independent fields: changing them does not make an out dir's saved state stale.
_RUN_ONLY = {"out", "progress", "threads", "eval_batch", "test_subset", "calibration_images", "max_acc_bits",
             "checkpoint_every", "device", "deployed_images", "compile", "lif", "channels_last", "malloc_cache",
             "event_convs"}
# Fields added after out dirs already existed: left out of the config key while at their default, so those resume.
_ADDED = ("width", "stem", "bn", "wbits", "ann", "image_size", "crop_padding", "label_smoothing", "momentum",
          "nesterov", "amp", "deterministic", "grad_checkpoint", "temporal_window", "augment_flip")

_PAPER = dict(dataset="cifar100", arch="resnet50", time_steps=10, epochs_float=200, epochs_qat=20, batch_size=128,
              optimizer="sgd", lr=0.1, lr_qat=0.01, weight_decay=5e-4, schedule="cosine", label_smoothing=0.1,
              wbits=8, bn="shared", stem="cifar", out="build/resnet50-cifar100", deployed_images=1000)

PRESETS: dict[str, TrainConfig] = {
    "default": TrainConfig(),
    # ~4 minutes on 2 cores including export and the full 10k-image deployed evaluation
    "demo": TrainConfig(epochs_float=3, epochs_qat=1, lr=5e-3, out="build/demo", calibration_images=500),
    # the paper's setting: spiking ResNet-50 on CIFAR-100, T = 10 (docs/training.md: 1 GPU, or 8 with torchrun)
    "resnet50-cifar100": TrainConfig(**_PAPER),
    "resnet50-cifar100-ann": TrainConfig(**{**_PAPER, "ann": True, "out": "build/resnet50-cifar100-ann"}),
}


def preset(name: str, **overrides) -> TrainConfig:
    """A copy of a preset config with some fields replaced."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    for alias, field_name in _ALIASES.items():
        if alias in overrides:
            overrides[field_name] = overrides.pop(alias)
    return dataclasses.replace(PRESETS[name], **overrides)


_ALIASES = {"epochs": "epochs_float", "qat_epochs": "epochs_qat"}

# Test hook: called after every optimizer step as _after_step(model, epoch, step) (step counts from 1 in the epoch).
_after_step = None


# --- distributed ----------------------------------------------------------------------------------------------


@dataclass
class _Dist:
    """Where this process sits: rank 0 of 1 when not launched by torchrun."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (BN running statistics) everywhere: DDP syncs them only at the start of a forward."""
        if self.world > 1:
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, 0)

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def _setup_distributed(config: TrainConfig) -> _Dist:
    """Join the process group that torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK): nccl on CUDA, gloo on CPU."""
    want_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but torch sees no CUDA device; use --device cpu or auto")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(device=torch.device("cuda" if want_cuda else "cpu"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    owns = not torch.distributed.is_initialized()
    if owns:
        torch.distributed.init_process_group("nccl" if want_cuda else "gloo", rank=rank, world_size=world)
    return _Dist(rank=rank, world=world, device=device, owns_group=owns)


# --- helpers ------------------------------------------------------------------------------------------------


def _set_threads(config: TrainConfig) -> None:
    n = config.threads or min(4, os.cpu_count() or 1)
    torch.set_num_threads(n)


def _batches(n: int, batch: int, generator: torch.Generator | None):
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch):
        yield order[start:start + batch]


def _augment(x: torch.Tensor, shift: int, generator: torch.Generator, flip: bool = False) -> torch.Tensor:
    """Random translation by up to +-shift pixels per image, filling with 0 (what zero padding sees), then (with
    ``flip``) a horizontal mirror of a random half of the images. Without flip the draws are those of older runs."""
    if flip:
        x = torch.where(torch.rand(x.shape[0], generator=generator)[:, None, None, None] < 0.5, x.flip(-1), x)
    if shift <= 0:
        return x
    B, C, H, W = x.shape
    padded = F.pad(x, (shift, shift, shift, shift))
    dy, dx = torch.randint(0, 2 * shift + 1, (2, B), generator=generator)
    rows = (dy[:, None] + torch.arange(H)[None])[:, None, :, None].expand(B, C, H, W)
    cols = (dx[:, None] + torch.arange(W)[None])[:, None, None, :].expand(B, C, H, W)
    out = padded[torch.arange(B)[:, None, None, None], torch.arange(C)[None, :, None, None], rows, cols]
    return out


def _train_batch(config: TrainConfig, images: np.ndarray, generator: torch.Generator) -> torch.Tensor:
    """pixel/255 of one global batch with the dataset's augmentation (drawn from the epoch's generator)."""
    x = torch.as_tensor(images).float() / PIXEL_MAX
    if config.dataset in MNIST_STYLE:
        return _augment(x, config.augment_shift, generator, config.augment_flip)
    from .vision_data import augment

    return augment(x, generator, padding=config.crop_padding)


@torch.no_grad()
def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch: int = 1000, *,
             device: torch.device | None = None, dist: _Dist | None = None) -> float:
    """Top-1 accuracy of the float/QAT model (eval mode) on uint8 images; with ``dist``, each rank scores its
    share of the images and the counts are summed."""
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
    from .export import load_model

    model, _ = load_model(checkpoint)
    chain = hasattr(model, "arch")
    counts: dict[str, int] = {}
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = torch.as_tensor(images[start:start + batch]).float() / PIXEL_MAX
            out = model.run(x, time_steps) if chain else model.run(x, time_steps, record=not model.ann)
            correct += int((out.logits.argmax(1).numpy() == labels[start:start + batch]).sum())
            named = zip([f"{spec.kind}{i + 1}" for i, spec in enumerate(model.arch.layers[:-1])], out.spikes) \
                if chain else out.spikes.items()
            for name, spikes in named:
                counts[name] = counts.get(name, 0) + int(spikes.sum())
    return {"accuracy": correct / max(1, len(images)), "spike_counts": counts}


def build_model(config: TrainConfig, quantized: bool, input_shape=(1, 28, 28), classes: int = 10,
                surrogate_width: float | None = None, lif: str | None = None) -> nn.Module:
    """The model ``config.arch`` names: a SpikingNet chain (1 x 28 x 28 input) or a SpikingResNet / its ANN twin,
    float (``quantized=False``) or with Brevitas weights; float and QAT versions share parameter names.
    ``lif`` overrides ``config.lif`` (the LIF implementation, one of LIF_IMPLEMENTATIONS)."""
    from .fused import fused_lif_neuron
    from .resnet import RESNETS, lif_neuron

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
                                bn=config.bn, time_steps=config.time_steps, neuron=neuron, ann=config.ann,
                                wbits=config.wbits if quantized else None)


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The modules that gradient checkpointing wraps: every residual block, or the chain's per-step blocks."""
    if hasattr(model, "stages"):
        return [blk for stage in model.stages for blk in stage]
    return list(model.blocks)[1:]  # the chain's first block takes (image, T): it runs once, nothing to save


def _checkpointed_forward(forward, module: nn.Module, *args):
    from torch.utils.checkpoint import checkpoint

    if module.training and torch.is_grad_enabled():
        return checkpoint(forward, module, *args, use_reentrant=False)
    return forward(module, *args)


def _enable_grad_checkpointing(model: nn.Module) -> None:
    # an instance attribute replaces forward without renaming any parameter (checkpoints stay interchangeable)
    for blk in _blocks(model):
        blk.forward = functools.partial(_checkpointed_forward, type(blk).forward, blk)


def _optimizer(config: TrainConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=config.momentum, nesterov=config.nesterov,
                           weight_decay=config.weight_decay)


def _scheduler(config: TrainConfig, opt, phase: str, steps: int):
    if phase == "float" and config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=max(1, steps))
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))


def _bn_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _freeze_bn(model: nn.Module) -> None:
    for bn in _bn_modules(model):
        bn.eval()


@torch.no_grad()
def _recalibrate_bn(model: nn.Module, images: np.ndarray, config: TrainConfig, generator: torch.Generator,
                    device: torch.device = torch.device("cpu")) -> None:
    """Re-measure BN statistics with the quantized weights (cumulative average over a few batches)."""
    bns = _bn_modules(model)
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for k, idx in enumerate(_batches(len(images), config.batch_size, generator)):
        if k >= config.bn_calibration_batches:
            break
        model((torch.as_tensor(images[idx.numpy()]).float() / PIXEL_MAX).to(device))
    for bn, momentum in zip(bns, saved):
        bn.momentum = momentum


def _memory_format(config: TrainConfig, model: nn.Module, device: torch.device, log) -> torch.memory_format:
    """The conv layout to train in: channels_last where asked for ('auto': on the CPU, where oneDNN's NHWC convs
    train float epochs ~1.4x faster, docs/training.md; start_phase keeps a ResNet's QAT phase NCHW), unless a conv
    of the model hits the oneDNN weight-gradient hang (fused.onednn_weight_grad_hangs: a 1x1 stride-2 conv from
    fewer than 8 channels, e.g. a narrow ResNet's downsample), which then keeps the whole model in NCHW."""
    from .fused import onednn_hang_conv

    want = device.type == "cpu" if config.channels_last == "auto" else config.channels_last == "true"
    if want and device.type == "cpu":
        hang = onednn_hang_conv(model)
        if hang is not None:
            log(f"channels_last off: conv {hang} (1x1, stride 2, {model.get_submodule(hang).in_channels} input "
                "channels) would hang oneDNN's weight gradient in that layout; training in NCHW")
            want = False
    return torch.channels_last if want else torch.contiguous_format


def _for_training(model: nn.Module, config: TrainConfig, memory_format: torch.memory_format,
                  device: torch.device | None = None, log=None) -> int:
    """The trainer's conv set-up of a built model: weights in ``memory_format`` (oneDNN's and cuDNN's convs follow
    the weights' layout) and, in a spiking ResNet, every hidden plain conv saving its spike input as bool for the
    weight gradient (fused.spike_input_convs: exact, a quarter of the bytes), event-driven where that pays
    (:func:`_event_convs`). Same parameters and results up to the convs' float summation order. Returns the number
    of event-driven convs."""
    model.to(memory_format=memory_format)
    if not (config.is_resnet and not config.ann):
        return 0
    from .fused import spike_input_convs

    events = _event_convs(config, model, device or torch.device("cpu"), memory_format, log or (lambda _line: None))
    spike_input_convs(model, events=events > 0)
    return events


def _event_convs(config: TrainConfig, model: nn.Module, device: torch.device, memory_format: torch.memory_format,
                 log) -> int:
    """How many hidden convs of a spiking ResNet train event-driven (sw/event_conv.py): those with at least
    event_conv.MIN_CHANNELS output channels (a multiple of 8), when training runs on the CPU in float32,
    channels_last and eagerly. The kernels are built on first use; if they cannot be, 'auto' logs why and trains
    with the dense convs, 'true' stops with that sentence."""
    from . import event_conv

    if config.event_convs == "false":
        return 0
    eligible = [m for name, m in model.named_modules() if type(m) is nn.Conv2d and name != "stem.conv"
                and m.out_channels >= event_conv.MIN_CHANNELS and m.out_channels % 8 == 0 and m.groups == 1]
    if not eligible or device.type != "cpu" or memory_format != torch.channels_last or config.amp != "off" \
            or config.compile:
        return 0
    try:
        event_conv._extension()
    except event_conv.EventConvUnavailable as error:
        if config.event_convs == "true":
            raise ConfigError(f"--event-convs true: {error}") from error
        log(f"event-driven convs off: {error}")
        return 0
    log(f"event-driven convs: {len(eligible)} hidden convs with >= {event_conv.MIN_CHANNELS} output channels")
    return len(eligible)


def _config_key(config: TrainConfig) -> dict:
    defaults = TrainConfig()
    return {k: v for k, v in asdict(config).items()
            if k not in _RUN_ONLY and not (k in _ADDED and v == getattr(defaults, k))}


def _choose_width(config: TrainConfig, x_train: np.ndarray, input_shape, classes: int, log,
                  device: torch.device | None = None) -> float:
    """--surrogate-width auto: the width of AUTO_WIDTHS whose gradient reaches the first layer at about the size it
    has at the last (sw.gradflow.auto_width), measured on the float model at initialization with 8 train images."""
    from .gradflow import auto_width

    t0 = time.time()
    data = torch.as_tensor(x_train[:8]).float() / PIXEL_MAX
    # eager fused LIF: the measurement swaps surrogates per width, which would make torch.compile recompile
    width = auto_width(lambda: build_model(config, False, input_shape, classes, surrogate_width=1.0, lif="fused"),
                       AUTO_WIDTHS,
                       time_steps=config.time_steps, batch=len(data), input_shape=input_shape,
                       surrogate=config.surrogate, data=data, classes=classes, seed=config.seed, device=device)
    log(f"surrogate width auto: chose {width} of {list(AUTO_WIDTHS)} ({time.time() - t0:.1f} s of gradient flow "
        "measurement)")
    return float(width)


# --- the pipeline ---------------------------------------------------------------------------------------------


def train(config: TrainConfig) -> dict:
    """Run (or resume) the whole schedule; returns the summary that is also written to <out>/summary.json.

    Under torchrun every rank calls this; only rank 0 writes files and exports, and the other ranks return the
    summary without the deployed (integer) results.
    """
    config.validate()
    _set_threads(config)
    dist = _setup_distributed(config)
    try:
        if config.compile == "graphs" and (dist.device.type != "cuda" or dist.world > 1):
            raise ConfigError(f"compile 'graphs' (CUDA graphs) runs on one CUDA device, not on {dist.device.type} "
                              f"with {dist.world} process(es); use compile true")
        with malloc_cache(config.malloc_cache == "true" or (config.malloc_cache == "auto" and
                                                            dist.device.type == "cpu")) as cached:
            if config.malloc_cache == "true" and not cached:
                raise ConfigError("malloc_cache true needs glibc's mallopt (Linux); use --malloc-cache auto or false")
            return _train(config, dist, cached)
    finally:
        if dist.owns_group:
            torch.distributed.destroy_process_group()


# glibc's mallopt parameters (malloc.h), and on exit the values a warmed-up default process runs with (glibc's
# dynamic mmap threshold rises to its 32 MiB maximum, the trim threshold to twice that; a mallopt call ends the
# dynamic adjustment, so the settled values are set)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_SETTLED = ((_M_MMAP_MAX, 65536), (_M_MMAP_THRESHOLD, 32 * 2 ** 20), (_M_TRIM_THRESHOLD, 64 * 2 ** 20))


@contextlib.contextmanager
def malloc_cache(enabled: bool = True):
    """While active (``enabled`` and glibc), every allocation comes from glibc's heap and freed memory stays there
    for reuse; yields whether it is active. By default glibc serves each block above its mmap threshold (at most
    32 MiB: one [T*B, C, H, W] current of a 28x28 chain is 48-96 MiB) with a fresh mmap and unmaps it on free, so
    every step page-faults its large tensors in again: measured on the 2-core CPU (28x28 chain, separate
    processes), 1.03-1.31x faster float steps and 1.64x faster deploy-aware QAT steps (docs/training.md) at 15-40%
    more peak RSS. A process-wide setting; on exit the heap is trimmed and glibc left as a warmed-up default process
    runs (``_SETTLED``)."""
    libc = None
    if enabled:
        import ctypes

        try:
            libc = ctypes.CDLL("libc.so.6")
            if not (libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 30)):
                libc = None
        except (OSError, AttributeError):  # not glibc
            libc = None
    try:
        yield libc is not None
    finally:
        if libc is not None:
            for param, value in _SETTLED:
                libc.mallopt(param, value)
            libc.malloc_trim(0)


def _train(config: TrainConfig, dist: _Dist, malloc_cached: bool = False) -> dict:
    out = Path(config.out)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
    state_path = out / "last.pt"
    t_start = time.time()
    log = (lambda *a: print(*a, flush=True)) if dist.main else (lambda *a: None)
    device = dist.device
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    loader_kw = {"size": config.image_size} if config.dataset == "imagenette" else {}
    if config.dataset == "imagenette":
        loader_kw["progress"] = config.progress and dist.main
    x_train, y_train = load_dataset(config.dataset, "train", config.data_dir, **loader_kw)
    x_test, y_test = load_dataset(config.dataset, "test", config.data_dir, **loader_kw)
    if config.train_subset:
        pick = np.random.default_rng(config.seed).permutation(len(x_train))[:config.train_subset]
        x_train, y_train = x_train[pick], y_train[pick]
    if config.test_subset:
        x_test, y_test = x_test[:config.test_subset], y_test[:config.test_subset]
    input_shape = tuple(int(n) for n in x_train.shape[1:])
    classes = NUM_CLASSES.get(config.dataset, int(max(y_train.max(), y_test.max())) + 1)

    steps_per_epoch = math.ceil(len(x_train) / config.batch_size)
    total_epochs = config.epochs_float + config.epochs_qat
    state = None
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        saved_key, key = state["config_key"], _config_key(config)
        if saved_key != key:
            diff = sorted(k for k in set(key) | set(saved_key) if saved_key.get(k) != key.get(k))
            raise ConfigError(f"{out} holds a run with a different config (differs in {', '.join(diff)}); use "
                               "another --out or delete that folder to start over")
        log(f"resuming from {state_path}: {state['epochs_done']}/{total_epochs} epochs"
            + (f" and {state['step']} steps of the next" if state.get("step") else "") + " done")
    history = state["history"] if state else []
    epochs_done = state["epochs_done"] if state else 0
    timings = state["timings"] if state else {"float_s": 0.0, "qat_s": 0.0}
    float_acc = state.get("float_acc") if state else None
    surrogate_width = state.get("surrogate_width") if state else None
    if config.ann:
        surrogate_width = 0.5  # unused: the twin has no spiking neurons
    elif surrogate_width is None:
        surrogate_width = _choose_width(config, x_train, input_shape, classes, log, device) \
            if config.surrogate_width == "auto" else float(config.surrogate_width)

    amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[config.amp]
    if amp_dtype is torch.float16 and device.type != "cuda":
        raise ConfigError("amp 'fp16' needs a CUDA device; use --amp bf16 on the CPU, or --amp off")
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)

    def autocast():
        # QAT runs in float32: deploy-aware QAT sums integer units that bf16 (8 significant bits) cannot hold
        # exactly, and the QAT phase is short; mixed precision is for the float phase
        if amp_dtype is None or phase == "qat":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    # QAT with the exporter's integer arithmetic in the loop; not for what has no integer form (ANN twin, BNTT,
    # the max-pool stem)
    deploy_aware = config.deploy_aware and not (config.is_resnet and (
        config.ann or config.bn == "bntt" or config.stem == "imagenet"))
    model = opt = sched = None
    runner = None  # what the loop calls: the model, wrapped in DDP and/or torch.compile
    phase = None
    memory_format = None  # decided on the first model (both phases' models have the same convs)
    layouts = {}  # phase -> the layout it trained in
    event_phases = {}  # phase -> how many of its convs were event-driven

    def start_phase(new_phase: str):
        nonlocal model, opt, sched, phase, runner, memory_format
        phase = new_phase
        torch.manual_seed(config.seed)
        model = build_model(config, new_phase == "qat", input_shape, classes, surrogate_width).to(device)
        if memory_format is None:
            memory_format = _memory_format(config, model, device, log)
        fmt = memory_format
        if new_phase == "qat" and config.is_resnet and config.channels_last == "auto":
            fmt = torch.contiguous_format  # measured: a ResNet's deploy-aware QAT epoch is ~10% slower in NHWC
        layouts[new_phase] = str(fmt).split(".")[-1]
        event_phases[new_phase] = _for_training(model, config, fmt, device, log)  # before the optimizer's state
        if config.grad_checkpoint:
            _enable_grad_checkpointing(model)
        opt = _optimizer(config, model, config.lr if new_phase == "float" else config.lr_qat)
        steps = steps_per_epoch * (config.epochs_float if new_phase == "float" else config.epochs_qat)
        sched = _scheduler(config, opt, new_phase, steps)
        if new_phase == "qat" and deploy_aware:
            model.set_deploy_aware(True)
        runner = None

    def get_runner():
        nonlocal runner
        if runner is None:
            runner = model
            if dist.world > 1:
                if device.type == "cuda":  # BN statistics over the global batch, as on one GPU
                    nn.SyncBatchNorm.convert_sync_batchnorm(model)
                runner = nn.parallel.DistributedDataParallel(
                    model, device_ids=[device.index] if device.type == "cuda" else None)
            if config.compile == "graphs":  # CUDA graphs: each step's kernels replayed without Python
                runner = torch.compile(runner, dynamic=False, mode="reduce-overhead")
            elif config.compile:  # static shapes: at most 2 per phase (last batch)
                # on CPU Inductor's own channels_last choice runs into a oneDNN hang (fused.onednn_weight_grad_hangs)
                options = {"layout_optimization": False} if device.type == "cpu" else None
                runner = torch.compile(runner, dynamic=False, options=options)
        return runner


    def model_for_qat_start(float_state: dict | None):
        # the QAT model starts from the float weights (same parameter names); BN re-measured on quantized weights
        if float_state is not None:
            model.load_state_dict(float_state)
        if config.bn_calibration_batches > 0:
            model.set_deploy_aware(False)  # the statistics of plain BN on the quantized weights
            _recalibrate_bn(model, x_train, config, torch.Generator().manual_seed(config.seed + 7919), device)
            model.set_deploy_aware(deploy_aware)

    # restore the phase in progress (the saved model belongs to the phase of the next epoch to run)
    resume_step, resume = 0, None
    if state is not None and state["epochs_done"] + (1 if state.get("step") else 0) > 0:
        want = "float" if epochs_done < config.epochs_float else "qat"
        if state["phase"] == want and epochs_done < total_epochs:
            start_phase(want)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            if "scaler" in state:
                scaler.load_state_dict(state["scaler"])
            if state.get("step"):
                resume_step, resume = state["step"], state
    float_state = state.get("float_state") if state else None

    def save_state(epochs_finished: int, step: int, extra: dict) -> None:
        if not dist.main:
            return
        torch.save({"config_key": _config_key(config), "phase": phase, "epochs_done": epochs_finished,
                    "step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "history": history,
                    "timings": timings, "float_acc": float_acc, "float_state": float_state,
                    "surrogate_width": surrogate_width, **extra}, state_path.with_suffix(".tmp"))
        os.replace(state_path.with_suffix(".tmp"), state_path)

    for epoch in range(epochs_done, total_epochs):
        want = "float" if epoch < config.epochs_float else "qat"
        if phase != want:
            if want == "qat":
                if float_state is None and config.epochs_float > 0:
                    float_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                start_phase("qat")
                model_for_qat_start(float_state)
            else:
                start_phase("float")
        t0 = time.time()
        model.train()
        if phase == "qat" and deploy_aware:
            _freeze_bn(model)
        train_model = get_runner()
        gen = torch.Generator().manual_seed(config.seed * 100003 + epoch)
        order = torch.randperm(len(x_train), generator=gen)
        total_loss, seen, correct, first_step, elapsed = 0.0, 0, 0, 0, 0.0
        if resume is not None:  # a mid-epoch state: the same permutation, the generator where it stopped
            gen.set_state(resume["generator"])
            total_loss, seen, correct = resume["partial"]
            first_step, elapsed = resume_step, resume.get("epoch_seconds", 0.0)
            resume = None
        batches = [order[s:s + config.batch_size] for s in range(0, len(order), config.batch_size)]
        if dist.world > 1:  # every rank needs a share of every step's batch (a collective per step)
            batches = [b for b in batches if len(b) >= dist.world]
        bar = tqdm(range(first_step, len(batches)), total=len(batches), initial=first_step,
                   disable=not (config.progress and dist.main), desc=f"{phase} epoch {epoch + 1}/{total_epochs}",
                   leave=False, file=sys.stderr, mininterval=2)
        for step in bar:
            idx = batches[step].numpy()
            # the whole global batch is augmented on every rank (same draws), then each rank takes its share:
            # the result does not depend on the number of ranks
            x = _train_batch(config, x_train[idx], gen)[dist.rank::dist.world].to(device, non_blocking=True)
            y = torch.as_tensor(y_train[idx])[dist.rank::dist.world].to(device, non_blocking=True)
            if config.compile == "graphs":  # a new step: the graphs may reuse the last step's output memory
                torch.compiler.cudagraph_mark_step_begin()
            with autocast():
                logits = train_model(x)
                # sum / global batch * ranks: DDP's gradient average then is the global batch's mean
                loss_sum = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing,
                                           reduction="sum")
            loss = loss_sum * (dist.world / len(idx))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            total_loss += float(loss_sum.detach())
            seen += len(y)
            correct += int((logits.argmax(1) == y).sum())
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False)
            if _after_step is not None:
                _after_step(model, epoch, step + 1)
            if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < len(batches):
                save_state(epoch, step + 1, {"generator": gen.get_state(), "partial": (total_loss, seen, correct),
                                             "epoch_seconds": elapsed + time.time() - t0})
        dist.broadcast_buffers(model)
        total_loss, seen, correct = dist.all_sum([total_loss, float(seen), float(correct)])
        seen, correct = int(seen), int(correct)
        timings[f"{phase}_s"] += time.time() - t0
        seconds = elapsed + time.time() - t0
        test_acc = evaluate(model, x_test, y_test, config.eval_batch, device=device,
                            dist=dist if dist.world > 1 else None)
        history.append({"epoch": epoch + 1, "phase": phase, "loss": total_loss / max(1, seen),
                        "train_acc": correct / max(1, seen), "test_acc": test_acc, "seconds": seconds})
        log(f"{phase} epoch {epoch + 1}/{total_epochs}: loss {total_loss / max(1, seen):.4f} train acc "
            f"{correct / max(1, seen):.4f} test acc {test_acc:.4f} ({seconds:.0f} s)")
        if phase == "float" and epoch + 1 == config.epochs_float:
            float_acc = test_acc
            float_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        save_state(epoch + 1, 0, {})

    if model is None:  # every epoch was already done: rebuild the final model
        start_phase("qat" if config.epochs_qat else "float")
        model.load_state_dict(state["model"])
    if config.epochs_qat == 0:
        # no QAT phase: quantize the float weights as they are (post-training quantization)
        start_phase("qat")
        model_for_qat_start(float_state if float_state is not None else state["model"])
    model.eval()
    eval_dist = dist if dist.world > 1 else None
    qat_acc = evaluate(model, x_test, y_test, config.eval_batch, device=device, dist=eval_dist)
    # the same weights with plain float BN (no rounded thresholds/biases): what deploy-aware training absorbed
    qat_unrounded_acc = None
    if deploy_aware:
        model.set_deploy_aware(False)
        qat_unrounded_acc = evaluate(model, x_test, y_test, config.eval_batch, device=device, dist=eval_dist)
        model.set_deploy_aware(deploy_aware)
    model = model.cpu()
    summary = {
        "dataset": config.dataset, "arch": str(getattr(model, "arch", config.arch)), "model": _describe(config),
        "time_steps": 1 if config.ann else config.time_steps, "surrogate_width": None if config.ann else
        surrogate_width, "train_images": int(len(x_train)), "test_images": int(len(x_test)),
        "world_size": dist.world, "float_accuracy": float_acc, "qat_accuracy": qat_acc,
        "qat_unrounded_accuracy": qat_unrounded_acc, "deploy_aware_qat": deploy_aware,
        "deployed_accuracy": None, "rounding_cost": None, "memory_format": layouts,
        "event_convs": event_phases, "malloc_cache": malloc_cached,
        "history": history, "config": asdict(config)}
    if not dist.main:
        return summary
    # the width actually trained with ("auto" resolved), so that export.load_model rebuilds the same model
    checkpoint = {"config": {**asdict(config), "surrogate_width": surrogate_width},
                  "model": {k: v.contiguous() for k, v in model.state_dict().items()},  # NCHW, whatever was trained
                  "deploy_aware": deploy_aware,
                  "arch": summary["arch"], "kind": "resnet" if config.is_resnet else "chain",
                  "surrogate_width": surrogate_width, "input_shape": list(input_shape), "classes": classes}
    torch.save(checkpoint, out / "checkpoint.pt")

    net, export_s, deployed_s, note = None, 0.0, 0.0, None
    deploy_x, deploy_y = x_test[:config.deployed_images], y_test[:config.deployed_images]
    if config.ann:
        note = "ANN twin: nothing to deploy (compare its accuracy with the spiking run's)"
    elif config.is_resnet and config.stem == "imagenet":
        note = "stem 'imagenet' has a max-pool, which the integer semantics lacks: not exported"
    elif config.is_resnet and config.bn == "bntt":
        note = "BNTT has a threshold and bias per time step, which the integer semantics lacks: not exported"
    else:
        t0 = time.time()
        if config.is_resnet:
            from .export_resnet import export_resnet

            net = export_resnet(model, max_acc_bits=config.max_acc_bits, time_steps=config.time_steps,
                                input_shape=input_shape)
        else:
            net = export_network(model, max_acc_bits=config.max_acc_bits,
                                 calibration_images=x_train[:config.calibration_images])
        net.metadata.update(dataset=config.dataset)
        netimage.save(net, out / "network.sfnet")
        export_s = time.time() - t0
        t0 = time.time()
        summary["deployed_accuracy"] = deployed_accuracy(net, deploy_x, deploy_y, config.time_steps,
                                                         config.eval_batch)
        summary["deployed_images"] = int(len(deploy_x))
        deployed_s = time.time() - t0
        summary["rounding_cost"] = None if qat_acc is None else qat_acc - summary["deployed_accuracy"]
        clamp = membrane_statistics(net, deploy_x[:1000], config.time_steps)
        summary["layers"] = [
            {"name": p.name, "shape": list(p.shape), "vbits": p.vbits, "acc_bits": p.acc_bits,
             "threshold_range": None if p.threshold is None else [int(p.threshold.min()), int(p.threshold.max())],
             "clamp_fraction_test1000": clamp[i]["clamp_fraction"]}
            for i, p in enumerate(net.populations) if p.kind != "input"]
        summary["parameter_bits"] = netimage.parameter_bits(net)
        summary["membrane_bits"] = sum(p.vbits * p.size for p in net.populations if p.kind != "input")
    if note:
        summary["not_exported"] = note
    summary["seconds"] = {**{k: round(v, 1) for k, v in timings.items()}, "export_s": round(export_s, 1),
                          "deployed_eval_s": round(deployed_s, 1),
                          "wall_s_this_call": round(time.time() - t_start, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if net is not None:
        log(f"\n{netimage.summary(net)}")
    log(f"test accuracy ({len(x_test)} images): float {_fmt(float_acc)}  QAT {_fmt(qat_acc)}  "
        f"deployed integer {_fmt(summary['deployed_accuracy'])}" + (f" ({note})" if note else ""))
    log(f"wall time: float {timings['float_s']:.0f} s, QAT {timings['qat_s']:.0f} s, export {export_s:.0f} s, "
        f"deployed eval {deployed_s:.0f} s; this call {time.time() - t_start:.0f} s -> {out / 'summary.json'}")
    return summary


def _describe(config: TrainConfig) -> str:
    if not config.is_resnet:
        return "spiking chain"
    kind = "ANN twin (ReLU, T=1)" if config.ann else f"spiking, T={config.time_steps}"
    return f"{config.arch} x{config.width:g} {kind}, stem {config.stem}, bn {config.bn}, {config.wbits}-bit weights"


def _fmt(acc):
    return "n/a" if acc is None else f"{100 * acc:.2f}%"


_HELP = {
    "dataset": "mnist | fashion-mnist (packaged) | cifar10 | cifar100 | imagenette (need --data-dir)",
    "data_dir": "folder of MNIST-style IDX files, or where cifar10/cifar100/imagenette was unpacked",
    "arch": "a chain (demo, demo24, wide or a string like c8s2w8-c16s2w4-d10w4; 1x28x28 only) or "
            + " | ".join(RESNET_ARCHS),
    "time_steps": "simulation steps T per image",
    "epochs_float": "float-phase epochs (alias --epochs)",
    "epochs_qat": "QAT-phase epochs (alias --qat-epochs); 0 = quantize the float weights after training",
    "batch_size": "global batch: under torchrun each of the N ranks gets 1/N of it",
    "lr": "peak learning rate of the float phase",
    "lr_qat": "start learning rate of the QAT phase (cosine to 0)",
    "weight_decay": "weight decay of the optimizer",
    "optimizer": "adamw | sgd",
    "schedule": "float-phase schedule: onecycle | cosine",
    "surrogate": "surrogate gradient: " + " | ".join(sorted(SURROGATES)),
    "surrogate_width": "surrogate width w, or 'auto' (measure gradient flow at initialization and pick one of "
                       + ", ".join(map(str, AUTO_WIDTHS)) + ")",
    "leak_shift": "LIF leak V -= V / 2^k; none = integrate-and-fire",
    "augment_shift": "MNIST-style: random +-n pixel shifts in training",
    "augment_flip": "MNIST-style: random horizontal flips in training (true/false; for fashion-mnist, not digits)",
    "deploy_aware": "QAT with the exporter's rounded thresholds, biases and shortcuts in the loop (true/false)",
    "bn_calibration_batches": "batches that re-measure BN statistics on the quantized weights before QAT",
    "seed": "the only source of randomness (init, order, augmentation)",
    "out": "output folder: last.pt (resumable state), checkpoint.pt, network.sfnet, summary.json",
    "train_subset": "train on the first N shuffled train images only",
    "test_subset": "evaluate on the first N test images only",
    "calibration_images": "chain export: train images that size the membrane widths",
    "eval_batch": "images per evaluation batch",
    "max_acc_bits": "export error when an accumulator needs more bits",
    "threads": "torch CPU threads (default: cores, at most 4)",
    "progress": "tqdm progress bars (true/false)",
    "width": "ResNet width multiplier of every stage",
    "stem": "ResNet stem: cifar | imagenet (max-pool, not exportable) | imagenet_conv",
    "bn": "ResNet BN kind: shared | bntt | tdbn",
    "wbits": "ResNet QAT weight bits of the hidden convs (stem 8 bits, readout the same as these)",
    "ann": "train the ResNet's ANN twin (ReLU, no time steps; not exported) to measure the SNN-vs-ANN gap",
    "image_size": "imagenette: decoded image side in pixels",
    "crop_padding": "cifar/imagenette: random-crop zero padding (with a random horizontal flip)",
    "label_smoothing": "cross-entropy label smoothing",
    "momentum": "sgd momentum",
    "nesterov": "sgd Nesterov momentum (true/false)",
    "amp": "mixed precision of the float phase: off | bf16 | fp16 (fp16 on CUDA only, with a gradient scaler); "
           "QAT runs in float32",
    "compile": "torch.compile the training model: true | false | graphs (CUDA graphs, mode reduce-overhead: one "
               "CUDA device)",
    "deterministic": "torch.use_deterministic_algorithms (warn only) and no cuDNN autotuning (true/false)",
    "grad_checkpoint": "recompute each block's forward during backward: less memory for deep nets and long T",
    "temporal_window": "truncated BPTT every k steps (fused LIF, sw/fused.py), 1 = SLTT; none = exact BPTT",
    "checkpoint_every": "also save the resumable state every N steps (0: after every epoch only)",
    "device": "auto | cpu | cuda (under torchrun: cuda:LOCAL_RANK)",
    "deployed_images": "test images for the deployed integer evaluation (none = all)",
    "lif": "LIF implementation: compiled (fused T-step kernels, torch.compile) | fused (no compile) | autograd",
    "channels_last": "conv memory layout: auto (channels_last on the CPU, where float epochs train 1.4x faster; a "
                     "ResNet's QAT phase stays NCHW) | true | false (NCHW)",
    "event_convs": "event-driven forward and weight gradient for a spiking ResNet's hidden convs with >= 64 output "
                   "channels (sw/event_conv.py; CPU, float32, channels_last, no --compile; its C++ kernels are "
                   "built once, needing g++ and ninja): auto (where they apply; off with a log line if they cannot "
                   "be built) | true (stop if they cannot be built) | false",
    "malloc_cache": "keep freed tensors in glibc's heap instead of unmapping them (no page faults on each step's "
                    "large tensors; faster, ~15-40%% more peak memory): auto (on the CPU) | true | false",
}


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def _parse_compile(text: str) -> bool | str:
    if text.lower() == "graphs":
        return "graphs"
    try:
        return _parse_bool(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected true, false or graphs, not {text!r}") from None


def _width(text: str) -> float | str:
    return "auto" if text == "auto" else float(text)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``spikeforge train``: ``--preset`` and one flag per TrainConfig field."""
    p = argparse.ArgumentParser(prog="spikeforge train", description="Train (float, then QAT), export and evaluate "
                                "a spiking network; every flag overrides the preset's value.")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS),
                   help="starting config: " + ", ".join(sorted(PRESETS)) + " (default: default)")
    convs = {"int": int, "float": float, "str": str, "int | None": _opt(int), "str | None": _opt(str),
             "bool": _parse_bool, "float | str": _width, "bool | str": _parse_compile}
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        names = [flag] + [f"--{a.replace('_', '-')}" for a, t in _ALIASES.items() if t == f.name]
        default = getattr(PRESETS["default"], f.name)
        p.add_argument(*names, dest=f.name, type=convs[f.type], default=None, metavar=f.name.upper(),
                       help=f"{_HELP[f.name]} (default: {default})")
    return p


def main(argv=None) -> dict:
    """Command line: ``python -m spikeforge.sw.train [--preset NAME] [--field value ...]``; under
    ``torchrun --nproc-per-node N -m spikeforge.sw.train ...`` every rank runs it (DDP)."""
    args = vars(build_parser().parse_args(argv))
    name = args.pop("preset")
    return train(preset(name, **{k: v for k, v in args.items() if v is not None}))


def _opt(conv):
    return lambda s: None if s.lower() in ("none", "") else conv(s)


if __name__ == "__main__":
    main()
