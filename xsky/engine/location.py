"""Array core of location embeddings: cell-centre lon/lat, then the location encoder.

Arrays only (numpy and dask): the xarray-facing functions live in :mod:`xsky.api.location`.
The graph carries a :class:`~xsky.models.LocationRef`, never the weights; inside each task
the encoder comes from the per-process runtime cache, and the lon/lat transformer from
:func:`xsky.geo.lonlat_transformer` (one per CRS and thread).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import dask.array as da
import numpy as np

from ..geo import pixel_lonlat
from ..models.spec import LocationRef
from ..runtime.cache import get_location_encoder

__all__ = ["build_location_embedding", "embed_block", "output_chunks"]

# dask ships no type hints: typed handles keep the callers checkable
_from_array = cast("Callable[..., da.Array]", da.from_array)
_blockwise = cast("Callable[..., da.Array]", da.blockwise)


def output_chunks(n_in: int, in_chunks: Sequence[int] | None, stride: int,
                  default: int) -> tuple[int, ...]:
    """Output chunks along one axis of ``n_in`` input pixels sampled every ``stride``.

    With ``in_chunks``, each output chunk holds the cells that start inside the matching
    input chunk (so the output stays aligned with the input); otherwise chunks of
    ``default`` cells.
    """
    n_out = -(-n_in // stride)
    if in_chunks is None:
        size = max(1, default)
        return tuple(min(size, n_out - s) for s in range(0, n_out, size))
    bounds = np.concatenate([[0], np.cumsum(in_chunks)])
    cuts = np.unique(-(-bounds // stride))  # first output cell starting at or after each bound
    cuts[-1] = n_out
    return tuple(int(c) for c in np.diff(cuts) if c > 0)


def embed_block(y: np.ndarray, x: np.ndarray, *, ref: LocationRef, crs_wkt: str,
                out_dtype: np.dtype[Any]) -> np.ndarray:
    """One ``(len(y), len(x), embed_dim)`` block of embeddings of the cell centres ``x, y``.

    Runs inside a task. Cells whose centre is outside the CRS's projection domain (no
    finite lon/lat) are NaN.
    """
    enc = get_location_encoder(ref)
    lon, lat = pixel_lonlat(x, y, crs_wkt)
    bad = ~(np.isfinite(lon) & np.isfinite(lat)).ravel()
    lon, lat = lon.ravel(), lat.ravel()
    if bad.any():  # encode a harmless point there, then blank it
        lon[bad] = 0.0
        lat[bad] = 0.0
    out = np.empty((lon.size, ref.embed_dim), dtype=np.float64)
    enc.encode(lon, lat, out=out)
    if bad.any():
        out[bad] = np.nan
    return out.reshape(y.size, x.size, ref.embed_dim).astype(out_dtype, copy=False)


def build_location_embedding(ycoord: np.ndarray, xcoord: np.ndarray,
                             ychunks: Sequence[int], xchunks: Sequence[int], *,
                             ref: LocationRef, crs_wkt: str, dtype: np.dtype[Any]) -> da.Array:
    """The lazy ``(y, x, feature)`` location embedding of the grid ``ycoord`` x ``xcoord``.

    Parameters
    ----------
    ycoord, xcoord
        Cell-centre coordinates in the CRS ``crs_wkt``.
    ychunks, xchunks
        Output chunks (summing to the coordinates' lengths).
    ref
        The encoder (its ``embed_dim`` gives the feature axis without loading it).
    crs_wkt
        WKT of the coordinates' CRS.
    dtype
        Output dtype.

    Returns
    -------
    dask.array.Array
        Nothing runs until it is computed: ``meta``/``dtype``/``chunks`` are given.
    """
    from dask.base import tokenize

    ych, xch = tuple(int(c) for c in ychunks), tuple(int(c) for c in xchunks)
    yd = _from_array(ycoord, chunks=(ych,), name=f"loc-y-{tokenize(ycoord, ych)}")
    xd = _from_array(xcoord, chunks=(xch,), name=f"loc-x-{tokenize(xcoord, xch)}")
    token = tokenize(ref, crs_wkt, ycoord, xcoord, ych, xch, dtype.str)
    return _blockwise(
        embed_block, "yxf", yd, "y", xd, "x",
        new_axes={"f": ref.embed_dim},
        dtype=dtype,
        meta=np.empty((0, 0, 0), dtype=dtype),
        name=f"location-embed-{token}",
        ref=ref, crs_wkt=crs_wkt, out_dtype=dtype,
    )
