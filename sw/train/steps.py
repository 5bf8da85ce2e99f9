"""What the schedule's steps are made of: the epoch's batches and their augmentation, the optimizer and its
learning-rate schedule, and batch norm's freezing and re-calibration before QAT.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..data import MNIST_STYLE
from ..model import PIXEL_MAX
from ..data.vision import augment as augment_colour

__all__ = ["batches", "augment", "train_batch", "optimizer", "lr_scheduler", "freeze_bn", "recalibrate_bn"]


def batches(n: int, batch: int, generator: torch.Generator | None):
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch):
        yield order[start:start + batch]


def augment(x: torch.Tensor, shift: int, generator: torch.Generator, flip: bool = False) -> torch.Tensor:
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


def train_batch(config: TrainConfig, images: np.ndarray, generator: torch.Generator) -> torch.Tensor:
    """pixel/255 of one global batch with the dataset's augmentation (drawn from the epoch's generator)."""
    x = torch.as_tensor(images).float() / PIXEL_MAX
    if config.dataset in MNIST_STYLE:
        return augment(x, config.augment_shift, generator, config.augment_flip)
    return augment_colour(x, generator, padding=config.crop_padding)


def optimizer(config: TrainConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=config.momentum, nesterov=config.nesterov,
                           weight_decay=config.weight_decay)


def lr_scheduler(config: TrainConfig, opt, phase: str, steps: int):
    if phase == "float" and config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=max(1, steps))
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))


def _bn_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_bn(model: nn.Module) -> None:
    for bn in _bn_modules(model):
        bn.eval()


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: np.ndarray, config: TrainConfig, generator: torch.Generator,
                   device: torch.device = torch.device("cpu")) -> None:
    """Re-measure BN statistics with the quantized weights (cumulative average over a few batches)."""
    bns = _bn_modules(model)
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for k, idx in enumerate(batches(len(images), config.batch_size, generator)):
        if k >= config.bn_calibration_batches:
            break
        model((torch.as_tensor(images[idx.numpy()]).float() / PIXEL_MAX).to(device))
    for bn, momentum in zip(bns, saved):
        bn.momentum = momentum
