from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from xsky.models import EmbeddingModel, ModalitySpec, ModelSpec

# Keep torch from oversubscribing the 2-core CI machine when dask runs tasks in threads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# never read or write a user's weights cache: create_model(name) without weights would
# otherwise pick up an earlier download (tests pass weights explicitly)
os.environ["XSKY_WEIGHTS_DIR"] = tempfile.mkdtemp(prefix="xsky-test-weights-")

ROOT = Path(__file__).resolve().parents[1]
#: the shared data folder: ``$XSKY_SHARED`` if set, else ``../shared`` beside the repository
SHARED = Path(os.environ.get("XSKY_SHARED") or (ROOT / ".." / "shared")).expanduser().resolve()
SHARED_MISSING = (
    f"../shared not found: {SHARED} is not a folder (set XSKY_SHARED to point elsewhere); "
    "these tests need the shared sample data, see README 'Development'"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses the ``shared`` fixture (directly or through a fixture built
    on it) with ``shared``, and skip them all with one reason when the folder is absent;
    skip ``gpu`` tests where torch sees no CUDA device."""
    missing = not SHARED.is_dir()
    skip = pytest.mark.skip(reason=SHARED_MISSING)
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    has_cuda = torch.cuda.is_available()
    for item in items:
        if "shared" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared)
        if missing and item.get_closest_marker("shared") is not None:
            item.add_marker(skip)
        # `-m gpu` on a machine without CUDA skips them with one reason
        if not has_cuda and item.get_closest_marker("gpu") is not None:
            item.add_marker(no_gpu)


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared data folder (``../shared`` beside the repository, or ``$XSKY_SHARED``)."""
    if not SHARED.is_dir():
        pytest.skip(SHARED_MISSING)
    return SHARED


class WindowMean(EmbeddingModel):
    """Pooled test model: the mean of each band over the whole window."""

    def __init__(self, window: int = 16, stride: int = 8) -> None:
        super().__init__()
        self.spec = ModelSpec(
            name="window-mean", modalities=(ModalitySpec("s2", ("B02", "B03")),),
            window=window, stride=stride, feature_dim=2, output="pooled",
        )
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def embed_windows(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return inputs["s2"].mean(dim=(2, 3))


class TemporalMean(EmbeddingModel):
    """Time-fusing test model: per pixel, the mean over valid dates of each band and of the
    day of year (feature C)."""

    def __init__(self) -> None:
        super().__init__()
        self.spec = ModelSpec(
            name="temporal-mean", modalities=(ModalitySpec("s2", ("B02", "B03")),),
            window=8, stride=1, feature_dim=3, fuses_time=True,
        )
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def embed_windows(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        x, valid, doy = inputs["s2"], inputs["s2_valid"], inputs["s2_doy"]
        w = valid.float()  # (N, T, W, W)
        n = w.sum(1).clamp(min=1)
        bands = (x * w[:, None]).sum(2) / n[:, None]
        d = (doy[:, :, None, None].float() * w).sum(1) / n
        return torch.cat([bands, d[:, None]], dim=1)


@pytest.fixture
def isolated_cache() -> Iterator[Any]:
    """The runtime cache module, emptied for one test; what was cached before comes back after.

    Tests that count builds or check what a process without a cached model does use this,
    so they never depend on what an earlier test left in the process-wide cache.
    """
    from xsky.runtime import cache

    tables = (cache._CACHE, cache.BUILDS, cache._RECIPES, cache._LOCATION_FILES)
    saved = [dict(t) for t in tables]
    for t in tables:
        t.clear()
    try:
        yield cache
    finally:
        for t, content in zip(tables, saved, strict=True):
            t.clear()
            t.update(content)


@pytest.fixture
def window_mean() -> WindowMean:
    return WindowMean().set_ref(None)


@pytest.fixture
def temporal_mean() -> TemporalMean:
    return TemporalMean().set_ref(None)


def reflect_pad(a: np.ndarray, lo: int, hi: int, axis: int) -> np.ndarray:
    pad = [(0, 0)] * a.ndim
    pad[axis] = (lo, hi)
    return np.pad(a, pad, mode="reflect")


def assert_close_nan(actual: np.ndarray, desired: np.ndarray, atol: float) -> None:
    """Same NaN pattern, and ``max |actual - desired| <= atol`` where both are numbers.

    ``np.nanmax(np.abs(a - b)) <= atol`` alone passes when one side has NaN where the other
    has a value (a pixel wrongly masked, or wrongly kept).
    """
    a, d = np.asarray(actual), np.asarray(desired)
    assert a.shape == d.shape, (a.shape, d.shape)
    nan_a, nan_d = np.isnan(a), np.isnan(d)
    assert (nan_a == nan_d).all(), (
        f"NaN patterns differ at {int((nan_a != nan_d).sum())} of {a.size} values")
    if (~nan_a).any():
        err = float(np.abs(a[~nan_a] - d[~nan_a]).max())
        assert err <= atol, f"max abs difference {err:.3g} > {atol:.3g}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Name the busy threads that would keep the interpreter from exiting (non-daemon
    threads are joined at exit): a leaked, blocked one hangs CI after the last test."""
    import sys
    import threading
    import traceback

    frames = sys._current_frames()
    for t in threading.enumerate():
        if t is threading.main_thread() or t.daemon or t.ident not in frames:
            continue
        stack = traceback.extract_stack(frames[t.ident])
        if stack and stack[-1].name == "_worker" and "work_queue.get" in (stack[-1].line or ""):
            continue  # an idle executor thread: it ends at exit
        sys.stderr.write(f"\nxsky tests: thread {t.name!r} is busy at session end and will "
                         f"delay exit:\n{''.join(traceback.format_list(stack))}")
    sys.stderr.flush()


@pytest.fixture
def isolated_batch_sizes() -> Iterator[Any]:
    """The automatic batch sizes of this process (xsky.runtime.batching), emptied for one
    test; what was there before comes back after."""
    from xsky.runtime import batching

    saved = dict(batching._SIZES)
    batching._SIZES.clear()
    try:
        yield batching
    finally:
        batching._SIZES.clear()
        batching._SIZES.update(saved)
