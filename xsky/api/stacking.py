"""Multi-modal datacubes: one DataTree node per modality, on one footprint."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ..exceptions import DimensionError, XSkyError
from ..geo import get_crs, grid_info, spatial_dims
from ..io.bands import canonical_band

__all__ = ["HR_FACTOR", "stack"]

#: HR pixels per Sentinel-2 pixel along each axis (SkySense's Swin stage-4 grid = S2 grid)
HR_FACTOR = 32


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
        raise XSkyError(f"{name}= must be an xarray Dataset, got {type(ds).__name__}")
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
    XSkyError
        No modality given; mismatched CRS/footprint; HR not exactly 32x finer.
    """
    given = {k: v for k, v in {"s2": s2, "s1": s1, "hr": hr}.items() if v is not None}
    if not given:
        raise XSkyError("stack() needs at least one of s2=, s1=, hr=")
    if not all(_is_xarray(v) for v in given.values()):
        from ..io.stac import load_stac

        opts = dict(stac_options or {})
        for name in ("s2", "s1", "hr"):
            if name in given and not _is_xarray(given[name]):
                like = given.get("s2") if name == "s1" and _is_xarray(given.get("s2")) else None
                given[name] = load_stac(given[name], modality=name, like=like, **opts)
    nodes = {k: _canonical(v, k, k) for k, v in given.items()}
    ref_name = "s2" if "s2" in nodes else ("s1" if "s1" in nodes else None)
    if ref_name is not None:
        ref = nodes[ref_name]
        grid_info(ref)
        crs = get_crs(ref)
        if "s1" in nodes and ref_name == "s2":
            get_crs(nodes["s1"])
            nodes["s1"] = _align(nodes["s1"], ref, resampling).rio.write_crs(crs.to_wkt())
        if "hr" in nodes:
            hr_crs = get_crs(nodes["hr"])
            if not hr_crs.equals(crs, ignore_axis_order=True):
                raise XSkyError(
                    "hr= is in a different CRS than s2=; reproject it onto a grid 32x finer "
                    "than the Sentinel-2 grid first (ds.odc.reproject)"
                )
            rb, hb = _bounds(ref), _bounds(nodes["hr"])
            ratio = (rb[4] / hb[4], rb[5] / hb[5])
            tol = 0.5 * hb[4]
            same = all(abs(a - b) <= tol for a, b in zip(rb[:4], hb[:4], strict=True))
            if not same or any(abs(r - HR_FACTOR) > 1e-6 for r in ratio):
                raise DimensionError(
                    f"hr= must be exactly {HR_FACTOR}x finer than s2= on the same footprint; "
                    f"found a pixel-size ratio of {ratio[0]:g} x {ratio[1]:g} and bounds "
                    f"{tuple(round(b, 3) for b in hb[:4])} vs {tuple(round(b, 3) for b in rb[:4])}."
                    f" Resample HR to {rb[4] / HR_FACTOR:g} units per pixel over the S2 footprint"
                )
    return xr.DataTree.from_dict(dict(nodes))
