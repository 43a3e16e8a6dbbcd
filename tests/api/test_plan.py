"""xsky.plan: the geometry of a run by hand, FLOPs that scale with the windows, no compute
at graph build, the rate table, and an estimate within 25 % of the measured time."""

from __future__ import annotations

import math
import time
import warnings

import dask
import numpy as np
import pytest
import xarray as xr

import xsky
from xsky.api.planning import Plan, plan, rate_table
from xsky.exceptions import ArgumentError

BANDS = ("B02", "B03", "B04", "B08")


def romania(nt: int = 6, n: int = 100, chunk: int = 50) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the file's chunks
        ds = xsky.tutorial.open_dataset("romania")
    ds = ds[[*BANDS, "valid"]].isel(time=slice(0, nt), y=slice(0, n), x=slice(0, n))
    return ds.chunk({"time": -1, "y": chunk, "x": chunk})


def test_geometry_matches_the_hand_count():
    ds = romania(nt=6, n=100)
    p = plan(ds, "test-tiny", probe=False)
    # test-tiny: windows of 16 px, dense, stride 4: ceil(100 / 16) = 7 windows per axis
    assert p.windows == 6 * 7 * 7
    assert p.pixels == 100 * 100
    assert p.dates == {"s2": 6}
    assert p.area_km2 == pytest.approx(100 * 100 * 10 * 10 / 1e6)  # 10 m pixels
    assert p.output_shape == (6, 25, 25, 16)
    # bands at their stored dtype and the boolean mask, each read once
    assert p.bytes_read == sum(int(ds[v].nbytes) for v in [*BANDS, "valid"])
    assert p.bytes_written == 6 * 25 * 25 * 16 * 4 + 6 * 25 * 25 * 4
    assert p.chunks == 4  # 2 x 2 spatial chunks, one time chunk
    assert p.tasks > p.chunks
    assert math.isnan(p.seconds) and math.isnan(p.flops) and p.probe_windows == 0


def test_a_geographic_grid_has_its_geodesic_area():
    ds = romania(nt=2, n=32)
    # 0.001 deg pixels at the equator: 32 x 0.111 km per side
    geo = ds.assign_coords(y=0.0155 - 0.001 * np.arange(32), x=0.0005 + 0.001 * np.arange(32))
    geo = geo.rio.write_crs("EPSG:4326")
    p = plan(geo, "test-tiny", probe=False)
    side = 32 * 0.001 * 111.32  # km per degree of longitude at the equator
    assert p.area_km2 == pytest.approx(side * side, rel=0.01)


def test_planning_without_a_probe_computes_nothing():
    ds = romania(nt=4, n=64)
    tasks: list[object] = []
    with dask.callbacks.Callback(pretask=lambda key, dsk, state: tasks.append(key)):
        plan(ds, "test-tiny", probe=False)
    assert tasks == []


def test_the_probe_counts_the_model_flops_per_window_whatever_the_cube_size():
    small = plan(romania(nt=2, n=64), "test-tiny")
    large = plan(romania(nt=4, n=100), "test-tiny")
    assert small.flops_per_window > 0
    # every window is the same forward: FLOPs per window do not depend on the cube
    assert large.flops_per_window == pytest.approx(small.flops_per_window, rel=1e-6)
    assert large.flops == pytest.approx(large.flops_per_window * large.windows)
    assert small.probe_windows > 0 and small.probe_s > 0 and small.seconds > 0


def test_the_estimate_is_within_25_percent_of_the_measured_time():
    ds = romania(nt=12, n=100)
    p = plan(ds, "test-tiny")
    emb = xsky.embed(ds, "test-tiny")
    # the estimate's own warm-up is counted once, as a first compute pays it
    measured = []
    for _ in range(3):
        t0 = time.perf_counter()
        emb.compute()
        measured.append(time.perf_counter() - t0)
    best = min(measured)
    assert abs(p.seconds - p.warmup_s - best) <= 0.25 * best, (p.seconds, measured)


def test_device_classes_come_from_the_rate_table_with_their_source():
    table = rate_table()
    model = next(iter(table))
    cls, entry = next(iter(table[model].items()))
    ds = romania(nt=2, n=64)
    p = plan(ds, model, probe=False, device_class=cls,
             **({"weights": None} if model == "test-tiny" else {}))
    est = p.device_estimates[cls]
    assert est["seconds"] == pytest.approx(p.windows / entry["windows_per_s"])
    assert est["source"] == entry["source"]
    with pytest.raises(ArgumentError, match=r"unknown device_class 'tpu-v9'.*measured"):
        plan(ds, "test-tiny", probe=False, device_class="tpu-v9")


def test_the_summary_names_every_figure():
    p = plan(romania(nt=2, n=64), "test-tiny")
    text = str(p)
    for word in ("area", "windows", "chunks / tasks", "read / written", "model FLOPs",
                 "probe", "estimate here"):
        assert word in text
    assert isinstance(p, Plan) and p.to_dict()["windows"] == p.windows
