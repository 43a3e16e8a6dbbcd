"""Window planning on a global pixel grid (numpy only: no torch, no dask).

Windows are anchored to the array's pixel grid, not to chunk boundaries. Along one axis of
length ``n`` (reference-grid pixels), window ``k`` reads input pixels
``[k*core - margin_lo, k*core - margin_lo + window)`` and owns the output pixels that cover
input ``[k*core, (k+1)*core)``. Every output pixel therefore comes from exactly one window,
whatever the chunking; chunks only decide which windows are computed together.

Output pixel ``j`` always covers input pixels ``[j*stride, (j+1)*stride)``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from ..exceptions import ArgumentError, DimensionError

__all__ = ["AxisPlan", "plan_axis", "window_geometry"]


def window_geometry(
    window: int, stride: int, output: str, overlap: int = 0
) -> tuple[int, int, int]:
    """``(core, margin_lo, margin_hi)`` of windows for a model geometry.

    Parameters
    ----------
    window, stride
        Model window and output stride, in reference-grid pixels.
    output
        ``"dense"``: a window gives ``window // stride`` output pixels per axis, of which the
        central ``core // stride`` are kept (``overlap`` pixels are dropped on each side).
        ``"pooled"``: a window gives one vector, for the ``stride`` x ``stride`` cell at its
        centre; windows are ``stride`` apart.
    overlap
        Dense models only: context pixels dropped on each side of a window (a multiple of
        ``stride``, less than half the window).
    """
    if output == "pooled":
        if overlap:
            raise ArgumentError(
                "overlap applies to dense models only; a pooled model's windows are placed "
                "every `stride` pixels (set stride= instead)"
            )
        lo = (window - stride) // 2
        return stride, lo, window - stride - lo
    if overlap < 0 or overlap % stride or 2 * overlap >= window:
        raise ArgumentError(
            f"overlap={overlap} is invalid for window {window} and stride {stride}: it must be a "
            f"non-negative multiple of the stride and less than half the window (max "
            f"{((window - 1) // 2) // stride * stride})"
        )
    return window - 2 * overlap, overlap, overlap


@dataclass(frozen=True)
class AxisPlan:
    """How one spatial axis is padded, chunked and cut into windows.

    Attributes
    ----------
    n, n_out
        Input length and output length (``ceil(n / stride)``).
    pad_lo, pad_hi
        Padding added before and after the input (reference pixels).
    depth
        Halo (reference pixels) each chunk of the padded array borrows from its neighbours.
    chunks
        Chunk sizes of the padded array (each chunk holds the cores of whole windows).
    windows
        ``(first, stop)`` window indices per chunk.
    data_start
        Padded-array index of the first pixel each chunk sees after the halo is added.
    out_chunks
        Output pixels per chunk.
    """

    n: int
    window: int
    stride: int
    core: int
    margin_lo: int
    margin_hi: int
    n_windows: int
    n_out: int
    pad_lo: int
    pad_hi: int
    depth: int
    chunks: tuple[int, ...]
    windows: tuple[tuple[int, int], ...]
    data_start: tuple[int, ...]
    out_chunks: tuple[int, ...]

    def window_offset(self, block: int) -> int:
        """Offset, in the block's (haloed) data, of its first window's first pixel."""
        k0 = self.windows[block][0]
        return k0 * self.core - self.margin_lo + self.pad_lo - self.data_start[block]

    def edge_pads(self, block: int) -> tuple[int, int]:
        """Padding the block itself adds before and after its data (edge blocks only)."""
        return (self.pad_lo if block == 0 else 0,
                self.pad_hi if block == len(self.windows) - 1 else 0)

    @property
    def real_chunks(self) -> tuple[int, ...]:
        """Chunk sizes of the unpadded input (edge chunks pad themselves in the kernel)."""
        c = list(self.chunks)
        c[0] -= self.pad_lo
        c[-1] -= self.pad_hi
        return tuple(c)


def plan_axis(
    n: int,
    window: int,
    stride: int,
    output: str = "dense",
    overlap: int = 0,
    target_chunk: int | None = None,
    dim: str = "x",
) -> AxisPlan:
    """Plan windows, padding and chunks along one axis.

    Parameters
    ----------
    n
        Axis length in reference-grid pixels.
    window, stride, output, overlap
        See :func:`window_geometry`.
    target_chunk
        Preferred chunk size in input pixels (e.g. the input's own chunk size); rounded to
        whole windows.
    dim
        Axis name, for error messages.
    """
    if n < 1:
        raise DimensionError(f"dimension {dim!r} is empty; nothing to embed")
    if n < window:
        raise DimensionError(
            f"dimension {dim!r} has {n} pixels, fewer than the model window of {window}; "
            f"give an array at least {window} pixels wide, or a model with a smaller window "
            "(e.g. create_model(name, window=...))"
        )
    core, lo, hi = window_geometry(window, stride, output, overlap)
    n_windows = math.ceil(n / core)
    n_out = math.ceil(n / stride)
    pad_lo = max(lo, 0)
    pad_hi = max(0, n_windows * core + hi - n)
    depth = max(lo, hi, 0)
    # whole windows per chunk, and enough that every chunk is at least the halo depth
    per = max(1, round((target_chunk or 8 * window) / core), math.ceil(depth / core) if depth else 1)
    bounds = [*range(0, n_windows, per), n_windows]
    # the last chunk must lend its halo, and hold (with the halo it borrows) the pixels its
    # edge padding mirrors: merge it into the previous one until it does
    while len(bounds) > 2 and (n - bounds[-2] * core < depth
                               or n - bounds[-2] * core + depth <= pad_hi):
        del bounds[-2]
    windows = tuple(itertools.pairwise(bounds))
    n_pad = pad_lo + n + pad_hi
    edges = [pad_lo + k0 * core for k0, _ in windows]
    edges[0] = 0
    chunk_ends = [*edges[1:], n_pad]
    chunks = tuple(e - s for s, e in zip(edges, chunk_ends, strict=True))
    data_start = tuple(s - (depth if i else 0) for i, s in enumerate(edges))
    out_chunks = []
    for k0, k1 in windows:
        if output == "pooled":
            a, b = k0, k1
        else:
            a, b = k0 * core // stride, k1 * core // stride
        out_chunks.append(max(0, min(b, n_out) - min(a, n_out)))
    # the merge above leaves every real chunk at least the halo deep (tests/engine/test_plan.py
    # checks it over random geometries)
    return AxisPlan(
        n=n, window=window, stride=stride, core=core, margin_lo=lo, margin_hi=hi,
        n_windows=n_windows, n_out=n_out, pad_lo=pad_lo, pad_hi=pad_hi, depth=depth,
        chunks=chunks, windows=windows, data_start=data_start, out_chunks=tuple(out_chunks),
    )
