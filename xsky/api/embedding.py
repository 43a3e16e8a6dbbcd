"""``xsky.embed``: a datacube through a foundation model, lazily.

The steps read top to bottom: resolve the model → prepare the inputs (one
:class:`~xsky.api._inputs.Cube` per modality) → plan windows on the global pixel grid →
build the dask graph of block kernels → wrap the result as a georeferenced DataArray.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from .. import _coerce
from .._version import __version__
from ..exceptions import AlignmentError, ArgumentError, CRSError, DimensionError
from ..geo import GridInfo, _wkt, write_crs
from ..modalities import conversion

if TYPE_CHECKING:
    import dask.array as da

    from ..engine.kernel import BlockTask, ModalityInput
    from ..engine.plan import AxisPlan
    from ..models import EmbeddingModel
    from ..models.spec import ModelSpec
    from ._inputs import Cube

__all__ = ["embed"]

#: attributes of the input copied onto the embedding: the data's credit and licence
_CREDIT_ATTRS = ("attribution", "license", "licence", "source", "title")


def _resolve_model(model: Any, weights: Any, options: Mapping[str, Any]) -> EmbeddingModel:
    from ..models import EmbeddingModel

    if isinstance(model, str):
        from ..runtime.cache import get_or_create

        # cached: tasks in this process reuse it, and a second embed() does not rebuild it
        return get_or_create(model, weights, **options)
    if isinstance(model, EmbeddingModel):
        if weights is not None or options:
            raise ArgumentError(
                "weights/model options were given together with a ready model instance; pass "
                "them to xsky.models.create_model instead, or pass the model's name"
            )
        if getattr(model, "ref", None) is None:
            model.set_ref(None)
        from ..runtime.cache import put_model

        put_model(model)
        return model
    raise ArgumentError(
        f"model must be a registered model name (see xsky.models.list_models()) or an "
        f"xsky.models.EmbeddingModel, got {type(model).__name__}; wrap plain torch modules "
        "with xsky.models.wrap(...)"
    )


def _reference_grid(cubes: Mapping[str, Cube], spec: ModelSpec) -> tuple[GridInfo, Any]:
    """The output's reference grid (a grid_factor-1 modality, or a coarsened finer one)."""
    cube = _reference_cube(cubes, spec)
    ref_mod = spec.modality(cube.name)
    g = ref_mod.grid_factor
    gi = cube.grid
    if gi.ny % g or gi.nx % g:
        raise DimensionError(
            f"modality {ref_mod.name!r} is {gi.ny}x{gi.nx} pixels, not a multiple of its grid "
            f"factor {g}; crop it to a multiple of {g}"
        )
    ref = GridInfo(gi.ydim, gi.xdim, gi.y0 + (g - 1) / 2 * gi.dy, gi.x0 + (g - 1) / 2 * gi.dx,
                   gi.dy * g, gi.dx * g, gi.ny // g, gi.nx // g)
    for m in spec.modalities:
        if m.name not in cubes or m.name == ref_mod.name:
            continue
        c = cubes[m.name].grid
        want = (ref.ny * m.grid_factor, ref.nx * m.grid_factor)
        ratio_y = ref.dy / c.dy
        y0 = c.y0 + (m.grid_factor - 1) / 2 * c.dy
        x0 = c.x0 + (m.grid_factor - 1) / 2 * c.dx
        tol = 1e-3 * abs(ref.dx)
        if (c.ny, c.nx) != want or abs(ratio_y - m.grid_factor) > 1e-6 or \
                abs(y0 - ref.y0) > tol or abs(x0 - ref.x0) > tol:
            raise AlignmentError(
                f"modality {m.name!r} is not aligned with {ref_mod.name!r}: it must be exactly "
                f"{m.grid_factor}x finer on the same footprint (shape {want}), found shape "
                f"{(c.ny, c.nx)} and a pixel-size ratio of {ratio_y:g}; align it with "
                "xsky.stack(...)"
            )
    return ref, cube.crs


_CFTIME_CALENDARS = ("standard", "gregorian", "proleptic_gregorian")


def _as_datetimes(time: Any, modality: str) -> Any:
    """The time coordinate as a :class:`pandas.DatetimeIndex`.

    Only real dates are accepted: integer or float "times" (an undecoded netCDF time axis)
    would silently become 1970-01-01 plus nanoseconds, so they are refused with the fix;
    cftime dates in a standard calendar are converted, other calendars refused.
    """
    import pandas as pd

    values = np.asarray(time)
    if np.issubdtype(values.dtype, np.datetime64):
        return pd.DatetimeIndex(values)
    if values.dtype == object and values.size and all(
            hasattr(v, "calendar") and hasattr(v, "dayofyr") for v in values.ravel().tolist()):
        calendars = sorted({str(v.calendar) for v in values.ravel().tolist()})
        if all(c in _CFTIME_CALENDARS for c in calendars):
            return xr.CFTimeIndex(values.ravel()).to_datetimeindex(time_unit="ns")
        raise DimensionError(
            f"'time' of modality {modality!r} holds cftime dates in the {calendars[0]!r} "
            "calendar, whose day of year differs from the real one; convert it first with "
            "ds.convert_calendar('standard', align_on='date') (or assign real datetimes)"
        )
    example = values.ravel()[0] if values.size else None
    raise DimensionError(
        f"'time' of modality {modality!r} must hold dates (datetime64), got dtype "
        f"{values.dtype} (e.g. {example!r}); decode it with xr.decode_cf(ds) (or open the file "
        "with decode_times=True), or assign datetimes with "
        "ds.assign_coords(time=pd.to_datetime(...))"
    )


def _date_parts(time: Any, modality: str
                ) -> tuple[tuple[int, ...], tuple[int, ...]] | tuple[None, None]:
    """Day of year (1..365) and month (0 = January) of each date.

    ``(None, None)`` for a modality without a time axis. Day 366 of a leap year reuses 365.
    """
    if time is None:
        return None, None
    dates = _as_datetimes(time, modality)
    return (tuple(int(min(d, 365)) for d in dates.day_of_year),
            tuple(int(m) - 1 for m in dates.month))


def embed(
    obj: xr.DataArray | xr.Dataset | xr.DataTree,
    model: Any,
    *,
    weights: Any = None,
    device: Any = "auto",
    batch_size: int | None = None,
    edge: str = "reflect",
    overlap: int = 0,
    precision: str = "float32",
    units: str | Mapping[str, str] | None = None,
    geo_context: xr.Dataset | None = None,
    resources: Mapping[str, float] | None = None,
    **model_options: Any,
) -> xr.DataArray:
    """Embed a datacube with a foundation model, lazily.

    Windows are placed on a grid anchored to the array's pixel grid, so the result does not
    depend on the chunking; each dask block gathers the windows it owns (with a halo from its
    neighbours), normalises them, runs the model in batches and keeps each window's centre.

    Parameters
    ----------
    obj
        A Dataset with one variable per band (canonical names or aliases such as ``B2``,
        ``blue``, ``nir``) and an optional boolean ``valid`` variable; a DataArray with a
        labelled ``band`` dimension; or a DataTree with one node per modality (``s2``, ``s1``,
        ``hr``). Dims ``(time, y, x)`` or ``(y, x)``; regular, monotonic x/y and a CRS.
        Numpy-backed input is wrapped into dask.
    model
        A registered name (``xsky.models.list_models()``) or an
        :class:`~xsky.models.EmbeddingModel` (e.g. from :func:`xsky.models.wrap`).
    weights
        Local weights for a named model.
    device
        ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``;
        resolved inside each task.
    batch_size
        Windows per forward pass. ``None`` (default): each worker chooses it inside its
        tasks, once per model, device, window shape and precision: on CUDA from the free
        device memory and the measured memory of a small probe batch (at most 75 % of the
        free memory, at most 1024 windows; halved and retried after an out-of-memory
        error), on the CPU the model's ``default_batch_size``, lowered where a batch would
        take more than a quarter of the available RAM (see :mod:`xsky.runtime.batching`).
        An explicit size is used as given (an out-of-memory error then names it). The
        values do not depend on it (up to floating-point rounding), so it is not part of
        a :func:`xsky.to_zarr` resume fingerprint.
    edge
        How windows see past the array's edges: ``"reflect"`` (mirror pixels) or ``"pad"``
        (treated as missing data and filled, like invalid pixels). Nothing is dropped: the
        output covers ``ceil(n / stride)`` pixels per axis.
    overlap
        Dense models: context pixels discarded on each side of every window (multiple of the
        stride, less than half the window). More overlap, fewer seam effects, more compute.
    precision
        ``"float32"`` or ``"bfloat16"`` (autocast; worthwhile on CUDA).
    units
        Units of the input (``"reflectance"``, ``"dn"``, ``"db"``, ``"linear"``,
        ``"rgb255"``), or a dict per modality; by default read from ``attrs["units"]`` or the
        stored dtype (integer Sentinel-2 values are taken as DN = reflectance x 10 000).
    geo_context
        Prototypes from :func:`xsky.prototypes`: each pixel's feature is enriched with its
        region's prototypes (feature dim doubles).
    resources
        Dask resources each model task needs on a ``distributed`` cluster, e.g.
        ``{"GPU": 1}`` with workers started as ``dask worker --resources GPU=1``, so each GPU
        runs one model task at a time. Only set it when the workers declare these resources:
        otherwise the tasks wait forever.
    **model_options
        Passed to :func:`xsky.models.create_model` for a named model (e.g. ``stride=64`` for
        SatCLIP image encoders, ``temporal="per-date"`` for SkySense).

    Returns
    -------
    xarray.DataArray
        Named ``embedding``, float32, dims ``(time, y, x, feature)`` for per-date models and
        ``(y, x, feature)`` for models that fuse time; pixel-centre coordinates at the output
        stride; the input CRS; a ``valid_fraction`` coordinate (fraction of valid input pixels
        under each output pixel; outputs with none are NaN); provenance in ``attrs``.

    Examples
    --------
    >>> import xsky
    >>> cube = xsky.tutorial.open_dataset("romania").isel(time=slice(0, 4))
    >>> emb = xsky.embed(cube, "test-tiny")
    >>> emb.dims, emb.shape
    (('time', 'y', 'x', 'feature'), (4, 16, 16, 16))
    """
    edge = _coerce.edge(edge)
    precision = _coerce.precision(precision)
    device = _coerce.device(device)
    overlap = _coerce.overlap(overlap)
    if resources is not None:
        resources = _coerce.resources(resources)
    if device.startswith("cuda"):
        _check_cuda_reachable(device)

    net = _resolve_model(model, weights, model_options)
    spec = net.spec
    # None stays None: the batch size is chosen inside each task, by the worker's device
    batch = None if batch_size is None else _coerce.optional_positive_int(
        batch_size, "batch_size", spec.default_batch_size)
    cubes = _prepare(obj, spec, units)
    plan = _plan(cubes, spec, overlap)
    task, arrays = _task(net, cubes, plan, device=device, batch_size=batch,
                         precision=precision, edge=edge)
    data = _graph(arrays, task, plan, resources, net)
    out = _wrap_result(data, cubes, plan, net, task, edge=edge, overlap=overlap)
    # the data's credit travels with what is made from it (maps, stores, STAC items)
    source_attrs = obj.attrs if not isinstance(obj, xr.DataTree) else obj.to_dataset().attrs
    for key in _CREDIT_ATTRS:
        if key in source_attrs and key not in out.attrs:
            out.attrs[key] = source_attrs[key]
    from ..io.zarr_regions import input_identity

    ident = input_identity(obj)  # source files and STAC items: what a resumed write checks
    if ident is not None:
        out.attrs["input_identity"] = json.dumps(ident, sort_keys=True, default=str)
    if geo_context is not None:
        from .geo_prototypes import geo_context as _geo_context

        out = _geo_context(out, geo_context)
    return out


# -- the steps of embed --------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """Where the output lives and how windows cut the reference grid."""

    ref: GridInfo
    crs: Any
    py: AxisPlan
    px: AxisPlan
    time_chunks: tuple[int, ...]


def _prepare(obj: Any, spec: ModelSpec, units: Any) -> dict[str, Cube]:
    from ._inputs import prepare_cubes

    return prepare_cubes(obj, spec, units=units)


def _plan(cubes: Mapping[str, Cube], spec: ModelSpec, overlap: int) -> _Plan:
    from ..engine.plan import plan_axis

    ref, crs = _reference_grid(cubes, spec)
    first = next(iter(cubes.values()))
    g0 = spec.modality(first.name).grid_factor
    # chunk the output like the first modality's input (in reference pixels)
    # (the largest chunk: a flipped axis has its remainder chunk first)
    target_y = max(1, max(first.bands[0].chunks[1]) // g0)
    target_x = max(1, max(first.bands[0].chunks[2]) // g0)
    py = plan_axis(ref.ny, spec.window, spec.stride, spec.output, overlap, target_y, ref.ydim)
    px = plan_axis(ref.nx, spec.window, spec.stride, spec.output, overlap, target_x, ref.xdim)
    return _Plan(ref, crs, py, px, tuple(first.bands[0].chunks[0]))


def _task(net: EmbeddingModel, cubes: Mapping[str, Cube], plan: _Plan, *, device: str,
          batch_size: int | None, precision: str, edge: str
          ) -> tuple[BlockTask, list[da.Array]]:
    """The picklable per-task recipe, and the haloed input arrays in kernel order."""
    from ..engine.graph import chunk_with_halo
    from ..engine.kernel import BlockTask, ModalityInput

    spec = net.spec
    mods: list[ModalityInput] = []
    arrays: list[da.Array] = []
    for m in spec.modalities:
        if m.name not in cubes:
            continue
        cube = cubes[m.name]
        doy, month = _date_parts(cube.time, m.name) if spec.fuses_time else (None, None)
        mods.append(ModalityInput(m.name, len(m.bands), m.grid_factor,
                                  conversion(cube.units, m.units, m.name), m.mean, m.std, doy,
                                  month, cube.nodata, cube.valid is not None, cube.units_check))
        n_t = cube.bands[0].shape[0]
        tch = (n_t,) if spec.fuses_time else cube.bands[0].chunks[0]
        for a in cube.arrays:
            arrays.append(chunk_with_halo(a, plan.py, plan.px, m.grid_factor, tch))
    grid = crs_wkt = None
    if spec.location is not None:
        if plan.crs is None:
            raise CRSError(
                f"model {spec.name!r} encodes each window's location, which needs the cube's "
                "CRS; set one with ds.rio.write_crs('EPSG:...') (or pass location=False)"
            )
        grid = (float(plan.ref.y0), float(plan.ref.dy), float(plan.ref.x0), float(plan.ref.dx))
        crs_wkt = _wkt(plan.crs)
    task = BlockTask(net.ref, tuple(mods), plan.py, plan.px, spec.fuses_time, spec.output,
                     spec.feature_dim, device, batch_size, precision, edge, spec.band_mask,
                     spec.location, grid, crs_wkt)
    return task, arrays


def _graph(arrays: list[da.Array], task: BlockTask, plan: _Plan,
           resources: Mapping[str, float] | None, net: EmbeddingModel) -> da.Array:
    from ..engine.graph import build_embedding, check_resources, restrict_on_cluster

    client = _connected_client()
    if client is not None and resources:
        check_resources(client, resources)  # up front: before anything is shipped
    if client is not None and net.ref.name is None:
        from ..runtime.plugin import preload

        preload(net, client)  # an unregistered model travels to the workers once
    out = build_embedding(arrays, task, plan.time_chunks, resources=resources)
    if client is not None and resources:
        # layer annotations do not survive client.compute's low-level optimisation
        restrict_on_cluster(out, resources, client)
    return out


def _wrap_result(data: da.Array, cubes: Mapping[str, Cube], plan: _Plan, net: EmbeddingModel,
                 task: BlockTask, *, edge: str, overlap: int) -> xr.DataArray:
    """The lazy array as a georeferenced ``embedding`` with ``valid_fraction`` and provenance.

    The engine works in the canonical orientation (y descending, x ascending); the result is
    laid out again in the input's storage order (lazy reversed views)."""
    from ..engine.graph import build_valid_fraction

    spec, ref = net.spec, plan.ref
    first = next(iter(cubes.values()))
    ycoord = ref.y_coords(0, spec.stride, plan.py.n_out)
    xcoord = ref.x_coords(0, spec.stride, plan.px.n_out)
    dims: tuple[str, ...] = (ref.ydim, ref.xdim, "feature")
    per_date = not spec.fuses_time and first.time_dim is not None
    if per_date:
        dims = ("time", *dims)
    elif not spec.fuses_time:
        data = data[0]
    fraction = _valid_fraction(cubes, spec, plan.py, plan.px, build_valid_fraction)
    ref_cube = _reference_cube(cubes, spec)
    flip_y, flip_x = ref_cube.flip_y, ref_cube.flip_x
    if flip_y or flip_x:
        ys = slice(None, None, -1 if flip_y else 1)
        xs = slice(None, None, -1 if flip_x else 1)
        ycoord, xcoord = ycoord[ys], xcoord[xs]
        data = data[..., ys, xs, :]
        fraction = fraction[..., ys, xs]
    coords: dict[str, Any] = {ref.ydim: ycoord, ref.xdim: xcoord,
                              "feature": np.arange(spec.feature_dim)}
    if per_date:
        coords["time"] = first.time
    vf_dims = ("time", ref.ydim, ref.xdim) if per_date else (ref.ydim, ref.xdim)
    out = xr.DataArray(data, dims=dims, coords=coords, name="embedding")
    out = out.assign_coords(valid_fraction=(vf_dims, fraction))
    out = write_crs(out, plan.crs)
    if len(ycoord) == 1 or len(xcoord) == 1:
        # one pixel along an axis: its size cannot be read off the coordinates, so the
        # transform is stored (only then: a stored transform goes stale under out[::2])
        from affine import Affine

        dy = ref.dy * spec.stride * (-1 if flip_y else 1)
        dx = ref.dx * spec.stride * (-1 if flip_x else 1)
        x0, y0 = float(xcoord[0]), float(ycoord[0])
        out = out.rio.write_transform(Affine(dx, 0.0, x0 - dx / 2, 0.0, dy, y0 - dy / 2))
    out.attrs.update(_provenance(net, spec, edge, overlap, task.modalities, task.device,
                                 task.precision, cubes))
    # as given ("auto": each worker chose it); values do not depend on it, so it is not
    # part of a to_zarr resume fingerprint
    out.attrs["batch_size"] = "auto" if task.batch_size is None else int(task.batch_size)
    return out


def _reference_cube(cubes: Mapping[str, Cube], spec: ModelSpec) -> Cube:
    """The cube whose grid the output lives on: the first grid-factor-1 modality present,
    else the first present (its grid is then coarsened by :func:`_reference_grid`)."""
    ref_mod = next((m for m in spec.modalities if m.name in cubes and m.grid_factor == 1), None)
    if ref_mod is None:
        ref_mod = next(m for m in spec.modalities if m.name in cubes)
    return cubes[ref_mod.name]


def _valid_fraction(cubes: Mapping[str, Cube], spec: ModelSpec, py: AxisPlan, px: AxisPlan,
                    build: Any) -> Any:
    import dask.array as da

    fracs, weights = [], []
    for m in spec.modalities:
        if m.name not in cubes:
            continue
        cube = cubes[m.name]
        f = build(cube.bands, cube.valid, cube.nodata, spec.stride * m.grid_factor,
                  py.out_chunks, px.out_chunks, spec.band_mask,
                  conversion(cube.units, m.units, m.name))
        if spec.fuses_time:
            fracs.append(f.mean(axis=0) * f.shape[0])
            weights.append(f.shape[0])
        else:
            return f if cube.time_dim is not None else f[0]
    total = fracs[0]
    for f in fracs[1:]:
        total = total + f
    return (total / float(sum(weights))).astype(np.float32) if len(fracs) else da.zeros(())


def _provenance(net: EmbeddingModel, spec: ModelSpec, edge: str, overlap: int,
                mods: tuple[ModalityInput, ...], device: str, precision: str,
                cubes: Mapping[str, Cube] | None = None) -> dict[str, Any]:
    # "model_units": the units the model's mean/std apply to (what the input was converted
    # to); "input_units": what the input was taken to be, and why
    norm = {m.name: {"bands": list(spec.modality(m.name).bands), "model_units":
                     spec.modality(m.name).units, "mean": m.mean, "std": m.std}
            for m in mods}
    inputs = {m.name: cubes[m.name].units for m in mods} if cubes else {}
    sources = {m.name: cubes[m.name].units_source for m in mods} if cubes else {}
    ref = getattr(net, "ref", None)
    files = {os.path.basename(f): d for f, d in getattr(ref, "files", ())}
    options = dict(getattr(ref, "overrides", ()))
    return {
        "model": spec.name,
        "weights_sha256": net.weights_sha256,
        # each weight file's own digest (what model cards pin) and the model options
        "weights_files": json.dumps(files),
        "model_options": json.dumps(options, default=str),
        "xsky_version": __version__,
        "window": spec.window,
        "stride": spec.stride,
        "overlap": int(overlap),
        "edge": edge,
        "output_kind": spec.output,
        "fuses_time": str(bool(spec.fuses_time)).lower(),
        "modalities": ",".join(m.name for m in mods),
        "normalization": json.dumps(norm),
        "input_units": json.dumps(inputs),
        "input_units_source": json.dumps(sources),
        "precision": precision,
    }


def _check_cuda_reachable(device: str) -> None:
    """Refuse an explicit CUDA device when neither this process nor a cluster can provide it."""
    import torch

    if torch.cuda.is_available() or _connected_client() is not None:
        return
    raise ArgumentError(
        f"device={device!r} was requested but no CUDA GPU is available here and no dask "
        "cluster is connected; use device='auto' (CPU here, GPU where present) or 'cpu'"
    )


def _connected_client() -> Any:
    """The connected ``distributed`` client, or ``None`` (none, or distributed missing)."""
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:
        return None
