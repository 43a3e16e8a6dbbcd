"""The same place gives the same embedding whatever the storage order of x and y.

A south-up (ascending y) cube used to be embedded upside down and a descending-x one
mirrored, with coordinates that looked right. The engine now works in the canonical
orientation and lays the result out in the input's order again.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xsky
from xsky.testing import raise_if_dask_computes, synthetic_s2_cube

FLIPS = {"y": ("y",), "x": ("x",), "both": ("y", "x")}


def _flip(ds: xr.Dataset, dims: tuple[str, ...]) -> xr.Dataset:
    return ds.isel({d: slice(None, None, -1) for d in dims})


@pytest.fixture(scope="module")
def cube() -> xr.Dataset:
    # 44 x 36 pixels: not a multiple of the strides, so the window anchoring matters; a
    # strongly varying field so that a flip changes every window
    ds = synthetic_s2_cube(44, 36, 3, seed=3, valid_fraction=0.9)
    ramp = (np.arange(44)[:, None] * 0.004 + np.arange(36)[None, :] * 0.002).astype("float32")
    for b in ("B02", "B03", "B04", "B08"):
        ds[b] = ds[b] + ramp
    return ds


def _model(name, request):
    return request.getfixturevalue(name) if name != "test-tiny" else "test-tiny"


def _check_same(ref: xr.DataArray, got: xr.DataArray, inp: xr.Dataset) -> None:
    for d in ("y", "x"):  # the output keeps the input's coordinate order
        assert np.sign(np.diff(got[d].values)[0]) == np.sign(np.diff(inp[d].values)[0])
    a, b = ref.sortby(["y", "x"]), got.sortby(["y", "x"])
    np.testing.assert_allclose(a.y.values, b.y.values)
    np.testing.assert_allclose(a.x.values, b.x.values)
    av, bv = a.values, b.values
    assert np.isfinite(av).mean() > 0.5
    np.testing.assert_array_equal(np.isnan(av), np.isnan(bv))
    np.testing.assert_allclose(bv, av, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(b.valid_fraction.values, a.valid_fraction.values, atol=1e-6)


@pytest.mark.parametrize("model", ["test-tiny", "temporal_mean", "window_mean"])
@pytest.mark.parametrize("flip", list(FLIPS))
@pytest.mark.parametrize("chunked", [False, True], ids=["numpy", "dask"])
def test_embedding_does_not_depend_on_storage_order(cube, model, flip, chunked, request):
    m = _model(model, request)
    flipped = _flip(cube, FLIPS[flip])
    ref_in, flip_in = cube, flipped
    if chunked:
        ref_in = cube.chunk({"time": -1, "y": 20, "x": 16})
        flip_in = flipped.chunk({"time": -1, "y": 20, "x": 16})
    ref = xsky.embed(ref_in, m).compute()
    with raise_if_dask_computes():  # flipping is lazy: nothing computes at graph-build time
        lazy = xsky.embed(flip_in, m)
    _check_same(ref, lazy.compute(), flipped)


def test_a_south_up_cube_is_not_embedded_upside_down(window_mean):
    # WindowMean is the window mean of each band: the northern output row must hold the
    # mean of the northern pixels whatever the storage order
    ds = synthetic_s2_cube(32, 32, 1, seed=0)
    north = (ds.y > ds.y.values[15]).astype("float32")  # top 16 rows (largest y) are 1
    ds = ds.assign(B02=ds.B02 * 0 + north, B03=ds.B03 * 0 + 0.5 * north)
    south_up = ds.sortby("y")
    emb = xsky.embed(south_up, window_mean).compute()
    assert emb.y.values[0] < emb.y.values[-1]  # kept ascending, like the input
    top = emb.sel(y=emb.y.max()).values  # the northernmost output row
    bottom = emb.sel(y=emb.y.min()).values
    # the northernmost windows lie in the northern half: band means are high there
    assert top[..., 0].mean() > bottom[..., 0].mean()
    np.testing.assert_allclose(emb.sortby("y").values, xsky.embed(ds, window_mean).sortby("y")
                               .values, atol=1e-6)


def test_south_up_s1_with_s2_datatree_aligns_in_canonical_orientation():
    # both modalities flipped: still aligned (each is made canonical), result in input order
    ds = synthetic_s2_cube(32, 32, 2, seed=5)
    tree = xr.DataTree.from_dict({"s2": ds.sortby("y")})
    a = xsky.embed(tree, "test-tiny").compute()
    b = xsky.embed(ds, "test-tiny").compute()
    assert a.y.values[0] < a.y.values[-1]
    np.testing.assert_allclose(a.sortby("y").values, b.sortby("y").values, atol=1e-5)


@pytest.mark.parametrize("flip", list(FLIPS))
def test_location_embed_does_not_depend_on_storage_order(flip):
    from xsky.models.satclip import LocationEncoder

    enc = LocationEncoder(legendre_polys=10, capacity=16, embed_dim=8).eval()
    cube = synthetic_s2_cube(12, 10, 1, seed=0, res=5000.0)
    flipped = _flip(cube, FLIPS[flip]).chunk({"y": 5, "x": 4})
    ref = xsky.location_embed(cube, enc, stride=2).compute()
    with raise_if_dask_computes():
        lazy = xsky.location_embed(flipped, enc, stride=2)
    got = lazy.compute()
    for d in ("y", "x"):
        assert np.sign(np.diff(got[d].values)[0]) == np.sign(np.diff(flipped[d].values)[0])
    a, b = ref.sortby(["y", "x"]), got.sortby(["y", "x"])
    np.testing.assert_allclose(a.y.values, b.y.values)
    np.testing.assert_allclose(b.values, a.values, atol=1e-5)
    # and each cell is the embedding of its own centre
    from xsky.geo import pixel_lonlat

    lon, lat = pixel_lonlat(got.x.values, got.y.values, cube.rio.crs)
    direct = enc.encode(lon.ravel(), lat.ravel()).reshape(*lon.shape, -1)
    np.testing.assert_allclose(got.values, direct, atol=1e-6)
