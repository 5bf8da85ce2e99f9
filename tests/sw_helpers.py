"""Shared helpers of the training-side tests (no tests here)."""

from __future__ import annotations

import torch


def set_exact_weights(layer, rng, scale, wmax):
    """Integer weights in [-wmax, wmax] with a +-wmax in every output channel, so Brevitas' per-channel (or
    per-tensor) max-abs scale is exactly ``scale`` (a power of two)."""
    w = rng.integers(-wmax, wmax + 1, size=layer.weight.shape)
    w.reshape(w.shape[0], -1)[:, 0] = wmax * rng.choice([-1, 1], size=w.shape[0])
    layer.weight.data = torch.tensor(w * scale, dtype=torch.float32)
    q = layer.quant_weight()
    assert torch.all(q.scale == scale) and torch.equal(q.int().long(), torch.tensor(w)), "scale is not exact"
