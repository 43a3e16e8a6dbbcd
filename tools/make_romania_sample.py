"""Build the embedded sample ``xsky/data/romania_s2_10m.nc`` from the shared Romania cube.

Run from the repository root: ``python tools/make_romania_sample.py``. The source is the
EUPL-1.2 cube shipped in the PyPI package ``nrt==0.2.1`` (``nrt/data``); see
``xsky/data/NOTICE_romania.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import xarray as xr

SRC = Path("../shared/data/s2_ts_romania/sentinel2_cube_subset_romania_10m.nc")
DST = Path("xsky/data/romania_s2_10m.nc")
BANDS = {"B2": "B02", "B3": "B03", "B4": "B04", "B8": "B08"}


def main() -> None:
    src = xr.open_dataset(SRC, decode_coords="all", mask_and_scale=False)
    scl = src["SCL"].values
    clear = np.isin(scl, (4, 5)).mean(axis=(1, 2))
    # every mostly-clear date, plus every third of the others so clouds, shadows and snow stay
    keep = np.flatnonzero(clear > 0.5)
    rest = np.flatnonzero(clear <= 0.5)[::3]
    idx = np.sort(np.concatenate([keep, rest]))
    ds = src.isel(time=idx)
    out = xr.Dataset(coords={"time": ds.time, "y": ds.y, "x": ds.x})
    enc = {}
    for old, new in BANDS.items():
        out[new] = ds[old].astype("uint16")
        out[new].attrs = {"long_name": f"Sentinel-2 L2A {new} surface reflectance",
                          "units": "reflectance", "scale_factor": np.float32(1e-4),
                          "_FillValue": np.uint16(0)}
        enc[new] = {"zlib": True, "complevel": 9, "shuffle": True}
    out["SCL"] = ds["SCL"].astype("uint8")
    out["SCL"].attrs = {"long_name": "Sentinel-2 scene classification (SCL)"}
    enc["SCL"] = {"zlib": True, "complevel": 9}
    out = out.rio.write_crs(src.rio.crs.to_wkt())
    out.attrs = {
        "title": "Sentinel-2 L2A time series, Romanian Carpathians (10 m subset)",
        "source": "nrt 0.2.1 (EC Joint Research Centre), nrt/data/"
                  "sentinel2_cube_subset_romania_10m.nc",
        "license": "EUPL-1.2",
        "attribution": "Contains modified Copernicus Sentinel data 2015-2021",
    }
    out.to_netcdf(DST, encoding=enc)
    size = DST.stat().st_size
    print(f"wrote {DST} ({len(idx)} of {src.sizes['time']} dates, {size / 1e6:.2f} MB)")
    if size > 5_000_000:
        sys.exit("sample is larger than 5 MB")


if __name__ == "__main__":
    import rioxarray  # noqa: F401

    main()
