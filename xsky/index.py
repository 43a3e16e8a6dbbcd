"""An approximate nearest-neighbour index over an embedding cube, with exact re-ranking.

For many queries over one large cube, :func:`build` computes the cube once, keeps its
vectors in memory and indexes the valid pixels with an ANN graph (``engine="usearch"``,
HNSW; an optional dependency: ``pip install usearch``). A search fetches ``rerank x k``
candidates from the graph (stored at reduced precision, ``float16`` by default) and ranks
them by their exact cosine on the float32 vectors, so the scores returned are exact and only
the candidate set is approximate. ``engine="exact"`` searches every vector (the same
interface, no extra dependency; also the reference for recall).

Queries take every form :func:`xsky.similar` takes (vectors, points, polygons,
:class:`~xsky.api.similarity.Examples`), read from the indexed vectors.

Examples
--------
>>> import numpy as np, xarray as xr
>>> from xsky.geo import write_crs
>>> v = np.random.default_rng(0).standard_normal((20, 30, 8)).astype("float32")
>>> emb = write_crs(xr.DataArray(v, dims=("y", "x", "feature"),
...                 coords={"y": 100.0 - np.arange(20), "x": np.arange(30.0)}), "EPSG:32633")
>>> idx = build(emb, engine="exact")
>>> scores, flat = idx.search_vectors(v[3, 4], k=2)
>>> int(flat[0, 0]) == 3 * 30 + 4, round(float(scores[0, 0]), 5)
(True, 1.0)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _coerce
from .api.sampling import EmbeddingCube, embedding_cube
from .api.similarity import resolve_query, top_k_frame
from .engine.similarity import select_top_k, unit_vector
from .exceptions import (
    ArgumentError,
    DataError,
    DimensionError,
    MissingDependencyError,
    format_choices,
)

__all__ = ["ENGINES", "Index", "build"]

ENGINES = ("usearch", "exact")
_BATCH = 65536  # vectors per step when normalising, adding and scanning


def _require_usearch() -> Any:
    try:
        from usearch.index import Index as _USearchIndex
    except ImportError as err:
        raise MissingDependencyError(
            "xsky.index.build(engine='usearch') needs the optional dependency 'usearch', "
            "which is not installed; install it with `pip install usearch` (the 'index' "
            "extra), or use engine='exact'"
        ) from err
    return _USearchIndex


class Index:
    """A searchable embedding cube (see :func:`build`); holds the vectors in memory."""

    def __init__(self, cube: EmbeddingCube, vectors: np.ndarray, norms: np.ndarray,
                 valid: np.ndarray, engine: str, ann: Any, rerank: int, threads: int) -> None:
        self._cube = cube
        self._vectors = vectors  # (n_pixels, F) float32, NaN rows for invalid pixels
        self._norms = norms  # (n_pixels,) float32, NaN for invalid pixels
        self._valid = valid  # flat indices of the valid pixels
        self.engine = engine
        self._ann = ann
        self.rerank = rerank
        self.threads = threads

    def __len__(self) -> int:
        return int(self._valid.size)

    def __repr__(self) -> str:
        return (f"<xsky.index.Index engine={self.engine!r}, {len(self)} valid of "
                f"{self._vectors.shape[0]} pixels, {self._vectors.shape[1]} features>")

    @property
    def cube(self) -> Any:
        """The indexed cube (in memory) as an embedding DataArray."""
        return self._cube.emb

    def _exact_scores(self, flat: np.ndarray, q: np.ndarray) -> np.ndarray:
        x = self._vectors[flat].astype(np.float64)
        return ((x @ q) / self._norms[flat]).astype(np.float32)

    def search_vectors(self, vectors: Any, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best pixels of each query vector.

        Parameters
        ----------
        vectors
            ``(F,)`` or ``(m, F)`` query vectors (normalised here).
        k
            Pixels per query.

        Returns
        -------
        tuple of numpy.ndarray
            Exact cosine scores ``(m, k)`` (float32, best first; ties by pixel order) and
            flat pixel indices ``(m, k)`` into ``([time,] y, x)`` (int64).
        """
        k = _coerce.positive_int(k, "k", "pixels")
        if k > len(self):
            raise DataError(f"k={k} is larger than the {len(self)} valid pixels of the index; "
                            f"use k <= {len(self)}")
        q = np.atleast_2d(np.asarray(vectors, np.float64))
        nf = self._vectors.shape[1]
        if q.ndim != 2 or q.shape[1] != nf:
            raise DimensionError(f"query vectors have shape {np.shape(vectors)} but the index "
                                 f"has {nf} features")
        qu = np.stack([unit_vector(r, f"query vector {i}") for i, r in enumerate(q)])
        if self.engine == "exact":
            return self._scan(qu, k)
        count = min(len(self), k * self.rerank)
        matches = self._ann.search(qu.astype(np.float32), count, threads=self.threads)
        keys = np.asarray(matches.keys).reshape(len(qu), -1)
        counts = np.asarray(matches.counts).reshape(-1)
        out_s = np.empty((len(qu), k), np.float32)
        out_i = np.empty((len(qu), k), np.int64)
        for i in range(len(qu)):
            flat = keys[i, : counts[i]].astype(np.int64)
            s, f = select_top_k(self._exact_scores(flat, qu[i]), flat, k)
            if s.size < k:  # the graph returned fewer candidates: complete by a scan
                s, f = (a[0] for a in self._scan(qu[i:i + 1], k))
            out_s[i], out_i[i] = s, f
        return out_s, out_i

    def _scan(self, qu: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k by scanning every valid vector (blocks of ``_BATCH``)."""
        best = [(np.empty(0, np.float32), np.empty(0, np.int64)) for _ in qu]
        for lo in range(0, self._valid.size, _BATCH):
            flat = self._valid[lo:lo + _BATCH]
            x = self._vectors[flat].astype(np.float64)
            s = ((x @ qu.T) / self._norms[flat, None]).astype(np.float32)
            for i in range(len(qu)):
                cand_s = np.concatenate([best[i][0], s[:, i]])
                cand_f = np.concatenate([best[i][1], flat])
                best[i] = select_top_k(cand_s, cand_f, k)
        return np.stack([b[0] for b in best]), np.stack([b[1] for b in best])

    def search(self, query: Any, k: int = 10, *, crs: Any = None, time: Any = None) -> Any:
        """The ``k`` most similar pixels to a query, as :func:`xsky.similar` with ``k``.

        Parameters
        ----------
        query, crs, time
            As for :func:`xsky.similar` (points and polygons are read from the index's
            vectors).
        k
            Number of pixels.

        Returns
        -------
        geopandas.GeoDataFrame
            ``rank``, ``score`` (exact cosine), ``time``, ``x``, ``y``, ``lon``, ``lat`` and
            point geometries in the cube's CRS.
        """
        q, _ = resolve_query(self._cube, query, crs=crs, time=time)
        scores, flat = self.search_vectors(np.asarray(q), k)
        return top_k_frame(self._cube, scores[0], flat[0])


def build(emb: Any, engine: str = "usearch", *, rerank: int = 4, connectivity: int = 16,
          expansion_add: int = 64, expansion_search: int = 64, dtype: str = "f16",
          threads: int = 0) -> Index:
    """Index the valid pixels of an embedding cube for fast repeated searches.

    The cube is computed once (one compute of a lazy cube) and held in memory as float32.

    Parameters
    ----------
    emb
        An embedding from :func:`xsky.embed` (``([time,] y, x, feature)``, NaN for invalid
        pixels).
    engine
        ``"usearch"`` (HNSW graph; needs ``pip install usearch``) or ``"exact"`` (a scan of
        every vector per query).
    rerank
        Candidates fetched from the graph per result, re-ranked by their exact cosine
        (``usearch``).
    connectivity, expansion_add, expansion_search
        HNSW's ``M``, ``efConstruction`` and ``ef`` (``usearch``).
    dtype
        Storage of the vectors inside the graph: ``"f16"``, ``"f32"`` or ``"i8"``
        (re-ranking always uses the float32 vectors).
    threads
        Threads for building and searching the graph (0: all cores).

    Returns
    -------
    Index

    Examples
    --------
    >>> idx = build(emb, engine="usearch")  # doctest: +SKIP
    >>> idx.search((x, y), k=10)  # doctest: +SKIP
    """
    if engine not in ENGINES:
        raise ArgumentError(f"engine={engine!r} is not supported; choose one of "
                            f"{format_choices(ENGINES)}")
    rerank = _coerce.positive_int(rerank, "rerank")
    if dtype not in ("f16", "f32", "i8"):
        raise ArgumentError(f"dtype must be one of 'f16', 'f32', 'i8', got {dtype!r}")
    usearch_index = _require_usearch() if engine == "usearch" else None
    cube = embedding_cube(emb)
    loaded = cube.emb.astype(np.float32).load()
    vectors = np.ascontiguousarray(loaded.values.reshape(-1, cube.n_features))
    with np.errstate(invalid="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", vectors.astype(np.float64),
                                  vectors.astype(np.float64))).astype(np.float32)
    ok = np.isfinite(norms) & (norms > 0)
    norms[~ok] = np.nan
    valid = np.flatnonzero(ok).astype(np.int64)
    if valid.size == 0:
        raise DataError("the cube has no valid pixel (every embedding is NaN or all zeros); "
                        "nothing to index")
    ann = None
    if usearch_index is not None:
        ann = usearch_index(ndim=cube.n_features, metric="cos", dtype=dtype,
                            connectivity=connectivity, expansion_add=expansion_add,
                            expansion_search=expansion_search)
        for lo in range(0, valid.size, _BATCH * 4):
            flat = valid[lo:lo + _BATCH * 4]
            ann.add(flat.astype(np.uint64), vectors[flat], threads=threads)
    view = EmbeddingCube(loaded, cube.grid, cube.crs, cube.has_time)
    return Index(view, vectors, norms, valid, engine, ann, rerank, threads)
