"""Runtime: per-process model cache, weights kept out of the graph, distributed execution."""

from __future__ import annotations

import cloudpickle
import numpy as np
import pytest
import torch

import xsky
from xsky.models import wrap
from xsky.runtime import cache
from xsky.testing import synthetic_s2_cube

from ..conftest import assert_close_nan


@pytest.fixture(scope="module")
def cube():
    return synthetic_s2_cube(40, 40, 2, seed=11).chunk(time=1, y=20, x=20)


def test_model_is_built_once_per_process(cube, monkeypatch, isolated_cache):
    import xsky.models as xm

    cache.clear_cache()
    calls = []
    real = xm.create_model

    def counting(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(xm, "create_model", counting)
    for _ in range(2):
        xsky.embed(cube, "test-tiny").compute(scheduler="threads")
    assert len(calls) == 1  # two embeds, 8 tasks: one build
    assert cache.BUILDS == {}  # tasks found the client's instance in the cache


def test_weights_never_travel_in_the_graph(cube):
    class Big(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 16, 4, stride=4)
            self.bank = torch.nn.Parameter(torch.randn(13_200_000))  # 52.8 MB

        def forward(self, x):
            return self.conv(x) + self.bank[:16].view(1, 16, 1, 1)

    big = Big()
    model = wrap(big, bands=["B02", "B03", "B04", "B08"], window=16, stride=4, feature_dim=16)
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert n_bytes >= 50e6
    emb = xsky.embed(cube, model)
    graph = dict(emb.data.__dask_graph__())
    assert len(cloudpickle.dumps(graph)) < 1e6
    assert np.isfinite(emb.values).any()


def test_unknown_model_in_another_process_gives_a_clear_error(isolated_cache):
    model = wrap(torch.nn.Conv2d(4, 3, 4, stride=4), bands=["B02", "B03", "B04", "B08"],
                 window=16, stride=4, feature_dim=3)
    ref = model.ref
    cache.clear_cache()
    with pytest.raises(xsky.ModelError, match="preload"):
        cache.get_model(ref)


@pytest.fixture
def ckpt10(shared):
    return shared / "conformance" / "satclip" / "satclip_public_L10.ckpt"


def _location_ref(path, digest):
    from xsky.models import LocationRef

    return LocationRef(digest, str(path.resolve()), False, "satclip-location-l10", 10, 32)


def test_image_models_and_location_encoders_share_the_one_cache(ckpt10, isolated_cache):
    from xsky.models import create_model

    model_ref = create_model("test-tiny").ref
    cache.clear_cache()
    _, digest = cache.load_location_encoder(ckpt10)
    loc_ref = _location_ref(ckpt10, digest)
    model = cache.get_model(model_ref)
    enc = cache.get_model(loc_ref)  # get_model dispatches on the kind of reference
    assert enc is cache.get_location_encoder(loc_ref)
    assert model is cache.get_model(model_ref)
    assert cache.load_location_encoder(ckpt10)[0] is enc  # the file is read once
    expected = {(*model_ref.key, "cpu"): 1, loc_ref.key: 1}
    assert expected == cache.BUILDS
    # clear_cache forgets both kinds: each is rebuilt once on next use
    cache.clear_cache()
    assert cache.BUILDS == {}
    assert cache.get_model(model_ref) is not model
    assert cache.get_model(loc_ref) is not enc
    assert expected == cache.BUILDS
    with pytest.raises(xsky.ArgumentError, match="CPU"):
        cache.get_model(loc_ref, "cuda")


def test_in_memory_location_encoders_are_snapshots_keyed_by_weights(isolated_cache):
    from xsky.models import LocationRef
    from xsky.models.satclip import LocationEncoder

    torch.manual_seed(0)
    enc = LocationEncoder(legendre_polys=2, capacity=4, embed_dim=3).eval()
    digest = cache.put_location_encoder(enc, snapshot=True)
    ref = LocationRef(digest, None, False, "mine", 2, 3)
    cached = cache.get_location_encoder(ref)
    assert cached is not enc  # a private copy: later edits of enc cannot reach it
    with torch.no_grad():
        enc.nnet.last_layer.bias.add_(1.0)
    assert cache.put_location_encoder(enc) != digest
    assert cache.get_location_encoder(ref) is cached
    # the harmonics convention changes the features, so it is part of the key
    closed = LocationEncoder(legendre_polys=2, capacity=4, embed_dim=3,
                             harmonics_calculation="closed-form").eval()
    closed.load_state_dict(cached.state_dict())
    assert cache.put_location_encoder(closed) != digest
    # an in-memory encoder cannot be rebuilt where it was never registered
    cache.clear_cache()
    with pytest.raises(xsky.ModelError, match="exists only in the process"):
        cache.get_location_encoder(ref)


def test_a_changed_checkpoint_is_reread_and_a_digest_mismatch_is_reported(ckpt10, tmp_path,
                                                                          isolated_cache):
    import os
    import shutil

    path = tmp_path / "loc.ckpt"
    shutil.copy(ckpt10, path)
    cache.clear_cache()
    _, digest = cache.load_location_encoder(path)
    ref = _location_ref(path, digest)
    cache.clear_cache()
    with pytest.raises(xsky.CheckpointError, match="does not exist"):
        cache.get_location_encoder(_location_ref(tmp_path / "missing.ckpt", digest))
    # a worker whose copy of the file holds other weights refuses to compute with it
    sd = torch.load(path, weights_only=True)
    for k, v in sd["state_dict"].items():
        if k.endswith("last_layer.bias"):
            sd["state_dict"][k] = v + 1.0
    torch.save(sd, path)
    os.utime(path, ns=(1, 1))  # a different file version even on coarse-mtime file systems
    with pytest.raises(xsky.CheckpointError, match="holds different weights"):
        cache.get_location_encoder(ref)
    assert cache.load_location_encoder(path)[1] != digest


def test_preload_is_reachable_from_xsky_runtime():
    pytest.importorskip("distributed")
    import xsky.runtime
    from xsky.runtime import plugin

    assert xsky.runtime.preload is plugin.preload  # the name error messages point to


def test_device_auto_runs_on_this_machine(isolated_cache, monkeypatch):
    """``auto`` gives the stored test-tiny values (tests/models/test_golden.py, computed once
    on a CPU; float32 CUDA kernels agree to ~1e-6), and without CUDA it runs on the CPU."""
    ds = synthetic_s2_cube(36, 28, 2, seed=0, valid_fraction=0.9)
    auto = xsky.embed(ds, "test-tiny", device="auto")
    assert auto.attrs["precision"] == "float32"
    stored = {(0, 0, 0, 0): -0.4781196415424347, (0, 4, 3, 7): -0.613096296787262,
              (1, 8, 6, 15): 0.4613683223724365, (1, 2, 5, 3): 0.10829729586839676}
    vals = auto.values
    for idx, value in stored.items():
        assert float(vals[idx]) == pytest.approx(value, rel=1e-4, abs=1e-5), idx
    assert float(vals.astype("float64").sum()) == pytest.approx(93.22969589021523, rel=1e-4)
    # a machine without CUDA: auto must build (and run) the model on the CPU only
    isolated_cache.clear_cache()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu_only = xsky.embed(ds, "test-tiny", device="auto").values
    assert {k[-1] for k in isolated_cache._CACHE if k[0] == "test-tiny"} == {"cpu"}
    np.testing.assert_allclose(cpu_only, vals, rtol=1e-5, atol=1e-5)


def test_device_resolution_follows_what_torch_reports(monkeypatch):
    from xsky.runtime.device import device_lock, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(xsky.ArgumentError, match="device='cuda:0' was requested but no CUDA"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(xsky.ArgumentError, match=r"device='cuda:2': only 2 CUDA device\(s\)"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(xsky.ArgumentError, match="device='mps' was requested but MPS"):
        resolve_device("mps")
    # threads take turns on an accelerator, and on the CPU while torch runs each call on
    # several threads (two such calls at once oversubscribe the cores)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert device_lock("cpu") is None
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert device_lock("cpu") is device_lock("cpu") is not None
    lock = device_lock("cuda:1")
    assert lock is device_lock("cuda:1") and lock is not device_lock("cuda:0")


@pytest.mark.timeout(300)
def test_distributed_cluster_matches_threaded_scheduler(cube):
    distributed = pytest.importorskip("distributed")
    threaded = xsky.embed(cube, "test-tiny").compute(scheduler="threads").values
    conv = torch.nn.Conv2d(4, 5, 4, stride=4)
    wrapped = wrap(conv, bands=["B02", "B03", "B04", "B08"], window=16, stride=4,
                   feature_dim=5)
    threaded_w = xsky.embed(cube, wrapped).compute(scheduler="threads").values
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, resources={"GPU": 1}
                                  ) as lc, distributed.Client(lc) as client:
        remote = xsky.embed(cube, "test-tiny").compute().values
        # tasks annotated with a resource run where workers declare it
        annotated = xsky.embed(cube, "test-tiny", resources={"GPU": 1})
        assert any((layer.annotations or {}).get("resources") == {"GPU": 1.0}
                   for layer in annotated.data.__dask_graph__().layers.values())
        remote_r = annotated.compute().values
        # an unregistered model reaches the workers through the preload plugin
        remote_w = xsky.embed(cube, wrapped).compute().values
        builds = client.run(lambda: dict(__import__("xsky.runtime.cache").runtime.cache.BUILDS))
    assert_close_nan(remote, threaded, 1e-6)
    assert_close_nan(remote_r, threaded, 1e-6)
    assert_close_nan(remote_w, threaded_w, 1e-6)
    # each worker process built test-tiny once, however many tasks it ran
    for per_worker in builds.values():
        assert all(v == 1 for v in per_worker.values())


# the GPU paths (CUDA vs CPU, bf16 on CUDA, per-device cache copies) are in tests/test_gpu.py


# -- resources on a distributed cluster (issue 10, item 6) --------------------------------


def _restricted(scheduler):
    return {k: ts.resource_restrictions for k, ts in scheduler.tasks.items()
            if ts.resource_restrictions}


@pytest.mark.timeout(120)
def test_resources_survive_client_compute_optimisation(cube):
    distributed = pytest.importorskip("distributed")
    import time

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None, resources={"GPU": 1}
                                  ) as lc, distributed.Client(lc) as client:
        emb = xsky.embed(cube, "test-tiny", resources={"GPU": 1})
        name = emb.data.name
        # client.compute fuses the graph into a plain dict: layer annotations are lost there
        fut = client.compute(emb)
        sliced = client.compute(emb.isel(time=0) * 2)  # model tasks fused with others
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(_restricted(lc.scheduler)) < 12:
            time.sleep(0.05)
        restricted = _restricted(lc.scheduler)
        model_keys = [k for k in restricted if isinstance(k, tuple) and k[0] == name]
        assert len(model_keys) == 8  # 2 dates x 2 x 2 blocks, all restricted
        assert all(v == {"GPU": 1.0} for v in restricted.values())
        fused = [k for k in restricted if k not in model_keys]
        assert fused, "the fused model tasks lost their restriction"
        # only model tasks are restricted (data loading runs anywhere)
        assert not any("xarray-" in str(k) or "rechunk" in str(k) for k in restricted)
        assert np.isfinite(fut.result().values).all()
        assert np.isfinite(sliced.result().values).all()


@pytest.mark.timeout(120)
def test_resources_no_worker_declares_them_is_refused_at_embed_time(cube):
    distributed = pytest.importorskip("distributed")
    from xsky.exceptions import ArgumentError

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None, resources={"CPU_SLOT": 2}
                                  ) as lc, distributed.Client(lc):
        with pytest.raises(ArgumentError, match=r"GPU=1.*wait forever.*dask worker --resources"):
            xsky.embed(cube, "test-tiny", resources={"GPU": 1})
        with pytest.raises(ArgumentError, match=r"CPU_SLOT=3.*they declare CPU_SLOT=2"):
            xsky.embed(cube, "test-tiny", resources={"CPU_SLOT": 3})
        # nothing was submitted
        assert not lc.scheduler.tasks
        assert xsky.embed(cube, "test-tiny", resources={"CPU_SLOT": 1}) is not None


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_model_calls_take_turns_only_while_torch_is_multithreaded(threads, monkeypatch):
    import itertools
    import threading
    import time

    from ..conftest import WindowMean

    spans: list[tuple[float, float]] = []
    guard = threading.Lock()

    class Slow(WindowMean):
        def embed_windows(self, inputs):
            t0 = time.perf_counter()
            time.sleep(0.05)
            with guard:
                spans.append((t0, time.perf_counter()))
            return super().embed_windows(inputs)

    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    cube = synthetic_s2_cube(64, 64, 1, bands=("B02", "B03")).chunk(y=16, x=16)
    xsky.embed(cube, Slow(window=16, stride=16), device="cpu").compute(
        scheduler="threads", num_workers=4)
    spans.sort()
    overlapping = sum(b0 < a1 for (_, a1), (b0, _) in itertools.pairwise(spans))
    assert len(spans) == 16
    if threads > 1:
        assert overlapping == 0  # one forward at a time
    else:
        assert overlapping > 0  # single-threaded forwards run side by side
