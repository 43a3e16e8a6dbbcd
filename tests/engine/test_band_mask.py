"""The engine side of models that take partial bands, per-band validity, months and locations
(Galileo, Presto): what reaches ``embed_windows`` is checked value by value with a probe model
that echoes its inputs."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from pyproj import Transformer

import xsky
from xsky.exceptions import ArgumentError, BandMismatchError, DimensionError
from xsky.geo import write_crs
from xsky.models import EmbeddingModel, ModalitySpec, ModelSpec

S2_BANDS = ("B02", "B03", "B04", "B08")
F = 16


class Probe(EmbeddingModel):
    """Per pixel (stride 1): S2 values at t=0 (4), S2 band validity at t=0 (4), S1 band
    validity at t=0 (2, or -1 without S1), the month of t=0 and t=1 (2), lat, lon (2), and
    the number of valid S2 values over all dates and bands (1), S1 dB value of VV at t=0."""

    def __init__(self, location: str | None = "pixel", max_timesteps: int | None = 3) -> None:
        super().__init__()
        self.spec = ModelSpec(
            "probe",
            (ModalitySpec("s2", S2_BANDS, units="dn", partial=True),
             ModalitySpec("s1", ("VV", "VH"), units="db", partial=True)),
            window=4, stride=1, feature_dim=F, fuses_time=True, band_mask=True,
            location=location, shared_time=True, max_timesteps=max_timesteps,
            required_modalities=(),
        )
        self.seen: list[dict[str, tuple[int, ...]]] = []

    def embed_windows(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        self.seen.append({k: tuple(v.shape) for k, v in inputs.items()})
        any_key = "s2" if "s2" in inputs else "s1"
        n, _, t, w, _ = inputs[any_key].shape
        out = torch.zeros(n, F, w, w)
        if "s2" in inputs:
            out[:, 0:4] = inputs["s2"][:, :, 0]
            out[:, 4:8] = inputs["s2_band_valid"][:, :, 0].float()
            out[:, 14] = inputs["s2_band_valid"].float().sum(dim=(1, 2))
            months = inputs["s2_month"]
        else:
            months = inputs["s1_month"]
        if "s1" in inputs:
            out[:, 8:10] = inputs["s1_band_valid"][:, :, 0].float()
            out[:, 15] = inputs["s1"][:, 0, 0]
        else:
            out[:, 8:10] = -1.0
        out[:, 10] = months[:, :1, None].float()
        out[:, 11] = months[:, 1:2, None].float() if t > 1 else -1.0
        if "latlon" in inputs:
            ll = inputs["latlon"]
            assert ll.dtype == torch.float64
            out[:, 12:14] = ll.float() if ll.ndim == 4 else ll.float()[:, :, None, None]
        return out


def _cube(ny: int = 6, nx: int = 7, nt: int = 3, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    time = pd.to_datetime(["2020-03-05", "2020-04-20", "2020-06-01"][:nt])
    coords = {"time": time, "y": 5_300_000.0 - 10.0 * np.arange(ny) - 5,
              "x": 500_000.0 + 10.0 * np.arange(nx) + 5}
    ds = xr.Dataset(coords=coords)
    for b in ("B02", "B04"):
        ds[b] = (("time", "y", "x"), rng.uniform(0.02, 0.4, (nt, ny, nx)).astype("float32"))
    ds["VV"] = (("time", "y", "x"), rng.uniform(-20, -5, (nt, ny, nx)).astype("float32"))
    ds["VV"].attrs["units"] = "dB"
    ds["B04"][0, 1, 2] = np.nan  # one band missing at one date
    return write_crs(ds, "EPSG:32633")


def _embed(ds: xr.Dataset, model: Probe | None = None, **kw: object) -> xr.DataArray:
    return xsky.embed(ds, model or Probe(), **kw)


def test_absent_bands_arrive_invalid_and_present_ones_in_model_units() -> None:
    ds = _cube()
    out = _embed(ds).compute()
    f = out.transpose("y", "x", "feature").values
    np.testing.assert_allclose(f[..., 0], ds["B02"][0].values * 1e4, rtol=1e-6)  # refl -> DN
    b04 = np.nan_to_num(ds["B04"][0].values * 1e4, nan=0.0)
    np.testing.assert_allclose(f[..., 2], b04, rtol=1e-6)
    assert (f[..., 1] == 0).all() and (f[..., 3] == 0).all()  # B03, B08 absent: 0 ...
    assert (f[..., 5] == 0).all() and (f[..., 7] == 0).all()  # ... and invalid
    assert (f[..., 4] == 1).all()
    want_b04_valid = np.isfinite(ds["B04"][0].values).astype(float)
    np.testing.assert_array_equal(f[..., 6], want_b04_valid)
    # every present value is counted once per date; the NaN only removes itself
    assert f[1, 2, 14] == 2 * 3 - 1 and f[0, 0, 14] == 6
    np.testing.assert_allclose(f[..., 15], ds["VV"][0].values, rtol=1e-6)
    np.testing.assert_array_equal(f[..., 8], 1.0)
    np.testing.assert_array_equal(f[..., 9], 0.0)  # VH absent


def test_one_missing_band_keeps_the_pixel_valid() -> None:
    out = _embed(_cube()).compute()
    assert np.isfinite(out.values).all()
    assert float(out.valid_fraction.min()) == 1.0  # any valid band makes a pixel valid


def test_months_come_from_the_time_coordinate_zero_based() -> None:
    f = _embed(_cube()).compute().values
    np.testing.assert_array_equal(f[..., 10], 2)  # March
    np.testing.assert_array_equal(f[..., 11], 3)  # April


def test_pixel_locations_are_the_pixel_centres_in_wgs84() -> None:
    ds = _cube()
    f = _embed(ds).compute().transpose("y", "x", "feature").values
    xx, yy = np.meshgrid(ds.x.values, ds.y.values)
    lon, lat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform(xx, yy)
    np.testing.assert_allclose(f[..., 12], lat, atol=1e-5)
    np.testing.assert_allclose(f[..., 13], lon, atol=1e-5)


def test_window_locations_are_the_window_centres() -> None:
    ds = _cube(ny=8, nx=8)
    model = Probe(location="window")
    f = _embed(ds, model).compute().transpose("y", "x", "feature").values
    # windows of 4 px tile the 8 x 8 grid: the centre of the first lies between px 1 and 2
    cy = ds.y.values[1:3].mean()
    cx = ds.x.values[1:3].mean()
    lon, lat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform(cx, cy)
    np.testing.assert_allclose(f[:4, :4, 12], lat, atol=1e-5)
    np.testing.assert_allclose(f[:4, :4, 13], lon, atol=1e-5)
    assert abs(f[4, 4, 12] - f[0, 0, 12]) > 1e-5  # another window, another centre


def test_results_do_not_depend_on_chunking() -> None:
    ds = _cube(ny=9, nx=11)
    a = _embed(ds).compute()
    b = _embed(ds.chunk({"y": 4, "x": 3})).compute()
    np.testing.assert_allclose(a.values, b.values, atol=1e-6)


def test_building_the_graph_reads_no_data() -> None:
    ds = _cube().chunk({"y": 3})
    model = Probe()
    out = _embed(ds, model)
    assert model.seen == [] and out.chunks is not None


def test_s1_alone_is_enough_for_a_model_without_required_modalities() -> None:
    ds = _cube()[["VV"]]
    f = _embed(ds).compute().values
    np.testing.assert_array_equal(f[..., 8], 1.0)
    np.testing.assert_array_equal(f[..., 0], 0.0)


def test_datatree_nodes_with_different_dates_ask_to_composite() -> None:
    ds = _cube()
    s1 = ds[["VV"]].assign_coords(time=ds.time + pd.Timedelta("2D"))
    tree = xr.DataTree.from_dict({"s2": ds[["B02", "B04"]], "s1": s1})
    with pytest.raises(DimensionError, match="composite"):
        _embed(tree)


def test_datatree_nodes_with_the_same_dates_are_embedded_together() -> None:
    ds = _cube()
    tree = xr.DataTree.from_dict({"s2": ds[["B02", "B04"]], "s1": ds[["VV"]]})
    a = _embed(tree).compute()
    b = _embed(ds).compute()
    np.testing.assert_allclose(a.values, b.values, atol=1e-6)


def test_too_many_dates_ask_to_composite() -> None:
    with pytest.raises(DimensionError, match=r"at most 2.*composite"):
        _embed(_cube(), Probe(max_timesteps=2))


def test_input_without_any_model_band_is_refused() -> None:
    ds = _cube().rename({"B02": "foo", "B04": "bar", "VV": "baz"})
    with pytest.raises(BandMismatchError, match="holds no band"):
        _embed(ds)


def test_partial_bands_need_band_mask() -> None:
    with pytest.raises(ArgumentError, match="band_mask"):
        ModelSpec("bad", (ModalitySpec("s2", S2_BANDS, partial=True),), window=4, stride=1,
                  feature_dim=2)


def test_linear_backscatter_at_or_below_zero_is_an_invalid_band_not_a_pixel() -> None:
    ds = _cube()
    lin = 10 ** (ds["VV"] / 10)
    lin[0, 0, 0] = 0.0
    ds = ds.assign(VV=lin.assign_attrs(units="linear"))
    f = _embed(ds).compute().transpose("y", "x", "feature").values
    assert f[0, 0, 8] == 0.0 and f[0, 1, 8] == 1.0
    assert f[0, 0, 4] == 1.0  # the S2 bands of that pixel are still valid
    np.testing.assert_allclose(f[0, 1, 15], 10 * np.log10(float(lin[0, 0, 1])), rtol=1e-5)


def test_non_positive_linear_vv_beside_a_valid_vh_is_an_invalid_band_filled_with_zero() -> None:
    """The pixel stays valid through VH, so only the kernel's own "no dB value" rule keeps
    log10(0) = -inf away from the model: VV arrives invalid and as the fill value 0."""
    ds = _cube()
    rng = np.random.default_rng(4)
    vh = rng.uniform(-25, -12, ds["VV"].shape).astype("float32")
    lin_vv, lin_vh = 10 ** (ds["VV"] / 10), 10 ** (ds["VV"].copy(data=vh) / 10)
    lin_vv[0, 0, 0] = 0.0
    lin_vv[0, 2, 3] = -1e-4  # noise-removal residue
    ds = ds.assign(VV=lin_vv.assign_attrs(units="linear"), VH=lin_vh.assign_attrs(units="linear"))
    f = _embed(ds).compute().transpose("y", "x", "feature").values
    for y, x in ((0, 0), (2, 3)):
        assert f[y, x, 8] == 0.0 and f[y, x, 9] == 1.0  # VV invalid, VH valid
        assert f[y, x, 15] == 0.0  # the fill, never -inf or NaN
    assert np.isfinite(f[..., 15]).all()
    np.testing.assert_allclose(f[1, 1, 15], 10 * np.log10(float(lin_vv[0, 1, 1])), rtol=1e-5)


def test_bands_with_other_dims_are_named_when_the_first_model_band_is_absent() -> None:
    """A partial modality without its first band (B02): the error names the two bands
    compared (it was a KeyError on 'B02')."""
    ds = _cube()
    ds = ds.drop_vars("B02").assign(B03=ds.B04 * 1.1, B04=ds.B04.isel(time=0, drop=True))
    with pytest.raises(xsky.DimensionError,
                       match=r"band 'B04' of .* has dims \('y', 'x'\) but band 'B03' has "
                             r"\('time', 'y', 'x'\); all bands must share dims"):
        _embed(ds)
