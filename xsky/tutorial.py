"""Small real datasets that ship with xsky, for examples, tests and the quickstart."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from .exceptions import ArgumentError, format_choices

__all__ = ["SCL_VALID", "available_datasets", "open_dataset", "valid_from_scl"]

#: SCL classes kept by default: dark area, vegetation, bare soil, water, unclassified
SCL_VALID = (2, 4, 5, 6, 7)

_DATASETS = {
    "romania": (
        "romania_s2_10m.nc",
        "Sentinel-2 L2A, 99 dates 2015-2020, 100x100 px at 10 m, B02/B03/B04/B08 + SCL, "
        "Romanian Carpathians (EUPL-1.2; contains modified Copernicus Sentinel data)",
    ),
}


def available_datasets() -> dict[str, str]:
    """Names and descriptions of the embedded sample datasets."""
    return {k: v[1] for k, v in _DATASETS.items()}


def valid_from_scl(scl: xr.DataArray, keep: tuple[int, ...] = SCL_VALID) -> xr.DataArray:
    """Boolean validity from a Sentinel-2 scene classification layer (lazy if ``scl`` is)."""
    return scl.isin(keep).rename("valid")


def _recognised_crs(wkt: str) -> Any:
    """The sample's CRS with its EPSG code when it is one in disguise.

    The file stores EPSG:3035 wrapped in a BOUNDCRS with an all-zero TOWGS84, which pyproj
    reads as IGNF:ETRS89LAEA (``to_epsg()`` is None). A null datum shift changes nothing,
    so when the wrapped CRS names an EPSG code with the same projection, that code is used.
    """
    import warnings

    from pyproj import CRS

    crs = CRS.from_wkt(wkt)
    if crs.to_epsg() is not None or not crs.is_bound or crs.source_crs is None:
        return crs
    src = crs.source_crs
    shift = [float(v) for v in (crs.to_cf().get("towgs84") or ())]
    if any(shift):
        return crs
    ident = src.to_json_dict().get("id") or {}
    if ident.get("authority") != "EPSG":
        return crs
    cand = CRS.from_epsg(int(ident["code"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "you will likely lose ... converting to PROJ"
        same = cand.to_proj4() == src.to_proj4()
    return cand if same else crs


def open_dataset(name: str = "romania", *, chunks: Any = None, snow: bool = False
                 ) -> xr.Dataset:
    """Open an embedded sample datacube.

    Parameters
    ----------
    name
        ``"romania"``: a real Sentinel-2 L2A cube (time, y, x) with bands B02, B03, B04, B08
        in reflectance (float32), the scene classification ``SCL`` and a boolean ``valid``
        mask derived from it, in ETRS89-LAEA, EPSG:3035 (the file stores it as a
        BOUNDCRS that pyproj reads as IGNF:ETRS89LAEA; it is recognised as EPSG:3035).
    chunks
        Passed to :func:`xarray.open_dataset` (e.g. ``{"time": 10}``); ``None`` loads lazily
        from the file without dask.
    snow
        Count SCL snow/ice (class 11) as valid.

    Returns
    -------
    xarray.Dataset

    Examples
    --------
    >>> import xsky
    >>> ds = xsky.tutorial.open_dataset("romania")
    >>> sorted(ds.data_vars)
    ['B02', 'B03', 'B04', 'B08', 'SCL', 'valid']
    """
    if name not in _DATASETS:
        raise ArgumentError(
            f"unknown tutorial dataset {name!r}; available: {format_choices(_DATASETS)}"
        )
    path = Path(str(resources.files("xsky") / "data" / _DATASETS[name][0]))
    ds = xr.open_dataset(path, chunks=chunks, decode_coords="all")
    crs_wkt = ds["spatial_ref"].attrs.get("crs_wkt") or ds["spatial_ref"].attrs["spatial_ref"]
    ds = ds.set_coords("spatial_ref").rio.write_crs(_recognised_crs(crs_wkt))
    ds["SCL"] = ds["SCL"].astype(np.uint8)
    keep = (*SCL_VALID, 11) if snow else SCL_VALID
    ds["valid"] = valid_from_scl(ds["SCL"], keep)
    return ds
