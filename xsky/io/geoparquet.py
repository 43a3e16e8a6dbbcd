"""GeoParquet export of point tables (samples, top-k results), with the CRS kept.

geopandas and pyarrow are optional dependencies: they are imported on first use, and a
clear error names what to install when they are missing.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

from ..exceptions import ArgumentError, CRSError, DimensionError, MissingDependencyError
from .store import atomic_file

__all__ = ["require_geopandas", "to_geoparquet"]

_LON_NAMES = ("lon", "longitude", "lng", "long")
_LAT_NAMES = ("lat", "latitude")


def require_geopandas(what: str = "this feature") -> ModuleType:
    """Import geopandas, or raise a :class:`MissingDependencyError` saying how to get it."""
    try:
        import geopandas
    except ImportError as err:
        raise MissingDependencyError(
            f"{what} needs the optional dependency 'geopandas', which is not installed; "
            "install it with `pip install geopandas pyarrow` (the 'geo' extra: "
            "`pip install 'xsky[geo]'`)"
        ) from err
    return geopandas


def _crs(value: Any) -> Any:
    from pyproj import CRS

    return CRS.from_user_input(value)


def _as_geodataframe(df: Any, crs: Any) -> Any:
    gpd = require_geopandas("GeoParquet export")
    import pandas as pd

    if isinstance(df, gpd.GeoDataFrame):
        if df.crs is None and crs is None:
            raise CRSError("the GeoDataFrame has no CRS; set it with gdf.set_crs(...) or pass "
                           "crs=... so the file records where its points are")
        if crs is not None:
            if df.crs is not None and df.crs != _crs(crs):
                raise CRSError(f"the GeoDataFrame has CRS {df.crs.to_string()} but crs={crs!r} "
                               "was given; drop crs= or reproject with gdf.to_crs(...)")
            df = df.set_crs(crs, allow_override=True)
        return df
    if not isinstance(df, pd.DataFrame):
        raise ArgumentError(f"to_geoparquet needs a (Geo)DataFrame, got {type(df).__name__}")
    lower = {str(c).lower(): c for c in df.columns}
    lon = next((lower[n] for n in _LON_NAMES if n in lower), None)
    lat = next((lower[n] for n in _LAT_NAMES if n in lower), None)
    if "x" in lower and "y" in lower:
        if crs is None:
            raise CRSError(
                "the table has x/y columns but no CRS is known for them; pass crs=... (the "
                "cube's, e.g. crs=emb.rio.crs)"
                + (", or drop x/y to use the lon/lat columns" if lon is not None else "")
            )
        geom = gpd.points_from_xy(df[lower["x"]], df[lower["y"]])
        return gpd.GeoDataFrame(df, geometry=geom, crs=crs)
    if lon is not None and lat is not None:
        geom = gpd.points_from_xy(df[lon], df[lat])
        return gpd.GeoDataFrame(df, geometry=geom, crs=crs or "EPSG:4326")
    raise DimensionError(
        f"cannot find point coordinates in the columns {list(df.columns)}; pass a "
        "GeoDataFrame, or a DataFrame with lon/lat (degrees) or x/y columns (with crs=)"
    )


def to_geoparquet(df: Any, path: str | os.PathLike[str], *, crs: Any = None,
                  overwrite: bool = False) -> Path:
    """Write a table of points as GeoParquet, keeping its CRS.

    Parameters
    ----------
    df
        A GeoDataFrame (e.g. ``xsky.similar(emb, q, k=10)``), or a DataFrame with ``lon``/
        ``lat`` columns (degrees, EPSG:4326) or ``x``/``y`` columns (with ``crs``), such
        as the output of :func:`xsky.sample` on a DataFrame. Its index is written too.
    path
        The ``.parquet`` file to write.
    crs
        The CRS of ``x``/``y`` columns, or of a GeoDataFrame without one.
    overwrite
        Replace an existing file (it is otherwise refused). The file is written beside
        the target and moved into place, so a failed write leaves no partial file.

    Returns
    -------
    pathlib.Path
        The file written; read it back with ``geopandas.read_parquet(path)``.

    Examples
    --------
    >>> import pandas as pd, tempfile, os
    >>> df = pd.DataFrame({"lon": [25.0], "lat": [45.5], "score": [0.9]})
    >>> p = to_geoparquet(df, os.path.join(tempfile.mkdtemp(), "top.parquet"))  # doctest: +SKIP
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise ArgumentError(f"{str(target)!r} exists; pass overwrite=True to replace it")
    if target.is_dir():
        raise ArgumentError(f"{str(target)!r} is a directory, not a file")
    gdf = _as_geodataframe(df, crs)
    try:
        import pyarrow  # noqa: F401
    except ImportError as err:
        raise MissingDependencyError(
            "GeoParquet export needs the optional dependency 'pyarrow', which is not "
            "installed; install it with `pip install pyarrow` (the 'geo' extra)"
        ) from err
    with atomic_file(target) as tmp:
        gdf.to_parquet(tmp)
    return target
