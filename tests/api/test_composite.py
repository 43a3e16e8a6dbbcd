"""composite(): period composites of the valid observations, lazy and chunk-invariant."""

from __future__ import annotations

import json

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import xsky
from xsky.api.compositing import HOWS, composite
from xsky.exceptions import ArgumentError, DataError, DimensionError
from xsky.testing import raise_if_dask_computes

NAN = np.nan
CRS = "EPSG:32633"

# -- a hand-made cube: 2 x 2 pixels, 6 dates over January..April 2021 ---------------------
#
# dates: Jan 5, Jan 20, Jan 31 23:00, Feb 1 00:00 (the first instant of February), Feb 15,
# Apr 3; March has no acquisition.
DATES = pd.DatetimeIndex([pd.Timestamp(d) for d in (
    "2021-01-05", "2021-01-20", "2021-01-31T23:00", "2021-02-01", "2021-02-15", "2021-04-03")])
B02 = np.array([
    # (0, 0)  (0, 1)  (1, 0)  (1, 1)
    [[0.1, NAN], [0.4, 0.2]],
    [[0.3, 0.3], [0.6, 0.4]],
    [[0.8, 0.9], [0.5, 0.6]],   # Jan 31: invalid at (0, 0) and (0, 1) (cloud)
    [[0.5, 0.1], [0.2, 0.7]],
    [[0.7, 0.3], [0.4, 0.9]],
    [[0.9, 0.5], [0.3, 0.1]],
], "float32")
B03 = 2 * B02
B03[1, 1, 1] = NAN  # B03 missing on Jan 20 at (1, 1): that observation is not valid
VALID = np.ones(B02.shape, bool)
VALID[2, 0, :] = False
VALID[3, 1, 0] = False  # Feb 1 invalid at (1, 0)


def _hand_cube(**chunks) -> xr.Dataset:
    ds = xr.Dataset(
        {"B02": (("time", "y", "x"), B02, {"units": "reflectance", "long_name": "blue"}),
         "B03": (("time", "y", "x"), B03, {"units": "reflectance"}),
         "valid": (("time", "y", "x"), VALID)},
        coords={"time": DATES, "y": [5_000_015.0, 5_000_005.0], "x": [500_005.0, 500_015.0]},
    ).rio.write_crs(CRS)
    return ds.chunk(chunks) if chunks else ds


def test_median_of_the_valid_observations_by_hand():
    out = composite(_hand_cube(), "MS", "median")
    assert list(out.time.values) == list(pd.to_datetime(
        ["2021-01-01", "2021-02-01", "2021-03-01", "2021-04-01"]))
    b02 = out.B02.values
    # (0, 0): Jan 0.1, 0.3 (Jan 31's 0.8 is invalid) -> 0.2; Feb 0.5, 0.7 -> 0.6; Apr 0.9
    np.testing.assert_allclose(b02[:, 0, 0], [0.2, 0.6, NAN, 0.9], rtol=1e-6)
    # (0, 1): Jan NaN, 0.3 (0.9 invalid) -> 0.3; Feb 0.1, 0.3 -> 0.2
    np.testing.assert_allclose(b02[:, 0, 1], [0.3, 0.2, NAN, 0.5], rtol=1e-6)
    # (1, 0): Jan 0.4, 0.6, 0.5 -> 0.5; Feb 1 invalid: 0.4 only
    np.testing.assert_allclose(b02[:, 1, 0], [0.5, 0.4, NAN, 0.3], rtol=1e-6)
    # (1, 1): Jan 20 has no B03 -> not valid for either band: 0.2, 0.6 -> 0.4
    np.testing.assert_allclose(b02[:, 1, 1], [0.4, 0.8, NAN, 0.1], rtol=1e-6)
    np.testing.assert_allclose(out.B03.values, 2 * b02, rtol=1e-6)
    np.testing.assert_array_equal(out.valid_count.values[:, 0, 0], [2, 2, 0, 1])
    np.testing.assert_array_equal(out.valid_count.values[:, 1, 0], [3, 1, 0, 1])
    np.testing.assert_array_equal(out.valid_count.values[:, 1, 1], [2, 2, 0, 1])
    np.testing.assert_array_equal(out.valid.values[:, 0, 0], [True, True, False, True])
    assert out.valid_count.dtype == np.int32 and out.valid.dtype == bool
    assert out.B02.dtype == np.float32


def test_every_how_by_hand_at_one_pixel():
    ds = _hand_cube()
    got = {h: composite(ds, "MS", h, q=0.25 if h == "quantile" else None).B02.values[:, 1, 0]
           for h in HOWS}
    # (1, 0): January holds 0.4, 0.6, 0.5 (in time order), February 0.4, April 0.3
    expected = {
        "median": [0.5, 0.4, NAN, 0.3], "mean": [0.5, 0.4, NAN, 0.3],
        "min": [0.4, 0.4, NAN, 0.3], "max": [0.6, 0.4, NAN, 0.3],
        "first": [0.4, 0.4, NAN, 0.3], "last": [0.5, 0.4, NAN, 0.3],
        "quantile": [0.45, 0.4, NAN, 0.3],  # np.quantile([0.4, 0.5, 0.6], 0.25)
    }
    for how in HOWS:
        np.testing.assert_allclose(got[how], expected[how], rtol=1e-6, err_msg=how)


def test_empty_periods_are_kept_unless_asked_to_drop_them():
    ds = _hand_cube()
    assert composite(ds).sizes["time"] == 4
    dropped = composite(ds, drop_empty=True)
    assert list(dropped.time.values) == list(pd.to_datetime(
        ["2021-01-01", "2021-02-01", "2021-04-01"]))
    np.testing.assert_allclose(dropped.B02.values[:, 0, 0], [0.2, 0.6, 0.9], rtol=1e-6)


def test_time_range_fixes_the_axis_and_every_year_has_twelve_months():
    out = composite(_hand_cube(), "MS", time_range="2020/2021")
    assert out.sizes["time"] == 24
    assert str(out.time.values[0])[:10] == "2020-01-01"
    assert str(out.time.values[-1])[:10] == "2021-12-01"
    assert int(out.valid_count.isel(time=slice(0, 12)).sum()) == 0
    np.testing.assert_allclose(out.B02.sel(time="2021-01-01").values[0, 0], 0.2, rtol=1e-6)


def test_seasons_years_and_fixed_length_periods_start_where_documented():
    ds = _hand_cube()
    seasons = composite(ds, "QS-DEC")
    # Dec-Feb season holds January and February; Mar-May holds April
    assert list(seasons.time.values) == list(pd.to_datetime(["2020-12-01", "2021-03-01"]))
    np.testing.assert_allclose(seasons.B02.values[:, 0, 0], [0.4, 0.9], rtol=1e-6)
    assert composite(ds, "YS").sizes["time"] == 1
    fortnights = composite(ds, "14D")
    # from midnight of the first date: [Jan 5, Jan 19), [Jan 19, Feb 2), ...
    assert str(fortnights.time.values[0])[:10] == "2021-01-05"
    assert str(fortnights.time.values[1])[:10] == "2021-01-19"
    np.testing.assert_array_equal(fortnights.valid_count.values[:3, 0, 0], [1, 2, 1])


def test_explicit_edges():
    out = composite(_hand_cube(), ["2021-01-10", "2021-02-01", "2021-04-03"], "max")
    assert list(out.time.values) == list(pd.to_datetime(["2021-01-10", "2021-02-01"]))
    # Jan 5 is before the first edge: ignored; [Jan 10, Feb 1) holds Jan 20 only at (0, 0)
    # (Jan 31 is invalid there); [Feb 1, Apr 3) holds Feb 1 and Feb 15, not Apr 3
    np.testing.assert_allclose(out.B02.values[:, 0, 0], [0.3, 0.7], rtol=1e-6)
    np.testing.assert_array_equal(out.valid_count.values[:, 0, 0], [1, 2])
    assert out.attrs["composite_freq"] == "edges"


def test_min_count_blanks_thin_composites_but_reports_their_count():
    out = composite(_hand_cube(), min_count=2)
    np.testing.assert_allclose(out.B02.values[:, 1, 0], [0.5, NAN, NAN, NAN], rtol=1e-6)
    np.testing.assert_array_equal(out.valid_count.values[:, 1, 0], [3, 1, 0, 1])
    np.testing.assert_array_equal(out.valid.values[:, 1, 0], [True, False, False, False])


def test_unsorted_dates_give_the_sorted_result():
    ds = _hand_cube()
    shuffled = ds.isel(time=[3, 0, 5, 2, 1, 4])
    for how in ("median", "first", "last"):
        xr.testing.assert_identical(composite(shuffled, how=how), composite(ds, how=how))


def test_crs_coords_and_provenance_are_kept():
    ds = _hand_cube()
    ds["dem"] = (("y", "x"), np.ones((2, 2), "float32"))
    ds["SCL"] = (("time", "y", "x"), np.full(B02.shape, 4, np.uint8))
    ds = ds.assign_coords(cloud_cover=("time", np.arange(6.0)))
    out = composite(ds, "MS", "mean")
    assert out.rio.crs.to_epsg() == 32633
    assert "spatial_ref" in out.coords
    np.testing.assert_array_equal(out.x.values, ds.x.values)
    np.testing.assert_array_equal(out.y.values, ds.y.values)
    xr.testing.assert_identical(out["dem"], ds["dem"])  # no time: carried unchanged
    assert "SCL" not in out and "cloud_cover" not in out.coords
    assert out.attrs["composite_dropped"] == "SCL"
    assert out.attrs["composite_how"] == "mean" and out.attrs["composite_freq"] == "MS"
    assert out.B02.attrs == {"units": "reflectance", "long_name": "blue",
                             "grid_mapping": "spatial_ref"}
    assert out.time.attrs["long_name"] == "start of the compositing period"
    # a non-spectral layer is composited only when asked for
    assert "SCL" in composite(ds, variables=["B02", "SCL"])


# -- nodata and integer digital numbers -------------------------------------------------


def _dn_cube(attrs) -> xr.Dataset:
    dn = np.array([[[1000]], [[0]], [[1400]], [[3000]]], np.uint16)  # DN 0: no data
    ds = xr.Dataset({"B04": (("time", "y", "x"), dn, attrs)},
                    coords={"time": pd.to_datetime(["2021-05-02", "2021-05-12", "2021-05-22",
                                                    "2021-06-01"]),
                            "y": [10.0], "x": [10.0]})
    return ds


def test_integer_dn_with_nodata_become_float_with_nan_and_keep_their_units():
    out = composite(_dn_cube({"_FillValue": 0}), "MS", "mean")
    assert out.B04.dtype == np.float32
    np.testing.assert_allclose(out.B04.values[:, 0, 0], [1200.0, 3000.0])  # not 800
    np.testing.assert_array_equal(out.valid_count.values[:, 0, 0], [2, 1])
    assert out.B04.attrs["units"] == "dn"  # embed read DN from the integer dtype
    assert "_FillValue" not in out.B04.attrs
    out = composite(_dn_cube({"nodata": 0, "units": "DN"}), "MS", "mean")
    np.testing.assert_allclose(out.B04.values[:, 0, 0], [1200.0, 3000.0])
    assert out.B04.attrs["units"] == "DN"
    # without a no-data attribute, integer S2 DN 0 is the table's default no-data, as in embed
    np.testing.assert_allclose(composite(_dn_cube({}), "MS", "mean").B04.values[0, 0, 0], 1200)
    as_float = _dn_cube({})
    as_float["B04"] = as_float.B04.astype("float32")  # a float 0 is a value
    np.testing.assert_allclose(composite(as_float, "MS", "mean").B04.values[0, 0, 0], 800)


def test_float_decoded_from_integer_storage_keeps_dn_units():
    ds = _dn_cube({})
    ds["B04"] = ds.B04.astype("float32").where(ds.B04 != 0)
    ds.B04.encoding = {"dtype": np.dtype("uint16"), "_FillValue": 0}  # as open_dataset does
    out = composite(ds, "MS", "median")
    assert out.B04.attrs["units"] == "dn"
    np.testing.assert_allclose(out.B04.values[:, 0, 0], [1200.0, 3000.0])


def test_nodata_in_float_data_is_masked():
    ds = _hand_cube()
    b02 = ds.B02.values.copy()
    b02[0, 0, 0] = -9999.0
    ds["B02"] = ds.B02.copy(data=b02).assign_attrs(nodata=-9999.0)
    out = composite(ds)
    # (0, 0) January: Jan 5 is no data now, Jan 31 invalid: 0.3 alone, for both bands
    np.testing.assert_allclose(out.B02.values[0, 0, 0], 0.3, rtol=1e-6)
    np.testing.assert_allclose(out.B03.values[0, 0, 0], 0.6, rtol=1e-6)
    assert int(out.valid_count.values[0, 0, 0]) == 1
    assert "nodata" not in out.B02.attrs


def test_valid_as_numbers_and_per_date_validity():
    ds = _hand_cube()
    per_date = ds.assign(valid=("time", np.array([1, 1, 0, 1, 1, 1], "uint8")))
    out = composite(per_date)
    np.testing.assert_array_equal(out.valid_count.values[0], [[2, 1], [2, 1]])


# -- DataArray, DataTree ----------------------------------------------------------------


def test_a_dataarray_with_a_band_dim_gives_the_same_as_the_dataset():
    ds = _hand_cube()
    arr = ds[["B02", "B03"]].to_dataarray("band").assign_coords(valid=ds.valid)
    arr = arr.transpose("time", "y", "x", "band")
    out = composite(arr, "MS", "median")
    ref = composite(ds, "MS", "median")
    assert out.dims == ("time", "y", "x", "band")
    assert list(out.band.values) == ["B02", "B03"]
    np.testing.assert_allclose(out.sel(band="B02").values, ref.B02.values, rtol=1e-6)
    np.testing.assert_array_equal(out.valid_count.values, ref.valid_count.values)
    np.testing.assert_array_equal(out["valid"].values, ref["valid"].values)


def _node(dates, seed, bands, units):
    rng = np.random.default_rng(seed)
    shape = (len(dates), 4, 4)
    data = {b: (("time", "y", "x"), rng.uniform(0.0, 1.0, shape).astype("float32"),
                {"units": units}) for b in bands}
    return xr.Dataset(data, coords={"time": pd.to_datetime(dates),
                                    "y": 5_000_035.0 - 10 * np.arange(4),
                                    "x": 500_005.0 + 10 * np.arange(4)}).rio.write_crs(CRS)


def test_datatree_nodes_share_one_time_axis():
    s2 = _node(["2021-01-03", "2021-01-25", "2021-03-10"], 0, ("B02", "B03", "B04", "B08"),
               "reflectance")
    s2["valid"] = (("time", "y", "x"), np.ones((3, 4, 4), bool))
    s1 = _node(["2021-01-10", "2021-02-05", "2021-02-17", "2021-03-29"], 1, ("VV", "VH"), "dB")
    tree = xsky.stack(s2=s2.chunk(time=1), s1=s1.chunk(time=2))
    out = composite(tree, "MS", "median")
    months = list(pd.to_datetime(["2021-01-01", "2021-02-01", "2021-03-01"]))
    assert list(out["s2"].time.values) == months
    assert list(out["s1"].time.values) == months
    np.testing.assert_array_equal(out["s2"].ds.valid_count.values[:, 0, 0], [2, 0, 1])
    np.testing.assert_array_equal(out["s1"].ds.valid_count.values[:, 0, 0], [1, 2, 1])
    np.testing.assert_allclose(out["s1"].ds.VV.values[1],
                               np.median(s1.VV.values[1:3], axis=0), rtol=1e-6)
    np.testing.assert_allclose(out["s2"].ds.B02.values[0],
                               np.median(s2.B02.values[:2], axis=0), rtol=1e-6)
    assert np.isnan(out["s2"].ds.B02.values[1]).all()
    assert out["s1"].ds.VV.attrs["units"] == "dB"
    # February has no S2 acquisition but has S1 ones: it stays, in both nodes
    assert out["s2"].sizes["time"] == composite(tree, drop_empty=True)["s2"].sizes["time"]
    # a wider span: both nodes get the empty months
    wide = composite(tree, time_range="2021")
    assert wide["s1"].sizes["time"] == wide["s2"].sizes["time"] == 12
    # a node without any date in the periods is all empty, not an error
    late = composite(tree, ["2021-03-20", "2021-04-01"])
    assert int(late["s2"].ds.valid_count.sum()) == 0 and np.isnan(late["s2"].ds.B02).all()
    np.testing.assert_allclose(late["s1"].ds.VV.values[0], s1.VV.values[3], rtol=1e-6)


# -- laziness and chunk invariance --------------------------------------------------------


def _random_cube(nt=23, ny=9, nx=11, seed=0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    days = np.sort(rng.choice(150, nt, replace=False))
    dates = pd.Timestamp("2021-01-01") + pd.to_timedelta(days, "D")
    shape = (nt, ny, nx)
    bands = {}
    for b in ("B02", "B04"):
        v = rng.uniform(0, 0.5, shape).astype("float32")
        v[rng.uniform(size=shape) < 0.1] = NAN
        bands[b] = (("time", "y", "x"), v, {"units": "reflectance"})
    bands["valid"] = (("time", "y", "x"), rng.uniform(size=shape) < 0.6)
    return xr.Dataset(bands, coords={"time": dates, "y": 100.0 - np.arange(ny),
                                     "x": np.arange(nx) + 0.5}).rio.write_crs(CRS)


def _reference(ds, how, q=0.3):
    """Per period and pixel, with a plain loop: the reduction of the valid observations."""
    months = pd.date_range("2021-01-01", ds.time.values.max(), freq="MS")
    ok = ds.valid.values & np.isfinite(ds.B02.values) & np.isfinite(ds.B04.values)
    out = np.full((len(months), *ds.B02.shape[1:]), np.nan)
    period = pd.DatetimeIndex(ds.time.values).to_period("M")
    for p, m in enumerate(months):
        sel = np.flatnonzero(period == m.to_period("M"))
        for j in range(ds.sizes["y"]):
            for i in range(ds.sizes["x"]):
                v = ds.B02.values[sel, j, i][ok[sel, j, i]]
                if v.size:
                    out[p, j, i] = {"median": np.median, "mean": np.mean, "min": np.min,
                                    "max": np.max, "first": lambda a: a[0],
                                    "last": lambda a: a[-1],
                                    "quantile": lambda a: np.quantile(a, q)}[how](v)
    return out


@pytest.mark.parametrize("how", HOWS)
def test_matches_a_plain_loop(how):
    ds = _random_cube()
    out = composite(ds, "MS", how, q=0.3 if how == "quantile" else None)
    np.testing.assert_allclose(out.B02.values, _reference(ds, how), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("how", ["median", "quantile"])
def test_long_periods_match_numpy(how):
    # 120 dates in 150 days: up to ~80 valid values a pixel per period (the sort's long path)
    ds = _random_cube(nt=120, ny=4, nx=5, seed=3)
    out = composite(ds.chunk(time=50), ["2021-01-01", "2021-06-01"], how, q=0.9 if how ==
                    "quantile" else None).compute()
    ok = ds.valid.values & np.isfinite(ds.B02.values) & np.isfinite(ds.B04.values)
    want = [[np.quantile(ds.B02.values[:, j, i][ok[:, j, i]], 0.9 if how == "quantile" else 0.5)
             for i in range(5)] for j in range(4)]
    assert int(out.valid_count.min()) > 40
    np.testing.assert_allclose(out.B02.values[0], want, rtol=1e-6)


@pytest.mark.parametrize("chunks", [{"time": 1}, {"time": 4, "y": 3}, {"time": 7, "x": 5},
                                    {"time": -1, "y": 2, "x": 2}])
def test_chunking_does_not_change_the_result(chunks):
    ds = _random_cube()
    for how in ("median", "mean", "first", "quantile"):
        q = 0.7 if how == "quantile" else None
        ref = composite(ds, "MS", how, q=q)
        with raise_if_dask_computes():
            lazy = composite(ds.chunk(chunks), "MS", how, q=q)
        assert isinstance(lazy.B02.data, da.Array)
        got = lazy.compute()
        np.testing.assert_allclose(got.B02.values, ref.B02.values, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(got.valid_count.values, ref.valid_count.values)
        # spatial chunks kept; no period straddles two time chunks
        assert lazy.B02.data.chunks[1:] == ds.chunk(chunks).B02.data.chunks[1:]


def test_two_composites_computed_together_stay_apart():
    a, b = _random_cube(seed=1).chunk(time=5), _random_cube(seed=2).chunk(time=5)
    ra, rb = dask.compute(composite(a).B02, composite(b).B02)
    np.testing.assert_allclose(ra.values, composite(a.compute()).B02.values, atol=1e-6)
    np.testing.assert_allclose(rb.values, composite(b.compute()).B02.values, atol=1e-6)


def _boom(block):
    raise AssertionError("composite computed data while building the graph")


def test_nothing_is_computed_at_graph_build():
    ds = _random_cube().chunk(time=5)
    poisoned = ds.copy()
    for v in ("B02", "B04", "valid"):
        poisoned[v] = ds[v].copy(data=ds[v].data.map_blocks(_boom, dtype=ds[v].dtype))
    tree = xr.DataTree.from_dict({"s2": poisoned})
    with raise_if_dask_computes():
        out = composite(poisoned, "MS", "median", time_range="2021", drop_empty=True)
        composite(tree, "QS-DEC", "mean")
        composite(poisoned.B02, "MS")
    with pytest.raises(AssertionError, match="computed data"):
        out.B02.compute()


# -- errors --------------------------------------------------------------------------------


def test_clear_errors():
    ds = _hand_cube()
    with pytest.raises(DimensionError, match=r"no 'time' dimension.*rename"):
        composite(ds.isel(time=0))
    with pytest.raises(DimensionError, match=r"must hold dates.*decode"):
        composite(ds.assign_coords(time=np.arange(6)))
    with pytest.raises(DimensionError, match=r"NaT"):
        composite(ds.assign_coords(time=DATES.insert(0, pd.NaT)[:6]))
    with pytest.raises(ArgumentError, match=r"how='mode'.*'first'.*'median'"):
        composite(ds, how="mode")
    with pytest.raises(ArgumentError, match=r"freq='monthly' is not a pandas frequency.*'MS'"):
        composite(ds, "monthly")
    with pytest.raises(ArgumentError, match=r"anchors periods at their end.*'MS'"):
        composite(ds, "ME")
    with pytest.raises(ArgumentError, match=r"q= in \[0, 1\]"):
        composite(ds, how="quantile")
    with pytest.raises(ArgumentError, match=r"q= only applies"):
        composite(ds, q=0.2)
    with pytest.raises(ArgumentError, match=r"min_count must be a positive integer"):
        composite(ds, min_count=0)
    with pytest.raises(ArgumentError, match=r"strictly increasing"):
        composite(ds, ["2021-03-01", "2021-01-01"])
    with pytest.raises(ArgumentError, match=r"time_range= only applies with a frequency"):
        composite(ds, ["2021-01-01", "2021-03-01"], time_range="2021")
    with pytest.raises(DataError, match=r"no date of the input .* falls in the periods"):
        composite(ds, ["2022-01-01", "2022-03-01"])
    with pytest.raises(DataError, match=r"no variable to composite.*variables="):
        composite(ds[["valid"]])
    with pytest.raises(ArgumentError, match=r"variables= names \['B8'\].*'B02', 'B03'"):
        composite(ds, variables=["B8"])
    with pytest.raises(DimensionError, match=r"'valid' of the input has dims"):
        composite(ds.assign(valid=(("band", "time"), np.ones((2, 6), bool))))
    with pytest.raises(ArgumentError, match=r"Dataset, DataArray or DataTree"):
        composite(B02)


# -- the Romania sample ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def romania():
    return xsky.tutorial.open_dataset("romania")


def test_romania_monthly_counts_and_medians_against_the_raw_data(romania):
    out = composite(romania.chunk(time=10), "MS", "median").compute()
    months = pd.date_range("2015-08-01", "2020-12-01", freq="MS")
    assert list(out.time.values) == list(months)  # 65 months, empty ones included
    period = pd.DatetimeIndex(romania.time.values).to_period("M")
    bands = ("B02", "B03", "B04", "B08")
    for j, i in [(0, 0), (37, 81), (99, 50)]:
        raw = {b: romania[b].values[:, j, i] for b in bands}
        ok = romania.valid.values[:, j, i] & np.all([np.isfinite(raw[b]) for b in bands], 0)
        for p, m in enumerate(months):
            sel = (period == m.to_period("M")) & ok
            assert int(out.valid_count.values[p, j, i]) == int(sel.sum())
            want = np.median(raw["B08"][sel]) if sel.any() else NAN
            np.testing.assert_allclose(out.B08.values[p, j, i], want, rtol=1e-6)
    assert int(out.valid_count.sum()) == int((romania.valid & romania.B02.notnull()).sum())
    assert out.sizes["time"] == 65 and int((out.valid_count.max(("y", "x")) == 0).sum()) == 21


def test_romania_over_whole_years_then_embed(romania):
    out = composite(romania, "MS", time_range="2015/2021")
    assert out.sizes["time"] == 84  # 7 years x 12 months
    assert int(out.valid_count.sel(time="2021").sum()) == 0
    year = out.sel(time="2016")
    emb = xsky.embed(year, "test-tiny").compute()
    assert emb.sizes["time"] == 12
    seen = year.valid.any(("y", "x")).values
    assert seen.any() and not seen.all()
    # months without a valid observation give NaN embeddings, the others finite ones
    assert np.isnan(emb.values[~seen]).all()
    assert np.isfinite(emb.values[seen]).any()


def test_romania_raw_digital_numbers(shared):
    path = shared / "data" / "s2_ts_romania" / "sentinel2_cube_subset_romania_10m.nc"
    raw = xr.open_dataset(path, mask_and_scale=False, chunks={"time": 20})
    raw = raw.set_coords("spatial_ref").rio.write_crs("EPSG:3035")
    raw["valid"] = xsky.tutorial.valid_from_scl(raw.SCL)
    assert raw.sizes["time"] == 140 and raw.B4.dtype == np.uint16
    with raise_if_dask_computes():
        out = composite(raw, "MS")
    assert out.sizes["time"] == 66  # 2015-08 .. 2021-01
    assert out.B4.dtype == np.float32 and out.B4.attrs["units"] == "dn"
    assert "SCL" not in out
    j, i = 50, 50
    b4 = raw.B4.values[:, j, i]
    ok = raw.valid.values[:, j, i] & (raw[["B2", "B3", "B4", "B8"]].to_dataarray().values[
        :, :, j, i] != 0).all(0)
    period = pd.DatetimeIndex(raw.time.values).to_period("M")
    month = pd.Period("2018-07", "M")
    sel = (period == month) & ok
    assert sel.sum() >= 2
    got = out.B4.sel(time="2018-07-01").values[j, i]
    np.testing.assert_allclose(got, np.median(b4[sel].astype(float)), rtol=1e-6)
    emb = xsky.embed(out.isel(time=slice(24, 36)), "test-tiny")
    assert json.loads(emb.attrs["input_units"]) == {"s2": "dn"}
