"""Inputs as the tools people use give them: rioxarray GeoTIFFs, stackstac cubes, the
sample's CRS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rioxarray
import xarray as xr

import xsky
from xsky.exceptions import BandMismatchError, UnitsError
from xsky.testing import synthetic_s2_cube

BANDS = ["B02", "B03", "B04", "B08"]


def test_sample_crs_is_epsg_3035():
    assert xsky.tutorial.open_dataset("romania").rio.crs.to_epsg() == 3035


# ------------------------------------------------------------------ rioxarray GeoTIFFs


def _geotiff(tmp_path: Path, descriptions: bool) -> tuple[Path, xr.Dataset]:
    ds = synthetic_s2_cube(32, 32, 1, seed=4).isel(time=0).drop_vars(["time", "valid"])
    arr = ds[BANDS].to_dataarray("band").rio.write_crs("EPSG:32633")
    arr = arr.assign_coords(band=np.arange(1, 5))
    if descriptions:
        arr.attrs["long_name"] = tuple(BANDS)
    path = tmp_path / f"s2_{descriptions}.tif"
    arr.rio.to_raster(path)
    return path, ds


def test_geotiff_band_names_come_from_the_band_descriptions(tmp_path):
    path, ds = _geotiff(tmp_path, descriptions=True)
    arr = rioxarray.open_rasterio(path)
    assert arr.attrs["long_name"] == tuple(BANDS) and arr.band.values.tolist() == [1, 2, 3, 4]
    got = xsky.embed(arr, "test-tiny").compute()
    want = xsky.embed(ds, "test-tiny").compute()
    np.testing.assert_allclose(got.values, want.values, atol=1e-6)
    np.testing.assert_allclose(got.x.values, want.x.values)


def test_geotiff_without_descriptions_shows_assign_coords(tmp_path):
    path, ds = _geotiff(tmp_path, descriptions=False)
    arr = rioxarray.open_rasterio(path)
    assert "long_name" not in arr.attrs
    with pytest.raises(BandMismatchError, match=r"numbers \[1, 2, 3, 4\].*no band descriptions"
                       r".*assign_coords\(band=\['B02', 'B03', 'B04', 'B08'\]\)"):
        xsky.embed(arr, "test-tiny")
    fixed = xsky.embed(arr.assign_coords(band=BANDS), "test-tiny").compute()
    want = xsky.embed(ds, "test-tiny").compute()
    np.testing.assert_allclose(fixed.values, want.values, atol=1e-6)


# ------------------------------------------------------------------ stackstac


@pytest.fixture(scope="module")
def romania_stac(tmp_path_factory, shared):
    from xsky.testing import stac as fx

    return fx.romania_s2_items(tmp_path_factory.mktemp("cogs"), shared / "data", start=40,
                               n_dates=3)


@pytest.fixture(scope="module")
def sample(shared):
    """The same 3 dates of the shared Romania cube (uint16 DN), on the sample's grid/CRS."""
    path = shared / "data/s2_ts_romania/sentinel2_cube_subset_romania_10m.nc"
    with xr.open_dataset(path, mask_and_scale=False) as raw:
        dn = raw[["B2", "B3", "B4", "B8"]].isel(time=slice(40, 43)).load()
    dn = dn.rename(B2="B02", B3="B03", B4="B04", B8="B08")
    crs = xsky.tutorial.open_dataset("romania").rio.crs
    return dn.drop_vars("spatial_ref", errors="ignore").rio.write_crs(crs)


def _stack(items, sample, **kw):
    import stackstac

    res = 10.0
    x0, y1 = float(sample.x.min()) - res / 2, float(sample.y.max()) + res / 2
    bounds = (x0, y1 - 100 * res, x0 + 100 * res, y1)
    return stackstac.stack(items, assets=BANDS, epsg=3035, resolution=res, bounds=bounds,
                           snap_bounds=False, chunksize=50, **kw)


def test_stackstac_topleft_coordinates_are_moved_to_pixel_centres(romania_stac, sample):
    top = _stack(romania_stac, sample)
    centre = _stack(romania_stac, sample, xy_coords="center")
    assert float(top.x[0]) == float(centre.x[0]) - 5.0  # stackstac's default: corners
    # the pixels are the sample's DN on the sample's grid
    np.testing.assert_allclose(centre.sel(band="B02").values, sample.B02.values, rtol=1e-6)
    a = xsky.embed(top, "test-tiny", units="dn").compute()
    b = xsky.embed(centre, "test-tiny", units="dn").compute()
    ref = xsky.embed(sample[BANDS], "test-tiny").compute()
    np.testing.assert_allclose(a.x.values, ref.x.values)
    np.testing.assert_allclose(a.y.values, ref.y.values)
    np.testing.assert_allclose(a.values, b.values, atol=1e-6)
    # the same DN reach the same model: 0 is reached
    np.testing.assert_allclose(a.values, ref.values, rtol=0, atol=1e-6)


def test_stackstac_float_dn_without_units_raise_with_the_fix(romania_stac, sample):
    cube = _stack(romania_stac, sample, xy_coords="center")
    emb = xsky.embed(cube, "test-tiny")  # lazy: builds
    with pytest.raises(UnitsError, match=r"taken as 'reflectance'.*floating-point.*"
                                         r"units='dn'"):
        emb.compute()


def test_stackstac_location_embed_uses_pixel_centres(romania_stac, sample):
    from xsky.models.satclip import LocationEncoder

    enc = LocationEncoder(legendre_polys=10, capacity=16, embed_dim=8).eval()
    a = xsky.location_embed(_stack(romania_stac, sample), enc, stride=10)
    b = xsky.location_embed(sample, enc, stride=10)
    np.testing.assert_allclose(a.x.values, b.x.values)
    np.testing.assert_allclose(a.values, b.values, atol=1e-9)


# ------------------------------------------------------------------ odc.stac


def _odc_load(items, sample, **kw):
    import odc.stac

    res = 10.0
    x0, y1 = float(sample.x.min()) - res / 2, float(sample.y.max()) + res / 2
    from affine import Affine
    from odc.geo.geobox import GeoBox

    # the sample's own pixel grid (from_bbox would snap it to multiples of the pixel size)
    gbox = GeoBox((100, 100), Affine(res, 0.0, x0, 0.0, -res, y1), "EPSG:3035")
    return odc.stac.load(items, bands=BANDS, geobox=gbox, chunks={"x": 50, "y": 50}, **kw)


def test_odc_stac_integer_dn_cube_embeds_like_the_sample(romania_stac, sample):
    cube = _odc_load(romania_stac, sample, dtype="uint16")
    assert cube["B02"].dtype.kind == "u"
    np.testing.assert_allclose(cube.x.values, sample.x.values)
    got = xsky.embed(cube, "test-tiny").compute()
    ref = xsky.embed(sample[BANDS], "test-tiny").compute()
    assert got.attrs["input_units"] == ref.attrs["input_units"]
    np.testing.assert_allclose(got.values, ref.values, atol=1e-5)


def test_odc_stac_float_dn_cube_needs_units_and_then_embeds_like_the_sample(romania_stac,
                                                                            sample):
    cube = _odc_load(romania_stac, sample)  # items without raster:bands load as float32 DN
    assert cube["B02"].dtype == np.float32
    with pytest.raises(UnitsError, match=r"units='dn'"):
        xsky.embed(cube, "test-tiny").compute()
    got = xsky.embed(cube, "test-tiny", units="dn").compute()
    ref = xsky.embed(sample[BANDS], "test-tiny").compute()
    np.testing.assert_allclose(got.values, ref.values, atol=1e-5)
