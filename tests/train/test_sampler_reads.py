"""WindowSampler reads: each chunk once per group of windows, only the time chunks of the
kept dates, a bounded chunk cache across groups, the same batches as window-by-window
reads, and a finalizer that cannot deadlock the thread the garbage collector runs in."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import pytest

import xsky.train.sampler as sampler_module
from xsky.exceptions import ArgumentError
from xsky.train.sampler import _BlockCache

from .test_sampler import assert_batches_equal, make, synthetic, take


def counted(cube: Any, var: str, reads: list[tuple[int, ...]]) -> Any:
    """``cube`` with ``var`` recording the chunk location of every chunk computed."""
    def read(block: np.ndarray, block_info: Any = None) -> np.ndarray:
        reads.append(tuple(block_info[0]["chunk-location"]))
        return block

    out = cube.copy()
    out[var] = cube[var].copy(data=da.map_blocks(read, cube[var].data,
                                                 meta=np.array((), cube[var].dtype)))
    return out


def test_a_group_of_windows_reads_each_chunk_it_touches_once():
    reads: list[tuple[int, ...]] = []
    cube = counted(synthetic(chunks={"time": 4, "y": 20, "x": 20}), "B03", reads)
    # no cache, no prefetch: each next() reads one group of batch_size windows
    it = iter(make(cube, batch_size=4, n_shards=1, prefetch=0, cache_bytes=0))
    seen: Counter[tuple[int, ...]] = Counter()
    for _ in range(4):
        reads.clear()
        batch = next(it)
        counts = Counter(reads)
        assert counts and max(counts.values()) == 1, counts
        # exactly the chunks the four 8 x 8 windows touch (2 time chunks of 4 dates each)
        want = {(t, y, x) for _, y0, x0, _ in batch["window"].tolist() for t in (0, 1)
                for y in {y0 // 20, (y0 + 7) // 20} for x in {x0 // 20, (x0 + 7) // 20}}
        assert set(counts) == want
        seen.update(counts)
    it.close()
    assert max(seen.values()) > 1  # without a cache, later groups read chunks again


def test_the_cache_reads_each_chunk_once_and_gives_the_same_batches():
    reads: list[tuple[int, ...]] = []
    cube = counted(synthetic(chunks={"time": 3, "y": 7, "x": 11}), "B02", reads)
    # no prefetch: two shards' groups reading at once could both miss a chunk
    cached = take(make(cube, batch_size=4, max_dates=5, prefetch=0), 8)
    counts = Counter(reads)
    assert max(counts.values()) == 1, counts  # 32 windows, every chunk decoded once
    assert len(counts) > 20  # and many chunks were read (3 x 6 x 4 exist)
    reference = take(make(synthetic(), batch_size=4, max_dates=5, cache_bytes=0), 8)
    for x, y in zip(cached, reference, strict=True):
        assert_batches_equal(x, y)


def test_only_the_time_chunks_of_the_kept_dates_are_read():
    reads: list[tuple[int, ...]] = []
    cube = counted(synthetic(nt=12, chunks={"time": 1}), "B04", reads)
    all_doy = pd.DatetimeIndex(cube.time.values).day_of_year.tolist()
    it = iter(make(cube, batch_size=2, n_shards=1, max_dates=3, prefetch=0, cache_bytes=0))
    for _ in range(3):
        reads.clear()
        batch = next(it)
        kept = {all_doy.index(d) for d in batch["s2_doy"].flatten().tolist()}
        assert {t for t, _, _ in reads} == kept  # not every date between the first and last
    it.close()


def test_arrays_with_large_chunks_are_read_window_by_window_with_the_same_batches(
        monkeypatch):
    cube = synthetic(nt=10, chunks={"time": 3, "y": 7, "x": 11})
    by_chunk = take(make(cube, max_dates=4, strategy="stratified"), 3)
    monkeypatch.setattr(sampler_module, "_MAX_BLOCK_BYTES", 0)  # every chunk is too large
    sampler = make(cube, max_dates=4, strategy="stratified")
    assert all(layout is None for layouts in sampler._layouts for layout in layouts)
    by_window = take(sampler, 3)
    for x, y in zip(by_chunk, by_window, strict=True):
        assert_batches_equal(x, y)


def test_the_block_cache_keeps_the_most_recently_used_chunks_within_its_bytes():
    cache = _BlockCache(3 * 800)  # three 100-float64 blocks
    blocks = {i: np.full(100, float(i)) for i in range(5)}
    for i in range(3):
        cache.put(("a", (i,)), blocks[i])
    assert cache.get(("a", (0,))) is blocks[0]  # 0 is now the most recently used
    cache.put(("a", (3,)), blocks[3])
    assert cache.get(("a", (1,))) is None  # the least recently used went first
    assert cache.get(("a", (0,))) is blocks[0] and cache.get(("a", (3,))) is blocks[3]
    assert cache.nbytes == 3 * 800
    cache.put(("a", (4,)), np.zeros(1000))  # larger than the whole cache: not kept
    assert cache.get(("a", (4,))) is None and cache.nbytes == 3 * 800
    assert (cache.hits, cache.misses) == (3, 2)


def test_cache_bytes_must_be_a_non_negative_integer():
    for bad in (-1, 1.5, "1GB"):
        with pytest.raises(ArgumentError, match="cache_bytes must be a non-negative integer"):
            make(cache_bytes=bad)
    assert "cache_bytes" not in make().config()  # it changes reads, not the stream


def _sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("xsky-sampler")]


def test_the_finalizer_run_inside_its_pools_submit_does_not_deadlock():
    it = iter(make(synthetic(chunks={"time": 4}), prefetch=2))
    next(it)
    assert it._pool is not None
    # the garbage collector may run the finalizer in a thread inside the pool's submit(),
    # which holds the pool's shutdown lock: shutting the pool down there never returns
    done = threading.Event()

    def collect_inside_submit() -> None:
        with it._pool._shutdown_lock:
            it._finalizer()
        done.set()

    t = threading.Thread(target=collect_inside_submit, daemon=True)
    t.start()
    t.join(10)
    if not done.is_set():  # closing now would block on that lock too
        pytest.fail("the finalizer deadlocked its thread (shutdown inside submit)")
    deadline = time.monotonic() + 10
    while _sampler_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _sampler_threads()  # the reaper thread shut the pool down
    it.close()
