"""The xsky exception hierarchy.

Every error xsky raises on bad input derives from :class:`XSkyError` (itself a
``ValueError``), and its message names what is wrong (variable, dimension, band,
model), the expected and the actual value, and how to fix it.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "BandMismatchError",
    "CRSError",
    "CheckpointError",
    "ChunkingError",
    "DimensionError",
    "MissingDependencyError",
    "UnknownModelError",
    "UnsafeCheckpointError",
    "XSkyError",
    "format_choices",
]


class XSkyError(ValueError):
    """Base class of every error raised by xsky on bad input or state."""


class DimensionError(XSkyError):
    """A dimension or coordinate is missing, misordered, irregular or the wrong size."""


class BandMismatchError(XSkyError):
    """Bands a model needs are missing or ambiguous."""


class UnknownModelError(XSkyError, KeyError):
    """A model name is not in the registry."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ChunkingError(XSkyError):
    """The dask chunking of the input cannot be used as it is."""


class CRSError(XSkyError):
    """The coordinate reference system is missing or unusable."""


class CheckpointError(XSkyError):
    """A weights file cannot be read or does not match the model."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint needs arbitrary unpickling and the user has not opted in."""


class MissingDependencyError(XSkyError, ImportError):
    """An optional dependency is not installed."""


def format_choices(choices: Iterable[object], limit: int = 40) -> str:
    """Format valid choices for an error message (sorted, quoted, truncated)."""
    items = sorted(repr(c) for c in choices)
    if len(items) > limit:
        return ", ".join(items[:limit]) + f", ... ({len(items) - limit} more)"
    return ", ".join(items)
