"""Standard metadata for embedding outputs: Zarr conventions, STAC Items, int8 quantisation.

An embedding from :func:`xsky.embed` becomes readable by tools that know nothing of xsky:

- :func:`store_dataset` turns it into the Dataset to write to Zarr. The group attributes
  follow the `geoemb: Zarr convention
  <https://github.com/geo-embeddings/embeddings-zarr-convention>`_ (v1: ``geoemb:type``,
  ``geoemb:dimensions``, ``geoemb:model``, ``geoemb:source_data``, ``geoemb:data_type``,
  ``geoemb:gsd``, ``geoemb:chip_layout``, ``geoemb:quantization``,
  ``geoemb:build_version``), with the CRS in the `proj: convention
  <https://github.com/zarr-experimental/geo-proj>`_ and the grid in the `spatial: convention
  <https://github.com/zarr-conventions/spatial>`_ (all three registered in
  ``zarr_conventions``). The CRS is also a CF grid mapping (a ``spatial_ref`` variable with
  ``crs_wkt``/``spatial_ref`` and GDAL's ``GeoTransform``, named by the data variable's
  ``grid_mapping``), so a plain ``xr.open_zarr`` plus rioxarray recovers CRS and transform,
  even for a single-pixel output. :func:`store_attrs` gives the group attributes alone.
- :func:`stac_item` describes a written output as a STAC Item with the `embeddings
  extension <https://github.com/geo-embeddings/embeddings-stac-specification>`_ (v0.0.1,
  ``emb:`` fields), the projection and processing extensions, an ``embeddings`` asset and
  an ``emb:model`` link to the model's STAC MLM card (:func:`xsky.api.export.model_card`).
- :func:`quantize` stores the embedding as int8 with a scale and offset per feature
  (``value = q * scale[feature] + offset[feature]``, ``q = -128`` where the value is
  missing); :func:`dequantize` (and :func:`xsky.open_embedding`) undo it.

Quantisation metadata. The geoemb v1 *scale object* is either one scalar or a per-pixel
array without an offset, so it cannot express a per-feature scale *and* offset: the group
records ``geoemb:quantization = {method: "per_feature_linear", original_dtype, quantized_dtype}``
without a scale object (a generic reader sees a method it does not know instead of
decoding wrong values), and the data variable names its scale and offset variables
(``quantization_scale``, ``quantization_offset``) and its missing value
(``quantization_nodata``, also the CF ``_FillValue``, so a plain ``xr.open_zarr`` shows
NaN there). The STAC ``emb:quantization`` object carries the per-feature ``scale`` and
``offset`` lists, which that schema allows.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .._version import __version__
from ..exceptions import ArgumentError, CRSError, DataError, DimensionError
from ..geo import get_crs, spatial_dims, write_crs

__all__ = [
    "EMB_EXTENSION",
    "GEOEMB_CONVENTION",
    "NODATA",
    "PROJ_CONVENTION",
    "QUANTIZATION_METHOD",
    "SPATIAL_CONVENTION",
    "dequantize",
    "grid_transform",
    "is_quantized",
    "quantize",
    "stac_item",
    "store_attrs",
    "store_dataset",
]

#: ``zarr_conventions`` entries (schema and spec pinned to the v1 tags)
GEOEMB_CONVENTION: dict[str, str] = {
    "schema_url": "https://raw.githubusercontent.com/geo-embeddings/embeddings-zarr-convention"
                  "/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/geo-embeddings/embeddings-zarr-convention/blob/v1/README.md",
    "uuid": "61c12cc5-0e28-4056-999a-480cf3fb7e4c",
    "name": "geoemb:",
    "description": "Geoembeddings convention for geospatial embedding arrays with model "
                   "provenance",
}
PROJ_CONVENTION: dict[str, str] = {
    "schema_url": "https://raw.githubusercontent.com/zarr-experimental/geo-proj/refs/tags/v1"
                  "/schema.json",
    "spec_url": "https://github.com/zarr-experimental/geo-proj/blob/v1/README.md",
    "uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f",
    "name": "proj:",
    "description": "Coordinate reference system information for geospatial data",
}
SPATIAL_CONVENTION: dict[str, str] = {
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/spatial/refs/tags/v1"
                  "/schema.json",
    "spec_url": "https://github.com/zarr-conventions/spatial/blob/v1/README.md",
    "uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4",
    "name": "spatial",
    "description": "Spatial coordinate information",
}
#: STAC extension schemas used by :func:`stac_item`
EMB_EXTENSION = "https://stac-extensions.github.io/embeddings/v0.0.1/schema.json"
PROJ_EXTENSION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
PROCESSING_EXTENSION = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"

#: the int8 value of a missing element (quantised values lie in -127..127)
NODATA = -128
QUANTIZATION_METHOD = "per_feature_linear"
_QMAX = 127
_SCALE_VAR, _OFFSET_VAR = "embedding_scale", "embedding_offset"

#: what each modality's data is, as ``geoemb:source_data`` wants it (a URI per dataset)
_SOURCE_DATA = {
    "s2": "https://sentinel.esa.int/web/sentinel/missions/sentinel-2",
    "s1": "https://sentinel.esa.int/web/sentinel/missions/sentinel-1",
}
_MEDIA_TYPES = {
    ".zarr": "application/vnd+zarr",
    ".tif": "image/tiff; application=geotiff; profile=cloud-optimized",
    ".tiff": "image/tiff; application=geotiff; profile=cloud-optimized",
    ".nc": "application/netcdf",
}
# provenance attrs of xsky.embed that hold JSON text
_JSON_ATTRS = ("normalization", "input_units", "input_units_source", "model_options",
               "weights_files")


# -- what an embedding is ---------------------------------------------------------------


def _embedding(obj: Any, what: str = "obj") -> xr.DataArray:
    """The ``embedding`` DataArray of ``obj`` (a DataArray, or a Dataset holding one)."""
    if isinstance(obj, xr.Dataset):
        if "embedding" not in obj.data_vars:
            raise ArgumentError(
                f"{what} is a Dataset without an 'embedding' variable (it has "
                f"{sorted(map(str, obj.data_vars))}); pass the DataArray from xsky.embed, or a "
                "Dataset from store_dataset/quantize/open_zarr of an xsky store"
            )
        emb = obj["embedding"]
    elif isinstance(obj, xr.DataArray):
        emb = obj
    else:
        raise ArgumentError(
            f"{what} must be an embedding DataArray (from xsky.embed) or a Dataset holding "
            f"one, got {type(obj).__name__}"
        )
    if "feature" not in emb.dims:
        raise DimensionError(
            f"{what} has dims {tuple(emb.dims)} but an embedding needs a 'feature' dimension; "
            "rename the embedding dimension with obj.rename({'band': 'feature'})"
        )
    return emb


def is_quantized(obj: Any) -> bool:
    """Whether ``obj`` (a Dataset, or its ``embedding``) holds :func:`quantize` output."""
    emb = obj["embedding"] if isinstance(obj, xr.Dataset) and "embedding" in obj else obj
    return isinstance(emb, xr.DataArray) and emb.attrs.get("quantization_method") is not None


def _plain(value: Any) -> Any:
    """``value`` as plain JSON-able Python (numpy scalars and arrays, tuples, nested)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _json_attr(attrs: Mapping[str, Any], key: str) -> Any:
    value = attrs.get(key)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return _plain(value)


# -- the grid -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    ydim: str
    xdim: str
    ny: int
    nx: int
    #: affine coefficients (a, b, c, d, e, f) of the array as stored, or None when unknown
    transform: tuple[float, float, float, float, float, float] | None

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(xmin, ymin, xmax, ymax)`` of the pixel edges."""
        assert self.transform is not None
        a, _, c, _, e, f = self.transform
        xs = (c, c + a * self.nx)
        ys = (f, f + e * self.ny)
        return min(xs), min(ys), max(xs), max(ys)


def _cached_steps(obj: xr.DataArray) -> tuple[float, float] | None:
    """``(dy, dx)`` from GDAL's ``GeoTransform`` on the grid-mapping coordinate, if any."""
    name = obj.attrs.get("grid_mapping") or obj.encoding.get("grid_mapping") or "spatial_ref"
    if name not in obj.coords:
        return None
    text = obj.coords[name].attrs.get("GeoTransform")
    if not text:
        return None
    try:
        _, a, b, _, d, e = (float(v) for v in str(text).split())
    except ValueError:
        return None
    if b != 0 or d != 0 or a == 0 or e == 0:
        return None  # rotated or degenerate: not a grid xsky writes
    return e, a


def _resolution(resolution: Any) -> tuple[float, float] | None:
    """``resolution`` as positive ``(res_y, res_x)``."""
    if resolution is None:
        return None
    values = np.atleast_1d(np.asarray(resolution, dtype="float64")).ravel()
    if values.size == 1:
        values = np.repeat(values, 2)
    if values.size != 2 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ArgumentError(
            f"resolution must be a positive pixel size or a (y, x) pair of them in CRS units, "
            f"got {resolution!r}"
        )
    return float(values[0]), float(values[1])


def _axis_step(obj: xr.DataArray, dim: str) -> float | None:
    """The coordinate step along ``dim`` (checked regular), or None for a single pixel."""
    if dim not in obj.coords:
        raise DimensionError(
            f"dimension {dim!r} of the embedding has no coordinate; assign pixel-centre "
            f"coordinates with obj.assign_coords({dim}=...)"
        )
    values = np.asarray(obj[dim].values, dtype="float64")
    if values.size < 2:
        return None
    d = np.diff(values)
    step = float(np.median(d))
    tol = 1e-6 * abs(step) + 1e-9 * float(np.abs(values).max())
    if step == 0 or np.max(np.abs(d - step)) > tol:
        raise DimensionError(
            f"dimension {dim!r} of the embedding is irregular (steps from {d.min():g} to "
            f"{d.max():g}); an affine grid needs a regular one"
        )
    return step


def _grid(obj: xr.DataArray, resolution: Any = None) -> _Grid:
    """The embedding's pixel grid; the step of a single-pixel axis comes from
    ``resolution``, else from a ``GeoTransform`` on its grid mapping, else stays unknown."""
    ydim, xdim = spatial_dims(obj)
    ny, nx = int(obj.sizes[ydim]), int(obj.sizes[xdim])
    res = _resolution(resolution)
    cached = _cached_steps(obj)
    steps = []
    for i, dim in enumerate((ydim, xdim)):
        step = _axis_step(obj, dim)
        if step is not None and res is not None and abs(abs(step) - res[i]) > 1e-6 * res[i]:
            raise ArgumentError(
                f"resolution {res[i]:g} along {dim!r} disagrees with the coordinates' step "
                f"{abs(step):g}; leave resolution=None (it is only needed for a single pixel)"
            )
        if step is None and res is not None:
            step = -res[0] if i == 0 else res[1]  # north-up, as GeoTIFF and GDAL default
        if step is None and cached is not None:
            step = cached[i]
        steps.append(step)
    if steps[0] is None or steps[1] is None:
        return _Grid(ydim, xdim, ny, nx, None)
    dy, dx = float(steps[0]), float(steps[1])
    y0, x0 = float(obj[ydim].values[0]), float(obj[xdim].values[0])
    return _Grid(ydim, xdim, ny, nx, (dx, 0.0, x0 - dx / 2, 0.0, dy, y0 - dy / 2))


def grid_transform(obj: xr.DataArray | xr.Dataset, *, resolution: Any = None) -> Any:
    """The affine transform (:class:`affine.Affine`) of an embedding as it is stored.

    Taken from the pixel-centre coordinates; along a single-pixel axis (a 1 x 1 output, or a
    one-row strip) the pixel size comes from ``resolution`` or from GDAL's ``GeoTransform``
    on the grid-mapping coordinate (which :func:`store_dataset` writes). rioxarray's own
    ``.rio.transform()`` falls back to the identity for a single pixel without it.

    Parameters
    ----------
    obj
        An embedding DataArray, or a Dataset holding ``embedding``.
    resolution
        Pixel size (CRS units; one value or ``(y, x)``), used only along single-pixel axes.

    Raises
    ------
    DimensionError
        The coordinates are missing or irregular, or a single-pixel axis has no known size.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> from xsky.io.conventions import grid_transform
    >>> emb = xr.DataArray(np.zeros((1, 1, 3)), dims=("y", "x", "feature"),
    ...                    coords={"y": [105.0], "x": [15.0]})
    >>> tuple(grid_transform(emb, resolution=10))[:6]
    (10.0, 0.0, 10.0, 0.0, -10.0, 110.0)
    """
    from affine import Affine

    grid = _grid(_embedding(obj), resolution)
    if grid.transform is None:
        raise DimensionError(
            f"the embedding is {grid.ny} x {grid.nx} pixels, so the pixel size along a "
            "single-pixel axis cannot be read from its coordinates; pass resolution= (the "
            "output pixel size in CRS units: input pixel size x the model's stride) or write "
            "the transform first with obj.rio.write_transform(...)"
        )
    return Affine(*grid.transform)


def _geotransform_text(transform: tuple[float, ...]) -> str:
    a, b, c, d, e, f = transform
    return " ".join(repr(float(v)) for v in (c, a, b, f, d, e))


# -- Zarr store metadata ------------------------------------------------------------------


def _crs_or_none(emb: xr.DataArray) -> Any:
    try:
        return get_crs(emb)
    except CRSError:
        return None


def _proj_fields(crs: Any, prefix: str = "proj:") -> dict[str, Any]:
    """``proj:code`` when the CRS has an authority code, else ``proj:wkt2`` (the Zarr
    convention's schema wants exactly one of them)."""
    auth = crs.to_authority()
    if auth is not None and auth[1].isdigit():
        return {f"{prefix}code": f"{auth[0].upper()}:{auth[1]}"}
    return {f"{prefix}wkt2": crs.to_wkt()}


def _metres(crs: Any) -> bool:
    try:
        return bool(crs.axis_info) and all(a.unit_name in ("metre", "meter")
                                           for a in crs.axis_info[:2])
    except AttributeError:
        return False


def _source_data(emb: xr.DataArray, source_data: Sequence[str] | str | None) -> list[str]:
    if source_data is not None:
        items = [source_data] if isinstance(source_data, str | os.PathLike) else list(source_data)
        out = [str(s) for s in items]
        if not out:
            raise ArgumentError("source_data must name at least one source dataset (a URI)")
        return out
    mods = [m for m in str(emb.attrs.get("modalities", "")).split(",") if m]
    return [_SOURCE_DATA.get(m, f"urn:xsky:modality:{m}") for m in mods] or ["urn:xsky:unknown"]


def _model_name(emb: xr.DataArray) -> str:
    name = emb.attrs.get("model")
    if not name:
        raise DataError(
            "the embedding has no 'model' attribute, so the model that made it is unknown; "
            "use the output of xsky.embed, or set obj.attrs['model'] = '<model name>'"
        )
    return str(name)


def store_attrs(
    obj: xr.DataArray | xr.Dataset,
    *,
    model_href: str | None = None,
    source_data: Sequence[str] | str | None = None,
) -> dict[str, Any]:
    """The Zarr group attributes of an embedding store: ``geoemb:``, ``proj:``, ``spatial:``.

    Reads coordinates and attributes only, never values.

    Parameters
    ----------
    obj
        An embedding from :func:`xsky.embed`, or a Dataset holding one (float32, or int8
        from :func:`quantize`).
    model_href
        ``geoemb:model``: a URI of the model (e.g. where its STAC MLM card from
        :func:`xsky.api.export.model_card` is published); default ``urn:xsky:model:<name>``.
    source_data
        ``geoemb:source_data``: URIs of the source datasets (e.g. the STAC Items embedded);
        default: one URI per input modality (the Sentinel-1/-2 mission pages for ``s1``/``s2``).

    Returns
    -------
    dict
        JSON-able group attributes, with ``zarr_conventions`` listing the conventions used.

    Examples
    --------
    >>> import xsky
    >>> from xsky.io.conventions import store_attrs
    >>> cube = xsky.tutorial.open_dataset("romania").isel(time=slice(0, 2))
    >>> attrs = store_attrs(xsky.embed(cube, "test-tiny"))
    >>> attrs["geoemb:type"], attrs["geoemb:dimensions"], attrs["proj:code"]
    ('pixel', 16, 'EPSG:3035')
    """
    emb = _embedding(obj)
    quantized = is_quantized(emb)
    name = _model_name(emb)
    pooled = emb.attrs.get("output_kind") == "pooled"
    grid = _grid(emb)
    crs = _crs_or_none(emb)
    out: dict[str, Any] = {
        "zarr_conventions": [dict(GEOEMB_CONVENTION)],
        "geoemb:type": "chip" if pooled else "pixel",
        "geoemb:dimensions": int(emb.sizes["feature"]),
        "geoemb:model": str(model_href) if model_href is not None else f"urn:xsky:model:{name}",
        "geoemb:source_data": _source_data(emb, source_data),
        "geoemb:data_type": "int8" if quantized else str(emb.dtype),
        "geoemb:build_version": __version__,
    }
    stride = emb.attrs.get("stride")
    if crs is not None and grid.transform is not None and _metres(crs):
        step = abs(grid.transform[0])
        # a chip's gsd is its input pixels' (the window covers window x window of them)
        gsd = step / int(stride) if pooled and stride else step
        out["geoemb:gsd"] = float(gsd)
    if pooled:
        window = int(emb.attrs.get("window", 0) or 0)
        if window < 1 or not stride:
            raise DataError(
                "a pooled ('chip') embedding needs its 'window' and 'stride' attributes for "
                "geoemb:chip_layout; use the output of xsky.embed"
            )
        out["geoemb:chip_layout"] = {"layout_type": "regular_grid", "chip_size": [window, window],
                                     "stride": [int(stride), int(stride)]}
    if quantized:
        out["geoemb:quantization"] = {"method": QUANTIZATION_METHOD, "original_dtype": "float32",
                                      "quantized_dtype": "int8"}
    if crs is not None:
        out["zarr_conventions"].append(dict(PROJ_CONVENTION))
        out.update(_proj_fields(crs))
    out["zarr_conventions"].append(dict(SPATIAL_CONVENTION))
    out["spatial:dimensions"] = [grid.ydim, grid.xdim]
    out["spatial:shape"] = [grid.ny, grid.nx]
    out["spatial:registration"] = "pixel"
    if grid.transform is not None:
        out["spatial:transform"] = [float(v) for v in grid.transform]
        out["spatial:bbox"] = [float(v) for v in grid.bounds]
    return out


def store_dataset(
    obj: xr.DataArray | xr.Dataset,
    *,
    quantize: bool = False,
    model_href: str | None = None,
    source_data: Sequence[str] | str | None = None,
) -> xr.Dataset:
    """The Dataset to write to Zarr for an embedding, with all the standard metadata.

    The ``embedding`` variable keeps its provenance attributes and its CF grid mapping (a
    ``spatial_ref`` coordinate with ``crs_wkt``, ``spatial_ref`` and GDAL's
    ``GeoTransform``, named by the variable's ``grid_mapping``); the Dataset's attributes
    (the Zarr group's) are :func:`store_attrs`. Lazy input stays lazy.

    Parameters
    ----------
    obj
        An embedding from :func:`xsky.embed`, or a Dataset from :func:`quantize`.
    quantize
        Store int8 values with a scale and offset per feature (:func:`quantize`); a quarter
        of the float32 size, read back with :func:`xsky.open_embedding`.
    model_href, source_data
        See :func:`store_attrs`.

    Returns
    -------
    xarray.Dataset
        ``embedding`` (float32, or int8 with ``embedding_scale``/``embedding_offset``).

    Examples
    --------
    >>> import xsky
    >>> from xsky.io.conventions import store_dataset
    >>> cube = xsky.tutorial.open_dataset("romania").isel(time=slice(0, 2))
    >>> ds = store_dataset(xsky.embed(cube, "test-tiny"))
    >>> ds.embedding.attrs["grid_mapping"], ds.attrs["geoemb:data_type"]
    ('spatial_ref', 'float32')
    >>> # ds.to_zarr("emb.zarr"); xr.open_zarr("emb.zarr").embedding.rio.crs -> EPSG:3035
    """
    if not isinstance(quantize, bool | np.bool_):
        raise ArgumentError(f"quantize must be True or False, got {quantize!r}")
    if isinstance(obj, xr.Dataset):
        emb = _embedding(obj)
        if quantize and not is_quantized(emb):
            ds = _quantize(emb, None, None)
        else:
            ds = obj.copy()
    else:
        emb = _embedding(obj)
        if is_quantized(emb):
            raise ArgumentError(
                "obj is the int8 'embedding' of a quantized store without its scale and "
                "offset; pass the whole Dataset (from quantize or open_zarr)"
            )
        emb = _with_grid_mapping(emb)
        ds = _quantize(emb, None, None) if quantize else emb.to_dataset(name="embedding")
    ds = ds.assign(embedding=_with_grid_mapping(ds["embedding"]))
    grid = _grid(ds["embedding"])
    gm = ds["embedding"].attrs.get("grid_mapping")
    if gm in ds.coords and grid.transform is not None:
        ref = ds.coords[gm].copy()
        ref.attrs = {**ref.attrs, "GeoTransform": _geotransform_text(grid.transform)}
        ds = ds.assign_coords({gm: ref})
    ds.attrs = {**ds.attrs, **store_attrs(ds, model_href=model_href, source_data=source_data)}
    return ds


def _with_grid_mapping(emb: xr.DataArray) -> xr.DataArray:
    """``emb`` with a CF ``spatial_ref`` grid mapping (written when only attrs carry the CRS)."""
    gm = emb.attrs.get("grid_mapping") or emb.encoding.get("grid_mapping")
    if gm and gm in emb.coords and emb.coords[gm].attrs.get("crs_wkt"):
        if emb.attrs.get("grid_mapping") != gm:
            emb = emb.copy()
            emb.encoding.pop("grid_mapping", None)
            emb.attrs["grid_mapping"] = gm
        return emb
    crs = _crs_or_none(emb)
    return emb if crs is None else write_crs(emb, crs)


# -- int8 quantisation --------------------------------------------------------------------


def _given(values: Any, name: str, n: int, feature: xr.DataArray) -> xr.DataArray:
    arr = np.asarray(values, dtype="float64")
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise ArgumentError(
            f"{name} must hold {n} finite numbers (one per feature), got shape {arr.shape}"
        )
    if name == "scale" and np.any(arr <= 0):
        raise ArgumentError(f"scale must be positive, got a minimum of {arr.min():g}")
    return xr.DataArray(arr, dims=("feature",), coords={"feature": feature})


def quantize(emb: xr.DataArray, *, scale: Any = None, offset: Any = None) -> xr.Dataset:
    """Quantise an embedding to int8 with a scale and an offset per feature.

    ``q = round((value - offset) / scale)`` in -127..127, and ``q = -128`` (:data:`NODATA`)
    where the value is missing (NaN); :func:`dequantize` returns ``q * scale + offset``,
    within ``scale / 2`` of the input. By default each feature's range over the whole array
    sets its scale and offset (``offset`` = mid-range, ``scale`` = range / 254), computed
    lazily by a dask reduction: the result does not depend on the chunking, but its first
    chunk needs every chunk of the embedding, so the whole embedding is held in memory (or
    computed twice) when it is written. For outputs larger than memory pass ``scale`` and
    ``offset`` (e.g. from a sample); values outside their range are clipped to -127..127.

    Parameters
    ----------
    emb
        A float embedding DataArray (``feature`` dim), numpy- or dask-backed.
    scale, offset
        Optional fixed values, one per feature (or one for all).

    Returns
    -------
    xarray.Dataset
        ``embedding`` (int8, the input's dims, coords and attrs, plus the quantisation
        attrs), ``embedding_scale`` and ``embedding_offset`` (float32, dim ``feature``).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> from xsky.io.conventions import quantize, dequantize
    >>> emb = xr.DataArray(np.array([[[0.0, 1.0], [2.0, np.nan]]], "float32"),
    ...                    dims=("y", "x", "feature"), name="embedding")
    >>> q = quantize(emb)
    >>> q.embedding.values.tolist()
    [[[-127, 0], [127, -128]]]
    >>> np.abs(dequantize(q) - emb).max().item() < 0.01
    True
    """
    emb = _embedding(emb, "emb")
    if isinstance(emb, xr.DataArray) and is_quantized(emb):
        raise ArgumentError("emb is already quantized; dequantize it first")
    if not np.issubdtype(emb.dtype, np.floating):
        raise ArgumentError(
            f"emb must hold floating-point values to quantize, got dtype {emb.dtype}"
        )
    return _quantize(emb, scale, offset)


def _quantize(emb: xr.DataArray, scale: Any, offset: Any) -> xr.Dataset:
    if (scale is None) != (offset is None):
        raise ArgumentError("give both scale and offset, or neither (then they are computed)")
    n = int(emb.sizes["feature"])
    feature = emb["feature"] if "feature" in emb.coords else xr.DataArray(np.arange(n),
                                                                           dims="feature")
    if scale is None:
        dims = [d for d in emb.dims if d != "feature"]
        finite = emb.where(np.isfinite(emb))
        # +/-inf fills: an all-NaN feature gives lo > hi (no all-NaN warnings in the tasks)
        lo = finite.fillna(np.inf).min(dim=dims).astype("float64")
        hi = finite.fillna(-np.inf).max(dim=dims).astype("float64")
        ok = hi >= lo
        span = hi - lo
        s = xr.where(ok & (span > 0), span / (2 * _QMAX), 1.0)
        o = xr.where(ok, (hi + lo) / 2, 0.0)
        s = s.drop_vars([c for c in s.coords if c != "feature"])
        o = o.drop_vars([c for c in o.coords if c != "feature"])
    else:
        s = _given(scale, "scale", n, feature)
        o = _given(offset, "offset", n, feature)
    # the stored float32 values are the ones the integers are computed with
    s = s.astype("float32")
    o = o.astype("float32")
    x = (emb.astype("float64") - o.astype("float64")) / s.astype("float64")
    # NaN and +/-inf are missing
    q = x.round().clip(-_QMAX, _QMAX).where(np.isfinite(emb), NODATA).astype("int8")
    q = q.transpose(*emb.dims)
    q.attrs = {**{k: v for k, v in emb.attrs.items() if k != "_FillValue"},
               "quantization_method": QUANTIZATION_METHOD,
               "quantization_scale": _SCALE_VAR, "quantization_offset": _OFFSET_VAR,
               "quantization_nodata": NODATA,
               "quantization": "embedding = q * embedding_scale[feature] + "
                               f"embedding_offset[feature]; q == {NODATA} is missing"}
    q.encoding = {"_FillValue": NODATA}
    s.attrs = {"long_name": "per-feature dequantisation scale of 'embedding'"}
    o.attrs = {"long_name": "per-feature dequantisation offset of 'embedding'"}
    return xr.Dataset({"embedding": q, _SCALE_VAR: s, _OFFSET_VAR: o})


def dequantize(ds: xr.Dataset) -> xr.DataArray:
    """The float32 embedding of a :func:`quantize` Dataset (or of a store opened from one).

    ``q * scale + offset`` per feature, NaN where ``q`` is the missing value; works on the
    raw int8 values and on a store opened by ``xr.open_zarr`` (which decodes the missing
    value to NaN). Lazy input stays lazy.

    Parameters
    ----------
    ds
        A Dataset with the int8 ``embedding`` and its scale and offset variables.

    Returns
    -------
    xarray.DataArray
        ``embedding``, float32, with the coordinates and provenance attrs of the original.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> from xsky.io.conventions import quantize, dequantize
    >>> emb = xr.DataArray(np.linspace(-1, 1, 6, dtype="float32").reshape(1, 3, 2),
    ...                    dims=("y", "x", "feature"), name="embedding")
    >>> back = dequantize(quantize(emb))
    >>> back.dtype, bool(np.allclose(back, emb, atol=0.01))
    (dtype('float32'), True)
    """
    if not isinstance(ds, xr.Dataset):
        raise ArgumentError(
            f"dequantize needs the Dataset with 'embedding' and its scale and offset "
            f"variables (from quantize or open_zarr), got {type(ds).__name__}"
        )
    q = _embedding(ds, "ds")
    if not is_quantized(q):
        raise DataError(
            "'embedding' is not quantized (no 'quantization_method' attribute); use it as "
            "it is"
        )
    method = q.attrs["quantization_method"]
    if method != QUANTIZATION_METHOD:
        raise DataError(
            f"'embedding' is quantized with method {method!r}, which this xsky version does "
            f"not know (it knows {QUANTIZATION_METHOD!r}); upgrade xsky"
        )
    names = (q.attrs.get("quantization_scale", _SCALE_VAR),
             q.attrs.get("quantization_offset", _OFFSET_VAR))
    missing = [n for n in names if n not in ds.variables]
    if missing:
        raise DataError(
            f"the quantized 'embedding' needs the variables {list(names)} but {missing} "
            "are not in the Dataset; pass the whole store, not a subset of its variables"
        )
    scale, offset = (ds[n].astype("float32") for n in names)
    nodata = q.attrs.get("quantization_nodata", NODATA)
    gone = q == nodata
    if np.issubdtype(q.dtype, np.floating):
        gone = gone | np.isnan(q)
    out = (q.astype("float32") * scale + offset).where(~gone).astype("float32")
    out = out.transpose(*q.dims)
    drop = [c for c in out.coords if c not in q.coords]
    out = out.drop_vars(drop).rename("embedding")
    out.attrs = {k: v for k, v in q.attrs.items()
                 if not k.startswith("quantization") and k != "_FillValue"}
    out.encoding = {}
    return out


def _iso(value: Any) -> str:
    import pandas as pd

    ts = pd.Timestamp(value)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return str(ts.strftime("%Y-%m-%dT%H:%M:%SZ"))


def _dates(emb: xr.DataArray, datetime: Any) -> dict[str, Any]:
    if datetime is not None:
        if isinstance(datetime, tuple | list):
            if len(datetime) != 2:
                raise ArgumentError(
                    f"datetime must be one date or a (start, end) pair, got {datetime!r}"
                )
            return {"datetime": None, "start_datetime": _iso(datetime[0]),
                    "end_datetime": _iso(datetime[1])}
        return {"datetime": _iso(datetime)}
    if "time" in emb.coords and emb["time"].size:
        t = np.asarray(emb["time"].values).ravel()
        if t.size == 1:
            return {"datetime": _iso(t[0])}
        return {"datetime": None, "start_datetime": _iso(t.min()),
                "end_datetime": _iso(t.max())}
    raise ArgumentError(
        "the embedding has no 'time' coordinate (the model fused the dates), so the Item's "
        "date is unknown; pass datetime=(start, end) of the input cube, e.g. "
        "datetime=(cube.time.min().values, cube.time.max().values)"
    )


def _footprint(grid: _Grid, crs: Any) -> tuple[dict[str, Any], list[float]]:
    """GeoJSON polygon (lon/lat, the edges densified) and bbox of the grid's footprint."""
    from pyproj import CRS, Transformer

    xmin, ymin, xmax, ymax = grid.bounds
    t = np.linspace(0.0, 1.0, 21)
    xs = np.concatenate([xmin + (xmax - xmin) * t, np.full(21, xmax),
                         xmax - (xmax - xmin) * t, np.full(21, xmin)])
    ys = np.concatenate([np.full(21, ymin), ymin + (ymax - ymin) * t,
                         np.full(21, ymax), ymax - (ymax - ymin) * t])
    tr = Transformer.from_crs(crs, CRS.from_epsg(4326), always_xy=True)
    lon, lat = tr.transform(xs, ys)
    lon, lat = np.asarray(lon, "float64"), np.asarray(lat, "float64")
    if not (np.all(np.isfinite(lon)) and np.all(np.isfinite(lat))):
        raise CRSError("the embedding's footprint does not transform to longitude/latitude")
    ring = [[round(float(a), 9), round(float(b), 9)] for a, b in zip(lon, lat, strict=True)]
    ring.append(ring[0])
    bbox = [round(float(v), 9) for v in (lon.min(), lat.min(), lon.max(), lat.max())]
    return {"type": "Polygon", "coordinates": [ring]}, bbox


def _quantization(obj: Any) -> dict[str, Any] | None:
    if not isinstance(obj, xr.Dataset) or not is_quantized(obj):
        return None
    q = obj["embedding"]
    names = (q.attrs.get("quantization_scale", _SCALE_VAR),
             q.attrs.get("quantization_offset", _OFFSET_VAR))
    scale, offset = (np.asarray(obj[n].values, "float64") for n in names)  # small: computed
    return {"method": QUANTIZATION_METHOD, "original_dtype": "float32",
            "quantized_dtype": "int8", "scale": [float(v) for v in scale],
            "offset": [float(v) for v in offset]}


def stac_item(
    obj: xr.DataArray | xr.Dataset,
    href: str | os.PathLike[str],
    *,
    model_href: str | None = None,
    item_id: str | None = None,
    datetime: Any = None,
    source_data: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A STAC Item (a plain dict) describing an embedding output at ``href``.

    Fields: the `embeddings extension
    <https://github.com/geo-embeddings/embeddings-stac-specification>`_ (v0.0.1:
    ``emb:runtime_parameters`` with the model, its weights digest and the run's settings,
    ``emb:preprocessing`` with each modality's normalisation, ``emb:quantization`` for an
    int8 store), common metadata ``data_type`` and ``gsd``, the projection extension
    (``proj:code`` or ``proj:wkt2``, ``proj:shape``, ``proj:transform``, ``proj:bbox``), the
    processing extension (``processing:software``, ``processing:datetime``), the
    ``embeddings`` asset, an ``emb:model`` and a ``derived_from`` link to the model's STAC
    MLM card (when ``model_href`` is given) and an ``emb:source-data`` link per source.

    Parameters
    ----------
    obj
        The embedding, or the Dataset written (for an int8 store its scale and offset are
        read: pass the opened store, not a lazy graph, or they are computed with it).
    href
        Where the output is (``.zarr`` or ``.tif``: the asset's media type follows).
    model_href
        Where the model's MLM card JSON is (:func:`xsky.api.export.model_card`).
    item_id
        The Item's id; default: the file name of ``href`` without its suffix.
    datetime
        The data's date, or a ``(start, end)`` pair; default from the ``time`` coordinate
        (required for time-fused embeddings, which have none).
    source_data
        Hrefs of the source STAC Items or collections (``emb:source-data`` links).

    Returns
    -------
    dict
        A STAC 1.1 Item; ``pystac.Item.from_dict`` reads it.

    Examples
    --------
    >>> import xsky
    >>> from xsky.io.conventions import stac_item
    >>> cube = xsky.tutorial.open_dataset("romania").isel(time=slice(0, 2))
    >>> item = stac_item(xsky.embed(cube, "test-tiny"), "out/romania.zarr",
    ...                  model_href="test-tiny.json")
    >>> item["id"], item["properties"]["emb:runtime_parameters"]["model"]
    ('romania', 'test-tiny')
    """
    emb = _embedding(obj)
    name = _model_name(emb)
    crs = _crs_or_none(emb)
    if crs is None:
        raise CRSError(
            "the embedding has no CRS, so its footprint is unknown; set it with "
            "obj.rio.write_crs('EPSG:...')"
        )
    grid = _grid(emb)
    if grid.transform is None:
        grid_transform(emb)  # raises, with the fix
    assert grid.transform is not None
    href = os.fspath(href)
    stem = Path(href.rstrip("/")).name
    suffix = Path(stem).suffix.lower()
    geometry, bbox = _footprint(grid, crs)
    attrs = emb.attrs
    quantized = is_quantized(emb)
    props: dict[str, Any] = _dates(emb, datetime)
    runtime = {
        "model": name,
        "weights_sha256": attrs.get("weights_sha256"),
        "weights_files": _json_attr(attrs, "weights_files"),
        "model_options": _json_attr(attrs, "model_options"),
        "window": _plain(attrs.get("window")),
        "stride": _plain(attrs.get("stride")),
        "overlap": _plain(attrs.get("overlap")),
        "edge": attrs.get("edge"),
        "output_kind": attrs.get("output_kind"),
        "precision": attrs.get("precision"),
        "modalities": [m for m in str(attrs.get("modalities", "")).split(",") if m],
        "feature_dim": int(emb.sizes["feature"]),
    }
    props["emb:runtime_parameters"] = {k: v for k, v in runtime.items() if v is not None}
    norm = _json_attr(attrs, "normalization")
    if isinstance(norm, Mapping) and norm:
        units = _json_attr(attrs, "input_units") or {}
        expression = {}
        for m, v in norm.items():
            v = dict(v) if isinstance(v, Mapping) else {"value": v}
            scaled = v.get("mean") is not None and v.get("std") is not None
            expression[m] = {
                **v, "input_units": units.get(m) if isinstance(units, Mapping) else None,
                "operation": "(convert(x, input_units, model_units) - mean) / std" if scaled
                else "convert(x, input_units, model_units); the model normalises inside"}
        props["emb:preprocessing"] = {"format": "xsky-normalization", "expression": expression}
    quant = _quantization(obj)
    if quant is not None:
        props["emb:quantization"] = quant
    props["data_type"] = "int8" if quantized else str(emb.dtype)
    if _metres(crs):
        props["gsd"] = float(abs(grid.transform[0]))
    props["processing:software"] = {"xsky": str(attrs.get("xsky_version") or __version__)}
    props["processing:datetime"] = _iso(_dt.datetime.now(_dt.UTC))
    props.update(_proj_fields(crs))
    props["proj:shape"] = [grid.ny, grid.nx]
    props["proj:transform"] = [float(v) for v in grid.transform]
    props["proj:bbox"] = [float(v) for v in grid.bounds]
    links: list[dict[str, Any]] = []
    if model_href is not None:
        title = f"STAC MLM model card of {name!r}"
        links.append({"rel": "emb:model", "href": str(model_href), "type": "application/geo+json",
                      "title": title})
        links.append({"rel": "derived_from", "href": str(model_href),
                      "type": "application/geo+json", "title": title, "mlm:name": name})
    for src in source_data or ():
        links.append({"rel": "emb:source-data", "href": str(src)})
    asset = {"href": href, "roles": ["data"], "title": f"{name} embeddings"}
    if suffix in _MEDIA_TYPES:
        asset["type"] = _MEDIA_TYPES[suffix]
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [EMB_EXTENSION, PROJ_EXTENSION, PROCESSING_EXTENSION],
        "id": item_id or (Path(stem).stem if suffix else stem) or name,
        "geometry": geometry,
        "bbox": bbox,
        "properties": props,
        "links": links,
        "assets": {"embeddings": asset},
    }
