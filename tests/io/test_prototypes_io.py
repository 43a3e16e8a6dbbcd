"""Persistence of geo-context prototypes: Zarr / NetCDF round trips and safety checks."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from tests.api.test_geo_prototypes import anisotropic, few_shot_labels, planted_cube
from xsky import ArgumentError, XSkyError, classify, geo_context, prototypes
from xsky.io.prototypes import _core, open_prototypes, save_prototypes
from xsky.io.store import NETCDF_ATTR, is_xsky_store


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
    assert set(back.data_vars) == {"prototypes", "centre", "n_samples", "n_pixels"}
    np.testing.assert_array_equal(back.prototypes.values, learned.prototypes.values)
    np.testing.assert_array_equal(back.centre.values, learned.centre.values)
    assert back.prototypes.dtype == np.float32 and back.centre.dims == ("region", "feature")
    assert NETCDF_ATTR not in back.attrs  # the store marker is not a prototypes attr
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
        "method": "centred",
        "restarts": 4,
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


# ---------------------------------------------------------------------------------------
# centred prototypes and files of earlier versions
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
def test_saved_centred_prototypes_classify_an_offset_cube_as_learned(tmp_path, suffix):
    emb, _, _ = planted_cube(seed=40)
    emb = anisotropic(emb, seed=4)
    learned = prototypes(emb, k=4)
    save_prototypes(learned, tmp_path / f"p{suffix}")
    back = open_prototypes(tmp_path / f"p{suffix}")
    np.testing.assert_array_equal(classify(emb, back).label.values, learned.assignment.values)
    np.testing.assert_array_equal(geo_context(emb, back).values, geo_context(emb, learned).values)


@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
def test_files_of_the_previous_version_without_centre_classify_with_plain_cosine(
    cube, learned, tmp_path, suffix
):
    emb, _, rid = cube
    # what the previous version wrote: no centre, no store marker, metric "cosine"
    old = _core(learned).drop_vars("centre")
    old.attrs = {k: v for k, v in old.attrs.items() if k not in ("method", "restarts")}
    old.attrs["metric"] = "cosine"
    path = tmp_path / f"old{suffix}"
    old.to_zarr(path, consolidated=False) if suffix == ".zarr" else old.to_netcdf(path)
    back = open_prototypes(path)
    assert "centre" not in back
    f = emb.values.astype("float64")
    f /= np.linalg.norm(f, axis=-1, keepdims=True)
    p = back.prototypes.values.astype("float64")[np.searchsorted(back.region.values, rid)]
    cos = np.einsum("yxd,yxkd->yxk", f, p)
    cl = classify(emb, back)
    np.testing.assert_array_equal(cl.label.values, cos.argmax(-1))
    np.testing.assert_allclose(cl.similarity.values, cos.max(-1), atol=1e-6)
    # such a file carries no marker, so xsky will not overwrite it
    with pytest.raises(ArgumentError, match="did not write"):
        save_prototypes(learned, path)
    assert "centre" not in open_prototypes(path)


# ---------------------------------------------------------------------------------------
# never lose data
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
def test_a_foreign_path_is_never_replaced(learned, tmp_path, suffix):
    target = tmp_path / f"mine{suffix}"
    if suffix == ".zarr":
        target.mkdir()
        (target / "notes.txt").write_text("precious")
    else:
        xr.Dataset({"a": ("x", [1.0, 2.0])}).to_netcdf(target)
    with pytest.raises(ArgumentError, match=r"xsky did not write .*remove it yourself"):
        save_prototypes(learned, target)
    with pytest.raises(ArgumentError, match="did not write"):
        save_prototypes(learned, target, overwrite=True)
    if suffix == ".zarr":
        assert (target / "notes.txt").read_text() == "precious"
        assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]
    else:
        with xr.open_dataset(target) as ds:
            np.testing.assert_array_equal(ds.a.values, [1.0, 2.0])
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no temporaries left


@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
def test_overwrite_replaces_only_xsky_stores_and_can_be_refused(cube, tmp_path, suffix):
    emb, _, _ = cube
    a = prototypes(emb, k=4, seed=0)
    b = prototypes(emb, k=3, seed=1)
    path = tmp_path / f"p{suffix}"
    save_prototypes(a, path)
    if suffix == ".zarr":
        assert is_xsky_store(path)
    save_prototypes(b, path)  # an xsky store: replaced (the default, as before)
    assert open_prototypes(path).sizes["prototype"] == 3
    with pytest.raises(ArgumentError, match=r"exists; pass overwrite=True"):
        save_prototypes(a, path, overwrite=False)
    assert open_prototypes(path).sizes["prototype"] == 3
    with pytest.raises(ArgumentError, match=r"overwrite must be True or False, got 'yes'"):
        save_prototypes(a, path, overwrite="yes")


@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
def test_an_interrupted_save_keeps_the_previous_prototypes(cube, tmp_path, monkeypatch, suffix):
    emb, _, _ = cube
    first = prototypes(emb, k=4, seed=0)
    path = tmp_path / f"p{suffix}"
    save_prototypes(first, path)
    writer = "to_zarr" if suffix == ".zarr" else "to_netcdf"
    real = getattr(xr.Dataset, writer)

    def broken(self, target, *args, **kwargs):
        real(self.isel(region=[0]), target, *args, **kwargs)  # a partial write, then...
        raise KeyboardInterrupt("interrupted")

    monkeypatch.setattr(xr.Dataset, writer, broken)
    with pytest.raises(KeyboardInterrupt):
        save_prototypes(prototypes(emb, k=3, seed=1), path)
    monkeypatch.undo()
    back = open_prototypes(path)
    np.testing.assert_array_equal(back.prototypes.values, first.prototypes.values)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporaries left
