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
    # every node name the table lists (a dropped one would send that node nowhere)
    ("sentinel_2", "s2"), ("sentinel1", "s1"), ("Sentinel_1", "s1"), ("high_res", "hr"),
    ("aerial", "hr"), ("era5", "era5"), ("srtm", "srtm"), ("DEM", "srtm"),
    ("dynamic_world", "dw"), ("DynamicWorld", "dw"), ("dw", "dw"),
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


# ------------------------------------------------------------------ every alias, every rule

#: The catalogue names of the Sentinel-2 bands (STAC eo common names and the Earth Search /
#: Planetary Computer asset keys), written out here so that a changed table entry fails.
S2_ALIASES = {
    "coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05",
    "rededge2": "B06", "rededge3": "B07", "nir": "B08", "nir08": "B8A", "nir09": "B09",
    "cirrus": "B10", "swir16": "B11", "swir22": "B12", "scl": "SCL", "aot": "AOT", "wvp": "WVP",
    "rededge": "B05", "narrow_nir": "B8A", "nir_narrow": "B8A", "swir1": "B11", "swir2": "B12",
}


@pytest.mark.parametrize(("alias", "band"), sorted(S2_ALIASES.items()))
def test_every_sentinel2_alias_in_any_case_and_with_a_resolution_suffix(alias, band):
    s2 = modalities.get("s2")
    assert s2.aliases[alias] == band
    assert canonical_band(alias) == band
    assert canonical_band(alias.upper()) == band
    assert canonical_band(f" {alias.title()} ") == band
    assert canonical_band(f"{alias}_20m") == band


def test_the_alias_table_has_no_entry_beyond_the_documented_ones():
    assert dict(modalities.get("s2").aliases) == S2_ALIASES
    assert dict(modalities.get("s1").aliases) == {"vv": "VV", "vh": "VH", "hh": "HH",
                                                  "hv": "HV"}
    assert dict(modalities.get("hr").aliases) == {"r": "red", "g": "green", "b": "blue",
                                                  "n": "nir"}


@pytest.mark.parametrize(("name", "band"), [
    ("B1", "B01"), ("b01", "B01"), ("B8", "B08"), ("B08", "B08"), ("b8a", "B8A"), ("B8A", "B8A"),
    ("B10", "B10"), ("B11_20m", "B11"), ("b9_60m", "B09"), ("B02_10m", "B02"), ("AOT", "AOT"),
    ("wvp", "WVP"), ("Scl", "SCL"), ("scl_20m", "SCL"),
    # not Sentinel-2 names: returned unchanged (stripped)
    ("foo_20m", "foo_20m"), ("B2x", "B2x"), ("visual", "visual"), (" ndvi ", "ndvi"),
])
def test_sentinel2_number_rules(name, band):
    assert canonical_band(name, "s2") == band


@pytest.mark.parametrize(("name", "band"), [
    ("vv", "VV"), ("VH", "VH"), ("vv_db", "VV"), ("VV_dB", "VV"), ("vh-db", "vh-db"),
    ("vh_lin", "VH"), ("vv_linear", "VV"), ("gamma0_vv", "VV"), ("sigma0_vh", "VH"),
    ("beta0_hh", "HH"), ("gamma0_hv_db", "HV"), ("Sigma0_VV_linear", "VV"),
    ("gamma0_xx", "gamma0_xx"), ("vvv", "vvv"), ("db", "db"),
])
def test_sentinel1_name_rules(name, band):
    assert canonical_band(name, "s1") == band


@pytest.mark.parametrize("available", [["B02", "blue"], ["blue", "B02"],
                                       ["B02", "B2", "blue"], ["blue", "B02", "B2"]])
def test_a_canonical_name_next_to_its_aliases_wins_whatever_the_order(available):
    assert match_bands(available, ["B02"]) == {"B02": "B02"}


@pytest.mark.parametrize("available", [["blue", "B2"], ["B2", "blue"], ["b02", "blue"],
                                       ["B02_10m", "B2"]])
def test_two_aliases_of_one_band_without_its_canonical_name_are_refused(available):
    with pytest.raises(BandMismatchError, match=(
            f"has both {available[0]!r} and {available[1]!r}, which are the same band 'B02'")):
        match_bands(available, ["B02"])


def test_match_bands_ignores_non_strings_keeps_the_wanted_order_and_reports_what_was_found():
    assert match_bands([1, ("a",), "red", "blue", "B02"], ["B04", "B02"]) == {
        "B04": "red", "B02": "B02"}
    assert list(match_bands(["red", "blue"], ["B04", "B02"])) == ["B04", "B02"]
    assert match_bands(["B02", "B02"], ["B02"]) == {"B02": "B02"}
    with pytest.raises(BandMismatchError, match=(
            r"cube is missing band\(s\) \['B03', 'B08'\] needed by the model \(it needs "
            r"\['B02', 'B03', 'B08'\]\); found \['B02', 'B04'\]")):
        match_bands(["blue", "red"], ["B02", "B03", "B08"], what="cube")
    # unknown bands pass through unchanged, so they can still be matched exactly
    assert match_bands(["foo"], ["foo"]) == {"foo": "foo"}


def test_band_names_must_be_strings():
    with pytest.raises(ArgumentError, match="band names must be strings, got 3"):
        canonical_band(3)  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="band names must be strings, got None"):
        canonical_band(None, "not-a-modality")  # type: ignore[arg-type]


def test_conversion_factors_and_directions():
    cases = {("dn", "reflectance"): ("scale", 1e-4), ("reflectance", "dn"): ("scale", 1e4),
             ("reflectance", "rgb255"): ("scale", 255.0),
             ("rgb255", "reflectance"): ("scale", 1 / 255.0),
             ("linear", "db"): ("lin2db", 1.0), ("db", "linear"): ("db2lin", 1.0)}
    for (have, want), (kind, scale) in cases.items():
        c = conversion(have, want)
        assert (c.kind, c.scale) == (kind, pytest.approx(scale, rel=1e-15)), (have, want)
    x = np.array([0.5, 2.0])
    np.testing.assert_allclose(conversion("rgb255", "reflectance").apply(x * 255), x)
    np.testing.assert_allclose(conversion("db", "linear").apply(np.array([-10.0, 20.0])),
                               [0.1, 100.0])
    t = torch.tensor([0.0, -1.0, 1e-3])
    lin2db = conversion("linear", "db")
    np.testing.assert_array_equal(lin2db.valid(t).numpy(), [False, False, True])
    assert lin2db.apply(t)[2].item() == pytest.approx(-30.0)
    assert conversion("db", "linear").valid(t) is None
    with np.errstate(all="raise"):  # numpy input: no warning from log10(0)
        out = lin2db.apply(np.array([0.0, 1.0]))
    assert np.isneginf(out[0]) and out[1] == 0.0


def test_units_names_and_types():
    for bad in (None, 1, b"db", ["db"]):
        with pytest.raises(UnitsError, match="is not understood"):
            normalise_units(bad)
    with pytest.raises(UnitsError, match="what='furlongs'"):
        normalise_units("furlongs", what="what")
    assert {normalise_units(u) for u in ("decibels", "DB", " dn ")} == {"db", "dn"}


def test_plausible_bounds_decide_and_describe_themselves():
    from xsky.modalities import Plausible

    p = Plausible(p1=(-0.2, None), median=(0.0, 1.0), p99=(None, 2.0))
    assert p.fits(-0.2, 0.0, 2.0)  # bounds are inclusive
    assert p.fits(0.0, 1.0, 1.0)
    assert not p.fits(-0.21, 0.5, 1.0)
    assert not p.fits(0.0, -0.01, 1.0) and not p.fits(0.0, 1.01, 1.0)
    assert not p.fits(0.0, 0.5, 2.01)
    assert p.describe() == ("1st percentile >= -0.2, median in [0, 1], "
                            "99th percentile <= 2")
    assert Plausible().fits(-1e9, 0.0, 1e9) and Plausible().describe() == ""
    s2 = modalities.get("s2").plausible
    assert s2["reflectance"].fits(-0.1, 0.2, 1.5) and not s2["reflectance"].fits(0, 1500, 9000)
    assert s2["dn"].fits(0.0, 1500.0, 9000.0) and not s2["dn"].fits(0.0, 0.2, 1.5)
    s1 = modalities.get("s1").plausible
    assert s1["db"].fits(-25.0, -12.0, 3.0) and not s1["db"].fits(0.001, 0.05, 0.5)
    assert s1["linear"].fits(0.001, 0.05, 0.5) and not s1["linear"].fits(-25.0, -12.0, 3.0)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"name": "", "bands": ("A",)}, "non-empty string name"),
    ({"name": 3, "bands": ("A",)}, "non-empty string name"),
    ({"name": "x", "bands": ()}, "lists no bands"),
    ({"name": "x", "bands": ("A",), "int_units": "furlongs"}, "unknown units 'furlongs'"),
    ({"name": "x", "bands": ("A",), "float_units": "furlongs"}, "unknown units 'furlongs'"),
    ({"name": "x", "bands": ("A",), "grid_factor": 0}, "positive integer, got 0"),
    ({"name": "x", "bands": ("A",), "grid_factor": 1.5}, "positive integer, got 1.5"),
    ({"name": "x", "bands": ("A",), "plausible": {"furlongs": None}}, "plausible must map"),
    ({"name": "x", "bands": ("A",), "plausible": {"db": (0, 1)}}, "plausible must map"),
])
def test_bad_modalities_are_refused(kwargs, match):
    with pytest.raises(ArgumentError, match=match):
        Modality(**kwargs)


def test_a_modality_normalises_its_fields(monkeypatch):
    monkeypatch.setattr(modalities, "_TABLE", dict(modalities._TABLE))
    m = Modality("x", ["A", "B"], aliases={"Alpha": "A"}, node_names=("X-Node",),
                 grid_factor=2.0)
    assert m.bands == ("A", "B") and dict(m.aliases) == {"alpha": "A"}
    assert set(m.node_names) == {"x", "X-Node"} and m.canonical("ALPHA") == "A"
    assert m.canonical("b") == "B"  # the canonical names themselves, in any case
    # registering: the same modality again is fine, another one needs overwrite=True
    assert register_modality(m) is m and register_modality(m) is m
    other = Modality("x", ("C",))
    with pytest.raises(ArgumentError, match="'x' is already registered"):
        register_modality(other)
    assert register_modality(other, overwrite=True) is other and modalities.get("x") is other
    with pytest.raises(ArgumentError, match=r"needs an xsky\.modalities\.Modality, got dict"):
        register_modality({"name": "y"})  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="unknown modality None"):
        modalities.get(None)  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="unknown modality"):
        modalities.get(["s2"])  # type: ignore[arg-type]


#: Aliases of the auxiliary layers (ERA5, SRTM, Dynamic World), as the table defines them.
AUX_ALIASES = {
    "era5": {"t2m": "temperature_2m", "tp": "total_precipitation",
             "total_precipitation_sum": "total_precipitation"},
    "srtm": {"dem": "elevation", "height": "elevation"},
    "dw": {"label": "dynamic_world", "dw": "dynamic_world", "landcover": "dynamic_world"},
}


@pytest.mark.parametrize("name", sorted(AUX_ALIASES))
def test_auxiliary_layer_aliases(name):
    if name not in modalities.names():
        pytest.skip(f"no {name!r} modality in this version")
    mod = modalities.get(name)
    assert dict(mod.aliases) == AUX_ALIASES[name]
    for alias, band in AUX_ALIASES[name].items():
        assert canonical_band(alias.upper(), name) == band and band in mod.bands


def test_hr_and_s1_plausibility_bounds():
    hr = modalities.get("hr").plausible
    assert hr["rgb255"].fits(0.0, 90.0, 250.0)
    assert not hr["rgb255"].fits(0.0, 0.1, 0.9)  # reflectance taken as 0..255
    assert not hr["rgb255"].fits(0.0, 90.0, 300.0)
    assert hr["rgb255"].describe() == "1st percentile >= -0.5, 99th percentile in [1.5, 255.5]"
    assert hr["reflectance"].fits(0.0, 0.3, 0.9) and not hr["reflectance"].fits(0, 90, 250)
    s1 = modalities.get("s1").plausible
    assert s1["db"].describe() == "1st percentile in [-70, -1], 99th percentile <= 25"
    assert s1["linear"].describe() == ("1st percentile >= -0.05, median <= 1, "
                                       "99th percentile <= 300")


def test_a_modality_keeps_its_own_copy_of_the_plausibility_table():
    from xsky.modalities import Plausible

    table = {"db": Plausible(p1=(-70.0, -1.0))}
    m = Modality("x", ("A",), units=("db",), int_units="db", float_units="db", plausible=table)
    table.clear()
    assert set(m.plausible) == {"db"} and type(m.plausible) is dict


def test_s2_plausibility_bounds_are_the_documented_ones():
    # reflectance mostly in [-0.2, 2] (cloud and snow ~1.5); DN = reflectance x 10 000 with
    # the L2A -1000 offset: an error message quotes these, so they are part of the contract
    s2 = modalities.get("s2").plausible
    assert s2["reflectance"].describe() == "1st percentile >= -0.2, 99th percentile <= 2"
    assert not s2["reflectance"].fits(-0.3, 0.1, 0.5)  # e.g. the offset applied twice
    assert s2["dn"].describe() == "1st percentile >= -2000, 99th percentile in [2, 65535]"


def test_terrain_is_the_only_static_layer():
    # a static layer joins dated ones without a time axis; anything else must have dates
    assert [n for n in modalities.names() if modalities.get(n).static] == ["srtm"]

