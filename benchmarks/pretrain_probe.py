"""Does xsky's pretraining help? A linear probe on held-out real labels, same run, same probe.

**Task.** Per 10 m pixel and date of the Romania Sentinel-2 L2A sample (``xsky.tutorial``),
predict the scene classification (SCL) of that date from the embedding of that one date:
vegetation (4), not vegetated (5), cloud (8, 9, 10: medium, high, cirrus), cloud shadow
(3) and snow (11). Nothing is masked: cloudy and snowy observations are what the probe must
recognise, from the four bands B02, B03, B04, B08.

**Held out from pretraining.** The shipped default was pretrained (``xsky/train/recipes/
default.toml``) on the western 60 columns and on dates before 2020. The probe uses only
dates from 2020 (``--dates`` of them, spread over the year), fits on the western columns
(x < 56) and scores on the eastern block (x >= 68): the 12-column gap keeps every 8-px
window of the test block out of the training pixels, so neither the dates nor the test area
were seen in pretraining or in the probe's fit.

**Inputs**, per date, each through ``xsky.embed`` on the one-date cube:
``default`` (the shipped weights, or ``--weights``), ``random`` (the same architecture with
the recipe's initialisation and no training), ``galileo-nano`` and ``presto`` (official
pretrained weights, from ``../shared/data/weights_small``, S2 bands restricted to the four
the default has; the other bands are masked as missing), and the raw bands (standardised).

**Probe.** A standardised multinomial logistic regression (scikit-learn), fitted on
``--train-pixels`` random training pixels, scored on every test pixel with a label:
balanced accuracy and macro F1, and the majority-class baseline.

Run: ``python benchmarks/pretrain_probe.py`` (about 5 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

import xsky
from xsky.models import create_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CLASSES = {"vegetation": (4,), "not vegetated": (5,), "cloud": (8, 9, 10), "shadow": (3,),
           "snow": (11,)}
BANDS = ("B02", "B03", "B04", "B08")


def labels_of(scl: np.ndarray) -> np.ndarray:
    out = np.full(scl.shape, -1, np.int64)
    for i, codes in enumerate(CLASSES.values()):
        out[np.isin(scl, codes)] = i
    return out


def pick_dates(cube: xr.Dataset, n: int) -> xr.Dataset:
    t = cube.sel(time=slice("2020-01-01", "2020-12-31"))
    idx = np.unique(np.linspace(0, t.sizes["time"] - 1, n).round().astype(int))
    return t.isel(time=idx)


def embed_dates(cube: xr.Dataset, model: object) -> np.ndarray:
    """(T, Y, X, F) embeddings, one date at a time."""
    out = []
    for i in range(cube.sizes["time"]):
        one = cube.isel(time=[i])
        emb = xsky.embed(one, model).compute()
        if "time" in emb.dims:
            emb = emb.isel(time=0)
        emb = emb.transpose("y", "x", ...)
        out.append(np.asarray(emb.values, np.float64))
    return np.stack(out)


def probe(feats: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray,
          n_train: int, seed: int) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = feats.reshape(-1, feats.shape[-1])
    y = labels.reshape(-1)
    ok = (y >= 0) & np.isfinite(x).all(axis=1)
    tr = np.flatnonzero(ok & train.reshape(-1))
    te = np.flatnonzero(ok & test.reshape(-1))
    rng = np.random.default_rng(seed)
    tr = rng.choice(tr, min(n_train, tr.size), replace=False)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(x[tr], y[tr])
    pred = clf.predict(x[te])
    return {"balanced_accuracy": float(balanced_accuracy_score(y[te], pred)),
            "macro_f1": float(f1_score(y[te], pred, average="macro")),
            "n_train": int(tr.size), "n_test": int(te.size)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dates", type=int, default=10, help="2020 dates used (default 10)")
    ap.add_argument("--train-pixels", type=int, default=4000)
    ap.add_argument("--weights", help="default-model weights (default: the packaged ones)")
    ap.add_argument("--quick", action="store_true", help="3 dates, default and raw only")
    args = ap.parse_args()
    n_dates = 3 if args.quick else args.dates

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        full = xsky.tutorial.open_dataset("romania")
    cube = pick_dates(full, n_dates).load()
    scl = cube["SCL"].transpose("time", "y", "x").values
    labels = labels_of(scl)
    x = np.arange(cube.sizes["x"])
    train = np.broadcast_to((x < 56)[None, None, :], labels.shape)
    test = np.broadcast_to((x >= 68)[None, None, :], labels.shape)
    counts = {c: int((labels[test] == i).sum()) for i, c in enumerate(CLASSES)}
    bands = cube[list(BANDS)]  # no valid mask: clouds and snow are what is predicted
    print(f"dates {[str(t)[:10] for t in cube.time.values]}")
    print(f"test pixels per class: {counts}")

    inputs: dict[str, object] = {
        "default": create_model("default", args.weights),
    }
    if not args.quick:
        import torch

        torch.manual_seed(0)
        inputs["random"] = create_model("skysense-tiny", modalities=("s2",), s2_bands=BANDS,
                                        window=8)
        wdir = SHARED / "data" / "weights_small"
        if (wdir / "galileo_nano").is_dir():
            inputs["galileo-nano"] = create_model("galileo-nano", wdir / "galileo_nano")
        if (wdir / "presto").is_dir():
            inputs["presto"] = create_model("presto", wdir / "presto")

    raw = np.stack([bands[b].transpose("time", "y", "x").values for b in BANDS], -1)
    rows = [("raw bands", probe(raw.astype(np.float64), labels, train, test,
                                args.train_pixels, 0), 0.0)]
    for name, model in inputs.items():
        t0 = time.perf_counter()
        try:
            feats = embed_dates(bands, model)
        except Exception as err:  # report and go on: one model must not hide the others
            print(f"{name}: could not embed ({type(err).__name__}: {err})")
            continue
        dt = time.perf_counter() - t0
        if feats.shape[1:3] != labels.shape[1:]:
            fy, fx = feats.shape[1:3]
            ry, rx = labels.shape[1] // fy, labels.shape[2] // fx
            feats = np.repeat(np.repeat(feats, ry, 1), rx, 2)
        rows.append((name, probe(feats, labels, train, test, args.train_pixels, 0), dt))

    y_te = labels[test]
    y_te = y_te[y_te >= 0]
    major = np.bincount(y_te).max() / y_te.size
    print(f"\nmajority class share of the test pixels: {major:.3f} "
          f"(balanced accuracy of always predicting it: {1 / len(np.unique(y_te)):.3f})")
    print(f"{'input':14s} {'bal.acc':>8s} {'macro F1':>9s} {'embed s':>8s}")
    for name, r, dt in rows:
        print(f"{name:14s} {r['balanced_accuracy']:8.3f} {r['macro_f1']:9.3f} {dt:8.1f}")


if __name__ == "__main__":
    main()
