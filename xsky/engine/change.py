"""Array cores of change detection: distances, through-time scores, histogram thresholds.

NumPy kernels and the dask graphs built from them; xarray-free (the xarray API is
:mod:`xsky.api.change`). Embeddings are arrays ``(..., F)`` with the feature axis last; an
observation is *valid* when all its features are finite (and, for the cosine distance, not
all zero).

- :func:`pair_distance`: the distance of two embeddings per pixel (``"cosine"``:
  ``1 - cos``, in [0, 2]; ``"euclidean"``), one blockwise pass.
- :func:`series_scores`: per pixel, for each period of a ``(T, ..., F)`` stack, its
  distance to the *leave-one-out medoid* of the baseline periods (the baseline period, other
  than itself, closest in total to the other baseline periods) or to the previous valid
  period, and the robust z-score of that distance against the baseline periods' own scores
  (median / MAD), so that the natural spread of each pixel sets its scale.
- :func:`threshold_value`: a lazy 0-d threshold (Otsu, a quantile) from fixed-size
  histograms of the whole array: per-block integer counts summed, bin edges from exact
  global extremes, so the result does not depend on the chunking.

Every function computes per pixel with the same arithmetic whatever block the pixel falls
in: results are independent of the spatial chunking, and time and feature axes are one
chunk inside the kernels.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
from dask.delayed import delayed

__all__ = [
    "AGAINST",
    "METHODS",
    "histogram",
    "otsu",
    "pair_distance",
    "series_scores",
    "threshold_value",
]

#: distances between embeddings
METHODS = ("cosine", "euclidean")
#: what each period is compared with in :func:`series_scores`
AGAINST = ("baseline", "previous")

_MAD_TO_SIGMA = 1.482602218505602  # 1 / Phi^-1(3/4): MAD of a normal sample -> its sigma
_PAIR_BUDGET = 1 << 21  # (pixel, period, period) entries per pass of the series kernel:
# its few (n, T, T) float64 buffers stay near 16 MiB each, whatever T
_FINE_BINS = 4096  # bins of the first pass of a two-pass histogram estimate


# -- distances ---------------------------------------------------------------------------


def _valid_vectors(x: np.ndarray, method: str) -> np.ndarray:
    ok: np.ndarray = np.isfinite(x).all(axis=-1)
    if method == "cosine":
        ok &= (np.where(np.isfinite(x), x, 0) != 0).any(axis=-1)
    return ok


def _pair_block(a: np.ndarray, b: np.ndarray, method: str) -> np.ndarray:
    """``(..., F)`` x 2 → ``(...)`` float32 distances, NaN where either side is invalid."""
    ok = _valid_vectors(a, method) & _valid_vectors(b, method)
    a64 = np.where(ok[..., None], a, 0).astype(np.float64)
    b64 = np.where(ok[..., None], b, 0).astype(np.float64)
    if method == "cosine":
        na = np.sqrt((a64 * a64).sum(-1))
        nb = np.sqrt((b64 * b64).sum(-1))
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = (a64 * b64).sum(-1) / (na * nb)
        d = 1.0 - np.clip(cos, -1.0, 1.0)
    else:
        d = np.sqrt(((a64 - b64) ** 2).sum(-1))
    return np.where(ok, d, np.nan).astype(np.float32)


def pair_distance(a: Any, b: Any, method: str = "cosine") -> Any:
    """The distance between two embeddings ``(..., F)`` per pixel, ``(...)`` float32.

    Numpy in, numpy out; dask in, a lazy dask array (the feature axis joined into one chunk,
    the other chunks kept).
    """
    if not isinstance(a, da.Array) and not isinstance(b, da.Array):
        return _pair_block(np.asarray(a), np.asarray(b), method)
    a = da.asarray(a)
    b = da.asarray(b)
    nd = a.ndim
    a = a.rechunk({nd - 1: -1})
    b = b.rechunk(a.chunks)
    return da.map_blocks(_pair_block, a, b, method=method, drop_axis=nd - 1,
                         dtype=np.float32, meta=np.empty((0,) * (nd - 1), np.float32),
                         token=f"change-distance-{method}")


def _distance_matrix(x: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """``(n, T, F)`` → pairwise distances ``(n, T, T)`` float64 (NaN rows and columns for
    invalid observations, 0 on the diagonal of valid ones) and validity ``(n, T)``."""
    ok = _valid_vectors(x, method)
    v = np.where(ok[..., None], x, 0).astype(np.float64)
    if method == "cosine":
        norm = np.sqrt((v * v).sum(-1))
        u = v / np.where(ok, norm, 1.0)[..., None]
        d = 1.0 - np.clip(u @ u.transpose(0, 2, 1), -1.0, 1.0)
    else:
        sq = (v * v).sum(-1)
        d2 = sq[:, :, None] + sq[:, None, :] - 2.0 * (v @ v.transpose(0, 2, 1))
        d = np.sqrt(np.maximum(d2, 0.0))
    t = x.shape[1]
    d[:, np.arange(t), np.arange(t)] = 0.0
    pair = ok[:, :, None] & ok[:, None, :]
    return np.where(pair, d, np.nan), ok


def _medoid_scores(d: np.ndarray, ok: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """For each period ``p``: its distance to the medoid of the valid baseline periods other
    than ``p`` (the one with the least total distance to the others), ``(n, T)``."""
    t = d.shape[1]
    bv = ok & baseline[None, :]
    dz = np.where(np.isnan(d), 0.0, d)
    total = (dz * bv[:, None, :]).sum(-1)  # total[n, q] = sum over r in BV of D[q, r]
    # without p: cost[n, p, q] = total[n, q] - D[q, p] (when p is a baseline period)
    cost = total[:, None, :] - dz * bv[:, :, None]
    cand = bv[:, None, :] & ~np.eye(t, dtype=bool)[None]
    cost = np.where(cand, cost, np.inf)
    medoid = np.argmin(cost, axis=-1)  # ties: the earliest period
    score = np.take_along_axis(d, medoid[..., None], axis=-1)[..., 0]
    return np.where(cand.any(-1) & ok, score, np.nan)


def _previous_scores(d: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """For each period: its distance to the latest earlier valid period, ``(n, T)``."""
    n, t = ok.shape
    last = np.maximum.accumulate(np.where(ok, np.arange(t)[None, :], -1), axis=1)
    prev = np.concatenate([np.full((n, 1), -1), last[:, :-1]], axis=1)
    score = np.take_along_axis(d, np.clip(prev, 0, None)[..., None], axis=-1)[..., 0]
    return np.where((prev >= 0) & ok, score, np.nan)


def _robust_z(score: np.ndarray, members: np.ndarray, min_baseline: int,
              min_scale: float | None) -> np.ndarray:
    """``(score - median) / max(1.4826 MAD, floor)`` over the baseline scores of each pixel;
    NaN where fewer than ``min_baseline`` baseline scores are defined."""
    base = np.where(members & np.isfinite(score), score, np.nan)
    count = np.isfinite(base).sum(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels stay NaN
        med = np.nanmedian(base, axis=-1)
        mad = np.nanmedian(np.abs(base - med[:, None]), axis=-1)
    floor = 0.05 * np.abs(med) if min_scale is None else np.full_like(med, min_scale)
    scale = np.maximum(np.maximum(_MAD_TO_SIGMA * mad, floor), 1e-12)
    z = (score - med[:, None]) / scale[:, None]
    return np.where((count >= min_baseline)[:, None], z, np.nan)


@dataclass(frozen=True)
class _Series:
    """Per block ``(T, ..., F)`` → ``(2, T, ...)``: the scores, then their z-scores."""

    baseline: tuple[bool, ...]
    method: str
    against: str
    min_baseline: int
    min_scale: float | None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        t, f = x.shape[0], x.shape[-1]
        spatial = x.shape[1:-1]
        flat = np.moveaxis(x.reshape(t, -1, f), 1, 0)  # (N, T, F)
        n = flat.shape[0]
        base = np.asarray(self.baseline, bool)
        out = np.full((2, t, n), np.nan, np.float32)
        step = max(1, _PAIR_BUDGET // (t * t))
        for s in range(0, n, step):
            d, ok = _distance_matrix(flat[s:s + step], self.method)
            if self.against == "baseline":
                score = _medoid_scores(d, ok, base)
            else:
                score = _previous_scores(d, ok)
            z = _robust_z(score, base[None, :], self.min_baseline, self.min_scale)
            out[0, :, s:s + step] = score.T
            out[1, :, s:s + step] = z.T
        return out.reshape(2, t, *spatial)


def series_scores(x: Any, baseline: np.ndarray, *, method: str = "cosine",
                  against: str = "baseline", min_baseline: int = 3,
                  min_scale: float | None = None) -> tuple[Any, Any]:
    """Per pixel and period of ``x`` ``(T, ..., F)``: the change score and its robust z.

    Parameters
    ----------
    x
        Embeddings of ``T`` periods, invalid observations NaN (numpy or dask).
    baseline
        ``(T,)`` booleans: the periods that define each pixel's normal state.
    method
        ``"cosine"`` or ``"euclidean"``.
    against
        ``"baseline"``: each period's distance to the medoid of the valid baseline periods
        other than itself (leave-one-out); ``"previous"``: its distance to the latest earlier
        valid period.
    min_baseline
        Fewest defined baseline scores a pixel needs for a z-score (else NaN).
    min_scale
        Floor of the z-score's scale; ``None``: 5 % of the pixel's baseline median score.

    Returns
    -------
    tuple
        ``score`` and ``zscore``, each ``(T, ...)`` float32, numpy or lazy dask like ``x``.
    """
    kernel = _Series(tuple(bool(b) for b in np.asarray(baseline)), method, against,
                     int(min_baseline), None if min_scale is None else float(min_scale))
    if not isinstance(x, da.Array):
        out = kernel(np.asarray(x))
        return out[0], out[1]
    nd = x.ndim
    x = x.rechunk({0: -1, nd - 1: -1})
    out = da.map_blocks(kernel, x, dtype=np.float32, drop_axis=nd - 1, new_axis=0,
                        chunks=((2,), (x.shape[0],), *x.chunks[1:-1]),
                        meta=np.empty((0,) * nd, np.float32), token=f"change-series-{against}")
    return out[0], out[1]


# -- thresholds --------------------------------------------------------------------------


def _bin_index(v: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    """Bin of each (finite) value in ``bins`` equal bins over ``[lo, hi]``, values outside
    in the end bins: one formula, so every block bins a value alike."""
    width = hi - lo
    if not width > 0:
        return np.zeros(v.size, np.int64)
    idx = np.floor((v - lo) * (bins / width))
    return np.clip(idx, 0, bins - 1).astype(np.int64)


def _block_hist(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, within: np.ndarray | None,
                bins: int) -> np.ndarray:
    """Counts of the finite values of a block over ``[lo, hi]``, shaped ``(1, ..., 1,
    bins)``. With ``within = (lo0, hi0, k1, a1, b1, k2, a2, b2)`` instead: ``2 * bins``
    counts, those of the values in bin ``k1`` of the :data:`_FINE_BINS`-bin histogram over
    ``[lo0, hi0]`` over ``[a1, b1]``, then those of bin ``k2`` over ``[a2, b2]``."""
    v = np.asarray(x, np.float64).ravel()
    v = v[np.isfinite(v)]
    if within is None:
        lo_f, hi_f = float(lo), float(hi)
        out = np.zeros(bins, np.int64)
        if v.size and np.isfinite(lo_f) and np.isfinite(hi_f):
            out = np.bincount(_bin_index(v, lo_f, hi_f, bins), minlength=bins)
        return out.astype(np.int64).reshape((1,) * x.ndim + (bins,))
    w = np.asarray(within, np.float64)
    parts = []
    for k, a, b in (w[2:5], w[5:8]):
        out = np.zeros(bins, np.int64)
        if np.isfinite(k) and v.size:
            sel = v[_bin_index(v, float(w[0]), float(w[1]), _FINE_BINS) == int(k)]
            out = np.bincount(_bin_index(sel, float(a), float(b), bins), minlength=bins)
        parts.append(out.astype(np.int64))
    return np.concatenate(parts).reshape((1,) * x.ndim + (2 * bins,))


def histogram(x: da.Array, lo: da.Array | None, hi: da.Array | None, bins: int,
              within: da.Array | None = None) -> da.Array:
    """Lazy ``(bins,)`` int64 counts of the finite values of ``x`` over ``[lo, hi]`` (0-d
    dask arrays), summed exactly over the blocks; with ``within`` (an ``(8,)`` dask array,
    see :func:`_block_hist`) the ``(2 * bins,)`` counts inside two bins of a fine one."""
    nd = x.ndim
    ind = tuple(f"a{i}" for i in range(nd))
    n_out = bins if within is None else 2 * bins
    per_block = da.blockwise(
        _block_hist, (*ind, "bin"), x, ind, lo, None if lo is None else (), hi,
        None if hi is None else (), within, None if within is None else ("w",), bins=bins,
        new_axes={"bin": n_out}, adjust_chunks=dict.fromkeys(ind, 1), dtype=np.int64,
        meta=np.empty((0,) * (nd + 1), np.int64), token="change-histogram",
        concatenate=True,
    )
    total: da.Array = per_block.sum(axis=tuple(range(nd)))
    return total


def otsu(counts: np.ndarray, lo: float, hi: float) -> float:
    """Otsu's threshold of a histogram over ``[lo, hi]``: the bin edge maximising the
    between-class variance (values above it are the upper class); NaN without data, ``hi``
    when all data fall in one bin."""
    c = np.asarray(counts, np.float64)
    total = c.sum()
    if total <= 0 or not (np.isfinite(lo) and np.isfinite(hi)):
        return float("nan")
    edges = np.linspace(lo, hi, len(c) + 1)
    centres = 0.5 * (edges[:-1] + edges[1:])
    p = c / total
    w0 = np.cumsum(p)[:-1]
    m0 = np.cumsum(p * centres)[:-1]
    mt = float((p * centres).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        between = (mt * w0 - m0) ** 2 / (w0 * (1.0 - w0))
    between = np.where((w0 > 0) & (w0 < 1), between, -1.0)
    if between.max() <= 0:
        return float(hi)
    # a plateau of equal variance (empty bins between two classes): its middle edge
    best = np.flatnonzero(between >= between.max() * (1 - 1e-12))
    k = int(best[len(best) // 2]) if np.all(np.diff(best) == 1) else int(best[0])
    return float(edges[k + 1])


def _rank_bin(counts: np.ndarray, rank: float) -> tuple[int, float]:
    """The bin holding the value of 1-based ``rank`` and the count below that bin."""
    c = np.asarray(counts, np.float64)
    cum = np.cumsum(c)
    k = min(int(np.searchsorted(cum, rank, side="left")), len(c) - 1)
    return k, float(cum[k] - c[k])


def _ranks(q: float, total: float) -> tuple[float, float, float]:
    """numpy's "linear" quantile: rank ``r = q (n - 1) + 1`` between the values of ranks
    ``floor(r)`` and ``ceil(r)``; returns both and the weight of the upper one."""
    r = q * (total - 1.0) + 1.0
    lo = float(np.floor(r))
    return lo, min(lo + 1.0, total), r - lo


def _robust_span(counts: np.ndarray, lo: float, hi: float, tail: float) -> np.ndarray:
    """``[lo', hi']``: the ``tail`` and ``1 - tail`` quantiles (outer bin edges)."""
    total = float(counts.sum())
    if total <= 0:
        return np.array([np.nan, np.nan])
    edges = np.linspace(lo, hi, len(counts) + 1)
    a = edges[_rank_bin(counts, _ranks(tail, total)[0])[0]]
    b = edges[_rank_bin(counts, _ranks(1.0 - tail, total)[1])[0] + 1]
    return np.array([a, b]) if b > a else np.array([lo, hi])


def _fine_bins(fine: np.ndarray, lo: float, hi: float, q: float) -> np.ndarray:
    """``(lo, hi, k1, a1, b1, k2, a2, b2)``: the fine histogram's span, then the bins (and
    their edges) holding the two values the ``q`` quantile interpolates (NaN: no data)."""
    total = float(fine.sum())
    if total <= 0:
        return np.array([lo, hi, *[np.nan] * 6])
    edges = np.linspace(lo, hi, len(fine) + 1)
    r1, r2, _ = _ranks(q, total)
    out = [lo, hi]
    for r in (r1, r2):
        k = _rank_bin(fine, r)[0]
        out += [float(k), edges[k], edges[k + 1]]
    return np.array(out)


def _refined_quantile(fine: np.ndarray, where: np.ndarray, sub: np.ndarray, q: float) -> float:
    """The ``q`` quantile: each of its two values at the centre of its sub-bin, then
    numpy's linear interpolation between them."""
    total = float(np.asarray(fine, np.float64).sum())
    if total <= 0:
        return float("nan")
    r1, r2, weight = _ranks(q, total)
    bins = len(sub) // 2
    values = []
    for i, r in enumerate((r1, r2)):
        _, below = _rank_bin(fine, r)
        a, b = float(where[3 + 3 * i]), float(where[4 + 3 * i])
        counts = sub[i * bins:(i + 1) * bins]
        k, _ = _rank_bin(counts, r - below)
        values.append(a + (k + 0.5) * (b - a) / bins)
    return float(values[0] + weight * (values[1] - values[0]))


def threshold_value(x: da.Array, method: str, *, q: float = 0.5, bins: int = 256,
                    value_range: tuple[float, float] | None = None,
                    tail: float = 1e-3) -> da.Array:
    """A lazy 0-d float64 threshold of the finite values of ``x``.

    ``"otsu"``: Otsu's method on a ``bins``-bin histogram over ``value_range`` (default the
    ``tail`` .. ``1 - tail`` quantile span, estimated from a first 4096-bin histogram over
    the exact extremes, so that a few outliers do not squeeze the bulk into one bin; values
    outside go to the end bins). ``"quantile"``: the ``q`` quantile, located in a 4096-bin
    histogram over the extremes and then in 4096 sub-bins of its bin (to about 6e-8 of the
    value range), interpolated linearly inside the sub-bin.
    """
    x = da.asarray(x)
    lo = da.nanmin(x).astype(np.float64) if value_range is None else None
    hi = da.nanmax(x).astype(np.float64) if value_range is None else None
    if method == "otsu":
        if value_range is not None:
            a = da.asarray(np.float64(value_range[0]))
            b = da.asarray(np.float64(value_range[1]))
        else:
            fine = histogram(x, lo, hi, _FINE_BINS)
            span = da.from_delayed(delayed(_robust_span, pure=True)(fine, lo, hi, tail),
                                   shape=(2,), dtype=np.float64)
            a, b = span[0], span[1]
        counts = histogram(x, a, b, bins)
        value: da.Array = da.from_delayed(delayed(otsu, pure=True)(counts, a, b), shape=(),
                                          dtype=np.float64)
        return value
    if value_range is not None:
        lo = da.asarray(np.float64(value_range[0]))
        hi = da.asarray(np.float64(value_range[1]))
    fine = histogram(x, lo, hi, _FINE_BINS)
    where = da.from_delayed(delayed(_fine_bins, pure=True)(fine, lo, hi, q), shape=(8,),
                            dtype=np.float64)
    sub = histogram(x, None, None, _FINE_BINS, within=where)
    quantile: da.Array = da.from_delayed(
        delayed(_refined_quantile, pure=True)(fine, where, sub, q), shape=(), dtype=np.float64)
    return quantile
