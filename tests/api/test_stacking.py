"""stack(): modalities on the S2 grid, refused when their footprints do not overlap."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import xsky
from xsky.exceptions import AlignmentError
from xsky.testing import raise_if_dask_computes, synthetic_s2_cube


def _s1(shift_x: float = 0.0, shift_y: float = 0.0, crs: str = "EPSG:32633", ny=48, nx=40):
    ds = synthetic_s2_cube(ny, nx, 2, bands=("VV", "VH"), seed=3, crs=crs, chunks={"time": 1})
    ds = ds.drop_vars("valid")
    ds = ds.assign_coords(x=ds.x + shift_x, y=ds.y + shift_y)
    for v in ("VV", "VH"):
        ds[v] = ds[v] * 10 - 20
        ds[v].attrs["units"] = "dB"
    return ds.rio.write_crs(crs)


@pytest.fixture(scope="module")
def s2():
    return synthetic_s2_cube(48, 40, 2, seed=1, chunks={"time": 1})


def test_s1_on_the_same_footprint_stacks_silently(s2):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tree = xsky.stack(s2=s2, s1=_s1())
    assert not [w for w in caught if "covers only" in str(w.message)]
    assert set(tree.children) == {"s2", "s1"}
    assert tree["s1"].ds.rio.crs.to_epsg() == 32633


@pytest.mark.parametrize("shift", [1_000_000.0, 400.0 + 5.0])
def test_s1_far_from_s2_is_refused_not_all_nan(s2, shift):
    # 1000 km away, and just beyond the 400 m wide S2 footprint
    with raise_if_dask_computes(), pytest.raises(
            AlignmentError, match=r"s1= does not overlap the s2= grid at all.*all be NaN.*"
                                  r"over the same area"):
        xsky.stack(s2=s2, s1=_s1(shift_x=shift))


def test_s1_in_another_crs_far_away_is_refused(s2):
    # a UTM 35N cube (Romania) next to the UTM 33N S2 cube: footprints compared across CRSs
    far = _s1(crs="EPSG:32635")
    with pytest.raises(AlignmentError, match=r"does not overlap the s2= grid.*EPSG:32633"):
        xsky.stack(s2=s2, s1=far)


def test_s1_covering_little_of_s2_warns_with_the_fraction(s2):
    # S2 is 400 m x 480 m; S1 shifted by 300 m east covers 100 m of 400 m: 25 %
    with pytest.warns(UserWarning, match=r"s1= covers only 25% of the s2= grid.*NaN"):
        tree = xsky.stack(s2=s2, s1=_s1(shift_x=300.0))
    assert "s1" in tree.children
    # 60 % covered: no warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        xsky.stack(s2=s2, s1=_s1(shift_x=160.0))
    assert not [w for w in caught if "covers only" in str(w.message)]


def test_overlap_comes_from_bounds_not_pixel_values(s2):
    # an S1 cube that is all NaN but on the footprint is not refused by the overlap check
    s1 = _s1()
    s1["VV"] = s1["VV"] * np.nan
    with raise_if_dask_computes():
        tree = xsky.stack(s2=s2, s1=s1)
    assert "s1" in tree.children
