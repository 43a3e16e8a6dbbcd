"""Multi-modal datacubes: one DataTree node per modality, on one footprint."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from .. import modalities
from ..exceptions import AlignmentError, ArgumentError, DimensionError
from ..geo import get_crs, grid_info, spatial_dims
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

    Returns
    -------
    xarray.DataTree
        Nodes ``s2``, ``s1``, ``hr`` (those given), each with its own time axis.

    Raises
    ------
    ArgumentError
        No modality given, or one that is not an xarray object or STAC items.
    AlignmentError
        HR in another CRS, on another footprint, or not exactly 32x finer (``HR_FACTOR``,
        the table's ``grid_factor``).
    """
    given = {k: v for k, v in {"s2": s2, "s1": s1, "hr": hr}.items() if v is not None}
    if not given:
        raise ArgumentError("stack() needs at least one of s2=, s1=, hr=")
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
                get_crs(nodes[name])
                nodes[name] = _align(nodes[name], ref, resampling).rio.write_crs(crs.to_wkt())
            else:
                _check_finer_grid(nodes[name], name, ref, ref_name,
                                  factor[name] // factor[ref_name], crs)
    return xr.DataTree.from_dict(dict(nodes))


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
