"""How much does int8 storage change real embeddings? Per-feature int8 against baselines.

Data: the Romania Sentinel-2 sample (``xsky.tutorial.open_dataset("romania")``: 100 x 100 px
at 10 m, B02 B03 B04 B08 and the SCL-derived ``valid`` mask), composited per calendar month
of each year (``xsky.composite(cube, "MS", time_range=year)``), embedded by
``galileo-nano`` with its official weights (``../shared/data/weights_small/galileo_nano``;
dense at stride 4, 128-d, the 12 months fused): one 25 x 25 x 128 embedding per year.

Each year's embedding is stored as xsky stores it with ``quantize=True``
(:func:`xsky.io.conventions.quantize`: int8, scale and offset per feature from the
feature's range over the whole array) and read back with ``dequantize``. Baselines, in the
same run on the same embeddings: a per-pixel scale (each vector divided by its largest
absolute component / 127, TESSERA's layout), one global symmetric int8 scale for all
features, and float16.

Figures per method, over all pixels of all years:

- ``1-cos``: 1 - cosine similarity between each original vector and its stored version
  (mean, max);
- ``1-cos centred``: the same after subtracting the mean embedding (of the original, from
  both): Galileo-nano's vectors share a large common component, so plain cosine hides
  errors that matter when pixels are compared with each other;
- ``rel RMS``: RMS error over the RMS of the centred embedding;
- ``NN kept``: share of pixels whose nearest other pixel (cosine of centred vectors) is
  the same before and after;
- ``bytes``: stored bytes per vector.

Run from the repository root (about 1-2 minutes on 2 CPU threads)::

    python benchmarks/quantize_error.py [--years 2017 2018 2019 2020] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

import xsky
from xsky.io.conventions import dequantize, quantize

ROOT = Path(__file__).resolve().parents[1]
GALILEO = ROOT / ".." / "shared" / "data" / "weights_small" / "galileo_nano"
BANDS = ["B02", "B03", "B04", "B08", "valid"]


def per_pixel_int8(v: np.ndarray) -> np.ndarray:
    """Round trip through int8 with one symmetric scale per vector (last axis)."""
    s = np.abs(v).max(-1, keepdims=True) / 127.0
    s = np.where(s > 0, s, 1.0)
    return (np.clip(np.rint(v / s), -127, 127) * s).astype("float32")


def global_int8(v: np.ndarray) -> np.ndarray:
    """Round trip through int8 with one symmetric scale for the whole array."""
    s = float(np.abs(v).max()) / 127.0 or 1.0
    return (np.clip(np.rint(v / s), -127, 127) * s).astype("float32")


def cos_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return 1.0 - num / den


def nearest(v: np.ndarray) -> np.ndarray:
    u = v / np.linalg.norm(v, axis=-1, keepdims=True)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(-1)


def figures(orig: list[np.ndarray], back: list[np.ndarray]) -> dict[str, float]:
    """Figures over all pixels of all years (each year centred on its own mean)."""
    cos, cosc, err2, var, kept, n = [], [], 0.0, 0.0, 0, 0
    for a, b in zip(orig, back, strict=True):
        a = a.reshape(-1, a.shape[-1]).astype("float64")
        b = b.reshape(-1, b.shape[-1]).astype("float64")
        mu = a.mean(0)
        cos.append(cos_error(a, b))
        cosc.append(cos_error(a - mu, b - mu))
        err2 += float(((a - b) ** 2).sum())
        var += float(((a - mu) ** 2).sum())
        kept += int((nearest(a - mu) == nearest(b - mu)).sum())
        n += a.shape[0]
    c, cc = np.concatenate(cos), np.concatenate(cosc)
    return {"cos_mean": float(c.mean()), "cos_max": float(c.max()),
            "cosc_mean": float(cc.mean()), "cosc_max": float(cc.max()),
            "rel_rms": (err2 / var) ** 0.5, "nn_kept": kept / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--years", nargs="+", default=["2017", "2018", "2019", "2020"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not GALILEO.exists():
        raise SystemExit(f"needs the official Galileo-nano weights in {GALILEO}")
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, load average "
          f"{os.getloadavg()[0]:.1f}, python {platform.python_version()}, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads), dask threaded scheduler")
    cube = xsky.tutorial.open_dataset("romania")
    orig: list[np.ndarray] = []
    ours: list[np.ndarray] = []
    bound = []
    for year in args.years:
        t1 = time.perf_counter()
        comp = xsky.composite(cube.sel(time=year)[BANDS], "MS", time_range=year)
        emb = xsky.embed(comp, "galileo-nano", weights=str(GALILEO)).load()
        q = quantize(emb.chunk(y=13, x=13))  # lazy and chunked, as a store is written
        back = dequantize(q)
        e, b, scale = emb.values, back.values, q.embedding_scale.values
        assert np.isfinite(e).all(), "the Romania composites give an embedding everywhere"
        bound.append(float(np.max(np.abs(b - e) / (scale / 2))))
        orig.append(e)
        ours.append(b)
        print(f"  {year}: {dict(emb.sizes)} embedded and round-tripped in "
              f"{time.perf_counter() - t1:.1f} s; |v| max {np.abs(e).max():.3f}, per-feature "
              f"range {np.ptp(e.reshape(-1, e.shape[-1]), 0).min():.3f}.."
              f"{np.ptp(e.reshape(-1, e.shape[-1]), 0).max():.3f}")
    print(f"max |error| / (scale / 2) of xsky's int8 (must be <= 1): {max(bound):.4f}")
    methods = {
        "int8 per feature (xsky)": (ours, 128 + 8 * 128 / 625),
        "int8 per pixel": ([per_pixel_int8(v) for v in orig], 128 + 4),
        "int8 global scale": ([global_int8(v) for v in orig], 128),
        "float16": ([v.astype("float16").astype("float32") for v in orig], 256),
    }
    n = sum(v.shape[0] * v.shape[1] for v in orig)
    print(f"\n{n} vectors ({len(orig)} years x 25 x 25), galileo-nano 128-d; float32 = 512 B")
    print(f"  {'method':<24} {'1-cos mean':>11} {'1-cos max':>10} {'centred mean':>13} "
          f"{'centred max':>12} {'rel RMS':>8} {'NN kept':>8} {'bytes':>6}")
    for name, (back, nbytes) in methods.items():
        f = figures(orig, back)
        print(f"  {name:<24} {f['cos_mean']:>11.2e} {f['cos_max']:>10.2e} "
              f"{f['cosc_mean']:>13.2e} {f['cosc_max']:>12.2e} {f['rel_rms']:>8.4f} "
              f"{f['nn_kept']:>8.3f} {nbytes:>6.0f}")
    print("(bytes per vector: int8 per feature adds 2 x 128 float32 per store, here spread "
          "over 625 vectors; per pixel adds one float32 per vector)")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
