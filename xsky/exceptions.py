"""The xsky exception hierarchy.

Every error xsky raises on bad input derives from :class:`XSkyError` (itself a
``ValueError``), and its message names what is wrong (variable, dimension, band, model), the
expected and the actual value, and how to fix it. The four families::

    XSkyError
    ├── ArgumentError          a function argument is invalid (type, range, unknown choice)
    │   └── UnknownModelError  a model name is not in the registry
    ├── DataError              the data cannot be used as it is
    │   ├── DimensionError     dims / coords missing, misordered, irregular, wrong size
    │   ├── BandMismatchError  bands missing or ambiguous
    │   ├── ChunkingError      dask chunks unusable
    │   ├── CRSError           CRS missing or unusable
    │   ├── UnitsError         units unknown, implausible or not convertible
    │   └── AlignmentError     (a DimensionError) inputs not on the same grid or footprint
    ├── ModelError             a model misbehaves or is unavailable in this process
    ├── CheckpointError        a weights file cannot be read or does not match
    │   └── UnsafeCheckpointError
    ├── TrainingError          a training run cannot go on (a rank or worker lost, a timeout)
    └── MissingDependencyError an optional dependency is not installed (also an ImportError)
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "AlignmentError",
    "ArgumentError",
    "BandMismatchError",
    "CRSError",
    "CheckpointError",
    "ChunkingError",
    "DataError",
    "DimensionError",
    "MissingDependencyError",
    "ModelError",
    "TrainingError",
    "UnitsError",
    "UnknownModelError",
    "UnsafeCheckpointError",
    "XSkyError",
    "format_choices",
]


class XSkyError(ValueError):
    """Base class of every error raised by xsky on bad input or state."""


class ArgumentError(XSkyError):
    """A function argument has the wrong type, is out of range or is not a valid choice."""


class UnknownModelError(ArgumentError, KeyError):
    """A model name is not in the registry."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DataError(XSkyError):
    """The data (dims, coordinates, values, metadata) cannot be used as they are."""


class DimensionError(DataError):
    """A dimension or coordinate is missing, misordered, irregular or the wrong size."""


class BandMismatchError(DataError):
    """Bands a model needs are missing or ambiguous."""


class ChunkingError(DataError):
    """The dask chunking of the input cannot be used as it is."""


class CRSError(DataError):
    """The coordinate reference system is missing or unusable."""


class UnitsError(DataError):
    """Units are unknown, not convertible to what the model needs, or implausible."""


class AlignmentError(DimensionError):
    """Inputs that must share a grid or footprint do not."""


class ModelError(XSkyError):
    """A model returned something unexpected, or is not available in this process."""


class CheckpointError(XSkyError):
    """A weights file cannot be read or does not match the model."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint needs arbitrary unpickling and the user has not opted in."""


class TrainingError(XSkyError):
    """A training run cannot go on: a rank or worker was lost, or a rendezvous timed out."""


class MissingDependencyError(XSkyError, ImportError):
    """An optional dependency is not installed."""


def format_choices(choices: Iterable[object], limit: int = 40) -> str:
    """Format valid choices for an error message (sorted, quoted, truncated)."""
    items = sorted(repr(c) for c in choices)
    if len(items) > limit:
        return ", ".join(items[:limit]) + f", ... ({len(items) - limit} more)"
    return ", ".join(items)
