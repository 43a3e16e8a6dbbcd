"""Similarity search on embedding cubes: ``similar(emb, query)``, lazy and chunk-invariant.

A query is turned into one unit vector, normalised once:

- a **vector** (numpy array, DataArray or list of ``F`` numbers; an ``(n, F)`` array is
  the mean of its rows);
- **points**: a tuple ``(x, y)``, a list of them, shapely points, a DataFrame with
  ``lon``/``lat`` or ``x``/``y`` columns, or a GeoDataFrame; several points give the mean
  of their embeddings;
- a **polygon** (shapely, or the polygons of a GeoDataFrame): the mean embedding of the
  valid pixels whose centre is inside;
- **examples** labelled by a user, :class:`Examples` (or a dict ``{"positive": ...,
  "negative": ...}``): ``2 mean(positive) - mean(negative)`` over the example pixels,
  refined by ``examples.add(positive=..., negative=...)`` as more are labelled.

Coordinates are in the cube's CRS unless they say otherwise (``lon``/``lat`` columns, a
GeoDataFrame's CRS, or ``crs=``); points outside the cube are refused, never moved. On a
cube with a time axis, a location query reads the embedding at a date: a ``time`` column,
or ``time=``.

The result is the exact cosine of every pixel with the query, a lazy DataArray (CRS kept);
with ``k``, the ``k`` best pixels as a GeoDataFrame from a chunk-wise top-k. The query
vector of a location query is itself part of the lazy graph (read from the cube when the map
is computed), so nothing is computed when the map is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .. import _coerce
from ..exceptions import ArgumentError, DataError, DimensionError
from ..geo import write_crs
from .sampling import (
    EmbeddingCube,
    embedding_cube,
    frame_xy,
    geo_crs,
    is_geo,
    place,
    time_index,
)

__all__ = ["Examples", "similar", "top_k_frame"]


# --------------------------------------------------------------------------------------
# Examples: positives and negatives
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Examples:
    """Positive and negative examples of what to search for.

    The query is ``2 mean(positive) - mean(negative)`` (the mean of the positives when
    there are no negatives), over all example pixels: every point counts once, a polygon
    with each of its valid pixels. Examples are immutable; :meth:`add` returns a new set,
    so a search can be refined as a user labels more pixels.

    Parameters
    ----------
    positive, negative
        Each a location query (a point ``(x, y)``, a list of points, shapely geometries, a
        DataFrame or GeoDataFrame) or embedding vectors (``(F,)`` or ``(n, F)`` arrays), or
        a list of these.

    Examples
    --------
    >>> ex = Examples(positive=[(500_010.0, 4_999_990.0)])
    >>> ex = ex.add(negative=(500_100.0, 4_999_900.0))
    >>> len(ex.positive), len(ex.negative)
    (1, 1)
    """

    positive: Any = ()
    negative: Any = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "positive", _items(self.positive))
        object.__setattr__(self, "negative", _items(self.negative))

    def add(self, positive: Any = None, negative: Any = None) -> Examples:
        """A new :class:`Examples` with more positives and/or negatives."""
        return Examples(self.positive + _items(positive), self.negative + _items(negative))


def _is_point(value: Any) -> bool:
    return (isinstance(value, tuple) and len(value) == 2
            and all(isinstance(v, int | float | np.integer | np.floating)
                    and not isinstance(v, bool) for v in value))


def _items(value: Any) -> tuple[Any, ...]:
    """Normalise one side of :class:`Examples` to a tuple of query items."""
    if value is None:
        return ()
    if isinstance(value, tuple) and not _is_point(value):
        return tuple(value)
    if isinstance(value, list) and value and not all(
            isinstance(v, int | float | np.integer | np.floating) for v in value):
        return tuple(value)
    return (value,)


def _as_examples(query: Mapping[str, Any]) -> Examples:
    unknown = set(query) - {"positive", "negative"}
    if unknown:
        raise ArgumentError(
            f"a dict query takes the keys 'positive' and 'negative', got {sorted(unknown)}; "
            "e.g. {'positive': points, 'negative': other_points}"
        )
    return Examples(query.get("positive"), query.get("negative"))


# shapely geometry type ids a query may hold
_POINT, _POLYGON, _MULTIPOINT, _MULTIPOLYGON = 0, 3, 4, 6


@dataclass(frozen=True)
class QueryPart:
    """One part of a query item, classified once for every consumer (:func:`similar`
    places it on a cube, :func:`xsky.plot.similarity_map` draws it).

    ``kind`` is ``"points"`` (``x``, ``y``), ``"geometries"`` (``geoms``: Points,
    MultiPoints, Polygons or MultiPolygons only) or ``"vector"`` (``value``, as given).
    ``src`` is the CRS the coordinates are in (``None``: the cube's); ``times`` is the
    item's ``time`` column (one entry per point or geometry) or ``None``.
    """

    kind: str
    what: str
    src: Any = None
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    geoms: np.ndarray | None = None
    times: Any = None
    value: Any = None

    @property
    def n(self) -> int:
        """Points or geometries in this part."""
        if self.x is not None:
            return len(self.x)
        return 0 if self.geoms is None else len(self.geoms)


def _geometry_part(geoms: Any, src: Any, times: Any, what: str) -> QueryPart:
    import shapely

    arr = np.asarray(geoms, dtype=object)
    kinds = shapely.get_type_id(arr)
    for i, (geom, kind) in enumerate(zip(arr, kinds, strict=True)):
        if kind not in (_POINT, _MULTIPOINT, _POLYGON, _MULTIPOLYGON):
            label = what if len(arr) == 1 else f"{what}[{i}]"
            raise ArgumentError(
                f"{label} is a {getattr(geom, 'geom_type', type(geom).__name__)}; a query "
                "geometry must be a Point, MultiPoint, Polygon or MultiPolygon"
            )
    return QueryPart("geometries", what, src=src, geoms=arr, times=times)


def query_parts(item: Any, crs: Any, what: str) -> list[QueryPart]:
    """Classify one query item (anything :func:`similar` takes, except :class:`Examples`)
    into :class:`QueryPart` s; ``crs`` is the ``crs=`` the user gave (or ``None``)."""
    import shapely

    given = None if crs is None else _coerce_crs(crs)
    if _is_point(item):
        return [QueryPart("points", what, src=given, x=np.array([float(item[0])]),
                          y=np.array([float(item[1])]))]
    if isinstance(item, shapely.Geometry):
        return [_geometry_part([item], given, None, what)]
    if is_geo(item):
        tcol = item["time"] if "time" in getattr(item, "columns", ()) else None
        return [_geometry_part(item.geometry, geo_crs(item, crs, what), tcol, what)]
    if isinstance(item, pd.DataFrame):
        tcol = item["time"] if "time" in item.columns else None
        cols = {str(c).lower() for c in item.columns}
        if "geometry" in cols and not {"x", "y", "lon", "lat"} & cols:
            column = next(c for c in item.columns if str(c).lower() == "geometry")
            return [_geometry_part(item[column], given, tcol, what)]
        x, y, src = frame_xy(item, crs, what)
        return [QueryPart("points", what, src=src, x=x, y=y, times=tcol)]
    if _is_vector_like(item):
        return [QueryPart("vector", what, value=item)]
    if isinstance(item, list) and item and all(_is_point(p) for p in item):
        pts = np.asarray(item, np.float64)
        return [QueryPart("points", what, src=given, x=pts[:, 0], y=pts[:, 1])]
    if isinstance(item, list | tuple):
        return [part for i, sub in enumerate(item)
                for part in query_parts(sub, crs, f"{what}[{i}]")]
    raise ArgumentError(
        f"cannot use a {type(item).__name__} as {what}; pass a vector (numpy array), "
        "a point (x, y), a list of points, a shapely Point/Polygon, a DataFrame with "
        "lon/lat or x/y columns, a GeoDataFrame, or xsky.Examples(positive=..., "
        "negative=...)"
    )


# --------------------------------------------------------------------------------------
# Resolving a query to example pixels
# --------------------------------------------------------------------------------------


@dataclass
class _Side:
    """Example pixels of one side: ``(t, iy, ix)`` per pixel, direct vectors, flags."""

    t: list[np.ndarray] = field(default_factory=list)
    iy: list[np.ndarray] = field(default_factory=list)
    ix: list[np.ndarray] = field(default_factory=list)
    required: list[np.ndarray] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    n_points: int = 0
    n_polygon_pixels: int = 0

    def add_pixels(self, t: np.ndarray, iy: np.ndarray, ix: np.ndarray, required: bool,
                   label: str) -> None:
        self.t.append(np.asarray(t, np.int64))
        self.iy.append(np.asarray(iy, np.int64))
        self.ix.append(np.asarray(ix, np.int64))
        self.required.append(np.full(len(iy), required))
        self.labels.extend([label] * len(iy))


def _is_vector_like(value: Any) -> bool:
    if isinstance(value, np.ndarray | xr.DataArray):
        return True
    return isinstance(value, list) and bool(value) and all(
        isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
        for v in value)


def _vector_rows(value: Any, n_features: int, what: str) -> np.ndarray:
    if isinstance(value, xr.DataArray):
        if value.chunks is not None:
            raise ArgumentError(f"{what} is a lazy (dask) DataArray; load it first with "
                                ".values or .compute()")
        value = value.values
    v = np.asarray(value)
    if v.dtype.kind not in "iuf":
        raise ArgumentError(f"{what} must be numbers, got dtype {v.dtype}")
    v = np.atleast_2d(v.astype(np.float64))
    if v.ndim != 2 or v.shape[1] != n_features:
        hint = ("; to query a point, pass a tuple (x, y)" if v.shape[-1] == 2 else "")
        raise DimensionError(
            f"{what} has shape {np.shape(value)} but the cube has {n_features} features: a "
            f"query vector must have length {n_features} (or rows of {n_features}){hint}"
        )
    return v


class _Resolver:
    """Turns query items into example pixels of a cube."""

    def __init__(self, cube: EmbeddingCube, crs: Any, time: Any) -> None:
        self.cube = cube
        self.crs = crs
        self.t_default: int | None = None
        if time is not None:
            self.t_default = int(time_index(cube, [time], "time=")[0])

    def _times(self, n: int, column: Any, what: str) -> np.ndarray:
        if column is not None:
            return time_index(self.cube, column, what)
        if self.cube.has_time:
            if self.t_default is None:
                times = self.cube.times
                assert times is not None
                raise ArgumentError(
                    f"the cube has a time axis ({len(times)} dates), so {what} must say which "
                    f"date to read the embedding at: pass time=... (e.g. time="
                    f"'{times[0].date()}') or give a 'time' column"
                )
            return np.full(n, self.t_default, np.int64)
        return np.zeros(n, np.int64)

    def _points(self, side: _Side, x: np.ndarray, y: np.ndarray, src: Any, t: np.ndarray,
                what: str) -> None:
        fy, fx = place(self.cube, x, y, src, what)
        g = self.cube.grid
        iy = np.clip(np.floor(fy + 0.5), 0, g.ny - 1).astype(np.int64)
        ix = np.clip(np.floor(fx + 0.5), 0, g.nx - 1).astype(np.int64)
        side.add_pixels(t, iy, ix, True, what)
        side.n_points += len(iy)

    def _polygon(self, side: _Side, geom: Any, src: Any, t: int, what: str) -> None:
        import shapely
        from shapely.ops import transform as shp_transform

        if src is not None and src != self.cube.crs:
            from pyproj import Transformer

            tr = Transformer.from_crs(src, self.cube.crs, always_xy=True)
            geom = shp_transform(tr.transform, geom)
        g = self.cube.grid
        minx, miny, maxx, maxy = geom.bounds
        ylo, yhi = sorted(((miny - g.y0) / g.dy, (maxy - g.y0) / g.dy))
        xlo, xhi = sorted(((minx - g.x0) / g.dx, (maxx - g.x0) / g.dx))
        y0, y1 = max(int(np.ceil(ylo)), 0), min(int(np.floor(yhi)), g.ny - 1)
        x0, x1 = max(int(np.ceil(xlo)), 0), min(int(np.floor(xhi)), g.nx - 1)
        iy = ix = np.empty(0, np.int64)
        if y0 <= y1 and x0 <= x1:
            yy, xx = np.meshgrid(np.arange(y0, y1 + 1), np.arange(x0, x1 + 1), indexing="ij")
            cy = g.y0 + yy * g.dy
            cx = g.x0 + xx * g.dx
            inside = shapely.contains_xy(geom, cx, cy) | shapely.intersects_xy(
                geom.boundary, cx, cy)
            iy, ix = yy[inside].astype(np.int64), xx[inside].astype(np.int64)
        if iy.size == 0:
            bounds = tuple(round(float(b), 6) for b in geom.bounds)
            hint = "; if the polygon is in lon/lat, pass crs='EPSG:4326'" if src is None else ""
            raise DataError(
                f"{what} covers no pixel centre of the cube (bounds {bounds} in the cube's "
                f"CRS); the cube spans {self.cube.extent()}{hint}"
            )
        side.add_pixels(np.full(iy.size, t, np.int64), iy, ix, False, what)
        side.n_polygon_pixels += iy.size

    def _geometries(self, side: _Side, geoms: np.ndarray, src: Any, t: np.ndarray,
                    what: str) -> None:
        import shapely

        kinds = shapely.get_type_id(geoms)
        for i, (geom, kind) in enumerate(zip(geoms, kinds, strict=True)):
            label = what if len(geoms) == 1 else f"{what}[{i}]"
            if kind == _POINT:
                self._points(side, np.array([geom.x]), np.array([geom.y]), src, t[i:i + 1],
                             label)
            elif kind == _MULTIPOINT:
                parts = shapely.get_parts(geom)
                self._points(side, shapely.get_x(parts), shapely.get_y(parts), src,
                             np.full(len(parts), t[i]), label)
            else:  # Polygon, MultiPolygon (query_parts refuses other kinds)
                self._polygon(side, geom, src, int(t[i]), label)

    def add(self, side: _Side, item: Any, what: str) -> None:
        for part in query_parts(item, self.crs, what):
            if part.kind == "vector":
                side.vectors.append(_vector_rows(part.value, self.cube.n_features, part.what))
                continue
            t = self._times(part.n, part.times, part.what)
            if part.kind == "points":
                assert part.x is not None and part.y is not None
                self._points(side, part.x, part.y, part.src, t, part.what)
            else:
                assert part.geoms is not None
                self._geometries(side, part.geoms, part.src, t, part.what)


def _coerce_crs(crs: Any) -> Any:
    from .sampling import _crs_of

    return _crs_of(crs)


def _gather_side(cube: EmbeddingCube, side: _Side) -> tuple[Any, np.ndarray, list[str]]:
    """``(n, F)`` values of one side's example pixels (lazy for a dask cube), then the
    required flags and labels; direct vectors come first."""
    nf = cube.n_features
    req: list[np.ndarray] = []
    labels: list[str] = []
    parts: list[Any] = []
    for v in side.vectors:
        parts.append(v)
        req.append(np.ones(len(v), bool))
        labels.extend(["vector"] * len(v))
    if side.iy:
        t = np.concatenate(side.t)
        iy = np.concatenate(side.iy)
        ix = np.concatenate(side.ix)
        data = cube.emb.data
        index = (t, iy, ix) if cube.has_time else (iy, ix)
        if isinstance(data, np.ndarray):
            parts.append(data[index])
        else:
            parts.append(data.vindex[index])
        req.extend(side.required)
        labels.extend(side.labels)
    if not parts:
        return np.empty((0, nf)), np.empty(0, bool), labels
    lazy = [p for p in parts if not isinstance(p, np.ndarray)]
    if not lazy:
        return np.concatenate([np.asarray(p, np.float64) for p in parts]), \
            np.concatenate(req), labels
    import dask.array as da

    arr = da.concatenate([da.asarray(p).astype(np.float64) for p in parts], axis=0)
    return arr.rechunk((-1, -1)), np.concatenate(req), labels


def resolve_query(cube: EmbeddingCube, query: Any, *, crs: Any = None, time: Any = None
                  ) -> tuple[Any, str]:
    """The unit query vector (numpy, or a lazy one-chunk dask array) and a description."""
    from ..engine.similarity import unit_vector

    nf = cube.n_features
    if isinstance(query, Mapping):
        query = _as_examples(query)
    if not isinstance(query, Examples) and _is_vector_like(query):
        rows = _vector_rows(query, nf, "the query vector")
        if rows.shape[0] != 1:
            query = Examples(positive=(rows,))
        else:
            return unit_vector(rows[0]), "vector"
    examples = query if isinstance(query, Examples) else Examples(positive=(query,))
    if not examples.positive:
        raise ArgumentError("the examples have no positive; add some with "
                            "examples.add(positive=...)")
    resolver = _Resolver(cube, crs, time)
    sides = []
    for name, items in (("positive", examples.positive), ("negative", examples.negative)):
        side = _Side()
        for i, item in enumerate(items):
            label = f"{name}[{i}]" if isinstance(query, Examples) else "the query"
            resolver.add(side, item, label)
        sides.append(side)
    pos, neg = sides
    (pv, preq, plab), (nv, nreq, nlab) = _gather_side(cube, pos), _gather_side(cube, neg)
    fn = partial(_combine_task, positive_required=preq, negative_required=nreq,
                 positive_labels=tuple(plab), negative_labels=tuple(nlab))
    desc = _describe(pos, neg, isinstance(query, Examples))
    if isinstance(pv, np.ndarray) and isinstance(nv, np.ndarray):
        return fn(pv, nv), desc
    import dask.array as da

    pv_d = da.asarray(pv).rechunk((-1, -1))
    nv_d = da.asarray(nv).rechunk((-1, -1))
    q = da.blockwise(fn, "f", pv_d, "nf", nv_d, "mf", dtype=np.float64, concatenate=True,
                     meta=np.empty((0,), np.float64))
    return q, desc


def _combine_task(positive: np.ndarray, negative: np.ndarray, **kwargs: Any) -> np.ndarray:
    from ..engine.similarity import combine_query

    return combine_query(positive, negative, **kwargs)


def _describe(pos: _Side, neg: _Side, examples: bool) -> str:
    def side(s: _Side) -> str:
        parts = []
        if s.n_points:
            parts.append(f"{s.n_points} point(s)")
        if s.n_polygon_pixels:
            parts.append(f"{s.n_polygon_pixels} pixel(s) in polygons")
        if s.vectors:
            parts.append(f"{sum(len(v) for v in s.vectors)} vector(s)")
        return " + ".join(parts) or "none"

    if not examples:
        return f"mean embedding of {side(pos)}"
    if not (neg.iy or neg.vectors):
        return f"mean embedding of the positives: {side(pos)}"
    return f"2 mean(positive) - mean(negative); positive: {side(pos)}; negative: {side(neg)}"


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


def _threshold(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating) \
            or not np.isfinite(value) or not -1.0 <= float(value) <= 1.0:
        raise ArgumentError(f"threshold must be a cosine similarity in [-1, 1], got {value!r}")
    return float(value)


def score_map(cube: EmbeddingCube, q: Any, description: str) -> xr.DataArray:
    """The lazy cosine map of a resolved query, with the cube's coordinates and CRS."""
    from ..engine.similarity import cosine_map

    emb = cube.emb
    arr = emb.data
    if isinstance(arr, np.ndarray):  # in memory: blocks of rows, so threads share the work
        import dask.array as da

        arr = da.from_array(arr, chunks=(max(1, -(-arr.shape[0] // 8)), *arr.shape[1:]))
    data = cosine_map(arr, q)
    dims = tuple(d for d in emb.dims if d != "feature")
    coords = {k: v for k, v in emb.coords.items() if "feature" not in v.dims}
    out = xr.DataArray(data, dims=dims, coords=coords, name="similarity")
    out = write_crs(out, cube.crs)
    out.attrs.update({k: v for k, v in emb.attrs.items() if k != "grid_mapping"})
    out.attrs.update({"long_name": "cosine similarity", "units": "1", "query": description})
    return out


def top_k_frame(cube: EmbeddingCube, scores: np.ndarray, flat: np.ndarray) -> Any:
    """A GeoDataFrame of pixels given by flat indices into ``([time,] y, x)``: ``rank``
    (1 = best) index, ``score``, the pixel-centre ``x``/``y`` in the cube's CRS, ``lon``/
    ``lat``, ``time`` (cubes with a time axis) and point geometries (pixel centres)."""
    from ..geo import lonlat_transformer
    from ..io.geoparquet import require_geopandas

    gpd = require_geopandas("a similarity search's top-k table")
    g = cube.grid
    shape = ((cube.emb.sizes["time"],) if cube.has_time else ()) + (g.ny, g.nx)
    idx = np.unravel_index(np.asarray(flat, np.int64), shape)
    iy, ix = idx[-2], idx[-1]
    yc = np.asarray(cube.emb[g.ydim].values, np.float64)[iy]
    xc = np.asarray(cube.emb[g.xdim].values, np.float64)[ix]
    lon, lat = lonlat_transformer(cube.crs).transform(xc, yc)
    cols: dict[str, Any] = {"score": np.asarray(scores, np.float32)}
    if cube.has_time:
        cols["time"] = np.asarray(cube.emb["time"].values)[idx[0]]
    cols.update({g.xdim: xc, g.ydim: yc, "lon": np.asarray(lon), "lat": np.asarray(lat)})
    index = pd.RangeIndex(1, len(xc) + 1, name="rank")
    return gpd.GeoDataFrame(cols, index=index, geometry=gpd.points_from_xy(xc, yc),
                            crs=cube.crs)


def similar(
    emb: xr.DataArray,
    query: Any,
    *,
    k: int | None = None,
    threshold: float | None = None,
    crs: Any = None,
    time: Any = None,
) -> Any:
    """Cosine similarity of every pixel of an embedding cube with a query.

    Parameters
    ----------
    emb
        An embedding from :func:`xsky.embed`: dims ``(y, x, feature)`` or ``(time, y, x,
        feature)``, a CRS, NaN for invalid pixels; lazy (dask) or in memory.
    query
        What to look for (see the module docstring for every form): a vector of length
        ``F``; a point ``(x, y)`` or points (a list of ``(x, y)``, shapely points, a
        DataFrame with ``lon``/``lat`` or ``x``/``y`` columns, a GeoDataFrame): the mean of
        their embeddings; a shapely polygon (or a GeoDataFrame of polygons): the mean
        embedding of the valid pixels whose centre is inside; or :class:`Examples` /
        ``{"positive": ..., "negative": ...}``: ``2 mean(positive) - mean(negative)``.
        Point pixels must be valid (NaN embeddings are an error when the map is computed);
        invalid pixels inside a polygon are skipped.
    k
        Return the ``k`` most similar pixels as a GeoDataFrame instead of the map (a
        chunk-wise top-k: each block keeps its best ``k``, the lists are merged; one
        compute). Ties are broken by pixel order, so the result does not depend on the
        chunking. Needs geopandas.
    threshold
        Keep only pixels with ``score >= threshold``: without ``k``, the map is NaN
        elsewhere; with ``k``, the table may have fewer than ``k`` rows.
    crs
        The CRS of bare coordinates (tuples, shapely geometries, ``x``/``y`` columns) or of
        a GeoDataFrame without one; default: the cube's. ``lon``/``lat`` columns are
        EPSG:4326.
    time
        On a cube with a time axis, the date at which a location query reads the
        embedding (one of ``emb.time``), unless the query's frame has a ``time`` column.
        The map covers every date.

    Returns
    -------
    xarray.DataArray or geopandas.GeoDataFrame
        Without ``k``: ``similarity``, float32, dims ``([time,] y, x)``, lazy for a dask
        cube (computed for one in memory), the cube's coordinates and CRS, NaN at invalid pixels, ``attrs["query"]``
        describing the query. With ``k``: one row per pixel, best first, indexed by
        ``rank`` (1 = best), columns ``score``, ``time`` (with a time axis), ``x``, ``y``
        (pixel centre, cube CRS), ``lon``, ``lat`` and point geometries in the cube's CRS.

    Raises
    ------
    DimensionError
        A query vector whose length is not the feature count.
    DataError
        Points or polygons outside the cube; query pixels without a valid embedding (when
        computed); ``k`` larger than the number of valid pixels.
    ArgumentError
        A location query on a time cube without a date; a bad ``k`` or ``threshold``.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> from xsky.geo import write_crs
    >>> v = np.array([[[1, 0], [0, 1]], [[1, 1], [-1, 0]]], "float32")
    >>> emb = write_crs(xr.DataArray(v, dims=("y", "x", "feature"),
    ...                              coords={"y": [15.0, 5.0], "x": [5.0, 15.0]}), "EPSG:32633")
    >>> similar(emb, np.array([1.0, 0.0])).values.astype(float).round(3).tolist()
    [[1.0, 0.0], [0.707, -1.0]]
    >>> similar(emb, (15.0, 15.0)).values.astype(float).round(3).tolist()  # pixel (0, 1)
    [[0.0, 1.0], [0.707, 0.0]]
    """
    from ..engine.similarity import top_k

    cube = embedding_cube(emb)
    if k is not None:
        k = _coerce.positive_int(k, "k", "pixels")
    thr = _threshold(threshold)
    if k is not None:
        n_pixels = int(np.prod([cube.emb.sizes[d] for d in cube.emb.dims if d != "feature"]))
        if k > n_pixels:
            raise DataError(f"k={k} is larger than the cube's {n_pixels} pixels; use a "
                            f"smaller k")
    q, desc = resolve_query(cube, query, crs=crs, time=time)
    scores = score_map(cube, q, desc)
    if k is None:
        if isinstance(cube.emb.data, np.ndarray):  # in memory in, in memory out
            scores = scores.compute()
        return scores if thr is None else scores.where(scores >= thr)
    vals, flat, n_valid = top_k(scores.data, k, thr)
    if k > n_valid:
        raise DataError(
            f"k={k} is larger than the {n_valid} pixels with a valid embedding (of "
            f"{scores.size}); use k <= {n_valid}"
        )
    return top_k_frame(cube, vals, flat)
