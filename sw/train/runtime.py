"""Where and how a training run executes: the process group under torchrun, threads, determinism, and the conv
set-up of a built model (memory layout, bool-saved and event-driven spike convs, gradient checkpointing). Nothing
here changes what is computed, only where and how fast. (The allocator options are spikeforge.allocator's.)
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
from torch import nn

from .. import event_conv
from ..config import ConfigError, TrainConfig
from ..spike_conv import onednn_hang_conv, spike_input_convs

__all__ = ["Dist", "setup_distributed", "set_threads", "set_determinism", "memory_format",
           "prepare_model", "event_convs", "enable_grad_checkpointing"]


@dataclass
class Dist:
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


def setup_distributed(config: TrainConfig) -> Dist:
    """Join the process group that torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK): nccl on CUDA, gloo on CPU."""
    want_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but torch sees no CUDA device; use --device cpu or auto")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=torch.device("cuda" if want_cuda else "cpu"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    owns = not torch.distributed.is_initialized()
    if owns:
        torch.distributed.init_process_group("nccl" if want_cuda else "gloo", rank=rank, world_size=world)
    return Dist(rank=rank, world=world, device=device, owns_group=owns)


def set_threads(config: TrainConfig) -> None:
    n = config.threads or min(4, os.cpu_count() or 1)
    torch.set_num_threads(n)


def set_determinism(config: TrainConfig, device: torch.device) -> None:
    """``deterministic``: deterministic algorithms (warn only) and no cuDNN autotuning; else cuDNN autotunes."""
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def memory_format(config: TrainConfig, model: nn.Module, device: torch.device, log) -> torch.memory_format:
    """The conv layout to train in: channels_last where asked for ('auto': on the CPU, where oneDNN's NHWC convs
    train float epochs ~1.4x faster, docs/training.md; the schedule keeps a ResNet's QAT phase NCHW), unless a conv
    of the model hits the oneDNN weight-gradient hang (spike_conv.onednn_weight_grad_hangs: a 1x1 stride-2 conv
    from fewer than 8 channels, e.g. a narrow ResNet's downsample), which then keeps the whole model in NCHW."""
    want = device.type == "cpu" if config.channels_last == "auto" else config.channels_last == "true"
    if want and device.type == "cpu":
        hang = onednn_hang_conv(model)
        if hang is not None:
            log(f"channels_last off: conv {hang} (1x1, stride 2, {model.get_submodule(hang).in_channels} input "
                "channels) would hang oneDNN's weight gradient in that layout; training in NCHW")
            want = False
    return torch.channels_last if want else torch.contiguous_format


def prepare_model(model: nn.Module, config: TrainConfig, layout: torch.memory_format,
                  device: torch.device | None = None, log=None) -> int:
    """The trainer's conv set-up of a built model: weights in ``layout`` (oneDNN's and cuDNN's convs follow the
    weights' layout) and, in a spiking ResNet, every hidden plain conv saving its spike input as bool for the
    weight gradient (spike_conv.spike_input_convs: exact, a quarter of the bytes), event-driven where that pays
    (:func:`event_convs`). Same parameters and results up to the convs' float summation order. Returns the number
    of event-driven convs."""
    model.to(memory_format=layout)
    if not (config.is_resnet and not config.ann):
        return 0
    events = event_convs(config, model, device or torch.device("cpu"), layout, log or (lambda _line: None))
    spike_input_convs(model, events=events > 0)
    return events


def event_convs(config: TrainConfig, model: nn.Module, device: torch.device, layout: torch.memory_format,
                log) -> int:
    """How many hidden convs of a spiking ResNet train event-driven (sw/event_conv.py): those with at least
    event_conv.MIN_CHANNELS output channels (a multiple of 8), when training runs on the CPU in float32,
    channels_last and eagerly. The kernels are built on first use; if they cannot be, 'auto' logs why and trains
    with the dense convs, 'true' stops with that sentence."""
    if config.event_convs == "false":
        return 0
    eligible = [m for name, m in model.named_modules() if type(m) is nn.Conv2d and name != "stem.conv"
                and m.out_channels >= event_conv.MIN_CHANNELS and m.out_channels % 8 == 0 and m.groups == 1]
    if not eligible or device.type != "cpu" or layout != torch.channels_last or config.amp != "off" \
            or config.compile:
        return 0
    try:
        event_conv.extension()
    except event_conv.EventConvUnavailable as error:
        if config.event_convs == "true":
            raise ConfigError(f"--event-convs true: {error}") from error
        log(f"event-driven convs off: {error}")
        return 0
    log(f"event-driven convs: {len(eligible)} hidden convs with >= {event_conv.MIN_CHANNELS} output channels")
    return len(eligible)


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


def enable_grad_checkpointing(model: nn.Module) -> None:
    """Recompute every block's forward during backward (``grad_checkpoint``: deep nets, long T)."""
    # an instance attribute replaces forward without renaming any parameter (checkpoints stay interchangeable)
    for blk in _blocks(model):
        blk.forward = functools.partial(_checkpointed_forward, type(blk).forward, blk)
