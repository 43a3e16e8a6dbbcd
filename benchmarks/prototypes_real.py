"""Do prototypes of real embeddings separate Sentinel-2 scene classes?

Data: the Romania Sentinel-2 L2A cube (140 dates, 100 x 100 px at 10 m, EPSG:3035) with its
scene classification (SCL). Its bands are embedded with ``test-tiny`` (an untrained conv
net: its features are random projections of local spectra and texture, so they still carry
spectral information). Prototypes learned without labels are compared with four SCL groups
(vegetation 4, cloud 8/9/10, snow 11, shadow 3) at the embedding's 40 m output grid: an
output pixel is scored when at least 12 of its 16 input pixels fall in one group.

Figures, measured in one run against baselines from the same process:

- purity and adjusted Rand index (ARI) of the learned assignment vs the SCL group, for
  ``method="centred"`` (default) and ``"cosine"`` (SkySense's plain, one start), against
  the same assignment shuffled over the scored pixels (chance) and against prototypes
  learned the same way on the raw normalised bands (4 features, 4 x 4 block means);
- few-shot mapping: class-mean prototypes from 5 labelled pixels per group, classify every
  scored pixel; accuracy and balanced accuracy against chance (0.25 balanced).

Run from the repository root::

    python benchmarks/prototypes_real.py [--k 4 8 16] [--sample 8192] [--repeats 5]
        [--method centred cosine] [--skip-pair]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import xarray as xr
from _common import balanced_accuracy, evaluate

import xsky
from xsky import classify, prototypes
from xsky.geo import write_crs

ROOT = Path(__file__).resolve().parents[1]
ROMANIA = ROOT / ".." / "shared" / "data" / "s2_ts_romania" / "sentinel2_cube_subset_romania_10m.nc"
GROUPS = {"vegetation": (4,), "cloud": (8, 9, 10), "snow": (11,), "shadow": (3,)}
BANDS = ("B02", "B03", "B04", "B08")


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------


def open_romania() -> xr.Dataset:
    """The Romania sample with canonical band names in reflectance and SCL."""
    try:
        ds = xsky.tutorial.open_dataset("romania")
    except Exception as err:  # the bundled sample is not there: read the source file
        print(f"  (xsky.tutorial unavailable: {type(err).__name__}; reading {ROMANIA.name})")
        ds = xr.open_dataset(ROMANIA).rename({"B2": "B02", "B3": "B03", "B4": "B04", "B8": "B08"})
        for b in BANDS:
            ds[b] = ds[b] / 1e4
        ds = write_crs(ds, "EPSG:3035")
    return ds[[*BANDS, "SCL"]].load()


def embed_tiny(cube: xr.Dataset) -> tuple[xr.DataArray, str]:
    """``xsky.embed`` with ``test-tiny`` on every pixel (no validity mask: clouds, snow and
    shadows are what we want to find); a minimal local tiling when the engine is absent."""
    bands = cube[list(BANDS)]
    try:
        return xsky.embed(bands, "test-tiny"), "xsky.embed(cube, 'test-tiny')"
    except Exception as err:
        reason = f"{type(err).__name__}: {err}"[:120]
    import torch

    from xsky.models import create_model

    model = create_model("test-tiny").eval()
    spec = model.spec
    mean = np.array(spec.modalities[0].mean, "float32")[:, None, None]
    std = np.array(spec.modalities[0].std, "float32")[:, None, None]
    x = np.stack([cube[b].values for b in BANDS], axis=1)  # (T, C, y, x) reflectance
    x = np.nan_to_num((x - mean) / std)
    w, s = spec.window, spec.stride
    ny, nx = x.shape[-2:]
    x = np.pad(x, ((0, 0), (0, 0), (0, -ny % w), (0, -nx % w)), mode="reflect")
    t, c, hy, hx = x.shape
    # non-overlapping windows on the pixel grid: (T * hy/w * hx/w, C, w, w)
    win = x.reshape(t, c, hy // w, w, hx // w, w).transpose(0, 2, 4, 1, 3, 5).reshape(-1, c, w, w)
    with torch.inference_mode():
        out = model.embed_windows({"s2": torch.from_numpy(np.ascontiguousarray(win))}).numpy()
    o = w // s
    f = out.reshape(t, hy // w, hx // w, -1, o, o).transpose(0, 1, 4, 2, 5, 3)
    f = f.reshape(t, hy // s, hx // s, -1)[:, : -(-ny // s), : -(-nx // s)]
    y = cube.y.values[0] + (np.arange(f.shape[1]) * s + (s - 1) / 2) * float(cube.y[1] - cube.y[0])
    xs = cube.x.values[0] + (np.arange(f.shape[2]) * s + (s - 1) / 2) * float(cube.x[1] - cube.x[0])
    emb = xr.DataArray(
        f.astype("float32"),
        dims=("time", "y", "x", "feature"),
        coords={"time": cube.time.values, "y": y, "x": xs},
        name="embedding",
        attrs={"model": "test-tiny", "weights_sha256": model.weights_sha256},
    )
    return write_crs(emb, "EPSG:3035"), f"local tiling (xsky.embed unavailable: {reason})"


def band_cube(cube: xr.Dataset, stride: int) -> xr.DataArray:
    """Raw normalised bands averaged over stride x stride blocks: the no-model baseline."""
    x = np.stack([cube[b].values for b in BANDS], axis=-1)
    t, ny, nx, c = x.shape
    ny, nx = ny // stride * stride, nx // stride * stride
    x = x[:, :ny, :nx].reshape(t, ny // stride, stride, nx // stride, stride, c).mean((2, 4))
    x = (x - x.reshape(-1, c).mean(0)) / x.reshape(-1, c).std(0)
    y = cube.y.values[:ny].reshape(-1, stride).mean(1)
    xs = cube.x.values[:nx].reshape(-1, stride).mean(1)
    da = xr.DataArray(
        x.astype("float32"),
        dims=("time", "y", "x", "feature"),
        coords={"time": cube.time.values, "y": y, "x": xs},
        name="bands",
    )
    return write_crs(da, "EPSG:3035")


def scl_reference(scl: np.ndarray, stride: int, min_share: float = 0.75) -> np.ndarray:
    """SCL group (0..3) of each output pixel, -1 where no group has ``min_share`` of it."""
    t, ny, nx = scl.shape
    ny, nx = ny // stride * stride, nx // stride * stride
    blocks = scl[:, :ny, :nx].reshape(t, ny // stride, stride, nx // stride, stride)
    ref = np.full((t, ny // stride, nx // stride), -1)
    for g, codes in enumerate(GROUPS.values()):
        share = np.isin(blocks, codes).mean(axis=(2, 4))
        ref[share >= min_share] = g
    return ref


# --------------------------------------------------------------------------------------
# experiment
# --------------------------------------------------------------------------------------


def few_shot(emb: xr.DataArray, ref: np.ndarray, per_class: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    lab = np.full(ref.shape, -1)
    for g in np.unique(ref[ref >= 0]):
        pick = rng.choice(np.flatnonzero(ref == g), per_class, replace=False)
        lab.flat[pick] = g
    dims = emb.dims[:-1]
    labels = xr.DataArray(lab, dims=dims, coords={d: emb[d] for d in dims})
    out = classify(emb, prototypes(emb, labels=labels)).label.values
    ok = (ref >= 0) & (lab < 0)  # score pixels that were not labelled
    return float(np.mean(out[ok] == ref[ok])), balanced_accuracy(out[ok], ref[ok])


def experiment(inputs: dict[str, xr.DataArray], ref: np.ndarray, names: list[str], args) -> None:
    """Unsupervised prototypes and few-shot label prototypes of each input vs ``ref``."""
    counts = [int((ref == i).sum()) for i in range(len(names))]
    print(
        f"scored pixels: {dict(zip(names, counts, strict=True))}; sample={args.sample} per region"
    )
    rng = np.random.default_rng(0)
    print(
        f"{'input':<14} {'method':<8} {'k':>3} {'purity':>7} {'chance':>7} {'ARI':>6} "
        f"{'chance':>7} {'s':>5}"
    )
    for k in args.k:
        for name, data in inputs.items():
            for method in args.method:
                m = evaluate(data, ref, k, args.sample, rng, method)
                print(
                    f"{name:<14} {method:<8} {k:>3} {m['purity']:>7.3f} "
                    f"{m['purity_chance']:>7.3f} {m['ari']:>6.3f} {m['ari_chance']:>7.3f} "
                    f"{m['seconds']:>5.1f}"
                )
    print(
        f"few-shot: {args.shots} labelled pixels per class, {args.repeats} draws, scored on the rest"
    )
    majority = max(counts) / sum(counts)
    for name, data in inputs.items():
        res = np.array([few_shot(data, ref, args.shots, s) for s in range(args.repeats)])
        acc, bal = res.mean(0)
        print(
            f"{name:<14} accuracy {acc:.3f} (majority class {majority:.3f}), balanced accuracy "
            f"{bal:.3f} (chance {1 / len(names):.3f}), worst draw {res[:, 1].min():.3f}"
        )


def romania(args) -> None:
    cube = open_romania()
    t0 = time.perf_counter()
    emb, how = embed_tiny(cube)
    emb = emb.load()
    print(f"\n== Romania S2 cube: {how}; {dict(emb.sizes)} in {time.perf_counter() - t0:.1f} s")
    stride = cube.sizes["x"] // emb.sizes["x"]
    ref = scl_reference(cube["SCL"].values, stride)[:, : emb.sizes["y"], : emb.sizes["x"]]
    bands = band_cube(cube, stride).isel(y=slice(0, emb.sizes["y"]), x=slice(0, emb.sizes["x"]))
    print(f"reference: SCL groups at {stride * 10} m (>= 12 of 16 pixels); one region (1 km cube)")
    experiment({"test-tiny": emb, "bands": bands}, ref, list(GROUPS), args)


# --------------------------------------------------------------------------------------
# the S1 + S2 pair (SSL4EO-S12 sample), embedded with SkySense
# --------------------------------------------------------------------------------------

PAIR = ROOT / ".." / "shared" / "data" / "s1s2_ssl4eo_pair" / "0000200"
NDVI_CLASSES = ["NDVI>0.5", "0.3<NDVI<=0.5", "NDVI<=0.3"]


def open_pair() -> tuple[xr.Dataset, xr.Dataset]:
    """S2 L2A (10 bands, DN, 20 m bands repeated onto the 10 m grid) and S1 (dB) on one grid."""
    import pandas as pd
    import rioxarray

    from xsky.modalities import canonical_band

    def read(path, like=None):
        a = rioxarray.open_rasterio(path).squeeze("band", drop=True)
        if like is not None and a.shape != like.shape:
            a = a.rio.reproject_match(like, resampling=0)  # nearest
        return a if like is None else a.assign_coords(x=like.x, y=like.y)

    s2, s1, ref = [], [], None
    for d in sorted((PAIR / "s2_l2a").iterdir()):
        ref = read(d / "B2.tif") if ref is None else ref
        bands = {
            canonical_band(b): read(d / f"{b}.tif", ref).astype("float32")
            for b in ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
        }
        ds = xr.Dataset(bands).expand_dims(time=[pd.Timestamp(d.name[:8])])
        s2.append(ds)
    for d in sorted((PAIR / "s1_grd").iterdir()):
        bands = {b: read(d / f"{b}.tif", ref) for b in ("VV", "VH")}
        s1.append(xr.Dataset(bands).expand_dims(time=[pd.Timestamp(d.name.split("_")[4][:8])]))
    s2d, s1d = xr.concat(s2, "time"), xr.concat(s1, "time")
    for v in s2d.data_vars:
        s2d[v].attrs["units"] = "dn"
    for v in s1d.data_vars:
        s1d[v].attrs["units"] = "db"
    return s2d, s1d


def pair(args) -> None:
    from xsky.models import list_models

    names = list_models("skysense*")
    if not names:
        print("\n== S1+S2 pair: skipped (no skysense model registered)")
        return
    model = "skysense-tiny" if "skysense-tiny" in names else names[0]
    s2, s1 = open_pair()
    t0 = time.perf_counter()
    tree = xr.DataTree.from_dict({"s2": s2, "s1": s1})
    emb = xsky.embed(tree, model).load()
    print(
        f"\n== S1+S2 pair (SSL4EO-S12, 2+2 dates): xsky.embed(tree, {model!r}) with its random "
        f"initial weights (no official weights for this size); {dict(emb.sizes)} in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    # No SCL here: the reference is the mean NDVI of the two S2 dates, in 3 classes.
    ndvi = ((s2.B08 - s2.B04) / (s2.B08 + s2.B04)).mean("time").values
    ref = np.select([ndvi > 0.5, ndvi > 0.3], [0, 1], 2)
    x = np.concatenate(
        [
            np.stack([s2[b].mean("time").values for b in s2.data_vars], -1),
            np.stack([s1[b].mean("time").values for b in s1.data_vars], -1),
        ],
        axis=-1,
    )
    x = (x - np.nanmean(x, (0, 1))) / np.nanstd(x, (0, 1))
    bands = emb.isel(feature=slice(0, x.shape[-1])).copy(data=x.astype("float32"))
    print("reference: NDVI classes (from the same S2 bands: a check that spectra survive)")
    experiment({model: emb, "bands (mean)": bands}, ref, NDVI_CLASSES, args)
    # Diagnostic: how much of the feature variance is the pixel's position in its window?
    w = int(emb.attrs.get("window", 16))
    yy, xx = np.mgrid[: emb.sizes["y"], : emb.sizes["x"]]
    pos = ((yy % w) * w + xx % w).ravel()
    f = emb.values.reshape(pos.size, -1).astype("float64")
    means = np.zeros((w * w, f.shape[1]))
    np.add.at(means, pos, f)
    means /= np.maximum(np.bincount(pos, minlength=w * w), 1)[:, None]
    share = ((means[pos] - f.mean(0)) ** 2).sum() / ((f - f.mean(0)) ** 2).sum()
    print(
        f"share of {model} feature variance explained by position in the {w}-px window: {share:.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--sample", type=int, default=8192)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--method",
        nargs="+",
        default=["centred", "cosine"],
        choices=["centred", "cosine"],
        help="prototype learning methods to compare (cosine: SkySense's plain, one start)",
    )
    ap.add_argument("--skip-pair", action="store_true", help="Romania only")
    args = ap.parse_args()
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, dask threaded scheduler"
    )
    romania(args)
    if not args.skip_pair:
        pair(args)


if __name__ == "__main__":
    main()
