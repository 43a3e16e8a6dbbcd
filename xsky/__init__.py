"""xsky: remote-sensing foundation-model embeddings for xarray/Dask datacubes."""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__
from .exceptions import (
    BandMismatchError,
    CheckpointError,
    ChunkingError,
    CRSError,
    DimensionError,
    MissingDependencyError,
    UnknownModelError,
    UnsafeCheckpointError,
    XSkyError,
)

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
    "__version__",
]

_LAZY_MODULES = {"models", "train", "tutorial", "testing", "runtime", "engine", "io"}


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'xsky' has no attribute {name!r}")
