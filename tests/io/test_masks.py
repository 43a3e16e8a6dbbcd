"""Validity masks from the Sentinel-2 scene classification (SCL) layer."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from xsky.exceptions import ArgumentError
from xsky.io.masks import SCL_CLASSES, default_scl_mask, resolve_scl_mask, scl_valid
from xsky.testing import raise_if_dask_computes

#: ESA's L2A scene classification, as published in the product definition.
ESA_SCL = {0: "no data", 1: "saturated or defective", 2: "dark area pixels",
           3: "cloud shadows", 4: "vegetation", 5: "not vegetated", 6: "water",
           7: "unclassified", 8: "cloud medium probability", 9: "cloud high probability",
           10: "thin cirrus", 11: "snow or ice"}


def test_the_class_table_is_esas():
    assert SCL_CLASSES == ESA_SCL


def test_default_mask_is_nodata_saturated_shadow_clouds_cirrus_and_snow():
    assert default_scl_mask() == (0, 1, 3, 8, 9, 10, 11)
    assert default_scl_mask(snow=False) == (0, 1, 3, 8, 9, 10, 11)
    # keeping snow keeps everything else masked
    assert default_scl_mask(snow=True) == (0, 1, 3, 8, 9, 10)


def test_resolve_defaults_and_explicit_lists():
    assert resolve_scl_mask(None, False) == (0, 1, 3, 8, 9, 10, 11)
    assert resolve_scl_mask(None, True) == (0, 1, 3, 8, 9, 10)
    # sorted, without repeats, as plain ints
    out = resolve_scl_mask([9, 8, 9, 3], False)
    assert out == (3, 8, 9) and all(type(c) is int for c in out)
    assert resolve_scl_mask((), False) == ()
    assert resolve_scl_mask({0, 11}, False) == (0, 11)
    assert resolve_scl_mask(range(12), False) == tuple(range(12))


@pytest.mark.parametrize(
    ("scl_mask", "snow", "match"),
    [
        ([8, 9], True, "either snow=True or an explicit scl_mask="),
        ((), True, "either snow=True"),
        ("89", False, "collection of SCL class numbers, got '89'"),
        (b"\x08", False, "collection of SCL class numbers"),
        ([8, 12], False, r"contains 12, which is not an SCL class.*0 \(no data\).*11 \(snow or ice\)"),
        ([-1], False, "contains -1"),
        ([True], False, "contains True"),
        ([8.0], False, "contains 8.0"),
        (["8"], False, "contains '8'"),
    ],
)
def test_bad_masks_are_refused_with_the_valid_classes(scl_mask, snow, match):
    with pytest.raises(ArgumentError, match=match):
        resolve_scl_mask(scl_mask, snow)


def test_scl_valid_marks_exactly_the_unmasked_classes():
    classes = np.arange(12, dtype="uint8").reshape(3, 4)
    scl = xr.DataArray(classes, dims=("y", "x"))
    ok = scl_valid(scl, (0, 1, 3, 8, 9, 10, 11))
    assert ok.dtype == bool and ok.dims == ("y", "x")
    np.testing.assert_array_equal(ok.values, np.isin(classes, (2, 4, 5, 6, 7)))
    np.testing.assert_array_equal(scl_valid(scl, [8, 8, 9]).values, ~np.isin(classes, (8, 9)))
    # sets and frozensets too (numpy's isin would take a set as one object, masking nothing)
    for masked in ({8, 9}, frozenset((9, 8)), range(8, 10), {8: "x", 9: "y"}.keys()):
        np.testing.assert_array_equal(scl_valid(scl, masked).values, ~np.isin(classes, (8, 9)))
    # nothing masked: everything valid, same shape
    none = scl_valid(scl, ())
    assert none.dtype == bool and none.shape == scl.shape and bool(none.all())


def test_scl_valid_is_lazy_on_dask_input():
    scl = xr.DataArray(da.from_array(np.array([[0, 4], [9, 11]], "uint8"), chunks=1),
                       dims=("y", "x"))
    with raise_if_dask_computes():
        ok = scl_valid(scl, default_scl_mask())
        ok_none = scl_valid(scl, [])
    np.testing.assert_array_equal(ok.values, [[False, True], [False, False]])
    assert ok_none.values.all()
