"""Array core of geo-context prototypes: Sinkhorn-Knopp, prototype fitting, sampling, scoring.

NumPy kernels and the dask graphs built from them; xarray-free (the xarray API is
:mod:`xsky.api.geo_prototypes`). Arrays and small frozen dataclasses in, arrays out:

- :func:`sinkhorn_knopp` and :func:`fit_prototypes` (k-means++ seeding with restarts,
  balanced soft assignments, EMA updates) learn one region's prototypes from a sample, in
  float64; :func:`fit_regions` fits every region, centred on its sample mean by default;
- :func:`draw_sample` draws a chunk- and orientation-independent, stratified bottom-k sample
  of valid pixels per region in one streamed pass over the dask blocks (the one compute of
  learning);
- :func:`classify_arrays` and :func:`context_array` build lazy blockwise graphs that score
  every pixel against its region's prototypes (cosine similarity of unit vectors, after
  subtracting the region's centre when the bank has one).

A pixel is *valid* when all its features are finite and not all zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import dask.array as da
import numpy as np
from dask.base import compute
from dask.delayed import delayed

from .._coerce import positive_float, positive_int
from ..exceptions import ArgumentError, DataError, DimensionError
from ..geo import pixel_lonlat
from .regions import Regions, grid_region_map, pixel_region_index

__all__ = [
    "Cube",
    "PrototypeBank",
    "classify_arrays",
    "context_array",
    "draw_sample",
    "fit_prototypes",
    "fit_regions",
    "region_counts",
    "sample_extents",
    "sinkhorn_knopp",
]

_FAN_IN = 8  # blocks merged per task in the sampling tree reduction


@dataclass(frozen=True, eq=False)
class Cube:
    """An embedding cube as arrays: dask ``data`` ``([time,] y, x, feature)`` (one feature
    chunk), pixel-centre coordinates ``ys``/``xs`` in the CRS ``crs_wkt``."""

    data: da.Array
    ys: np.ndarray
    xs: np.ndarray
    crs_wkt: str
    has_time: bool

    @property
    def yx_chunks(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Chunks of the ``(y, x)`` axes."""
        t = 1 if self.has_time else 0
        return self.data.chunks[t], self.data.chunks[t + 1]

    def region_map(self, regions: Regions, rmap: da.Array | None = None) -> da.Array:
        """Lazy ``(y, x)`` region ids: ``rmap`` when given, else from pixel lon/lat."""
        if rmap is not None:
            return rmap
        return grid_region_map(self.ys, self.xs, self.yx_chunks, regions, self.crs_wkt)


@dataclass(frozen=True, eq=False)
class PrototypeBank:
    """Prototypes ready to apply: arrays plus how to find a pixel's region."""

    data: da.Array  # (region, prototype, feature), one chunk
    region_values: np.ndarray  # region id of each position of the region axis
    labels: np.ndarray  # value reported for each prototype position
    regions: Regions
    #: (region, feature) centre subtracted from a pixel's feature before scoring, one chunk;
    #: ``None``: no centring (plain cosine, as SkySense and files of earlier versions)
    centres: da.Array | None = None

    def centre_array(self) -> da.Array:
        """The centres, zeros when the bank has none (``x - 0`` is exactly ``x``)."""
        if self.centres is not None:
            return self.centres
        r, _, d = self.data.shape
        zeros: da.Array = da.zeros((r, d), dtype=self.data.dtype, chunks=-1)
        return zeros


# --------------------------------------------------------------------------------------
# numpy kernels
# --------------------------------------------------------------------------------------


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    out: np.ndarray = m + np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True))
    return out


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
        raise DataError("sinkhorn_knopp got NaN or inf scores; drop invalid samples first")
    positive_float(epsilon, "epsilon")
    if int(n_iter) != n_iter or n_iter < 0:
        raise ArgumentError(f"n_iter must be a non-negative integer, got {n_iter!r}")
    z = s / float(epsilon)
    if z.max() - z.min() < _EXP_RANGE:
        return _sinkhorn_exp(z, int(n_iter))
    return _sinkhorn_log(z, int(n_iter))


_EXP_RANGE = 600.0  # exp(-600) is still a normal float64: no entry of exp(z - max) underflows


def _sinkhorn_exp(z: np.ndarray, n_iter: int) -> np.ndarray:
    """Sinkhorn-Knopp by rescaling ``exp(z - max)`` (fast; for a moderate range of ``z``)."""
    n, k = z.shape
    q: np.ndarray = np.exp(z - z.max())
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
    q: np.ndarray = np.exp(log_q - _logsumexp(log_q, axis=1))
    return q


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
    restarts: int = 1,
) -> np.ndarray:
    """Learn ``k`` unit-norm prototypes of ``samples`` (one region), in float64.

    Rows are L2-normalised; prototypes start from a seeded k-means++ draw of the rows.
    Each iteration computes cosine similarities, balanced soft assignments with
    :func:`sinkhorn_knopp`, and moves every prototype to the EMA
    ``momentum * old + (1 - momentum) * assignment-weighted mean``, renormalised.
    With ``restarts > 1`` this runs from that many k-means++ draws (one random stream) and
    keeps the result with the highest spherical k-means objective (mean cosine similarity
    of each row to its nearest prototype; the first on ties).

    The features are used as given: cosine similarities of features sharing a large common
    component are all near 1 and the clusters merge. Centre them first (subtract the mean),
    as :func:`fit_regions` does by default.

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
    restarts
        Number of k-means++ initialisations (default 1); the best by objective is kept.

    Returns
    -------
    numpy.ndarray
        ``(k, D)`` float64 prototypes with unit norm.
    """
    x = _normalise_rows(np.asarray(samples, dtype="float64"))
    if x.ndim != 2:
        raise DimensionError(f"samples must be 2-D (n, feature), got shape {x.shape}")
    k = positive_int(k, "k (prototypes per region)")
    if x.shape[0] < k:
        raise ArgumentError(
            f"cannot learn k={k} prototypes from {x.shape[0]} samples; lower k or give more samples"
        )
    if not 0.0 <= momentum < 1.0:
        raise ArgumentError(f"momentum must be in [0, 1), got {momentum!r}")
    restarts = positive_int(restarts, "restarts")
    rng = np.random.default_rng(seed)
    best, best_obj = None, -np.inf
    for _ in range(restarts):
        c = _kmeans_pp(x, k, rng)
        for _ in range(int(iterations)):
            q = sinkhorn_knopp(x @ c.T, epsilon, sinkhorn_iterations)
            mass = q.sum(axis=0)
            means = (q.T @ x) / np.where(mass > 0, mass, 1.0)[:, None]
            moved = momentum * c + (1.0 - momentum) * means
            # A prototype that received no mass keeps its place.
            c = _normalise_rows(np.where((mass > 0)[:, None], moved, c))
        if restarts == 1:
            return c
        obj = float((x @ c.T).max(axis=1).mean())
        if obj > best_obj:
            best, best_obj = c, obj
    assert best is not None
    return best


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
    keep: np.ndarray = order[rank < sample]
    return keep


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
    index: tuple[int, np.ndarray, np.ndarray],
    shape: tuple[int, int, int],
    ys: np.ndarray,
    xs: np.ndarray,
    regions: Regions,
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
    # canonical (north-up, west-to-east) global index: the same pixel gets the same key
    # whatever the storage order of y and x
    t0, yc, xc = index
    _, ny, nx = shape
    g = ((ti + t0).astype("uint64") * np.uint64(ny) + yc[yi].astype("uint64")) * np.uint64(
        nx
    ) + xc[xi].astype("uint64")
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


def _canonical_index(v: np.ndarray, *, descending: bool) -> np.ndarray:
    """Position of each coordinate in the ascending (or descending) order of ``v``."""
    n = v.size
    ascending = n < 2 or bool(v[-1] > v[0])
    idx = np.arange(n, dtype="int64")
    return idx[::-1].copy() if ascending == descending else idx


def draw_sample(
    cube: Cube, regions: Regions, rmap: da.Array | None, seed: int, sample: int
) -> dict[str, np.ndarray]:
    """Compute the per-region sample with one dask compute over the embedding blocks.

    Each valid pixel's global ``(time, y, x)`` index is hashed with ``seed`` and each region
    keeps its ``sample`` smallest hashes, so the sample does not depend on the chunking. The
    index is taken in the canonical orientation (``y`` descending, ``x`` ascending, i.e.
    row 0 is the northern/top row of a north-up grid) so that a cube stored south-up or
    east-to-west samples the same pixels, in the same order, as its north-up copy.
    ``rmap`` is a ``(y, x)`` label map on the cube's chunks (``None``: regions from lon/lat).

    Returns a dict of arrays: the sample sorted by region (``r`` region ids, ``h`` hashes,
    ``g`` canonical global indices, ``x`` float32 features), valid pixels per region
    (``cr``, ``cn``)
    and, for label-map regions, the lon/lat extent of each region (``er``, ``ext``:
    ``lon_min, lon_max, lat_min, lat_max``).
    """
    arr = cube.data if cube.has_time else cube.data[None]
    chunks = arr.chunks
    offs = [np.r_[0, np.cumsum(c)[:-1]] for c in chunks[:3]]
    shape = tuple(int(s) for s in arr.shape[:3])
    blocks = arr.to_delayed()
    rblocks = rmap.to_delayed() if rmap is not None else None
    yv, xv = cube.ys, cube.xs
    ycan = _canonical_index(yv, descending=True)
    xcan = _canonical_index(xv, descending=False)
    fn = delayed(_sample_block, pure=True)
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
                        (int(offs[0][bt]), ycan[ysl], xcan[xsl]),
                        shape,
                        yv[ysl],
                        xv[xsl],
                        regions,
                        cube.crs_wkt,
                        seed,
                        sample,
                    )
                )
    merge = delayed(partial(_merge_parts, sample=sample), pure=True)
    while len(parts) > 1:
        parts = [merge(*parts[i : i + _FAN_IN]) for i in range(0, len(parts), _FAN_IN)]
    if len(parts) == 1:  # a single block still goes through one merge (counts, extents)
        parts = [merge(parts[0])]
    result: dict[str, np.ndarray]
    (result,) = compute(parts[0])
    return result


def fit_regions(
    smp: dict[str, np.ndarray],
    k: int,
    *,
    iterations: int,
    epsilon: float,
    momentum: float,
    sinkhorn_iterations: int,
    seed: int,
    min_samples: int | None = None,
    centre: bool = False,
    restarts: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Fit :func:`fit_prototypes` on the sample of every region with ``>= min_samples`` rows.

    ``smp`` is a :func:`draw_sample` result; ``min_samples`` defaults to ``k``. Region ``rid``
    is seeded with ``(seed, rid)``. With ``centre``, each region's sample mean (rounded to
    float32, the precision it is stored and applied in) is subtracted from its rows before
    fitting, so a component shared by all the region's features (real embeddings have a
    large one) does not crowd every cosine similarity near 1.

    Returns ``(ids, n_samples, n_pixels, prototypes, centres)``: the fitted region ids
    (sorted), their sampled and valid pixel counts, float32 prototypes
    ``(region, k, feature)`` and float32 centres ``(region, feature)`` (``None`` without
    ``centre``).
    """
    ids, starts, counts = region_counts(smp)
    keep = counts >= (k if min_samples is None else min_samples)
    d = smp["x"].shape[1]
    protos = np.empty((int(keep.sum()), k, d), "float32")
    centres = np.zeros((int(keep.sum()), d), "float32") if centre else None
    for j, (rid, s, c) in enumerate(zip(ids[keep], starts[keep], counts[keep], strict=True)):
        x = smp["x"][s : s + c].astype("float64")
        if centres is not None:
            centres[j] = x.mean(axis=0)
            x = x - centres[j].astype("float64")
        protos[j] = fit_prototypes(
            x,
            k,
            iterations=iterations,
            epsilon=epsilon,
            momentum=momentum,
            sinkhorn_iterations=sinkhorn_iterations,
            seed=(seed, int(rid)),
            restarts=restarts,
        )
    ids, counts = ids[keep], counts[keep]
    n_pixels = smp["cn"][np.searchsorted(smp["cr"], ids)]
    return ids, counts, n_pixels, protos, centres


def region_counts(smp: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Region ids of a :func:`draw_sample` result, where each starts and its sample size."""
    ids, starts, counts = np.unique(smp["r"], return_index=True, return_counts=True)
    return ids, starts, counts


def sample_extents(smp: dict[str, np.ndarray], ids: np.ndarray) -> dict[str, np.ndarray]:
    """Lon/lat extent (degrees) of the pixel centres of label-map regions ``ids``."""
    ext = smp["ext"][np.searchsorted(smp["er"], ids)]
    return dict(zip(("lon_min", "lon_max", "lat_min", "lat_max"), ext.T, strict=True))


# --------------------------------------------------------------------------------------
# applying prototypes to pixels (lazy, blockwise)
# --------------------------------------------------------------------------------------


def _region_scores(
    block: np.ndarray, ridx: np.ndarray, protos: np.ndarray, centres: np.ndarray
) -> tuple[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Cosine similarities of each valid pixel, minus its region's centre, to the prototypes.

    Returns the number of pixels ``M`` in the (flattened) block and, per region present,
    ``(pixel positions, (m, k) scores, (k, D) unit prototypes)``. Scores of non-finite
    prototypes (classes absent from a region) are ``-inf``. Only the regions present are
    converted to float64, so a large prototype bank is never copied whole. A valid pixel
    equal to its region's centre has no direction: it scores 0 against every prototype.
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
        xr_ = x[pos].astype("float64") - np.asarray(centres[ri], "float64")
        s = _normalise_rows(xr_) @ pn.T
        s[:, ~pvalid] = -np.inf
        out.append((pos, s, pn))
    return x.shape[0], out


def _classify_block(
    block: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
    protos: np.ndarray,
    centres: np.ndarray,
    labels: np.ndarray,
    rblock: np.ndarray | None = None,
    *,
    regions: Regions,
    crs_wkt: str,
    region_values: np.ndarray,
) -> np.ndarray:
    """Block kernel: ``(..., 2)`` nearest-prototype label and cosine similarity."""
    ridx = pixel_region_index(rblock, ys, xs, regions, crs_wkt, region_values)
    m, per_region = _region_scores(block, ridx, protos, centres)
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
    block: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
    protos: np.ndarray,
    centres: np.ndarray,
    rblock: np.ndarray | None = None,
    *,
    regions: Regions,
    crs_wkt: str,
    region_values: np.ndarray,
    temperature: float,
) -> np.ndarray:
    """Block kernel: attention of each pixel over its region's unit prototypes."""
    ridx = pixel_region_index(rblock, ys, xs, regions, crs_wkt, region_values)
    m, per_region = _region_scores(block, ridx, protos, centres)
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


def _blockwise_args(cube: Cube) -> tuple[list[Any], str]:
    ych, xch = cube.yx_chunks
    ys = da.from_array(cube.ys, chunks=(ych,))
    xs = da.from_array(cube.xs, chunks=(xch,))
    idx = ("t" if cube.has_time else "") + "yx"
    return [cube.data, idx + "f", ys, "y", xs, "x"], idx


def classify_arrays(
    cube: Cube, bank: PrototypeBank, rmap: da.Array | None = None
) -> tuple[da.Array, da.Array]:
    """Lazy nearest-prototype ``(label, similarity)`` maps ``([time,] y, x)`` of ``cube``.

    ``label`` (int64) is ``bank.labels`` of the best prototype of the pixel's region,
    ``similarity`` (float32) its cosine similarity (of the pixel minus the region's centre,
    when the bank has centres); ``-1`` and ``NaN`` for invalid pixels and
    pixels whose region has no usable prototype. ``rmap`` is the ``(y, x)`` label map for
    label-map regions. Nothing is computed.
    """
    args, idx = _blockwise_args(cube)
    args += [bank.data, "rpf", bank.centre_array(), "rf", bank.labels, "p"]
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
        regions=bank.regions,
        crs_wkt=cube.crs_wkt,
        region_values=bank.region_values,
    )
    return out[..., 0].astype("int64"), out[..., 1].astype("float32")


def context_array(
    cube: Cube, bank: PrototypeBank, temperature: float, rmap: da.Array | None = None
) -> da.Array:
    """Lazy ``[f, softmax(cos(f - c_r, P_r) / temperature) @ P_r]`` of every pixel (``2 D``
    features); ``c_r`` is the region's centre (zero when the bank has none).

    The context half is ``NaN`` for invalid pixels and pixels whose region has no usable
    prototype; the dtype is the cube's. Nothing is computed.
    """
    args, idx = _blockwise_args(cube)
    args += [bank.data, "rpf", bank.centre_array(), "rf"]
    if rmap is not None:
        args += [rmap, "yx"]
    ctx = da.blockwise(
        _context_block,
        idx + "f",
        *args,
        dtype=cube.data.dtype,
        concatenate=True,
        meta=np.empty((0,) * (len(idx) + 1), cube.data.dtype),
        regions=bank.regions,
        crs_wkt=cube.crs_wkt,
        region_values=bank.region_values,
        temperature=temperature,
    )
    out: da.Array = da.concatenate([cube.data, ctx], axis=-1)
    return out
