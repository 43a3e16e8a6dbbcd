"""Do real pretrained Galileo-nano (and Presto) embeddings mean something on real data?

Two checks, each against baselines computed in the same run.

**(a) Romania, one year of monthly composites vs the scene classification (SCL).**
The Romania Sentinel-2 L2A sample (``xsky.tutorial``: 100 x 100 px at 10 m, B02 B03 B04
B08, SCL and the SCL-derived ``valid`` mask, EPSG:3035, a forest in the Carpathians) is
composited per calendar month of one year (``xsky.composite(cube, "MS", time_range=year)``:
12 steps, the median of the valid observations of each month). The default year is 2020:
of the sample's years it has the most observed months (11 of 12; January has no valid
observation, so it is an all-NaN step that Galileo and Presto mask); other years have 7-9.
One calendar year is what a time-fused embedding summarises, and 12 monthly steps fit
Galileo's and Presto's 24-step limit.

*Reference.* A time-fused yearly embedding cannot see the clouds of one date, so the
reference is a yearly land-cover-like property, computed from the SCL of the same
observations that went into the composites (those with ``valid`` true: SCL 2 dark area,
4 vegetation, 5 not vegetated, 6 water, 7 unclassified): the **vegetation share**, the
fraction of those observations that SCL calls vegetation (class 4), per 40 m output pixel
(4 x 4 input pixels pooled over the year; in 2020 a 10 m pixel has 15-22 valid
observations of 23 dates). Majority-SCL classes would be degenerate here: in 2020 SCL 4
is the majority of the valid observations of 98.8 % of the pixels and no other class is
the majority anywhere; no pixel is water in more than 12 % of them, or snow (which
``valid`` excludes) in more than 16 % of its clear scenes, so water- or snow-dominated
classes do not occur. The share is cut into three classes: ``often non-veg`` (< 0.70: the
river bed along the northern edge, and pixels that SCL calls bare, dark or unclassified
in many scenes, winter ones included), ``mostly veg`` (0.70-0.85) and ``vegetated``
(>= 0.85, vegetation in nearly every valid scene); every output pixel is scored (the
share is defined wherever a pixel has a valid observation: everywhere in 2020).

*Inputs*, all on the same 40 m grid (25 x 25 pixels), all from the same composites:
``galileo-nano`` (official weights; patch 4, window 16: dense at stride 4, 128-d, fusing
the 12 months, with NDVI and the window location), and two variants of it (see below):
``galileo pos-c`` (the same embedding minus the mean embedding of each of the 4 x 4 patch
positions in the window) and ``galileo w=4`` (``window=4``: one patch per window);
``presto`` (official weights; one 128-d embedding per 10 m pixel of its 12-month series,
averaged over each 4 x 4 block), ``test-tiny`` (an untrained per-date conv net, stride 4,
16-d: its 12 monthly embeddings concatenated, 192-d; a month without valid input takes the
pixel's mean over its other months) and the raw bands (the 12 monthly composites of the 4
bands averaged over each 4 x 4 block, standardised per band, concatenated, 48-d; missing
months filled likewise).

*Patch position.* Galileo adds a 2-D sin-cos encoding of each patch's position in its
window to the tokens, and the per-patch pooling keeps it: most of the variance of the
default dense embedding is the position of the output pixel in its 16-px window (printed;
about 0.7 here), so its first principal components, and prototypes learned on it, draw
the 4 x 4 window pattern rather than the land. The two variants remove it: subtracting
the per-position mean (a post-hoc fix that needs the whole map), or one-patch windows
(no position within the window, but no spatial context either, and fewer tokens than the
4..12 per side Galileo was pretrained on).

*Figures*, with the protocol of ``benchmarks/prototypes_real.py``: purity and adjusted
Rand index (ARI) of ``xsky.prototypes`` (learned without labels, k = 4, 8, 16, methods
``centred`` and ``cosine``) against the same assignment shuffled over the scored pixels
(chance); few-shot ``xsky.classify`` with class-mean prototypes from 5 labelled pixels per
class (5 draws), accuracy and balanced accuracy on the other pixels. Added: the R² of a
ridge regression (``RidgeCV``) from each input to the continuous vegetation share, trained
on one half of a checkerboard of 200 m blocks and tested on the other half.

**(b) The SSL4EO-S12 S1 + S2 pair** (``../shared/data/s1s2_ssl4eo_pair``: S2 L2A DN, 10
bands, the 20 m bands repeated 2 x 2 onto the 10 m grid (nearest; that grid sits 5 m off
the 10 m one); S1 VV/VH in dB resampled (nearest) onto the S2 grid, NaN where it does not
reach (the S1 footprint is shifted by about 4 px); 264 x 264 px, EPSG:4326, Punjab).
S1 and S2 are put on one time axis with ``xsky.composite(tree, edges)`` and explicit
period edges 2020-06-01 / 2020-08-01 / 2020-10-01: June-July holds S2 2020-06-04 and S1
2020-06-07, August-September S2 2020-08-13 and S1 2020-09-03 (one acquisition per period
and modality, so the composite is that acquisition; a monthly ``"MS"`` composite would
give four steps with one modality missing in two of them). Galileo-nano embeds the
DataTree (S1 + S2) and each node alone (a Dataset of S2 bands, one of S1 bands).

*Figures* (on the 66 x 66 output pixels where all embeddings are defined), for the
default embedding and the two variants: variance explained by the first principal
components (the PCA false-colour quick look shows PC1-3) and the share that is the patch
position; per-pixel cosine similarity of the same pixel in two embeddings, raw and
centred (each embedding minus its mean), against a random other pixel (chance); linear
CKA between two embeddings (1 = the same up to rotation and scale) against shuffled
pixels; the ARI between their k = 8 prototype maps; and, as in ``prototypes_real.py``,
agreement with three NDVI classes (> 0.5, 0.3-0.5, <= 0.3; mean of the two S2 dates):
ARI of the k = 8 map, few-shot balanced accuracy, the ridge R² of the continuous NDVI,
and the ARI of the map with the raw bands' map. For the S1-only embedding NDVI is a
cross-modal target (radar predicting an optical index); for S2 it is close to an input
(Galileo is fed NDVI). Without the position correction the agreement between S1-only and
S2-only embeddings is mostly their shared position component.

Run from the repository root (about 3 minutes on 2 idle CPU threads, 6 on a busy machine;
``--quick``, about 1 minute: k = 8, ``centred`` only, 2 draws, no Presto, the pair
cropped to 128 x 128)::

    python benchmarks/galileo_real.py [--year 2020] [--quick] [--skip-pair] [--skip-romania]
        [--threads 2] [--k 4 8 16] [--method centred cosine] [--shots 5] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
from _common import adjusted_rand_index, balanced_accuracy, evaluate

import xsky
from xsky import classify, prototypes
from xsky.geo import write_crs
from xsky.models.galileo import S2_BANDS as GALILEO_S2

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared"
ROMANIA = SHARED / "data" / "s2_ts_romania" / "sentinel2_cube_subset_romania_10m.nc"
PAIR = SHARED / "data" / "s1s2_ssl4eo_pair" / "0000200"
GALILEO = SHARED / "data" / "weights_small" / "galileo_nano"
PRESTO = SHARED / "data" / "weights_small" / "presto" / "default_model.pt"
BANDS = ("B02", "B03", "B04", "B08")
S2_FILES = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
STRIDE = 4  # Galileo's output stride at patch size 4: the common 40 m grid
SHARE_CLASSES = ["often non-veg (<0.70)", "mostly veg (0.70-0.85)", "vegetated (>=0.85)"]
SHARE_EDGES = (0.70, 0.85)
NDVI_CLASSES = ["NDVI>0.5", "0.3<NDVI<=0.5", "NDVI<=0.3"]
PAIR_EDGES = ["2020-06-01", "2020-08-01", "2020-10-01"]


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------


def block_mean(a: np.ndarray, s: int) -> np.ndarray:
    """Mean over ``s x s`` blocks of the last two axes (NaN ignored; the size must divide)."""
    *lead, ny, nx = a.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
        return np.nanmean(a.reshape(*lead, ny // s, s, nx // s, s), axis=(-3, -1))


def fill_months(x: np.ndarray) -> np.ndarray:
    """``(T, y, x, F)`` with NaN months -> the pixel's mean over its finite months (0 if none)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels become 0 below
        mean = np.nanmean(x, axis=0, keepdims=True)
    return np.nan_to_num(np.where(np.isfinite(x), x, mean))


def as_map(values: np.ndarray, like: xr.DataArray, name: str) -> xr.DataArray:
    """``(y, x, feature)`` values on the grid (coords and CRS) of ``like``."""
    da = xr.DataArray(values.astype("float32"), dims=("y", "x", "feature"),
                      coords={"y": like.y.values, "x": like.x.values}, name=name)
    return write_crs(da, like.rio.crs)


def window_position(shape: tuple[int, int], per: int) -> np.ndarray:
    """Index (0 .. per**2 - 1) of each output pixel's patch position within its window."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy % per) * per + xx % per


def position_means(v: np.ndarray, per: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-position mean feature (over the finite pixels) and each pixel's position."""
    pos = window_position(v.shape[:2], per)
    ok = np.isfinite(v).all(-1)
    means = np.stack([v[ok & (pos == i)].mean(0) for i in range(per * per)])
    return means, pos


def position_share(v: np.ndarray, per: int) -> float:
    """Share of the feature variance that is the patch position within the window."""
    means, pos = position_means(v, per)
    ok = np.isfinite(v).all(-1)
    f = v[ok].astype("float64")
    return float(((means[pos[ok]] - f.mean(0)) ** 2).sum() / ((f - f.mean(0)) ** 2).sum())


def position_centred(emb: xr.DataArray, per: int) -> xr.DataArray:
    """``emb`` minus the mean embedding of its patch position within the window."""
    v = emb.transpose("y", "x", "feature").values
    means, pos = position_means(v, per)
    out = emb.transpose("y", "x", "feature").copy(data=(v - means[pos]).astype("float32"))
    return out.assign_attrs(emb.attrs, position_centred=f"{per}x{per}")


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def embed(obj, model: str, weights=None, **options) -> xr.DataArray:
    return xsky.embed(obj, model, weights=None if weights is None else str(weights),
                      **options).load()


# --------------------------------------------------------------------------------------
# the protocol of prototypes_real.py, for (y, x, feature) maps
# --------------------------------------------------------------------------------------


def few_shot(emb: xr.DataArray, ref: np.ndarray, per_class: int, seed: int
             ) -> tuple[float, float]:
    """Class-mean prototypes from ``per_class`` labelled pixels per class; scores on the rest."""
    rng = np.random.default_rng(seed)
    lab = np.full(ref.shape, -1)
    for g in np.unique(ref[ref >= 0]):
        pick = rng.choice(np.flatnonzero(ref == g), per_class, replace=False)
        lab.flat[pick] = g
    labels = xr.DataArray(lab, dims=("y", "x"), coords={"y": emb.y, "x": emb.x})
    out = classify(emb, prototypes(emb, labels=labels)).label.values
    ok = (ref >= 0) & (lab < 0)
    return float(np.mean(out[ok] == ref[ok])), balanced_accuracy(out[ok], ref[ok])


def checkerboard(shape: tuple[int, int], block: int) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy // block + xx // block) % 2 == 0


def ridge_r2(features: np.ndarray, target: np.ndarray, train: np.ndarray) -> float:
    """Test R² of RidgeCV from ``(y, x, F)`` features to a ``(y, x)`` target (train mask)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score

    ok = np.isfinite(features).all(-1) & np.isfinite(target)
    tr, te = ok & train, ok & ~train
    x_tr, x_te = features[tr].astype("float64"), features[te].astype("float64")
    mu, sd = x_tr.mean(0), x_tr.std(0)
    sd[sd == 0] = 1.0
    model = RidgeCV(alphas=np.logspace(-3, 4, 15)).fit((x_tr - mu) / sd, target[tr])
    return float(r2_score(target[te], model.predict((x_te - mu) / sd)))


def experiment(inputs: dict[str, xr.DataArray], ref: np.ndarray, names: list[str],
               target: np.ndarray, target_name: str, train: np.ndarray, args) -> None:
    counts = [int((ref == i).sum()) for i in range(len(names))]
    print(f"scored pixels: {dict(zip(names, counts, strict=True))}; sample={args.sample}")
    rng = np.random.default_rng(0)
    print("unsupervised prototypes vs the reference classes (chance: the same assignment "
          "shuffled over the scored pixels)")
    print(f"  {'input':<14} {'method':<8} {'k':>3} {'purity':>7} {'chance':>7} {'ARI':>6} "
          f"{'chance':>7} {'s':>5}")
    for k in args.k:
        for name, data in inputs.items():
            for method in args.method:
                m = evaluate(data, ref, k, args.sample, rng, method)
                print(f"  {name:<14} {method:<8} {k:>3} {m['purity']:>7.3f} "
                      f"{m['purity_chance']:>7.3f} {m['ari']:>6.3f} {m['ari_chance']:>7.3f} "
                      f"{m['seconds']:>5.1f}")
    majority = max(counts) / sum(counts)
    print(f"few-shot classify: {args.shots} labelled pixels per class, {args.repeats} draws, "
          f"scored on the rest (majority-class accuracy {majority:.3f}, balanced chance "
          f"{1 / len(names):.3f}); ridge: R² of {target_name} on held-out 200 m blocks")
    print(f"  {'input':<14} {'accuracy':>8} {'balanced':>8} {'worst':>6} {'ridge R²':>9}")
    for name, data in inputs.items():
        res = np.array([few_shot(data, ref, args.shots, s) for s in range(args.repeats)])
        acc, bal = res.mean(0)
        r2 = ridge_r2(data.values, target, train)
        print(f"  {name:<14} {acc:>8.3f} {bal:>8.3f} {res[:, 1].min():>6.3f} {r2:>9.3f}")


# --------------------------------------------------------------------------------------
# (a) Romania: monthly composites of one year vs the yearly SCL vegetation share
# --------------------------------------------------------------------------------------


def open_romania() -> xr.Dataset:
    """The Romania sample: B02 B03 B04 B08 in reflectance, SCL and ``valid``."""
    try:
        ds = xsky.tutorial.open_dataset("romania")
    except Exception as err:  # the bundled sample is not there: read the source file
        print(f"  (xsky.tutorial unavailable: {type(err).__name__}; reading {ROMANIA.name})")
        ds = xr.open_dataset(ROMANIA).rename({"B2": "B02", "B3": "B03", "B4": "B04",
                                              "B8": "B08"})
        for b in BANDS:
            ds[b] = ds[b] / 1e4
            ds[b].attrs["units"] = "reflectance"
        ds["SCL"] = ds["SCL"].astype("uint8")
        ds["valid"] = xsky.tutorial.valid_from_scl(ds["SCL"])
        ds = write_crs(ds, "EPSG:3035")
    return ds[[*BANDS, "SCL", "valid"]].load()


def vegetation_share(scl: np.ndarray, valid: np.ndarray, s: int) -> np.ndarray:
    """SCL-vegetation share of the valid observations per ``s x s`` block, over all dates."""
    t, ny, nx = scl.shape

    def blocks(a):
        return a.reshape(t, ny // s, s, nx // s, s).sum(axis=(0, 2, 4))

    n = blocks(valid)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, blocks((scl == 4) & valid) / n, np.nan)


def romania(args) -> None:
    ds = open_romania()
    year = str(args.year)
    cube = ds.sel(time=year)
    comp, t_comp = timed(lambda: xsky.composite(cube[[*BANDS, "valid"]], "MS",
                                                time_range=year).load())
    months = comp.valid.any(["y", "x"]).values
    print(f"\n== (a) Romania {year}: {cube.sizes['time']} dates -> xsky.composite(cube, 'MS', "
          f"time_range={year!r}): {comp.sizes['time']} monthly steps, {int(months.sum())} "
          f"with valid observations ({t_comp:.1f} s)")
    share = vegetation_share(cube["SCL"].values, cube["valid"].values, STRIDE)
    ref = np.where(np.isfinite(share), np.digitize(np.nan_to_num(share), SHARE_EDGES), -1)
    print(f"reference: SCL vegetation share of the year's valid observations per 40 m pixel "
          f"(quantiles 10/50/90 %: {np.round(np.nanquantile(share, [0.1, 0.5, 0.9]), 3)}), "
          f"in 3 classes at {SHARE_EDGES}")

    inputs: dict[str, xr.DataArray] = {}
    gal, dt = timed(embed, comp, "galileo-nano", GALILEO)
    per = gal.attrs["window"] // gal.attrs["stride"]
    print(f"  galileo-nano: xsky.embed(composites, 'galileo-nano', weights=...) -> "
          f"{dict(gal.sizes)} in {dt:.1f} s (fused over the 12 months; window 16, patch 4); "
          f"share of its variance that is the patch position within the window: "
          f"{position_share(gal.values, per):.3f}")
    inputs["galileo-nano"] = gal
    inputs["galileo pos-c"] = position_centred(gal, per)
    gal4, dt = timed(embed, comp, "galileo-nano", GALILEO, window=4)
    print(f"  galileo-nano window=4 (one patch per window: no position within it) -> "
          f"{dict(gal4.sizes)} in {dt:.1f} s; 'galileo pos-c' = window 16 minus the mean "
          f"embedding of each of the {per}x{per} patch positions")
    inputs["galileo w=4"] = gal4
    if not args.quick:
        pre, dt = timed(embed, comp, "presto", PRESTO)
        print(f"  presto: -> {dict(pre.sizes)} in {dt:.1f} s; mean over 4 x 4 pixels -> 40 m")
        pooled = pre.transpose("feature", "y", "x").values
        inputs["presto"] = as_map(np.moveaxis(block_mean(pooled, STRIDE), 0, -1), gal,
                                  "presto")
    tiny, dt = timed(embed, comp[[*BANDS, "valid"]], "test-tiny")
    print(f"  test-tiny: -> {dict(tiny.sizes)} in {dt:.1f} s (per month; concatenated)")
    t = fill_months(tiny.transpose("time", "y", "x", "feature").values)
    inputs["test-tiny"] = as_map(np.moveaxis(t, 0, 2).reshape(*t.shape[1:3], -1), gal,
                                 "test-tiny")
    bands = np.stack([block_mean(comp[b].values, STRIDE) for b in BANDS], axis=-1)
    bands = (bands - np.nanmean(bands, (0, 1, 2))) / np.nanstd(bands, (0, 1, 2))
    bands = fill_months(bands)
    inputs["bands 12x4"] = as_map(np.moveaxis(bands, 0, 2).reshape(*bands.shape[1:3], -1),
                                  gal, "bands")
    print("features: " + ", ".join(f"{n} {v.sizes['feature']}" for n, v in inputs.items()))
    train = checkerboard(ref.shape, 5)
    experiment(inputs, ref, SHARE_CLASSES, share, "the vegetation share", train, args)


# --------------------------------------------------------------------------------------
# (b) the SSL4EO-S12 S1 + S2 pair
# --------------------------------------------------------------------------------------


def open_pair(crop: int | None = None) -> tuple[xr.Dataset, xr.Dataset]:
    """S2 (10 bands, DN; 20 m bands repeated 2 x 2) and S1 (dB, nearest onto the S2 grid)."""
    import pandas as pd
    import rioxarray
    from rasterio.enums import Resampling

    def read(path):
        return rioxarray.open_rasterio(path).squeeze("band", drop=True)

    s2, s1, ref = [], [], None
    for d in sorted((PAIR / "s2_l2a").iterdir()):
        ref = read(d / "B2.tif") if ref is None else ref
        bands = {}
        for f, name in zip(S2_FILES, GALILEO_S2, strict=True):
            a = read(d / f"{f}.tif").values.astype("float32")
            rep = ref.shape[0] // a.shape[0]
            a = np.repeat(np.repeat(a, rep, axis=0), rep, axis=1)
            bands[name] = xr.DataArray(a, dims=("y", "x"), coords={"y": ref.y, "x": ref.x},
                                       attrs={"units": "dn"})
        s2.append(xr.Dataset(bands).expand_dims(time=[pd.Timestamp(d.name[:8])]))
    for d in sorted((PAIR / "s1_grd").iterdir()):
        bands = {}
        for b in ("VV", "VH"):
            a = read(d / f"{b}.tif").rio.write_nodata(np.nan)
            a = a.rio.reproject_match(ref, resampling=Resampling.nearest)
            bands[b] = xr.DataArray(a.values.astype("float32"), dims=("y", "x"),
                                    coords={"y": ref.y, "x": ref.x}, attrs={"units": "db"})
        s1.append(xr.Dataset(bands).expand_dims(time=[pd.Timestamp(d.name.split("_")[4][:8])]))
    out = []
    for parts in (s2, s1):
        ds = write_crs(xr.concat(parts, "time"), ref.rio.crs)
        out.append(ds.isel(y=slice(0, crop), x=slice(0, crop)) if crop else ds)
    return out[0], out[1]


def pca_shares(f: np.ndarray) -> np.ndarray:
    """Variance share of each principal component of ``(n, F)`` features."""
    ev = np.linalg.svd(f - f.mean(0), compute_uv=False) ** 2
    return ev / ev.sum()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def linear_cka(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(0), b - b.mean(0)
    return float(np.linalg.norm(b.T @ a) ** 2
                 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)))


def kmeans_map(emb: xr.DataArray, k: int) -> np.ndarray:
    return prototypes(emb, k=k, sample=8192, seed=0).assignment.values


def pair(args) -> None:
    crop = 128 if args.quick else None
    s2, s1 = open_pair(crop)
    tree = xr.DataTree.from_dict({"s2": s2, "s1": s1})
    comp = xsky.composite(tree, PAIR_EDGES)
    n2 = comp["s2"]["valid_count"].max().values
    n1 = comp["s1"]["valid_count"].max().values
    print(f"\n== (b) SSL4EO-S12 pair: S2 {[str(t)[:10] for t in s2.time.values]}, S1 "
          f"{[str(t)[:10] for t in s1.time.values]} -> xsky.composite(tree, {PAIR_EDGES}): "
          f"{comp['s2'].sizes['time']} steps (most acquisitions per step: S2 {int(n2)}, S1 "
          f"{int(n1)}); {s2.sizes['y']} x {s2.sizes['x']} px, {s2.rio.crs}")
    c2, c1 = comp["s2"].to_dataset(), comp["s1"].to_dataset()
    runs = {"S1+S2": comp, "S2": c2, "S1": c1}
    embs: dict[str, xr.DataArray] = {}
    for window in (16, 4):
        for name, obj in runs.items():
            key = f"{name} w{window}"
            embs[key], dt = timed(embed, obj, "galileo-nano", GALILEO, window=window)
            print(f"  galileo-nano {key:<9}: {dict(embs[key].sizes)} in {dt:.1f} s, modalities "
                  f"{embs[key].attrs.get('modalities')}")
    for name in runs:
        embs[f"{name} pos-c"] = position_centred(embs[f"{name} w16"], 16 // STRIDE)
    like = embs["S1+S2 w16"]
    ny, nx = like.sizes["y"], like.sizes["x"]
    grid = (ny * STRIDE, nx * STRIDE)

    def pooled(ds: xr.Dataset, names) -> np.ndarray:  # (y, x, dates * bands) at 40 m
        a = np.stack([ds[b].values[:, : grid[0], : grid[1]] for b in names], axis=1)
        return np.moveaxis(block_mean(a.reshape(-1, *grid), STRIDE), 0, -1)

    raw = {"bands S2": pooled(c2, GALILEO_S2), "bands S1": pooled(c1, ("VV", "VH"))}
    raw["bands S1+S2"] = np.concatenate([raw["bands S2"], raw["bands S1"]], axis=-1)
    raw = {k: (v - np.nanmean(v, (0, 1))) / np.nanstd(v, (0, 1)) for k, v in raw.items()}
    with np.errstate(invalid="ignore", divide="ignore"):
        nd = ((c2.B08 - c2.B04) / (c2.B08 + c2.B04)).mean("time").values
    ndvi = block_mean(nd[: grid[0], : grid[1]], STRIDE)
    vals = {n: e.transpose("y", "x", "feature").values for n, e in embs.items()}
    ok = np.isfinite(ndvi) & np.logical_and.reduce(
        [np.isfinite(v).all(-1) for v in [*vals.values(), *raw.values()]])
    s1_cover = float(np.isfinite(c1.VV.values).all(0).mean())
    print(f"scored: {int(ok.sum())} of {ok.size} output pixels (40 m) where every embedding "
          f"and band stack is defined (S1 covers {s1_cover:.1%} of the 10 m S2 grid)")
    print("w16: window 16, patch 4 (the default); pos-c: w16 minus the mean embedding of each "
          "of the 4x4 patch positions in the window; w4: window 4 (one patch per window)")

    print("variance explained by the principal components (PC1-3 make the PCA quick look), "
          "and the share of the variance that is the patch position within the 16-px window")
    print(f"  {'embedding':<12} {'PC1':>6} {'PC2':>6} {'PC3':>6} {'PC1-3':>6} {'PCs for 90%':>12} "
          f"{'position':>9}")
    for name, v in vals.items():
        sh = pca_shares(v[ok].astype("float64"))
        n90 = int(np.searchsorted(np.cumsum(sh), 0.9) + 1)
        pos = position_share(np.where(ok[..., None], v, np.nan), 16 // STRIDE)
        print(f"  {name:<12} {sh[0]:>6.3f} {sh[1]:>6.3f} {sh[2]:>6.3f} {sh[:3].sum():>6.3f} "
              f"{n90:>12d} {pos:>9.3f}")

    k = 8
    maps = {}
    for name, v in {**vals, **raw}.items():
        maps[name] = kmeans_map(as_map(np.where(ok[..., None], v, np.nan), like, name), k)

    def map_ari(a: str, b: str) -> float:
        m = ok & (maps[a] >= 0) & (maps[b] >= 0)
        return adjusted_rand_index(maps[a][m], maps[b][m])

    rng = np.random.default_rng(0)
    print(f"agreement of two embeddings of the same place: per-pixel cosine (raw, and centred: "
          f"each minus its mean), linear CKA, and the ARI of their k={k} prototype maps "
          "(xsky.prototypes, centred); chance: the second embedding's pixels shuffled")
    print(f"  {'pair':<24} {'cos':>6} {'chance':>7} {'cos-c':>6} {'chance':>7} {'CKA':>6} "
          f"{'chance':>7} {'ARI maps':>9}")
    for variant in ("w16", "pos-c", "w4"):
        for a, b in (("S1+S2", "S2"), ("S1+S2", "S1"), ("S2", "S1")):
            ka, kb = f"{a} {variant}", f"{b} {variant}"
            fa, fb = vals[ka][ok].astype("float64"), vals[kb][ok].astype("float64")
            perm = rng.permutation(len(fb))
            ca, cb = fa - fa.mean(0), fb - fb.mean(0)
            print(f"  {ka + ' vs ' + b:<24} {np.mean(cosine(fa, fb)):>6.3f} "
                  f"{np.mean(cosine(fa, fb[perm])):>7.3f} {np.mean(cosine(ca, cb)):>6.3f} "
                  f"{np.mean(cosine(ca, cb[perm])):>7.3f} {linear_cka(fa, fb):>6.3f} "
                  f"{linear_cka(fa, fb[perm]):>7.3f} {map_ari(ka, kb):>9.3f}")

    ref = np.where(ok, np.select([ndvi > 0.5, ndvi > 0.3], [0, 1], 2), -1)
    counts = dict(zip(NDVI_CLASSES, [int((ref == i).sum()) for i in range(3)], strict=True))
    print(f"vs the data: NDVI classes (mean of the two S2 dates) {counts}: ARI of the k={k} "
          f"map, few-shot classify ({args.shots} per class, {args.repeats} draws; balanced "
          "chance 0.333), ridge R² of NDVI on held-out 320 m blocks; and the ARI of the k=8 map "
          "with the raw S1+S2 bands' map")
    print(f"  {'input':<12} {'ARI NDVI':>8} {'few-shot acc':>12} {'balanced':>8} "
          f"{'ridge R²':>9} {'ARI bands':>9}")
    train = checkerboard(ref.shape, 8)
    target = np.where(ok, ndvi, np.nan)
    for name, v in {**vals, **raw}.items():
        m = ok & (maps[name] >= 0)
        ari = adjusted_rand_index(maps[name][m], ref[m])
        da = as_map(np.where(ok[..., None], v, 0.0), like, name)
        res = np.array([few_shot(da, ref, args.shots, s) for s in range(args.repeats)])
        acc, bal = res.mean(0)
        print(f"  {name:<12} {ari:>8.3f} {acc:>12.3f} {bal:>8.3f} "
              f"{ridge_r2(v, target, train):>9.3f} {map_ari(name, 'bands S1+S2'):>9.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--year", type=int, default=2020)
    ap.add_argument("--k", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--method", nargs="+", default=["centred", "cosine"],
                    choices=["centred", "cosine"])
    ap.add_argument("--sample", type=int, default=8192)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: k=8, centred, 2 draws, no Presto, pair cropped to 128 px")
    ap.add_argument("--skip-pair", action="store_true")
    ap.add_argument("--skip-romania", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.k, args.method, args.repeats = [8], ["centred"], 2
    missing = [p for p in (GALILEO, PRESTO) if not p.exists()]
    if missing:
        raise SystemExit(f"needs the official weights: {[str(p) for p in missing]}")

    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, load average "
          f"{os.getloadavg()[0]:.1f}, python {platform.python_version()}, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads), dask threaded scheduler")
    if not args.skip_romania:
        romania(args)
        print(f"(a) took {time.perf_counter() - t0:.0f} s")
    if not args.skip_pair:
        t1 = time.perf_counter()
        pair(args)
        print(f"(b) took {time.perf_counter() - t1:.0f} s")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
