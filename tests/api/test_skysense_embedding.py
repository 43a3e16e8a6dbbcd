"""SkySense through the engine: multi-modal DataTrees, masking of dates, real S1+S2 data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rioxarray
import xarray as xr

import xsky
from xsky.testing import raise_if_dask_computes, synthetic_s2_cube

from ..conftest import assert_close_nan

S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")


def _s2(ny=32, nx=32, nt=3, seed=0, **kw):
    ds = synthetic_s2_cube(ny, nx, nt, bands=S2_BANDS, seed=seed, **kw)
    return ds


def _s1(ny=32, nx=32, nt=2, seed=4, res=10.0):
    ds = synthetic_s2_cube(ny, nx, nt, bands=("VV", "VH"), seed=seed, res=res)
    for b in ("VV", "VH"):
        ds[b] = ds[b] * 50 - 20
        ds[b].attrs = {"units": "db"}
    return ds


def _hr(s2, nt=1, seed=1):
    f = xsky.api.stacking.HR_FACTOR
    ny, nx = s2.sizes["y"] * f, s2.sizes["x"] * f
    rng = np.random.default_rng(seed)
    res = 10.0 / f
    y = float(s2.y[0]) + 5 - res / 2 - res * np.arange(ny)
    x = float(s2.x[0]) - 5 + res / 2 + res * np.arange(nx)
    data = {b: (("time", "y", "x"), rng.integers(0, 255, (nt, ny, nx), dtype=np.uint8))
            for b in ("red", "green", "blue")}
    ds = xr.Dataset(data, coords={"time": pd.date_range("2021-05-01", periods=nt), "y": y, "x": x})
    return ds.rio.write_crs(s2.rio.crs)


def test_stack_aligns_s1_onto_the_s2_grid_and_keeps_time_axes():
    s2, s1 = _s2(), _s1(16, 16, 2, res=20.0)
    tree = xsky.stack(s2=s2, s1=s1)
    assert set(tree.children) == {"s2", "s1"}
    s1a = tree["s1"].to_dataset()
    np.testing.assert_allclose(s1a.x.values, s2.x.values)
    np.testing.assert_allclose(s1a.y.values, s2.y.values)
    assert s1a.sizes["time"] == 2
    assert tree["s2"].sizes["time"] == 3
    assert s1a.valid.dtype == bool
    # bilinear on a 2x finer grid: interior values stay within the source range
    src = s1.VV.values
    assert np.nanmin(s1a.VV.values) >= src.min() - 1e-4
    assert np.nanmax(s1a.VV.values) <= src.max() + 1e-4


def test_stack_resolves_band_aliases():
    s2 = _s2().rename({"B02": "blue", "B8A": "nir08", "B11": "swir16"})
    s1 = _s1().rename({"VV": "vv"})
    tree = xsky.stack(s2=s2, s1=s1)
    assert {"B02", "B8A", "B11"} <= set(tree["s2"].data_vars)
    assert "VV" in tree["s1"].data_vars


def test_stack_checks_the_hr_grid_ratio():
    s2 = _s2(16, 16)
    tree = xsky.stack(s2=s2, hr=_hr(s2))
    assert tree["hr"].sizes["x"] == 16 * 32
    bad = _hr(s2).isel(x=slice(0, 256), y=slice(0, 256)).coarsen(x=2, y=2).mean()
    with pytest.raises(xsky.DimensionError, match=r"exactly 32x finer.*ratio of 16"):
        xsky.stack(s2=s2, hr=bad)
    with pytest.raises(xsky.XSkyError, match="at least one"):
        xsky.stack()


@pytest.fixture(scope="module")
def tree():
    return xsky.stack(s2=_s2(), s1=_s1())


def test_fused_embedding_layout_crs_and_laziness(tree):
    lazy = xsky.stack(s2=_s2().chunk(y=16, x=16), s1=_s1().chunk(y=16, x=16))
    with raise_if_dask_computes():
        emb = lazy.sky.embed("skysense-tiny")
    assert emb.dims == ("y", "x", "feature")
    assert emb.shape == (32, 32, xsky.models.get_model_spec("skysense-tiny").feature_dim)
    assert emb.rio.crs == tree["s2"].to_dataset().rio.crs
    assert emb.attrs["modalities"] == "s2,s1"
    np.testing.assert_allclose(emb.x.values, tree["s2"].x.values)
    vals = emb.values
    assert np.isfinite(vals).all()


@pytest.mark.parametrize("chunks", [{"y": 7, "x": 9}, {"y": 16, "x": 5}, {"y": 32, "x": 32}])
def test_fused_embedding_does_not_depend_on_chunking(tree, chunks):
    base = xsky.embed(tree, "skysense-tiny").values
    s2, s1 = tree["s2"].to_dataset(), tree["s1"].to_dataset()
    other = xsky.stack(s2=s2.chunk(chunks), s1=s1.chunk(chunks)).sky.embed("skysense-tiny")
    assert_close_nan(other.values, base, 1e-5)


#: per subset: 3 evenly spaced values of the (16, 16, 96) embedding and its sum, computed
#: once (xsky 0.1, torch CPU float32); they move if a modality's path through the engine
#: (alignment, units, normalisation, dates, fusion) changes
SUBSET_VALUES = {
    ("s2",): ([0.5998879671096802, 0.21146804094314575, 0.24409130215644836],
              -449.51273573189974),
    ("s1",): ([-0.4835253953933716, 0.6534784436225891, 0.7358217835426331],
              56.39866292849183),
    ("s2", "s1"): ([-0.011609405279159546, 0.45426714420318604, 0.5332446098327637],
                   -320.6523353110533),
    ("s2", "hr"): ([0.3237498998641968, 0.06962679326534271, 0.2820647358894348],
                   -774.0229215072468),
    ("hr",): ([-0.08643089234828949, 0.1208810955286026, 0.3693001866340637],
              -808.9749505696818),
}


@pytest.mark.parametrize("mods", list(SUBSET_VALUES))
def test_any_subset_of_modalities(mods):
    s2 = _s2(16, 16, 2)
    parts = {"s2": s2, "s1": _s1(16, 16), "hr": _hr(s2)}
    tree = xsky.stack(**{m: parts[m] for m in mods})
    emb = tree.sky.embed("skysense-tiny")
    assert emb.shape == (16, 16, 96)
    assert emb.attrs["modalities"] == ",".join(m for m in ("s2", "s1", "hr") if m in mods)
    vals = emb.values
    assert np.isfinite(vals).all()
    values, total = SUBSET_VALUES[mods]
    flat = vals.reshape(-1)
    # float32 CPU kernels reproduce to ~1e-6 relative; 1e-4 leaves room for other builds
    np.testing.assert_allclose(flat[np.linspace(0, flat.size - 1, 3).astype(int)], values,
                               rtol=1e-4, atol=1e-5)
    scale = float(np.abs(vals).astype("float64").sum())
    assert float(vals.astype("float64").sum()) == pytest.approx(total, abs=1e-5 * scale)
    # every modality given is used: changing its values changes the embedding
    for m in mods:
        other = parts[m].copy(deep=True)
        for b in other.data_vars:
            if b != "valid":
                other[b] = other[b].roll(x=3 * (32 if m == "hr" else 1), roll_coords=False)
        changed = xsky.stack(**{k: (other if k == m else parts[k]) for k in mods})
        assert np.abs(changed.sky.embed("skysense-tiny").values - vals).max() > 1e-3, m
    # with S2 present, the other modalities add to it rather than replace it
    if "s2" in mods and len(mods) > 1:
        alone = xsky.stack(s2=s2).sky.embed("skysense-tiny").values
        assert np.abs(alone - vals).max() > 1e-3


def test_a_fully_invalid_date_is_left_out_of_the_fusion():
    s2 = _s2(16, 16, 3)
    masked = s2.copy(deep=True)
    masked["valid"][1] = False  # a cloudy date
    masked["B04"][1] = 5.0  # its values must not matter
    a = xsky.embed(xsky.stack(s2=masked), "skysense-tiny").values
    b = xsky.embed(xsky.stack(s2=s2.isel(time=[0, 2])), "skysense-tiny").values
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_pixels_without_any_valid_observation_are_nan_and_reported():
    s2 = _s2(16, 16, 2)
    s2["valid"][:, :4, :4] = False
    emb = xsky.embed(xsky.stack(s2=s2), "skysense-tiny")
    vals = emb.values
    assert np.isnan(vals[:4, :4]).all()
    assert np.isfinite(vals[4:, 4:]).all()
    assert float(emb.valid_fraction[0, 0]) == 0.0
    assert float(emb.valid_fraction[10, 10]) == 1.0


def _with_random_ctpe(**kw):
    import torch

    model = xsky.models.create_model("skysense-tiny", **kw)
    with torch.no_grad():
        model.ctpe.copy_(torch.randn(model.ctpe.shape, generator=torch.Generator().manual_seed(0)))
    return model.set_ref(None)


def test_day_of_year_reaches_the_date_encoding():
    s2 = _s2(16, 16, 2)
    moved = s2.assign_coords(time=s2.time + np.timedelta64(40, "D"))
    with_ctpe, without = _with_random_ctpe(), _with_random_ctpe(use_ctpe=False)
    a = xsky.embed(xsky.stack(s2=s2), with_ctpe).values
    b = xsky.embed(xsky.stack(s2=moved), with_ctpe).values
    c = xsky.embed(xsky.stack(s2=moved), without).values
    d = xsky.embed(xsky.stack(s2=s2), without).values
    assert np.abs(a - b).max() > 1e-3  # dates change the embedding through ctpe ...
    np.testing.assert_allclose(c, d, atol=1e-6)  # ... and only through it


def test_leap_day_is_clamped_to_day_365():
    s2 = _s2(16, 16, 1)
    model = _with_random_ctpe()
    leap = s2.assign_coords(time=[np.datetime64("2020-12-31")])  # day 366
    last = s2.assign_coords(time=[np.datetime64("2021-12-31")])  # day 365
    before = s2.assign_coords(time=[np.datetime64("2021-12-30")])  # day 364
    a = xsky.embed(xsky.stack(s2=leap), model).values
    b = xsky.embed(xsky.stack(s2=last), model).values
    c = xsky.embed(xsky.stack(s2=before), model).values
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_s1_in_linear_units_is_converted_to_db():
    s1 = _s1(16, 16)
    lin = s1.copy()
    for b in ("VV", "VH"):
        lin[b] = 10 ** (s1[b] / 10)
        lin[b].attrs = {"units": "linear"}
    a = xsky.embed(xsky.stack(s1=s1), "skysense-tiny").values
    b = xsky.embed(xsky.stack(s1=lin), "skysense-tiny").values
    # float32 round trip dB -> linear -> dB: 1.2e-6 is reached
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_per_date_features_on_the_s2_grid(tree):
    emb = xsky.embed(tree, "skysense-tiny", temporal="per-date")
    assert emb.dims == ("time", "y", "x", "feature")
    assert emb.sizes["time"] == 3
    np.testing.assert_array_equal(emb.time.values, tree["s2"].time.values)
    s2 = tree["s2"].to_dataset()
    other = xsky.embed(s2.chunk(time=1, y=11, x=7), "skysense-tiny", temporal="per-date")
    assert_close_nan(other.values, emb.values, 1e-5)


# -- real data: SSL4EO-S12 sample 0000200, S2 L2A + S1 GRD, two dates each ---------------------

def _open_band(path: Path) -> xr.DataArray:
    return rioxarray.open_rasterio(path).squeeze("band", drop=True)


def _load_ssl4eo(root: Path) -> tuple[xr.Dataset, xr.Dataset]:
    s2_dates, s2_list = [], []
    for scene in sorted((root / "s2_l2a").iterdir()):
        ref = _open_band(scene / "B2.tif")
        bands = {}
        for b in S2_BANDS:
            da = _open_band(scene / f"{b[0]}{int(b[1:]) if b[1:].isdigit() else b[1:]}.tif")
            if da.shape != ref.shape:
                da = da.rio.reproject_match(ref, resampling=0)  # nearest: 20 m -> 10 m
            bands[b] = da.astype("uint16").assign_coords(x=ref.x, y=ref.y)
        ds = xr.Dataset(bands)
        ds["valid"] = ds["B02"] > 0
        s2_list.append(ds)
        s2_dates.append(pd.Timestamp(scene.name[:8]))
    s2 = xr.concat(s2_list, dim=pd.DatetimeIndex(s2_dates, name="time"))
    s1_dates, s1_list = [], []
    for prod in sorted((root / "s1_grd").iterdir()):
        vv, vh = _open_band(prod / "VV.tif"), _open_band(prod / "VH.tif")
        ds = xr.Dataset({"VV": vv, "VH": vh})
        for b in ("VV", "VH"):
            ds[b].attrs = {"units": "db"}
        s1_list.append(ds)
        s1_dates.append(pd.Timestamp(json.loads((prod / "metadata.json").read_text())
                                     .get("date", prod.name.split("_")[4][:8])[:10]
                                     if False else prod.name.split("_")[4][:8]))
    s1 = xr.concat(s1_list, dim=pd.DatetimeIndex(s1_dates, name="time"))
    return s2.rio.write_crs(ref.rio.crs), s1.rio.write_crs(vv.rio.crs)


@pytest.fixture(scope="module")
def ssl4eo(shared):
    return _load_ssl4eo(shared / "data/s1s2_ssl4eo_pair/0000200")


def test_real_s1_s2_pair_end_to_end(ssl4eo):
    s2, s1 = ssl4eo
    assert s2.sizes == {"time": 2, "y": 264, "x": 264}
    tree = xsky.stack(s2=s2, s1=s1)
    emb = tree.sky.embed("skysense-tiny")
    assert emb.dims == ("y", "x", "feature")
    assert emb.shape[:2] == (264, 264)
    assert emb.rio.crs.to_epsg() == 4326
    np.testing.assert_allclose(emb.x.values, s2.x.values)
    vals = emb.values
    frac = emb.valid_fraction.values
    np.testing.assert_array_equal(np.isnan(vals).all(-1), frac == 0)
    assert np.isfinite(vals).mean() > 0.99
    # chunking does not change the result on real data either
    other = xsky.stack(s2=s2.chunk(y=100, x=77), s1=s1.chunk(y=100, x=77)).sky.embed(
        "skysense-tiny")
    assert_close_nan(other.values, vals, 1e-5)


def test_official_weights_through_the_engine_match_a_direct_forward(shared):
    """``embed(tree, "skysense-huge", weights=dir)``: sizes come from the config beside the
    weights; the engine's normalisation, layout and dates reproduce ``model(s2=, s1=)``."""
    import torch

    from xsky.models.skysense import S1_BANDS, S2_BANDS, SkySense

    folder = shared / "conformance/skysense"
    rng = np.random.default_rng(0)
    norm2 = rng.standard_normal((1, 10, 3, 16, 16)).astype("float32")
    norm1 = rng.standard_normal((1, 2, 2, 16, 16)).astype("float32")
    s2 = _s2(16, 16, 3)
    s1 = _s1(16, 16, 2)
    spec = xsky.models.create_model("skysense-tiny").spec
    m2, m1 = spec.modality("s2"), spec.modality("s1")
    for i, b in enumerate(S2_BANDS):
        s2[b] = (("time", "y", "x"), norm2[0, i] * m2.std[i] + m2.mean[i], {"units": "dn"})
    for i, b in enumerate(S1_BANDS):
        s1[b] = (("time", "y", "x"), norm1[0, i] * m1.std[i] + m1.mean[i], {"units": "db"})
    s2["valid"][:] = True
    s1["valid"][:] = True
    emb = xsky.stack(s2=s2, s1=s1).sky.embed("skysense-huge", weights=folder,
                                             hyperparameters="beside").values

    model = SkySense.from_official(folder).eval()
    doy2 = torch.from_numpy(s2.time.dt.dayofyear.values[None].astype("int64"))
    doy1 = torch.from_numpy(s1.time.dt.dayofyear.values[None].astype("int64"))
    with torch.no_grad():
        ref = model(s2=torch.from_numpy(norm2), s1=torch.from_numpy(norm1), s2_doy=doy2,
                    s1_doy=doy1)[0].permute(1, 2, 0).numpy()
    assert emb.shape == ref.shape
    # 3.6e-6 is reached on outputs up to 6.3 (float32 kernels batched differently); 2e-5
    # leaves room for other BLAS builds while a normalisation or date slip moves it by 1e-2+
    np.testing.assert_allclose(emb, ref, atol=2e-5, rtol=0)
