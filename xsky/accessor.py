"""The ``.sky`` accessor on DataArray, Dataset and DataTree.

Thin and stateless: each method is a module-level function with the object as its first
argument (as odc-geo builds its accessor), so ``obj.sky.embed(m)`` is ``xsky.embed(obj, m)``.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

import xarray as xr

__all__ = ["SkyAccessor"]


def _wrap_op(module: str, name: str) -> Callable[..., Any]:
    """An accessor method that forwards to ``xsky.<module>.<name>(self._obj, ...)``."""

    def method(self: SkyAccessor, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(importlib.import_module(f"xsky.{module}"), name)
        return fn(self._obj, *args, **kwargs)

    method.__name__ = name
    method.__qualname__ = f"SkyAccessor.{name}"
    method.__doc__ = f"Same as :func:`xsky.{name}` with this object as first argument."
    return method


class SkyAccessor:
    """``obj.sky``: xsky's methods on xarray objects (no state beyond the object)."""

    __slots__ = ("_obj",)

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    embed = _wrap_op("api", "embed")
    location_embed = _wrap_op("location", "location_embed")
    prototypes = _wrap_op("_prototypes", "prototypes")
    classify = _wrap_op("_prototypes", "classify")
    geo_context = _wrap_op("_prototypes", "geo_context")
    plot = _wrap_op("plot", "prototypes")


@functools.cache
def register() -> None:
    """Register ``.sky`` on DataArray, Dataset and DataTree (idempotent)."""
    xr.register_dataarray_accessor("sky")(SkyAccessor)
    xr.register_dataset_accessor("sky")(SkyAccessor)
    xr.register_datatree_accessor("sky")(SkyAccessor)
