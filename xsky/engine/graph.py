"""Dask glue: chunk on whole windows, borrow halos, and map the block kernel.

Every call passes ``meta``/``dtype``/``chunks`` so nothing, least of all the model, runs
while the graph is built. Arrays are not padded here: the kernel pads the edge blocks
itself, so the data is copied once, into each block's buffer.
"""

from __future__ import annotations

from collections.abc import Sequence

import dask.array as da
import numpy as np

from .kernel import BlockTask, assemble_block, run_block
from .plan import AxisPlan

__all__ = ["build_embedding", "build_valid_fraction", "chunk_with_halo"]


def chunk_with_halo(arr: da.Array, py: AxisPlan, px: AxisPlan, g: int,
                    time_chunks: Sequence[int]) -> da.Array:
    """Chunk ``arr`` ``(T, Y, X)`` on whole windows and add each chunk's halo."""
    chunks = (tuple(time_chunks), tuple(c * g for c in py.real_chunks),
              tuple(c * g for c in px.real_chunks))
    arr = arr.rechunk(chunks)
    depth = {0: 0, 1: py.depth * g, 2: px.depth * g}
    if depth[1] or depth[2]:
        arr = da.overlap.overlap(arr, depth=depth, boundary="none")
    return arr


def build_embedding(arrays: Sequence[da.Array], task: BlockTask, time_chunks: Sequence[int]
                    ) -> da.Array:
    """The lazy embedding: ``(T, Yo, Xo, F)`` per-date or ``(Yo, Xo, F)`` time-fusing.

    ``arrays`` holds, per modality, its band arrays then (if any) its valid array, each
    ``(T, Y, X)`` as returned by :func:`chunk_with_halo`.
    """
    py, px = task.plan_y, task.plan_x
    feat = (task.feature_dim,)
    out: da.Array
    if task.fuses_time:
        out = da.map_blocks(
            run_block, *arrays, task=task, drop_axis=[0], new_axis=[2],
            chunks=(py.out_chunks, px.out_chunks, feat), dtype=np.float32,
            meta=np.empty((0, 0, 0), dtype=np.float32), token="xsky-embed",
        )
        return out
    out = da.map_blocks(
        run_block, *arrays, task=task, new_axis=[3],
        chunks=(tuple(time_chunks), py.out_chunks, px.out_chunks, feat), dtype=np.float32,
        meta=np.empty((0, 0, 0, 0), dtype=np.float32), token="xsky-embed",
    )
    return out


def _cell_fraction(*blocks: np.ndarray, nodata: tuple[float | None, ...], has_valid: bool,
                   s: int) -> np.ndarray:
    """Fraction of valid pixels in each ``s`` x ``s`` cell of a block."""
    _, valid = assemble_block(blocks, nodata, has_valid)
    t, h, w = valid.shape
    ny, nx = -(-h // s), -(-w // s)
    pad = ((0, 0), (0, ny * s - h), (0, nx * s - w))
    counts = np.pad(np.ones((h, w), np.float32), pad[1:]).reshape(ny, s, nx, s).sum((1, 3))
    sums = np.pad(valid, pad).reshape(t, ny, s, nx, s).sum((2, 4), dtype=np.float32)
    frac: np.ndarray = (sums / counts).astype(np.float32)
    return frac


def build_valid_fraction(bands: Sequence[da.Array], valid: da.Array | None,
                         nodata: tuple[float | None, ...], cell: int,
                         out_chunks_y: Sequence[int], out_chunks_x: Sequence[int]) -> da.Array:
    """Lazy ``(T, Yo, Xo)`` fraction of valid input pixels under each output pixel."""
    ref = bands[0]
    ych = tuple(c * cell for c in out_chunks_y)
    xch = tuple(c * cell for c in out_chunks_x)
    # the last chunk holds the remainder of the array
    ych = (*ych[:-1], ref.shape[1] - sum(ych[:-1]))
    xch = (*xch[:-1], ref.shape[2] - sum(xch[:-1]))
    chunks = (ref.chunks[0], ych, xch)
    arrays = [b.rechunk(chunks) for b in bands]
    if valid is not None:
        arrays.append(valid.rechunk(chunks))
    frac: da.Array = da.map_blocks(
        _cell_fraction, *arrays, nodata=nodata, has_valid=valid is not None, s=cell,
        chunks=(ref.chunks[0], tuple(out_chunks_y), tuple(out_chunks_x)), dtype=np.float32,
        meta=np.empty((0, 0, 0), np.float32), token="xsky-valid-fraction",
    )
    return frac
