"""Spike activity in training: the activity regularizer, the blank-image silence penalty, and spike counts.

The accelerator's cost follows spikes (each spike is work for the next layer), so two optional loss terms push them
down; both read the spiking layers through forward hooks on their neuron modules (every :class:`LIF`, fused or
not, of a chain or a ResNet):

* ``activity_penalty`` W: W x the mean firing rate of all spiking neurons, pooled over layers (total spikes of the
  batch's images / (T x images x neurons)). Every spike costs the same, so the large first layers, which emit most
  spikes (and whose spikes are the dearest in the hardware), carry most of the term.
* ``silent_blank`` W_b: one all-zero image is appended to every training batch (it is left out of the
  cross-entropy and of the activity term); for each spiking neuron its cumulative input current over the T steps
  (the membrane of an integrate-and-fire neuron that never fires) must stay below 3/4 of the threshold. The term
  is W_b x sum over layers of the mean over neurons of relu(max_t sum_{s<=t} I_s - 0.75 theta), in threshold
  units. Unlike a spike count it has a gradient on every neuron that would fire, whatever the surrogate's width.
  It is a penalty, not a guarantee: the deployed network's spikes on a blank image are measured and reported.

Hooks on a neuron make a ResNet's training run BN and the LIF as separate modules (sw/fused.py's ``can_fuse_bn``):
same spikes, a little slower, only while a penalty is on. :class:`Activity` also counts spikes per layer during
evaluation (no penalty: no effect on the model) for the training log and summary.
"""

from __future__ import annotations

import torch
from torch import nn

from ..neuron import LIF

__all__ = ["BLANK_MARGIN", "spiking_layers", "Activity", "rates"]

BLANK_MARGIN = 0.25  # the blank image's cumulative current must stay below (1 - margin) x threshold


def spiking_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, neuron module) of every spiking layer in depth order: a chain's ``conv1``, ``conv2``, ... (the names
    of the exported populations), a ResNet's population names, else every LIF by its module path."""
    inner = getattr(model, "module", model)  # DDP
    inner = getattr(inner, "_orig_mod", inner)  # torch.compile
    if hasattr(inner, "neurons"):
        layers = inner.neurons()
    elif hasattr(inner, "blocks") and hasattr(inner, "arch"):
        layers = [(f"{spec.kind}{i + 1}", block.neuron) for i, (spec, block) in
                  enumerate(zip(inner.arch.layers, inner.blocks))]
    else:
        layers = list(inner.named_modules())
    return [(name, m) for name, m in layers if isinstance(m, LIF)]


class Activity:
    """Forward hooks on a model's spiking layers, as a context manager.

    ``counts`` sums each layer's spikes (of the real images, detached) over every forward inside the block;
    ``images`` counts the real images. With ``penalties=True`` each forward also leaves, with its gradient,
    ``rate`` (pooled spikes / (T x images x neurons)) and, with ``blank=True``, ``blank_hinge`` (see the module
    docstring) of the last image of the batch, which then counts as the blank and not as a real image;
    :meth:`loss` combines them and clears them for the next step.
    """

    def __init__(self, model: nn.Module, *, penalties: bool = False, blank: bool = False):
        self.layers = spiking_layers(model)
        self.penalties, self.blank = penalties, blank
        self.counts = {name: 0.0 for name, _ in self.layers}
        self.images = 0
        self._handles = []
        self._clear()

    def _clear(self):
        self._spikes = self._neurons = self._hinge = 0
        self._batch = None

    def __enter__(self) -> "Activity":
        for name, module in self.layers:
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, name: str):
        def hook(module, inputs, spikes):
            real = spikes[:, :-1] if self.blank else spikes
            if name == self.layers[0][0]:  # a new forward
                self._batch = real.shape[1]
                self.images += self._batch
            self.counts[name] += float(real.detach().sum(dtype=torch.float64))  # exact, whatever the spikes' dtype
            if not self.penalties:
                return
            self._spikes = self._spikes + real.sum(dtype=torch.float32)
            self._neurons += real[0, 0].numel()
            if self.blank:
                current = inputs[0][:, -1].float()
                peak = current.cumsum(0).amax(0)
                self._hinge = self._hinge + torch.relu(peak - (1 - BLANK_MARGIN) * module.threshold).mean() \
                    / module.threshold
        return hook

    def loss(self, activity_weight: float, blank_weight: float, time_steps: int) -> tuple[torch.Tensor, float, float]:
        """(the penalty terms to add to the loss, the batch's pooled firing rate, its blank hinge), then cleared."""
        rate = self._spikes / (time_steps * self._batch * self._neurons) if self._neurons else torch.zeros(())
        hinge = self._hinge if torch.is_tensor(self._hinge) else torch.zeros(())
        total = activity_weight * rate + blank_weight * hinge
        out = (total, float(rate.detach()), float(hinge.detach()))
        self._clear()
        return out

    def per_image(self, images: int | None = None, dist=None) -> dict[str, float]:
        """Spikes per image of each layer over the forwards so far (all T steps; ``images``: the default is the
        images seen); with ``dist`` (the trainer's Dist) the counts of all its ranks are summed."""
        counts = self.counts
        if dist is not None and dist.world > 1:
            counts = dict(zip(counts, dist.all_sum(list(counts.values()))))
        n = self.images if images is None else images
        return {name: count / max(1, n) for name, count in counts.items()}


def rates(spikes_per_image: dict[str, float], most: int = 6) -> str:
    """A log line's view of spikes per image per layer (with more than ``most`` layers, their total: every layer's
    count is in the history and summary.json)."""
    if len(spikes_per_image) > most:
        return f"{sum(spikes_per_image.values()):,.0f} in all over {len(spikes_per_image)} populations"
    return ", ".join(f"{name} {value:,.0f}" for name, value in spikes_per_image.items())
