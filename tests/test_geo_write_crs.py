"""Embeddings written to Zarr or NetCDF reopen with their CRS (issue 10: write_crs)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

import xsky
from xsky.geo import write_crs


@pytest.fixture(scope="module")
def romania_embedding():
    cube = xsky.tutorial.open_dataset("romania").isel(time=slice(0, 2))
    return xsky.embed(cube, "test-tiny").compute()


def _roundtrip(obj, tmp_path, fmt):
    ds = obj.to_dataset()
    if fmt == "zarr":
        ds.to_zarr(tmp_path / "e.zarr", consolidated=False)
        return xr.open_zarr(tmp_path / "e.zarr", consolidated=False)
    ds.to_netcdf(tmp_path / "e.nc")
    return xr.open_dataset(tmp_path / "e.nc")


@pytest.mark.parametrize("fmt", ["zarr", "netcdf"])
def test_embed_output_reopens_with_crs_and_valid_fraction(romania_embedding, tmp_path, fmt):
    emb = romania_embedding
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no serialization warning either
        back = _roundtrip(emb, tmp_path, fmt)
    e = back["embedding"]
    assert list(back.data_vars) == ["embedding"]  # spatial_ref is a coordinate again
    assert "spatial_ref" in e.coords
    assert e.rio.crs is not None and e.rio.crs == emb.rio.crs
    assert e.rio.crs.to_epsg() == emb.rio.crs.to_epsg()
    assert "valid_fraction" in e.coords
    np.testing.assert_array_equal(e.valid_fraction.values, emb.valid_fraction.values)
    np.testing.assert_array_equal(e.values, emb.values)
    # the CRS-aware transform is the one written
    assert e.rio.transform() == emb.rio.transform()


def test_write_crs_on_a_dataset_marks_each_variable():
    ds = xr.Dataset({"a": (("y", "x"), np.zeros((2, 3))), "b": (("y", "x"), np.ones((2, 3)))},
                    coords={"y": [1.5, 0.5], "x": [0.5, 1.5, 2.5]})
    out = write_crs(ds, "EPSG:32633")
    assert out["a"].attrs["grid_mapping"] == out["b"].attrs["grid_mapping"] == "spatial_ref"
    assert "grid_mapping" not in out["a"].encoding
    assert out.rio.crs.to_epsg() == 32633
    assert "grid_mapping" not in ds["a"].attrs  # the input is not modified


@pytest.mark.parametrize("fmt", ["zarr", "netcdf"])
def test_location_embed_output_reopens_with_crs(shared, tmp_path, fmt):
    ckpt = shared / "conformance" / "satclip" / "satclip_public_L10.ckpt"
    x = 600_000 + 5 + 10 * np.arange(20)
    y = 5_340_000 - 5 - 10 * np.arange(16)
    cube = xr.DataArray(np.zeros((16, 20), np.float32), dims=("y", "x"),
                        coords={"y": y, "x": x}, name="B04").rio.write_crs("EPSG:32633")
    emb = xsky.location_embed(cube, ckpt, stride=4).compute()
    back = _roundtrip(emb, tmp_path, fmt)
    e = back[emb.name]
    assert list(back.data_vars) == [emb.name]
    assert e.rio.crs.to_epsg() == 32633
    np.testing.assert_allclose(e.values, emb.values)
