"""encode(): training features with gradients, equal to embed_windows on valid pixels."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch

from xsky.exceptions import ArgumentError, DimensionError, ModelError
from xsky.models import EmbeddingModel
from xsky.models.skysense import SkySense
from xsky.train.features import FeatureEncoder, Features, encode

W, T2, T1, B = 8, 3, 2, 2



@pytest.fixture(scope="module")
def model() -> SkySense:
    torch.manual_seed(0)
    m = SkySense("skysense-tiny", window=W, modalities=("s2", "s1")).eval()
    with torch.no_grad():  # a non-zero date code, so the S2 tokens' dates matter
        m.ctpe.normal_(0, 0.5)
    return m


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    s2_valid = torch.rand(B, T2, W, W, generator=g) > 0.3
    s2_valid[:, 0] = True
    s2_valid[1, 2] = False  # a date missing from a whole window
    s1_valid = torch.rand(B, T1, W, W, generator=g) > 0.3
    s2_valid[0, :, 0, 0] = False  # pixel (0, 0) of window 0: no input at all
    s1_valid[0, :, 0, 0] = False
    s1_valid[0, :, 1, 1] = False  # pixel (1, 1): S2 only
    s2 = torch.randn(B, 10, T2, W, W, generator=g) * s2_valid[:, None]
    s1 = torch.randn(B, 2, T1, W, W, generator=g) * s1_valid[:, None]
    return {"s2": s2, "s2_valid": s2_valid, "s2_doy": torch.tensor([[20, 150, 300]] * B),
            "s1": s1, "s1_valid": s1_valid, "s1_doy": torch.tensor([[25, 160]] * B),
            "latlon": torch.zeros(B, 2, dtype=torch.float64)}


@pytest.fixture(scope="module")
def feats(model, inputs) -> Features:
    """One forward pass with gradients, shared by the tests."""
    return encode(model, inputs)


def test_fused_equals_embed_windows_on_valid_pixels(model, inputs, feats):
    with torch.no_grad():
        ref = model.embed_windows(inputs)
    f = feats.detach()
    assert f.fused.shape == (B, 96, W, W) and f.valid.shape == (B, W, W)
    assert torch.equal(f.valid, torch.isfinite(ref).all(1))
    assert not f.valid[0, 0, 0] and int(f.valid.sum()) == B * W * W - 1
    v = f.valid[:, None].expand_as(ref)
    torch.testing.assert_close(f.fused[v], ref[v], rtol=1e-5, atol=1e-5)
    assert bool((f.fused[~v] == 0).all())


def test_modality_features_are_masked_date_means_of_the_fusion_tokens(model, inputs, feats):
    """Each modality's feature is the mean over its valid dates of porj_linear(token) (S2
    tokens with the date code), computed here date by date through the public branches."""
    f = feats.detach()
    with torch.no_grad():
        for mod, t_n in (("s2", T2), ("s1", T1)):
            x, valid = inputs[mod], inputs[f"{mod}_valid"]
            toks = []
            for t in range(t_n):
                up = model._run_sat(mod, x[:, :, t])[2].permute(0, 2, 3, 1)  # (B, W, W, C4)
                if mod == "s2":
                    up = up + model.ctpe[0, inputs["s2_doy"][:, t] - 1][:, None, None]
                toks.append(model.fusion.porj_linear(up))
            tok = torch.stack(toks, 1)  # (B, T, W, W, D)
            k = valid[..., None].float()
            mean = (tok * k).sum(1) / k.sum(1).clamp(min=1)
            expected = mean.permute(0, 3, 1, 2)
            has = valid.any(1)
            assert torch.equal(f.modality_valid[mod], has)
            m = has[:, None].expand_as(expected)
            torch.testing.assert_close(f.modalities[mod][m], expected[m], rtol=1e-4, atol=1e-5)
            assert bool((f.modalities[mod][~m] == 0).all())
    assert not f.modality_valid["s1"][0, 1, 1] and f.valid[0, 1, 1]


def test_gradients_reach_the_encoder_and_stay_finite(model, feats):
    def grads(y: torch.Tensor, name: str) -> list[torch.Tensor | None]:
        params = list(getattr(model, name).parameters())
        return list(torch.autograd.grad(y, params, retain_graph=True, allow_unused=True))

    for name in ("backbone_s2", "backbone_s1", "fusion"):
        g = [x for x in grads(feats.fused.sum(), name) if x is not None]
        assert g and all(torch.isfinite(x).all() for x in g), name
        assert any(x.abs().sum() > 0 for x in g), name
    # the per-modality features come before the fusion transformer
    y = feats.modalities["s1"].sum()
    assert all(x is None for x in grads(y, "backbone_s2"))
    layers = list(model.fusion.layers.parameters())
    assert all(x is None for x in torch.autograd.grad(y, layers, retain_graph=True,
                                                      allow_unused=True))
    assert any(x is not None and x.abs().sum() > 0 for x in grads(y, "backbone_s1"))


def test_feature_encoder_module_and_unknown_inputs(model, inputs):
    with torch.no_grad():
        a, b = encode(model, inputs), FeatureEncoder(model)(inputs)
    assert torch.equal(a.fused, b.fused) and torch.equal(a.valid, b.valid)
    with pytest.raises(ArgumentError, match="none of its modalities"):
        encode(model, {"latlon": inputs["latlon"]})
    with pytest.raises(ArgumentError, match="built for"):
        encode(model, {"hr": torch.zeros(B, 3, 1, 32 * W, 32 * W)})


class _NaNModel(EmbeddingModel):
    """A dense model with NaN where a pixel has no valid date (as the engine expects)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 5, 1)

    def embed_windows(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        x, v = inputs["s2"], inputs["s2_valid"]
        k = v[:, None].float()
        y = self.proj((x * k).sum(2) / k.sum(2).clamp(min=1))
        return y.masked_fill(~v.any(1)[:, None], float("nan"))


def test_other_models_give_fused_features_with_nan_as_invalid():
    m = _NaNModel()
    valid = torch.ones(2, 2, 4, 4, dtype=torch.bool)
    valid[1, :, 2, 3] = False
    inputs = {"s2": torch.randn(2, 3, 2, 4, 4), "s2_valid": valid}
    f = encode(m, inputs)
    assert f.modalities == {}
    assert torch.equal(f.valid, valid.any(1))
    assert bool((f.fused[1, :, 2, 3] == 0).all()) and bool(torch.isfinite(f.fused).all())
    f.fused.sum().backward()
    assert torch.isfinite(m.proj.weight.grad).all() and m.proj.weight.grad.abs().sum() > 0


def test_non_dense_models_and_bad_features_are_refused():
    class Pooled(_NaNModel):
        def embed_windows(self, inputs):
            return super().embed_windows(inputs).mean((2, 3))

    with pytest.raises(ModelError, match="dense"):
        encode(Pooled(), {"s2": torch.zeros(1, 3, 1, 4, 4),
                          "s2_valid": torch.ones(1, 1, 4, 4, dtype=torch.bool)})
    with pytest.raises(DimensionError, match="valid"):
        Features(torch.zeros(1, 2, 4, 4), {}, torch.ones(1, 4, 5, dtype=torch.bool))


def test_encode_goes_through_ddp_forward_for_a_wrapped_feature_encoder(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0,
                            world_size=1)
    try:
        m = _NaNModel()
        ddp = torch.nn.parallel.DistributedDataParallel(FeatureEncoder(m))
        inputs = {"s2": torch.randn(2, 3, 2, 4, 4),
                  "s2_valid": torch.ones(2, 2, 4, 4, dtype=torch.bool)}
        f = encode(ddp, inputs)
        assert isinstance(f, Features)
        torch.testing.assert_close(f.fused, encode(m, inputs).fused)
        f.fused.sum().backward()
        assert m.proj.weight.grad.abs().sum() > 0
    finally:
        dist.destroy_process_group()
