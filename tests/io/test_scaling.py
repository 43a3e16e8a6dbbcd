"""Digital numbers to physical values: the S2 BOA offset rules and S1 backscatter in dB.

The processing-baseline rules are checked one by one (which property wins, numeric
baselines, baselines parsed from product ids, the 2022-01-25 date boundary), and the offset
reaches the loaded values under every ``groupby`` mode.
"""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta, timezone

import dask.array as da
import numpy as np
import pytest
import rasterio
import xarray as xr

from xsky.io import scaling
from xsky.io.scaling import (
    db_to_linear,
    linear_to_db,
    s2_boa_offset,
    s2_processing_baseline,
    s2_reflectance,
)
from xsky.testing import raise_if_dask_computes

pytestmark = [  # the load_stac tests below: third-party noise, as in test_stac.py
    pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
    pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The 'shapely.ops.transform:DeprecationWarning"),
]

# --------------------------------------------------------------------------- baselines


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("04.00", 4.0), ("4.00", 4.0), ("0400", 4.0), ("N0400", 4.0), (" 05.09 ", 5.09),
        ("02.12", 2.12), ("N0399", 3.99), (4, 4.0), (5.1, 5.1), (np.float64(3.99), 3.99),
    ],
)
def test_baseline_property_values_parse_to_numbers(value, expected):
    assert s2_processing_baseline("x", {"s2:processing_baseline": value}) == pytest.approx(
        expected, abs=1e-12)


@pytest.mark.parametrize("value", [True, False, None, "", "v4", "04.0.0", "123.45", [4]])
def test_unparseable_baseline_values_are_ignored(value):
    assert s2_processing_baseline("x", {"s2:processing_baseline": value}) is None


@pytest.mark.parametrize("key", ["s2:processing_baseline", "sentinel:processing_baseline",
                                 "processing:version", "processing_baseline"])
def test_every_baseline_property_is_read(key):
    assert s2_processing_baseline("x", {key: "05.10"}) == pytest.approx(5.10)
    assert s2_boa_offset("x", {key: "05.10"}, None) == 1000
    assert s2_boa_offset("x", {key: "03.01"}, None) == 0


def test_the_first_baseline_property_wins_over_later_ones_and_over_the_product_id():
    props = {"processing_baseline": "02.00", "processing:version": "03.00",
             "sentinel:processing_baseline": "04.00", "s2:processing_baseline": "05.00",
             "s2:product_uri": "S2A_MSIL2A_20200101T000000_N0213_R1_T1_2020.SAFE"}
    assert s2_processing_baseline("x", props) == 5.0
    del props["s2:processing_baseline"]
    assert s2_processing_baseline("x", props) == 4.0
    del props["sentinel:processing_baseline"]
    assert s2_processing_baseline("x", props) == 3.0
    del props["processing:version"]
    assert s2_processing_baseline("x", props) == 2.0
    del props["processing_baseline"]
    assert s2_processing_baseline("x", props) == pytest.approx(2.13)
    # an unparseable property falls through to the next source
    assert s2_processing_baseline("x", {"s2:processing_baseline": "n/a",
                                        "processing:version": "04.00"}) == 4.0


@pytest.mark.parametrize("key", ["s2:product_uri", "sentinel:product_id", "s2:product_id",
                                 "product_id"])
def test_baselines_in_every_product_id_property(key):
    pid = "S2B_MSIL2A_20220301T101839_N0400_R065_T32TMT_20220301T123415"
    assert s2_processing_baseline("x", {key: pid}) == 4.0
    assert s2_boa_offset("x", {key: pid}, datetime(2019, 1, 1, tzinfo=UTC)) == 1000


@pytest.mark.parametrize(
    ("product_id", "baseline", "offset"),
    [
        ("S2A_MSIL2A_20220124T000000_N0399_R1_T1_20220124T0", 3.99, 0),  # just below 04.00
        ("S2A_MSIL2A_20220126T000000_N0400_R1_T1_20220126T0", 4.00, 1000),
        ("S2A_MSIL2A_20240101T000000_N0510_R1_T1_20240101T0", 5.10, 1000),
        ("S2A_MSIL2A_20180101T000000_N0206_R1_T1_20180101T0", 2.06, 0),
        ("S2A_MSIL2A_20180101T000000_N0214.SAFE", 2.14, 0),  # followed by a dot
        ("S2A_MSIL2A_20230101T000000_N0509", 5.09, 1000),  # at the end
    ],
)
def test_numeric_baselines_from_product_ids(product_id, baseline, offset):
    # the date says the opposite of the id, so only the id can give these answers
    when = datetime(2023, 1, 1, tzinfo=UTC) if offset == 0 else datetime(2019, 1, 1, tzinfo=UTC)
    assert s2_processing_baseline(product_id, {}) == pytest.approx(baseline)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stated baseline never warns
        assert s2_boa_offset(product_id, {}, when) == offset
    assert s2_boa_offset("x", {"s2:product_uri": product_id}, when) == offset


@pytest.mark.parametrize("text", ["S2A_MSIL2A_N0400X", "S2A_N04000_R1", "S2A_MSIL2A_N040_R1",
                                  "N0400_first"])
def test_ids_without_a_baseline_field_state_none(text):
    assert s2_processing_baseline(text, {}) is None


def test_the_product_id_property_is_read_before_the_item_id():
    props = {"s2:product_uri": "S2A_MSIL2A_20200101T000000_N0213_R1"}
    assert s2_processing_baseline("S2A_MSIL2A_20230101T000000_N0509_R1", props) == pytest.approx(
        2.13)


# --------------------------------------------------------------------------- BOA offset


@pytest.mark.parametrize("flag", ["earthsearch:boa_offset_applied", "sentinel:boa_offset_applied"])
def test_an_applied_offset_is_never_applied_again(flag):
    props = {"s2:processing_baseline": "05.00", flag: True}
    assert s2_boa_offset("x", props, None) == 0
    # only a real True says so: False, or a truthy string, leaves the baseline rule
    assert s2_boa_offset("x", {**props, flag: False}, None) == 1000
    assert s2_boa_offset("x", {**props, flag: "true"}, None) == 1000


@pytest.mark.parametrize(
    ("when", "offset", "day"),
    [
        (datetime(2022, 1, 24, 23, 59, 59, 999999, tzinfo=UTC), 0, "2022-01-24"),
        (datetime(2022, 1, 25, tzinfo=UTC), 1000, "2022-01-25"),  # the boundary itself
        (datetime(2022, 1, 25, 0, 0, 1, tzinfo=UTC), 1000, "2022-01-25"),
        (datetime(2022, 1, 24, 23, 59), 0, "2022-01-24"),  # naive: taken as UTC
        (datetime(2022, 1, 25), 1000, "2022-01-25"),
        # 00:30 at UTC+1 is still the 24th in UTC
        (datetime(2022, 1, 25, 0, 30, tzinfo=timezone(timedelta(hours=1))), 0, "2022-01-25"),
        (datetime(2022, 1, 24, 23, 30, tzinfo=timezone(timedelta(hours=-1))), 1000,
         "2022-01-24"),
        (datetime(2015, 7, 1, tzinfo=UTC), 0, "2015-07-01"),
        (datetime(2030, 7, 1, tzinfo=UTC), 1000, "2030-07-01"),
    ],
)
def test_without_a_baseline_the_date_decides_at_2022_01_25(when, offset, day):
    with pytest.warns(UserWarning, match="states no processing baseline") as rec:
        assert s2_boa_offset("item-1", {}, when) == offset
    msg = str(rec[0].message)
    assert "'item-1'" in msg and day in msg
    assert f"BOA offset {offset})" in msg
    assert ("assuming >= 04.00" if offset else "assuming < 04.00") in msg


def test_without_a_baseline_or_a_date_there_is_no_offset_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert s2_boa_offset("x", {}, None) == 0


def test_constants_are_the_l2a_facts():
    assert scaling.S2_QUANTIFICATION == 10000.0
    assert scaling.S2_NODATA == 0
    assert scaling.S2_BOA_ADD_OFFSET == 1000
    assert datetime(2022, 1, 25, tzinfo=UTC) == scaling._BASELINE_CHANGE


# --------------------------------------------------------------------------- reflectance


def test_s2_reflectance_subtracts_the_offset_per_time_and_masks_nodata():
    dn = xr.DataArray(np.array([[[0, 1000, 1500], [11000, 65535, 1]]] * 2, "uint16"),
                      dims=("time", "y", "x"))
    off = xr.DataArray(np.array([0, 1000], "int64"), dims="time")
    r = s2_reflectance(dn, off)
    assert r.dtype == np.float32
    want0 = np.array([[np.nan, 0.1, 0.15], [1.1, 6.5535, 0.0001]], np.float32)
    want1 = np.array([[np.nan, 0.0, 0.05], [1.0, 6.4535, -0.0999]], np.float32)
    np.testing.assert_allclose(r.values[0], want0, rtol=1e-6)
    np.testing.assert_allclose(r.values[1], want1, rtol=1e-6, atol=1e-7)
    # a scalar offset, and the input is not modified
    np.testing.assert_allclose(s2_reflectance(dn, 1000).values, np.stack([want1, want1]),
                               rtol=1e-6, atol=1e-7)
    assert dn.values[0, 0, 0] == 0 and dn.dtype == np.uint16


# --------------------------------------------------------------------------- S1 in dB


def test_linear_to_db_values_and_what_has_no_db_value():
    lin = xr.DataArray(np.array([1.0, 10.0, 100.0, 0.1, 0.5, 0.0, -0.01, np.nan, np.inf,
                                 -np.inf, 1e-30]), dims="x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # log10 never sees 0 or negatives
        db = linear_to_db(lin)
    assert db.dtype == np.float32
    want = [0.0, 10.0, 20.0, -10.0, 10 * np.log10(0.5), np.nan, np.nan, np.nan, np.nan, np.nan,
            -300.0]
    np.testing.assert_allclose(db.values, np.array(want, np.float32), rtol=1e-6, atol=1e-5)


def test_db_to_linear_inverts_linear_to_db():
    db = xr.DataArray(np.array([-25.0, -10.0, 0.0, 3.0, 10.0], "float32"), dims="x")
    lin = db_to_linear(db)
    assert lin.dtype == np.float32
    np.testing.assert_allclose(lin.values, [10 ** -2.5, 0.1, 1.0, 10 ** 0.3, 10.0], rtol=1e-6)
    np.testing.assert_allclose(linear_to_db(lin).values, db.values, atol=1e-5)


def test_backscatter_conversions_stay_lazy():
    lin = xr.DataArray(da.from_array(np.array([[0.0, 0.01, 1.0, -1.0]]), chunks=1),
                       dims=("y", "x"))
    with raise_if_dask_computes():
        db = linear_to_db(lin)
        back = db_to_linear(db)
    np.testing.assert_allclose(db.values, [[np.nan, -20.0, 0.0, np.nan]], atol=1e-5)
    np.testing.assert_allclose(back.values, [[np.nan, 0.01, 1.0, np.nan]], rtol=1e-5)


# --------------------------------------------------------------------------- through load_stac


def _refl(dn: np.ndarray) -> np.ndarray:
    return dn.astype("float32") / np.float32(10000)


@pytest.mark.parametrize(
    "groupby",
    ["time", "id", "datetime", lambda item, parsed, idx: parsed.nominal_datetime.date()],
    ids=["time", "id", "property", "callable"],
)
def test_each_items_offset_is_removed_under_every_groupby(cog_dir, data_dir, romania_ref,
                                                           groupby):
    from xsky.io.stac import load_stac
    from xsky.testing import stac as fx

    from .conftest import ROMANIA_START

    baselines = ["04.00", "02.12", "05.09"]
    items = fx.romania_s2_items(cog_dir, data_dir, start=ROMANIA_START, n_dates=3,
                                baseline=baselines)
    ds = load_stac(items, bands=["B02"], groupby=groupby).compute()
    np.testing.assert_array_equal(ds["B02"].values,
                                  _refl(romania_ref["10m"]["B2"].values[:3]))


def _split_tiles(cog_dir, data_dir, west_time, east_time):
    """The first Romania date as west and east tiles (baseline 04.00) at the given times."""
    from xsky.testing import stac as fx

    from .conftest import ROMANIA_START

    items = fx.romania_s2_items(cog_dir, data_dir, start=ROMANIA_START, n_dates=1, split=True,
                                baseline="04.00")
    west = next(it for it in items if it.id.endswith("_W")).clone()
    east = next(it for it in items if it.id.endswith("_E")).clone()
    west.datetime, east.datetime = west_time, east_time
    return west, east


@pytest.mark.parametrize(("groupby", "steps"), [
    ("solar_day", 1), ("sat:relative_orbit", 1), ("time", 2), ("id", 2), (None, 2),
])
def test_tiles_of_one_solar_day_across_utc_midnight_group_by_mode(cog_dir, data_dir,
                                                                  romania_ref, groupby, steps):
    """West tile at 23:10 UTC, east tile at 00:20 UTC the next day, both at baseline 04.00:
    one local solar day (the tile lies east of Greenwich) and one relative orbit, so
    ``solar_day`` and a shared property mosaic them (not the UTC date, not the item id);
    ``time`` and ``id`` keep two steps. Every step has the offset removed."""
    from xsky.io.stac import load_stac

    west, east = _split_tiles(cog_dir, data_dir, datetime(2018, 1, 7, 23, 10, tzinfo=UTC),
                              datetime(2018, 1, 8, 0, 20, tzinfo=UTC))
    ds = load_stac([west, east], bands=["B02"], groupby=groupby).compute()
    assert ds.sizes["time"] == steps
    ref = _refl(romania_ref["10m"]["B2"].values[0])
    vals = ds["B02"].values
    if steps == 1:
        np.testing.assert_array_equal(vals[0], ref)  # the mosaic of both tiles
    else:
        np.testing.assert_array_equal(vals[0][:, :60], ref[:, :60])  # west first (earlier)
        np.testing.assert_array_equal(vals[1][:, 40:], ref[:, 40:])
        assert np.isnan(vals[0][:, 60:]).all() and np.isnan(vals[1][:, :40]).all()


def test_tiles_of_one_day_with_different_offsets_are_never_mosaicked(cog_dir, data_dir,
                                                                     romania_ref):
    """West half at baseline 04.00 (files hold DN + 1000), east half at 02.12, same overpass:
    they stay two time steps, each with its own offset removed."""
    from xsky.io.stac import load_stac
    from xsky.testing import stac as fx

    from .conftest import ROMANIA_START

    new = fx.romania_s2_items(cog_dir, data_dir, start=ROMANIA_START, n_dates=1, split=True,
                              baseline="04.00")
    old = fx.romania_s2_items(cog_dir, data_dir, start=ROMANIA_START, n_dates=1, split=True,
                              baseline="02.12")
    west = next(it for it in new if it.id.endswith("_W"))
    east = next(it for it in old if it.id.endswith("_E"))
    ds = load_stac([west, east], bands=["B02"]).compute()
    assert ds.sizes["time"] == 2
    ref = _refl(romania_ref["10m"]["B2"].values[0])
    vals = ds["B02"].values
    # each step holds one tile: the other's footprint is no data
    step_w = int(np.argmax(np.isfinite(vals[:, :, 0]).all(axis=1)))
    step_e = 1 - step_w
    np.testing.assert_array_equal(vals[step_w][:, :60], ref[:, :60])
    np.testing.assert_array_equal(vals[step_e][:, 40:], ref[:, 40:])
    assert np.isnan(vals[step_w][:, 60:]).all() and np.isnan(vals[step_e][:, :40]).all()


# --------------------------------------------------------------------------- S1 already in dB


def _s1_db_items(ssl4eo_s1, data_dir, tmp_path, how):
    """The SSL4EO S1 items over COGs holding the source dB values, said to be dB ``how``."""

    from xsky.testing.stac import _write_cog

    scenes = sorted(p for p in (data_dir / "s1s2_ssl4eo_pair/0000200/s1_grd").iterdir()
                    if p.is_dir())
    items, sources = [], {"VV": [], "VH": []}
    for item, scene in zip(ssl4eo_s1.items, scenes, strict=True):
        item = item.clone()
        for pol in ("VV", "VH"):
            with rasterio.open(scene / f"{pol}.tif") as f:
                db, tr, crs = f.read(1).astype("float32"), f.transform, f.crs.to_string()
            sources[pol].append(db)
            key = f"gamma0_{pol.lower()}"
            asset = item.assets.pop(key)
            asset.href = str(_write_cog(tmp_path / scene.name / f"{pol}_db.tif", db, tr, crs,
                                        None))
            if how == "unit":
                asset.extra_fields["raster:bands"] = [{"data_type": "float32", "unit": "dB"}]
            item.assets[f"{pol.lower()}_db" if how == "name" else key] = asset
        items.append(item)
    return items, {p: np.stack(v) for p, v in sources.items()}


@pytest.mark.parametrize("how", ["s1_units", "unit", "name"])
def test_s1_files_already_in_db_are_kept_as_they_are(ssl4eo_s1, data_dir, tmp_path, how):
    from xsky.io.stac import load_stac

    items, src = _s1_db_items(ssl4eo_s1, data_dir, tmp_path, how)
    kw = {"s1_units": "db"} if how == "s1_units" else {}
    db = load_stac(items, modality="s1", **kw).compute()
    lin = load_stac(items, modality="s1", db=False, **kw).compute()
    assert (src["VV"] < 0).mean() > 0.9  # real backscatter in dB: mostly negative
    for pol in ("VV", "VH"):
        assert db[pol].attrs["units"] == "db" and lin[pol].attrs["units"] == "linear"
        np.testing.assert_array_equal(db[pol].values, src[pol])  # not converted twice
        np.testing.assert_allclose(lin[pol].values, 10 ** (src[pol] / 10), rtol=1e-5)
    # negative dB values are valid (only linear <= 0 has no dB value)
    assert db["valid"].values.all() and lin["valid"].values.all()


@pytest.mark.parametrize(("groupby", "steps"), [("time", 2), ("solar_day", 1)])
def test_two_acquisitions_of_one_utc_date_stay_two_steps_when_grouped_by_time(
        cog_dir, data_dir, romania_ref, groupby, steps):
    """Tiles 30 minutes apart on one UTC date: ``time`` groups by the timestamp (two steps),
    never by the date; ``solar_day`` mosaics them."""
    from xsky.io.stac import load_stac

    west, east = _split_tiles(cog_dir, data_dir, datetime(2018, 1, 8, 9, 10, tzinfo=UTC),
                              datetime(2018, 1, 8, 9, 40, tzinfo=UTC))
    ds = load_stac([west, east], bands=["B02"], groupby=groupby).compute()
    assert ds.sizes["time"] == steps
    ref = _refl(romania_ref["10m"]["B2"].values[0])
    if steps == 1:
        np.testing.assert_array_equal(ds["B02"].values[0], ref)
    else:
        assert list(ds.time.values.astype("datetime64[m]").astype(str)) == [
            "2018-01-08T09:10", "2018-01-08T09:40"]
        np.testing.assert_array_equal(ds["B02"].values[0][:, :60], ref[:, :60])

