"""Training: ``spikeforge train`` and ``train(TrainConfig(...))``.

- :mod:`.schedule`: the schedule in phases (float -> QAT -> export -> integer evaluation), :func:`train`;
- :mod:`.steps`: batches and augmentation, optimizer and LR schedule, BN re-calibration;
- :mod:`.runtime`: torchrun's process group, threads, conv layouts and the event-driven convs;
- :mod:`.cli`: the command line (one flag per field of :class:`~spikeforge.sw.config.TrainConfig`).

The configuration itself is :mod:`spikeforge.sw.config`; models and checkpoints are :mod:`spikeforge.sw.models`.
This package imports its parts when they are first used (PEP 562): ``python -m spikeforge.sw.train`` must set the
allocator options (spikeforge.allocator) before the models are imported, and this ``__init__`` runs before that.
"""

from __future__ import annotations

import importlib

__all__ = ["train", "TrainingRun", "build_parser", "main", "TrainConfig", "ConfigError", "PRESETS", "preset",
           "build_model", "evaluate", "evaluate_checkpoint"]

_HOMES = {"train": ".schedule", "TrainingRun": ".schedule", "build_parser": ".cli", "main": ".cli",
          "TrainConfig": "..config", "ConfigError": "..config", "PRESETS": "..config", "preset": "..config",
          "build_model": "..models", "evaluate": "..models", "evaluate_checkpoint": "..models"}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name], __name__), name)


def __dir__():
    return sorted(list(globals()) + list(_HOMES))
