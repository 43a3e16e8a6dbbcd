"""change() and threshold(): distances between composited periods, through-time scores,
histogram thresholds; lazy, chunk-invariant, georeferenced; and on real Sentinel-2 data,
planted changes found and clouds flagged unless masked."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import xsky
from xsky.api.change import change, threshold
from xsky.engine.change import _robust_z, otsu, series_scores
from xsky.exceptions import AlignmentError, ArgumentError, DataError, DimensionError
from xsky.geo import write_crs
from xsky.testing import raise_if_dask_computes

NAN = np.nan
CRS = "EPSG:32633"
SQ2 = np.sqrt(2.0)


def _emb(values, dates, *, vf=None, dim="time", chunks=None, name="embedding"):
    """An embedding ``(dim, y, x, feature)`` on a 10 m grid in EPSG:32633."""
    values = np.asarray(values, "float32")
    _, ny, nx, _ = values.shape
    coords = {dim: pd.to_datetime(dates), "y": 5_000_005.0 + 10 * np.arange(ny)[::-1],
              "x": 500_005.0 + 10 * np.arange(nx)}
    out = xr.DataArray(values, dims=(dim, "y", "x", "feature"), coords=coords, name=name,
                       attrs={"model": "hand"})
    if vf is not None:
        out = out.assign_coords(valid_fraction=((dim, "y", "x"), np.asarray(vf, "float32")))
    out = write_crs(out, CRS)
    return out.chunk(chunks) if chunks else out


# -- a hand-made cube: 2 x 2 pixels, 2 features, 2 dates in 2018 and 2 in 2020 -------------
#
# (0, 0): ref [1, 0] twice, target [0, 1] twice: cosine 1, euclidean sqrt(2)
# (0, 1): ref [1, 0] and [3, 0] (median [2, 0]); target [1, 1] and a cloudy NaN: cosine
#         1 - 1/sqrt(2), euclidean sqrt(2), target_count 1
# (1, 0): ref dates with valid_fraction 0.2 (< 0.5): no reference -> NaN, ref_count 0
# (1, 1): ref [1, 2] twice, target [2, 4] twice: cosine 0 (same direction), euclidean sqrt(5)
DATES = ["2018-03-01", "2018-07-01", "2020-03-01", "2020-07-01"]
V = np.array([
    [[[1, 0], [1, 0]], [[5, 5], [1, 2]]],
    [[[1, 0], [3, 0]], [[5, 5], [1, 2]]],
    [[[0, 1], [1, 1]], [[1, 0], [2, 4]]],
    [[[0, 1], [NAN, NAN]], [[1, 0], [2, 4]]],
], "float32")
VF = np.ones((4, 2, 2))
VF[:2, 1, 0] = 0.2


def test_two_periods_cosine_and_euclidean_by_hand():
    emb = _emb(V, DATES, vf=VF)
    out = change(emb, slice("2018", "2018"), slice("2020", "2020"))
    np.testing.assert_allclose(out.change.values, [[1, 1 - 1 / SQ2], [NAN, 0]], atol=1e-6)
    np.testing.assert_array_equal(out.ref_count.values, [[2, 2], [0, 2]])
    np.testing.assert_array_equal(out.target_count.values, [[2, 1], [2, 2]])
    assert out.change.dtype == np.float32 and out.ref_count.dtype == np.int32
    eu = change(emb, "2018", "2020", method="euclidean")
    np.testing.assert_allclose(eu.change.values, [[SQ2, SQ2], [NAN, np.sqrt(5)]], atol=1e-6)
    assert out.attrs["change_ref"] == "2018-01-01T00:00:00/2019-01-01T00:00:00"
    assert out.attrs["change_method"] == "cosine" and out.attrs["model"] == "hand"


def test_a_cloudy_side_is_nan_with_its_count_not_a_change():
    emb = _emb(V, DATES, vf=VF)
    out = change(emb, "2018", "2020")
    # (1, 0) had only cloudy reference dates: no score, and the count says why
    assert np.isnan(out.change.values[1, 0]) and out.ref_count.values[1, 0] == 0
    # lowering min_valid_fraction lets them count: then 1 - cos([5, 5], [1, 0])
    kept = change(emb, "2018", "2020", min_valid_fraction=0.1)
    np.testing.assert_allclose(kept.change.values[1, 0], 1 - 1 / SQ2, atol=1e-6)
    # min_count: a side needs that many valid observations
    two = change(emb, "2018", "2020", min_count=2)
    assert np.isnan(two.change.values[0, 1]) and two.target_count.values[0, 1] == 1


def test_a_valid_mask_excludes_observations():
    emb = _emb(V, DATES)
    valid = xr.DataArray(np.ones((4, 2, 2), bool), dims=("time", "y", "x"),
                         coords={"time": emb.time, "y": emb.y, "x": emb.x})
    valid[1, 0, 1] = False  # (0, 1): the reference is [1, 0] alone
    valid[2, 0, 1] = False  # and the target nothing
    out = change(emb, "2018", "2020", valid=valid)
    np.testing.assert_array_equal(out.ref_count.values[0], [2, 1])
    np.testing.assert_array_equal(out.target_count.values[0], [2, 0])
    assert np.isnan(out.change.values[0, 1])
    # a valid coordinate on the embedding acts alike
    same = change(emb.assign_coords(valid=valid), "2018", "2020")
    xr.testing.assert_identical(same.ref_count, out.ref_count)


def test_crs_coords_and_provenance_are_kept():
    emb = _emb(V, DATES, chunks={"time": 2})
    for out in (change(emb, "2018", "2020"), change(emb, min_baseline=2)):
        assert out.rio.crs.to_epsg() == 32633
        assert "spatial_ref" in out.coords
        np.testing.assert_array_equal(out.x.values, emb.x.values)
        np.testing.assert_array_equal(out.y.values, emb.y.values)
        for v in out.data_vars.values():
            assert v.attrs["grid_mapping"] == "spatial_ref"
    assert threshold(change(emb, "2018", "2020")).rio.crs.to_epsg() == 32633


# -- through time ---------------------------------------------------------------------------


def _reference_scores(x, base, method):
    """Loops: for each period, its distance to the medoid of the other valid baseline
    periods (ties: earliest), per pixel."""
    t = x.shape[0]
    out = np.full(x.shape[:-1], np.nan)

    def dist(a, b):
        if method == "euclidean":
            return float(np.linalg.norm(a - b))
        return float(1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    for idx in np.ndindex(*x.shape[1:-1]):
        vec = [x[(p, *idx)].astype(np.float64) for p in range(t)]
        ok = [bool(np.isfinite(v).all()) for v in vec]
        for p in range(t):
            cand = [q for q in range(t) if base[q] and ok[q] and q != p]
            if not ok[p] or not cand:
                continue
            cost = [sum(dist(vec[q], vec[r]) for r in cand) for q in cand]
            out[(p, *idx)] = dist(vec[p], vec[cand[int(np.argmin(cost))]])
    return out


@pytest.mark.parametrize("method", ["cosine", "euclidean"])
def test_leave_one_out_medoid_scores_match_a_loop(method):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 3, 4, 5))
    x[2, 0, 0] = np.nan
    x[:, 1, 1] = np.nan  # a pixel never observed
    x[[0, 1, 3, 4], 2, 3] = np.nan  # one valid baseline period only
    base = np.array([1, 1, 1, 1, 1, 0, 0], bool)
    score, _ = series_scores(x, base, method=method)
    np.testing.assert_allclose(score, _reference_scores(x, base, method), atol=1e-6)
    assert np.isnan(score[:, 1, 1]).all()


def test_medoid_scores_and_z_by_hand():
    # one feature direction, euclidean: baseline 0, 1, 5, target 20
    v = np.array([0.0, 1.0, 5.0, 20.0])
    x = np.zeros((4, 2, 2, 2))
    x[..., 0] = v[:, None, None]
    score, z = series_scores(x, np.array([1, 1, 1, 0], bool), method="euclidean")
    # 0 against the medoid of {1, 5} (a tie: the earliest, 1) -> 1; 1 against {0, 5} -> 0
    # -> 1; 5 against {0, 1} -> 0 -> 5; 20 against the medoid of {0, 1, 5} (1) -> 19
    np.testing.assert_allclose(score[:, 0, 0], [1, 1, 5, 19])
    # baseline scores 1, 1, 5: median 1, MAD 0, so the scale is its floor, 5 % of 1
    np.testing.assert_allclose(z[:, 0, 0], [0, 0, 80, 360], rtol=1e-5)
    # the robust z itself: scores 1, 2, 4 (baseline) and 10: median 2, MAD 1
    s = np.array([[1.0, 2.0, 4.0, 10.0]])
    got = _robust_z(s, np.array([[1, 1, 1, 0]], bool), 3, None)
    np.testing.assert_allclose(got[0], (s[0] - 2) / 1.482602218505602, rtol=1e-9)


def test_against_previous_skips_invalid_periods():
    v = np.array([0.0, 1.0, NAN, 4.0, 4.5])
    x = np.zeros((5, 2, 2, 2))
    x[..., 0] = v[:, None, None]
    x[2] = np.nan
    score, _ = series_scores(x, np.ones(5, bool), method="euclidean", against="previous")
    np.testing.assert_allclose(score[:, 1, 1], [NAN, 1, NAN, 3, 0.5])


def test_a_stack_of_fused_embeddings_along_period():
    rng = np.random.default_rng(2)
    vals = rng.normal(size=(5, 3, 2, 4))
    vals[4, 0, 0] += 3.0  # a change at (0, 0) in the last period
    years = [f"{y}-01-01" for y in range(2016, 2021)]
    stack = _emb(vals, years, dim="period")
    out = change(stack, slice("2016", "2019"), method="euclidean")
    assert out.zscore.dims == ("period", "y", "x")
    assert list(out.baseline.values) == [True] * 4 + [False]
    np.testing.assert_array_equal(out.valid_count.values, 1)
    as_time = change(stack.rename(period="time"), slice("2016", "2019"), method="euclidean")
    np.testing.assert_allclose(out.score.values, as_time.score.values)
    want, _ = series_scores(vals, np.array([1, 1, 1, 1, 0], bool), method="euclidean")
    np.testing.assert_allclose(out.score.values, want, atol=1e-5)
    # the two-period form on a stack: each side is its one period
    two = change(stack, "2016", "2020", method="euclidean")
    np.testing.assert_allclose(two.change.values, np.linalg.norm(vals[4] - vals[0], axis=-1),
                               atol=1e-5)


def test_freq_composites_each_period_first():
    rng = np.random.default_rng(3)
    dates = pd.date_range("2016-02-01", periods=20, freq="73D")  # 4 per year, 2016..2019
    vals = rng.normal(size=(20, 2, 3, 4)).astype("float32")
    emb = _emb(vals, dates)
    out = change(emb, freq="YS", method="euclidean", min_baseline=3)
    years = emb.time.dt.year.values
    yearly = np.stack([np.median(vals[years == y], axis=0) for y in np.unique(years)])
    want, wz = series_scores(yearly, np.ones(len(yearly), bool), method="euclidean")
    assert [str(t)[:4] for t in out.time.values] == [str(y) for y in np.unique(years)]
    np.testing.assert_allclose(out.score.values, want, atol=1e-5)
    np.testing.assert_allclose(out.zscore.values, wz, rtol=1e-6, atol=1e-6)  # 0 is reached
    np.testing.assert_array_equal(out.valid_count.values[:, 0, 0],
                                  [int((years == y).sum()) for y in np.unique(years)])


def test_unsorted_dates_give_the_sorted_result():
    rng = np.random.default_rng(4)
    vals = rng.normal(size=(6, 2, 2, 3))
    emb = _emb(vals, pd.date_range("2018-01-01", periods=6, freq="90D"))
    order = [3, 0, 5, 2, 1, 4]
    for kw in ({"against": "previous"}, {}):
        xr.testing.assert_allclose(change(emb.isel(time=order), **kw),
                                   change(emb, **kw))


# -- lazy and chunk-invariant ---------------------------------------------------------------


def _random_cube(chunks=None):
    rng = np.random.default_rng(5)
    dates = pd.date_range("2017-01-10", periods=16, freq="45D")
    vals = rng.normal(size=(16, 12, 10, 6)).astype("float32")
    vals[rng.uniform(size=(16, 12, 10)) < 0.15] = np.nan
    vf = rng.uniform(0.3, 1.0, size=(16, 12, 10))
    return _emb(vals, dates, vf=vf, chunks=chunks)


def test_nothing_is_computed_at_graph_build_and_results_are_lazy():
    emb = _random_cube({"time": 5, "y": 5, "x": 4})
    with raise_if_dask_computes():
        outs = [change(emb, "2017", slice("2018-06", "2018-12")),
                change(emb, freq="QS-DEC", min_baseline=2),
                change(emb, slice("2017", "2017"), against="previous")]
        masks = [threshold(outs[0]), threshold(outs[1], "quantile", q=0.9),
                 threshold(outs[2].score, 0.5)]
    for out in outs:
        for v in out.data_vars.values():
            assert isinstance(v.data, da.Array)
    for m in masks:
        assert isinstance(m.data, da.Array) and isinstance(m.threshold.data, da.Array)


def test_graph_build_of_a_real_embedding_computes_nothing():
    cube = xsky.tutorial.open_dataset("romania", chunks={}).isel(
        y=slice(0, 32), x=slice(0, 32)).sel(time=slice("2019-05", "2020-08"))
    with raise_if_dask_computes():
        emb = xsky.embed(cube, "test-tiny")
        out = change(emb, "2019", "2020")
        mask = threshold(out)
    assert isinstance(mask.data, da.Array)
    assert out.rio.crs == cube.rio.crs


CHUNKINGS = [{"time": 3, "y": 5, "x": 4, "feature": 2},
             {"time": 7, "y": 12, "x": 10, "feature": 6}]


@pytest.mark.parametrize("kind", ["two", "through", "through-freq", "previous"])
def test_results_do_not_depend_on_the_chunking(kind):
    def run(chunks):
        emb = _random_cube(chunks)
        if kind == "two":
            return change(emb, "2017", "2018").change
        if kind == "through":
            return change(emb, slice("2017", "2017")).zscore
        if kind == "through-freq":
            return change(emb, freq="QS-DEC", min_baseline=2, method="euclidean").zscore
        return change(emb, slice("2017", "2017"), against="previous").score

    ref = run(None).values
    assert np.isfinite(ref).sum() > 20
    for chunks in CHUNKINGS:
        got = run(chunks).values
        assert np.array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_thresholds_do_not_depend_on_the_chunking():
    rng = np.random.default_rng(6)
    x = np.concatenate([rng.gamma(2, 0.02, 2000), rng.normal(0.4, 0.05, 400)])
    x = rng.permutation(x).reshape(40, 60)
    x[rng.uniform(size=x.shape) < 0.05] = np.nan
    score = xr.DataArray(x, dims=("y", "x"), name="change")
    got = {}
    for chunks in ({"y": 40, "x": 60}, {"y": 7, "x": 13}, {"y": 25, "x": 60}):
        s = score.chunk(chunks)
        got[str(chunks)] = [float(threshold(s, m, q=q).threshold)
                            for m, q in (("otsu", None), ("quantile", 0.9))]
    values = list(got.values())
    assert all(v == values[0] for v in values)  # exactly: integer counts, exact extremes
    otsu_t, q90 = values[0]
    assert 0.1 < otsu_t < 0.35  # between the two modes
    np.testing.assert_allclose(q90, np.nanquantile(x, 0.9), atol=1e-7 * np.nanmax(x))


# -- threshold --------------------------------------------------------------------------------


def test_otsu_splits_two_groups_and_nan_is_false_but_not_valid():
    score = xr.DataArray(np.array([[0.01, 0.02, 0.5], [0.03, NAN, 0.6]]), dims=("y", "x"))
    mask = threshold(score)
    assert mask.values.tolist() == [[False, False, True], [False, False, True]]
    assert mask.valid.values.tolist() == [[True, True, True], [True, False, True]]
    assert 0.03 < float(mask.threshold) <= 0.5
    assert mask.dtype == bool and mask.name == "change_mask"
    assert mask.attrs["threshold_method"] == "otsu"


def test_otsu_of_a_histogram_by_hand():
    # two clusters: bins 0-1 and 6-7 of 8 over [0, 8]; any split between them separates
    # them equally well: the middle of the empty plateau (edge 4)
    assert otsu(np.array([5, 5, 0, 0, 0, 0, 5, 5]), 0.0, 8.0) == 4.0
    assert np.isnan(otsu(np.zeros(8), 0.0, 1.0))


def test_quantile_and_value_thresholds():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(30, 40))
    score = xr.DataArray(x, dims=("y", "x"))
    q = threshold(score, "quantile", q=0.95)
    np.testing.assert_allclose(float(q.threshold), np.quantile(x, 0.95), atol=1e-6)
    assert abs(q.values.mean() - 0.05) < 0.002
    v = threshold(score, 1.0)
    np.testing.assert_array_equal(v.values, x > 1.0)
    assert float(v.threshold) == 1.0


def test_threshold_picks_the_score_of_a_change_dataset():
    emb = _random_cube({"time": 4})
    two = change(emb, "2017", "2018")
    xr.testing.assert_identical(threshold(two), threshold(two.change))
    through = change(emb)
    xr.testing.assert_identical(threshold(through), threshold(through.zscore))
    xr.testing.assert_identical(threshold(through, variable="score"),
                                threshold(through.score))


def test_a_score_without_any_value():
    score = xr.DataArray(np.full((3, 3), np.nan), dims=("y", "x"), name="change")
    with pytest.raises(DataError, match="no finite value"):
        threshold(score)
    lazy = threshold(score.chunk())  # lazy: not computed to check; nothing flagged
    assert not lazy.values.any() and not lazy.valid.values.any()
    assert np.isnan(float(lazy.threshold))


def test_threshold_errors_name_the_fix():
    score = xr.DataArray(np.arange(6.0).reshape(2, 3), dims=("y", "x"))
    with pytest.raises(ArgumentError, match="'otsu', 'quantile'"):
        threshold(score, "mean")
    with pytest.raises(ArgumentError, match="needs q="):
        threshold(score, "quantile")
    with pytest.raises(ArgumentError, match="only applies with method='quantile'"):
        threshold(score, "otsu", q=0.5)
    with pytest.raises(ArgumentError, match="value_range"):
        threshold(score, value_range=(1.0, 0.0))
    with pytest.raises(ArgumentError, match="variable="):
        threshold(xr.Dataset({"a": score}))


# -- errors ------------------------------------------------------------------------------------


def test_bad_inputs_are_refused_with_the_fix():
    emb = _emb(V, DATES, vf=VF)
    with pytest.raises(DataError, match=r"holds no date.*2018-03-01 to 2020-07-01"):
        change(emb, slice("2012", "2012"), "2020")
    with pytest.raises(DataError, match="target="):
        change(emb, "2018", "2019")
    with pytest.raises(ArgumentError, match="needs ref="):
        change(emb, target="2020")
    with pytest.raises(ArgumentError, match=r"'cosine', 'euclidean'"):
        change(emb, "2018", "2020", method="manhattan")
    with pytest.raises(ArgumentError, match=r"'baseline', 'previous'"):
        change(emb, against="next")
    with pytest.raises(ArgumentError, match="not a period"):
        change(emb, 2018, "2020")
    with pytest.raises(DimensionError, match="no 'feature' dimension"):
        change(emb.isel(feature=0), "2018", "2020")
    with pytest.raises(DimensionError, match="no 'time' \\(or 'period'\\) dimension"):
        change(emb.isel(time=0), "2018", "2020")
    with pytest.raises(ArgumentError, match="to_dataarray"):
        change(emb.to_dataset(), "2018", "2020")
    gappy = emb.isel(x=[0, 1, 1]).assign_coords(x=[500_005.0, 500_015.0, 500_035.0])
    with pytest.raises(DimensionError, match="irregular"):  # e.g. a stack of two grids
        change(gappy, "2018", "2020")
    with pytest.raises(ArgumentError, match=r"selects 2 baseline dates.*min_baseline=3"):
        change(emb, slice("2018", "2018"))
    with pytest.raises(ArgumentError, match="at least 2"):
        change(emb, "2018-03", against="baseline", min_baseline=1)


def test_a_period_of_dates_without_any_valid_observation_is_refused():
    vf = np.ones((4, 2, 2))
    vf[2:] = 0.1  # every 2020 observation is mostly cloud
    emb = _emb(V, DATES, vf=vf)
    with pytest.raises(DataError, match=r"target='2020' holds dates .* no valid observation"):
        change(emb, "2018", "2020")
    # lazy input is not computed to find out: the distances are NaN and the counts 0
    out = change(emb.chunk(), "2018", "2020").compute()
    assert np.isnan(out.change.values).all() and (out.target_count.values == 0).all()


def test_a_mask_on_another_grid_or_other_dates_is_refused():
    emb = _emb(V, DATES)
    fine = xr.DataArray(np.ones((4, 4), bool), dims=("y", "x"),
                        coords={"y": 5_000_000.0 + 5 * np.arange(4)[::-1],
                                "x": 500_000.0 + 5 * np.arange(4)})
    with pytest.raises(AlignmentError, match=r"another grid.*coarsen"):
        change(emb, "2018", "2020", valid=fine)
    shifted = xr.DataArray(np.ones((2, 2), bool), dims=("y", "x"),
                           coords={"y": emb.y.values + 10, "x": emb.x.values})
    with pytest.raises(AlignmentError, match="'y'"):
        change(emb, "2018", "2020", valid=shifted)
    dated = xr.DataArray(np.ones((3, 2, 2), bool), dims=("time", "y", "x"),
                         coords={"time": pd.to_datetime(DATES[:3]), "y": emb.y, "x": emb.x})
    with pytest.raises(AlignmentError, match=r"valid\.sel"):
        change(emb, "2018", "2020", valid=dated)


# -- real data: Romania Sentinel-2 ------------------------------------------------------------

BANDS = ("B02", "B03", "B04", "B08")


def _swap(cube: xr.Dataset, year: int, pairs, w: int = 16) -> xr.Dataset:
    """Windows of each pair exchange content (bands, valid, SCL) in every date of ``year``."""
    out = cube.copy(deep=True)
    dates = np.flatnonzero(cube.time.dt.year.values == year)
    for name in out.data_vars:
        a = out[name].values
        for (i, j), (k, m) in pairs:
            ia = np.ix_(dates, range(i * w, (i + 1) * w), range(j * w, (j + 1) * w))
            ib = np.ix_(dates, range(k * w, (k + 1) * w), range(m * w, (m + 1) * w))
            a[ia], a[ib] = a[ib].copy(), a[ia].copy()
    return out


def _bands(cube: xr.Dataset, masked: bool = True, s: int = 4) -> xr.DataArray:
    """The bands per date on the 40 m grid: the mean of each 4 x 4 block's valid pixels."""
    ok = cube.valid.values if masked else np.ones(cube.valid.shape, bool)
    x = np.stack([np.where(ok, cube[b].values, np.nan) for b in BANDS], axis=-1)
    t, ny, nx, c = x.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(x.reshape(t, ny // s, s, nx // s, s, c), axis=(2, 4))
    frac = ok.reshape(t, ny // s, s, nx // s, s).mean(axis=(2, 4))
    out = xr.DataArray(mean.astype("float32"), dims=("time", "y", "x", "feature"), coords={
        "time": cube.time.values, "y": cube.y.values.reshape(-1, s).mean(1),
        "x": cube.x.values.reshape(-1, s).mean(1),
        "valid_fraction": (("time", "y", "x"), frac.astype("float32"))})
    return write_crs(out, cube.rio.crs)


def _auc(score: np.ndarray, label: np.ndarray) -> float:
    ok = np.isfinite(score)
    s, y = score[ok], label[ok]
    ranks = pd.Series(s).rank().to_numpy()
    n1, n0 = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _f1(mask: np.ndarray, label: np.ndarray) -> float:
    tp = (mask & label).sum()
    return float(2 * tp / (2 * tp + (mask & ~label).sum() + (~mask & label).sum()))


@pytest.fixture(scope="module")
def romania() -> xr.Dataset:
    cube = xsky.tutorial.open_dataset("romania")[[*BANDS, "SCL", "valid"]]
    return cube.isel(y=slice(0, 48), x=slice(0, 48)).sel(time=slice("2018", "2019")).load()


def test_planted_window_swaps_stand_out_on_real_data(romania, shared):
    weights = shared / "data" / "weights_small" / "galileo_nano"
    if not weights.exists():
        pytest.skip(f"{weights} not found")
    pairs = [((0, 1), (2, 1)), ((0, 2), (1, 0))]  # 4 of the 9 16-px windows swapped in 2019
    swapped = _swap(romania, 2019, pairs)
    label = np.zeros((12, 12), bool)
    for pair in pairs:
        for i, j in pair:
            label[4 * i:4 * i + 4, 4 * j:4 * j + 4] = True
    yearly = []
    for year in (2018, 2019):
        monthly = xsky.composite(swapped[[*BANDS, "valid"]], "MS", time_range=str(year))
        yearly.append(xsky.embed(monthly, "galileo-nano", weights=str(weights)).load())
    galileo = xr.concat(yearly, dim=pd.Index(pd.to_datetime(["2018", "2019"]), name="time"))
    inputs = {"galileo-nano": (galileo, 0.0),
              "test-tiny": (xsky.embed(swapped[[*BANDS, "valid"]], "test-tiny").load(), 0.5),
              "bands": (_bands(swapped), 0.5)}
    auc, f1 = {}, {}
    for name, (emb, frac) in inputs.items():
        out = change(emb, "2018", "2019", min_valid_fraction=frac)
        assert out.change.shape == (12, 12) and np.isfinite(out.change.values).all()
        auc[name] = _auc(out.change.values, label)
        f1[name] = _f1(threshold(out).values, label)
    # measured: galileo 0.99 / 0.87, test-tiny 0.97 / 0.63, bands 0.91 / 0.27
    assert auc["galileo-nano"] > 0.95 and f1["galileo-nano"] > 0.7, (auc, f1)
    assert auc["test-tiny"] > 0.85 and auc["bands"] > 0.8, auc
    assert auc["galileo-nano"] >= auc["bands"]


def test_cloudy_and_snowy_dates_are_flagged_unless_masked(romania):
    year = romania.sel(time="2019")
    bad = np.isin(year.SCL.values, (3, 8, 9, 10, 11))
    share = bad.reshape(-1, 12, 4, 12, 4).mean(axis=(2, 4))
    dirty, clear = share >= 0.75, share == 0
    assert dirty.sum() > 100 and clear.sum() > 1000
    for name, make in (("bands", lambda m: _bands(year, m)),
                       ("test-tiny", lambda m: xsky.embed(
                           year[[*BANDS, "valid"]] if m else year[list(BANDS)],
                           "test-tiny").load())):
        raw = change(make(False), freq=None)
        flag = threshold(raw.zscore).values
        # every date scored against the others: contaminated observations stand out
        assert flag[dirty].mean() > 5 * flag[clear].mean() + 0.05, name
        auc = _auc(np.where(dirty | clear, raw.zscore.values, np.nan), dirty)
        assert auc > 0.65, (name, auc)
        masked = change(make(True), freq=None)
        # with the SCL mask they are not scored at all, so never flagged
        assert not np.isfinite(masked.zscore.values[dirty]).any(), name
        assert not threshold(masked.zscore).values[dirty].any()
        assert np.isfinite(masked.zscore.values[clear]).mean() > 0.9
