"""Offline STAC fixtures built from real rasters and real STAC items.

The builders write real pixels from the shared data folder (``../shared/data``) as small local
Cloud-Optimized GeoTIFFs and rewrite real STAC items to point at them:

* :func:`romania_s2_items` — dates of the Romania Sentinel-2 L2A cube (``s2_ts_romania``,
  EPSG:3035, 100×100 px at 10 m; B02/B03/B04/B08 at 10 m, B8A/B11/SCL at 20 m) as the
  13-date Planetary Computer search result, or in the Earth Search / CDSE layouts;
* :func:`ssl4eo_s2_items` — the two SSL4EO-S12 L2A dates (12 bands, EPSG:4326) as Earth
  Search items;
* :func:`ssl4eo_s1_items` — the two SSL4EO-S12 Sentinel-1 dates (VV/VH) as items of the real
  Sentinel-1 RTC item (``sentinel1-rtc-aws``: linear gamma0, nodata 0).

Each rewritten item keeps its asset keys, ``eo:bands``, roles and properties; its id and
datetime, geometry/bbox and ``proj:*`` fields are rewritten to match the written rasters,
and ``xsky:source`` records where the pixels came from. Layouts:

``"planetary-computer"``
    the real PC ``sentinel-2-l2a`` items (asset keys ``B02`` ..., ``SCL``).
``"earth-search"``
    the real Earth Search v0 ``sentinel-s2-l2a-cogs`` item (asset keys ``B02`` ...).
``"earth-search-v1"``
    derived from the v0 item with Earth Search v1's conventions: collection
    ``sentinel-2-l2a``, asset keys ``blue``, ``nir08``, ``scl``..., ``raster:bands`` and
    ``earthsearch:boa_offset_applied``.
``"cdse"``
    derived from the PC item with CDSE's resolution-suffixed asset keys (``B02_10m``,
    ``B03_20m``, ``SCL_20m``): where the source has a band at two resolutions both are
    written.

Files are written once per output folder and reused by later calls.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CONVENTIONS",
    "default_data_dir",
    "romania_s2_items",
    "ssl4eo_s1_items",
    "ssl4eo_s2_items",
    "write_item_collection",
]

CONVENTIONS = ("planetary-computer", "earth-search", "earth-search-v1", "cdse")

_NATIVE_RES = {
    "B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10,
    "B8A": 20, "B09": 60, "B11": 20, "B12": 20, "SCL": 20,
}
_ES_V1_KEYS = {
    "B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1",
    "B06": "rededge2", "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "nir09",
    "B11": "swir16", "B12": "swir22", "SCL": "scl",
}
_PC_FILE = "stac_items/sentinel2/site2-2020_jun_jul-35MNM.geojson"
_ES_FILE = "stac_items/sentinel2/S2A_28QCH_20200714_0_L2A.json"
_S1_FILE = "stac_items/sentinel1/S1A_20200103_17RMJ_ASC.json"
_ROMANIA = "s2_ts_romania/sentinel2_cube_subset_romania_{res}.nc"
_SSL4EO = "s1s2_ssl4eo_pair/0000200"


def default_data_dir() -> Path:
    """The shared data folder: ``$XSKY_SHARED_DATA``, else ``../shared/data`` beside the repo
    (or beside the working directory)."""
    env = os.environ.get("XSKY_SHARED_DATA")
    cands = [Path(env)] if env else []
    cands += [
        Path(__file__).resolve().parents[2] / ".." / "shared" / "data",
        Path.cwd() / ".." / "shared" / "data",
        Path.cwd() / "shared" / "data",
    ]
    for c in cands:
        if (c / "stac_items").is_dir():
            return c.resolve()
    raise FileNotFoundError(
        "shared data folder not found; set XSKY_SHARED_DATA to the folder holding stac_items/ "
        f"(tried {[str(c) for c in cands]})"
    )


# --------------------------------------------------------------------------- writing


def _write_cog(path: Path, data: np.ndarray, transform: Any, crs: str, nodata: float | None) -> Path:
    """Write one band as a COG (skipped when the file already exists)."""
    if path.exists():
        return path
    import rioxarray  # noqa: F401
    import xarray as xr

    path.parent.mkdir(parents=True, exist_ok=True)
    da = xr.DataArray(data, dims=("y", "x"))
    da = da.rio.write_crs(crs).rio.write_transform(transform)
    if nodata is not None:
        da = da.rio.write_nodata(nodata)
    tmp = path.with_suffix(".tmp.tif")
    da.rio.to_raster(tmp, driver="COG", compress="deflate", blocksize=256)
    tmp.replace(path)  # atomic: a half-written file is never reused
    return path


def _footprint(shape: tuple[int, int], transform: Any, crs: str) -> tuple[dict[str, Any], list[float]]:
    from odc.geo.geobox import GeoBox

    gbox = GeoBox(shape, transform, crs)
    geom = gbox.extent.to_crs("epsg:4326")
    b = geom.boundingbox
    return geom.json, [b.left, b.bottom, b.right, b.top]


def _rewrite_id(item_id: str, when: datetime, suffix: str = "") -> str:
    stamp = when.strftime("%Y%m%dT%H%M%S")
    new, n = re.subn(r"\d{8}T\d{6}", stamp, item_id, count=1)
    if n == 0:
        new, n = re.subn(r"(?<=_)\d{8}(?=_)", when.strftime("%Y%m%d"), item_id, count=1)
    return (new if n else f"{item_id}_{stamp}") + suffix


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _proj_fields(template: dict[str, Any], shape: tuple[int, int], transform: Any) -> dict[str, Any]:
    tr = [transform.a, transform.b, transform.c, transform.d, transform.e, transform.f]
    old = template.get("proj:transform")
    if isinstance(old, list) and len(old) == 9:
        tr += [0.0, 0.0, 1.0]
    ny, nx = shape
    x0, y1 = transform.c, transform.f
    x1, y0 = x0 + nx * transform.a, y1 + ny * transform.e
    out: dict[str, Any] = {"proj:shape": [ny, nx], "proj:transform": tr}
    if "proj:bbox" in template:
        out["proj:bbox"] = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
    return out


def _offline_links(d: dict[str, Any]) -> list[dict[str, Any]]:
    """Drop navigation links: pystac resolves a remote root link on ``to_dict()``."""
    drop = {"self", "root", "parent", "collection", "derived_from"}
    return [ln for ln in d.get("links", []) if ln.get("rel") not in drop]


def _is_raster(asset: dict[str, Any]) -> bool:
    t = str(asset.get("type", "")).lower()
    return "tiff" in t or "jp2" in t or "data" in (asset.get("roles") or [])


def _epsg(crs: str) -> int:
    from pyproj import CRS

    c = CRS.from_user_input(crs)
    if c.is_bound and c.source_crs is not None:
        c = c.source_crs  # the Romania cube's WKT wraps EPSG:3035 with an all-zero TOWGS84
    code = c.to_epsg(min_confidence=20)
    if code is None:
        raise ValueError(f"{crs!r} has no EPSG code")
    return int(code)


def _s2_item(
    template: dict[str, Any],
    convention: str,
    when: datetime,
    rasters: dict[tuple[str, int], tuple[Path, tuple[int, int], Any]],
    crs: str,
    props: dict[str, Any],
    id_suffix: str = "",
) -> dict[str, Any]:
    """One S2 item in ``convention`` from a real template and the written rasters.

    ``rasters`` maps (canonical band, resolution in m) to (file, shape, affine).
    """
    d = copy.deepcopy(template)
    tmpl_assets = template["assets"]
    assets = {k: v for k, v in d["assets"].items() if not _is_raster(v)}
    for (band, res), (path, shape, transform) in sorted(rasters.items()):
        native = res == _NATIVE_RES[band]
        src = copy.deepcopy(tmpl_assets.get(band, {}))
        if convention in ("planetary-computer", "earth-search"):
            if not native or band not in tmpl_assets:
                continue
            key = band
        elif convention == "earth-search-v1":
            if not native:
                continue
            key = _ES_V1_KEYS[band]
            for eo in src.get("eo:bands", []):
                eo["name"] = key
            src["raster:bands"] = [
                {"nodata": 0, "data_type": "uint8" if band == "SCL" else "uint16",
                 "spatial_resolution": res}
                | ({} if band == "SCL" else {"scale": 0.0001, "offset": 0})
            ]
        elif convention == "cdse":
            key = f"{band}_{res}m"
            src["title"] = f"{src.get('title', band).split(' - ')[0]} - {res}m"
            src["gsd"] = res
        else:  # pragma: no cover - checked by the public builders
            raise ValueError(convention)
        src.update(href=str(path), type="image/tiff; application=geotiff; profile=cloud-optimized")
        src.setdefault("roles", ["data"])
        src.update(_proj_fields(tmpl_assets.get(band, {"proj:bbox": None}), shape, transform))
        assets[key] = src
    d["assets"] = assets
    ref = rasters.get(("B02", 10)) or next(iter(rasters.values()))
    geom, bbox = _footprint(ref[1], ref[2], crs)
    d["geometry"], d["bbox"] = geom, bbox
    d["id"] = _rewrite_id(template["id"], when, id_suffix)
    d["links"] = _offline_links(d)
    p = d["properties"]
    p["datetime"] = _iso(when)
    p["proj:epsg"] = _epsg(crs)
    if convention == "earth-search-v1":
        d["collection"] = "sentinel-2-l2a"
        p.setdefault("s2:processing_baseline", "02.14")
        p.setdefault("earthsearch:boa_offset_applied", False)
    if convention == "cdse":
        d["collection"] = "sentinel-2-l2a"
    p.update(props)
    return d


def _items(dicts: Iterable[dict[str, Any]]) -> Any:
    import pystac

    return pystac.ItemCollection([pystac.Item.from_dict(x) for x in dicts])


def write_item_collection(items: Any, path: str | os.PathLike[str]) -> Path:
    """Write items as a GeoJSON FeatureCollection (absolute hrefs) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    feats = [it.to_dict(transform_hrefs=False) for it in items]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}, indent=1))
    return path


# --------------------------------------------------------------------------- Romania S2


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")


def romania_s2_items(
    out_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    *,
    convention: str = "planetary-computer",
    start: int = 40,
    n_dates: int = 13,
    baseline: str | Sequence[str | None] | None = None,
    boa_offset_applied: bool | None = None,
    split: bool = False,
) -> Any:
    """Dates of the real Romania L2A cube as STAC items over local COGs.

    Parameters
    ----------
    out_dir
        Folder for the COGs (reused between calls).
    data_dir
        The shared data folder (default :func:`default_data_dir`).
    convention
        Item layout, one of :data:`CONVENTIONS`.
    start, n_dates
        Which dates of the 140-date cube (default 13 dates from 2018-01-07 to 2018-05-22,
        clear, cloudy, shadowed, snowy and cirrus scenes; every SCL class but 0 and 1).
    baseline
        Processing baseline to state on the items (one for all, or one per date; ``None``
        keeps the template's property). Items at ``"04.00"`` or later hold DN + 1000 in their
        files, as ESA's products do, unless ``boa_offset_applied`` is true (Earth Search's
        harmonised files, which hold the original DN).
    boa_offset_applied
        Set ``earthsearch:boa_offset_applied`` on the items (``None``: leave it out, except
        for ``"earth-search-v1"`` where it defaults to false).
    split
        Write each date as two overlapping tiles (west: columns 0–59, east: 40–99) so that a
        solar-day mosaic has to fuse them.

    Returns
    -------
    pystac.ItemCollection
        One item per date (two with ``split=True``), each with ``xsky:source`` naming the
        cube file and date.
    """
    import xarray as xr

    _check_convention(convention)
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    out = Path(out_dir)
    ds10 = xr.open_dataset(data_dir / _ROMANIA.format(res="10m"), mask_and_scale=False)
    ds20 = xr.open_dataset(data_dir / _ROMANIA.format(res="20m"), mask_and_scale=False)
    crs = ds10["spatial_ref"].attrs.get("crs_wkt") or ds10["spatial_ref"].attrs["spatial_ref"]
    crs = f"EPSG:{_epsg(crs)}"
    stop = start + n_dates
    if not (0 <= start < stop <= ds10.sizes["time"]):
        raise ValueError(f"dates {start}..{stop} outside the cube's {ds10.sizes['time']} dates")
    if isinstance(baseline, str) or baseline is None:
        baselines: list[str | None] = [baseline] * n_dates
    else:
        baselines = list(baseline)
        if len(baselines) != n_dates:
            raise ValueError(f"baseline has {len(baselines)} entries for {n_dates} dates")

    def affine(ds: Any) -> Any:
        from affine import Affine

        x, y = ds["x"].values, ds["y"].values
        dx, dy = float(x[1] - x[0]), float(y[1] - y[0])
        return Affine(dx, 0.0, float(x[0]) - dx / 2, 0.0, dy, float(y[0]) - dy / 2)

    tr10, tr20 = affine(ds10), affine(ds20)
    pc = json.loads((data_dir / _PC_FILE).read_text())["features"]
    es = json.loads((data_dir / _ES_FILE).read_text())
    layers = [(ds10, 10, tr10, {"B02": "B2", "B03": "B3", "B04": "B4", "B08": "B8"}),
              (ds20, 20, tr20, {"B03": "B3", "B04": "B4", "B8A": "B8A", "B11": "B11", "SCL": "SCL"})]
    tiles = [("", slice(0, 100))] if not split else [("_W", slice(0, 60)), ("_E", slice(40, 100))]

    dicts = []
    for k, t in enumerate(range(start, stop)):
        date = datetime.fromisoformat(str(ds10["time"].values[t])[:19]).replace(tzinfo=UTC)
        template = pc[k % len(pc)] if convention in ("planetary-computer", "cdse") else es
        tod = datetime.fromisoformat(template["properties"]["datetime"].replace("Z", "+00:00"))
        when = date + timedelta(hours=tod.hour, minutes=tod.minute, seconds=tod.second)
        bl = baselines[k]
        add_offset = bl is not None and float(bl) >= 4.0 and not boa_offset_applied
        tag = f"romania{'_dn_plus_1000' if add_offset else ''}"
        for suffix, cols in tiles:
            rasters = {}
            for ds, res, tr, names in layers:
                f = res // 10
                c = slice(cols.start // f, cols.stop // f)
                sub_tr = tr @ tr.translation(c.start, 0)
                for band, var in names.items():
                    a = np.asarray(ds[var].isel(time=t, x=c).values)
                    if band == "SCL":
                        a = a.astype("uint8")
                    elif add_offset:
                        a = np.where(a == 0, 0, a.astype("uint32") + 1000).astype("uint16")
                    else:
                        a = a.astype("uint16")
                    path = out / tag / f"{date:%Y%m%d}{suffix}" / f"{band}_{res}m.tif"
                    _write_cog(path, a, sub_tr, crs, 0)
                    rasters[(band, res)] = (path, a.shape, sub_tr)
            props: dict[str, Any] = {
                "xsky:source": f"s2_ts_romania time={date:%Y-%m-%d} (index {t}) cols "
                f"{cols.start}:{cols.stop}",
            }
            if bl is not None:
                props["s2:processing_baseline"] = bl
            if boa_offset_applied is not None:
                props["earthsearch:boa_offset_applied"] = bool(boa_offset_applied)
            dicts.append(_s2_item(template, convention, when, rasters, crs, props, suffix))
    return _items(dicts)


# --------------------------------------------------------------------------- SSL4EO S2 / S1


def ssl4eo_s2_items(
    out_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    *,
    convention: str = "earth-search",
) -> Any:
    """The two real SSL4EO-S12 L2A scenes (12 bands, no SCL, EPSG:4326) as STAC items.

    The product id, platform and cloud cover of each item come from the scene's own
    ``metadata.json``; the rest of the item is the real Earth Search (or PC) template.
    """
    import rasterio

    _check_convention(convention)
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    out = Path(out_dir)
    es = json.loads((data_dir / _ES_FILE).read_text())
    pc = json.loads((data_dir / _PC_FILE).read_text())["features"][0]
    template = pc if convention in ("planetary-computer", "cdse") else es
    dicts = []
    for scene in sorted((data_dir / _SSL4EO / "s2_l2a").iterdir()):
        if not scene.is_dir():
            continue
        meta = json.loads((scene / "metadata.json").read_text())
        when = datetime.fromtimestamp(meta["system:time_start"] / 1000, tz=UTC)
        rasters = {}
        crs = "EPSG:4326"
        for band, res in _NATIVE_RES.items():
            src = scene / f"B{int(band[1:]) if band[1:].isdigit() else band[1:]}.tif"
            if band == "SCL" or not src.exists():
                continue
            with rasterio.open(src) as r:
                a, tr, crs = r.read(1), r.transform, r.crs.to_string()
            path = out / "ssl4eo_s2" / scene.name / f"{band}_{res}m.tif"
            _write_cog(path, a, tr, crs, 0)
            rasters[(band, res)] = (path, a.shape, tr)
        props = {
            "xsky:source": f"s1s2_ssl4eo_pair/0000200/s2_l2a/{scene.name}",
            "eo:cloud_cover": meta.get("CLOUDY_PIXEL_PERCENTAGE"),
            "platform": str(meta.get("SPACECRAFT_NAME", "")).lower(),
        }
        if "sentinel:product_id" in template["properties"] or convention == "earth-search":
            props["sentinel:product_id"] = meta["PRODUCT_ID"]
        if "s2:product_uri" in template["properties"]:
            props["s2:product_uri"] = meta["PRODUCT_ID"] + ".SAFE"
        if "s2:processing_baseline" in template["properties"] or convention == "earth-search-v1":
            props["s2:processing_baseline"] = meta["PROCESSING_BASELINE"]
        dicts.append(_s2_item(template, convention, when, rasters, crs, props))
    return _items(dicts)


def ssl4eo_s1_items(
    out_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """The two real SSL4EO-S12 Sentinel-1 scenes as items of the real S1 RTC item.

    The source files hold VV/VH in dB; the item declares linear gamma0 (float32, nodata 0),
    so the COGs hold ``10 ** (dB / 10)`` as float32. Dates, product ids and orbit come from
    the scenes' ``metadata.json``.
    """
    import rasterio

    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    out = Path(out_dir)
    template = json.loads((data_dir / _S1_FILE).read_text())
    dicts = []
    for scene in sorted((data_dir / _SSL4EO / "s1_grd").iterdir()):
        if not scene.is_dir():
            continue
        meta = json.loads((scene / "metadata.json").read_text())
        m = re.search(r"_(\d{8}T\d{6})_(\d{8}T\d{6})_", scene.name)
        assert m, scene.name
        t0, t1 = (datetime.strptime(s, "%Y%m%dT%H%M%S").replace(tzinfo=UTC) for s in m.groups())
        d = copy.deepcopy(template)
        assets = {}
        shape = tr = crs = None
        for pol in ("VV", "VH"):
            with rasterio.open(scene / f"{pol}.tif") as r:
                db, tr, crs = r.read(1), r.transform, r.crs.to_string()
            lin = np.power(np.float32(10), db.astype("float32") / np.float32(10)).astype("float32")
            path = out / "ssl4eo_s1" / scene.name / f"Gamma0_{pol}.tif"
            _write_cog(path, lin, tr, crs, 0)
            shape = lin.shape
            key = f"gamma0_{pol.lower()}"
            a = copy.deepcopy(template["assets"][key])
            a["href"] = str(path)
            assets[key] = a
        assert shape is not None
        assert tr is not None
        assert crs is not None
        d["assets"] = assets
        d["geometry"], d["bbox"] = _footprint(shape, tr, crs)
        d["id"] = f"S1A_{t0:%Y%m%d}_SSL4EO0000200_{'ASC' if meta['orbitProperties_pass'] == 'ASCENDING' else 'DSC'}"
        d["links"] = _offline_links(d)
        p = d["properties"]
        p.update(_proj_fields(template["properties"], shape, tr))
        p.update(
            {
                "datetime": _iso(t0 + (t1 - t0) / 2),
                "start_datetime": _iso(t0),
                "end_datetime": _iso(t1),
                "proj:epsg": _epsg(crs),
                "sentinel:product_ids": [scene.name],
                "sat:orbit_state": str(meta["orbitProperties_pass"]).lower(),
                "sat:relative_orbit": meta["relativeOrbitNumber_start"],
                "sat:absolute_orbit": meta["orbitNumber_start"],
                "xsky:source": f"s1s2_ssl4eo_pair/0000200/s1_grd/{scene.name} (dB -> linear)",
            }
        )
        for k in ("mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square", "sentinel:mgrs"):
            p.pop(k, None)  # the MGRS tile of the template is elsewhere
        dicts.append(d)
    return _items(dicts)
