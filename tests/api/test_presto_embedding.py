"""Presto through ``xsky.embed``: pixel time series given as cubes in user units (S2 DN,
S1 dB, ERA5 K/m, SRTM m/deg, Dynamic World classes, real dates, a CRS) give the official
pooled embeddings of the conformance fixture, pixel by pixel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import xsky
from xsky.geo import write_crs

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
FIX = SHARED / "conformance" / "presto"
WEIGHTS = SHARED / "data" / "weights_small" / "presto" / "default_model.pt"
POOLED = {"atol": 2e-5, "rtol": 1e-5}  # the fixture README's tolerance for out_pooled
RAW18 = ("VV", "VH", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11",
         "B12", "temperature_2m", "total_precipitation", "elevation", "slope", "NDVI")

pytestmark = pytest.mark.skipif(not (FIX / "data.npz").exists() or not WEIGHTS.exists(),
                                reason="needs ../shared/conformance/presto and the weights")

DATA = dict(np.load(FIX / "data.npz")) if (FIX / "data.npz").exists() else {}
META = json.loads((FIX / "meta.json").read_text()) if (FIX / "meta.json").exists() else {}


def _dates(months: np.ndarray, year: int = 2019) -> pd.DatetimeIndex:
    """Mid-month dates for a run of month indices (0 = January), a year later on each wrap."""
    out, y = [], year
    for i, m in enumerate(months):
        if i and m <= months[i - 1]:
            y += 1
        out.append(f"{y}-{int(m) + 1:02d}-15")
    return pd.to_datetime(out)


def _pixel(lat: float, lon: float, time: pd.DatetimeIndex) -> xr.Dataset:
    """A 2 x 2 grid whose top-left pixel centre is (lat, lon) (xsky needs 2 px per axis to
    know the pixel size); the series is repeated in all four pixels."""
    return xr.Dataset(coords={"time": time, "y": [lat, lat - 1e-4], "x": [lon, lon + 1e-4]})


def _spread(series: np.ndarray) -> np.ndarray:
    return np.broadcast_to(series.astype("float32")[:, None, None], (len(series), 2, 2)).copy()


def _romania_pixel(b: int) -> xr.Dataset:
    s2 = DATA["romania__in_s2"][b]  # (T, 4) DN
    missing = DATA["romania__in_step_missing"][b].astype(bool)
    lat, lon = (float(v) for v in DATA["romania__in_latlon"][b])
    ds = _pixel(lat, lon, _dates(np.arange(12)))
    for i, band in enumerate(("B02", "B03", "B04", "B08")):
        v = s2[:, i].astype("float32").copy()
        v[missing] = np.nan
        ds[band] = (("time", "y", "x"), _spread(v), {"units": "dn"})
    return write_crs(ds, "EPSG:4326")


def _algae_pixel(b: int) -> xr.Dataset:
    x = DATA["algae__in_x_raw"][b]  # (T, 18)
    lat, lon = (float(v) for v in DATA["algae__in_latlon"][b])
    ds = _pixel(lat, lon, _dates(DATA["algae__in_months"][b]))
    for i, band in enumerate(RAW18):
        if band in ("B09", "NDVI"):
            continue  # Presto drops B9 and recomputes NDVI
        if band in ("elevation", "slope"):
            ds[band] = (("y", "x"), np.full((2, 2), x[0, i], "float32"))
            continue
        units = {"VV": "dB", "VH": "dB"}.get(band, "dn" if band.startswith("B") else None)
        attrs = {"units": units} if units else {}
        ds[band] = (("time", "y", "x"), _spread(x[:, i]), attrs)
    ds["dynamic_world"] = (("time", "y", "x"), _spread(DATA["algae__in_dynamic_world"][b]))
    return write_crs(ds, "EPSG:4326")


@pytest.mark.parametrize("b", range(16))
def test_romania_pixels_match_the_official_pooled_embedding(b: int) -> None:
    emb = xsky.embed(_romania_pixel(b), "presto", weights=str(WEIGHTS), window=1)
    assert emb.dims == ("y", "x", "feature") and emb.shape == (2, 2, 128)
    np.testing.assert_allclose(emb.values[0, 0], DATA["romania__out_pooled"][b], **POOLED)


@pytest.mark.parametrize("b", [0, 7, 21, 63])
def test_algae_pixels_with_every_input_match_the_official_pooled_embedding(b: int) -> None:
    emb = xsky.embed(_algae_pixel(b), "presto", weights=str(WEIGHTS), window=1)
    np.testing.assert_allclose(emb.values[0, 0], DATA["algae__out_pooled"][b], **POOLED)


def test_each_pixel_is_embedded_on_its_own_whatever_the_window_and_chunks() -> None:
    """Every output pixel depends only on its own series: a 5 x 7 cube gives the same result
    for windows of 1, 2 and 4 pixels and for any chunking."""
    rng = np.random.default_rng(3)
    time = _dates(np.arange(6))
    coords = {"time": time, "y": 45.0 - 1e-4 * np.arange(5), "x": 25.0 + 1e-4 * np.arange(7)}
    ds = xr.Dataset(coords=coords)
    for band in ("B02", "B03", "B04", "B08"):
        ds[band] = (("time", "y", "x"), rng.uniform(200, 3000, (6, 5, 7)).astype("float32"),
                    {"units": "dn"})
    ds["B04"][2, 1, 3] = np.nan
    ds = write_crs(ds, "EPSG:4326")
    ref = xsky.embed(ds, "presto", weights=str(WEIGHTS), window=1).values
    for window, chunks in ((4, {"y": 2, "x": 3}), (2, {})):
        got = xsky.embed(ds.chunk(chunks) if chunks else ds, "presto", weights=str(WEIGHTS),
                         window=window).values
        np.testing.assert_allclose(got, ref, atol=1e-5)
    assert np.isfinite(ref).all()
    # the NaN changed its own pixel only
    clean = ds.copy(deep=True)
    clean["B04"][2, 1, 3] = 1000.0
    other = xsky.embed(clean, "presto", weights=str(WEIGHTS), window=1).values
    diff = np.abs(other - ref).max(axis=-1)
    assert diff[1, 3] > 1e-4 and np.delete(diff.ravel(), 1 * 7 + 3).max() < 1e-5
