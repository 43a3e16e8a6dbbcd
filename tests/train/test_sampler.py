"""WindowSampler: engine-equal inputs, exact determinism across seeds, shards and resumes,
acceptance, laziness, the threaded and cluster paths, and clean shutdown."""

from __future__ import annotations

import gc
import json
import pickle
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import torch
import xarray as xr
from pyproj import CRS, Transformer

import xsky
from xsky.exceptions import ArgumentError, DataError, DimensionError
from xsky.models import EmbeddingModel, ModalitySpec, ModelSpec, get_model_spec
from xsky.train.sampler import WindowSampler

BANDS = ("B02", "B03", "B04", "B08")
# statistics in DN, so every batch goes through the reflectance -> DN conversion
MEAN_DN = (884.3, 1144.2, 1297.5, 2517.8)
STD_DN = (1155.2, 1183.6, 1368.1, 1474.8)
SPEC = ModelSpec("ts-test", (ModalitySpec("s2", BANDS, MEAN_DN, STD_DN, units="dn"),),
                 window=16, stride=16, feature_dim=1, fuses_time=True, output="pooled",
                 location="window")


def synthetic(ny: int = 40, nx: int = 40, nt: int = 8, seed: int = 0,
              valid: np.ndarray | None = None, chunks: Any = None) -> xr.Dataset:
    """A reflectance cube (y descending, 10 m UTM pixels) with some NaN and a random mask."""
    rng = np.random.default_rng(seed)
    data = rng.uniform(0.01, 0.6, (len(BANDS), nt, ny, nx)).astype(np.float32)
    data[:, rng.random((nt, ny, nx)) < 0.02] = np.nan
    if valid is None:
        valid = rng.random((nt, ny, nx)) > 0.15
    days = np.sort(rng.choice(360, nt, replace=False))
    time = pd.Timestamp("2021-01-03") + pd.to_timedelta(days, "D")
    ds = xr.Dataset(
        {b: (("time", "y", "x"), data[i], {"units": "reflectance"}) for i, b in enumerate(BANDS)}
        | {"valid": (("time", "y", "x"), valid)},
        coords={"time": time, "y": 5_000_005.0 - 10 * np.arange(ny),
                "x": 400_005.0 + 10 * np.arange(nx)},
    ).rio.write_crs("EPSG:32634")
    return ds.chunk(chunks) if chunks is not None else ds


def romania(nt: int = 8, n: int = 40) -> xr.Dataset:
    """A real Sentinel-2 subset, lazy, time split into chunks."""
    with warnings.catch_warnings():  # the file's time chunks are larger than 10
        warnings.simplefilter("ignore", UserWarning)
        ds = xsky.tutorial.open_dataset("romania", chunks={"time": 10})
    return ds.isel(time=slice(0, nt), y=slice(0, n), x=slice(0, n)).chunk(
        {"time": 3, "y": 20, "x": 20})


def take(sampler: WindowSampler, n: int) -> list[dict[str, torch.Tensor]]:
    it = iter(sampler)
    try:
        return [next(it) for _ in range(n)]
    finally:
        it.close()


def assert_batches_equal(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def make(obj: Any = None, **kw: Any) -> WindowSampler:
    opts: dict[str, Any] = {"window": 8, "batch_size": 3, "model": SPEC, "n_shards": 4,
                            "min_valid": 0.0}
    opts.update(kw)
    return WindowSampler(synthetic() if obj is None else obj, **opts)


class Recorder(EmbeddingModel):
    """Records the engine's model inputs; outputs zeros."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.seen: list[dict[str, torch.Tensor]] = []
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def embed_windows(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        self.seen.append({k: v.clone() for k, v in inputs.items()})
        return torch.zeros(inputs["s2"].shape[0], self.spec.feature_dim)


# -- inputs equal inference inputs ---------------------------------------------------------

def test_batch_equals_hand_normalisation_and_the_engines_inputs():
    cube = romania()
    assert (np.diff(cube.y.values) < 0).all()  # canonical already: window rows = cube rows
    sampler = WindowSampler(cube, 16, 3, model=SPEC, min_valid=0.0, seed=3)
    batch = take(sampler, 1)[0]
    assert batch["s2"].shape == (3, 4, 8, 16, 16) and batch["s2"].dtype == torch.float32
    assert batch["s2_valid"].shape == (3, 8, 16, 16) and batch["s2_valid"].dtype == torch.bool
    dates = pd.DatetimeIndex(cube.time.values)
    geo = Transformer.from_crs(cube.rio.crs, CRS(cube.rio.crs).geodetic_crs, always_xy=True)
    rec = Recorder(SPEC).set_ref(None)
    for i, (shard, y0, x0, _) in enumerate(batch["window"].tolist()):
        assert shard == 0  # 9 candidates per epoch: shard 0 of 8 has 2, so epochs 0 and 1
        win = cube.isel(y=slice(y0, y0 + 16), x=slice(x0, x0 + 16)).compute()
        raw = np.stack([win[b].values for b in BANDS], axis=0)  # (C, T, H, W)
        valid = win["valid"].values & np.isfinite(raw).all(axis=0)
        mean = np.array(MEAN_DN, np.float32)[:, None, None, None]
        std = np.array(STD_DN, np.float32)[:, None, None, None]
        hand = np.where(valid[None], (raw * np.float32(1e4) - mean) / std, 0.0)
        np.testing.assert_allclose(batch["s2"][i].numpy(), hand, rtol=1e-6, atol=1e-6)
        assert (batch["s2_valid"][i].numpy() == valid).all()
        assert batch["s2_doy"][i].tolist() == [min(d, 365) for d in dates.day_of_year]
        assert batch["s2_month"][i].tolist() == [m - 1 for m in dates.month]
        lon, lat = geo.transform(win.x.values.mean(), win.y.values.mean())
        np.testing.assert_allclose(batch["latlon"][i].numpy(), [lat, lon], rtol=0, atol=1e-9)
        # the engine's inputs for the same window: embed the window alone
        rec.seen.clear()
        xsky.embed(win, rec).compute(scheduler="sync")
        (seen,) = rec.seen
        assert seen.keys() == {"s2", "s2_valid", "s2_doy", "s2_month", "latlon"}
        for key in seen:
            assert torch.equal(seen[key][0], batch[key][i]), key
    assert valid.mean() < 1  # the real mask masks something: the fill was checked


def test_max_dates_keeps_a_sorted_seeded_subset_of_the_dates():
    cube = synthetic(nt=10)
    sampler = make(cube, max_dates=4, batch_size=6, n_shards=1)
    batch = take(sampler, 1)[0]
    all_doy = pd.DatetimeIndex(cube.time.values).day_of_year.tolist()
    subsets = set()
    for i, (_, y0, x0, _) in enumerate(batch["window"].tolist()):
        doy = batch["s2_doy"][i].tolist()
        assert doy == sorted(doy) and len(set(doy)) == 4
        idx = [all_doy.index(d) for d in doy]
        subsets.add(tuple(idx))
        raw = cube["B08"].values[idx, y0:y0 + 8, x0:x0 + 8]
        ok = batch["s2_valid"][i].numpy()
        want = (raw * 1e4 - MEAN_DN[3]) / STD_DN[3]
        np.testing.assert_allclose(batch["s2"][i, 3].numpy()[ok], want[ok], rtol=1e-5)
    assert len(subsets) > 1  # each window draws its own dates


def test_more_dates_than_the_model_takes_needs_max_dates():
    spec = get_model_spec("galileo-nano")  # partial S2 bands, band mask, at most 24 dates
    with pytest.raises(DimensionError, match="max_dates=24"):
        WindowSampler(synthetic(nt=30), 8, 2, model=spec)
    batch = take(WindowSampler(synthetic(nt=30), 8, 2, model=spec, max_dates=5), 1)[0]
    assert batch["s2"].shape == (2, 10, 5, 8, 8)
    bv = batch["s2_band_valid"]
    present = [spec.modalities[0].bands.index(b) for b in BANDS]
    absent = [i for i in range(10) if i not in present]
    assert not bv[:, absent].any() and (batch["s2"][:, absent] == 0).all()
    assert bv[:, present].any()


# -- determinism ---------------------------------------------------------------------------

def test_same_seed_same_batches_other_seed_other_windows():
    a, b = take(make(seed=7), 4), take(make(seed=7), 4)
    for x, y in zip(a, b, strict=True):
        assert_batches_equal(x, y)
    clone = pickle.loads(pickle.dumps(make(seed=7)))  # how it travels to Dask workers
    for x, y in zip(a, take(clone, 4), strict=True):
        assert_batches_equal(x, y)
    c = take(make(seed=8), 4)
    assert any(not torch.equal(x["window"], y["window"]) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("strategy", ["random", "stratified"])
def test_interleaved_shards_reproduce_the_global_stream(strategy):
    n = 8
    full = take(make(strategy=strategy), n)
    # global micro-batch i comes from shard i % n_shards
    assert [int(b["window"][0, 0]) for b in full] == [i % 4 for i in range(n)]
    for world in (1, 2, 4) if strategy == "random" else (4,):
        ranks = [take(make(strategy=strategy).shard(r, world), n // world)
                 for r in range(world)]
        for i in range(n):
            assert_batches_equal(full[i], ranks[i % world][i // world])


def test_resume_from_state_dict_continues_the_stream_exactly():
    full = take(make(batch_size=4), 7)
    first = make(batch_size=4)
    it = iter(first)
    for i in range(3):
        assert_batches_equal(next(it), full[i])
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
    it.close()
    assert all(isinstance(v, int) for k, v in state.items() if k != "cursors")
    assert state["index"] == 3
    resumed = make(batch_size=4)
    resumed.load_state_dict(state)
    for i, b in enumerate(take(resumed, 4), start=3):
        assert_batches_equal(b, full[i])
    # two ranks' states at one step, merged, resume on a single process
    ranks = [make(batch_size=4).shard(r, 2) for r in range(2)]
    for r in ranks:
        take(r, 2)
    merged = WindowSampler.merge_states([r.state_dict() for r in ranks])
    assert merged["index"] == 4 and merged["world_size"] == 1
    single = make(batch_size=4)
    single.load_state_dict(merged)
    for i, b in enumerate(take(single, 3), start=4):
        assert_batches_equal(b, full[i])
    # a rank's partial state does not load into another world size
    with pytest.raises(ArgumentError, match="merge_states"):
        make(batch_size=4).load_state_dict(ranks[0].state_dict())


@pytest.mark.parametrize(("change", "field"), [
    ({"seed": 1}, "seed"), ({"batch_size": 4}, "batch_size"), ({"window": 10}, "window"),
    ({"n_shards": 8}, "n_shards"), ({"strategy": "stratified"}, "fingerprint"),
    ({"min_valid": 0.2}, "fingerprint"), ({"max_dates": 3}, "max_dates"),
])
def test_a_state_of_another_configuration_is_refused_naming_the_field(change, field):
    state = make().state_dict()
    with pytest.raises(ArgumentError, match=f"saved with {field}="):
        make(**change).load_state_dict(state)


def test_a_state_of_another_cube_is_refused():
    state = make().state_dict()
    make().load_state_dict(state)  # the same configuration: accepted
    for other in (synthetic().assign_coords(x=synthetic().x + 1000.0),  # elsewhere
                  synthetic(nt=9).isel(time=slice(1, None))):  # other dates
        with pytest.raises(ArgumentError, match="saved with fingerprint="):
            make(other).load_state_dict(state)


# -- where windows come from ---------------------------------------------------------------

def test_a_batch_mixes_windows_from_different_places():
    for strategy in ("random", "stratified"):
        for b in take(make(strategy=strategy, batch_size=4, n_shards=2), 4):
            pos = b["window"][:, 1:3].numpy()
            assert len({tuple(p) for p in pos}) == 4, pos
            spread = np.abs(pos[:, None] - pos[None]).max(axis=2).max()
            assert spread >= 8, pos  # at least one window apart: not one tile


def test_stratified_candidates_of_an_epoch_cover_the_cube_once_across_shards():
    ny, nx, w = 40, 36, 16
    sampler = make(synthetic(ny=ny, nx=nx), window=w, strategy="stratified", n_shards=3,
                   batch_size=2)
    seen: dict[int, list[tuple[int, int]]] = {}
    last = [0, 0, 0]  # the epoch each shard has reached
    it = iter(sampler)
    while min(last) < 2:
        for s, y0, x0, e in next(it)["window"].tolist():
            seen.setdefault(e, []).append((y0, x0))
            last[s] = e
    it.close()
    for e in (0, 1):
        cover = np.zeros((ny, nx), bool)
        for y0, x0 in seen[e]:
            assert 0 <= y0 <= ny - w and 0 <= x0 <= nx - w
            cover[y0:y0 + w, x0:x0 + w] = True
        assert cover.all(), e
        # one candidate per cell, each in one shard only
        assert len(set(seen[e])) == len(seen[e]) >= 9, seen[e]
    assert set(seen[0]) != set(seen[1])  # a new offset each epoch


def test_min_valid_skips_windows_with_too_little_valid_data():
    ny = nx = 40
    valid = np.ones((6, ny, nx), bool)
    valid[:, :, :20] = False  # the western half is masked on every date
    cube = synthetic(ny=ny, nx=nx, nt=6, valid=valid)
    cube = cube.assign({b: cube[b].fillna(0.1) for b in BANDS})  # only the mask counts
    sampler = make(cube, min_valid=0.75, batch_size=4, n_shards=2)
    fracs, xs = [], []
    for b in take(sampler, 6):
        for i, (_, y0, x0, _) in enumerate(b["window"].tolist()):
            hand = valid[:, y0:y0 + 8, x0:x0 + 8].mean()
            assert hand >= 0.75 and b["s2_valid"][i].float().mean().item() == hand
            fracs.append(hand)
            xs.append(x0)
    assert min(xs) >= 18  # a window at x0 < 18 has a valid fraction < 0.75
    # and the candidates did reach the masked half: skipping happened
    positions = np.concatenate([sampler._epoch_positions(e) for e in range(3)])
    assert (positions[:, 1] < 14).sum() >= 5


def test_a_window_exactly_at_min_valid_is_accepted_and_an_impossible_one_raises_quickly():
    valid = np.zeros((8, 16, 16), bool)
    valid[[0, 2, 5, 7]] = True  # 4 of 8 dates: valid fraction exactly 0.5 everywhere
    cube = synthetic(ny=16, nx=16, valid=valid)
    cube = cube.assign({b: cube[b].fillna(0.2) for b in BANDS})
    b = take(make(cube, window=16, batch_size=2, n_shards=2, min_valid=0.5), 1)[0]
    assert b["s2_valid"].float().mean().item() == 0.5
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"min_valid=0\.51 .*has 0\.5000"):
        take(make(cube, window=16, batch_size=2, n_shards=2, min_valid=0.51), 1)
    assert time.perf_counter() - t0 < 5


# -- laziness, paths, chunking, orientation ------------------------------------------------

def test_constructing_the_sampler_computes_nothing():
    def boom(block: np.ndarray) -> np.ndarray:
        raise RuntimeError("computed")

    cube = synthetic(chunks={"time": 4})
    for b in BANDS:
        cube[b] = cube[b].copy(data=da.map_blocks(boom, cube[b].data, dtype=np.float32))
    tasks: list[Any] = []
    with dask.callbacks.Callback(pretask=lambda key, dsk, state: tasks.append(key)):
        sampler = make(cube)
        sampler.config()
        sampler.state_dict()
    assert tasks == []
    with pytest.raises(RuntimeError, match="computed"):  # the data is only read when iterating
        take(sampler, 1)


def test_threaded_and_client_paths_give_identical_batches_and_report_waiting():
    from distributed import Client, LocalCluster

    local_sampler = make(synthetic(chunks={"time": 4, "y": 20}), batch_size=4)
    local = take(local_sampler, 4)
    stats = local_sampler.stats
    assert stats["batches"] == 4 and stats["total_s"] > 0
    assert 0 <= stats["wait_fraction"] <= 1
    assert stats["wait_s"] <= stats["total_s"]
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        remote = take(make(synthetic(chunks={"time": 4, "y": 20}), batch_size=4,
                           client=client), 4)
    for x, y in zip(local, remote, strict=True):
        assert_batches_equal(x, y)


def test_prefetching_hides_the_data_time_from_a_slow_step():
    sampler = make(synthetic(chunks={"time": 4}), batch_size=4, prefetch=2)
    it = iter(sampler)
    for _ in range(5):
        next(it)
        time.sleep(0.2)  # the training step; batches are computed meanwhile
    next(it)
    it.close()
    assert sampler.stats["batches"] == 6 and sampler.stats["total_s"] >= 1.0
    assert sampler.stats["wait_fraction"] < 0.5
    eager = make(synthetic(chunks={"time": 4}), batch_size=4, prefetch=0)
    take(eager, 4)  # no prefetch and no step: the loop only waits for data
    assert eager.stats["wait_fraction"] > 0.9


def test_chunking_and_orientation_do_not_change_batches():
    ref = take(make(synthetic(), strategy="stratified"), 3)  # in memory
    for other in (synthetic(chunks={"time": 3, "y": 7, "x": 11}),
                  synthetic(chunks={"time": -1, "y": -1, "x": -1}),
                  synthetic(chunks={"time": 5}).isel(y=slice(None, None, -1))):
        for x, y in zip(ref, take(make(other, strategy="stratified"), 3), strict=True):
            assert_batches_equal(x, y)


# -- iterator lifetime ---------------------------------------------------------------------

def _sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("xsky-sampler")]


def test_closing_or_dropping_the_iterator_stops_its_threads():
    sampler = make(prefetch=3)
    it = iter(sampler)
    next(it)
    assert _sampler_threads()
    it.close()
    assert not _sampler_threads()
    with pytest.raises(StopIteration):
        next(it)
    it = iter(sampler)
    next(it)
    del it
    gc.collect()
    deadline = time.monotonic() + 10
    while _sampler_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _sampler_threads()
    # a new iterator continues from where the sampler is (2 batches were yielded)
    assert sampler.state_dict()["index"] == 2


def test_close_gives_up_on_a_stuck_batch_after_its_timeout_and_says_so(monkeypatch, caplog):
    import xsky.train.sampler as sampler_module

    release, entered = threading.Event(), threading.Event()
    reads = []

    def stuck(block: np.ndarray) -> np.ndarray:
        reads.append(1)
        if len(reads) > 1:  # the first read serves batch 0; the prefetched batches hang
            entered.set()
            release.wait(30)
        return block

    cube = synthetic()
    # one chunk, and `meta` given so that dask calls `stuck` once per compute only
    cube["B02"] = cube["B02"].copy(data=da.map_blocks(
        stuck, da.from_array(cube["B02"].values), meta=np.array((), np.float32)))
    monkeypatch.setattr(sampler_module, "_CLOSE_TIMEOUT_S", 0.5)
    # no chunk cache: every batch reads the chunk again
    it = iter(make(cube, prefetch=2, n_shards=1, cache_bytes=0))
    try:
        next(it)
        assert entered.wait(30)  # batch 1 is stuck in its read
        t0 = time.monotonic()
        with caplog.at_level("WARNING", logger="xsky.train.sampler"):
            it.close()
        assert time.monotonic() - t0 < 5  # not the 30 s the data source hangs
        assert "did not stop within 0 s of close()" in caplog.text
    finally:
        release.set()
    deadline = time.monotonic() + 10
    while _sampler_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _sampler_threads()  # released, the abandoned threads end


_LEFT_OPEN = """
import numpy as np, pandas as pd, rioxarray, xarray as xr
from xsky.models import ModalitySpec, ModelSpec
from xsky.train.sampler import WindowSampler
spec = ModelSpec("t", (ModalitySpec("s2", ("B02",)),), window=8, stride=8, feature_dim=1,
                 fuses_time=True, output="pooled")
v = np.random.default_rng(0).uniform(0, 0.5, (6, 24, 24)).astype("float32")
ds = xr.Dataset({"B02": (("time", "y", "x"), v, {"units": "reflectance"})},
                coords={"time": pd.date_range("2021-01-01", periods=6, freq="MS"),
                        "y": 1000.0 - 10 * np.arange(24), "x": 10.0 * np.arange(24)})
it = iter(WindowSampler(ds.rio.write_crs("EPSG:32634").chunk(time=2), 8, 4, model=spec,
                        prefetch=4, n_shards=2))
next(it)
print("ok")
"""


@pytest.mark.slow  # a fresh interpreter imports torch and xsky: ~10 s on a busy 2-core machine
def test_the_interpreter_exits_with_an_iterator_left_open():
    out = subprocess.run([sys.executable, "-c", _LEFT_OPEN], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# -- argument checks, config -----------------------------------------------------------------

def test_bad_arguments_are_refused_with_the_fix():
    with pytest.raises(ArgumentError, match="fuses_time=False"):
        make(model="test-tiny")
    with pytest.raises(ArgumentError, match=r"window=41 is larger than the cube \(40 x 40"):
        make(window=41)
    with pytest.raises(ArgumentError, match="does not divide n_shards=4"):
        make().shard(0, 3)
    with pytest.raises(ArgumentError, match="strategy"):
        make(strategy="grid")
    with pytest.raises(ArgumentError, match="min_valid"):
        make(min_valid=1.5)


def test_config_is_json_and_names_the_cube():
    cfg = make(max_dates=3).config()
    assert json.loads(json.dumps(cfg)) == cfg
    assert cfg["window"] == 8 and cfg["max_dates"] == 3 and cfg["strategy"] == "random"
    cube = cfg["cube"]
    assert cube["crs"] == "EPSG:32634"
    assert cube["modalities"]["s2"]["shape"] == [8, 40, 40]
    assert cube["modalities"]["s2"]["time"][0].startswith("2021-")
    assert cube["grid"]["ny"] == 40 and cube["grid"]["dy"] == -10.0


def test_integer_dn_and_reflectance_cubes_give_the_same_batches():
    refl = synthetic()
    # the same pixels as Sentinel-2 L2A integer DN (reflectance x 1e4; 0 = no data)
    dn = refl.copy()
    for b in BANDS:
        v = refl[b].values
        dn[b] = (("time", "y", "x"), np.where(np.isfinite(v), np.round(v * 1e4), 0).astype(
            np.uint16))
    a = take(make(refl.map(lambda v: v.round(4) if v.dtype == np.float32 else v)), 2)
    b = take(make(dn), 2)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            if x[k].dtype.is_floating_point:
                torch.testing.assert_close(x[k], y[k], rtol=0, atol=1e-4, msg=k)
            else:
                assert torch.equal(x[k], y[k]), k
