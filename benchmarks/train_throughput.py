"""Does feeding training from a lazy Dask cube slow it down? fit() from a WindowSampler over
the lazy Romania cube vs the same loop over the same micro-batches pre-loaded in memory.

The lazy cube is the sample written to a Zarr store in chunks of 11 dates x 50 x 50 px
and opened with ``xr.open_zarr``. Both runs train the same model (the default recipe's skysense-tiny, S2 B02/B03/B04/B08,
8-px windows) with the same objectives from the same initial weights, on the same batches
(the pre-loaded ones are drawn from an identical sampler first). The figures: steps/s of
each, their ratio (target <= 1.10) and the fraction of step time the Dask-fed run waited
for data (target <= 5 %), on this machine's threads (``--threads``, default 2), and on a
GPU when one is present (``--device cuda``).

The sampler reads each chunk a group of windows touches once and keeps decoded chunks for
later groups (``cache_bytes``, default 256 MiB): this 17 MB cube is decoded about once and
then served from memory. ``--cache-mb 0`` keeps no chunks between groups, as on a cube far
larger than the cache where random windows rarely meet a chunk twice. The load average is
printed before and after: the figures are only comparable on an otherwise idle machine.

Run: ``python benchmarks/train_throughput.py`` (about 3 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import xarray as xr

import xsky
from xsky.models import create_model
from xsky.train import GeoPrototypeLoss, MultiGranularityContrastive, WindowSampler, fit
from xsky.train.config import cube_region_ids
from xsky.train.objectives import SKYSENSE_REGIONS
from xsky.train.sampler import DEFAULT_CACHE_BYTES

BANDS = ("B02", "B03", "B04", "B08")


class InMemory:
    """A sampler over pre-loaded micro-batches (the bare loop's data: no Dask, no waiting)."""

    def __init__(self, batches: list[dict[str, torch.Tensor]]) -> None:
        self.batches = batches

    def __iter__(self) -> Any:
        return iter(self.batches)

    def config(self) -> str:
        return "in-memory"

    def state_dict(self) -> dict[str, int]:
        return {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cache-mb", type=float, default=None,
                    help="the sampler's chunk cache in MiB (default: the sampler's default)")
    args = ap.parse_args()
    print("load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    torch.set_num_threads(args.threads)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sample = xsky.tutorial.open_dataset("romania")
    # a lazy datacube as users have them: a chunked Zarr store (the sample's netCDF file is one
    # 99 x 100 x 100 chunk per band, which every window would decompress whole)
    tmp = tempfile.mkdtemp(prefix="xsky-train-bench-")
    store = Path(tmp) / "romania.zarr"
    sample[[*BANDS, "valid"]].chunk({"time": 11, "y": 50, "x": 50}).to_zarr(store)
    cube = xr.open_zarr(store, decode_coords="all")
    torch.manual_seed(0)
    model0 = create_model("skysense-tiny", modalities=("s2",), s2_bands=BANDS, window=8)
    d = model0.spec.feature_dim
    regions = cube_region_ids(cube, SKYSENSE_REGIONS)

    def objectives() -> list[Any]:
        torch.manual_seed(1)
        return [MultiGranularityContrastive(d, out_dim=128, hidden_dim=256, bottleneck_dim=64,
                                            n_objects=4),
                (GeoPrototypeLoss(d, n_prototypes=16, level="pixel",
                                  region_ids=regions), 0.5)]

    cache = DEFAULT_CACHE_BYTES if args.cache_mb is None else int(args.cache_mb * 2**20)

    def sampler() -> WindowSampler:
        return WindowSampler(cube, 8, args.batch_size, model=model0, max_dates=6,
                             n_shards=8, prefetch=3, cache_bytes=cache)

    warm = args.steps // 5 + 1
    total = warm + args.steps
    it = iter(sampler())
    batches = [next(it) for _ in range(total)]
    it.close()

    def timed(src: Any) -> tuple[float, float]:
        model = copy.deepcopy(model0)
        hist = fit(model, src, objectives(), steps=total, progress=False, device=args.device,
                   warmup_steps=1)
        recs = hist.records[warm:]  # the first steps include start-up (threads, first reads)
        seconds = sum(r["seconds"] for r in recs)
        waited = sum(r["wait_fraction"] * r["seconds"] for r in recs)
        return len(recs) / seconds, waited / seconds

    rows = []
    for _ in range(args.repeats):
        bare, _ = timed(InMemory(batches))
        dask_fed, wait = timed(sampler())
        rows.append((bare, dask_fed, wait))
        print(f"bare {bare:.3f} steps/s  dask-fed {dask_fed:.3f} steps/s  "
              f"ratio bare/dask {bare / dask_fed:.3f}  data wait {wait:.1%}")
    best_bare = max(r[0] for r in rows)
    best_dask = max(r[1] for r in rows)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nbest of {args.repeats}: bare {best_bare:.3f} steps/s, dask-fed {best_dask:.3f} "
          f"steps/s, ratio {best_bare / best_dask:.3f} (target <= 1.10); data wait "
          f"{min(r[2] for r in rows):.1%} (target <= 5 %); {args.threads} threads, "
          f"device {args.device}, batch {args.batch_size}")
    print("load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
