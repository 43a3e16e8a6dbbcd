"""Region-wise Zarr writing: the region plan, the completion record and the fingerprint.

A result store is written in *regions*: rectangles of whole Zarr chunks along the dims that
every computed variable shares (``time``, ``y``, ``x`` for an embedding; a region spans the
whole ``feature`` axis). Regions never share a chunk, so each can be computed and written on
its own, in any order, by any process, and written again with the same bytes.

The store records which regions are on disk in a small Zarr group of its own,
``_xsky`` (:data:`RECORD_GROUP`):

- its attributes hold the region plan and the **fingerprint** of the computation (model,
  weights, options, preprocessing, xsky version, input identity, grid, dates, chunks and
  the written variables), written once before any region;
- the array ``_xsky/regions_done`` holds one flag per region, **one chunk per region**. A
  region's flag is set only after all its chunks are written, by the same task; a chunk is
  written whole (local Zarr stores write each chunk to a temporary file and rename it into
  place), so a killed run leaves every region either recorded with all its chunks, or
  unrecorded (and then written again on resume). Setting a flag never reads or rewrites
  another region's flag, so any number of workers record concurrently without a lock.

The root attribute ``xsky_status`` (:data:`STATUS_ATTR`) is ``"incomplete"`` from the start
and becomes ``"complete"`` when every region is recorded. A plain :func:`xarray.open_zarr`
still opens an incomplete store; the regions not yet written read as the fill value (NaN),
also in ``valid_fraction``, which is never NaN where a region was written (0 where the input
had no valid pixel).

This module is pure bookkeeping (numpy, xarray metadata, zarr); it reads no pixel values.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

__all__ = [
    "DONE_ARRAY",
    "RECORD_FORMAT",
    "RECORD_GROUP",
    "STATUS_ATTR",
    "CompletionRecord",
    "RegionPlan",
    "RegionTarget",
    "StoreState",
    "diff_fingerprints",
    "embedding_fingerprint",
    "input_identity",
    "mark_status",
    "plan_regions",
    "region_areas_km2",
    "stop_writes",
    "store_state",
    "write_blocks",
    "write_region",
    "zarr_chunk",
]

#: the store's own group with the region plan, the fingerprint and the completion flags
RECORD_GROUP = "_xsky"
#: one uint8 flag per region (1 = every chunk of the region is on disk), one chunk each
DONE_ARRAY = "regions_done"
#: root attribute: ``"incomplete"`` until every region is recorded, then ``"complete"``
STATUS_ATTR = "xsky_status"
#: version of the record layout (attributes of :data:`RECORD_GROUP`)
RECORD_FORMAT = 1


# -- the region plan ----------------------------------------------------------------------


@dataclass(frozen=True)
class RegionPlan:
    """Regions of whole Zarr chunks tiling the arrays along ``dims``.

    ``chunks[i]`` is the (regular) Zarr chunk size along ``dims[i]``; ``bounds[i]`` the
    region edges there (``0``, multiples of the chunk size, the length). Regions follow the
    dask blocks, so each region's tasks are its own; they are numbered in C order over
    ``grid``.
    """

    dims: tuple[str, ...]
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    bounds: tuple[tuple[int, ...], ...]

    @property
    def grid(self) -> tuple[int, ...]:
        """Number of regions along each dim."""
        return tuple(len(b) - 1 for b in self.bounds)

    @property
    def n_regions(self) -> int:
        return int(np.prod(self.grid, dtype=np.int64))

    def slices(self, index: int) -> dict[str, slice]:
        """The region's extent along each of ``dims``."""
        if not 0 <= index < self.n_regions:
            raise IndexError(f"region {index} out of range 0..{self.n_regions - 1}")
        pos = np.unravel_index(index, self.grid)
        return {d: slice(b[int(p)], b[int(p) + 1])
                for d, p, b in zip(self.dims, pos, self.bounds, strict=True)}

    def to_json(self) -> dict[str, Any]:
        return {"dims": list(self.dims), "shape": list(self.shape), "chunks": list(self.chunks),
                "bounds": [list(b) for b in self.bounds]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RegionPlan:
        return cls(tuple(d["dims"]), tuple(int(v) for v in d["shape"]),
                   tuple(int(v) for v in d["chunks"]),
                   tuple(tuple(int(v) for v in b) for b in d["bounds"]))


def zarr_chunk(chunks: Sequence[int]) -> int | None:
    """The Zarr chunk size that puts a chunk edge at every edge of these dask ``chunks``
    (their greatest common divisor, the last chunk aside), or ``None`` when that is below
    half the largest dask chunk (rechunk to regular chunks instead).

    Examples
    --------
    >>> zarr_chunk((512, 512, 530)), zarr_chunk((8, 8, 3)), zarr_chunk((9, 8, 8))
    (512, 8, None)
    """
    cs = [int(c) for c in chunks]
    if len(cs) == 1:
        return max(cs[0], 1)
    g = math.gcd(*cs[:-1])
    return g if 2 * g >= max(cs[:-1]) else None


def plan_regions(sizes: Mapping[Any, int], chunks: Mapping[Any, Sequence[int]],
                 dims: Sequence[str], per_region: Mapping[str, int] | None = None
                 ) -> RegionPlan:
    """Regions along ``dims`` of arrays with these ``sizes`` and dask ``chunks``.

    A region is ``per_region[dim]`` dask blocks along each dim (default 1: one region per
    block); the dask chunks must suit :func:`zarr_chunk`.

    Examples
    --------
    >>> plan = plan_regions({"y": 10, "x": 7}, {"y": (4, 6), "x": (7,)}, ["y", "x"])
    >>> plan.chunks, plan.grid, plan.slices(1)
    ((4, 7), (2, 1), {'y': slice(4, 10, None), 'x': slice(0, 7, None)})
    """
    from ..exceptions import ArgumentError

    per = dict(per_region or {})
    unknown = sorted(set(per) - set(dims))
    if unknown:
        raise ArgumentError(
            f"region_chunks names dimension(s) {unknown} that regions are not cut along; "
            f"use {sorted(dims)}"
        )
    for d, k in per.items():
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ArgumentError(f"region_chunks[{d!r}] must be a positive int, got {k!r}")
    zc, bounds = [], []
    for d in dims:
        cs = tuple(int(c) for c in chunks[d])
        z = zarr_chunk(cs)
        if z is None:
            raise ValueError(f"chunks {cs} of {d!r} need rechunking first")
        edges = [0, *np.cumsum(cs).tolist()]
        k = int(per.get(d, 1))
        b = edges[::k] if (len(edges) - 1) % k == 0 else [*edges[::k], edges[-1]]
        zc.append(z)
        bounds.append(tuple(int(v) for v in b))
    return RegionPlan(tuple(dims), tuple(int(sizes[d]) for d in dims), tuple(zc),
                      tuple(bounds))


def region_areas_km2(plan: RegionPlan, x: np.ndarray | None, y: np.ndarray | None,
                     crs: Any, ydim: str | None, xdim: str | None) -> np.ndarray | None:
    """Ground area (km²) each region adds to the footprint, or ``None`` when unknown.

    A region's area is its footprint times the share of the other dims it covers (so a
    per-date region of one of 10 dates counts a tenth of its footprint): the sum over all
    regions is the footprint of the whole array. Pixel areas from the coordinate spacing,
    in a projected CRS's linear unit or, in degrees, on a sphere of radius 6371 km.
    """
    if crs is None or x is None or y is None or x.size < 2 or y.size < 2 or \
            ydim not in plan.dims or xdim not in plan.dims:
        return None
    try:
        from pyproj import CRS

        c = CRS.from_user_input(crs)
        dx, dy = abs(float(x[1] - x[0])), abs(float(y[1] - y[0]))
        if c.is_geographic:
            k = math.pi / 180 * 6371.0
            row_km2 = (dx * k) * (dy * k) * np.cos(np.deg2rad(np.asarray(y, float)))
        else:
            f = float(c.axis_info[0].unit_conversion_factor) / 1000.0  # unit -> km
            row_km2 = np.full(y.size, dx * dy * f * f)
    except Exception:  # an unusual CRS: progress shows regions only
        return None
    out = np.empty(plan.n_regions)
    other = float(np.prod([n for d, n in zip(plan.dims, plan.shape, strict=True)
                           if d not in (ydim, xdim)], dtype=float)) or 1.0
    for i in range(plan.n_regions):
        sl = plan.slices(i)
        rest = float(np.prod([sl[d].stop - sl[d].start for d in plan.dims
                              if d not in (ydim, xdim)], dtype=float)) or 1.0
        ys, xs = sl[ydim], sl[xdim]
        out[i] = row_km2[ys].sum() * (xs.stop - xs.start) * rest / other
    return out


# -- the fingerprint ----------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """A JSON-stable form of an attribute value (numpy scalars and arrays as lists)."""
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _digest(values: np.ndarray) -> str:
    a = np.ascontiguousarray(values)
    if a.dtype.kind in "OUS":
        data = json.dumps([str(v) for v in a.ravel().tolist()]).encode()
    else:
        data = a.tobytes()
    return hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + data).hexdigest()[:16]


#: encoding keys that change the stored values (others, e.g. compressors, do not)
_VALUE_ENCODING = ("dtype", "scale_factor", "add_offset", "_FillValue", "missing_value",
                   "units", "calendar")


def embedding_fingerprint(ds: xr.Dataset, attrs: Mapping[str, Any], plan: RegionPlan,
                          source: Any = None) -> dict[str, Any]:
    """What identifies the computation that writes ``ds``: fields compared on resume.

    Parameters
    ----------
    ds
        The Dataset to be written (lazy; only coordinates and metadata are read).
    attrs
        The provenance of the result (an embedding's ``attrs``: model, weights, options,
        normalisation, xsky version, ...); each becomes a field of its own.
    plan
        The region plan (chunks and regions must match to resume).
    source
        The input's identity (source files, STAC items, ...), e.g. from
        :func:`input_identity`, or ``None`` when unknown.
    """
    fp: dict[str, Any] = {}
    for k, v in attrs.items():
        # grid_mapping names a coordinate; batch_size changes no value (up to rounding)
        if k in ("grid_mapping", "batch_size"):
            continue
        fp[str(k)] = _jsonable(v)
    fp["input"] = _jsonable(source)
    fp["shape"] = {str(d): int(n) for d, n in ds.sizes.items()}
    fp["crs"] = _crs_text(ds)
    ydim, xdim = spatial_or_none(ds)
    if ydim is not None and xdim is not None:
        xv, yv = ds[xdim].values, ds[ydim].values
        fp["bbox"] = [_jsonable(v) for v in (xv.min(), yv.min(), xv.max(), yv.max())]
    if "time" in ds.dims and "time" in ds.coords:
        tv = ds["time"].values
        fp["time"] = {"n": int(tv.size), "first": str(tv.min()) if tv.size else None,
                      "last": str(tv.max()) if tv.size else None}
    fp["coords"] = {str(d): _digest(ds[d].values) for d in ds.dims if d in ds.coords}
    fp["chunks"] = dict(zip(plan.dims, plan.chunks, strict=True))
    fp["regions"] = {d: list(b) for d, b in zip(plan.dims, plan.bounds, strict=True)}
    fp["variables"] = {
        str(name): {"dims": list(map(str, v.dims)), "dtype": str(v.dtype),
                    **{k: _jsonable(v.encoding[k]) for k in _VALUE_ENCODING if k in v.encoding}}
        for name, v in ds.variables.items()
    }
    # a JSON round trip, so a stored fingerprint and a fresh one compare equal
    out: dict[str, Any] = json.loads(json.dumps(fp, sort_keys=True))
    return out


def spatial_or_none(ds: xr.Dataset) -> tuple[str | None, str | None]:
    """The ``(y, x)`` dims of ``ds``, or ``(None, None)`` when it has none (no error)."""
    from ..geo import spatial_dims

    try:
        return spatial_dims(ds)
    except Exception:
        return None, None


def _crs_text(ds: xr.Dataset) -> str | None:
    for cand in ("spatial_ref", "crs"):
        if cand in ds.variables:
            a = ds[cand].attrs
            wkt = a.get("crs_wkt") or a.get("spatial_ref")
            if wkt:
                return str(wkt)
    return None


def diff_fingerprints(stored: Mapping[str, Any], now: Mapping[str, Any]
                      ) -> list[tuple[str, Any, Any]]:
    """Fields that differ, as ``(name, stored, now)``; ``name`` goes one level into
    dict-valued fields (``"coords.x"``, ``"input.bbox"``)."""
    out: list[tuple[str, Any, Any]] = []
    for key in sorted(set(stored) | set(now)):
        a, b = stored.get(key), now.get(key)
        if a == b:
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    out.append((f"{key}.{sub}", a.get(sub), b.get(sub)))
        else:
            out.append((key, a, b))
    return out


def input_identity(obj: Any) -> dict[str, Any] | None:
    """An explicit, process-independent identity of an input cube, or ``None``.

    Reads metadata only: the files the variables were opened from (``encoding["source"]``,
    with size and modification time) and STAC item ids recorded in ``attrs["stac_items"]``
    (of the object or its variables). A dask token is no substitute: lazily opened files
    are tokenised differently in every process.

    Examples
    --------
    >>> import xsky
    >>> ident = input_identity(xsky.tutorial.open_dataset("romania"))
    >>> [f["name"] for f in ident["files"]]
    ['romania_s2_10m.nc']
    """
    files: dict[str, dict[str, Any]] = {}
    items: set[str] = set()

    def visit(o: Any) -> None:
        if isinstance(o, xr.DataTree):
            for node in o.subtree:
                visit(node.to_dataset())
            return
        variables = o.variables.values() if isinstance(o, xr.Dataset) else [o.variable]
        for a in (o.attrs, *(v.attrs for v in variables)):
            ids = a.get("stac_items")
            if ids is not None:
                items.update(json.loads(ids) if isinstance(ids, str) else map(str, ids))
        for v in variables:
            src = v.encoding.get("source")
            if isinstance(src, (str, os.PathLike)) and str(src) not in files:
                p = Path(src)
                entry: dict[str, Any] = {"name": p.name, "path": str(p.resolve())}
                try:
                    st = p.stat()
                    entry.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
                except OSError:
                    pass  # a URL or a removed file: its name and path only
                files[str(src)] = entry

    visit(obj)
    if not files and not items:
        return None
    out: dict[str, Any] = {}
    if files:
        out["files"] = sorted(files.values(), key=lambda e: e["path"])
    if items:
        out["stac_items"] = sorted(items)
    return out


# -- the record in the store --------------------------------------------------------------


@dataclass(frozen=True)
class StoreState:
    """What is at a store path: ``kind`` is ``"missing"``, ``"foreign"`` (not written by
    xsky), ``"plain"`` (an xsky store written in one go, without a record),
    ``"initialising"`` (an interrupted start: marked incomplete, no record yet),
    ``"incomplete"`` or ``"complete"``."""

    kind: str
    record: CompletionRecord | None = None


def store_state(path: str | os.PathLike[str]) -> StoreState:
    """Classify the store at ``path`` (reads metadata only)."""
    from .store import MARKER

    p = Path(path)
    if not p.exists() and not p.is_symlink():
        return StoreState("missing")
    import zarr

    try:
        root = zarr.open_group(str(p), mode="r")
        attrs = dict(root.attrs)
    except Exception:
        return StoreState("foreign")
    if MARKER not in attrs:
        return StoreState("foreign")
    status = attrs.get(STATUS_ATTR)
    if status is None:
        return StoreState("plain")
    record = CompletionRecord.open(p)
    if record is None:
        return StoreState("initialising")
    return StoreState("complete" if status == "complete" else "incomplete", record)


@dataclass(frozen=True)
class CompletionRecord:
    """The region plan, fingerprint and completion flags of a store (see module docs)."""

    path: str
    plan: RegionPlan
    fingerprint: dict[str, Any]
    run_id: str
    meta: dict[str, Any]

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> CompletionRecord | None:
        import zarr

        try:
            g = zarr.open_group(str(path), path=RECORD_GROUP, mode="r")
            a: dict[str, Any] = dict(g.attrs)
            if int(a.get("format", 0)) != RECORD_FORMAT or DONE_ARRAY not in g:
                return None
            return cls(str(path), RegionPlan.from_json(a["plan"]), dict(a["fingerprint"]),
                       str(a["run_id"]), dict(a.get("meta", {})))
        except Exception:
            return None

    @classmethod
    def create(cls, path: str | os.PathLike[str], plan: RegionPlan, fingerprint: Mapping[str, Any],
               run_id: str, meta: Mapping[str, Any] | None = None) -> CompletionRecord:
        """Write the record group: the plan and fingerprint, and all flags unset (no chunk)."""
        import dask.array as da

        attrs = {"format": RECORD_FORMAT, "plan": plan.to_json(),
                 "fingerprint": dict(fingerprint), "run_id": run_id, "meta": dict(meta or {}),
                 "description": "xsky completion record: one flag per region of whole "
                                "chunks, set after the region's chunks were written"}
        flags = xr.Dataset(
            {DONE_ARRAY: (("xsky_region",), da.zeros(plan.n_regions, dtype="u1", chunks=1))},
            attrs=attrs)
        flags.to_zarr(str(path), group=RECORD_GROUP, mode="a", compute=False,
                      consolidated=False, encoding={DONE_ARRAY: {"chunks": (1,)}})
        return cls(str(path), plan, dict(fingerprint), run_id, dict(meta or {}))

    def done(self) -> np.ndarray:
        """Boolean flag per region (reads the flags only)."""
        import zarr

        arr = zarr.open_array(self.path, path=f"{RECORD_GROUP}/{DONE_ARRAY}", mode="r")
        return np.asarray(arr[:]) == 1

    def missing(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(~self.done())]


def mark_status(path: str | os.PathLike[str], status: str) -> None:
    """Set the root ``xsky_status`` (and refresh consolidated metadata, if any)."""
    import zarr

    from .store import mark

    zarr.open_group(str(path), mode="r+").attrs[STATUS_ATTR] = status
    mark(path)  # keeps the marker, consolidates again where the store is consolidated


# -- writing a region (inside a task) -----------------------------------------------------


@dataclass(frozen=True)
class RegionTarget:
    """What a region task needs to write: the store, and per variable its name, dims and the
    CF encoding of its values (small and picklable; no array data, no open handles)."""

    path: str
    run_id: str
    plan: RegionPlan
    variables: tuple[tuple[str, tuple[str, ...], tuple[tuple[str, Any], ...],
                           tuple[tuple[str, Any], ...]], ...]
    call: str = ""  # the writing call, for :func:`stop_writes`

    def selection(self, index: int, dims: Sequence[str]) -> tuple[slice, ...]:
        sl = self.plan.slices(index)
        return tuple(sl.get(d, slice(None)) for d in dims)

    def __dask_tokenize__(self) -> Any:
        return ("xsky-region-target", self.path, self.run_id)


@functools.lru_cache(maxsize=256)
def _open_array(path: str, name: str, run_id: str) -> Any:
    """A writable Zarr array, opened once per process and store generation (``run_id``)."""
    import zarr

    return zarr.open_array(path, path=name, mode="r+")


def write_region(target: RegionTarget, index: int, *blocks: np.ndarray) -> int:
    """Write one region's blocks (one per variable of ``target``, in order), then record it.

    The flag is set only after every chunk of the region was written: a task killed in
    between leaves the region unrecorded, and a resumed run writes it again.
    """
    for (name, dims, attrs, encoding), block in zip(target.variables, blocks, strict=True):
        var = xr.Variable(dims, np.asarray(block), dict(attrs), dict(encoding))
        data = _encoded(var, name)
        _open_array(target.path, name, target.run_id)[target.selection(index, dims)] = data
    _open_array(target.path, f"{RECORD_GROUP}/{DONE_ARRAY}", target.run_id)[index] = 1
    return index


_LOCK = threading.Lock()
_ACTIVE: collections.Counter[str] = collections.Counter()
_STOPPED: set[str] = set()


def write_blocks(target: RegionTarget, index: int, *nested: Any) -> int:
    """:func:`write_region` from each variable's blocks (nested lists, as dask hands the
    blocks of a region to a task); nothing (``-1``) once :func:`stop_writes` was called for
    the task's call in this process."""
    from dask.array.core import concatenate3

    with _LOCK:
        if target.call in _STOPPED:
            return -1
        _ACTIVE[target.call] += 1
    try:
        return write_region(target, index, *(concatenate3(n) if isinstance(n, list) else n
                                             for n in nested))
    finally:
        with _LOCK:
            _ACTIVE[target.call] -= 1


def stop_writes(call: str, timeout: float = 60.0) -> int:
    """Let no more region of ``call`` start writing in this process, and wait (up to
    ``timeout`` s) for those writing now: after a failed local compute, dask's threads may
    still run tasks, and a region must not be recorded behind the caller's back. Returns
    the number still writing at the timeout (0 normally)."""
    import time

    with _LOCK:
        _STOPPED.add(call)
    deadline = time.monotonic() + timeout
    while True:
        with _LOCK:
            n = _ACTIVE[call]
        if n == 0 or time.monotonic() > deadline:
            return n
        time.sleep(0.01)


def forget_call(call: str) -> None:
    """Drop the bookkeeping of a finished call."""
    with _LOCK:
        _STOPPED.discard(call)
        _ACTIVE.pop(call, None)


def _encoded(var: xr.Variable, name: str) -> np.ndarray:
    """The values as the store holds them (CF encoding: scale/offset, fill value, dtype)."""
    from xarray.backends.zarr import encode_zarr_variable

    enc = encode_zarr_variable(var, name=name)
    return np.asarray(enc.values)

