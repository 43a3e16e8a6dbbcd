"""Array core of similarity search and sampling: cosine maps, chunk-wise top-k, bilinear taps.

Arrays in, arrays out (numpy and dask); the xarray-facing functions are
:mod:`xsky.api.similarity` and :mod:`xsky.api.sampling`.

- :func:`combine_query` turns the embeddings of example pixels into one unit query vector
  (``2 mean(positive) - mean(negative)``, or the mean of the positives), normalised once.
- :func:`cosine_map` is the exact cosine of every pixel with a unit query, blockwise: one
  pass over each block's ``(n, F)`` rows by a fused kernel that accumulates the dot product
  and the squared norm together in float64 (the data are read once, as by a bare
  matrix-vector product). Each row is reduced in the same order whatever block it sits
  in, so the map is bitwise identical across chunkings.
- :func:`top_k` selects the ``k`` best pixels with a per-block partial selection
  (:func:`numpy.argpartition`) and a tree merge of the small candidate lists: no full sort,
  one compute. Ties are broken by the flat pixel index, so the selection does not depend on
  the chunking either.
- :func:`bilinear_taps` gives the four neighbours and weights of fractional pixel positions.

A pixel is *valid* when all its features are finite and not all zero (as in
:mod:`xsky.engine.prototypes`); an invalid pixel's cosine is NaN.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, cast

import dask.array as da
import numpy as np
from dask.base import compute
from dask.delayed import delayed

from ..exceptions import ArgumentError, DataError

__all__ = [
    "bilinear_taps",
    "combine_query",
    "cosine_block",
    "cosine_map",
    "cosine_rows",
    "merge_top_k",
    "select_top_k",
    "top_k",
    "top_k_block",
    "unit_vector",
    "valid_rows",
]

_blockwise = cast("Callable[..., da.Array]", da.blockwise)
_FAN_IN = 16  # candidate lists merged per task in the top-k tree


# --------------------------------------------------------------------------------------
# Query vectors
# --------------------------------------------------------------------------------------


def valid_rows(x: np.ndarray) -> np.ndarray:
    """Rows of ``(n, F)`` that are valid pixels: all features finite, not all zero."""
    x = np.asarray(x)
    return cast("np.ndarray", np.isfinite(x).all(axis=-1) & (x != 0).any(axis=-1))


def unit_vector(q: Any, what: str = "the query vector") -> np.ndarray:
    """``q`` as a float64 unit vector; refuses NaN/inf and zero vectors."""
    v = np.asarray(q, dtype=np.float64).ravel()
    if not np.isfinite(v).all():
        bad = np.flatnonzero(~np.isfinite(v))[:5].tolist()
        raise DataError(f"{what} has NaN or infinite values (at features {bad}); a query must "
                        "be finite")
    norm = float(np.sqrt(v @ v))
    if norm == 0.0:
        raise DataError(f"{what} is all zeros, so its cosine with any pixel is undefined")
    return cast("np.ndarray", v / norm)


def _side_mean(x: np.ndarray, required: np.ndarray, labels: Sequence[str], side: str
               ) -> np.ndarray | None:
    """Mean of the valid rows of one side (``None`` for no rows); a required row that is not
    a valid pixel is an error naming the example."""
    if x.shape[0] == 0:
        return None
    ok = valid_rows(x)
    bad = required & ~ok
    if bad.any():
        which = sorted({labels[int(i)] for i in np.flatnonzero(bad)})[:5]
        raise DataError(
            f"{int(bad.sum())} {side} example pixel(s) have no valid embedding (NaN or all "
            f"zeros: cloud, no data or outside the model's footprint), from {which}; move or "
            "drop those points (xsky.sample(emb, points) shows their values)"
        )
    if not ok.any():
        which = sorted(set(labels))[:5]
        raise DataError(
            f"no {side} example pixel has a valid embedding (all {x.shape[0]} are NaN or all "
            f"zeros), from {which}; choose examples over valid pixels"
        )
    return cast("np.ndarray", x[ok].astype(np.float64).mean(axis=0))


def combine_query(positive: np.ndarray, negative: np.ndarray, *,
                  positive_required: np.ndarray | None = None,
                  negative_required: np.ndarray | None = None,
                  positive_labels: Sequence[str] = (), negative_labels: Sequence[str] = ()
                  ) -> np.ndarray:
    """The unit query vector of example pixels: ``2 mean(positive) - mean(negative)``.

    Parameters
    ----------
    positive, negative
        ``(n, F)`` and ``(m, F)`` embeddings of the example pixels (``m`` may be 0: the
        query is then the mean of the positives).
    positive_required, negative_required
        Per row, whether it must be a valid pixel (points: yes; pixels of a polygon: no,
        invalid ones are skipped). Default: all required.
    positive_labels, negative_labels
        Per row, what it came from, for error messages.

    Returns
    -------
    numpy.ndarray
        ``(F,)`` float64 of norm 1.

    Examples
    --------
    >>> combine_query(np.array([[1.0, 0.0], [1.0, 2.0]]), np.array([[0.0, 3.0]]))  # (2, -1)
    array([ 0.89442719, -0.4472136 ])
    """
    pos = np.asarray(positive)
    neg = np.asarray(negative)
    pr = np.ones(pos.shape[0], bool) if positive_required is None else positive_required
    nr = np.ones(neg.shape[0], bool) if negative_required is None else negative_required
    pl = list(positive_labels) or ["positive"] * pos.shape[0]
    nl = list(negative_labels) or ["negative"] * neg.shape[0]
    mp = _side_mean(pos, np.asarray(pr, bool), pl, "positive")
    if mp is None:
        raise ArgumentError("a query needs at least one positive example")
    mn = _side_mean(neg, np.asarray(nr, bool), nl, "negative")
    q = mp if mn is None else 2.0 * mp - mn
    norm = float(np.sqrt(q @ q))
    if not np.isfinite(norm) or norm == 0.0:
        raise DataError(
            "the query 2 mean(positive) - mean(negative) is the zero vector (the examples "
            "cancel out); add positives that differ from the negatives"
        )
    return cast("np.ndarray", q / norm)


# --------------------------------------------------------------------------------------
# The cosine kernel
# --------------------------------------------------------------------------------------


def _cosine_rows_py(x: np.ndarray, q: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    """``out[a, b] = x[a, b] . q / |x[a, b]|`` for ``x`` ``(A, B, F)`` (``q`` a unit vector),
    NaN for invalid rows.

    Compiled by numba; dot product and squared norm are accumulated together in float64,
    in the same order for every row (reassociation within the row only). Strided views
    (a block cut out of a larger array) are read in place, without a copy.
    """
    na, nb, nf = x.shape
    for a in range(na):
        for b in range(nb):
            d = 0.0
            s = 0.0
            for j in range(nf):
                v = np.float64(x[a, b, j])
                d += v * q[j]
                s += v * v
            if s > 0.0:
                out[a, b] = d / np.sqrt(s)
            else:  # all zeros (s == 0) or NaN (s is NaN)
                out[a, b] = np.nan


@functools.cache
def _kernel() -> Callable[[np.ndarray, np.ndarray, np.ndarray], None]:
    """The compiled kernel (numba is imported on first use and caches on disk)."""
    import numba

    fn = numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})(_cosine_rows_py)
    return cast("Callable[[np.ndarray, np.ndarray, np.ndarray], None]", fn)


def _cosine3(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    out = np.empty(x.shape[:2], np.float32)
    if out.size:
        _kernel()(x, q, out)
    return out


def cosine_rows(x: np.ndarray, q_unit: np.ndarray) -> np.ndarray:
    """Cosine of each row of a ``(n, F)`` array with the unit vector ``q_unit`` (float32).

    Examples
    --------
    >>> cosine_rows(np.array([[3.0, 4.0], [0.0, 0.0]], "float32"), np.array([1.0, 0.0]))
    array([0.6, nan], dtype=float32)
    """
    return cosine_block(np.asarray(x), q_unit)


def cosine_block(block: np.ndarray, q_unit: np.ndarray) -> np.ndarray:
    """Cosine map of one block ``(..., F)`` (features last) -> ``(...)`` float32.

    A C-contiguous block is one run of rows. A block cut out of a larger array along x
    (whose rows of ``(x, F)`` are each contiguous) is read in place, row by row; any other
    layout is copied once."""
    x = np.asarray(block)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    q = np.ascontiguousarray(q_unit, dtype=np.float64)
    shape = x.shape[:-1]
    if x.ndim < 3 or x.flags.c_contiguous:
        return _cosine3(np.ascontiguousarray(x).reshape(1, -1, x.shape[-1]), q).reshape(shape)
    rows = x.reshape(-1, *x.shape[-2:])  # (rows, x, F): a view unless the leading axes mix
    if rows.size and not rows[0].flags.c_contiguous:
        rows = np.ascontiguousarray(rows)
    out = np.empty(rows.shape[:2], np.float32)
    for i in range(rows.shape[0]):
        out[i] = _cosine3(rows[i][None], q)[0]
    return out.reshape(shape)


def cosine_map(data: da.Array | np.ndarray, q_unit: da.Array | np.ndarray) -> da.Array:
    """Lazy cosine of every pixel of ``data`` (features on the last axis) with ``q_unit``.

    ``q_unit`` is a unit vector, numpy or a one-chunk dask array (a query resolved from
    the cube itself stays lazy). The feature axis is merged into one chunk if needed; the
    other chunks are kept.
    """
    arr = data if isinstance(data, da.Array) else da.from_array(data, chunks=data.shape)
    if arr.numblocks[-1] != 1:
        arr = arr.rechunk({arr.ndim - 1: -1})
    nf = arr.shape[-1]
    q = q_unit if isinstance(q_unit, da.Array) else da.from_array(
        np.asarray(q_unit, np.float64), chunks=-1)
    if q.shape != (nf,):
        raise ArgumentError(f"the query vector has {q.shape} values but the cube has {nf} "
                            "features")
    q = q.rechunk(-1)
    idx = "abcdefgh"[: arr.ndim - 1]
    # the feature axis is contracted; it is one chunk, so each task gets a list of one block
    # (concatenate=True would copy every block once more)
    return _blockwise(_cosine_task, idx, arr, idx + "z", q, "z", dtype=np.float32,
                      concatenate=False, meta=np.empty((0,) * (arr.ndim - 1), np.float32))


def _cosine_task(blocks: Sequence[np.ndarray], qs: Sequence[np.ndarray]) -> np.ndarray:
    (block,), (q,) = blocks, qs
    return cosine_block(block, q)


# --------------------------------------------------------------------------------------
# Top-k
# --------------------------------------------------------------------------------------

_Candidates = tuple[np.ndarray, np.ndarray, int]  # scores (desc), flat indices, n valid


def select_top_k(scores: np.ndarray, index: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of ``(scores, index)`` by score descending, then index ascending,
    returned in that order (``scores`` finite). A partial selection: no full sort.

    Examples
    --------
    >>> select_top_k(np.array([0.5, 0.9, 0.5, 0.1]), np.array([7, 3, 2, 5]), 2)
    (array([0.9, 0.5]), array([3, 2]))
    """
    if scores.size > k:
        # the k-th best value; everything above it is in, ties at it go by index
        kth = np.partition(scores, scores.size - k)[scores.size - k]
        above = scores > kth
        tied = np.flatnonzero(scores == kth)
        need = k - int(above.sum())
        tied = tied[np.argsort(index[tied], kind="stable")[:need]]
        keep = np.concatenate([np.flatnonzero(above), tied])
        scores, index = scores[keep], index[keep]
    order = np.lexsort((index, -scores.astype(np.float64)))
    return scores[order], index[order]


def top_k_block(scores: np.ndarray, start: Sequence[int], shape: Sequence[int], k: int,
                threshold: float | None) -> _Candidates:
    """Candidates of one block of a score map: its ``k`` best finite scores (at or above
    ``threshold``), their flat indices in the whole map of ``shape``, and its count of
    valid (finite) scores.

    One partial selection over the block; flat indices are computed for the ``k``
    candidates only. Within a block, C order is the order of the whole map, so ties at the
    ``k``-th score keep the lowest local indices, as the whole map's rule does.
    """
    s = np.asarray(scores, np.float32)
    flat_s = s.reshape(-1)
    ok = np.isfinite(flat_s)
    n_valid = int(np.count_nonzero(ok))
    if threshold is not None:
        ok &= flat_s >= np.float32(threshold)
    n_ok = n_valid if threshold is None else int(np.count_nonzero(ok))
    if n_ok == 0:
        return np.empty(0, np.float32), np.empty(0, np.int64), n_valid
    if n_ok <= k:
        local = np.flatnonzero(ok)
    else:
        work = np.where(ok, flat_s, -np.inf) if n_ok < flat_s.size else flat_s
        cut = work.size - k
        kth = np.partition(work, cut)[cut]
        above = np.flatnonzero(work > kth)
        tied = np.flatnonzero(work == kth)[: k - above.size]
        local = np.concatenate([above, tied])
    coords = np.unravel_index(local, s.shape)
    flat = np.ravel_multi_index(tuple(c + o for c, o in zip(coords, start, strict=True)),
                                tuple(shape)).astype(np.int64)
    vals, idx = select_top_k(flat_s[local], flat, k)
    return vals, idx, n_valid


def merge_top_k(parts: Sequence[_Candidates], k: int) -> _Candidates:
    """Merge candidate lists into the ``k`` best (same order and tie rule)."""
    vals = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.float32)
    idx = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.int64)
    n_valid = sum(p[2] for p in parts)
    if vals.size == 0:
        return vals, idx, n_valid
    v, i = select_top_k(vals, idx, k)
    return v, i, n_valid


def _merge_task(k: int, *parts: _Candidates) -> _Candidates:
    return merge_top_k(parts, k)


def top_k(scores: da.Array | np.ndarray, k: int, threshold: float | None = None
          ) -> _Candidates:
    """The ``k`` best pixels of a (lazy) score map, in one compute.

    Each block keeps its ``k`` best finite scores (partial selection, no sort of the
    block), then the candidate lists are merged ``16`` at a time.

    Returns
    -------
    tuple
        Scores (float32, descending; ties by index), flat pixel indices into ``scores``
        (int64; C order) and the number of pixels with a finite score. Fewer than ``k``
        rows when fewer pixels are valid (and at or above ``threshold``).

    Examples
    --------
    >>> s = da.from_array(np.array([[0.1, 0.9], [np.nan, 0.5]], "float32"), chunks=1)
    >>> top_k(s, 2)
    (array([0.9, 0.5], dtype=float32), array([1, 3]), 3)
    """
    if isinstance(scores, np.ndarray):
        return top_k_block(scores, (0,) * scores.ndim, scores.shape, k, threshold)
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int) for c in scores.chunks]
    blocks = scores.to_delayed()
    task = delayed(top_k_block, pure=True)
    parts = [task(blocks[ix], tuple(int(starts[a][i]) for a, i in enumerate(ix)),
                  scores.shape, k, threshold)
             for ix in np.ndindex(*scores.numblocks)]
    merge = delayed(_merge_task, pure=True)
    while len(parts) > 1:
        parts = [merge(k, *parts[i:i + _FAN_IN]) for i in range(0, len(parts), _FAN_IN)]
    (out,) = compute(parts[0])
    return cast("_Candidates", out)


# --------------------------------------------------------------------------------------
# Bilinear sampling
# --------------------------------------------------------------------------------------


def bilinear_taps(fy: np.ndarray, fx: np.ndarray, ny: int, nx: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The four neighbours and bilinear weights of fractional pixel positions.

    ``fy``/``fx`` are positions in pixel units (pixel ``i``'s centre at ``i``), within
    ``[-0.5, n - 0.5]``; positions between the outermost centre and the edge take the edge
    pixel along that axis. Returns ``iy``, ``ix`` (int, ``(n, 4)``) and ``w`` (float64,
    ``(n, 4)``, rows sum to 1).

    Examples
    --------
    >>> iy, ix, w = bilinear_taps(np.array([0.25]), np.array([1.5]), 4, 4)
    >>> iy.tolist(), ix.tolist(), w.tolist()
    ([[0, 0, 1, 1]], [[1, 2, 1, 2]], [[0.375, 0.375, 0.125, 0.125]])
    """
    def axis(f: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f = np.clip(np.asarray(f, np.float64), 0.0, n - 1.0)
        i0 = np.minimum(np.floor(f).astype(np.int64), max(n - 2, 0))
        t = f - i0
        i1 = np.minimum(i0 + 1, n - 1)
        return i0, i1, t

    y0, y1, ty = axis(fy, ny)
    x0, x1, tx = axis(fx, nx)
    iy = np.stack([y0, y0, y1, y1], axis=-1)
    ix = np.stack([x0, x1, x0, x1], axis=-1)
    w = np.stack([(1 - ty) * (1 - tx), (1 - ty) * tx, ty * (1 - tx), ty * tx], axis=-1)
    return iy, ix, w
