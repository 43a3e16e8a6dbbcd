"""Units are unambiguous: digital numbers are never fed as reflectance (nor linear
backscatter as dB) without an error, and the output says which units were used."""

from __future__ import annotations

import json
from collections.abc import Mapping

import cftime
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import xsky
from xsky.exceptions import ArgumentError, CRSError, DimensionError, UnitsError
from xsky.models import EmbeddingModel, ModalitySpec, ModelSpec
from xsky.testing import raise_if_dask_computes, synthetic_s2_cube


@pytest.fixture(scope="module")
def cube() -> xr.Dataset:
    return synthetic_s2_cube(32, 32, 2, seed=2)


def _as_dn_float(ds: xr.Dataset) -> xr.Dataset:
    """What odc.stac / stackstac give for Planetary Computer items: float DN, no units."""
    out = ds.copy()
    for b in ("B02", "B03", "B04", "B08"):
        out[b] = (ds[b] * 10000).astype("float32")
        out[b].attrs = {}
    return out


class S1Mean(EmbeddingModel):
    """Pooled S1 model in dB: the window mean of each band."""

    def __init__(self) -> None:
        super().__init__()
        self.spec = ModelSpec(
            name="s1-mean", modalities=(ModalitySpec("s1", ("VV", "VH"), units="db"),),
            window=8, stride=8, feature_dim=2, output="pooled",
        )
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def embed_windows(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return inputs["s1"].mean(dim=(2, 3))


def _s1_cube(linear: bool, attrs: dict | None = None) -> xr.Dataset:
    rng = np.random.default_rng(0)
    ds = synthetic_s2_cube(32, 32, 1, bands=("VV", "VH"), seed=0)
    for b, mean_db in (("VV", -9.0), ("VH", -16.0)):
        db = (mean_db + 3.0 * rng.standard_normal(ds[b].shape)).astype("float32")
        ds[b] = (ds[b].dims, 10 ** (db / 10) if linear else db, attrs or {})
    return ds


# ------------------------------------------------------------------ integer + reflectance


def test_integer_values_claiming_reflectance_are_refused_before_compute(cube):
    # an integer cast of a float cube keeps attrs["units"]="reflectance"
    bad = cube.copy()
    for b in ("B02", "B03", "B04", "B08"):
        bad[b] = (cube[b] * 10000).astype("int16").assign_attrs(units="reflectance")
    with pytest.raises(UnitsError, match=r"'B02'.*int16.*reflectance.*units='dn'.*astype"):
        xsky.embed(bad, "test-tiny")
    with pytest.raises(UnitsError, match=r"units='reflectance'.*units='dn'"):
        xsky.embed(bad.assign({b: bad[b].drop_attrs() for b in ("B02", "B03", "B04", "B08")}),
                   "test-tiny", units="reflectance")
    # the fix named in the message works, and gives the reflectance result
    got = xsky.embed(bad, "test-tiny", units="dn").compute()
    want = xsky.embed(cube, "test-tiny").compute()
    np.testing.assert_allclose(got.values, want.values, atol=2e-3)


# ------------------------------------------------------------------ float DN, no units


@pytest.mark.parametrize("chunked", [False, True])
def test_float_dn_without_units_raise_inside_the_tasks(cube, chunked):
    dn = _as_dn_float(cube)
    if chunked:
        dn = dn.chunk({"time": 1, "y": 16, "x": 16})
    with raise_if_dask_computes():  # the check runs in the tasks, not at graph-build time
        emb = xsky.embed(dn, "test-tiny")
    with pytest.raises(UnitsError) as info:
        emb.compute()
    msg = str(info.value)
    assert "modality 's2'" in msg and "'B02'" in msg and "'reflectance'" in msg
    assert "1st-99th percentile" in msg and "units='dn'" in msg
    # the observed range is in the message: DN of the synthetic cube are in the thousands
    lo, hi = (float(v) for v in msg.split("percentile [")[1].split("]")[0].split(", "))
    assert 100 < lo < hi < 20000
    # and the fix works: the same numbers as the reflectance cube
    fixed = xsky.embed(dn, "test-tiny", units="dn").compute()
    want = xsky.embed(cube, "test-tiny").compute()
    np.testing.assert_allclose(fixed.values, want.values, atol=1e-5)


def test_a_few_outliers_do_not_raise(cube):
    noisy = cube.copy(deep=True)
    v = noisy["B02"].values
    v.reshape(-1)[:: 211] = 5000.0  # ~0.5 % saturated pixels
    emb = xsky.embed(noisy, "test-tiny").compute()
    assert np.isfinite(emb.values).any()


def test_reflectance_declared_as_dn_is_refused(cube):
    with pytest.raises(UnitsError, match=r"taken as 'dn'.*look like 'reflectance'.*"
                                         r"units='reflectance'"):
        xsky.embed(cube, "test-tiny", units="dn").compute()


def test_romania_sample_passes_the_check():
    ds = xsky.tutorial.open_dataset("romania").isel(time=slice(0, 6))
    emb = xsky.embed(ds, "test-tiny").compute()
    assert np.isfinite(emb.values).any()
    assert json.loads(emb.attrs["input_units"]) == {"s2": "reflectance"}


# ------------------------------------------------------------------ S1


def test_s1_linear_without_units_is_not_taken_as_db():
    lin = _s1_cube(linear=True)
    emb = xsky.embed(lin, S1Mean().set_ref(None))
    with pytest.raises(UnitsError, match=r"modality 's1'.*taken as 'db'.*no attrs\['units'\]"
                                         r".*look like 'linear'.*units='linear'"):
        emb.compute()
    # with the fix, the same as the dB cube (conversion lin -> dB in the kernel)
    db = _s1_cube(linear=False)
    a = xsky.embed(lin, S1Mean().set_ref(None), units="linear").compute()
    b = xsky.embed(db, S1Mean().set_ref(None)).compute()
    # float32 lin -> dB in the kernel against the cube's own dB: 9.5e-7 is reached
    np.testing.assert_allclose(a.values, b.values, rtol=0, atol=1e-5)
    assert json.loads(a.attrs["input_units"]) == {"s1": "linear"}


def test_s1_db_declared_linear_is_refused():
    db = _s1_cube(linear=False, attrs={"units": "linear"})
    with pytest.raises(UnitsError, match=r"taken as 'linear'.*attrs\['units'\]='linear'"
                                         r".*look like 'db'"):
        xsky.embed(db, S1Mean().set_ref(None)).compute()


def test_s1_dn_are_implausible_in_every_unit():
    db = _s1_cube(linear=False)
    amp = db.copy()
    for b in ("VV", "VH"):
        amp[b] = db[b] * 0 + 300.0 + 50 * np.random.default_rng(1).random(db[b].shape)
    with pytest.raises(UnitsError, match=r"fit none of the units.*scale, offset"):
        xsky.embed(amp, S1Mean().set_ref(None)).compute()


# ------------------------------------------------------------------ provenance, arguments


def test_provenance_records_the_input_units(cube):
    emb = xsky.embed(_as_dn_float(cube), "test-tiny", units={"s2": "dn"})
    assert json.loads(emb.attrs["input_units"]) == {"s2": "dn"}
    assert "units='dn'" in json.loads(emb.attrs["input_units_source"])["s2"]
    norm = json.loads(emb.attrs["normalization"])
    assert norm["s2"]["model_units"] == "reflectance" and "units" not in norm["s2"]


def test_unknown_units_key_lists_the_modalities(cube):
    with pytest.raises(ArgumentError, match=r"units= names modality 's3'.*modalities are 's2'"):
        xsky.embed(cube, "test-tiny", units={"s3": "dn"})


# ------------------------------------------------------------------ time


def test_integer_time_for_a_time_fusing_model_is_refused(cube, temporal_mean):
    bad = cube.assign_coords(time=np.arange(cube.sizes["time"]) * 86400)
    with pytest.raises(DimensionError, match=r"'time'.*int64.*xr.decode_cf.*assign_coords"):
        xsky.embed(bad, temporal_mean)
    with pytest.raises(DimensionError, match=r"float64.*xr.decode_cf"):
        xsky.embed(cube.assign_coords(time=[0.5, 1.5]), temporal_mean)


def test_cftime_dates_are_converted_or_refused(cube, temporal_mean):
    dates = pd.DatetimeIndex(cube.time.values)
    std = [cftime.DatetimeGregorian(d.year, d.month, d.day) for d in dates]
    got = xsky.embed(cube.assign_coords(time=std), temporal_mean).compute()
    want = xsky.embed(cube, temporal_mean).compute()
    np.testing.assert_allclose(got.values, want.values, atol=1e-6)
    noleap = [cftime.DatetimeNoLeap(d.year, d.month, d.day) for d in dates]
    with pytest.raises(DimensionError, match=r"'noleap' calendar.*convert_calendar"):
        xsky.embed(cube.assign_coords(time=noleap), temporal_mean)


# ------------------------------------------------------------------ lat/lon without a CRS


def test_lat_lon_dims_without_crs_must_be_degrees(cube):
    projected = cube.drop_vars("spatial_ref").rename(y="lat", x="lon")
    with pytest.raises(CRSError, match=r"'lat' ranges from .*e\+06.*outside \[-90, 90\].*"
                                       r"rio.write_crs"):
        xsky.embed(projected, "test-tiny")
    from xsky.geo import get_crs

    deg = projected.assign_coords(lat=50 - 0.001 * np.arange(32), lon=10 + 0.001 * np.arange(32))
    assert get_crs(deg).to_epsg() == 4326
    with pytest.raises(CRSError, match=r"'lon' ranges from 400"):
        get_crs(deg.assign_coords(lon=400 + np.arange(32.0)))
