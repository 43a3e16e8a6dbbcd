"""Plots and quick looks of xsky results: change and similarity maps, PCA false colour,
prototype maps, PNG previews.

Every map is drawn on the cube's grid and in its CRS: axis labels name the CRS axes and
units (``Easting (m)``), pixels are drawn as the squares they are (no interpolation), and
pixels without a value (too few valid observations, clouds, outside a polygon) are shown
*missing*, hatched on light grey, never as a colour that could be read as a value. A caption
under each map names the CRS and the data's credit (``attrs`` ``attribution`` and
``license`` carried from the input cube, see :func:`caption`).

matplotlib is imported when a figure is drawn (``pip install 'xsky[viz]'``);
:func:`pca_rgb` and :func:`pca_basis` need only numpy.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ._interop import require
from .exceptions import ArgumentError, CRSError, DataError, DimensionError, format_choices
from .geo import get_crs, spatial_dims

__all__ = [
    "PCABasis",
    "caption",
    "change_map",
    "pca_basis",
    "pca_dates",
    "pca_rgb",
    "plot",
    "prototypes",
    "save_preview",
    "similarity_map",
]

_MAX_LEGEND = 24  # beyond this many categories a legend is unreadable: skip it
_MISSING_FACE = (0.86, 0.86, 0.86, 1.0)  # light grey under the hatching of missing pixels
_HATCH = "////"
_HATCH_COLOR = "0.45"
_MASK_STYLES = ("contour", "fill")
_TIME_DIMS = ("time", "period")
#: abbreviations of the CRS axis units pyproj names
_UNITS = {"metre": "m", "meter": "m", "kilometre": "km", "degree": "°", "foot": "ft",
          "US survey foot": "ftUS"}


# --------------------------------------------------------------------------------------
# shared helpers: grids, CRS axes, captions, missing pixels
# --------------------------------------------------------------------------------------


def _pyplot() -> Any:
    require("matplotlib", "xsky.plot")
    import matplotlib.pyplot as plt

    return plt


def _edges(v: np.ndarray) -> tuple[float, float]:
    step = (v[-1] - v[0]) / (v.size - 1) if v.size > 1 else 1.0
    lo, hi = v[0] - step / 2, v[-1] + step / 2
    return (min(lo, hi), max(lo, hi))


def _step(v: np.ndarray) -> float:
    return float((v[-1] - v[0]) / (v.size - 1)) if v.size > 1 else 1.0


def _map_crs(obj: Any) -> Any:
    """The CRS of ``obj`` (a :class:`pyproj.CRS`), or None when it has none."""
    try:
        return get_crs(obj)
    except (CRSError, DimensionError):
        return None


def _axis_label(crs: Any, which: str, dim: str) -> str:
    """``Easting (m)``, ``Longitude (°)``...: the CRS axis along ``which`` (x or y)."""
    if crs is None:
        return dim
    axes = list(crs.axis_info)
    want = ("east", "west") if which == "x" else ("north", "south")
    info = next((a for a in axes if a.direction.lower() in want), None)
    if info is None and len(axes) >= 2:
        info = axes[0 if which == "x" else 1]
    if info is None:
        return dim
    name = info.name.replace("Geodetic ", "")
    name = name[:1].upper() + name[1:]
    return f"{name} ({_UNITS.get(info.unit_name, info.unit_name)})"


def _crs_text(crs: Any) -> str | None:
    if crs is None:
        return None
    code = crs.to_epsg()
    return f"{crs.name} (EPSG:{code})" if code else str(crs.name)


def _credit(attrs: Mapping[Any, Any]) -> str | None:
    """The data credit from ``attribution``/``license``/``source`` attrs."""
    att = attrs.get("attribution")
    lic = attrs.get("license") or attrs.get("licence")
    src = attrs.get("source")
    if att:
        return f"{att} ({lic})" if lic else str(att)
    if src:
        return f"source: {src}" + (f" ({lic})" if lic else "")
    if lic:
        return f"licence: {lic}"
    return None


def caption(obj: xr.DataArray | xr.Dataset, attribution: Any = None) -> str:
    """The caption xsky writes under a map: the data's credit, the model, the CRS.

    Parameters
    ----------
    obj
        The object drawn (an embedding, a change or similarity result...): its ``attrs``
        (``attribution``, ``license``/``licence``, else ``source``; ``model``) and CRS.
    attribution
        ``None``: the credit from ``obj.attrs``; a string: that credit instead; an xarray
        object or a mapping: the credit from its attrs (e.g. the input cube, when a result
        did not keep them); ``False``: no credit.

    Returns
    -------
    str
        Parts joined by ``"; "``, e.g. ``"Contains modified Copernicus Sentinel data
        (EUPL-1.2); model: test-tiny; CRS: WGS 84 / UTM zone 33N (EPSG:32633)"``; empty when
        there is nothing to say.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> from xsky.geo import write_crs
    >>> da = write_crs(xr.DataArray(np.zeros((2, 2)), dims=("y", "x"),
    ...                             coords={"y": [15.0, 5.0], "x": [5.0, 15.0]},
    ...                             attrs={"attribution": "Contains Copernicus data",
    ...                                    "license": "CC-BY-4.0"}), "EPSG:32633")
    >>> caption(da)
    'Contains Copernicus data (CC-BY-4.0); CRS: WGS 84 / UTM zone 33N (EPSG:32633)'
    >>> caption(da, attribution=False)
    'CRS: WGS 84 / UTM zone 33N (EPSG:32633)'
    """
    attrs = getattr(obj, "attrs", {}) or {}
    credit: str | None
    if attribution is None:
        credit = _credit(attrs)
    elif attribution is False:
        credit = None
    elif isinstance(attribution, str):
        credit = attribution
    elif isinstance(attribution, xr.DataArray | xr.Dataset):
        credit = _credit(attribution.attrs)
    elif isinstance(attribution, Mapping):
        credit = _credit(attribution)
    else:
        raise ArgumentError(
            f"attribution= must be None (read obj.attrs), a string, an xarray object or "
            f"mapping to read attrs from, or False, got {type(attribution).__name__}"
        )
    parts = [credit] if credit else []
    if attrs.get("model"):
        parts.append(f"model: {attrs['model']}")
    crs = _crs_text(_map_crs(obj)) if isinstance(obj, xr.DataArray | xr.Dataset) else None
    if crs:
        parts.append(f"CRS: {crs}")
    return "; ".join(parts)


def _add_caption(ax: Any, text: str) -> Any:
    """The caption under the x label of ``ax`` (an annotation with gid ``xsky-caption``,
    one line per part)."""
    if not text:
        return None
    # one part a line: a caption as wide as one panel of a figure with several
    return ax.annotate(
        text.replace("; ", "\n"), xy=(0, 0), xycoords=("axes fraction", ax.xaxis.label), xytext=(0, -4),
        textcoords="offset points", ha="left", va="top", fontsize="x-small", color="0.3",
        gid="xsky-caption", annotation_clip=False,
    )


def _crs_axes(ax: Any, obj: Any, ydim: str, xdim: str, nbins: int = 4) -> None:
    """Axis labels with the CRS axes and units, plain tick labels, square pixels."""
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    crs = _map_crs(obj)
    ax.set_xlabel(_axis_label(crs, "x", xdim))
    ax.set_ylabel(_axis_label(crs, "y", ydim))
    for axis in (ax.xaxis, ax.yaxis):
        fmt = ScalarFormatter(useOffset=False)
        fmt.set_scientific(False)
        axis.set_major_formatter(fmt)
        axis.set_major_locator(MaxNLocator(nbins=nbins, steps=[1, 2, 2.5, 5, 10]))
    ax.tick_params(labelsize="small")
    ax.set_aspect("equal")


def _show(ax: Any, img: Any, yv: np.ndarray, xv: np.ndarray, **kwargs: Any) -> Any:
    """``imshow`` of a ``(y, x[, c])`` image on its coordinates (pixel squares)."""
    (x0, x1), (y0, y1) = _edges(xv), _edges(yv)
    if xv.size > 1 and xv[1] < xv[0]:  # x decreasing: show it increasing
        img = img[:, ::-1]
    origin = "upper" if yv.size > 1 and yv[1] < yv[0] else "lower"
    kwargs.setdefault("interpolation", "nearest")
    return ax.imshow(img, extent=(x0, x1, y0, y1), origin=origin, **kwargs)


def _pixel_grid(mask: np.ndarray, yv: np.ndarray, xv: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``mask`` on a grid of two samples per pixel, just inside its edges, framed by
    false samples just outside the image, so that a contour at 0.5 runs along pixel edges
    (not through pixel centres) and closes along the image's border."""
    f, g = 0.4999, 0.5001
    dx, dy = _step(xv), _step(yv)
    xs = np.concatenate([[xv[0] - g * dx], np.column_stack([xv - f * dx, xv + f * dx]).ravel(),
                         [xv[-1] + g * dx]])
    ys = np.concatenate([[yv[0] - g * dy], np.column_stack([yv - f * dy, yv + f * dy]).ravel(),
                         [yv[-1] + g * dy]])
    m = np.repeat(np.repeat(mask.astype(np.float64), 2, axis=0), 2, axis=1)
    return xs, ys, np.pad(m, 1)


def _scalar_map(ax: Any, da: xr.DataArray, ydim: str, xdim: str, img: np.ndarray,
                missing: np.ndarray, cmap: Any, vmin: float, vmax: float,
                **imshow_kwargs: Any) -> tuple[Any, Any, np.ndarray, np.ndarray]:
    """Draw a one-value-per-pixel map on ``da``'s coordinates, NaN in the missing colour
    and the ``missing`` pixels hatched; returns the axes, the image and the coordinates."""
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 5.2))
    yv = np.asarray(da[ydim].values, np.float64)
    xv = np.asarray(da[xdim].values, np.float64)
    cm = plt.get_cmap(cmap).with_extremes(bad=_MISSING_FACE)
    im = _show(ax, img, yv, xv, cmap=cm, vmin=vmin, vmax=vmax, **imshow_kwargs)
    _hatch(ax, missing, yv, xv)
    return ax, im, yv, xv


def _hatch(ax: Any, missing: np.ndarray, yv: np.ndarray, xv: np.ndarray) -> Any:
    """Hatch the ``missing`` pixels (a contourf with gid ``xsky-missing``)."""
    import matplotlib as mpl

    if not missing.any():
        return None
    xs, ys, m = _pixel_grid(missing, yv, xv)
    with mpl.rc_context({"hatch.color": _HATCH_COLOR, "hatch.linewidth": 0.6}):
        cs = ax.contourf(xs, ys, m, levels=[0.5, 1.5], colors="none", hatches=[_HATCH])
    if hasattr(cs, "set_hatchcolor"):
        cs.set_hatchcolor(_HATCH_COLOR)
    cs.set_gid("xsky-missing")
    return cs


def _missing_handle(label: str) -> Any:
    import matplotlib as mpl
    from matplotlib.patches import Patch

    with mpl.rc_context({"hatch.color": _HATCH_COLOR, "hatch.linewidth": 0.6}):
        return Patch(facecolor=_MISSING_FACE, edgecolor=_HATCH_COLOR, hatch=_HATCH,
                     linewidth=0.5, label=label)


def _top_legend(ax: Any, handles: list[Any]) -> None:
    """A one-row legend just above the axes (under the title)."""
    if handles:
        ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0),
                  ncols=min(len(handles), 3), frameon=False, fontsize="x-small",
                  borderaxespad=0.2, handlelength=1.6)


def _title(ax: Any, text: str, legend: bool) -> None:
    ax.set_title(text, pad=20 if legend else 6, fontsize="medium")


def _select_time(da: xr.DataArray, dim: str, time: Any) -> xr.DataArray:
    if isinstance(time, int | np.integer):
        return da.isel({dim: int(time)})
    return da.sel({dim: time}, method="nearest" if dim == "time" else None)


def _date_text(value: Any) -> str:
    try:
        return str(pd.Timestamp(value).date())
    except (TypeError, ValueError):
        return str(value)


def _compute(*objs: Any) -> tuple[Any, ...]:
    """Compute xarray objects together (one pass over shared inputs)."""
    import dask

    return tuple(dask.compute(*objs))


# --------------------------------------------------------------------------------------
# prototypes
# --------------------------------------------------------------------------------------


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

    Examples
    --------
    >>> import xsky  # doctest: +SKIP
    >>> protos = xsky.prototypes(emb, k=6)  # doctest: +SKIP
    >>> ax = xsky.plot.prototypes(protos, time=0)  # doctest: +SKIP
    """
    plt = _pyplot()
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
    _crs_axes(ax, amap, ydim, xdim)
    return ax


# --------------------------------------------------------------------------------------
# change
# --------------------------------------------------------------------------------------

_SCORES = ("change", "zscore", "score")


def _change_parts(result: Any, variable: Any) -> tuple[xr.DataArray, xr.DataArray | None]:
    """The score to draw and the count of valid observations behind it (or None)."""
    if isinstance(result, xr.DataArray):
        if variable is not None:
            raise ArgumentError("variable= only applies to a Dataset; pass the DataArray itself")
        if "feature" in result.dims:
            raise DimensionError(
                f"{result.name!r} has a 'feature' dimension: it is an embedding, not a change "
                "score; compute one with xsky.change(emb, ref, target)"
            )
        return result, None
    if not isinstance(result, xr.Dataset):
        raise ArgumentError(
            f"change_map draws the Dataset of xsky.change (or a score DataArray), got "
            f"{type(result).__name__}"
        )
    if variable is None:
        variable = next((v for v in _SCORES if v in result.data_vars), None)
    if variable is None or variable not in result.data_vars:
        raise ArgumentError(
            f"change_map needs a score: name it with variable= (one of "
            f"{format_choices(str(k) for k in result.data_vars)})"
        )
    score = result[variable]
    count: xr.DataArray | None = None
    if "ref_count" in result and "target_count" in result:
        # the weaker side decides
        count = xr.where(result["ref_count"] < result["target_count"], result["ref_count"],
                         result["target_count"]).rename("count")
    elif "valid_count" in result:
        count = result["valid_count"].rename("count")
    return score.assign_attrs({**result.attrs, **score.attrs}), count


def _score_label(score: xr.DataArray) -> str:
    name = str(score.name)
    method = score.attrs.get("change_method")
    known = {"change": f"{method} distance" if method else "change",
             "score": f"{method} distance to the baseline" if method else "score",
             "zscore": "robust z-score"}
    if name in known:
        return known[name]
    return str(score.attrs.get("long_name", name))


def _span(text: Any) -> str:
    """``2018-01-01T00:00:00/2019-01-01T00:00:00`` (half-open) as ``2018-01-01 – 2018-12-31``."""
    try:
        lo, hi = (pd.Timestamp(p) for p in str(text).split("/"))
    except (TypeError, ValueError):
        return str(text)
    return f"{lo.date()} – {(hi - pd.Timedelta(1, 'ns')).date()}"


def _as_mask(mask: Any, full: xr.DataArray) -> xr.DataArray:
    """The change mask to overlay: a boolean DataArray, or a threshold of ``full``."""
    if isinstance(mask, xr.DataArray):
        if mask.dtype != bool:
            raise DataError(f"mask= must be a boolean DataArray (xsky.threshold's "
                            f"change_mask), got dtype {mask.dtype}")
        return mask
    if isinstance(mask, str) or (isinstance(mask, int | float | np.integer | np.floating)
                                 and not isinstance(mask, bool)):
        from .api.change import threshold

        return threshold(full, mask if isinstance(mask, str) else float(mask))
    raise ArgumentError(
        f"mask= must be a boolean change mask (xsky.threshold(...)), a threshold method "
        f"('otsu') or a threshold value, got {type(mask).__name__}"
    )


def change_map(
    result: xr.Dataset | xr.DataArray,
    ax: Any = None,
    *,
    variable: str | None = None,
    time: Any = -1,
    min_count: int | None = None,
    mask: Any = None,
    mask_style: str = "contour",
    cmap: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar: bool = True,
    legend: bool = True,
    title: str | None = None,
    attribution: Any = None,
    **imshow_kwargs: Any,
) -> Any:
    """Draw a change map, with too-few-observation pixels shown missing, not unchanged.

    Pixels whose score is NaN, or whose count of valid observations is below
    ``min_count`` (two periods: the smaller of ``ref_count`` and ``target_count``; through
    time: ``valid_count``), are masked in the image (NaN) and hatched on grey: a cloudy
    period is not a "no change". The change mask of :func:`xsky.threshold` can be drawn on
    top, outlined along pixel edges or filled.

    Parameters
    ----------
    result
        The Dataset of :func:`xsky.change` (two periods: ``change``; through time:
        ``zscore``, or ``variable="score"``), or a score DataArray (no counts: only NaN is
        missing). Computed here (the selected map only).
    ax
        Matplotlib axes to draw on (a new figure when None).
    variable
        The score variable of a Dataset (default: ``change``, else ``zscore``, else
        ``score``).
    time
        Through time: the period to draw, an integer position (default: the last) or a
        label.
    min_count
        Fewest valid observations a pixel needs to be drawn (default: the
        ``change_min_count`` the result was computed with, else 1).
    mask
        A boolean change mask to overlay (from :func:`xsky.threshold`, same grid; its
        ``valid`` coordinate is honoured), or a threshold method (``"otsu"``) or value
        passed to :func:`xsky.threshold` with the score (all periods).
    mask_style
        ``"contour"`` (outline of the changed pixels) or ``"fill"`` (translucent overlay).
    cmap
        Colormap (default ``"magma"`` for distances, ``"RdBu_r"`` centred on 0 for
        z-scores).
    vmin, vmax
        Colour range (default: the 2nd-98th percentile of the drawn scores; 0 to the 98th
        for distances; symmetric for z-scores).
    colorbar, legend
        Draw a colorbar; a legend naming the missing pixels and the mask.
    title
        Axes title (default: the periods compared, or the period drawn).
    attribution
        The data credit of the caption (see :func:`caption`).
    **imshow_kwargs
        Passed to :meth:`matplotlib.axes.Axes.imshow`.

    Returns
    -------
    matplotlib.axes.Axes
        The score image is ``ax.images[0]`` (a masked array: missing pixels are masked and
        NaN).

    Examples
    --------
    >>> import xsky  # doctest: +SKIP
    >>> out = xsky.change(emb, "2018", "2020")  # doctest: +SKIP
    >>> ax = xsky.plot.change_map(out, mask=xsky.threshold(out), min_count=3)  # doctest: +SKIP
    """
    _pyplot()  # matplotlib, or an error naming the extra to install
    if mask_style not in _MASK_STYLES:
        raise ArgumentError(f"mask_style={mask_style!r}; choose one of "
                            f"{format_choices(_MASK_STYLES)}")
    score, count = _change_parts(result, variable)
    full = score
    if min_count is None:
        raw = score.attrs.get("change_min_count", 1)
        min_count = int(raw) if isinstance(raw, int | np.integer) else 1
    elif isinstance(min_count, bool) or not isinstance(min_count, int | np.integer) \
            or min_count < 0:
        raise ArgumentError(f"min_count must be a non-negative integer, got {min_count!r}")
    over = _as_mask(mask, full) if mask is not None else None

    tdim = next((d for d in _TIME_DIMS if d in score.dims), None)
    when = None
    if tdim is not None:
        score = _select_time(score, tdim, time)
        when = score[tdim].values
        if count is not None and tdim in count.dims:
            count = count.sel({tdim: when})
        if over is not None and tdim in over.dims:
            over = over.sel({tdim: when})
    ydim, xdim = spatial_dims(score)
    extra = [d for d in score.dims if d not in (ydim, xdim)]
    if extra:
        raise DimensionError(f"the score has dims {tuple(score.dims)}; expected ([time,] "
                             f"{ydim}, {xdim}): select the others first")
    score = score.transpose(ydim, xdim)
    parts: list[Any] = [score]
    if count is not None:
        parts.append(count.transpose(ydim, xdim))
    if over is not None:
        if set(over.dims) != {ydim, xdim} or any(over.sizes[d] != score.sizes[d]
                                                 for d in (ydim, xdim)):
            raise DimensionError(
                f"mask= has dims {dict(over.sizes)} but the score has {dict(score.sizes)}; "
                "pass the mask of the same result (xsky.threshold(result))"
            )
        parts.append(over.transpose(ydim, xdim))
        if "valid" in over.coords:
            parts.append(over.coords["valid"].transpose(ydim, xdim))
    done = _compute(*parts)
    s = np.asarray(done[0].values, np.float64)
    c = np.asarray(done[1].values) if count is not None else None
    missing = ~np.isfinite(s)
    if c is not None:
        missing |= c < min_count
    img = np.ma.masked_array(np.where(missing, np.nan, s), mask=missing)

    zscore = str(score.name) == "zscore"
    good = s[~missing]
    if cmap is None:
        cmap = "RdBu_r" if zscore else "magma"
    if good.size:
        if zscore:
            lim = float(np.percentile(np.abs(good), 98)) or 1.0
            lo, hi = -lim, lim
        else:
            lo = 0.0 if good.min() >= 0 else float(np.percentile(good, 2))
            hi = float(np.percentile(good, 98))
            if hi <= lo:
                hi = lo + 1e-6
    else:
        lo, hi = 0.0, 1.0
    vmin = lo if vmin is None else vmin
    vmax = hi if vmax is None else vmax

    ax, im, yv, xv = _scalar_map(ax, score, ydim, xdim, img, missing, cmap, vmin, vmax,
                                 **imshow_kwargs)
    handles = []
    if missing.any():
        if c is None or min_count == 0:
            what = "no score (NaN)"
        elif min_count == 1:
            what = "no valid observation"
        else:
            what = f"fewer than {min_count} valid observations"
        handles.append(_missing_handle(f"missing: {what} ({int(missing.sum())} px)"))
    if over is not None:
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch

        m = np.asarray(done[2].values, bool)
        if "valid" in over.coords:
            m &= np.asarray(done[3].values, bool)
        m &= ~missing
        thr = over.coords.get("threshold")
        label = "change mask"
        if thr is not None:
            method = over.attrs.get("threshold_method")
            label = f"change > {float(thr):.3g}" + (f" ({method})" if method else "")
        label += f" ({int(m.sum())} px)"
        colour = "#00e5ff"
        if mask_style == "contour":
            if m.any():
                xs, ys, mm = _pixel_grid(m, yv, xv)
                cs = ax.contour(xs, ys, mm, levels=[0.5], colors=[colour], linewidths=1.3)
                cs.set_gid("xsky-change-mask")
            handles.append(Line2D([], [], color=colour, linewidth=1.3, label=label))
        else:
            rgba = np.zeros((*m.shape, 4))
            rgba[m] = (0.0, 0.9, 1.0, 0.45)
            overlay = _show(ax, rgba, yv, xv)
            overlay.set_gid("xsky-change-mask")
            handles.append(Patch(facecolor=(0.0, 0.9, 1.0, 0.45), label=label))
    if colorbar:
        cb = ax.figure.colorbar(im, ax=ax, shrink=0.85, pad=0.02)
        cb.set_label(_score_label(score), fontsize="small")
    if title is None:
        if "change_target" in score.attrs and tdim is None:
            title = (f"change {_span(score.attrs.get('change_ref'))} → "
                     f"{_span(score.attrs['change_target'])}")
        elif when is not None:
            title = f"{_score_label(score)}, period {_date_text(when)}"
        else:
            title = _score_label(score)
    _title(ax, title, legend and bool(handles))
    if legend:
        _top_legend(ax, handles)
    _crs_axes(ax, score, ydim, xdim)
    _add_caption(ax, caption(score, attribution))
    return ax


# --------------------------------------------------------------------------------------
# similarity
# --------------------------------------------------------------------------------------


@dataclass
class _Marks:
    """A query's drawable parts in the map's CRS, per role."""

    points: dict[str, list[np.ndarray]]
    rings: dict[str, list[np.ndarray]]

    def add_points(self, role: str, x: np.ndarray, y: np.ndarray) -> None:
        self.points.setdefault(role, []).append(np.column_stack([x, y]))

    def add_ring(self, role: str, xy: np.ndarray) -> None:
        self.rings.setdefault(role, []).append(xy)


class _QueryDrawer:
    """Turns a query (any form :func:`xsky.similar` takes) into marks in the map's CRS."""

    def __init__(self, dst: Any, crs: Any) -> None:
        self.dst = dst
        self.crs = crs
        self.marks = _Marks({}, {})

    def _to_map(self, x: np.ndarray, y: np.ndarray, src: Any, what: str
                ) -> tuple[np.ndarray, np.ndarray]:
        from .api.sampling import transform_xy

        if src is not None and self.dst is None:
            raise CRSError(
                f"{what} is in {src.to_string()} but the map has no CRS to draw it in; write "
                "the map's CRS (obj.rio.write_crs(...)) or pass coordinates in its own units"
            )
        return transform_xy(np.asarray(x, np.float64), np.asarray(y, np.float64), src,
                            self.dst)

    def _geoms(self, role: str, geoms: np.ndarray, src: Any, what: str) -> None:
        import shapely

        from .api.similarity import _MULTIPOINT, _POINT

        for geom in geoms:
            if shapely.get_type_id(geom) in (_POINT, _MULTIPOINT):
                parts = shapely.get_parts(geom)
                x, y = self._to_map(shapely.get_x(parts), shapely.get_y(parts), src, what)
                self.marks.add_points(role, x, y)
                continue
            for poly in shapely.get_parts(geom):  # Polygon, MultiPolygon
                for ring in (poly.exterior, *poly.interiors):
                    xy = np.asarray(ring.coords, np.float64)
                    x, y = self._to_map(xy[:, 0], xy[:, 1], src, what)
                    self.marks.add_ring(role, np.column_stack([x, y]))

    def add(self, role: str, item: Any, what: str) -> None:
        from .api.similarity import query_parts

        if item is None:
            return
        for part in query_parts(item, self.crs, what):
            if part.kind == "points":
                assert part.x is not None and part.y is not None
                x, y = self._to_map(part.x, part.y, part.src, part.what)
                self.marks.add_points(role, x, y)
            elif part.kind == "geometries":
                assert part.geoms is not None
                self._geoms(role, part.geoms, part.src, part.what)
            # a vector has no place on the map


def _query_marks(query: Any, dst: Any, crs: Any) -> _Marks:
    from .api.similarity import Examples, _as_examples

    drawer = _QueryDrawer(dst, crs)
    if isinstance(query, Mapping):
        query = _as_examples(query)
    if isinstance(query, Examples):
        for role, items in (("positive", query.positive), ("negative", query.negative)):
            for i, item in enumerate(items):
                drawer.add(role, item, f"{role}[{i}]")
    elif query is not None:
        drawer.add("query", query, "the query")
    return drawer.marks


_ROLE_STYLE: dict[str, dict[str, Any]] = {
    "query": {"marker": "*", "color": "white", "size": 13, "label": "query"},
    "positive": {"marker": "P", "color": "white", "size": 10, "label": "positive examples"},
    "negative": {"marker": "X", "color": "#ff3b30", "size": 10, "label": "negative examples"},
}


def _top_rows(top: Any, dst: Any, when: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``x, y`` (map CRS) and rank of the top-k rows at the date drawn."""
    from .api.sampling import is_geo, transform_xy

    if not isinstance(top, pd.DataFrame):
        raise ArgumentError(f"top= must be the table of xsky.similar(..., k=...), got "
                            f"{type(top).__name__}")
    rows = top
    if when is not None and "time" in rows.columns:
        rows = rows[pd.DatetimeIndex(rows["time"]) == pd.Timestamp(when)]
    rank = np.asarray(rows.index if rows.index.name == "rank" else np.arange(1, len(rows) + 1))
    if is_geo(rows) and getattr(rows, "crs", None) is not None:
        import shapely

        g = np.asarray(rows.geometry, dtype=object)
        x, y = transform_xy(shapely.get_x(g), shapely.get_y(g), rows.crs, dst)
    elif {"x", "y"} <= set(rows.columns):
        x, y = np.asarray(rows["x"], np.float64), np.asarray(rows["y"], np.float64)
    else:
        raise DimensionError(f"top= has columns {list(rows.columns)}; expected the table of "
                             "xsky.similar(..., k=...) (x/y columns or point geometries)")
    return np.asarray(x), np.asarray(y), rank


def similarity_map(
    sim: xr.DataArray,
    query: Any = None,
    ax: Any = None,
    *,
    top: Any = None,
    time: Any = None,
    crs: Any = None,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar: bool = True,
    legend: bool = True,
    title: str | None = None,
    attribution: Any = None,
    **imshow_kwargs: Any,
) -> Any:
    """Draw a similarity map with the query marked on it, in the cube's CRS.

    Parameters
    ----------
    sim
        The ``similarity`` map of :func:`xsky.similar` (dims ``([time,] y, x)``); computed
        here (the selected date). NaN pixels (no valid embedding) are hatched.
    query
        The query given to :func:`xsky.similar`, drawn on the map: points as stars;
        :class:`xsky.Examples` (or ``{"positive": ..., "negative": ...}``) as positives
        (white plus) and negatives (red cross); polygons outlined. Coordinates follow
        :func:`xsky.similar`'s rules: bare coordinates in ``crs`` or the map's CRS,
        ``lon``/``lat`` columns in degrees, a GeoDataFrame in its own CRS; they are drawn
        reprojected to the map's CRS. Vectors are not drawn.
    ax
        Matplotlib axes to draw on (a new figure when None).
    top
        The table of ``xsky.similar(..., k=...)``: its pixels at the drawn date are circled
        (the ten best numbered by rank).
    time
        For a map with a time axis, the date to draw (integer position or label, nearest);
        needed when there are several.
    crs
        The CRS of the query's bare coordinates (as passed to :func:`xsky.similar`).
    cmap, vmin, vmax
        Colours (default range: the 2nd percentile of the map to its maximum).
    colorbar, legend
        Draw a colorbar; a legend of the query marks.
    title
        Axes title (default: "cosine similarity", the date, and the query's description
        from ``sim.attrs["query"]``).
    attribution
        The data credit of the caption (see :func:`caption`).
    **imshow_kwargs
        Passed to :meth:`matplotlib.axes.Axes.imshow`.

    Returns
    -------
    matplotlib.axes.Axes
        The map is ``ax.images[0]``; the marks are lines labelled ``"query"``,
        ``"positive examples"``, ``"negative examples"`` and ``"top k"``.

    Examples
    --------
    >>> import xsky  # doctest: +SKIP
    >>> query = xsky.Examples(positive=[(x1, y1), (x2, y2)], negative=[(x3, y3)])  # doctest: +SKIP
    >>> sim = xsky.similar(emb, query, time="2020-07-01")  # doctest: +SKIP
    >>> top = xsky.similar(emb, query, time="2020-07-01", k=20)  # doctest: +SKIP
    >>> ax = xsky.plot.similarity_map(sim, query, top=top, time="2020-07-01")  # doctest: +SKIP
    """
    _pyplot()  # matplotlib, or an error naming the extra to install
    from matplotlib import patheffects
    from matplotlib.lines import Line2D

    if not isinstance(sim, xr.DataArray):
        raise ArgumentError(f"similarity_map draws the DataArray of xsky.similar, got "
                            f"{type(sim).__name__} (with k=, xsky.similar returns the top-k "
                            "table: pass it as top= with the map)")
    if "feature" in sim.dims:
        raise DimensionError(f"{sim.name!r} has a 'feature' dimension: it is an embedding; "
                             "compute the map with xsky.similar(emb, query)")
    when = None
    if "time" in sim.dims:
        if time is None:
            if sim.sizes["time"] != 1:
                times = pd.DatetimeIndex(sim["time"].values)
                raise ArgumentError(
                    f"the map has {len(times)} dates ({times[0].date()} .. "
                    f"{times[-1].date()}); say which to draw with time=... (a date or a "
                    "position)"
                )
            time = 0
        sim = _select_time(sim, "time", time)
        when = sim["time"].values
    ydim, xdim = spatial_dims(sim)
    extra = [d for d in sim.dims if d not in (ydim, xdim)]
    if extra:
        raise DimensionError(f"the map has dims {tuple(sim.dims)}; expected ([time,] "
                             f"{ydim}, {xdim})")
    sim = sim.transpose(ydim, xdim)
    (done,) = _compute(sim)
    s = np.asarray(done.values, np.float64)
    missing = ~np.isfinite(s)
    img = np.ma.masked_array(np.where(missing, np.nan, s), mask=missing)
    good = s[~missing]
    if vmin is None:
        vmin = float(np.percentile(good, 2)) if good.size else -1.0
    if vmax is None:
        vmax = float(good.max()) if good.size else 1.0
    if vmax <= vmin:
        vmax = vmin + 1e-6

    dst = _map_crs(sim)
    marks = _query_marks(query, dst, crs)

    ax, im, yv, xv = _scalar_map(ax, sim, ydim, xdim, img, missing, cmap, vmin, vmax,
                                 **imshow_kwargs)
    handles = []
    if missing.any():
        handles.append(_missing_handle(f"missing: no valid embedding ({int(missing.sum())} px)"))
    halo = [patheffects.Stroke(linewidth=3, foreground="black"), patheffects.Normal()]
    for role in ("query", "positive", "negative"):
        style = _ROLE_STYLE[role]
        for i, ring in enumerate(marks.rings.get(role, [])):
            line = ax.plot(ring[:, 0], ring[:, 1], color=style["color"], linewidth=1.5,
                           label=f"{style['label']} (polygon)" if i == 0 else "_nolegend_")[0]
            line.set_path_effects(halo)
            line.set_gid(f"xsky-{role}-polygon")
        pts = marks.points.get(role)
        if pts:
            xy = np.concatenate(pts)
            line = ax.plot(xy[:, 0], xy[:, 1], linestyle="none", marker=style["marker"],
                           markersize=style["size"], markerfacecolor=style["color"],
                           markeredgecolor="black", markeredgewidth=1.0,
                           label=style["label"])[0]
            line.set_gid(f"xsky-{role}")
            handles.append(line)
        if marks.rings.get(role):
            handles.append(Line2D([], [], color=style["color"], linewidth=1.5,
                                  path_effects=halo, label=f"{style['label']} (polygon)"))
    if top is not None:
        tx, ty, rank = _top_rows(top, dst, when)
        n_all = len(top)
        label = f"top {n_all}" + (f" ({len(tx)} at this date)" if len(tx) != n_all else "")
        line = ax.plot(tx, ty, linestyle="none", marker="o", markersize=9,
                       markerfacecolor="none", markeredgecolor="#ff9f1c",
                       markeredgewidth=1.6, label=label)[0]
        line.set_gid("xsky-top")
        handles.append(line)
        for x, y, r in list(zip(tx, ty, rank, strict=True))[:10]:
            ax.annotate(str(r), (x, y), xytext=(4, 4), textcoords="offset points",
                        fontsize="x-small", color="#ff9f1c",
                        path_effects=[patheffects.withStroke(linewidth=2, foreground="black")])
    x0, x1 = _edges(xv)
    y0, y1 = _edges(yv)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    if colorbar:
        cb = ax.figure.colorbar(im, ax=ax, shrink=0.85, pad=0.02)
        cb.set_label("cosine similarity", fontsize="small")
    if title is None:
        title = "cosine similarity" + (f", {_date_text(when)}" if when is not None else "")
        desc = sim.attrs.get("query")
        if desc:
            title += f"\n{desc}"
    _title(ax, title, legend and bool(handles))
    if legend:
        _top_legend(ax, handles)
    _crs_axes(ax, sim, ydim, xdim)
    _add_caption(ax, caption(sim, attribution))
    return ax


# --------------------------------------------------------------------------------------
# PCA false colour
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PCABasis:
    """A PCA colour basis: the first three principal directions and their colour stretch.

    Fitted once (:func:`pca_basis`) and applied to any embedding with the same features, so
    that the same embedding vector gets the same colour on every date, in every tile.

    Attributes
    ----------
    mean
        ``(F,)`` mean of the fitted sample.
    components
        ``(3, F)`` principal directions (rows of zeros when ``F < 3``), each signed so that
        its largest loading is positive (the colours do not flip between runs).
    low, high
        ``(3,)`` the 2nd and 98th percentiles of the sample's projections: mapped to 0 and
        1 (values beyond are clipped).
    n_fit
        Pixels in the fitted sample.
    """

    mean: np.ndarray
    components: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n_fit: int

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])

    def transform(self, values: np.ndarray) -> np.ndarray:
        """``(..., F)`` vectors as ``(..., 3)`` float32 colours in [0, 1]; NaN where any
        feature is not finite."""
        v = np.asarray(values, np.float64)
        if v.shape[-1] != self.n_features:
            raise DimensionError(f"the basis was fitted on {self.n_features} features, the "
                                 f"embedding has {v.shape[-1]}")
        flat = v.reshape(-1, v.shape[-1])
        ok = np.isfinite(flat).all(axis=1)
        proj = np.full((flat.shape[0], 3), np.nan)
        proj[ok] = (flat[ok] - self.mean) @ self.components.T
        span = np.where(self.high > self.low, self.high - self.low, 1.0)
        rgb = np.clip((proj - self.low) / span, 0, 1).astype(np.float32)
        return rgb.reshape(*v.shape[:-1], 3)


def _sample_vectors(emb: xr.DataArray, n_sample: int, seed: int) -> np.ndarray:
    """Up to ``n_sample`` finite vectors of ``(..., feature)`` ``emb`` (features last), from
    at most ``2 n_sample`` random pixels over all its dates: bounded, and the same for lazy
    and in-memory input."""
    arr = emb.data
    shape = tuple(arr.shape[:-1])
    total = int(np.prod(shape))
    rng = np.random.default_rng(seed)
    if total <= 2 * n_sample:
        cand = np.arange(total)
    else:
        cand = np.sort(rng.choice(total, size=2 * n_sample, replace=False))
    idx = np.unravel_index(cand, shape)
    if isinstance(arr, np.ndarray):
        vals = arr[idx]
    else:  # dask: read only the sampled pixels
        vals = np.asarray(arr.vindex[idx].compute())
    vals = np.asarray(vals, np.float64)
    vals = vals[np.isfinite(vals).all(axis=1)]
    if len(vals) > n_sample:
        vals = vals[rng.choice(len(vals), size=n_sample, replace=False)]
    return vals


def _canonical(emb: xr.DataArray) -> xr.DataArray:
    if "feature" not in emb.dims:
        raise DimensionError(f"expected a 'feature' dimension, got dims {emb.dims}")
    others = [d for d in emb.dims if d != "feature"]
    return emb.transpose(*others, "feature")


def pca_basis(emb: xr.DataArray, *, n_sample: int = 20_000, seed: int = 0) -> PCABasis:
    """Fit one PCA colour basis over all pixels and dates of an embedding (a bounded sample).

    Parameters
    ----------
    emb
        Embedding ``(..., y, x, feature)``, any dates (select them first with ``.sel``);
        only the sampled pixels are computed.
    n_sample
        Most pixels in the fit: drawn at random over all dates and pixels (at most
        ``2 n_sample`` pixels are read; those with a non-finite feature are dropped).
    seed
        Seed of the sample.

    Returns
    -------
    PCABasis

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> v = np.random.default_rng(0).normal(size=(2, 4, 5, 8)).astype("float32")
    >>> emb = xr.DataArray(v, dims=("time", "y", "x", "feature"))
    >>> basis = pca_basis(emb)
    >>> basis.components.shape, basis.n_fit
    ((3, 8), 40)
    >>> rgb = basis.transform(emb.values)  # the same colours for the same vectors
    >>> rgb.shape
    (2, 4, 5, 3)
    """
    e = _canonical(emb)
    n_sample = int(n_sample)
    if n_sample < 2:
        raise ArgumentError(f"n_sample must be at least 2, got {n_sample}")
    fit = _sample_vectors(e, n_sample, seed)
    if not len(fit):
        raise DataError("the embedding has no finite pixel to build a preview from (all "
                        "features NaN); select dates with valid pixels")
    nf = fit.shape[1]
    mean = fit.mean(axis=0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    comps = np.zeros((3, nf))
    k = min(3, vt.shape[0])
    comps[:k] = vt[:k]
    for i in range(k):  # a deterministic sign: the largest loading positive
        if comps[i, np.argmax(np.abs(comps[i]))] < 0:
            comps[i] = -comps[i]
    proj = (fit - mean) @ comps.T
    low, high = np.percentile(proj, [2, 98], axis=0)
    return PCABasis(mean, comps, np.asarray(low), np.asarray(high), len(fit))


def _many(time: Any) -> bool:
    return (isinstance(time, slice | list | pd.Index) or (isinstance(time, str)
            and time == "all") or (isinstance(time, np.ndarray) and time.ndim > 0))


def _dates(emb: xr.DataArray, time: Any) -> xr.DataArray:
    if isinstance(time, str):  # "all"
        return emb
    if isinstance(time, slice):
        return emb.sel(time=time)
    values = list(np.asarray(time).tolist()) if not isinstance(time, list) else time
    if all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values):
        return emb.isel(time=[int(v) for v in values])
    return emb.sel(time=np.asarray(pd.to_datetime(values)), method="nearest")


def pca_rgb(emb: xr.DataArray, *, time: Any = None, n_sample: int = 20_000, seed: int = 0,
            basis: PCABasis | None = None) -> xr.DataArray:
    """Project an embedding onto its first three principal components, scaled to [0, 1].

    Parameters
    ----------
    emb
        Embedding ``(..., y, x, feature)``; computed here (this is a plotting helper).
    time
        For per-date embeddings, the dates to show:

        - ``None`` (default): the date with the most valid pixels, one image;
        - a label (nearest date) or integer position: that date, one image;
        - ``"all"``, a slice of dates, or a list of labels/positions: those dates, a
          ``(time, y, x, rgb)`` stack coloured with **one** basis fitted over all of them
          (a bounded sample) and one colour stretch, so that the same colour means the
          same embedding on every date.
    n_sample
        Most pixels used to fit the PCA (a deterministic random subset, see
        :func:`pca_basis`).
    seed
        Seed of that subset.
    basis
        A basis from :func:`pca_basis` to colour with instead of fitting one (e.g. the
        basis of another year or tile, for comparable colours).

    Returns
    -------
    xarray.DataArray
        ``([time,] y, x, rgb)`` float32 in [0, 1]; NaN where the embedding is NaN.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> v = np.random.default_rng(0).normal(size=(3, 4, 5, 8)).astype("float32")
    >>> emb = xr.DataArray(v, dims=("time", "y", "x", "feature"),
    ...                    coords={"time": np.array(["2020-01-01", "2020-02-01", "2020-03-01"],
    ...                                             "datetime64[ns]")})
    >>> pca_rgb(emb, time=0).dims
    ('y', 'x', 'rgb')
    >>> pca_rgb(emb, time="all").dims  # one basis, one stretch for all dates
    ('time', 'y', 'x', 'rgb')
    """
    if "feature" not in emb.dims:
        raise DimensionError(f"expected a 'feature' dimension, got dims {emb.dims}")
    many = False
    if "time" in emb.dims:
        if time is None:
            space = [d for d in emb.dims if d not in ("time", "feature")]
            counts = emb.isel(feature=0).notnull().sum(space).values
            emb = emb.isel(time=int(np.argmax(counts)))
        elif _many(time):
            emb = _dates(emb, time)
            many = True
        elif isinstance(time, int | np.integer):
            emb = emb.isel(time=int(time))
        else:
            emb = emb.sel(time=time, method="nearest")
    elif time is not None:
        raise DimensionError(f"time={time!r} was given but the embedding has no 'time' "
                             f"dimension (dims {emb.dims}); drop time=")
    lead = ["time"] if many else []
    extra = [d for d in emb.dims if d not in ("feature", *lead)]
    if len(extra) != 2:
        raise DimensionError(f"expected (y, x, feature) after selecting a date, got {emb.dims}")
    emb = emb.transpose(*lead, *extra, "feature")
    if basis is None:
        basis = pca_basis(emb, n_sample=n_sample, seed=seed)
    rgb = basis.transform(np.asarray(emb.values))
    coords: dict[Any, Any] = {d: emb[d] for d in (*lead, *extra) if d in emb.coords}
    coords["rgb"] = ["r", "g", "b"]
    for name in ("spatial_ref",):
        if name in emb.coords:
            coords[name] = emb.coords[name]
    out = xr.DataArray(
        rgb, dims=(*lead, *extra, "rgb"), coords=coords, name="pca_rgb",
        attrs={**{k: v for k, v in emb.attrs.items() if k != "grid_mapping"},
               "long_name": "first 3 principal components of the embedding",
               "pca_fit_pixels": basis.n_fit},
    )
    return out


def _rgba(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(y, x, 3)`` colours with NaN as ``(y, x, 4)`` RGBA, missing pixels transparent."""
    missing = ~np.isfinite(rgb).all(axis=-1)
    rgba = np.ones((*rgb.shape[:-1], 4), np.float32)
    rgba[..., :3] = np.nan_to_num(rgb, nan=0.0)
    rgba[missing] = 0.0
    return rgba, missing


def _draw_rgb(ax: Any, rgb: xr.DataArray, nbins: int = 4) -> Any:
    ydim, xdim = (str(d) for d in rgb.dims if d != "rgb")
    yv = np.asarray(rgb[ydim].values, np.float64)
    xv = np.asarray(rgb[xdim].values, np.float64)
    rgba, missing = _rgba(rgb.transpose(ydim, xdim, "rgb").values)
    ax.set_facecolor(_MISSING_FACE)
    im = _show(ax, rgba, yv, xv)
    _hatch(ax, missing, yv, xv)
    _crs_axes(ax, rgb, ydim, xdim, nbins)
    return im


def pca_dates(
    emb: xr.DataArray,
    time: Any = "all",
    *,
    basis: PCABasis | None = None,
    ncols: int = 4,
    size: float = 3.0,
    max_dates: int = 36,
    n_sample: int = 20_000,
    seed: int = 0,
    attribution: Any = None,
) -> Any:
    """A grid of PCA false-colour quick looks, one per date, with one basis and stretch.

    The basis is fitted once over all the dates drawn (a bounded sample, see
    :func:`pca_basis`) unless ``basis`` is given, so colours compare across dates; pixels
    without an embedding (NaN) are hatched on grey, not black.

    Parameters
    ----------
    emb
        Per-date embedding ``(time, y, x, feature)``; the dates drawn are computed.
    time
        The dates (``"all"``, a slice, or a list of labels/positions), as
        :func:`pca_rgb` takes them.
    basis
        A basis from :func:`pca_basis` instead of fitting one.
    ncols, size
        Columns of the grid; size of each panel (inches).
    max_dates
        Most dates drawn (more is refused: select fewer with ``time=``).
    n_sample, seed
        The fit's sample (see :func:`pca_basis`).
    attribution
        The data credit of the caption (see :func:`caption`).

    Returns
    -------
    matplotlib.figure.Figure
        One axes per date (``fig.axes``, titled with the date), a caption (a text with gid
        ``xsky-caption``).

    Examples
    --------
    >>> import xsky  # doctest: +SKIP
    >>> fig = xsky.plot.pca_dates(emb, time=slice("2020-04", "2020-09"))  # doctest: +SKIP
    """
    plt = _pyplot()
    if "time" not in emb.dims:
        raise DimensionError(f"pca_dates needs a 'time' dimension, got dims {emb.dims}; "
                             "draw a single embedding with xsky.plot.plot(emb)")
    if not _many(time):
        time = [time]
    rgb = pca_rgb(emb, time=time, basis=basis, n_sample=n_sample, seed=seed)
    n = rgb.sizes["time"]
    if n > max_dates:
        raise ArgumentError(f"{n} dates selected, more than max_dates={max_dates}; select "
                            "fewer with time=... (a slice or a list) or raise max_dates")
    if n == 0:
        raise DataError(f"time={time!r} selects no date of the embedding")
    ncols = max(1, min(int(ncols), n))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.6),
                             squeeze=False, sharex=True, sharey=True, layout="constrained")
    for i, ax in enumerate(axes.ravel()):
        if i >= n:
            ax.set_axis_off()
            continue
        day = rgb.isel(time=i)
        _draw_rgb(ax, day, nbins=2 if size < 4 else 4)
        ax.set_title(_date_text(day["time"].values), fontsize="small")
        if i % ncols:
            ax.set_ylabel("")
        if i < n - ncols:
            ax.set_xlabel("")
    model = emb.attrs.get("model", "embedding")
    fig.suptitle(f"{model}: first 3 principal components, one basis and stretch for "
                 f"{n} date{'s' if n != 1 else ''}", fontsize="medium")
    text = caption(emb, attribution)
    if text:
        fig.get_layout_engine().set(rect=(0, 0.04, 1, 0.96))
        fig.text(0.01, 0.005, text, ha="left", va="bottom", fontsize="x-small", color="0.3",
                 gid="xsky-caption")
    return fig


# --------------------------------------------------------------------------------------
# dispatcher and previews
# --------------------------------------------------------------------------------------


def plot(obj: xr.Dataset | xr.DataArray, ax: Any = None, **kwargs: Any) -> Any:
    """Draw an xsky result: a change, prototypes or classification map, or an embedding.

    Parameters
    ----------
    obj
        A ``Dataset`` from :func:`xsky.change` (drawn with :func:`change_map`), from
        :func:`xsky.prototypes` or :func:`xsky.classify` (drawn with :func:`prototypes`);
        a ``similarity`` DataArray from :func:`xsky.similar` (:func:`similarity_map`); or
        an embedding ``DataArray`` with a ``feature`` dimension (drawn as :func:`pca_rgb`;
        pass ``time=`` for per-date embeddings; several dates: :func:`pca_dates`).
    ax
        Matplotlib axes to draw on (a new figure when None).
    **kwargs
        Passed to the function that draws it.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import xsky  # doctest: +SKIP
    >>> ax = emb.sky.plot(time=0)  # doctest: +SKIP
    """
    if isinstance(obj, xr.Dataset):
        if any(v in obj.data_vars for v in _SCORES):
            return change_map(obj, ax, **kwargs)
        return prototypes(obj, ax, **kwargs)
    if isinstance(obj, xr.DataArray) and obj.name == "similarity" and "feature" not in obj.dims:
        return similarity_map(obj, ax=ax, **kwargs)
    if isinstance(obj, xr.DataArray) and "feature" in obj.dims:
        plt = _pyplot()
        attribution = kwargs.pop("attribution", None)
        rgb = pca_rgb(obj, **kwargs)
        if "time" in rgb.dims:
            raise ArgumentError(
                f"{rgb.sizes['time']} dates selected; plot draws one: pass one date as "
                "time=..., or draw them all with xsky.plot.pca_dates(emb, time=...)"
            )
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 5))
        _draw_rgb(ax, rgb)
        ax.set_title(f"{obj.attrs.get('model', 'embedding')}: first 3 principal components")
        _add_caption(ax, caption(obj, attribution))
        return ax
    raise ArgumentError(
        f"xsky.plot draws a prototypes Dataset or an embedding DataArray with a 'feature' "
        f"dimension, got {type(obj).__name__}"
        + (f" with dims {obj.dims}" if isinstance(obj, xr.DataArray) else "")
    )


def save_preview(emb: xr.DataArray, path: str | os.PathLike[str], **kwargs: Any) -> str:
    """Write a PCA false-colour PNG of ``emb`` (see :func:`pca_rgb`) and return its path.

    Pixels without an embedding (NaN) are transparent.

    Examples
    --------
    >>> save_preview(emb, "preview.png", time=0)  # doctest: +SKIP
    'preview.png'
    """
    require("matplotlib", "save_preview")
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rgb = pca_rgb(emb, **kwargs)
    if "time" in rgb.dims:
        raise ArgumentError(f"{rgb.sizes['time']} dates selected; a preview shows one: pass "
                            "one date as time=...")
    img, _ = _rgba(rgb.values)
    # enlarge small embeddings (nearest neighbour) so the preview is at least ~512 px wide
    zoom = max(1, 512 // max(img.shape[:2]))
    img = img.repeat(zoom, axis=0).repeat(zoom, axis=1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    plt.imsave(path, img)
    return str(path)
