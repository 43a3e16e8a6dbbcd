from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep torch from oversubscribing the 2-core CI machine when dask runs tasks in threads.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT / ".." / "shared").resolve()


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared data folder (``../shared`` beside the repository)."""
    if not SHARED.is_dir():
        pytest.fail(f"shared data folder not found at {SHARED}; tests expect ../shared")
    return SHARED
