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


def open_dataset(name: str = "romania", *, chunks: Any = None, snow: bool = False
                 ) -> xr.Dataset:
    """Open an embedded sample datacube.

    Parameters
    ----------
    name
        ``"romania"``: a real Sentinel-2 L2A cube (time, y, x) with bands B02, B03, B04, B08
        in reflectance (float32), the scene classification ``SCL`` and a boolean ``valid``
        mask derived from it, in ETRS89-LAEA (stored as IGNF:ETRS89LAEA, i.e. EPSG:3035).
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
    ds = ds.set_coords("spatial_ref").rio.write_crs(crs_wkt)
    ds["SCL"] = ds["SCL"].astype(np.uint8)
    keep = (*SCL_VALID, 11) if snow else SCL_VALID
    ds["valid"] = valid_from_scl(ds["SCL"], keep)
    return ds
