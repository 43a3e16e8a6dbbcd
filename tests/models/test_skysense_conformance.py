"""SkySense against the official modules: every array of the public fixture, and the loader.

The fixture (``../shared/conformance/skysense``) holds outputs of the official SkySense code
(float64, stored as float32) for a small random-weight configuration, and its weights in the
official split-file and full-checkpoint layouts.
"""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch

from xsky.exceptions import CheckpointError, UnsafeCheckpointError
from xsky.models._skysense_vit import resize_pos_embed
from xsky.models.skysense import SPLIT_FILES, SkySense, SkySensePerDate

FUSED = ["fused_hr_s2_s1", "fused_hr_s2", "fused_hr_s1", "fused_s2_s1", "fused_s2",
         "fused_s1", "fused_hr"]
NOCTPE = [f"{k}_noctpe" for k in FUSED if "s2" in k]
MODULE_ARRAYS = ["hr_stage0", "hr_stage1", "hr_stage2", "hr_stage3", "s2_vit_out",
                 "s1_vit_out", "s2_head_out", "s1_head_out", "s2_vit_layers", "s1_vit_layers"]
ALL_ARRAYS = MODULE_ARRAYS + FUSED + NOCTPE


@pytest.fixture(scope="module")
def fixture_dir(shared):
    return shared / "conformance" / "skysense"


@pytest.fixture(scope="module")
def hyper(fixture_dir):
    return json.loads((fixture_dir / "config.json").read_text())["hyperparameters"]


@pytest.fixture(scope="module")
def data(fixture_dir):
    with np.load(fixture_dir / "data.npz") as f:
        return {k: f[k] for k in f.files}


def _inputs(data, dtype=torch.float32):
    t = {k: torch.from_numpy(data[k].astype(np.float64)).to(dtype) for k in ("hr", "s2", "s1")}
    t["s2_doy"] = torch.from_numpy(data["s2_doy"])
    t["s1_doy"] = torch.from_numpy(data["s1_doy"])
    return t


def _run_all(model, data, dtype=torch.float32):
    """Every fixture array, computed by ``model`` in the fixture's layouts."""
    x = _inputs(data, dtype)
    hr, s2, s1, d2, d1 = x["hr"], x["s2"], x["s1"], x["s2_doy"], x["s1_doy"]
    out = {}
    with torch.no_grad():
        f = model.forward_features(hr, s2, s1, d2, d1, return_layers=True)
        for i, a in enumerate(f["hr_stages"]):
            out[f"hr_stage{i}"] = a
        for m in ("s2", "s1"):
            out[f"{m}_vit_out"] = f[f"{m}_vit"]
            out[f"{m}_head_out"] = f[f"{m}_head"]
            out[f"{m}_vit_layers"] = torch.stack(f[f"{m}_vit_layers"])
        out["fused_hr_s2_s1"] = f["fused"]
        for name in FUSED[1:] + NOCTPE:
            mods = name.removeprefix("fused_").removesuffix("_noctpe").split("_")
            doy = None if name.endswith("_noctpe") else d2
            out[name] = model(hr if "hr" in mods else None, s2 if "s2" in mods else None,
                              s1 if "s1" in mods else None, doy, d1)
    return {k: v.double().numpy() for k, v in out.items()}


def _assert_matches(got, data, names, atol_hr=1e-3, atol=5e-5, rtol=1e-4):
    bad = []
    for name in names:
        ref = data[name]
        assert got[name].shape == ref.shape, name
        tol = atol_hr if "hr" in name else atol
        err = np.abs(got[name] - ref)
        if not np.all(err <= tol + rtol * np.abs(ref)):
            bad.append(f"{name}: max abs err {err.max():.3g} > {tol}")
    assert not bad, "; ".join(bad)


@pytest.fixture(scope="module")
def split_model(fixture_dir, hyper):
    return SkySense.from_official(fixture_dir, hyper)


@pytest.fixture(scope="module")
def split_outputs(split_model, data):
    return _run_all(split_model, data)


def test_split_files_reproduce_every_fixture_array_in_float32(split_outputs, data):
    # HR paths at atol 1e-3 (official float32 itself deviates by 1.7e-4), others at 5e-5.
    _assert_matches(split_outputs, data, ALL_ARRAYS)


def test_full_checkpoint_reproduces_every_fixture_array_in_float32(fixture_dir, data):
    # hyperparameters=None: taken from the config.json beside the checkpoint.
    model = SkySense.from_official(fixture_dir / "skysense_model_full.pth")
    assert model.config.c4 == 128
    assert model.load_report.skipped == ["backbone_gep.mask_token"]
    _assert_matches(_run_all(model, data), data, ALL_ARRAYS)


def test_float64_forward_matches_fixture_to_storage_rounding(fixture_dir, hyper, data):
    model = SkySense.from_official(fixture_dir, hyper).double()
    table = model.backbone_gep.stages[0].blocks[0].attn.w_msa.relative_coords_table
    assert table.dtype == torch.float64
    # The table is built in float32 like the official buffer: its values are float32 values.
    assert torch.equal(table, table.float().double())
    got = _run_all(model, data, torch.float64)
    errs = {k: np.abs(got[k] - data[k]).max() for k in ALL_ARRAYS}
    worst = max(errs, key=errs.get)
    assert errs[worst] < 1e-6, f"{worst}: {errs[worst]:.3g}"


def test_skysense_pp_vit_settings_reproduce_the_ppstyle_output(fixture_dir, hyper, data):
    hp = copy.deepcopy(hyper)
    hp["vit_s2"]["with_cls_token"] = False
    hp["vit_s2"]["norm_cfg"] = {"type": "LN", "eps": 1e-6}
    model = SkySense.from_official(fixture_dir, hp, modalities=("s2",))
    with torch.no_grad():
        out = model.forward_features(s2=_inputs(data)["s2"])["s2_vit"].numpy()
    np.testing.assert_allclose(out, data["s2_vit_out_ppstyle"], atol=5e-5, rtol=1e-4)
    assert np.abs(out - data["s2_vit_out"]).max() > 0.1  # the two settings really differ


def test_split_load_report_matches_the_official_recipe(split_model, fixture_dir):
    official = json.loads((fixture_dir / "config.json").read_text())["load_report_official_recipe"]
    rep = split_model.load_report
    assert not rep.missing and not rep.unexpected and not rep.defaulted and not rep.resized
    # What the official HR load reports missing is exactly what xsky rebuilds.
    assert sorted(rep.rebuilt) == sorted(f"backbone_gep.{k}" for k in official["hr"]["missing"])
    assert "skysense_model_backbone_hr.pth:backbone.mask_token" in rep.skipped
    assert sum("ctpe (duplicate)" in k for k in rep.skipped) == 2
    n_model = len(split_model.state_dict())
    assert rep.loaded == n_model
    assert f"{n_model} tensors loaded" in str(rep)


def test_per_date_features_are_the_projected_head_outputs(fixture_dir, hyper, data):
    model = SkySensePerDate.from_official(fixture_dir, hyper, modality="s2", window=8)
    assert any(k.startswith("fusion.layers.") for k in model.load_report.skipped)
    assert not model.spec.fuses_time
    s2 = _inputs(data)["s2"]
    b, c, t, h, w = s2.shape
    with torch.no_grad():
        out = model(s2.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)).double().numpy()
    sd = torch.load(fixture_dir / SPLIT_FILES["fusion"], weights_only=True)
    wt, bias = sd["porj_linear.weight"].double().numpy(), sd["porj_linear.bias"].double().numpy()
    ref = np.einsum("dc,nchw->ndhw", wt, data["s2_head_out"].astype(np.float64))
    ref += bias[None, :, None, None]
    np.testing.assert_allclose(out, ref, atol=5e-5, rtol=1e-4)


# ---- robustness of the loader -------------------------------------------------------------
@pytest.fixture
def copy_dir(fixture_dir, tmp_path):
    """A writable copy of the split files."""
    for name in SPLIT_FILES.values():
        shutil.copy(fixture_dir / name, tmp_path / name)
    return tmp_path


def _rewrite(path, fn):
    sd = torch.load(path, weights_only=True)
    torch.save(fn(sd), path)


def _fused(model, data, *mods):
    x = _inputs(data)
    with torch.no_grad():
        return model(*(x[m] if m in mods else None for m in ("hr", "s2", "s1")),
                     x["s2_doy"], x["s1_doy"]).numpy()


def test_head_and_fusion_files_with_backbone_prefix_load(copy_dir, hyper, data):
    for part in ("head_s2", "head_s1", "fusion"):
        _rewrite(copy_dir / SPLIT_FILES[part], lambda sd: {f"backbone.{k}": v for k, v in sd.items()})
    model = SkySense.from_official(copy_dir, hyper, modalities=("s2", "s1"))
    np.testing.assert_allclose(_fused(model, data, "s2", "s1"), data["fused_s2_s1"],
                               atol=5e-5, rtol=1e-4)


def test_swin_file_without_relative_buffers_and_only_norm3_loads(copy_dir, hyper, data):
    def strip(sd):
        return {k: v for k, v in sd.items() if "relative_" not in k
                and not any(k.startswith(f"backbone.norm{i}.") for i in (0, 1, 2))}

    _rewrite(copy_dir / SPLIT_FILES["backbone_gep"], strip)
    model = SkySense.from_official(copy_dir, hyper)
    rep = model.load_report
    assert rep.rebuilt == []
    assert sorted(rep.defaulted) == sorted(f"backbone_gep.norm{i}.{p}" for i in (0, 1, 2)
                                           for p in ("weight", "bias"))
    assert torch.equal(model.backbone_gep.norm1.weight, torch.ones(32))
    out = _run_all(model, data)
    _assert_matches(out, data, ["hr_stage3", *FUSED])


def test_swin_file_with_norm3_only_loads_into_a_norm3_only_model(fixture_dir, hyper, data):
    hp = copy.deepcopy(hyper)
    hp["swin"]["out_indices"] = [3]
    model = SkySense.from_official(fixture_dir, hp)
    assert sorted(k for k in model.load_report.skipped if ".norm" in k) == sorted(
        f"backbone_gep.norm{i}.{p}" for i in (0, 1, 2) for p in ("weight", "bias"))
    # 3.9e-5 is reached (float32 through the Swin and fusion stacks); 2e-4 leaves 5x
    np.testing.assert_allclose(_fused(model, data, "hr", "s2", "s1"), data["fused_hr_s2_s1"],
                               atol=2e-4, rtol=1e-4)


def test_full_checkpoint_with_pretraining_heads_skips_and_reports_them(fixture_dir, hyper,
                                                                       tmp_path, data):
    ck = torch.load(fixture_dir / "skysense_model_full.pth", weights_only=True)
    ck["model"]["head_gep.proj.weight"] = torch.randn(8, 128)
    ck["model"]["head_gep.proj.bias"] = torch.randn(8)
    ck["model"]["head.mlp.0.weight"] = torch.randn(4, 4)
    ck["optimizer"] = {"step": 3}
    torch.save(ck, tmp_path / "full.pth")
    model = SkySense.from_official(tmp_path / "full.pth", hyper)
    skipped = set(model.load_report.skipped)
    assert {"head_gep.proj.weight", "head_gep.proj.bias", "head.mlp.0.weight"} <= skipped
    assert "head_gep.proj.weight" in str(model.load_report)
    # 3.9e-5 is reached (float32 through the Swin and fusion stacks); 2e-4 leaves 5x
    np.testing.assert_allclose(_fused(model, data, "hr", "s2", "s1"), data["fused_hr_s2_s1"],
                               atol=2e-4, rtol=1e-4)


def test_ctpe_is_found_in_any_backbone_file(copy_dir, hyper, fixture_dir, data):
    for part in ("backbone_s2", "backbone_s1"):
        _rewrite(copy_dir / SPLIT_FILES[part], lambda sd: {k: v for k, v in sd.items()
                                                          if k != "ctpe"})
    model = SkySense.from_official(copy_dir, hyper, modalities=("s2", "s1"))
    want = torch.load(fixture_dir / SPLIT_FILES["backbone_gep"], weights_only=True)["ctpe"]
    assert torch.equal(model.ctpe.detach(), want)
    np.testing.assert_allclose(_fused(model, data, "s2", "s1"), data["fused_s2_s1"],
                               atol=5e-5, rtol=1e-4)


def test_pos_embed_stored_for_another_grid_is_resized_at_load(copy_dir, hyper):
    stored = torch.randn(1, 16 * 16 + 1, 32)
    _rewrite(copy_dir / SPLIT_FILES["backbone_s2"], lambda sd: {**sd, "pos_embed": stored})
    model = SkySense.from_official(copy_dir, hyper, modalities=("s2",))
    assert model.load_report.resized == ["backbone_s2.pos_embed"]
    want = resize_pos_embed(stored, (8, 8), (16, 16), "bicubic")
    assert model.backbone_s2.pos_embed.shape == (1, 65, 32)
    torch.testing.assert_close(model.backbone_s2.pos_embed.detach(), want)
    assert torch.equal(model.backbone_s2.pos_embed[0, 0].detach(), stored[0, 0])


def test_missing_required_key_raises_listing_it_and_strict_false_reports(copy_dir, hyper):
    _rewrite(copy_dir / SPLIT_FILES["fusion"],
             lambda sd: {k: v for k, v in sd.items() if not k.startswith("layers.1.ln2")})
    with pytest.raises(CheckpointError) as err:
        SkySense.from_official(copy_dir, hyper)
    msg = str(err.value)
    assert "fusion.layers.1.ln2.weight" in msg and "fusion.layers.1.ln2.bias" in msg
    assert "strict=False" in msg
    model = SkySense.from_official(copy_dir, hyper, strict=False)
    assert sorted(model.load_report.missing) == ["fusion.layers.1.ln2.bias",
                                                 "fusion.layers.1.ln2.weight"]


def test_unexpected_key_in_a_used_module_is_an_error_when_strict(copy_dir, hyper):
    _rewrite(copy_dir / SPLIT_FILES["backbone_s1"],
             lambda sd: {**sd, "layers.0.attn.extra": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"backbone_s1\.layers\.0\.attn\.extra"):
        SkySense.from_official(copy_dir, hyper)
    model = SkySense.from_official(copy_dir, hyper, strict=False)
    assert model.load_report.unexpected == ["backbone_s1.layers.0.attn.extra"]


def test_wrong_hyperparameters_give_a_shape_report(fixture_dir, hyper):
    hp = copy.deepcopy(hyper)
    hp["fusion"]["embed_dims"] = 64
    with pytest.raises(CheckpointError, match=r"fusion\.cls_token: file \(1, 1, 32\) vs model "
                                              r"\(1, 1, 64\)"):
        SkySense.from_official(fixture_dir, hp)


def test_missing_split_file_is_named(copy_dir, hyper):
    (copy_dir / SPLIT_FILES["head_s1"]).unlink()
    with pytest.raises(CheckpointError, match=r"skysense_model_head_s1\.pth"):
        SkySense.from_official(copy_dir, hyper)
    # A model without the S1 branch does not need it.
    model = SkySense.from_official(copy_dir, hyper, modalities=("hr", "s2"))
    assert model.backbone_s1 is None


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_pickle_payload_is_refused_and_never_runs(copy_dir, hyper, tmp_path):
    marker = tmp_path / "pwned"
    sd = torch.load(copy_dir / SPLIT_FILES["fusion"], weights_only=True)
    torch.save({**sd, "evil": _Payload(marker)}, copy_dir / SPLIT_FILES["fusion"])
    with pytest.raises(UnsafeCheckpointError, match="trust=True"):
        SkySense.from_official(copy_dir, hyper)
    assert not marker.exists()
    # The payload is live: opting in for a trusted file does run it (and the extra entry,
    # not a tensor, is then ignored).
    SkySense.from_official(copy_dir, hyper, trust=True)
    assert marker.exists()


def test_state_dict_round_trips_as_a_full_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = SkySense("skysense-tiny", modalities=("s2", "s1")).eval()
    torch.save({"model": model.state_dict()}, tmp_path / "ck.pth")
    again = SkySense.from_official(tmp_path / "ck.pth", "skysense-tiny", modalities=("s2", "s1"))
    assert again.load_report.loaded == len(model.state_dict())
    s2, s1 = torch.randn(1, 10, 2, 8, 8), torch.randn(1, 2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(s2=s2, s1=s1), again(s2=s2, s1=s1))
