"""Georeferencing helpers: grids, CRS, and one cached lon/lat transformer per CRS.

They read coordinates and CRS metadata only, never pixel values.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import xarray as xr

from .exceptions import CRSError, DimensionError

__all__ = [
    "GridInfo",
    "get_crs",
    "grid_info",
    "lonlat_transformer",
    "pixel_lonlat",
    "spatial_dims",
    "write_crs",
]

_X_NAMES = ("x", "lon", "longitude")
_Y_NAMES = ("y", "lat", "latitude")


def _name(obj: Any) -> str:
    name = getattr(obj, "name", None)
    return f"{name!r}" if isinstance(name, str) else "the input"


def spatial_dims(obj: xr.DataArray | xr.Dataset) -> tuple[str, str]:
    """Names of the ``(y, x)`` dimensions of ``obj``.

    Raises
    ------
    DimensionError
        When no x/y (or lon/lat) dimension pair is found.
    """
    dims = set(obj.dims)
    ydim = next((d for d in _Y_NAMES if d in dims), None)
    xdim = next((d for d in _X_NAMES if d in dims), None)
    if ydim is None or xdim is None:
        raise DimensionError(
            f"{_name(obj)} has dims {tuple(obj.dims)} but needs spatial dims 'y' and 'x' "
            "(or 'lat'/'lon'); rename them with obj.rename({'rows': 'y', 'cols': 'x'})"
        )
    return ydim, xdim


def get_crs(obj: xr.DataArray | xr.Dataset) -> Any:
    """The CRS of ``obj`` as a :class:`pyproj.CRS` (from ``spatial_ref``/``grid_mapping``).

    Raises
    ------
    CRSError
        When the object carries no CRS.
    """
    import rioxarray  # noqa: F401  (registers .rio)
    from pyproj import CRS

    crs = None
    try:
        crs = obj.rio.crs
    except Exception:  # rioxarray raises on some odd inputs; treat as missing
        crs = None
    if crs is None:
        # odc-geo style: a 'spatial_ref' coordinate with crs_wkt
        for cand in ("spatial_ref", "crs"):
            if cand in obj.coords or (isinstance(obj, xr.Dataset) and cand in obj.variables):
                attrs = obj[cand].attrs
                wkt = attrs.get("crs_wkt") or attrs.get("spatial_ref")
                if wkt:
                    crs = wkt
                    break
    if crs is None:
        ydim, xdim = (None, None)
        with contextlib.suppress(DimensionError):
            ydim, xdim = spatial_dims(obj)
        if ydim in ("lat", "latitude") and xdim in ("lon", "longitude"):
            _check_degrees(obj, ydim, xdim)
            return CRS.from_epsg(4326)
        raise CRSError(
            f"CRS not found on {_name(obj)}; set it with obj.rio.write_crs('EPSG:32633') "
            "(or the CRS your x/y coordinates are in)"
        )
    return CRS.from_user_input(crs if isinstance(crs, str) else crs.to_wkt())


def _check_degrees(obj: Any, ydim: str, xdim: str) -> None:
    """``lat``/``lon`` dims without a CRS are taken as EPSG:4326 only when their values are
    degrees (reads the 1-D coordinates only)."""
    for dim, lo, hi in ((ydim, -90.0, 90.0), (xdim, -180.0, 360.0)):
        if dim not in obj.coords:
            continue
        values = np.asarray(obj[dim].values)
        if not np.issubdtype(values.dtype, np.number) or values.size == 0:
            continue
        vmin, vmax = float(np.nanmin(values)), float(np.nanmax(values))
        if vmin < lo or vmax > hi:
            raise CRSError(
                f"{_name(obj)} has dims {ydim!r}/{xdim!r} and no CRS, so xsky would take them "
                f"as degrees (EPSG:4326), but {dim!r} ranges from {vmin:g} to {vmax:g}, outside "
                f"[{lo:g}, {hi:g}]: these look like projected coordinates. Set the CRS they are "
                "in with obj.rio.write_crs('EPSG:32633') (your CRS), and rename the dims to "
                "'y'/'x'"
            )


def write_crs(obj: Any, crs: Any) -> Any:
    """Write ``crs`` as a ``spatial_ref`` coordinate readable by rioxarray and odc-geo.

    The CF ``grid_mapping`` reference is kept as an *attribute* of the data variable(s), not
    only in ``encoding`` as rioxarray does: xarray then also lists ``spatial_ref`` in the
    variables' ``coordinates`` on disk, so a Zarr or NetCDF written from the result reopens
    with ``spatial_ref`` as a coordinate (and ``obj.rio.crs`` set) under a plain
    ``xr.open_zarr`` / ``xr.open_dataset``, without ``decode_coords="all"``.
    """
    import rioxarray  # noqa: F401

    out = obj.rio.write_crs(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    name = out.rio.grid_mapping
    variables = [out] if not hasattr(out, "data_vars") else [out[v] for v in out.data_vars]
    for var in variables:
        if var.name == name:
            continue
        var.encoding.pop("grid_mapping", None)
        var.attrs["grid_mapping"] = name
    return out


@dataclass(frozen=True)
class GridInfo:
    """A regular pixel grid: pixel-centre coordinates of pixel 0 and the step along each axis."""

    ydim: str
    xdim: str
    y0: float
    x0: float
    dy: float
    dx: float
    ny: int
    nx: int

    def y_coords(self, start: float, step: int, n: int) -> np.ndarray:
        """Centres of ``n`` output pixels that each cover ``step`` input pixels from ``start``."""
        return self.y0 + (start + np.arange(n) * step + (step - 1) / 2) * self.dy

    def x_coords(self, start: float, step: int, n: int) -> np.ndarray:
        return self.x0 + (start + np.arange(n) * step + (step - 1) / 2) * self.dx


def _check_axis(obj: Any, dim: str, values: np.ndarray) -> float:
    if values.size == 0:
        raise DimensionError(f"dimension {dim!r} of {_name(obj)} is empty; nothing to process")
    if values.size == 1:
        raise DimensionError(
            f"dimension {dim!r} of {_name(obj)} has a single coordinate, so its pixel size is "
            "unknown; xsky needs at least 2 pixels along each spatial axis"
        )
    if not np.issubdtype(values.dtype, np.number):
        raise DimensionError(
            f"coordinate {dim!r} of {_name(obj)} has dtype {values.dtype}, expected numbers"
        )
    if not np.all(np.isfinite(values)):
        raise DimensionError(f"coordinate {dim!r} of {_name(obj)} contains NaN or inf")
    d = np.diff(values.astype("float64"))
    if not (np.all(d > 0) or np.all(d < 0)):
        raise DimensionError(
            f"dimension {dim!r} of {_name(obj)} is not monotonic; sort with obj.sortby({dim!r})"
        )
    step = float(np.median(d))
    if np.max(np.abs(d - step)) > 1e-6 * max(abs(step), 1e-12) + 1e-9 * np.max(np.abs(values)):
        raise DimensionError(
            f"dimension {dim!r} of {_name(obj)} is irregular (steps from {d.min():g} to "
            f"{d.max():g}); resample it onto a regular grid first (e.g. odc.geo reproject or "
            "obj.interp)"
        )
    return step


def grid_info(obj: xr.DataArray | xr.Dataset) -> GridInfo:
    """Check that ``obj`` lies on a regular, monotonic pixel grid and describe it."""
    ydim, xdim = spatial_dims(obj)
    for d in (ydim, xdim):
        if d not in obj.coords:
            raise DimensionError(
                f"dimension {d!r} of {_name(obj)} has no coordinate; assign pixel-centre "
                f"coordinates with obj.assign_coords({d}=...)"
            )
    yv = np.asarray(obj[ydim].values)
    xv = np.asarray(obj[xdim].values)
    dy = _check_axis(obj, ydim, yv)
    dx = _check_axis(obj, xdim, xv)
    return GridInfo(ydim, xdim, float(yv[0]), float(xv[0]), dy, dx, yv.size, xv.size)


@lru_cache(maxsize=64)
def _transformer(crs_wkt: str, thread_id: int) -> Any:
    from pyproj import CRS, Transformer

    crs = CRS.from_wkt(crs_wkt)
    return Transformer.from_crs(crs, crs.geodetic_crs or CRS.from_epsg(4326), always_xy=True)


def lonlat_transformer(crs: Any) -> Any:
    """The cached :class:`pyproj.Transformer` from ``crs`` to its geographic CRS (lon, lat).

    One per CRS and thread (pyproj transformers must not be shared across threads), built
    once per process.
    """
    return _transformer(_wkt(crs), threading.get_ident())


@lru_cache(maxsize=64)
def _wkt_of(text: str) -> str:
    from pyproj import CRS

    return str(CRS.from_user_input(text).to_wkt())


def _wkt(crs: Any) -> str:
    if hasattr(crs, "to_wkt"):
        return str(crs.to_wkt())
    text = str(crs)
    return text if "[" in text else _wkt_of(text)  # already WKT, or "EPSG:32633" etc.


def pixel_lonlat(x: np.ndarray, y: np.ndarray, crs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Longitude/latitude (degrees, float64) of the 2-D grid spanned by 1-D ``x`` and ``y``.

    ``crs`` is anything :meth:`pyproj.CRS.from_user_input` takes, or its WKT. Returns two
    arrays of shape ``(len(y), len(x))``.
    """
    xx, yy = np.meshgrid(np.asarray(x, "float64"), np.asarray(y, "float64"))
    lon, lat = lonlat_transformer(crs).transform(xx, yy)
    return np.asarray(lon, "float64"), np.asarray(lat, "float64")
