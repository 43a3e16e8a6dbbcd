"""Galileo-nano through ``xsky.embed``: user-unit cubes (DN, dB, NaN for missing data, dates,
a CRS) must give the official per-patch and per-window poolings of the conformance fixture,
and the engine's invariants (chunking, laziness, CRS, provenance) must hold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import xsky
from xsky.exceptions import DimensionError
from xsky.geo import get_crs, write_crs

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
FIX = SHARED / "conformance" / "galileo"
WEIGHTS = SHARED / "data" / "weights_small" / "galileo_nano"
GROUPS = {"S1": ("VV", "VH"), "S2_RGB": ("B02", "B03", "B04"), "S2_Red_Edge": ("B05", "B06", "B07"),
          "S2_NIR_10m": ("B08",), "S2_NIR_20m": ("B8A",), "S2_SWIR": ("B11", "B12")}
GROUP_ORDER = ("S1", "S2_RGB", "S2_Red_Edge", "S2_NIR_10m", "S2_NIR_20m", "S2_SWIR", "NDVI")
# the fixture's tolerances for pooled outputs (README "Suggested tolerances")
POOLED = {"atol": 2e-5, "rtol": 1e-4}

pytestmark = pytest.mark.skipif(not (FIX / "data.npz").exists() or not WEIGHTS.exists(),
                                reason="needs ../shared/conformance/galileo and the weights")


def _load() -> tuple[dict[str, np.ndarray], dict]:
    data = np.load(FIX / "data.npz")
    meta = json.loads((FIX / "meta.json").read_text())
    return {k: data[k] for k in data.files}, meta


DATA, META = _load() if (FIX / "data.npz").exists() else ({}, {"cases": {}})


def _canon(band: str) -> str:
    return "B8A" if band == "B8A" else f"B{int(band[1:]):02d}"


def _window_cube(case: str, b: int, *, year: int, step: float = 1e-4) -> xr.Dataset:
    """Window ``b`` of a fixture case as a Dataset in user units, on an EPSG:4326 grid
    whose window centre is the fixture's (lat, lon); masked groups become NaN."""
    c = META["cases"][case]
    s2 = DATA[f"{case}__in_s2"][b]  # (H, W, T, C) DN
    h, w, t, _ = s2.shape
    lat, lon = (float(v) for v in DATA[f"{case}__in_latlon"][b])
    months = DATA[f"{case}__in_months"][b]
    time = pd.to_datetime([f"{year}-{m + 1:02d}-15" for m in months])
    coords = {"time": time, "y": lat + (np.arange(h)[::-1] - (h - 1) / 2) * step,
              "x": lon + (np.arange(w) - (w - 1) / 2) * step}
    ds = xr.Dataset(coords=coords)
    for i, band in enumerate(c["s2_bands_given"]):
        ds[_canon(band)] = (("time", "y", "x"), np.moveaxis(s2[..., i], -1, 0).copy())
        ds[_canon(band)].attrs["units"] = "dn"
    if c["s1_given"]:
        s1 = DATA[f"{case}__in_s1"][b]
        for i, band in enumerate(("VV", "VH")):
            ds[band] = (("time", "y", "x"), np.moveaxis(s1[..., i], -1, 0).copy())
            ds[band].attrs["units"] = "dB"
    mask = DATA[f"{case}__in_step_group_mask"][b]  # (T, 7), 1 = missing
    for ti in range(t):
        for gi, group in enumerate(GROUP_ORDER[:-1]):
            if mask[ti, gi]:
                for band in GROUPS[group]:
                    if band in ds:
                        ds[band][ti] = np.nan
    return write_crs(ds, "EPSG:4326")


def _options(case: str) -> dict:
    c = META["cases"][case]
    return {"weights": str(WEIGHTS), "patch_size": c["patch_size"], "window": 8,
            "ndvi": c["ndvi_group_present"], "location": c["location_group_present"]}


CASES = [(case, b, 2019 if case == "ro_rgbn" else 2020)
         for case in ("ro_rgbn", "ssl_full", "ssl_missing")
         for b in range(DATA[f"{case}__in_s2"].shape[0] if DATA else 0)]


@pytest.mark.parametrize(("case", "b", "year"), CASES)
def test_per_patch_embedding_matches_the_official_pooling(case: str, b: int, year: int) -> None:
    cube = _window_cube(case, b, year=year)
    emb = xsky.embed(cube, "galileo-nano", **_options(case))
    assert emb.dims == ("y", "x", "feature") and emb.shape == (2, 2, 128)
    want = DATA[f"{case}__out_pooled_per_patch"][b].reshape(2, 2, 128)
    np.testing.assert_allclose(emb.values, want, **POOLED)


@pytest.mark.parametrize(("case", "b", "year"), CASES)
def test_window_pooling_matches_the_official_average(case: str, b: int, year: int) -> None:
    cube = _window_cube(case, b, year=year)
    emb = xsky.embed(cube, "galileo-nano", pooling="window", **_options(case))
    assert emb.shape == (1, 1, 128)
    np.testing.assert_allclose(emb.values[0, 0], DATA[f"{case}__out_pooled"][b], **POOLED)


def test_s1_and_s2_in_a_datatree_give_the_same_result_as_one_dataset() -> None:
    cube = _window_cube("ssl_full", 0, year=2020)
    tree = xr.DataTree.from_dict({"s2": cube.drop_vars(["VV", "VH"]), "s1": cube[["VV", "VH"]]})
    a = xsky.embed(cube, "galileo-nano", **_options("ssl_full")).values
    b = xsky.embed(tree, "galileo-nano", **_options("ssl_full")).values
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_linear_backscatter_gives_the_same_embedding_as_db() -> None:
    cube = _window_cube("ssl_full", 1, year=2020)
    lin = cube.assign(VV=(10 ** (cube.VV / 10)).assign_attrs(units="linear"),
                      VH=(10 ** (cube.VH / 10)).assign_attrs(units="linear"))
    a = xsky.embed(cube, "galileo-nano", **_options("ssl_full")).values
    b = xsky.embed(lin, "galileo-nano", **_options("ssl_full")).values
    # float32 round trip dB -> linear -> dB: 1.2e-7 is reached
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_a_nan_masks_only_its_group_at_that_date() -> None:
    """One NaN in B11 at t=1 masks SWIR there (as both SWIR bands missing do), not the pixel
    and not the other groups."""
    cube = _window_cube("ssl_full", 2, year=2020)
    opts = _options("ssl_full")
    ref = xsky.embed(cube, "galileo-nano", **opts).values
    one = cube.copy(deep=True)
    one["B11"][1, 0, 0] = np.nan  # the top-left pixel carries the patch's token mask
    both = one.copy(deep=True)
    both["B12"][1, 0, 0] = np.nan
    a = xsky.embed(one, "galileo-nano", **opts).values
    b = xsky.embed(both, "galileo-nano", **opts).values
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert np.abs(a[0, 0] - ref[0, 0]).max() > 1e-4  # that patch changed
    assert np.isfinite(a).all()


def test_chunking_and_larger_cubes_do_not_change_the_windows() -> None:
    """A 16 x 24 cube of four fixture windows side by side: each 8 x 8 block of the result
    is that window's own embedding, whatever the chunks."""
    cubes = [_window_cube("ssl_full", b, year=2020) for b in range(3)]
    big = xr.concat([c.drop_vars(["y", "x"]) for c in cubes], dim="x")
    big = big.assign_coords(y=cubes[0].y.values, x=cubes[0].x.values[0]
                            + 1e-4 * np.arange(big.sizes["x"]))
    big = write_crs(big, "EPSG:4326")
    opts = {**_options("ssl_full"), "location": False}
    a = xsky.embed(big, "galileo-nano", **opts)
    b = xsky.embed(big.chunk({"x": 8, "y": 4}), "galileo-nano", **opts)
    np.testing.assert_allclose(a.values, b.values, atol=1e-5)
    for i, c in enumerate(cubes):
        own = xsky.embed(c, "galileo-nano", **opts).values
        np.testing.assert_allclose(a.values[:, 2 * i:2 * i + 2], own, atol=1e-5)


def test_result_is_lazy_georeferenced_and_records_its_provenance() -> None:
    cube = _window_cube("ssl_full", 0, year=2020).chunk()
    emb = xsky.embed(cube, "galileo-nano", **_options("ssl_full"))
    assert emb.chunks is not None
    assert get_crs(emb).to_epsg() == 4326
    assert emb.attrs["model"] == "galileo-nano"
    assert len(emb.attrs["weights_sha256"]) == 64
    np.testing.assert_allclose(emb.y.values, cube.y.values.reshape(2, 4).mean(1), rtol=0,
                               atol=1e-9)


def test_s1_and_s2_on_different_dates_ask_to_composite() -> None:
    cube = _window_cube("ssl_full", 0, year=2020)
    s1 = cube[["VV", "VH"]].assign_coords(time=cube.time + pd.Timedelta("3D"))
    tree = xr.DataTree.from_dict({"s2": cube.drop_vars(["VV", "VH"]), "s1": s1})
    with pytest.raises(DimensionError, match="composite"):
        xsky.embed(tree, "galileo-nano", **_options("ssl_full"))


def test_more_than_24_dates_ask_to_composite() -> None:
    cube = _window_cube("ro_rgbn", 0, year=2019)
    times = pd.DatetimeIndex(cube.time.values)
    long = xr.concat([cube.assign_coords(time=times + pd.DateOffset(years=i))
                      for i in range(4)], dim="time")
    with pytest.raises(DimensionError, match=r"at most 24.*composite"):
        xsky.embed(long, "galileo-nano", **_options("ro_rgbn"))


def test_time_split_into_chunks_is_merged_for_a_model_of_few_dates() -> None:
    """Composites of a time-chunked cube keep its time chunks; Galileo (<= 24 dates) merges
    them instead of asking the user to rechunk, with the same result."""
    cube = _window_cube("ssl_full", 0, year=2020)
    opts = _options("ssl_full")
    whole = xsky.embed(cube, "galileo-nano", **opts).values
    split = xsky.embed(cube.chunk({"time": 1}), "galileo-nano", **opts).values
    np.testing.assert_allclose(split, whole, atol=1e-6)


def test_provenance_names_each_weight_file_and_the_options() -> None:
    cube = _window_cube("ssl_full", 0, year=2020)
    emb = xsky.embed(cube, "galileo-nano", **{**_options("ssl_full"), "ndvi": False})
    files = json.loads(emb.attrs["weights_files"])
    assert files["encoder.pt"] == META["weights"]["encoder.pt"]
    assert json.loads(emb.attrs["model_options"])["ndvi"] is False
