"""The ``.sky`` accessor on DataArray, Dataset and DataTree.

Thin and stateless, as odc-geo builds its accessor: every method is generated from a public
function of :mod:`xsky.api` (or :mod:`xsky.plot`) that takes the object as its first
argument, so ``obj.sky.embed(m)`` is ``xsky.embed(obj, m)``, with the same signature (minus
the object) and the same docstring.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import xarray as xr

__all__ = ["METHODS", "SkyAccessor"]

#: accessor method -> (module, function) it forwards to
METHODS: dict[str, tuple[str, str]] = {
    "embed": ("xsky.api.embedding", "embed"),
    "composite": ("xsky.api.compositing", "composite"),
    "location_embed": ("xsky.api.location", "location_embed"),
    "prototypes": ("xsky.api.geo_prototypes", "prototypes"),
    "classify": ("xsky.api.geo_prototypes", "classify"),
    "geo_context": ("xsky.api.geo_prototypes", "geo_context"),
    "change": ("xsky.api.change", "change"),
    "threshold": ("xsky.api.change", "threshold"),
    "similar": ("xsky.api.similarity", "similar"),
    "sample": ("xsky.api.sampling", "sample"),
    "to_zarr": ("xsky.api.writing", "to_zarr"),
    "to_raster": ("xsky.api.export", "to_raster"),
    "quantize": ("xsky.api.export", "quantize"),
    "dequantize": ("xsky.api.export", "dequantize"),
    "stac_item": ("xsky.api.export", "stac_item"),
    "plot": ("xsky.plot", "plot"),
    "pca_rgb": ("xsky.plot", "pca_rgb"),
}


@functools.cache
def _target(name: str) -> Callable[..., Any]:
    module, func = METHODS[name]
    fn: Callable[..., Any] = getattr(importlib.import_module(module), func)
    return fn


def _signature_without_obj(fn: Callable[..., Any]) -> inspect.Signature:
    sig = inspect.signature(fn)
    return sig.replace(parameters=list(sig.parameters.values())[1:])


class _Method:
    """A descriptor forwarding ``accessor.<name>(...)`` to ``fn(accessor._obj, ...)``.

    The forwarded-to module is imported on first use (so ``.sky.plot`` needs matplotlib only
    when called); signature and docstring are those of the function minus its first argument,
    both on the class (for ``help``/documentation tools) and on instances.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def _describe(self, method: Callable[..., Any]) -> Callable[..., Any]:
        fn = _target(self.name)
        method.__name__ = self.name
        method.__qualname__ = f"SkyAccessor.{self.name}"
        method.__doc__ = fn.__doc__
        method.__module__ = fn.__module__
        method.__signature__ = _signature_without_obj(fn)  # type: ignore[attr-defined]
        return method

    def __get__(self, accessor: SkyAccessor | None, owner: type | None = None) -> Any:
        name = self.name
        if accessor is None:
            def unbound(acc: SkyAccessor, *args: Any, **kwargs: Any) -> Any:
                return _target(name)(acc._obj, *args, **kwargs)

            return self._describe(unbound)
        obj = accessor._obj

        def bound(*args: Any, **kwargs: Any) -> Any:
            return _target(name)(obj, *args, **kwargs)

        return self._describe(bound)


class SkyAccessor:
    """``obj.sky``: xsky's functions as methods of xarray objects (no state beyond the object).

    Methods: ``embed``, ``location_embed``, ``prototypes``, ``classify``, ``geo_context``,
    ``change``, ``threshold``, ``similar``, ``sample``, ``to_zarr``, ``to_raster``, ``quantize``, ``dequantize``, ``stac_item``,
    ``plot`` and ``pca_rgb``; each is the :mod:`xsky` function of the same name with ``obj``
    as its first argument.
    """

    __slots__ = ("_obj",)

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def __dir__(self) -> list[str]:
        return sorted(METHODS)


for _name in METHODS:
    setattr(SkyAccessor, _name, _Method(_name))


@functools.cache
def register() -> None:
    """Register ``.sky`` on DataArray, Dataset and DataTree (idempotent)."""
    xr.register_dataarray_accessor("sky")(SkyAccessor)
    xr.register_dataset_accessor("sky")(SkyAccessor)
    xr.register_datatree_accessor("sky")(SkyAccessor)
