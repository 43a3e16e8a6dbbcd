"""Measured embed throughput per model, and how close ``xsky.plan`` gets to the measured time.

For each model, on the real Romania sample tiled to a larger cube (``--tiles`` per axis):
``xsky.plan`` (probe on this machine), then ``embed(...).compute()`` timed (best of
``--repeats``, after one warm-up run), with the default threaded scheduler.

It prints, per model: windows, the plan's estimate, the measured time, their ratio, and
windows/s. ``--write`` stores the windows/s in ``xsky/data/rates.json`` under
``--device-class`` (default ``cpu-<cores>core``), with the machine, date and this script as
the figure's source, for ``xsky.plan(..., device_class=...)``.

Run: ``python benchmarks/plan_rates.py [--tiles 3] [--write]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import xarray as xr

import xsky

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / ".." / "shared" / "data" / "weights_small"
BANDS = ["B02", "B03", "B04", "B08"]  # the sample's bands (Galileo and Presto take subsets)


def tiled(ds: xr.Dataset, tiles: int) -> xr.Dataset:
    """The cube repeated ``tiles`` x ``tiles`` times on a continued grid (same CRS)."""
    if tiles == 1:
        return ds
    ny, nx = ds.sizes["y"], ds.sizes["x"]
    dy = float(ds.y[1] - ds.y[0])
    dx = float(ds.x[1] - ds.x[0])
    rows = [xr.concat([ds.assign_coords(x=ds.x + j * nx * dx) for j in range(tiles)], "x")
            for _ in range(tiles)]
    out = xr.concat([r.assign_coords(y=r.y + i * ny * dy) for i, r in enumerate(rows)], "y")
    return out.rio.write_crs(ds.rio.crs)


def cases(tiles: int) -> list[tuple[str, xr.Dataset, dict]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        cube = xsky.tutorial.open_dataset("romania")
    chunk = {"time": -1, "y": 100, "x": 100}
    per_date = tiled(cube[[*BANDS, "valid"]].isel(time=slice(0, 12)), tiles)
    monthly = xsky.composite(cube[[*BANDS, "valid"]], freq="MS").sel(time="2019")
    monthly = tiled(monthly.drop_vars("valid_count", errors="ignore"), tiles)
    default = tiled(cube[[*BANDS, "valid"]].isel(time=slice(0, 15)), tiles)
    out = [
        ("test-tiny", per_date.chunk(chunk), {}),
        ("default", default.chunk(chunk), {}),
        ("galileo-nano", monthly.chunk(chunk),
         {"weights": str(WEIGHTS / "galileo_nano"), "patch_size": 4, "window": 16}),
        ("presto", monthly.chunk(chunk), {"weights": str(WEIGHTS / "presto" / "default_model.pt")}),
    ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--device-class", default=f"cpu-{os.cpu_count()}core")
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch threads {torch.get_num_threads()}, dask threaded scheduler; "
          f"Romania sample tiled {args.tiles}x{args.tiles}, chunks 100x100 px")
    rows = []
    for name, ds, kw in cases(args.tiles):
        if args.models and name not in args.models:
            continue
        t0 = time.perf_counter()
        p = xsky.plan(ds, name, **kw)
        plan_s = time.perf_counter() - t0
        emb = xsky.embed(ds, name, **kw)
        emb.compute()  # warm-up: the estimate's steady state is what a long run sees
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            emb.compute()
            times.append(time.perf_counter() - t0)
        best = min(times)
        est = p.seconds - p.warmup_s
        rate = p.windows / best
        rows.append((name, p.windows, est, best, rate))
        print(f"{name:13s} windows {p.windows:7d}  plan {est:7.2f} s (plan took {plan_s:5.1f} s)"
              f"  measured {best:7.2f} s (of {np.round(times, 2).tolist()})  "
              f"plan/measured {est / best:5.2f}  {rate:9.1f} windows/s  "
              f"{p.flops_per_window * rate / 1e9:6.2f} GFLOP/s")
    if args.write:
        path = ROOT / "xsky" / "data" / "rates.json"
        table = json.loads(path.read_text()) if path.exists() else {"rates": {}}
        day = datetime.date.today().isoformat()
        for name, _, _, _, rate in rows:
            table["rates"].setdefault(name, {})[args.device_class] = {
                "windows_per_s": round(rate, 2),
                "source": (f"benchmarks/plan_rates.py --tiles {args.tiles}, {day}, "
                           f"{os.cpu_count()} CPU cores, torch {torch.__version__}"),
            }
        path.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
