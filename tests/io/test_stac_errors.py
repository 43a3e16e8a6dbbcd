"""Bad input to xsky.load_stac gives an XSkyError that names the problem and the fix."""

from __future__ import annotations

import json

import pystac
import pytest

from xsky.exceptions import BandMismatchError, CRSError, XSkyError
from xsky.io.stac import load_stac
from xsky.testing import stac as fx

pytestmark = [
    pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The 'shapely.ops.transform:DeprecationWarning"),
]


def _clone(items, n=None):
    return [it.clone() for it in list(items)[:n]]


def test_empty_search(tmp_path):
    with pytest.raises(XSkyError, match=r"no STAC items to load.*widen"):
        load_stac([])
    with pytest.raises(XSkyError, match="no STAC items"):
        load_stac(pystac.ItemCollection([]))
    p = tmp_path / "empty.geojson"
    p.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(XSkyError, match="no STAC items"):
        load_stac(p)


def test_items_of_mixed_collections(romania_items, cog_dir, data_dir):
    es = fx.romania_s2_items(cog_dir, data_dir, convention="earth-search", start=40, n_dates=2)
    mixed = _clone(romania_items, 2) + _clone(es)
    with pytest.raises(XSkyError, match=r"2 collections .*'sentinel-2-l2a': 2.*"
                                         r"'sentinel-s2-l2a-cogs': 2.*collection_id =="):
        load_stac(mixed)


def test_missing_asset_names_item_and_band(romania_items):
    items = _clone(romania_items, 3)
    del items[1].assets["B08"]
    with pytest.raises(BandMismatchError, match=rf"1 of 3 items.*{items[1].id}.*\['B08'\]"):
        load_stac(items, bands=["B02", "B08"])
    # bands every item has still load
    assert list(load_stac(items, bands=["B02"]).data_vars) == ["B02", "valid"]


def test_band_not_of_the_modality(romania_items):
    with pytest.raises(BandMismatchError, match="'VV' is not a S2 band"):
        load_stac(romania_items, bands=["VV"])


def test_wrong_modality_for_the_items(ssl4eo_s1):
    with pytest.raises(BandMismatchError, match=r"no S2 band assets.*gamma0_vv.*modality='s1'"):
        load_stac(ssl4eo_s1)


def test_items_without_projection_metadata(romania_items):
    items = _clone(romania_items, 2)
    for it in items:
        for k in ("proj:epsg", "proj:code"):
            it.properties.pop(k, None)
        for a in it.assets.values():
            for k in ("proj:shape", "proj:transform", "proj:bbox", "proj:epsg", "proj:code"):
                a.extra_fields.pop(k, None)
    with pytest.raises(XSkyError, match=r"no projection metadata.*pass crs= and resolution="):
        load_stac(items, bands=["B02"])
    # with an explicit grid the files' own georeferencing is used
    ds = load_stac(items, bands=["B02"], crs="EPSG:3035", resolution=10)
    ref = load_stac(_clone(romania_items, 2), bands=["B02"])
    assert ds.odc.geobox.crs.epsg == 3035
    assert abs(float(ds["B02"].mean()) - float(ref["B02"].mean())) < 1e-3


def test_bbox_outside_the_items(romania_items):
    with pytest.raises(XSkyError, match=r"does not overlap any of the 13 items.*22\.14"):
        load_stac(romania_items, bbox=(10.0, 50.0, 10.1, 50.1))
    # a bbox in the data's CRS instead of degrees
    with pytest.raises(XSkyError, match="in degrees"):
        load_stac(romania_items, bbox=(5271990, 2532100, 5272900, 2533000))
    with pytest.raises(XSkyError, match="min < max"):
        load_stac(romania_items, bbox=(22.16, 45.2, 22.14, 45.21))
    with pytest.raises(XSkyError, match="4 numbers"):
        load_stac(romania_items, bbox=(22.1, 45.2, 22.2))


def test_items_in_several_crs_need_crs(romania_items, cog_dir, data_dir):
    pak = fx.ssl4eo_s2_items(cog_dir, data_dir, convention="planetary-computer")
    items = _clone(romania_items, 2) + _clone(pak, 1)
    with pytest.raises(CRSError, match=r"2 different CRSs \(EPSG:3035, EPSG:4326\).*pass crs="):
        load_stac(items, bands=["B02"], scl_mask=())
    ds = load_stac(items, bands=["B02"], scl_mask=(), crs="EPSG:3857", resolution=20000)
    assert ds.odc.geobox.crs.epsg == 3857
    assert ds.sizes["time"] == 3


def test_new_crs_in_other_units_needs_resolution(romania_items):
    with pytest.raises(XSkyError, match=r"crs='EPSG:4326' is in degree.*pass resolution="):
        load_stac(romania_items, crs="EPSG:4326")
    with pytest.raises(CRSError, match="not a CRS"):
        load_stac(romania_items, crs="EPSG:99999999")


def test_uncalibrated_grd_is_refused(data_dir):
    grd = data_dir / "stac_items/sentinel1/S1A_IW_GRDH_1SDV_20210809T173953_20210809T174018_039156_049F13.json"
    with pytest.raises(XSkyError, match=r"GRD product.*uncalibrated digital numbers.*s1_units="):
        load_stac(grd, modality="s1")


def test_option_errors(romania_items, ssl4eo_s2):
    with pytest.raises(XSkyError, match=r"unknown modality 'sar'.*'hr', 's1', 's2'"):
        load_stac(romania_items, modality="sar")
    with pytest.raises(XSkyError, match="like= fixes the output grid, so bbox="):
        load_stac(romania_items, like=ssl4eo_s2.items, bbox=(22.1, 45.1, 22.2, 45.3))
    with pytest.raises(XSkyError, match="like= must be an xarray"):
        load_stac(romania_items, like=[1, 2])
    with pytest.raises(XSkyError, match="either snow=True or an explicit scl_mask"):
        load_stac(romania_items, snow=True, scl_mask=[8, 9])
    with pytest.raises(XSkyError, match=r"contains 12, which is not an SCL class; valid classes are 0 \(no data\)"):
        load_stac(romania_items, scl_mask=[8, 12])
    with pytest.raises(XSkyError, match="unknown dimension 'band'"):
        load_stac(romania_items, chunks={"band": 1})
    with pytest.raises(XSkyError, match=r"no item falls in time='2019'.*2018-01-07 \.\. 2018-05-22"):
        load_stac(romania_items, time="2019")
    with pytest.raises(XSkyError, match="ends before it starts"):
        load_stac(romania_items, time="2018-05-01/2018-01-01")
    with pytest.raises(XSkyError, match="resampling names band 'B05', which is not loaded"):
        load_stac(romania_items, bands=["B02"], resampling={"B05": "bilinear"})
    with pytest.raises(XSkyError, match="positive"):
        load_stac(romania_items, crs="EPSG:3035", resolution=-10)


# -- issue 10: like= without a CRS, unknown resampling, hrefs leaving the file's folder ----


def test_like_without_crs_is_refused(romania_items):
    import numpy as np
    import xarray as xr

    bare = xr.Dataset({"B02": (("y", "x"), np.zeros((4, 4)))},
                      coords={"y": [35.0, 25.0, 15.0, 5.0], "x": [5.0, 15.0, 25.0, 35.0]})
    with pytest.raises(CRSError, match=r"like= has no usable pixel grid \(no CRS.*rio.write_crs"):
        load_stac(_clone(romania_items, 2), bands=["B02"], like=bare)


@pytest.mark.parametrize("resampling", ["magic", {"B02": "magic"}, {"*": 3}])
def test_unknown_resampling_is_refused(romania_items, resampling):
    from xsky.exceptions import ArgumentError

    with pytest.raises(ArgumentError, match=r"must be a resampling method, one of .*'bilinear'"
                                            r".*got .*e\.g\. 'bilinear' for reflectance"):
        load_stac(_clone(romania_items, 2), bands=["B02"], resampling=resampling)


@pytest.mark.parametrize("href", ["../../etc/passwd", "sub/../../outside.tif"])
def test_relative_href_leaving_the_file_folder_is_refused(romania_items, tmp_path, href):
    from xsky.exceptions import DataError
    from xsky.io.stac import read_items

    folder = tmp_path / "search"
    folder.mkdir()
    item = romania_items[0].to_dict()
    item["assets"]["B02"]["href"] = href
    path = folder / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [item]}))
    (got,) = read_items(path)  # reading is fine; the asset is never opened
    assert got.assets["B02"].href == href
    with pytest.raises(DataError, match=r"asset 'B02' of feature 0 .*relative href "
                                        r".*outside the file's folder.*absolute path or URL"):
        load_stac(path, bands=["B02"])


def test_relative_href_inside_the_folder_resolves_and_symlinks_out_are_refused(
        romania_items, tmp_path):
    import os

    from xsky.exceptions import DataError
    from xsky.io.stac import read_items

    folder = tmp_path / "search"
    (folder / "cogs").mkdir(parents=True)
    (folder / "cogs" / "b02.tif").write_bytes(b"")
    os.symlink(tmp_path, folder / "escape")
    item = romania_items[0].to_dict()
    item["assets"]["B02"]["href"] = "cogs/./b02.tif"
    path = folder / "items.json"
    path.write_text(json.dumps(item))
    (got,) = read_items(path)
    assert got.assets["B02"].href == str((folder / "cogs" / "b02.tif").resolve())
    item["assets"]["B02"]["href"] = "escape/secret.tif"
    path.write_text(json.dumps(item))
    with pytest.raises(DataError, match="outside the file's folder"):
        load_stac(path, bands=["B02"])
