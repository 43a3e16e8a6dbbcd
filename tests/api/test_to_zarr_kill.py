"""``xsky.to_zarr`` survives kills: a process killed with SIGKILL is resumed, and a
``distributed`` run completes although a worker dies under it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import xarray as xr
import zarr

import xsky
from xsky.api.writing import IncompleteStoreWarning, open_embedding, to_zarr
from xsky.io.zarr_regions import CompletionRecord

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")

SOURCE = {"sample": "romania", "dates": 3}
N_REGIONS = 27  # 3 dates x 3 x 3 blocks

# the same embedding in the killed process and here; each region is slowed down so that the
# kill lands in the middle of the run (the values are not touched)
SCRIPT = textwrap.dedent("""
    import sys, time
    import xsky
    from xsky.io import zarr_regions
    from xsky.api.writing import to_zarr

    orig = zarr_regions.write_region
    def slow(target, index, *blocks):
        time.sleep(0.15)
        return orig(target, index, *blocks)
    zarr_regions.write_region = slow

    cube = xsky.tutorial.open_dataset("romania").isel(time=slice(0, 3))
    emb = xsky.embed(cube.chunk({"time": 1, "x": 32, "y": 32}), "test-tiny")
    print("start", flush=True)
    to_zarr(emb, sys.argv[1], progress=False, source={"sample": "romania", "dates": 3},
            max_in_flight=2)
    print("done", flush=True)
""")


def _emb():
    cube = xsky.tutorial.open_dataset("romania").isel(time=slice(0, 3))
    return xsky.embed(cube.chunk({"time": 1, "x": 32, "y": 32}), "test-tiny")


def _n_done(path) -> int:
    rec = CompletionRecord.open(path)
    return 0 if rec is None else int(rec.done().sum())


def _raw(path, name):
    return np.asarray(zarr.open_array(str(path), path=name, mode="r")[...])


@pytest.mark.timeout(180)
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    killed, whole = tmp_path / "killed.zarr", tmp_path / "whole.zarr"
    import torch

    # the same torch threads as here: float sums are then the same, bit for bit
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(killed)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while _n_done(killed) < 6:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the run wrote no region in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    done = CompletionRecord.open(killed).done()
    n_done = int(done.sum())
    assert 6 <= n_done < N_REGIONS, n_done  # killed in the middle
    with pytest.warns(IncompleteStoreWarning, match=f"{N_REGIONS - n_done} of {N_REGIONS}"):
        open_embedding(killed)

    emb = _emb()
    rep = to_zarr(emb, killed, progress=False, source=SOURCE)
    assert (rep.computed, rep.skipped, rep.complete) == (N_REGIONS - n_done, n_done, True)
    ref = to_zarr(emb, whole, progress=False, source=SOURCE)
    assert (ref.computed, ref.skipped) == (N_REGIONS, 0)
    # identical output: the same bytes in every array, the same decoded result
    for name in ("embedding", "valid_fraction", "x", "y", "time"):
        np.testing.assert_array_equal(_raw(killed, name), _raw(whole, name))
    xr.testing.assert_identical(open_embedding(killed).compute(),
                                open_embedding(whole).compute())
    assert np.isfinite(_raw(killed, "valid_fraction")).all()  # no region left unwritten


def _slow_writes():
    """Run on each worker: slow every region write down (the values are not touched)."""
    from xsky.io import zarr_regions

    orig = zarr_regions.write_region
    if getattr(orig, "slowed", False):
        return

    def slow(target, index, *blocks):
        time.sleep(0.2)
        return orig(target, index, *blocks)

    slow.slowed = True  # type: ignore[attr-defined]
    zarr_regions.write_region = slow


@pytest.mark.timeout(120)
def test_a_distributed_run_writes_the_same_store_and_resumes(tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    from xsky.io import zarr_regions

    out, whole = tmp_path / "d.zarr", tmp_path / "whole.zarr"
    emb = _emb()
    to_zarr(emb, whole, progress=False, source=SOURCE)
    orig = zarr_regions.write_region

    def failing(target, index, *blocks):
        if index >= 20:
            raise RuntimeError(f"lost region {index}")
        return orig(target, index, *blocks)

    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as lc, distributed.Client(lc):
        monkeypatch.setattr(zarr_regions, "write_region", failing)
        with pytest.raises(RuntimeError, match="lost region"):
            to_zarr(emb, out, progress=False, source=SOURCE, max_in_flight=4)
        monkeypatch.undo()
        n_done = _n_done(out)
        assert n_done < N_REGIONS
        rep = to_zarr(emb, out, progress=False, source=SOURCE)  # the active client
    assert (rep.computed, rep.skipped, rep.complete) == (N_REGIONS - n_done, n_done, True)
    for name in ("embedding", "valid_fraction"):
        np.testing.assert_array_equal(_raw(out, name), _raw(whole, name))


@pytest.mark.slow  # two worker processes start, and one restarts: ~1 min on 2 cores
@pytest.mark.timeout(300)
def test_a_distributed_run_completes_when_a_worker_is_killed(tmp_path):
    distributed = pytest.importorskip("distributed")
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    out, whole = tmp_path / "d.zarr", tmp_path / "whole.zarr"
    emb = _emb()
    to_zarr(emb, whole, progress=False, source=SOURCE, client=False)
    result: dict[str, object] = {}
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as lc, \
            distributed.Client(lc) as client:
        client.run(_slow_writes)
        pids = client.run(os.getpid)

        def run():
            try:
                result["report"] = to_zarr(emb, out, progress=False, source=SOURCE,
                                           client=client, max_in_flight=4)
            except BaseException as err:  # pragma: no cover - reported below
                result["error"] = err

        t = threading.Thread(target=run)
        t.start()
        deadline = time.monotonic() + 120
        while _n_done(out) < 2 and t.is_alive():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        victim = next(iter(pids.values()))
        os.kill(victim, signal.SIGKILL)
        t.join(180)
        assert not t.is_alive()
        alive = client.run(os.getpid)
    assert "error" not in result, result.get("error")
    rep = result["report"]
    assert rep.complete and rep.computed == N_REGIONS  # a fresh store: all computed here
    assert victim not in alive.values()  # the worker really died (its nanny restarted it)
    # workers run torch on one thread (distributed's default), this process maybe not: the
    # float sums may differ in the last bit
    for name in ("embedding", "valid_fraction"):
        a, b = _raw(out, name), _raw(whole, name)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
