"""``xsky.plan``: what an ``embed`` run will cost, before running it.

The plan reads the geometry of the run off the same window plan and graph that
:func:`xsky.embed` builds (nothing is computed for that), then times a small probe: the
same model and options on one block of the real input, run twice in this thread (the
first run pays the one-off warm-up and counts the FLOPs, the second is timed). The per-window
time of the probe scales to the whole run; a rate table of measured figures
(``xsky/data/rates.json``, written by ``benchmarks/plan_rates.py``) gives estimates for
named device classes, each with where its figure came from.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import xarray as xr

from .. import _coerce
from ..exceptions import ArgumentError

__all__ = ["Plan", "plan", "rate_table"]


@dataclass(frozen=True)
class Plan:
    """The cost of an ``embed`` run (see :func:`plan`); ``str(plan)`` is a readable summary.

    Attributes
    ----------
    model
        The model's name.
    area_km2
        Footprint of the input grid (km²; geodesic for geographic CRSs, ``nan`` without a CRS).
    pixels
        Input pixels of the reference grid (one date).
    dates
        Dates per modality (``0`` for a static layer).
    windows
        Model windows the run evaluates (times the dates for per-date models).
    output_shape
        Shape of the embedding.
    chunks, tasks
        Output chunks, and tasks in the graph.
    bytes_read, bytes_written
        Input volume the graph reads (bands and masks at their stored dtype), and the
        embedding's size (float32) with its ``valid_fraction``.
    flops, flops_per_window
        Model FLOPs (:class:`xsky.engine.flops.FlopCounter` on the probe), whole run and per window; ``nan``
        when the probe did not run.
    probe_windows, probe_s, warmup_s
        Windows of the probe block, its time once warm, and the extra time of its first run.
    seconds
        Estimated wall time of ``embed(...).compute()`` on this machine: the probe's time
        per window times ``windows`` (``nan`` without a probe).
    device_estimates
        Per device class of the rate table: ``{"seconds": ..., "windows_per_s": ...,
        "source": ...}`` for this model.
    """

    model: str
    area_km2: float
    pixels: int
    dates: dict[str, int]
    windows: int
    output_shape: tuple[int, ...]
    chunks: int
    tasks: int
    bytes_read: int
    bytes_written: int
    flops: float
    flops_per_window: float
    probe_windows: int
    probe_s: float
    warmup_s: float
    seconds: float
    device_estimates: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-serialisable values."""
        out = dataclasses.asdict(self)
        out["output_shape"] = list(self.output_shape)
        return out

    def __str__(self) -> str:
        rows = [
            ("model", self.model),
            ("area", f"{self.area_km2:,.2f} km²"),
            ("pixels", f"{self.pixels:,} per date"),
            ("dates", ", ".join(f"{k}: {v}" for k, v in self.dates.items())),
            ("windows", f"{self.windows:,}"),
            ("output", f"{self.output_shape} float32"),
            ("chunks / tasks", f"{self.chunks:,} / {self.tasks:,}"),
            ("read / written", f"{_bytes(self.bytes_read)} / {_bytes(self.bytes_written)}"),
            ("model FLOPs", f"{self.flops:.3g} ({self.flops_per_window:.3g} per window)"),
            ("probe", f"{self.probe_windows} windows in {self.probe_s:.3f} s "
                      f"(+{self.warmup_s:.3f} s warm-up once)"),
            ("estimate here", _duration(self.seconds)),
        ]
        for name, est in self.device_estimates.items():
            rows.append((f"estimate {name}", f"{_duration(est['seconds'])} "
                                             f"(at {est['windows_per_s']:.4g} windows/s; "
                                             f"{est['source']})"))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def _duration(s: float) -> str:
    if not math.isfinite(s):
        return "unknown"
    if s < 120:
        return f"{s:.2f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def rate_table() -> dict[str, Any]:
    """The measured throughputs :func:`plan` uses for device classes.

    ``{model: {device_class: {"windows_per_s": ..., "source": ..., ...}}}``, read from
    ``xsky/data/rates.json`` (written by ``benchmarks/plan_rates.py``)."""
    text = resources.files("xsky").joinpath("data", "rates.json").read_text()
    table: dict[str, Any] = json.loads(text)["rates"]
    return table


def plan(obj: xr.DataArray | xr.Dataset | xr.DataTree, model: Any, *, probe: bool = True,
         device_class: str | None = None, **embed_options: Any) -> Plan:
    """Estimate what ``xsky.embed(obj, model, **embed_options)`` costs, before running it.

    Parameters
    ----------
    obj, model, **embed_options
        As for :func:`xsky.embed` (the same options, e.g. ``batch_size``, ``edge``,
        ``weights``, model options).
    probe
        Time one output chunk of the input (or, for large chunks, a block of a few batches
        of windows), run in this thread after a warm-up, and count the model's FLOPs.
        ``False``: geometry only,
        the time and FLOPs are ``nan`` (and only the rate table's estimates are given).
    device_class
        Only this device class of the rate table (default: every class measured for the
        model). An unknown class is refused with the known ones.

    Returns
    -------
    Plan
        Area, pixels, dates, windows, chunks and tasks, bytes read and written, model FLOPs,
        the probe and the wall-time estimates; ``print(plan)`` for a summary.

    Examples
    --------
    >>> import xsky
    >>> cube = xsky.tutorial.open_dataset("romania").isel(time=slice(0, 4))
    >>> p = xsky.plan(cube, "test-tiny")
    >>> p.windows
    1024
    """
    from .embedding import _plan, _prepare, _resolve_model, embed

    emb = embed(obj, model, **embed_options)
    weights = embed_options.get("weights")
    option_names = set(_EMBED_OPTIONS)
    model_options = {k: v for k, v in embed_options.items() if k not in option_names}
    net = _resolve_model(model, weights, model_options)
    spec = net.spec
    cubes = _prepare(obj, spec, embed_options.get("units"))
    overlap = _coerce.overlap(embed_options.get("overlap", 0))
    p = _plan(cubes, spec, overlap)
    first = next(iter(cubes.values()))
    per_date = not spec.fuses_time and first.time_dim is not None
    n_t = first.bands[0].shape[0] if per_date else 1
    windows = p.py.n_windows * p.px.n_windows * n_t
    dates = {name: (c.bands[0].shape[0] if c.time_dim is not None else 0)
             for name, c in cubes.items()}
    read = sum(int(a.nbytes) for c in cubes.values() for a in c.arrays)
    written = int(emb.data.nbytes) + int(emb["valid_fraction"].data.nbytes)

    flops = flops_per_window = probe_s = warmup_s = seconds = math.nan
    probe_windows = 0
    if probe:
        pr = _probe(cubes, net, spec, p, embed_options)
        probe_windows, probe_s, warmup_s = pr.windows, pr.seconds, pr.warmup_s
        flops_per_window = pr.flops_per_window
        device = _coerce.device(embed_options.get("device", "auto"))
        seconds = warmup_s + pr.wall_per_window(device) * windows
        flops = flops_per_window * windows

    estimates = {}
    rates = rate_table().get(spec.name, {})
    if device_class is not None:
        known = sorted({c for m in rate_table().values() for c in m})
        if device_class not in known:
            raise ArgumentError(f"unknown device_class {device_class!r}; the rate table "
                                f"measured {known}")
        rates = {device_class: rates[device_class]} if device_class in rates else {}
    for name, r in sorted(rates.items()):
        rate = float(r["windows_per_s"])
        estimates[name] = {"seconds": windows / rate, "windows_per_s": rate,
                           "source": str(r["source"])}
    return Plan(
        model=spec.name, area_km2=_area_km2(p.ref, p.crs), pixels=p.ref.ny * p.ref.nx,
        dates=dates, windows=windows, output_shape=tuple(int(s) for s in emb.shape),
        chunks=int(emb.data.npartitions), tasks=len(emb.data.__dask_graph__()),
        bytes_read=read, bytes_written=written, flops=flops,
        flops_per_window=flops_per_window, probe_windows=probe_windows, probe_s=probe_s,
        warmup_s=warmup_s, seconds=seconds, device_estimates=estimates,
    )


#: embed's own keywords (everything else is a model option)
_EMBED_OPTIONS = ("weights", "device", "batch_size", "edge", "overlap", "precision", "units",
                  "geo_context", "resources")


def _area_km2(ref: Any, crs: Any) -> float:
    """The grid's footprint: planar in a projected CRS (its linear unit), geodesic in a
    geographic one, ``nan`` without a CRS."""
    if crs is None:
        return math.nan
    from pyproj import CRS, Geod

    c = CRS.from_user_input(crs)
    if c.is_geographic:
        half_y, half_x = abs(ref.dy) / 2, abs(ref.dx) / 2
        ys = (ref.y0 + np.array([0, ref.ny - 1]) * ref.dy)
        xs = (ref.x0 + np.array([0, ref.nx - 1]) * ref.dx)
        lat0, lat1 = ys.min() - half_y, ys.max() + half_y
        lon0, lon1 = xs.min() - half_x, xs.max() + half_x
        geod = Geod(ellps="WGS84")
        area, _ = geod.polygon_area_perimeter([lon0, lon1, lon1, lon0],
                                              [lat0, lat0, lat1, lat1])
        return abs(float(area)) / 1e6
    unit = c.axis_info[0].unit_conversion_factor if c.axis_info else 1.0
    return abs(ref.dy * ref.dx) * ref.ny * ref.nx * unit * unit / 1e6


#: the probe computes one real chunk unless it holds more batches than this; then a block
#: of about ``_PROBE_BATCHES`` batches (the input rechunked: results do not depend on it)
_PROBE_MAX_BATCHES = 16
_PROBE_BATCHES = 8
#: timed runs of a probe shorter than ``_PROBE_MIN_S`` (at most ``_PROBE_REPEATS``)
_PROBE_MIN_S = 1.0
_PROBE_REPEATS = 5
#: a real chunk is probed instead of a small block when it would take at most this long
_PROBE_BUDGET_S = 10.0


@dataclass(frozen=True)
class _Probe:
    windows: int
    seconds: float  # the block, warm
    model_s: float  # of which in the model's forward
    warmup_s: float
    flops_per_window: float

    def wall_per_window(self, device: str) -> float:
        """Seconds per window of a whole run on the threaded scheduler.

        Model calls take turns on a device (:func:`xsky.runtime.device.device_lock`), so
        they add up; the rest of each block (reading, cutting windows, stitching) spreads
        over the scheduler's threads. A run takes the longer of the two."""
        from ..runtime.device import device_lock, resolve_device

        threads = os.cpu_count() or 1
        other = self.seconds - self.model_s
        if device_lock(resolve_device(device)) is not None:
            wall = max(self.model_s, self.seconds / threads, other / max(1, threads - 1))
        else:
            wall = self.seconds / threads
        return wall / self.windows


def _probe(cubes: Mapping[str, Any], net: Any, spec: Any, p: Any,
           embed_options: Mapping[str, Any]) -> _Probe:
    """Time one block of the real input through the engine, in this thread.

    The block is the output chunk nearest the centre of the cube, as the run will compute
    it (per-chunk costs included), or, for chunks of more than ``_PROBE_MAX_BATCHES``
    batches, a block of about ``_PROBE_BATCHES`` batches cut from the same input. It is
    computed with its ``valid_fraction`` by the synchronous scheduler: the first run pays
    the warm-up and counts the FLOPs, the next is timed (the best of up to
    ``_PROBE_REPEATS`` for a short block), with the model's share of it measured, from
    which :meth:`_Probe.wall_per_window` scales to a threaded run. When the small block
    shows that a real chunk would take at most ``_PROBE_BUDGET_S``, the real chunk is
    timed instead."""
    from .embedding import _plan

    batch = _coerce.optional_positive_int(embed_options.get("batch_size"), "batch_size",
                                          spec.default_batch_size)
    overlap = _coerce.overlap(embed_options.get("overlap", 0))
    per_axis = max(1, math.floor(math.sqrt(_PROBE_MAX_BATCHES * batch)))
    first = next(iter(cubes.values()))
    n_t = first.bands[0].chunks[0][0] if not spec.fuses_time else 1
    widest = max(b - a for a, b in p.py.windows) * max(b - a for a, b in p.px.windows) * n_t
    if widest > _PROBE_MAX_BATCHES * batch:
        per_axis = max(1, math.ceil(math.sqrt(_PROBE_BATCHES * batch / n_t)))
        g0 = spec.modality(first.name).grid_factor
        target = per_axis * p.py.core * g0
        small = {}
        for name, c in cubes.items():
            size = max(1, target * spec.modality(name).grid_factor // g0)
            chunks = (c.bands[0].chunks[0], size, size)
            small[name] = dataclasses.replace(
                c, bands=[b.rechunk(chunks) for b in c.bands],
                valid=None if c.valid is None else c.valid.rechunk(chunks))
        pr = _time_block(small, _plan(small, spec, overlap), net, spec, embed_options, batch)
        if pr.seconds / pr.windows * widest > _PROBE_BUDGET_S:
            return pr
        # a light model: the real chunk costs little more and carries the per-chunk costs
        # (reading, halos) that a small block overstates per window
        real = _time_block(cubes, p, net, spec, embed_options, batch)
        return dataclasses.replace(real, warmup_s=pr.warmup_s)
    return _time_block(cubes, p, net, spec, embed_options, batch)


def _time_block(cubes: Mapping[str, Any], p: Any, net: Any, spec: Any,
                embed_options: Mapping[str, Any], batch: int) -> _Probe:
    """Time the central output block of plan ``p`` (see :func:`_probe`)."""
    import dask

    from ..engine.flops import FlopCounter
    from .embedding import _graph, _task

    task, arrays = _task(
        net, cubes, p, device=_coerce.device(embed_options.get("device", "auto")),
        batch_size=batch, precision=_coerce.precision(embed_options.get("precision", "float32")),
        edge=_coerce.edge(embed_options.get("edge", "reflect")))
    data = _graph(arrays, task, p, None, net)
    by, bx = len(p.py.windows) // 2, len(p.px.windows) // 2
    index: tuple[int, ...] = (by, bx, 0)
    if data.ndim == 4:  # (T, Y, X, F): the first time chunk
        index = (0, *index)
    from ..engine.graph import build_valid_fraction
    from .embedding import _valid_fraction

    # the block and its valid_fraction: a run computes both (for a light model the
    # valid fraction is a good share of the time)
    fraction = _valid_fraction(cubes, spec, p.py, p.px, build_valid_fraction)
    part = fraction.blocks[index[:fraction.ndim]] if fraction.ndim else fraction
    pair = (data.blocks[index], part)
    n_windows = max(1, (p.py.windows[by][1] - p.py.windows[by][0])
                    * (p.px.windows[bx][1] - p.px.windows[bx][0])
                    * (data.chunks[0][0] if data.ndim == 4 else 1))
    model_s = [0.0]
    forward = net.embed_windows

    def timed(inputs: Any) -> Any:  # the model's share of the block's time
        t0 = time.perf_counter()
        try:
            return forward(inputs)
        finally:
            model_s[0] += time.perf_counter() - t0

    net.embed_windows = timed  # an instance attribute, removed below
    try:
        with dask.config.set(scheduler="sync"):
            # the warm-up run also counts the FLOPs (the counter's small cost lands there)
            t0 = time.perf_counter()
            with FlopCounter() as counter:
                dask.compute(*pair)
            first_s = time.perf_counter() - t0
            # a short block is timed a few times and the best kept (timeit's rule: the
            # fastest run is the one least disturbed by the rest of the machine), never
            # once only: the run after the FLOP-counted one still meets cold caches
            repeats = 1 if first_s >= _PROBE_MIN_S else min(
                _PROBE_REPEATS, max(2, math.ceil(_PROBE_MIN_S / max(first_s, 1e-3))))
            best = (math.inf, 0.0)
            for _ in range(repeats):
                model_s[0] = 0.0
                t0 = time.perf_counter()
                dask.compute(*pair)
                best = min(best, (time.perf_counter() - t0, model_s[0]))
    finally:
        del net.embed_windows
    warm_s, model = best
    return _Probe(n_windows, warm_s, min(model, warm_s), max(0.0, first_s - warm_s),
                  counter.total / n_windows)
