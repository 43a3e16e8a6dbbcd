"""Without ../shared, the tests that need it skip with one clear reason (XSKY_SHARED)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_missing_shared_folder_skips_with_one_reason(tmp_path):
    env = {**os.environ, "XSKY_SHARED": str(tmp_path / "no-such-shared")}
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
         "tests/io/test_stac_errors.py", "tests/test_cli.py::test_models_lists_the_registry"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=280,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert " error" not in out.lower().split("short test summary")[-1]
    assert "2 passed" in out and "17 skipped" in out
    reasons = {line.split(": ", 1)[1] for line in out.splitlines()
               if line.startswith("SKIPPED") and ": " in line}
    assert len(reasons) == 1, reasons
    (reason,) = reasons
    assert reason.startswith("../shared not found:") and "see README" in reason


def test_shared_marker_is_registered_and_applied(request):
    markers = request.config.getini("markers")
    assert any(m.startswith("shared:") for m in markers)
