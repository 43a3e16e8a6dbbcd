"""Embeddings at points: :func:`sample`, and the point handling similarity search shares.

Points come as a pandas DataFrame with ``lon``/``lat`` columns (degrees, EPSG:4326) or
``x``/``y`` columns (in the cube's CRS, or in ``crs=``), or as a GeoDataFrame (its geometry,
in its own CRS). A CRS is never guessed: coordinates in another CRS must say so (a
GeoDataFrame's ``crs``, or ``crs=``), and points outside the cube are refused with the
cube's extent in the message, which is what coordinates in the wrong CRS look like.

An optional ``time`` column picks the date of each point in a cube with a time axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..exceptions import ArgumentError, CRSError, DataError, DimensionError, format_choices
from ..geo import GridInfo, get_crs, grid_info

__all__ = ["METHODS", "sample"]

METHODS = ("nearest", "bilinear")
_LON_NAMES = ("lon", "longitude", "lng", "long")
_LAT_NAMES = ("lat", "latitude")
_TIME = "time"


# --------------------------------------------------------------------------------------
# The cube
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class EmbeddingCube:
    """An embedding DataArray in canonical order ``([time,] y, x, feature)`` and its grid."""

    emb: xr.DataArray
    grid: GridInfo
    crs: Any
    has_time: bool

    @property
    def n_features(self) -> int:
        return int(self.emb.sizes["feature"])

    @property
    def times(self) -> pd.DatetimeIndex | None:
        return pd.DatetimeIndex(self.emb["time"].values) if self.has_time else None

    def extent(self) -> str:
        """The cube's footprint (pixel edges) for error messages."""
        g = self.grid
        xs = sorted((g.x0 - g.dx / 2, g.x0 + (g.nx - 0.5) * g.dx))
        ys = sorted((g.y0 - g.dy / 2, g.y0 + (g.ny - 0.5) * g.dy))
        name = self.crs.to_string() if hasattr(self.crs, "to_string") else str(self.crs)
        return (f"{g.xdim} [{xs[0]:.6g}, {xs[1]:.6g}], {g.ydim} [{ys[0]:.6g}, {ys[1]:.6g}] "
                f"in {name}")


def embedding_cube(emb: Any, what: str = "emb") -> EmbeddingCube:
    """Check an embedding DataArray and view it as ``([time,] y, x, feature)`` (lazily)."""
    if isinstance(emb, xr.Dataset) and "embedding" in emb.data_vars:
        raise ArgumentError(f"{what} is a Dataset; pass its embedding DataArray, e.g. "
                            "ds['embedding']")
    if not isinstance(emb, xr.DataArray):
        raise ArgumentError(f"{what} must be an embedding DataArray from xsky.embed (dims "
                            f"(y, x, feature) or (time, y, x, feature)), got "
                            f"{type(emb).__name__}")
    if "feature" not in emb.dims:
        raise DimensionError(
            f"{what} has dims {tuple(emb.dims)} but no 'feature' dimension; pass an embedding "
            "from xsky.embed, or rename the feature axis with emb.rename(band='feature')"
        )
    gi = grid_info(emb)
    dims = [d for d in ("time", gi.ydim, gi.xdim, "feature") if d in emb.dims]
    extra = [d for d in emb.dims if d not in dims]
    if extra:
        raise DimensionError(
            f"{what} has extra dims {extra} besides ([time,] {gi.ydim}, {gi.xdim}, feature); "
            f"select one value of them first, e.g. emb.isel({extra[0]}=0)"
        )
    has_time = "time" in emb.dims
    if has_time and not np.issubdtype(np.asarray(emb["time"].values).dtype, np.datetime64):
        raise DimensionError(f"'time' of {what} must hold dates (datetime64), got "
                             f"{emb['time'].dtype}")
    return EmbeddingCube(emb.transpose(*dims), gi, get_crs(emb), has_time)


# --------------------------------------------------------------------------------------
# Points
# --------------------------------------------------------------------------------------


def is_geo(obj: Any) -> bool:
    """A GeoDataFrame or GeoSeries (told by its class, without importing geopandas)."""
    return any(c.__module__.split(".")[0] == "geopandas" and c.__name__ in
               ("GeoDataFrame", "GeoSeries") for c in type(obj).__mro__)


def _crs_of(value: Any) -> Any:
    from pyproj import CRS

    try:
        return CRS.from_user_input(value)
    except Exception as err:
        raise CRSError(f"crs={value!r} is not a CRS pyproj understands ({err}); pass e.g. "
                       "'EPSG:4326' or 'EPSG:32633'") from err


def transform_xy(x: np.ndarray, y: np.ndarray, src: Any, dst: Any
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``x, y`` from CRS ``src`` to CRS ``dst`` (always x/lon first)."""
    from pyproj import Transformer

    if src is None or src == dst:
        return np.asarray(x, np.float64), np.asarray(y, np.float64)
    t = Transformer.from_crs(src, dst, always_xy=True)
    xo, yo = t.transform(np.asarray(x, np.float64), np.asarray(y, np.float64))
    return np.asarray(xo, np.float64), np.asarray(yo, np.float64)


def geo_crs(obj: Any, crs: Any, what: str) -> Any:
    """The CRS of a GeoDataFrame/GeoSeries, or ``crs=``; refuses none and a conflict."""
    own = getattr(obj, "crs", None)
    given = None if crs is None else _crs_of(crs)
    if own is None and given is None:
        raise CRSError(
            f"{what} is a GeoDataFrame without a CRS, so its coordinates cannot be placed on "
            "the cube; set it with gdf.set_crs('EPSG:4326') (the CRS they are in) or pass "
            "crs=..."
        )
    own_crs = None if own is None else _crs_of(own)
    if own_crs is not None and given is not None and own_crs != given:
        raise CRSError(
            f"{what} has CRS {own_crs.to_string()} but crs={crs!r} was also given; drop crs= "
            "or reproject the GeoDataFrame with gdf.to_crs(...)"
        )
    return own_crs if own_crs is not None else given


def frame_xy(df: pd.DataFrame, crs: Any, what: str) -> tuple[np.ndarray, np.ndarray, Any]:
    """Point coordinates of a plain DataFrame and the CRS they are in (``None``: the
    cube's). ``lon``/``lat`` columns are degrees (EPSG:4326, or the geographic ``crs=``);
    ``x``/``y`` columns are in the cube's CRS unless ``crs=`` says otherwise."""
    lower = {str(c).lower(): c for c in df.columns}
    lon = next((lower[n] for n in _LON_NAMES if n in lower), None)
    lat = next((lower[n] for n in _LAT_NAMES if n in lower), None)
    if lon is not None and lat is not None:
        src = _crs_of(crs) if crs is not None else _crs_of("EPSG:4326")
        if not src.is_geographic:
            raise CRSError(
                f"{what} has lon/lat columns but crs={crs!r} is a projected CRS; lon/lat are "
                "degrees: drop crs=, or name projected columns 'x'/'y'"
            )
        return _numbers(df[lon], "lon"), _numbers(df[lat], "lat"), src
    if "x" in lower and "y" in lower:
        src = None if crs is None else _crs_of(crs)
        return _numbers(df[lower["x"]], "x"), _numbers(df[lower["y"]], "y"), src
    if "geometry" in lower:
        x, y = _point_xy(np.asarray(df[lower["geometry"]]), what)
        return x, y, None if crs is None else _crs_of(crs)
    raise DimensionError(
        f"cannot find point coordinates in the columns {list(df.columns)} of {what}; name "
        "them 'lon'/'lat' (degrees) or 'x'/'y' (in the cube's CRS, or pass crs=), or pass a "
        "GeoDataFrame"
    )


def _numbers(col: Any, name: str) -> np.ndarray:
    from .._coerce import float_values

    return float_values(col, name)


def _point_xy(geoms: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    import shapely

    geoms = np.asarray(geoms, dtype=object)
    if geoms.size and not all(isinstance(g, shapely.Geometry) for g in geoms):
        raise ArgumentError(f"{what} has a geometry column that does not hold shapely "
                            "geometries")
    kinds = shapely.get_type_id(geoms)
    if (kinds != 0).any():  # 0: Point
        bad = sorted({shapely.get_type_id(g) for g in geoms[kinds != 0]})
        names = {-1: "missing", 1: "LineString", 2: "LinearRing", 3: "Polygon",
                 4: "MultiPoint", 5: "MultiLineString", 6: "MultiPolygon",
                 7: "GeometryCollection"}
        raise ArgumentError(
            f"{what} must hold points, found {[names.get(int(b), b) for b in bad]} "
            f"geometries; use their centroids (gdf.geometry.centroid) or pass polygons to "
            "xsky.similar"
        )
    return shapely.get_x(geoms).astype(np.float64), shapely.get_y(geoms).astype(np.float64)


@dataclass(frozen=True)
class Points:
    """Points placed on a cube: fractional pixel positions, time index, the frame's index."""

    fy: np.ndarray
    fx: np.ndarray
    t: np.ndarray | None  # time index per point (None: no time given)
    index: pd.Index

    @property
    def iy(self) -> np.ndarray:
        return np.clip(np.floor(self.fy + 0.5), 0, None).astype(np.int64)

    @property
    def ix(self) -> np.ndarray:
        return np.clip(np.floor(self.fx + 0.5), 0, None).astype(np.int64)


def place(cube: EmbeddingCube, x: np.ndarray, y: np.ndarray, src_crs: Any, what: str
          ) -> tuple[np.ndarray, np.ndarray]:
    """Fractional pixel positions of ``x, y`` (in ``src_crs``, ``None`` = the cube's CRS);
    points outside the cube's footprint are an error."""
    xc, yc = transform_xy(x, y, src_crs, cube.crs)
    g = cube.grid
    fy = (yc - g.y0) / g.dy
    fx = (xc - g.x0) / g.dx
    eps = 1e-9 * max(g.nx, g.ny)
    inside = (np.isfinite(fy) & np.isfinite(fx) & (fy >= -0.5 - eps) & (fy <= g.ny - 0.5 + eps)
              & (fx >= -0.5 - eps) & (fx <= g.nx - 0.5 + eps))
    if not inside.all():
        i = int(np.flatnonzero(~inside)[0])
        hint = ("; if the coordinates are lon/lat, pass crs='EPSG:4326' (or lon/lat columns)"
                if src_crs is None else "")
        raise DataError(
            f"{int((~inside).sum())} of {inside.size} point(s) of {what} fall outside the "
            f"cube (first: position {i}, ({x[i]:.6g}, {y[i]:.6g}), at ({xc[i]:.6g}, "
            f"{yc[i]:.6g}) in the cube's CRS); the cube spans {cube.extent()}{hint}"
        )
    return fy, fx


def time_index(cube: EmbeddingCube, values: Any, what: str) -> np.ndarray:
    """Index into the cube's time axis of each date in ``values`` (exact matches only)."""
    times = cube.times
    if times is None:
        raise DimensionError(
            f"{what} gives a time but the cube has no time dimension; drop the 'time' column "
            "or time="
        )
    raw = pd.DatetimeIndex(pd.to_datetime(np.atleast_1d(np.asarray(values, dtype=object))))
    if raw.tz is not None:
        raw = raw.tz_convert("UTC").tz_localize(None)
    got = times.get_indexer(raw)
    if (got < 0).any():
        bad = [str(v) for v in raw[got < 0][:3]]
        raise DataError(
            f"{int((got < 0).sum())} date(s) of {what} are not dates of the cube (e.g. "
            f"{bad}); the cube has {len(times)} dates from {times[0]} to {times[-1]}; use one "
            "of emb.time.values (e.g. emb.sel(time=d, method='nearest').time)"
        )
    return got.astype(np.int64)


def locate_points(cube: EmbeddingCube, points: Any, *, crs: Any = None,
                  what: str = "points") -> Points:
    """Place a DataFrame / GeoDataFrame of points on the cube (see the module docstring)."""
    if not isinstance(points, pd.DataFrame) and not is_geo(points):
        raise ArgumentError(
            f"{what} must be a pandas DataFrame with lon/lat or x/y columns, or a "
            f"GeoDataFrame of points, got {type(points).__name__}"
        )
    if is_geo(points):
        src = geo_crs(points, crs, what)
        x, y = _point_xy(np.asarray(points.geometry), what)
    else:
        x, y, src = frame_xy(points, crs, what)
    if (~np.isfinite(x) | ~np.isfinite(y)).any():
        bad = np.flatnonzero(~np.isfinite(x) | ~np.isfinite(y))[:5].tolist()
        raise DataError(f"{what} has NaN or infinite coordinates (positions {bad}); drop them "
                        "first")
    fy, fx = place(cube, x, y, src, what)
    t = None
    cols = getattr(points, "columns", ())
    if _TIME in cols:
        t = time_index(cube, points[_TIME], what)
    return Points(fy, fx, t, pd.Index(points.index))


# --------------------------------------------------------------------------------------
# sample
# --------------------------------------------------------------------------------------


def _gather(cube: EmbeddingCube, iy: np.ndarray, ix: np.ndarray, t: np.ndarray | None
            ) -> np.ndarray:
    """Values at ``(t, iy, ix)`` (any shape, broadcast together), features last, in one
    compute; with ``t`` None on a time cube, the time axis stays first."""
    shape = np.broadcast_shapes(iy.shape, ix.shape, *(() if t is None else (t.shape,)))
    dims = tuple(f"p{i}" for i in range(len(shape)))
    sel: dict[str, Any] = {
        cube.grid.ydim: xr.DataArray(np.broadcast_to(iy, shape), dims=dims),
        cube.grid.xdim: xr.DataArray(np.broadcast_to(ix, shape), dims=dims),
    }
    if t is not None:
        sel["time"] = xr.DataArray(np.broadcast_to(t, shape), dims=dims)
    picked = cube.emb.isel(sel)
    return np.asarray(picked.values)


def _bilinear(values: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted mean of the 4 taps ``(..., n, 4, F)`` over the valid ones (weights
    renormalised); NaN where no tap is valid."""
    from ..engine.similarity import valid_rows

    ok = valid_rows(values)  # (..., n, 4)
    ww = np.where(ok, w, 0.0)
    total = ww.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        ww = ww / total
    v = np.where(ok[..., None], values, 0.0).astype(np.float64)
    out = (ww[..., None] * v).sum(axis=-2)
    out[(total[..., 0] == 0)] = np.nan
    return out.astype(values.dtype, copy=False)


def _columns(n: int, prefix: str) -> list[str]:
    width = max(1, int(math.log10(max(n - 1, 1))) + 1)
    return [f"{prefix}{i:0{width}d}" for i in range(n)]


def sample(
    emb: xr.DataArray,
    points: Any,
    *,
    method: str = "nearest",
    crs: Any = None,
    prefix: str = "emb_",
) -> pd.DataFrame:
    """Embedding vectors at points: a table with the points' index, one column per feature.

    Parameters
    ----------
    emb
        An embedding from :func:`xsky.embed`: dims ``(y, x, feature)`` or ``(time, y, x,
        feature)``, a CRS, NaN for invalid pixels. Lazy cubes compute only the blocks that
        hold the points (in one compute).
    points
        A pandas DataFrame with ``lon``/``lat`` columns (degrees, EPSG:4326) or ``x``/``y``
        columns (in the cube's CRS, or in ``crs``), or a GeoDataFrame of points (in its own
        CRS). An optional ``time`` column gives each point's date on a cube with a time
        axis (exact dates of ``emb.time``).
    method
        ``"nearest"``: the pixel whose footprint holds the point. ``"bilinear"``: the
        bilinear interpolation of the four pixel centres around the point, over the valid
        ones only (their weights renormalised to sum to 1), so a point next to a cloud
        takes the values of its clear neighbours; NaN only when all four are invalid.
        Between the outermost pixel centres and the cube's edge, the edge pixels are used.
    crs
        The CRS of ``x``/``y`` columns (default: the cube's), or of a GeoDataFrame without
        one. Never guessed: points that fall outside the cube are refused.
    prefix
        Prefix of the feature columns (``emb_000``, ``emb_001``, ...).

    Returns
    -------
    pandas.DataFrame or geopandas.GeoDataFrame
        The input's columns, then the features (float32; NaN at invalid pixels), with the
        input's index. On a cube with a time axis and points without a ``time`` column,
        one row per point and date, indexed by ``(point index, time)``.

    Raises
    ------
    DataError
        Points outside the cube, or dates that are not the cube's.
    CRSError
        A GeoDataFrame without a CRS, or conflicting CRSs.

    Examples
    --------
    >>> import numpy as np, pandas as pd, xarray as xr
    >>> from xsky.geo import write_crs
    >>> emb = write_crs(xr.DataArray(
    ...     np.arange(24, dtype="float32").reshape(2, 3, 4), dims=("y", "x", "feature"),
    ...     coords={"y": [15.0, 5.0], "x": [5.0, 15.0, 25.0]}), "EPSG:32633")
    >>> pts = pd.DataFrame({"x": [15.0, 20.0], "y": [5.0, 10.0]}, index=["a", "b"])
    >>> sample(emb, pts).iloc[:, 2:].values.tolist()
    [[16.0, 17.0, 18.0, 19.0], [20.0, 21.0, 22.0, 23.0]]
    >>> sample(emb, pts, method="bilinear").loc["b", "emb_0"]
    np.float32(12.0)
    """
    from ..engine.similarity import bilinear_taps

    if method not in METHODS:
        raise ArgumentError(f"method={method!r} is not supported; choose one of "
                            f"{format_choices(METHODS)}")
    if not isinstance(prefix, str):
        raise ArgumentError(f"prefix must be a string, got {prefix!r}")
    cube = embedding_cube(emb)
    pts = locate_points(cube, points, crs=crs)
    g = cube.grid
    if method == "nearest":
        iy = np.minimum(pts.iy, g.ny - 1)
        ix = np.minimum(pts.ix, g.nx - 1)
        values = _gather(cube, iy, ix, pts.t)
    else:
        ty, tx, w = bilinear_taps(pts.fy, pts.fx, g.ny, g.nx)
        t4 = None if pts.t is None else np.repeat(pts.t[:, None], 4, axis=1)
        values = _bilinear(_gather(cube, ty, tx, t4), w)
    cols = _columns(cube.n_features, prefix)
    base = points.copy() if isinstance(points, pd.DataFrame) else pd.DataFrame(index=pts.index)
    clash = [c for c in cols if c in base.columns]
    if clash:
        raise ArgumentError(f"the points already have columns {clash[:3]}; pass another "
                            "prefix=")
    if cube.has_time and pts.t is None:  # (time, n, F): one row per point and date
        times = cube.times
        assert times is not None
        nt, n = values.shape[0], values.shape[1]
        index = pd.MultiIndex.from_arrays(
            [np.repeat(np.asarray(base.index, dtype=object), nt), np.tile(times, n)],
            names=[base.index.name, "time"])
        rep = base.iloc[np.repeat(np.arange(n), nt)]
        rep.index = index
        feats = pd.DataFrame(np.swapaxes(values, 0, 1).reshape(n * nt, -1), index=index,
                             columns=cols)
        return pd.concat([rep, feats], axis=1)
    feats = pd.DataFrame(values.reshape(len(base), -1), index=base.index, columns=cols)
    return pd.concat([base, feats], axis=1)
