"""Bad inputs to the location functions give ArgumentErrors that name the fix."""

from __future__ import annotations

import numpy as np
import pytest

import xsky
from xsky import _coerce
from xsky.exceptions import ArgumentError
from xsky.models.satclip import LocationEncoder
from xsky.testing import synthetic_s2_cube


@pytest.fixture(scope="module")
def enc():
    return LocationEncoder(legendre_polys=4, capacity=8, embed_dim=4).eval()


@pytest.mark.parametrize(("lon", "lat"), [(["a"], ["b"]), ([2.35], ["48.85"]),
                                          ([True], [1.0])])
def test_strings_as_points_give_an_argument_error(enc, lon, lat):
    with pytest.raises(ArgumentError, match=r"must be numbers \(in degrees\).*to_numeric"):
        xsky.location_embed_points(lon, lat, enc)


@pytest.mark.parametrize("values", [["a"], ["48.85"], [None], [True]])
def test_float_values_refuses_what_is_not_numbers(values):
    with pytest.raises(ArgumentError, match=r"lat must be numbers \(in degrees\), got .* such "
                                            r"as .*pandas.to_numeric"):
        _coerce.float_values(values, "lat", "degrees")


def test_float_values_accepts_numbers():
    np.testing.assert_array_equal(_coerce.float_values(np.array([1, 2.5], dtype=object), "lon"),
                                  [1.0, 2.5])
    assert _coerce.float_values([3], "lon").dtype == np.float64


@pytest.mark.parametrize("chunks", [0, -3, {"y": 0}])
def test_location_embed_chunks_must_be_positive(enc, chunks):
    cube = synthetic_s2_cube(16, 16, 1)
    with pytest.raises(ArgumentError, match=r"chunks.* must be a positive integer number of "
                                            r"output pixels, got"):
        xsky.location_embed(cube, enc, chunks=chunks)
