"""``batch_size=None`` in the engine: chosen inside the task, cached, halved after an
out-of-memory error; explicit sizes unchanged; the model's busy time is counted."""

from __future__ import annotations

import time
from collections.abc import Mapping

import dask
import numpy as np
import pytest
import torch

import xsky
from xsky.exceptions import ModelError
from xsky.models import EmbeddingModel, ModalitySpec, ModelSpec, create_model
from xsky.runtime import batching
from xsky.runtime.device import busy_seconds
from xsky.testing import raise_if_dask_computes, synthetic_s2_cube

pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.fixture(autouse=True)
def _empty_batch_sizes(isolated_batch_sizes):
    return isolated_batch_sizes


@pytest.fixture(autouse=True)
def synchronous():
    with dask.config.set(scheduler="synchronous"):  # batches in a predictable order
        yield


class Recording(EmbeddingModel):
    """Pooled window mean that records each call's batch, can fake an out-of-memory error
    above ``oom_above`` windows, and can sleep ``sleep`` seconds per call."""

    def __init__(self, name: str = "recording-mean", default_batch_size: int = 5,
                 oom_above: int | None = None, sleep: float = 0.0) -> None:
        super().__init__()
        self.spec = ModelSpec(
            name=name, modalities=(ModalitySpec("s2", ("B02", "B03")),),
            window=8, stride=8, feature_dim=2, output="pooled",
            default_batch_size=default_batch_size,
        )
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.calls: list[int] = []
        self.ooms = 0
        self.oom_above = oom_above
        self.sleep = sleep

    def embed_windows(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        n = int(inputs["s2"].shape[0])
        self.calls.append(n)
        if self.oom_above is not None and n > self.oom_above:
            self.ooms += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
        if self.sleep:
            time.sleep(self.sleep)
        return inputs["s2"].mean(dim=(2, 3))


def _cube(ny: int = 40, nx: int = 40, nt: int = 1):
    # one chunk: ny/8 x nx/8 windows per date in the block
    return synthetic_s2_cube(ny, nx, nt, bands=("B02", "B03"), seed=4)


def test_an_explicit_batch_size_is_used_as_given():
    model = Recording(default_batch_size=5).set_ref(None)
    xsky.embed(_cube(), model, batch_size=3).compute()  # 25 windows
    assert model.calls == [3] * 8 + [1]
    assert batching._SIZES == {}  # nothing automatic was measured


def test_auto_on_the_cpu_takes_the_models_default_per_block():
    model = Recording(default_batch_size=5).set_ref(None)
    xsky.embed(_cube(40, 40).chunk(y=24, x=24), model).compute()
    # blocks of 3x3, 3x2, 2x3, 2x2 windows, at most 5 per batch
    assert sorted(model.calls) == sorted([5, 4, 5, 1, 5, 1, 4])
    (key, size), = batching._SIZES.items()
    assert size == 5
    assert key[1] == "cpu" and key[2] == ((2, 8, 8),) and key[3] == "float32"


def test_auto_on_the_cpu_is_capped_under_a_small_ram_figure(monkeypatch):
    model = Recording(default_batch_size=64).set_ref(None)
    per_window = batching.window_bytes_estimate(2 * 8 * 8, 2)
    monkeypatch.setattr(batching, "available_ram_bytes", lambda: 4 * 7 * per_window + 1)
    xsky.embed(_cube(), model).compute()
    assert model.calls == [7, 7, 7, 4]


def test_the_batch_size_is_chosen_in_the_task_and_building_the_graph_computes_nothing(
        monkeypatch):
    model = Recording(default_batch_size=5).set_ref(None)
    chosen = []

    def fake_auto(device, default, **kwargs):
        chosen.append((device, default))
        return 6

    monkeypatch.setattr(batching, "auto_batch_size", fake_auto)
    cube = _cube(40, 40, 2).chunk(time=1, y=24, x=24)
    with raise_if_dask_computes():
        emb = xsky.embed(cube, model, batch_size=None)
        _ = emb.valid_fraction
    assert chosen == [] and model.calls == [] and batching._SIZES == {}
    emb.compute()
    assert chosen == [("cpu", 5)]  # once per process and key, not per block
    assert max(model.calls) == 6 and sum(model.calls) == 2 * 25


def test_an_out_of_memory_error_halves_the_batch_and_keeps_the_smaller_size(monkeypatch):
    monkeypatch.setattr(batching, "auto_batch_size", lambda device, default, **kw: 1024)
    model = Recording(name="oom-mean", oom_above=10).set_ref(None)
    cube = _cube()
    got = xsky.embed(cube, model).values
    # at most the block's 25 windows, then 12 and 6: two errors, then batches of 6
    assert model.calls == [25, 12, 6, 6, 6, 6, 1]
    assert model.ooms == 2
    assert list(batching._SIZES.values()) == [6]
    model.calls.clear()
    again = xsky.embed(cube, model).values
    assert model.calls == [6, 6, 6, 6, 1] and model.ooms == 2  # the smaller size is kept
    want = xsky.embed(cube, model, batch_size=6).values
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(again, want)


def test_an_out_of_memory_error_with_an_explicit_batch_size_names_it():
    model = Recording(name="oom-mean", oom_above=4).set_ref(None)
    with pytest.raises(ModelError, match=r"ran out of memory .*batch_size=8 .*smaller "
                                         r"batch_size.*batch_size=None"):
        xsky.embed(_cube(), model, batch_size=8).compute()
    assert model.calls == [8]  # not retried


def test_an_out_of_memory_error_at_one_window_stops_with_a_clear_error(monkeypatch):
    monkeypatch.setattr(batching, "auto_batch_size", lambda device, default, **kw: 4)
    model = Recording(name="oom-mean", oom_above=0).set_ref(None)
    with pytest.raises(ModelError, match="single window"):
        xsky.embed(_cube(), model).compute()
    assert model.calls == [4, 2, 1]


def test_auto_results_equal_explicit_batch_sizes_on_test_tiny():
    cube = synthetic_s2_cube(50, 45, 3, valid_fraction=0.9, seed=3).chunk(time=2, y=30, x=24)
    auto = xsky.embed(cube, "test-tiny").values
    default = create_model("test-tiny").spec.default_batch_size
    same = xsky.embed(cube, "test-tiny", batch_size=default).values
    np.testing.assert_array_equal(auto, same)  # the same batches: bitwise
    other = xsky.embed(cube, "test-tiny", batch_size=7).values
    np.testing.assert_allclose(auto, other, rtol=1e-6, atol=1e-6)
    assert np.isfinite(auto).any()


def test_batch_size_is_recorded_but_leaves_the_resume_fingerprint_alone(tmp_path):
    cube = synthetic_s2_cube(32, 32, 1, seed=5).chunk(y=16, x=16)
    a = xsky.embed(cube, "test-tiny", batch_size=3)
    b = xsky.embed(cube, "test-tiny")
    assert a.attrs.pop("batch_size") == 3 and b.attrs.pop("batch_size") == "auto"
    assert a.attrs == b.attrs
    a.attrs["batch_size"], b.attrs["batch_size"] = 3, "auto"
    first = xsky.to_zarr(a, tmp_path / "e.zarr", progress=False, source="cube-5")
    assert first.computed == first.regions
    resumed = xsky.to_zarr(b, tmp_path / "e.zarr", progress=False, source="cube-5")
    assert resumed.computed == 0 and resumed.skipped == first.regions


def test_the_busy_counter_grows_by_about_the_model_time():
    model = Recording(name="slow-mean", default_batch_size=5, sleep=0.03).set_ref(None)
    before = busy_seconds("cpu")
    t0 = time.perf_counter()
    xsky.embed(_cube(), model).compute()
    wall = time.perf_counter() - t0
    spent = busy_seconds("cpu") - before
    assert len(model.calls) == 5
    assert 5 * 0.03 <= spent <= min(wall, 5 * 0.03 + 0.25)


def test_the_cuda_probe_measures_the_peak_above_the_allocated_base(monkeypatch):
    """The probe's arithmetic with torch.cuda's memory figures faked (no GPU needed)."""
    from xsky.engine import kernel

    model = Recording(default_batch_size=5).set_ref(None)
    cube = _cube(16, 8)  # a block of two windows
    task, blocks = _block_inputs(cube, model)
    g = kernel.gather(blocks, task, 0, 0)
    assert g.n_items == 2
    base = 1000
    fake = {"peak": base}

    def embed(inputs):
        fake["peak"] = base + 300 * int(inputs["s2"].shape[0])
        return inputs["s2"].mean(dim=(2, 3))

    model.embed_windows = embed
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: base)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: fake["peak"])
    run = kernel._Run(g, task, model, "cpu", torch.autocast("cpu", enabled=False),
                      [None], [None], torch)
    with torch.inference_mode():
        assert run.probe(1) == 300
        assert run.probe(3) == 900  # fewer windows in the block than asked: repeated


def _block_inputs(cube, model):
    """The task and the numpy blocks of a one-chunk cube, as the graph would pass them."""
    from xsky.api.embedding import _plan, _prepare, _task
    from xsky.runtime.cache import put_model

    net = model
    put_model(net)
    cubes = _prepare(cube, net.spec, None)
    plan = _plan(cubes, net.spec, 0)
    task, arrays = _task(net, cubes, plan, device="cpu", batch_size=None,
                         precision="float32", edge="reflect")
    blocks = [np.asarray(a.compute()) for a in arrays]
    return task, blocks


@pytest.mark.gpu
def test_auto_on_a_real_gpu_measures_a_batch_and_matches_an_explicit_one():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cube = synthetic_s2_cube(64, 64, 2, seed=6).chunk(y=32, x=32)
    auto = xsky.embed(cube, "test-tiny", device="cuda").values
    (size,) = [v for k, v in batching._SIZES.items() if k[1].startswith("cuda")]
    assert 1 <= size <= batching.CAP
    explicit = xsky.embed(cube, "test-tiny", device="cuda", batch_size=7).values
    np.testing.assert_allclose(auto, explicit, rtol=1e-5, atol=1e-5)


def test_the_cpu_memory_estimate_counts_the_pooled_output_and_the_inputs():
    """A pooled window's output is F values (a dense one F per output pixel): the RAM cap
    must see both the window's input and its output."""
    from xsky.engine import kernel

    model = Recording(default_batch_size=5).set_ref(None)
    task, blocks = _block_inputs(_cube(16, 8), model)
    g = kernel.gather(blocks, task, 0, 0)
    run = kernel._Run(g, task, model, "cpu", torch.autocast("cpu", enabled=False),
                      [None], [None], torch)
    n_in = 2 * 8 * 8  # two bands of an 8 x 8 window, one date
    assert run.window_bytes() == batching.window_bytes_estimate(n_in, 2)
    assert batching.window_bytes_estimate(n_in, 2) == 16 * (n_in + 2) * 4
