"""xsky's public functions: xarray objects in, xarray objects out.

Each verb lives in one module here; the ``.sky`` accessor methods are generated from these
functions (same signature minus the object, same docstring).
"""

from __future__ import annotations

from .change import change, threshold
from .compositing import composite
from .embedding import embed
from .export import dequantize, model_card, quantize, stac_item, store_dataset, to_raster
from .geo_prototypes import classify, geo_context, open_prototypes, prototypes, save_prototypes
from .location import location_embed, location_embed_points
from .planning import Plan, plan
from .sampling import sample
from .similarity import Examples, similar
from .stacking import stack
from .writing import IncompleteStoreWarning, WriteReport, open_embedding, to_zarr

__all__ = [
    "Examples",
    "IncompleteStoreWarning",
    "Plan",
    "WriteReport",
    "change",
    "classify",
    "composite",
    "dequantize",
    "embed",
    "geo_context",
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
