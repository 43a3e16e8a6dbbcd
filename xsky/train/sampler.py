"""``WindowSampler``: training windows from a lazy datacube, computed in the background.

The order of the windows is a pure function of the seed, the epoch and a fixed number of
canonical shards (as MosaicML Streaming does), so the sampler state is a few integers and the
global stream of micro-batches is the same for any number of ranks. Inputs are prepared and
normalised by the very functions :func:`xsky.embed` uses, so a model sees in training exactly
what it sees in inference.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import logging
import math
import os
import queue
import sys
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from .. import _coerce
from ..api._inputs import Cube, prepare_cubes
from ..api.embedding import _date_parts, _reference_cube, _reference_grid
from ..engine.checks import check_units
from ..engine.kernel import ModalityInput, _normalise, assemble_block, domain_valid
from ..exceptions import ArgumentError, DataError, DimensionError, format_choices
from ..geo import lonlat_transformer
from ..modalities import conversion
from ..models import ModelSpec

__all__ = ["WindowSampler"]

_log = logging.getLogger(__name__)

STRATEGIES = ("random", "stratified")
_STATE_VERSION = 1
#: the integers a state is checked against (and named when they differ)
_CHECKED = ("seed", "n_shards", "window", "batch_size", "max_dates", "fingerprint")
#: default bytes of decoded chunks an iterator keeps (``cache_bytes``)
DEFAULT_CACHE_BYTES = 256 * 2**20
#: arrays whose largest chunk is bigger are read window by window, never whole chunks
_MAX_BLOCK_BYTES = 64 * 2**20


@dataclass
class _Window:
    """One computed candidate: per modality the raw float32 buffer ``(T, C, h, w)`` (NaN at
    nodata) and its valid flags ``(T, h, w)``, the dates read and the reference valid
    fraction."""

    shard: int
    epoch: int
    y0: int
    x0: int
    bufs: list[np.ndarray]
    valids: list[np.ndarray]
    dates: list[np.ndarray | None]
    fraction: float


class _Stopped(Exception):
    """The iterator was closed while a batch was being computed."""


def _spec_of(model: Any) -> ModelSpec:
    """The spec of a registered name, an EmbeddingModel or a ModelSpec (nothing is built)."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, str):
        from ..models import get_model_spec

        return get_model_spec(model)
    spec = getattr(model, "spec", None)
    if isinstance(spec, ModelSpec):
        return spec
    raise ArgumentError(
        "model must be a registered model name (see xsky.models.list_models()), an "
        f"xsky.models.EmbeddingModel or an xsky.models.ModelSpec, got {type(model).__name__}"
    )


def _tiling(n: int, window: int, offset: int) -> np.ndarray:
    """Window starts of a tiling of ``n`` pixels by ``window`` shifted by ``offset``: one
    per cell that meets the axis, each clamped inside it, so the windows cover the axis."""
    starts = np.arange(offset - window, n, window)
    starts = starts[starts + window > 0]
    return np.unique(np.clip(starts, 0, n - window))


def _seed(value: Any) -> int:
    if not _coerce._is_int(value) or value < 0:
        raise ArgumentError(f"seed must be a non-negative integer, got {value!r}")
    return int(value)


def _layout(array: Any) -> tuple[np.ndarray, ...] | None:
    """Per axis the start of every chunk (and the axis length) of a ``(T, Y, X)`` dask
    array, or ``None`` when one of its chunks exceeds ``_MAX_BLOCK_BYTES``."""
    chunks = getattr(array, "chunks", None)
    if chunks is None or array.ndim != 3:
        return None
    largest = math.prod(max(c) for c in chunks) * array.dtype.itemsize
    if largest > _MAX_BLOCK_BYTES:
        return None
    return tuple(np.cumsum((0, *c)) for c in chunks)


def _axis_pieces(starts: np.ndarray, idx: np.ndarray) -> list[tuple[int, Any, slice]]:
    """The chunks that the sorted indices ``idx`` of one axis fall in: per chunk its number,
    the indices inside it (a slice when they are contiguous) and where they go in the
    output."""
    blk = np.searchsorted(starts, idx, side="right") - 1
    cuts = [0, *(np.flatnonzero(np.diff(blk)) + 1).tolist(), len(idx)]
    out: list[tuple[int, Any, slice]] = []
    for lo, hi in itertools.pairwise(cuts):
        b = int(blk[lo])
        local = idx[lo:hi] - starts[b]
        if int(local[-1]) - int(local[0]) == hi - lo - 1:
            local = slice(int(local[0]), int(local[-1]) + 1)
        out.append((b, local, slice(lo, hi)))
    return out


class _BlockCache:
    """Decoded chunks of an iterator's arrays, least recently used evicted beyond
    ``max_bytes`` (shared by its shard streams, hence the lock)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._data: OrderedDict[tuple[str, tuple[int, ...]], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, tuple[int, ...]]) -> np.ndarray | None:
        with self._lock:
            got = self._data.get(key)
            if got is None:
                self.misses += 1
            else:
                self.hits += 1
                self._data.move_to_end(key)
            return got

    def put(self, key: tuple[str, tuple[int, ...]], block: np.ndarray) -> None:
        if block.nbytes > self.max_bytes:
            return
        with self._lock:
            if key in self._data:
                return
            self._data[key] = block
            self.nbytes += block.nbytes
            while self.nbytes > self.max_bytes:
                _, old = self._data.popitem(last=False)
                self.nbytes -= old.nbytes


class WindowSampler(IterableDataset[dict[str, torch.Tensor]]):
    """Training micro-batches of windows from a (lazy) datacube, computed in the background.

    An infinite :class:`torch.utils.data.IterableDataset`. Each epoch has a list of candidate
    window positions, a pure function of ``(seed, epoch, cube shape, window, strategy)``,
    shuffled; candidate ``i`` goes to shard ``i % n_shards``. A candidate is accepted when
    the valid fraction of its reference-modality (pixel, date) cells is at least
    ``min_valid``; micro-batch ``j`` of shard ``s`` is the next ``batch_size`` accepted
    candidates of the shard's stream (epoch 0, then 1, ...), and global micro-batch ``i`` is
    micro-batch ``i // n_shards`` of shard ``i % n_shards``. Batches therefore mix windows
    from all over the cube, and the stream is the same for any number of ranks
    (:meth:`shard`) or any resume point (:meth:`state_dict`).

    Parameters
    ----------
    obj
        What :func:`xsky.embed` accepts: a Dataset, DataArray or DataTree, dask-backed (lazy)
        or in memory, with dims ``(time, y, x)`` (or ``(y, x)`` for static modalities).
        Alignment, units, orientation and dtype rules are embed's (the time axis may be split
        into chunks). The data is read chunk by chunk: see *Reading* below.
    window
        Window size in reference (first grid-factor-1 modality) pixels; windows never leave
        the cube.
    batch_size
        Windows per micro-batch.
    model
        A registered model name, an :class:`~xsky.models.EmbeddingModel` or a
        :class:`~xsky.models.ModelSpec`; only the spec is used (modalities, bands, units,
        mean/std, grid factors, band mask). The model must fuse time (``spec.fuses_time``).
    seed
        Non-negative integer; the stream is a pure function of it.
    strategy
        ``"stratified"``: one candidate per cell of a regular tiling of the cube by
        ``window`` (with a random offset per epoch; the windows of an epoch cover the whole
        cube); ``"random"``: uniformly random positions, as many per epoch as the unshifted
        tiling has cells. Either way an epoch has at least ``n_shards`` candidates (tiles
        repeat in a new order on a small cube), so every shard has one.
    min_valid
        Least valid fraction of an accepted window, in ``[0, 1]``.
    n_shards
        Canonical shard count, fixed for a run (the number of ranks must divide it).
    max_dates
        Keep a random sorted subset of this many dates per window (per modality, the same
        subset for models that share one time axis), seeded like the positions, so long
        series fit; ``None`` keeps every date. Needed when a modality has more dates than
        the model's ``max_timesteps``.
    units
        Units of the input, as for :func:`xsky.embed`.
    prefetch
        Micro-batches computed ahead in background threads (``0``: computed in ``__next__``).
    cache_bytes
        Bytes of decoded chunks an iterator keeps for later windows (least recently used
        chunks go first); ``0`` keeps none beyond the group of windows being read. It
        changes what is read, never the batches.
    client
        A ``distributed.Client``: windows are computed on its cluster (``client.compute``);
        ``None``: dask's threaded scheduler in this process. The batches are the same.
    rank, world_size
        Yield only global micro-batches ``i`` with ``i % world_size == rank``
        (see :meth:`shard`).

    Notes
    -----
    A micro-batch is a ``dict[str, torch.Tensor]`` on CPU in the engine's model-input format
    (:func:`xsky.engine.kernel.run_batches`): per modality ``m``, ``m`` float32
    ``(B, C, T, W*g, W*g)`` normalised, ``m + "_valid"`` bool ``(B, T, W*g, W*g)``,
    ``m + "_doy"`` and ``m + "_month"`` int64 ``(B, T)`` for modalities with dates,
    ``m + "_band_valid"`` for models with a band mask; ``"latlon"`` float64 ``(B, 2)`` of each
    window centre; ``"window"`` int64 ``(B, 4)``: (shard, y0, x0, epoch), with ``(y0, x0)`` in
    the canonical orientation (row 0 is the northernmost row, column 0 the westernmost).

    *Reading.* The windows of a shard are read in groups (about one micro-batch each, in
    one computation): each chunk a group touches is read once, whole, and only the time
    chunks that hold a window's kept dates are read. Chunks are then kept, up to
    ``cache_bytes``, for the next groups, so a cube (or the part of it being visited) that
    fits is decoded once instead of once per window: on a 100 x 100 px Zarr cube of 99
    dates in 11 x 50 x 50 chunks, an 8 x 8 px window keeping 6 dates touches up to 6 x 4
    chunks of each of its 5 arrays, and a chunk costs milliseconds to decode whatever part
    of it is used. Arrays whose chunks exceed 64 MiB are read window by
    window, and so is everything with ``client``: the workers decode the chunks and only
    the windows' pixels travel to this process. Locally the reads run with Dask's
    synchronous scheduler in the prefetch threads (no extra thread pool competing with the
    training step for the cores).

    Iterating continues from the sampler's state; a new ``iter()`` closes the previous
    iterator. Use one iterator at a time and, with a torch ``DataLoader``,
    ``batch_size=None`` and ``num_workers=0`` (the sampler prefetches itself).

    A shard with no acceptable window in a whole epoch raises :class:`~xsky.exceptions.DataError`
    (rather than loop forever); with few candidates per shard and epoch (a small cube, many
    shards) lower ``min_valid`` or ``n_shards``.

    Examples
    --------
    >>> import xsky
    >>> from xsky.train.sampler import WindowSampler
    >>> cube = xsky.tutorial.open_dataset("romania", chunks={"time": 10})
    >>> sampler = WindowSampler(cube, window=16, batch_size=4, model="galileo-nano",
    ...                         max_dates=12)
    >>> batch = next(iter(sampler))
    >>> tuple(batch["s2"].shape), tuple(batch["s2_month"].shape), tuple(batch["latlon"].shape)
    ((4, 10, 12, 16, 16), (4, 12), (4, 2))
    >>> sampler.state_dict()["index"]
    1
    """

    def __init__(
        self,
        obj: Any,
        window: int,
        batch_size: int,
        *,
        model: Any,
        seed: int = 0,
        strategy: str = "random",
        min_valid: float = 0.5,
        n_shards: int = 8,
        max_dates: int | None = None,
        units: str | Mapping[str, str] | None = None,
        prefetch: int = 2,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        client: Any = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        self._window = _coerce.positive_int(window, "window", "pixels")
        self._batch_size = _coerce.positive_int(batch_size, "batch_size", "windows")
        self._seed = _seed(seed)
        if strategy not in STRATEGIES:
            raise ArgumentError(
                f"strategy must be one of {format_choices(STRATEGIES)}, got {strategy!r}")
        self._strategy = strategy
        if isinstance(min_valid, bool) or not isinstance(
                min_valid, int | float | np.integer | np.floating) or not 0 <= min_valid <= 1:
            raise ArgumentError(f"min_valid must be a number in [0, 1], got {min_valid!r}")
        self._min_valid = float(min_valid)
        self._n_shards = _coerce.positive_int(n_shards, "n_shards")
        self._max_dates = (None if max_dates is None
                           else _coerce.positive_int(max_dates, "max_dates", "dates"))
        if not _coerce._is_int(prefetch) or prefetch < 0:
            raise ArgumentError(f"prefetch must be a non-negative integer, got {prefetch!r}")
        self._prefetch = int(prefetch)
        if not _coerce._is_int(cache_bytes) or cache_bytes < 0:
            raise ArgumentError(
                f"cache_bytes must be a non-negative integer (bytes), got {cache_bytes!r}")
        self._cache_bytes = int(cache_bytes)
        self._units = dict(units) if isinstance(units, Mapping) else units
        self._client = client
        self._rank, self._world_size = self._check_rank(rank, world_size)

        spec = _spec_of(model)
        if not spec.fuses_time:
            raise ArgumentError(
                f"model {spec.name!r} embeds each date on its own (fuses_time=False); "
                "WindowSampler yields time series for time-fusing models (e.g. "
                "'galileo-nano', 'skysense-tiny'), or give a ModelSpec with fuses_time=True"
            )
        self._spec = spec
        # embed's rules, except that time may stay split (each window is read on its own)
        # and max_timesteps is checked against the dates a window keeps (max_dates)
        cubes = prepare_cubes(obj, spec.replace(fuses_time=False, max_timesteps=None),
                              units=self._units)
        self._ref_grid, self._crs = _reference_grid(cubes, spec)
        self._ref_name = _reference_cube(cubes, spec).name
        self._cubes: list[Cube] = []
        self._mods: list[ModalityInput] = []
        for m in spec.modalities:
            if m.name not in cubes:
                continue
            cube = cubes[m.name]
            doy, month = _date_parts(cube.time, m.name)
            self._cubes.append(cube)
            self._mods.append(ModalityInput(
                m.name, len(m.bands), m.grid_factor, conversion(cube.units, m.units, m.name),
                m.mean, m.std, doy, month, cube.nodata, cube.valid is not None,
                cube.units_check))
        self._check_sizes()
        self._ref_index = next(i for i, c in enumerate(self._cubes) if c.name == self._ref_name)
        # per modality, per array read (bands, then valid): its chunk starts per axis, or
        # None when its chunks are too large to read whole
        self._layouts = [[_layout(a) for a in cube.arrays] for cube in self._cubes]
        self._positions: dict[int, np.ndarray] = {}
        self._positions_lock = threading.Lock()
        self._index = 0  # global frontier: every global micro-batch < index was yielded
        self._cursors = [(0, 0)] * self._n_shards
        self._iter_ref: Any = None
        self._stats = _Stats()
        self._fingerprint = _fingerprint(self.config())

    # -- checks ------------------------------------------------------------------------
    def _check_rank(self, rank: Any, world_size: Any) -> tuple[int, int]:
        world_size = _coerce.positive_int(world_size, "world_size", "ranks")
        if self._n_shards % world_size:
            raise ArgumentError(
                f"world_size={world_size} does not divide n_shards={self._n_shards}; every "
                "rank must own the same number of shards: use a world_size that divides "
                f"{self._n_shards} (or build the sampler with another n_shards)"
            )
        if not _coerce._is_int(rank) or not 0 <= rank < world_size:
            raise ArgumentError(f"rank must be an integer in [0, {world_size}), got {rank!r}")
        return int(rank), world_size

    def _check_sizes(self) -> None:
        ny, nx = self._ref_grid.ny, self._ref_grid.nx
        if self._window > ny or self._window > nx:
            raise ArgumentError(
                f"window={self._window} is larger than the cube ({ny} x {nx} reference "
                f"pixels along {self._ref_grid.ydim!r} x {self._ref_grid.xdim!r}); windows "
                f"never leave the cube: use window <= {min(ny, nx)}"
            )
        limit = self._spec.max_timesteps
        for cube in self._cubes:
            n_t = cube.bands[0].shape[0]
            kept = n_t if self._max_dates is None else min(n_t, self._max_dates)
            if cube.time_dim is not None and limit is not None and kept > limit:
                raise DimensionError(
                    f"modality {cube.name!r} has {n_t} dates but model {self._spec.name!r} "
                    f"takes at most {limit}; pass max_dates={limit} (or fewer) to sample "
                    "that many dates per window, or composite the dates first"
                )

    # -- candidates --------------------------------------------------------------------
    def _epoch_positions(self, epoch: int) -> np.ndarray:
        """The shuffled ``(n, 2)`` window starts ``(y0, x0)`` of an epoch (cached)."""
        with self._positions_lock:
            got = self._positions.get(epoch)
        if got is not None:
            return got
        rng = np.random.default_rng([self._seed, epoch])
        w, ny, nx = self._window, self._ref_grid.ny, self._ref_grid.nx
        if self._strategy == "stratified":
            ys = _tiling(ny, w, int(rng.integers(w)))
            xs = _tiling(nx, w, int(rng.integers(w)))
            cells = np.stack(np.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
            copies = -(-self._n_shards // len(cells))
            order = np.concatenate([rng.permutation(len(cells)) for _ in range(copies)])
            pos = cells[order]
        else:
            n = max(math.ceil(ny / w) * math.ceil(nx / w), self._n_shards)
            pos = np.stack([rng.integers(0, ny - w + 1, n), rng.integers(0, nx - w + 1, n)], 1)
        pos = pos.astype(np.int64)
        with self._positions_lock:
            if len(self._positions) > 64:  # epochs are visited in order: keep a few
                self._positions.pop(min(self._positions))
            self._positions[epoch] = pos
        return pos

    def _shard_len(self, epoch: int, shard: int) -> int:
        return len(range(shard, len(self._epoch_positions(epoch)), self._n_shards))

    def _dates(self, epoch: int, index: int) -> list[np.ndarray | None]:
        """Per modality, the sorted date indices candidate ``index`` of ``epoch`` keeps
        (``None``: all)."""
        if self._max_dates is None:
            return [None] * len(self._cubes)
        rng = np.random.default_rng([self._seed, epoch, 1, index])
        out: list[np.ndarray | None] = []
        shared: dict[int, np.ndarray] = {}
        for cube in self._cubes:
            n_t = cube.bands[0].shape[0]
            if cube.time_dim is None or n_t <= self._max_dates:
                out.append(None)
                continue
            if not (self._spec.shared_time and n_t in shared):
                shared[n_t] = np.sort(rng.choice(n_t, self._max_dates, replace=False))
            out.append(shared[n_t])
        return out

    def _window_reads(self, y0: int, x0: int, dates: list[np.ndarray | None]
                      ) -> list[tuple[Any, Any, Any]]:
        """How to read one window: per modality, per array (bands, then valid), either
        ``("blocks", array, pieces)``, the chunks it touches (only the time chunks of its
        kept dates) as ``(chunk index, slices in the chunk, slices in the window)``, or
        ``("slice", lazy slice, dates to pick)`` for arrays with chunks too large to read
        whole, and for all with a client. The slice spans the window's first to last kept
        date with basic indexing: dask turns a list of dates into a shuffle of many small
        tasks, which cost more than reading the few dates in between."""
        reads: list[tuple[Any, Any, Any]] = []
        w = self._window
        # on a cluster the workers decode the chunks: only the windows' pixels travel
        all_layouts: list[list[tuple[np.ndarray, ...] | None]] = (
            [[None] * len(x) for x in self._layouts] if self._client is not None
            else self._layouts)
        for cube, mod, t, layouts in zip(self._cubes, self._mods, dates, all_layouts,
                                         strict=True):
            g = mod.grid_factor
            ts = slice(None) if t is None else slice(int(t[0]), int(t[-1]) + 1)
            sl = (ts, slice(y0 * g, (y0 + w) * g), slice(x0 * g, (x0 + w) * g))
            for a, layout in zip(cube.arrays, layouts, strict=True):
                if layout is None:
                    reads.append(("slice", a[sl], None if t is None else t - t[0]))
                    continue
                n_t = a.shape[0]
                idx = (np.arange(n_t) if t is None else np.asarray(t),
                       np.arange(y0 * g, (y0 + w) * g), np.arange(x0 * g, (x0 + w) * g))
                axes = [_axis_pieces(st, i) for st, i in zip(layout, idx, strict=True)]
                pieces = [((tb, yb, xb), (tl, yl, xl), (to, yo, xo))
                          for tb, tl, to in axes[0] for yb, yl, yo in axes[1]
                          for xb, xl, xo in axes[2]]
                reads.append(("blocks", a, (pieces, (len(idx[0]), len(idx[1]), len(idx[2])))))
        return reads

    def _assemble(self, shard: int, epoch: int, y0: int, x0: int,
                  dates: list[np.ndarray | None], blocks: list[np.ndarray]) -> _Window:
        """The kernel's assembly and masking of one computed window (embed's ``gather``)."""
        bufs, valids = [], []
        pos = 0
        band_mask = self._spec.band_mask
        for mod in self._mods:
            n_in = mod.n_bands + mod.has_valid
            buf, valid = assemble_block(blocks[pos:pos + n_in], mod.nodata, mod.has_valid,
                                        band_mask)
            pos += n_in
            check_units(buf, valid, mod.units_check)
            bufs.append(buf)
            valids.append(domain_valid(buf, valid, mod.conversion, band_mask))
        fraction = float(valids[self._ref_index].mean())
        return _Window(shard, epoch, y0, x0, bufs, valids, dates, fraction)

    def _collate(self, wins: list[_Window]) -> dict[str, torch.Tensor]:
        """Windows as one micro-batch, normalised by the kernel's ``_normalise``."""
        out: dict[str, torch.Tensor] = {}
        for k, mod in enumerate(self._mods):
            # (B, T, C, H, W) -> the engine's (B, C, T, H, W)
            xb = torch.from_numpy(np.ascontiguousarray(
                np.stack([w.bufs[k] for w in wins]).transpose(0, 2, 1, 3, 4)))
            vb = torch.from_numpy(np.stack([w.valids[k] for w in wins]))
            xb, vb, bv = _normalise(xb, vb, mod, torch, self._spec.band_mask)
            out[mod.name] = xb
            if bv is not None:
                out[mod.name + "_band_valid"] = bv
            out[mod.name + "_valid"] = vb
            for key, parts in (("_doy", mod.doy), ("_month", mod.month)):
                if parts is None:
                    continue
                table = np.asarray(parts, np.int64)
                rows = [table if w.dates[k] is None else table[w.dates[k]] for w in wins]
                out[mod.name + key] = torch.from_numpy(np.stack(rows))
        gi, half = self._ref_grid, (self._window - 1) / 2.0
        ys = gi.y0 + (np.array([w.y0 for w in wins]) + half) * gi.dy
        xs = gi.x0 + (np.array([w.x0 for w in wins]) + half) * gi.dx
        lon, lat = lonlat_transformer(self._crs).transform(xs, ys)
        out["latlon"] = torch.from_numpy(np.stack([np.asarray(lat, np.float64),
                                                   np.asarray(lon, np.float64)], axis=1))
        out["window"] = torch.tensor([[w.shard, w.y0, w.x0, w.epoch] for w in wins],
                                     dtype=torch.int64)
        return out

    # -- public API --------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        if info is not None and info.num_workers > 1:
            raise ArgumentError(
                f"WindowSampler is read by {info.num_workers} DataLoader workers, which would "
                "each yield the same stream; use DataLoader(sampler, batch_size=None, "
                "num_workers=0) (the sampler prefetches in background threads itself)"
            )
        previous = self._iter_ref() if self._iter_ref is not None else None
        if previous is not None:
            previous.close()
        it = _Iterator(self)
        self._iter_ref = weakref.ref(it)
        return it

    def shard(self, rank: int, world_size: int) -> WindowSampler:
        """The sampler of one of ``world_size`` ranks: global micro-batches ``i`` with
        ``i % world_size == rank`` (those of shards ``s % world_size == rank``).

        Interleaving the ranks' micro-batches gives this sampler's stream exactly. The shard
        starts from this sampler's state, whose index must be a multiple of ``world_size``.
        """
        if self._world_size != 1:
            raise ArgumentError(
                f"this sampler is already rank {self._rank} of {self._world_size}; call "
                "shard() on the full sampler (world_size=1)"
            )
        rank, world_size = self._check_rank(rank, world_size)
        if self._index % world_size:
            raise ArgumentError(
                f"the sampler is at global micro-batch {self._index}, not a multiple of "
                f"world_size={world_size}; shard it at a step boundary"
            )
        out = copy.copy(self)
        out._rank, out._world_size = rank, world_size
        out._cursors = list(self._cursors)
        out._iter_ref = None
        out._stats = _Stats()
        out._positions_lock = threading.Lock()
        out._positions = dict(self._positions)
        return out

    @property
    def stats(self) -> dict[str, float]:
        """Data-wait figures of the current (or last) iterator: ``batches``, ``wait_s`` (time
        ``__next__`` waited for data after the first batch), ``first_wait_s``, ``total_s``
        (wall time from the first to the last batch) and ``wait_fraction`` =
        ``wait_s / total_s`` (0 before the second batch)."""
        return self._stats.as_dict()

    def state_dict(self) -> dict[str, Any]:
        """The sampler's position: JSON-serialisable integers only.

        ``index``: the global frontier (every global micro-batch below it was yielded);
        ``cursors``: per shard ``[epoch, position]`` of its next candidate; ``rank`` and
        ``world_size`` (a rank's state holds up-to-date cursors for its own shards only:
        merge the ranks' states with :meth:`merge_states` to resume on another world
        size); and the fields a state is checked against (``seed``, ``n_shards``,
        ``window``, ``batch_size``, ``max_dates`` (0: all), ``fingerprint`` of
        :meth:`config`)."""
        return {
            "version": _STATE_VERSION,
            "index": int(self._index),
            "cursors": [[int(e), int(p)] for e, p in self._cursors],
            "rank": self._rank,
            "world_size": self._world_size,
            **self._checked(),
        }

    def _checked(self) -> dict[str, int]:
        return {"seed": self._seed, "n_shards": self._n_shards, "window": self._window,
                "batch_size": self._batch_size, "max_dates": self._max_dates or 0,
                "fingerprint": self._fingerprint}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`: iterating then yields exactly the micro-batches an
        uninterrupted iterator would have yielded next.

        Raises
        ------
        ArgumentError
            When the state comes from another configuration (the differing field is named),
            is a single rank's state loaded into another rank or world size, or its index is
            not a multiple of this sampler's world size.
        """
        if not isinstance(state, Mapping):
            raise ArgumentError(f"state must be a dict from state_dict(), got {type(state).__name__}")
        missing = [k for k in ("version", "index", "cursors", "rank", "world_size", *_CHECKED)
                   if k not in state]
        if missing:
            raise ArgumentError(f"the sampler state lacks {missing}; pass a dict from "
                                "WindowSampler.state_dict()")
        if state["version"] != _STATE_VERSION:
            raise ArgumentError(
                f"sampler state version {state['version']!r}; this xsky reads version "
                f"{_STATE_VERSION}")
        for key, mine in self._checked().items():
            if state[key] != mine:
                what = (" (the fingerprint of config(): strategy, min_valid, units, model or "
                        "cube differ)" if key == "fingerprint" else "")
                raise ArgumentError(
                    f"the sampler state was saved with {key}={state[key]!r}, but this sampler "
                    f"has {key}={mine!r}{what}; resume with the configuration it was saved "
                    "with, or start afresh"
                )
        cursors = state["cursors"]
        if len(cursors) != self._n_shards or not all(
                len(c) == 2 and all(_coerce._is_int(v) and v >= 0 for v in c) for c in cursors):
            raise ArgumentError(f"state['cursors'] must hold {self._n_shards} [epoch, position] "
                                f"pairs of non-negative integers, got {cursors!r}")
        if state["world_size"] != 1 and (state["rank"], state["world_size"]) != (
                self._rank, self._world_size):
            raise ArgumentError(
                f"the state is rank {state['rank']}'s of {state['world_size']} (it holds "
                "current cursors for that rank's shards only); load it into that rank, or "
                "merge all ranks' states with WindowSampler.merge_states(...) first"
            )
        index = state["index"]
        if not _coerce._is_int(index) or index < 0 or index % self._world_size:
            raise ArgumentError(
                f"state['index']={index!r} is not a non-negative multiple of world_size="
                f"{self._world_size}; resume at a step boundary")
        previous = self._iter_ref() if self._iter_ref is not None else None
        if previous is not None:
            previous.close()
        self._index = int(index)
        self._cursors = [(int(e), int(p)) for e, p in cursors]

    @staticmethod
    def merge_states(states: list[Mapping[str, Any]]) -> dict[str, Any]:
        """One full state (``world_size`` 1) from the states of all ranks of a run, taken at
        the same step: each shard's cursor comes from the rank that owns it."""
        if not states:
            raise ArgumentError("merge_states needs the state of every rank, got none")
        first = states[0]
        size = first["world_size"]
        if sorted(s["rank"] for s in states) != list(range(size)) or any(
                s["world_size"] != size for s in states):
            raise ArgumentError(
                f"merge_states needs one state per rank 0..{size - 1}, got ranks "
                f"{sorted(s['rank'] for s in states)} of world sizes "
                f"{sorted({s['world_size'] for s in states})}")
        for s in states:
            for key in ("index", *_CHECKED):
                if s[key] != first[key]:
                    raise ArgumentError(
                        f"rank {s['rank']}'s state has {key}={s[key]!r} but rank "
                        f"{first['rank']}'s has {first[key]!r}; merge states of one run taken "
                        "at the same step")
        by_rank = {s["rank"]: s for s in states}
        n = first["n_shards"]
        merged = dict(first)
        merged["cursors"] = [list(by_rank[i % size]["cursors"][i]) for i in range(n)]
        merged["rank"], merged["world_size"] = 0, 1
        return merged

    def config(self) -> dict[str, Any]:
        """Every option that shapes the global stream, the model's input contract and the
        cube's identity, JSON-serialisable (for a training checkpoint's fingerprint).

        ``prefetch``, ``client``, ``rank`` and ``world_size`` are left out: they change
        neither the stream nor its order, so a run may resume on another cluster size."""
        cubes = {}
        for cube in self._cubes:
            time = cube.time
            cubes[cube.name] = {
                "dims": [*(["time"] if cube.time_dim else []), cube.grid.ydim, cube.grid.xdim],
                "shape": [int(v) for v in cube.bands[0].shape],
                "time": None if time is None else [str(np.asarray(time)[0]),
                                                   str(np.asarray(time)[-1])],
                "units": cube.units,
                "variables": list(cube.variables),
                "valid": cube.valid is not None,
            }
        gi = self._ref_grid
        crs = self._crs.to_string() if hasattr(self._crs, "to_string") else str(self._crs)
        return {
            "window": self._window,
            "batch_size": self._batch_size,
            "seed": self._seed,
            "strategy": self._strategy,
            "min_valid": self._min_valid,
            "n_shards": self._n_shards,
            "max_dates": self._max_dates,
            "units": self._units,
            "model": {
                "name": self._spec.name,
                "band_mask": self._spec.band_mask,
                "modalities": {m.name: {"bands": list(m.bands), "units": m.units,
                                        "grid_factor": m.grid_factor,
                                        "mean": list(m.mean) if m.mean else None,
                                        "std": list(m.std) if m.std else None}
                               for m in self._spec.modalities},
            },
            "cube": {
                "reference": self._ref_name,
                "grid": {"ydim": gi.ydim, "xdim": gi.xdim, "ny": gi.ny, "nx": gi.nx,
                         "y0": gi.y0, "x0": gi.x0, "dy": gi.dy, "dx": gi.dx},
                "crs": crs,
                "modalities": cubes,
            },
        }

    def __getstate__(self) -> dict[str, Any]:
        # a sampler travels (to Dask workers) without its client, iterator and lock
        state = self.__dict__.copy()
        state["_client"] = None
        state["_iter_ref"] = None
        state["_positions_lock"] = None
        state["_stats"] = _Stats()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._positions_lock = threading.Lock()

    def __repr__(self) -> str:
        gi = self._ref_grid
        return (f"WindowSampler(model={self._spec.name!r}, cube={gi.ny}x{gi.nx}, "
                f"window={self._window}, batch_size={self._batch_size}, "
                f"strategy={self._strategy!r}, seed={self._seed}, n_shards={self._n_shards}, "
                f"rank={self._rank}/{self._world_size}, index={self._index})")


def _fingerprint(config: Mapping[str, Any]) -> int:
    """A 52-bit integer digest of a config (exact in JSON as a double)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return int(hashlib.sha256(text.encode()).hexdigest()[:13], 16)


class _Stats:
    """Wait and wall time of an iterator (written by the consumer thread only)."""

    def __init__(self) -> None:
        self.batches = 0
        self.wait = 0.0
        self.first_wait = 0.0
        self.first: float | None = None
        self.last: float | None = None

    def record(self, waited: float, now: float) -> None:
        if self.first is None:
            self.first, self.first_wait = now, waited
        else:
            self.wait += waited
        self.last = now
        self.batches += 1

    def as_dict(self) -> dict[str, float]:
        total = (self.last - self.first) if self.first is not None and self.last else 0.0
        return {"batches": self.batches, "wait_s": self.wait, "first_wait_s": self.first_wait,
                "total_s": total,
                "wait_fraction": min(1.0, self.wait / total) if total > 0 else 0.0}


class _ShardStream:
    """One shard's candidates, computed in groups and accepted in order."""

    def __init__(self, sampler: WindowSampler, shard: int, cursor: tuple[int, int],
                 compute: Any, stop: threading.Event, blocks: _BlockCache) -> None:
        self.s = sampler
        self.shard = shard
        self.cursor = cursor
        self.cache: dict[tuple[int, int], _Window] = {}
        self.blocks = blocks
        self.compute = compute
        self.stop = stop
        self.scanned = 0
        self.accepted = 0

    def next_batch(self) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
        s, bs = self.s, self.s._batch_size
        e, p = self.cursor
        # a cursor inside an epoch sits right after an accepted window (batches end on one)
        accepted_epoch, best, seen = p > 0, 0.0, 0
        wins: list[_Window] = []
        while len(wins) < bs:
            n_e = s._shard_len(e, self.shard)
            if p >= n_e:
                if not accepted_epoch:
                    raise DataError(
                        f"no window of shard {self.shard} in epoch {e} has a valid fraction "
                        f">= min_valid={s._min_valid} (the best of its {seen} candidate "
                        f"windows has {best:.4f}); lower min_valid, use a smaller window, or "
                        "check the 'valid' mask and nodata of the cube"
                    )
                e, p, accepted_epoch, best, seen = e + 1, 0, False, 0.0, 0
                continue
            if (e, p) not in self.cache:
                self._fill(e, p, bs - len(wins))
            w = self.cache.pop((e, p))
            seen += 1
            self.scanned += 1
            best = max(best, w.fraction)
            if w.fraction >= s._min_valid:
                wins.append(w)
                accepted_epoch = True
                self.accepted += 1
            p += 1
        if p >= s._shard_len(e, self.shard):
            e, p = e + 1, 0
        self.cursor = (e, p)
        return s._collate(wins), self.cursor

    def _fill(self, e: int, p: int, need: int) -> None:
        """Compute the next candidates from ``(e, p)``, as many as ``need`` accepted ones
        are expected to take (by the acceptance so far), in one computation that reads
        each chunk they touch once (and none the cache holds)."""
        if self.stop.is_set():
            raise _Stopped
        s = self.s
        rate = max(self.accepted / self.scanned, 0.1) if self.scanned else 1.0
        k = min(math.ceil(need / rate), 4 * s._batch_size)
        todo: list[tuple[int, int]] = []
        while len(todo) < k:
            n_e = s._shard_len(e, self.shard)
            if p >= n_e:
                e, p = e + 1, 0
                continue
            if (e, p) not in self.cache:
                todo.append((e, p))
            p += 1
        lazy: list[Any] = []
        got: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}
        wanted: dict[tuple[str, tuple[int, ...]], int] = {}  # missing chunk -> lazy index
        meta: list[tuple[Any, ...]] = []
        for ce, cp in todo:
            index = self.shard + cp * s._n_shards  # the candidate's index in its epoch
            y0, x0 = (int(v) for v in s._epoch_positions(ce)[index])
            dates = s._dates(ce, index)
            reads = s._window_reads(y0, x0, dates)
            plan: list[tuple[Any, ...]] = []
            for kind, a, what in reads:
                if kind == "slice":
                    plan.append((kind, len(lazy), what))
                    lazy.append(a)
                    continue
                pieces, shape = what
                for blk, _, _ in pieces:
                    key = (a.name, blk)
                    if key in got or key in wanted:
                        continue
                    cached = self.blocks.get(key)
                    if cached is not None:
                        got[key] = cached
                    else:
                        wanted[key] = len(lazy)
                        lazy.append(a.blocks[blk])
                plan.append((kind, a.name, what, a.dtype))
            meta.append((ce, cp, y0, x0, dates, plan))
        computed = self.compute(lazy) if lazy else []
        for key, at in wanted.items():
            block = np.asarray(computed[at])
            got[key] = block
            self.blocks.put(key, block)
        for ce, cp, y0, x0, dates, plan in meta:
            arrays: list[np.ndarray] = []
            for item in plan:
                if item[0] == "slice":
                    _, at, pick = item
                    b = np.asarray(computed[at])
                    arrays.append(b if pick is None else b[pick])
                    continue
                _, name, (pieces, shape), dtype = item
                out = np.empty(shape, dtype)
                for blk, local, where in pieces:
                    out[where] = got[(name, blk)][local]
                arrays.append(out)
            self.cache[(ce, cp)] = s._assemble(self.shard, ce, y0, x0, dates, arrays)


#: how long :meth:`_Iterator.close` waits for the batches in the making to stop
_CLOSE_TIMEOUT_S = 60.0


def _shutdown(pool: ThreadPoolExecutor | None, dask_pool: ThreadPoolExecutor | None,
              stop: threading.Event, client: Any, inflight: set[Any], wait: bool) -> None:
    """Stop the iterator's threads and cancel its cluster futures.

    ``wait=True`` (``close``) also cancels the cluster futures and joins the threads, for
    at most ``_CLOSE_TIMEOUT_S``: a batch stuck in its data source must not make ``close``
    (or the ``finally`` of a timed-out caller) hang for ever. ``wait=False`` is for a
    dropped iterator, run by the reaper thread (the GC finalizer only queues it, see
    :func:`_finalize`): it sets the stop flag, shuts the pools down without waiting and
    drops references (released cluster futures are cancelled by distributed itself), and
    never calls the client or joins."""
    stop.set()
    if wait and client is not None and inflight:
        with contextlib.suppress(Exception):  # a closed client has nothing left to cancel
            client.cancel(list(inflight))
    inflight.clear()
    pools = [p for p in (pool, dask_pool) if p is not None]
    for p in pools:
        p.shutdown(wait=False, cancel_futures=True)
    if not wait:
        return
    deadline = time.monotonic() + _CLOSE_TIMEOUT_S
    # CPython's executors keep their threads in `_threads`; shutdown() could only join
    # them without a bound
    threads = [t for p in pools for t in getattr(p, "_threads", ())]
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    if stuck:
        _log.warning("WindowSampler: %d background thread(s) (%s) did not stop within %.0f s "
                     "of close(); their batches are abandoned", len(stuck), ", ".join(stuck),
                     _CLOSE_TIMEOUT_S)


#: shutdowns of dropped iterators, run by the reaper thread
_REAP: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
_reaper_lock = threading.Lock()
_reaper: threading.Thread | None = None


def _reap() -> None:
    while True:
        pool, dask_pool, stop, client, inflight = _REAP.get()
        try:
            _shutdown(pool, dask_pool, stop, client, inflight, wait=False)
        except Exception:  # a reaper that dies would leave later iterators' threads running
            _log.exception("WindowSampler: shutting a dropped iterator down failed")


def _start_reaper() -> None:
    """Start the reaper thread once per process (from a safe point: an iterator's
    constructor, never a finalizer)."""
    global _reaper
    with _reaper_lock:
        if _reaper is None or not _reaper.is_alive():
            _reaper = threading.Thread(target=_reap, name="xsky-reaper", daemon=True)
            _reaper.start()


def _finalize(*args: Any) -> None:
    """The GC finalizer of an iterator: queue its shutdown for the reaper thread.

    A finalizer runs in whichever thread the garbage collector happens to run in, at any
    allocation, possibly inside ``ThreadPoolExecutor.submit`` of the very pool it would
    shut down, which holds that pool's (non-reentrant) shutdown lock and the module-wide
    lock of every executor's ``submit``: shutting down there deadlocks that thread for ever,
    and with it every later ``submit`` in the process. ``SimpleQueue.put`` takes no Python
    lock and is documented as safe in finalizers."""
    _REAP.put(args)


class _Iterator:
    """An iterator over a sampler's micro-batches, ``prefetch`` of them computed ahead.

    Tasks hold no reference to the iterator, so dropping it shuts its threads down."""

    def __init__(self, sampler: WindowSampler) -> None:
        self._s = sampler
        self._stop = threading.Event()
        self._inflight: set[Any] = set()
        self._inflight_lock = threading.Lock()
        self._client = sampler._client
        self._dask_pool: ThreadPoolExecutor | None = None
        if self._client is None and not sampler._prefetch:
            # reads in __next__: in parallel (prefetch threads read with the sync scheduler)
            self._dask_pool = ThreadPoolExecutor(os.cpu_count() or 1,
                                                 thread_name_prefix="xsky-sampler-dask")
        self._pool = (ThreadPoolExecutor(sampler._prefetch, thread_name_prefix="xsky-sampler")
                      if sampler._prefetch else None)
        self._blocks = _BlockCache(sampler._cache_bytes)
        owned = range(sampler._rank, sampler._n_shards, sampler._world_size)
        self._streams = {s: _ShardStream(sampler, s, sampler._cursors[s], self._compute_fn(),
                                         self._stop, self._blocks) for s in owned}
        self._next = sampler._index + sampler._rank
        self._pending: deque[tuple[int, Future[Any]]] = deque()
        self._last: dict[int, Future[Any]] = {}
        self._closed = False
        sampler._stats = _Stats()
        _start_reaper()
        self._finalizer = weakref.finalize(
            self, _finalize, self._pool, self._dask_pool, self._stop, self._client,
            self._inflight)

    def _compute_fn(self) -> Any:
        client, pool = self._client, self._dask_pool
        inflight, lock, stop = self._inflight, self._inflight_lock, self._stop

        def compute(arrays: list[Any]) -> list[Any]:
            if client is None:
                import dask

                if pool is None:  # in a prefetch thread: no second pool competing for cores
                    return list(dask.compute(*arrays, scheduler="sync"))
                return list(dask.compute(*arrays, scheduler="threads", pool=pool))
            futures = client.compute(arrays)
            with lock:
                inflight.update(futures)
            try:
                if stop.is_set():
                    raise _Stopped
                return list(client.gather(futures))
            finally:
                with lock:
                    inflight.difference_update(futures)

        return compute

    def _submit(self) -> None:
        g = self._next
        self._next += self._s._world_size
        stream = self._streams[g % self._s._n_shards]
        assert self._pool is not None
        prev = self._last.get(stream.shard)

        def task() -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
            if prev is not None:
                prev.result()  # a shard's batches are made in order
            return stream.next_batch()

        fut = self._pool.submit(task)
        self._last[stream.shard] = fut
        self._pending.append((g, fut))

    def __iter__(self) -> _Iterator:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._closed:
            raise StopIteration
        s = self._s
        t0 = time.perf_counter()
        try:
            if self._pool is None:
                g = self._next
                self._next += s._world_size
                batch, cursor = self._streams[g % s._n_shards].next_batch()
            else:
                while len(self._pending) < s._prefetch + 1:
                    self._submit()
                # this batch and `prefetch` more are in the making; those run during the step
                g, fut = self._pending.popleft()
                batch, cursor = fut.result()
        except BaseException:
            self.close()
            raise
        now = time.perf_counter()
        s._stats.record(now - t0, now)
        s._cursors[g % s._n_shards] = cursor
        s._index = g - s._rank + s._world_size
        return batch

    def close(self) -> None:
        """Stop the background threads and cancel pending computations."""
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        # interpreter exit already joins the pools; waiting then could only delay it
        _shutdown(self._pool, self._dask_pool, self._stop, self._client, self._inflight,
                  wait=not sys.is_finalizing())
