"""Batch norm on the input currents of spiking neurons, in the three forms the literature uses.

Every module here takes a multi-step current ``[T, B, C, H, W]`` (or ``[T, B, N]``) and returns the same shape;
:func:`make_bn` picks one by name so that models take the BN kind as a parameter. :func:`bn_affine` turns any of
them into the per-channel eval-mode affine ``BN(I) = a * I + d`` that the exporter folds into integer thresholds.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .folding import bn_affine as _batchnorm_affine

__all__ = ["BN_KINDS", "SharedBN", "BNTT", "TdBN", "make_bn", "bn_affine", "BNFoldError"]

BN_KINDS = ("shared", "bntt", "tdbn")


class BNFoldError(ValueError):
    """A BN variant that cannot become one integer threshold per channel; the message says what to do."""


class SharedBN(nn.Module):
    """One BN whose statistics and affine are shared by all time steps: it normalizes the folded ``T*B`` batch.

    This is the paper's (Ledinauskas et al. 2020) "BN on input currents": one set of running statistics, so it
    folds into one integer threshold and bias per channel. ``forward_static(x[B, ...], T)`` normalizes a current
    that is the same at every step (the graded first layer) once and repeats it T times.
    """

    def __init__(self, channels: int, *, spatial: bool = True):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels) if spatial else nn.BatchNorm1d(channels)
        self.scale = 1.0  # tdBN's alpha * V_th; 1 for plain BN

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm(x)
        if self.scale == 1.0:
            return out
        # tdBN: gamma * (scale * x_hat) + beta, i.e. the scale multiplies the normalized value, not the shift
        beta = self.norm.bias.view(1, -1, *([1] * (x.ndim - 2))) if self.norm.affine else 0.0
        return (out - beta) * self.scale + beta

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        return self._normalize(current.flatten(0, 1)).reshape(current.shape)

    def forward_static(self, current: torch.Tensor, time_steps: int) -> torch.Tensor:
        out = self._normalize(current)
        return out.unsqueeze(0).expand(time_steps, *out.shape)

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        a, d = _batchnorm_affine(self.norm)
        if self.scale != 1.0:
            beta = self.norm.bias if self.norm.affine else torch.zeros_like(a)
            a, d = a * self.scale, (d - beta) * self.scale + beta
        return a, d


class TdBN(SharedBN):
    """Threshold-dependent BN (Zheng et al. 2021): statistics over time and batch as :class:`SharedBN`, but the
    normalized current is scaled to ``alpha * V_th`` before the affine, ``y = gamma * alpha * V_th * x_hat + beta``.

    ``alpha`` is 1, or 1/sqrt(2) for the two BNs whose currents meet at a residual join (their sum then has the
    variance of one). Folds exactly like :class:`SharedBN` (the constant goes into ``a``).
    """

    def __init__(self, channels: int, *, spatial: bool = True, alpha: float = 1.0, threshold: float = 1.0):
        super().__init__(channels, spatial=spatial)
        if not (alpha > 0 and threshold > 0):
            raise ValueError(f"tdBN needs alpha > 0 and threshold > 0, not alpha={alpha!r}, threshold={threshold!r}")
        self.alpha, self.threshold = float(alpha), float(threshold)
        self.scale = self.alpha * self.threshold

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, threshold={self.threshold:g}"


class BNTT(nn.Module):
    """BN through time (Kim & Panda 2021): separate running statistics and affine for every time step.

    It does not fold into ONE integer threshold per channel (each step would need its own threshold and bias,
    which the integer semantics does not have), so :func:`bn_affine` refuses it unless every step's folded affine
    is identical. Train with ``bn="shared"`` or ``"tdbn"`` for a deployable network.
    """

    def __init__(self, channels: int, time_steps: int, *, spatial: bool = True):
        super().__init__()
        if time_steps < 1:
            raise ValueError(f"BNTT needs time_steps >= 1, not {time_steps!r}")
        self.norms = nn.ModuleList(nn.BatchNorm2d(channels) if spatial else nn.BatchNorm1d(channels)
                                   for _ in range(time_steps))

    def _check_steps(self, steps: int) -> None:
        if steps > len(self.norms):
            raise ValueError(f"this BNTT layer has statistics for {len(self.norms)} time steps, not {steps}; "
                             f"build the model with time_steps >= {steps}")

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        self._check_steps(current.shape[0])
        return torch.stack([self.norms[t](current[t]) for t in range(current.shape[0])])

    def forward_static(self, current: torch.Tensor, time_steps: int) -> torch.Tensor:
        self._check_steps(time_steps)
        return torch.stack([self.norms[t](current) for t in range(time_steps)])

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [_batchnorm_affine(bn) for bn in self.norms]
        a0, d0 = pairs[0]
        if all(torch.equal(a, a0) and torch.equal(d, d0) for a, d in pairs[1:]):
            return a0, d0
        raise BNFoldError("a BNTT layer has a different scale and shift at every time step, which cannot fold into "
                          "one integer threshold per channel; train with bn='shared' or bn='tdbn' to deploy, or tie "
                          "the per-step statistics and affines before exporting")


def make_bn(kind: str, channels: int, *, time_steps: int = 1, spatial: bool = True, join: bool = False,
            threshold: float = 1.0) -> nn.Module:
    """A BN module for multi-step currents by name: ``"shared"``, ``"bntt"`` or ``"tdbn"``.

    ``join`` marks a BN whose current meets another branch's at a residual join (tdBN then uses alpha = 1/sqrt 2);
    ``threshold`` is the neurons' V_th (tdBN normalizes to alpha * V_th).
    """
    if kind == "shared":
        return SharedBN(channels, spatial=spatial)
    if kind == "tdbn":
        return TdBN(channels, spatial=spatial, alpha=1 / math.sqrt(2) if join else 1.0, threshold=threshold)
    if kind == "bntt":
        return BNTT(channels, time_steps, spatial=spatial)
    raise ValueError(f"unknown BN kind {kind!r}; choose one of {BN_KINDS}")


def bn_affine(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode ``BN(I) = a * I + d`` per channel of any BN here (or a plain torch BatchNorm)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return _batchnorm_affine(module)
    if hasattr(module, "affine"):
        return module.affine()
    raise TypeError(f"cannot fold {type(module).__name__}: not a batch norm")
