"""The embedding engine: placement of windows, edges, masks, laziness, chunk invariance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import xsky
from xsky.models import create_model
from xsky.testing import raise_if_dask_computes, synthetic_s2_cube

from ..conftest import assert_close_nan, reflect_pad

BANDS = ("B02", "B03", "B04", "B08")


def _norm(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    spec = create_model("test-tiny").spec.modalities[0]
    mean = np.array(spec.mean, np.float32)[:, None, None]
    std = np.array(spec.std, np.float32)[:, None, None]
    return np.where(valid[None], (x - mean) / std, 0).astype(np.float32)


def _tiny(window: np.ndarray) -> np.ndarray:
    """Run test-tiny on one (C, 16, 16) normalised window -> (4, 4, F)."""
    model = create_model("test-tiny")
    with torch.no_grad():
        return model(torch.from_numpy(window)[None])[0].permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def cube() -> xr.Dataset:
    return synthetic_s2_cube(50, 45, 3, valid_fraction=0.9, seed=3)


def test_output_layout_coords_crs_and_attrs(cube):
    emb = xsky.embed(cube, "test-tiny")
    assert emb.name == "embedding"
    assert emb.dims == ("time", "y", "x", "feature")
    # nothing dropped: ceil(50 / 4) x ceil(45 / 4)
    assert emb.shape == (3, 13, 12, 16)
    assert emb.dtype == np.float32
    # pixel centres at the stride: output pixel j covers input pixels [4j, 4j + 4)
    np.testing.assert_allclose(emb.x.values, cube.x.values[0] + (4 * np.arange(12) + 1.5) * 10)
    np.testing.assert_allclose(emb.y.values, cube.y.values[0] - (4 * np.arange(13) + 1.5) * 10)
    assert emb.rio.crs == cube.rio.crs
    import odc.geo.xr  # noqa: F401

    gbox = emb.odc.geobox
    assert gbox.shape == (13, 12)
    assert gbox.resolution.x == 40 and gbox.resolution.y == -40
    assert gbox.affine.c == pytest.approx(float(cube.x[0]) - 5)
    assert emb.attrs["model"] == "test-tiny"
    assert emb.attrs["weights_sha256"] == create_model("test-tiny").weights_sha256
    assert emb.attrs["xsky_version"] == xsky.__version__
    assert (emb.attrs["window"], emb.attrs["stride"]) == (16, 4)
    np.testing.assert_array_equal(emb.time.values, cube.time.values)


def test_nothing_computes_while_the_graph_is_built(cube):
    dask_cube = cube.chunk(time=1, y=20, x=20)
    with raise_if_dask_computes():
        emb = dask_cube.sky.embed("test-tiny")
        emb_pad = xsky.embed(dask_cube, "test-tiny", edge="pad", overlap=4)
        _ = emb.valid_fraction
    assert emb.chunks is not None and emb_pad.chunks is not None


def test_windows_match_a_direct_model_call(cube):
    """Interior window (1, 1) and the bottom-right edge window (reflect) against the model."""
    emb = xsky.embed(cube.chunk(y=13, x=11), "test-tiny").values
    x = np.stack([cube[b].values for b in BANDS], 1)  # (T, C, Y, X)
    valid = cube.valid.values
    t = 1
    win = _norm(x[t, :, 16:32, 16:32], valid[t, 16:32, 16:32])
    ref = _tiny(win)
    # NaN exactly at the cells without a valid pixel (from the input, not from the output)
    cells = valid[t, 16:32, 16:32].reshape(4, 4, 4, 4).any(axis=(1, 3))
    ref[~cells] = np.nan
    assert_close_nan(emb[t, 4:8, 4:8], ref, 1e-5)
    # the last windows start at 48 (y) and 32 (x); y is reflect-padded from 50 to 64
    xp = reflect_pad(reflect_pad(x[t], 0, 14, 1), 0, 3, 2)
    vp = reflect_pad(reflect_pad(valid[t], 0, 14, 0), 0, 3, 1)
    ref = _tiny(_norm(xp[:, 48:64, 32:48], vp[48:64, 32:48]))
    want = ref[0:1, :4].copy()
    # the last cells hold rows 48, 49 (of 50) and column 44 (of 45): padding never makes
    # a cell valid
    real = np.zeros((4, 16), bool)
    real[:2, :13] = valid[t, 48:50, 32:45]
    want[~real.reshape(1, 4, 4, 4).any(axis=(1, 3))] = np.nan
    assert_close_nan(emb[t, 12:13, 8:12], want, 1e-5)


@pytest.mark.parametrize("overlap", [0, 4])
@pytest.mark.parametrize("edge", ["reflect", "pad"])
def test_result_does_not_depend_on_chunking(cube, overlap, edge):
    base = xsky.embed(cube, "test-tiny", overlap=overlap, edge=edge).values
    chunkings = [
        {"time": 1, "y": 7, "x": 9},  # smaller than the window, not multiples of the stride
        {"time": 2, "y": 21, "x": 13},  # not multiples of the stride
        {"time": -1, "y": 50, "x": 45},  # one chunk
        {"time": 1, "y": 33, "x": 17},
    ]
    for ch in chunkings:
        other = xsky.embed(cube.chunk(ch), "test-tiny", overlap=overlap, edge=edge).values
        assert_close_nan(other, base, 1e-5)


def test_batch_size_does_not_change_results(cube):
    a = xsky.embed(cube, "test-tiny", batch_size=1).values
    b = xsky.embed(cube, "test-tiny", batch_size=1000).values
    assert_close_nan(a, b, 1e-5)  # 1.7e-6 is reached (batched convolutions round differently)


def test_overlap_keeps_window_centres(cube):
    """With overlap 4, window k reads [8k - 4, 8k + 12) and keeps output pixels 1..2."""
    one = cube.isel(time=[0]).copy(deep=True)
    one["valid"].values[0, 16:20, 28:32] = False  # output cell (4, 7): no valid pixel
    emb = xsky.embed(one, "test-tiny", overlap=4).values[0]
    x = np.stack([one[b].values[0] for b in BANDS])
    valid = one.valid.values[0]
    xp = reflect_pad(reflect_pad(x, 4, 0, 1), 4, 0, 2)
    vp = reflect_pad(reflect_pad(valid, 4, 0, 0), 4, 0, 1)
    # window (2, 3) starts at padded (16, 24)
    ref = _tiny(_norm(xp[:, 16:32, 24:40], vp[16:32, 24:40]))[1:3, 1:3]
    ref[0, 1] = np.nan
    # the NaN pattern too: only the cell without a valid pixel; 1e-5: float32 sums
    assert_close_nan(emb[4:6, 6:8], ref, 1e-5)


def test_edge_modes_differ_only_near_the_edges(cube):
    a = xsky.embed(cube, "test-tiny", edge="reflect").values
    b = xsky.embed(cube, "test-tiny", edge="pad").values
    # the windows touching the padded bottom rows / right columns differ ...
    assert np.nanmax(np.abs(a[:, 12:] - b[:, 12:])) > 1e-3
    # ... the interior windows do not (no padding involved)
    np.testing.assert_allclose(a[:, :12, :8], b[:, :12, :8], atol=1e-6)


def test_invalid_pixels_give_nan_and_valid_fraction(cube):
    ds = cube.copy(deep=True)
    valid = ds.valid.values.copy()
    valid[0, :16, :16] = False  # a whole window invalid on date 0
    valid[1, 0:2, 0:4] = False  # half of output pixel (0, 0) on date 1
    ds["B03"].values[2, 20, 20] = np.nan  # NaN counts as invalid
    ds["valid"] = (ds.valid.dims, valid)
    emb = xsky.embed(ds, "test-tiny")
    vals = emb.values
    assert np.isnan(vals[0, :4, :4]).all()
    frac = emb.valid_fraction.values
    assert frac[1, 0, 0] == pytest.approx(np.mean(valid[1, 0:4, 0:4]))
    expected = valid[2, 20:24, 20:24].copy()
    expected[0, 0] = False
    assert frac[2, 5, 5] == pytest.approx(expected.mean())
    # fraction 0 <=> NaN embedding
    np.testing.assert_array_equal(frac == 0, np.isnan(vals).all(axis=-1))
    assert not np.isnan(vals[frac > 0]).any()


def test_last_partial_output_pixel_counts_real_pixels_only(cube):
    emb = xsky.embed(cube, "test-tiny")
    # rows 48, 49 are real for output row 12; rows 50, 51 are padding
    frac = emb.valid_fraction.values[:, 12, 0]
    np.testing.assert_allclose(frac, cube.valid.values[:, 48:50, 0:4].mean(axis=(1, 2)))


def test_numpy_backed_and_dask_backed_input_agree(cube):
    a = xsky.embed(cube, "test-tiny").values
    b = xsky.embed(cube.chunk(time=1, y=16, x=16), "test-tiny").values
    assert_close_nan(b, a, 1e-5)


def test_dataarray_with_band_dim_and_aliases(cube):
    renamed = cube.rename({"B02": "blue", "B03": "green", "B04": "red", "B08": "nir"})
    a = xsky.embed(cube, "test-tiny").values
    b = xsky.embed(renamed, "test-tiny").values
    np.testing.assert_array_equal(a, b)
    da_ = cube[list(BANDS)].to_dataarray("band").assign_coords(valid=cube.valid)
    c = da_.sky.embed("test-tiny").values
    assert_close_nan(c, a, 1e-6)  # the same arrays: 0 is reached


@pytest.mark.parametrize("first", ["canonical", "alias"])
def test_a_canonical_band_beside_an_alias_of_it_is_the_one_embedded(cube, first):
    """``B02`` and ``blue`` (other values) in one input: the canonical spelling is used,
    whatever the variable order; two aliases without it are refused."""
    other = (cube.B02 * 0.5).assign_attrs(cube.B02.attrs)
    both = (xr.merge([other.rename("blue"), cube]) if first == "alias"
            else cube.assign(blue=other))
    assert list(both.data_vars).index("blue") == (0 if first == "alias" else len(cube.data_vars))
    a = xsky.embed(cube, "test-tiny").values
    np.testing.assert_array_equal(xsky.embed(both, "test-tiny").values, a)
    shifted = xsky.embed(cube.assign(B02=other), "test-tiny").values
    assert np.nanmax(np.abs(shifted - a)) > 1e-3  # the alias's values would show
    with pytest.raises(xsky.BandMismatchError, match=r"has both .* the same band 'B02'"):
        xsky.embed(both.rename(B02="B2"), "test-tiny")


def test_input_without_time_gives_yx_feature(cube):
    emb = xsky.embed(cube.isel(time=0), "test-tiny")
    assert emb.dims == ("y", "x", "feature")
    assert emb.valid_fraction.dims == ("y", "x")
    full = xsky.embed(cube, "test-tiny").values[0]
    np.testing.assert_allclose(emb.values, full, atol=1e-6)


def test_integer_dn_input_is_scaled_to_reflectance(cube):
    dn = cube.copy()
    for b in BANDS:
        dn[b] = (cube[b] * 10_000).round().astype("uint16")
        dn[b].attrs = {}
    a = xsky.embed(cube, "test-tiny").values
    b = xsky.embed(dn, "test-tiny").values
    assert_close_nan(b, a, 1e-3)  # DN rounding only (3.8e-4 is reached: 0.5e-4 per band)


def test_accessor_is_the_plain_function(cube):
    a = cube.sky.embed("test-tiny", batch_size=7).values
    b = xsky.embed(cube, "test-tiny", batch_size=7).values
    np.testing.assert_array_equal(a, b)
    tree = xr.DataTree.from_dict({"s2": cube})
    c = tree.sky.embed("test-tiny", batch_size=7).values
    np.testing.assert_array_equal(a, c)


def test_pooled_model_places_one_window_per_cell(window_mean):
    ds = synthetic_s2_cube(40, 36, 1, bands=("B02", "B03"), seed=5)
    emb = xsky.embed(ds.chunk(y=11, x=7), window_mean)
    assert emb.shape == (1, 5, 5, 2)  # ceil(40/8), ceil(36/8)
    x = ds.B02.values[0]
    # window of cell j: [8j - 4, 8j + 12), reflect-padded
    xp = reflect_pad(reflect_pad(x, 4, 4, 0), 4, 8, 1)
    for j, i in [(0, 0), (2, 3), (4, 4)]:
        ref = xp[8 * j:8 * j + 16, 8 * i:8 * i + 16].mean()
        assert float(emb.values[0, j, i, 0]) == pytest.approx(ref, abs=1e-5)
    other = xsky.embed(ds, window_mean).values
    np.testing.assert_allclose(emb.values, other, atol=1e-6)


def test_time_fusing_model_masks_invalid_dates(temporal_mean):
    ds = synthetic_s2_cube(16, 24, 4, bands=("B02", "B03"), seed=2, valid_fraction=0.6)
    emb = xsky.embed(ds.chunk(y=5, x=7, time=-1), temporal_mean)
    assert emb.dims == ("y", "x", "feature")
    vals = emb.values
    valid = ds.valid.values
    doy = ds.time.dt.dayofyear.values.astype(float)
    n = valid.sum(0)
    with np.errstate(invalid="ignore"):
        exp_b02 = np.where(valid, ds.B02.values, 0).sum(0) / n
        exp_doy = (valid * doy[:, None, None]).sum(0) / n
    m = n > 0
    np.testing.assert_allclose(vals[..., 0][m], exp_b02[m], rtol=1e-5)
    np.testing.assert_allclose(vals[..., 2][m], exp_doy[m], rtol=1e-5)
    assert np.isnan(vals[~m]).all()
    np.testing.assert_allclose(emb.valid_fraction.values, valid.mean(0))


def test_time_fusing_model_refuses_chunked_time(temporal_mean):
    ds = synthetic_s2_cube(16, 16, 4, bands=("B02", "B03")).chunk(time=2)
    with pytest.raises(xsky.ChunkingError, match=r"chunk\(time=-1\)"):
        xsky.embed(ds, temporal_mean)


def test_bfloat16_precision_stays_close(cube):
    a = xsky.embed(cube.isel(time=[0]), "test-tiny").values
    b = xsky.embed(cube.isel(time=[0]), "test-tiny", precision="bfloat16").values
    # bf16 keeps 8 mantissa bits: 0.0069 is reached on outputs up to 1.54; a float32 run
    # (0) or a broken cast (~1) both fail
    assert_close_nan(b, a, 0.02)
    assert np.nanmax(np.abs(a - b)) > 1e-5


def test_raw_shared_romania_file_matches_the_tutorial_sample(shared):
    raw = xr.open_dataset(shared / "data/s2_ts_romania/sentinel2_cube_subset_romania_10m.nc",
                          decode_coords="all")
    sample = xsky.tutorial.open_dataset("romania")
    day = sample.time.values[5]
    a = xsky.embed(raw.sel(time=[day]), "test-tiny", edge="pad").values
    b = xsky.embed(sample.sel(time=[day]).drop_vars("valid"), "test-tiny", edge="pad").values
    assert_close_nan(a, b, 1e-6)  # the sample is the raw file's values: 0 is reached


def test_two_embeddings_computed_together_keep_distinct_graph_keys(cube):
    import dask

    other = synthetic_s2_cube(50, 45, 3, valid_fraction=0.9, seed=4)
    ea, eb = xsky.embed(cube, "test-tiny"), xsky.embed(other, "test-tiny")
    assert ea.data.name != eb.data.name
    assert ea.valid_fraction.data.name != eb.valid_fraction.data.name
    va, vb, fa, fb = dask.compute(ea.data, eb.data, ea.valid_fraction.data,
                                  eb.valid_fraction.data)
    np.testing.assert_array_equal(va, ea.values)
    np.testing.assert_array_equal(vb, eb.values)
    np.testing.assert_array_equal(fa, ea.valid_fraction.values)
    np.testing.assert_array_equal(fb, eb.valid_fraction.values)
    assert np.nanmax(np.abs(va - vb)) > 0.1


def test_a_one_pixel_output_has_the_transform_of_its_larger_neighbours():
    import rioxarray  # noqa: F401

    rng = np.random.default_rng(3)

    def cube(n: int) -> xr.Dataset:
        data = rng.uniform(0.01, 0.5, (4, 2, n, n)).astype(np.float32)
        ds = xr.Dataset(
            {b: (("time", "y", "x"), data[i], {"units": "reflectance"})
             for i, b in enumerate(("B02", "B03", "B04", "B08"))},
            coords={"time": pd.date_range("2021-01-01", periods=2, freq="MS"),
                    "y": 5_000_005.0 - 10 * np.arange(n), "x": 400_005.0 + 10 * np.arange(n)})
        return ds.rio.write_crs("EPSG:32634")

    from ..conftest import WindowMean

    model = WindowMean(window=16, stride=16)  # one vector per 16 px window
    one = xsky.embed(cube(16), model)
    two = xsky.embed(cube(32), model)
    assert one.sizes["y"] == one.sizes["x"] == 1 and two.sizes["x"] == 2
    assert one.rio.transform() == two.rio.transform()
    assert tuple(one.rio.transform())[:6] == (160.0, 0.0, 400_000.0, 0.0, -160.0, 5_000_010.0)


def test_the_inputs_credit_and_licence_travel_with_the_embedding():
    cube = xsky.tutorial.open_dataset("romania").isel(time=slice(0, 2))
    assert "license" in cube.attrs or "licence" in cube.attrs or "attribution" in cube.attrs
    emb = xsky.embed(cube, "test-tiny")
    for key in ("attribution", "license", "licence", "source", "title"):
        if key in cube.attrs:
            assert emb.attrs[key] == cube.attrs[key]
    assert emb.attrs["model"] == "test-tiny"  # provenance is not overwritten by the input's
