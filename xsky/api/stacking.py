"""Multi-modal datacubes: one DataTree node per modality, on one footprint."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from .. import modalities
from ..exceptions import AlignmentError, ArgumentError, DimensionError, format_choices
from ..geo import get_crs, grid_info, spatial_dims, write_crs
from ..modalities import canonical_band

__all__ = ["HR_FACTOR", "stack"]

#: HR pixels per Sentinel-2 pixel along each axis (the table's ``grid_factor`` of ``"hr"``)
HR_FACTOR = modalities.get("hr").grid_factor


def _canonical(ds: xr.Dataset | xr.DataArray, modality: str, name: str) -> xr.Dataset:
    if isinstance(ds, xr.DataArray):
        bdim = next((d for d in ("band", "bands", "variable") if d in ds.dims), None)
        if bdim is None or bdim not in ds.coords:
            raise DimensionError(
                f"{name}= is a DataArray without a labelled 'band' dimension; pass a Dataset "
                "with one variable per band"
            )
        valid = ds.coords.get("valid")
        ds = ds.drop_vars("valid", errors="ignore").to_dataset(dim=bdim)
        if valid is not None:
            ds["valid"] = valid
    if not isinstance(ds, xr.Dataset):
        raise ArgumentError(f"{name}= must be an xarray Dataset, got {type(ds).__name__}")
    renames = {}
    for v in ds.data_vars:
        if v == "valid":
            continue
        c = canonical_band(str(v), modality)
        if c != v and c not in ds.data_vars:
            renames[v] = c
    return ds.rename(renames)


def _bounds(ds: xr.Dataset) -> tuple[float, float, float, float, float, float]:
    g = grid_info(ds)
    x_lo = min(g.x0, g.x0 + (g.nx - 1) * g.dx) - abs(g.dx) / 2
    x_hi = max(g.x0, g.x0 + (g.nx - 1) * g.dx) + abs(g.dx) / 2
    y_lo = min(g.y0, g.y0 + (g.ny - 1) * g.dy) - abs(g.dy) / 2
    y_hi = max(g.y0, g.y0 + (g.ny - 1) * g.dy) + abs(g.dy) / 2
    return x_lo, y_lo, x_hi, y_hi, abs(g.dx), abs(g.dy)


def _align(src: xr.Dataset, ref: xr.Dataset, resampling: str) -> xr.Dataset:
    """Put ``src`` on ``ref``'s pixel grid (lazy with dask), keeping ``valid`` boolean."""
    import odc.geo.xr  # noqa: F401  (registers .odc)

    gbox = ref.odc.geobox
    if src.odc.geobox == gbox:
        return src
    out = xr.Dataset(coords={k: v for k, v in src.coords.items() if "time" in v.dims})
    for v in src.data_vars:
        da = src[v]
        if v == "valid":
            f = da.astype("float32").odc.reproject(gbox, resampling="nearest", dst_nodata=0)
            out[v] = f > 0.5
        else:
            out[v] = da.astype("float32").odc.reproject(gbox, resampling=resampling,
                                                       dst_nodata=np.nan)
            out[v].attrs = da.attrs
    ydim, xdim = spatial_dims(ref)
    out = out.rename({d: n for d, n in zip(spatial_dims(out), (ydim, xdim), strict=True)
                      if d != n})
    return out.assign_coords({ydim: ref[ydim].values, xdim: ref[xdim].values})


def _is_xarray(obj: object) -> bool:
    return isinstance(obj, (xr.Dataset, xr.DataArray))


def stack(
    s2: Any = None,
    s1: Any = None,
    hr: Any = None,
    *,
    resampling: str = "bilinear",
    stac_options: dict[str, Any] | None = None,
    **layers: Any,
) -> xr.DataTree:
    """Combine modalities into one DataTree on the Sentinel-2 grid.

    Parameters
    ----------
    s2
        Sentinel-2 cube ``(time, y, x)``: one variable per band (aliases resolved), optional
        boolean ``valid``. It defines the reference grid.
    s1
        Sentinel-1 cube (``VV``, ``VH``; dB or linear with ``attrs["units"]``); resampled
        lazily onto the S2 grid when its grid differs (odc-geo, ``resampling``).
    hr
        High-resolution RGB cube; must lie on a grid exactly 32x finer than S2 over the same
        footprint (SkySense's HR stage-4 grid is the S2 grid). It is checked, never resampled.
    resampling
        Resampling used to align S1 (``"bilinear"``, ``"nearest"``, ...).
    stac_options
        Any modality may also be given as STAC items (anything :func:`xsky.load_stac`
        reads); they are loaded with these options, S2 first, then S1 ``like=`` the S2 cube,
        so S1 lands on the S2 grid directly.
    **layers
        Further modalities of the table (:func:`xsky.modalities.names`), e.g. ``era5=``,
        ``srtm=``, ``dw=`` for Presto: aligned onto the reference grid like S1 (class labels
        such as Dynamic World with nearest-neighbour resampling).

    Returns
    -------
    xarray.DataTree
        One node per modality given (``s2``, ``s1``, ``hr``, ...), each with its own time
        axis.

    Raises
    ------
    ArgumentError
        No modality given, or one that is not an xarray object or STAC items.
    AlignmentError
        A modality whose footprint does not overlap the reference grid at all (one covering
        less than half of it only warns, naming the fraction covered); HR in another CRS,
        on another footprint, or not exactly 32x finer (``HR_FACTOR``, the table's
        ``grid_factor``).
    """
    unknown = [k for k in layers if k not in modalities.names()]
    if unknown:
        raise ArgumentError(
            f"stack() got {unknown[0]}=, which is not a modality xsky knows; use one of "
            f"{format_choices(modalities.names())} (add one with "
            "xsky.modalities.register_modality)"
        )
    given = {k: v for k, v in {"s2": s2, "s1": s1, "hr": hr, **layers}.items()
             if v is not None}
    if not given:
        raise ArgumentError("stack() needs at least one of s2=, s1=, hr= (or another modality)")
    factor = {k: modalities.get(k).grid_factor for k in given}
    # the reference grid: the first modality given that lies on the Sentinel-2 grid
    ref_name = next((k for k in given if factor[k] == 1), None)
    if not all(_is_xarray(v) for v in given.values()):
        from ..io.stac import load_stac

        opts = dict(stac_options or {})
        order = sorted(given, key=lambda k: k != ref_name)  # the reference first
        for name in order:
            if not _is_xarray(given[name]):
                ref_obj = given.get(ref_name) if ref_name is not None else None
                like = (ref_obj if name != ref_name and factor[name] == 1
                        and _is_xarray(ref_obj) else None)
                given[name] = load_stac(given[name], modality=name, like=like, **opts)
    nodes = {k: _canonical(v, k, k) for k, v in given.items()}
    if ref_name is not None:
        ref = nodes[ref_name]
        grid_info(ref)
        crs = get_crs(ref)
        for name in list(nodes):
            if name == ref_name:
                continue
            if factor[name] == factor[ref_name]:
                # same pixel size: resampled lazily onto the reference grid
                _check_overlap(nodes[name], name, ref, ref_name)
                how = modalities.get(name).resampling or resampling
                nodes[name] = write_crs(_align(nodes[name], ref, how), crs)
            else:
                _check_finer_grid(nodes[name], name, ref, ref_name,
                                  factor[name] // factor[ref_name], crs)
    return xr.DataTree.from_dict(dict(nodes))


#: below this fraction of the reference grid covered, stack() warns
MIN_COVER = 0.5


def _check_overlap(node: xr.Dataset, name: str, ref: xr.Dataset, ref_name: str) -> float:
    """The fraction of ``ref``'s footprint that ``node``'s footprint covers (from the bounds
    and CRSs, not from pixel values). Refuses no overlap, warns below :data:`MIN_COVER`."""
    import warnings

    from pyproj import Transformer

    src_crs, ref_crs = get_crs(node), get_crs(ref)
    nb, rb = _bounds(node)[:4], _bounds(ref)[:4]
    box: tuple[float, ...]
    if src_crs.equals(ref_crs, ignore_axis_order=True):
        box = nb
    else:
        tr = Transformer.from_crs(src_crs, ref_crs, always_xy=True)
        try:
            box = tuple(tr.transform_bounds(*nb, densify_pts=21))
        except Exception:  # pyproj raises when the footprint cannot be projected at all
            box = (np.nan,) * 4
    if not all(np.isfinite(box)):
        raise AlignmentError(
            f"{name}= footprint {tuple(round(b, 3) for b in nb)} (in {src_crs.to_string()}) "
            f"cannot be placed in the CRS of {ref_name}= ({ref_crs.to_string()}); crop or "
            f"reproject {name}= to the {ref_name}= area first"
        )
    w = min(box[2], rb[2]) - max(box[0], rb[0])
    h = min(box[3], rb[3]) - max(box[1], rb[1])
    area = (rb[2] - rb[0]) * (rb[3] - rb[1])
    frac = max(w, 0.0) * max(h, 0.0) / area if area > 0 else 0.0
    where = (f"{name}= covers {tuple(round(b, 1) for b in box)} and {ref_name}= covers "
             f"{tuple(round(b, 1) for b in rb)} (x/y bounds in {ref_crs.to_string()})")
    if frac <= 0.0:
        raise AlignmentError(
            f"{name}= does not overlap the {ref_name}= grid at all: {where}; its pixels would "
            f"all be NaN. Give a {name}= cube (or STAC items) over the same area as {ref_name}="
        )
    if frac < MIN_COVER:
        warnings.warn(
            f"{name}= covers only {frac:.0%} of the {ref_name}= grid ({where}); the rest of "
            f"the {name} node is NaN (masked). Give a {name}= cube over the whole "
            f"{ref_name}= area, or crop {ref_name}= to the common area",
            UserWarning, stacklevel=3,
        )
    return float(frac)


def _check_finer_grid(
    node: xr.Dataset, name: str, ref: xr.Dataset, ref_name: str, f: int, crs: Any
) -> None:
    """A finer modality must lie exactly ``f`` times finer than the reference on its footprint
    (it is checked, never resampled)."""
    if not get_crs(node).equals(crs, ignore_axis_order=True):
        raise AlignmentError(
            f"{name}= is in a different CRS than {ref_name}=; reproject it onto a grid {f}x "
            f"finer than the {ref_name}= grid first (ds.odc.reproject)"
        )
    rb, hb = _bounds(ref), _bounds(node)
    ratio = (rb[4] / hb[4], rb[5] / hb[5])
    tol = 0.5 * hb[4]
    same = all(abs(a - b) <= tol for a, b in zip(rb[:4], hb[:4], strict=True))
    if not same or any(abs(r - f) > 1e-6 for r in ratio):
        raise AlignmentError(
            f"{name}= must be exactly {f}x finer than {ref_name}= on the same footprint; "
            f"found a pixel-size ratio of {ratio[0]:g} x {ratio[1]:g} and bounds "
            f"{tuple(round(b, 3) for b in hb[:4])} vs {tuple(round(b, 3) for b in rb[:4])}."
            f" Resample {name.upper()} to {rb[4] / f:g} units per pixel over the "
            f"{ref_name.upper()} footprint"
        )
