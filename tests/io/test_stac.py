"""xsky.load_stac on offline fixtures built from real rasters and real STAC items."""

from __future__ import annotations

import copy
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import xarray as xr

from xsky.exceptions import XSkyError
from xsky.io.scaling import s2_boa_offset, s2_processing_baseline
from xsky.io.stac import load_stac, read_items
from xsky.testing import raise_if_dask_computes
from xsky.testing import stac as fx

from .conftest import ROMANIA_N, ROMANIA_START

pytestmark = [
    # odc-loader's warp of 20 m bands onto the 10 m grid goes through a MEM dataset
    pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
    # odc-geo on newer affine / shapely
    pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The 'shapely.ops.transform:DeprecationWarning"),
]

TEN = ("B02", "B03", "B04", "B08")
TEN_SRC = {"B02": "B2", "B03": "B3", "B04": "B4", "B08": "B8"}
DEFAULT_MASKED = (0, 1, 3, 8, 9, 10, 11)


def up2(a: np.ndarray) -> np.ndarray:
    """Nearest-neighbour 20 m -> 10 m on aligned grids: each pixel becomes 2x2."""
    return a.repeat(2, axis=-2).repeat(2, axis=-1)


def refl(dn: np.ndarray) -> np.ndarray:
    return dn.astype("float32") / np.float32(10000)


# --------------------------------------------------------------------------- S2 values


def test_pc_items_round_trip_dn_to_reflectance_exactly(romania_items, romania_ref):
    ds = load_stac(romania_items, bands=[*TEN, "B8A", "B11"]).compute()
    r10, r20 = romania_ref["10m"], romania_ref["20m"]
    assert ds.sizes == {"time": ROMANIA_N, "y": 100, "x": 100}
    assert [ds[b].dims for b in TEN] == [("time", "y", "x")] * 4
    np.testing.assert_array_equal(ds.time.values.astype("datetime64[D]"),
                                  r10.time.values.astype("datetime64[D]"))
    for b in TEN:
        assert ds[b].dtype == np.float32
        assert ds[b].attrs["units"] == "reflectance"
        np.testing.assert_array_equal(ds[b].values, refl(r10[TEN_SRC[b]].values))
    # 20 m bands land on the 10 m grid by nearest neighbour
    np.testing.assert_array_equal(ds["B8A"].values, up2(refl(r20["B8A"].values)))
    np.testing.assert_array_equal(ds["B11"].values, up2(refl(r20["B11"].values)))
    # the grid is the cube's own: same pixel centres, same CRS
    np.testing.assert_allclose(ds.x.values, r10.x.values, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ds.y.values, r10.y.values, rtol=0, atol=1e-6)
    assert ds.rio.crs.to_epsg() == 3035
    assert ds.odc.geobox.resolution.x == 10.0
    # independent float64 reference
    np.testing.assert_allclose(ds["B04"].values, r10["B4"].values / 1e4, rtol=1e-6)


@pytest.mark.parametrize("convention", fx.CONVENTIONS)
def test_every_catalogue_layout_maps_to_the_same_canonical_bands(
    convention, cog_dir, data_dir, romania_ref
):
    items = fx.romania_s2_items(cog_dir, data_dir, convention=convention, start=ROMANIA_START,
                                n_dates=3)
    # aliases work whatever the asset keys are: 'blue' is B02, 'nir08' is B8A
    ds = load_stac(items, bands=["blue", "B3", "B04", "nir", "nir08", "swir16"]).compute()
    assert list(ds.data_vars) == ["B02", "B03", "B04", "B08", "B8A", "B11", "valid"]
    r10, r20 = romania_ref["10m"].isel(time=slice(0, 3)), romania_ref["20m"].isel(time=slice(0, 3))
    for b in TEN:
        np.testing.assert_array_equal(ds[b].values, refl(r10[TEN_SRC[b]].values))
    np.testing.assert_array_equal(ds["B8A"].values, up2(refl(r20["B8A"].values)))
    np.testing.assert_array_equal(
        ds["valid"].values, ~np.isin(up2(r20["SCL"].values), DEFAULT_MASKED)
    )


def test_cdse_takes_the_finest_of_several_resolutions(cog_dir, data_dir, romania_ref):
    items = fx.romania_s2_items(cog_dir, data_dir, convention="cdse", start=ROMANIA_START,
                                n_dates=2)
    assert {"B03_10m", "B03_20m"} <= set(items.items[0].assets)
    ds = load_stac(items, bands=["B03"]).compute()
    ten = refl(romania_ref["10m"]["B3"].values[:2])
    twenty = up2(refl(romania_ref["20m"]["B3"].values[:2]))
    assert not np.array_equal(ten, twenty)  # the two assets really differ
    np.testing.assert_array_equal(ds["B03"].values, ten)


def test_valid_is_scl_mask_and_snow_option(romania_items, romania_ref):
    scl = up2(romania_ref["20m"]["SCL"].values)
    assert (scl == 11).sum() > 1000 and (scl == 10).sum() > 100  # the dates have snow, cirrus
    ds = load_stac(romania_items, bands=["B02", "SCL"]).compute()
    assert ds["SCL"].dtype == np.uint8
    np.testing.assert_array_equal(ds["SCL"].values, scl)
    assert ds["valid"].dtype == bool
    np.testing.assert_array_equal(ds["valid"].values, np.isin(scl, (2, 4, 5, 6, 7)))

    snow = load_stac(romania_items, bands=["B02"], snow=True)["valid"].values
    np.testing.assert_array_equal(snow, np.isin(scl, (2, 4, 5, 6, 7, 11)))

    only_clouds = load_stac(romania_items, bands=["B02"], scl_mask=[8, 9])["valid"].values
    np.testing.assert_array_equal(only_clouds, ~np.isin(scl, (8, 9)))
    nothing = load_stac(romania_items, bands=["B02"], scl_mask=())["valid"].values
    assert nothing.all()


# --------------------------------------------------------------------------- BOA offset


def test_baseline_04_items_have_the_offset_removed(cog_dir, data_dir, romania_ref):
    items = fx.romania_s2_items(cog_dir, data_dir, start=ROMANIA_START, n_dates=4,
                                baseline="04.00")
    # the files really hold DN + 1000
    with rasterio.open(items.items[0].assets["B02"].href) as f:
        np.testing.assert_array_equal(f.read(1), romania_ref["10m"]["B2"].values[0] + 1000)
    ds = load_stac(items, bands=["B02", "B8A"]).compute()
    np.testing.assert_array_equal(ds["B02"].values, refl(romania_ref["10m"]["B2"].values[:4]))
    np.testing.assert_array_equal(ds["B8A"].values,
                                  up2(refl(romania_ref["20m"]["B8A"].values[:4])))


def test_offset_follows_each_items_baseline_not_its_date(cog_dir, data_dir, romania_ref):
    # dates are all 2018; odd items claim baseline 04.00 (and hold DN + 1000)
    baselines = ["04.00" if i % 2 else "02.12" for i in range(6)]
    items = fx.romania_s2_items(cog_dir, data_dir, start=ROMANIA_START, n_dates=6,
                                baseline=baselines)
    ds = load_stac(items, bands=["B08"]).compute()
    np.testing.assert_array_equal(ds["B08"].values, refl(romania_ref["10m"]["B8"].values[:6]))


def test_earth_search_offset_applied_flag_means_no_second_offset(cog_dir, data_dir, romania_ref):
    items = fx.romania_s2_items(cog_dir, data_dir, convention="earth-search-v1",
                                start=ROMANIA_START, n_dates=2, baseline="05.09",
                                boa_offset_applied=True)
    assert items.items[0].properties["earthsearch:boa_offset_applied"] is True
    ds = load_stac(items, bands=["red"]).compute()
    np.testing.assert_array_equal(ds["B04"].values, refl(romania_ref["10m"]["B4"].values[:2]))


@pytest.mark.parametrize(
    ("props", "item_id", "expected"),
    [
        ({"s2:processing_baseline": "04.00"}, "x", 1000),
        ({"s2:processing_baseline": "02.12"}, "x", 0),
        ({"s2:processing_baseline": "05.10"}, "x", 1000),
        ({"sentinel:processing_baseline": "04.00"}, "x", 1000),
        ({"processing:version": "05.11"}, "x", 1000),
        ({"s2:product_uri": "S2B_MSIL2A_20220301T101839_N0400_R065_T32TMT_20220301T123415.SAFE"},
         "x", 1000),
        ({}, "S2A_MSIL2A_20200604T054639_N0214_R048_T43RCP_20200604T094332", 0),
        ({"s2:processing_baseline": "04.00", "earthsearch:boa_offset_applied": True}, "x", 0),
        ({"sentinel:processing_baseline": "04.00", "sentinel:boa_offset_applied": True}, "x", 0),
    ],
)
def test_boa_offset_rules(props, item_id, expected):
    when = datetime(2019, 1, 1, tzinfo=UTC)  # the date must not decide here
    assert s2_boa_offset(item_id, props, when) == expected


def test_boa_offset_falls_back_to_date_with_a_warning():
    with pytest.warns(UserWarning, match="states no processing baseline"):
        assert s2_boa_offset("x", {}, datetime(2023, 5, 1, tzinfo=UTC)) == 1000
    with pytest.warns(UserWarning, match="states no processing baseline"):
        assert s2_boa_offset("x", {}, datetime(2021, 5, 1, tzinfo=UTC)) == 0
    assert s2_processing_baseline("x", {"s2:processing_baseline": "04.00"}) == 4.0


# --------------------------------------------------------------------------- grid options


def test_bbox_crops_on_the_native_pixel_grid(romania_items, romania_ref):
    bbox = (22.148, 45.202, 22.156, 45.207)
    ds = load_stac(romania_items, bands=["B02", "B11"], bbox=bbox).compute()
    assert 40 < ds.sizes["x"] < 100 and 40 < ds.sizes["y"] < 100
    r10 = romania_ref["10m"]
    ix = np.searchsorted(r10.x.values, ds.x.values[0])
    iy = np.searchsorted(-r10.y.values, -ds.y.values[0])
    np.testing.assert_allclose(ds.x.values, r10.x.values[ix:ix + ds.sizes["x"]], atol=1e-6)
    np.testing.assert_allclose(ds.y.values, r10.y.values[iy:iy + ds.sizes["y"]], atol=1e-6)
    sub = (slice(None), slice(iy, iy + ds.sizes["y"]), slice(ix, ix + ds.sizes["x"]))
    np.testing.assert_array_equal(ds["B02"].values, refl(r10["B2"].values[sub]))
    np.testing.assert_array_equal(ds["B11"].values, up2(refl(romania_ref["20m"]["B11"].values))[sub])
    # the requested box is covered, with less than a pixel to spare on each side
    from odc.geo.geom import box

    want = box(*bbox, "epsg:4326").to_crs(ds.odc.geobox.crs).boundingbox
    got = ds.odc.geobox.boundingbox
    # (odc-geo lets the grid fall short of the box by up to 1 % of a pixel: 0.1 m)
    assert -0.1 <= want.left - got.left < 10 and -0.1 <= got.right - want.right < 10
    assert -0.1 <= want.bottom - got.bottom < 10 and -0.1 <= got.top - want.top < 10


def test_nodata_outside_the_items_is_nan_and_invalid(romania_items, romania_ref):
    ds = load_stac(romania_items, bands=["B02"], bbox=(22.13, 45.19, 22.17, 45.22)).compute()
    r10 = romania_ref["10m"]
    inside = ds.sel(x=r10.x, y=r10.y, method="nearest", tolerance=1e-3)
    np.testing.assert_array_equal(inside["B02"].values, refl(r10["B2"].values))
    n_out = ds.sizes["x"] * ds.sizes["y"] - 100 * 100
    assert n_out > 1000
    assert int(np.isnan(ds["B02"].values[0]).sum()) == n_out
    assert int((~ds["valid"].values[0]).sum()) >= n_out
    assert not ds["valid"].values[0][np.isnan(ds["B02"].values[0])].any()


def test_crs_and_resolution_are_honoured(romania_items, romania_ref):
    ds = load_stac(romania_items, bands=["B08"], crs="EPSG:32634", resolution=20)
    gb = ds.odc.geobox
    assert gb.crs.epsg == 32634
    assert (gb.resolution.x, gb.resolution.y) == (20.0, -20.0)
    assert ds.rio.crs.to_epsg() == 32634
    assert ds.rio.resolution() == (20.0, -20.0)
    assert 45 <= ds.sizes["x"] <= 60 and 45 <= ds.sizes["y"] <= 60
    v = ds["B08"].isel(time=0).values
    ref = refl(romania_ref["10m"]["B8"].values[0])
    assert abs(np.nanmean(v) - ref.mean()) < 0.01 * ref.mean()
    # pixel by pixel (nearest neighbour): each output pixel holds the source pixel under its
    # centre, so a flipped, shifted or transposed image fails here
    from pyproj import Transformer

    r10 = romania_ref["10m"]
    xx, yy = np.meshgrid(ds.x.values, ds.y.values)
    sx, sy = Transformer.from_crs(32634, 3035, always_xy=True).transform(xx, yy)
    col = np.floor((sx - (r10.x.values[0] - 5)) / 10).astype(int)
    row = np.floor(((r10.y.values[0] + 5) - sy) / 10).astype(int)
    inside = (row >= 0) & (row < 100) & (col >= 0) & (col < 100)
    assert inside.sum() > 1500
    got, want = v[inside], ref[row[inside], col[inside]]
    # GDAL's approximate transformer may pick a neighbour for centres on a pixel edge
    assert (got == want).mean() > 0.97
    assert np.isnan(v[~inside]).all()


def test_solar_day_mosaics_tiles_of_one_overpass(cog_dir, data_dir, romania_ref):
    items = fx.romania_s2_items(cog_dir, data_dir, start=ROMANIA_START, n_dates=3, split=True)
    assert len(items) == 6
    ds = load_stac(items, bands=["B02", "B11"]).compute()
    assert ds.sizes == {"time": 3, "y": 100, "x": 100}
    np.testing.assert_array_equal(ds["B02"].values, refl(romania_ref["10m"]["B2"].values[:3]))
    np.testing.assert_array_equal(ds["B11"].values,
                                  up2(refl(romania_ref["20m"]["B11"].values[:3])))
    per_item = load_stac(items, bands=["B02"], groupby="id")
    assert per_item.sizes["time"] == 6
    assert (np.diff(per_item.time.values) >= np.timedelta64(0)).all()


def test_time_range_keeps_only_matching_items(romania_items, romania_ref):
    ds = load_stac(romania_items, bands=["B02"], time="2018-02-01/2018-03-31")
    days = ds.time.values.astype("datetime64[D]").astype(str).tolist()
    ref = romania_ref["10m"].time.values.astype("datetime64[D]").astype(str).tolist()
    assert days == [d for d in ref if "2018-02-01" <= d <= "2018-03-31"]
    assert len(days) == 4
    month = load_stac(romania_items, bands=["B02"], time=("2018-04", "2018-04"))
    assert month.sizes["time"] == sum(d.startswith("2018-04") for d in ref)


# --------------------------------------------------------------------------- laziness


def test_building_the_cube_reads_no_pixel(romania_items):
    with raise_if_dask_computes():
        ds = load_stac(romania_items, bands=["B02", "B8A"], chunks={"x": 64, "y": 64})
    assert ds["B02"].chunks == ((1,) * ROMANIA_N, (64, 36), (64, 36))
    # hrefs to files that do not exist: the graph still builds, computing fails
    broken = []
    for it in romania_items.items[:2]:
        it = it.clone()
        for a in it.assets.values():
            a.href = str(Path(a.href).with_name("missing.tif"))
        broken.append(it)
    lazy = load_stac(broken, bands=["B02"])
    # the reader's own error, naming the file (odc-stac's fail_on_error=True)
    with pytest.raises(rasterio.errors.RasterioIOError, match=r"missing\.tif: No such file"):
        lazy["B02"].compute()


# --------------------------------------------------------------------------- S1 and stacking


def _s1_db_sources(data_dir: Path, pol: str) -> list[np.ndarray]:
    root = data_dir / "s1s2_ssl4eo_pair/0000200/s1_grd"
    out = []
    for scene in sorted(p for p in root.iterdir() if p.is_dir()):
        with rasterio.open(scene / f"{pol}.tif") as f:
            out.append(f.read(1))
    return out


def test_s1_rtc_items_in_db_and_linear(ssl4eo_s1, data_dir):
    db = load_stac(ssl4eo_s1, modality="s1").compute()
    lin = load_stac(ssl4eo_s1, modality="s1", db=False).compute()
    assert list(db.data_vars) == ["VV", "VH", "valid"]
    assert db["VV"].attrs["units"] == "db" and lin["VV"].attrs["units"] == "linear"
    assert db.time.values.astype("datetime64[D]").astype(str).tolist() == [
        "2020-06-07", "2020-09-03"]
    for pol in ("VV", "VH"):
        src = np.stack(_s1_db_sources(data_dir, pol))
        written = np.power(np.float32(10), src / np.float32(10))
        np.testing.assert_array_equal(lin[pol].values, written)
        np.testing.assert_allclose(db[pol].values, src, rtol=0, atol=1e-4)
        assert db[pol].dtype == np.float32
    assert db["valid"].values.all()


def test_s1_linear_zero_is_invalid_and_nan_in_db(ssl4eo_s1, tmp_path):
    item = ssl4eo_s1.items[0].clone()
    path = Path(item.assets["gamma0_vv"].href)
    with rasterio.open(path) as f:
        a, profile = f.read(1), f.profile
    a[:10, :] = 0  # nodata rows, as at a swath edge
    profile.update(driver="GTiff")
    out = tmp_path / "vv.tif"
    with rasterio.open(out, "w", **profile) as f:
        f.write(a, 1)
    item.assets["gamma0_vv"].href = str(out)
    ds = load_stac([item], modality="s1").compute()
    assert np.isnan(ds["VV"].values[0, :10]).all()
    assert not ds["valid"].values[0, :10].any()
    assert ds["valid"].values[0, 10:].all()



@pytest.mark.parametrize("db", [True, False])
def test_s1_non_positive_linear_backscatter_is_invalid_without_a_nodata_value(ssl4eo_s1,
                                                                              tmp_path, db):
    """Zero and negative linear values (noise-subtracted calibration) in a file that declares
    no nodata: invalid, and NaN both in dB and in linear units; the rest is kept."""
    item = ssl4eo_s1.items[0].clone()
    path = Path(item.assets["gamma0_vv"].href)
    with rasterio.open(path) as f:
        a, profile = f.read(1), f.profile
    ok = np.isfinite(a) & (a > 0)
    assert ok[10:].mean() > 0.3  # the rows kept hold real backscatter
    a[:5, :] = 0.0
    a[5:10, :] = -0.01
    profile.update(driver="GTiff", nodata=None)
    out = tmp_path / "vv.tif"
    with rasterio.open(out, "w", **profile) as f:
        f.write(a, 1)
    item.assets["gamma0_vv"].href = str(out)
    item.assets["gamma0_vv"].extra_fields.pop("raster:bands", None)
    ds = load_stac([item], modality="s1", db=db).compute()
    vv, valid = ds["VV"].values[0], ds["valid"].values[0]
    assert np.isnan(vv[:10]).all() and not valid[:10].any()
    np.testing.assert_array_equal(valid[10:], ok[10:])
    want = 10 * np.log10(a[10:][ok[10:]]) if db else a[10:][ok[10:]]
    np.testing.assert_allclose(vv[10:][ok[10:]], want, rtol=1e-6, atol=1e-5)

def test_s1_like_s2_lands_on_the_s2_grid(ssl4eo_s2, ssl4eo_s1):
    s2 = load_stac(ssl4eo_s2, bands=["B02", "B03", "B04", "B08"], scl_mask=())
    s1 = load_stac(ssl4eo_s1, modality="s1", like=s2, db=False).compute()
    assert s1.odc.geobox == s2.odc.geobox
    np.testing.assert_array_equal(s1.x.values, s2.x.values)
    np.testing.assert_array_equal(s1.y.values, s2.y.values)
    # each output pixel holds the source pixel under its centre (nearest neighbour)
    with rasterio.open(ssl4eo_s1.items[0].assets["gamma0_vv"].href) as f:
        src, tr = f.read(1), f.transform
    xx, yy = np.meshgrid(s1.x.values, s1.y.values)
    col, row = ~tr * (xx, yy)
    row, col = np.floor(row).astype(int), np.floor(col).astype(int)
    inside = (row >= 0) & (row < src.shape[0]) & (col >= 0) & (col < src.shape[1])
    assert inside.mean() > 0.97
    got = s1["VV"].values[0][inside]
    want = src[row[inside], col[inside]]
    assert (got == want).mean() > 0.99
    assert not s1["valid"].values[0][~inside].any()


def test_ssl4eo_s2_without_scl_warns_and_masks_only_nodata(ssl4eo_s2, data_dir):
    with pytest.warns(UserWarning, match="no SCL asset"):
        ds = load_stac(ssl4eo_s2, bands=["B02", "B12"]).compute()
    # the 20 m grid of these files is offset by half a 10 m pixel, so B12 has no data in the
    # last row and column of the 10 m grid: exactly those pixels are invalid
    assert not np.isnan(ds["B02"].values).any()
    nan12 = np.isnan(ds["B12"].values)
    assert nan12[:, -1, :].all() and nan12[:, :, -1].all() and not nan12[:, :-1, :-1].any()
    np.testing.assert_array_equal(ds["valid"].values, ~nan12)
    scenes = sorted(p for p in (data_dir / "s1s2_ssl4eo_pair/0000200/s2_l2a").iterdir()
                    if p.is_dir())
    for k, scene in enumerate(scenes):
        with rasterio.open(scene / "B2.tif") as f:
            np.testing.assert_array_equal(ds["B02"].values[k], refl(f.read(1)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        load_stac(ssl4eo_s2, bands=["B02"], scl_mask=())


# --------------------------------------------------------------------------- item sources


def test_item_sources_all_give_the_same_items(romania_items, tmp_path):
    path = fx.write_item_collection(romania_items, tmp_path / "search.geojson")
    ids = [it.id for it in romania_items]
    assert [it.id for it in read_items(path)] == ids
    assert [it.id for it in read_items(str(path))] == ids
    assert [it.id for it in read_items(romania_items.to_dict(transform_hrefs=False))] == ids
    assert [it.id for it in read_items([it.to_dict(transform_hrefs=False) for it in romania_items])] == ids
    assert [it.id for it in read_items(romania_items.items[0])] == ids[:1]


def test_relative_hrefs_in_a_file_resolve_against_its_folder(romania_items, tmp_path):
    item = copy.deepcopy(romania_items.items[0].to_dict(transform_hrefs=False))
    cog_root = Path(item["assets"]["B02"]["href"]).parent
    for a in item["assets"].values():
        if a["href"].startswith(str(cog_root)):
            a["href"] = "./" + Path(a["href"]).name
    (cog_root / "item.json").write_text(__import__("json").dumps(item))
    ds = load_stac(cog_root / "item.json", bands=["B02"])
    ref = load_stac(romania_items.items[:1], bands=["B02"])
    xr.testing.assert_equal(ds["B02"].compute(), ref["B02"].compute())


def test_read_items_rejects_non_stac_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"type": "Catalog", "id": "c"}')
    with pytest.raises(XSkyError, match="not a STAC Item or FeatureCollection"):
        read_items(p)
    with pytest.raises(XSkyError, match="does not exist"):
        read_items(tmp_path / "nope.json")


# --------------------------------------------------------------------------- HR


def test_hr_multiband_asset_splits_into_named_bands(data_dir):
    # no real NAIP STAC item is in the shared data: this one follows the Planetary Computer
    # NAIP layout (one 4-band 'image' asset described by eo:bands) over a real NAIP file
    from odc.geo.geobox import GeoBox

    path = data_dir / "naip_hr_timeseries/m_4709963_se_14_1_20200831.tif"
    with rasterio.open(path) as f:
        pix, tr, crs = f.read(), f.transform, f.crs
    geom = GeoBox(pix.shape[1:], tr, crs).extent.to_crs("epsg:4326")
    item = pystac.Item.from_dict({
        "type": "Feature", "stac_version": "1.0.0", "id": "naip-2020", "collection": "naip",
        "stac_extensions": [
            "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
            "https://stac-extensions.github.io/projection/v1.0.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
        ],
        "geometry": geom.json, "bbox": list(geom.boundingbox), "links": [],
        "properties": {"datetime": "2020-08-31T00:00:00Z", "proj:epsg": 26914},
        "assets": {"image": {
            "href": str(path), "type": "image/tiff; application=geotiff", "roles": ["data"],
            "eo:bands": [{"name": n, "common_name": n.lower()} for n in
                         ("Red", "Green", "Blue", "NIR")],
            "raster:bands": [{"data_type": "uint8", "nodata": 0}] * 4,
            "proj:shape": list(pix.shape[1:]), "proj:transform": list(tr)[:6],
        }},
    })
    ds = load_stac([item], modality="hr", bands=["blue", "nir"]).compute()
    assert list(ds.data_vars) == ["blue", "nir", "valid"]
    assert ds["nir"].attrs["units"] == "rgb255"
    np.testing.assert_array_equal(ds["blue"].values[0], pix[2].astype("float32"))
    np.testing.assert_array_equal(ds["nir"].values[0], pix[3].astype("float32"))
    np.testing.assert_array_equal(ds["valid"].values[0], (pix[[2, 3]] != 0).all(0))


def test_stack_loads_stac_items_with_s1_like_s2(ssl4eo_s2, ssl4eo_s1):
    import xsky

    with raise_if_dask_computes():
        tree = xsky.stack(s2=ssl4eo_s2, s1=ssl4eo_s1)
    s2, s1 = tree["s2"].to_dataset(), tree["s1"].to_dataset()
    assert s1.odc.geobox == s2.odc.geobox
    assert {"VV", "VH", "valid"} <= set(s1.data_vars)
    direct = load_stac(ssl4eo_s1, modality="s1", like=load_stac(ssl4eo_s2))
    np.testing.assert_array_equal(s1["VV"].values, direct["VV"].values)
