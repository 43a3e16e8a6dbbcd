"""SatCLIP location encoder: conformance with the official code and checkpoint loading."""

from __future__ import annotations

import math
import pathlib

import numpy as np
import pytest
import torch

from xsky.exceptions import CheckpointError, UnsafeCheckpointError, XSkyError
from xsky.models.satclip import LocationEncoder, SirenNet, read_location_state

# |lat| bands and max abs tolerances of the conformance README for L = 40 outside |lat| < 30
L40_BANDS = [(30, 45, 1e-4), (45, 60, 5e-3), (60, 75, 5e-2), (75, 90.0001, 1e-1)]


@pytest.fixture(scope="module")
def fixture_dir(shared):
    return shared / "conformance" / "satclip"


@pytest.fixture(scope="module")
def cases(fixture_dir):
    with np.load(fixture_dir / "satclip_public_cases.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def ckpt10(fixture_dir):
    return torch.load(fixture_dir / "satclip_public_L10.ckpt", weights_only=True)


def test_l10_outputs_match_official_within_1e_9_on_every_row(fixture_dir, cases):
    enc = LocationEncoder.from_checkpoint(fixture_dir / "satclip_public_L10.ckpt")
    assert not enc.training
    out = enc(torch.from_numpy(cases["lonlat"]))
    assert out.dtype == torch.float64
    assert out.shape == (300, 32)
    err = np.abs(out.detach().numpy() - cases["out_L10"]).max(axis=1)
    assert err.max() <= 1e-9, f"worst row {err.argmax()}: {err.max():.3g}"


def test_l40_outputs_match_official_strict_rows_1e_6_and_latitude_bands(fixture_dir, cases):
    enc = LocationEncoder.from_checkpoint(fixture_dir / "satclip_public_L40.ckpt")
    out = enc(torch.from_numpy(cases["lonlat"])).detach().numpy()
    err = np.abs(out - cases["out_L40"]).max(axis=1)
    strict = cases["l40_strict"]
    assert strict.sum() == 150
    assert err[strict].max() <= 1e-6
    alat = np.abs(cases["lonlat"][:, 1])
    for lo, hi, tol in L40_BANDS:
        rows = (alat >= lo) & (alat < hi)
        assert rows.any()
        assert err[rows].max() <= tol, f"|lat| in [{lo}, {hi}): {err[rows].max():.3g} > {tol}"


def test_sizes_are_read_from_hyper_parameters_not_hard_coded(fixture_dir):
    enc = LocationEncoder.from_checkpoint(fixture_dir / "satclip_public_L40.ckpt")
    assert enc.legendre_polys == 40
    assert enc.embed_dim == 32
    assert enc.nnet.layers[0].weight.shape == (64, 1600)
    assert len(enc.nnet.layers) == 2
    assert enc.hparams["capacity"] == 64
    assert enc.source_sha256 is not None and enc.source_sha256.startswith("35fcdf81")


def test_fast_encode_equals_forward_and_float32_input_is_upcast(fixture_dir, cases):
    enc = LocationEncoder.from_checkpoint(fixture_dir / "satclip_public_L10.ckpt")
    ll = cases["lonlat"]
    ref = enc(torch.from_numpy(ll)).detach().numpy()
    fast = enc.encode(ll[:, 0], ll[:, 1], batch_size=7)  # ragged last batch
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-13)  # BLAS blocking only
    from32 = enc(torch.from_numpy(ll.astype(np.float32))).detach().numpy()
    assert from32.dtype == np.float64
    f32 = ll.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(from32, enc.encode(f32[:, 0], f32[:, 1]), rtol=0, atol=1e-13)


def test_torch_feature_path_with_autograd_equals_numba_path(fixture_dir, cases):
    enc = LocationEncoder.from_checkpoint(fixture_dir / "satclip_public_L10.ckpt")
    ll = torch.from_numpy(cases["lonlat"][50:80].copy()).requires_grad_(True)
    out = enc(ll)
    out.sum().backward()  # the torch recurrence is differentiable in lon/lat
    assert ll.grad is not None and torch.isfinite(ll.grad).all()
    np.testing.assert_allclose(out.detach().numpy(), cases["out_L10"][50:80], atol=1e-9)


def test_dropout_only_in_training_mode(fixture_dir, cases):
    enc = LocationEncoder.from_checkpoint(fixture_dir / "satclip_public_L10.ckpt")
    x = torch.from_numpy(cases["lonlat"][50:60])
    a, b = enc(x), enc(x)
    assert torch.equal(a, b)
    enc.train()
    torch.manual_seed(0)
    c = enc(x)
    assert (c - a).abs().max() > 0.1  # random in train mode, like the official model


def test_siren_layers_use_w0_30_then_1_and_linear_head():
    net = SirenNet(4, 3, 2, num_layers=2).eval()
    x = torch.randn(5, 4, dtype=torch.float64)
    l0, l1, last = net.layers[0], net.layers[1], net.last_layer
    h = torch.sin(30 * (x @ l0.weight.T + l0.bias))
    h = torch.sin(h @ l1.weight.T + l1.bias)
    expected = h @ last.weight.T + last.bias
    torch.testing.assert_close(net(x), expected, rtol=0, atol=1e-14)


def test_loader_accepts_either_alias_and_ignores_lightning_extras(ckpt10, cases):
    sd = ckpt10["state_dict"]
    ref = LocationEncoder.from_state(ckpt10).encode(cases["lonlat"][:, 0], cases["lonlat"][:, 1])
    for keep in ("model.nnet.", "model.location.nnet."):
        ck = {
            "state_dict": {k: v for k, v in sd.items()
                           if k.startswith(keep) or not k.startswith("model.")
                           or "nnet" not in k},
            "hyper_parameters": dict(ckpt10["hyper_parameters"]),
            "epoch": 499, "global_step": 1234, "pytorch-lightning_version": "2.1.0",
            "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}}],
            "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.1)}},
        }
        ck["state_dict"]["model.visual.conv1.weight"] = torch.zeros(64, 13, 7, 7)
        got = LocationEncoder.from_state(ck).encode(cases["lonlat"][:, 0],
                                                   cases["lonlat"][:, 1])
        np.testing.assert_array_equal(got, ref)


def test_loader_infers_sizes_without_hyper_parameters(ckpt10):
    hp, state = read_location_state(dict(ckpt10["state_dict"]))
    assert (hp["legendre_polys"], hp["capacity"], hp["embed_dim"], hp["num_hidden_layers"]) \
        == (10, 64, 32, 2)
    assert set(state) == {"layers.0.weight", "layers.0.bias", "layers.1.weight",
                          "layers.1.bias", "last_layer.weight", "last_layer.bias"}


def test_loader_rejects_inconsistent_or_unsupported_files(ckpt10):
    hp = dict(ckpt10["hyper_parameters"])
    with pytest.raises(CheckpointError, match="capacity"):
        read_location_state({"state_dict": ckpt10["state_dict"],
                             "hyper_parameters": {**hp, "capacity": 512}})
    with pytest.raises(CheckpointError, match="le_type 'theory'"):
        read_location_state({"state_dict": ckpt10["state_dict"],
                             "hyper_parameters": {**hp, "le_type": "theory"}})
    edited = dict(ckpt10["state_dict"])
    edited["model.nnet.layers.0.bias"] = edited["model.nnet.layers.0.bias"] + 1
    with pytest.raises(CheckpointError, match="differ"):
        read_location_state({"state_dict": edited, "hyper_parameters": hp})
    with pytest.raises(CheckpointError, match="no location-encoder tensors"):
        read_location_state({"state_dict": {"model.visual.fc.weight": torch.zeros(2, 2)}})


def test_closed_form_harmonics_differ_by_inverse_pi_and_cs_sign(ckpt10, cases):
    hp = dict(ckpt10["hyper_parameters"])
    analytic = LocationEncoder.from_state(ckpt10)
    closed = LocationEncoder.from_state({"state_dict": ckpt10["state_dict"],
                                         "hyper_parameters": {**hp, "harmonics_calculation":
                                                              "closed-form"}})
    ll = torch.from_numpy(cases["lonlat"][50:55])
    fa, fc = analytic.posenc(ll), closed.posenc(ll)
    for l in range(3):  # noqa: E741
        for m in range(-l, l + 1):
            k = l * l + l + m
            factor = 1 / math.pi if m == 0 else (-1) ** abs(m)
            torch.testing.assert_close(fc[:, k], factor * fa[:, k])


def test_float32_network_is_close_but_not_official_precision(fixture_dir, cases):
    enc = LocationEncoder.from_checkpoint(fixture_dir / "satclip_public_L10.ckpt",
                                          dtype=torch.float32)
    out = enc.encode(cases["lonlat"][:, 0], cases["lonlat"][:, 1])
    assert out.dtype == np.float32
    err = np.abs(out - cases["out_L10"]).max()
    assert 1e-9 < err < 1e-4


class _Payload:
    """Unpickling this object creates a file: a harmless stand-in for malicious code."""

    def __init__(self, target: pathlib.Path) -> None:
        self.target = target

    def __reduce__(self):
        return (pathlib.Path.touch, (self.target,))


def test_pickle_payload_in_checkpoint_is_refused_and_never_runs(tmp_path, ckpt10):
    sentinel = tmp_path / "payload_ran"
    bad = tmp_path / "evil.ckpt"
    torch.save({**ckpt10, "callbacks": _Payload(sentinel)}, bad)
    with pytest.raises(UnsafeCheckpointError, match="trust=True") as info:
        LocationEncoder.from_checkpoint(bad)
    assert "arbitrary code" in str(info.value)
    assert not sentinel.exists()
    # the opt-in really unpickles (which proves the payload was live)
    enc = LocationEncoder.from_checkpoint(bad, trust=True)
    assert sentinel.exists()
    assert enc.embed_dim == 32


def test_missing_or_garbage_checkpoint_raises_checkpoint_error(tmp_path, fixture_dir):
    with pytest.raises(CheckpointError, match="does not exist"):
        LocationEncoder.from_checkpoint(tmp_path / "nope.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match=r"junk\.ckpt' is a text file, not a torch\.save"
                                              r".*starts with 'not a zip file at all'") as err:
        LocationEncoder.from_checkpoint(junk)
    assert not isinstance(err.value, UnsafeCheckpointError)
    # a real checkpoint cut short reaches the "could not read" branch, not the unsafe one
    cut = tmp_path / "cut.ckpt"
    data = (fixture_dir / "satclip_public_L10.ckpt").read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"could not read weights file .*cut\.ckpt.*"
                                              r"Download it again") as err:
        LocationEncoder.from_checkpoint(cut)
    assert not isinstance(err.value, UnsafeCheckpointError)


def test_forward_rejects_wrong_input_shape(fixture_dir):
    enc = LocationEncoder.from_checkpoint(fixture_dir / "satclip_public_L10.ckpt")
    with pytest.raises(XSkyError, match=r"\(N, 2\)"):
        enc(torch.zeros(4, 3, dtype=torch.float64))
