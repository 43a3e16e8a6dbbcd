"""One date of an embedding as a (Cloud Optimized) GeoTIFF: features as bands, the right
transform even for one pixel, int8 with GDAL scale/offset, and no file replaced that xsky
did not write."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio
import rioxarray
import xarray as xr

import xsky
from xsky.exceptions import ArgumentError, DimensionError
from xsky.geo import write_crs
from xsky.io import raster as raster_module
from xsky.io.conventions import NODATA, quantize
from xsky.io.raster import to_raster
from xsky.testing import raise_if_dask_computes


@pytest.fixture(scope="module")
def romania_emb() -> xr.DataArray:
    cube = xsky.tutorial.open_dataset("romania").isel(time=slice(0, 2))
    return xsky.embed(cube, "test-tiny").compute()


def _read(path):
    """Values, profile, tags, band descriptions and the rest of what a reader sees."""
    with rasterio.open(path) as src:
        more = {"crs": src.crs, "scales": src.scales, "offsets": src.offsets,
                "layout": src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT")}
        return src.read(), src.profile, src.tags(), src.descriptions, more


def test_bands_transform_crs_and_nodata_match_the_embedding(romania_emb, tmp_path):
    emb = romania_emb.copy()
    emb[1, 0, 0] = np.nan  # a missing pixel
    path = to_raster(emb, tmp_path / "e.tif", time="2015-08-31")
    values, profile, tags, descriptions, more = _read(path)
    date = emb.isel(time=1)
    assert profile["count"] == 16 and profile["dtype"] == "float32"
    assert descriptions == tuple(f"feature {i}" for i in range(16))
    assert profile["transform"] == emb.rio.transform()
    assert more["crs"].to_epsg() == 3035 and np.isnan(profile["nodata"])
    np.testing.assert_array_equal(values, date.transpose("feature", "y", "x").values)
    assert tags["model"] == "test-tiny" and tags["stride"] == "4"
    assert tags["weights_sha256"] == emb.attrs["weights_sha256"]
    assert tags["time"].startswith("2015-08-31")
    assert more["layout"] == "COG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.tif"]  # no temporary, no .aux


def test_a_date_is_chosen_by_index_or_day(romania_emb, tmp_path):
    a, *_ = _read(to_raster(romania_emb, tmp_path / "a.tif", time=-1))
    b, *_ = _read(to_raster(romania_emb, tmp_path / "b.tif", time="2015-08-31T00:00"))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ArgumentError, match="2 dates"):
        to_raster(romania_emb, tmp_path / "c.tif")
    with pytest.raises(ArgumentError, match="matches 0"):
        to_raster(romania_emb, tmp_path / "c.tif", time="2016-01-01")
    with pytest.raises(ArgumentError, match="out of range"):
        to_raster(romania_emb, tmp_path / "c.tif", time=2)
    with pytest.raises(ArgumentError, match="no 'time' dimension"):
        to_raster(romania_emb.isel(time=0, drop=True), tmp_path / "c.tif", time=0)
    with pytest.raises(DimensionError, match="select one value"):
        to_raster(romania_emb.expand_dims(member=2).isel(time=0), tmp_path / "c.tif")


def test_a_single_pixel_has_the_output_resolution_not_the_identity(romania_emb, tmp_path):
    date = romania_emb.isel(time=0)
    one = date.isel(y=[3], x=[5])
    x, y = float(one.x[0]), float(one.y[0])
    with pytest.raises(DimensionError, match="resolution="):
        to_raster(one, tmp_path / "one.tif")
    _, profile, *_ = _read(to_raster(one, tmp_path / "one.tif", resolution=40))
    assert tuple(profile["transform"])[:6] == (40.0, 0.0, x - 20, 0.0, -40.0, y + 20)
    # the same from a GeoTransform on the grid mapping, as a store written by xsky has
    cached = date.rio.write_transform(date.rio.transform()).isel(y=[3], x=[5])
    values, profile2, *_ = _read(to_raster(cached, tmp_path / "one2.tif"))
    assert profile2["transform"] == profile["transform"]
    np.testing.assert_array_equal(values[:, 0, 0], one.values[0, 0])


def test_a_south_up_embedding_is_written_north_up(romania_emb, tmp_path):
    date = romania_emb.isel(time=0)
    a, pa, *_ = _read(to_raster(date, tmp_path / "a.tif"))
    flipped = date.isel(y=slice(None, None, -1), x=slice(None, None, -1))
    b, pb, *_ = _read(to_raster(flipped, tmp_path / "b.tif"))
    assert pa["transform"] == pb["transform"] and pa["transform"].e < 0
    np.testing.assert_array_equal(a, b)


def test_an_int8_store_keeps_gdal_scale_and_offset_per_band(romania_emb, tmp_path):
    emb = romania_emb.copy()
    emb[0, 2, 2] = np.nan
    q = quantize(emb)
    path = to_raster(q, tmp_path / "q.tif", time=0)
    values, profile, _, _, more = _read(path)
    assert profile["dtype"] == "int8" and profile["nodata"] == NODATA
    np.testing.assert_allclose(more["scales"], q.embedding_scale.values, rtol=1e-7)
    np.testing.assert_allclose(more["offsets"], q.embedding_offset.values, rtol=1e-7)
    assert (values[:, 2, 2] == NODATA).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # rioxarray: "Scales differ across bands"
        back = rioxarray.open_rasterio(path, mask_and_scale=True).load()
    want = emb.isel(time=0).transpose("feature", "y", "x").values
    step = q.embedding_scale.values[:, None, None]
    assert np.nanmax(np.abs(back.values - want) / (step / 2)) <= 1 + 1e-4
    np.testing.assert_array_equal(np.isnan(back.values), np.isnan(want))


def test_only_a_file_xsky_wrote_is_replaced(romania_emb, tmp_path):
    date = romania_emb.isel(time=0)
    path = to_raster(date, tmp_path / "e.tif")
    with pytest.raises(ArgumentError, match="exists; pass overwrite=True"):
        to_raster(date, path)
    to_raster(date * 0, path, overwrite=True)  # ours: replaced
    assert np.nanmax(np.abs(_read(path)[0])) == 0
    foreign = tmp_path / "photo.tif"
    foreign.write_bytes(b"precious")
    with pytest.raises(ArgumentError, match="did not write"):
        to_raster(date, foreign, overwrite=True)
    assert foreign.read_bytes() == b"precious"
    folder = tmp_path / "store.zarr"
    folder.mkdir()
    with pytest.raises(ArgumentError, match="existing directory"):
        to_raster(date, folder, overwrite=True)


def test_a_failed_write_keeps_the_previous_file(romania_emb, tmp_path, monkeypatch):
    date = romania_emb.isel(time=0)
    path = to_raster(date, tmp_path / "e.tif")
    before = path.read_bytes()
    with pytest.raises(ArgumentError, match="unknown compress"):  # GDAL would only warn
        to_raster(date * 0, path, overwrite=True, compress="no-such-codec")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(raster_module.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        to_raster(date * 0, path, overwrite=True)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.tif"]


def test_a_lazy_embedding_is_computed_once_for_the_chosen_date(romania_emb, tmp_path):
    lazy = romania_emb.chunk(y=10, x=10)
    with raise_if_dask_computes(max_computes=1):
        to_raster(lazy, tmp_path / "e.tif", time=1, cog=False)
    values, profile, *_ = _read(tmp_path / "e.tif")
    assert profile["tiled"] and profile["transform"] == romania_emb.rio.transform()
    np.testing.assert_array_equal(values,
                                  romania_emb.isel(time=1).transpose("feature", "y", "x"))


def test_an_embedding_without_crs_is_refused(tmp_path):
    emb = xr.DataArray(np.zeros((2, 2, 3), "float32"), dims=("y", "x", "feature"),
                       coords={"y": [15.0, 5.0], "x": [5.0, 15.0]})
    with pytest.raises(xsky.CRSError, match="write_crs"):
        to_raster(emb, tmp_path / "e.tif")
    assert not list(tmp_path.iterdir())
    to_raster(write_crs(emb, "EPSG:32633"), tmp_path / "e.tif")


def test_a_one_pixel_output_of_embed_lands_where_the_larger_one_puts_it(tmp_path):
    from ..conftest import WindowMean

    cube = xsky.tutorial.open_dataset("romania").isel(time=slice(0, 1)).drop_vars("valid")
    net = WindowMean(window=16, stride=16)
    one = xsky.embed(cube.isel(y=slice(40, 56), x=slice(40, 56)), net).compute()
    big = xsky.embed(cube.isel(y=slice(40, 72), x=slice(40, 72)), net)
    assert one.sizes["y"] == one.sizes["x"] == 1 and big.sizes["y"] == 2
    path = to_raster(one, tmp_path / "one.tif", resolution=10 * one.attrs["stride"])
    values, profile, *_ = _read(path)
    assert profile["transform"] == big.rio.transform()  # the same grid, first pixel
    np.testing.assert_array_equal(values[:, 0, 0], one.values[0, 0, 0])
