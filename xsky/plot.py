"""Plots and quick looks of xsky results: prototype maps, PCA false colour, PNG previews.

matplotlib is imported when a figure is drawn (``pip install 'xsky[viz]'``); :func:`pca_rgb`
needs only numpy.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import xarray as xr

from ._interop import require
from .exceptions import ArgumentError, DataError, DimensionError
from .geo import spatial_dims

__all__ = ["pca_rgb", "plot", "prototypes", "save_preview"]

_MAX_LEGEND = 24  # beyond this many categories a legend is unreadable: skip it


def _edges(v: np.ndarray) -> tuple[float, float]:
    step = (v[-1] - v[0]) / (v.size - 1) if v.size > 1 else 1.0
    lo, hi = v[0] - step / 2, v[-1] + step / 2
    return (min(lo, hi), max(lo, hi))


def _boundary_lines(rm: np.ndarray, xv: np.ndarray, yv: np.ndarray) -> Any:
    """Line segments along the pixel edges where the region changes."""
    from matplotlib.collections import LineCollection

    dx = (xv[-1] - xv[0]) / (xv.size - 1) if xv.size > 1 else 1.0
    dy = (yv[-1] - yv[0]) / (yv.size - 1) if yv.size > 1 else 1.0
    i, j = np.nonzero(rm[:, 1:] != rm[:, :-1])  # between columns j and j + 1
    xe = xv[j] + dx / 2
    vertical = np.stack([np.c_[xe, yv[i] - dy / 2], np.c_[xe, yv[i] + dy / 2]], axis=1)
    i, j = np.nonzero(rm[1:, :] != rm[:-1, :])  # between rows i and i + 1
    ye = yv[i] + dy / 2
    horizontal = np.stack([np.c_[xv[j] - dx / 2, ye], np.c_[xv[j] + dx / 2, ye]], axis=1)
    segments = np.concatenate([vertical, horizontal]).reshape(-1, 2, 2)
    return LineCollection(list(segments), colors="k", linewidths=1.0, label="region boundaries")


def prototypes(
    protos: xr.Dataset,
    ax: Any = None,
    *,
    time: int | Any = 0,
    cmap: str = "tab20",
    legend: bool = True,
    boundaries: bool = True,
    title: str | None = None,
    **imshow_kwargs: Any,
) -> Any:
    """Draw the prototype assignment map with a legend.

    Parameters
    ----------
    protos
        A ``Dataset`` from :func:`xsky.prototypes` (uses ``assignment``) or from
        :func:`xsky.classify` (uses ``label``). Computes that one map.
    ax
        Matplotlib axes to draw on (a new figure when None).
    time
        Which time step to draw when the map has a time dim: an integer position, or a
        label selected with ``.sel``.
    cmap
        Name of a qualitative colormap; one colour per prototype (or class). For learned
        prototypes the colour is the prototype index within each region, so the same colour
        in two regions means two different prototypes.
    legend
        Add a legend naming each prototype/class (at most 24 entries are listed).
    boundaries
        Outline region boundaries (from ``region_map``) when there are several regions.
    title
        Axes title (a default names k and the number of regions).
    **imshow_kwargs
        Passed to :meth:`matplotlib.axes.Axes.imshow`.

    Returns
    -------
    matplotlib.axes.Axes
    """
    require("matplotlib", "xsky.plot")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    if not isinstance(protos, xr.Dataset):
        raise ArgumentError(f"expected a prototypes xr.Dataset, got {type(protos).__name__}")
    var = "assignment" if "assignment" in protos else "label" if "label" in protos else None
    if var is None:
        raise DataError(
            "this Dataset has no 'assignment'' (or 'label') map to draw (prototypes read from disk "
            "do not keep one); compute it with xsky.classify(emb, protos) and plot that"
        )
    amap = protos[var]
    ydim, xdim = spatial_dims(amap)
    extra = [d for d in amap.dims if d not in (ydim, xdim)]
    if len(extra) > 1:
        raise DimensionError(f"{var!r} has dims {amap.dims}; expected ([time,] y, x)")
    if extra:
        amap = amap.isel({extra[0]: time}) if isinstance(time, int) else amap.sel({extra[0]: time})
    amap = amap.transpose(ydim, xdim)
    values = np.asarray(amap.values)

    if "prototype" in protos.coords:
        cats = np.asarray(protos["prototype"].values)
    else:
        cats = np.unique(values[values >= 0])
    is_labels = protos.attrs.get("kind") == "labels"
    pos = np.searchsorted(cats, values) if cats.size else np.zeros(values.shape, int)
    pos = np.clip(pos, 0, max(cats.size - 1, 0))
    missing = (values < 0) | (cats.size == 0) | (cats[pos] != values)
    img = np.ma.masked_array(pos, mask=missing)

    base = plt.get_cmap(cmap)
    n = max(cats.size, 1)
    if isinstance(base, ListedColormap) and base.N <= 32:  # qualitative: cycle its colours
        colours = [base(i % base.N) for i in range(n)]
    else:  # continuous: spread the categories over it
        colours = [base(i / max(n - 1, 1)) for i in range(n)]
    lcmap = ListedColormap(colours).with_extremes(bad=(0, 0, 0, 0))

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 5))
    yv = np.asarray(amap[ydim].values, "float64")
    xv = np.asarray(amap[xdim].values, "float64")
    x0, x1 = _edges(xv)
    y0, y1 = _edges(yv)
    origin = "upper" if yv.size > 1 and yv[1] < yv[0] else "lower"
    ax.imshow(
        img,
        cmap=lcmap,
        vmin=-0.5,
        vmax=n - 0.5,
        extent=(x0, x1, y0, y1),
        origin=origin,
        interpolation="nearest",
        **imshow_kwargs,
    )

    n_regions = 0
    if "region_map" in protos:
        rm = protos["region_map"].transpose(ydim, xdim).values
        n_regions = int(np.unique(rm[rm >= 0]).size)
        if boundaries and n_regions > 1:
            ax.add_collection(_boundary_lines(rm, xv, yv))

    if legend and 0 < cats.size <= _MAX_LEGEND:
        name = "class" if is_labels else "prototype"
        handles = [
            Patch(facecolor=colours[i], edgecolor="none", label=f"{name} {c}")
            for i, c in enumerate(cats.tolist())
        ]
        ax.legend(
            handles=handles,
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
            fontsize="small",
            frameon=False,
        )
    if title is None:
        what = f"{cats.size} classes" if is_labels else f"k={cats.size}"
        where = f", {n_regions} region{'s' if n_regions > 1 else ''}" if n_regions else ""
        title = f"prototype assignment ({what}{where})"
    ax.set_title(title)
    ax.set_xlabel(xdim)
    ax.set_ylabel(ydim)
    return ax


def plot(obj: xr.Dataset | xr.DataArray, ax: Any = None, **kwargs: Any) -> Any:
    """Draw an xsky result: a prototypes/classification map, or an embedding in PCA colour.

    Parameters
    ----------
    obj
        A ``Dataset`` from :func:`xsky.prototypes` or :func:`xsky.classify` (drawn with
        :func:`prototypes`), or an embedding ``DataArray`` with a ``feature`` dimension
        (drawn as :func:`pca_rgb`; pass ``time=`` for per-date embeddings).
    ax
        Matplotlib axes to draw on (a new figure when None).
    **kwargs
        Passed to :func:`prototypes` or :func:`pca_rgb`.

    Returns
    -------
    matplotlib.axes.Axes
    """
    if isinstance(obj, xr.Dataset):
        return prototypes(obj, ax, **kwargs)
    if isinstance(obj, xr.DataArray) and "feature" in obj.dims:
        require("matplotlib", "xsky.plot")
        import matplotlib.pyplot as plt

        rgb = pca_rgb(obj, **kwargs)
        ydim, xdim = rgb.dims[:2]
        yv = np.asarray(rgb[ydim].values, "float64")
        xv = np.asarray(rgb[xdim].values, "float64")
        (x0, x1), (y0, y1) = _edges(xv), _edges(yv)
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 5))
        origin = "upper" if yv.size > 1 and yv[1] < yv[0] else "lower"
        ax.imshow(np.nan_to_num(rgb.values, nan=0.0), extent=(x0, x1, y0, y1), origin=origin,
                  interpolation="nearest")
        ax.set_title(f"{obj.attrs.get('model', 'embedding')}: first 3 principal components")
        ax.set_xlabel(xdim)
        ax.set_ylabel(ydim)
        return ax
    raise ArgumentError(
        f"xsky.plot draws a prototypes Dataset or an embedding DataArray with a 'feature' "
        f"dimension, got {type(obj).__name__}"
        + (f" with dims {obj.dims}" if isinstance(obj, xr.DataArray) else "")
    )


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
        raise DataError("the embedding has no finite pixel to build a preview from")
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
