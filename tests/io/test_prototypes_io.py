"""Persistence of geo-context prototypes: Zarr / NetCDF round trips and safety checks."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from tests.api.test_geo_prototypes import few_shot_labels, planted_cube
from xsky import XSkyError, classify, prototypes
from xsky.io.prototypes import open_prototypes, save_prototypes


@pytest.fixture(scope="module")
def cube():
    return planted_cube()


@pytest.fixture(scope="module")
def learned(cube):
    emb, _, _ = cube
    return prototypes(emb.chunk(y=7, x=13), k=4)


# ---------------------------------------------------------------------------------------
# persistence
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
def test_save_and_open_round_trip_exactly(cube, learned, tmp_path, suffix):
    path = tmp_path / f"protos{suffix}"
    save_prototypes(learned, path)
    back = open_prototypes(path)
    assert set(back.data_vars) == {"prototypes", "n_samples", "n_pixels"}
    np.testing.assert_array_equal(back.prototypes.values, learned.prototypes.values)
    assert back.prototypes.dtype == np.float32
    for c in ("region", "prototype", "lon_min", "lon_max", "lat_min", "lat_max"):
        np.testing.assert_array_equal(back[c].values, learned[c].values)
    expected = {
        "kind": "learned",
        "k": 4,
        "sample": 4096,
        "iterations": 30,
        "epsilon": 0.05,
        "momentum": 0.5,
        "seed": 0,
        "regions": "grid",
        "grid": "skysense-4096",
        "cell_size": (5.625, 2.8125),
        "source_model": "test-tiny",
        "source_weights_sha256": "ab" * 32,
    }
    for key, val in expected.items():
        assert back.attrs[key] == val, key
    assert back.attrs["xsky_version"] == learned.attrs["xsky_version"]
    # saving again what was read gives the same file content
    path2 = tmp_path / f"again{suffix}"
    save_prototypes(back, path2)
    xr.testing.assert_identical(open_prototypes(path2), back)
    # and the loaded prototypes map the cube as the originals did
    np.testing.assert_array_equal(classify(cube[0], back).label.values, learned.assignment.values)


def test_label_prototypes_are_computed_when_saved(tmp_path):
    emb, truth, _ = planted_cube(shared_centres=True, seed=15)
    lp = prototypes(emb.chunk(y=10), labels=few_shot_labels(emb, truth, 4))
    save_prototypes(lp, tmp_path / "lp.zarr")
    back = open_prototypes(tmp_path / "lp.zarr")
    np.testing.assert_allclose(back.prototypes.values, lp.prototypes.values, rtol=0, atol=0)
    np.testing.assert_array_equal(back.n_labelled.values, [[4, 4, 4, 4]])
    assert back.attrs["kind"] == "labels" and back.attrs["regions"] == "global"


def test_persistence_rejects_unknown_formats_and_foreign_files(learned, tmp_path):
    with pytest.raises(XSkyError, match=r"'\.zarr'"):
        save_prototypes(learned, tmp_path / "p.csv")
    xr.Dataset({"a": ("x", [1.0])}).to_netcdf(tmp_path / "other.nc")
    with pytest.raises(XSkyError, match="no 'prototypes' variable"):
        open_prototypes(tmp_path / "other.nc")
    with pytest.raises(XSkyError, match="no prototypes file"):
        open_prototypes(tmp_path / "missing.zarr")
