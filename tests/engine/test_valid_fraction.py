"""valid_fraction: the share of valid input pixels under each output pixel, and its contract
with the embedding (fraction 0 <=> NaN), on axes that are not multiples of the stride.

The last output cell of an axis of length ``k*stride + r`` covers only ``r`` real pixels:
its fraction counts those, never the padding, and where none of them is valid the cell's
embedding is NaN.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

import xsky
from xsky.engine.graph import _cell_fraction, build_valid_fraction
from xsky.engine.plan import plan_axis
from xsky.testing import synthetic_s2_cube

BANDS = ("B02", "B03", "B04", "B08")


def reference_fraction(valid: np.ndarray, s: int) -> np.ndarray:
    """Per ``s`` x ``s`` cell: valid real pixels / real pixels (numpy, float64)."""
    t, h, w = valid.shape
    ny, nx = -(-h // s), -(-w // s)
    out = np.zeros((t, ny, nx))
    for j in range(ny):
        for i in range(nx):
            cell = valid[:, j * s:(j + 1) * s, i * s:(i + 1) * s]
            out[:, j, i] = cell.reshape(t, -1).mean(axis=1)
    return out


def _cube(ny: int, nx: int, seed: int = 0):
    ds = synthetic_s2_cube(ny, nx, 3, seed=seed, valid_fraction=0.85)
    valid = ds.valid.values.copy()
    y0, x0 = _last_cell(ny), _last_cell(nx)
    # date 0: the real pixels of the last row / column of cells are all invalid
    valid[0, y0:, :] = False
    valid[0, :, x0:] = False
    # date 1: exactly one real pixel of the bottom-right cell is valid
    valid[1, y0:, x0:] = False
    valid[1, ny - 1, nx - 1] = True
    ds["valid"] = (ds.valid.dims, valid)
    ds["B03"].values[2, ny - 1, 0] = np.nan  # a NaN band makes its pixel invalid
    return ds


def _last_cell(n: int, s: int = 4) -> int:
    """First pixel of the last output cell of an axis of ``n`` pixels."""
    return (n - 1) // s * s


def _expected_valid(ds) -> np.ndarray:
    finite = np.all([np.isfinite(ds[b].values) for b in BANDS], axis=0)
    return ds.valid.values & finite


@pytest.mark.parametrize(("ny", "nx"), [(49, 45), (50, 47), (51, 44), (48, 41)])
@pytest.mark.parametrize("chunks", [None, {"time": 1, "y": 13, "x": 9}],
                         ids=["numpy", "chunked"])
def test_fraction_counts_real_pixels_and_zero_means_nan(ny, nx, chunks):
    ds = _cube(ny, nx, seed=ny + nx)
    if chunks:
        ds = ds.chunk(chunks)
    emb = xsky.embed(ds, "test-tiny")
    vals, frac = emb.values, emb.valid_fraction.values
    want = reference_fraction(_expected_valid(ds), 4)
    assert frac.shape == want.shape == vals.shape[:3]
    assert frac.dtype == np.float32
    np.testing.assert_allclose(frac, want, rtol=1e-6, atol=0)
    # the edge cells exercise both sides of the contract
    assert frac[0, -1, :].max() == 0.0 and frac[0, :, -1].max() == 0.0
    assert frac[1, -1, -1] == pytest.approx(1.0 / ((ny - _last_cell(ny)) * (nx - _last_cell(nx))))
    nan = np.isnan(vals)
    assert (nan.all(axis=-1) == nan.any(axis=-1)).all()  # a cell is all NaN or all finite
    np.testing.assert_array_equal(nan.all(axis=-1), frac == 0)


def test_the_contract_holds_for_a_pooled_model_and_edge_pad(window_mean):
    ds = synthetic_s2_cube(41, 35, 2, bands=("B02", "B03"), seed=9, valid_fraction=0.7)
    valid = ds.valid.values.copy()
    valid[0, 40:, :] = False  # the last (one-pixel) row of cells
    ds["valid"] = (ds.valid.dims, valid)
    for edge in ("reflect", "pad"):
        emb = xsky.embed(ds.chunk(y=17, x=11), window_mean, edge=edge)
        frac = emb.valid_fraction.values
        np.testing.assert_allclose(frac, reference_fraction(valid, 8), rtol=1e-6)
        assert (frac[0, -1] == 0).all()
        np.testing.assert_array_equal(np.isnan(emb.values).all(-1), frac == 0)


def test_cell_fraction_of_one_block():
    rng = np.random.default_rng(0)
    a = rng.uniform(size=(2, 9, 6)).astype("float32")
    b = a.copy()
    b[0, 8, 5] = np.nan  # invalid through a NaN
    nod = a.copy()
    nod[1, 0, 0] = -9999.0  # invalid through its nodata value
    valid = rng.uniform(size=(2, 9, 6)) < 0.6
    frac = _cell_fraction(a, b, nod, valid, nodata=(None, None, -9999.0), has_valid=True, s=4)
    expect = valid.copy()
    expect[0, 8, 5] = expect[1, 0, 0] = False
    assert frac.shape == (2, 3, 2) and frac.dtype == np.float32
    np.testing.assert_allclose(frac, reference_fraction(expect, 4), rtol=1e-6)
    # without a valid array: only NaN and nodata make pixels invalid
    frac2 = _cell_fraction(a, b, nod, nodata=(None, None, -9999.0), has_valid=False, s=4)
    only = np.ones_like(valid)
    only[0, 8, 5] = only[1, 0, 0] = False
    np.testing.assert_allclose(frac2, reference_fraction(only, 4), rtol=1e-6)
    # the corner cell holds one real pixel (row 8, column 4..5 -> 2 pixels): 1/2 on date 0
    assert frac2[0, 2, 1] == pytest.approx(0.5)


@pytest.mark.parametrize(("n", "target"), [(45, 7), (45, 64), (49, 13), (33, 400), (64, 16)])
def test_lazy_fraction_matches_the_reference_for_any_chunking(n, target):
    rng = np.random.default_rng(n + target)
    valid = rng.uniform(size=(2, n, n + 3)) < 0.5
    x = rng.uniform(size=(2, n, n + 3)).astype("float32")
    py, px = plan_axis(n, 16, 4, target_chunk=target), plan_axis(n + 3, 16, 4, target_chunk=target)
    bands = [da.from_array(x, chunks=(1, 10, 10))]
    frac = build_valid_fraction(bands, da.from_array(valid, chunks=(2, 7, 9)), (None,), 4,
                                py.out_chunks, px.out_chunks)
    assert frac.chunks == ((1, 1), py.out_chunks, px.out_chunks)
    np.testing.assert_allclose(frac.compute(), reference_fraction(valid, 4), rtol=1e-6)
    no_mask = build_valid_fraction(bands, None, (None,), 4, py.out_chunks, px.out_chunks)
    np.testing.assert_array_equal(no_mask.compute(), np.ones((2, py.n_out, px.n_out)))
