"""One date of an embedding as a GeoTIFF (a Cloud Optimized GeoTIFF by default).

Features become bands (described ``feature 0``, ``feature 1``, ...), missing values the
band no-data value (NaN, or -128 for an int8 store, whose bands then carry GDAL's per-band
scale and offset, so ``rioxarray.open_rasterio(path, mask_and_scale=True)`` reads the
dequantised float values). The transform comes from the pixel-centre coordinates, or for
a single-pixel axis from ``resolution=`` or the grid mapping's ``GeoTransform``: never the
identity that a coordinate-based transform falls back to for one pixel.

Like the Zarr writers (:mod:`xsky.io.store`), the file is written to a temporary sibling
and moved into place when complete, and an existing file is replaced only with
``overwrite=True`` and only when xsky wrote it (an ``xsky_store`` tag in the TIFF).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..exceptions import ArgumentError, CRSError, DimensionError
from ..geo import get_crs
from .conventions import (
    NODATA,
    _embedding,
    _grid,
    grid_transform,
    is_quantized,
)
from .store import MARKER, atomic_file, check_target

__all__ = ["to_raster"]

_MARK_TEXT = "written by xsky; xsky may overwrite this file"
_COMPRESS = ("deflate", "zstd", "lzw", "lzma", "packbits", "none")
_TAGS = ("model", "weights_sha256", "xsky_version", "window", "stride", "overlap", "edge",
         "output_kind", "modalities", "precision", "normalization", "model_options")


def _tiff_marked(p: Path) -> bool:
    """Whether ``p`` is a raster xsky wrote (its ``xsky_store`` tag is there)."""
    try:
        import rasterio

        with rasterio.open(p) as src:
            return MARKER in src.tags()
    except Exception:  # not a raster (or unreadable): not ours
        return False


def _check_path(path: str | os.PathLike[str], overwrite: bool) -> Path:
    p = Path(path).expanduser()
    if p.exists() or p.is_symlink():
        if not overwrite:
            raise ArgumentError(
                f"raster {str(p)!r} exists; pass overwrite=True to replace it, or choose "
                "another path"
            )
        if p.is_dir() or not _tiff_marked(p):
            kind = "directory" if p.is_dir() else "file"
            raise ArgumentError(
                f"raster {str(p)!r} is an existing {kind} that xsky did not write (no "
                f"{MARKER!r} tag), so xsky will not replace it even with overwrite; remove it "
                "yourself or choose another path"
            )
    return p


def _select_time(emb: xr.DataArray, time: Any) -> xr.DataArray:
    if "time" not in emb.dims:
        if time is not None:
            raise ArgumentError(
                f"time={time!r} was given but the embedding has no 'time' dimension (dims "
                f"{tuple(emb.dims)}); leave time=None"
            )
        return emb
    dates = np.asarray(emb["time"].values) if "time" in emb.coords else None
    n = int(emb.sizes["time"])
    shown = [str(d)[:10] for d in dates[:6]] if dates is not None else list(range(min(n, 6)))
    if time is None:
        if n == 1:
            return emb.isel(time=0)
        raise ArgumentError(
            f"the embedding has {n} dates ({shown}{' ...' if n > 6 else ''}) and a GeoTIFF "
            "holds one; pass time= (a date like '2020-06-01', or an index)"
        )
    if isinstance(time, int | np.integer) and not isinstance(time, bool):
        if not -n <= int(time) < n:
            raise ArgumentError(f"time index {int(time)} is out of range for {n} dates")
        return emb.isel(time=int(time))
    if dates is None:
        raise ArgumentError("the embedding's 'time' dimension has no dates; pass an index")
    import pandas as pd

    want = np.datetime64(pd.Timestamp(time).tz_localize(None) if pd.Timestamp(time).tzinfo
                         else pd.Timestamp(time), "ns")
    hits = np.flatnonzero(dates.astype("datetime64[ns]") == want)
    if hits.size == 0:
        # a day is enough when only one date falls on it
        day = np.flatnonzero(dates.astype("datetime64[D]") == want.astype("datetime64[D]"))
        if day.size == 1:
            hits = day
    if hits.size != 1:
        raise ArgumentError(
            f"time={time!r} matches {hits.size} of the embedding's dates ({shown}"
            f"{' ...' if n > 6 else ''}); pass one of them, or an index"
        )
    return emb.isel(time=int(hits[0]))


def to_raster(
    obj: xr.DataArray | xr.Dataset,
    path: str | os.PathLike[str],
    *,
    time: Any = None,
    overwrite: bool = False,
    resolution: Any = None,
    cog: bool = True,
    compress: str = "deflate",
) -> Path:
    """Write one date of an embedding to a GeoTIFF: one band per feature.

    Computes the selected date (one ``(y, x, feature)`` array in memory). Bands are
    described ``feature <i>`` and carry the no-data value (NaN for float32); the file's tags
    hold the provenance (model, weights digest, xsky version, window, stride, ...) and the
    date. An int8 store from :func:`xsky.io.conventions.quantize` is written as int8 with
    no-data -128 and GDAL's per-band scale and offset (the dequantisation), so
    ``rioxarray.open_rasterio(path, mask_and_scale=True)`` gives the float values back
    (it warns that the scales differ across bands, and applies each band's).

    Parameters
    ----------
    obj
        An embedding from :func:`xsky.embed` (``(y, x, feature)`` or with ``time``), or a
        Dataset holding one (also a quantized one).
    path
        The ``.tif`` file to write.
    time
        Which date, for an embedding with several: a date (``"2020-06-01"``; the day is
        enough when one date falls on it) or an index.
    overwrite
        Replace an existing file, if xsky wrote it (a file it did not write is never
        replaced).
    resolution
        Output pixel size in CRS units (one value or ``(y, x)``), needed only for a
        single-pixel axis without a ``GeoTransform`` on the grid mapping (a 1 x 1 output).
    cog
        Write a Cloud Optimized GeoTIFF (tiled, with overviews when large enough); ``False``:
        a plain tiled GeoTIFF.
    compress
        GDAL compression (``"deflate"``, ``"zstd"``, ``"lzw"``, ``"none"``).

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    ArgumentError
        Several dates and no ``time``; ``path`` exists and may not be replaced.
    DimensionError
        Extra dims, or the pixel size of a single-pixel axis is unknown.
    CRSError
        The embedding has no CRS.

    Examples
    --------
    >>> import xsky
    >>> from xsky.io.raster import to_raster
    >>> cube = xsky.tutorial.open_dataset("romania").isel(time=slice(0, 2))
    >>> emb = xsky.embed(cube, "test-tiny")
    >>> to_raster(emb, "out/romania.tif", time="2015-08-01")  # doctest: +SKIP
    PosixPath('out/romania.tif')
    """
    import rasterio

    for name, flag in (("overwrite", overwrite), ("cog", cog)):
        if not isinstance(flag, bool | np.bool_):
            raise ArgumentError(f"{name} must be True or False, got {flag!r}")
    if str(compress).lower() not in _COMPRESS:
        # GDAL only warns about an unknown codec and writes the file uncompressed
        raise ArgumentError(
            f"unknown compress={compress!r}; choose one of {', '.join(map(repr, _COMPRESS))}"
        )
    emb = _embedding(obj)
    quantized = isinstance(obj, xr.Dataset) and is_quantized(obj)
    final = _check_path(path, bool(overwrite))
    date = None
    if "time" in emb.dims:
        emb = _select_time(emb, time)
        date = emb["time"].values if "time" in emb.coords else None
    elif time is not None:
        _select_time(emb, time)  # raises
    grid = _grid(emb, resolution)
    extra = [d for d in emb.dims if d not in (grid.ydim, grid.xdim, "feature")]
    if extra:
        raise DimensionError(
            f"the embedding has dims {tuple(emb.dims)}; a GeoTIFF holds (y, x, feature): "
            f"select one value of {extra} first, e.g. obj.isel({extra[0]}=0)"
        )
    transform = tuple(grid_transform(emb, resolution=resolution))[:6]
    try:
        crs = get_crs(emb)
    except CRSError:
        raise CRSError(
            "the embedding has no CRS, so the GeoTIFF would not be georeferenced; set it with "
            "obj.rio.write_crs('EPSG:...')"
        ) from None
    a, _, c, _, e, f = transform
    values = np.asarray(emb.transpose("feature", grid.ydim, grid.xdim).values)
    if e > 0:  # north-up rows, as GeoTIFF readers expect
        values, f, e = values[:, ::-1, :], f + e * grid.ny, -e
    if a < 0:
        values, c, a = values[:, :, ::-1], c + a * grid.nx, -a
    if quantized:
        assert isinstance(obj, xr.Dataset)
        q = obj["embedding"]
        scale = np.asarray(obj[q.attrs.get("quantization_scale")].values, "float64")
        offset = np.asarray(obj[q.attrs.get("quantization_offset")].values, "float64")
        nodata: float = float(q.attrs.get("quantization_nodata", NODATA))
        if np.issubdtype(values.dtype, np.floating):  # opened with CF decoding: NaN
            values = np.where(np.isnan(values), nodata, values)
        values = values.astype("int8")
        dtype = "int8"
    else:
        dtype = "float32"
        values = values.astype("float32")
        nodata = float("nan")
    features = emb["feature"].values if "feature" in emb.coords else np.arange(values.shape[0])
    tags = {MARKER: _MARK_TEXT}
    tags.update({k: str(emb.attrs[k]) for k in _TAGS if k in emb.attrs})
    if date is not None:
        tags["time"] = str(np.datetime_as_string(np.asarray(date).astype("datetime64[s]")))
    profile: dict[str, Any] = {
        "driver": "COG" if cog else "GTiff", "width": grid.nx, "height": grid.ny,
        "count": values.shape[0], "dtype": dtype, "crs": crs.to_wkt(), "nodata": nodata,
        "transform": rasterio.Affine(a, 0.0, c, 0.0, e, f),
    }
    if str(compress).lower() != "none":
        profile["compress"] = str(compress).upper()
    if not cog:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with atomic_file(final, suffix=".tif") as tmp:
        check_target(tmp, overwrite=False, what="raster")  # the folder is writable
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(values)
            for i, feat in enumerate(features, start=1):
                dst.set_band_description(i, f"feature {feat}")
            if quantized:
                dst.scales = tuple(float(s) for s in scale)
                dst.offsets = tuple(float(o) for o in offset)
            dst.update_tags(**tags)
    return final
