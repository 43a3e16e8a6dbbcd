"""``xsky.change`` and ``xsky.threshold``: change between periods of an embedding cube, lazily.

The steps read top to bottom: check the embedding (a ``time`` or ``period`` dimension, a
``feature`` dimension, a regular grid) → per observation, whether it is *valid* (all features
finite, enough valid input under it, the caller's mask) → the periods, reduced with
:func:`xsky.composite` over the valid observations only, with the number of them behind
each composite → the array cores of :mod:`xsky.engine.change` (a distance per pixel between
two periods; or, through time, each period's distance to the leave-one-out medoid of the
baseline and its robust z-score) → a georeferenced Dataset.

:func:`threshold` turns a score into a change mask with a threshold from fixed-size
histograms of the whole array (Otsu, a quantile) or a given value; the threshold is a lazy
0-d coordinate and does not depend on the chunking.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .. import _coerce
from ..engine import change as _core
from ..exceptions import AlignmentError, ArgumentError, DataError, DimensionError, format_choices
from ..geo import grid_info, spatial_dims
from .compositing import _times, composite

__all__ = ["AGAINST", "METHODS", "THRESHOLDS", "change", "threshold"]

#: distances :func:`change` offers
METHODS = _core.METHODS
#: what each period is compared with through time
AGAINST = _core.AGAINST
#: the threshold methods of :func:`threshold` (or a number)
THRESHOLDS = ("otsu", "quantile")

_TIME_DIMS = ("time", "period")
_SCORE_VARS = ("change", "zscore", "score")


# -- the embedding ---------------------------------------------------------------------


def _embedding(emb: Any) -> tuple[xr.DataArray, str, str, str]:
    """``emb`` as ``(time, y, x, feature)`` (a ``period`` dim renamed ``time``), checked
    from coordinates only; also the original time dim name and the spatial dims."""
    if isinstance(emb, xr.Dataset):
        names = [str(k) for k in emb.data_vars]
        raise ArgumentError(
            f"change needs an embedding DataArray (dims time, y, x, feature), got a Dataset "
            f"with variables {names}; pass ds['embedding'], or for a cube of bands stack them "
            "as features: ds[bands].to_dataarray('feature').assign_coords(valid=ds.valid)"
        )
    if not isinstance(emb, xr.DataArray):
        raise ArgumentError(
            f"change needs an embedding DataArray from xsky.embed, got {type(emb).__name__}"
        )
    what = f"DataArray {emb.name!r}"
    if "feature" not in emb.dims:
        raise DimensionError(
            f"{what} has dims {tuple(emb.dims)} and no 'feature' dimension, so it is not an "
            "embedding; embed the cube first (xsky.embed(cube, model)), or name the axis of "
            "its features with obj.rename({'band': 'feature'})"
        )
    tdim = next((d for d in _TIME_DIMS if d in emb.dims), None)
    if tdim is None:
        raise DimensionError(
            f"{what} has dims {tuple(emb.dims)} and no 'time' (or 'period') dimension, so "
            "there is nothing to compare; embed a time series with a per-date model, or stack "
            "fused embeddings of several periods: xr.concat([e2018, e2020], "
            "dim=pd.Index(pd.to_datetime(['2018', '2020']), name='time'))"
        )
    if tdim == "period" and "time" in emb.coords:
        raise DimensionError(
            f"{what} has a 'period' dimension and also a 'time' coordinate; drop one of them "
            "(obj.drop_vars('time'))"
        )
    ydim, xdim = spatial_dims(emb)
    extra = [str(d) for d in emb.dims if d not in (tdim, ydim, xdim, "feature")]
    if extra:
        raise DimensionError(
            f"{what} has dims {tuple(emb.dims)}; change takes ({tdim}, {ydim}, {xdim}, "
            f"feature) only, not {extra}: select one with obj.isel({extra[0]}=0) or stack "
            f"them into 'feature'"
        )
    grid_info(emb)  # regular, monotonic pixel grid (stacks of mismatched grids are not)
    e = emb.rename({"period": "time"}) if tdim == "period" else emb
    try:
        times = _times(e, what)
    except DimensionError as err:
        if tdim != "period":
            raise
        raise DimensionError(
            f"{err} (its 'period' dimension is read as 'time': label each period by a date, "
            "e.g. its start)") from None
    if not times.is_monotonic_increasing:  # dates in order (a lazy reordering)
        e = e.isel(time=np.argsort(times.values, kind="stable"))
    return e.transpose("time", ydim, xdim, "feature"), tdim, ydim, xdim


def _same_axis(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    step = float(np.abs(np.diff(b)).min()) if b.size > 1 else 1.0
    return bool(np.allclose(a, b, rtol=0, atol=1e-6 * step))


def _check_mask(valid: Any, e: xr.DataArray, ydim: str, xdim: str) -> xr.DataArray:
    """The caller's ``valid`` mask, checked to lie on the embedding's grid and dates."""
    if not isinstance(valid, xr.DataArray):
        raise ArgumentError(
            f"valid= must be a boolean DataArray with dims (time, {ydim}, {xdim}) or "
            f"({ydim}, {xdim}) on the embedding grid, got {type(valid).__name__}"
        )
    v = valid.rename({"period": "time"}) if "period" in valid.dims else valid
    if not set(v.dims) <= {"time", ydim, xdim}:
        raise DimensionError(
            f"valid= has dims {tuple(valid.dims)}; expected a subset of (time, {ydim}, "
            f"{xdim}), the embedding's dims without 'feature'"
        )
    for d in (ydim, xdim):
        if d not in v.dims:
            continue
        if d not in v.coords or not _same_axis(np.asarray(v[d].values, np.float64),
                                               np.asarray(e[d].values, np.float64)):
            got = np.asarray(v[d].values) if d in v.coords else np.arange(v.sizes[d])
            step = float(np.diff(got[:2])[0]) if got.size > 1 else float("nan")
            want = np.asarray(e[d].values)
            raise AlignmentError(
                f"valid= is on another grid than the embedding: along {d!r} it has "
                f"{got.size} pixels (step {step:g}) where the embedding has {want.size} (step "
                f"{float(np.diff(want[:2])[0]):g}); pass a mask on the embedding grid (e.g. "
                "coarsen the input mask: (valid.coarsen(y=4, x=4).mean() >= 0.5) with the "
                "embedding's coordinates), or embed the cube with its 'valid' variable so "
                "that the embedding's valid_fraction carries it"
            )
    if "time" in v.dims:
        vt = pd.DatetimeIndex(np.asarray(v["time"].values)) if "time" in v.coords else None
        et = pd.DatetimeIndex(np.asarray(e["time"].values))
        if vt is None or len(vt) != len(et) or not (vt == et).all():
            raise AlignmentError(
                f"valid= has {v.sizes['time']} dates that are not the embedding's "
                f"{len(et)} dates ({et[0].date()} .. {et[-1].date()}); select them with "
                "valid.sel(time=emb.time)"
            )
    if not (v.dtype == bool or np.issubdtype(v.dtype, np.number)):
        raise DataError(f"valid= must be boolean, got dtype {v.dtype}")
    v = v if v.dtype == bool else v > 0.5
    return v.reset_coords(drop=True).assign_coords(
        {d: e[d] for d in v.dims if d in e.coords})


def _observations(e: xr.DataArray, valid: Any, min_valid_fraction: float, ydim: str,
                  xdim: str) -> xr.DataArray:
    """``(time, y, x)`` booleans: the observations that count (lazy when ``e`` is)."""
    finite: xr.DataArray = np.isfinite(e)  # type: ignore[assignment]
    ok = finite.all("feature") & (e != 0).any("feature")
    if "valid_fraction" in e.coords and min_valid_fraction > 0:
        ok = ok & (e.coords["valid_fraction"] >= min_valid_fraction)
    if "valid" in e.coords:
        own = e.coords["valid"]
        ok = ok & (own if own.dtype == bool else own > 0.5)
    if valid is not None:
        ok = ok & _check_mask(valid, e, ydim, xdim)
    ok = ok.reset_coords(drop=True).transpose("time", ydim, xdim)
    return ok.rename("valid")


# -- periods ---------------------------------------------------------------------------


def _bounds(value: Any, name: str, times: pd.DatetimeIndex) -> tuple[pd.Timestamp,
                                                                     pd.Timestamp]:
    """A period selector as the half-open span ``[start, end)`` (naive UTC)."""
    if isinstance(value, slice):
        if value.step is not None:
            raise ArgumentError(f"{name}={value!r}: a period is a slice without a step")
        pair: Any = (value.start, value.stop)
    elif isinstance(value, str) or (isinstance(value, Sequence) and len(value) == 2):
        pair = value
    elif isinstance(value, pd.Timestamp | np.datetime64 | _dt.date):
        ts = pd.Timestamp(value)
        pair = (ts, ts)
    else:
        raise ArgumentError(
            f"{name}={value!r} is not a period; pass a slice of dates (slice('2018', "
            "'2018') for the whole year), a string ('2018', '2018-03/2018-10') or a (start, "
            "end) pair"
        )
    try:
        rng = _coerce.time_range(pair)
    except ArgumentError as err:
        raise ArgumentError(f"{name}={value!r}: {err}") from None
    assert rng is not None
    lo, hi = (ts.tz_convert("UTC").tz_localize(None) for ts in rng)
    first, last = times.min(), times.max()
    if rng[0] == pd.Timestamp.min.tz_localize("UTC"):
        lo = first
    if rng[1] == pd.Timestamp.max.tz_localize("UTC"):
        hi = last
    return lo, hi + pd.Timedelta(1, "ns")


def _span_text(lo: pd.Timestamp, hi: pd.Timestamp) -> str:
    return f"{lo.isoformat()}/{hi.isoformat()}"


def _inside(times: pd.DatetimeIndex, lo: pd.Timestamp, hi: pd.Timestamp) -> np.ndarray:
    t = times.values.astype("datetime64[ns]")
    return (t >= lo.to_datetime64()) & (t < hi.to_datetime64())


def _need_dates(value: Any, name: str, times: pd.DatetimeIndex, lo: pd.Timestamp,
                hi: pd.Timestamp, what: str = "date") -> None:
    if not _inside(times, lo, hi).any():
        raise DataError(
            f"{name}={value!r} ({lo.date()} .. {(hi - pd.Timedelta(1, 'ns')).date()}) holds no "
            f"{what} of the embedding, whose {len(times)} {what}s run from "
            f"{times.min().date()} to {times.max().date()}; choose a period inside that range"
        )


# -- outputs ---------------------------------------------------------------------------


def _attrs(emb: xr.DataArray) -> dict[str, Any]:
    skip = ("grid_mapping",)
    return {k: v for k, v in emb.attrs.items() if k not in skip
            and not str(k).startswith("composite_")}


def _grid_mapping(emb: xr.DataArray) -> dict[str, Any]:
    gm = emb.attrs.get("grid_mapping", emb.encoding.get("grid_mapping"))
    if gm is None and "spatial_ref" in emb.coords:
        gm = "spatial_ref"
    return {"grid_mapping": gm} if gm is not None and gm in emb.coords else {}


def _is_lazy(obj: xr.DataArray) -> bool:
    import dask.array as da

    return isinstance(obj.data, da.Array)


def _check_any_valid(count: xr.DataArray, name: str, value: Any) -> None:
    """Eager input only (lazy input would have to be computed): a side without any valid
    observation at any pixel is refused."""
    if not _is_lazy(count) and int(count.max()) == 0:
        raise DataError(
            f"{name}={value!r} holds dates of the embedding but no valid observation at any "
            "pixel (all NaN, masked by valid=, or valid_fraction below min_valid_fraction); "
            "choose another period or lower min_valid_fraction"
        )


def _two_periods(e: xr.DataArray, ok: xr.DataArray, times: pd.DatetimeIndex, ref: Any,
                 target: Any, method: str, how: str, min_count: int, ydim: str, xdim: str,
                 tdim: str) -> xr.Dataset:
    sides = {}
    for name, value in (("ref", ref), ("target", target)):
        lo, hi = _bounds(value, name, times)
        _need_dates(value, name, times, lo, hi)
        comp = composite(e.assign_coords(valid=ok), [lo, hi], how, min_count=min_count)
        count = comp.coords["valid_count"].isel(time=0, feature=0, drop=True)
        _check_any_valid(count, name, value)
        data = comp.isel(time=0, drop=True).drop_vars(["valid", "valid_count"])
        sides[name] = (data, count, _span_text(lo, hi))
    (a, ref_count, ref_span), (b, tgt_count, tgt_span) = sides["ref"], sides["target"]
    dist = _core.pair_distance(a.data, b.data, method)
    coords = {k: v for k, v in a.coords.items() if "feature" not in v.dims}
    gm = _grid_mapping(e)
    out = xr.Dataset()
    out["change"] = xr.DataArray(dist, dims=(ydim, xdim), attrs={
        "long_name": f"{method} distance between the target and reference composites",
        "units": "1", **gm})
    out["ref_count"] = ref_count.reset_coords(drop=True).assign_attrs(
        long_name="valid observations behind the reference composite", **gm)
    out["target_count"] = tgt_count.reset_coords(drop=True).assign_attrs(
        long_name="valid observations behind the target composite", **gm)
    out = out.assign_coords(coords)
    out.attrs = {**_attrs(e), "change_method": method, "change_ref": ref_span,
                 "change_target": tgt_span, "change_periods": "half-open [start, end)",
                 "change_how": how, "change_min_count": min_count, "change_time_dim": tdim}
    return out


def _through_time(e: xr.DataArray, ok: xr.DataArray, times: pd.DatetimeIndex, ref: Any,
                  method: str, freq: Any, how: str, against: str, min_count: int,
                  min_baseline: int, min_scale: float | None, ydim: str, xdim: str,
                  tdim: str) -> xr.Dataset:
    if freq is None:
        if min_count > 1:
            raise ArgumentError(
                f"min_count={min_count} needs periods of several observations: pass freq= "
                "(e.g. freq='YS') to composite the dates into periods, or min_count=1"
            )
        periods = e.where(ok)
        count = ok.astype(np.int32)
    else:
        comp = composite(e.assign_coords(valid=ok), freq, how, min_count=min_count)
        count = comp.coords["valid_count"].isel(feature=0, drop=True)
        periods = comp.drop_vars(["valid", "valid_count"])
    labels = pd.DatetimeIndex(np.asarray(periods["time"].values))
    if len(labels) < 2:
        raise DataError(
            f"the embedding gives {len(labels)} period ({labels[0].date()}); change through "
            "time needs at least 2 (a finer freq=, or more dates)"
        )
    what = "date" if freq is None else "period"
    if ref is None:
        baseline = np.ones(len(labels), bool)
        ref_span = "all"
    else:
        lo, hi = _bounds(ref, "ref", labels)
        _need_dates(ref, "ref", labels, lo, hi, what)
        baseline = _inside(labels, lo, hi)
        ref_span = _span_text(lo, hi)
    n_base = int(baseline.sum())
    if against == "baseline" and n_base < 2:
        raise ArgumentError(
            f"ref={ref!r} selects {n_base} {what} as baseline, but each baseline {what} is "
            "scored against the others: widen ref to at least 2 (or use against='previous')"
        )
    if n_base < min_baseline:
        raise ArgumentError(
            f"ref={ref!r} selects {n_base} baseline {what}s but z-scores need "
            f"min_baseline={min_baseline}; widen ref or lower min_baseline"
        )
    score, z = _core.series_scores(periods.data, baseline, method=method, against=against,
                                   min_baseline=min_baseline, min_scale=min_scale)
    dims = ("time", ydim, xdim)
    coords = {k: v for k, v in periods.coords.items() if "feature" not in v.dims
              and k != "valid_fraction"}
    coords["baseline"] = xr.DataArray(baseline, dims="time", attrs={
        "long_name": "period belongs to the baseline"})
    gm = _grid_mapping(e)
    versus = ("the leave-one-out medoid of the baseline" if against == "baseline"
              else "the previous valid period")
    out = xr.Dataset()
    out["score"] = xr.DataArray(score, dims=dims, attrs={
        "long_name": f"{method} distance to {versus}", "units": "1", **gm})
    out["zscore"] = xr.DataArray(z, dims=dims, attrs={
        "long_name": "robust z-score of the score against the baseline periods' scores "
                     "(median, 1.4826 MAD)", "units": "1", **gm})
    out["valid_count"] = count.reset_coords(drop=True).transpose(*dims).assign_attrs(
        long_name="valid observations behind each period", **gm)
    out = out.assign_coords(coords)
    out.attrs = {**_attrs(e), "change_method": method, "change_against": against,
                 "change_ref": ref_span, "change_freq": "each date" if freq is None
                 else str(freq), "change_how": how, "change_min_count": min_count,
                 "change_min_baseline": min_baseline, "change_time_dim": tdim}
    if tdim != "time":
        out = out.rename({"time": tdim})
    return out


# -- the public functions --------------------------------------------------------------


def change(
    emb: xr.DataArray,
    ref: Any = None,
    target: Any = None,
    *,
    method: str = "cosine",
    freq: Any = None,
    how: str = "median",
    against: str = "baseline",
    min_count: int = 1,
    min_valid_fraction: float | None = None,
    min_baseline: int = 3,
    min_scale: float | None = None,
    valid: xr.DataArray | None = None,
) -> xr.Dataset:
    """Change between periods of an embedding cube, per pixel, lazily.

    **Two periods** (``target`` given): each side is the composite (:func:`xsky.composite`,
    ``how``) of its valid observations; the result is the distance between them per pixel,
    with the number of valid observations behind each side, so that a cloudy period is told
    apart from a change (few or no observations: a NaN distance, a small count).

    **Through time** (``target=None``): every period (each date, or each composite of
    ``freq``) is scored against the baseline periods selected by ``ref`` (default: all):
    its distance to the *leave-one-out medoid* of the baseline (the baseline period, other
    than itself, with the least total distance to the others), or to the previous valid
    period (``against="previous"``); then the robust z-score of that score against the
    baseline periods' own scores at the same pixel, ``(score - median) / (1.4826 MAD)``,
    so that land covers whose embeddings vary a lot from year to year (crops) do not
    dominate those that barely vary (forest).

    An observation counts (is *valid*) when all its features are finite and not all zero,
    its ``valid_fraction`` (the share of valid input pixels under it, from
    :func:`xsky.embed`) is at least ``min_valid_fraction``, and the ``valid`` coordinate of
    ``emb`` and the ``valid=`` mask (when given) are true.

    Parameters
    ----------
    emb
        An embedding from :func:`xsky.embed`: dims ``(time, y, x, feature)`` (any order) of a
        per-date model, or a stack of time-fused embeddings, one per period, along ``time``
        or ``period`` (dates: e.g. each period's start). Dask-backed input gives a lazy
        result.
    ref
        The reference period (two periods) or the baseline (through time): a slice of dates
        (``slice("2018", "2018")``: all of 2018; open ends allowed), a string (``"2018"``,
        ``"2016/2018"``, ``"2018-06"``), a ``(start, end)`` pair or one date. Both ends are
        inclusive at their resolution (``"2018"`` runs to the last instant of 2018).
    target
        The period compared with ``ref`` (same forms); ``None``: through time.
    method
        ``"cosine"`` (``1 - cos``, in [0, 2]; default) or ``"euclidean"``.
    freq
        Through time: the periods, as :func:`xsky.composite` takes them (``"YS"``,
        ``"QS-DEC"``, explicit edges); ``None``: each time step is a period (each date, or
        each fused embedding of a stack).
    how
        The composite of each period: ``"median"`` (per feature; default), ``"mean"``, ...
        (see :func:`xsky.composite`).
    against
        Through time: ``"baseline"`` (the leave-one-out medoid) or ``"previous"``.
    min_count
        Fewest valid observations a composite needs (else NaN).
    min_valid_fraction
        Fewest valid input pixels (share, from ``valid_fraction``) under an observation for
        it to count; 0 counts every finite embedding. Default: 0.5 for per-date
        embeddings, where ``valid_fraction`` is the clear share of one date; 0 for
        time-fused ones (``attrs["fuses_time"]`` true), where it is the share over all the
        fused dates and a cloudy month does not spoil the year. Pass it explicitly for a
        stack of fused embeddings whose attrs do not say so.
    min_baseline
        Through time: fewest baseline scores a pixel needs for a z-score (else NaN).
    min_scale
        Through time: the floor of the z-score's scale; default 5 % of the pixel's median
        baseline score, so that equal baseline scores do not turn tiny differences into
        huge z-scores.
    valid
        An extra boolean mask on the embedding grid, dims ``(time, y, x)`` or ``(y, x)``.

    Returns
    -------
    xarray.Dataset
        Two periods: ``change`` (float32, ``(y, x)``), ``ref_count`` and ``target_count``
        (int32). Through time: ``score`` and ``zscore`` (float32, ``(time, y, x)``, with
        ``time`` the period labels) and ``valid_count`` (int32), and a ``baseline``
        coordinate.
        The CRS (``spatial_ref``) and x/y coordinates of ``emb`` are kept; ``attrs``
        record the provenance of ``emb`` and the options (``change_*``).

    Raises
    ------
    ArgumentError
        Unknown ``method``/``against``, a period that is not one, a baseline too small.
    DimensionError
        No ``feature`` or ``time``/``period`` dimension, other dims, an irregular grid.
    AlignmentError
        ``valid=`` on another grid or other dates.
    DataError
        A period holding no date of ``emb``; numpy input: a side without any valid
        observation. (Lazy input is not computed to check it: such a side gives NaN and
        zero counts.)

    Examples
    --------
    >>> import xsky
    >>> cube = xsky.tutorial.open_dataset("romania", chunks={})
    >>> emb = xsky.embed(cube.sel(time=slice("2018", "2019")), "test-tiny")
    >>> out = xsky.change(emb, slice("2018", "2018"), slice("2019", "2019"))
    >>> sorted(out.data_vars), out.change.dims
    (['change', 'ref_count', 'target_count'], ('y', 'x'))
    >>> yearly = xsky.change(emb, freq="QS-DEC", min_baseline=2)
    >>> yearly.zscore.dims
    ('time', 'y', 'x')
    """
    if method not in METHODS:
        raise ArgumentError(
            f"method={method!r} is not a distance; choose one of {format_choices(METHODS)}")
    if against not in AGAINST:
        raise ArgumentError(
            f"against={against!r} is not a comparison; choose one of "
            f"{format_choices(AGAINST)}")
    count = _coerce.positive_int(min_count, "min_count", "observations")
    n_base = _coerce.positive_int(min_baseline, "min_baseline", "periods")
    if min_valid_fraction is None:
        fused = str(getattr(emb, "attrs", {}).get("fuses_time", "")).lower()
        min_valid_fraction = 0.0 if fused in ("true", "1", "yes") else 0.5
    if isinstance(min_valid_fraction, bool) or not isinstance(
            min_valid_fraction, int | float | np.integer | np.floating) \
            or not 0 <= float(min_valid_fraction) <= 1:
        raise ArgumentError(
            f"min_valid_fraction must be a number in [0, 1], got {min_valid_fraction!r}")
    scale = None if min_scale is None else _coerce.positive_float(min_scale, "min_scale")
    if target is not None and ref is None:
        raise ArgumentError(
            "target= needs ref= (the period it is compared with), e.g. "
            "change(emb, slice('2018', '2018'), slice('2020', '2020'))"
        )
    e, tdim, ydim, xdim = _embedding(emb)
    times = pd.DatetimeIndex(np.asarray(e["time"].values))
    ok = _observations(e, valid, float(min_valid_fraction), ydim, xdim)
    e = e.drop_vars([k for k in ("valid", "valid_fraction") if k in e.coords])
    if target is not None:
        return _two_periods(e, ok, times, ref, target, method, how, count, ydim, xdim, tdim)
    return _through_time(e, ok, times, ref, method, freq, how, against, count, n_base, scale,
                         ydim, xdim, tdim)


def _pick(score: Any, variable: Hashable | None) -> xr.DataArray:
    if isinstance(score, xr.Dataset):
        if variable is None:
            variable = next((v for v in _SCORE_VARS if v in score.data_vars), None)
        if variable is None or variable not in score.data_vars:
            raise ArgumentError(
                f"threshold needs a score: name it with variable= (one of "
                f"{format_choices(str(k) for k in score.data_vars)})"
            )
        return score[variable]
    if not isinstance(score, xr.DataArray):
        raise ArgumentError(
            f"threshold needs a score DataArray (or the Dataset of xsky.change), got "
            f"{type(score).__name__}"
        )
    if variable is not None:
        raise ArgumentError("variable= only applies to a Dataset; pass the DataArray itself")
    return score


def threshold(
    score: xr.DataArray | xr.Dataset,
    method: str | float = "otsu",
    *,
    q: float | None = None,
    bins: int = 256,
    value_range: tuple[float, float] | None = None,
    variable: Hashable | None = None,
) -> xr.DataArray:
    """A boolean change mask: the score above a threshold, lazily and chunk-invariantly.

    The threshold comes from the whole array, through fixed-size histograms computed block
    by block and summed (exact integer counts, bin edges from exact global extremes), so it
    does not depend on the chunking and needs no sample.

    Parameters
    ----------
    score
        A change score (``change``, ``zscore``...), any dims; or the Dataset of
        :func:`xsky.change` (its ``change``, else ``zscore``, unless ``variable`` says).
    method
        ``"otsu"`` (default): Otsu's threshold, the split of the score histogram that
        maximises the between-class variance; ``"quantile"``: the ``q`` quantile of the
        valid scores (numpy's ``"linear"`` definition, to about 1e-7 of the value range);
        a number: that threshold.
    q
        The quantile in [0, 1] for ``method="quantile"`` (``0.95`` flags the top 5 %).
    bins
        Otsu: histogram bins over ``value_range``.
    value_range
        Otsu: the ``(low, high)`` the histogram covers (values outside count in the end
        bins). Default: from the 0.1 % to the 99.9 % quantile of the valid scores (from a
        first 4096-bin histogram), so that a few extreme scores do not squeeze the rest
        into one bin.
    variable
        The score variable of a Dataset.

    Returns
    -------
    xarray.DataArray
        Named ``change_mask``, boolean, like ``score``: true where the score is above the
        threshold; false where it is not **or is NaN**: the ``valid`` coordinate (finite
        score) tells those apart. The 0-d ``threshold`` coordinate holds the value (lazy
        for dask input: ``float(mask.threshold)`` computes it). Numpy input gives numpy
        output.

    Raises
    ------
    ArgumentError
        Unknown ``method`` (the valid ones are listed), bad ``q``, ``bins`` or
        ``value_range``.
    DataError
        Numpy input without any finite score (lazy input gives a NaN threshold and an
        all-false mask).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> import xsky
    >>> score = xr.DataArray(np.array([[0.01, 0.02, 0.5], [0.03, np.nan, 0.6]]),
    ...                      dims=("y", "x"))
    >>> mask = xsky.threshold(score, "otsu")
    >>> mask.values.tolist()
    [[False, False, True], [False, False, True]]
    >>> mask.valid.values.tolist()
    [[True, True, True], [True, False, True]]
    """
    import dask.array as da

    s = _pick(score, variable)
    if not np.issubdtype(s.dtype, np.number) or s.dtype.kind == "c":
        raise DataError(f"score {s.name!r} has dtype {s.dtype}; threshold real numbers")
    number = not isinstance(method, str | bool) and isinstance(
        method, int | float | np.integer | np.floating)
    if not number and method not in THRESHOLDS:
        raise ArgumentError(
            f"method={method!r} is not a threshold; choose one of "
            f"{format_choices(THRESHOLDS)} or pass a number")
    if method == "quantile":
        if isinstance(q, bool) or not isinstance(q, int | float | np.integer | np.floating) \
                or not 0 <= float(q) <= 1:
            raise ArgumentError(
                f"method='quantile' needs q= in [0, 1] (e.g. q=0.95), got q={q!r}")
    elif q is not None:
        raise ArgumentError(f"q= only applies with method='quantile', not method={method!r}")
    n_bins = _coerce.positive_int(bins, "bins", "bins")
    if n_bins < 2:
        raise ArgumentError(f"bins must be at least 2, got {bins!r}")
    span = None
    if value_range is not None:
        try:
            lo, hi = (float(v) for v in value_range)
        except (TypeError, ValueError):
            raise ArgumentError(
                f"value_range must be a (low, high) pair of numbers, got {value_range!r}"
            ) from None
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ArgumentError(
                f"value_range must be finite with low < high, got {value_range!r}")
        span = (lo, hi)
    lazy = isinstance(s.data, da.Array)
    data = s.data if lazy else da.from_array(np.asarray(s.data), chunks=-1)
    if number:
        thr = da.asarray(np.float64(method))
        label = f"value {float(method):g}"
    else:
        thr = _core.threshold_value(data, str(method), q=0.5 if q is None else float(q),
                                    bins=n_bins, value_range=span)
        label = str(method)
    mask = data > thr
    attrs: dict[str, Any] = {"long_name": f"{s.name or 'score'} above the threshold ({label})",
             "threshold_method": label}
    if method == "otsu":
        attrs["threshold_bins"] = n_bins
    if method == "quantile":
        attrs["threshold_q"] = float(q)  # type: ignore[arg-type]  # checked above
    if "grid_mapping" in s.attrs:
        attrs["grid_mapping"] = s.attrs["grid_mapping"]
    out = xr.DataArray(mask, dims=s.dims, coords=s.coords, name="change_mask", attrs=attrs)
    out = out.assign_coords(
        valid=xr.DataArray(da.isfinite(data), dims=s.dims).assign_attrs(
            long_name="the score is defined (finite)"),
        threshold=xr.DataArray(thr, attrs={"long_name": "threshold of the score"}))
    if not lazy:
        out = out.compute()
        if not number and not np.isfinite(float(out.threshold)):
            raise DataError(
                f"score {s.name!r} has no finite value, so no threshold can be computed from "
                "it; check the inputs (all periods masked?) or pass a threshold value")
    return out
