"""The runtime cache keys every model option, and workers check weights before unpickling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xsky
from xsky.exceptions import ArgumentError, CheckpointError, UnsafeCheckpointError
from xsky.models import create_model
from xsky.models.satclip import S2_BANDS, LocationEncoder
from xsky.runtime import cache
from xsky.testing import synthetic_s2_cube


class TrustedState(dict):
    """A harmless custom class: a file holding it needs full unpickling (trust=True)."""


class Payload:
    """What a swapped-in file would run when unpickled: it creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


pytestmark = pytest.mark.usefixtures("isolated_cache")  # each test: an empty model cache


@pytest.fixture(scope="module")
def cube():
    return synthetic_s2_cube(64, 64, 1, seed=3).chunk(y=32, x=32)


def _fresh(cube, model, **options):
    """What the model computes in a process with nothing cached."""
    cache.clear_cache()
    out = xsky.embed(cube, model, **options).compute(scheduler="threads").values
    cache.clear_cache()
    return out


@pytest.mark.parametrize("first_override", [False, True])
def test_model_options_never_leak_through_the_cache(cube, first_override):
    plain, big = _fresh(cube, "test-tiny"), _fresh(cube, "test-tiny", window=32)
    assert not np.allclose(plain, big)  # window=32 computes something else
    order = [{"window": 32}, {}, {"window": 32}] if first_override else [{}, {"window": 32}, {}]
    for options in order:
        out = xsky.embed(cube, "test-tiny", **options).compute(scheduler="threads").values
        np.testing.assert_array_equal(out, big if options else plain)
        assert cache.get_or_create("test-tiny", **options).spec.window == (32 if options else 16)
    # both are cached side by side, under different keys
    a, b = create_model("test-tiny").ref, create_model("test-tiny", window=32).ref
    assert a.sha256 == b.sha256 and a.key != b.key


@pytest.mark.parametrize("override_first", [False, True])
def test_workers_rebuilding_from_a_reference_get_the_overridden_model(cube, override_first):
    plain, big = _fresh(cube, "test-tiny"), _fresh(cube, "test-tiny", window=32)
    graphs = {"plain": xsky.embed(cube, "test-tiny"), "big": xsky.embed(cube, "test-tiny",
                                                                          window=32)}
    cache.clear_cache()  # a worker that has cached nothing rebuilds both from their refs
    for kind in (["big", "plain"] if override_first else ["plain", "big"]):
        out = graphs[kind].compute(scheduler="threads").values
        np.testing.assert_array_equal(out, big if kind == "big" else plain)
    assert len([k for k in cache.BUILDS if k[0] == "test-tiny"]) == 2


def _satclip_cube():
    return synthetic_s2_cube(256, 256, 1, bands=S2_BANDS, seed=5).chunk(y=128, x=128)


def _official_ckpt(visual, L=10, hp_type=dict):
    from tests.models.test_satclip_image import _official_ckpt as build

    ckpt = build(visual, arch="resnet18", L=L)
    ckpt["hyper_parameters"] = hp_type(ckpt["hyper_parameters"])
    return ckpt


@pytest.mark.parametrize("with_weights", [False, True])
def test_satclip_stride_never_leaks_through_the_cache(tmp_path, with_weights):
    cube = _satclip_cube()
    weights = None
    if with_weights:
        src = create_model("satclip-resnet18-l10")
        weights = tmp_path / "satclip-resnet18-l10.ckpt"
        torch.save(_official_ckpt(src.visual.state_dict()), weights)
    plain = _fresh(cube, "satclip-resnet18-l10", weights=weights)
    fine = _fresh(cube, "satclip-resnet18-l10", weights=weights, stride=128)
    assert plain.shape[1:3] == (1, 1) and fine.shape[1:3] == (2, 2)
    for options in ({}, {"stride": 128}, {}):
        out = xsky.embed(cube, "satclip-resnet18-l10", weights=weights,
                         **options).compute(scheduler="threads").values
        np.testing.assert_array_equal(out, fine if options else plain)
    graph = xsky.embed(cube, "satclip-resnet18-l10", weights=weights, stride=128)
    cache.clear_cache()
    np.testing.assert_array_equal(graph.compute(scheduler="threads").values, fine)


# ---- trust=True: a worker checks the file's digest before it unpickles it ----------------


def test_trusted_weights_swapped_after_the_graph_was_built_are_never_unpickled(tmp_path, cube):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "tiny.pt"
    torch.save(TrustedState(create_model("test-tiny").state_dict()), path)
    with pytest.raises(UnsafeCheckpointError, match="trust=True"):
        create_model("test-tiny", path)
    emb = xsky.embed(cube, "test-tiny", weights=path, trust=True)
    # unchanged, a worker that has cached nothing rebuilds it
    cache.clear_cache()
    good = emb.compute(scheduler="threads").values
    np.testing.assert_array_equal(good, _fresh(cube, "test-tiny"))
    torch.save({"stem.weight": Payload(marker)}, path)  # swapped after the graph was built
    cache.clear_cache()
    with pytest.raises(CheckpointError, match="changed after the graph was built") as info:
        emb.compute(scheduler="threads")
    assert "build the graph again" in str(info.value)
    assert not marker.exists()


def test_trusted_satclip_checkpoint_swapped_on_a_worker_is_refused(tmp_path):
    marker = tmp_path / "payload-ran"
    cube = _satclip_cube()
    src = create_model("satclip-resnet18-l10")
    path = tmp_path / "satclip-resnet18-l10.ckpt"
    # Lightning stores hyper_parameters as its own dict class: a real trusted pickle
    torch.save(_official_ckpt(src.visual.state_dict(), hp_type=TrustedState), path)
    emb = xsky.embed(cube, "satclip-resnet18-l10", weights=path, trust=True)
    torch.save({"state_dict": {"model.visual.conv1.weight": Payload(marker)}}, path)
    cache.clear_cache()
    with pytest.raises(CheckpointError, match="changed after the graph was built"):
        emb.compute(scheduler="threads")
    assert not marker.exists()


def _location_ckpt(path, hp_type=dict):
    enc = LocationEncoder(10, 16, 8).eval()
    sd = {f"model.location.nnet.{k}": v for k, v in enc.nnet.state_dict().items()}
    hp = hp_type(legendre_polys=10, capacity=16, embed_dim=8, num_hidden_layers=2,
                 le_type="sphericalharmonics", pe_type="siren")
    torch.save({"state_dict": sd, "hyper_parameters": hp}, path)


def test_trusted_location_checkpoint_swapped_on_a_worker_is_refused(tmp_path, cube):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "loc.ckpt"
    _location_ckpt(path, hp_type=TrustedState)
    with pytest.raises(UnsafeCheckpointError, match="trust=True"):
        xsky.location_embed(cube, path)
    emb = xsky.location_embed(cube, path, trust=True, stride=8)
    cache.clear_cache()
    assert np.isfinite(emb.compute(scheduler="threads").values).all()
    torch.save({"state_dict": {"model.nnet.x": Payload(marker)}}, path)
    cache.clear_cache()
    with pytest.raises(CheckpointError, match="changed after the graph was built"):
        emb.compute(scheduler="threads")
    assert not marker.exists()


def test_trusted_location_reference_without_a_file_digest_is_refused(tmp_path):
    from xsky.models import LocationRef

    path = tmp_path / "loc.ckpt"
    _location_ckpt(path, hp_type=TrustedState)
    ref = LocationRef("0" * 64, str(path), True, "satclip-location-l10", 10, 8)
    with pytest.raises(CheckpointError, match="records no digest"):
        cache.get_location_encoder(ref)


def test_reference_with_weights_but_no_file_digests_is_refused(tmp_path):
    import dataclasses

    path = tmp_path / "tiny.pt"
    torch.save(create_model("test-tiny").state_dict(), path)
    ref = dataclasses.replace(create_model("test-tiny", path).ref, files=())
    cache.clear_cache()
    with pytest.raises(CheckpointError, match=r"records no digest.*build the graph again"):
        cache.get_model(ref)


def test_unknown_options_reach_the_user_as_argument_errors(cube):
    with pytest.raises(ArgumentError, match=r"no option\(s\) 'foo'.*'feature_dim', 'stride', "
                                            r"'trust', 'window'"):
        xsky.embed(cube, "test-tiny", foo=1)
