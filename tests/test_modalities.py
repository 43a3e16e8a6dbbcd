"""The modality table (xsky.modalities): its facts, its conversions, and adding a modality."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import xsky
from xsky import modalities
from xsky.exceptions import ArgumentError, BandMismatchError, UnitsError
from xsky.modalities import (
    Modality,
    canonical_band,
    conversion,
    match_bands,
    modality_of_node,
    normalise_units,
    register_modality,
)
from xsky.testing import synthetic_s2_cube

# ------------------------------------------------------------------------------ facts


@pytest.mark.parametrize(("name", "modality", "canonical"), [
    ("B2", "s2", "B02"), ("b02", "s2", "B02"), ("B02_10m", "s2", "B02"), ("blue", "s2", "B02"),
    ("nir", "s2", "B08"), ("nir08", "s2", "B8A"), ("B8A_20m", "s2", "B8A"), ("swir16", "s2", "B11"),
    ("swir22_20m", "s2", "B12"), ("scl", "s2", "SCL"), ("B12", "s2", "B12"),
    ("vv", "s1", "VV"), ("VH_db", "s1", "VH"), ("gamma0_vv", "s1", "VV"), ("hh", "s1", "HH"),
    ("r", "hr", "red"), ("Blue", "hr", "blue"), ("nir", "hr", "nir"),
    ("whatever", "s2", "whatever"), (" B2 ", "nonexistent", "B2"),
])
def test_band_aliases_resolve_to_canonical_names(name, modality, canonical):
    assert canonical_band(name, modality) == canonical


def test_the_table_lists_the_sensor_bands():
    s2, s1, hr = (modalities.get(m) for m in ("s2", "s1", "hr"))
    assert s2.bands == ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09",
                        "B10", "B11", "B12")
    assert "SCL" in s2.extra_bands
    assert s1.bands[:2] == ("VV", "VH")
    assert hr.bands == ("red", "green", "blue", "nir")
    assert set(modalities.names()) >= {"s2", "s1", "hr"}
    assert s2.bands == xsky.io.S2_BANDS  # the io re-export reads the table


def test_match_bands_maps_aliases_and_reports_missing_and_duplicate_bands():
    assert match_bands(["blue", "B3", "red", "nir"], ["B02", "B03", "B04", "B08"]) == {
        "B02": "blue", "B03": "B3", "B04": "red", "B08": "nir"}
    # the exact canonical spelling wins over an alias
    assert match_bands(["B02", "blue"], ["B02"]) == {"B02": "B02"}
    with pytest.raises(BandMismatchError, match=r"missing band\(s\) \['B08'\]"):
        match_bands(["B02"], ["B02", "B08"])
    with pytest.raises(BandMismatchError, match="same band 'B02'"):
        match_bands(["blue", "B2"], ["B02"])
    assert match_bands(["vv", "VH_db"], ["VV", "VH"], "s1") == {"VV": "vv", "VH": "VH_db"}


@pytest.mark.parametrize(("node", "modality"), [
    ("s2", "s2"), ("Sentinel-2", "s2"), ("sentinel2", "s2"), ("S1", "s1"), ("sentinel-1", "s1"),
    ("hr", "hr"), ("HighRes", "hr"), ("landsat", None),
])
def test_datatree_node_names(node, modality):
    assert modality_of_node(node) == modality


def test_units_implied_by_the_stored_dtype_and_other_modality_facts():
    s2, s1, hr = (modalities.get(m) for m in ("s2", "s1", "hr"))
    assert (s2.default_units(True), s2.default_units(False)) == ("dn", "reflectance")
    assert (s1.default_units(True), s1.default_units(False)) == ("db", "db")
    assert (hr.default_units(True), hr.default_units(False)) == ("rgb255", "rgb255")
    assert (s2.min_int_bits, s1.min_int_bits, hr.min_int_bits) == (16, 16, 8)
    assert (s2.grid_factor, s1.grid_factor, hr.grid_factor) == (1, 1, 32)
    assert hr.grid_factor == xsky.api.stacking.HR_FACTOR
    from xsky.io.scaling import S2_NODATA

    assert s2.nodata == S2_NODATA == 0


@pytest.mark.parametrize(("text", "units"), [
    ("dB", "db"), ("decibel", "db"), (" Reflectance ", "reflectance"), ("1", "reflectance"),
    ("DN", "dn"), ("linear", "linear"), ("rgb255", "rgb255"),
])
def test_normalise_units(text, units):
    assert normalise_units(text) == units


def test_unknown_units_and_modalities_are_refused():
    with pytest.raises(UnitsError, match="units='furlongs' is not understood"):
        normalise_units("furlongs")
    with pytest.raises(ArgumentError, match=r"unknown modality 'sar'.*'hr', 's1', 's2'"):
        modalities.get("sar")
    with pytest.raises(ArgumentError, match="unknown units"):
        Modality("bad", ("A",), units=("furlongs",))
    with pytest.raises(ArgumentError, match="already registered"):
        register_modality(Modality("s2", ("B02",)))


# ------------------------------------------------------------------------ conversions

PAIRS = [("dn", "reflectance"), ("linear", "db"), ("reflectance", "rgb255")]


@pytest.mark.parametrize(("have", "want"), PAIRS)
def test_conversions_round_trip_on_numpy_xarray_and_torch(have, want):
    x = np.array([[0.01, 0.5], [2.0, 1234.5]], dtype=np.float64)
    there, back = conversion(have, want), conversion(want, have)
    np.testing.assert_allclose(back.apply(there.apply(x)), x, rtol=1e-12)
    xa = xr.DataArray(x, dims=("y", "x"))
    out = back.apply(there.apply(xa))
    assert isinstance(out, xr.DataArray)
    np.testing.assert_allclose(out.values, x, rtol=1e-12)
    t = torch.from_numpy(x.astype(np.float32))
    tt = there.apply(t)
    assert isinstance(tt, torch.Tensor) and tt.dtype == torch.float32
    np.testing.assert_allclose(back.apply(tt).numpy(), x, rtol=1e-5)
    np.testing.assert_allclose(tt.numpy(), there.apply(x), rtol=1e-5)


def test_conversion_values_and_validity():
    assert conversion("dn", "reflectance").scale == pytest.approx(1e-4)
    assert conversion("reflectance", "rgb255").scale == 255.0
    assert conversion("db", "db").kind == "identity"
    lin2db = conversion("linear", "db")
    x = np.array([100.0, 1.0, 0.0, -1.0])
    np.testing.assert_array_equal(lin2db.valid(x), [True, True, False, False])
    np.testing.assert_allclose(lin2db.apply(x[:2]), [20.0, 0.0])
    assert conversion("db", "linear").apply(np.array([10.0]))[0] == pytest.approx(10.0)
    assert conversion("dn", "reflectance").valid(x) is None
    # io.scaling uses the same formula
    from xsky.io.scaling import db_to_linear, linear_to_db

    db = linear_to_db(xr.DataArray(x))
    np.testing.assert_allclose(db.values[:2], [20.0, 0.0], atol=1e-6)
    assert np.isnan(db.values[2:]).all() and db.dtype == np.float32
    np.testing.assert_allclose(db_to_linear(db[:2]).values, [100.0, 1.0], rtol=1e-5)


@pytest.mark.parametrize(("have", "want"), [("db", "reflectance"), ("dn", "linear"),
                                            ("rgb255", "db")])
def test_conversion_refuses_an_impossible_pair(have, want):
    with pytest.raises(UnitsError, match="no conversion between them"):
        conversion(have, want, "s2")


# ------------------------------------------------------------------ adding a modality


@pytest.fixture
def landsat(monkeypatch):
    """A fake Landsat-8 modality, registered in one place; the table is restored after."""
    monkeypatch.setattr(modalities, "_TABLE", dict(modalities._TABLE))
    l8 = register_modality(Modality(
        "l8", ("B2", "B3", "B4", "B5"),
        aliases={"blue": "B2", "green": "B3", "red": "B4", "nir": "B5"},
        units=("reflectance",), int_units="reflectance", float_units="reflectance",
        node_names=("landsat", "landsat8"),
    ), overwrite=True)
    return l8  # monkeypatch puts the original table back after the test


def test_a_registered_modality_is_known_everywhere(landsat):
    assert modalities.get("l8") is landsat
    assert canonical_band("nir", "l8") == "B5"
    assert modality_of_node("Landsat8") == "l8"
    assert match_bands(["red", "blue", "green", "nir"], landsat.bands, "l8") == {
        "B2": "blue", "B3": "green", "B4": "red", "B5": "nir"}


def test_the_table_is_restored_after_a_test_that_registers_a_modality():
    assert "l8" not in modalities.names()


def _l8_cube(nt=2):
    ds = synthetic_s2_cube(32, 32, nt, bands=("blue", "green", "red", "nir"), seed=5)
    return ds


@pytest.mark.parametrize("as_tree", [False, True])
def test_embedding_with_a_registered_modality_equals_the_module(landsat, as_tree):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 8, kernel_size=4, stride=4)  # each output pixel: its 4x4 block
    # canonical names, so the test holds whether or not wrap() canonicalises for the modality
    model = xsky.models.wrap(conv, bands=list(landsat.bands), window=16, stride=4,
                             feature_dim=8, modality="l8")
    ds = _l8_cube()
    obj = xr.DataTree.from_dict({"landsat": ds}) if as_tree else ds
    emb = xsky.embed(obj, model)
    assert emb.dims == ("time", "y", "x", "feature")
    x = torch.from_numpy(np.stack([ds[b].values for b in ("blue", "green", "red", "nir")], 1))
    with torch.no_grad():
        want = conv(x).permute(0, 2, 3, 1).numpy()  # (time, y, x, feature)
    assert emb.shape == want.shape == (2, 8, 8, 8)
    np.testing.assert_allclose(emb.values, want, rtol=1e-5, atol=1e-5)
