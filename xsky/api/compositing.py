"""``xsky.composite``: an irregular, cloudy time series as one composite per period, lazily.

The steps read top to bottom: the periods (from a pandas frequency or explicit edges, shared
by every node of a DataTree) → per object, the observations' period codes (from the ``time``
coordinate only) → the time axis rechunked so that no period straddles two chunks → one
blockwise kernel per chunk reducing each period over its valid observations → the result
wrapped with its ``valid_count`` and ``valid`` variables.

Each period is reduced whole inside one block, in time order, so the result does not depend
on the chunking (time or space). This is flox's ``method="blockwise"`` layout (the only one
flox offers for NaN-skipping medians); the reduction itself is a numba kernel (numbagg
style: one pass, contiguous inner loops, no temporaries, no all-NaN warnings) because
flox's numpy median was over ten times slower on the same blocks (with the same values),
and because all bands of a pixel must use the same valid observations, which the kernel
applies while it reduces.
"""

from __future__ import annotations

import datetime as _dt
import functools
import itertools
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .. import _coerce, modalities
from ..exceptions import ArgumentError, DataError, DimensionError, format_choices

__all__ = ["HOWS", "composite"]

#: the reductions :func:`composite` offers
HOWS = ("median", "mean", "min", "max", "first", "last", "quantile")

_BAND_DIMS = ("band", "bands", "variable", "channel")
_NODATA_ATTRS = ("nodata", "_FillValue", "missing_value")
_CFTIME_CALENDARS = ("standard", "gregorian", "proleptic_gregorian")
_FREQ_EXAMPLES = "'MS' (months), 'QS-DEC' (seasons), 'YS' (years), '14D', 'W-MON'"


# -- periods -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Periods:
    """Half-open periods ``[starts[i], ends[i])``, increasing and not overlapping."""

    starts: np.ndarray  # datetime64[ns]
    ends: np.ndarray
    freq: str  # what attrs record

    def __len__(self) -> int:
        return len(self.starts)

    def codes(self, times: pd.DatetimeIndex) -> np.ndarray:
        """The period of each date (``-1``: in none)."""
        t = times.values.astype("datetime64[ns]")
        i = np.searchsorted(self.starts, t, side="right") - 1
        inside = (i >= 0) & (t < self.ends[np.clip(i, 0, None)])
        return np.where(inside, i, -1).astype(np.int64)

    def subset(self, keep: np.ndarray) -> _Periods:
        return _Periods(self.starts[keep], self.ends[keep], self.freq)


def _offset(freq: Any) -> pd.DateOffset:
    try:
        off = pd.tseries.frequencies.to_offset(freq)
    except (ValueError, TypeError) as err:
        raise ArgumentError(
            f"freq={freq!r} is not a pandas frequency ({err}); use e.g. {_FREQ_EXAMPLES}, or "
            "pass the period edges themselves (a sequence of dates)"
        ) from None
    if "End" in type(off).__name__:
        raise ArgumentError(
            f"freq={freq!r} anchors periods at their end ({type(off).__name__}), but composites "
            "are labelled by the start of their period; use a start-anchored frequency such "
            "as 'MS' (months), 'QS-DEC' (seasons) or 'YS' (years)"
        )
    probe = pd.Timestamp("2000-01-01")
    if not probe + off > probe:
        raise ArgumentError(f"freq={freq!r} does not move forward in time; use e.g. {_FREQ_EXAMPLES}")
    return off


def _span(time_range: Any, first: pd.Timestamp, last: pd.Timestamp
          ) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The (start, end) the periods must cover: ``time_range``, open ends from the data."""
    rng = _coerce.time_range(time_range)
    if rng is None:
        return first, last
    lo, hi = (ts.tz_convert("UTC").tz_localize(None) for ts in rng)
    if rng[0] == pd.Timestamp.min.tz_localize("UTC"):
        lo = first
    if rng[1] == pd.Timestamp.max.tz_localize("UTC"):
        hi = last
    if hi < lo:
        raise ArgumentError(
            f"time_range={time_range!r} and the data ({first.date()} .. {last.date()}) do not "
            "overlap: nothing to composite"
        )
    return lo, hi


def _periods(freq: Any, time_range: Any, first: pd.Timestamp, last: pd.Timestamp) -> _Periods:
    """The periods from a frequency (covering the data or ``time_range``) or from edges."""
    if freq is None:
        raise ArgumentError(
            f"freq=None: pass a pandas frequency such as {_FREQ_EXAMPLES}, or the period edges "
            "(a sequence of N + 1 increasing dates)"
        )
    if isinstance(freq, str | pd.DateOffset | _dt.timedelta | np.timedelta64):
        off = _offset(freq)
        lo, hi = _span(time_range, first, last)
        if isinstance(off, pd.offsets.Tick):
            start = lo.normalize()  # fixed-length periods start at midnight of the first day
        else:
            start = off.rollback(lo.normalize())
        labels = pd.date_range(start, hi, freq=off)
        if len(labels) == 0:
            labels = pd.DatetimeIndex([start])
        ends = pd.DatetimeIndex([t + off for t in labels])
        keep = ends > lo  # a sub-daily frequency starts at midnight: skip periods before lo
        label = off.freqstr if not isinstance(freq, str) else freq
        return _Periods(labels[keep].values.astype("datetime64[ns]"),
                        ends[keep].values.astype("datetime64[ns]"), label)
    if time_range is not None:
        raise ArgumentError(
            "time_range= only applies with a frequency: explicit period edges already fix the "
            "span; drop time_range= (or pass freq='MS' with time_range=)"
        )
    try:
        edges = pd.DatetimeIndex([pd.Timestamp(e) for e in freq])
    except (TypeError, ValueError) as err:
        raise ArgumentError(
            f"freq={freq!r} is neither a pandas frequency nor a sequence of dates ({err})"
        ) from None
    if edges.tz is not None:
        edges = edges.tz_convert("UTC").tz_localize(None)
    if len(edges) < 2 or edges.hasnans or not (np.diff(edges.values) > np.timedelta64(0)).all():
        raise ArgumentError(
            f"period edges must be at least 2 strictly increasing dates (N + 1 edges give N "
            f"periods [edge_i, edge_i+1)), got {list(edges.astype(str))}"
        )
    v = edges.values.astype("datetime64[ns]")
    return _Periods(v[:-1], v[1:], "edges")


# -- the time axis ---------------------------------------------------------------------


def _times(ds: xr.Dataset | xr.DataArray, what: str) -> pd.DatetimeIndex:
    """The ``time`` coordinate as dates (checked), without reading any pixel."""
    if "time" not in ds.dims:
        raise DimensionError(
            f"{what} has dims {tuple(ds.dims)} and no 'time' dimension, so there is nothing to "
            "composite; rename its time dimension with obj.rename({'t': 'time'})"
        )
    if "time" not in ds.coords:
        raise DimensionError(
            f"'time' of {what} has no coordinate; assign the acquisition dates with "
            "obj.assign_coords(time=pd.to_datetime([...]))"
        )
    values = np.asarray(ds["time"].values)
    if np.issubdtype(values.dtype, np.datetime64):
        times = pd.DatetimeIndex(values)
    elif values.dtype == object and values.size and all(
            hasattr(v, "calendar") and hasattr(v, "dayofyr") for v in values.tolist()):
        calendars = sorted({str(v.calendar) for v in values.tolist()})
        if not all(c in _CFTIME_CALENDARS for c in calendars):
            raise DimensionError(
                f"'time' of {what} holds cftime dates in the {calendars[0]!r} calendar; convert "
                "it first with obj.convert_calendar('standard', align_on='date')"
            )
        times = xr.CFTimeIndex(values).to_datetimeindex(time_unit="ns")
    else:
        example = values[0] if values.size else None
        raise DimensionError(
            f"'time' of {what} must hold dates (datetime64), got dtype {values.dtype} (e.g. "
            f"{example!r}); decode it with xr.decode_cf(ds) (or open the file with "
            "decode_times=True), or assign dates with ds.assign_coords(time=pd.to_datetime(...))"
        )
    if times.hasnans:
        bad = int(np.flatnonzero(times.isna())[0])
        raise DimensionError(
            f"'time' of {what} holds NaT (missing dates, e.g. at position {bad}), which belong to "
            "no period; drop them with obj.dropna('time', subset=...) or obj.isel(time=...)"
        )
    return times


# -- the layout: period-aligned time chunks ------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """How the time axis is cut: observations per chunk, and per chunk its first period,
    number of periods and the observations' codes relative to that first period."""

    obs_chunks: tuple[int, ...]
    period_chunks: tuple[int, ...]
    local_codes: tuple[tuple[int, ...], ...]


def _layout(codes: np.ndarray, n_periods: int, chunks_in: tuple[int, ...] | None) -> _Layout:
    """Chunks of whole periods (the input's own when they already are): a period never
    straddles two chunks, every period (empty ones too) belongs to exactly one chunk."""
    n = len(codes)
    change = np.flatnonzero(np.diff(codes)) + 1  # where a new period's run starts
    if chunks_in is not None and all(
            b in set(change.tolist()) for b in np.cumsum(chunks_in)[:-1].tolist()):
        bounds = [0, *np.cumsum(chunks_in).tolist()]
    else:
        target = max(chunks_in) if chunks_in else n
        runs = [0, *change.tolist(), n]
        bounds = [0]
        for a, b in itertools.pairwise(runs):
            if b - bounds[-1] > target and a > bounds[-1]:
                bounds.append(a)
        bounds.append(n)
    starts = [0] + [int(codes[b]) for b in bounds[1:-1]] + [n_periods]
    local = tuple(tuple((codes[a:b] - starts[k]).tolist())
                  for k, (a, b) in enumerate(itertools.pairwise(bounds)))
    return _Layout(tuple(int(b - a) for a, b in itertools.pairwise(bounds)),
                   tuple(int(b - a) for a, b in itertools.pairwise(starts)),
                   local)


# -- the kernel ----------------------------------------------------------------------


_HOW_CODES = {h: i for i, h in enumerate(HOWS)}


def _lanes(x: np.ndarray, ok: np.ndarray, bounds: np.ndarray, how: int, q: float,
           min_count: int, out: np.ndarray) -> None:  # pragma: no cover (compiled by numba)
    """The numba kernel: ``x`` ``(B, T, N)``, ``ok`` ``(T, N)``, period ``p`` holding the
    observations ``bounds[p]:bounds[p + 1]`` → ``out[:B, p]`` the composites and
    ``out[B, p]`` the valid counts. Loops run along ``N`` (contiguous) innermost; the sorted
    reductions gather each period's valid values per pixel into a small buffer first."""
    n_b, _, n = x.shape
    n_p = bounds.shape[0] - 1
    longest = 1
    for p in range(n_p):
        longest = max(longest, bounds[p + 1] - bounds[p])
    cnt = np.zeros(n, np.int64)
    acc = np.zeros(n, np.float64)
    buf = np.empty((n, longest if how in (0, 6) else 1), np.float64)
    for p in range(n_p):
        lo, hi = bounds[p], bounds[p + 1]
        cnt[:] = 0
        for t in range(lo, hi):
            for i in range(n):
                cnt[i] += ok[t, i]
        for i in range(n):
            out[n_b, p, i] = cnt[i]
        for k in range(n_b):
            if how == 1:  # mean
                acc[:] = 0.0
                for t in range(lo, hi):
                    for i in range(n):
                        acc[i] += x[k, t, i] if ok[t, i] else 0.0  # a select: vectorised
                for i in range(n):
                    acc[i] = acc[i] / cnt[i] if cnt[i] > 0 else np.nan
            elif how == 2 or how == 3:  # min, max
                acc[:] = np.inf if how == 2 else -np.inf
                for t in range(lo, hi):
                    if how == 2:
                        for i in range(n):
                            acc[i] = min(acc[i], x[k, t, i]) if ok[t, i] else acc[i]
                    else:
                        for i in range(n):
                            acc[i] = max(acc[i], x[k, t, i]) if ok[t, i] else acc[i]
            elif how == 4 or how == 5:  # first, last
                acc[:] = np.nan
                for j in range(hi - lo):
                    t = lo + j if how == 4 else hi - 1 - j
                    for i in range(n):
                        if ok[t, i] and np.isnan(acc[i]):
                            acc[i] = x[k, t, i]
            else:  # median, quantile
                cnt[:] = 0
                for t in range(lo, hi):
                    for i in range(n):
                        if ok[t, i]:
                            buf[i, cnt[i]] = x[k, t, i]
                            cnt[i] += 1
                for i in range(n):
                    c = cnt[i]
                    if c == 0:
                        acc[i] = np.nan
                        continue
                    # Shell sort (Knuth's gaps; insertion sort for the few values of a
                    # month): np.sort would add most of the kernel's compile time
                    gap = 1
                    while gap < c // 3:
                        gap = 3 * gap + 1
                    while gap > 0:
                        for u in range(gap, c):
                            v = buf[i, u]
                            w = u
                            while w >= gap and buf[i, w - gap] > v:
                                buf[i, w] = buf[i, w - gap]
                                w -= gap
                            buf[i, w] = v
                        gap //= 3
                    if how == 0:
                        acc[i] = 0.5 * (buf[i, (c - 1) // 2] + buf[i, c // 2])
                    else:
                        pos = q * (c - 1)
                        f = int(np.floor(pos))
                        g = min(f + 1, c - 1)
                        acc[i] = buf[i, f] + (buf[i, g] - buf[i, f]) * (pos - f)
            for i in range(n):
                out[k, p, i] = acc[i] if out[n_b, p, i] >= min_count else np.nan


@functools.cache
def _compiled() -> Any:
    """The kernel compiled by numba (once per process, cached on disk; numba is imported
    here, not with xsky)."""
    import numba

    return numba.njit(cache=True, nogil=True)(_lanes)


@dataclass(frozen=True)
class _Reduce:
    """Per block: ``(B, T, ...)`` bands (+ ``(1, T, ...)`` valid) → ``(B + 1, P, ...)``: the
    composite of each band, then the count of valid observations, for each period."""

    how: str
    q: float
    min_count: int
    nodata: tuple[float | None, ...]
    layout: _Layout
    dtype: str

    def __call__(self, data: np.ndarray, *valid: np.ndarray,
                 block_id: tuple[int, ...] | None = None) -> np.ndarray:
        k = block_id[1] if block_id is not None else 0
        codes = np.asarray(self.layout.local_codes[k], dtype=np.int64)
        n_p = self.layout.period_chunks[k]
        dtype = np.dtype(self.dtype)
        n_b, n_t = data.shape[:2]
        spatial = data.shape[2:]
        ok = (np.asarray(valid[0][0], dtype=bool).copy() if valid
              else np.ones((n_t, *spatial), bool))
        for b in range(n_b):
            raw = data[b]
            if raw.dtype.kind == "f":
                ok &= np.isfinite(raw)
            if self.nodata[b] is not None:
                ok &= raw != self.nodata[b]
        x = np.ascontiguousarray(data, dtype=dtype).reshape(n_b, n_t, -1)
        out = np.empty((n_b + 1, n_p, x.shape[2]), dtype)
        bounds = np.searchsorted(codes, np.arange(n_p + 1)).astype(np.int64)
        _compiled()(x, np.ascontiguousarray(ok).reshape(n_t, -1), bounds,
                    _HOW_CODES[self.how], float(self.q), int(self.min_count), out)
        return out.reshape(n_b + 1, n_p, *spatial)


def _reduce(data: Any, valid: Any, nodata: tuple[float | None, ...], codes: np.ndarray,
            n_periods: int, how: str, q: float, min_count: int, dtype: str) -> Any:
    """``(B, T, ...)`` data (numpy or dask) → ``(B + 1, P, ...)``: composites and count."""
    import dask.array as da

    lazy = isinstance(data, da.Array) or isinstance(valid, da.Array)
    if not lazy:
        layout = _layout(codes, n_periods, None)
        kernel = _Reduce(how, q, min_count, nodata, layout, dtype)
        args = [np.asarray(valid)[None]] if valid is not None else []
        return kernel(np.asarray(data), *args, block_id=(0, 0))
    data = da.asarray(data)
    layout = _layout(codes, n_periods, tuple(data.chunks[1]))
    spatial = data.chunks[2:] if data.ndim > 2 else ()
    data = data.rechunk((data.shape[0], layout.obs_chunks, *spatial))
    args = [data]
    if valid is not None:
        args.append(da.asarray(valid)[None].rechunk((1, layout.obs_chunks, *spatial)))
    kernel = _Reduce(how, q, min_count, nodata, layout, dtype)
    return da.map_blocks(
        kernel, *args, dtype=np.dtype(dtype),
        chunks=((data.shape[0] + 1,), layout.period_chunks, *spatial),
        meta=np.empty((0,) * data.ndim, np.dtype(dtype)), token="composite-" + how,
    )


# -- variables, masks, units -----------------------------------------------------------


def _nodata(var: xr.DataArray, name: Hashable, node: str | None) -> float | None:
    """The no-data value, exactly as ``embed`` reads it (the table's default included)."""
    from ._inputs import nodata_of

    return nodata_of(var, _modality_of(name, node))


def _is_layer(name: Hashable) -> bool:
    """Whether a variable is a non-spectral layer of a registered modality (``SCL``...)."""
    if not isinstance(name, str):
        return False
    for m in modalities.names():
        mod = modalities.get(m)
        if mod.extra_bands and mod.canonical(name) in mod.extra_bands:
            return True
    return False


def _numeric(var: xr.DataArray) -> bool:
    return var.dtype.kind in "iuf"


def _modality_of(name: Hashable, node: str | None) -> str | None:
    """The modality a band belongs to: the DataTree node's, else the one naming the band."""
    if node:
        mod = modalities.modality_of_node(node)
        if mod is not None:
            return mod
    if not isinstance(name, str):
        return None
    for m in modalities.names():
        if modalities.get(m).canonical(name) in modalities.get(m).bands:
            return m
    return None


def _out_attrs(var: xr.DataArray, name: Hashable, node: str | None) -> dict[str, Any]:
    """A band's attrs after compositing: no-data is NaN now, and integer values (which
    ``embed`` takes as digital numbers from their dtype) get their units written down."""
    from ._inputs import _stored_integer

    attrs = {k: v for k, v in var.attrs.items() if k not in _NODATA_ATTRS}
    if "units" not in attrs and _stored_integer(var):
        mod = _modality_of(name, node)
        if mod is not None:
            attrs["units"] = modalities.get(mod).default_units(True)
    return attrs


def _valid_of(v: xr.DataArray | None, sizes: Mapping[Hashable, int], order: tuple[str, ...],
              what: str) -> xr.DataArray | None:
    """``valid`` as a boolean array on the bands' dims (broadcast lazily where it has fewer)."""
    if v is None:
        return None
    if not set(v.dims) <= set(order):
        raise DimensionError(
            f"'valid' of {what} has dims {v.dims}; expected a subset of the bands' dims {order}"
        )
    if not (v.dtype == bool or np.issubdtype(v.dtype, np.number)):
        raise DataError(f"'valid' of {what} must be boolean, got dtype {v.dtype}")
    if v.dtype != bool:
        v = v > 0.5  # NaN compares False: invalid
    v = v.reset_coords(drop=True) if isinstance(v, xr.DataArray) else v
    missing = {d: int(sizes[d]) for d in order if d not in v.dims}
    return (v.expand_dims(missing) if missing else v).transpose(*order)


# -- one Dataset / DataArray -----------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    how: str
    q: float
    min_count: int
    periods: _Periods
    variables: tuple[Hashable, ...] | None


def _labels(periods: _Periods) -> xr.DataArray:
    return xr.DataArray(periods.starts, dims="time", attrs={
        "long_name": "start of the compositing period",
        "description": "each composite covers [time, the next period's start)",
    })


def _composite_attrs(opts: _Options) -> dict[str, Any]:
    attrs: dict[str, Any] = {"composite_freq": opts.periods.freq, "composite_how": opts.how,
                             "composite_min_count": opts.min_count,
                             "composite_label": "period start"}
    if opts.how == "quantile":
        attrs["composite_q"] = opts.q
    return attrs


def _count_vars(res: Any, dims: tuple[str, ...], order: tuple[str, ...], min_count: int
                ) -> tuple[xr.DataArray, xr.DataArray]:
    """``valid_count`` (int32) and ``valid`` (``valid_count >= min_count``) from the kernel."""
    count = xr.DataArray(res[-1].astype(np.int32), dims=order).transpose(*dims)
    count = count.assign_attrs(long_name="number of valid observations in the period")
    valid = (count >= min_count).assign_attrs(
        long_name=f"at least {min_count} valid observation(s) in the period")
    return count, valid


def _sorted(obj: Any, times: pd.DatetimeIndex) -> tuple[Any, pd.DatetimeIndex]:
    """Dates in increasing order (a lazy reordering when they are not)."""
    if times.is_monotonic_increasing:
        return obj, times
    order = np.argsort(times.values, kind="stable")
    return obj.isel(time=order), times[order]


def _select(ds: xr.Dataset, opts: _Options, what: str) -> list[Hashable]:
    if opts.variables is not None:
        names = [k for k in opts.variables if k in ds.data_vars]
        bad = [k for k in names if "time" not in ds[k].dims or not _numeric(ds[k])]
        if bad:
            raise ArgumentError(
                f"variables= names {bad} of {what}, which have no 'time' dimension or are not "
                "numbers; composite numeric (time, y, x) variables only"
            )
        return names
    return [k for k, v in ds.data_vars.items() if "time" in v.dims and _numeric(v)
            and k not in ("valid", "valid_count") and not _is_layer(k)]


def _composite_dataset(ds: xr.Dataset, times: pd.DatetimeIndex, opts: _Options, what: str,
                       node: str | None = None, *, need_bands: bool = True) -> xr.Dataset:
    ds, times = _sorted(ds, times)
    names = _select(ds, opts, what)
    if not names and need_bands:
        found = {str(k): str(v.dtype) for k, v in ds.data_vars.items()}
        raise DataError(
            f"{what} has no variable to composite: it needs numeric variables with a 'time' "
            f"dimension (besides 'valid' and layers such as 'SCL'), found {found}; name them "
            "with variables=[...]"
        )
    timed = [k for k, v in ds.variables.items() if "time" in v.dims]
    out = ds.drop_vars(timed).assign_coords(time=_labels(opts.periods))
    out.attrs = {**ds.attrs, **_composite_attrs(opts)}
    dropped = [str(k) for k, v in ds.data_vars.items() if "time" in v.dims and k not in names
               and k not in ("valid", "valid_count")]
    if dropped:
        out.attrs["composite_dropped"] = ", ".join(dropped)
    if not names:
        return out
    first = ds[names[0]]
    order = ("time", *[str(d) for d in first.dims if d != "time"])
    for k in names[1:]:
        if set(ds[k].dims) != set(order):
            raise DimensionError(
                f"variable {k!r} of {what} has dims {ds[k].dims} but {names[0]!r} has "
                f"{first.dims}; composite variables on one grid together (pass variables=[...] "
                "or put each grid in its own DataTree node)"
            )
    valid = _valid_of(ds["valid"] if "valid" in ds.variables else None, ds.sizes, order, what)
    arrays = [ds[k].transpose(*order).data for k in names]
    dtype = "float64" if any(ds[k].dtype == np.float64 for k in names) else "float32"
    res = _run(arrays, valid, tuple(_nodata(ds[k], k, node) for k in names), times, opts,
               dtype)
    gm = _grid_mapping(ds, names)
    for i, k in enumerate(names):
        var = xr.DataArray(res[i], dims=order).transpose(*ds[k].dims)
        out[k] = var.assign_attrs(_out_attrs(ds[k], k, node))
    out["valid_count"], out["valid"] = _count_vars(
        res, tuple(str(d) for d in first.dims), order, opts.min_count)
    for k in [*names, "valid_count", "valid"]:
        out[k].attrs.update(gm)
    return out[[*[k for k in ds.data_vars if k in out.data_vars], "valid_count", "valid"]]


def _grid_mapping(src: xr.Dataset | xr.DataArray, names: Sequence[Hashable]) -> dict[str, Any]:
    """The CF ``grid_mapping`` reference of the source bands, for the attrs of the new
    variables (rioxarray keeps it in ``encoding``, which new variables do not inherit); the
    grid-mapping coordinate itself (``spatial_ref``) is carried unchanged."""
    for v in [src] if isinstance(src, xr.DataArray) else [src[k] for k in names]:
        gm = v.attrs.get("grid_mapping", v.encoding.get("grid_mapping"))
        if gm is not None and gm in src.coords:
            return {"grid_mapping": gm}
    return {}


def _run(arrays: list[Any], valid: xr.DataArray | None, nodata: tuple[float | None, ...],
         times: pd.DatetimeIndex, opts: _Options, dtype: str) -> Any:
    """Stack the bands ``(B, T, ...)``, keep the dates inside the periods, reduce."""
    import dask.array as da

    vdata = valid.data if valid is not None else None
    lazy = any(isinstance(a, da.Array) for a in [*arrays, vdata])
    if lazy:
        ref = next(a for a in [*arrays, vdata] if isinstance(a, da.Array))
        data = da.stack([a if isinstance(a, da.Array) else da.from_array(a, chunks=ref.chunks)
                         for a in arrays], axis=0)
        if vdata is not None and not isinstance(vdata, da.Array):
            vdata = da.from_array(np.asarray(vdata), chunks=data.chunks[1:])
    else:
        data = np.stack([np.asarray(a) for a in arrays], axis=0)
        vdata = np.asarray(vdata) if vdata is not None else None
    codes = opts.periods.codes(times)
    n_p = len(opts.periods)
    keep = np.flatnonzero(codes >= 0)
    if len(keep) < len(codes):
        data = data[:, keep]
        vdata = vdata[keep] if vdata is not None else None
        codes = codes[keep]
    if len(codes) == 0:  # no date of this object in any period: all empty
        shape = (data.shape[0] + 1, n_p, *data.shape[2:])
        if not lazy:
            empty = np.full(shape, np.nan, dtype)
            empty[-1] = 0
            return empty
        chunks = ((n_p,), *data.chunks[2:])
        nan = da.full((shape[0] - 1, *shape[1:]), np.nan, dtype=dtype,
                      chunks=((shape[0] - 1,), *chunks))
        zero = da.zeros((1, *shape[1:]), dtype=dtype, chunks=((1,), *chunks))
        return da.concatenate([nan, zero], axis=0)
    return _reduce(data, vdata, nodata, codes, n_p, opts.how, opts.q, opts.min_count, dtype)


def _composite_dataarray(obj: xr.DataArray, times: pd.DatetimeIndex, opts: _Options
                         ) -> xr.DataArray:
    """A DataArray with a labelled band dimension (or one band): the same reduction, the
    result laid out like the input, ``valid_count`` and ``valid`` as coordinates."""
    what = f"DataArray {obj.name!r}"
    if not _numeric(obj):
        raise DataError(f"{what} has dtype {obj.dtype}; composite numeric values only")
    obj, times = _sorted(obj, times)
    bdim = next((d for d in _BAND_DIMS if d in obj.dims), None)
    base = obj.drop_vars(["valid", "valid_count"], errors="ignore")
    order = ("time", *[str(d) for d in base.dims if d not in ("time", bdim)])
    valid = _valid_of(obj.coords.get("valid"), obj.sizes, order, what)
    if bdim is None:
        arrays = [base.transpose(*order).data]
    else:
        stacked = base.transpose(bdim, *order).data
        arrays = [stacked[i] for i in range(base.sizes[bdim])]
    dtype = "float64" if base.dtype == np.float64 else "float32"
    first: Hashable = base.name if bdim is None else base[bdim].values.tolist()[0]
    res = _run(arrays, valid, (_nodata(base, first, None),) * len(arrays), times, opts, dtype)
    coords = {k: v for k, v in base.coords.items() if "time" not in v.dims}
    coords["time"] = _labels(opts.periods)
    if bdim is None:
        out = xr.DataArray(res[0], dims=order, coords=coords, name=obj.name)
        label: Hashable = obj.name
    else:
        out = xr.DataArray(res[:-1], dims=(bdim, *order), coords=coords, name=obj.name)
        label = base[bdim].values.tolist()[0]
    out = out.transpose(*base.dims)
    out.attrs = {**_out_attrs(base, label, None), **_composite_attrs(opts),
                 **_grid_mapping(base, [])}
    count, ok = _count_vars(res, tuple(str(d) for d in base.dims if d != bdim), order,
                            opts.min_count)
    return out.assign_coords(valid_count=count, valid=ok)


# -- the public function -----------------------------------------------------------------


def _options(how: Any, q: Any, min_count: Any, variables: Any) -> tuple[str, float, int, Any]:
    if how not in HOWS:
        raise ArgumentError(f"how={how!r} is not a composite; choose one of {format_choices(HOWS)}")
    if how == "quantile":
        if isinstance(q, bool) or not isinstance(q, int | float | np.integer | np.floating) \
                or not 0 <= float(q) <= 1:
            raise ArgumentError(f"how='quantile' needs q= in [0, 1] (e.g. q=0.25), got q={q!r}")
        qv = float(q)
    else:
        if q is not None:
            raise ArgumentError(f"q= only applies with how='quantile', not how={how!r}")
        qv = 0.5
    count = _coerce.positive_int(min_count, "min_count", "observations")
    if variables is not None:
        if isinstance(variables, str) or not isinstance(variables, Sequence):
            raise ArgumentError(
                f"variables must be a list of variable names, got {variables!r} (e.g. "
                "variables=['B04', 'B08'])"
            )
        variables = tuple(variables)
    return str(how), qv, count, variables


def composite(
    obj: xr.Dataset | xr.DataArray | xr.DataTree,
    freq: str | pd.DateOffset | Sequence[Any] = "MS",
    how: str = "median",
    *,
    q: float | None = None,
    min_count: int = 1,
    time_range: Any = None,
    drop_empty: bool = False,
    variables: Sequence[Hashable] | None = None,
) -> Any:
    """Composite an irregular time series into one value per period and pixel, lazily.

    Each period's composite reduces, per pixel, only the observations that are **valid**:
    ``valid`` is true there (when the input has a ``valid`` variable or coordinate), and
    every composited band is finite and differs from its no-data value (``attrs["nodata"]``
    or ``attrs["_FillValue"]``, as :func:`xsky.embed` reads them). All bands of a pixel
    use the same observations, and the result records how many in ``valid_count``.

    Parameters
    ----------
    obj
        A Dataset with one variable per band, dims ``(time, y, x)`` (any order, extra
        non-time dims allowed) and an optional boolean ``valid``; a DataArray with a
        ``band`` dimension (or a single band) and an optional ``valid`` coordinate; or a
        DataTree with one node per modality, where every node is composited on the **same**
        periods, so ``s1`` and ``s2`` end up on identical ``time`` coordinates whatever their
        acquisition dates (as multi-modal temporal models such as Galileo need). Dask-backed
        input gives a lazy result; numpy-backed input is computed at once.
    freq
        The periods: a pandas frequency anchored at the start of its periods (``"MS"``
        months, ``"QS-DEC"`` meteorological seasons, ``"YS"`` years, ``"14D"``, ``"W-MON"``,
        a :class:`pandas.DateOffset`), or the period edges themselves: a sequence of N + 1
        increasing dates giving N periods ``[edge_i, edge_i+1)`` (dates outside them are
        ignored). Periods are half-open: a date on a period's first instant (``2020-02-01
        00:00`` for ``"MS"``) belongs to that period. Fixed-length frequencies (``"14D"``)
        start at midnight of the first date (or of ``time_range``'s start).
    how
        ``"median"`` (default), ``"mean"``, ``"min"``, ``"max"``, ``"first"`` / ``"last"``
        (the earliest / latest valid observation of the period), or ``"quantile"`` (with
        ``q``; linear interpolation, as :func:`numpy.quantile`).
    q
        The quantile in [0, 1] for ``how="quantile"``.
    min_count
        Fewest valid observations a composite needs; periods of a pixel with fewer are NaN
        and ``valid`` false (their ``valid_count`` still says how many there were).
    time_range
        The span the periods must cover, as :func:`xsky.load_stac` takes it
        (``"2015/2021"``, ``("2020-03", "2020-10")``, ``"2020"``; ``".."`` for an open end):
        from the period holding its start to the one holding its end, so every year of
        ``"2015/2021"`` has 12 monthly steps even where there is no data. Default: from the
        first to the last date of the data (of all nodes of a DataTree).
    drop_empty
        Drop the periods without any acquisition (for a DataTree: in no node), which are
        otherwise kept as all-NaN composites with ``valid_count`` 0 so that the time axis
        is regular. Decided from the ``time`` coordinate alone (never from pixel values).
    variables
        The variables to composite. Default: every numeric variable with a ``time``
        dimension except ``valid``, ``valid_count`` and the non-spectral layers of
        :mod:`xsky.modalities` (``SCL``, ``AOT``, ``WVP``), whose medians mean nothing.

    Returns
    -------
    xarray.Dataset or xarray.DataArray or xarray.DataTree
        Like ``obj``, with ``time`` holding the **start of each period** (its
        ``long_name`` says so). Bands are float32 (float64 stays float64) with NaN where a
        composite has fewer than ``min_count`` valid observations; their attrs are kept
        without the no-data entries (no-data is NaN now), and integer bands without
        ``attrs["units"]`` get the units their dtype implied for :func:`xsky.embed`
        (``"dn"`` for Sentinel-2), so ``embed`` reads the composite in the same units as
        the raw cube. Added: ``valid_count`` (int32, valid observations per pixel and
        period) and ``valid`` (``valid_count >= min_count``), as variables (coordinates of
        a DataArray). Variables without ``time`` and non-time coordinates (``x``, ``y``,
        ``spatial_ref``, so the CRS) are kept; time-varying layers not composited and
        time-varying coordinates are dropped (``attrs["composite_dropped"]`` lists the
        variables). ``attrs`` record ``composite_freq``, ``composite_how``,
        ``composite_min_count`` (and ``composite_q``).

    Raises
    ------
    ArgumentError
        Unknown ``how``, a bad ``q``/``min_count``/``variables``, a frequency pandas does
        not know or one anchored at the end of its periods (``"ME"``: use ``"MS"``), bad
        edges, ``time_range`` with explicit edges.
    DimensionError
        No ``time`` dimension or coordinate, times that are not dates (undecoded numbers:
        decode them), NaT, bands on different dims, ``valid`` with other dims.
    DataError
        No variable to composite, or no date of the data in any period.

    Notes
    -----
    Dates need not be sorted: they are put in order first (lazily). The time axis of dask
    input is rechunked so that no period straddles two chunks (chunks already made of
    whole periods are kept); each chunk is then reduced on its own, period by period, so
    the result does not depend on the chunking. Spatial chunks are kept.

    Examples
    --------
    >>> import xsky
    >>> cube = xsky.tutorial.open_dataset("romania", chunks={})  # dask-backed: lazy
    >>> monthly = xsky.composite(cube, "MS", "median", time_range="2016/2020")
    >>> monthly.sizes["time"], str(monthly.time.values[0])[:10]
    (60, '2016-01-01')
    >>> sorted(monthly.data_vars)
    ['B02', 'B03', 'B04', 'B08', 'valid', 'valid_count']
    >>> int(monthly.valid_count.isel(time=0).max())  # no acquisition in January 2016
    0
    """
    how, qv, count, names = _options(how, q, min_count, variables)
    if not isinstance(drop_empty, bool):
        raise ArgumentError(f"drop_empty must be True or False, got {drop_empty!r}")

    if isinstance(obj, xr.DataTree):
        return _composite_tree(obj, freq, how, qv, count, time_range, drop_empty, names)
    if isinstance(obj, xr.Dataset):
        what = "the input"
        times = _times(obj, what)
        absent = [v for v in names or () if v not in obj.data_vars]
        if absent:
            raise ArgumentError(
                f"variables= names {absent}, which the input does not have; its variables are "
                f"{format_choices(str(k) for k in obj.data_vars)}"
            )
    elif isinstance(obj, xr.DataArray):
        what = f"DataArray {obj.name!r}"
        times = _times(obj, what)
    else:
        raise ArgumentError(
            f"composite needs an xarray Dataset, DataArray or DataTree, got {type(obj).__name__}"
        )
    periods = _shared_periods([times], freq, time_range, drop_empty, what)
    opts = _Options(how, qv, count, periods, names)
    if isinstance(obj, xr.Dataset):
        return _composite_dataset(obj, times, opts, what)
    return _composite_dataarray(obj, times, opts)


def _shared_periods(all_times: Sequence[pd.DatetimeIndex], freq: Any, time_range: Any,
                    drop_empty: bool, what: str) -> _Periods:
    """The periods every object is composited on (from the dates of all of them)."""
    nonempty = [t for t in all_times if len(t)]
    if not nonempty:
        raise DataError(f"{what} has no date (its 'time' dimension is empty): nothing to composite")
    first = min(t.min() for t in nonempty)
    last = max(t.max() for t in nonempty)
    periods = _periods(freq, time_range, first, last)
    used = np.zeros(len(periods), bool)
    for t in nonempty:
        c = periods.codes(t)
        used[c[c >= 0]] = True
    if not used.any():
        span = f"{first.date()} .. {last.date()}"
        raise DataError(
            f"no date of {what} ({span}) falls in the periods "
            f"{str(periods.starts[0])[:10]} .. {str(periods.ends[-1])[:10]}; widen time_range= "
            "or the edges"
        )
    return periods.subset(np.flatnonzero(used)) if drop_empty else periods


def _composite_tree(tree: xr.DataTree, freq: Any, how: str, q: float, min_count: int,
                    time_range: Any, drop_empty: bool, variables: tuple[Hashable, ...] | None
                    ) -> xr.DataTree:
    nodes: dict[str, xr.Dataset] = {}
    own: dict[str, xr.Dataset] = {}
    timed: dict[str, pd.DatetimeIndex] = {}
    for node in tree.subtree:
        nodes[node.path] = ds = node.to_dataset(inherit=True)
        own[node.path] = node.to_dataset(inherit=False)
        if "time" in ds.dims:
            timed[node.path] = _times(ds, f"node {node.path!r}")
    if not timed:
        raise DimensionError(
            f"no node of the DataTree ({list(nodes)}) has a 'time' dimension, so there is "
            "nothing to composite"
        )
    if variables is not None:
        missing = [v for v in variables if not any(v in ds.data_vars for ds in nodes.values())]
        if missing:
            raise ArgumentError(f"variables= names {missing}, which no node of the DataTree has")
    periods = _shared_periods(list(timed.values()), freq, time_range, drop_empty, "the DataTree")
    opts = _Options(how, q, min_count, periods, variables)
    out: dict[str, xr.Dataset] = {}
    for path, ds in nodes.items():
        if path not in timed:
            out[path] = own[path]
            continue
        res = _composite_dataset(ds, timed[path], opts, f"node {path!r}",
                                 path.rsplit("/", 1)[-1] or None, need_bands=False)
        # coordinates a parent holds stay there (identical: same periods, same grid)
        inherited = [k for k in res.coords if k not in own[path].coords and k != "time"]
        out[path] = res.drop_vars(inherited)
    return xr.DataTree.from_dict(out)
