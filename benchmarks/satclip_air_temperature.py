"""Air temperature at 3,076 stations from location: raw lon/lat vs spherical harmonics.

The SatCLIP paper's air-temperature task (Hooker et al. 2018 station means): regress the
annual mean air temperature from the location alone. Three feature sets go through the same
small regressor and the same fixed spatial split:

(a) raw (lon, lat), standardised;
(b) SatCLIP spherical-harmonic features with L = 10 (100 features);
(c) the same with L = 40 (1,600 features).

The split is spatial: the globe is cut into 10 x 10 degree blocks and a fixed fifth of the
blocks (``(3 * bx + 7 * by) % 5 == 0``) is held out, so test stations are never next to
training stations (``--split random`` holds out a random fifth instead). The regressor is
an MLP (2 hidden layers of 64, ReLU, Adam on batches of 128, early stopping on a random 15 %
of the training stations), averaged over three seeds; a ridge regression with the penalty
chosen on the same validation set is printed as a second baseline.

The SH features here are the positional encoding only: no pretrained SatCLIP SIREN is
available offline, so this is not the paper's number (the paper fits an MLP on the 256-d
embeddings of a pretrained location encoder).

Run: ``python benchmarks/satclip_air_temperature.py [--split spatial|random] [--epochs N]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xsky.models._sh import spherical_harmonics

DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "labelled_samples"
        / "air_temperature_stations" / "stationDataAll.csv").resolve()
SEEDS = (0, 1, 2)
BATCH = 128
PATIENCE = 25  # epochs without a better validation loss


def spatial_split(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """True for test stations: a fixed fifth of the 10-degree blocks."""
    bx = np.floor((lon + 180) / 10).astype(int)
    by = np.floor((lat + 90) / 10).astype(int)
    return (3 * bx + 7 * by) % 5 == 0


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mu = train.mean(0)
    sd = train.std(0)
    sd[sd < 1e-12] = 1.0  # constant columns (Y_00) stay as they are, centred
    return [(a - mu) / sd for a in (train, *others)]


def r2_mse(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    mse = float(np.mean((y - pred) ** 2))
    return 1 - mse / float(np.var(y)), mse


def fit_mlp(xtr, ytr, xva, yva, xte, seed: int, epochs: int) -> np.ndarray:
    """Mini-batch Adam on an MLP; test predictions at the best validation epoch."""
    torch.manual_seed(seed)
    d = xtr.shape[1]
    net = torch.nn.Sequential(torch.nn.Linear(d, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                              torch.nn.ReLU(), torch.nn.Linear(64, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    xt, yt = torch.as_tensor(xtr, dtype=torch.float32), torch.as_tensor(ytr, dtype=torch.float32)
    xv, xe = torch.as_tensor(xva, dtype=torch.float32), torch.as_tensor(xte, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    best, best_state, patience = float("inf"), None, 0
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(BATCH):
            opt.zero_grad()
            loss = torch.mean((net(xt[idx])[:, 0] - yt[idx]) ** 2)
            loss.backward()
            opt.step()
        with torch.no_grad():
            val = float(np.mean((net(xv)[:, 0].numpy() - yva) ** 2))
        if val < best - 1e-5:
            best, patience = val, 0
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        else:
            patience += 1
            if patience >= PATIENCE:
                break
    net.load_state_dict(best_state)
    with torch.no_grad():
        return net(xe)[:, 0].numpy()


def fit_ridge(xtr, ytr, xva, yva, xte) -> tuple[np.ndarray, float]:
    """Ridge regression (with intercept) with the penalty picked on the validation set."""
    def solve(x, y, alpha):
        xa = np.hstack([x, np.ones((len(x), 1))])
        reg = alpha * np.eye(xa.shape[1])
        reg[-1, -1] = 0.0
        return np.linalg.solve(xa.T @ xa + reg, xa.T @ y)

    def predict(w, x):
        return x @ w[:-1] + w[-1]

    alphas = 10.0 ** np.arange(-4, 4.5, 0.5)
    scores = [np.mean((predict(solve(xtr, ytr, a), xva) - yva) ** 2) for a in alphas]
    alpha = float(alphas[int(np.argmin(scores))])
    w = solve(np.vstack([xtr, xva]), np.concatenate([ytr, yva]), alpha)
    return predict(w, xte), alpha


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=300, help="max MLP epochs (early stopping)")
    ap.add_argument("--split", choices=("spatial", "random"), default="spatial")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    df = pd.read_csv(DATA)
    lon, lat, y = (df[c].to_numpy(np.float64) for c in ("Lon", "Lat", "meanT"))
    rng = np.random.default_rng(0)
    if args.split == "spatial":
        test = spatial_split(lon, lat)
    else:
        test = np.zeros(len(df), bool)
        test[rng.choice(len(df), size=len(df) // 5, replace=False)] = True
    train_idx = np.flatnonzero(~test)
    val_mask = np.zeros(len(df), bool)
    val_mask[rng.choice(train_idx, size=int(0.15 * len(train_idx)), replace=False)] = True
    fit_mask = ~test & ~val_mask
    print("Air temperature at weather stations from location only")
    print(f"  data: {DATA.name}, {len(df)} stations, target meanT (deg C), "
          f"var {np.var(y):.1f}")
    how = ("10-degree blocks (test blocks never used for fitting)" if args.split == "spatial"
           else "random stations")
    print(f"  split: {how}: {fit_mask.sum()} fit / {val_mask.sum()} validation / "
          f"{test.sum()} test stations")
    print(f"  machine: {platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads)")
    print("  note: SH = SatCLIP's positional encoding only (no pretrained SIREN offline)\n")

    feats = {
        "raw lon/lat": np.stack([lon, lat], 1),
        "SH L=10 (100)": spherical_harmonics(lon, lat, 10),
        "SH L=40 (1600)": spherical_harmonics(lon, lat, 40),
    }
    ymu, ysd = y[fit_mask].mean(), y[fit_mask].std()
    yn = (y - ymu) / ysd
    print(f"{'features':18s}{'MLP R2':>10s}{'MLP MSE':>10s}{'ridge R2':>10s}{'ridge MSE':>11s}"
          f"{'alpha':>9s}{'MLP s':>8s}")
    for name, x in feats.items():
        xtr, xva, xte = standardise(x[fit_mask], x[val_mask], x[test])
        t0 = time.perf_counter()
        preds = [fit_mlp(xtr, yn[fit_mask], xva, yn[val_mask], xte, s, args.epochs) * ysd + ymu
                 for s in SEEDS]
        secs = time.perf_counter() - t0
        scores = np.array([r2_mse(y[test], p) for p in preds])
        rp, alpha = fit_ridge(xtr, yn[fit_mask], xva, yn[val_mask], xte)
        rr2, rmse = r2_mse(y[test], rp * ysd + ymu)
        print(f"{name:18s}{scores[:, 0].mean():10.3f}{scores[:, 1].mean():10.2f}"
              f"{rr2:10.3f}{rmse:11.2f}{alpha:9.0e}{secs:8.1f}")
    print(f"\nMLP: mean over seeds {SEEDS}; MSE in deg C^2 on the {test.sum()} test stations.")


if __name__ == "__main__":
    main()
