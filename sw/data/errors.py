"""The one error type of the dataset loaders (sw/data/idx.py, sw/data/vision.py)."""

from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(RuntimeError):
    """A dataset is missing or unreadable; the message names the path or package and how to install it."""
