"""Quick looks at embeddings: PCA false-colour images and PNG previews."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import xarray as xr

from .exceptions import DimensionError, XSkyError

__all__ = ["pca_rgb", "save_preview"]


def pca_rgb(emb: xr.DataArray, *, time: Any = None, n_sample: int = 20_000, seed: int = 0
            ) -> xr.DataArray:
    """Project an embedding onto its first three principal components, scaled to [0, 1].

    Parameters
    ----------
    emb
        Embedding ``(..., y, x, feature)``; computed here (this is a plotting helper).
    time
        For per-date embeddings, the date to show (label or integer position); default: the
        date with the most valid pixels.
    n_sample
        Pixels used to fit the PCA (a deterministic random subset).
    seed
        Seed of that subset.

    Returns
    -------
    xarray.DataArray
        ``(y, x, rgb)`` float32 in [0, 1]; NaN where the embedding is NaN.
    """
    if "feature" not in emb.dims:
        raise DimensionError(f"expected a 'feature' dimension, got dims {emb.dims}")
    if "time" in emb.dims:
        if time is None:
            space = [d for d in emb.dims if d not in ("time", "feature")]
            counts = emb.isel(feature=0).notnull().sum(space).values
            emb = emb.isel(time=int(np.argmax(counts)))
        elif isinstance(time, (int, np.integer)):
            emb = emb.isel(time=int(time))
        else:
            emb = emb.sel(time=time, method="nearest")
    extra = [d for d in emb.dims if d != "feature"]
    if len(extra) != 2:
        raise DimensionError(f"expected (y, x, feature) after selecting a date, got {emb.dims}")
    emb = emb.transpose(*extra, "feature")
    values = np.asarray(emb.values, dtype=np.float64)
    ny, nx, nf = values.shape
    flat = values.reshape(-1, nf)
    ok = np.isfinite(flat).all(axis=1)
    if not ok.any():
        raise XSkyError("the embedding has no finite pixel to build a preview from")
    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(ok)
    fit = flat[rng.choice(idx, size=min(n_sample, idx.size), replace=False)]
    mean = fit.mean(axis=0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    comps = vt[: min(3, nf)]
    proj = np.full((flat.shape[0], 3), np.nan)
    proj[ok, : comps.shape[0]] = (flat[ok] - mean) @ comps.T
    if comps.shape[0] < 3:
        proj[ok, comps.shape[0]:] = 0.0
    lo, hi = np.nanpercentile(proj[ok], [2, 98], axis=0)
    rgb = np.clip((proj - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1).astype(np.float32)
    return xr.DataArray(
        rgb.reshape(ny, nx, 3), dims=(*extra, "rgb"),
        coords={extra[0]: emb[extra[0]], extra[1]: emb[extra[1]], "rgb": ["r", "g", "b"]},
        name="pca_rgb", attrs={"long_name": "first 3 principal components of the embedding"},
    )


def save_preview(emb: xr.DataArray, path: str | os.PathLike[str], **kwargs: Any) -> str:
    """Write a PCA false-colour PNG of ``emb`` (see :func:`pca_rgb`) and return its path."""
    from ._interop import require

    require("matplotlib", "save_preview")
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rgb = pca_rgb(emb, **kwargs)
    img = np.nan_to_num(rgb.values, nan=0.0)
    # enlarge small embeddings (nearest neighbour) so the preview is at least ~512 px wide
    zoom = max(1, 512 // max(img.shape[:2]))
    img = img.repeat(zoom, axis=0).repeat(zoom, axis=1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    plt.imsave(path, img)
    return str(path)
