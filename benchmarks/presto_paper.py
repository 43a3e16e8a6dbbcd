"""Presto paper table (arXiv:2304.14065, Table 3): fuel moisture and algae blooms with a random
forest on frozen Presto embeddings, reproduced with xsky's Presto.

Data: Presto's own evaluation arrays (``shared/data/labelled_samples/presto_pixel_timeseries``,
from nasaharvest/presto ``data/{fuel_moisture,algae_blooms}/npy``): pixel time series of 18
raw channels (S1 dB, S2 DN, ERA5 K and m, SRTM m and degrees, NDVI), Dynamic World classes,
latitude/longitude, the month of every step, the target and the ``is_test`` split.

Protocol, as the official evaluation code does it (``presto/eval/eval.py::EvalTask.
finetune_sklearn_model`` and ``presto/eval/{fuel_moisture,algae_blooms}_eval.py``, read at
commit 572be39):

* inputs: ``S1_S2_ERA5_SRTM.normalize`` of the stored arrays (here
  :func:`xsky.models.presto.normalize`, checked against the official outputs); Dynamic World
  as stored (``.long()``); lat/lon as float32; ``month`` = the stored per-step months as a
  ``(B, T)`` tensor; ``mask=None``;
* features: the frozen encoder's pooled 128-d output (``encoder(...)``, ``eval_task=True``),
  the official default weights ``default_model.pt``;
* model: ``RandomForestRegressor(random_state=seed)`` with default hyperparameters (both tasks
  are regressions in the official code, so algae blooms is regressed on the severity class);
  fitted on ``is_test == 0`` with the targets as float32 (the official DataLoader casts them
  with ``.float()``), evaluated on ``is_test == 1``;
* metric: ``mean_squared_error(target, pred, squared=False)``, the RMSE against the stored
  targets with no transform: live fuel moisture in %, algae-bloom severity as the raw class
  1..5 (the predictions are the forest's continuous outputs, not rounded);
* seeds 0, 42 and 84; mean and standard deviation (numpy's, ddof=0) over the seeds.

Baseline, in the same run: the same forest on the flattened normalised raw inputs
(``T * 17`` features).

``n_jobs=-1`` only spreads the trees over the cores; the fitted forests do not depend on it.

Run: ``python benchmarks/presto_paper.py [--quick] [--threads N]``. ``--quick``: seed 0 only,
at most 400 training and 200 test rows per task, 20 trees (a smoke run; its figures are not
comparable to the paper's).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.ensemble import RandomForestRegressor
from sklearn.metrics import mean_squared_error

from xsky.models.presto import Presto, normalize

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("XSKY_SHARED") or (ROOT / ".." / "shared")).resolve()
DATA = SHARED / "data" / "labelled_samples" / "presto_pixel_timeseries"
WEIGHTS = SHARED / "data" / "weights_small" / "presto"
SEEDS = (0, 42, 84)
#: arXiv:2304.14065 Table 3, Presto with a random forest (mean, std over seeds)
PUBLISHED = {"fuel_moisture": (25.98, 0.66), "algae_blooms": (0.884, 0.01)}
UNITS = {"fuel_moisture": "% live fuel moisture", "algae_blooms": "severity class"}


def load(task: str) -> dict[str, np.ndarray]:
    folder = DATA / task
    return {name: np.load(folder / f"{name}.npy") for name in
            ("s1_s2_era5_srtm", "dynamic_world", "month", "latlon", "target", "is_test")}


@torch.inference_mode()
def embed(model: Presto, x: np.ndarray, dw: np.ndarray, latlon: np.ndarray,
          month: np.ndarray, batch: int = 1024) -> np.ndarray:
    """Pooled embeddings, called exactly as the official evaluation calls the encoder."""
    out = []
    for s in range(0, len(x), batch):
        out.append(model.encoder(
            torch.from_numpy(x[s:s + batch]).float(),
            dynamic_world=torch.from_numpy(dw[s:s + batch]).long(),
            latlons=torch.from_numpy(latlon[s:s + batch]).float(),
            mask=None,
            month=torch.from_numpy(month[s:s + batch]).long(),
        ).numpy())
    return np.concatenate(out)


def rf_rmse(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
            test_y: np.ndarray, seed: int, trees: int) -> float:
    rf = RandomForestRegressor(n_estimators=trees, random_state=seed, n_jobs=-1)
    rf.fit(train_x, train_y.astype(np.float32))  # the official loader's .float()
    return float(np.sqrt(mean_squared_error(test_y, rf.predict(test_x))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run (see the docstring)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    ap.add_argument("--weights", default=str(WEIGHTS), help="default_model.pt or its folder")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = SEEDS[:1] if args.quick else SEEDS
    trees = 20 if args.quick else 100

    model = Presto.from_official(args.weights)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads; "
          f"weights {args.weights}")
    print(f"protocol: RandomForestRegressor(random_state=seed, n_estimators={trees}), "
          f"seeds {seeds}{' (QUICK: subsampled, not comparable)' if args.quick else ''}\n")

    rows = []
    for task in ("fuel_moisture", "algae_blooms"):
        d = load(task)
        x = normalize(d["s1_s2_era5_srtm"])  # (B, T, 17) float32, the official normalisation
        train, test = d["is_test"] == 0, d["is_test"] == 1
        if args.quick:
            train = train & (np.cumsum(train) <= 400)
            test = test & (np.cumsum(test) <= 200)
        keep = train | test
        t0 = time.perf_counter()
        emb = np.zeros((len(x), 128), np.float32)
        emb[keep] = embed(model, x[keep], d["dynamic_world"][keep], d["latlon"][keep],
                          d["month"][keep])
        dt = time.perf_counter() - t0
        raw = x.reshape(len(x), -1)
        y = d["target"]
        print(f"{task}: {int(train.sum())} train / {int(test.sum())} test series of "
              f"{x.shape[1]} steps; embedded {int(keep.sum())} in {dt:.1f} s "
              f"({keep.sum() / dt:.0f} series/s)")
        res = {}
        for name, feats in (("presto", emb), ("raw", raw)):
            scores = [rf_rmse(feats[train], y[train], feats[test], y[test], s, trees)
                      for s in seeds]
            res[name] = (float(np.mean(scores)), float(np.std(scores)), scores)
            print(f"  {name:6s} RMSE per seed {', '.join(f'{v:.4f}' for v in scores)}")
        rows.append((task, res))

    print()
    head = (f"{'task':14s} {'units':20s} {'xsky Presto RF':>16s} {'published':>14s} "
            f"{'xsky/published':>15s} {'raw-input RF':>15s} {'Presto/raw':>11s}")
    print(head)
    print("-" * len(head))
    for task, res in rows:
        (pm, ps, _), (rm, rs, _) = res["presto"], res["raw"]
        pub_m, pub_s = PUBLISHED[task]
        digits = 2 if task == "fuel_moisture" else 3
        print(f"{task:14s} {UNITS[task]:20s} {pm:9.{digits}f} ± {ps:.{digits}f} "
              f"{pub_m:7.{digits}f} ± {pub_s:.{digits}f} {pm / pub_m:15.3f} "
              f"{rm:8.{digits}f} ± {rs:.{digits}f} {pm / rm:11.3f}")
    print("\nRMSE: lower is better. ratio xsky/published near 1 = the paper's figure reproduced; "
          "Presto/raw < 1 = the embedding beats the raw inputs.")


if __name__ == "__main__":
    main()
