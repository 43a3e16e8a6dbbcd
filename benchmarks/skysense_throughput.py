"""Throughput of the SkySense S2+S1 path on CPU, against the machine's measured matmul peak.

For each small preset, times ``model.embed_windows`` (the call the embedding engine makes) on
batches of windows with ``T2`` Sentinel-2 and ``T1`` Sentinel-1 dates, and reports:

* pixels/s and km^2/hour (one output pixel = 10 m x 10 m = 1e-4 km^2);
* model FLOPs per output pixel (counted with ``torch.utils.flop_counter.FlopCounterMode``:
  matmuls, convolutions and attention, 2 FLOPs per multiply-add) and their split by module;
* the float32 GEMM peak measured in the same run with the same threads, and the fraction of
  it the model achieves.

Usage::

    python benchmarks/skysense_throughput.py                  # 2 threads, both small presets
    python benchmarks/skysense_throughput.py --threads 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from xsky.models import create_model

KM2_PER_PIXEL = 1e-4  # 10 m x 10 m


def _best_time(fn: Callable[[], object], repeats: int, min_time: float = 0.0) -> float:
    """Best wall time of ``fn`` over ``repeats`` calls (after one warm-up)."""
    fn()
    best = float("inf")
    t_all = time.perf_counter()
    n = 0
    while n < repeats or time.perf_counter() - t_all < min_time:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        n += 1
    return best


def matmul_peak(size: int = 1024, repeats: int = 10) -> float:
    """Measured float32 GEMM rate in FLOP/s (``size`` x ``size`` by ``size`` x ``size``)."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    out = torch.empty(size, size)
    t = _best_time(lambda: torch.mm(a, b, out=out), repeats)
    return 2 * size**3 / t


def _inputs(n: int, window: int, t2: int, t1: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "s2": torch.randn(n, 10, t2, window, window, generator=g),
        "s2_valid": torch.ones(n, t2, window, window, dtype=torch.bool),
        "s2_doy": torch.randint(1, 366, (n, t2), generator=g),
        "s1": torch.randn(n, 2, t1, window, window, generator=g),
        "s1_valid": torch.ones(n, t1, window, window, dtype=torch.bool),
        "s1_doy": torch.randint(1, 366, (n, t1), generator=g),
    }


def _sdpa_flop(q: tuple[int, ...], k: tuple[int, ...], v: tuple[int, ...], *args: object,
               out_shape: object = None, **kwargs: object) -> int:
    # Q K^T and A V: 2 FLOPs per multiply-add; leading dims are batch (and heads, windows).
    return 2 * math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


# CPU attention is dispatched to this op, which FlopCounterMode does not know.
_CUSTOM = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flop}
# FlopCounterMode names modules by class: the parts of the S2+S1 path.
_PARTS = {"VisionTransformer": "vits", "UPHead": "heads", "Linear": "porj_linear",
          "TransformerEncoderLayer": "fusion"}


def _flops(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[int, dict[str, int]]:
    counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM)
    with torch.inference_mode(), counter:
        model.embed_windows(inputs)
    per_module = counter.get_flop_counts()
    split = {label: int(sum(per_module[key].values()))
             for key, label in _PARTS.items() if key in per_module}
    return counter.get_total_flops(), split


def meta_flops_per_pixel(name: str, window: int, t2: int, t1: int) -> float:
    """FLOPs per output pixel of a preset, counted on the meta device (no memory, no compute).

    Uses the official-layout forward, which runs the same operations as ``embed_windows``
    with every date valid.
    """
    from xsky.models.skysense import SkySense

    with torch.device("meta"):
        model = SkySense(name, window=window, modalities=("s2", "s1")).eval()
        s2 = torch.empty(1, 10, t2, window, window)
        s1 = torch.empty(1, 2, t1, window, window)
        counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM)
        with torch.inference_mode(), counter:
            model(s2=s2, s1=s1)
    return counter.get_total_flops() / window**2


def bench_preset(name: str, *, window: int, batch: int, t2: int, t1: int, repeats: int,
                 min_time: float) -> dict[str, Any]:
    model = create_model(name, window=window, modalities=("s2", "s1"))
    inputs = _inputs(batch, window, t2, t1)
    pixels = batch * window * window
    total_flops, split = _flops(model, inputs)

    def run() -> None:
        with torch.inference_mode():
            model.embed_windows(inputs)

    t = _best_time(run, repeats, min_time)
    px_s = pixels / t
    flops_px = total_flops / pixels
    return {
        "preset": name,
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "window": window, "batch_windows": batch, "T2": t2, "T1": t1,
        "seconds_per_batch": t,
        "pixels_per_s": px_s,
        "km2_per_hour_10m": px_s * KM2_PER_PIXEL * 3600,
        "gflop_per_pixel": flops_px / 1e9,
        "flop_share": {k: round(v / total_flops, 3) for k, v in split.items()},
        "achieved_gflop_s": flops_px * px_s / 1e9,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["skysense-tiny", "skysense-small"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16, help="windows per forward pass")
    ap.add_argument("--t2", type=int, default=4)
    ap.add_argument("--t1", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=2.0,
                    help="keep timing each preset for at least this many seconds")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    context = {
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        # The benchmark machine may be shared: a load above the core count slows small ops
        # (threads wait at every OpenMP barrier) far more than large GEMMs.
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    peak_start = matmul_peak()
    results = [bench_preset(name, window=args.window, batch=args.batch, t2=args.t2, t1=args.t1,
                            repeats=args.repeats, min_time=args.min_time)
               for name in args.presets]
    # Peak again at the end: on a shared machine it moves; the peak is the best of the two.
    peak_end = matmul_peak()
    peak = max(peak_start, peak_end)
    context["matmul_peak_gflop_s"] = {"start": peak_start / 1e9, "end": peak_end / 1e9,
                                      "used": peak / 1e9}
    print(f"# {context}")
    print(f"# matmul peak (float32 GEMM 1024^3, {context['threads']} threads): "
          f"{peak_start / 1e9:.1f} GFLOP/s at start, {peak_end / 1e9:.1f} at end")
    for r in results:
        r["fraction_of_matmul_peak"] = r["achieved_gflop_s"] * 1e9 / peak
        print(f"{r['preset']:15s} {r['params_M']:8.2f} M params | window {r['window']} x "
              f"{r['batch_windows']} windows, T2={r['T2']} T1={r['T1']} | "
              f"{r['pixels_per_s']:9.0f} px/s = {r['km2_per_hour_10m']:8.1f} km2/h | "
              f"{r['gflop_per_pixel'] * 1e3:8.2f} MFLOP/px | {r['achieved_gflop_s']:6.1f} GFLOP/s"
              f" = {100 * r['fraction_of_matmul_peak']:5.1f}% of peak | share {r['flop_share']}")
    # The official model, for scale: its cost per pixel, and the CPU rate it would get at the
    # best GFLOP/s achieved here (an estimate, not a measurement).
    huge = meta_flops_per_pixel("skysense-huge", args.window, args.t2, args.t1)
    rate = max(r["achieved_gflop_s"] for r in results) * 1e9
    context["skysense_huge_gflop_per_pixel"] = huge / 1e9
    print(f"skysense-huge   {huge / 1e9:.2f} GFLOP/px (counted on the meta device); at "
          f"{rate / 1e9:.1f} GFLOP/s that is ~{rate / huge:.1f} px/s "
          f"= {rate / huge * KM2_PER_PIXEL * 3600:.2f} km2/h (estimate)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"context": context, "results": results}, f, indent=1)

if __name__ == "__main__":
    main()
