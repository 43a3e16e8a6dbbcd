"""Geo-context prototypes: region-aware prototypes of embedding cubes, as in SkySense.

SkySense learns, without labels, a set of prototypes of its fused features for every region
of the globe (4,096 regions, 100 prototypes each in the paper), with balanced Sinkhorn-Knopp
assignments and EMA updates. At inference each pixel's feature attends to its region's
prototypes and the result is concatenated to the feature. The released checkpoints do not
contain that bank, so this module re-learns it from any georeferenced embedding cube.

Conventions used throughout:

- An embedding is an ``xr.DataArray`` with dims ``(y, x, feature)`` or
  ``(time, y, x, feature)`` (any one extra leading dim is treated like ``time``), float,
  georeferenced (a ``spatial_ref`` coordinate) on a regular grid. NumPy-backed input is
  wrapped in a one-chunk dask array.
- A pixel is *valid* when all its features are finite and not all zero. Invalid pixels are
  left out of learning and get assignment ``-1`` and similarity ``NaN``.
- Similarity is the cosine similarity of L2-normalised features with L2-normalised
  prototypes (SkySense/SwAV style). Prototypes are stored with unit norm.
- A prototypes ``xr.Dataset`` holds ``prototypes`` with dims ``(region, prototype, feature)``,
  region coordinates ``region`` (int ids) and ``lon_min/lon_max/lat_min/lat_max`` (degrees),
  per-region counts, and provenance attrs. Returned by :func:`prototypes`, it also holds lazy
  maps of the cube it was learned from: ``assignment``, ``similarity`` and ``region_map``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr

from .._interop import require
from .._version import __version__
from ..exceptions import DimensionError, XSkyError, format_choices
from ..geo import get_crs, grid_info, pixel_lonlat, spatial_dims

__all__ = [
    "DEFAULT_SAMPLE",
    "SKYSENSE_GRID",
    "classify",
    "fit_prototypes",
    "geo_context",
    "open_prototypes",
    "prototypes",
    "region_ids",
    "save_prototypes",
    "sinkhorn_knopp",
]

#: The SkySense-like global preset: 64 x 64 lon/lat cells of 5.625 deg lon x 2.8125 deg lat
#: (4,096 regions, each about 625 km x 312 km at the equator). The paper gives the count
#: only; an equal-angle grid is the simplest split with that count.
SKYSENSE_GRID: tuple[float, float] = (360.0 / 64, 180.0 / 64)

#: Default maximum number of sampled pixels per region used to learn prototypes.
DEFAULT_SAMPLE = 4096

_REGION_CHOICES = ("grid", "skysense-4096", "global")
_FAN_IN = 8  # blocks merged per task in the sampling tree reduction
_LABEL_ROW_STEP = 1024  # rows of coordinates converted at once when listing grid cells

_Sparse = Literal["raise", "drop"]


# --------------------------------------------------------------------------------------
# numpy kernels
# --------------------------------------------------------------------------------------


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return m + np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True))


def sinkhorn_knopp(scores: np.ndarray, epsilon: float = 0.05, n_iter: int = 3) -> np.ndarray:
    """Balanced soft assignment of samples to prototypes (Sinkhorn-Knopp, as in SwAV).

    Starting from ``exp(scores / epsilon)``, alternately rescales the columns (prototypes)
    to equal mass and the rows (samples) to equal mass, ``n_iter`` times, in float64. Each
    output row is a probability distribution over prototypes; with more iterations the
    column sums approach ``n / k`` (an equipartition of the samples). It rescales
    ``exp(scores / epsilon - max)`` directly, or works in the log domain when the scores
    span so many multiples of ``epsilon`` that ``exp`` would underflow.

    Parameters
    ----------
    scores
        ``(n, k)`` similarities of ``n`` samples to ``k`` prototypes.
    epsilon
        Entropic regularisation: smaller is harder (closer to one-hot rows).
    n_iter
        Number of column/row normalisation rounds; ``0`` gives a row-wise softmax of
        ``scores / epsilon``.

    Returns
    -------
    numpy.ndarray
        ``(n, k)`` float64 assignment, rows summing to 1.

    Examples
    --------
    >>> q = sinkhorn_knopp(np.array([[1.0, 0.0], [0.9, 0.1]]), epsilon=0.5, n_iter=50)
    >>> np.round(q.sum(axis=0), 3)
    array([1., 1.])
    """
    s = np.asarray(scores, dtype="float64")
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise DimensionError(
            f"sinkhorn_knopp needs a non-empty 2-D (samples, prototypes) score matrix, "
            f"got shape {s.shape}"
        )
    if not np.all(np.isfinite(s)):
        raise XSkyError("sinkhorn_knopp got NaN or inf scores; drop invalid samples first")
    _check_positive("epsilon", epsilon)
    if int(n_iter) != n_iter or n_iter < 0:
        raise XSkyError(f"n_iter must be a non-negative integer, got {n_iter!r}")
    z = s / float(epsilon)
    if z.max() - z.min() < _EXP_RANGE:
        return _sinkhorn_exp(z, int(n_iter))
    return _sinkhorn_log(z, int(n_iter))


_EXP_RANGE = 600.0  # exp(-600) is still a normal float64: no entry of exp(z - max) underflows


def _sinkhorn_exp(z: np.ndarray, n_iter: int) -> np.ndarray:
    """Sinkhorn-Knopp by rescaling ``exp(z - max)`` (fast; for a moderate range of ``z``)."""
    n, k = z.shape
    q = np.exp(z - z.max())
    for _ in range(n_iter):
        q /= q.sum(axis=0, keepdims=True) * k  # each prototype: mass 1/k
        q /= q.sum(axis=1, keepdims=True) * n  # each sample: mass 1/n
    q /= q.sum(axis=1, keepdims=True)  # rows sum to 1 (the softmax when n_iter == 0)
    return q


def _sinkhorn_log(z: np.ndarray, n_iter: int) -> np.ndarray:
    """The same in the log domain, for tiny ``epsilon`` where ``exp`` would underflow."""
    n, k = z.shape
    log_q = z
    for _ in range(n_iter):
        log_q = log_q - _logsumexp(log_q, axis=0) - math.log(k)
        log_q = log_q - _logsumexp(log_q, axis=1) - math.log(n)
    return np.exp(log_q - _logsumexp(log_q, axis=1))


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Seeded greedy k-means++ seeding on unit vectors (squared chord distance ``2 - 2 cos``).

    Each step draws ``2 + log(k)`` candidates with probability proportional to the squared
    distance to the nearest centre and keeps the one that lowers the total most (as
    scikit-learn does); this avoids most of plain k-means++'s bad starts.
    """
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    chosen = [int(rng.integers(n))]
    d2 = np.clip(2.0 - 2.0 * (x @ x[chosen[0]]), 0.0, None)
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:  # all remaining points coincide with a centre: pick any unused row
            free = np.setdiff1d(np.arange(n), chosen)
            idx = int(free[rng.integers(free.size)])
            chosen.append(idx)
            continue
        cand = np.searchsorted(np.cumsum(d2), rng.uniform(size=trials) * total)
        cand = np.minimum(cand, n - 1)
        cand_d2 = np.minimum(d2[None, :], np.clip(2.0 - 2.0 * (x[cand] @ x.T), 0.0, None))
        best = int(np.argmin(cand_d2.sum(axis=1)))
        chosen.append(int(cand[best]))
        d2 = cand_d2[best]
    return x[chosen].copy()


def fit_prototypes(
    samples: np.ndarray,
    k: int,
    *,
    iterations: int = 30,
    epsilon: float = 0.05,
    momentum: float = 0.5,
    sinkhorn_iterations: int = 3,
    seed: int | Sequence[int] = 0,
) -> np.ndarray:
    """Learn ``k`` unit-norm prototypes of ``samples`` (one region), in float64.

    Rows are L2-normalised; prototypes start from a seeded k-means++ draw of the rows.
    Each iteration computes cosine similarities, balanced soft assignments with
    :func:`sinkhorn_knopp`, and moves every prototype to the EMA
    ``momentum * old + (1 - momentum) * assignment-weighted mean``, renormalised.

    Parameters
    ----------
    samples
        ``(n, D)`` features (finite, non-zero rows), ``n >= k``.
    k
        Number of prototypes.
    iterations, epsilon, momentum, sinkhorn_iterations
        Number of update steps, Sinkhorn regularisation, EMA momentum in ``[0, 1)``, and
        Sinkhorn rounds per step.
    seed
        Seed (or seed sequence) of the k-means++ initialisation.

    Returns
    -------
    numpy.ndarray
        ``(k, D)`` float64 prototypes with unit norm.
    """
    x = _normalise_rows(np.asarray(samples, dtype="float64"))
    if x.ndim != 2:
        raise DimensionError(f"samples must be 2-D (n, feature), got shape {x.shape}")
    k = _check_k(k)
    if x.shape[0] < k:
        raise XSkyError(
            f"cannot learn k={k} prototypes from {x.shape[0]} samples; lower k or give more samples"
        )
    if not 0.0 <= momentum < 1.0:
        raise XSkyError(f"momentum must be in [0, 1), got {momentum!r}")
    rng = np.random.default_rng(seed)
    c = _kmeans_pp(x, k, rng)
    for _ in range(int(iterations)):
        q = sinkhorn_knopp(x @ c.T, epsilon, sinkhorn_iterations)
        mass = q.sum(axis=0)
        means = (q.T @ x) / np.where(mass > 0, mass, 1.0)[:, None]
        moved = momentum * c + (1.0 - momentum) * means
        # A prototype that received no mass keeps its place.
        c = _normalise_rows(np.where((mass > 0)[:, None], moved, c))
    return c


# --------------------------------------------------------------------------------------
# argument checks and normalisation (done once, at the boundary)
# --------------------------------------------------------------------------------------


def _check_positive(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise XSkyError(f"{name} must be a positive number, got {value!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise XSkyError(f"{name} must be a positive number, got {value!r}")
    return v


def _check_k(k: Any) -> int:
    if k is None or isinstance(k, bool) or int(k) != k or k < 1:
        raise XSkyError(f"k (prototypes per region) must be a positive integer, got {k!r}")
    return int(k)


@dataclass(frozen=True)
class _Embedding:
    """An embedding cube in canonical order ``([tdim,] y, x, feature)``, dask-backed."""

    da: xr.DataArray
    tdim: str | None
    ydim: str
    xdim: str
    crs_wkt: str

    @property
    def data(self) -> Any:
        """The embedding's dask array."""
        return self.da.data

    @property
    def yv(self) -> np.ndarray:
        return np.asarray(self.da[self.ydim].values, "float64")

    @property
    def xv(self) -> np.ndarray:
        return np.asarray(self.da[self.xdim].values, "float64")


def _coerce_embedding(emb: Any) -> _Embedding:
    if isinstance(emb, xr.Dataset):
        names = list(emb.data_vars)
        raise XSkyError(
            "expected an embedding xr.DataArray, got an xr.Dataset with variables "
            f"{names}; pick one, e.g. ds['embedding']"
        )
    if not isinstance(emb, xr.DataArray):
        raise XSkyError(f"expected an embedding xr.DataArray, got {type(emb).__name__}")
    ydim, xdim = spatial_dims(emb)
    if "feature" not in emb.dims:
        raise DimensionError(
            f"embedding {emb.name!r} has dims {tuple(emb.dims)} but no 'feature' dim; "
            "rename the channel dim, e.g. emb.rename({'band': 'feature'})"
        )
    extra = [d for d in emb.dims if d not in (ydim, xdim, "feature")]
    if len(extra) > 1:
        raise DimensionError(
            f"embedding {emb.name!r} has dims {tuple(emb.dims)}; expected (y, x, feature) or "
            f"(time, y, x, feature), got extra dims {extra}; select or stack them first, "
            f"e.g. emb.isel({extra[0]}=0)"
        )
    if not np.issubdtype(emb.dtype, np.floating):
        raise XSkyError(
            f"embedding {emb.name!r} has dtype {emb.dtype}, expected float; "
            "cast it with emb.astype('float32')"
        )
    if emb.sizes["feature"] < 1:
        raise DimensionError(f"embedding {emb.name!r} has an empty 'feature' dim")
    grid_info(emb)  # regular, monotonic pixel grid
    crs = get_crs(emb)
    tdim = extra[0] if extra else None
    order = [*extra, ydim, xdim, "feature"]
    arr = emb.transpose(*order)
    if arr.chunks is None:
        arr = arr.chunk()  # wrap in-memory data in one dask chunk
    arr = arr.chunk({"feature": -1})
    return _Embedding(arr, None if tdim is None else str(tdim), ydim, xdim, crs.to_wkt())


def _check_aligned(obj: xr.DataArray, emb: _Embedding, what: str) -> None:
    for d in (emb.ydim, emb.xdim):
        if d not in obj.dims:
            raise DimensionError(
                f"{what} has dims {tuple(obj.dims)} but needs {emb.ydim!r} and {emb.xdim!r} "
                "like the embedding"
            )
        if d in obj.coords:
            a = np.asarray(obj[d].values, "float64")
            b = np.asarray(emb.da[d].values, "float64")
            step = abs(b[1] - b[0]) if b.size > 1 else 1.0
            if a.shape != b.shape or not np.allclose(a, b, rtol=0, atol=1e-6 * step):
                raise DimensionError(
                    f"{what} is not aligned with the embedding along {d!r} ({a.size} vs "
                    f"{b.size} pixels, or different coordinates); put it on the embedding "
                    f"grid, e.g. {what}.reindex_like(emb, method='nearest')"
                )
        elif obj.sizes[d] != emb.da.sizes[d]:
            raise DimensionError(
                f"{what} has {obj.sizes[d]} pixels along {d!r}, the embedding "
                f"{emb.da.sizes[d]}; they must be on the same grid"
            )


# --------------------------------------------------------------------------------------
# regions
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Regions:
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


def _coerce_regions(
    regions: Any, cell_size: Any, default: str
) -> tuple[_Regions, xr.DataArray | None]:
    if regions is None:
        regions = default
    if isinstance(regions, xr.DataArray):
        if cell_size is not None:
            raise XSkyError("cell_size applies to regions='grid' only, not to a region label map")
        return _Regions("labels"), regions
    if not isinstance(regions, str) or regions not in _REGION_CHOICES:
        raise XSkyError(
            f"unknown regions {regions!r}; choose one of {format_choices(_REGION_CHOICES)} or "
            "pass an integer region label map (y, x) as an xr.DataArray"
        )
    if regions == "global":
        if cell_size is not None:
            raise XSkyError("cell_size applies to regions='grid' only, not to 'global'")
        return _Regions("global"), None
    if regions == "skysense-4096" or cell_size is None:
        if regions == "skysense-4096" and cell_size is not None:
            raise XSkyError("regions='skysense-4096' has a fixed cell size; drop cell_size")
        return _Regions("grid", *SKYSENSE_GRID, name="skysense-4096"), None
    if np.ndim(cell_size) == 0:
        cell_size = (cell_size, cell_size)
    if len(cell_size) != 2:
        raise XSkyError(f"cell_size must be (dlon, dlat) in degrees, got {cell_size!r}")
    dlon = _check_positive("cell_size dlon", cell_size[0])
    dlat = _check_positive("cell_size dlat", cell_size[1])
    if dlon > 360 or dlat > 180:
        raise XSkyError(
            f"cell_size {cell_size!r} is larger than the globe (360 x 180 degrees); use "
            "regions='global' for a single region"
        )
    return _Regions("grid", dlon, dlat, name="custom"), None


def _label_map(
    regions: _Regions, rmap: xr.DataArray | None, emb: _Embedding, what: str = "regions"
) -> da.Array | None:
    """The region label map as an int64 dask array on the embedding's (y, x) chunks."""
    if rmap is None:
        return None
    _check_aligned(rmap, emb, what)
    extra = [d for d in rmap.dims if d not in (emb.ydim, emb.xdim)]
    if extra:
        raise DimensionError(
            f"the region label map has dims {tuple(rmap.dims)}; it must be 2-D "
            f"({emb.ydim}, {emb.xdim})"
        )
    if not (np.issubdtype(rmap.dtype, np.integer) or np.issubdtype(rmap.dtype, np.floating)):
        raise XSkyError(f"the region label map has dtype {rmap.dtype}, expected integers")
    data = rmap.transpose(emb.ydim, emb.xdim).data
    arr = da.asarray(data)
    if np.issubdtype(arr.dtype, np.floating):
        arr = da.where(da.isfinite(arr), arr, -1)
    arr = arr.astype("int64")
    arr = da.where(arr < 0, -1, arr)  # negative / NaN: no region
    chunks = emb.data.chunks
    t = 1 if emb.tdim else 0
    return arr.rechunk((chunks[t], chunks[t + 1]))


def region_ids(emb: xr.DataArray, *, regions: Any = None, cell_size: Any = None) -> xr.DataArray:
    """Lazy map ``(y, x)`` of the region id of every pixel (``-1``: no region).

    Parameters
    ----------
    emb
        A georeferenced ``DataArray`` with ``y``/``x`` dims (an embedding or any raster).
    regions, cell_size
        As in :func:`prototypes` (default: the ``"skysense-4096"`` grid).

    Returns
    -------
    xarray.DataArray
        ``int64`` region ids; grid ids are ``row * ncols + col`` with row 0 at 90 S and
        col 0 at 180 W, computed from each pixel centre's lon/lat.
    """
    if isinstance(emb, xr.DataArray) and "feature" not in emb.dims:
        emb = emb.expand_dims(feature=1, axis=-1)
    e = _coerce_embedding(emb)
    reg, rmap = _coerce_regions(regions, cell_size, "grid")
    return _region_map_da(e, reg, _label_map(reg, rmap, e))


def _region_map_da(e: _Embedding, reg: _Regions, rmap: da.Array | None) -> xr.DataArray:
    if rmap is None:
        t = 1 if e.tdim else 0
        ch = e.data.chunks
        ys = da.from_array(e.yv, chunks=(ch[t],))
        xs = da.from_array(e.xv, chunks=(ch[t + 1],))
        rmap = da.blockwise(
            _grid_ids_block,
            "yx",
            ys,
            "y",
            xs,
            "x",
            dtype="int64",
            regions=reg,
            crs_wkt=e.crs_wkt,
            meta=np.empty((0, 0), "int64"),
        )
    coords = {c: e.da[c] for c in e.da.coords if set(e.da[c].dims) <= {e.ydim, e.xdim}}
    return xr.DataArray(rmap, dims=(e.ydim, e.xdim), coords=coords, name="region_map")


def _grid_ids_block(ys: np.ndarray, xs: np.ndarray, regions: _Regions, crs_wkt: str) -> np.ndarray:
    return regions.ids(xs, ys, crs_wkt)


# --------------------------------------------------------------------------------------
# sampling: a chunk-independent, stratified bottom-k sample in one streamed pass
# --------------------------------------------------------------------------------------

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _hash(index: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of the global pixel index mixed with the seed (wrapping uint64 maths)."""
    z = np.asarray(index, "uint64") + np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _bottom(r: np.ndarray, h: np.ndarray, g: np.ndarray, sample: int) -> np.ndarray:
    """Indices of the ``sample`` smallest hashes per region, sorted by (region, hash, index)."""
    if r.size == 0:
        return np.zeros(0, "int64")
    order = np.lexsort((g, h, r))
    rs = r[order]
    starts = np.r_[0, np.flatnonzero(np.diff(rs)) + 1]
    sizes = np.diff(np.r_[starts, rs.size])
    rank = np.arange(rs.size) - np.repeat(starts, sizes)
    return order[rank < sample]


def _empty_part(d: int) -> dict[str, np.ndarray]:
    return {
        "r": np.zeros(0, "int64"),
        "h": np.zeros(0, "uint64"),
        "g": np.zeros(0, "uint64"),
        "x": np.zeros((0, d), "float32"),
        "cr": np.zeros(0, "int64"),
        "cn": np.zeros(0, "int64"),
        "er": np.zeros(0, "int64"),
        "ext": np.zeros((0, 4), "float64"),
    }


def _sample_block(
    block: np.ndarray,
    rblock: np.ndarray | None,
    offset: tuple[int, int, int],
    shape: tuple[int, int, int],
    ys: np.ndarray,
    xs: np.ndarray,
    regions: _Regions,
    crs_wkt: str,
    seed: int,
    sample: int,
) -> dict[str, np.ndarray]:
    d = block.shape[-1]
    b = block.reshape((-1, *block.shape[-3:]))  # (T, ny, nx, D)
    rid = regions.ids(xs, ys, crs_wkt) if rblock is None else np.asarray(rblock, "int64")
    part = _empty_part(d)
    if regions.kind == "labels":  # lon/lat extent of each label region seen in this block
        lon, lat = pixel_lonlat(xs, ys, crs_wkt)
        inside = rid >= 0
        er, inv = np.unique(rid[inside], return_inverse=True)
        ext = np.empty((er.size, 4))
        for j, (a, f) in enumerate(
            ((lon, np.minimum), (lon, np.maximum), (lat, np.minimum), (lat, np.maximum))
        ):
            init = np.inf if f is np.minimum else -np.inf
            col = np.full(er.size, init)
            f.at(col, inv, a[inside])
            ext[:, j] = col
        part["er"], part["ext"] = er, ext
    finite = np.isfinite(b).all(axis=-1) & np.any(b != 0, axis=-1)
    valid = finite & (rid >= 0)[None]
    ti, yi, xi = np.nonzero(valid)
    if ti.size == 0:
        return part
    t0, y0, x0 = offset
    _, ny, nx = shape
    g = ((ti + t0).astype("uint64") * np.uint64(ny) + (yi + y0).astype("uint64")) * np.uint64(
        nx
    ) + (xi + x0).astype("uint64")
    h = _hash(g, seed)
    r = rid[yi, xi]
    part["cr"], part["cn"] = np.unique(r, return_counts=True)
    keep = _bottom(r, h, g, sample)
    part.update(
        r=r[keep], h=h[keep], g=g[keep], x=b[ti[keep], yi[keep], xi[keep]].astype("float32")
    )
    return part


def _merge_parts(*parts: dict[str, np.ndarray], sample: int) -> dict[str, np.ndarray]:
    cat = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    keep = _bottom(cat["r"], cat["h"], cat["g"], sample)
    out = {key: cat[key][keep] for key in ("r", "h", "g", "x")}
    cr, inv = np.unique(cat["cr"], return_inverse=True)
    cn = np.zeros(cr.size, "int64")
    np.add.at(cn, inv, cat["cn"])
    out["cr"], out["cn"] = cr, cn
    er, inv = np.unique(cat["er"], return_inverse=True)
    ext = np.empty((er.size, 4))
    for j, f in enumerate((np.minimum, np.maximum, np.minimum, np.maximum)):
        col = np.full(er.size, np.inf if f is np.minimum else -np.inf)
        f.at(col, inv, cat["ext"][:, j])
        ext[:, j] = col
    out["er"], out["ext"] = er, ext
    return out


def _draw_sample(
    e: _Embedding, regions: _Regions, rmap: da.Array | None, seed: int, sample: int
) -> dict[str, np.ndarray]:
    """Compute the per-region sample with one dask compute over the embedding blocks."""
    arr = e.data if e.tdim else e.data[None]
    chunks = arr.chunks
    offs = [np.r_[0, np.cumsum(c)[:-1]] for c in chunks[:3]]
    shape = tuple(int(s) for s in arr.shape[:3])
    blocks = arr.to_delayed()
    rblocks = rmap.to_delayed() if rmap is not None else None
    yv, xv = e.yv, e.xv
    fn = dask.delayed(_sample_block, pure=True)
    parts = []
    for bt in range(len(chunks[0])):
        for by in range(len(chunks[1])):
            ysl = slice(offs[1][by], offs[1][by] + chunks[1][by])
            for bx in range(len(chunks[2])):
                xsl = slice(offs[2][bx], offs[2][bx] + chunks[2][bx])
                rb = None if rblocks is None else rblocks[by, bx]
                parts.append(
                    fn(
                        blocks[bt, by, bx, 0],
                        rb,
                        (int(offs[0][bt]), int(offs[1][by]), int(offs[2][bx])),
                        shape,
                        yv[ysl],
                        xv[xsl],
                        regions,
                        e.crs_wkt,
                        seed,
                        sample,
                    )
                )
    merge = dask.delayed(partial(_merge_parts, sample=sample), pure=True)
    while len(parts) > 1:
        parts = [merge(*parts[i : i + _FAN_IN]) for i in range(0, len(parts), _FAN_IN)]
    if len(parts) == 1:  # a single block still goes through one merge (counts, extents)
        parts = [merge(parts[0])]
    (result,) = dask.compute(parts[0])
    return result


# --------------------------------------------------------------------------------------
# applying prototypes to pixels (lazy, blockwise)
# --------------------------------------------------------------------------------------


def _region_scores(
    block: np.ndarray, ridx: np.ndarray, protos: np.ndarray
) -> tuple[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Cosine similarities of each valid pixel to its region's prototypes.

    Returns the number of pixels ``M`` in the (flattened) block and, per region present,
    ``(pixel positions, (m, k) scores, (k, D) unit prototypes)``. Scores of non-finite
    prototypes (classes absent from a region) are ``-inf``. Only the regions present are
    converted to float64, so a large prototype bank is never copied whole.
    """
    d = block.shape[-1]
    x = block.reshape(-1, d)
    r = np.broadcast_to(ridx, block.shape[:-1]).reshape(-1)
    with np.errstate(invalid="ignore", over="ignore"):
        norm = np.linalg.norm(x.astype("float64"), axis=-1)
    ok = np.isfinite(norm) & (norm > 0) & (r >= 0)
    out = []
    for ri in np.unique(r[ok]):
        pos = np.flatnonzero(ok & (r == ri))
        p = np.asarray(protos[ri], "float64")
        pvalid = np.isfinite(p).all(axis=-1)
        pn = _normalise_rows(np.where(pvalid[:, None], p, 0.0))
        s = (x[pos].astype("float64") / norm[pos, None]) @ pn.T
        s[:, ~pvalid] = -np.inf
        out.append((pos, s, pn))
    return x.shape[0], out


def _region_index(rid: np.ndarray, region_values: np.ndarray) -> np.ndarray:
    """Position of each region id in the prototypes' sorted ``region`` axis (``-1``: none)."""
    order = np.argsort(region_values, kind="stable")
    vals = region_values[order]
    pos = np.clip(np.searchsorted(vals, rid), 0, max(vals.size - 1, 0))
    hit = (vals.size > 0) & (vals[pos] == rid) & (rid >= 0)
    return np.where(hit, order[pos], -1)


def _pixel_regions(rblock, ys, xs, regions, crs_wkt, region_values) -> np.ndarray:
    rid = regions.ids(xs, ys, crs_wkt) if rblock is None else np.asarray(rblock, "int64")
    return _region_index(rid, region_values)


def _classify_block(
    block, ys, xs, protos, labels, rblock=None, *, regions, crs_wkt, region_values
) -> np.ndarray:
    ridx = _pixel_regions(rblock, ys, xs, regions, crs_wkt, region_values)
    m, per_region = _region_scores(block, ridx, protos)
    lab = np.full(m, -1.0)
    sim = np.full(m, np.nan)
    for pos, s, _ in per_region:
        best = np.argmax(s, axis=1)
        top = s[np.arange(pos.size), best]
        fin = np.isfinite(top)  # -inf: the region has no usable prototype
        lab[pos[fin]] = labels[best[fin]]
        sim[pos[fin]] = top[fin]
    return np.stack([lab, sim], axis=-1).reshape((*block.shape[:-1], 2))


def _context_block(
    block, ys, xs, protos, rblock=None, *, regions, crs_wkt, region_values, temperature
) -> np.ndarray:
    ridx = _pixel_regions(rblock, ys, xs, regions, crs_wkt, region_values)
    m, per_region = _region_scores(block, ridx, protos)
    out = np.full((m, block.shape[-1]), np.nan)
    for pos, s, pn in per_region:
        z = s / temperature
        top = z.max(axis=1, keepdims=True)
        if not np.all(np.isfinite(top)):
            continue  # no usable prototype in this region
        w = np.exp(z - top)
        w /= w.sum(axis=1, keepdims=True)
        out[pos] = w @ pn
    return out.reshape(block.shape).astype(block.dtype)


@dataclass(frozen=True)
class _Protos:
    """Prototypes ready to apply: arrays plus how to find a pixel's region."""

    data: da.Array  # (region, prototype, feature), one chunk
    region_values: np.ndarray
    labels: np.ndarray  # value reported for each prototype position
    regions: _Regions
    ds: xr.Dataset


def _coerce_protos(protos: Any) -> _Protos:
    if isinstance(protos, xr.DataArray):
        protos = protos.to_dataset(name="prototypes")
    if not isinstance(protos, xr.Dataset) or "prototypes" not in protos.data_vars:
        raise XSkyError(
            "expected a prototypes xr.Dataset (from xsky.prototypes or open_prototypes) with a "
            f"'prototypes' variable, got {type(protos).__name__}"
        )
    p = protos["prototypes"]
    if p.dims != ("region", "prototype", "feature"):
        raise DimensionError(
            f"'prototypes' has dims {p.dims}, expected ('region', 'prototype', 'feature')"
        )
    kind = protos.attrs.get("regions", "grid")
    if kind == "grid":
        cs = protos.attrs.get("cell_size", SKYSENSE_GRID)
        reg = _Regions("grid", float(cs[0]), float(cs[1]), protos.attrs.get("grid", "custom"))
    elif kind in ("global", "labels"):
        reg = _Regions(kind)
    else:
        raise XSkyError(
            f"prototypes attr regions={kind!r} is unknown; expected 'grid', 'global' or 'labels'"
        )
    data = p.data if isinstance(p.data, da.Array) else da.from_array(np.asarray(p.data))
    data = data.rechunk(-1)
    if "region" in protos.coords:
        region_values = np.asarray(protos["region"].values, "int64")
    else:
        region_values = np.arange(p.sizes["region"], dtype="int64")
    if "prototype" in protos.coords:
        labels = np.asarray(protos["prototype"].values, "float64")
    else:
        labels = np.arange(p.sizes["prototype"], dtype="float64")
    return _Protos(data, region_values, labels, reg, protos)


def _apply_regions(e: _Embedding, pr: _Protos, regions: xr.DataArray | None) -> da.Array | None:
    """The label map to use for label-map prototypes (or None for grid/global)."""
    if pr.regions.kind != "labels":
        if regions is not None:
            raise XSkyError(
                f"these prototypes use regions={pr.regions.kind!r}, computed from each pixel's "
                "lon/lat; do not pass a region label map"
            )
        return None
    if regions is None:
        rm = pr.ds.get("region_map")
        if rm is None:
            raise XSkyError(
                "these prototypes were learned on a region label map; pass the same label map "
                "for this embedding with regions=label_map"
            )
        regions = rm
    return _label_map(pr.regions, regions, e, "regions")


def _check_features(e: _Embedding, pr: _Protos) -> None:
    d_emb = e.da.sizes["feature"]
    d_pro = pr.ds["prototypes"].sizes["feature"]
    if d_emb != d_pro:
        raise DimensionError(
            f"the embedding has {d_emb} features but the prototypes {d_pro}; use prototypes "
            "learned from the same model's embeddings"
        )


def _blockwise_args(e: _Embedding, rmap: da.Array | None) -> tuple[list[Any], str]:
    t = 1 if e.tdim else 0
    ch = e.data.chunks
    ys = da.from_array(e.yv, chunks=(ch[t],))
    xs = da.from_array(e.xv, chunks=(ch[t + 1],))
    idx = ("t" if e.tdim else "") + "yx"
    return [e.data, idx + "f", ys, "y", xs, "x"], idx


def _map_coords(e: _Embedding) -> dict[Hashable, Any]:
    keep = {d for d in e.da.dims if d != "feature"}
    return {c: e.da[c] for c in e.da.coords if set(e.da[c].dims) <= keep}


def classify(
    emb: xr.DataArray, protos: xr.Dataset, *, regions: xr.DataArray | None = None
) -> xr.Dataset:
    """Nearest-prototype map of an embedding cube, lazily.

    Each valid pixel is compared (cosine similarity) with the prototypes of its region and
    takes the best one. For learned prototypes the label is the prototype index within the
    region; for label prototypes (``prototypes(emb, labels=...)``) it is the class value.

    Parameters
    ----------
    emb
        Embedding ``DataArray`` ``([time,] y, x, feature)`` with a CRS.
    protos
        A prototypes ``Dataset`` (:func:`prototypes` or :func:`open_prototypes`).
    regions
        Region label map ``(y, x)`` for this embedding, needed only for prototypes learned on
        a label map (defaults to the one stored with ``protos`` when it is on the same grid).

    Returns
    -------
    xarray.Dataset
        ``label`` (int64, ``-1`` for invalid pixels or pixels whose region has no prototypes)
        and ``similarity`` (float32 cosine similarity, ``NaN`` there), dims ``([time,] y, x)``.
        Nothing is computed.
    """
    e = _coerce_embedding(emb)
    pr = _coerce_protos(protos)
    _check_features(e, pr)
    rmap = _apply_regions(e, pr, regions)
    args, idx = _blockwise_args(e, rmap)
    args += [pr.data, "rpf", pr.labels, "p"]
    if rmap is not None:
        args += [rmap, "yx"]
    out = da.blockwise(
        _classify_block,
        idx + "c",
        *args,
        new_axes={"c": 2},
        dtype="float64",
        concatenate=True,
        meta=np.empty((0,) * (len(idx) + 1), "float64"),
        regions=pr.regions,
        crs_wkt=e.crs_wkt,
        region_values=pr.region_values,
    )
    dims = e.da.dims[:-1]
    coords = _map_coords(e)
    label = xr.DataArray(out[..., 0].astype("int64"), dims=dims, coords=coords)
    sim = xr.DataArray(out[..., 1].astype("float32"), dims=dims, coords=coords)
    label.attrs = {"long_name": "nearest prototype", "missing_value": -1}
    sim.attrs = {"long_name": "cosine similarity to the nearest prototype"}
    return xr.Dataset({"label": label, "similarity": sim})


def geo_context(
    emb: xr.DataArray,
    protos: xr.Dataset,
    *,
    temperature: float = 0.1,
    regions: xr.DataArray | None = None,
) -> xr.DataArray:
    """Concatenate to every pixel's feature its attention over its region's prototypes.

    As SkySense does at inference: for a pixel feature ``f`` in region ``r`` with unit-norm
    prototypes ``P_r`` (k x D), the context is ``softmax(cos(f, P_r) / temperature) @ P_r``
    (a convex combination of unit vectors), and the output is ``[f, context]``, so the
    ``feature`` dim doubles to ``2 D``. Lazy: nothing is computed.

    Pixels that are invalid or whose region has no prototypes get ``NaN`` in the context
    half (the first half is the input, unchanged).

    Parameters
    ----------
    emb
        Embedding ``DataArray`` ``([time,] y, x, feature)`` with a CRS.
    protos
        A prototypes ``Dataset`` learned from embeddings of the same model.
    temperature
        Softmax temperature on cosine similarities (SwAV's 0.1 by default).
    regions
        Region label map ``(y, x)``, only for prototypes learned on a label map.

    Returns
    -------
    xarray.DataArray
        ``([time,] y, x, feature)`` with ``2 D`` features, the input's dtype and coords.
    """
    e = _coerce_embedding(emb)
    pr = _coerce_protos(protos)
    _check_features(e, pr)
    temperature = _check_positive("temperature", temperature)
    rmap = _apply_regions(e, pr, regions)
    args, idx = _blockwise_args(e, rmap)
    args += [pr.data, "rpf"]
    if rmap is not None:
        args += [rmap, "yx"]
    ctx = da.blockwise(
        _context_block,
        idx + "f",
        *args,
        dtype=e.data.dtype,
        concatenate=True,
        meta=np.empty((0,) * (len(idx) + 1), e.data.dtype),
        regions=pr.regions,
        crs_wkt=e.crs_wkt,
        region_values=pr.region_values,
        temperature=temperature,
    )
    data = da.concatenate([e.data, ctx], axis=-1)
    coords = _map_coords(e)
    if "feature" in e.da.coords:
        coords["feature"] = np.arange(data.shape[-1])
    attrs = dict(e.da.attrs)
    attrs.update(
        geo_context="attention over region prototypes, concatenated (features D..2D-1)",
        geo_context_temperature=temperature,
        geo_context_regions=pr.regions.kind,
        geo_context_k=int(pr.ds["prototypes"].sizes["prototype"]),
    )
    return xr.DataArray(
        data, dims=e.da.dims, coords=coords, name=e.da.name or "embedding", attrs=attrs
    )


# --------------------------------------------------------------------------------------
# prototypes(): learned (unsupervised) and label (class-mean) prototypes
# --------------------------------------------------------------------------------------


def _source_attrs(attrs: dict[Hashable, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for src, dst in (
        (("model", "model_name", "xsky_model"), "source_model"),
        (("weights_sha256", "model_sha256", "sha256"), "source_weights_sha256"),
    ):
        for key in src:
            val = attrs.get(key)
            if isinstance(val, str) and val:
                out[dst] = val
                break
    return out


def prototypes(
    emb: xr.DataArray,
    k: int | None = None,
    *,
    labels: xr.DataArray | None = None,
    regions: str | xr.DataArray | None = None,
    cell_size: float | tuple[float, float] | None = None,
    sample: int = DEFAULT_SAMPLE,
    iterations: int = 30,
    epsilon: float = 0.05,
    momentum: float = 0.5,
    sinkhorn_iterations: int = 3,
    seed: int = 0,
    sparse: _Sparse = "raise",
    classes: Sequence[int] | None = None,
) -> xr.Dataset:
    """Learn ``k`` prototypes per geographic region, or class-mean prototypes from labels.

    **Learned prototypes** (``k`` given). Every pixel gets a region from its centre's lon/lat
    (``regions``). A deterministic sample of at most ``sample`` valid pixels per region is
    drawn in one streamed pass over the dask blocks: each pixel's global ``(time, y, x)``
    index is hashed with ``seed`` and each region keeps its ``sample`` smallest hashes
    (a uniform random sample without replacement, stratified by region). The sample does
    not depend on the chunking, and memory stays bounded (never the whole cube): a task
    holds one block plus at most ``sample`` rows per region it sees, and a merge of 8
    partial samples at most ``8 * sample * n_regions * D * 4`` bytes. For each
    region, :func:`fit_prototypes` then runs (float64): k-means++ seeding, then
    ``iterations`` steps of Sinkhorn-Knopp balanced soft assignment on cosine similarities
    and EMA updates of the prototypes. Only regions with sampled pixels get prototypes.

    **Label prototypes** (``labels`` given, ``k`` not). The prototype of a class is the
    normalised mean of the L2-normalised features of its labelled pixels (flox groupby-mean,
    lazy), per region when ``regions`` is given; one ``"global"`` region by default.

    Parameters
    ----------
    emb
        Embedding ``DataArray`` ``([time,] y, x, feature)``, float, with a CRS and regular
        x/y coordinates. NumPy-backed input is wrapped in one dask chunk.
    k
        Prototypes per region (learned prototypes). The paper uses 100.
    labels
        Integer class map ``(y, x)`` or ``(time, y, x)`` on the embedding grid; ``NaN`` or
        negative values mark unlabelled pixels. Labels ``(y, x)`` apply at every time.
    regions
        ``"grid"`` (default for learned prototypes): lon/lat cells of ``cell_size``, or the
        ``"skysense-4096"`` preset (64 x 64 cells of 5.625 deg lon x 2.8125 deg lat, the
        default when ``cell_size`` is None); ``"global"`` (one region, the default with
        ``labels``); or an integer region label map ``(y, x)`` on the embedding grid
        (negative or NaN: no region). With ``labels``, a dask-backed label map is computed
        once to list its region ids.
    cell_size
        ``(dlon, dlat)`` grid cell in degrees (a number for square cells).
    sample
        Maximum number of sampled pixels per region (default 4096).
    iterations, epsilon, momentum, sinkhorn_iterations
        Update steps (30), Sinkhorn regularisation (0.05, as SwAV), EMA momentum (0.5) and
        Sinkhorn rounds per step (3, as SwAV).
    seed
        Seed of the sample and of the initialisation; same seed, same prototypes.
    sparse
        What to do with a region that has pixels but fewer than ``k`` sampled:
        ``"raise"`` (default) raises :class:`~xsky.XSkyError`; ``"drop"`` leaves the region
        out (its pixels get assignment ``-1``).
    classes
        Class values for label prototypes; by default the distinct non-negative values of
        ``labels`` (found eagerly for numpy labels, with one compute of the label map for
        dask labels; give ``classes`` to keep everything lazy).

    Returns
    -------
    xarray.Dataset
        - ``prototypes`` ``(region, prototype, feature)`` float32, unit norm (lazy for label
          prototypes); the ``prototype`` coordinate is ``0..k-1`` or the class values;
        - ``n_samples`` and ``n_pixels`` ``(region,)`` (learned: sampled and valid pixels),
          or ``n_labelled`` ``(region, prototype)`` (labelled pixels per class);
        - coordinates ``region`` (ids) and ``lon_min/lon_max/lat_min/lat_max`` (degrees;
          the cell for grid regions; for label-map regions the extent of their pixel
          centres with learned prototypes, NaN with label prototypes);
        - lazy maps of this cube: ``assignment`` and ``similarity`` (as :func:`classify`'s
          ``label``/``similarity``) with dims ``([time,] y, x)``, and ``region_map`` ``(y, x)``;
        - attrs: ``kind`` (``"learned"``/``"labels"``), the parameters, region definition,
          ``source_model``/``source_weights_sha256`` (from the embedding attrs) and
          ``xsky_version``.

    Notes
    -----
    Sinkhorn-Knopp spreads each region's sample evenly over its ``k`` prototypes while
    learning (as SwAV and SkySense do), which suits many balanced modes; a rare class in a
    region can share a prototype with a common one, so give ``k`` well above the number of
    classes you expect. Maps use the nearest prototype, not the balanced assignment.

    The sample is computed from the embedding (one pass, running the model if the embedding
    is lazy), and the maps compute it again: persist or write the embedding first when the
    model is expensive.

    Raises
    ------
    XSkyError
        On bad parameters (``k > sample``, ``k`` with ``labels``), no valid pixels, a region
        with fewer sampled pixels than ``k`` (``sparse="raise"``).
    CRSError
        When the embedding has no CRS.
    DimensionError
        When dims are missing or the label/region map is not on the embedding grid.

    Examples
    --------
    >>> import xsky
    >>> cube = xsky.tutorial.open_dataset("romania").isel(time=slice(0, 4))
    >>> emb = xsky.embed(cube, "test-tiny")
    >>> protos = xsky.prototypes(emb, k=4)
    >>> dict(protos.prototypes.sizes), protos.assignment.dims
    ({'region': 1, 'prototype': 4, 'feature': 16}, ('time', 'y', 'x'))
    >>> int(protos.region[0]), float(protos.lon_min[0]), float(protos.lat_min[0])
    (3107, 16.875, 45.0)
    """
    e = _coerce_embedding(emb)
    if labels is not None:
        if k is not None:
            raise XSkyError(
                "give either k (learn k prototypes per region) or labels (one prototype per "
                "class), not both"
            )
        return _label_prototypes(e, labels, regions, cell_size, classes)
    if k is None:
        raise XSkyError("give k, the number of prototypes per region (e.g. k=16), or labels=")
    k = _check_k(k)
    if isinstance(sample, bool) or int(sample) != sample or sample < 1:
        raise XSkyError(f"sample must be a positive integer, got {sample!r}")
    sample = int(sample)
    if k > sample:
        raise XSkyError(
            f"k={k} is larger than sample={sample} (the most pixels sampled per region); "
            f"raise sample to at least {k} or lower k"
        )
    for name, val in (("iterations", iterations), ("sinkhorn_iterations", sinkhorn_iterations)):
        if isinstance(val, bool) or int(val) != val or val < 0:
            raise XSkyError(f"{name} must be a non-negative integer, got {val!r}")
    epsilon = _check_positive("epsilon", epsilon)
    if not 0.0 <= float(momentum) < 1.0:
        raise XSkyError(f"momentum must be in [0, 1), got {momentum!r}")
    if sparse not in ("raise", "drop"):
        raise XSkyError(
            f"unknown sparse={sparse!r}; choose one of {format_choices(('raise', 'drop'))}"
        )
    if int(seed) != seed or seed < 0:
        raise XSkyError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    reg, rm = _coerce_regions(regions, cell_size, "grid")
    rmap = _label_map(reg, rm, e)

    smp = _draw_sample(e, reg, rmap, seed, sample)
    if smp["r"].size == 0:
        raise XSkyError(
            f"embedding {e.da.name!r} has no valid pixel (all NaN or zero, or outside every "
            "region); nothing to learn prototypes from"
        )
    ids, starts, counts = np.unique(smp["r"], return_index=True, return_counts=True)
    sparse_ids = ids[counts < k]
    if sparse_ids.size and sparse == "raise":
        detail = ", ".join(
            f"{i}: {c}" for i, c in zip(ids[counts < k], counts[counts < k], strict=True)
        )
        raise XSkyError(
            f"{sparse_ids.size} region(s) have fewer sampled pixels than k={k} "
            f"(region id: pixels = {detail}); lower k, use larger regions (cell_size), or "
            "pass sparse='drop' to leave those regions out"
        )
    keep = counts >= k
    if not keep.any():
        raise XSkyError(
            f"no region has at least k={k} valid pixels (largest: {counts.max()}); lower k"
        )
    protos = np.empty((int(keep.sum()), k, smp["x"].shape[1]), "float32")
    for j, (rid, s, c) in enumerate(zip(ids[keep], starts[keep], counts[keep], strict=True)):
        protos[j] = fit_prototypes(
            smp["x"][s : s + c],
            k,
            iterations=iterations,
            epsilon=epsilon,
            momentum=momentum,
            sinkhorn_iterations=sinkhorn_iterations,
            seed=(seed, int(rid)),
        )
    ids, counts = ids[keep], counts[keep]
    n_pixels = smp["cn"][np.searchsorted(smp["cr"], ids)]
    bounds = reg.bounds(ids)
    if reg.kind == "labels":
        ext = smp["ext"][np.searchsorted(smp["er"], ids)]
        bounds = dict(zip(("lon_min", "lon_max", "lat_min", "lat_max"), ext.T, strict=True))
    attrs: dict[str, Any] = {
        "kind": "learned",
        "k": k,
        "sample": sample,
        "iterations": int(iterations),
        "epsilon": epsilon,
        "momentum": float(momentum),
        "sinkhorn_iterations": int(sinkhorn_iterations),
        "seed": seed,
        "metric": "cosine",
        **reg.attrs(),
        **_source_attrs(e.da.attrs),
        "xsky_version": __version__,
    }
    ds = _protos_dataset(e, protos, ids, np.arange(k), bounds, attrs)
    ds["n_samples"] = ("region", counts.astype("int64"))
    ds["n_pixels"] = ("region", n_pixels.astype("int64"))
    return _attach_maps(ds, e, reg, rmap)


def _protos_dataset(
    e: _Embedding,
    protos: Any,
    ids: np.ndarray,
    proto_values: np.ndarray,
    bounds: dict,
    attrs: dict[str, Any],
) -> xr.Dataset:
    coords: dict[str, Any] = {
        "region": ("region", np.asarray(ids, "int64")),
        "prototype": ("prototype", np.asarray(proto_values)),
        **{name: ("region", np.asarray(v, "float64")) for name, v in bounds.items()},
    }
    if "feature" in e.da.coords:
        coords["feature"] = e.da["feature"].values
    p = xr.DataArray(protos, dims=("region", "prototype", "feature"), coords=coords)
    p.attrs = {"long_name": "prototypes (unit norm)"}
    return xr.Dataset({"prototypes": p}, attrs=attrs)


def _attach_maps(ds: xr.Dataset, e: _Embedding, reg: _Regions, rmap: da.Array | None) -> xr.Dataset:
    ds["region_map"] = _region_map_da(e, reg, rmap)
    cl = classify(e.da, ds)
    ds["assignment"] = cl["label"]
    ds["similarity"] = cl["similarity"]
    return ds


def _label_prototypes(
    e: _Embedding, labels: Any, regions: Any, cell_size: Any, classes: Sequence[int] | None
) -> xr.Dataset:
    flox_xr = require("flox.xarray", "label prototypes (groupby-mean)")
    if not isinstance(labels, xr.DataArray):
        raise XSkyError(
            f"labels must be an xr.DataArray (y, x) of integer classes, got {type(labels).__name__}"
        )
    _check_aligned(labels, e, "labels")
    allowed = {e.ydim, e.xdim} | ({e.tdim} if e.tdim else set())
    if not set(labels.dims) <= allowed:
        raise DimensionError(
            f"labels have dims {tuple(labels.dims)}; expected a subset of {tuple(e.da.dims[:-1])}"
        )
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)):
        raise XSkyError(f"labels have dtype {labels.dtype}, expected integer class values")
    lab = labels.astype("float64")
    lab = lab.where(np.isfinite(lab) & (lab >= 0))
    if e.tdim and e.tdim in labels.dims:
        lab = lab.chunk({e.tdim: e.data.chunks[0]})
    if classes is None:
        vals = lab.data
        if isinstance(vals, da.Array):
            vals = vals.compute()
        vals = np.asarray(vals)
        cls = np.unique(vals[np.isfinite(vals)])
    else:
        cls = np.unique(np.asarray(classes, "float64"))
    if cls.size == 0:
        raise XSkyError("labels contain no labelled pixel (all NaN or negative)")
    if not np.all(cls == np.round(cls)):
        raise XSkyError(f"labels must be integer class values, got {cls[cls != np.round(cls)][:5]}")
    reg, rm = _coerce_regions(regions, cell_size, "global")
    rmap = _label_map(reg, rm, e)
    region_map = _region_map_da(e, reg, rmap)
    rids = _regions_present(e, reg, rmap, rm)
    if rids.size == 0:
        raise XSkyError("no pixel of the embedding lies in any region of the region label map")

    x = e.da.astype("float64")
    norm = np.sqrt((x**2).sum("feature"))
    ok = np.isfinite(norm) & (norm > 0)
    xn = (x / norm).where(ok)
    dims = [d for d in e.da.dims if d != "feature"]
    by = (region_map.astype("float64").rename("region"), lab.rename("prototype"))
    kw = {"expected_groups": (rids.astype("float64"), cls), "dim": dims, "fill_value": np.nan}
    mean = flox_xr.xarray_reduce(xn, *by, func="nanmean", **kw)
    hits = (ok & lab.notnull()).astype("int64")
    count = flox_xr.xarray_reduce(
        hits, *by, func="sum", expected_groups=kw["expected_groups"], dim=dims, fill_value=0
    )
    mean = mean.transpose("region", "prototype", "feature")
    pn = np.sqrt((mean**2).sum("feature"))
    protos = (mean / pn.where(pn > 0)).astype("float32").data
    count = count.transpose("region", "prototype").data.astype("int64")

    ids = rids.astype("int64")
    bounds = reg.bounds(ids)
    attrs: dict[str, Any] = {
        "kind": "labels",
        "n_classes": int(cls.size),
        "metric": "cosine",
        **reg.attrs(),
        **_source_attrs(e.da.attrs),
        "xsky_version": __version__,
    }
    ds = _protos_dataset(e, protos, ids, cls.astype("int64"), bounds, attrs)
    ds["n_labelled"] = (("region", "prototype"), count)
    ds["n_labelled"].attrs = {"long_name": "labelled valid pixels per class"}
    return _attach_maps(ds, e, reg, rmap)


def _regions_present(
    e: _Embedding, reg: _Regions, rmap: da.Array | None, user_map: xr.DataArray | None
) -> np.ndarray:
    """Region ids covered by the embedding's pixels.

    Grid cells come from the coordinates only; a numpy label map is read directly and a
    dask label map is computed once (documented in :func:`prototypes`).
    """
    if reg.kind == "global":
        return np.zeros(1, "int64")
    if rmap is not None:
        if user_map is not None and not isinstance(user_map.data, da.Array):
            raw = np.asarray(user_map.values, "float64")
            vals = np.unique(raw[np.isfinite(raw) & (raw >= 0)]).astype("int64")
        else:
            (vals,) = dask.compute(da.unique(rmap))
        vals = np.asarray(vals)
        return vals[vals >= 0]
    yv, xv = e.yv, e.xv
    found: set[int] = set()
    for i in range(0, yv.size, _LABEL_ROW_STEP):
        ids = reg.ids(xv, yv[i : i + _LABEL_ROW_STEP], e.crs_wkt)
        found.update(np.unique(ids[ids >= 0]).tolist())
    return np.array(sorted(found), "int64")


# --------------------------------------------------------------------------------------
# persistence
# --------------------------------------------------------------------------------------

_SAVED_VARS = ("prototypes", "n_samples", "n_pixels", "n_labelled")
_REGION_COORDS = ("region", "prototype", "feature", "lon_min", "lon_max", "lat_min", "lat_max")
_FORMATS = {".zarr": "zarr", ".nc": "netcdf", ".nc4": "netcdf", ".h5": "netcdf"}


def _core(protos: xr.Dataset) -> xr.Dataset:
    pr = _coerce_protos(protos)
    ds = pr.ds
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
            raise XSkyError(f"unknown format {format!r}; choose one of 'netcdf', 'zarr'")
        return format
    suffix = Path(str(path).rstrip("/")).suffix.lower()
    if suffix not in _FORMATS:
        raise XSkyError(
            f"cannot tell the format of {str(path)!r} from its suffix {suffix!r}; use one of "
            f"{format_choices(_FORMATS)} or pass format='zarr'/'netcdf'"
        )
    return _FORMATS[suffix]


def save_prototypes(protos: xr.Dataset, path: str | Path, *, format: str | None = None) -> None:
    """Write prototypes with their region metadata and provenance to Zarr or NetCDF.

    Saved: ``prototypes``, the per-region counts, the region coordinates and all attrs
    (parameters, region definition, source model and weights digest, xsky version). The
    maps of the source cube (``assignment``, ``similarity``, ``region_map``) are views of
    that cube and are not saved; lazy label prototypes are computed here. An existing file
    is overwritten.

    Parameters
    ----------
    protos
        A prototypes ``Dataset``.
    path
        Target path; ``.zarr`` writes a Zarr store, ``.nc`` a NetCDF-4 file.
    format
        ``"zarr"`` or ``"netcdf"`` to override the suffix.
    """
    fmt = _format_of(path, format)
    core = _core(protos).compute()
    if fmt == "zarr":
        core.to_zarr(str(path), mode="w", consolidated=False)
    else:
        core.to_netcdf(str(path))


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
        raise XSkyError(f"no prototypes file at {str(path)!r}")
    if fmt == "zarr":
        ds = xr.open_zarr(str(path), consolidated=False)
    else:
        ds = xr.open_dataset(str(path))
    with ds:
        ds = ds.load()
    if "prototypes" not in ds.data_vars:
        raise XSkyError(
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
    ds.attrs = attrs
    for v in ds.variables.values():
        v.encoding = {}
    _coerce_protos(ds)  # validate dims and region attrs
    return ds
