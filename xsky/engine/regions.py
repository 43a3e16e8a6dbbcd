"""Region geometry of geo-context prototypes: which region each pixel belongs to.

Arrays only (numpy kernels and the dask graphs built from them). A pixel's region comes
either from its centre's lon/lat (an equal-angle ``grid``, or one ``global`` region) or from
an integer label map on the pixel grid (``labels``). Lon/lat of pixels come from
:func:`xsky.geo.pixel_lonlat` (one cached transformer per CRS and thread).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import dask.array as da
import numpy as np
from dask.base import compute

from ..geo import pixel_lonlat

__all__ = [
    "SKYSENSE_GRID",
    "Regions",
    "grid_ids_block",
    "grid_region_map",
    "label_map_array",
    "pixel_region_index",
    "region_index",
    "regions_present",
]

#: The SkySense-like global preset: 64 x 64 lon/lat cells of 5.625 deg lon x 2.8125 deg lat
#: (4,096 regions, each about 625 km x 312 km at the equator). The paper gives the count
#: only; an equal-angle grid is the simplest split with that count.
SKYSENSE_GRID: tuple[float, float] = (360.0 / 64, 180.0 / 64)

_LABEL_ROW_STEP = 1024  # rows of coordinates converted at once when listing grid cells


@dataclass(frozen=True)
class Regions:
    """How pixels map to regions: a lon/lat ``grid``, one ``global`` region, or ``labels``."""

    kind: Literal["grid", "global", "labels"]
    dlon: float = 0.0
    dlat: float = 0.0
    name: str = ""

    @property
    def ncols(self) -> int:
        return math.ceil(360.0 / self.dlon - 1e-9)

    @property
    def nrows(self) -> int:
        return math.ceil(180.0 / self.dlat - 1e-9)

    def ids_from_lonlat(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Grid cell ids (``-1`` where lon/lat is not finite, e.g. outside a projection)."""
        ok = np.isfinite(lon) & np.isfinite(lat)
        lon = np.where(ok, lon, 0.0)
        lat = np.where(ok, lat, 0.0)
        col = np.clip(np.floor((lon + 180.0) / self.dlon), 0, self.ncols - 1).astype("int64")
        row = np.clip(np.floor((lat + 90.0) / self.dlat), 0, self.nrows - 1).astype("int64")
        return np.where(ok, row * self.ncols + col, -1)

    def ids(self, xs: np.ndarray, ys: np.ndarray, crs_wkt: str) -> np.ndarray:
        """Region id of every pixel of the grid spanned by ``xs`` and ``ys`` (``(ny, nx)``)."""
        if self.kind == "global":
            return np.zeros((len(ys), len(xs)), "int64")
        lon, lat = pixel_lonlat(xs, ys, crs_wkt)
        return self.ids_from_lonlat(lon, lat)

    def bounds(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        ids = np.asarray(ids, "int64")
        if self.kind == "global":
            one = np.ones(ids.shape)
            return {
                "lon_min": -180 * one,
                "lon_max": 180 * one,
                "lat_min": -90 * one,
                "lat_max": 90 * one,
            }
        if self.kind == "labels":
            nan = np.full(ids.shape, np.nan)
            return {
                "lon_min": nan,
                "lon_max": nan.copy(),
                "lat_min": nan.copy(),
                "lat_max": nan.copy(),
            }
        row, col = np.divmod(ids, self.ncols)
        lon_min = -180.0 + col * self.dlon
        lat_min = -90.0 + row * self.dlat
        return {
            "lon_min": lon_min,
            "lon_max": np.minimum(lon_min + self.dlon, 180.0),
            "lat_min": lat_min,
            "lat_max": np.minimum(lat_min + self.dlat, 90.0),
        }

    def attrs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"regions": self.kind}
        if self.kind == "grid":
            out["grid"] = self.name
            out["cell_size"] = (self.dlon, self.dlat)
        return out


def grid_ids_block(ys: np.ndarray, xs: np.ndarray, regions: Regions, crs_wkt: str) -> np.ndarray:
    """Block kernel: region ids ``(ny, nx)`` of the pixels at ``ys`` x ``xs``."""
    return regions.ids(xs, ys, crs_wkt)


def grid_region_map(
    ys: np.ndarray,
    xs: np.ndarray,
    chunks: tuple[tuple[int, ...], tuple[int, ...]],
    regions: Regions,
    crs_wkt: str,
) -> da.Array:
    """Lazy ``(y, x)`` int64 region ids from pixel lon/lat, chunked as ``chunks``."""
    dys = da.from_array(np.asarray(ys, "float64"), chunks=(chunks[0],))
    dxs = da.from_array(np.asarray(xs, "float64"), chunks=(chunks[1],))
    out: da.Array = da.blockwise(
        grid_ids_block,
        "yx",
        dys,
        "y",
        dxs,
        "x",
        dtype="int64",
        regions=regions,
        crs_wkt=crs_wkt,
        meta=np.empty((0, 0), "int64"),
    )
    return out


def label_map_array(data: Any, chunks: tuple[tuple[int, ...], tuple[int, ...]]) -> da.Array:
    """A ``(y, x)`` region label map (numpy or dask) as int64 dask ids on ``chunks``.

    Negative, NaN and infinite labels become ``-1`` (no region). Lazy.
    """
    arr = da.asarray(data)
    if np.issubdtype(arr.dtype, np.floating):
        arr = da.where(da.isfinite(arr), arr, -1)
    arr = arr.astype("int64")
    arr = da.where(arr < 0, -1, arr)  # negative / NaN: no region
    out: da.Array = arr.rechunk(chunks)
    return out


def regions_present(
    regions: Regions,
    ys: np.ndarray,
    xs: np.ndarray,
    crs_wkt: str,
    rmap: da.Array | None = None,
    raw: np.ndarray | None = None,
) -> np.ndarray:
    """Sorted region ids covered by the pixels at ``ys`` x ``xs``.

    Grid cells come from the coordinates only (in strips of rows). For a label map, its
    in-memory values ``raw`` are read directly when given, else the dask map ``rmap`` is
    computed once (an explicit compute point).
    """
    if regions.kind == "global":
        return np.zeros(1, "int64")
    if rmap is not None:
        if raw is not None:
            raw = np.asarray(raw, "float64")
            vals = np.unique(raw[np.isfinite(raw) & (raw >= 0)]).astype("int64")
        else:
            (vals,) = compute(da.unique(rmap))
        vals = np.asarray(vals)
        return vals[vals >= 0]
    found: set[int] = set()
    for i in range(0, ys.size, _LABEL_ROW_STEP):
        ids = regions.ids(xs, ys[i : i + _LABEL_ROW_STEP], crs_wkt)
        found.update(np.unique(ids[ids >= 0]).tolist())
    return np.array(sorted(found), "int64")


def region_index(rid: np.ndarray, region_values: np.ndarray) -> np.ndarray:
    """Position of each region id in the prototypes' sorted ``region`` axis (``-1``: none)."""
    order = np.argsort(region_values, kind="stable")
    vals = region_values[order]
    pos = np.clip(np.searchsorted(vals, rid), 0, max(vals.size - 1, 0))
    hit = (vals.size > 0) & (vals[pos] == rid) & (rid >= 0)
    return np.where(hit, order[pos], -1)


def pixel_region_index(
    rblock: np.ndarray | None,
    ys: np.ndarray,
    xs: np.ndarray,
    regions: Regions,
    crs_wkt: str,
    region_values: np.ndarray,
) -> np.ndarray:
    """Index into the prototype bank of each pixel's region (from lon/lat or a label block)."""
    rid = regions.ids(xs, ys, crs_wkt) if rblock is None else np.asarray(rblock, "int64")
    return region_index(rid, region_values)
