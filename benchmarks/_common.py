"""Metrics and the prototype evaluation shared by the real-data benchmarks.

Labelings are integer arrays of the same shape; callers pass only the scored pixels.
"""

from __future__ import annotations

import time

import numpy as np
import xarray as xr

from xsky import prototypes

__all__ = ["adjusted_rand_index", "balanced_accuracy", "contingency", "evaluate", "purity"]


def contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Counts of each (label of ``a``, label of ``b``) pair."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    t = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(t, (ai, bi), 1)
    return t


def purity(pred: np.ndarray, truth: np.ndarray) -> float:
    """Share of pixels in the majority reference class of their cluster."""
    return float(contingency(pred, truth).max(axis=1).sum() / pred.size)


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Hubert & Arabie's adjusted Rand index of two labelings (1 = identical, ~0 = chance)."""
    t = contingency(a, b)

    def pairs(n):
        return n * (n - 1) / 2.0

    index = pairs(t).sum()
    row, col = pairs(t.sum(axis=1)).sum(), pairs(t.sum(axis=0)).sum()
    expected = row * col / pairs(t.sum())
    top = (row + col) / 2.0
    return float((index - expected) / (top - expected)) if top != expected else 1.0


def balanced_accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean over the reference classes of the share of their pixels predicted right."""
    return float(np.mean([np.mean(pred[truth == c] == c) for c in np.unique(truth)]))


def evaluate(
    emb: xr.DataArray, ref: np.ndarray, k: int, sample: int, rng, method: str = "centred"
) -> dict[str, float]:
    """Unsupervised prototypes (k, method) vs ``ref``: purity, ARI, their chance values (the
    same assignment shuffled over the scored pixels, 10 draws) and the seconds taken."""
    t0 = time.perf_counter()
    data = emb.chunk(time=20) if "time" in emb.dims else emb.chunk(y=128, x=128)
    # "cosine" with one k-means++ start is what xsky learned before centring existed
    extra = {} if method == "centred" else {"restarts": 1}
    protos = prototypes(data, k=k, sample=sample, seed=0, method=method, **extra)
    assign = protos.assignment.values
    dt = time.perf_counter() - t0
    ok = (ref >= 0) & (assign >= 0)
    a, r = assign[ok], ref[ok]
    shuffled = [rng.permutation(a) for _ in range(10)]
    return {
        "purity": purity(a, r),
        "ari": adjusted_rand_index(a, r),
        "purity_chance": float(np.mean([purity(s, r) for s in shuffled])),
        "ari_chance": float(np.mean([adjusted_rand_index(s, r) for s in shuffled])),
        "seconds": dt,
    }
