"""xsky: remote-sensing foundation-model embeddings for xarray/Dask datacubes.

The public functions (:func:`embed`, :func:`stack`, :func:`composite`,
:func:`location_embed`, :func:`prototypes`, ...) take and return xarray objects, and are also methods of the ``.sky``
accessor on DataArray, Dataset and DataTree. Submodules: :mod:`xsky.models` (registry,
model contract), :mod:`xsky.modalities` (what xsky knows of each sensor), :mod:`xsky.io`,
:mod:`xsky.plot`, :mod:`xsky.train`, :mod:`xsky.tutorial`, :mod:`xsky.testing`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import accessor as _accessor
from ._version import __version__
from .api import (
    Examples,
    IncompleteStoreWarning,
    Plan,
    WriteReport,
    change,
    classify,
    composite,
    dequantize,
    embed,
    geo_context,
    location_embed,
    location_embed_points,
    model_card,
    open_embedding,
    open_prototypes,
    plan,
    prototypes,
    quantize,
    sample,
    save_prototypes,
    similar,
    stac_item,
    stack,
    store_dataset,
    threshold,
    to_raster,
    to_zarr,
)
from .exceptions import (
    AlignmentError,
    ArgumentError,
    BandMismatchError,
    CheckpointError,
    ChunkingError,
    CRSError,
    DataError,
    DimensionError,
    MissingDependencyError,
    ModelError,
    TrainingError,
    UnitsError,
    UnknownModelError,
    UnsafeCheckpointError,
    XSkyError,
)

if TYPE_CHECKING:  # loaded on first use: they pull in odc-stac / torch / matplotlib
    from . import engine as engine
    from . import index as index
    from . import io as io
    from . import modalities as modalities
    from . import models as models
    from . import plot as plot
    from . import runtime as runtime
    from . import testing as testing
    from . import train as train
    from . import tutorial as tutorial
    from .io.stac import load_stac

__all__ = [
    "AlignmentError",
    "ArgumentError",
    "BandMismatchError",
    "CRSError",
    "CheckpointError",
    "ChunkingError",
    "DataError",
    "DimensionError",
    "Examples",
    "IncompleteStoreWarning",
    "MissingDependencyError",
    "ModelError",
    "Plan",
    "TrainingError",
    "UnitsError",
    "UnknownModelError",
    "UnsafeCheckpointError",
    "WriteReport",
    "XSkyError",
    "__version__",
    "change",
    "classify",
    "composite",
    "dequantize",
    "embed",
    "geo_context",
    "load_stac",
    "location_embed",
    "location_embed_points",
    "model_card",
    "open_embedding",
    "open_prototypes",
    "plan",
    "prototypes",
    "quantize",
    "sample",
    "save_prototypes",
    "similar",
    "stac_item",
    "stack",
    "store_dataset",
    "threshold",
    "to_raster",
    "to_zarr",
]

_accessor.register()

_LAZY_FUNCS = {"load_stac": "io.stac"}
_LAZY_MODULES = ("engine", "index", "io", "modalities", "models", "plot", "runtime", "testing",
                 "train", "tutorial")


def __getattr__(name: str) -> Any:
    if name in _LAZY_FUNCS:
        value = getattr(importlib.import_module(f".{_LAZY_FUNCS[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'xsky' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_LAZY_MODULES})
