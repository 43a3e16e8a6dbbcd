"""xsky's public functions: xarray objects in, xarray objects out.

Each verb lives in one module here; the ``.sky`` accessor methods are generated from these
functions (same signature minus the object, same docstring).
"""

from __future__ import annotations

from .compositing import composite
from .embedding import embed
from .geo_prototypes import classify, geo_context, open_prototypes, prototypes, save_prototypes
from .location import location_embed, location_embed_points
from .stacking import stack

__all__ = [
    "classify",
    "composite",
    "embed",
    "geo_context",
    "location_embed",
    "location_embed_points",
    "open_prototypes",
    "prototypes",
    "save_prototypes",
    "stack",
]
