"""Engine overhead: xsky.embed against a bare torch loop over exactly the same windows.

Both sides embed the same cube with the same model, windows and batch size, on the same
number of CPU threads, in this process. The bare loop gets the windows for free (cut from an
in-memory padded array up front); xsky reads, pads, chunks, schedules and stitches.

    python benchmarks/engine_overhead.py [--threads 2] [--dates 32] [--tile 3]
        [--models test-tiny skysense-small:temporal=per-date ...]

A model is ``name`` or ``name:option=value,...`` (options go to ``create_model``). Models
whose bands the sample lacks run on a synthetic cube of the same size.

Prints the timing of each side and their ratio (target: xsky / bare <= 1.10 on 2 threads).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def _cube(dates: int, tile: int):
    import xarray as xr

    import xsky

    base = xsky.tutorial.open_dataset("romania").isel(time=slice(0, dates)).load()
    if tile == 1:
        return base
    # a bigger cube of real pixels: mirror-tile the 100 x 100 sample
    parts = {}
    for v in ("B02", "B03", "B04", "B08", "valid"):
        a = base[v].values
        a = np.concatenate([a, a[:, ::-1]] * ((tile + 1) // 2), axis=1)[:, : 100 * tile]
        a = np.concatenate([a, a[:, :, ::-1]] * ((tile + 1) // 2), axis=2)[:, :, : 100 * tile]
        parts[v] = (("time", "y", "x"), a)
    y = base.y.values[0] - 10.0 * np.arange(100 * tile)
    x = base.x.values[0] + 10.0 * np.arange(100 * tile)
    ds = xr.Dataset(parts, coords={"time": base.time.values, "y": y, "x": x})
    return ds.rio.write_crs(base.rio.crs)


def bare_loop(ds, model, batch_size: int) -> tuple[float, np.ndarray]:
    """Embed with a plain loop: pad, cut windows, normalise, batch, run, stitch."""
    import torch

    from xsky.modalities import conversion

    spec = model.spec
    scale = conversion("reflectance", spec.modalities[0].units, "s2").scale
    w, s = spec.window, spec.stride
    bands = spec.modalities[0].bands
    x = np.stack([ds[b].values for b in bands], axis=1).astype(np.float32)  # (T, C, Y, X)
    valid = ds["valid"].values
    t, c, ny, nx = x.shape
    kwy, kwx = -(-ny // w), -(-nx // w)
    pad = ((0, 0), (0, 0), (0, kwy * w - ny), (0, kwx * w - nx))
    xp = np.pad(x, pad, mode="reflect")
    vp = np.pad(valid, pad[:1] + pad[2:], mode="reflect")
    mean = torch.tensor(spec.modalities[0].mean)[:, None, None]
    std = torch.tensor(spec.modalities[0].std)[:, None, None]
    # the windows, prepared outside the timed region
    wins = torch.from_numpy(xp).unfold(2, w, w).unfold(3, w, w)  # T, C, ky, kx, w, w
    wins = wins.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, w, w).contiguous()
    vwin = torch.from_numpy(vp).unfold(1, w, w).unfold(2, w, w).reshape(-1, w, w).contiguous()
    out = np.empty((wins.shape[0], spec.feature_dim, w // s, w // s), np.float32)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, wins.shape[0], batch_size):
            xb = (wins[i:i + batch_size] * scale - mean) / std
            xb = torch.where(vwin[i:i + batch_size, None], xb, 0.0)
            out[i:i + batch_size] = model.embed_windows({"s2": xb}).numpy()
    res = out.reshape(t, kwy, kwx, spec.feature_dim, w // s, w // s)
    res = res.transpose(0, 1, 4, 2, 5, 3).reshape(t, kwy * w // s, kwx * w // s, -1)
    return time.perf_counter() - t0, res[:, : -(-ny // s), : -(-nx // s)]


def xsky_run(ds, name: str, batch_size: int, threads: int, workers: int, options: dict
             ) -> tuple[float, np.ndarray]:
    import dask
    import torch

    import xsky

    torch.set_num_threads(max(1, threads // workers))
    chunked = ds.chunk(time=max(1, ds.sizes["time"] // (2 * workers)), y=-1, x=-1)
    t0 = time.perf_counter()
    emb = xsky.embed(chunked, name, batch_size=batch_size, **options)
    with dask.config.set(scheduler="threads", num_workers=workers):
        vals = emb.values
    return time.perf_counter() - t0, vals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dates", type=int, default=16)
    ap.add_argument("--tile", type=int, default=2, help="cube side in units of 100 px")
    ap.add_argument("--models", nargs="+",
                    default=["test-tiny", "skysense-small:temporal=per-date"])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import torch

    import xsky

    ds = _cube(args.dates, args.tile)
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"threads {args.threads}; cube {dict(ds.sizes)}")
    for item in args.models:
        name, _, opts = item.partition(":")
        options = dict(o.split("=", 1) for o in opts.split(",") if o)
        model = xsky.models.create_model(name, **options)
        spec = model.spec
        cube = ds
        if not set(spec.bands) <= set(ds.data_vars):
            from xsky.testing import synthetic_s2_cube

            cube = synthetic_s2_cube(ds.sizes["y"], ds.sizes["x"], ds.sizes["time"],
                                     bands=spec.bands, seed=0)
            cube["valid"] = (("time", "y", "x"), ds["valid"].values)
        if spec.fuses_time or spec.output != "dense" or len(spec.modalities) > 1:
            print(f"{name}: skipped (the bare loop covers single-modality per-date dense models)")
            continue
        batch = spec.default_batch_size
        # Interleave the runs (this VM's speed drifts) and keep each configuration's best:
        # the bare loop gets its best torch thread count too (1 or all), xsky its best
        # split between dask threads and torch threads.
        bare_cfg = sorted({1, args.threads})
        xsky_cfg = sorted({1, args.threads})
        bare_t = dict.fromkeys(bare_cfg, np.inf)
        xsky_t = dict.fromkeys(xsky_cfg, np.inf)
        vals, ref = None, None
        for _ in range(args.repeat):
            for th in bare_cfg:
                torch.set_num_threads(th)
                dt, ref = bare_loop(cube, model, batch)
                bare_t[th] = min(bare_t[th], dt)
            for w in xsky_cfg:
                dt, vals = xsky_run(cube, name, batch, args.threads, w, options)
                xsky_t[w] = min(xsky_t[w], dt)
        bare_threads = min(bare_t, key=bare_t.get)
        workers = min(xsky_t, key=xsky_t.get)
        bare = (bare_t[bare_threads], bare_threads)
        best = (xsky_t[workers], workers, vals)
        (t_bare, bare_threads), (t_xsky, workers, vals) = bare, best
        diff = float(np.nanmax(np.abs(np.where(np.isnan(vals), ref, vals) - ref)))
        n_win = ds.sizes["time"] * -(-ds.sizes["y"] // spec.window) * -(-ds.sizes["x"] // spec.window)
        print(f"{item}: {n_win} windows, batch {batch}"
              f"{'' if cube is ds else ' (synthetic cube, same size)'}")
        print(f"  bare torch loop : {t_bare:8.3f} s  ({n_win / t_bare:9.0f} windows/s; "
              f"torch threads={bare_threads})")
        print(f"  xsky.embed      : {t_xsky:8.3f} s  ({n_win / t_xsky:9.0f} windows/s; "
              f"dask threads={workers}, torch threads={max(1, args.threads // workers)}, "
              f"chunks time={max(1, ds.sizes['time'] // (2 * workers))} y=x=all)")
        print(f"  ratio xsky/bare : {t_xsky / t_bare:8.3f}   (target <= 1.10)")
        print(f"  max |xsky - bare| on valid pixels: {diff:.2e}")


if __name__ == "__main__":
    main()
