"""The embedded sample cube."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from pyproj import CRS

import xsky
from xsky.io import canonical_band


def test_sample_is_small_and_carries_its_licence_notice():
    from importlib import resources

    data = resources.files("xsky") / "data"
    assert (data / "romania_s2_10m.nc").stat().st_size <= 5_000_000
    notice = (data / "NOTICE_romania.md").read_text()
    assert "EUPL-1.2" in notice
    assert "Copernicus Sentinel data" in notice


def test_romania_sample_layout_values_and_crs(shared):
    ds = xsky.tutorial.open_dataset("romania")
    assert sorted(ds.data_vars) == ["B02", "B03", "B04", "B08", "SCL", "valid"]
    assert ds.B02.dims == ("time", "y", "x")
    assert ds.sizes == {"time": 99, "y": 100, "x": 100}
    assert ds.B02.dtype == np.float32
    assert ds.valid.dtype == bool
    # ETRS89-LAEA: stored as EPSG:3035 with a null TOWGS84 (which pyproj reads as
    # IGNF:ETRS89LAEA), recognised as EPSG:3035
    crs = CRS(ds.rio.crs.to_wkt())
    assert crs.to_epsg() == 3035 and ds.rio.crs.to_epsg() == 3035
    assert "ETRS89" in crs.to_wkt()
    # values are the shared cube's DN / 10000, on the same dates
    raw = xr.open_dataset(shared / "data/s2_ts_romania/sentinel2_cube_subset_romania_10m.nc")
    sub = raw.sel(time=ds.time)
    np.testing.assert_allclose(ds.B08.values, sub.B8.values * 1e-4, rtol=1e-6)
    np.testing.assert_array_equal(ds.SCL.values, sub.SCL.values.astype("uint8"))
    np.testing.assert_array_equal(ds.valid.values, np.isin(sub.SCL.values, (2, 4, 5, 6, 7)))
    # clouds, shadows and snow are all present for mask/prototype studies
    assert {3, 8, 9, 11} <= set(np.unique(ds.SCL.values).tolist())


def test_snow_option_and_unknown_dataset():
    a = xsky.tutorial.open_dataset("romania")
    b = xsky.tutorial.open_dataset("romania", snow=True)
    assert b.valid.sum() - a.valid.sum() == (a.SCL == 11).sum()
    with pytest.raises(xsky.ArgumentError, match="available: 'romania'"):
        xsky.tutorial.open_dataset("nowhere")


def test_lazy_open_with_chunks():
    from xsky.testing import raise_if_dask_computes

    with raise_if_dask_computes():
        ds = xsky.tutorial.open_dataset("romania", chunks={"time": 10})
    assert ds.B02.chunks[0][0] == 10 and sum(ds.B02.chunks[0]) == ds.sizes["time"]
    eager = xsky.tutorial.open_dataset("romania")
    assert set(ds.data_vars) == set(eager.data_vars)
    for name in ("B02", "B08", "valid"):
        np.testing.assert_array_equal(ds[name].values, eager[name].values)
    assert ds.rio.crs == eager.rio.crs


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [("B2", "B02"), ("blue", "B02"), ("nir", "B08"), ("nir08", "B8A"), ("B8A", "B8A"),
     ("b8a", "B8A"), ("B02_10m", "B02"), ("swir16", "B11"), ("red", "B04"), ("B12", "B12")],
)
def test_band_aliases(alias, canonical):
    assert canonical_band(alias) == canonical
