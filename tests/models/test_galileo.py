"""Galileo against the official code: the public fixture, the input builder and the adapter.

The fixture (``../shared/conformance/galileo``) holds the official Galileo-nano outputs on
real S1/S2 windows (inputs in user units, the exact tensors passed to ``Encoder.forward``,
every token family and both poolings), and the official nano weights are in
``../shared/data/weights_small/galileo_nano``. Tolerances are the fixture README's.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import xsky.models as xm
import xsky.models.galileo as gal  # registers galileo-* (until it is bundled)
from xsky.exceptions import ArgumentError, CheckpointError, DataError
from xsky.models.galileo import (
    GALILEO_NANO_SHA256,
    GALILEO_PRESETS,
    S2_BANDS,
    SPACE_TIME_GROUPS,
    Galileo,
    GalileoEmbedder,
    galileo_inputs,
    normalizer_values,
)

CASES = ["ro_rgbn", "ssl_full", "ssl_missing"]
FAMILIES = ["space_time_x", "space_x", "time_x", "static_x"]
MASKS = ["space_time_mask", "space_mask", "time_mask", "static_mask"]
TOKENS = ["s_t_x", "sp_x", "t_x", "st_x"]
TOKEN_MASKS = ["s_t_m", "sp_m", "t_m", "st_m"]
OFFICIAL_S2 = ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]
#: space-time group of each S2 band (official order): RGB, red edge, NIR10, NIR20, SWIR
S2_GROUP = [1, 1, 1, 2, 2, 2, 3, 4, 5, 5]
GROUPS = list(SPACE_TIME_GROUPS)


@pytest.fixture(scope="module")
def fixture_dir(shared):
    return shared / "conformance" / "galileo"


@pytest.fixture(scope="module")
def weights_dir(shared):
    return shared / "data" / "weights_small" / "galileo_nano"


@pytest.fixture(scope="module")
def data(fixture_dir):
    with np.load(fixture_dir / "data.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def meta(fixture_dir):
    return json.loads((fixture_dir / "meta.json").read_text())


@pytest.fixture(scope="module")
def nano(weights_dir):
    return Galileo.from_official(weights_dir)


@pytest.fixture(scope="module")
def nano64(weights_dir):
    return Galileo.from_official(weights_dir, dtype=torch.float64)


@pytest.fixture(autouse=True)
def _one_thread():
    # the fixture was made with one torch thread; larger grids differ by ~1e-5 across counts
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _a(data, case, name):
    return data[f"{case}__{name}"]


def _enc(data, case, dtype=torch.float32):
    """The exact tensors the official ``Encoder.forward`` got."""
    xs = [torch.from_numpy(_a(data, case, f"enc_{n}")).to(dtype) for n in FAMILIES + MASKS]
    return [*xs, torch.from_numpy(_a(data, case, "in_months"))]


def _user_kwargs(data, meta, case):
    """``galileo_inputs`` keywords from the fixture's user-unit inputs: per-band validity
    from the per-date group mask."""
    cm = meta["cases"][case]
    step = torch.from_numpy(_a(data, case, "in_step_group_mask")).bool()  # (B, T, 7)
    s2 = _a(data, case, "in_s2")
    b, h, w, t, _ = s2.shape
    groups = [S2_GROUP[OFFICIAL_S2.index(x)] for x in cm["s2_bands_given"]]
    kw = {"s2": s2, "s2_bands": cm["s2_bands_given"],
          "s2_valid": (~step[:, :, groups])[:, None, None].expand(b, h, w, t, len(groups)),
          "months": _a(data, case, "in_months"), "ndvi": cm["ndvi_group_present"]}
    if cm["s1_given"]:
        kw["s1"] = _a(data, case, "in_s1")
        kw["s1_valid"] = (~step[:, :, [0]])[:, None, None].expand(b, h, w, t, 2)
    if cm["location_group_present"]:
        kw["latlon"] = _a(data, case, "in_latlon")
    return kw


def _contract_inputs(data, meta, case):
    """The fixture's user-unit inputs as the engine hands them to ``embed_windows``:
    ``(N, C, T, W, W)`` in spec band order, invalid (and absent) entries 0, per-band
    validity, months 0 = January, float64 window centres."""
    cm = meta["cases"][case]
    step = _a(data, case, "in_step_group_mask").astype(bool)  # (B, T, 7)
    s2_in = _a(data, case, "in_s2")
    b, h, w, t, _ = s2_in.shape
    months = torch.from_numpy(_a(data, case, "in_months"))
    inputs = {}
    s2 = np.zeros((b, 10, t, h, w), np.float32)
    bv = np.zeros((b, 10, t, h, w), bool)
    for i, band in enumerate(cm["s2_bands_given"]):
        j = OFFICIAL_S2.index(band)
        s2[:, j] = s2_in[..., i].transpose(0, 3, 1, 2)
        bv[:, j] = ~step[:, :, S2_GROUP[j], None, None]
    inputs["s2"] = torch.from_numpy(np.where(bv, s2, 0).astype(np.float32))
    inputs["s2_band_valid"] = torch.from_numpy(bv)
    inputs["s2_valid"] = inputs["s2_band_valid"].any(dim=1)
    inputs["s2_month"] = months
    inputs["s2_doy"] = months * 30 + 15
    if cm["s1_given"]:
        s1 = _a(data, case, "in_s1").transpose(0, 4, 3, 1, 2)
        v1 = np.broadcast_to(~step[:, None, :, 0, None, None], s1.shape).copy()
        inputs["s1"] = torch.from_numpy(np.where(v1, s1, 0).astype(np.float32))
        inputs["s1_band_valid"] = torch.from_numpy(v1)
        inputs["s1_valid"] = inputs["s1_band_valid"].any(dim=1)
        inputs["s1_month"] = months
        inputs["s1_doy"] = months * 30 + 15
    if cm["location_group_present"]:
        inputs["latlon"] = torch.from_numpy(_a(data, case, "in_latlon").astype(np.float64))
    return inputs


def _max_abs(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


# ---- normalisation and input building --------------------------------------------------
def test_normaliser_is_the_official_one(meta):
    norm, ref = normalizer_values(), meta["normalizer"]
    for fam in ("space_time", "space", "time", "static"):
        shift, div = norm[fam]
        assert list(shift) == ref[f"{fam}_shift"], fam
        assert list(div) == ref[f"{fam}_div"], fam


@pytest.mark.parametrize("case", CASES)
def test_inputs_from_user_units_reproduce_the_official_tensors(case, data, meta):
    kw = _user_kwargs(data, meta, case)
    raw = galileo_inputs(**kw, normalize=False)
    np.testing.assert_allclose(raw.space_time_x.numpy(), _a(data, case, "raw_space_time_x"),
                               atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(raw.static_x.numpy(), _a(data, case, "raw_static_x"),
                               atol=1e-6, rtol=1e-6)
    enc = galileo_inputs(**kw)
    for name in FAMILIES:
        got = getattr(enc, name)
        assert got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), _a(data, case, f"enc_{name}"), atol=1e-6,
                                   rtol=1e-6, err_msg=name)
    for name in MASKS:
        np.testing.assert_array_equal(getattr(enc, name).numpy(), _a(data, case, f"enc_{name}"),
                                      err_msg=name)
    np.testing.assert_array_equal(enc.months.numpy(), _a(data, case, "in_months"))


def test_an_invalid_value_masks_only_its_group_at_that_date():
    s2 = torch.full((1, 4, 4, 2, 10), 1200.0)
    s2[0, 1, 2, 0, S2_BANDS.index("B05")] = float("nan")
    valid = torch.ones(s2.shape, dtype=torch.bool)
    valid[0, 3, 3, 1, S2_BANDS.index("B11")] = False
    x = galileo_inputs(s2=s2, s2_valid=valid, months=[[3, 4]])
    m = x.space_time_mask[0]
    assert torch.isfinite(x.space_time_x).all()
    red_edge, swir = GROUPS.index("S2_Red_Edge"), GROUPS.index("S2_SWIR")
    want = torch.zeros_like(m)
    want[..., GROUPS.index("S1")] = 1  # no S1 given
    want[1, 2, 0, red_edge] = 1
    want[3, 3, 1, swir] = 1
    torch.testing.assert_close(m, want, atol=0, rtol=0)
    # a per-pixel-date validity masks every group at that pixel and date
    pix = torch.ones(s2.shape[:4], dtype=torch.bool)
    pix[0, 0, 0, 1] = False
    m = galileo_inputs(s2=torch.full_like(s2, 900.0), s2_valid=pix, months=[[3, 4]]).space_time_mask
    assert (m[0, 0, 0, 1] == 1).all() and (m[0, 0, 0, 0, 1:] == 0).all()


def test_absent_bands_and_groups_are_masked():
    x = galileo_inputs(s2=torch.full((2, 4, 4, 1, 3), 800.0), s2_bands=["B4", "B08", "B8A"],
                       months=[[0], [11]])
    m = x.space_time_mask[0, 0, 0, 0]
    seen = {g for g, v in zip(GROUPS, m.tolist(), strict=True) if v == 0}
    assert seen == {"S2_NIR_10m", "S2_NIR_20m", "NDVI"}  # RGB lacks B2/B3: masked
    assert (x.space_mask == 1).all() and (x.time_mask == 1).all() and (x.static_mask == 1).all()
    # ndvi=False masks NDVI; without B08 NDVI is masked too
    assert galileo_inputs(s2=torch.full((1, 4, 4, 1, 3), 800.0), s2_bands=["B4", "B08", "B8A"],
                          months=[[0]], ndvi=False).space_time_mask[..., -1].eq(1).all()
    assert galileo_inputs(s2=torch.full((1, 4, 4, 1, 1), 800.0), s2_bands=["B04"],
                          months=[[0]]).space_time_mask[..., -1].eq(1).all()


def test_ndvi_is_zero_where_b8_plus_b4_is_not_positive():
    s2 = torch.full((1, 2, 2, 1, 10), 1000.0)
    i4, i8 = S2_BANDS.index("B04"), S2_BANDS.index("B08")
    s2[0, 0, 0, 0, [i4, i8]] = 0.0  # 0 / 0
    s2[0, 0, 1, 0, i4], s2[0, 0, 1, 0, i8] = 100.0, -300.0  # sum < 0
    s2[0, 1, 0, 0, i4], s2[0, 1, 0, 0, i8] = 1000.0, 3000.0
    raw = galileo_inputs(s2=s2, months=[[6]], normalize=False)
    ndvi = raw.space_time_x[0, ..., 0, -1]
    assert torch.isfinite(ndvi).all()
    assert ndvi[0, 0] == 0 and ndvi[0, 1] == 0
    assert ndvi[1, 0] == pytest.approx(0.5) and ndvi[1, 1] == 0  # (1000-1000)/2000
    # NDVI is not normalised
    enc = galileo_inputs(s2=s2, months=[[6]])
    torch.testing.assert_close(enc.space_time_x[..., -1], raw.space_time_x[..., -1])


def test_fill_invalid_mean_uses_the_band_mean_of_the_window():
    s2 = torch.full((1, 2, 2, 2, 10), 1000.0)
    s2[0, 0, 0, 1] = 3000.0
    valid = torch.ones(s2.shape[:4], dtype=torch.bool)
    valid[0, 1, 1, 0] = False
    s2[0, 1, 1, 0] = 0.0  # what the engine gives for an invalid pixel
    raw = galileo_inputs(s2=s2, s2_valid=valid, months=[[1, 2]], fill_invalid="mean",
                         normalize=False)
    # the mean of the 7 valid values of each band: (6 * 1000 + 3000) / 7
    want = (6 * 1000.0 + 3000.0) / 7
    np.testing.assert_allclose(raw.space_time_x[0, 1, 1, 0, 2:12].numpy(), want, rtol=1e-6)
    assert raw.space_time_mask[0, 1, 1, 0, 1:].eq(1).all()  # still masked
    kept = galileo_inputs(s2=s2, s2_valid=valid, months=[[1, 2]], normalize=False)
    assert (kept.space_time_x[0, 1, 1, 0, 2:12] == 0).all()


def test_location_is_to_cartesian_and_masked_when_unknown():
    ll = torch.tensor([[45.0, 90.0], [float("nan"), 0.0]], dtype=torch.float64)
    x = galileo_inputs(s1=torch.full((2, 2, 2, 1, 2), -12.0), months=[[0], [0]], latlon=ll)
    c = np.cos(np.pi / 4)
    np.testing.assert_allclose(x.static_x[0, 1:4].numpy(), [0.0, c, c], atol=1e-6)
    assert x.static_mask[:, 1].tolist() == [0.0, 1.0]
    with pytest.raises(DataError, match="WGS84"):
        galileo_inputs(s1=torch.zeros(1, 2, 2, 1, 2), months=[[0]], latlon=[[95.0, 0.0]])


def test_input_errors_name_the_fix():
    with pytest.raises(DataError, match="0 \\(January\\)"):
        galileo_inputs(s2=torch.zeros(1, 2, 2, 1, 10), months=[[12]])
    with pytest.raises(ArgumentError, match="B09"):
        galileo_inputs(s2=torch.zeros(1, 2, 2, 1, 1), s2_bands=["B09"], months=[[0]])
    with pytest.raises(DataError, match="share"):
        galileo_inputs(s2=torch.zeros(1, 2, 2, 2, 10), s1=torch.zeros(1, 2, 2, 1, 2),
                       months=[[0, 1]])
    with pytest.raises(DataError, match=r"\(s2=\).*\(s1=\)"):
        galileo_inputs(months=[[0]])


# ---- the encoder against the fixture ---------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_forward_reproduces_every_token_family(case, data, nano):
    with torch.no_grad():
        out = nano(*_enc(data, case), patch_size=4)
    for name, got in zip(TOKENS, out[:4], strict=True):
        # the fixture is reproduced exactly here; 2e-5 (as for the poolings) leaves room
        # for other float32 kernels
        np.testing.assert_allclose(got.numpy(), _a(data, case, f"out_{name}"), atol=2e-5,
                                   rtol=1e-4, err_msg=name)
    for name, got in zip(TOKEN_MASKS, out[4:8], strict=True):
        np.testing.assert_array_equal(got.numpy(), _a(data, case, f"out_{name}"), err_msg=name)
    # a masked token passed zeros through the final LayerNorm: it is exactly norm.bias
    bias = nano.norm.bias.detach()
    masked = torch.cat([x[m.bool()] for x, m in zip(out[:4], out[4:8], strict=True)])
    assert masked.numel() and torch.equal(masked, bias.expand_as(masked))


@pytest.mark.parametrize("case", CASES)
def test_poolings_reproduce_the_official_ones(case, data, nano):
    with torch.no_grad():
        out = nano(*_enc(data, case), patch_size=4)
        pooled = nano.average_tokens(*out[:-1])
        per_patch = nano.average_tokens_per_patch(*out[:-1])
    np.testing.assert_allclose(pooled.numpy(), _a(data, case, "out_pooled"), atol=2e-5,
                               rtol=1e-4)
    np.testing.assert_allclose(per_patch.numpy(), _a(data, case, "out_pooled_per_patch"),
                               atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("case", CASES)
def test_float64_build_matches_the_official_float64_run(case, data, nano64):
    with torch.no_grad():
        out = nano64(*_enc(data, case, torch.float64), patch_size=4)
        pooled = nano64.average_tokens(*out[:-1])
    assert pooled.dtype == torch.float64
    assert _max_abs(pooled.numpy(), _a(data, case, "out_pooled_f64")) <= 1e-7


@pytest.mark.parametrize("case", ["ro_rgbn", "ssl_missing"])
def test_masked_token_dropping_is_batch_invariant(case, data, nano):
    enc = _enc(data, case)
    with torch.no_grad():
        batch = nano(*enc, patch_size=4)
        for i in range(enc[0].shape[0]):
            alone = nano(*[e[i:i + 1] for e in enc], patch_size=4)
            for a, b in zip(alone[:4], batch[:4], strict=True):
                assert _max_abs(a.numpy(), b[i:i + 1].numpy()) <= 1e-5


def test_a_sample_without_any_seen_token_gives_finite_zeros(data, nano):
    enc = _enc(data, "ssl_full")
    enc = [*(e[:2] for e in enc[:4]), *(torch.ones_like(e[:2]) for e in enc[4:8]), enc[8][:2]]
    enc[4][0] = _enc(data, "ssl_full")[4][0]  # sample 0 keeps its tokens, sample 1 has none
    with torch.no_grad():
        out = nano(*enc, patch_size=4)
        pooled = nano.average_tokens(*out[:-1])
        per_patch = nano.average_tokens_per_patch(*out[:-1])
    assert torch.isfinite(pooled).all() and torch.isfinite(per_patch).all()
    assert (pooled[1] == 0).all() and (per_patch[1] == 0).all()


# ---- flexible patch size ---------------------------------------------------------------
@pytest.mark.parametrize("p", [1, 2, 8])
def test_other_patch_sizes_run(p, data, nano):
    enc = _enc(data, "ssl_missing")
    with torch.no_grad():
        out = nano(*enc, patch_size=p)
        per_patch = nano.average_tokens_per_patch(*out[:-1])
    b, t, k = enc[0].shape[0], enc[0].shape[3], 8 // p
    assert tuple(out.s_t_x.shape) == (b, k, k, t, 7, 128)
    assert tuple(out.s_t_m.shape) == (b, k, k, t, 7)
    assert tuple(per_patch.shape) == (b, k * k, 128)
    assert torch.isfinite(per_patch).all()
    # the token mask is the top-left pixel's
    torch.testing.assert_close(out.s_t_m, enc[4][:, ::p, ::p])


def test_the_token_mask_is_the_top_left_pixels(data, nano):
    enc = _enc(data, "ssl_full")
    s_t_m = enc[4].clone()
    s_t_m[:, 1, 1] = 1  # inside patch (0, 0), not its top-left pixel: the token stays seen
    s_t_m[:, 4, 0] = 1  # the top-left pixel of patch (1, 0): the token is masked
    enc[4] = s_t_m
    with torch.no_grad():
        out = nano(*enc, patch_size=4)
    assert (out.s_t_m[:, 0, 0] == 0).all() and (out.s_t_m[:, 1, 0] == 1).all()
    bias = nano.norm.bias.detach()
    assert torch.equal(out.s_t_x[:, 1, 0], bias.expand_as(out.s_t_x[:, 1, 0]))
    assert not torch.isclose(out.s_t_x[:, 0, 0], bias.expand_as(out.s_t_x[:, 0, 0])).all()


@pytest.mark.parametrize("p", [1, 2, 3, 5, 8])
def test_resized_kernel_on_a_resized_patch_gives_the_base_response(p):
    """FlexiViT's invariant: for a base kernel in the span of the resize matrix R
    (w = R v), ``<resize(x), pinv(R) w> = <x, w>`` for every patch x."""
    torch.manual_seed(p)
    emb = gal._PatchEmbed(1, 3, 8).double()
    basis = []
    for i in range(64):  # R, one basis image at a time
        e = torch.zeros(64, dtype=torch.float64)
        e[i] = 1
        basis.append(F.interpolate(e.reshape(1, 1, 8, 8), size=(p, p), mode="bicubic",
                                   antialias=True).reshape(-1))
    r = torch.stack(basis)  # (64, p*p)
    v = torch.randn(3, p * p, dtype=torch.float64)
    with torch.no_grad():
        emb.proj.weight.copy_((r @ v.T).T.reshape(3, 1, 8, 8))
        emb.proj.bias.zero_()
        x = torch.randn(5, 8, 8, dtype=torch.float64)
        base = emb(x[..., None], 8)
        small = F.interpolate(x[:, None], size=(p, p), mode="bicubic", antialias=True)[:, 0]
        resized = emb(small[..., None], p)
    assert tuple(resized.shape) == (5, 1, 1, 3)
    torch.testing.assert_close(resized, base, atol=1e-9, rtol=1e-9)


def test_patch_size_and_shapes_are_checked(data, nano):
    enc = _enc(data, "ssl_full")
    with pytest.raises(ArgumentError, match=r"1\.\.8"):
        nano(*enc, patch_size=9)
    with pytest.raises(DataError, match="multiple of patch_size 3"):
        nano(*enc, patch_size=3)
    with pytest.raises(DataError, match="space_x"):
        nano(enc[0], enc[1][:, :4], *enc[2:], patch_size=4)


# ---- weights ---------------------------------------------------------------------------
def test_folder_and_file_load_the_same(weights_dir, tmp_path, nano):
    from_file = Galileo.from_official(weights_dir / "encoder.pt", sha256=GALILEO_NANO_SHA256)
    assert from_file.config == nano.config == GALILEO_PRESETS["nano"]
    alone = tmp_path / "encoder.pt"  # no config.json beside it: sizes read off the weights
    shutil.copy(weights_dir / "encoder.pt", alone)
    inferred = Galileo.from_official(alone)
    assert inferred.config == nano.config
    for other in (from_file, inferred):
        sd, ref = other.state_dict(), nano.state_dict()
        assert sd.keys() == ref.keys()
        assert all(torch.equal(sd[k], ref[k]) for k in ref)
    assert nano.load_report is not None and not nano.load_report.missing
    assert nano.load_report.loaded == len(nano.state_dict())


def test_a_wrong_digest_is_refused(weights_dir, tmp_path):
    state = torch.load(weights_dir / "encoder.pt", map_location="cpu", weights_only=True)
    state["norm.bias"] = state["norm.bias"] + 1e-3
    bad = tmp_path / "encoder.pt"
    torch.save(state, bad)
    shutil.copy(weights_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="sha256") as err:
        xm.create_model("galileo-nano", weights=str(bad))
    assert GALILEO_NANO_SHA256 in str(err.value)
    with pytest.raises(CheckpointError, match="sha256"):
        xm.create_model("galileo-nano", weights=str(tmp_path))  # the folder, too
    with pytest.raises(CheckpointError, match="sha256"):
        Galileo.from_official(tmp_path, sha256=GALILEO_NANO_SHA256)
    # without a pinned digest the same file loads: it is the digest that was refused
    assert Galileo.from_official(tmp_path).config == GALILEO_PRESETS["nano"]


def test_weights_of_another_size_or_no_encoder_are_refused(weights_dir, tmp_path):
    with pytest.raises(CheckpointError, match="galileo-nano"):
        xm.create_model("galileo-tiny", weights=str(weights_dir))
    (tmp_path / "decoder.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no encoder\.pt"):
        Galileo.from_official(tmp_path)
    with pytest.raises(CheckpointError, match="do not exist"):
        Galileo.from_official(tmp_path / "missing.pt")


# ---- through the engine adapter --------------------------------------------------------
def _embedder(weights_dir, meta, case, pooling):
    cm = meta["cases"][case]
    return xm.create_model("galileo-nano", weights=str(weights_dir), window=8, patch_size=4,
                           pooling=pooling, ndvi=cm["ndvi_group_present"],
                           location=cm["location_group_present"])


@pytest.mark.parametrize("case", CASES)
def test_embed_windows_reproduces_the_per_patch_pooling(case, data, meta, weights_dir):
    model = _embedder(weights_dir, meta, case, "patch")
    assert model.spec.output == "dense" and model.spec.stride == 4
    with torch.inference_mode():
        out = model.embed_windows(_contract_inputs(data, meta, case))
    ref = _a(data, case, "out_pooled_per_patch")  # (B, 2*2, 128), patches row-major
    assert out.dtype == torch.float32 and tuple(out.shape) == (ref.shape[0], 128, 2, 2)
    got = out.permute(0, 2, 3, 1).reshape(ref.shape)
    np.testing.assert_allclose(got.numpy(), ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("case", CASES)
def test_embed_windows_reproduces_the_window_pooling(case, data, meta, weights_dir):
    model = _embedder(weights_dir, meta, case, "window")
    assert model.spec.output == "pooled"
    with torch.inference_mode():
        out = model.embed_windows(_contract_inputs(data, meta, case))
    np.testing.assert_allclose(out.numpy(), _a(data, case, "out_pooled"), atol=2e-5, rtol=1e-4)


def test_embed_windows_takes_either_modality_and_minimal_inputs(weights_dir):
    model = xm.create_model("galileo-nano", weights=str(weights_dir))
    g = torch.Generator().manual_seed(0)
    s2 = 1000 + 500 * torch.rand((2, 10, 3, 16, 16), generator=g)
    s1 = -15 + 5 * torch.rand((2, 2, 3, 16, 16), generator=g)
    doy = torch.tensor([[20, 140, 300]]).expand(2, 3)
    with torch.inference_mode():
        both = model.embed_windows({"s2": s2, "s1": s1, "s2_doy": doy, "s1_doy": doy})
        only_s1 = model.embed_windows({"s1": s1, "s1_valid": torch.ones(2, 3, 16, 16).bool()})
        month = model.embed_windows({"s2": s2, "s2_month": torch.tensor([[0, 4, 9]] * 2)})
        from_doy = model.embed_windows({"s2": s2, "s2_doy": doy})
    for out in (both, only_s1, month):
        assert tuple(out.shape) == (2, 128, 4, 4) and torch.isfinite(out).all()
    torch.testing.assert_close(month, from_doy)  # day 20 -> January, 140 -> May, 300 -> October


def test_an_invalid_pixel_inside_a_seen_token_enters_as_the_band_mean(weights_dir):
    """The token mask is the top-left pixel's: another invalid pixel of the patch is still
    projected, with its bands' window mean (not the 0 the engine fills in)."""
    model = xm.create_model("galileo-nano", weights=str(weights_dir), location=False)
    g = torch.Generator().manual_seed(1)
    s2 = 800 + 2000 * torch.rand((1, 10, 2, 16, 16), generator=g)
    valid = torch.ones(s2.shape, dtype=torch.bool)
    valid[:, :, 0, 1, 1] = False
    months = torch.tensor([[3, 4]])
    outs = []
    with torch.inference_mode():
        for fill in (0.0, 5000.0):
            x = s2.clone()
            x[:, :, 0, 1, 1] = fill
            outs.append(model.embed_windows({"s2": x, "s2_band_valid": valid,
                                             "s2_month": months}))
        # the same windows with the pixel set to the band means of the valid pixels
        x = s2.clone()
        x[:, :, 0, 1, 1] = (s2 * valid).sum(dim=(2, 3, 4)) / valid.sum(dim=(2, 3, 4))
        ref = model.embed_windows({"s2": x, "s2_month": months})
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(outs[0], ref, atol=1e-5, rtol=1e-5)


def test_embed_windows_asks_to_composite(weights_dir):
    model = xm.create_model("galileo-nano", weights=str(weights_dir))
    with pytest.raises(DataError, match="composite"):
        model.embed_windows({"s2": torch.zeros(1, 10, 25, 16, 16)})
    with pytest.raises(DataError, match="composite"):
        model.embed_windows({"s2": torch.zeros(1, 10, 2, 16, 16),
                             "s1": torch.zeros(1, 2, 3, 16, 16)})
    with pytest.raises(DataError, match="composite"):
        model.embed_windows({"s2": torch.zeros(1, 10, 2, 16, 16),
                             "s1": torch.zeros(1, 2, 2, 16, 16),
                             "s2_month": torch.tensor([[0, 1]]),
                             "s1_month": torch.tensor([[0, 2]])})


def test_location_and_ndvi_options_change_the_embedding(data, meta, weights_dir):
    inputs = _contract_inputs(data, meta, "ssl_full")
    outs = {}
    with torch.inference_mode():
        for loc in (True, False):
            for ndvi in (True, False):
                model = xm.create_model("galileo-nano", weights=str(weights_dir), window=8,
                                        location=loc, ndvi=ndvi)
                assert model.spec.location == ("window" if loc else None)
                outs[loc, ndvi] = model.embed_windows(inputs)
    assert _max_abs(outs[True, True], outs[False, True]) > 1e-3
    assert _max_abs(outs[True, True], outs[True, False]) > 1e-3


# ---- registry, specs and cards ---------------------------------------------------------
@pytest.mark.parametrize("size", ["nano", "tiny", "base"])
def test_registered_spec_and_card(size):
    name = f"galileo-{size}"
    spec, card = xm.get_model_spec(name), xm.get_model_card(name)
    width = GALILEO_PRESETS[size].embedding_size
    assert spec.feature_dim == card.feature_dim == width
    assert (spec.window, spec.stride, spec.output) == (16, 4, "dense")
    assert spec.fuses_time and spec.band_mask and spec.shared_time
    assert spec.max_timesteps == 24 and spec.location == "window"
    assert spec.required_modalities == ()
    s2, s1 = spec.modality("s2"), spec.modality("s1")
    assert s2.bands == S2_BANDS and s2.units == "dn" and s2.partial and s2.mean is None
    assert s1.bands == ("VV", "VH") and s1.units == "db" and s1.partial and s1.mean is None
    assert card.license == "MIT" and "2502.09356" in card.paper and "Tseng" in card.paper
    assert gal.OFFICIAL_COMMIT in dict(card.extra)["official_code"]
    enc = card.weight_file("encoder.pt")
    assert enc is not None
    if size == "nano":
        assert enc.sha256 == GALILEO_NANO_SHA256 and gal.OFFICIAL_COMMIT in enc.url
    else:
        assert enc.sha256 is None and "not known" in enc.source
    assert xm.model_options(name) == ("location", "ndvi", "patch_size", "pooling", "trust",
                                      "window")


def test_official_sizes():
    assert [(c.embedding_size, c.depth, c.num_heads) for c in GALILEO_PRESETS.values()] == \
        [(128, 4, 8), (192, 12, 3), (768, 12, 12)]
    tiny = xm.create_model("galileo-tiny", patch_size=2, window=8, pooling="window")
    assert isinstance(tiny, GalileoEmbedder)
    assert tiny.spec.feature_dim == 192 and tiny.spec.output == "pooled"
    assert tiny.spec.stride == 8
    assert sum(p.numel() for p in tiny.encoder.blocks.parameters()) == \
        12 * (4 * (192 * 192 + 192) + 2 * 192 * 768 + 768 + 192 + 4 * 192)


@pytest.mark.parametrize(("option", "match"), [
    ({"patch_size": 0}, "1..8"), ({"patch_size": 9}, "1..8"),
    ({"window": 18}, "multiple of patch_size"), ({"pooling": "mean"}, "'patch', 'window'"),
])
def test_factory_options_are_checked(option, match):
    with pytest.raises(ArgumentError, match=match):
        xm.create_model("galileo-nano", **option)
