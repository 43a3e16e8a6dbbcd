"""Dask glue: pad, chunk on whole windows, borrow halos, and map the block kernel.

Every call passes ``meta``/``dtype``/``chunks`` so nothing, least of all the model, runs
while the graph is built.
"""

from __future__ import annotations

from collections.abc import Sequence

import dask.array as da
import numpy as np

from .kernel import BlockTask, run_block
from .plan import AxisPlan

__all__ = ["build_embedding", "build_valid_fraction", "pad_and_chunk"]


def pad_and_chunk(raw: da.Array, py: AxisPlan, px: AxisPlan, g: int, edge: str,
                  time_chunks: Sequence[int]) -> da.Array:
    """Pad ``raw`` ``(T, C+1, H, W)`` per the plans and chunk it on whole windows, with halo."""
    pads = ((0, 0), (0, 0), (py.pad_lo * g, py.pad_hi * g), (px.pad_lo * g, px.pad_hi * g))
    if any(p for ax in pads for p in ax):
        if edge == "reflect":
            raw = da.pad(raw, pads, mode="reflect")
        else:  # "pad": NaN values and valid = 0, i.e. invalid pixels filled for the model
            raw = da.pad(raw, pads, mode="constant", constant_values=np.nan)
    chunks = (tuple(time_chunks), (raw.shape[1],), tuple(c * g for c in py.chunks),
              tuple(c * g for c in px.chunks))
    raw = raw.rechunk(chunks)
    depth = {2: py.depth * g, 3: px.depth * g}
    if depth[2] or depth[3]:
        raw = da.overlap.overlap(raw, depth=depth, boundary="none")
    return raw


def build_embedding(raws: Sequence[da.Array], task: BlockTask, time_chunks: Sequence[int]
                    ) -> da.Array:
    """The lazy embedding: ``(T, Yo, Xo, F)`` per-date or ``(Yo, Xo, F)`` time-fusing."""
    py, px = task.plan_y, task.plan_x
    feat = (task.feature_dim,)
    meta = np.empty((0,) * (3 if task.fuses_time else 4), dtype=np.float32)
    if task.fuses_time:
        return da.map_blocks(
            run_block, *raws, task=task, drop_axis=[0, 1], new_axis=[2],
            chunks=(py.out_chunks, px.out_chunks, feat), dtype=np.float32, meta=meta,
            token="xsky-embed",
        )
    return da.map_blocks(
        run_block, *raws, task=task, drop_axis=[1], new_axis=[3],
        chunks=(tuple(time_chunks), py.out_chunks, px.out_chunks, feat), dtype=np.float32,
        meta=meta, token="xsky-embed",
    )


def _cell_fraction(block: np.ndarray, n_bands: int, s: int) -> np.ndarray:
    """Fraction of valid pixels in each ``s`` x ``s`` cell of a raw ``(T, C+1, H, W)`` block."""
    valid = (block[:, n_bands] > 0.5) & np.isfinite(block[:, :n_bands]).all(axis=1)
    t, h, w = valid.shape
    ny, nx = -(-h // s), -(-w // s)
    pad = ((0, 0), (0, ny * s - h), (0, nx * s - w))
    counts = np.pad(np.ones((h, w), np.float32), pad[1:]).reshape(ny, s, nx, s).sum((1, 3))
    sums = np.pad(valid, pad).reshape(t, ny, s, nx, s).sum((2, 4), dtype=np.float32)
    return (sums / counts).astype(np.float32)


def build_valid_fraction(raw: da.Array, n_bands: int, cell: int, out_chunks_y: Sequence[int],
                         out_chunks_x: Sequence[int]) -> da.Array:
    """Lazy ``(T, Yo, Xo)`` fraction of valid input pixels under each output pixel."""
    ych = tuple(c * cell for c in out_chunks_y)
    xch = tuple(c * cell for c in out_chunks_x)
    # the last chunk holds the remainder of the array
    ych = (*ych[:-1], raw.shape[2] - sum(ych[:-1]))
    xch = (*xch[:-1], raw.shape[3] - sum(xch[:-1]))
    raw = raw.rechunk((raw.chunks[0], (raw.shape[1],), ych, xch))
    return da.map_blocks(
        _cell_fraction, raw, n_bands, cell, drop_axis=[1],
        chunks=(raw.chunks[0], tuple(out_chunks_y), tuple(out_chunks_x)), dtype=np.float32,
        meta=np.empty((0, 0, 0), np.float32), token="xsky-valid-fraction",
    )
