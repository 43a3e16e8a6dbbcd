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
    "classify",
    "embed",
    "geo_context",
    "load_stac",
    "location_embed",
    "location_embed_points",
    "open_prototypes",
    "prototypes",
    "save_prototypes",
    "stack",
]

from . import accessor as _accessor

_accessor.register()

_LAZY_FUNCS = {
    "embed": "api",
    "stack": "_stack",
    "location_embed": "location",
    "location_embed_points": "location",
    "prototypes": "_prototypes",
    "classify": "_prototypes",
    "geo_context": "_prototypes",
    "load_stac": "io.stac",
    "save_prototypes": "_prototypes",
    "open_prototypes": "_prototypes",
}
_LAZY_MODULES = {"models", "train", "tutorial", "testing", "runtime", "engine", "io", "plot",
                 "visualize"}


def __getattr__(name: str) -> Any:
    if name in _LAZY_FUNCS:
        return getattr(importlib.import_module(f".{_LAZY_FUNCS[name]}", __name__), name)
    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'xsky' has no attribute {name!r}")
