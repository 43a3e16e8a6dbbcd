"""Automatic batch sizes (xsky.runtime.batching) and the model's busy time (runtime.device)."""

from __future__ import annotations

import math
import threading

import pytest

from xsky.runtime import batching
from xsky.runtime.batching import (
    CAP,
    MARGIN,
    auto_batch_size,
    cached_batch_size,
    remember_smaller,
    window_bytes_estimate,
)
from xsky.runtime.device import busy_seconds, model_busy

MB = 2**20
GB = 2**30


@pytest.fixture(autouse=True)
def _empty_batch_sizes(isolated_batch_sizes):
    return isolated_batch_sizes


class FakeProbe:
    """Peak memory of a forward: ``fixed`` bytes plus ``per_window`` per window."""

    def __init__(self, per_window: int, fixed: int = 0) -> None:
        self.per_window, self.fixed, self.calls = per_window, fixed, []

    def __call__(self, n: int) -> int:
        self.calls.append(n)
        return self.fixed + n * self.per_window


# ---- CUDA: margin x free / per-window peak, clipped --------------------------------------


def test_cuda_batch_above_the_cap_is_clipped_after_a_warm_up_and_a_two_window_probe():
    probe = FakeProbe(per_window=3 * MB)
    batch = auto_batch_size("cuda", 64, probe=probe, free_bytes=lambda d: 10 * GB)
    # 0.75 * 10 GiB / 3 MiB = 2560 windows, above the cap of 1024
    assert math.floor(MARGIN * 10 * GB / (3 * MB)) == 2560
    assert batch == CAP == 1024
    # the warm-up with one window, then the measured probe with two
    assert probe.calls == [1, 2]


def test_cuda_batch_below_the_cap_uses_the_margin_and_the_per_window_peak():
    probe = FakeProbe(per_window=5 * MB, fixed=2 * MB)  # probe(2) = 12 MiB -> 6 MiB/window
    asked = []

    def free(device):
        asked.append(device)
        return 2 * GB

    batch = auto_batch_size("cuda:1", 64, probe=probe, free_bytes=free)
    assert batch == math.floor(0.75 * 2 * GB / (6 * MB)) == 256
    assert asked == ["cuda:1"]
    # another margin gives another answer: the margin is used, not a constant
    assert auto_batch_size("cuda", 64, probe=probe, free_bytes=lambda d: 2 * GB,
                           margin=0.5) == math.floor(0.5 * 2 * GB / (6 * MB)) == 170


def test_cuda_batch_is_clipped_to_one_and_to_the_cap():
    big = FakeProbe(per_window=1 * GB)
    assert auto_batch_size("cuda", 64, probe=big, free_bytes=lambda d: GB // 2) == 1
    small = FakeProbe(per_window=1024)
    assert auto_batch_size("cuda", 64, probe=small, free_bytes=lambda d: 80 * GB) == 1024
    assert auto_batch_size("cuda", 64, probe=small, free_bytes=lambda d: 80 * GB,
                           cap=100) == 100


def test_cuda_without_a_probe_falls_back_to_the_default():
    assert auto_batch_size("cuda", 48) == 48


def test_the_default_cuda_free_memory_query_is_used_when_none_is_given(monkeypatch):
    monkeypatch.setattr(batching, "cuda_free_bytes", lambda device: 600 * MB)
    assert auto_batch_size("cuda", 64, probe=FakeProbe(per_window=MB)) == 450


# ---- CPU: the default, capped by a share of the RAM --------------------------------------


def test_cpu_batch_is_the_models_default_when_ram_is_plenty():
    assert auto_batch_size("cpu", 64, window_bytes=MB, ram_bytes=lambda: 64 * GB) == 64
    assert auto_batch_size("cpu", 7) == 7  # no estimate: the default
    assert auto_batch_size("mps", 12, window_bytes=MB, ram_bytes=lambda: 64 * GB) == 12


def test_cpu_batch_is_capped_under_a_small_ram_figure():
    # 0.25 * 100 MiB / 2 MiB = 12.5 -> 12 windows
    assert auto_batch_size("cpu", 64, window_bytes=2 * MB, ram_bytes=lambda: 100 * MB) == 12
    # never below one window
    assert auto_batch_size("cpu", 64, window_bytes=GB, ram_bytes=lambda: MB) == 1
    # an unknown RAM figure (no psutil) keeps the default
    assert auto_batch_size("cpu", 64, window_bytes=GB, ram_bytes=lambda: None) == 64


def test_the_default_ram_query_reads_the_available_memory(monkeypatch):
    import psutil

    assert batching.available_ram_bytes() == pytest.approx(
        psutil.virtual_memory().available, rel=0.2)
    monkeypatch.setattr(batching, "available_ram_bytes", lambda: 40 * MB)
    assert auto_batch_size("cpu", 64, window_bytes=MB) == 10


def test_window_bytes_estimate_scales_with_input_and_output_sizes():
    one = window_bytes_estimate(4 * 16 * 16, 16 * 4 * 4)
    assert one == batching.ACTIVATION_FACTOR * (1024 + 256) * 4
    assert window_bytes_estimate(2 * 4 * 16 * 16, 2 * 16 * 4 * 4) == 2 * one


# ---- the per-process cache ----------------------------------------------------------------


def test_cached_batch_size_computes_once_per_key():
    calls = []

    def compute():
        calls.append(1)
        return 40

    key = batching.batch_key(("m", "sha", "v"), "cuda", [(4, 16, 16)], "float32")
    assert cached_batch_size(key, compute) == 40
    assert cached_batch_size(key, compute) == 40
    assert len(calls) == 1
    other = batching.batch_key(("m", "sha", "v"), "cuda", [(4, 16, 16)], "bfloat16")
    assert cached_batch_size(other, lambda: 80) == 80  # precision is part of the key
    assert cached_batch_size(key, compute) == 40


def test_remember_smaller_lowers_and_never_raises_the_cached_size():
    key = ("k",)
    cached_batch_size(key, lambda: 64)
    assert remember_smaller(key, 16) == 16
    assert remember_smaller(key, 32) == 16  # a larger figure does not undo a smaller one
    assert cached_batch_size(key, lambda: 999) == 16
    batching.clear_batch_sizes()
    assert cached_batch_size(key, lambda: 999) == 999


# ---- busy time --------------------------------------------------------------------------------


def test_model_busy_adds_the_time_spent_in_the_body_per_device():
    import time

    cpu0, other0, all0 = busy_seconds("cpu"), busy_seconds("fake:7"), busy_seconds()
    with model_busy("fake:7"):
        time.sleep(0.05)
    spent = busy_seconds("fake:7") - other0
    assert 0.05 <= spent < 0.5
    assert busy_seconds("cpu") == cpu0
    assert busy_seconds() - all0 == pytest.approx(spent, abs=1e-9)


def test_model_busy_counts_a_body_that_raises_and_threads_add_up():
    import time

    t0 = busy_seconds("fake:8")
    def failing():
        with model_busy("fake:8"):
            time.sleep(0.02)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        failing()
    assert busy_seconds("fake:8") - t0 >= 0.02

    def work():
        with model_busy("fake:9"):
            time.sleep(0.03)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert busy_seconds("fake:9") >= 4 * 0.03
