"""SkySense presets, config handling and the engine contract (``embed_windows``)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from xsky.exceptions import ArgumentError, DimensionError, XSkyError
from xsky.models import create_model, get_model_spec, list_models
from xsky.models.skysense import (
    S1_BANDS,
    S2_BANDS,
    SKYSENSE_PRESETS,
    SkySense,
    SkySenseConfig,
    SkySensePerDate,
)


@pytest.fixture(scope="module")
def hyper(shared):
    cfg = json.loads((shared / "conformance" / "skysense" / "config.json").read_text())
    return cfg["hyperparameters"]


@pytest.fixture(scope="module")
def tiny():
    return create_model("skysense-tiny", window=8)


def _windows(n=2, w=8, t2=3, t1=2, hr=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    inp = {
        "s2": torch.randn(n, 10, t2, w, w, generator=g),
        "s2_doy": torch.randint(1, 366, (n, t2), generator=g),
        "s1": torch.randn(n, 2, t1, w, w, generator=g),
        "s1_doy": torch.randint(1, 366, (n, t1), generator=g),
    }
    if hr:
        inp["hr"] = torch.randn(n, 3, 1, 32 * w, 32 * w, generator=g)
        inp["hr_doy"] = torch.full((n, 1), 150)
    return inp


def _embed(model, inputs):
    with torch.no_grad():
        return model.embed_windows(inputs)


# ---- presets and config ---------------------------------------------------------------
def test_huge_preset_parameter_counts_match_the_official_model_on_meta_device():
    with torch.device("meta"):
        model = SkySense("skysense-huge")

    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert all(p.device.type == "meta" for p in model.parameters())
    assert count(model.backbone_gep) == 655_074_704  # Swin-V2-H, official dump
    assert round(count(model.backbone_s2) / 1e6, 2) == 302.74
    assert round(count(model.backbone_s1) / 1e6, 2) == 302.61
    assert round(count(model.head_s2) / 1e6, 2) == round(count(model.head_s1) / 1e6, 2) == 46.18
    assert round(count(model.fusion) / 1e6, 2) == 305.20
    assert tuple(model.ctpe.shape) == (1, 365, 2816)
    assert round(count(model) / 1e9, 2) == 1.66
    assert model.config.c4 == 2816 and model.spec.feature_dim == 1024


def test_presets_are_registered_with_sentinel_and_hr_normalisation():
    assert set(SKYSENSE_PRESETS) <= set(list_models("skysense-*"))
    spec = get_model_spec("skysense-huge")
    assert spec.fuses_time and spec.stride == 1 and spec.output == "dense"
    assert spec.window == 16 and spec.window % 4 == 0
    assert spec.required_modalities == ()
    assert spec.modality_names == ("s2", "s1", "hr")
    s2, s1, hr = (spec.modality(m) for m in ("s2", "s1", "hr"))
    assert s2.bands == S2_BANDS and s2.units == "dn" and s2.grid_factor == 1
    assert s2.mean[0] == 884.30 and s2.std[-1] == 1343.48
    assert s1.bands == S1_BANDS == ("VV", "VH") and s1.units == "db"
    assert s1.mean == (-12.548, -20.192) and s1.std == (5.257, 5.912)
    assert hr.bands == ("red", "green", "blue") and hr.units == "rgb255"
    assert hr.grid_factor == 32 and hr.mean == (123.675, 116.28, 103.53)
    assert get_model_spec("skysense-small").feature_dim == 192


def test_fixture_hyperparameters_derive_every_size(hyper):
    cfg = SkySenseConfig.from_hyperparameters(hyper)
    assert cfg.c4 == 128 and cfg.embed_dim == 32 and cfg.calendar_time == 365
    assert cfg.swin["depths"] == [2, 2, 3, 2] and cfg.swin["out_indices"] == [0, 1, 2, 3]
    assert cfg.vit_s2["num_layers"] == 3 and cfg.vit_s1["num_layers"] == 2
    assert cfg.vit_pos_grid == {"s2": (8, 8), "s1": (8, 8)}
    model = SkySense(hyper, window=8)
    assert model.head_s2.decoder[0].weight.shape == (128 * 16, 32, 1, 1)
    assert model.fusion.porj_linear.weight.shape == (32, 128)
    # Blocks carrying norm3: (i + 1) % 3 == 0 -> block 2 of stage 2 only.
    norm3 = [(s, b) for s, st in enumerate(model.backbone_gep.stages)
             for b, blk in enumerate(st.blocks) if blk.norm3 is not None]
    assert norm3 == [(2, 2)]
    # A whole config.json is accepted too.
    assert SkySenseConfig.from_hyperparameters({"hyperparameters": hyper}).c4 == 128


def test_swin_arch_names_resolve_to_the_skysense_huge_entry():
    cfg = SkySenseConfig.from_hyperparameters({"swin": {"arch": "huge"}})
    assert cfg.swin["num_heads"] == [8, 16, 32, 64] and cfg.swin["extra_norm_every_n_blocks"] == 6
    assert cfg.swin["embed_dims"] == 352 and cfg.c4 == 2816
    # Missing arguments take the official defaults: ViT-L and a 24-layer fusion.
    assert cfg.vit_s2["embed_dims"] == 1024 and cfg.vit_s2["num_layers"] == 24
    assert cfg.fusion["num_layers"] == 24 and cfg.vit_pos_grid["s2"] == (16, 16)


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("vit_s2", "num_head"), 4, r"unknown argument\(s\) 'num_head'"),
        (("vit_s1", "num_heads"), 5, r"\['vit_s1'\]\['num_heads'\]: embed_dims 32 is not divisible"),
        (("fusion", "input_dims"), 64, r"input_dims'\]: 64 differs from the Swin stage-4 width 128"),
        (("vit_s2", "in_channels"), 12, r"in_channels'\]: 12; this branch takes 10 bands"),
        (("swin", "out_indices"), [0, 1], r"include the last stage 3"),
        (("swin", "use_abs_pos_embed"), True, r"use_abs_pos_embed'\]: True is not supported"),
        (("vit_s2", "act_cfg"), {"type": "ReLU"}, r"only GELU"),
        (("colour",), 1, r"unknown key\(s\) 'colour'"),
    ],
)
def test_bad_hyperparameters_are_named_in_the_error(hyper, path, value, match):
    hp = copy.deepcopy(hyper)
    target = hp
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(XSkyError, match=match):
        SkySenseConfig.from_hyperparameters(hp)


@pytest.mark.parametrize("window", [6, 0, 10, "16"])
def test_window_must_be_a_multiple_of_the_patch_size(window):
    with pytest.raises(XSkyError, match="multiple of the ViT patch size 4"):
        create_model("skysense-tiny", window=window)


def test_unknown_create_model_options_are_listed():
    with pytest.raises(XSkyError, match=r"no option\(s\) 'windw'.*'temporal'"):
        create_model("skysense-tiny", windw=8)
    with pytest.raises(XSkyError, match="'fused' or 'per-date'"):
        create_model("skysense-tiny", temporal="daily")


# ---- engine contract ----------------------------------------------------------------------
def test_embed_windows_with_all_valid_inputs_equals_the_official_layout_forward(tiny):
    inp = _windows()
    out = _embed(tiny, inp)
    assert out.shape == (2, 96, 8, 8) and out.dtype == torch.float32
    with torch.no_grad():
        ref = tiny(inp["hr"][:, :, 0], inp["s2"], inp["s1"], inp["s2_doy"], inp["s1_doy"])
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    assert torch.isfinite(out).all()


def test_masking_a_whole_date_equals_omitting_it(tiny):
    inp = _windows(hr=False)
    valid = torch.ones(2, 3, 8, 8, dtype=torch.bool)
    valid[:, 1] = False
    masked = _embed(tiny, {**inp, "s2_valid": valid})
    keep = [0, 2]
    omitted = _embed(tiny, {**inp, "s2": inp["s2"][:, :, keep], "s2_doy": inp["s2_doy"][:, keep]})
    torch.testing.assert_close(masked, omitted, atol=1e-6, rtol=0)
    full = _embed(tiny, inp)
    assert (masked - full).abs().max() > 1e-2  # the date did matter


def test_masking_a_date_at_one_pixel_changes_only_that_pixel_to_the_omitted_result(tiny):
    inp = _windows(hr=False)
    valid = torch.ones(2, 2, 8, 8, dtype=torch.bool)
    valid[1, 0, 5, 2] = False
    masked = _embed(tiny, {**inp, "s1_valid": valid})
    omitted = _embed(tiny, {**inp, "s1": inp["s1"][:, :, 1:], "s1_doy": inp["s1_doy"][:, 1:]})
    full = _embed(tiny, inp)
    torch.testing.assert_close(masked[1, :, 5, 2], omitted[1, :, 5, 2], atol=1e-6, rtol=0)
    other = torch.ones(2, 8, 8, dtype=torch.bool)
    other[1, 5, 2] = False
    torch.testing.assert_close(masked.permute(0, 2, 3, 1)[other],
                               full.permute(0, 2, 3, 1)[other], atol=1e-6, rtol=0)


def test_hr_token_is_masked_only_when_its_whole_32px_block_is_invalid(tiny):
    inp = _windows()
    full = _embed(tiny, inp)
    no_hr = _embed(tiny, {k: v for k, v in inp.items() if not k.startswith("hr")})
    valid = torch.ones(2, 1, 256, 256, dtype=torch.bool)
    valid[0, 0, 32:64, 64:96] = False      # block of S2 pixel (1, 2): all invalid
    valid[0, 0, 96:128, 96:127] = False    # block of pixel (3, 3): one valid column left
    out = _embed(tiny, {**inp, "hr_valid": valid})
    torch.testing.assert_close(out[0, :, 1, 2], no_hr[0, :, 1, 2], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[0, :, 3, 3], full[0, :, 3, 3], atol=1e-6, rtol=0)


def test_pixel_without_any_valid_token_is_nan_and_others_are_finite(tiny):
    inp = _windows()
    s2v = torch.ones(2, 3, 8, 8, dtype=torch.bool)
    s1v = torch.ones(2, 2, 8, 8, dtype=torch.bool)
    hrv = torch.ones(2, 1, 256, 256, dtype=torch.bool)
    s2v[1, :, 4, 6] = s1v[1, :, 4, 6] = False
    hrv[1, 0, 128:160, 192:224] = False
    out = _embed(tiny, {**inp, "s2_valid": s2v, "s1_valid": s1v, "hr_valid": hrv})
    nan = torch.isnan(out)
    assert nan[1, :, 4, 6].all()
    assert torch.equal(nan.any(1), nan.all(1))  # a pixel is all-NaN or has no NaN
    assert nan.all(1).sum() == 1


def test_a_window_with_no_valid_date_of_a_modality_skips_it(tiny):
    inp = _windows(hr=False)
    valid = torch.zeros(2, 3, 8, 8, dtype=torch.bool)
    out = _embed(tiny, {**inp, "s2_valid": valid})
    s1_only = _embed(tiny, {"s1": inp["s1"], "s1_doy": inp["s1_doy"]})
    torch.testing.assert_close(out, s1_only, atol=1e-6, rtol=0)


def test_day_366_uses_the_last_date_code_and_out_of_range_days_raise(tiny):
    inp = _windows(hr=False)
    inp["s2_doy"] = torch.tensor([[366, 10, 20], [1, 366, 365]])
    leap = _embed(tiny, inp)
    same = _embed(tiny, {**inp, "s2_doy": torch.tensor([[365, 10, 20], [1, 365, 365]])})
    assert torch.equal(leap, same)
    with pytest.raises(XSkyError, match=r"outside 1\.\.366"):
        _embed(tiny, {**inp, "s2_doy": torch.tensor([[0, 10, 20], [1, 2, 3]])})


def test_date_encoding_changes_s2_output_unless_disabled():
    inp = _windows(hr=False, t1=1)
    a = create_model("skysense-tiny", window=8)
    b = create_model("skysense-tiny", window=8, use_ctpe=False)
    with torch.no_grad():
        a.ctpe.normal_()  # random init of ctpe is zero
        b.ctpe.copy_(a.ctpe)
    shifted = {**inp, "s2_doy": inp["s2_doy"] % 365 + 1}
    assert (_embed(a, inp) - _embed(a, shifted)).abs().max() > 1e-3
    assert torch.equal(_embed(b, inp), _embed(b, shifted))


def test_no_modality_or_unbuilt_modality_raises(tiny):
    with pytest.raises(XSkyError, match="none of its modalities"):
        tiny.embed_windows({"s2_doy": torch.ones(1, 1, dtype=torch.int64)})
    s2_only = create_model("skysense-tiny", window=8, modality="s2")
    with pytest.raises(XSkyError, match=r"built for \('s2',\), not \['s1'\]"):
        s2_only.embed_windows({"s1": torch.zeros(1, 2, 1, 8, 8)})


def test_hr_must_be_32x_the_sentinel_grid(tiny):
    with pytest.raises(DimensionError, match="HR must be exactly 32x"):
        tiny(hr=torch.zeros(1, 3, 256, 256), s2=torch.zeros(1, 10, 1, 4, 4))
    with pytest.raises(DimensionError, match="multiples of the ViT patch size 4"):
        tiny(s2=torch.zeros(1, 10, 1, 6, 6))
    # 128 px HR: stage 4 is 4x4, smaller than the Swin window 8 (official: refused).
    with pytest.raises(DimensionError, match="smaller than its attention window 8"):
        tiny(hr=torch.zeros(1, 3, 128, 128))


def test_per_date_model_returns_one_embedding_per_date_on_the_10m_grid():
    model = create_model("skysense-tiny", temporal="per-date", modality="s1", window=8)
    assert isinstance(model, SkySensePerDate)
    assert not model.spec.fuses_time and model.spec.modality_names == ("s1",)
    x = torch.randn(3, 2, 8, 8)
    with torch.no_grad():
        out = model.embed_windows({"s1": x})
        ref = model.fusion.porj_linear(model.head_s1(model.backbone_s1(x)).permute(0, 2, 3, 1))
    assert out.shape == (3, 96, 8, 8)
    torch.testing.assert_close(out, ref.permute(0, 3, 1, 2))


#: 4 evenly spaced output values and the sum, on ``_windows(n=1, t2=2, t1=2)`` (HR, S2, S1),
#: computed once (xsky 0.1, torch CPU float32): they move when any branch's forward changes
SMALL_PRESET_VALUES = {
    "skysense-tiny": ([0.15519389510154724, 0.19860869646072388, -0.5849219560623169,
                       0.3811826705932617], -255.81122790835798),
    "skysense-small": ([-0.43645164370536804, -0.6423854231834412, -0.13488158583641052,
                        -1.1681766510009766], 65.1030171085149),
}


def test_small_presets_run_on_cpu_with_every_modality():
    for name in ("skysense-tiny", "skysense-small"):
        model = create_model(name, window=8)
        assert not model.training and model.eval() is model
        out = _embed(model, _windows(n=1, t2=2, t1=2))
        assert out.shape == (1, SkySenseConfig.preset(name).embed_dim, 8, 8)
        values, total = SMALL_PRESET_VALUES[name]
        flat = out.flatten()
        got = flat[torch.linspace(0, flat.numel() - 1, 4).long()]
        # float32 CPU kernels reproduce to ~1e-6 relative; 1e-4 leaves room for other builds
        torch.testing.assert_close(got, torch.tensor(values), rtol=1e-4, atol=1e-5)
        scale = float(out.abs().double().sum())
        assert float(out.double().sum()) == pytest.approx(total, abs=1e-5 * scale)


def test_every_modality_reaches_the_output_and_windows_are_not_mixed():
    model = create_model("skysense-tiny", window=8)
    inp = _windows(n=2, t2=2, t1=2)
    out = _embed(model, inp)
    # each window is embedded on its own: batching does not mix them
    first = {k: v[:1] for k, v in inp.items()}
    out1 = _embed(model, first)
    torch.testing.assert_close(out1, out[:1], rtol=1e-5, atol=1e-5)
    # every modality reaches the output: without it, or with other values, it changes
    # (S2 and S1 checked without HR, whose Swin forward is the slow part)
    no_hr = {k: v for k, v in first.items() if not k.startswith("hr")}
    base = _embed(model, no_hr)
    assert (base - out1).abs().max() > 1e-3
    assert (_embed(model, dict(first, hr=first["hr"].flip(-1))) - out1).abs().max() > 1e-3
    for m in ("s2", "s1"):
        without = {k: v for k, v in no_hr.items() if not k.startswith(m)}
        assert (_embed(model, without) - base).abs().max() > 1e-3, m
        assert (_embed(model, dict(no_hr, **{m: no_hr[m].flip(-1)})) - base).abs().max() > 1e-3


def test_create_model_is_deterministic_and_loads_weights(tmp_path):
    a = create_model("skysense-tiny", window=8, modalities=("s2",))
    b = create_model("skysense-tiny", window=8, modalities=("s2",))
    assert a.weights_sha256 == b.weights_sha256
    with torch.no_grad():
        for p in a.parameters():
            p.add_(0.01)
    torch.save({"model": a.state_dict()}, tmp_path / "ck.pth")
    c = create_model("skysense-tiny", weights=tmp_path / "ck.pth", window=8, modalities=("s2",))
    inp = _windows(hr=False)
    del inp["s1"], inp["s1_doy"]
    assert torch.equal(_embed(a, inp), _embed(c, inp))
    assert c.load_report.loaded == len(a.state_dict())


def test_train_mode_applies_stochastic_depth_and_eval_is_deterministic():
    model = SkySense("skysense-tiny", modalities=("s2",))
    inp = _windows(hr=False)
    s2 = inp["s2"][:1]
    model.train()
    torch.manual_seed(1)
    with torch.no_grad():
        a, b = model(s2=s2), model(s2=s2)
    assert (a - b).abs().max() > 0
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(s2=s2), model(s2=s2))
    assert np.isfinite(a.numpy()).all()


def test_s2_band_subset_builds_a_narrower_branch_with_those_bands_statistics():
    from xsky.models.skysense import S2_MEAN, S2_STD, SKYSENSE_S2_BANDS

    bands = ("B02", "B03", "B04", "B08")
    m = create_model("skysense-tiny", modalities=("s2",), s2_bands=bands, window=8).eval()
    s2 = m.spec.modality("s2")
    assert s2.bands == bands
    idx = [SKYSENSE_S2_BANDS.index(b) for b in bands]
    assert s2.mean == tuple(S2_MEAN[i] for i in idx)
    assert s2.std == tuple(S2_STD[i] for i in idx)
    assert m.backbone_s2.patch_embed.projection.in_channels == 4
    x = torch.randn(2, 4, 3, 8, 8)
    doy = torch.tensor([[10, 120, 300]] * 2)
    y = m.embed_windows({"s2": x, "s2_doy": doy})
    assert y.shape == (2, m.spec.feature_dim, 8, 8) and torch.isfinite(y).all()
    # the official layout forward agrees with the engine entry point on the narrow branch
    torch.testing.assert_close(m(s2=x, s2_doy=doy), y, rtol=1e-5, atol=1e-5)
    with pytest.raises(DimensionError, match="4 bands"):
        m(s2=torch.randn(1, 10, 3, 8, 8))


@pytest.mark.parametrize("bands", [("B02", "red"), ("B02", "B02"), ()])
def test_bad_s2_band_subsets_are_refused_with_an_example(bands):
    with pytest.raises(ArgumentError, match="s2_bands must be distinct bands"):
        create_model("skysense-tiny", s2_bands=bands)
