"""SatCLIP location embeddings of datacubes and point tables.

:func:`location_embed` gives every pixel (or every ``stride`` x ``stride`` cell) of a cube the
location embedding of its centre, with longitude/latitude taken from the cube's own CRS. The
result is lazy and chunk-aligned with the input. The dask graph carries a small
:class:`~xsky.models.LocationRef` (checkpoint path + digest), never the weights: each process
loads the encoder once into the runtime cache (:mod:`xsky.runtime.cache`).

:func:`location_embed_points` embeds tables of points (arrays or a pandas DataFrame).

This module is the xarray-facing layer; the array core is :mod:`xsky.engine.location`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import xarray as xr

from .. import _coerce
from .._version import __version__
from ..exceptions import (
    AlignmentError,
    ArgumentError,
    CheckpointError,
    DataError,
    DimensionError,
    format_choices,
)
from ..geo import get_crs, grid_info, spatial_dims, write_crs
from ..models.spec import LocationRef
from .sampling import is_geo

if TYPE_CHECKING:
    from ..models.satclip import LocationEncoder

__all__ = ["location_embed", "location_embed_points", "resolve_location_encoder"]

_DEFAULT_CHUNK = 1024  # output pixels per side when the input is not chunked


# --------------------------------------------------------------------------------------
# Resolving what the user passed
# --------------------------------------------------------------------------------------


def resolve_location_encoder(
    model: Any, *, weights: Any = None, trust: bool = False
) -> tuple[LocationRef, LocationEncoder]:
    """Turn what a user passes as a location model into a cached encoder and its reference.

    Parameters
    ----------
    model
        A :class:`~xsky.models.satclip.LocationEncoder`; a path to a SatCLIP ``.ckpt``; a
        registered ``satclip-*`` name (with ``weights=``); or a SatCLIP image model built
        with weights (its checkpoint holds the location encoder too).
    weights
        Checkpoint path when ``model`` is a model name.
    trust
        Allow full unpickling of a checkpoint that needs it (only for trusted files).
    """
    from ..models.satclip import SATCLIP_MODELS, LocationEncoder, SatCLIPImageEncoder
    from ..runtime.cache import load_location_encoder, put_location_encoder

    name: str | None = None
    if isinstance(model, SatCLIPImageEncoder):
        if model.checkpoint_path is None:
            raise ArgumentError(
                f"{model.spec.name} was built without weights, so it has no location encoder; "
                f"create it with create_model({model.spec.name!r}, weights=<.ckpt>)"
            )
        name, model = model.spec.name, model.checkpoint_path
    if isinstance(model, str) and model in SATCLIP_MODELS:
        if weights is None:
            raise ArgumentError(
                f"location embeddings with {model!r} need its checkpoint: pass weights=<path to "
                f"{model}.ckpt> (xsky.models.satclip.download_checkpoint({model!r}) fetches it "
                "once and caches it)"
            )
        name, model = model, weights
    elif weights is not None:
        raise ArgumentError(
            "weights= is only used with a satclip-* model name; pass the checkpoint path (or a "
            "LocationEncoder) as the model instead"
        )
    if isinstance(model, LocationEncoder):
        enc = model
        if enc.training:
            raise ArgumentError(
                "the LocationEncoder is in training mode, where dropout makes outputs random; "
                "call encoder.eval() first"
            )
        digest = put_location_encoder(enc, snapshot=True)
        path = enc.source_path if enc.unchanged_since_load else None
        ref = LocationRef(digest, path, trust, name or f"satclip-location-l{enc.legendre_polys}",
                          enc.legendre_polys, enc.embed_dim,
                          enc.source_sha256 if path else None)
        return ref, enc
    if isinstance(model, str | os.PathLike):
        p = Path(model).expanduser()
        if not p.is_file():
            raise ArgumentError(
                f"location model {str(model)!r} is neither a file nor a SatCLIP model name; pass "
                f"a .ckpt path, a LocationEncoder, or one of {format_choices(SATCLIP_MODELS)} "
                "with weights="
            )
        enc, digest = load_location_encoder(p, trust)
        if name is not None and f"-l{enc.legendre_polys}" not in name:
            raise CheckpointError(
                f"{str(p)!r} holds an L={enc.legendre_polys} location encoder but the model "
                f"name {name!r} says otherwise; use the matching satclip-*-l"
                f"{enc.legendre_polys} name"
            )
        ref = LocationRef(digest, str(p.resolve()), trust,
                          name or f"satclip-location-l{enc.legendre_polys}",
                          enc.legendre_polys, enc.embed_dim, enc.source_sha256)
        return ref, enc
    raise ArgumentError(
        f"cannot use a {type(model).__name__} as a location model; pass a LocationEncoder, a "
        f"SatCLIP .ckpt path, or one of {format_choices(SATCLIP_MODELS)} with weights="
    )


# --------------------------------------------------------------------------------------
# Datacubes
# --------------------------------------------------------------------------------------


def _input_chunks(obj: Any, dim: str) -> tuple[int, ...] | None:
    chunks = obj.chunksizes if isinstance(obj, xr.Dataset | xr.DataArray) else {}
    got = chunks.get(dim) if chunks else None
    return tuple(int(c) for c in got) if got else None


def _as_spatial(obj: Any) -> xr.DataArray | xr.Dataset:
    if isinstance(obj, xr.DataArray | xr.Dataset):
        return obj
    if isinstance(obj, xr.DataTree):
        for node in obj.subtree:
            ds = node.to_dataset(inherit=True)
            try:
                spatial_dims(ds)
            except DimensionError:
                continue
            return ds
        raise DimensionError(
            "no node of the DataTree has spatial dims 'y' and 'x'; pass the node to embed, "
            "e.g. tree['s2']"
        )
    raise ArgumentError(
        f"location_embed needs an xarray DataArray, Dataset or DataTree, got "
        f"{type(obj).__name__}"
    )


def location_embed(
    obj: Any,
    model_or_ckpt: Any,
    *,
    stride: int = 1,
    weights: Any = None,
    dtype: Any = "float64",
    chunks: Any = None,
    trust: bool = False,
    name: str = "location_embedding",
) -> xr.DataArray:
    """SatCLIP location embeddings of every pixel (or ``stride`` cell) of a datacube.

    Longitude and latitude of each output cell centre come from the cube's x/y coordinates
    and CRS; the location encoder maps them to ``embed_dim`` features. Nothing is computed
    here: the result is a lazy dask array chunked like the input (divided by ``stride``).

    Parameters
    ----------
    obj
        DataArray, Dataset (or DataTree) with regular ``y``/``x`` coordinates and a CRS
        (``obj.rio.crs``); only coordinates are read, never pixel values.
    model_or_ckpt
        A :class:`~xsky.models.satclip.LocationEncoder`, a path to a SatCLIP ``.ckpt``, a
        SatCLIP image model created with weights, or a ``satclip-*`` name with ``weights=``.
    stride
        Output cell size in input pixels; each cell gets the embedding of its centre.
    weights
        Checkpoint path when ``model_or_ckpt`` is a model name.
    dtype
        ``"float64"`` (default, the official precision) or ``"float32"``.
    chunks
        Output chunk size in output pixels (int or ``{"y": n, "x": n}``). By default the
        input's spatial chunks divided by ``stride`` (1024 for an unchunked input).
    trust
        Allow full unpickling of a checkpoint that needs it (only for files you trust).
    name
        Name of the result.

    Returns
    -------
    xarray.DataArray
        ``(y, x, feature)``, lazy, pixel-centre coordinates at the stride, the input's CRS
        (``result.rio.crs``), attrs: model, legendre_polys, weights_sha256, xsky_version,
        stride.

    Raises
    ------
    DimensionError
        ``obj`` has no regular ``y``/``x`` coordinates.
    CRSError
        ``obj`` has no CRS (set one with ``obj.rio.write_crs(...)``).

    Examples
    --------
    >>> import numpy as np, rioxarray, xarray as xr
    >>> from xsky.models.satclip import LocationEncoder
    >>> enc = LocationEncoder(legendre_polys=10, capacity=16, embed_dim=8).eval()
    >>> cube = xr.DataArray(np.zeros((4, 6)), dims=("y", "x"),
    ...                     coords={"y": 5e6 - 10 * np.arange(4), "x": 4e5 + 10 * np.arange(6)})
    >>> emb = location_embed(cube.rio.write_crs("EPSG:32633"), enc, stride=2)
    >>> emb.dims, emb.shape, emb.rio.crs.to_epsg()
    (('y', 'x', 'feature'), (2, 3, 8), 32633)

    With an official checkpoint: ``cube.sky.location_embed("satclip-resnet50-l40.ckpt")``.
    """
    from ..engine.location import build_location_embedding, output_chunks
    from ._inputs import _stackstac_centres

    # cell centres come from the coordinates, so any storage order of x/y is right as is;
    # stackstac's default top-left coordinates are moved to the pixel centres
    obj = _stackstac_centres(_as_spatial(obj))
    stride = _coerce.positive_int(stride, "stride", "pixels")
    out_dtype = _coerce.float_dtype(dtype)
    grid = grid_info(obj)
    crs = get_crs(obj)
    ref, _ = resolve_location_encoder(model_or_ckpt, weights=weights, trust=trust)

    cy, cx = _coerce.output_chunks(chunks, grid.ydim, grid.xdim)
    ych = output_chunks(grid.ny, None if cy else _input_chunks(obj, grid.ydim), stride,
                        cy or _DEFAULT_CHUNK)
    xch = output_chunks(grid.nx, None if cx else _input_chunks(obj, grid.xdim), stride,
                        cx or _DEFAULT_CHUNK)
    ycoord = grid.y_coords(0, stride, sum(ych))
    xcoord = grid.x_coords(0, stride, sum(xch))
    data = build_location_embedding(ycoord, xcoord, ych, xch, ref=ref, crs_wkt=crs.to_wkt(),
                                    dtype=out_dtype)
    out = xr.DataArray(
        data,
        dims=(grid.ydim, grid.xdim, "feature"),
        coords={grid.ydim: ycoord, grid.xdim: xcoord,
                "feature": np.arange(ref.embed_dim)},
        name=name,
    )
    out = cast("xr.DataArray", write_crs(out, crs))
    out.attrs.update({
        "model": ref.name,
        "kind": "location",
        "legendre_polys": ref.legendre_polys,
        "weights_sha256": ref.file_sha256 or ref.sha256,
        "xsky_version": __version__,
        "stride": stride,
        "coordinates": "embedding of each cell centre's (lon, lat) in the cube CRS's "
                       "geographic CRS",
    })
    return out


# --------------------------------------------------------------------------------------
# Point tables
# --------------------------------------------------------------------------------------

_LON_NAMES = ("lon", "longitude", "lng", "long")
_LAT_NAMES = ("lat", "latitude")


def _is_model_like(value: Any) -> bool:
    if isinstance(value, str | os.PathLike):
        return True
    try:
        import torch

        return isinstance(value, torch.nn.Module)
    except ImportError:  # pragma: no cover
        return False


def _frame_columns(df: Any) -> tuple[Any, Any]:
    lower = {str(c).lower(): c for c in df.columns}
    lon = next((lower[n] for n in _LON_NAMES if n in lower), None)
    lat = next((lower[n] for n in _LAT_NAMES if n in lower), None)
    if lon is None and lat is None and "x" in lower and "y" in lower:
        lon, lat = lower["x"], lower["y"]
    if lon is None or lat is None:
        raise DimensionError(
            f"cannot find longitude/latitude columns in {list(df.columns)}; name them "
            "'lon'/'lat' (or 'longitude'/'latitude', or 'x'/'y' in degrees), or pass "
            "location_embed_points(df['my_lon'], df['my_lat'], model)"
        )
    return lon, lat


def _geo_lonlat(gdf: Any) -> tuple[np.ndarray, np.ndarray]:
    """Longitude/latitude (EPSG:4326) of a GeoDataFrame's or GeoSeries' point geometry."""
    from .sampling import _point_xy, geo_crs, transform_xy

    src = geo_crs(gdf, None, "the GeoDataFrame")
    x, y = _point_xy(np.asarray(gdf.geometry), "the GeoDataFrame")
    return transform_xy(x, y, src, "EPSG:4326")


def location_embed_points(
    lon: Any,
    lat: Any = None,
    model: Any = None,
    *,
    weights: Any = None,
    dtype: Any = "float64",
    batch_size: int | None = None,
    trust: bool = False,
    prefix: str = "loc_emb_",
) -> Any:
    """SatCLIP location embeddings of points given in degrees.

    Parameters
    ----------
    lon
        Longitudes (array-like or pandas Series), or a pandas DataFrame with lon/lat columns
        (``lon``/``lat``, ``longitude``/``latitude``, or ``x``/``y``), or a GeoDataFrame
        (or GeoSeries) of points in any CRS (its geometry is used, converted to
        EPSG:4326 lon/lat); with a frame the model may be passed second:
        ``location_embed_points(df, model)``.
    lat
        Latitudes in [-90, 90], same length as ``lon``.
    model
        A :class:`~xsky.models.satclip.LocationEncoder`, a SatCLIP ``.ckpt`` path, a SatCLIP
        image model with weights, or a ``satclip-*`` name with ``weights=``.
    weights
        Checkpoint path when ``model`` is a model name.
    dtype
        ``"float64"`` (default) or ``"float32"``.
    batch_size
        Points per encoder batch (default: the encoder's ``default_batch_size``).
    trust
        Allow full unpickling of a checkpoint that needs it.
    prefix
        Column-name prefix of the DataFrame result.

    Returns
    -------
    numpy.ndarray or pandas.DataFrame
        ``(N, embed_dim)`` for array input; for a DataFrame or Series input, a DataFrame
        with the same index and columns ``prefix + "0"`` ...

    Raises
    ------
    XSkyError
        Lengths differ, values are NaN/inf, or a latitude is outside [-90, 90].

    Examples
    --------
    >>> import pandas as pd
    >>> from xsky.models.satclip import LocationEncoder
    >>> enc = LocationEncoder(legendre_polys=10, capacity=16, embed_dim=8).eval()
    >>> df = pd.DataFrame({"lon": [2.35, 13.4], "lat": [48.85, 52.5]}, index=["paris", "berlin"])
    >>> emb = location_embed_points(df, enc)
    >>> emb.shape, list(emb.index), emb.columns[0]
    ((2, 8), ['paris', 'berlin'], 'loc_emb_0')
    """
    import pandas as pd

    index = None
    if is_geo(lon):  # a GeoDataFrame / GeoSeries of points, in its own CRS
        if model is None and lat is not None and _is_model_like(lat):
            model, lat = lat, None
        if lat is not None:
            raise ArgumentError(
                "with a GeoDataFrame, pass the model second (location_embed_points(gdf, "
                "model)); its geometry gives the points"
            )
        index = lon.index
        lon, lat = _geo_lonlat(lon)
    elif isinstance(lon, pd.DataFrame):
        if model is None and lat is not None and _is_model_like(lat):
            model, lat = lat, None
        if lat is not None:
            raise ArgumentError(
                "with a DataFrame, pass the model second (location_embed_points(df, model)) "
                "or give lon and lat as separate columns"
            )
        lon_col, lat_col = _frame_columns(lon)
        index = lon.index
        lon, lat = lon[lon_col], lon[lat_col]
    if model is None:
        raise ArgumentError("location_embed_points needs a model: a LocationEncoder, .ckpt path, "
                            "or satclip-* name with weights=")
    if lat is None:
        raise ArgumentError("location_embed_points needs latitudes: pass lon and lat")
    if isinstance(lon, pd.Series) or isinstance(lat, pd.Series):
        s = lon if isinstance(lon, pd.Series) else lat
        if isinstance(lon, pd.Series) and isinstance(lat, pd.Series) and not lon.index.equals(
                lat.index):
            raise AlignmentError("lon and lat Series have different indexes; align them first")
        index = s.index if index is None else index
    lon_a = _coerce.float_values(lon, "lon", "degrees")
    lat_a = _coerce.float_values(lat, "lat", "degrees")
    if lon_a.ndim != 1 or lat_a.ndim != 1 or lon_a.shape != lat_a.shape:
        raise DimensionError(
            f"lon and lat must be 1-D with the same length, got shapes {lon_a.shape} and "
            f"{lat_a.shape}"
        )
    bad = ~(np.isfinite(lon_a) & np.isfinite(lat_a))
    if bad.any():
        where = np.flatnonzero(bad)[:5].tolist()
        raise DataError(
            f"{int(bad.sum())} point(s) have NaN or infinite lon/lat (positions {where}); drop "
            "them first, e.g. df.dropna(subset=['lon', 'lat'])"
        )
    out_of_range = np.abs(lat_a) > 90
    if out_of_range.any():
        i = int(np.flatnonzero(out_of_range)[0])
        raise DataError(
            f"latitude must be within [-90, 90] degrees; got {lat_a[i]!r} at position {i} "
            f"({int(out_of_range.sum())} point(s) outside). Are lon and lat swapped?"
        )
    out_dtype = _coerce.float_dtype(dtype)
    if batch_size is not None:
        batch_size = _coerce.positive_int(batch_size, "batch_size")
    _, enc = resolve_location_encoder(model, weights=weights, trust=trust)
    emb = enc.encode(lon_a, lat_a, batch_size=batch_size).astype(out_dtype, copy=False)
    if index is None:
        return emb
    width = max(1, int(math.log10(max(emb.shape[1] - 1, 1))) + 1)
    cols = [f"{prefix}{i:0{width}d}" for i in range(emb.shape[1])]
    return pd.DataFrame(emb, index=index, columns=cols)
