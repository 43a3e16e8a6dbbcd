"""STAC items to analysis-ready datacubes on top of :func:`odc.stac.load`.

:func:`load_stac` turns a STAC search result (Planetary Computer, Earth Search v0/v1, CDSE, or
any catalogue that follows the same asset conventions) into a lazy ``xr.Dataset`` with dims
``(time, y, x)``: one float32 variable per canonical band (``B02``, ``VV``, ...), physical
units, a boolean ``valid`` mask and the CRS in a ``spatial_ref`` coordinate.
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import xarray as xr

from .. import _coerce, modalities
from .._interop import require
from ..exceptions import (
    ArgumentError,
    BandMismatchError,
    CRSError,
    DataError,
    UnitsError,
    format_choices,
)
from ..modalities import canonical_band
from .masks import resolve_scl_mask, scl_valid
from .scaling import (
    S2_NODATA,
    db_to_linear,
    linear_to_db,
    s2_boa_offset,
    s2_reflectance,
)

if TYPE_CHECKING:
    import pystac
    from odc.geo.geobox import GeoBox

__all__ = ["load_stac", "read_items"]

log = logging.getLogger(__name__)

_MASK_LAYERS = ("SCL",)  # non-spectral layers load_stac knows how to use (S2 L2A scene class)
_S2_DEFAULT_EXCLUDE = ("B10",)  # not in L2A products
_DEFAULT_CHUNK = 2048
_NON_DATA_ROLES = {"thumbnail", "overview", "metadata", "visual", "tiles"}
_RES_IN_KEY = re.compile(r"_(\d+)m$", re.IGNORECASE)
_S1_PREFIX = re.compile(r"^(?:gamma0|sigma0|beta0)[_-]", re.IGNORECASE)
_DB_SUFFIX = re.compile(r"[_-]db$", re.IGNORECASE)


# --------------------------------------------------------------------------- items


def read_items(source: Any) -> list[pystac.Item]:
    """Normalise any STAC item source to a list of :class:`pystac.Item`.

    Parameters
    ----------
    source
        A :class:`pystac.Item`, :class:`pystac.ItemCollection`, an iterable of items or
        item dicts, a STAC Item / FeatureCollection dict, a path to a JSON or GeoJSON file
        holding either, or a ``pystac_client`` search (anything with ``.items()``).
        Relative asset hrefs in a file are resolved against the file's folder and may not
        leave it (``../../etc/passwd``): such an asset is refused when it is loaded.

    Raises
    ------
    ArgumentError
        When ``source`` is none of the above, or a path that does not exist.
    DataError
        When a dict/file is not a STAC Item or FeatureCollection.
    """
    _pystac = require("pystac", "reading STAC items")
    if isinstance(source, _pystac.Item):
        return [source]
    if isinstance(source, _pystac.ItemCollection):
        return list(source.items)
    if isinstance(source, str | PathLike):
        return _items_from_file(Path(source))
    if isinstance(source, Mapping):
        return _items_from_dict(dict(source), where="the dict passed as items")
    if hasattr(source, "items") and callable(source.items) and not isinstance(source, Mapping):
        return read_items(list(source.items()))  # pystac_client.ItemSearch
    if isinstance(source, Iterable):
        out: list[pystac.Item] = []
        for i, it in enumerate(source):
            if isinstance(it, _pystac.Item):
                out.append(it)
            elif isinstance(it, Mapping):
                out.extend(_items_from_dict(dict(it), where=f"element {i} of items"))
            else:
                raise ArgumentError(
                    f"element {i} of items is a {type(it).__name__}, expected a pystac.Item "
                    "or a STAC Item dict"
                )
        return out
    raise ArgumentError(
        f"items must be STAC items (pystac.Item, ItemCollection, list of items, item dicts, "
        f"a FeatureCollection or a path to a JSON file), got {type(source).__name__}"
    )


def _items_from_dict(d: dict[str, Any], where: str, base: Path | None = None) -> list[Any]:
    import pystac

    kind = d.get("type")
    if kind == "FeatureCollection":
        feats = d.get("features")
        if not isinstance(feats, list):
            raise DataError(f"{where} is a FeatureCollection without a 'features' list")
        dicts = feats
    elif kind == "Feature":
        dicts = [d]
    else:
        raise DataError(
            f"{where} is not a STAC Item or FeatureCollection (its 'type' is {kind!r}, "
            "expected 'Feature' or 'FeatureCollection')"
        )
    items = []
    for j, f in enumerate(dicts):
        try:
            item = pystac.Item.from_dict(f, preserve_dict=True)
        except Exception as err:
            raise DataError(f"feature {j} of {where} is not a valid STAC Item: {err}") from err
        if base is not None:
            for key, asset in item.assets.items():
                if "://" not in asset.href and not Path(asset.href).is_absolute():
                    asset.href = _confined_href(base, asset.href, where, j, key, asset)
        items.append(item)
    return items


#: extra field marking an asset whose relative href leaves the STAC file's folder
_OUTSIDE = "xsky:href-outside-folder"


def _confined_href(base: Path, href: str, where: str, j: int, key: str,
                   asset: Any) -> str:
    """A relative asset href resolved against the STAC file's folder, which it may not leave
    (``../../etc/passwd``, symbolic links included). An escaping href is kept as written and
    marked: loading that asset is refused (:func:`_refuse_outside`); other assets still load."""
    target = (base / href).resolve()
    if target.is_relative_to(base):
        return str(target)
    asset.extra_fields[_OUTSIDE] = (
        f"asset {key!r} of feature {j} of {where} has the relative href {href!r}, which "
        f"points outside the file's folder {str(base)!r} (to {str(target)!r}); relative "
        "hrefs must stay inside that folder, so xsky will not read it. Write the href as an "
        "absolute path or URL if you mean that file"
    )
    return href


def _refuse_outside(asset: Any) -> None:
    msg = asset.extra_fields.get(_OUTSIDE)
    if msg:
        raise DataError(str(msg))


#: resampling methods odc-stac / rasterio accept
RESAMPLING = ("average", "bilinear", "cubic", "cubic_spline", "gauss", "lanczos", "max",
              "med", "min", "mode", "nearest", "q1", "q3", "rms", "sum")


def _check_resampling(method: Any, where: str) -> str:
    if not isinstance(method, str) or method not in RESAMPLING:
        raise ArgumentError(
            f"{where} must be a resampling method, one of {format_choices(RESAMPLING)}; got "
            f"{method!r} (e.g. 'bilinear' for reflectance, 'nearest' for classes)"
        )
    return method


def _items_from_file(path: Path) -> list[Any]:
    if not path.is_file():
        raise ArgumentError(f"STAC item file {str(path)!r} does not exist")
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read STAC items from {str(path)!r}: {err}") from err
    if not isinstance(d, dict):
        raise DataError(f"{str(path)!r} holds JSON {type(d).__name__}, not a STAC Item/FeatureCollection")
    return _items_from_dict(d, where=repr(str(path)), base=path.parent.resolve())


def _item_time(item: Any) -> datetime:
    t = item.datetime
    if t is None:
        t = item.common_metadata.start_datetime
    if t is None:
        raise DataError(f"item {item.id!r} has neither 'datetime' nor 'start_datetime'")
    return t if t.tzinfo else t.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- bands


@dataclass(frozen=True)
class _Asset:
    band: str  # odc-stac band name: asset key, or "key.N" for band N of a multi-band asset
    gsd: float  # resolution hint for choosing between duplicates (smaller wins)
    db: bool  # name or metadata says the values are in dB (S1)


def _allowed(modality: str) -> tuple[str, ...]:
    """The modality's bands (from :mod:`xsky.modalities`) and the mask layers it offers."""
    mod = modalities.get(modality)
    return (*mod.bands, *(b for b in mod.extra_bands if b in _MASK_LAYERS))


def _canonical(name: str, modality: str) -> str:
    if modality == "s1":
        base = _DB_SUFFIX.sub("", _S1_PREFIX.sub("", name))
        return canonical_band(base, "s1")
    return canonical_band(name, modality)


def _asset_gsd(key: str, asset: Any) -> float:
    m = _RES_IN_KEY.search(key)
    if m:
        return float(m.group(1))
    gsd = asset.extra_fields.get("gsd")
    if isinstance(gsd, int | float):
        return float(gsd)
    tr = asset.extra_fields.get("proj:transform")
    if isinstance(tr, list) and tr:
        return abs(float(tr[0]))
    return math.inf


def _is_db(key: str, asset: Any) -> bool:
    if _DB_SUFFIX.search(key):
        return True
    rb = asset.extra_fields.get("raster:bands") or []
    unit = rb[0].get("unit") if rb and isinstance(rb[0], Mapping) else None
    return isinstance(unit, str) and unit.strip().lower() in ("db", "decibel", "decibels")


def _item_bands(item: Any, modality: str) -> dict[str, _Asset]:
    """``{canonical band: asset}`` for the raster assets of one item."""
    allowed = set(_allowed(modality))
    found: dict[str, _Asset] = {}

    def offer(canon: str, cand: _Asset) -> None:
        if canon not in allowed:
            return
        old = found.get(canon)
        if old is None or cand.gsd < old.gsd:
            found[canon] = cand

    for key, asset in item.assets.items():
        roles = set(asset.roles or [])
        if roles and roles <= _NON_DATA_ROLES:
            continue
        mtype = (asset.media_type or "").lower()
        if mtype and not any(t in mtype for t in ("tiff", "jp2", "jpeg2000", "netcdf", "zarr")):
            continue
        eo = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or []
        gsd = _asset_gsd(key, asset)
        if isinstance(eo, list) and len(eo) > 1:
            for i, b in enumerate(eo, start=1):
                if not isinstance(b, Mapping):
                    continue
                for name in (b.get("name"), b.get("common_name")):
                    if isinstance(name, str) and _canonical(name, modality) in allowed:
                        offer(_canonical(name, modality), _Asset(f"{key}.{i}", gsd, False))
                        break
            continue
        canon = _canonical(key, modality)
        if canon not in allowed and eo and isinstance(eo[0], Mapping):
            name = eo[0].get("name")
            if isinstance(name, str):
                canon = _canonical(name, modality)
        offer(canon, _Asset(key, gsd, _is_db(key, asset)))
    return found


def _coerce_bands(bands: str | Sequence[str] | None, modality: str) -> list[str] | None:
    if bands is None:
        return None
    if isinstance(bands, str):
        bands = [bands]
    out = []
    allowed = _allowed(modality)
    for b in bands:
        if not isinstance(b, str):
            raise ArgumentError(f"band names must be strings, got {b!r}")
        c = _canonical(b, modality)
        if c not in allowed:
            raise BandMismatchError(
                f"band {b!r} is not a {modality.upper()} band; valid bands are "
                f"{format_choices(allowed)} (aliases such as 'blue', 'nir08', 'B2', 'vv' work)"
            )
        if c not in out:
            out.append(c)
    if not out:
        raise ArgumentError("bands is empty; list at least one band or pass bands=None for all")
    return out


def _sort_bands(names: Iterable[str], modality: str) -> list[str]:
    order = {b: i for i, b in enumerate(_allowed(modality))}
    return sorted(names, key=lambda b: order.get(b, len(order)))


# --------------------------------------------------------------------------- grid


def _footprint(item: Any) -> Any | None:
    from shapely.geometry import box, shape

    if item.geometry:
        try:
            return shape(item.geometry)
        except Exception:  # malformed geometry: fall back to bbox
            pass
    if item.bbox and len(item.bbox) >= 4:
        b = item.bbox
        return box(b[0], b[1], b[-3] if len(b) == 6 else b[2], b[-2] if len(b) == 6 else b[3])
    return None


def _like_geobox(like: Any) -> GeoBox:
    from odc.geo.geobox import GeoBox

    if isinstance(like, GeoBox):
        return like
    if isinstance(like, xr.Dataset | xr.DataArray):
        import odc.geo.xr  # noqa: F401  (registers .odc)

        gbox = like.odc.geobox
        if isinstance(gbox, GeoBox) and gbox.crs is not None:
            return gbox
        raise CRSError(
            "like= has no usable pixel grid (no CRS or no regular x/y coordinates); pass a "
            "Dataset loaded with xsky.load_stac, or write its CRS with obj.rio.write_crs(...)"
        )
    raise ArgumentError(
        f"like= must be an xarray Dataset/DataArray or an odc.geo GeoBox, got {type(like).__name__}"
    )


def _coerce_crs(crs: Any) -> Any:
    if crs is None or (isinstance(crs, str) and crs.lower() == "utm"):
        return crs
    from odc.geo import CRS

    try:
        return CRS(crs)
    except Exception as err:
        raise CRSError(f"crs={crs!r} is not a CRS pyproj understands ({err}); e.g. 'EPSG:32633'") from err


def _coerce_resolution(resolution: Any) -> Any:
    from odc.geo import res_, resxy_

    if isinstance(resolution, int | float) and not isinstance(resolution, bool):
        if not (resolution > 0 and math.isfinite(resolution)):
            raise ArgumentError(f"resolution must be a positive number, got {resolution!r}")
        return res_(float(resolution))
    if isinstance(resolution, Sequence) and len(resolution) == 2:
        rx, ry = (abs(float(v)) for v in resolution)
        if not (rx > 0 and ry > 0):
            raise ArgumentError(f"resolution must be positive, got {resolution!r}")
        return resxy_(rx, -ry)
    raise ArgumentError(f"resolution must be a number or an (x, y) pair, got {resolution!r}")


def _output_geobox(
    parsed: list[Any], bands: list[str], crs: Any, resolution: Any, bbox: Any
) -> GeoBox:
    """The output grid: native grid of the items unless ``crs``/``resolution`` change it.

    odc-stac snaps to ``GeoBox.anchor`` of the items, which odc-geo reports mirrored for
    grids whose x origin is not a multiple of the pixel size; the pixel phase is computed
    here instead, so a bbox or a mosaic of tiles stays on the items' own pixel grid.
    """
    import odc.stac
    from odc.geo import AnchorEnum, xy_
    from odc.geo.geobox import GeoBox
    from odc.geo.geom import bbox_union, box

    native = [g[0] for g in (p.geoboxes(bands) for p in parsed) if g]
    if crs == "utm" or not native:
        gbox = odc.stac.output_geobox(parsed, bands=bands, crs=crs, resolution=resolution, bbox=bbox)
        if gbox is None:
            raise CRSError("cannot work out the output grid from the items; pass crs= and resolution=")
        return gbox
    ref = native[0]
    out_crs = crs if crs is not None else ref.crs
    res = ref.resolution if resolution is None else _coerce_resolution(resolution)
    same_grid = (
        out_crs == ref.crs
        and math.isclose(abs(res.x), abs(ref.resolution.x), rel_tol=1e-9)
        and math.isclose(abs(res.y), abs(ref.resolution.y), rel_tol=1e-9)
    )
    anchor: Any = AnchorEnum.EDGE
    if same_grid:
        ax = (ref.affine.c / abs(res.x)) % 1.0
        ay = (ref.affine.f / abs(res.y)) % 1.0
        anchor = xy_(0.0 if ax > 1 - 1e-9 else ax, 0.0 if ay > 1 - 1e-9 else ay)
    if bbox is not None:
        area = box(bbox[0], bbox[1], bbox[2], bbox[3], "epsg:4326").to_crs(out_crs).boundingbox
    else:
        prints = [p.safe_geometry(out_crs, bands=bands) for p in parsed]
        area = bbox_union(g.boundingbox for g in prints if g is not None)
    return GeoBox.from_bbox(area, out_crs, resolution=res, anchor=anchor)


def _chunks_for(chunks: Any, gbox: GeoBox) -> dict[str, int]:
    ydim, xdim = gbox.dimensions
    if chunks is None:
        return {"time": 1, ydim: _DEFAULT_CHUNK, xdim: _DEFAULT_CHUNK}
    if isinstance(chunks, int) and not isinstance(chunks, bool):
        return {"time": 1, ydim: chunks, xdim: chunks}
    if not isinstance(chunks, Mapping):
        raise ArgumentError(f"chunks must be an int or a dict like {{'x': 2048, 'y': 2048}}, got {chunks!r}")
    out: dict[str, Any] = {"time": 1}
    for k, v in chunks.items():
        key = {"y": ydim, "x": xdim, "latitude": ydim, "longitude": xdim}.get(k, k)
        if key not in ("time", ydim, xdim):
            raise ArgumentError(f"chunks has unknown dimension {k!r}; use 'time', 'y' and 'x'")
        if not (v == -1 or v == "auto" or (isinstance(v, int) and v > 0)):
            raise ArgumentError(f"chunk size for {k!r} must be a positive int, -1 or 'auto', got {v!r}")
        out[key] = v
    return out


def _check_collection(items: list[Any]) -> str | None:
    """The items' one collection id; band names, scaling and nodata are per collection."""
    if not items:
        raise DataError(
            "no STAC items to load: the search returned nothing; widen its bbox, datetime or "
            "cloud-cover filter"
        )
    colls = sorted({str(it.collection_id) for it in items if it.collection_id})
    if len(colls) > 1:
        counts = {c: sum(it.collection_id == c for it in items) for c in colls}
        raise DataError(
            f"items come from {len(colls)} collections {counts}; load_stac loads one "
            "collection at a time (their band names, scaling and grids differ): filter the "
            "items, e.g. [it for it in items if it.collection_id == "
            f"{colls[0]!r}], and combine the results with xsky.stack"
        )
    return colls[0] if colls else None


def _filter_items(
    items: list[Any], trange: Any, time: Any, bbox: Any, like_gbox: GeoBox | None
) -> list[Any]:
    """Items acquired in ``trange`` whose footprint meets ``bbox`` (or the grid of like=)."""
    if trange is not None:
        kept = [it for it in items if trange[0] <= _item_time(it) <= trange[1]]
        if not kept:
            times = sorted(_item_time(it) for it in items)
            raise DataError(
                f"no item falls in time={time!r}; the {len(items)} items span "
                f"{times[0]:%Y-%m-%d} .. {times[-1]:%Y-%m-%d}"
            )
        items = kept
    if bbox is not None:
        from shapely.geometry import box

        area, area_desc = box(*bbox), f"bbox {bbox}"
    elif like_gbox is not None:
        from shapely.geometry import shape

        area = shape(like_gbox.extent.to_crs("epsg:4326").json)
        area_desc = "the grid of like="
    else:
        return items
    prints = [(it, _footprint(it)) for it in items]
    kept = [it for it, fp in prints if fp is None or fp.intersects(area)]
    if not kept:
        from shapely.ops import unary_union

        union = unary_union([fp for _, fp in prints if fp is not None])
        ext = tuple(round(v, 4) for v in union.bounds)
        raise DataError(
            f"{area_desc} does not overlap any of the {len(items)} items (they cover "
            f"lon/lat {ext}); check the order (min lon, min lat, max lon, max lat) and that "
            "the bbox is in degrees"
        )
    if len(kept) < len(items):
        log.debug("dropped %d items outside %s", len(items) - len(kept), area_desc)
    return kept


def _resolve_assets(
    items: list[Any],
    modality: str,
    want: list[str] | None,
    masked_scl: Collection[int],
    collection: str | None,
) -> tuple[list[dict[str, _Asset]], list[str], dict[str, str], bool]:
    """Per-item band assets, the bands to return, ``{band: odc-stac name}``, whether SCL loads."""
    per_item = [_item_bands(it, modality) for it in items]
    first = per_item[0]
    if not any(b not in _MASK_LAYERS for b in first):
        # which other modality of the table the assets look like
        hint = next((m for m in modalities.names() if m != modality and any(
            b not in _MASK_LAYERS for b in _item_bands(items[0], m))), None)
        raise BandMismatchError(
            f"item {items[0].id!r} (collection {collection!r}) has no "
            f"{modality.upper()} band assets; its assets are {sorted(items[0].assets)}."
            + (f" Is modality={hint!r} meant?" if hint else "")
        )
    if want is None:
        want = _sort_bands(
            [b for b in first if b != "SCL" and b not in _S2_DEFAULT_EXCLUDE], modality
        )
    missing = {it.id: [b for b in want if b not in bmap]
               for it, bmap in zip(items, per_item, strict=True)}
    missing = {k: v for k, v in missing.items() if v}
    if missing:
        ex_id, ex_bands = next(iter(missing.items()))
        have = _sort_bands(per_item[[it.id for it in items].index(ex_id)], modality)
        raise BandMismatchError(
            f"{len(missing)} of {len(items)} items lack assets for requested bands, e.g. "
            f"item {ex_id!r} has no asset for {ex_bands} (it has {have}); request only bands "
            "every item has (bands=[...]) or drop those items"
        )
    has_scl = all("SCL" in bmap for bmap in per_item)
    load_scl = modality == "s2" and (bool(masked_scl) or "SCL" in want) and has_scl
    if modality == "s2" and masked_scl and not has_scl:
        warnings.warn(
            "the items have no SCL asset, so `valid` marks only no-data pixels (no cloud "
            "mask); pass scl_mask=() to silence this",
            UserWarning,
            stacklevel=3,
        )
    if "SCL" in want and not has_scl:
        raise BandMismatchError("bands includes 'SCL' but not every item has an SCL asset")
    names: dict[str, str] = {}
    for b in [b for b in want if b != "SCL"] + (["SCL"] if load_scl else []):
        keys = {bmap[b].band for bmap in per_item}
        if len(keys) > 1:
            raise BandMismatchError(
                f"band {b!r} is stored under different asset names {sorted(keys)} across "
                "items of one collection; load the groups separately"
            )
        names[b] = keys.pop()
    return per_item, want, names, load_scl


# --------------------------------------------------------------------------- main


def load_stac(
    items: Any,
    *,
    modality: str = "s2",
    bands: str | Sequence[str] | None = None,
    bbox: Sequence[float] | None = None,
    crs: Any = None,
    resolution: float | tuple[float, float] | None = None,
    chunks: int | Mapping[str, int] | None = None,
    groupby: str | Callable[..., Any] = "solar_day",
    like: Any = None,
    time: str | Sequence[Any] | None = None,
    db: bool = True,
    snow: bool = False,
    scl_mask: Collection[int] | None = None,
    s1_units: Literal["linear", "db"] | None = None,
    resampling: str | Mapping[str, str] | None = None,
    patch_url: Callable[[str], str] | None = None,
    fail_on_error: bool = True,
) -> xr.Dataset:
    """Load STAC items as a lazy, analysis-ready ``(time, y, x)`` datacube.

    Parameters
    ----------
    items
        STAC items: a ``pystac_client`` search, :class:`pystac.ItemCollection`, list of
        :class:`pystac.Item` or item dicts, a FeatureCollection dict, or a path to a JSON /
        GeoJSON file (see :func:`read_items`). All items must come from one collection.
    modality
        ``"s2"`` (Sentinel-2 L2A), ``"s1"`` (Sentinel-1 RTC/calibrated backscatter),
        ``"hr"`` (high-resolution red/green/blue/nir) or any modality registered with
        :func:`xsky.modalities.register_modality` (loaded like HR: values as stored, in
        the modality's ``int_units``).
    bands
        Bands to load, in any spelling (``"B02"``, ``"blue"``, ``"B2"``, ``"vv"``); output
        variables use canonical names (``B02`` ... ``B12``, ``B8A``, ``VV``, ``VH``). Default:
        every band of the modality that the first item has. ``"SCL"`` may be listed to get
        the scene classification itself (uint8).
    bbox
        ``(min lon, min lat, max lon, max lat)`` in degrees. Items whose footprint misses it
        are dropped; the pixel grid stays aligned with the items' native grid.
    crs
        Output CRS (anything pyproj reads, or ``"utm"``); default: the items' CRS, which
        must then be the same for all items.
    resolution
        Output pixel size in units of the output CRS; default: the finest native resolution
        of the loaded bands (only when ``crs`` has the same units as the items).
    chunks
        Dask chunks, ``{"time": 1, "y": 2048, "x": 2048}`` by default (an int sets y and x).
        The result is always lazy: nothing is read until it is computed.
    groupby
        How items become time steps: ``"solar_day"`` (default: tiles of one overpass are
        mosaicked), ``"time"``, ``"id"``, an item property name or a callable (see
        :func:`odc.stac.load`). Sentinel-2 items with different BOA offsets are never fused.
    like
        A Dataset/DataArray (or :class:`odc.geo.geobox.GeoBox`) whose grid the output
        matches exactly: CRS, resolution, extent. Used to stack S1 onto an S2 grid. Excludes
        ``bbox``, ``crs`` and ``resolution``.
    time
        Keep only items acquired in this range: ``"2020-01-01/2020-06-30"``,
        ``("2020-01", "2020-06")`` (month precision, inclusive) or one date.
    db
        Sentinel-1 only: return backscatter in dB (``10·log10(linear)``, default, as
        SkySense expects) or linear power (``False``).
    snow
        Sentinel-2 only: keep snow/ice (SCL 11) as valid. Ignored with ``scl_mask``.
    scl_mask
        Sentinel-2 only: the SCL classes to mark invalid, replacing the default
        ``(0, 1, 3, 8, 9, 10, 11)`` (no data, saturated, cloud shadow, medium/high-probability
        cloud, thin cirrus, snow). ``()`` masks nothing but no-data pixels.
    s1_units
        Units of the Sentinel-1 files when the item does not say: ``"linear"`` or ``"db"``.
        By default assets named ``*_db`` or with ``raster:bands`` unit ``dB`` are dB, RTC
        products linear, and uncalibrated GRD digital numbers are refused.
    resampling
        Resampling method, one for all bands or ``{band: method}``; default ``"nearest"``.
        SCL is always resampled with ``"nearest"``.
    patch_url
        Function applied to each asset URL before reading (e.g. ``planetary_computer.sign``).
    fail_on_error
        Passed to :func:`odc.stac.load`: ``False`` skips unreadable files.

    Returns
    -------
    xr.Dataset
        Dims ``(time, y, x)``, ``time`` sorted; one float32 variable per band with
        ``attrs["units"]`` (``"reflectance"`` for S2, ``"db"`` or ``"linear"`` for S1,
        ``"rgb255"`` for 8-bit HR imagery, else ``"dn"``; NaN where the file has no
        data); a boolean ``valid`` variable (False at no-data pixels, and for S2 where the
        SCL class is masked); the CRS as a ``spatial_ref`` coordinate (``ds.rio.crs`` and
        ``ds.odc.geobox`` work).

    Raises
    ------
    ArgumentError
        Invalid options (an unknown modality, a bad bbox, time range, chunks, ...).
    DataError
        No items (an empty search); items from several collections; a bbox or time range
        that no item overlaps.
    UnitsError
        Sentinel-1 GRD items holding uncalibrated digital numbers.
    BandMismatchError
        An item lacks an asset for a requested band, or the items have no band of the
        modality.
    CRSError
        Items in several CRSs and no ``crs=`` (or ``like=``); an unknown ``crs``; items
        with no projection metadata and no ``crs=`` and ``resolution=``.

    Notes
    -----
    Sentinel-2 reflectance is ``(DN - offset) / 10000`` where ``offset`` is 1000 for
    processing baseline 04.00 and later as stated by the item (see
    :mod:`xsky.io.scaling`), so time series across the 2022 baseline change are consistent.

    Examples
    --------
    >>> ds = xsky.load_stac(items, bands=["B02", "B03", "B04", "B08"],
    ...                     bbox=(22.14, 45.19, 22.16, 45.21))  # doctest: +SKIP
    >>> s1 = xsky.load_stac(s1_items, modality="s1", like=ds)  # doctest: +SKIP
    """
    odc_stac = require("odc.stac", "xsky.load_stac")
    require("pystac", "xsky.load_stac")

    mod = modalities.get(modality)  # ArgumentError naming the registered modalities
    want = _coerce_bands(bands, modality)
    bbox_t = _coerce.bbox(bbox)
    trange = _coerce.time_range(time)
    crs_v = _coerce_crs(crs)
    if s1_units not in (None, "linear", "db"):
        raise ArgumentError(f"s1_units must be 'linear', 'db' or None, got {s1_units!r}")
    masked_scl = resolve_scl_mask(scl_mask, snow) if modality == "s2" else ()
    like_gbox = None
    if like is not None:
        extra = [n for n, v in (("bbox", bbox), ("crs", crs), ("resolution", resolution)) if v is not None]
        if extra:
            raise ArgumentError(
                f"like= fixes the output grid, so {', '.join(extra)}= cannot be used with it; "
                "crop the result with .sel() or .odc.crop() instead"
            )
        like_gbox = _like_geobox(like)

    item_list = read_items(items)
    collection = _check_collection(item_list)
    item_list = _filter_items(item_list, trange, time, bbox_t, like_gbox)
    per_item, want, names, load_scl = _resolve_assets(item_list, modality, want, masked_scl,
                                                      collection)

    s1_db = {b: _s1_is_db(b, item_list, per_item, s1_units) for b in names} if modality == "s1" else {}
    raw_units = _stored_units(item_list[0], [per_item[0][b] for b in names], mod)

    # projection metadata and CRS
    for it in item_list:  # the assets about to be read: none may leave its STAC file's folder
        for odc_name in names.values():
            key = odc_name if odc_name in it.assets else odc_name.rsplit(".", 1)[0]
            if key in it.assets:
                _refuse_outside(it.assets[key])
    parsed = list(odc_stac.parse_items(item_list))
    odc_bands = list(names.values())
    no_proj = [p.id for p in parsed if not p.geoboxes(odc_bands)]
    if no_proj and like_gbox is None and (crs_v is None or resolution is None):
        raise CRSError(
            f"{len(no_proj)} item(s), e.g. {no_proj[0]!r}, have no projection metadata "
            "(proj:epsg/proj:code with proj:transform and proj:shape) for the bands "
            f"{list(names)}, so their pixel grid is unknown; pass crs= and resolution= "
            "(or like=) to choose the output grid"
        )
    crss = {str(p.crs(odc_bands)) for p in parsed if p.crs(odc_bands) is not None}
    if len(crss) > 1 and crs_v is None and like_gbox is None:
        raise CRSError(
            f"the items are in {len(crss)} different CRSs ({', '.join(sorted(crss))}); pass "
            f"crs= to choose one (e.g. crs={sorted(crss)[0]!r} or crs='utm') and they are "
            "reprojected onto it"
        )
    if crs_v is not None and resolution is None and like_gbox is None and crss and crs_v != "utm":
        native = next(iter(crss))
        from odc.geo import CRS

        if CRS(native).units != crs_v.units:
            raise ArgumentError(
                f"crs={crs!r} is in {crs_v.units[0]} but the items' native grid ({native}) "
                f"is in {CRS(native).units[0]}, so the native resolution cannot be reused; "
                "pass resolution= in the units of the new CRS"
            )

    gbox = like_gbox if like_gbox is not None else _output_geobox(
        parsed, odc_bands, crs_v, resolution, bbox_t
    )

    # per-band resampling and dtype
    res_cfg: dict[str, str] | None
    if resampling is None or isinstance(resampling, str):
        if resampling is not None:
            _check_resampling(resampling, "resampling")
        res_cfg = dict.fromkeys(odc_bands, resampling or "nearest")
    elif isinstance(resampling, Mapping):
        res_cfg = {}
        for k, v in resampling.items():
            _check_resampling(v, f"resampling[{k!r}]")
            c = k if k == "*" else _canonical(k, modality)
            if c != "*" and c not in names:
                raise ArgumentError(
                    f"resampling names band {k!r}, which is not loaded; loaded bands are {list(names)}"
                )
            res_cfg[names.get(c, "*")] = v
    else:
        raise ArgumentError(f"resampling must be a method name or a {{band: method}} dict, got {resampling!r}")
    if load_scl:
        res_cfg[names["SCL"]] = "nearest"  # categorical

    load_kw: dict[str, Any] = {
        "bands": odc_bands,
        "geobox": gbox,
        "chunks": _chunks_for(chunks, gbox),
        "resampling": res_cfg,
        "fail_on_error": fail_on_error,
    }
    if patch_url is not None:
        load_kw["patch_url"] = patch_url

    offsets: list[int] | None = None
    if modality == "s2":
        load_kw["dtype"] = "uint16"  # SCL too; a per-band dict breaks odc-loader's chunking
        load_kw["nodata"] = S2_NODATA
        item_offset = [s2_boa_offset(it.id, it.properties, _item_time(it)) for it in item_list]
        key_fn, offsets_of = _offset_groupby(groupby, item_list, parsed, item_offset, gbox)
        load_kw["groupby"] = key_fn
    else:
        load_kw["dtype"] = "float32"
        load_kw["groupby"] = groupby

    raw = odc_stac.load(item_list, **load_kw)
    if modality == "s2":
        offsets = offsets_of(raw)

    ds = _finish(raw, names, modality, offsets, masked_scl, load_scl, want, db, s1_db, raw_units)
    ydim, xdim = gbox.dimensions
    if (ydim, xdim) != ("y", "x"):
        ds = ds.rename({ydim: "y", xdim: "x"})
    ds = ds.sortby("time")
    ds.attrs.update(
        {
            "modality": modality,
            "collection": collection or "",
            "loader": "xsky.load_stac (odc-stac)",
            # the input's identity for resumable writes (xsky.to_zarr checks it)
            "stac_items": json.dumps(sorted(str(it.id) for it in item_list)),
        }
    )
    return ds


def _offset_groupby(
    groupby: Any, items: list[Any], parsed: list[Any], offsets: list[int], gbox: GeoBox
) -> tuple[Callable[..., Any], Callable[[xr.Dataset], list[int]]]:
    """Wrap ``groupby`` so items with different BOA offsets never share a time step.

    Returns the odc-stac group key function and a function that, given the loaded dataset,
    returns the offset of each time step (checked against the time coordinate).
    """
    ((mid_lon, _),) = gbox.extent.centroid.to_crs("epsg:4326").points

    if callable(groupby):
        base = groupby
    elif groupby == "solar_day":
        def base(item: Any, p: Any, idx: int) -> Any:
            return p.solar_date_at(mid_lon).date()
    elif groupby == "time":
        def base(item: Any, p: Any, idx: int) -> Any:
            return p.nominal_datetime
    elif groupby in ("id", None):
        def base(item: Any, p: Any, idx: int) -> Any:
            return idx
    elif isinstance(groupby, str):
        def base(item: Any, p: Any, idx: int) -> Any:
            return item.properties.get(groupby)
    else:
        raise ArgumentError(
            f"groupby must be 'solar_day', 'time', 'id', a property name or a callable, got {groupby!r}"
        )
    index = {id(it): i for i, it in enumerate(items)}

    def key(item: Any, p: Any, idx: int) -> Any:
        return (base(item, p, idx), offsets[index.get(id(item), idx)])

    def offsets_of(ds: xr.Dataset) -> list[int]:
        keyed = [(key(it, p, i), p.nominal_datetime, p.id) for i, (it, p) in enumerate(zip(items, parsed, strict=True))]
        groups: dict[Any, datetime] = {}
        for k, t, _ in sorted(keyed, key=lambda r: (r[0], r[1], r[2])):
            groups.setdefault(k, t)
        ks = sorted(groups)
        times = np.array([np.datetime64(groups[k].replace(tzinfo=None), "ns") for k in ks])
        got = ds["time"].values.astype("datetime64[ns]")
        if len(times) != len(got) or not np.array_equal(times, got):
            raise DataError(  # an odc-stac grouping change would make offsets ambiguous
                "internal: cannot match time steps to Sentinel-2 BOA offsets; report this with "
                "your odc-stac version"
            )
        return [k[1] for k in ks]

    return key, offsets_of


def _finish(
    raw: xr.Dataset,
    names: Mapping[str, str],
    modality: str,
    offsets: list[int] | None,
    masked_scl: Collection[int],
    load_scl: bool,
    want: list[str],
    db: bool,
    s1_db: Mapping[str, bool],
    raw_units: str,
) -> xr.Dataset:
    bands = [b for b in want if b != "SCL"]
    out: dict[str, xr.DataArray] = {}
    valid: xr.DataArray | None = None

    def and_(v: xr.DataArray | None, m: xr.DataArray) -> xr.DataArray:
        return m if v is None else v & m

    if modality == "s2":
        assert offsets is not None
        off = xr.DataArray(np.asarray(offsets, "float32"), dims="time", coords={"time": raw.time})
        for b in bands:
            dn = raw[names[b]]
            valid = and_(valid, dn != S2_NODATA)
            da = s2_reflectance(dn, off)
            da.attrs = {"units": "reflectance", "long_name": f"Sentinel-2 L2A {b} reflectance"}
            out[b] = da
        if load_scl:
            scl = raw[names["SCL"]]
            valid = and_(valid, scl_valid(scl, masked_scl))
            if "SCL" in want:
                out["SCL"] = scl.astype("uint8").assign_attrs(
                    units="class", long_name="scene classification"
                )
    elif modality == "s1":
        for b in bands:
            is_db = s1_db[b]
            x = raw[names[b]]
            nod = x.attrs.get("nodata")
            ok = cast(xr.DataArray, np.isfinite(x))
            if nod is not None and not (isinstance(nod, float) and math.isnan(nod)):
                ok = ok & (x != nod)
            if is_db:
                v = x.where(ok)
                da = v.astype("float32") if db else db_to_linear(v)
            else:
                ok = ok & (x > 0)  # no dB value for linear <= 0
                da = linear_to_db(x.where(ok)) if db else x.where(ok).astype("float32")
            valid = and_(valid, ok)
            da.attrs = {"units": "db" if db else "linear", "long_name": f"Sentinel-1 {b} backscatter"}
            out[b] = da
    else:
        for b in bands:
            x = raw[names[b]]
            nod = x.attrs.get("nodata")
            ok = cast(xr.DataArray, np.isfinite(x))
            if nod is not None and not (isinstance(nod, float) and math.isnan(nod)):
                ok = ok & (x != nod)
            valid = and_(valid, ok)
            da = x.where(ok).astype("float32")
            da.attrs = {"units": raw_units, "long_name": f"{b} digital number"}
            out[b] = da
    assert valid is not None
    valid = valid.astype(bool)
    valid.attrs = {"long_name": "valid pixel (not no-data"
                   + (", SCL class not masked)" if load_scl else ")")}
    if load_scl:
        valid.attrs["scl_masked_classes"] = list(masked_scl)
    ds = xr.Dataset({**out, "valid": valid})
    for c in ("spatial_ref",):
        if c in raw.coords and c not in ds.coords:
            ds = ds.assign_coords({c: raw[c]})
    return ds


def _stored_units(item: Any, assets: list[_Asset], mod: modalities.Modality) -> str:
    """Units of integer files of a modality without its own scaling (HR imagery):
    the table's ``int_units``, except that ``"rgb255"`` needs 8-bit files (stated, or
    unstated as is usual for aerial RGB), else the values are plain ``"dn"``."""
    if mod.int_units != "rgb255":
        return mod.int_units
    for a in assets:
        key, _, idx = a.band.partition(".")
        rb = item.assets[key].extra_fields.get("raster:bands") or []
        i = int(idx) - 1 if idx else 0
        dtype = rb[i].get("data_type") if i < len(rb) and isinstance(rb[i], Mapping) else None
        if dtype not in (None, "uint8"):
            return "dn"
    return "rgb255"


def _s1_is_db(band: str, items: list[Any], per_item: list[dict[str, _Asset]], s1_units: str | None) -> bool:
    if s1_units is not None:
        return s1_units == "db"
    if any(bmap[band].db for bmap in per_item):
        return True
    it = items[0]
    key = per_item[0][band].band.split(".")[0]
    asset = it.assets[key]
    ptype = str(it.properties.get("sar:product_type", "")).upper()
    rb = asset.extra_fields.get("raster:bands") or []
    dtype = rb[0].get("data_type") if rb and isinstance(rb[0], Mapping) else None
    coll = str(it.collection_id or "").lower()
    is_grd = ptype == "GRD" or (not ptype and "grd" in coll)
    if is_grd and dtype in (None, "uint16", "int16", "uint8"):
        raise UnitsError(
            f"item {it.id!r} is a Sentinel-1 GRD product whose {band} asset "
            f"({asset.href.rsplit('/', 1)[-1]}) holds uncalibrated digital numbers, not "
            "backscatter; use a calibrated/RTC collection (e.g. Planetary Computer "
            "'sentinel-1-rtc'), or pass s1_units='linear' or 'db' if the files are calibrated"
        )
    return False
