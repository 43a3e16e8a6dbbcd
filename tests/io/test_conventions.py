"""Embedding stores other tools can read: geoemb/proj/spatial Zarr conventions with a CF
grid mapping, int8 quantisation per feature, STAC Items and STAC MLM model cards."""

from __future__ import annotations

import json
import warnings

import dask.array as da
import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from pyproj import CRS

import xsky
import xsky.models as xm
from xsky.api.export import model_card
from xsky.exceptions import ArgumentError, DataError, DimensionError
from xsky.geo import pixel_lonlat, write_crs
from xsky.io.conventions import (
    EMB_EXTENSION,
    GEOEMB_CONVENTION,
    NODATA,
    PROJ_CONVENTION,
    SPATIAL_CONVENTION,
    dequantize,
    grid_transform,
    quantize,
    stac_item,
    store_attrs,
    store_dataset,
)
from xsky.testing import raise_if_dask_computes

# field names of the published specs (geoemb Zarr convention v1, spatial v1, proj v1, STAC
# embeddings extension v0.0.1: the emb: fields an Item's properties may hold)
GEOEMB_FIELDS = {"geoemb:type", "geoemb:dimensions", "geoemb:model", "geoemb:source_data",
                 "geoemb:data_type", "geoemb:gsd", "geoemb:chip_layout", "geoemb:quantization",
                 "geoemb:spatial_layout", "geoemb:build_version", "geoemb:benchmark"}
GEOEMB_REQUIRED = {"geoemb:type", "geoemb:dimensions", "geoemb:model", "geoemb:source_data",
                   "geoemb:data_type"}
SPATIAL_FIELDS = {"spatial:dimensions", "spatial:bbox", "spatial:transform_type",
                  "spatial:transform", "spatial:shape", "spatial:registration"}
PROJ_FIELDS = {"proj:code", "proj:wkt2", "proj:projjson"}
EMB_ITEM_FIELDS = {"emb:runtime_parameters", "emb:preprocessing", "emb:postprocessing",
                   "emb:fit_for_use", "emb:spatial_coverage", "emb:uncertainty",
                   "emb:quantization", "emb:energy"}
EMB_QUANTIZATION_FIELDS = {"method", "original_dtype", "scale", "offset", "quantized_dtype",
                           "link"}


@pytest.fixture(scope="module")
def romania_emb() -> xr.DataArray:
    cube = xsky.tutorial.open_dataset("romania").isel(time=slice(0, 2))
    return xsky.embed(cube, "test-tiny").compute()


def _emb(ny=3, nx=4, nf=5, *, res=40.0, crs="EPSG:32633", seed=0, attrs=None):
    """A small (y, x, feature) embedding with xsky.embed-like attrs, north-up."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(ny, nx, nf)).astype("float32")
    da_ = xr.DataArray(
        values, dims=("y", "x", "feature"), name="embedding",
        coords={"y": 5_000_000 - res / 2 - res * np.arange(ny),
                "x": 500_000 + res / 2 + res * np.arange(nx), "feature": np.arange(nf)},
        attrs={"model": "test-tiny", "window": 16, "stride": 4, "output_kind": "dense",
               "modalities": "s2", "xsky_version": xsky.__version__, **(attrs or {})})
    return write_crs(da_, crs)


def _pystac():
    """pystac (the ``stac`` extra) with its validation and MLM/projection extensions."""
    pytest.importorskip("pystac")
    import pystac.extensions.mlm
    import pystac.extensions.projection
    import pystac.validation

    return pystac


def _write(ds: xr.Dataset, path) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing about serialisation either
        ds.to_zarr(path, consolidated=False)
    return xr.open_zarr(path, consolidated=False)


# -- Zarr store metadata ------------------------------------------------------------------


def test_a_plain_open_zarr_recovers_crs_transform_and_values(romania_emb, tmp_path):
    back = _write(store_dataset(romania_emb), tmp_path / "e.zarr")
    e = back["embedding"]
    assert e.rio.crs == romania_emb.rio.crs and e.rio.crs.to_epsg() == 3035
    assert e.rio.transform() == romania_emb.rio.transform()
    assert e.rio.transform().a == 40.0  # 10 m input x stride 4
    np.testing.assert_array_equal(e.values, romania_emb.values)
    ref = back["spatial_ref"].attrs
    assert CRS.from_wkt(ref["crs_wkt"]) == CRS.from_epsg(3035)
    assert CRS.from_wkt(ref["spatial_ref"]) == CRS.from_epsg(3035)
    assert e.attrs["grid_mapping"] == "spatial_ref"
    assert e.attrs["model"] == "test-tiny"  # provenance stays on the variable
    t = romania_emb.rio.transform()
    assert [float(v) for v in ref["GeoTransform"].split()] == list(t.to_gdal())


def test_group_attributes_use_the_published_field_names(romania_emb, tmp_path):
    _write(store_dataset(romania_emb), tmp_path / "e.zarr")
    attrs = json.loads((tmp_path / "e.zarr" / "zarr.json").read_text())["attributes"]
    uuids = [c["uuid"] for c in attrs["zarr_conventions"]]
    assert uuids == [GEOEMB_CONVENTION["uuid"], PROJ_CONVENTION["uuid"],
                     SPATIAL_CONVENTION["uuid"]]
    assert attrs["zarr_conventions"][0]["name"] == "geoemb:"
    geo = {k for k in attrs if k.startswith("geoemb:")}
    assert GEOEMB_REQUIRED <= geo <= GEOEMB_FIELDS
    assert {k for k in attrs if k.startswith("spatial:")} <= SPATIAL_FIELDS
    proj = {k for k in attrs if k.startswith("proj:")}
    assert proj == {"proj:code"}  # exactly one CRS form, as the proj: schema wants
    assert attrs["geoemb:type"] == "pixel" and attrs["geoemb:dimensions"] == 16
    assert attrs["geoemb:data_type"] == "float32" and attrs["geoemb:gsd"] == 40.0
    assert attrs["geoemb:model"] == "urn:xsky:model:test-tiny"
    assert attrs["geoemb:source_data"] == [
        "https://sentinel.esa.int/web/sentinel/missions/sentinel-2"]
    assert attrs["proj:code"] == "EPSG:3035"
    assert attrs["spatial:dimensions"] == ["y", "x"] and attrs["spatial:shape"] == [25, 25]
    assert attrs["spatial:transform"] == list(romania_emb.rio.transform())[:6]
    x0, y0 = romania_emb.x.values[0] - 20, romania_emb.y.values[0] + 20
    assert attrs["spatial:bbox"] == pytest.approx([x0, y0 - 1000, x0 + 1000, y0])


def test_store_attrs_take_the_model_and_source_hrefs_given():
    attrs = store_attrs(_emb(), model_href="https://example.org/test-tiny.json",
                        source_data=["https://example.org/items/a"])
    assert attrs["geoemb:model"] == "https://example.org/test-tiny.json"
    assert attrs["geoemb:source_data"] == ["https://example.org/items/a"]


def test_a_pooled_embedding_is_a_chip_with_its_layout_and_input_gsd():
    emb = _emb(res=2560.0, attrs={"output_kind": "pooled", "window": 256, "stride": 256})
    attrs = store_attrs(emb)
    assert attrs["geoemb:type"] == "chip"
    assert attrs["geoemb:chip_layout"] == {"layout_type": "regular_grid",
                                           "chip_size": [256, 256], "stride": [256, 256]}
    assert attrs["geoemb:gsd"] == 10.0  # 2560 m per chip / 256 px


def test_a_crs_without_an_epsg_code_is_written_as_wkt2(tmp_path):
    crs = CRS.from_proj4("+proj=laea +lat_0=47 +lon_0=21 +x_0=0 +y_0=0 +ellps=GRS80 +units=m")
    assert crs.to_epsg() is None
    back = _write(store_dataset(_emb(crs=crs.to_wkt())), tmp_path / "e.zarr")
    assert "proj:code" not in back.attrs
    assert CRS.from_wkt(back.attrs["proj:wkt2"]) == crs
    assert CRS.from_user_input(back["embedding"].rio.crs.to_wkt()) == crs


def test_a_single_pixel_store_reopens_with_the_output_resolution(tmp_path):
    full = _emb(ny=4, nx=4)
    # the grid as xsky.embed describes it: GeoTransform on the grid mapping
    one = full.rio.write_transform(full.rio.transform()).isel(y=[2], x=[1])
    assert one.rio.transform(recalc=True) == one.rio.transform()  # rioxarray's own reading
    back = _write(store_dataset(one), tmp_path / "one.zarr")
    want = [40.0, 0.0, 500_040.0, 0.0, -40.0, 4_999_920.0]
    assert list(back["embedding"].rio.transform())[:6] == want
    assert back.attrs["spatial:transform"] == want
    assert back.attrs["spatial:bbox"] == [500_040.0, 4_999_880.0, 500_080.0, 4_999_920.0]


def test_a_single_pixel_without_a_known_size_needs_resolution():
    one = _emb(ny=1, nx=1)
    attrs = store_attrs(one)  # the store is still written, without a transform
    assert "spatial:transform" not in attrs and attrs["spatial:shape"] == [1, 1]
    with pytest.raises(DimensionError, match="resolution="):
        grid_transform(one)
    t = grid_transform(one, resolution=40)
    assert (t.a, t.e, t.c, t.f) == (40.0, -40.0, 500_000.0, 5_000_000.0)


def test_resolution_is_checked_against_the_coordinates():
    strip = _emb(ny=1, nx=3)
    t = grid_transform(strip, resolution=(40, 40))
    assert (t.a, t.e, t.c, t.f) == (40.0, -40.0, 500_000.0, 5_000_000.0)
    with pytest.raises(ArgumentError, match="disagrees"):
        grid_transform(strip, resolution=30)


def test_a_south_up_grid_keeps_its_orientation():
    emb = _emb(ny=3, nx=2).isel(y=slice(None, None, -1))
    t = grid_transform(emb)
    assert t.e == 40.0 and t.f == 5_000_000.0 - 120.0


# -- int8 quantisation --------------------------------------------------------------------


def _array(values, dims=("y", "x", "feature")):
    return xr.DataArray(np.asarray(values, "float32"), dims=dims, name="embedding")


def test_quantize_hand_computed_values():
    # feature 0: 0..2 (offset 1, scale 1/127); feature 1: constant 5; feature 2: all NaN
    emb = _array([[[0.0, 5.0, np.nan], [1.0, 5.0, np.nan]], [[2.0, 5.0, np.nan],
                                                              [np.nan, 5.0, np.nan]]])
    q = quantize(emb)
    assert q.embedding.dtype == np.int8
    np.testing.assert_allclose(q.embedding_offset.values, [1.0, 5.0, 0.0])
    np.testing.assert_allclose(q.embedding_scale.values, [1 / 127, 1.0, 1.0], rtol=1e-7)
    assert q.embedding.values[..., 0].tolist() == [[-127, 0], [127, NODATA]]
    assert (q.embedding.values[..., 1] == 0).all()
    assert (q.embedding.values[..., 2] == NODATA).all()
    back = dequantize(q)
    np.testing.assert_array_equal(np.isnan(back.values), np.isnan(emb.values))
    np.testing.assert_array_equal(back.values[..., 1], 5.0)  # a constant is exact
    np.testing.assert_allclose(back.values[..., 0], emb.values[..., 0], atol=1e-6)


def test_dequantized_values_are_within_half_a_step():
    rng = np.random.default_rng(1)
    # features with very different ranges and offsets
    x = rng.normal(size=(30, 20, 6)) * [1e-3, 0.1, 1, 10, 100, 0.5] + [0, 5, -3, 40, 1e3, 0]
    x[rng.random(x.shape) < 0.05] = np.nan
    emb = _array(x)
    q = quantize(emb)
    back = dequantize(q)
    step = q.embedding_scale.values
    err = np.abs(back.values - emb.values)
    assert np.nanmax(err / (step / 2)) <= 1 + 1e-4
    np.testing.assert_array_equal(np.isnan(back.values), np.isnan(emb.values))
    # the whole int8 range is used by each feature
    ints = q.embedding.values
    assert (ints.max(axis=(0, 1)) == 127).all() and (ints[ints != NODATA].min() == -127)


def test_quantize_is_lazy_and_does_not_depend_on_the_chunking():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 24, 18, 7)).astype("float32")
    x[0, :3, :4] = np.nan
    dims = ("time", "y", "x", "feature")
    results = []
    for chunks in [(1, 24, 18, 7), (2, 5, 7, 3), (1, 11, 4, 7)]:
        emb = xr.DataArray(da.from_array(x, chunks=chunks), dims=dims, name="embedding")
        with raise_if_dask_computes():
            q = quantize(emb)
            back = dequantize(q)
        assert isinstance(q.embedding.data, da.Array) and isinstance(back.data, da.Array)
        results.append((q.embedding.values, q.embedding_scale.values, back.values))
    for ints, scale, back in results[1:]:
        np.testing.assert_array_equal(ints, results[0][0])
        np.testing.assert_array_equal(scale, results[0][1])
        np.testing.assert_array_equal(back, results[0][2])


def test_store_dataset_builds_lazily(romania_emb):
    lazy = romania_emb.chunk(y=10)
    with raise_if_dask_computes():
        ds = store_dataset(lazy, quantize=True)
    assert isinstance(ds.embedding.data, da.Array)


def test_a_quantized_store_reads_back_with_plain_xarray_and_open_embedding(romania_emb,
                                                                           tmp_path):
    emb = romania_emb.copy()
    emb[0, :2, :3] = np.nan  # missing pixels
    ds = store_dataset(emb, quantize=True)
    path = tmp_path / "q.zarr"
    plain = _write(ds, path)
    meta = json.loads((path / "embedding" / "zarr.json").read_text())
    assert meta["data_type"] == "int8"  # a quarter of the float32 bytes
    assert plain.attrs["geoemb:data_type"] == "int8"
    assert plain.attrs["geoemb:quantization"] == {
        "method": "per_feature_linear", "original_dtype": "float32", "quantized_dtype": "int8"}
    # CF _FillValue: a plain reader sees the missing pixels as NaN
    assert np.isnan(plain.embedding.values[0, :2, :3]).all()
    assert plain.embedding.rio.crs.to_epsg() == 3035
    back = xsky.open_embedding(path)
    assert back.dtype == np.float32 and back.name == "embedding"
    assert back.rio.crs.to_epsg() == 3035 and back.attrs["model"] == "test-tiny"
    assert not any(k.startswith("quantization") for k in back.attrs)
    step = plain.embedding_scale.values
    err = np.abs(back.values - emb.values)
    assert np.nanmax(err / (step / 2)) <= 1 + 1e-4
    np.testing.assert_array_equal(np.isnan(back.values), np.isnan(emb.values))
    # the raw int8 (no CF decoding) dequantizes to the same values
    raw = xr.open_zarr(path, consolidated=False, mask_and_scale=False)
    np.testing.assert_array_equal(dequantize(raw).values, back.values)


def test_quantize_with_given_scale_and_offset_clips_to_the_int8_range():
    emb = _array([[[-5.0, 0.5], [5.0, 0.0]]])
    q = quantize(emb, scale=0.01, offset=[0.0, 0.0])
    assert q.embedding.values.tolist() == [[[-127, 50], [127, 0]]]


def test_quantize_and_dequantize_errors_say_what_to_do():
    with pytest.raises(ArgumentError, match="floating-point"):
        quantize(_array([[[1.0]]]).astype("int16"))
    with pytest.raises(ArgumentError, match="both scale and offset"):
        quantize(_array([[[1.0]]]), scale=1.0)
    with pytest.raises(ArgumentError, match="positive"):
        quantize(_array([[[1.0]]]), scale=0.0, offset=0.0)
    q = quantize(_array([[[1.0, 2.0]]]))
    with pytest.raises(ArgumentError, match="already quantized"):
        quantize(q.embedding.astype("float32").assign_attrs(q.embedding.attrs))
    with pytest.raises(DataError, match="not in the Dataset"):
        dequantize(q.drop_vars("embedding_offset"))
    with pytest.raises(DataError, match="not quantized"):
        dequantize(_array([[[1.0]]]).to_dataset())
    with pytest.raises(ArgumentError, match="whole Dataset"):
        store_dataset(q.embedding)


# -- STAC ---------------------------------------------------------------------------------


def test_the_stac_item_reads_with_pystac_and_follows_the_embeddings_extension(romania_emb):
    pystac = _pystac()
    item_dict = stac_item(romania_emb, "out/romania.zarr", model_href="models/test-tiny.json")
    pystac.validation.validate_dict(item_dict, extensions=[])  # STAC core schema (offline)
    item = pystac.Item.from_dict(item_dict)
    assert item.id == "romania" and EMB_EXTENSION in item.stac_extensions
    props = item.properties
    assert {k for k in props if k.startswith("emb:")} <= EMB_ITEM_FIELDS
    run = props["emb:runtime_parameters"]
    assert run["model"] == "test-tiny" and run["stride"] == 4 and run["window"] == 16
    assert run["weights_sha256"] == romania_emb.attrs["weights_sha256"]
    pre = props["emb:preprocessing"]
    assert set(pre) == {"format", "expression"}
    assert pre["expression"]["s2"]["mean"] == json.loads(
        romania_emb.attrs["normalization"])["s2"]["mean"]
    assert props["data_type"] == "float32" and props["gsd"] == 40.0
    assert str(item.common_metadata.start_datetime)[:10] == "2015-08-01"
    assert str(item.common_metadata.end_datetime)[:10] == "2015-08-31"
    proj = pystac.extensions.projection.ProjectionExtension.ext(item)
    assert proj.code == "EPSG:3035" and proj.shape == [25, 25]
    assert proj.transform == list(romania_emb.rio.transform())[:6]
    asset = item.assets["embeddings"]
    assert asset.href.endswith("romania.zarr") and asset.media_type == "application/vnd+zarr"
    model_links = item.get_links("emb:model")
    assert len(model_links) == 1 and model_links[0].href.endswith("models/test-tiny.json")
    # the footprint holds the lon/lat of every pixel centre
    lon, lat = pixel_lonlat(romania_emb.x.values, romania_emb.y.values, romania_emb.rio.crs)
    w, s, e, n = item.bbox
    assert w < lon.min() and lon.max() < e and s < lat.min() and lat.max() < n
    assert e - w < 0.05 and n - s < 0.05  # 1 km at 45° N


def test_the_stac_item_of_a_quantized_store_lists_scale_and_offset_per_feature(romania_emb,
                                                                               tmp_path):
    pystac = _pystac()
    stored = _write(store_dataset(romania_emb, quantize=True), tmp_path / "q.zarr")
    item = stac_item(stored, tmp_path / "q.zarr")
    quant = item["properties"]["emb:quantization"]
    assert set(quant) <= EMB_QUANTIZATION_FIELDS
    assert quant["method"] == "per_feature_linear" and quant["quantized_dtype"] == "int8"
    np.testing.assert_array_equal(quant["scale"], stored.embedding_scale.values)
    np.testing.assert_array_equal(quant["offset"], stored.embedding_offset.values)
    assert item["properties"]["data_type"] == "int8"
    pystac.Item.from_dict(item)


def test_a_time_fused_embedding_needs_the_dates_for_its_item():
    pystac = _pystac()
    emb = _emb()
    with pytest.raises(ArgumentError, match="datetime="):
        stac_item(emb, "e.zarr")
    item = pystac.Item.from_dict(stac_item(emb, "e.zarr",
                                           datetime=("2020-01-01", "2020-12-31")))
    assert item.datetime is None and str(item.common_metadata.end_datetime)[:10] == "2020-12-31"


def test_the_model_card_is_an_mlm_item_with_the_models_inputs():
    pystac = _pystac()
    card_dict = model_card("galileo-nano")
    pystac.validation.validate_dict(card_dict, extensions=[])
    item = pystac.Item.from_dict(card_dict)
    mlm = pystac.extensions.mlm.MLMExtension.ext(item)
    card, spec = xm.get_model_card("galileo-nano"), xm.get_model_spec("galileo-nano")
    assert mlm.mlm_name == "galileo-nano" and mlm.framework == "PyTorch"
    assert mlm.tasks == ["similarity-search"] and mlm.pretrained is True
    assert [i.name for i in mlm.input] == ["s2", "s1"]
    assert mlm.input[0].bands == list(card.modalities[0].bands)
    assert mlm.input[0].input.dim_order == ["batch", "time", "channel", "height", "width"]
    assert card.modalities[0].mean is None  # Galileo normalises inside the model
    assert card_dict["properties"]["mlm:input"][0]["value_scaling"] is None
    assert mlm.output[0].result.shape == [-1, 128, 4, 4]
    assert mlm.batch_size_suggestion == spec.default_batch_size
    assert card_dict["properties"]["sci:citation"] == card.paper
    assert card_dict["properties"]["license"] == "MIT"
    weights = item.assets["encoder"]
    assert "mlm:model" in weights.roles and weights.href == card.weights[0].url
    assert weights.extra_fields["file:checksum"] == "1220" + card.weights[0].sha256


def test_a_model_card_of_an_untrained_model_says_so():
    pystac = _pystac()
    props = model_card("test-tiny")["properties"]
    assert props["mlm:pretrained"] is False and props["mlm:pretrained_source"] is None
    assert props["license"] == "Apache-2.0"
    s2 = xm.get_model_card("test-tiny").modalities[0]
    scaling = props["mlm:input"][0]["value_scaling"]  # (x - mean) / std, per band
    assert [v["type"] for v in scaling] == ["z-score"] * len(s2.bands)
    assert [v["mean"] for v in scaling] == list(s2.mean)
    assert [v["stddev"] for v in scaling] == list(s2.std)
    item = pystac.Item.from_dict(model_card("test-tiny"))
    assert any("mlm:model" in a.roles for a in item.assets.values())


def test_a_model_instance_card_has_its_own_sizes_and_parameter_count():
    net = xm.create_model("test-tiny", window=8)
    props = model_card(net)["properties"]
    assert props["mlm:hyperparameters"]["window"] == 8
    assert props["mlm:output"][0]["result"]["shape"] == [-1, 16, 2, 2]
    assert props["mlm:total_parameters"] == sum(p.numel() for p in net.parameters()) > 0


def test_an_unregistered_model_card_does_not_claim_how_it_was_trained():
    from ..conftest import WindowMean

    props = model_card(WindowMean())["properties"]
    assert "mlm:pretrained" not in props and props["license"] == "other"
    assert props["mlm:output"][0]["result"]["shape"] == [-1, 2]  # pooled: one vector
    assert props["mlm:total_parameters"] == 1


def test_the_preprocessing_says_when_the_model_normalises_itself():
    norm = {"s2": {"bands": ["B02"], "model_units": "dn", "mean": None, "std": None}}
    emb = _emb(attrs={"normalization": json.dumps(norm),
                      "input_units": json.dumps({"s2": "reflectance"})})
    step = stac_item(emb, "e.zarr", datetime="2020-01-01")["properties"]["emb:preprocessing"]
    s2 = step["expression"]["s2"]
    assert s2["input_units"] == "reflectance" and s2["model_units"] == "dn"
    assert s2["operation"].endswith("the model normalises inside")
