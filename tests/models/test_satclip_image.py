"""SatCLIP image encoders: registry, timm key layout, preprocessing and checkpoint loading."""

from __future__ import annotations

import io
import pathlib

import numpy as np
import pytest
import torch
import xarray as xr

import xsky.models as xm
from xsky.exceptions import CheckpointError, UnsafeCheckpointError, XSkyError
from xsky.models import satclip
from xsky.models.satclip import S2_BANDS, LocationEncoder, SatCLIPImageEncoder

NAMES = [f"satclip-{a}-l{L}" for a in ("resnet18", "resnet50", "vit16") for L in (10, 40)]

# Parameter counts of timm's resnet18 / resnet50 / vit_small_patch16_224 (3 input channels,
# 1000 classes: 11,689,512 / 25,557,032 / 22,050,664) adjusted to 13 channels and a 256-d head.
PARAMS = {
    "resnet18": 11_689_512 + 64 * 10 * 49 - (512 * 1000 + 1000) + (512 * 256 + 256),
    "resnet50": 25_557_032 + 64 * 10 * 49 - (2048 * 1000 + 1000) + (2048 * 256 + 256),
    "vit16": 22_050_664 + 384 * 10 * 256 - (384 * 1000 + 1000) + (384 * 256 + 256),
}
# A few official `model.visual.*` names and shapes (timm layout) per architecture.
KEYS = {
    "resnet18": {"conv1.weight": (64, 13, 7, 7), "bn1.running_var": (64,),
                 "layer1.0.conv2.weight": (64, 64, 3, 3),
                 "layer2.0.downsample.0.weight": (128, 64, 1, 1),
                 "layer2.0.downsample.1.num_batches_tracked": (),
                 "layer4.1.bn2.weight": (512,), "fc.weight": (256, 512), "fc.bias": (256,)},
    "resnet50": {"conv1.weight": (64, 13, 7, 7), "layer1.0.conv3.weight": (256, 64, 1, 1),
                 "layer1.0.downsample.0.weight": (256, 64, 1, 1),
                 "layer3.5.conv2.weight": (256, 256, 3, 3), "fc.weight": (256, 2048)},
    "vit16": {"cls_token": (1, 1, 384), "pos_embed": (1, 197, 384),
              "patch_embed.proj.weight": (384, 13, 16, 16),
              "blocks.11.attn.qkv.weight": (1152, 384), "blocks.0.attn.proj.bias": (384,),
              "blocks.3.mlp.fc1.weight": (1536, 384), "blocks.3.mlp.fc2.weight": (384, 1536),
              "blocks.0.norm1.weight": (384,), "norm.bias": (384,), "head.weight": (256, 384)},
}
NUM_KEYS = {"resnet18": 122, "resnet50": 320, "vit16": 152}


def _official_ckpt(visual: dict, *, arch: str = "resnet18", L: int = 10) -> dict:
    """A checkpoint with the official Lightning layout around the given image tensors."""
    head = visual["head.weight" if arch == "vit16" else "fc.weight"]
    embed_dim = int(head.shape[0])
    loc = LocationEncoder(L, 64, embed_dim).nnet.state_dict()
    sd = {"model.logit_scale": torch.tensor(2.6593)}
    sd.update({f"model.visual.{k}": v for k, v in visual.items()})
    for prefix in ("model.nnet.", "model.location.nnet."):
        sd.update({prefix + k: v for k, v in loc.items()})
    hp = {"embed_dim": embed_dim, "image_resolution": 256, "vision_layers": f"moco_{arch}",
          "vision_width": 768, "vision_patch_size": 32, "in_channels": 13,
          "le_type": "sphericalharmonics", "pe_type": "siren", "frequency_num": 16,
          "max_radius": 360, "min_radius": 1, "legendre_polys": L,
          "harmonics_calculation": "analytic", "sh_embedding_dims": 32,
          "learning_rate": 1e-4, "weight_decay": 0.01, "num_hidden_layers": 2, "capacity": 64,
          "eval_downstream": False, "air_temp_data_path": "", "election_data_path": ""}
    return {"state_dict": sd, "hyper_parameters": hp, "epoch": 3, "global_step": 10,
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4}]}],
            "lr_schedulers": []}


def test_six_satclip_models_are_registered_with_pooled_s2_reflectance_specs():
    assert xm.list_models("satclip-*") == sorted(NAMES)
    for name in NAMES:
        spec = xm.get_model_spec(name)
        assert spec.output == "pooled"
        assert spec.feature_dim == 256
        assert spec.bands == S2_BANDS and len(spec.bands) == 12 and "B10" not in spec.bands
        mod = spec.modality("s2")
        assert mod.units == "reflectance" and mod.mean is None and mod.std is None
        assert spec.window == (224 if "vit16" in name else 256)
        assert spec.stride == spec.window
        assert spec.metadata["legendre_polys"] == int(name.rsplit("-l", 1)[1])
        assert spec.metadata["weights_url"].endswith(name.replace("satclip-", "satclip-")
                                                     + ".ckpt")


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "vit16"])
def test_backbones_have_timm_key_names_shapes_and_parameter_counts(arch):
    model = xm.create_model(f"satclip-{arch}-l10")
    sd = model.visual.state_dict()
    assert len(sd) == NUM_KEYS[arch]
    for key, shape in KEYS[arch].items():
        assert tuple(sd[key].shape) == shape, key
    assert sum(p.numel() for p in model.visual.parameters()) == PARAMS[arch]


def test_b10_zero_band_is_inserted_at_channel_10_of_reflectance_input(shared):
    rioxarray = pytest.importorskip("rioxarray")
    tif = shared / "data" / "s2_satclip_patches" / "example_s2" / "patch_445.tif"
    dn = rioxarray.open_rasterio(tif).values.astype(np.float32)
    assert dn.shape == (12, 256, 256)
    x = torch.from_numpy(dn / 10000.0)[None, :, :64, :64]
    model = xm.create_model("satclip-resnet18-l10", window=64)
    seen = {}
    model.visual.conv1.register_forward_hook(lambda m, inp, out: seen.update(x=inp[0]))
    with torch.inference_mode():
        out = model.embed_windows({"s2": x})
    got = seen["x"]
    assert got.shape == (1, 13, 64, 64)
    assert torch.all(got[:, 10] == 0)
    torch.testing.assert_close(got[:, :10], x[:, :10], rtol=0, atol=0)
    torch.testing.assert_close(got[:, 11:], x[:, 10:], rtol=0, atol=0)  # B11, B12 move up
    assert out.shape == (1, 256) and torch.isfinite(out).all()


def test_official_layout_checkpoint_loads_strictly_and_reproduces_the_backbone(tmp_path):
    torch.manual_seed(1)
    src = satclip.resnet18(in_chans=13, num_classes=256).eval()
    with torch.no_grad():
        for mod in src.modules():  # non-trivial BN statistics, as after training
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "satclip-resnet18-l10.ckpt"
    torch.save(_official_ckpt(src.state_dict()), path)
    model = xm.create_model("satclip-resnet18-l10", weights=path, stride=64)
    assert isinstance(model, SatCLIPImageEncoder) and not model.training
    assert model.spec.stride == 64 and model.spec.window == 256
    assert model.hparams["vision_layers"] == "moco_resnet18"
    x = torch.rand(2, 12, 96, 96) * 0.3
    x13 = torch.cat([x[:, :10], torch.zeros(2, 1, 96, 96), x[:, 10:]], 1)
    with torch.inference_mode():
        torch.testing.assert_close(model.embed_windows({"s2": x}), src(x13))
    # the location encoder of the same file
    enc = model.location_encoder()
    assert isinstance(enc, LocationEncoder) and enc.legendre_polys == 10
    assert enc.embed_dim == model.spec.feature_dim == 256


def test_feature_dim_is_read_from_the_checkpoint_head(tmp_path):
    src = satclip.vit_small_patch16_224(in_chans=13, num_classes=128)
    path = tmp_path / "vit.ckpt"
    torch.save(_official_ckpt(src.state_dict(), arch="vit16", L=40), path)
    with pytest.raises(CheckpointError, match="satclip-vit16-l40"):
        xm.create_model("satclip-vit16-l10", weights=path)  # L in the name must match
    model = xm.create_model("satclip-vit16-l40", weights=path)
    assert model.spec.feature_dim == 128
    with torch.inference_mode():
        assert model.embed_windows({"s2": torch.rand(1, 12, 224, 224)}).shape == (1, 128)
        with pytest.raises(XSkyError, match="224x224"):
            model.embed_windows({"s2": torch.rand(1, 12, 256, 256)})


def test_wrong_architecture_or_location_only_checkpoint_is_rejected(tmp_path, shared):
    src = satclip.resnet18(in_chans=13, num_classes=256)
    path = tmp_path / "r18.ckpt"
    torch.save(_official_ckpt(src.state_dict()), path)
    with pytest.raises(CheckpointError, match="satclip-resnet18-l10"):
        xm.create_model("satclip-resnet50-l10", weights=path)
    # hyper-parameters lost: the strict load itself reports the mismatch
    bare = tmp_path / "bare.pt"
    torch.save({f"model.visual.{k}": v for k, v in src.state_dict().items()}, bare)
    with pytest.raises(CheckpointError, match="do not fit satclip-resnet50-l10"):
        xm.create_model("satclip-resnet50-l10", weights=bare)
    loc_only = shared / "conformance" / "satclip" / "satclip_public_L10.ckpt"
    with pytest.raises(CheckpointError, match="location_embed"):
        xm.create_model("satclip-resnet18-l10", weights=loc_only)


class _Payload:
    """Unpickling this object creates a file: a harmless stand-in for malicious code."""

    def __init__(self, target: pathlib.Path) -> None:
        self.target = target

    def __reduce__(self):
        return (pathlib.Path.touch, (self.target,))


def test_pickle_payload_in_image_checkpoint_is_refused_and_never_runs(tmp_path):
    sentinel = tmp_path / "payload_ran"
    path = tmp_path / "evil.ckpt"
    src = satclip.resnet18(in_chans=13, num_classes=256)
    torch.save({**_official_ckpt(src.state_dict()), "callbacks": _Payload(sentinel)}, path)
    with pytest.raises(UnsafeCheckpointError, match="trust=True"):
        xm.create_model("satclip-resnet18-l10", weights=path)
    assert not sentinel.exists()
    model = xm.create_model("satclip-resnet18-l10", weights=path, trust=True)
    assert sentinel.exists()  # the opt-in unpickles, so the payload was live
    assert model.spec.feature_dim == 256


def test_random_init_is_deterministic_per_name_and_overrides_are_validated():
    a = xm.create_model("satclip-resnet18-l40")
    b = xm.create_model("satclip-resnet18-l40")
    assert a.weights_sha256 == b.weights_sha256
    with pytest.raises(XSkyError, match="window must be 224"):
        xm.create_model("satclip-vit16-l10", window=256)
    with pytest.raises(XSkyError, match="multiple of 32"):
        xm.create_model("satclip-resnet18-l10", window=100)
    with pytest.raises(XSkyError, match=r"\(N, 12, H, W\)"):
        a.embed_windows({"s2": torch.zeros(1, 4, 64, 64)})


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_download_is_optional_cached_and_atomic(tmp_path, monkeypatch):
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append(url)
        return _FakeResponse(b"checkpoint-bytes")

    monkeypatch.setattr(satclip.urllib.request, "urlopen", fake_urlopen)
    p1 = satclip.download_checkpoint("satclip-vit16-l40", cache_dir=tmp_path)
    p2 = satclip.download_checkpoint("satclip-vit16-l40", cache_dir=tmp_path)
    assert p1 == p2 == tmp_path / "satclip-vit16-l40.ckpt"
    assert p1.read_bytes() == b"checkpoint-bytes"
    assert calls == ["https://huggingface.co/microsoft/SatCLIP-ViT16-L40/resolve/main/"
                     "satclip-vit16-l40.ckpt"]
    assert not list(tmp_path.glob("*.part"))

    def failing(url, timeout=None):
        raise OSError("network unreachable")

    monkeypatch.setattr(satclip.urllib.request, "urlopen", failing)
    with pytest.raises(CheckpointError, match="pass its local path"):
        satclip.download_checkpoint("satclip-resnet50-l10", cache_dir=tmp_path)
    assert not list(tmp_path.glob("*.part"))
    with pytest.raises(XSkyError, match="unknown SatCLIP model"):
        satclip.download_checkpoint("satclip-vit32-l10", cache_dir=tmp_path)


def _real_patch_dataset(shared) -> xr.Dataset:
    """A real 12-band S2 L2A patch (SatCLIP's S2-100K format) as reflectance variables."""
    rioxarray = pytest.importorskip("rioxarray")
    tif = shared / "data" / "s2_satclip_patches" / "example_s2" / "patch_8845.tif"
    raw = rioxarray.open_rasterio(tif)
    ds = xr.Dataset({b: (raw.isel(band=i, drop=True).astype("float32") / 10000.0)
                     for i, b in enumerate(S2_BANDS)})
    for b in S2_BANDS:
        ds[b].attrs["units"] = "reflectance"
    return ds.rio.write_crs(raw.rio.crs)


def test_embed_through_engine_gives_one_georeferenced_vector_per_tile(tmp_path, shared):
    ds = _real_patch_dataset(shared).chunk({"y": 128, "x": 128})
    src = satclip.resnet18(in_chans=13, num_classes=256).eval()
    path = tmp_path / "satclip-resnet18-l10.ckpt"
    torch.save(_official_ckpt(src.state_dict()), path)
    emb = ds.sky.embed("satclip-resnet18-l10", weights=path, device="cpu")
    assert emb.dims == ("y", "x", "feature") and emb.shape == (1, 1, 256)
    assert emb.rio.crs == ds.rio.crs
    assert emb.x.values[0] == pytest.approx(float(ds.x.values[:].mean()))
    # the whole 256 x 256 tile, DN / 10000 with a zero B10: SatCLIP's own preprocessing
    x12 = torch.from_numpy(np.stack([ds[b].values for b in S2_BANDS]))[None]
    x13 = torch.cat([x12[:, :10], torch.zeros_like(x12[:, :1]), x12[:, 10:]], 1)
    with torch.inference_mode():
        want = src(x13)[0].numpy()
    np.testing.assert_allclose(emb.values[0, 0], want, rtol=1e-4, atol=1e-5)
    # a finer stride: one vector per 128 x 128 cell, from the 256 window centred on it
    fine = ds.sky.embed("satclip-resnet18-l10", weights=path, stride=128, device="cpu")
    assert fine.shape == (2, 2, 256)
    assert np.diff(fine.x.values) == pytest.approx(128 * float(ds.x.values[1] - ds.x.values[0]))
    assert fine.attrs["stride"] == 128
    assert np.isfinite(fine.values).all()
