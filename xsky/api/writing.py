"""``xsky.to_zarr`` and ``xsky.open_embedding``: resumable, region-wise result stores.

:func:`to_zarr` writes the store's metadata and coordinates first (every array
pre-allocated, no chunk yet), then computes and writes *regions* of whole chunks, a bounded
number at a time, on the threaded scheduler or a ``distributed`` cluster, and records each
region in the store once its chunks are on disk (:mod:`xsky.io.zarr_regions`). A killed or
failed run is resumed by running it again: only the regions not recorded are computed. The
record carries a fingerprint of the computation, so a run with other options, weights or
inputs is refused instead of mixing two results in one store.

:func:`open_embedding` opens a store and tells whether it is complete.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import time
import uuid
import warnings
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr

from ..exceptions import ArgumentError, DataError

__all__ = ["IncompleteStoreWarning", "WriteReport", "open_embedding", "to_zarr"]

log = logging.getLogger(__name__)


class IncompleteStoreWarning(UserWarning):
    """A store opened with :func:`open_embedding` lacks some regions (a run was interrupted)."""


@dataclass(frozen=True)
class WriteReport:
    """What :func:`to_zarr` did.

    Attributes
    ----------
    store
        The store path.
    regions
        Regions in the store (rectangles of whole chunks).
    computed
        Regions computed and written by this call.
    skipped
        Regions already complete in the store (a resumed run), not computed again.
    complete
        Whether every region is now on disk (the store is marked complete).
    seconds
        Wall time of the call.
    area_km2
        Footprint written by this call (km²), ``None`` without a CRS.
    """

    store: str
    regions: int
    computed: int
    skipped: int
    complete: bool
    seconds: float
    area_km2: float | None = None

    @property
    def km2_per_hour(self) -> float | None:
        """Throughput of this call (footprint per hour of wall time)."""
        if self.area_km2 is None or self.seconds <= 0:
            return None
        return self.area_km2 / self.seconds * 3600.0

    def __str__(self) -> str:
        rate = self.km2_per_hour
        extra = f", {rate:,.0f} km²/h" if rate is not None and self.computed else ""
        state = "complete" if self.complete else "INCOMPLETE"
        return (f"{self.store}: {self.computed} region(s) computed, {self.skipped} already "
                f"complete, of {self.regions} ({state}; {self.seconds:.1f} s{extra})")


def _dataset_to_write(emb: xr.DataArray | xr.Dataset) -> xr.Dataset:
    """The Dataset :func:`to_zarr` writes for ``emb`` (variables, coordinates, attrs and
    encodings as stored). Output metadata conventions plug in here; anything that changes the
    stored values (dtype, scale_factor, ...) must be in the variables' ``encoding``, where
    the fingerprint sees it."""
    from ..io.conventions import store_dataset

    return store_dataset(emb)


def to_zarr(
    emb: xr.DataArray | xr.Dataset,
    store: str | os.PathLike[str],
    *,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    source: Any = None,
    region_chunks: Mapping[str, int] | None = None,
    max_in_flight: int | None = None,
    client: Any = None,
    consolidated: bool = True,
) -> WriteReport:
    """Write a lazy result to a Zarr store region by region, resumably.

    The store's metadata and coordinates are written first; then regions of whole chunks
    are computed and written, at most ``max_in_flight`` at a time, each recorded in the store
    after its chunks are on disk. Running the same call again after a crash, a kill or an
    error computes only the regions not recorded. The store is marked complete when every
    region is; :func:`open_embedding` warns (or raises) on an incomplete one.

    Parameters
    ----------
    emb
        The result, usually from :func:`xsky.embed` (lazy; a numpy-backed one is written
        as one region). Its dask chunks become the Zarr chunks (irregular chunks are made
        regular first).
    store
        Path of the Zarr store (a directory).
    resume
        Continue an existing, interrupted store of the same computation (its fingerprint:
        model, weights, every option recorded in ``emb.attrs``, the xsky version, the input's
        identity, grid, dates, chunks and the written variables must all match; a
        difference is refused, naming the field). A complete store of the same computation
        is left as it is. The store is written in place, so a plain reader can open a
        store that is still incomplete. With ``resume=False`` the store is written beside
        the target and moved into place when complete, so an interrupted run leaves any
        previous store as it was (and nothing to resume).
    overwrite
        Replace an existing store xsky wrote, starting over (a store xsky did not write is
        never replaced). With ``resume=True`` the previous store is removed first; with
        ``resume=False`` it stays until the new one is complete.
    progress
        Show a progress bar (regions done, km²/h, ETA; ``tqdm`` if installed, else log
        lines on the ``"xsky"`` logger).
    source
        The input's identity when ``emb`` does not carry it (``attrs["input_identity"]``):
        anything JSON-serialisable that changes when the input does, e.g. file names and
        dates, or STAC item ids. Without either, a resume cannot tell two inputs on the same
        grid and dates apart (a warning is logged).
    region_chunks
        Chunks per region along a dim, e.g. ``{"y": 2, "x": 2}`` (default: one chunk per
        region). Larger regions mean fewer records and tasks, and more work lost to a kill.
    max_in_flight
        Regions submitted at a time. On ``distributed``: futures in flight (default: four
        times the cluster's threads, at least 8), topped up as regions complete. On the
        local scheduler: regions per compute (default: eight times the threads, at least
        16), whose tasks run as many at a time as the scheduler has threads. Small waves
        keep memory flat: streaming 4x the area took 1.08x the peak RSS with 16 (2
        threads), 1.35x with 256, at the same speed (``benchmarks/continental.py``).
    client
        A ``distributed.Client`` to run on (default: the active client, if any, else the
        local dask scheduler; ``False``: the local scheduler even where a client is
        active).
    consolidated
        Write consolidated metadata (a plain :func:`xarray.open_zarr` opens it quickly).

    Returns
    -------
    WriteReport
        Regions computed and skipped, completeness, time and area.

    Raises
    ------
    ArgumentError
        The store exists and ``resume`` does not apply (a different fingerprint, a store
        written without a record, or ``resume=False``) and ``overwrite`` is false; or the
        path is something xsky did not write.

    Notes
    -----
    Options that do not change the values are not part of the fingerprint: ``batch_size``,
    ``device`` and ``resources`` of :func:`xsky.embed`, the scheduler and
    ``max_in_flight``; so a run that ran out of memory can be resumed with a smaller batch.
    Regions are the dask blocks (``region_chunks`` groups them), so a resume needs the same
    chunks. Each chunk is written whole (to a temporary file renamed into place) and a
    region is recorded after its chunks, by the same task: a killed process or worker
    never leaves a recorded region with missing chunks. Nothing is flushed to disk with
    ``fsync``, so after a power loss the last regions are best written again
    (``overwrite=True``). Two processes resuming the same store at once do the same work
    twice, but write the same bytes.

    Examples
    --------
    >>> import xsky
    >>> cube = xsky.tutorial.open_dataset("romania").isel(time=slice(0, 2)).chunk(time=1)
    >>> emb = xsky.embed(cube, "test-tiny")
    >>> report = xsky.to_zarr(emb, "out/romania.zarr", progress=False)  # doctest: +SKIP
    >>> report.computed, report.skipped  # doctest: +SKIP
    (2, 0)
    >>> xsky.to_zarr(emb, "out/romania.zarr", progress=False).skipped  # doctest: +SKIP
    2
    """
    if not isinstance(emb, (xr.DataArray, xr.Dataset)):
        raise ArgumentError(f"to_zarr writes an xarray DataArray or Dataset, got "
                            f"{type(emb).__name__}")
    if not isinstance(store, (str, os.PathLike)):
        raise ArgumentError(f"store must be a path (str or os.PathLike), got "
                            f"{type(store).__name__}; remote stores are not supported yet")
    if max_in_flight is not None:
        from .._coerce import positive_int

        max_in_flight = positive_int(max_in_flight, "max_in_flight")
    path = Path(store).expanduser()
    if path.suffix.lower() in (".nc", ".nc4", ".netcdf"):
        raise ArgumentError(f"store {str(path)!r}: to_zarr writes a Zarr store (a directory), "
                            "not NetCDF; give a path ending in .zarr")
    t0 = time.perf_counter()
    job = _Job.build(emb, region_chunks, source)
    if resume:
        return _write_resumable(job, path, overwrite=overwrite, progress=progress,
                                max_in_flight=max_in_flight, client=client,
                                consolidated=consolidated, t0=t0)
    return _write_atomic(job, path, overwrite=overwrite, progress=progress,
                         max_in_flight=max_in_flight, client=client,
                         consolidated=consolidated, t0=t0)


# -- what is written ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """The Dataset to write (regular chunks), its region plan, fingerprint and what the
    record remembers about it."""

    ds: xr.Dataset
    lazy: tuple[str, ...]
    plan: Any  # RegionPlan
    fingerprint: dict[str, Any]
    meta: dict[str, Any]
    areas: np.ndarray | None

    @classmethod
    def build(cls, emb: xr.DataArray | xr.Dataset, region_chunks: Mapping[str, int] | None,
              source: Any) -> _Job:
        from ..io.zarr_regions import (
            embedding_fingerprint,
            plan_regions,
            region_areas_km2,
            spatial_or_none,
        )

        ds = _dataset_to_write(emb)
        ds = _lazy_and_regular(ds)
        lazy = tuple(str(n) for n, v in ds.variables.items()
                     if _is_dask(v.data) and v.ndim > 0)
        lazy = tuple(sorted(lazy, key=lambda n: n not in ds.data_vars))  # data vars first
        if not lazy:
            raise ArgumentError("to_zarr: nothing to write: the result has no array with "
                                "dimensions")
        # cut along the dims every lazy variable has, in the first data variable's order
        main = next((n for n in ds.data_vars if n in lazy), lazy[0])
        dims = [str(d) for d in ds[main].dims if all(d in ds[n].dims for n in lazy)]
        plan = plan_regions(ds.sizes, {d: ds.chunksizes[d] for d in dims}, dims,
                            region_chunks)
        attrs = dict(emb.attrs) if isinstance(emb, xr.DataArray) else _dataset_attrs(emb)
        if source is None and "input_identity" not in attrs:
            log.warning(
                "to_zarr: the input's identity is not known (no source= and no "
                "attrs['input_identity']); a resume checks model, options, grid and dates "
                "but cannot tell this input from another one on the same grid; pass "
                "source=... (e.g. file names, STAC item ids) to make it part of the "
                "fingerprint")
        fingerprint = embedding_fingerprint(ds, attrs, plan, source)
        kind = "dataarray" if isinstance(emb, xr.DataArray) else "dataset"
        meta = {"kind": kind, "name": str(next(iter(ds.data_vars))) if kind == "dataarray"
                else None, "lazy": list(lazy)}
        ydim, xdim = spatial_or_none(ds)
        crs = fingerprint.get("crs")
        areas = region_areas_km2(plan, ds[xdim].values if xdim in ds.coords else None,
                                 ds[ydim].values if ydim in ds.coords else None,
                                 crs, ydim, xdim)
        return cls(ds, lazy, plan, fingerprint, meta, areas)


def _is_dask(data: Any) -> bool:
    import dask.array as da

    return isinstance(data, da.Array)


def _dataset_attrs(ds: xr.Dataset) -> dict[str, Any]:
    out = dict(ds.attrs)
    for name, v in ds.data_vars.items():
        out.update({f"{name}.{k}": a for k, a in v.attrs.items()})
    return out


def _lazy_and_regular(ds: xr.Dataset) -> xr.Dataset:
    """Dask-backed variables whose chunks suit Zarr: all lazy variables share their chunks,
    and each dim's chunk edges fall on a regular Zarr chunk grid (rechunked where they do
    not); 0-d lazy variables are loaded. Sets each lazy variable's Zarr ``chunks``."""
    from ..io.zarr_regions import zarr_chunk

    if not any(_is_dask(v.data) for v in ds.data_vars.values()):
        ds = ds.chunk(dict.fromkeys(ds.dims, -1))  # computed already: one region
    for name, v in list(ds.variables.items()):
        if v.ndim == 0 and _is_dask(v.data):
            ds[name] = ds[name].load()
    lazy = [n for n, v in ds.variables.items() if _is_dask(v.data) and v.ndim > 0]
    first: dict[Any, tuple[int, ...]] = {}
    fix: dict[Any, Any] = {}
    for n in lazy:
        for d, c in zip(ds[n].dims, ds[n].variable.chunks or (), strict=True):
            first.setdefault(d, tuple(c))
            if tuple(c) != first[d]:
                fix[d] = first[d]  # variables disagree: all take the first one's chunks
    for d, c in first.items():
        if zarr_chunk(c) is None:
            fix[d] = max(c)
    if fix:
        log.info("to_zarr: rechunking %s so that chunk edges fall on the Zarr chunk grid",
                 {d: (v if isinstance(v, int) else "as the first variable")
                  for d, v in fix.items()})
        ds = ds.chunk(fix)
    ds = ds.copy()
    for n in lazy:
        var = ds[n].variable
        var.encoding = {k: v for k, v in var.encoding.items()
                        if k not in ("chunks", "preferred_chunks", "shards")}
        var.encoding["chunks"] = tuple(zarr_chunk(c) for c in var.chunks or ())
    return ds


# -- the two ways to write ----------------------------------------------------------------


def _write_resumable(job: _Job, path: Path, *, overwrite: bool, progress: bool,
                     max_in_flight: int | None, client: Any, consolidated: bool,
                     t0: float) -> WriteReport:
    from ..io.store import check_target
    from ..io.zarr_regions import diff_fingerprints, store_state

    state = store_state(path)
    record = state.record
    if state.kind == "foreign" or (state.kind != "missing" and overwrite):
        check_target(path, overwrite=overwrite, what="store")  # refuses what xsky did not write
    if state.kind == "missing":
        pass
    elif overwrite:
        log.warning("to_zarr: overwrite=True: removing the previous store %s", path)
        _remove(path)
        record = None
    elif state.kind == "plain":
        raise ArgumentError(
            f"store {str(path)!r} exists and was written in one go, without a completion "
            "record, so there is nothing to resume; pass overwrite=True to replace it, or "
            "choose another path")
    elif state.kind == "initialising":
        log.info("to_zarr: %s was interrupted before any region was written; starting it "
                 "again", path)
        _remove(path)
        record = None
    else:
        assert record is not None
        diff = diff_fingerprints(record.fingerprint, job.fingerprint)
        if diff:
            raise ArgumentError(_diff_message(path, diff, state.kind))
    if record is None:
        record = _initialise(job, path, consolidated)
        skipped = 0
        todo = list(range(job.plan.n_regions))
    else:
        done = record.done()
        todo = [int(i) for i in np.flatnonzero(~done)]
        skipped = int(done.sum())
        if not todo and state.kind == "complete":  # nothing to do, nothing to write
            return _report(job, path, todo, 0, skipped, True, t0)
        if todo:
            log.info("to_zarr: resuming %s: %d of %d regions already complete", path,
                     skipped, job.plan.n_regions)
    computed = _run(job, path, record, todo, skipped, progress=progress,
                    max_in_flight=max_in_flight, client=client,
                    hint="run the same to_zarr again (resume=True, or `xsky embed ... "
                         "--resume`) to compute only the missing regions")
    complete = _finish(path, record)
    return _report(job, path, todo, computed, skipped, complete, t0)


def _write_atomic(job: _Job, path: Path, *, overwrite: bool, progress: bool,
                  max_in_flight: int | None, client: Any, consolidated: bool,
                  t0: float) -> WriteReport:
    from ..io.store import atomic_store
    from ..io.zarr_regions import store_state

    if not overwrite and store_state(path).kind == "incomplete":
        raise ArgumentError(
            f"store {str(path)!r} exists and is incomplete (an interrupted run); pass "
            "resume=True (--resume) to continue it, or overwrite=True (--overwrite) to "
            "start over")
    todo = list(range(job.plan.n_regions))
    with atomic_store(path, overwrite=overwrite, what="store") as tmp:
        record = _initialise(job, tmp, consolidated)
        computed = _run(job, tmp, record, todo, 0, progress=progress,
                        max_in_flight=max_in_flight, client=client,
                        hint="the previous store, if any, is unchanged (resume=True "
                             "writes in place, so that a run can be resumed)")
        if not _finish(tmp, record):
            raise DataError(f"not every region of {str(path)!r} was written")
    return _report(job, path, todo, computed, 0, True, t0)


def _report(job: _Job, path: Path, todo: Sequence[int], computed: int, skipped: int,
            complete: bool, t0: float) -> WriteReport:
    area = None
    if job.areas is not None:
        area = float(job.areas[list(todo)].sum()) if todo else 0.0
    rep = WriteReport(str(path), job.plan.n_regions, computed, skipped, complete,
                      time.perf_counter() - t0, area)
    log.info("to_zarr: %s", rep)
    return rep


def _diff_message(path: Path, diff: Sequence[tuple[str, Any, Any]], kind: str) -> str:
    field, a, b = diff[0]
    others = [d[0] for d in diff[1:]]
    more = f" (and {len(others)} more: {', '.join(others[:6])})" if others else ""
    return (f"store {str(path)!r} ({kind}) was written by a different computation: "
            f"{field!r} is {_short(a)} there but {_short(b)} now{more}; resume with the "
            "same inputs and options, or pass overwrite=True (--overwrite) to start over")


def _short(value: Any, n: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _initialise(job: _Job, path: Path, consolidated: bool) -> Any:
    """Metadata, coordinates and the record; no chunk of a lazy variable."""
    from ..io import store as _store
    from ..io.zarr_regions import STATUS_ATTR, CompletionRecord

    ds = job.ds.copy()
    # marked as xsky's and as incomplete in the same first write: a store killed right
    # after it is recognised (and started again), never taken for a complete one
    ds.attrs = {**ds.attrs, _store.MARKER: _store._MARK_TEXT, STATUS_ATTR: "incomplete"}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Consolidated metadata is currently not part")
        ds.to_zarr(str(path), mode="w-", compute=False, consolidated=False)
        record = CompletionRecord.create(path, job.plan, job.fingerprint, uuid.uuid4().hex,
                                         job.meta)
        if consolidated:
            import zarr

            zarr.consolidate_metadata(str(path))
    return record


def _finish(path: Path, record: Any) -> bool:
    from ..io.zarr_regions import mark_status

    if record.done().all():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Consolidated metadata is currently not part")
            mark_status(path, "complete")
        return True
    return False


# -- computing the regions ----------------------------------------------------------------


class _RegionGraph:
    """The write tasks of all regions in one graph, built from the lazy variables' block
    keys (each variable's graph is built once; slicing the arrays per region would build
    and optimise the whole graph once per region)."""

    def __init__(self, job: _Job, path: Path, record: Any) -> None:
        from dask.highlevelgraph import HighLevelGraph

        from ..io.zarr_regions import _VALUE_ENCODING, RegionTarget

        self.prefix = f"xsky-write-{uuid.uuid4().hex[:12]}-"  # a rerun never meets an erred key
        variables = tuple(
            (n, tuple(map(str, job.ds[n].dims)), (),
             tuple((k, v) for k, v in job.ds[n].encoding.items() if k in _VALUE_ENCODING))
            for n in job.lazy)
        self.target = RegionTarget(str(path), record.run_id, record.plan, variables,
                                   self.prefix)
        arrays = [job.ds[n].data for n in job.lazy]
        self.base = HighLevelGraph.merge(*[a.__dask_graph__() for a in arrays])
        self.keys = [a.__dask_keys__() for a in arrays]
        # per variable and dim: block edges, to find the blocks of a region
        self.edges = [[np.cumsum((0, *c)) for c in a.chunks] for a in arrays]
        self.plan = record.plan

    def key(self, index: int) -> str:
        return f"{self.prefix}{index}"

    def _blocks(self, v: int, index: int) -> Any:
        """The nested list of block keys of variable ``v`` in region ``index``."""
        dims = self.target.variables[v][1]
        sl = self.plan.slices(index)
        ranges = []
        for d, e in zip(dims, self.edges[v], strict=True):
            if d in sl:
                lo = int(np.searchsorted(e, sl[d].start))
                hi = int(np.searchsorted(e, sl[d].stop))
                ranges.append(range(lo, hi))
            else:
                ranges.append(range(len(e) - 1))

        def nest(keys: Any, depth: int) -> Any:
            if depth == len(ranges):
                return keys
            return [nest(keys[i], depth + 1) for i in ranges[depth]]

        return nest(self.keys[v], 0)

    def tasks(self, indices: Sequence[int]) -> list[Any]:
        """Delayed write tasks of these regions (a graph culled to them)."""
        from dask.delayed import Delayed
        from dask.highlevelgraph import HighLevelGraph

        from ..io.zarr_regions import write_blocks

        layer = {self.key(i): (write_blocks, self.target, i,
                               *[self._blocks(v, i) for v in range(len(self.keys))])
                 for i in indices}
        name = f"{self.prefix}wave-{indices[0]}"
        deps = set(self.base.layers)
        hlg = HighLevelGraph({**self.base.layers, name: _materialized(layer)},
                             {**self.base.dependencies, name: deps})
        keys = list(layer)
        culled = hlg.cull(set(keys))
        top = next(n for n in culled.layers if n.startswith(name))  # cull renames layers
        return [Delayed(k, culled, layer=top) for k in keys]


def _materialized(layer: dict[str, Any]) -> Any:
    from dask.highlevelgraph import MaterializedLayer

    return MaterializedLayer(layer)


def _run(job: _Job, path: Path, record: Any, todo: Sequence[int], skipped: int, *,
         progress: bool, max_in_flight: int | None, client: Any, hint: str) -> int:
    if not todo:
        return 0
    client = None if client is False else client if client is not None else _active_client()
    log.info("to_zarr: writing %d region(s) of %s into %s%s", len(todo), list(job.lazy),
             path, " on a distributed cluster" if client is not None else "")
    bar = _Progress(job.plan.n_regions, skipped, job.areas, enabled=progress,
                    desc=f"xsky.to_zarr {path.name}")
    try:
        graph = _RegionGraph(job, path, record)
        if client is not None:
            _run_distributed(graph, todo, bar, max_in_flight, client)
        else:
            _run_local(graph, todo, bar, max_in_flight)
    except BaseException:
        log.error("to_zarr: stopped after %d of %d region(s) of %s; %s", bar.n,
                  job.plan.n_regions, path, hint)
        raise
    finally:
        bar.close()
    return len(todo)


def _run_local(graph: _RegionGraph, todo: Sequence[int], bar: _Progress,
               max_in_flight: int | None) -> None:
    import dask
    from dask.callbacks import Callback

    wave = max_in_flight or max(16, 8 * _local_threads())
    prefix = graph.prefix

    def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if isinstance(key, str) and key.startswith(prefix):
            bar.advance(int(key[len(prefix):]))

    from ..io.zarr_regions import forget_call, stop_writes

    try:
        for start in range(0, len(todo), wave):
            tasks = graph.tasks(todo[start:start + wave])
            with Callback(posttask=posttask):
                dask.compute(*tasks)
    except BaseException:
        # dask's threads may still be running tasks of this compute: none of them may
        # record a region after this call has returned (the call stays stopped)
        left = stop_writes(prefix)
        if left:
            log.warning("to_zarr: %d region write(s) still running after the error", left)
        raise
    forget_call(prefix)


def _run_distributed(graph: _RegionGraph, todo: Sequence[int], bar: _Progress,
                     max_in_flight: int | None, client: Any) -> None:
    from distributed import as_completed

    limit = max_in_flight or max(8, 4 * sum(client.nthreads().values()))
    pending = deque(todo)
    batch = max(1, limit // 2)
    ac = as_completed()
    in_flight = 0

    def submit(n: int) -> int:
        idx = [pending.popleft() for _ in range(min(n, len(pending)))]
        if idx:
            ac.update(client.compute(graph.tasks(idx)))
        return len(idx)

    in_flight += submit(limit)
    try:
        for fut in ac:
            bar.advance(int(fut.result()))
            in_flight -= 1
            if pending and in_flight <= limit - batch:
                in_flight += submit(batch)
    except BaseException:
        for f in list(ac.futures):
            f.cancel()
        raise


def _local_threads() -> int:
    import dask

    n = dask.config.get("num_workers", None)
    return int(n) if n else (os.cpu_count() or 1)


def _active_client() -> Any:
    """The active ``distributed`` client, if distributed is in use in this process."""
    mod = sys.modules.get("distributed")
    if mod is None:
        return None
    try:
        return mod.default_client()
    except ValueError:
        return None


class _Progress:
    """Regions done, km²/h and ETA: a tqdm bar, or log lines without tqdm."""

    def __init__(self, total: int, initial: int, areas: np.ndarray | None, *, enabled: bool,
                 desc: str) -> None:
        self.total, self.n, self.areas = total, initial, areas
        self.start_n = initial
        self.km2 = 0.0
        self.t0 = time.perf_counter()
        self.last_log = self.t0
        self.bar: Any = None
        self.enabled = enabled
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, initial=initial, desc=desc, unit="region",
                                file=sys.stderr, dynamic_ncols=True, mininterval=0.5)

    def advance(self, index: int) -> None:
        self.n += 1
        if self.areas is not None:
            self.km2 += float(self.areas[index])
        if self.bar is not None:
            rate = self.rate()
            if rate is not None:
                self.bar.set_postfix_str(f"{rate:,.0f} km²/h", refresh=False)
            self.bar.update(1)
        elif self.enabled and (time.perf_counter() - self.last_log > 10 or
                               self.n == self.total):
            self.last_log = time.perf_counter()
            log.info("to_zarr: %s", self.line())

    def rate(self) -> float | None:
        dt = time.perf_counter() - self.t0
        if self.areas is None or dt <= 0:
            return None
        return self.km2 / dt * 3600.0

    def line(self) -> str:
        dt = time.perf_counter() - self.t0
        new = self.n - self.start_n
        eta = (self.total - self.n) * dt / new if new else math.nan
        rate = self.rate()
        r = f", {rate:,.0f} km²/h" if rate is not None else ""
        e = f", ETA {eta:.0f} s" if math.isfinite(eta) else ""
        return f"{self.n}/{self.total} regions ({100 * self.n / self.total:.0f}%){r}{e}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- reading ------------------------------------------------------------------------------


def open_embedding(
    store: str | os.PathLike[str],
    *,
    incomplete: Literal["warn", "raise"] = "warn",
    chunks: Any = None,
) -> xr.DataArray | xr.Dataset:
    """Open a store written by :func:`to_zarr` (or ``xsky embed``), lazily.

    Parameters
    ----------
    store
        Path of the Zarr store.
    incomplete
        What to do when the store lacks regions (its run was interrupted): ``"warn"``
        (an :class:`IncompleteStoreWarning` with the missing fraction; the regions not
        recorded read as NaN, also where some of their chunks were written) or ``"raise"``
        (a :class:`DataError`).
    chunks
        Dask chunks (default: the store's chunks).

    Returns
    -------
    xarray.DataArray or xarray.Dataset
        What :func:`to_zarr` was given: the ``embedding`` DataArray (with ``valid_fraction``,
        CRS and provenance attrs) or a Dataset. Nothing is computed.

    Raises
    ------
    ArgumentError
        No store at ``store``; ``incomplete`` is not ``"warn"`` or ``"raise"``.
    DataError
        ``incomplete="raise"`` and the store is incomplete.

    Examples
    --------
    >>> emb = xsky.open_embedding("out/romania.zarr")  # doctest: +SKIP
    >>> emb.dims  # doctest: +SKIP
    ('time', 'y', 'x', 'feature')
    """
    from ..io.store import has_consolidated_metadata
    from ..io.zarr_regions import store_state

    if incomplete not in ("warn", "raise"):
        raise ArgumentError(f"incomplete must be 'warn' or 'raise', got {incomplete!r}")
    path = Path(store).expanduser()
    state = store_state(path)
    if state.kind == "missing":
        raise ArgumentError(f"no store at {str(path)!r}; write one with xsky.to_zarr(...) "
                            "or `xsky embed`")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Object at _xsky is not recognized")
        ds = xr.open_zarr(str(path), decode_coords="all", consolidated=has_consolidated_metadata(path),
                          chunks={} if chunks is None else chunks)
    for k in ("xsky_store", "xsky_status"):
        ds.attrs.pop(k, None)
    for v in ds.data_vars.values():  # as xsky.embed sets it (decode_coords moved it)
        if "grid_mapping" in v.encoding and "grid_mapping" not in v.attrs:
            v.attrs["grid_mapping"] = v.encoding["grid_mapping"]
    record = state.record
    meta = record.meta if record is not None else {}
    if state.kind in ("incomplete", "initialising"):
        done = record.done() if record is not None else None
        n = record.plan.n_regions if record is not None else 0
        missing = n - int(done.sum()) if done is not None else n
        frac = missing / n if n else 1.0
        msg = (f"store {str(path)!r} is incomplete: {missing} of {n} regions "
               f"({100 * frac:.1f}%) are missing (an interrupted run); rerun the same "
               "xsky.to_zarr(...) (resume=True) or `xsky embed ... --resume` to complete it")
        if incomplete == "raise":
            raise DataError(msg)
        warnings.warn(msg + "; the missing regions read as NaN", IncompleteStoreWarning,
                      stacklevel=2)
        if record is not None and done is not None:
            ds = _mask_missing(ds, record, done)
    from ..io.conventions import dequantize, is_quantized

    if is_quantized(ds):  # int8 with per-feature scale and offset: float32 again, lazily
        return dequantize(ds)
    if meta.get("kind") == "dataarray" and meta.get("name") in ds.data_vars:
        return ds[meta["name"]]
    if "embedding" in ds.data_vars and len(ds.data_vars) == 1:
        return ds["embedding"]
    return ds


def _mask_missing(ds: xr.Dataset, record: Any, done: np.ndarray) -> xr.Dataset:
    """NaN in the regions not recorded, lazily (a region's chunks written before the
    interruption are masked too: a region counts only once it is recorded)."""
    import dask.array as da

    plan = record.plan
    flags = done.reshape(plan.grid)
    chunks = tuple(tuple(int(v) for v in np.diff(b)) for b in plan.bounds)

    def block(_: np.ndarray, block_info: Any = None) -> np.ndarray:
        info = block_info[None]
        return np.full(info["chunk-shape"], bool(flags[tuple(info["chunk-location"])]))

    mask = da.empty(plan.shape, chunks=chunks, dtype=bool).map_blocks(block, dtype=bool)
    keep = xr.DataArray(mask, dims=plan.dims)
    out = ds.copy()
    for n in record.meta.get("lazy", []):
        if n in out.variables:  # a data variable or a coordinate (valid_fraction)
            masked = out[n].where(keep)
            out = out.assign_coords({n: masked}) if n in out.coords else out.assign({n: masked})
    return out
