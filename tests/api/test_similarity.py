"""Similarity search: exact cosine maps, chunk-wise top-k, every query form, laziness, chunk
invariance, bad input, the approximate index, and a retrieval check on real embeddings."""

from __future__ import annotations

import sys

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import shapely
import xarray as xr
from pyproj import Transformer

from xsky.api.sampling import sample
from xsky.api.similarity import Examples, similar
from xsky.engine.similarity import combine_query, cosine_block, top_k
from xsky.exceptions import (
    ArgumentError,
    CRSError,
    DataError,
    DimensionError,
    MissingDependencyError,
)
from xsky.geo import write_crs
from xsky.testing import raise_if_dask_computes

CRS = "EPSG:32633"
X0, Y0, RES = 500_000.0, 5_000_000.0, 10.0


def cube(ny=12, nx=17, nf=6, nt=None, seed=0, chunks=None, invalid=True):
    """A random embedding cube on a 10 m UTM grid (y descending), with one NaN pixel and
    one all-zero pixel per date when ``invalid``."""
    rng = np.random.default_rng(seed)
    shape = (ny, nx, nf) if nt is None else (nt, ny, nx, nf)
    v = rng.standard_normal(shape).astype("float32")
    if invalid:
        v[..., 2, 3, :] = np.nan
        v[..., 5, 1, :] = 0.0
    dims = ("y", "x", "feature") if nt is None else ("time", "y", "x", "feature")
    coords = {"y": Y0 - RES / 2 - RES * np.arange(ny), "x": X0 + RES / 2 + RES * np.arange(nx)}
    if nt is not None:
        coords["time"] = pd.date_range("2020-01-01", periods=nt, freq="MS")
    out = xr.DataArray(v, dims=dims, coords=coords, name="embedding",
                       attrs={"model": "test"})
    out = write_crs(out, CRS)
    return out.chunk(chunks) if chunks else out


def xy(emb, iy, ix):
    return float(emb.x[ix]), float(emb.y[iy])


def reference(v, q):
    """float64 cosine of every pixel with q, NaN for invalid pixels."""
    v = np.asarray(v, np.float64)
    norm = np.linalg.norm(v, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (v @ np.asarray(q, np.float64)) / norm / np.linalg.norm(q)
    out[~(norm > 0)] = np.nan
    return out


def assert_same_nan_close(a, b, atol):
    a, b = np.asarray(a), np.asarray(b)
    assert (np.isnan(a) == np.isnan(b)).all()
    assert np.nanmax(np.abs(a - b)) <= atol


# --------------------------------------------------------------------------------------
# the map
# --------------------------------------------------------------------------------------


def test_cosine_map_of_a_hand_computed_case():
    v = np.array([[[1, 0], [0, 1]], [[1, 1], [-1, 0]]], "float32")
    emb = write_crs(xr.DataArray(v, dims=("y", "x", "feature"),
                                 coords={"y": [15.0, 5.0], "x": [5.0, 15.0]}), CRS)
    out = similar(emb, np.array([2.0, 0.0]))
    assert isinstance(out.data, np.ndarray)  # in memory in, in memory out
    np.testing.assert_allclose(out.values, [[1, 0], [np.sqrt(0.5), -1]], atol=1e-7)
    # a point query: the pixel at x=15, y=15 is (0, 1)
    np.testing.assert_allclose(similar(emb, (15.0, 15.0)).values,
                               [[0, 1], [np.sqrt(0.5), 0]], atol=1e-7)


def test_map_equals_a_float64_reference_and_is_nan_at_invalid_pixels():
    emb = cube(chunks={"y": 5, "x": 7})
    q = np.random.default_rng(3).standard_normal(6)
    out = similar(emb, q)
    assert_same_nan_close(out.values, reference(emb.values, q), 1e-6)
    assert np.isnan(out.values[2, 3]) and np.isnan(out.values[5, 1])  # NaN and zero pixel


def test_map_keeps_dims_coords_crs_and_attrs():
    emb = cube(nt=3, chunks={"time": 1, "y": 5})
    emb = emb.assign_coords(valid_fraction=(("time", "y", "x"), np.ones((3, 12, 17))))
    out = similar(emb, np.ones(6))
    assert out.name == "similarity" and out.dims == ("time", "y", "x")
    assert out.dtype == np.float32
    assert out.rio.crs.to_epsg() == 32633
    np.testing.assert_array_equal(out.x, emb.x)
    np.testing.assert_array_equal(out.time, emb.time)
    assert "valid_fraction" in out.coords
    assert out.attrs["model"] == "test" and out.attrs["query"] == "vector"


def test_map_is_bitwise_identical_across_chunkings():
    emb = cube(ny=23, nx=31, nt=2)
    q = np.random.default_rng(1).standard_normal(6)
    ref = similar(emb, q).values
    for chunks in ({"y": 5, "x": 7}, {"y": 23, "x": 1}, {"time": 1, "y": 3, "x": 31},
                   {"feature": 2, "y": 11}):
        np.testing.assert_array_equal(similar(emb.chunk(chunks), q).values, ref)
    # a transposed (strided) cube gives the same numbers too
    t = emb.transpose("x", "time", "feature", "y").chunk({"x": 4})
    np.testing.assert_array_equal(similar(t, q).values, ref)


def test_strided_blocks_are_read_like_contiguous_ones():
    x = np.random.default_rng(0).standard_normal((8, 40, 5)).astype("float32")
    q = np.ones(5) / np.sqrt(5)
    view = x[:, 10:30]
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(cosine_block(view, q), cosine_block(view.copy(), q))
    np.testing.assert_array_equal(cosine_block(x.transpose(1, 0, 2), q),
                                  cosine_block(x, q).T)


@pytest.mark.parametrize("kind", ["vector", "point", "polygon", "examples", "frame"])
def test_building_the_map_computes_nothing(kind):
    emb = cube(nt=2, chunks={"y": 4, "x": 5})
    a, b = xy(emb, 3, 4), xy(emb, 8, 9)
    query = {
        "vector": np.ones(6),
        "point": a,
        "polygon": shapely.box(a[0] - 12, a[1] - 12, a[0] + 12, a[1] + 12),
        "examples": Examples(positive=[a], negative=[b]),
        "frame": pd.DataFrame({"x": [a[0], b[0]], "y": [a[1], b[1]]}),
    }[kind]
    with raise_if_dask_computes():
        out = similar(emb, query, time="2020-02-01")
        masked = similar(emb, query, time="2020-02-01", threshold=0.5)
    assert isinstance(out.data, da.Array) and isinstance(masked.data, da.Array)
    assert np.isfinite(out.values).sum() > 0


def test_threshold_masks_the_map():
    emb = cube()
    q = np.arange(6.0)
    full = similar(emb, q).values
    out = similar(emb, q, threshold=0.3).values
    assert_same_nan_close(out, np.where(full >= 0.3, full, np.nan), 0)


# --------------------------------------------------------------------------------------
# queries
# --------------------------------------------------------------------------------------


def test_a_point_query_is_the_vector_query_of_its_pixel():
    emb = cube(chunks={"y": 5})
    by_point = similar(emb, xy(emb, 7, 11)).values
    by_vector = similar(emb, emb.values[7, 11]).values
    np.testing.assert_array_equal(by_point, by_vector)
    assert by_point[7, 11] == pytest.approx(1.0, abs=1e-6)
    # anywhere inside the pixel's footprint picks the same pixel
    x, y = xy(emb, 7, 11)
    np.testing.assert_array_equal(similar(emb, (x + 4.9, y - 4.9)).values, by_vector)
    # a cube stored with y ascending finds the same pixel
    flipped = emb.sortby("y")
    np.testing.assert_array_equal(similar(flipped, (x, y)).values, by_vector[::-1])


def test_lon_lat_points_are_placed_through_the_crs():
    emb = cube()
    to_ll = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    pts = [xy(emb, 2, 5), xy(emb, 9, 14)]
    lon, lat = to_ll.transform(*np.array(pts).T)
    frame = pd.DataFrame({"lon": lon, "lat": lat})
    want = similar(emb, emb.values[[2, 9], [5, 14]].mean(0)).values
    np.testing.assert_allclose(similar(emb, frame).values, want, atol=1e-6)
    # tuples in lon/lat with the CRS said
    np.testing.assert_allclose(similar(emb, [(lon[0], lat[0]), (lon[1], lat[1])],
                                       crs="EPSG:4326").values, want, atol=1e-6)


def test_a_polygon_query_is_the_mean_of_the_valid_pixels_inside():
    emb = cube()
    # pixel centres of rows 1..3 and columns 2..4; (2, 3) is the NaN pixel: skipped
    x0, y0 = xy(emb, 1, 2)
    x1, y1 = xy(emb, 3, 4)
    poly = shapely.box(x0 - 1, y1 - 1, x1 + 1, y0 + 1)
    v = emb.values[1:4, 2:5].reshape(-1, 6)
    want = v[np.isfinite(v).all(1)].mean(0)
    out = similar(emb, poly)
    np.testing.assert_allclose(out.values, similar(emb, want).values, atol=1e-6)
    assert "9 pixel(s) in polygons" in out.attrs["query"]  # covered (validity: at compute)


def test_a_triangle_takes_only_the_pixels_whose_centre_is_inside():
    emb = cube(invalid=False)

    def at(px, py):  # pixel units -> the cube's CRS
        return X0 + RES / 2 + RES * px, Y0 - RES / 2 - RES * py

    tri = shapely.Polygon([at(-0.1, -0.1), at(4.2, -0.1), at(-0.1, 4.2)])
    iy, ix = np.mgrid[:12, :17]
    inside = (ix + iy <= 4)  # 15 pixels: a staircase, not the bounding box's 25
    want = emb.values[inside].mean(0)
    out = similar(emb, tri)
    np.testing.assert_allclose(out.values, similar(emb, want).values, atol=1e-6)
    assert "15 pixel(s) in polygons" in out.attrs["query"]


def test_examples_give_two_mean_positive_minus_mean_negative():
    emb = cube()
    p1, p2, n1 = (7, 11), (3, 4), (9, 2)
    v = emb.values.astype("float64")
    want = 2 * (v[p1] + v[p2]) / 2 - v[n1]
    ex = Examples(positive=[xy(emb, *p1), xy(emb, *p2)], negative=xy(emb, *n1))
    out = similar(emb, ex).values
    np.testing.assert_allclose(out, reference(v, want), atol=1e-6)
    # the same as a dict, and built up by refining
    np.testing.assert_array_equal(
        similar(emb, {"positive": [xy(emb, *p1), xy(emb, *p2)], "negative": [xy(emb, *n1)]}
                ).values, out)
    refined = Examples(positive=xy(emb, *p1)).add(positive=xy(emb, *p2)).add(
        negative=xy(emb, *n1))
    np.testing.assert_array_equal(similar(emb, refined).values, out)
    # vectors as examples (e.g. from xsky.sample) are the same
    vec = Examples(positive=np.stack([v[p1], v[p2]]), negative=v[n1])
    np.testing.assert_allclose(similar(emb, vec).values, out, atol=1e-6)


def test_combine_query_of_a_hand_computed_case():
    q = combine_query(np.array([[1.0, 0.0], [1.0, 2.0]]), np.array([[0.0, 3.0]]))
    np.testing.assert_allclose(q, np.array([2.0, -1.0]) / np.sqrt(5))  # 2 (1, 1) - (0, 3)


def test_time_cube_reads_the_query_at_its_date():
    emb = cube(nt=3, chunks={"time": 1})
    a = xy(emb, 4, 6)
    out = similar(emb, a, time="2020-03-01")
    np.testing.assert_array_equal(out.values, similar(emb, emb.values[2, 4, 6]).values)
    frame = pd.DataFrame({"x": [a[0]], "y": [a[1]], "time": [pd.Timestamp("2020-02-01")]})
    np.testing.assert_array_equal(similar(emb, frame).values,
                                  similar(emb, emb.values[1, 4, 6]).values)


# --------------------------------------------------------------------------------------
# top-k
# --------------------------------------------------------------------------------------


def test_engine_top_k_breaks_ties_by_pixel_order_whatever_the_chunking():
    s = np.full((6, 9), 0.5, "float32")
    s[1, 2], s[4, 4], s[0, 0] = 0.9, 0.9, np.nan
    want_idx = [1 * 9 + 2, 4 * 9 + 4, 1, 2, 3]  # the two 0.9, then the first 0.5 in order
    for chunks in ((6, 9), (1, 1), (2, 4), (5, 2)):
        vals, idx, n_valid = top_k(da.from_array(s, chunks=chunks), 5)
        assert idx.tolist() == want_idx and n_valid == 53
        np.testing.assert_array_equal(vals, np.float32([0.9, 0.9, 0.5, 0.5, 0.5]))
    vals, idx, _ = top_k(da.from_array(s, chunks=2), 5, threshold=0.6)
    assert idx.tolist() == [11, 40]


def test_engine_top_k_equals_a_full_sort():
    s = np.random.default_rng(0).standard_normal((3, 40, 50)).astype("float32")
    s[0, :10] = np.nan
    order = np.lexsort((np.arange(s.size), -np.nan_to_num(s.ravel(), nan=-np.inf)))[:37]
    vals, idx, n = top_k(da.from_array(s, chunks=(1, 13, 17)), 37)
    assert idx.tolist() == order.tolist() and n == s.size - 500
    np.testing.assert_array_equal(vals, s.ravel()[order])


def test_top_k_table_holds_the_best_pixels_with_coordinates():
    gpd = pytest.importorskip("geopandas")
    emb = cube(nt=2, chunks={"time": 1, "y": 5, "x": 6})
    q = np.random.default_rng(2).standard_normal(6)
    full = reference(emb.values, q)
    order = np.lexsort((np.arange(full.size), -np.nan_to_num(full.ravel(), nan=-np.inf)))[:8]
    t, iy, ix = np.unravel_index(order, full.shape)
    top = similar(emb, q, k=8)
    assert isinstance(top, gpd.GeoDataFrame) and top.crs.to_epsg() == 32633
    assert list(top.index) == list(range(1, 9)) and top.index.name == "rank"
    assert list(top.columns) == ["score", "time", "x", "y", "lon", "lat", "geometry"]
    np.testing.assert_allclose(top["score"], full.ravel()[order], atol=1e-6)
    np.testing.assert_array_equal(top["x"], emb.x.values[ix])
    np.testing.assert_array_equal(top["y"], emb.y.values[iy])
    np.testing.assert_array_equal(top["time"], emb.time.values[t])
    np.testing.assert_array_equal(top.geometry.x, top["x"])
    lon, lat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform(
        top["x"], top["y"])
    np.testing.assert_allclose(top["lon"], lon)
    np.testing.assert_allclose(top["lat"], lat)


def test_top_k_is_the_same_for_every_chunking_and_computes_once():
    pytest.importorskip("geopandas")
    emb = cube(ny=30, nx=40, nt=2, invalid=False)
    emb.values[:, ::3] = emb.values[:, :1]  # many exact ties across blocks
    q = emb.values[0, 0, 0]
    ref = similar(emb, q, k=25)
    for chunks in ({"y": 7, "x": 9}, {"time": 1, "y": 30, "x": 1}, {"y": 4}):
        lazy = emb.chunk(chunks)
        with raise_if_dask_computes(max_computes=1):
            got = similar(lazy, xy(emb, 0, 0), k=25, time="2020-01-01")
        pd.testing.assert_frame_equal(got.drop(columns="geometry"),
                                      ref.drop(columns="geometry"))


def test_top_k_with_threshold_may_return_fewer_rows():
    pytest.importorskip("geopandas")
    emb = cube()
    q = emb.values[4, 4]
    top = similar(emb, q, k=50, threshold=0.6)
    full = similar(emb, q).values
    assert len(top) == int((full >= 0.6).sum()) < 50
    assert (top["score"] >= 0.6).all()


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------


def test_a_vector_of_the_wrong_length_is_refused():
    with pytest.raises(DimensionError, match=r"shape \(5,\).*6 features.*length 6"):
        similar(cube(), np.ones(5))
    with pytest.raises(DimensionError, match=r"tuple \(x, y\)"):
        similar(cube(), [500_005.0, 4_999_995.0])  # a list is a vector, a tuple a point


def test_points_outside_the_cube_are_refused_with_the_extent_and_a_crs_hint():
    emb = cube()
    with pytest.raises(DataError, match=r"outside the cube.*x \[500000, 500170\].*EPSG:4326"):
        similar(emb, (15.0, 45.1))  # lon/lat given as bare coordinates: never guessed
    with pytest.raises(DataError, match="1 of 2 point"):
        similar(emb, pd.DataFrame({"x": [500_005.0, 400_000.0], "y": [4_999_995.0] * 2}))
    with pytest.raises(DataError, match="covers no pixel centre"):
        similar(emb, shapely.box(0, 0, 1, 1))


def test_a_geodataframe_without_crs_is_refused():
    gpd = pytest.importorskip("geopandas")
    pts = gpd.GeoDataFrame(geometry=[shapely.Point(500_005.0, 4_999_995.0)])
    with pytest.raises(CRSError, match="without a CRS"):
        similar(cube(), pts)
    with pytest.raises(CRSError, match="but crs="):
        similar(cube(), pts.set_crs(CRS), crs="EPSG:4326")
    # with its CRS it works, in another CRS too
    ll = pts.set_crs(CRS).to_crs("EPSG:4326")
    np.testing.assert_allclose(similar(cube(), ll).values,
                               similar(cube(), cube().values[0, 0]).values, atol=1e-6)


def test_k_larger_than_the_valid_pixels_is_refused():
    pytest.importorskip("geopandas")
    emb = cube(ny=3, nx=4, invalid=False)
    emb.values[0, 0] = np.nan
    with pytest.raises(DataError, match=r"k=12 is larger than the 11 pixels with a valid"):
        similar(emb.chunk(y=1), np.ones(6), k=12)
    with pytest.raises(DataError, match="larger than the cube's 12 pixels"):
        similar(emb, np.ones(6), k=13)
    with pytest.raises(ArgumentError, match="positive integer"):
        similar(emb, np.ones(6), k=0)


def test_a_query_pixel_without_a_valid_embedding_is_an_error_when_computed():
    emb = cube(chunks={"y": 4})
    out = similar(emb, xy(emb, 2, 3))  # the NaN pixel: lazy, so the error comes at compute
    with pytest.raises(DataError, match=r"1 positive example pixel\(s\) have no valid"):
        out.compute()
    with pytest.raises(DataError, match="no valid embedding"):
        similar(cube(), xy(emb, 5, 1))  # the all-zero pixel, in memory: at once


def test_time_cube_location_queries_need_a_date():
    emb = cube(nt=2)
    with pytest.raises(ArgumentError, match=r"time axis \(2 dates\).*time="):
        similar(emb, xy(emb, 1, 1))
    with pytest.raises(DataError, match="not dates of the cube"):
        similar(emb, xy(emb, 1, 1), time="2021-05-01")
    with pytest.raises(DimensionError, match="no time dimension"):
        similar(cube(), xy(emb, 1, 1), time="2020-01-01")


def test_other_bad_queries_and_arguments_are_refused():
    emb = cube()
    with pytest.raises(ArgumentError, match=r"in \[-1, 1\]"):
        similar(emb, np.ones(6), threshold=1.5)
    with pytest.raises(ArgumentError, match="keys 'positive' and 'negative'"):
        similar(emb, {"pos": [xy(emb, 1, 1)]})
    with pytest.raises(ArgumentError, match="no positive"):
        similar(emb, Examples(negative=[xy(emb, 1, 1)]))
    with pytest.raises(ArgumentError, match="cannot use a str"):
        similar(emb, "forest")
    with pytest.raises(ArgumentError, match="LineString"):
        similar(emb, shapely.LineString([xy(emb, 1, 1), xy(emb, 2, 2)]))
    with pytest.raises(DataError, match="all zeros"):
        similar(emb, np.zeros(6))
    with pytest.raises(DataError, match="cancel out"):
        similar(emb, Examples(positive=np.ones(6), negative=2 * np.ones(6)))
    with pytest.raises(DimensionError, match="no 'feature' dimension"):
        similar(emb.rename(feature="band"), np.ones(6))
    with pytest.raises(ArgumentError, match="Dataset"):
        similar(emb.to_dataset(), np.ones(6))


# --------------------------------------------------------------------------------------
# the approximate index
# --------------------------------------------------------------------------------------


def clustered(n_side=60, nf=16, nc=40, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((nc, nf)).astype("float32")
    lab = rng.integers(0, nc, n_side * n_side)
    v = centres[lab] + 0.5 * rng.standard_normal((n_side * n_side, nf)).astype("float32")
    emb = write_crs(xr.DataArray(v.reshape(n_side, n_side, nf), dims=("y", "x", "feature"),
                                 coords={"y": -10.0 * np.arange(n_side),
                                         "x": 10.0 * np.arange(n_side)}), CRS)
    queries = centres[rng.integers(0, nc, 50)] + 0.5 * rng.standard_normal((50, nf))
    return emb, queries


def test_exact_index_matches_similar():
    pytest.importorskip("geopandas")
    import xsky.index

    emb = cube(nt=2, chunks={"y": 5})
    idx = xsky.index.build(emb, engine="exact")
    assert len(idx) == 2 * (12 * 17 - 2)
    a = xy(emb, 4, 6)
    got = idx.search(a, k=7, time="2020-02-01")
    want = similar(emb, a, k=7, time="2020-02-01")
    pd.testing.assert_frame_equal(got.drop(columns="geometry"), want.drop(columns="geometry"))


def test_usearch_index_recall_at_10_is_at_least_095_with_exact_scores():
    pytest.importorskip("usearch")
    import xsky.index

    emb, queries = clustered()
    ann = xsky.index.build(emb, engine="usearch", threads=1)
    ref = xsky.index.build(emb, engine="exact")
    s_ann, got = ann.search_vectors(queries, k=10)
    _, want = ref.search_vectors(queries, k=10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want, strict=True)])
    assert recall >= 0.95
    # re-ranked scores are exact cosines of the returned pixels
    v = emb.values.reshape(-1, emb.sizes["feature"]).astype("float64")
    for q, f, s in zip(queries, got, s_ann, strict=True):
        np.testing.assert_allclose(s, reference(v[f], q), atol=1e-6)
        assert (np.diff(s) <= 0).all()


def test_usearch_missing_is_a_clear_error(monkeypatch):
    import xsky.index

    monkeypatch.setitem(sys.modules, "usearch", None)
    monkeypatch.setitem(sys.modules, "usearch.index", None)
    with pytest.raises(MissingDependencyError, match="pip install usearch"):
        xsky.index.build(cube(), engine="usearch")
    with pytest.raises(ArgumentError, match="'exact', 'usearch'"):
        xsky.index.build(cube(), engine="faiss")


# --------------------------------------------------------------------------------------
# real embeddings: Galileo-nano on the Romania cube, SCL classes on held-out dates
# --------------------------------------------------------------------------------------

SCORED_SCL = (2, 4, 5, 6, 7, 11)


def month_labels(ds, months, s=4):
    """Majority SCL class per (month, s x s block) over the month's valid observations
    (-1 when the majority holds half of them or less, or nothing was observed)."""
    scl, valid = ds["SCL"].values, ds["valid"].values
    per = pd.DatetimeIndex(ds.time.values).to_period("M")
    _, ny, nx = scl.shape
    out = np.full((len(months), ny // s, nx // s), -1)
    for i, m in enumerate(months.to_period("M")):
        sel = per == m
        counts = np.stack([((scl[sel] == c) & valid[sel]).reshape(
            -1, ny // s, s, nx // s, s).sum(axis=(0, 2, 4)) for c in SCORED_SCL])
        ok = counts.max(0) * 2 > counts.sum(0)
        out[i] = np.where(ok, np.array(SCORED_SCL)[counts.argmax(0)], -1)
    return out


@pytest.fixture(scope="module")
def romania_months(shared):
    """Galileo-nano (window 4, 40 m) on each monthly composite of Feb-Apr 2019 and Feb-Jun
    2020 alone, stacked on time, with the monthly SCL labels."""
    import xsky

    weights = shared / "data" / "weights_small" / "galileo_nano"
    if not weights.exists():
        pytest.skip("needs ../shared/data/weights_small/galileo_nano")
    ds = xsky.tutorial.open_dataset("romania", snow=True)
    cube = ds.sel(time=slice("2019-02-01", "2020-06-30")).load()
    comp = xsky.composite(cube[["B02", "B03", "B04", "B08", "valid"]], "MS", drop_empty=True)
    when = pd.DatetimeIndex(comp.time.values)
    last = np.where(when.year == 2019, 4, 6)
    comp = comp.sel(time=(when.month >= 2) & (when.month <= last)).load()
    lazy = [xsky.embed(comp.isel(time=[i]), "galileo-nano", weights=str(weights), window=4)
            for i in range(comp.sizes["time"])]
    emb = xr.concat([e.compute() for e in lazy],
                    dim=xr.DataArray(comp.time.values, dims="time", name="time"))
    return emb, month_labels(cube, pd.DatetimeIndex(comp.time.values)), lazy


def test_real_embeddings_retrieve_scl_classes_on_held_out_dates(romania_months):
    """5 positive and 5 negative pixels of a class labelled in 2019 (read with sample),
    searched in the 2020 months: precision@50 against the 2020 SCL, 5 draws."""
    emb, labels, _ = romania_months
    months = pd.DatetimeIndex(emb.time.values)
    train_t, test_t = np.flatnonzero(months.year == 2019), np.flatnonzero(months.year == 2020)
    train, test = emb.isel(time=train_t), emb.isel(time=test_t)
    ok = np.isfinite(emb.values).all(-1)

    def vectors(idx):
        t, iy, ix = idx.T
        pts = pd.DataFrame({"x": train.x.values[ix], "y": train.y.values[iy],
                            "time": train.time.values[t]})
        return sample(train, pts).filter(like="emb_").values

    # measured: snow 0.41 (chance 0.05), not vegetated 0.20 (chance 0.08)
    for cls, factor in ((11, 4.0), (5, 2.0)):
        rng = np.random.default_rng(0)
        pos = np.argwhere((labels[train_t] == cls) & ok[train_t])
        neg = np.argwhere((labels[train_t] >= 0) & (labels[train_t] != cls) & ok[train_t])
        chance = ((labels[test_t] == cls) & ok[test_t]).sum() / ok[test_t].sum()
        precision = []
        for _ in range(5):
            p = pos[rng.choice(len(pos), 5, replace=False)]
            n = neg[rng.choice(len(neg), 5, replace=False)]
            scores = similar(test, Examples(positive=vectors(p), negative=vectors(n)))
            _, flat, _ = top_k(scores.data, 50)  # what k=50 does, without geopandas
            precision.append(np.mean(labels[test_t].ravel()[flat] == cls))
        assert np.mean(precision) > factor * chance, (cls, precision, chance)


def test_real_embedding_map_is_lazy_and_matches_the_loaded_one(romania_months):
    emb, _, lazy = romania_months
    one = lazy[-1]  # one month (2020-04), not computed yet
    x, y = float(one.x[5]), float(one.y[3])
    with raise_if_dask_computes():
        out = similar(one, (x, y))
    assert isinstance(out.data, da.Array) and out.rio.crs == emb.rio.crs
    np.testing.assert_allclose(out.values, similar(emb.isel(time=-1), (x, y)).values,
                               atol=1e-5, equal_nan=True)


def test_every_query_form_is_classified_once_for_search_and_drawing():
    """similar() and similarity_map() read queries through one query_parts: a form that can
    be searched can be drawn, and a refused geometry is refused by both with one message."""
    import geopandas as gpd

    from xsky.api.similarity import query_parts
    from xsky.plot import _query_marks

    e = cube()
    p0, p1 = xy(e, 1, 1), xy(e, 3, 4)
    square = shapely.box(p0[0], p1[1], p1[0], p0[1])
    forms = {
        "point": (p0, ["points"]),
        "points": ([p0, p1], ["points"]),
        "shapely": (shapely.Point(*p1), ["geometries"]),
        "polygon": (square, ["geometries"]),
        "frame": (pd.DataFrame({"x": [p0[0]], "y": [p0[1]]}), ["points"]),
        "geoframe": (gpd.GeoDataFrame(geometry=[shapely.Point(*p0), square], crs=CRS),
                     ["geometries"]),
        "vector": (np.ones(6), ["vector"]),
        "mixed": ([p0, np.ones(6)], ["points", "vector"]),
    }
    for name, (q, kinds) in forms.items():
        assert [p.kind for p in query_parts(q, None, "q")] == kinds, name
        marks = _query_marks(q, e.rio.crs, None)
        n_drawn = sum(len(a) for v in marks.points.values() for a in v) + sum(
            len(v) for v in marks.rings.values())
        assert (n_drawn > 0) == (kinds != ["vector"]), name
        assert np.isfinite(similar(e, q).values).any(), name
    line = shapely.LineString([p0, p1])
    for call in (lambda: similar(e, line), lambda: _query_marks(line, e.rio.crs, None)):
        with pytest.raises(ArgumentError, match="is a LineString; a query geometry must be"):
            call()
