"""Presto against the official outputs (``shared/conformance/presto``) and through the engine
contract (``embed_windows`` on user-unit inputs)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import xsky.models as xm
import xsky.models.presto as presto
from xsky.exceptions import ArgumentError, CheckpointError, DataError
from xsky.models.presto import (
    BAND_GROUPS,
    NORMED_BANDS,
    WEIGHTS_SHA256,
    Presto,
    PrestoEncoder,
    construct_presto_input,
    normalize,
)

CASES = ("algae", "romania")
#: the fixture is reproduced exactly on this CPU (0 is reached); 2e-5 leaves room for other
#: float32 kernels while any change of the forward moves the values by far more
POOLED = {"atol": 2e-5, "rtol": 1e-5}
TOKENS = {"atol": 2e-5, "rtol": 1e-5}


@pytest.fixture(scope="module")
def fixture(shared):
    with np.load(shared / "conformance" / "presto" / "data.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def weights(shared):
    return shared / "data" / "weights_small" / "presto"


@pytest.fixture(scope="module")
def model(weights):
    return Presto.from_official(weights)


def _get(fx, case, name):
    return fx[f"{case}__{name}"]


def _official_args(fx, case):
    """Exactly the encoder arguments of the fixture's call (from the stored enc_* inputs)."""
    args = {
        "x": torch.from_numpy(_get(fx, case, "enc_x")),
        "dynamic_world": torch.from_numpy(_get(fx, case, "in_dynamic_world")).long(),
        "latlons": torch.from_numpy(_get(fx, case, "in_latlon")).float(),
    }
    if case == "algae":
        args["mask"] = None
        args["month"] = torch.from_numpy(_get(fx, case, "in_months")).long()
    else:
        args["mask"] = torch.from_numpy(_get(fx, case, "enc_mask")).float()
        args["month"] = 0
    return args


def _romania_inputs(fx):
    """The romania case's 16 pixels as one 4 x 4 window laid out per the engine contract:
    S2 DN (only B02, B03, B04, B08 given), months from the time axis, per-pixel lat/lon."""
    s2 = _get(fx, "romania", "in_s2")  # (16, 12, 4) B2, B3, B4, B8 in DN
    missing = _get(fx, "romania", "in_step_missing").astype(bool)  # (16, 12)
    bands = xm.get_model_spec("presto").modality("s2").bands
    given = {"B02": 0, "B03": 1, "B04": 2, "B08": 3}
    n, t, w = 1, s2.shape[1], 4
    x = torch.zeros((n, len(bands), t, w, w))
    bv = torch.zeros((n, len(bands), t, w, w), dtype=torch.bool)
    for band, i in given.items():
        c = bands.index(band)
        # pixel b sits at (y, x) = divmod(b, 4); the engine gives invalid values as 0
        vals = np.where(missing, 0.0, s2[:, :, i])  # (16, 12)
        x[0, c] = torch.from_numpy(vals.T.reshape(t, w, w).astype(np.float32))
        bv[0, c] = torch.from_numpy(~missing.T.reshape(t, w, w))
    latlon = _get(fx, "romania", "in_latlon").astype(np.float64)  # (16, 2)
    return {
        "s2": x,
        "s2_band_valid": bv,
        "s2_valid": bv.any(1),
        "s2_month": torch.arange(t)[None].repeat(n, 1),  # 2019-01 .. 2019-12
        "s2_doy": torch.tensor([[15 + 30 * i for i in range(t)]]),
        "latlon": torch.from_numpy(latlon.T.reshape(1, 2, w, w).copy()),
    }


def _algae_inputs(fx):
    """The algae case (every modality) as 64 windows of 1 x 1 pixel (each row has its own
    months), per the engine contract; SRTM without a time axis (T = 1)."""
    raw = _get(fx, "algae", "in_x_raw")  # (64, 12, 18)
    spec = xm.get_model_spec("presto")
    col = {b: i for i, b in enumerate(presto.BANDS)}
    n = raw.shape[0]
    inputs = {}
    for m in spec.modalities:
        chans = [col[presto._official_band(b)] for b in m.bands] if m.name != "dw" else []
        if m.name == "dw":
            vals = _get(fx, "algae", "in_dynamic_world")[:, :, None].astype(np.float32)
        else:
            vals = raw[:, :, chans].astype(np.float32)
        if m.name == "srtm":
            vals = vals[:, :1]
        a = torch.from_numpy(vals).permute(0, 2, 1)[:, :, :, None, None].contiguous()
        inputs[m.name] = a
        inputs[m.name + "_band_valid"] = torch.ones(a.shape, dtype=torch.bool)
        inputs[m.name + "_valid"] = torch.ones((n, a.shape[2], 1, 1), dtype=torch.bool)
        if m.name != "srtm":
            inputs[m.name + "_month"] = torch.from_numpy(_get(fx, "algae", "in_months"))
    inputs["latlon"] = torch.from_numpy(
        _get(fx, "algae", "in_latlon").astype(np.float64))[:, :, None, None]
    return inputs


def _kept(indices, token_mask, b):
    """Expanded positions of the tokens kept in row ``b``."""
    length = token_mask.shape[1]
    return set(indices[b, :length][token_mask[b] == 0].tolist())


def _expand(tokens, indices, token_mask, n_total):
    """Scatter compacted tokens back to the expanded layout (zeros where masked)."""
    b, _, d = tokens.shape
    out = np.zeros((b, n_total, d), tokens.dtype)
    mask = np.ones((b, n_total), np.int8)
    for i in range(b):
        kept = np.flatnonzero(token_mask[i] == 0)
        out[i, indices[i, kept]] = tokens[i, kept]
        mask[i, indices[i, kept]] = 0
    return out, mask


# ---- normalisation and masks ------------------------------------------------------------
def test_normalisation_reproduces_enc_x_algae(fixture):
    x = normalize(_get(fixture, "algae", "in_x_raw"))
    assert x.dtype == np.float32 and x.shape == (64, 12, len(NORMED_BANDS))
    np.testing.assert_allclose(x, _get(fixture, "algae", "enc_x"), atol=1e-6, rtol=0)


def test_construct_input_reproduces_enc_x_and_mask_romania(fixture):
    s2 = torch.from_numpy(_get(fixture, "romania", "in_s2"))
    x, mask, dw = construct_presto_input(s2=s2, s2_bands=["B2", "B3", "B4", "B8"])
    mask[torch.from_numpy(_get(fixture, "romania", "in_step_missing")) == 1] = 1
    np.testing.assert_allclose(x.numpy(), _get(fixture, "romania", "enc_x"), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(mask.numpy(), _get(fixture, "romania", "enc_mask"))
    np.testing.assert_array_equal(dw.numpy(), _get(fixture, "romania", "in_dynamic_world"))
    # xsky's canonical names give the same
    x2, mask2, _ = construct_presto_input(s2=s2, s2_bands=["B02", "B03", "B04", "B08"])
    assert torch.equal(x, x2)
    mask2[torch.from_numpy(_get(fixture, "romania", "in_step_missing")) == 1] = 1
    assert torch.equal(mask, mask2)


def test_ndvi_needs_both_b4_and_b8_and_guards_zero():
    s2 = torch.tensor([[[100.0, 300.0]], [[0.0, 0.0]]])  # (2, 1, 2): B4, B8
    x, mask, _ = construct_presto_input(s2=s2, s2_bands=["B4", "B8"])
    ndvi = NORMED_BANDS.index("NDVI")
    assert x[0, 0, ndvi] == pytest.approx(0.5) and x[1, 0, ndvi] == 0  # B8 + B4 = 0: 0
    assert (mask[..., ndvi] == 0).all()
    _, mask, _ = construct_presto_input(s2=s2[..., :1], s2_bands=["B4"])
    assert (mask[..., ndvi] == 1).all()
    with pytest.raises(ArgumentError, match="unknown s2 band"):
        construct_presto_input(s2=s2, s2_bands=["B4", "NIR"])


# ---- the encoder against the official outputs -------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_pooled_matches_official(fixture, model, case):
    with torch.inference_mode():
        pooled = model.encoder(**_official_args(fixture, case))
    np.testing.assert_allclose(pooled.numpy(), _get(fixture, case, "out_pooled"), **POOLED)


@pytest.mark.parametrize("case", CASES)
def test_tokens_index_map_and_mask_match_official(fixture, model, case):
    with torch.inference_mode():
        tokens, indices, token_mask = model.encoder(**_official_args(fixture, case),
                                                    eval_task=False)
    want = _get(fixture, case, "out_tokens")
    rows = want.shape[0]
    assert indices.dtype == torch.int64
    np.testing.assert_array_equal(indices[:rows].numpy(), _get(fixture, case, "out_orig_indices"))
    np.testing.assert_array_equal(token_mask[:rows].numpy().astype(np.int8),
                                  _get(fixture, case, "out_token_mask"))
    assert tokens.shape[1] == want.shape[1]
    np.testing.assert_allclose(tokens[:rows].numpy(), want, **TOKENS)
    if case == "romania":
        n_total = _get(fixture, case, "out_tokens_expanded").shape[1]
        exp, exp_mask = _expand(tokens.numpy(), indices.numpy(),
                                token_mask.numpy(), n_total)
        np.testing.assert_array_equal(exp_mask, _get(fixture, case, "out_token_mask_expanded"))
        np.testing.assert_allclose(exp, _get(fixture, case, "out_tokens_expanded"), **TOKENS)


def test_latlon_token_is_first_and_never_masked(fixture, model):
    args = _official_args(fixture, "romania")
    args["mask"] = torch.ones_like(args["mask"])  # every EO token masked, DW all 9
    with torch.inference_mode():
        tokens, indices, token_mask = model.encoder(**args, eval_task=False)
        pooled = model.encoder(**args)
    assert tokens.shape[1] == 1 and (indices[:, 0] == 0).all() and (token_mask == 0).all()
    # only the latlon token: the pooled vector is the norm of its block output
    np.testing.assert_allclose(pooled.numpy(), tokens[:, 0].numpy(), atol=1e-5)


def test_dynamic_world_mask_is_class_9_only(fixture, model):
    args = _official_args(fixture, "algae")
    args["mask"] = torch.zeros_like(args["x"])
    args["mask"][:, 5] = 1  # every channel of step 5 masked
    args["dynamic_world"] = args["dynamic_world"].clone()
    args["dynamic_world"][:, 7] = 9
    with torch.inference_mode():
        _, indices, token_mask = model.encoder(**args, eval_task=False)
    t = 12
    dw0 = 1 + 8 * t + 1  # expanded position of dynamic_world@t0 (after latlon, EO, SRTM)
    kept = [_kept(indices, token_mask, b) for b in range(indices.shape[0])]
    assert all(dw0 + 5 in k for k in kept)  # DW ignores `mask`
    assert not any(dw0 + 7 in k for k in kept)  # but class 9 masks it
    assert not any(1 + 5 in k for k in kept)  # S1@t5 masked by `mask`


def test_group_mask_is_the_max_over_channels_and_srtm_uses_step_0(fixture, model):
    args = _official_args(fixture, "algae")
    mask = torch.zeros_like(args["x"])
    mask[:, 3, NORMED_BANDS.index("B6")] = 1  # one channel of Red_Edge at step 3
    mask[:, 1:, NORMED_BANDS.index("elevation")] = 1  # SRTM masked after step 0 only
    with torch.inference_mode():
        _, indices, token_mask = model.encoder(**{**args, "mask": mask}, eval_task=False)
    t, kept = 12, _kept(indices, token_mask, 0)
    red_edge = 1 + list(BAND_GROUPS).index("S2_Red_Edge") * t
    srtm = 1 + list(BAND_GROUPS).index("SRTM") * t
    assert red_edge + 3 not in kept and red_edge + 2 in kept and red_edge + 4 in kept
    assert srtm in kept and len(kept) == 110 - 1


def test_embedding_tables_are_the_official_ones(weights):
    """The tables a fresh encoder builds (interleaved sin/cos, base 1000; month sin ++ cos)
    are the ones stored in the checkpoint."""
    state = torch.load(weights / "default_model.pt", map_location="cpu", weights_only=True)
    fresh = PrestoEncoder()
    np.testing.assert_allclose(fresh.pos_embed.numpy(), state["encoder.pos_embed"].numpy(),
                               atol=1e-6, rtol=0)
    np.testing.assert_allclose(fresh.month_embed.weight.numpy(),
                               state["encoder.month_embed.weight"].numpy(), atol=1e-6, rtol=0)


def test_month_arguments_agree(fixture, model):
    # algae: months of 30-day steps, mostly consecutive; where a row's are, its (B,) start
    # month gives what the (B, T) tensor gives, and where not, the (B, T) tensor is used as is
    args = _official_args(fixture, "algae")
    months = args.pop("month")
    consecutive = ((months - months[:, :1]) % 12 == torch.arange(12)).all(1)
    assert consecutive.any() and not consecutive.all()
    with torch.inference_mode():
        full = model.encoder(**args, month=months)
        start = model.encoder(**args, month=months[:, 0])
        other = model.encoder(**args, month=(months + 6) % 12)
    assert torch.equal(full[consecutive], start[consecutive])
    assert ((full - start).abs().amax(1)[~consecutive] > 1e-4).all()
    assert (full - other).abs().max() > 1e-2  # the month embedding matters
    # romania: the int 0 equals a (B,) tensor of zeros and the (B, T) months 0..11
    args = _official_args(fixture, "romania")
    args.pop("month")
    b = args["x"].shape[0]
    with torch.inference_mode():
        as_int = model.encoder(**args, month=0)
        as_b = model.encoder(**args, month=torch.zeros(b, dtype=torch.long))
        as_bt = model.encoder(**args, month=torch.arange(12).repeat(b, 1))
        shifted = model.encoder(**args, month=3)
        shifted_b = model.encoder(**args, month=torch.full((b,), 3))
    assert torch.equal(as_int, as_b) and torch.equal(as_int, as_bt)
    assert torch.equal(shifted, shifted_b) and not torch.equal(as_int, shifted)
    with pytest.raises(ArgumentError, match=r"0\.\.11"):
        model.encoder(**args, month=12)


@pytest.mark.parametrize("case", CASES)
def test_float64_build_matches_official_float64(fixture, weights, case):
    m64 = Presto.from_official(weights).double()
    args = _official_args(fixture, case)
    args["x"] = args["x"].double()
    if args["mask"] is not None:
        args["mask"] = args["mask"].double()
    with torch.inference_mode():
        pooled = m64.encoder(**args)
    assert pooled.dtype == torch.float64
    np.testing.assert_allclose(pooled.numpy(), _get(fixture, case, "out_pooled_f64"),
                               atol=1e-7, rtol=0)


def test_too_many_timesteps_says_to_composite(model):
    x = torch.zeros(1, 25, 17)
    with pytest.raises(ArgumentError, match="composite"):
        model.encoder(x, torch.full((1, 25), 9), torch.zeros(1, 2))


# ---- the engine contract ----------------------------------------------------------------
def test_embed_windows_reproduces_romania_with_masked_months(fixture, model):
    inputs = _romania_inputs(fixture)
    args = model.official_inputs(inputs)
    np.testing.assert_allclose(args["x"].numpy(), _get(fixture, "romania", "enc_x"),
                               atol=1e-6, rtol=0)
    np.testing.assert_array_equal(args["mask"].numpy(), _get(fixture, "romania", "enc_mask"))
    with torch.inference_mode():
        out = model.embed_windows(inputs)
    assert out.shape == (1, 128, 4, 4) and out.dtype == torch.float32
    pooled = out[0].permute(1, 2, 0).reshape(16, 128).numpy()
    np.testing.assert_allclose(pooled, _get(fixture, "romania", "out_pooled"), **POOLED)


def test_embed_windows_reproduces_algae_with_every_modality(fixture, model):
    inputs = _algae_inputs(fixture)
    args = model.official_inputs(inputs)
    np.testing.assert_allclose(args["x"].numpy(), _get(fixture, "algae", "enc_x"),
                               atol=1e-6, rtol=0)
    assert not args["mask"].any()
    with torch.inference_mode():
        out = model.embed_windows(inputs)
    assert out.shape == (64, 128, 1, 1)
    np.testing.assert_allclose(out[:, :, 0, 0].numpy(), _get(fixture, "algae", "out_pooled"),
                               **POOLED)


def test_an_invalid_band_masks_its_group_at_that_date_only(fixture, model):
    inputs = _algae_inputs(fixture)
    bands = xm.get_model_spec("presto").modality("s2").bands
    inputs["s2_band_valid"][:, bands.index("B05"), 3] = False
    inputs["s2"][:, bands.index("B05"), 3] = 0
    inputs["dw_band_valid"][:, 0, 4] = False
    inputs["s2_band_valid"][:, bands.index("B04"), 6] = False  # B08 valid: NDVI needs both
    args = model.official_inputs(inputs)
    with torch.inference_mode():
        _, indices, token_mask = model.encoder(**args, eval_task=False)
    t, kept = 12, _kept(indices, token_mask, 0)
    pos = {g: 1 + i * t for i, g in enumerate(BAND_GROUPS)}
    pos["NDVI"] -= t - 1  # after the single SRTM token
    dw0 = 1 + 8 * t + 1
    assert pos["S2_Red_Edge"] + 3 not in kept and pos["S2_Red_Edge"] + 2 in kept
    assert pos["S2_RGB"] + 3 in kept and pos["S2_RGB"] + 6 not in kept
    assert pos["NDVI"] + 6 not in kept and pos["NDVI"] + 5 in kept
    assert pos["S2_NIR_10m"] + 6 in kept
    assert dw0 + 4 not in kept and dw0 + 3 in kept
    assert len(kept) == 110 - 4


def test_srtm_is_read_from_the_first_step(fixture, model):
    """An SRTM layer that comes with a time axis: its single token is step 0's."""
    inputs = _algae_inputs(fixture)
    srtm = inputs["srtm"]
    inputs["srtm"] = torch.cat([srtm, torch.full((64, 2, 11, 1, 1), 1e4)], dim=2)
    inputs["srtm_band_valid"] = torch.ones(inputs["srtm"].shape, dtype=torch.bool)
    with torch.inference_mode():
        out = model.embed_windows(inputs)
    np.testing.assert_allclose(out[:, :, 0, 0].numpy(), _get(fixture, "algae", "out_pooled"),
                               **POOLED)


def test_absent_modalities_and_a_pixel_without_data(fixture, model):
    inputs = _romania_inputs(fixture)
    inputs["s2_band_valid"][0, :, :, 0, 0] = False  # pixel (0, 0): nothing valid
    with torch.inference_mode():
        out = model.embed_windows(inputs)
    assert torch.isfinite(out).all()
    # the rest are unchanged (pixels are independent)
    pooled = out[0].permute(1, 2, 0).reshape(16, 128).numpy()
    np.testing.assert_allclose(pooled[1:], _get(fixture, "romania", "out_pooled")[1:], **POOLED)


def test_dynamic_world_must_be_class_indices(fixture, model):
    inputs = _algae_inputs(fixture)
    inputs["dw"] = inputs["dw"] + 0.25
    with pytest.raises(DataError, match="class indices"):
        model.official_inputs(inputs)


def test_modalities_with_other_dates_are_refused(fixture, model):
    inputs = _algae_inputs(fixture)
    inputs["s1_month"] = (inputs["s1_month"] + 1) % 12
    with pytest.raises(DataError, match="composite"):
        model.official_inputs(inputs)


# ---- weights, registry and card ---------------------------------------------------------
def test_load_report_and_registry(weights, model):
    report = model.load_report
    assert report is not None and report.loaded == 50
    assert not report.missing and not report.unexpected
    assert report.skipped and all(k.startswith("decoder.") for k in report.skipped)
    built = xm.create_model("presto", weights=str(weights / "default_model.pt"), window=4)
    assert built.weights_sha256 == WEIGHTS_SHA256 and built.spec.window == 4
    assert built.spec.default_batch_size == 4096 // 16
    for a, b in zip(built.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_wrong_digest_is_refused(weights, tmp_path):
    bad = tmp_path / "default_model.pt"
    shutil.copy(weights / "default_model.pt", bad)
    with open(bad, "r+b") as f:  # flip one byte of the payload
        f.seek(-100, 2)
        byte = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CheckpointError, match="sha256"):
        Presto.from_official(tmp_path)
    with pytest.raises(CheckpointError, match="sha256"):
        xm.create_model("presto", weights=str(bad))
    with pytest.raises(CheckpointError, match=r"holds no 'default_model\.pt'"):
        Presto.from_official(tmp_path / "..")


def test_card():
    card = xm.get_model_card("presto")
    assert card.license == "MIT" and "2304.14065" in (card.paper or "")
    assert "Lightweight, Pre-trained Transformers for Remote Sensing Timeseries" in card.paper
    (wf,) = card.weights
    assert wf.name == "default_model.pt" and wf.sha256 == WEIGHTS_SHA256
    assert wf.url is not None and presto.OFFICIAL_COMMIT in wf.url
    spec = xm.get_model_spec("presto")
    assert (spec.stride, spec.output, spec.fuses_time, spec.location) == (1, "dense", True,
                                                                          "pixel")
    assert spec.band_mask and spec.max_timesteps == 24 and spec.required_modalities == ()
    assert spec.modality_names == ("s2", "s1", "era5", "srtm", "dw")
    assert all(m.partial and m.mean is None for m in spec.modalities)


# ---- through xsky.embed -------------------------------------------------------------------
def test_embed_on_a_cube_matches_the_encoder_per_pixel(weights, model):
    import xsky
    from xsky.geo import get_crs, pixel_lonlat
    from xsky.testing import synthetic_s2_cube

    bands = ("B02", "B03", "B04", "B08")
    ds = synthetic_s2_cube(12, 12, 3, bands=bands, seed=0)
    hole = (ds.y == ds.y[5]) & (ds.x == ds.x[7]) & (ds.time == ds.time[1])
    ds["B04"] = ds["B04"].where(~hole)  # B04 missing at one date of one pixel
    emb = xsky.embed(ds, "presto", weights=str(weights), device="cpu", window=4)
    assert emb.sizes["feature"] == 128
    months = torch.from_numpy(ds.time.dt.month.values.astype(np.int64) - 1)[None]
    for iy, ix in ((5, 7), (0, 0), (11, 3)):
        px = ds.isel(y=iy, x=ix)
        refl = np.stack([px[b].values for b in bands], axis=-1)  # (T, 4)
        ok = np.isfinite(refl)
        x, mask, dw = construct_presto_input(s2=np.where(ok, refl * 1e4, 0)[None],
                                             s2_bands=list(bands))
        bad = torch.from_numpy(~ok)[None].float()
        for c, name in enumerate(bands):  # a NaN band masks its channel at that date
            i = NORMED_BANDS.index(presto._official_band(name))
            mask[..., i] = torch.maximum(mask[..., i], bad[..., c])
        i = NORMED_BANDS.index("NDVI")
        mask[..., i] = torch.maximum(mask[..., i], torch.maximum(bad[..., 2], bad[..., 3]))
        lon, lat = pixel_lonlat(np.array([float(px.x)]), np.array([float(px.y)]), get_crs(ds))
        latlon = torch.tensor([[lat.item(), lon.item()]], dtype=torch.float32)
        with torch.inference_mode():
            want = model.encoder(x, dw, latlon, mask=mask, month=months)
        np.testing.assert_allclose(emb.isel(y=iy, x=ix).values, want[0].numpy(), **POOLED)
