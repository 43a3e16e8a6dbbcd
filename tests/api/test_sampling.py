"""Sampling embeddings at points (nearest, bilinear with invalid neighbours), point tables in
and out (index kept, time column, CRS), GeoParquet export, and GeoDataFrames in
``location_embed_points``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import shapely
import xarray as xr
from pyproj import Transformer

from xsky.api.location import location_embed_points
from xsky.api.sampling import sample
from xsky.exceptions import ArgumentError, CRSError, DataError, DimensionError
from xsky.geo import write_crs
from xsky.testing import raise_if_dask_computes

CRS = "EPSG:32633"


def grid_cube(nt=None, chunks=None):
    """(y, x, feature) with feature 0 = column index, 1 = row index, 2 = 100 + time: a
    bilinear interpolation of it is the fractional position itself. 10 m pixels, y
    descending, the pixel (0, 0) centred at (500005, 4999995)."""
    ny, nx = 6, 8
    iy, ix = np.mgrid[:ny, :nx].astype("float32")
    base = np.stack([ix, iy, np.full_like(ix, 100)], -1)
    v = base if nt is None else np.stack([base + np.array([0, 0, t]) for t in range(nt)])
    dims = ("y", "x", "feature") if nt is None else ("time", "y", "x", "feature")
    coords = {"y": 4_999_995.0 - 10 * np.arange(ny), "x": 500_005.0 + 10 * np.arange(nx)}
    if nt is not None:
        coords["time"] = pd.date_range("2021-04-01", periods=nt, freq="MS")
    emb = write_crs(xr.DataArray(v.astype("float32"), dims=dims, coords=coords,
                                 name="embedding"), CRS)
    return emb.chunk(chunks) if chunks else emb


def at(px, py):
    """Pixel units -> x, y in the cube's CRS (pixel centres at integers)."""
    return 500_005.0 + 10 * np.asarray(px, float), 4_999_995.0 - 10 * np.asarray(py, float)


def test_nearest_takes_the_pixel_whose_footprint_holds_the_point():
    x, y = at([0.0, 2.4, 6.6, 7.49], [0.0, 1.6, 4.4, 5.49])
    pts = pd.DataFrame({"x": x, "y": y, "label": list("abcd")}, index=[10, 11, 12, 13])
    out = sample(grid_cube(), pts)
    assert list(out.index) == [10, 11, 12, 13]
    assert list(out.columns) == ["x", "y", "label", "emb_0", "emb_1", "emb_2"]
    np.testing.assert_array_equal(out["emb_0"], [0, 2, 7, 7])
    np.testing.assert_array_equal(out["emb_1"], [0, 2, 4, 5])
    assert (out["label"] == list("abcd")).all()


def test_bilinear_interpolates_between_the_four_centres():
    px, py = np.array([0.25, 3.5, 6.9, 7.3]), np.array([0.75, 2.0, 4.1, 5.4])
    x, y = at(px, py)
    out = sample(grid_cube(), pd.DataFrame({"x": x, "y": y}), method="bilinear")
    # feature 0 is the column, feature 1 the row: bilinear gives the position back,
    # clamped to the outermost centres between them and the edge
    np.testing.assert_allclose(out["emb_0"], np.minimum(px, 7), atol=1e-6)
    np.testing.assert_allclose(out["emb_1"], np.minimum(py, 5), atol=1e-6)


def test_bilinear_renormalises_over_valid_neighbours_and_is_nan_without_any():
    emb = grid_cube()
    emb.values[1, 2] = np.nan  # one of the four neighbours of (2.25, 1.5)
    emb.values[4:6, 5:7] = np.nan  # all four neighbours of (5.5, 4.5)
    x, y = at([2.25, 5.5], [1.5, 4.5])
    out = sample(emb, pd.DataFrame({"x": x, "y": y}), method="bilinear")
    # weights of (1,2) (1,3) (2,2) (2,3): 0.375 0.125 0.375 0.125; without (1,2):
    # (0.125 * 3 + 0.375 * 2 + 0.125 * 3) / 0.625 for the column
    want_col = (0.125 * 3 + 0.375 * 2 + 0.125 * 3) / 0.625
    want_row = (0.125 * 1 + 0.375 * 2 + 0.125 * 2) / 0.625
    np.testing.assert_allclose(out.iloc[0][["emb_0", "emb_1", "emb_2"]],
                               [want_col, want_row, 100], atol=1e-6)
    assert out.iloc[1][["emb_0", "emb_1", "emb_2"]].isna().all()
    # nearest at an invalid pixel is NaN, not a neighbour's value
    near = sample(emb, pd.DataFrame({"x": [at(2, 1)[0]], "y": [at(2, 1)[1]]}))
    assert near[["emb_0", "emb_1", "emb_2"]].isna().all(axis=None)


def test_time_column_picks_each_points_date_and_without_it_every_date_is_a_row():
    emb = grid_cube(nt=3)
    x, y = at([1, 4], [2, 3])
    pts = pd.DataFrame({"x": x, "y": y, "time": ["2021-06-01", "2021-04-01"]},
                       index=pd.Index(["p", "q"], name="id"))
    out = sample(emb, pts)
    np.testing.assert_array_equal(out["emb_2"], [102, 100])
    np.testing.assert_array_equal(out["emb_0"], [1, 4])
    every = sample(emb, pts.drop(columns="time"))
    assert every.index.names == ["id", "time"] and len(every) == 6
    assert list(every.index.get_level_values(0)) == ["p"] * 3 + ["q"] * 3
    np.testing.assert_array_equal(every["emb_2"], [100, 101, 102] * 2)
    np.testing.assert_array_equal(every.loc["q", "emb_1"], [3, 3, 3])


def test_lon_lat_columns_are_transformed_and_the_result_does_not_depend_on_chunks():
    x, y = at([1.2, 6.7], [0.4, 4.6])
    lon, lat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform(x, y)
    pts = pd.DataFrame({"lon": lon, "lat": lat})
    want = sample(grid_cube(), pd.DataFrame({"x": x, "y": y}), method="bilinear")
    for chunks in (None, {"y": 2, "x": 3}, {"y": 1, "x": 8}):
        got = sample(grid_cube(chunks=chunks), pts, method="bilinear")
        np.testing.assert_allclose(got.filter(like="emb_"), want.filter(like="emb_"),
                                   atol=1e-5)


def test_a_lazy_cube_is_computed_once():
    x, y = at([1, 2, 5], [0, 3, 4])
    with raise_if_dask_computes(max_computes=1):
        out = sample(grid_cube(chunks={"y": 2, "x": 2}), pd.DataFrame({"x": x, "y": y}),
                     method="bilinear")
    np.testing.assert_allclose(out["emb_0"], [1, 2, 5])


def test_bad_points_are_refused():
    emb = grid_cube()
    with pytest.raises(DataError, match=r"outside the cube.*EPSG:4326"):
        sample(emb, pd.DataFrame({"x": [15.0], "y": [45.0]}))  # lon/lat named x/y
    with pytest.raises(DataError, match="not dates of the cube"):
        sample(grid_cube(nt=2), pd.DataFrame({"x": [500_005.0], "y": [4_999_995.0],
                                              "time": ["2021-04-15"]}))
    with pytest.raises(DimensionError, match="no time dimension"):
        sample(emb, pd.DataFrame({"x": [500_005.0], "y": [4_999_995.0],
                                  "time": ["2021-04-01"]}))
    with pytest.raises(DimensionError, match="cannot find point coordinates"):
        sample(emb, pd.DataFrame({"easting": [1.0]}))
    with pytest.raises(ArgumentError, match="'bilinear', 'nearest'"):
        sample(emb, pd.DataFrame({"x": [500_005.0], "y": [4_999_995.0]}), method="cubic")
    with pytest.raises(ArgumentError, match="another prefix"):
        sample(emb, pd.DataFrame({"x": [500_005.0], "y": [4_999_995.0], "emb_0": [1]}))
    with pytest.raises(CRSError, match="projected CRS"):
        sample(emb, pd.DataFrame({"lon": [15.0], "lat": [45.0]}), crs=CRS)
    with pytest.raises(DataError, match="NaN or infinite"):
        sample(emb, pd.DataFrame({"x": [np.nan], "y": [4_999_995.0]}))


# --------------------------------------------------------------------------------------
# GeoDataFrames and GeoParquet
# --------------------------------------------------------------------------------------


def test_a_geodataframe_in_gives_a_geodataframe_out_in_its_own_crs():
    gpd = pytest.importorskip("geopandas")
    x, y = at([1, 3], [2, 5])
    gdf = gpd.GeoDataFrame({"cls": [4, 5]}, geometry=gpd.points_from_xy(x, y), crs=CRS,
                           index=["a", "b"]).to_crs("EPSG:4326")
    out = sample(grid_cube(), gdf)
    assert isinstance(out, gpd.GeoDataFrame) and out.crs.to_epsg() == 4326
    assert list(out.index) == ["a", "b"]
    np.testing.assert_array_equal(out["emb_0"], [1, 3])
    np.testing.assert_array_equal(out["emb_1"], [2, 5])
    with pytest.raises(CRSError, match="without a CRS"):
        sample(grid_cube(), gdf.set_crs(None, allow_override=True))
    with pytest.raises(ArgumentError, match="must hold points"):
        sample(grid_cube(), gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1)], crs=CRS))


def test_geoparquet_round_trip_of_samples_and_top_k_keeps_crs_index_and_values(tmp_path):
    gpd = pytest.importorskip("geopandas")
    pytest.importorskip("pyarrow")
    from xsky.api.similarity import similar
    from xsky.io.geoparquet import to_geoparquet

    emb = grid_cube()
    x, y = at([1, 3, 6], [2, 5, 0])
    samples = sample(emb, pd.DataFrame({"x": x, "y": y}, index=pd.Index([7, 8, 9], name="id")))
    with pytest.raises(CRSError, match="pass crs="):
        to_geoparquet(samples, tmp_path / "s.parquet")
    path = to_geoparquet(samples, tmp_path / "s.parquet", crs=emb.rio.crs)
    back = gpd.read_parquet(path)
    assert back.crs.to_epsg() == 32633 and back.index.name == "id"
    pd.testing.assert_frame_equal(pd.DataFrame(back.drop(columns="geometry")), samples)
    np.testing.assert_array_equal(back.geometry.x, x)
    with pytest.raises(ArgumentError, match="overwrite=True"):
        to_geoparquet(samples, path, crs=CRS)
    to_geoparquet(samples.iloc[:1], path, crs=CRS, overwrite=True)
    assert len(gpd.read_parquet(path)) == 1

    top = similar(emb, np.array([1.0, 0.0, 0.0]), k=5)
    back = gpd.read_parquet(to_geoparquet(top, tmp_path / "top.parquet"))
    assert back.crs == top.crs and back.index.name == "rank"
    pd.testing.assert_frame_equal(back, top, check_like=False)
    assert list(tmp_path.iterdir()) and not list(tmp_path.glob(".*.tmp"))


def test_location_embed_points_takes_a_geodataframe_in_any_crs():
    gpd = pytest.importorskip("geopandas")
    from xsky.models.satclip import LocationEncoder

    enc = LocationEncoder(legendre_polys=10, capacity=16, embed_dim=8).eval()
    df = pd.DataFrame({"lon": [2.35, 13.4], "lat": [48.85, 52.5]}, index=["paris", "berlin"])
    want = location_embed_points(df, enc)
    gdf = gpd.GeoDataFrame(index=df.index, geometry=gpd.points_from_xy(df.lon, df.lat),
                           crs="EPSG:4326").to_crs("EPSG:3035")
    got = location_embed_points(gdf, enc)
    assert list(got.index) == ["paris", "berlin"]
    np.testing.assert_allclose(got.values, want.values, atol=1e-9)
    np.testing.assert_allclose(location_embed_points(gdf.geometry, enc).values, want.values,
                               atol=1e-9)
    with pytest.raises(CRSError, match="without a CRS"):
        location_embed_points(gdf.set_crs(None, allow_override=True), enc)
    with pytest.raises(ArgumentError, match="pass the model second"):
        location_embed_points(gdf, [1.0], enc)
