"""The per-process model cache, tested directly: its keys, the miss/rebuild path and its
digest checks, the device copies, get_or_create's recipes and the location-encoder files.

Every test starts from an empty cache (the ``isolated_cache`` fixture) and puts back what
was cached before, so no result depends on what another test left behind.
"""

from __future__ import annotations

import dataclasses
import os
import threading

import pytest
import torch

import xsky.models as xm
from xsky.exceptions import ArgumentError, CheckpointError, ModelError
from xsky.models import LocationRef, create_model

from .test_cache_keys import _location_ckpt

TINY_SHA = "22e994f30d5815f19deb1c9e69d098d6c9223199978e1c41178d2dd309d0e76b"


@pytest.fixture
def count_builds(monkeypatch):
    """Calls of xsky.models.create_model (what a cache miss runs), by name."""
    calls: list[str] = []
    real = xm.create_model

    def counting(name, *a, **k):
        calls.append(name)
        return real(name, *a, **k)

    monkeypatch.setattr(xm, "create_model", counting)
    return calls


def _x() -> torch.Tensor:
    return torch.linspace(-1, 1, 2 * 4 * 16 * 16).reshape(2, 4, 16, 16)


def _saved_weights(tmp_path, scale=2.0, name="tiny.pt"):
    m = create_model("test-tiny")
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(scale)
    path = tmp_path / name
    torch.save(m.state_dict(), path)
    return path


# ---- keys ------------------------------------------------------------------------------


def test_model_keys_separate_options_and_weights_and_nothing_else(tmp_path):
    plain = create_model("test-tiny").ref
    again = create_model("test-tiny").ref
    big = create_model("test-tiny", window=32).ref
    weighted = create_model("test-tiny", _saved_weights(tmp_path)).ref
    assert plain.key == again.key  # the same recipe is the same entry
    assert plain.key == ("test-tiny", TINY_SHA, plain.variant)
    # options: same name and weights, another variant
    assert big.key[:2] == plain.key[:2] and big.key != plain.key
    # weights: another digest
    assert weighted.sha256 != plain.sha256 and weighted.key != plain.key
    assert weighted.key[0] == "test-tiny"
    # the variant digests the overrides even when they leave the spec as it is
    same_spec = dataclasses.replace(plain, overrides=(("window", 16),))
    assert same_spec.spec == plain.spec and same_spec.key != plain.key


def test_get_model_keys_by_device_too(isolated_cache):
    ref = create_model("test-tiny").ref
    cpu = isolated_cache.get_model(ref)
    meta = isolated_cache.get_model(ref, "meta")
    assert meta is not cpu
    assert {(*ref.key, "cpu"), (*ref.key, "meta")} <= set(isolated_cache._CACHE)
    assert isolated_cache.get_model(ref, "meta") is meta
    assert isolated_cache.get_model(ref, "cpu") is cpu


# ---- the miss / rebuild path -------------------------------------------------------------


def test_a_miss_builds_once_and_later_calls_reuse_it(isolated_cache, count_builds):
    ref = create_model("test-tiny").ref
    count_builds.clear()
    model = isolated_cache.get_model(ref)
    assert count_builds == ["test-tiny"]
    assert {(*ref.key, "cpu"): 1} == isolated_cache.BUILDS
    assert isolated_cache.get_model(ref) is model and isolated_cache.get_model(ref, "cpu") is model
    assert count_builds == ["test-tiny"] and {(*ref.key, "cpu"): 1} == isolated_cache.BUILDS
    assert model.ref == ref and model.weights_sha256 == TINY_SHA
    with torch.no_grad():
        torch.testing.assert_close(model(_x()), create_model("test-tiny")(_x()), rtol=0, atol=0)


def test_the_rebuild_applies_the_references_options(isolated_cache):
    ref = create_model("test-tiny", window=32).ref
    model = isolated_cache.get_model(ref)
    assert model.spec.window == 32
    assert isolated_cache.get_model(create_model("test-tiny").ref).spec.window == 16


def test_a_rebuild_with_other_weights_than_the_graph_recorded_is_refused(isolated_cache):
    ref = dataclasses.replace(create_model("test-tiny").ref, sha256="0" * 64)
    with pytest.raises(CheckpointError, match=r"rebuilt in this process has weights "
                                              r"22e994f30d58, but the graph expects 000000000000"):
        isolated_cache.get_model(ref)
    assert not isolated_cache._CACHE and not isolated_cache.BUILDS  # nothing half-cached


@pytest.mark.parametrize("name", [None, "no-such-model"])
def test_a_model_only_known_elsewhere_names_the_way_to_ship_it(isolated_cache, name):
    ref = dataclasses.replace(create_model("test-tiny").ref, name=name)
    with pytest.raises(ModelError, match=r"'test-tiny' \(weights 22e994f30d58\) is not "
                                         r"available in this process.*preload"):
        isolated_cache.get_model(ref)


def test_a_rebuild_from_a_weights_file_checks_its_digest_first(isolated_cache, tmp_path):
    path = _saved_weights(tmp_path)
    source = create_model("test-tiny", path)
    ref = source.ref
    assert ref.files and ref.files[0][0] == str(path.resolve())
    model = isolated_cache.get_model(ref)
    with torch.no_grad():
        torch.testing.assert_close(model(_x()), source(_x()), rtol=0, atol=0)
    # another process whose file differs (same name, other bytes) refuses to read it
    isolated_cache.clear_cache()
    _saved_weights(tmp_path, scale=3.0)
    with pytest.raises(CheckpointError, match="changed after the graph was built"):
        isolated_cache.get_model(ref)


def test_device_copies_are_deep_copies_of_the_one_cpu_build(isolated_cache, count_builds):
    ref = create_model("test-tiny").ref
    count_builds.clear()
    meta = isolated_cache.get_model(ref, "meta")
    cpu = isolated_cache.get_model(ref, "cpu")
    assert count_builds == ["test-tiny"]  # one build serves both devices
    assert all(p.device.type == "meta" for p in meta.parameters())
    assert all(p.device.type == "cpu" for p in cpu.parameters())
    assert meta.ref is cpu.ref and meta.weights_sha256 == cpu.weights_sha256 == TINY_SHA
    assert {(*ref.key, "meta"): 1} == isolated_cache.BUILDS


def test_threads_missing_together_build_once(isolated_cache, count_builds):
    ref = create_model("test-tiny").ref
    count_builds.clear()
    barrier = threading.Barrier(6)
    got = []

    def task():
        barrier.wait()
        got.append(isolated_cache.get_model(ref))

    threads = [threading.Thread(target=task) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert count_builds == ["test-tiny"]
    assert len(got) == 6 and all(m is got[0] for m in got)


def test_put_model_serves_tasks_without_a_build(isolated_cache, count_builds):
    model = create_model("test-tiny", window=32)
    count_builds.clear()
    isolated_cache.put_model(model, "meta")
    assert isolated_cache.get_model(model.ref, "meta") is model
    assert count_builds == [] and isolated_cache.BUILDS == {}


def test_clear_cache_forgets_everything(isolated_cache, tmp_path):
    isolated_cache.get_model(create_model("test-tiny").ref)
    isolated_cache.get_or_create("test-tiny", window=32)
    path = tmp_path / "loc.ckpt"
    _location_ckpt(path)
    isolated_cache.load_location_encoder(path)
    tables = (isolated_cache._CACHE, isolated_cache.BUILDS, isolated_cache._RECIPES,
              isolated_cache._LOCATION_FILES)
    assert all(tables)
    isolated_cache.clear_cache()
    assert not any(tables)


# ---- get_or_create (the client's models) ---------------------------------------------------


def test_recipe_keys_hold_the_options_and_the_weights_file_state(isolated_cache, tmp_path):
    key = isolated_cache._recipe_key
    assert key("test-tiny", None, {}) == ("test-tiny", (), "[]")
    assert key("test-tiny", None, {"a": 1, "b": 2}) == key("test-tiny", None, {"b": 2, "a": 1})
    assert key("test-tiny", None, {"window": 32}) != key("test-tiny", None, {})
    assert key("test-tiny", None, {"trust": True}) != key("test-tiny", None, {"trust": False})
    path = _saved_weights(tmp_path)
    st = os.stat(path)
    assert key("test-tiny", path, {}) == ("test-tiny", ((str(path), st.st_size,
                                                         st.st_mtime_ns),), "[]")
    before = key("test-tiny", path, {})
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert key("test-tiny", path, {}) != before
    # a folder: every file in it, sorted
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"12")
    (tmp_path / "sub" / "a.bin").write_bytes(b"1")
    state = key("m", tmp_path / "sub", {})[1]
    assert [(f.rsplit("/", 1)[-1], size) for f, size, _ in state] == [("a.bin", 1), ("b.bin", 2)]
    # a file that does not exist has a state too (create_model then reports it)
    assert key("m", tmp_path / "nope.pt", {})[1] == ((str(tmp_path / "nope.pt"), -1, -1),)


def test_get_or_create_reuses_until_options_or_the_file_change(isolated_cache, count_builds,
                                                               tmp_path):
    a = isolated_cache.get_or_create("test-tiny")
    assert isolated_cache.get_or_create("test-tiny") is a
    b = isolated_cache.get_or_create("test-tiny", window=32)
    assert b is not a and b.spec.window == 32
    assert isolated_cache.get_or_create("test-tiny", window=32) is b
    assert count_builds == ["test-tiny", "test-tiny"]
    # the cached model is the one tasks find by its reference
    assert isolated_cache.get_model(a.ref) is a and isolated_cache.get_model(b.ref) is b
    path = _saved_weights(tmp_path)
    w1 = isolated_cache.get_or_create("test-tiny", path)
    assert isolated_cache.get_or_create("test-tiny", path) is w1
    _saved_weights(tmp_path, scale=3.0)  # new bytes (and size/mtime)
    os.utime(path, ns=(1, 1))
    w2 = isolated_cache.get_or_create("test-tiny", path)
    assert w2 is not w1 and w2.weights_sha256 != w1.weights_sha256
    # a model evicted from the cache is built again even though its recipe is known
    isolated_cache._CACHE.clear()
    assert isolated_cache.get_or_create("test-tiny") is not a
    assert count_builds.count("test-tiny") == 5


# ---- location encoders ----------------------------------------------------------------------


def test_a_location_checkpoint_is_read_once_per_file_version_and_trust(isolated_cache, tmp_path):
    path = tmp_path / "loc.ckpt"
    _location_ckpt(path)
    enc, digest = isolated_cache.load_location_encoder(path)
    key = ("location", digest)
    assert {key: 1} == isolated_cache.BUILDS
    assert isolated_cache.load_location_encoder(str(path)) == (enc, digest)
    assert {key: 1} == isolated_cache.BUILDS
    # trust is part of the file key: the file is read again, the same encoder is kept
    assert isolated_cache.load_location_encoder(path, trust=True)[0] is enc
    assert {key: 2} == isolated_cache.BUILDS
    # a new file version is read again too
    os.utime(path, ns=(1, 1))
    assert isolated_cache.load_location_encoder(path) == (enc, digest)
    assert {key: 3} == isolated_cache.BUILDS
    ref = LocationRef(digest, str(path), False, "satclip-location-l10", 10, 8)
    assert isolated_cache.get_location_encoder(ref) is enc
    assert isolated_cache.get_model(ref) is enc


def test_a_location_checkpoint_with_another_digest_is_refused_unread(isolated_cache, tmp_path):
    path = tmp_path / "loc.ckpt"
    _location_ckpt(path)
    with pytest.raises(CheckpointError, match="changed after the graph was built"):
        isolated_cache.load_location_encoder(path, file_sha256="0" * 64)
    assert not isolated_cache.BUILDS and not isolated_cache._LOCATION_FILES
    with pytest.raises(CheckpointError, match=r"does not exist.*SatCLIP \.ckpt"):
        isolated_cache.load_location_encoder(tmp_path / "missing.ckpt")


def test_location_references_are_checked_against_the_encoder_read(isolated_cache, tmp_path):
    path = tmp_path / "loc.ckpt"
    _location_ckpt(path)
    _, digest = isolated_cache.load_location_encoder(path)
    isolated_cache.clear_cache()
    wrong = LocationRef("f" * 64, str(path), False, "satclip-location-l10", 10, 8)
    with pytest.raises(CheckpointError, match=r"holds different weights in this process \(" +
                       digest[:12] + r"\) than where the graph was built \(ffffffffffff\)"):
        isolated_cache.get_location_encoder(wrong)
    with pytest.raises(ArgumentError, match="run on the CPU; got device='meta'"):
        isolated_cache.get_model(wrong, "meta")


def test_in_memory_encoders_are_cached_as_given_unless_a_snapshot_is_asked(isolated_cache):
    from xsky.models.satclip import LocationEncoder

    torch.manual_seed(0)
    enc = LocationEncoder(legendre_polys=2, capacity=4, embed_dim=3).eval()
    digest = isolated_cache.put_location_encoder(enc)
    ref = LocationRef(digest, None, False, "mine", 2, 3)
    assert isolated_cache.get_location_encoder(ref) is enc  # no copy by default
    isolated_cache.clear_cache()
    assert isolated_cache.put_location_encoder(enc, snapshot=True) == digest
    snap = isolated_cache.get_location_encoder(ref)
    assert snap is not enc
    torch.testing.assert_close(snap.state_dict(), enc.state_dict())


def test_a_location_checkpoint_needing_full_unpickling_is_refused_by_default(isolated_cache,
                                                                            tmp_path):
    from xsky.exceptions import UnsafeCheckpointError

    from .test_cache_keys import TrustedState

    path = tmp_path / "loc.ckpt"
    _location_ckpt(path, hp_type=TrustedState)
    with pytest.raises(UnsafeCheckpointError, match="trust=True"):
        isolated_cache.load_location_encoder(path)
    assert not isolated_cache.BUILDS
    enc, _ = isolated_cache.load_location_encoder(path, trust=True)
    assert enc.embed_dim == 8


def test_location_keys_separate_the_harmonics_convention_of_equal_weights(isolated_cache):
    from xsky.models.satclip import LocationEncoder

    torch.manual_seed(0)
    analytic = LocationEncoder(legendre_polys=3, capacity=4, embed_dim=3).eval()
    closed = LocationEncoder(legendre_polys=3, capacity=4, embed_dim=3,
                             harmonics_calculation="closed-form").eval()
    closed.load_state_dict(analytic.state_dict())  # the same weights, another convention
    a = isolated_cache.put_location_encoder(analytic)
    b = isolated_cache.put_location_encoder(closed)
    assert a != b  # one entry each: the convention changes what the features are
    assert isolated_cache.get_location_encoder(LocationRef(a, None, False, "a", 3, 3)) is analytic
    assert isolated_cache.get_location_encoder(LocationRef(b, None, False, "b", 3, 3)) is closed
