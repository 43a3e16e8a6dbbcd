"""Turn user xarray objects into per-modality raw arrays the engine understands.

Every check here reads metadata (dims, coords, dtypes, attrs, chunks) only; pixel values are
touched only when the input is already in memory (numpy-backed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import dask.array as da
import numpy as np
import xarray as xr

from .. import modalities
from ..exceptions import (
    ArgumentError,
    BandMismatchError,
    ChunkingError,
    DataError,
    DimensionError,
    UnitsError,
    format_choices,
)
from ..geo import GridInfo, get_crs, grid_info
from ..modalities import canonical_band, match_bands
from ..models.spec import ModalitySpec, ModelSpec

if TYPE_CHECKING:
    from ..engine.checks import UnitsCheck

__all__ = ["Cube", "prepare_cubes"]

_BAND_DIMS = ("band", "bands", "variable", "channel")


@dataclass
class Cube:
    """One modality, ready for the graph: one ``(T, Y, X)`` dask array per band, in the
    model's band order and the input's dtype, all with the same chunks, and an optional
    boolean ``valid`` array. Conversion to float32 and nodata masking happen in the kernel,
    so the data is copied once, into each block's buffer.

    The arrays and ``grid`` are in the canonical orientation (y descending, north up; x
    ascending): ``flip_y``/``flip_x`` record which axes of the input were reversed (lazily)
    to get there, so the result can be laid out in the input's order again."""

    name: str
    bands: list[da.Array]
    nodata: tuple[float | None, ...]
    valid: da.Array | None
    grid: GridInfo
    time_dim: str | None
    time: Any  # the time coordinate values (or None)
    units: str
    crs: Any
    units_source: str = "given"
    variables: tuple[str, ...] = ()
    flip_y: bool = False
    flip_x: bool = False
    units_check: UnitsCheck | None = None  # run inside the tasks on the pixels read

    @property
    def arrays(self) -> list[da.Array]:
        """The arrays a window of this modality reads, in kernel order: the bands, then
        ``valid`` when there is one."""
        return [*self.bands, *([self.valid] if self.valid is not None else [])]


def _is_static(name: str) -> bool:
    """Whether the table says a modality has no time axis (terrain)."""
    entry = _table_entry(name)
    return entry is not None and entry.static


def _table_entry(name: str) -> modalities.Modality | None:
    """The table's entry for a model modality, or ``None`` for a name not in the table."""
    return modalities.get(name) if name in modalities.names() else None


def _stored_integer(var: xr.DataArray) -> bool:
    """Whether the values are integers, in memory or as stored without a scale factor."""
    enc_dtype = var.encoding.get("dtype")
    return bool(np.issubdtype(var.dtype, np.integer) or (
        enc_dtype is not None and np.issubdtype(np.dtype(enc_dtype), np.integer)
        and "scale_factor" not in var.encoding
    ))


def _infer_units(var: xr.DataArray, mod: ModalitySpec, override: str | None,
                 name: str = "") -> tuple[str, str]:
    """The units of a modality's values and where that came from (for messages).

    An explicit ``units=`` wins, then ``attrs["units"]``, then the stored dtype. A claim of
    reflectance on integer values is refused: integers cannot hold reflectance in [0, 1].
    """
    label = name or str(var.name)
    if override is not None:
        units, source = modalities.normalise_units(override), f"units={override!r}"
    else:
        attr = var.attrs.get("units")
        key = attr.strip().lower() if isinstance(attr, str) else None
        entry = _table_entry(mod.name)
        if key in modalities.UNITS:
            units, source = modalities.UNITS[key], f"attrs['units']={attr!r} of {label!r}"
        elif entry is None:
            return mod.units, "the model's units (modality not in xsky's table)"
        else:
            integer = _stored_integer(var)
            units = entry.default_units(integer)
            kind = "integer" if integer else "floating-point"
            source = (f"assumed from the {kind} dtype of {label!r}, which has no "
                      "attrs['units']")
    if units == "reflectance" and np.issubdtype(var.dtype, np.integer):
        entry = _table_entry(mod.name)
        alt = "dn" if entry is not None and "dn" in entry.units else None
        fix = ("pass units='dn' if they are digital numbers (reflectance x 10 000), or "
               if alt else "")
        raise UnitsError(
            f"band {label!r} of modality {mod.name!r} holds {var.dtype} integers but is "
            f"declared as reflectance ({source}); integers cannot be reflectance in [0, 1] "
            f"(a float cube cast to integers keeps its 'units' attribute). {fix}convert to "
            f"float reflectance, e.g. ds[{label!r}].astype('float32') * 1e-4, before embedding"
        )
    return units, source


def _units_check(mod: ModalitySpec, units: str, source: str, variables: list[str]
                 ) -> UnitsCheck | None:
    """The in-task plausibility check for a modality in ``units`` (``None``: nothing known)."""
    from ..engine.checks import units_check

    entry = _table_entry(mod.name)
    if entry is None:
        return None
    return units_check(mod.name, variables, units, source, dict(entry.plausible))


def _check_dtype(var: xr.DataArray, name: str, mod: ModalitySpec) -> None:
    dt = var.dtype
    if dt.kind == "b" or not (np.issubdtype(dt, np.integer) or np.issubdtype(dt, np.floating)):
        raise DataError(
            f"band {name!r} has dtype {dt}; xsky needs integer or floating-point values "
            f"(convert with ds[{name!r}].astype('float32'))"
        )
    entry = _table_entry(mod.name)
    bits = dt.itemsize * 8
    if np.issubdtype(dt, np.integer) and entry is not None and bits < entry.min_int_bits:
        raise DataError(
            f"band {name!r} is {dt}: {bits}-bit integers overflow for {mod.name.upper()} values "
            "(Sentinel-2 DN reach 10 000 and more), so the data were probably clipped or wrapped; "
            "load it as uint16 or float32 reflectance"
        )
    if np.issubdtype(dt, np.integer) and dt.itemsize == 8:
        raise DataError(
            f"band {name!r} is {dt}: 64-bit integers cannot be converted to float32 exactly; "
            "convert with .astype('float32') after checking the value range"
        )


def _band_labels(obj: xr.DataArray, bdim: str, mod: ModalitySpec) -> list[str] | None:
    """String labels for the bands of a DataArray whose ``band`` coordinate holds numbers
    (``rioxarray.open_rasterio`` numbers bands 1..n): the GDAL band descriptions rioxarray
    keeps in ``attrs["long_name"]``, when there is one per band; otherwise an error that
    shows how to label them."""
    labels = obj[bdim].values
    if all(isinstance(v, str) for v in labels.tolist()):
        return None
    n = obj.sizes[bdim]
    desc = obj.attrs.get("long_name")
    if isinstance(desc, str):
        desc = (desc,)
    if isinstance(desc, tuple | list) and len(desc) == n and all(
            isinstance(d, str) and d.strip() for d in desc) and len(set(desc)) == n:
        return [str(d).strip() for d in desc]
    shown = list(mod.bands) if n == len(mod.bands) else [f"<name of band {int(v)}>"
                                                             for v in labels.tolist()][:n]
    raise BandMismatchError(
        f"DataArray {obj.name!r} labels its {bdim!r} dimension with numbers "
        f"{labels.tolist()[:8]} and has no band descriptions (attrs['long_name']), so xsky "
        f"cannot tell which band is which; the model needs bands {list(mod.bands)}. Label "
        f"them in file order, e.g. obj.assign_coords({bdim}={shown!r})"
    )


def _stackstac_centres(obj: Any) -> Any:
    """Pixel-centre coordinates for a ``stackstac.stack`` cube built with its default
    ``xy_coords="topleft"`` (coordinates at the top-left corner of each pixel, half a pixel
    off the centres xsky assumes), detected from the affine ``transform`` stackstac keeps in
    ``attrs``: centres lie half a pixel from the transform's origin, corners a whole number
    of pixels. Anything else is returned unchanged."""
    attrs = obj.attrs if isinstance(obj, xr.DataArray | xr.Dataset) else {}
    transform = attrs.get("transform")
    if "spec" not in attrs or transform is None or not hasattr(transform, "c"):
        if isinstance(obj, xr.Dataset):
            first = next((obj[v] for v in obj.data_vars if "spec" in obj[v].attrs), None)
            if first is not None:
                transform = first.attrs.get("transform")
                attrs = first.attrs
        if "spec" not in attrs or transform is None or not hasattr(transform, "c"):
            return obj
    if "x" not in obj.coords or "y" not in obj.coords or obj.sizes.get("x", 0) < 1 or \
            obj.sizes.get("y", 0) < 1:
        return obj
    dx, dy = float(transform.a), float(transform.e)
    if dx == 0 or dy == 0 or transform.b or transform.d:
        return obj
    fx = (float(obj["x"].values[0]) - float(transform.c)) / dx
    fy = (float(obj["y"].values[0]) - float(transform.f)) / dy
    if abs(fx - round(fx)) > 1e-6 or abs(fy - round(fy)) > 1e-6:
        return obj  # already centres (xy_coords="center")
    x = obj["x"]
    y = obj["y"]
    return obj.assign_coords(x=(x + dx / 2).assign_attrs(x.attrs),
                             y=(y + dy / 2).assign_attrs(y.attrs))


def _as_dataset(obj: xr.DataArray | xr.Dataset, mod: ModalitySpec) -> xr.Dataset:
    if isinstance(obj, xr.Dataset):
        return _stackstac_centres(obj)
    if not isinstance(obj, xr.DataArray):
        raise ArgumentError(f"expected an xarray Dataset or DataArray, got {type(obj).__name__}")
    obj = cast("xr.DataArray", _stackstac_centres(obj))
    bdim = next((d for d in _BAND_DIMS if d in obj.dims), None)
    valid = obj.coords.get("valid")
    if bdim is None:
        if obj.name is None or len(mod.bands) != 1:
            raise DimensionError(
                f"DataArray {obj.name!r} has dims {obj.dims} and no 'band' dimension, but the "
                f"model needs bands {list(mod.bands)}; pass a Dataset with one variable per "
                "band, or a DataArray with a 'band' dimension labelled by band name"
            )
        ds = obj.drop_vars("valid", errors="ignore").to_dataset()
    else:
        if bdim not in obj.coords:
            raise DimensionError(
                f"DataArray {obj.name!r} has a {bdim!r} dimension without labels; label it with "
                f"obj.assign_coords({bdim}={list(mod.bands)!r})"
            )
        labels = _band_labels(obj, bdim, mod)
        if labels is not None:
            obj = obj.assign_coords({bdim: labels})
        # coordinates along the band axis (stackstac's titles, wavelengths) would become
        # variables of their own: drop them
        extra = [str(c) for c, v in obj.coords.items() if c != bdim and bdim in v.dims]
        ds = obj.drop_vars(["valid", *extra], errors="ignore").to_dataset(dim=bdim)
        ds = ds.rename({k: str(k) for k in ds.data_vars if not isinstance(k, str)})
    if valid is not None:
        ds["valid"] = valid
    return ds


def prepare_modality(
    obj: xr.DataArray | xr.Dataset, mod: ModalitySpec, *, fuses_time: bool,
    units: str | None = None, what: str = "input", rechunk_time: bool = False,
) -> Cube:
    """Check one modality's xarray object and gather its band and ``valid`` dask arrays,
    in the canonical orientation (y descending, x ascending; reversed lazily if need be).

    A time-fusing model needs all dates of a block at once: ``rechunk_time`` (models with a
    small ``max_timesteps``) merges the time chunks, otherwise split time is refused."""
    ds = _as_dataset(obj, mod)
    stored = grid_info(ds)
    flip_y, flip_x = stored.dy > 0, stored.dx < 0
    grid = GridInfo(
        stored.ydim, stored.xdim,
        stored.y0 + (stored.ny - 1) * stored.dy if flip_y else stored.y0,
        stored.x0 + (stored.nx - 1) * stored.dx if flip_x else stored.x0,
        -stored.dy if flip_y else stored.dy, -stored.dx if flip_x else stored.dx,
        stored.ny, stored.nx,
    )
    crs = get_crs(ds)
    available = [str(v) for v in ds.data_vars if v != "valid"]
    wanted = present_bands(available, mod) if mod.partial else mod.bands
    if not wanted:
        raise BandMismatchError(
            f"{what} holds none of the bands of modality {mod.name!r} ({list(mod.bands)}); "
            f"found {available}. Rename variables to canonical names or aliases"
        )
    names = match_bands(available, wanted, mod.name, what=what)
    allowed = {grid.ydim, grid.xdim, "time"}
    first = ds[names[wanted[0]]]
    time_dim = "time" if "time" in first.dims else None
    order = ((time_dim,) if time_dim else ()) + (grid.ydim, grid.xdim)
    arrays, in_memory = [], []
    for band in wanted:
        var = ds[names[band]]
        extra = {str(d) for d in var.dims} - allowed
        if extra:
            raise DimensionError(
                f"band {names[band]!r} of {what} has unexpected dimension(s) {sorted(extra)}; "
                f"expected a subset of {sorted(allowed)}. Select or stack them first (e.g. "
                f"ds.isel({sorted(extra)[0]}=0))"
            )
        if set(var.dims) != set(order):
            raise DimensionError(
                f"band {names[band]!r} of {what} has dims {var.dims} but band "
                f"{names[wanted[0]]!r} has {first.dims}; all bands must share dims"
            )
        _check_dtype(var, names[band], mod)
        var = var.transpose(*order)
        in_memory.append(not isinstance(var.data, da.Array))
        arrays.append((var.data, nodata_of(var, mod.name)))
    band_units, units_source = _infer_units(first, mod, units, names[wanted[0]])
    variables = [names[b] for b in wanted]

    shape = arrays[0][0].shape
    if any(s == 0 for s in shape):
        raise DimensionError(f"{what} is empty (shape {dict(zip(order, shape, strict=True))})")
    if fuses_time and time_dim is not None and not all(in_memory) and not rechunk_time:
        tchunks = arrays[0][0].chunks[0]
        if len(tchunks) > 1:
            raise ChunkingError(
                f"'time' of {what} is split into {len(tchunks)} chunks {tchunks}, but the model "
                "fuses all dates of a pixel at once; use obj.chunk(time=-1)"
            )
    if all(in_memory):
        t_chunk = -1 if fuses_time else 16
        chunks: tuple[Any, ...] = (t_chunk, 512, 512)
    else:
        ref = next(a for a, _ in arrays if isinstance(a, da.Array))
        chunks = ref.chunks
        if fuses_time and rechunk_time and time_dim is not None and len(chunks[0]) > 1:
            chunks = ((sum(chunks[0]),), *chunks[1:])  # few dates: one chunk is cheap
    bands: list[da.Array] = []
    nodatas: list[float | None] = []
    for data, nodata in arrays:
        d = data if isinstance(data, da.Array) else da.from_array(data, chunks=chunks[-data.ndim:])
        target = bands[0].chunks[-d.ndim:] if bands else tuple(chunks[-d.ndim:])
        if d.chunks != target:
            d = d.rechunk(target)
        if time_dim is None:
            d = d[None]
        bands.append(d)
        nodatas.append(nodata)
    if mod.partial and len(wanted) < len(mod.bands):
        # absent bands are missing data: NaN, generated per chunk (nothing is stored)
        given = dict(zip(wanted, zip(bands, nodatas, strict=True), strict=True))
        nan = da.full(bands[0].shape, np.nan, dtype=np.float32, chunks=bands[0].chunks)
        bands = [given[b][0] if b in given else nan for b in mod.bands]
        nodatas = [given[b][1] if b in given else None for b in mod.bands]
    vd = None
    if "valid" in ds.data_vars or "valid" in ds.coords:
        v = ds["valid"]
        if not set(v.dims) <= set(order):
            raise DimensionError(
                f"'valid' of {what} has dims {v.dims}; expected a subset of {order}"
            )
        if not (v.dtype == bool or np.issubdtype(v.dtype, np.number)):
            raise DataError(f"'valid' of {what} must be boolean, got dtype {v.dtype}")
        v = v.broadcast_like(first).transpose(*order)
        vd = v.data if isinstance(v.data, da.Array) else da.from_array(v.data)
        vd = (vd > 0.5) if vd.dtype != bool else vd  # NaN compares False: invalid
        if time_dim is None:
            vd = vd[None]
        vd = vd.rechunk(bands[0].chunks)
    if flip_y or flip_x:  # lazy views: nothing is read or copied here
        flip = (slice(None), slice(None, None, -1 if flip_y else 1),
                slice(None, None, -1 if flip_x else 1))
        bands = [b[flip] for b in bands]
        vd = vd[flip] if vd is not None else None
    if all(in_memory):
        _check_not_all_invalid(ds, names, what, any_band=mod.partial)
    time = ds[time_dim].values if time_dim is not None else None
    return Cube(mod.name, bands, tuple(nodatas), vd, grid, time_dim, time, band_units, crs,
                units_source, tuple(variables), flip_y, flip_x,
                _units_check(mod, band_units, units_source, variables))


def nodata_of(var: xr.DataArray, modality: str | None = None) -> float | None:
    """The no-data value of a band: ``attrs["nodata"]`` or ``attrs["_FillValue"]``, the stored
    ``_FillValue`` of integer values, else, for integer values of a modality in the table,
    its default (Sentinel-2 DN 0: L2A writes 0 where there is no data)."""
    nodata = var.attrs.get("nodata", var.attrs.get("_FillValue"))
    integer = bool(np.issubdtype(var.dtype, np.integer))
    if nodata is None and integer:
        nodata = var.encoding.get("_FillValue")
    if nodata is None and integer and modality is not None:
        entry = _table_entry(modality)
        nodata = entry.nodata if entry is not None else None
    try:
        value = float(nodata) if nodata is not None else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and np.isfinite(value) else None


def present_bands(available: Any, mod: ModalitySpec) -> tuple[str, ...]:
    """The bands of ``mod`` (canonical names, model order) that ``available`` names hold."""
    have = {canonical_band(str(n), mod.name) for n in available}
    return tuple(b for b in mod.bands if b in have)


def _check_not_all_invalid(ds: xr.Dataset, names: Mapping[str, str], what: str,
                           any_band: bool = False) -> None:
    """For in-memory input, reject data with no usable pixel (cheap: no dask involved); a
    pixel is usable where all its bands are finite (``any_band``: where one is)."""
    finite = np.zeros(1, bool) if any_band else np.ones(1, bool)
    for v in names.values():
        ok = np.isfinite(np.asarray(ds[v].values, dtype=np.float32))
        finite = (finite | ok) if any_band else (finite & ok)
    if "valid" in ds:
        finite = finite & (np.asarray(ds["valid"].values) > 0.5)
    if not finite.any():
        raise DataError(
            f"{what} has no valid pixel: every value is NaN or masked by 'valid'. Check the "
            "nodata value, the scaling and the cloud mask."
        )


def modality_objects(obj: Any, model_spec: ModelSpec) -> dict[str, xr.Dataset | xr.DataArray]:
    """Split the user's object into ``{modality: xarray object}`` for the model."""
    names = model_spec.modality_names
    if isinstance(obj, xr.DataTree):
        found: dict[str, Any] = {}
        for key, child in obj.children.items():
            mod = modalities.modality_of_node(key) or key
            if mod in names:
                found[mod] = child.to_dataset()
        if not found and obj.has_data:
            found[names[0]] = obj.to_dataset()
        if not found:
            raise BandMismatchError(
                f"the DataTree has nodes {list(obj.children)} but the model "
                f"{model_spec.name!r} takes modalities {list(names)}; name the nodes after them "
                "(xsky.stack(s2=..., s1=..., hr=...) builds such a tree)"
            )
    elif isinstance(obj, (xr.Dataset, xr.DataArray)) and any(
            m.partial for m in model_spec.modalities) and len(names) > 1:
        found = _split_modalities(obj, model_spec)
    elif isinstance(obj, (xr.Dataset, xr.DataArray)):
        found = {_pick_modality(obj, model_spec): obj}
    else:
        raise ArgumentError(
            f"xsky.embed needs an xarray DataArray, Dataset or DataTree, got {type(obj).__name__}"
        )
    if not found:
        wanted = {m.name: list(m.bands) for m in model_spec.modalities}
        raise BandMismatchError(
            f"the input holds no band model {model_spec.name!r} takes ({wanted}); rename "
            "variables to canonical names or aliases ('B2', 'blue', 'vv', ...)"
        )
    missing = [m for m in model_spec.required_modalities or () if m not in found]
    if missing:
        raise BandMismatchError(
            f"model {model_spec.name!r} needs modality {missing}, but the input has "
            f"{list(found)}; pass a DataTree with a node per modality"
        )
    return found


def _split_modalities(obj: xr.Dataset | xr.DataArray, model_spec: ModelSpec
                      ) -> dict[str, xr.Dataset | xr.DataArray]:
    """One Dataset per modality whose bands ``obj`` holds (models taking partial bands of
    several modalities from one Dataset: e.g. S2 and S1 variables side by side)."""
    ds = _as_dataset(obj, model_spec.modalities[0]) if isinstance(obj, xr.DataArray) else obj
    found: dict[str, xr.Dataset | xr.DataArray] = {}
    for mod in model_spec.modalities:
        held = [str(v) for v in ds.data_vars if v != "valid"
                and canonical_band(str(v), mod.name) in mod.bands]
        if held:
            found[mod.name] = ds[[*held, *(["valid"] if "valid" in ds.data_vars else [])]]
    return found


def _pick_modality(obj: xr.Dataset | xr.DataArray, model_spec: ModelSpec) -> str:
    """For a plain Dataset/DataArray, the modality whose bands it holds."""
    if len(model_spec.modalities) == 1:
        return model_spec.modalities[0].name
    if isinstance(obj, xr.Dataset):
        names = [str(v) for v in obj.data_vars]
    else:
        bdim = next((d for d in _BAND_DIMS if d in obj.dims), None)
        names = [str(v) for v in obj[bdim].values] if bdim and bdim in obj.coords else []
    for mod in model_spec.modalities:
        have = {canonical_band(n, mod.name) for n in names}
        if set(mod.bands) <= have:
            return mod.name
    return model_spec.modalities[0].name


def prepare_cubes(obj: Any, model_spec: ModelSpec, *, units: Any = None) -> dict[str, Cube]:
    """``{modality: Cube}`` for the modalities of ``obj`` the model takes."""
    objs = modality_objects(obj, model_spec)
    if isinstance(units, Mapping):
        unknown = [k for k in units if k not in model_spec.modality_names]
        if unknown:
            raise ArgumentError(
                f"units= names modality {unknown[0]!r}, which model {model_spec.name!r} does "
                f"not take; its modalities are {format_choices(model_spec.modality_names)} "
                f"(e.g. units={{{model_spec.modality_names[0]!r}: 'dn'}})"
            )
    elif units is not None:
        units = dict.fromkeys(objs, units)
    cubes = {}
    for mod in model_spec.modalities:
        if mod.name in objs:
            cubes[mod.name] = prepare_modality(
                objs[mod.name], mod, fuses_time=model_spec.fuses_time,
                units=(units or {}).get(mod.name),
                what=f"modality {mod.name!r}" if len(objs) > 1 else "the input",
                rechunk_time=model_spec.max_timesteps is not None,
            )
    _check_time_axes(cubes, model_spec)
    return cubes


def _check_time_axes(cubes: Mapping[str, Cube], spec: ModelSpec) -> None:
    """Models with a bounded number of dates, or one time axis shared by all modalities,
    get inputs that fit, or an error that says how to composite."""
    fix = ("composite the dates into periods first, e.g. xsky.composite(obj, freq='MS') "
           "for monthly composites")
    if spec.max_timesteps is not None:
        for c in cubes.values():
            n_t = c.bands[0].shape[0]
            if c.time_dim is not None and n_t > spec.max_timesteps:
                raise DimensionError(
                    f"modality {c.name!r} has {n_t} dates but model {spec.name!r} takes at most "
                    f"{spec.max_timesteps}; {fix} and select at most {spec.max_timesteps} "
                    "of them (e.g. .isel(time=slice(0, 12)))"
                )
    if spec.shared_time and len(cubes) > 1:
        timed = [c for c in cubes.values() if c.time_dim is not None]
        untimed = [c.name for c in cubes.values()
                   if c.time_dim is None and not _is_static(c.name)]
        if timed and untimed:
            raise DimensionError(
                f"model {spec.name!r} puts all modalities on one time axis, but {untimed} "
                "have no 'time' dimension; give every modality the same dates"
            )
        for c in timed[1:]:
            first = timed[0]
            if c.time.shape != first.time.shape or not np.array_equal(c.time, first.time):
                raise DimensionError(
                    f"model {spec.name!r} puts all modalities on one time axis, but modality "
                    f"{c.name!r} has {len(c.time)} dates that differ from the {len(first.time)} "
                    f"of {first.name!r}; {fix} (a DataTree is composited node by node onto "
                    "the same periods)"
                )
