"""Does ``xsky.change`` find planted changes on real data, and is it fooled by clouds?

Data: the Romania Sentinel-2 L2A sample (``xsky.tutorial.open_dataset("romania")``: 100 x
100 px at 10 m, B02 B03 B04 B08, SCL and the SCL-derived ``valid`` mask, EPSG:3035, a
forest in the Carpathians, 2015-08 .. 2020-12).

**(a) Planted change.** In every acquisition of the target year (2020) the content of
randomly paired 16 x 16 px windows (the windows of the 16-px models below, aligned to their
grid, so no window sees a neighbour's content) is swapped: all bands, ``valid`` and SCL.
The landscape is mostly forest, so some swaps exchange look-alike patches; all inputs face
the same layouts. On the common 40 m grid (25 x 25 output pixels) a pixel is *planted*
when it lies in a swapped window, else *unchanged* (real changes between years, if any, are
left in the unchanged class). Inputs, all through the same ``xsky.change``:

- ``bands``: the raw bands, each date's valid 10 m pixels averaged over 4 x 4 blocks (with
  the share of valid pixels as ``valid_fraction``), per date;
- ``test-tiny``: ``xsky.embed(cube, "test-tiny")`` (an untrained per-date conv net, window
  16, stride 4, 16-d), per date, with ``valid``;
- ``galileo-nano``: official weights (``../shared/data/weights_small/galileo_nano``), window
  16, patch 4 (stride 4), 128-d, time-fused: one embedding per year from that year's 12
  monthly composites (``xsky.composite(cube, "MS", time_range=year)``), stacked along
  ``time``.

Two protocols: *two periods*, ``change(emb, "2018", "2020")`` (per-date inputs composited
per side with the median of their valid observations); *through time*, yearly periods
2016..2020 (``freq="YS"`` for per-date inputs; the stack for Galileo), baseline
2016..2019, scored by the leave-one-out-medoid distance of 2020 (``score``) and its robust
z-score (``zscore``). Figures per input and distance (cosine, euclidean): ROC AUC of the
score, planted vs unchanged (Mann-Whitney, ties counted half), and F1 of the change mask at
Otsu's threshold (``xsky.threshold``), averaged over ``--seeds`` random layouts (6 pairs:
12 of 36 windows, 192 of 625 pixels planted).

**(b) Clouds and snow, per date.** For the dates of one year (2019), each date is scored
against the others (``change(emb, freq=None)``: every date a period, all of them the
baseline). A 40 m pixel of a date is *contaminated* when at least 12 of its 16 input pixels
are cloud, cirrus, shadow or snow in SCL (3, 8, 9, 10, 11), *clear* when none is. Unmasked
(the cube embedded without ``valid``, every observation counts) the contaminated
observations should stand out: share flagged at Otsu's threshold of the per-date z-scores,
contaminated vs clear, and the AUC between them; masked (``valid`` from SCL, snow
excluded; an observation counts when at least half its input pixels are valid) they should
not be scored at all: the share of contaminated observations still scored and flagged.
Per-date inputs: bands, test-tiny and Galileo-nano, each date embedded on its own (a stack
of single-date fused embeddings along a ``period`` dimension).

Run from the repository root (about 1.5 minutes on 2 busy CPU threads; ``--quick``, under
a minute: 1 seed, no Galileo in (b))::

    python benchmarks/change_real.py [--seeds 3] [--pairs 6] [--quick] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import dask
import numpy as np
import pandas as pd
import xarray as xr

import xsky
from xsky.api.change import change, threshold
from xsky.geo import write_crs

ROOT = Path(__file__).resolve().parents[1]
GALILEO = ROOT / ".." / "shared" / "data" / "weights_small" / "galileo_nano"
BANDS = ("B02", "B03", "B04", "B08")
WINDOW = 16  # the window of test-tiny and of Galileo-nano as used here
STRIDE = 4  # their output stride: the common 40 m grid
CONTAMINATED = (3, 8, 9, 10, 11)  # SCL shadow, cloud (medium, high), cirrus, snow
YEARS = (2016, 2017, 2018, 2019, 2020)
TARGET = 2020


# --------------------------------------------------------------------------------------
# data and planted changes
# --------------------------------------------------------------------------------------


def open_cube() -> xr.Dataset:
    ds = xsky.tutorial.open_dataset("romania")
    return ds[[*BANDS, "SCL", "valid"]].load()


def layout(seed: int, n_pairs: int, n_win: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """``n_pairs`` disjoint random pairs of the ``n_win x n_win`` full windows."""
    rng = np.random.default_rng(seed)
    cells = rng.permutation(n_win * n_win)[: 2 * n_pairs]
    pos = [(int(c) // n_win, int(c) % n_win) for c in cells]
    return list(zip(pos[0::2], pos[1::2], strict=True))


def swap_windows(cube: xr.Dataset, year: int, pairs) -> xr.Dataset:
    """A copy of ``cube`` whose windows of each pair exchange content in every date of
    ``year`` (bands, valid and SCL alike)."""
    out = cube.copy(deep=True)
    dates = np.flatnonzero(cube.time.dt.year.values == year)
    w = WINDOW
    for name in out.data_vars:
        a = out[name].values  # (time, y, x), a view
        for (i, j), (k, m) in pairs:
            ia = np.ix_(dates, range(i * w, (i + 1) * w), range(j * w, (j + 1) * w))
            ib = np.ix_(dates, range(k * w, (k + 1) * w), range(m * w, (m + 1) * w))
            tmp = a[ia].copy()
            a[ia] = a[ib]
            a[ib] = tmp
    return out


def planted(pairs, shape: tuple[int, int]) -> np.ndarray:
    """``(y, x)`` booleans on the output grid: pixels inside a swapped window."""
    lab = np.zeros(shape, bool)
    per = WINDOW // STRIDE
    for pair in pairs:
        for i, j in pair:
            lab[i * per:(i + 1) * per, j * per:(j + 1) * per] = True
    return lab


# --------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------


def band_features(cube: xr.Dataset, masked: bool = True) -> xr.DataArray:
    """The raw bands as per-date features on the 40 m grid: the mean of each 4 x 4 block's
    valid pixels (all pixels when not ``masked``), ``valid_fraction`` the share used."""
    s = STRIDE
    ok = cube["valid"].values if masked else np.ones(cube["valid"].shape, bool)
    x = np.stack([np.where(ok, cube[b].values, np.nan) for b in BANDS], axis=-1)
    t, ny, nx, c = x.shape
    blocks = x.reshape(t, ny // s, s, nx // s, s, c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-invalid blocks stay NaN
        mean = np.nanmean(blocks, axis=(2, 4))
    frac = ok.reshape(t, ny // s, s, nx // s, s).mean(axis=(2, 4))
    da = xr.DataArray(
        mean.astype("float32"), dims=("time", "y", "x", "feature"),
        coords={"time": cube.time.values, "y": cube.y.values.reshape(-1, s).mean(1),
                "x": cube.x.values.reshape(-1, s).mean(1), "feature": list(BANDS),
                "valid_fraction": (("time", "y", "x"), frac.astype("float32"))},
        name="bands")
    return write_crs(da, cube.rio.crs)


def embed_tiny(cube: xr.Dataset, masked: bool = True) -> xr.DataArray:
    names = [*BANDS, "valid"] if masked else list(BANDS)
    return xsky.embed(cube[names], "test-tiny").load()


def embed_galileo_year(cube: xr.Dataset, year: int) -> xr.DataArray:
    monthly = xsky.composite(cube[[*BANDS, "valid"]], "MS", time_range=str(year))
    emb = xsky.embed(monthly, "galileo-nano", weights=str(GALILEO), window=WINDOW,
                     patch_size=STRIDE)
    return emb.load()


def stack(embs: list[xr.DataArray], labels, dim: str = "time") -> xr.DataArray:
    out = xr.concat(embs, dim=pd.Index(pd.DatetimeIndex(labels), name=dim),
                    coords="different", compat="equals", join="exact")
    return out.transpose(dim, "y", "x", "feature")


# --------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """ROC AUC of ``score`` for ``label`` (Mann-Whitney U; NaN scores dropped)."""
    ok = np.isfinite(score)
    s, y = score[ok], label[ok]
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    ranks = pd.Series(np.concatenate([pos, neg])).rank().to_numpy()
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def f1(mask: np.ndarray, label: np.ndarray) -> float:
    tp = float((mask & label).sum())
    fp = float((mask & ~label).sum())
    fn = float((~mask & label).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def scores(emb: xr.DataArray, method: str, freq: str | None) -> dict[str, xr.DataArray]:
    """The three scores of the target year: two periods, medoid score and z-score."""
    # a stack of fused yearly embeddings: valid_fraction is the share over the year's
    # months, so any valid input counts (per-date inputs: the default, half the pixels)
    opts = {"min_valid_fraction": 0.0} if freq is None else {}
    two = change(emb, str(TARGET - 2), str(TARGET), method=method, **opts)
    through = change(emb, slice(str(YEARS[0]), str(TARGET - 1)), method=method, freq=freq,
                     **opts)
    sel = through.sel(time=str(TARGET)).isel(time=0)
    return {"2018 vs 2020": two.change, "medoid 2020": sel.score, "z 2020": sel.zscore}


# --------------------------------------------------------------------------------------
# experiments
# --------------------------------------------------------------------------------------


def planted_change(cube: xr.Dataset, args) -> None:
    n_win = cube.sizes["y"] // WINDOW
    out_shape = (cube.sizes["y"] // STRIDE, cube.sizes["x"] // STRIDE)
    before = cube.sel(time=slice(str(YEARS[0]), str(TARGET - 1)))
    t0 = time.perf_counter()
    base_bands = band_features(before)
    base_tiny = embed_tiny(before)
    print(f"  baseline years embedded in {time.perf_counter() - t0:.1f} s (bands, test-tiny)")
    base_gal: list[xr.DataArray] = []
    if not args.skip_galileo:
        t0 = time.perf_counter()
        base_gal = [embed_galileo_year(cube, y) for y in YEARS[:-1]]
        print(f"  galileo-nano: {len(base_gal)} yearly embeddings in "
              f"{time.perf_counter() - t0:.1f} s")
    results: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for seed in range(args.seeds):
        pairs = layout(seed, args.pairs, n_win)
        label = planted(pairs, out_shape)
        swapped = swap_windows(cube, TARGET, pairs).sel(time=str(TARGET))
        t0 = time.perf_counter()
        inputs = {
            "bands": (xr.concat([base_bands, band_features(swapped)], "time"), "YS"),
            "test-tiny": (xr.concat([base_tiny, embed_tiny(swapped)], "time"), "YS"),
        }
        if base_gal:
            gal = [*base_gal, embed_galileo_year(swapped, TARGET)]
            inputs["galileo-nano"] = (stack(gal, [f"{y}-01-01" for y in YEARS]), None)
        took = time.perf_counter() - t0
        for name, (emb, freq) in inputs.items():
            for method in args.method:
                for kind, score in scores(emb, method, freq).items():
                    v = score.values
                    mask = threshold(score, "otsu").values
                    results.setdefault((name, method, kind), []).append(
                        (auc(v, label), f1(mask, label)))
        print(f"  layout {seed}: pairs {pairs}; {int(label.sum())} of {label.size} pixels "
              f"planted; target year embedded in {took:.1f} s")
    print(f"\n  {'input':<13} {'distance':<10} {'score':<13} {'AUC':>6} {'F1@Otsu':>8} "
          f"{'AUC per layout':>22}")
    for (name, method, kind), vals in results.items():
        a = np.array(vals)
        per = " ".join(f"{x:.3f}" for x in a[:, 0])
        print(f"  {name:<13} {method:<10} {kind:<13} {a[:, 0].mean():>6.3f} "
              f"{a[:, 1].mean():>8.3f} {per:>22}")
    print(f"  (chance: AUC 0.5; F1 of flagging everything "
          f"{2 * 192 / (192 + 625):.3f})")


def contamination(cube: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Per date and 40 m pixel: contaminated (>= 12 of 16 input pixels cloud/shadow/snow)
    and clear (none of them)."""
    s = STRIDE
    bad = np.isin(cube["SCL"].values, CONTAMINATED)
    t, ny, nx = bad.shape
    share = bad.reshape(t, ny // s, s, nx // s, s).mean(axis=(2, 4))
    return share >= 0.75, share == 0


def embed_galileo_dates(cube: xr.Dataset, masked: bool) -> xr.DataArray:
    """Each date embedded on its own; a date without any valid pixel (embed refuses it) is
    an all-NaN embedding, as the engine gives for pixels without valid input."""
    names = [*BANDS, "valid"] if masked else list(BANDS)
    embs: list[xr.DataArray | None] = []
    for i in range(cube.sizes["time"]):
        one = cube[names].isel(time=[i])
        if masked and not bool(one["valid"].any()):
            embs.append(None)
            continue
        embs.append(xsky.embed(one, "galileo-nano", weights=str(GALILEO), window=WINDOW,
                               patch_size=STRIDE).load())
    like = next(e for e in embs if e is not None)
    blank = (like * np.nan).assign_coords(valid_fraction=like.valid_fraction * 0)
    return stack([blank if e is None else e for e in embs], cube.time.values, dim="period")


def clouds(cube: xr.Dataset, args) -> None:
    year = cube.sel(time=str(args.cloud_year))
    dirty, clear = contamination(year)
    empty = int((~year["valid"].values.any(axis=(1, 2))).sum())
    print(f"  {args.cloud_year}: {year.sizes['time']} dates ({empty} without any valid pixel); "
          "contaminated observations "
          f"{int(dirty.sum())}, clear {int(clear.sum())} (of {dirty.size})")
    makers = {"bands": band_features, "test-tiny": embed_tiny}
    if not args.skip_galileo and not args.quick:
        makers["galileo-nano"] = embed_galileo_dates
    print(f"\n  {'input':<13} {'mask':<9} {'AUC z':>6} {'flagged dirty':>14} "
          f"{'flagged clear':>14} {'dirty scored':>13} {'s':>5}")
    for name, make in makers.items():
        for masked in (False, True):
            t0 = time.perf_counter()
            emb = make(year, masked)
            out = change(emb, freq=None, min_baseline=3)
            z = out.zscore.values
            flag = threshold(out.zscore, "otsu").values
            took = time.perf_counter() - t0
            scored = np.isfinite(z)
            a = auc(np.where(dirty | clear, z, np.nan), dirty)
            print(f"  {name:<13} {'valid' if masked else 'none':<9} {a:>6.3f} "
                  f"{flag[dirty].mean():>14.3f} {flag[clear].mean():>14.3f} "
                  f"{scored[dirty].mean():>13.3f} {took:>5.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--method", nargs="+", default=["cosine", "euclidean"])
    parser.add_argument("--cloud-year", type=int, default=2019)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-galileo", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.seeds = 1
    if not GALILEO.exists():
        print(f"  ({GALILEO} not found: Galileo-nano skipped)")
        args.skip_galileo = True
    dask.config.set(scheduler="threads", num_workers=args.threads)
    import torch

    torch.set_num_threads(1)
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs; "
          f"dask threads {args.threads}, torch threads 1; xsky {xsky.__version__}")
    cube = open_cube()
    print(f"Romania cube: {dict(cube.sizes)}, years {YEARS[0]}..{TARGET}, one chunk per "
          "input (numpy-backed)")
    t0 = time.perf_counter()
    print("\n== (a) planted change: 16 x 16 px windows swapped in 2020")
    planted_change(cube, args)
    print("\n== (b) clouds and snow, each date against the others")
    clouds(cube, args)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
