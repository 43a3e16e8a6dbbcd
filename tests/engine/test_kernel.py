"""The block kernel with probe models whose output is known exactly.

An identity probe (stride 1) returns the model input itself, so the embedding shows what the
kernel fed the model: units converted, normalised, invalid pixels zeroed, cells without a
valid pixel NaN. Mean probes show the window placement, the edge padding and the HR grid.
"""

from __future__ import annotations

from collections.abc import Mapping

import dask
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import xsky
from xsky.engine.kernel import _pad_edges, _real_mask, assemble_block, run_block
from xsky.engine.plan import plan_axis
from xsky.models import EmbeddingModel, ModalitySpec, ModelSpec, wrap
from xsky.testing import synthetic_s2_cube

from ..conftest import reflect_pad


def _identity(bands, *, modality="s2", units="reflectance", normalize=None, window=8):
    return wrap(torch.nn.Identity(), bands=bands, window=window, stride=1,
                feature_dim=len(bands), modality=modality, units=units, normalize=normalize)


def _mean2(bands, **kw):
    """2 x 2 average: each output pixel is the mean of its four (model-input) pixels."""
    return wrap(torch.nn.AvgPool2d(2), bands=bands, window=8, stride=2,
                feature_dim=len(bands), **kw)


def _s1(ny=20, nx=18, nt=2, seed=0, units="linear"):
    rng = np.random.default_rng(seed)
    base = synthetic_s2_cube(ny, nx, nt, bands=("VV", "VH"), seed=seed)
    for b in ("VV", "VH"):
        lin = rng.uniform(0.001, 0.5, size=(nt, ny, nx)).astype("float32")
        base[b] = (base[b].dims, lin if units == "linear" else 10 * np.log10(lin),
                   {"units": units})
    return base


# ---- units, normalisation and fill -------------------------------------------------------


def test_the_model_gets_reflectance_normalised_with_the_specs_statistics():
    ds = synthetic_s2_cube(20, 18, 2, bands=("B02", "B03"), seed=1, valid_fraction=0.8)
    mean, std = (0.1, 0.2), (0.05, 0.5)
    emb = xsky.embed(ds, _identity(["B02", "B03"], normalize=(mean, std))).values
    valid = ds.valid.values
    for i, b in enumerate(("B02", "B03")):
        want = np.where(valid, (ds[b].values - mean[i]) / std[i], np.nan)
        np.testing.assert_allclose(emb[..., i], want, rtol=1e-6, atol=1e-6)


def test_digital_numbers_reach_a_reflectance_model_divided_by_10000():
    ds = synthetic_s2_cube(20, 18, 1, bands=("B02", "B03"), seed=2)
    dn = ds.copy()
    for b in ("B02", "B03"):
        dn[b] = (ds[b] * 10_000).round().astype("uint16")
        dn[b].attrs = {"nodata": 0}
    dn["B02"].values[0, 3, 4] = 0  # the stated no-data value: invalid
    emb = xsky.embed(dn, _identity(["B02", "B03"])).values
    want = np.stack([dn[b].values / np.float32(10_000) for b in ("B02", "B03")], -1)
    want[0, 3, 4] = np.nan
    np.testing.assert_allclose(emb, want, rtol=1e-6, atol=1e-7)
    # and a model that wants DN gets DN back from reflectance
    back = xsky.embed(ds, _identity(["B02", "B03"], units="dn")).values
    np.testing.assert_allclose(back, np.stack([ds[b].values * 1e4 for b in ("B02", "B03")], -1),
                               rtol=1e-5)


def test_sentinel2_dn_zero_is_no_data_without_a_nodata_attribute():
    ds = synthetic_s2_cube(20, 18, 1, bands=("B02", "B03"), seed=2)
    dn = ds.copy()
    for b in ("B02", "B03"):
        dn[b] = (ds[b] * 10_000).round().astype("uint16")
        dn[b].attrs = {}
    dn["B02"].values[0, 3, 4] = 0
    emb = xsky.embed(dn, _identity(["B02", "B03"]))
    assert np.isnan(emb.values[0, 3, 4]).all()
    assert float(emb.valid_fraction[0, 3, 4]) == 0.0


def test_linear_backscatter_reaches_a_db_model_in_db():
    lin = _s1()
    lin["VV"].values[1, 7, 8] = np.nan
    model = _identity(["VV", "VH"], modality="s1", units="db")
    emb = xsky.embed(lin, model).values
    want = np.stack([10 * np.log10(lin[b].values) for b in ("VV", "VH")], -1)
    want[1, 7, 8] = np.nan  # the whole pixel: every band is NaN there
    np.testing.assert_allclose(emb, want, rtol=1e-5, atol=1e-5)
    # dB input to the same model is used as it is
    db = lin.copy()
    for b in ("VV", "VH"):
        db[b] = (lin[b].dims, 10 * np.log10(lin[b].values), {"units": "db"})
    np.testing.assert_allclose(xsky.embed(db, model).values, want, rtol=1e-5, atol=1e-5)


def test_non_positive_linear_backscatter_reaches_the_model_as_an_invalid_zero():
    lin = _s1(16, 16, 1)
    lin["VV"].values[0, 0, 1] = 0.0  # no dB value
    lin["VH"].values[0, 4, 4] = -1e-4  # noise-removal residue
    lin["valid"].values[0, 6, 7] = False  # masked, with positive (convertible) values
    mean, std = (-10.0, -15.0), (5.0, 4.0)  # so that the fill (0) is not the dB of 1.0
    model = _mean2(["VV", "VH"], modality="s1", units="db", normalize=(mean, std))
    emb = xsky.embed(lin, model).values[0]
    db = np.stack([(10 * np.log10(np.clip(lin[b].values[0], 1e-30, None)) - mean[i]) / std[i]
                   for i, b in enumerate(("VV", "VH"))], -1)
    db[0, 1] = db[4, 4] = db[6, 7] = 0.0  # the whole pixel is filled, every band
    np.testing.assert_allclose(emb, db.reshape(8, 2, 8, 2, 2).mean(axis=(1, 3)), rtol=1e-5,
                               atol=1e-5)


def test_a_cell_of_non_positive_linear_backscatter_is_nan_with_fraction_zero():
    lin = _s1()
    lin["VV"].values[0, 2, 3] = 0.0
    lin["VH"].values[1, 5, 6] = -1e-4
    emb = xsky.embed(lin, _identity(["VV", "VH"], modality="s1", units="db"))
    vals, frac = emb.values, emb.valid_fraction.values
    assert np.isnan(vals[0, 2, 3]).all() and np.isnan(vals[1, 5, 6]).all()
    assert frac[0, 2, 3] == 0.0 and frac[1, 5, 6] == 0.0
    np.testing.assert_array_equal(np.isnan(vals).all(-1), frac == 0)


def test_invalid_pixels_reach_the_model_as_zero_after_normalisation():
    ds = synthetic_s2_cube(16, 16, 1, bands=("B02", "B03"), seed=3)
    valid = ds.valid.values.copy()
    valid[0, 0, 1] = False  # one of the four pixels of output cell (0, 0)
    valid[0, 4:6, 4:6] = False  # all four pixels of cell (2, 2)
    ds["valid"] = (ds.valid.dims, valid)
    mean, std = (0.3, 0.1), (0.2, 0.4)
    emb = xsky.embed(ds, _mean2(["B02", "B03"], normalize=(mean, std))).values[0]
    for i, b in enumerate(("B02", "B03")):
        norm = np.where(valid[0], (ds[b].values[0] - mean[i]) / std[i], 0.0)
        want = norm.reshape(8, 2, 8, 2).mean(axis=(1, 3))
        want[2, 2] = np.nan
        np.testing.assert_allclose(emb[..., i], want, rtol=1e-5, atol=1e-6)


# ---- edges and window placement ------------------------------------------------------------


@pytest.mark.parametrize("chunks", [None, {"y": 11, "x": 9}])
def test_edge_pad_feeds_missing_pixels_and_reflect_mirrors(window_mean, chunks):
    ds = synthetic_s2_cube(37, 29, 1, bands=("B02", "B03"), seed=4)
    src = ds.chunk(chunks) if chunks else ds
    x = ds.B02.values[0]
    # pooled windows of 16 every 8 pixels: cell j reads [8j - 4, 8j + 12)
    pads = ((4, 40 - 37 + 4), (4, 32 - 29 + 4))
    for edge, padded in (("reflect", np.pad(x, pads, mode="reflect")),
                         ("pad", np.pad(x, pads, constant_values=0.0))):
        emb = xsky.embed(src, window_mean, edge=edge).values[0, ..., 0]
        want = np.array([[padded[8 * j:8 * j + 16, 8 * i:8 * i + 16].mean() for i in range(4)]
                         for j in range(5)])
        np.testing.assert_allclose(emb, want, rtol=1e-5, atol=1e-6)


def test_dense_windows_at_every_block_edge_match_direct_calls():
    """Dense stride-2 windows of 8 with overlap 2: every output pixel equals the model on
    its own window of the reflect-padded image, whichever block it falls in."""
    ds = synthetic_s2_cube(26, 22, 1, bands=("B02",), seed=5)

    class Sums(torch.nn.Module):  # a non-local model: each output mixes the whole window
        def forward(self, x):
            s = x.sum(dim=(2, 3), keepdim=True)
            return torch.nn.functional.avg_pool2d(x, 2) + 0.01 * s

    model = wrap(Sums(), bands=["B02"], window=8, stride=2, feature_dim=1)
    emb = xsky.embed(ds.chunk(y=9, x=7), model, overlap=2).values[0, ..., 0]
    x = ds.B02.values[0]
    # core 4, margin 2: window k reads [4k - 2, 4k + 6) and keeps outputs 1..2 of 4
    xp = np.pad(x, ((2, 28 - 26 + 2), (2, 24 - 22 + 2)), mode="reflect")
    want = np.empty((13, 11))
    for ky in range(7):
        for kx in range(6):
            win = torch.from_numpy(xp[4 * ky:4 * ky + 8, 4 * kx:4 * kx + 8].copy())[None, None]
            out = Sums()(win)[0, 0, 1:3, 1:3].numpy()
            want[2 * ky:2 * ky + 2, 2 * kx:2 * kx + 2][: 13 - 2 * ky, : 11 - 2 * kx] = \
                out[: 13 - 2 * ky, : 11 - 2 * kx]
    np.testing.assert_allclose(emb, want, rtol=1e-5, atol=1e-5)


# ---- HR imagery: the 32x grid and the 255 scale -----------------------------------------------


class HRMean(EmbeddingModel):
    """Per Sentinel-2 pixel: the mean of the 32 x 32 HR pixels over it, per band (rgb255)."""

    def __init__(self, fuses_time: bool = False) -> None:
        super().__init__()
        self.spec = ModelSpec(
            name="hr-mean", modalities=(ModalitySpec("hr", ("red", "green", "blue"),
                                                     units="rgb255", grid_factor=32),),
            window=4, stride=1, feature_dim=3, fuses_time=fuses_time,
        )
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def embed_windows(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        x = inputs["hr"]
        if self.spec.fuses_time:
            x = x.mean(dim=2)
        return torch.nn.functional.avg_pool2d(x, 32)


def _hr(ny=6, nx=5, seed=1):
    s2 = synthetic_s2_cube(ny, nx, 1)
    f, res = 32, 10.0 / 32
    y = float(s2.y[0]) + 5 - res / 2 - res * np.arange(ny * f)
    x = float(s2.x[0]) - 5 + res / 2 + res * np.arange(nx * f)
    rng = np.random.default_rng(seed)
    data = {b: (("time", "y", "x"), rng.integers(1, 256, (1, ny * f, nx * f), dtype=np.uint8))
            for b in ("red", "green", "blue")}
    ds = xr.Dataset(data, coords={"time": pd.date_range("2021-05-01", periods=1), "y": y, "x": x})
    return ds.rio.write_crs(s2.rio.crs)


@pytest.mark.parametrize("fuses_time", [False, True])
def test_hr_pixels_are_averaged_onto_the_s2_grid_and_reflectance_is_scaled_by_255(fuses_time):
    hr = _hr()
    model = HRMean(fuses_time).set_ref(None)
    emb = xsky.embed(hr, model).values
    emb = emb if fuses_time else emb[0]
    assert emb.shape == (6, 5, 3)
    want = np.stack([hr[b].values[0].astype("float64").reshape(6, 32, 5, 32).mean((1, 3))
                     for b in ("red", "green", "blue")], -1)
    np.testing.assert_allclose(emb, want, rtol=1e-6)
    # the same imagery in reflectance (0..1) reaches the model as 0..255
    refl = hr.copy()
    for b in ("red", "green", "blue"):
        refl[b] = (hr[b].dims, hr[b].values.astype("float32") / 255, {"units": "reflectance"})
    emb_r = xsky.embed(refl, model).values
    np.testing.assert_allclose(emb_r if fuses_time else emb_r[0], want, rtol=1e-5)


# ---- several modalities fused ------------------------------------------------------------------


class TwoModalities(EmbeddingModel):
    """Time-fusing S2 + S1 probe: per pixel the mean over valid dates of B02 and of VV (dB)."""

    def __init__(self) -> None:
        super().__init__()
        self.spec = ModelSpec(
            name="two-mods", modalities=(ModalitySpec("s2", ("B02",)),
                                         ModalitySpec("s1", ("VV",), units="db")),
            window=4, stride=1, feature_dim=2, fuses_time=True,
        )
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def embed_windows(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        out = []
        for m in ("s2", "s1"):
            w = inputs[f"{m}_valid"].float()  # (N, T, W, W)
            out.append((inputs[m][:, 0] * w).sum(1) / w.sum(1).clamp(min=1))
        return torch.stack(out, 1)


def test_a_fused_pixel_is_nan_only_where_no_modality_has_a_valid_date():
    s2 = synthetic_s2_cube(12, 12, 2, bands=("B02",), seed=6)
    s1 = _s1(12, 12, 2, seed=7, units="db").drop_vars("VH")
    v2, v1 = s2.valid.values.copy(), s1.valid.values.copy()
    v2[:, :4, :] = False  # S2 never valid in rows 0..3
    v1[:, :2, :] = False  # S1 never valid in rows 0..1
    s2["valid"], s1["valid"] = (s2.valid.dims, v2), (s1.valid.dims, v1)
    emb = xsky.embed(xsky.stack(s2=s2, s1=s1), TwoModalities().set_ref(None))
    vals = emb.values
    assert np.isnan(vals[:2]).all()  # neither modality
    assert np.isfinite(vals[2:]).all()  # S1 alone is enough
    np.testing.assert_allclose(vals[2:4, :, 0], 0.0)  # S2 had nothing there: zero weight
    np.testing.assert_allclose(vals[4:, :, 0], s2.B02.values[:, 4:].mean(0), rtol=1e-5)
    np.testing.assert_allclose(vals[2:, :, 1], s1.VV.values[:, 2:].mean(0), rtol=1e-5)
    # the fraction averages the modalities' per-date fractions
    frac = emb.valid_fraction.values
    np.testing.assert_allclose(frac, (v2.mean(0) + v1.mean(0)) / 2, rtol=1e-6)


# ---- graph keys, precision and batches -----------------------------------------------------


def test_every_task_option_is_in_the_graph_key():
    ds = synthetic_s2_cube(20, 20, 1, seed=8)
    base = xsky.embed(ds, "test-tiny")
    assert xsky.embed(ds, "test-tiny").data.name == base.data.name  # deterministic
    others = [xsky.embed(ds, "test-tiny", precision="bfloat16"),
              xsky.embed(ds, "test-tiny", batch_size=3),
              xsky.embed(ds, "test-tiny", edge="pad"),
              xsky.embed(ds, "test-tiny", overlap=4),
              xsky.embed(ds, "test-tiny", window=20)]
    names = {o.data.name for o in others}
    assert base.data.name not in names and len(names) == len(others)


def test_bfloat16_autocast_runs_and_stays_near_float32():
    ds = synthetic_s2_cube(32, 32, 1, seed=9)
    a = xsky.embed(ds, "test-tiny").values
    b = xsky.embed(ds, "test-tiny", precision="bfloat16").values
    assert b.dtype == np.float32
    err = np.abs(a - b).max()
    # bf16 keeps 8 mantissa bits (relative steps of 2**-8 = 0.004): about 0.007 is reached
    # on outputs of size ~1.5; a float32 run (err 0) or a broken cast (err ~1) both fail
    assert 1e-5 < err < 0.02


@pytest.mark.parametrize("batch_size", [1, 3, 7])
def test_batches_that_do_not_divide_the_windows_give_the_same_result(batch_size, window_mean):
    ds = synthetic_s2_cube(37, 29, 2, bands=("B02", "B03"), seed=10)
    a = xsky.embed(ds, window_mean, batch_size=1000).values
    b = xsky.embed(ds.chunk(y=20), window_mean, batch_size=batch_size).values
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# ---- the wrong output shape, and the pieces on their own ----------------------------------------


class Returns(EmbeddingModel):
    """A dense model (window 16, stride 4, 16 features) returning whatever it is given."""

    def __init__(self, make) -> None:
        super().__init__()
        self.spec = ModelSpec(name="returns", modalities=(ModalitySpec("s2", ("B02", "B03")),),
                              window=16, stride=4, feature_dim=16)
        self.make = make
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def embed_windows(self, inputs: Mapping[str, torch.Tensor]):
        return self.make(inputs["s2"].shape[0])


@pytest.mark.parametrize("make", [lambda n: torch.zeros(n, 15, 4, 4),
                                  lambda n: torch.zeros(n, 16, 4, 4, 1),
                                  lambda n: torch.zeros(n, 16, 2, 2),
                                  lambda n: torch.zeros(n + 1, 16, 4, 4)],
                         ids=["features", "ndim", "size", "batch"])
def test_a_model_returning_the_wrong_shape_is_named(make):
    ds = synthetic_s2_cube(16, 16, 1, bands=("B02", "B03"))
    with pytest.raises(xsky.ModelError, match=r"model 'returns' returned \(\d+, .* for a batch "
                                              r"of \d+ windows; expected \(\d+, 16, 4, 4\)"):
        xsky.embed(ds, Returns(make).set_ref(None)).compute()


def test_a_model_returning_no_tensor_is_named():
    ds = synthetic_s2_cube(16, 16, 1, bands=("B02", "B03"))
    with pytest.raises(xsky.ModelError, match=r"returned list for a batch of 1 windows"):
        xsky.embed(ds, Returns(lambda n: [0.0] * n).set_ref(None)).compute()


@pytest.mark.parametrize("shape", [(15, 4, 4), (2, 16, 4, 4), (16, 2, 2)])
def test_a_wrapped_module_returning_the_wrong_shape_is_named(shape):
    class Wrong(torch.nn.Module):
        def forward(self, x):
            return torch.zeros((x.shape[0], *shape))

    model = wrap(Wrong(), bands=["B02", "B03", "B04", "B08"], window=16, stride=4,
                 feature_dim=16)
    ds = synthetic_s2_cube(16, 16, 1)
    with pytest.raises(xsky.ModelError, match=r"returned \(\d+, .*expected \(\d+, 16, 4, 4\)"):
        xsky.embed(ds, model).compute()


def test_a_pooled_model_must_return_one_vector_per_window(window_mean):
    class Dense(type(window_mean)):
        def embed_windows(self, inputs):
            return super().embed_windows(inputs)[:, :, None, None]

    ds = synthetic_s2_cube(16, 16, 1, bands=("B02", "B03"))
    with pytest.raises(xsky.ModelError, match=r"expected \(\d+, 2\)"):
        xsky.embed(ds, Dense().set_ref(None)).compute()


def test_run_block_needs_its_block_id():
    with pytest.raises(AssertionError, match="block_id"):
        run_block(np.zeros((1, 4, 4)), task=None)


def test_assemble_block_marks_nodata_nan_and_combines_the_valid_mask():
    a = np.array([[[1, 0], [3, 4]]], "uint16")
    b = np.array([[[5, 6], [7, 8]]], "uint16")
    valid = np.array([[[True, True], [False, True]]])
    buf, ok = assemble_block([a, b, valid], (0, None), True)
    assert buf.dtype == np.float32 and buf.shape == (1, 2, 2, 2)
    np.testing.assert_array_equal(buf[0, 0], [[1, np.nan], [3, 4]])
    np.testing.assert_array_equal(buf[0, 1], [[5, 6], [7, 8]])
    np.testing.assert_array_equal(ok[0], [[True, False], [False, True]])
    buf2, ok2 = assemble_block([a, b], (), False)  # no nodata: 0 is a value
    assert np.isfinite(buf2).all() and ok2.all()


def test_pad_edges_reflects_values_and_masks_or_pads_with_missing_pixels():
    buf = np.arange(2 * 3 * 4, dtype="float32").reshape(1, 2, 3, 4)
    valid = np.array([[[True, False, True, True]] * 3])
    same = _pad_edges(buf, valid, ((0, 0), (0, 0)), "reflect")
    assert same[0] is buf and same[1] is valid
    r, rv = _pad_edges(buf, valid, ((1, 0), (0, 2)), "reflect")
    np.testing.assert_array_equal(r[0, 0], reflect_pad(reflect_pad(buf[0, 0], 1, 0, 0), 0, 2, 1))
    np.testing.assert_array_equal(rv[0], reflect_pad(reflect_pad(valid[0], 1, 0, 0), 0, 2, 1))
    p, pv = _pad_edges(buf, valid, ((1, 0), (0, 2)), "pad")
    assert p.shape == (1, 2, 4, 6)
    assert np.isnan(p[0, :, 0]).all() and np.isnan(p[0, :, :, 4:]).all()
    np.testing.assert_array_equal(p[0, :, 1:, :4], buf[0])
    assert not pv[0, 0].any() and not pv[0, :, 4:].any()


def test_real_mask_marks_the_unpadded_pixels():
    p = plan_axis(37, 16, 8, "pooled", 0, 16)
    assert (p.pad_lo, p.n) == (4, 37)
    # the first block's data starts at padded 0: pixels 4 .. 40 are real
    m = _real_mask(p, 0, 0, 48, 1)
    np.testing.assert_array_equal(np.flatnonzero(m), np.arange(4, min(41, 48)))
    # and with a grid factor, each reference pixel is g input pixels
    m2 = _real_mask(p, 0, 0, 48 * 2, 2)
    np.testing.assert_array_equal(np.flatnonzero(m2), np.arange(8, 82))
    last = len(p.windows) - 1
    start = p.data_start[last]
    m3 = _real_mask(p, last, 0, sum(p.chunks) - start, 1)
    assert m3[: 4 + 37 - start].all() and not m3[4 + 37 - start:].any()


def test_the_kernel_computes_nothing_until_asked(window_mean):
    ds = synthetic_s2_cube(37, 29, 2, bands=("B02", "B03"), seed=11).chunk(y=10)
    from xsky.testing import raise_if_dask_computes

    with raise_if_dask_computes():
        emb = xsky.embed(ds, window_mean)
    (vals,) = dask.compute(emb.data)
    assert np.isfinite(vals).all()


def test_hr_blocks_borrow_halos_on_the_hr_grid():
    """Chunked HR input with overlapping windows: each chunk borrows a halo 32x the
    Sentinel-2 one, and the result is the unchunked one."""
    hr = _hr(9, 7, seed=3)
    model = HRMean().set_ref(None)
    want = np.stack([hr[b].values[0].astype("float64").reshape(9, 32, 7, 32).mean((1, 3))
                     for b in ("red", "green", "blue")], -1)
    for chunks in (None, {"y": 3 * 32, "x": 2 * 32}, {"y": 4 * 32, "x": 5 * 32}):
        src = hr.chunk(chunks) if chunks else hr
        emb = xsky.embed(src, model, overlap=1).values[0]
        np.testing.assert_allclose(emb, want, rtol=1e-6)


# ---- locations handed to models that take them (lead's engine: ModelSpec.location) ---------


class Where(EmbeddingModel):
    """Time-fusing probe (window 8, stride 2): every output pixel holds the (lat, lon) the
    kernel gave its window (``location="window"``) or its own pixel (``"pixel"``)."""

    def __init__(self, location: str) -> None:
        super().__init__()
        self.spec = ModelSpec(name="where", modalities=(ModalitySpec("s2", ("B02",)),),
                              window=8, stride=2, feature_dim=2, fuses_time=True,
                              location=location)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def embed_windows(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        ll = inputs["latlon"].float()
        if ll.ndim == 2:  # (N, 2): one location per window
            return ll[:, :, None, None].expand(-1, -1, 4, 4).clone()
        return torch.nn.functional.avg_pool2d(ll, 2)  # (N, 2, 8, 8) -> the 2x2 cell centres


def _lonlat(ds, iy, ix):
    from pyproj import Transformer

    y = ds.y.values[0] + iy * (ds.y.values[1] - ds.y.values[0])
    x = ds.x.values[0] + ix * (ds.x.values[1] - ds.x.values[0])
    return Transformer.from_crs(ds.rio.crs, "EPSG:4326", always_xy=True).transform(x, y)


@pytest.mark.parametrize("location", ["window", "pixel"])
def test_locations_follow_the_windows_when_they_overlap(location):
    if "location" not in ModelSpec.__dataclass_fields__:
        pytest.skip("this version has no ModelSpec.location")
    ds = synthetic_s2_cube(20, 20, 2, bands=("B02",), seed=12)
    emb = xsky.embed(ds.chunk(y=9, x=11), Where(location).set_ref(None), overlap=2).values
    # overlap 2 at stride 2: core 4, margin 2; window k reads pixels [4k - 2, 4k + 6) and
    # keeps output pixels 1..2 (input pixels [4k, 4k + 4))
    for oy, ox in [(0, 0), (3, 5), (9, 9), (4, 1)]:
        if location == "window":
            ky, kx = oy // 2, ox // 2
            lon, lat = _lonlat(ds, 4 * ky - 2 + 3.5, 4 * kx - 2 + 3.5)  # the window centre
        else:
            lon, lat = _lonlat(ds, 2 * oy + 0.5, 2 * ox + 0.5)  # the output pixel's centre
        np.testing.assert_allclose(emb[oy, ox], [lat, lon], atol=2e-5)
