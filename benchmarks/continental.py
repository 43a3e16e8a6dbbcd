"""A continental-scale run on 2 CPU cores: the real sample tiled to >= 10^4 km², streamed to Zarr.

The Romania cube (100 x 100 px at 10 m) is tiled ``--tiles`` x ``--tiles`` times on a continued
grid (lazily: every tile is the same numpy data, so the input costs no memory) and embedded with
``--model`` into a resumable store with ``xsky.to_zarr``. Printed:

- the plan's estimate (``xsky.plan``, one-chunk probe) next to the measured time;
- km²/h and peak RSS of the uninterrupted run (a subprocess each, so RSS is the run's own),
  and of a run on a quarter of the area (the memory of a streamed write must not grow with it);
- the model's duty cycle in the uninterrupted run: seconds inside model calls
  (:func:`xsky.runtime.device.busy_seconds`) / wall seconds of the write;
- a run killed with SIGKILL at about half its regions, then resumed: regions computed on resume,
  its time against the uninterrupted run, and whether the two stores are identical.

Run: ``python benchmarks/continental.py [--tiles 100] [--model test-tiny] [--dates 1]``
(``--tiles 100``: 10,000 x 10,000 px = 10^4 km²).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, warnings
import numpy as np, xarray as xr, dask.array as da
import xsky
warnings.simplefilter("ignore")
tiles, model, dates, chunk, out = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
cube = xsky.tutorial.open_dataset("romania")[["B02", "B03", "B04", "B08", "valid"]].isel(time=slice(0, dates))
n = cube.sizes["y"]
data = {}
for v in cube.data_vars:
    a = da.from_array(cube[v].values, chunks=(1, n, n))
    big = da.tile(a, (1, tiles, tiles)).rechunk((1, chunk, chunk))
    data[v] = (("time", "y", "x"), big, cube[v].attrs)
y0, x0 = float(cube.y[0]), float(cube.x[0])
ds = xr.Dataset(data, coords={"time": cube.time, "y": y0 - 10.0 * np.arange(n * tiles),
                              "x": x0 + 10.0 * np.arange(n * tiles)}).rio.write_crs(cube.rio.crs)
if out == "plan":
    t0 = time.perf_counter()
    p = xsky.plan(ds, model)
    print(json.dumps({"plan_s": time.perf_counter() - t0, "estimate_s": p.seconds,
                      "windows": p.windows, "area_km2": p.area_km2, "chunks": p.chunks}))
    sys.exit(0)
from xsky.runtime.device import busy_seconds
emb = xsky.embed(ds, model)
busy0, t0 = busy_seconds(), time.perf_counter()
rep = xsky.to_zarr(emb, out, progress=False, source={"benchmark": "continental", "tiles": tiles})
print(json.dumps({"seconds": time.perf_counter() - t0, "computed": rep.computed,
                  "skipped": rep.skipped, "regions": rep.regions, "area_km2": rep.area_km2,
                  "model_s": busy_seconds() - busy0,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def child(args: argparse.Namespace, tiles: int, out: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(tiles), args.model,
                             str(args.dates), str(args.chunk), out],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> dict:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}):\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def done_fraction(store: Path) -> float:
    from xsky.io.zarr_regions import store_state

    state = store_state(store)
    if state.record is None:
        return 0.0
    done = state.record.done()
    return float(done.mean()) if done is not None and done.size else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=100)
    ap.add_argument("--model", default="test-tiny")
    ap.add_argument("--dates", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=1000, help="input chunk (px)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="xsky-continental-"))
    print(f"model {args.model}, {args.dates} date(s), tiles {args.tiles}x{args.tiles} "
          f"({100 * args.tiles} px square at 10 m), chunks {args.chunk} px, "
          f"{os.cpu_count()} cores")
    try:
        plan = finish(child(args, args.tiles, "plan"))
        print(f"plan: {plan['area_km2']:,.0f} km², {plan['windows']:,} windows, "
              f"{plan['chunks']} chunks, estimate {plan['estimate_s']:.1f} s "
              f"(the plan took {plan['plan_s']:.1f} s)")
        full = finish(child(args, args.tiles, str(tmp / "full.zarr")))
        quarter = finish(child(args, max(1, args.tiles // 2), str(tmp / "quarter.zarr")))
        print(f"uninterrupted: {full['seconds']:.1f} s for {full['area_km2']:,.0f} km² = "
              f"{full['area_km2'] / full['seconds'] * 3600:,.0f} km²/h, {full['regions']} regions,"
              f" peak RSS {full['rss_mb']:.0f} MB; plan/measured "
              f"{plan['estimate_s'] / full['seconds']:.2f}")
        print(f"model busy {full['model_s']:.2f} s of {full['seconds']:.1f} s wall: duty cycle "
              f"{full['model_s'] / full['seconds']:.2f} (model seconds / wall seconds, "
              "batch_size auto)")
        print(f"a quarter of the area: {quarter['seconds']:.1f} s, peak RSS "
              f"{quarter['rss_mb']:.0f} MB (full area / quarter: "
              f"{full['rss_mb'] / quarter['rss_mb']:.2f}x RSS for 4x the area)")
        killed = tmp / "killed.zarr"
        victim = child(args, args.tiles, str(killed))
        t0 = time.perf_counter()
        while victim.poll() is None and done_fraction(killed) < 0.5:
            time.sleep(0.2)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        cut = done_fraction(killed)
        print(f"killed after {time.perf_counter() - t0:.1f} s with {100 * cut:.0f} % of the "
              "regions recorded")
        resumed = finish(child(args, args.tiles, str(killed)))
        print(f"resume: computed {resumed['computed']} and skipped {resumed['skipped']} of "
              f"{resumed['regions']} regions in {resumed['seconds']:.1f} s "
              f"({resumed['seconds'] / full['seconds']:.2f} of the uninterrupted run)")
        import numpy as np
        import zarr

        a = zarr.open_array(str(tmp / "full.zarr"), path="embedding", mode="r")
        b = zarr.open_array(str(killed), path="embedding", mode="r")
        same = all(np.array_equal(a[:, i:i + 500], b[:, i:i + 500], equal_nan=True)
                   for i in range(0, a.shape[1], 500))
        print(f"resumed store identical to the uninterrupted one: {same}")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"largest child RSS {peak:.0f} MB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
