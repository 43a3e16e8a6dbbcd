"""Persistence of geo-context prototypes: Zarr and NetCDF files.

A prototypes file holds the ``prototypes`` variable ``(region, prototype, feature)``, the
per-region counts, the region ``centre`` ``(region, feature)`` of centred prototypes, the
region coordinates and the attrs (parameters, region definition, source model and weights
digest, xsky version) of a prototypes ``Dataset`` from :func:`xsky.prototypes`;
:func:`as_prototypes_dataset` checks that a ``Dataset`` is one. Files written before
centring existed have no ``centre`` and are applied with plain cosine, as then.

Writes go through :func:`xsky.io.store.atomic_store`: only a store xsky wrote is ever
replaced, and a failed or interrupted write leaves the previous file as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..exceptions import ArgumentError, DataError, DimensionError, format_choices
from .store import MARKER, atomic_store

__all__ = ["REGION_KINDS", "as_prototypes_dataset", "open_prototypes", "save_prototypes"]

#: How the pixels of a prototypes ``Dataset`` map to regions (its ``regions`` attr).
REGION_KINDS = ("grid", "global", "labels")

_SAVED_VARS = ("prototypes", "centre", "n_samples", "n_pixels", "n_labelled")
_REGION_COORDS = ("region", "prototype", "feature", "lon_min", "lon_max", "lat_min", "lat_max")
_FORMATS = {".zarr": "zarr", ".nc": "netcdf", ".nc4": "netcdf", ".h5": "netcdf"}


def as_prototypes_dataset(protos: Any) -> xr.Dataset:
    """``protos`` as a prototypes ``Dataset`` (a bare ``prototypes`` DataArray is wrapped).

    Checks the type, the dims of ``prototypes`` and the ``regions`` attr; reads no values.
    """
    if isinstance(protos, xr.DataArray):
        protos = protos.to_dataset(name="prototypes")
    if not isinstance(protos, xr.Dataset) or "prototypes" not in protos.data_vars:
        raise ArgumentError(
            "expected a prototypes xr.Dataset (from xsky.prototypes or open_prototypes) with a "
            f"'prototypes' variable, got {type(protos).__name__}"
        )
    p = protos["prototypes"]
    if p.dims != ("region", "prototype", "feature"):
        raise DimensionError(
            f"'prototypes' has dims {p.dims}, expected ('region', 'prototype', 'feature')"
        )
    if "centre" in protos.data_vars:
        c = protos["centre"]
        want = {"region": p.sizes["region"], "feature": p.sizes["feature"]}
        if set(c.dims) != set(want) or any(c.sizes[d] != n for d, n in want.items()):
            raise DimensionError(
                f"'centre' has sizes {dict(c.sizes)}, expected (region, feature) = {want} "
                "like 'prototypes'; it is not a prototypes dataset written by xsky"
            )
    kind = protos.attrs.get("regions", "grid")
    if kind not in REGION_KINDS:
        raise DataError(
            f"prototypes attr regions={kind!r} is unknown; expected 'grid', 'global' or 'labels'"
        )
    return protos


def _core(protos: xr.Dataset) -> xr.Dataset:
    ds = as_prototypes_dataset(protos)
    keep = [v for v in _SAVED_VARS if v in ds.data_vars]
    out = ds[keep]
    out = out.drop_vars([c for c in out.coords if c not in _REGION_COORDS])
    attrs = {}
    for key, val in ds.attrs.items():
        if val is None:
            continue
        if isinstance(val, bool):
            val = int(val)
        if isinstance(val, tuple | list | np.ndarray):
            val = tuple(v.item() if isinstance(v, np.generic) else v for v in val)
        elif isinstance(val, np.generic):
            val = val.item()
        attrs[str(key)] = val
    out.attrs = attrs
    return out


def _format_of(path: str | Path, format: str | None) -> str:
    if format is not None:
        if format not in ("zarr", "netcdf"):
            raise ArgumentError(f"unknown format {format!r}; choose one of 'netcdf', 'zarr'")
        return format
    suffix = Path(str(path).rstrip("/")).suffix.lower()
    if suffix not in _FORMATS:
        raise ArgumentError(
            f"cannot tell the format of {str(path)!r} from its suffix {suffix!r}; use one of "
            f"{format_choices(_FORMATS)} or pass format='zarr'/'netcdf'"
        )
    return _FORMATS[suffix]


def save_prototypes(
    protos: xr.Dataset, path: str | Path, *, format: str | None = None, overwrite: bool = True
) -> None:
    """Write prototypes with their region metadata and provenance to Zarr or NetCDF.

    Saved: ``prototypes``, the region ``centre`` (centred prototypes), the per-region
    counts, the region coordinates and all attrs (parameters, region definition, source
    model and weights digest, xsky version). The maps of the source cube (``assignment``,
    ``similarity``, ``region_map``) are views of that cube and are not saved; lazy label
    prototypes are computed here.

    The file is written to a temporary sibling and swapped into place only when complete,
    so a failed or interrupted save leaves an earlier file at ``path`` as it was. An
    existing ``path`` is replaced only when xsky wrote it (an ``xsky_store`` marker attribute in
    a Zarr store, the ``xsky_store`` attribute of a NetCDF file): a directory or file xsky
    did not create is never deleted.

    Parameters
    ----------
    protos
        A prototypes ``Dataset``.
    path
        Target path; ``.zarr`` writes a Zarr store, ``.nc`` a NetCDF-4 file.
    format
        ``"zarr"`` or ``"netcdf"`` to override the suffix.
    overwrite
        Replace an existing store xsky wrote at ``path`` (default, as before); ``False``
        refuses any existing ``path``.

    Raises
    ------
    ArgumentError
        ``path`` exists and ``overwrite`` is false, or it exists but xsky did not write it
        (files saved by earlier xsky versions carry no marker: remove them yourself), or
        it cannot be written.
    """
    fmt = _format_of(path, format)
    if not isinstance(overwrite, bool | np.bool_):
        raise ArgumentError(f"overwrite must be True or False, got {overwrite!r}")
    core = _core(protos).compute()
    with atomic_store(path, overwrite=bool(overwrite), what="prototypes file") as tmp:
        _write(core, tmp, fmt)


def _write(core: xr.Dataset, tmp: Path, fmt: str) -> None:
    """Write ``core`` to the temporary ``tmp`` (marked as an xsky store)."""
    if fmt == "zarr":
        core.to_zarr(str(tmp), mode="w-", consolidated=False)
    else:
        marked = core.copy()
        marked.attrs = {**core.attrs, MARKER: "written by xsky"}
        marked.to_netcdf(str(tmp), engine="netcdf4")


def open_prototypes(path: str | Path, *, format: str | None = None) -> xr.Dataset:
    """Read prototypes written by :func:`save_prototypes` (loaded into memory).

    Parameters
    ----------
    path
        A ``.zarr`` store or ``.nc`` file.
    format
        ``"zarr"`` or ``"netcdf"`` to override the suffix.

    Returns
    -------
    xarray.Dataset
        The same variables, coordinates and attrs that were saved, ready for
        :func:`classify` and :func:`geo_context`.
    """
    fmt = _format_of(path, format)
    if not Path(path).exists():
        raise ArgumentError(f"no prototypes file at {str(path)!r}")
    if fmt == "zarr":
        ds = xr.open_zarr(str(path), consolidated=False)
    else:
        ds = xr.open_dataset(str(path))
    with ds:
        ds = ds.load()
    if "prototypes" not in ds.data_vars:
        raise DataError(
            f"{str(path)!r} holds no 'prototypes' variable (found {list(ds.data_vars)}); "
            "it was not written by save_prototypes"
        )
    attrs = {}
    for key, val in ds.attrs.items():
        if isinstance(val, np.ndarray | list | tuple):
            val = tuple(v.item() if isinstance(v, np.generic) else v for v in np.asarray(val))
        elif isinstance(val, np.generic):
            val = val.item()
        attrs[key] = val
    attrs.pop(MARKER, None)  # the store marker is not a property of the prototypes
    ds.attrs = attrs
    for v in ds.variables.values():
        v.encoding = {}
    as_prototypes_dataset(ds)  # validate dims and region attrs
    return ds
