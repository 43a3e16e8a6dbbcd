"""Location embeddings of datacubes (lazy, chunk-aligned, georeferenced) and of point tables."""

from __future__ import annotations

import pickle

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import torch
import xarray as xr
from pyproj import Transformer

import xsky
from xsky.api.location import location_embed, location_embed_points, resolve_location_encoder
from xsky.exceptions import (
    AlignmentError,
    ArgumentError,
    CheckpointError,
    CRSError,
    DataError,
    DimensionError,
    ModelError,
    UnsafeCheckpointError,
    XSkyError,
)
from xsky.models.satclip import LocationEncoder
from xsky.runtime import cache
from xsky.testing import raise_if_dask_computes


@pytest.fixture(scope="module")
def ckpt10(shared):
    return shared / "conformance" / "satclip" / "satclip_public_L10.ckpt"


@pytest.fixture(scope="module")
def ckpt40(shared):
    return shared / "conformance" / "satclip" / "satclip_public_L40.ckpt"


def _utm_cube(ny=60, nx=70, res=10.0, chunks=None):
    """A DataArray on a 10 m UTM 33N grid near Vienna (north-up: y decreasing)."""
    x = 600_000 + res / 2 + res * np.arange(nx)
    y = 5_340_000 - res / 2 - res * np.arange(ny)
    da = xr.DataArray(np.zeros((ny, nx), np.float32), dims=("y", "x"),
                      coords={"y": y, "x": x}, name="B04").rio.write_crs("EPSG:32633")
    return da.chunk(chunks) if chunks else da


def test_location_embed_is_lazy_with_dims_coords_crs_and_attrs(ckpt10):
    cube = _utm_cube(chunks={"y": 25, "x": 30})
    with raise_if_dask_computes():
        emb = location_embed(cube, ckpt10, stride=4)
    assert emb.name == "location_embedding"
    assert emb.dims == ("y", "x", "feature")
    assert emb.shape == (15, 18, 32)  # ceil(60/4), ceil(70/4)
    assert emb.dtype == np.float64
    assert emb.rio.crs.to_epsg() == 32633
    # chunk-aligned: input chunks (25, 25, 10) / 4 -> cells starting in each input chunk
    assert emb.data.chunks[0] == (7, 6, 2)
    assert emb.data.chunks[1] == (8, 7, 3)
    assert emb.data.chunks[2] == (32,)
    # pixel centres of 4 x 4 cells: first cell covers x0..x0+40 m
    assert emb.x.values[0] == pytest.approx(600_000 + 20)
    assert emb.y.values[0] == pytest.approx(5_340_000 - 20)
    assert np.diff(emb.x.values) == pytest.approx(40)
    assert emb.attrs["model"] == "satclip-location-l10"
    assert emb.attrs["legendre_polys"] == 10
    assert emb.attrs["weights_sha256"].startswith("0f2509a7")
    assert emb.attrs["xsky_version"] == xsky.__version__
    assert emb.attrs["stride"] == 4


def test_location_embed_values_equal_points_at_crs_transformed_centres(ckpt10):
    cube = _utm_cube(chunks={"y": 20, "x": 35})
    emb = location_embed(cube, ckpt10, stride=3).compute()
    tr = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    xx, yy = np.meshgrid(emb.x.values, emb.y.values)
    lon, lat = tr.transform(xx, yy)
    assert 15 < lon.mean() < 17 and 48 < lat.mean() < 49  # near Vienna
    pts = location_embed_points(lon.ravel(), lat.ravel(), ckpt10)
    np.testing.assert_allclose(emb.values.reshape(-1, 32), pts, rtol=0, atol=1e-12)


def test_location_embed_does_not_depend_on_chunking(ckpt40):
    a = location_embed(_utm_cube(chunks={"y": 13, "x": 70}), ckpt40, stride=2)
    b = location_embed(_utm_cube(chunks={"y": 60, "x": 9}), ckpt40, stride=2)
    c = location_embed(_utm_cube(), ckpt40, stride=2, chunks=7)  # unchunked input
    assert a.data.chunks != b.data.chunks != c.data.chunks
    va, vb, vc = dask.compute(a.data, b.data, c.data)
    assert np.abs(va - vb).max() <= 1e-12
    assert np.abs(va - vc).max() <= 1e-12


def test_crs_round_trip_utm_and_geographic_cubes_agree(ckpt10):
    utm = _utm_cube(ny=8, nx=8, res=1000.0)
    emb_utm = location_embed(utm, ckpt10).compute()
    tr = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    lon, lat = tr.transform(utm.x.values, np.full(8, utm.y.values[3]))
    # a geographic cube whose 4th row/columns are the same points
    geo = xr.Dataset(
        {"B04": (("lat", "lon"), np.zeros((3, 8)))},
        coords={"lat": [lat[0] + 0.01, lat[0], lat[0] - 0.01], "lon": lon.mean() + 0.01
                * np.arange(8)},
    )
    emb_geo = location_embed(geo, ckpt10).compute()  # lat/lon dims imply EPSG:4326
    assert emb_geo.dims == ("lat", "lon", "feature")
    assert emb_geo.rio.crs.to_epsg() == 4326
    row = location_embed_points(geo.lon.values, np.full(8, lat[0]), ckpt10)
    np.testing.assert_allclose(emb_geo.values[1], row, atol=1e-12)
    # the UTM pixel centre and its lon/lat give the same embedding
    point = location_embed_points(lon[:1], lat[:1], ckpt10)
    np.testing.assert_allclose(emb_utm.values[3, 0], point[0], atol=1e-12)


def test_graph_carries_no_weights_and_a_fresh_process_loads_the_checkpoint_once(ckpt40):
    emb = location_embed(_utm_cube(chunks={"y": 20, "x": 20}), ckpt40, stride=5)
    graph = dict(emb.data.__dask_graph__())
    blob = pickle.dumps(graph)
    assert len(blob) < 50_000 < ckpt40.stat().st_size  # the L=40 file is 874 kB
    expected = emb.values
    # simulate a worker: a process whose caches are empty gets the pickled graph
    saved = (dict(cache._CACHE), dict(cache._LOCATION_FILES), dict(cache.BUILDS))
    cache._CACHE.clear(), cache._LOCATION_FILES.clear(), cache.BUILDS.clear()
    try:
        arr = da.Array(pickle.loads(blob), emb.data.name, emb.data.chunks,
                       meta=emb.data._meta)
        got = arr.compute(scheduler="sync")
        np.testing.assert_array_equal(got, expected)
        assert list(cache.BUILDS.values()) == [1]  # 12 blocks, one load
    finally:
        cache._CACHE.update(saved[0]), cache._LOCATION_FILES.update(saved[1])
        cache.BUILDS.clear(), cache.BUILDS.update(saved[2])


def test_in_memory_encoder_model_name_and_float32_output(ckpt10):
    cube = _utm_cube(ny=10, nx=10)
    enc = LocationEncoder.from_checkpoint(ckpt10)
    a = location_embed(cube, enc).compute()
    b = location_embed(cube, "satclip-resnet18-l10", weights=ckpt10, dtype="float32")
    assert b.attrs["model"] == "satclip-resnet18-l10"
    assert b.dtype == np.float32
    np.testing.assert_allclose(b.values, a.values, rtol=1e-6, atol=1e-6)
    # a modified in-memory encoder cannot be rebuilt from its file: it is cached by digest
    lazy = location_embed(cube, enc)
    with torch.no_grad():
        enc.nnet.last_layer.bias.add_(1.0)
    ref, _ = resolve_location_encoder(enc)
    assert ref.path is None
    c = location_embed(cube, enc).compute()
    np.testing.assert_allclose(c.values, a.values + 1.0, atol=1e-12)
    # a graph built before the edit computes with the weights it was built with
    np.testing.assert_array_equal(lazy.values, a.values)


def test_location_embed_errors_name_the_problem_and_fix(ckpt10, ckpt40):
    cube = _utm_cube(ny=10, nx=10)
    with pytest.raises(CRSError, match="write_crs"):
        location_embed(cube.drop_vars("spatial_ref"), ckpt10)
    with pytest.raises(DimensionError, match="'y' and 'x'"):
        location_embed(cube.rename(y="row", x="col"), ckpt10)
    with pytest.raises(XSkyError, match="stride must be a positive integer"):
        location_embed(cube, ckpt10, stride=0)
    with pytest.raises(XSkyError, match="weights="):
        location_embed(cube, "satclip-resnet18-l10")
    with pytest.raises(XSkyError, match="L=40"):
        location_embed(cube, "satclip-resnet18-l10", weights=ckpt40)
    with pytest.raises(XSkyError, match="neither a file nor a SatCLIP model name"):
        location_embed(cube, "satclip-resnet99-l10")
    enc = LocationEncoder(legendre_polys=2, capacity=4, embed_dim=3)  # training mode
    with pytest.raises(XSkyError, match="eval"):
        location_embed(cube, enc)


def test_errors_have_the_family_of_what_is_wrong(ckpt10, ckpt40):
    cube = _utm_cube(ny=10, nx=10)
    with pytest.raises(ArgumentError, match="stride must be a positive integer"):
        location_embed(cube, ckpt10, stride=1.5)
    with pytest.raises(ArgumentError, match="dtype must be one of"):
        location_embed(cube, ckpt10, dtype="float16")
    with pytest.raises(ArgumentError, match="chunks"):
        location_embed(cube, ckpt10, chunks={"y": 0})
    with pytest.raises(ArgumentError, match="weights="):
        location_embed(cube, "satclip-resnet18-l10")
    with pytest.raises(ArgumentError, match="needs an xarray"):
        location_embed(np.zeros((3, 3)), ckpt10)
    with pytest.raises(CheckpointError, match="L=40"):
        location_embed(cube, "satclip-resnet18-l10", weights=ckpt40)
    with pytest.raises(ArgumentError, match="batch_size must be a positive integer"):
        location_embed_points([1.0], [2.0], ckpt10, batch_size=0)
    with pytest.raises(DataError, match="NaN"):
        location_embed_points([10.0, np.nan], [45.0, 46.0], ckpt10)
    with pytest.raises(DataError, match="swapped"):
        location_embed_points([10.0], [120.0], ckpt10)
    with pytest.raises(AlignmentError, match="different indexes"):
        location_embed_points(pd.Series([1.0], index=["a"]), pd.Series([2.0], index=["b"]),
                              ckpt10)


def test_a_graph_of_an_edited_encoder_fails_clearly_where_it_was_not_registered(ckpt10):
    enc = LocationEncoder.from_checkpoint(ckpt10)
    with torch.no_grad():
        enc.nnet.last_layer.bias.add_(1.0)  # no longer the file's weights: in memory only
    emb = location_embed(_utm_cube(ny=4, nx=4), enc)
    cache.clear_cache()  # as in a worker that never saw the encoder
    with pytest.raises(ModelError, match="exists only in the process"):
        emb.compute(scheduler="sync")


def test_accessor_top_level_export_and_datatree_give_the_same_result(ckpt10):
    cube = _utm_cube(ny=6, nx=6)
    a = cube.sky.location_embed(ckpt10, stride=2)
    b = xsky.location_embed(cube.to_dataset(), ckpt10, stride=2)
    tree = xr.DataTree.from_dict({"/s2": cube.to_dataset()})
    c = tree.sky.location_embed(ckpt10, stride=2)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.values, c.values)


def test_points_dataframe_in_dataframe_out_with_same_index(ckpt10, shared):
    df = pd.read_csv(shared / "data" / "labelled_samples" / "air_temperature_stations"
                     / "stationDataAll.csv").iloc[:50]
    df.index = pd.Index([f"st{i}" for i in range(50)], name="station")
    out = location_embed_points(df, ckpt10)  # columns Lon/Lat found case-insensitively
    assert isinstance(out, pd.DataFrame)
    assert out.index.equals(df.index)
    assert out.shape == (50, 32)
    arr = location_embed_points(df["Lon"].to_numpy(), df["Lat"].to_numpy(), ckpt10)
    assert isinstance(arr, np.ndarray)
    np.testing.assert_array_equal(out.to_numpy(), arr)
    ser = location_embed_points(df["Lon"], df["Lat"], model=ckpt10)
    assert ser.index.equals(df.index)
    xy = location_embed_points(df.rename(columns={"Lon": "x", "Lat": "y"})[["x", "y"]],
                               model=ckpt10, dtype="float32")
    assert xy.dtypes.unique().tolist() == [np.float32]


def test_points_match_the_official_fixture(ckpt10, shared):
    with np.load(shared / "conformance" / "satclip" / "satclip_public_cases.npz") as f:
        lonlat, ref = f["lonlat"], f["out_L10"]
    got = location_embed_points(lonlat[:, 0], lonlat[:, 1], ckpt10)
    assert np.abs(got - ref).max() <= 1e-9


def test_points_validation_errors(ckpt10, tmp_path):
    with pytest.raises(XSkyError, match=r"within \[-90, 90\].*swapped"):
        location_embed_points([10.0, 20.0], [45.0, 120.0], ckpt10)
    with pytest.raises(XSkyError, match="NaN"):
        location_embed_points([10.0, np.nan], [45.0, 46.0], ckpt10)
    with pytest.raises(DimensionError, match="same length"):
        location_embed_points([10.0, 11.0, 12.0], [45.0, 46.0], ckpt10)
    with pytest.raises(DimensionError, match="longitude/latitude columns"):
        location_embed_points(pd.DataFrame({"a": [1.0], "b": [2.0]}), ckpt10)
    with pytest.raises(XSkyError, match="needs a model"):
        location_embed_points([1.0], [2.0])
    bad = tmp_path / "evil.ckpt"
    torch.save({"x": _Payload(tmp_path / "ran")}, bad)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.ckpt.*full unpickling.*trust=True"):
        location_embed_points([1.0], [2.0], bad)
    assert not (tmp_path / "ran").exists()


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.target),))
