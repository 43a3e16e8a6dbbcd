"""Geo-context prototypes: region-aware prototypes of embedding cubes, as in SkySense.

SkySense learns, without labels, a set of prototypes of its fused features for every region
of the globe (4,096 regions, 100 prototypes each in the paper), with balanced Sinkhorn-Knopp
assignments and EMA updates. At inference each pixel's feature attends to its region's
prototypes and the result is concatenated to the feature. The released checkpoints do not
contain that bank, so this module re-learns it from any georeferenced embedding cube.

Conventions used throughout:

- An embedding is an ``xr.DataArray`` with dims ``(y, x, feature)`` or
  ``(time, y, x, feature)`` (any one extra leading dim is treated like ``time``), float,
  georeferenced (a ``spatial_ref`` coordinate) on a regular grid. NumPy-backed input is
  wrapped in a one-chunk dask array.
- A pixel is *valid* when all its features are finite and not all zero. Invalid pixels are
  left out of learning and get assignment ``-1`` and similarity ``NaN``.
- Similarity is the cosine similarity of L2-normalised features with L2-normalised
  prototypes (SkySense/SwAV style). Learned prototypes (``method="centred"``, the default)
  first subtract the region's centre (the mean of its sampled features, stored as the
  ``centre`` variable ``(region, feature)``) from every feature, when learning and when
  scoring; ``method="cosine"`` and label prototypes have no centre. Prototypes are stored
  with unit norm.
- A prototypes ``xr.Dataset`` holds ``prototypes`` with dims ``(region, prototype, feature)``,
  region coordinates ``region`` (int ids) and ``lon_min/lon_max/lat_min/lat_max`` (degrees),
  per-region counts, the optional ``centre``, and provenance attrs.
- Results do not depend on the storage order of ``y`` and ``x`` (north-up or south-up,
  east- or west-going): the same place gives the same prototypes and labels, and maps keep
  the input's coordinate order. Returned by :func:`prototypes`, it also holds lazy
  maps of the cube it was learned from: ``assignment``, ``similarity`` and ``region_map``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dask.array as da
import numpy as np
import xarray as xr

from .._coerce import positive_float, positive_int
from .._interop import require
from .._version import __version__
from ..engine.prototypes import (
    Cube,
    PrototypeBank,
    classify_arrays,
    context_array,
    draw_sample,
    fit_prototypes,
    fit_regions,
    region_counts,
    sample_extents,
    sinkhorn_knopp,
)
from ..engine.regions import SKYSENSE_GRID, Regions, label_map_array, regions_present
from ..exceptions import (
    AlignmentError,
    ArgumentError,
    DataError,
    DimensionError,
    format_choices,
)
from ..geo import get_crs, grid_info, spatial_dims
from ..io.prototypes import as_prototypes_dataset, open_prototypes, save_prototypes

__all__ = [
    "DEFAULT_RESTARTS",
    "DEFAULT_SAMPLE",
    "SKYSENSE_GRID",
    "classify",
    "fit_prototypes",
    "geo_context",
    "open_prototypes",
    "prototypes",
    "region_ids",
    "save_prototypes",
    "sinkhorn_knopp",
]


#: Default maximum number of sampled pixels per region used to learn prototypes.
DEFAULT_SAMPLE = 4096

_REGION_CHOICES = ("grid", "skysense-4096", "global")
_METHODS = ("centred", "cosine")
_SPARSE_CHOICES = ("raise", "drop")

#: Default number of k-means++ initialisations per region (the best by objective is kept).
DEFAULT_RESTARTS = 4

_Sparse = Literal["raise", "drop"]


# --------------------------------------------------------------------------------------
# argument checks and normalisation (done once, at the boundary)
# --------------------------------------------------------------------------------------


def _check_k(k: Any) -> int:
    return positive_int(k, "k (prototypes per region)")


def _non_negative_int(value: Any, name: str) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer | float | np.floating)
        or not np.isfinite(value)
        or int(value) != value
        or value < 0
    ):
        raise ArgumentError(f"{name} must be a non-negative integer (0, 1, 2, ...), got {value!r}")
    return int(value)


def _momentum(value: Any) -> float:
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    if not ok or not 0.0 <= float(value) < 1.0:
        raise ArgumentError(f"momentum must be a number in [0, 1), e.g. 0.5, got {value!r}")
    return float(value)


def _choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ArgumentError(f"unknown {name}={value!r}; choose one of {format_choices(choices)}")
    return value


@dataclass(frozen=True)
class _Embedding:
    """An embedding cube in canonical order ``([tdim,] y, x, feature)``, dask-backed."""

    da: xr.DataArray
    tdim: str | None
    ydim: str
    xdim: str
    crs_wkt: str

    @property
    def data(self) -> Any:
        """The embedding's dask array."""
        return self.da.data

    @property
    def yv(self) -> np.ndarray:
        return np.asarray(self.da[self.ydim].values, "float64")

    @property
    def xv(self) -> np.ndarray:
        return np.asarray(self.da[self.xdim].values, "float64")

    @property
    def cube(self) -> Cube:
        """The arrays the engine works on."""
        return Cube(self.da.data, self.yv, self.xv, self.crs_wkt, self.tdim is not None)


def _coerce_embedding(emb: Any) -> _Embedding:
    if isinstance(emb, xr.Dataset):
        names = list(emb.data_vars)
        raise ArgumentError(
            "expected an embedding xr.DataArray, got an xr.Dataset with variables "
            f"{names}; pick one, e.g. ds['embedding']"
        )
    if not isinstance(emb, xr.DataArray):
        raise ArgumentError(f"expected an embedding xr.DataArray, got {type(emb).__name__}")
    ydim, xdim = spatial_dims(emb)
    if "feature" not in emb.dims:
        raise DimensionError(
            f"embedding {emb.name!r} has dims {tuple(emb.dims)} but no 'feature' dim; "
            "rename the channel dim, e.g. emb.rename({'band': 'feature'})"
        )
    extra = [d for d in emb.dims if d not in (ydim, xdim, "feature")]
    if len(extra) > 1:
        raise DimensionError(
            f"embedding {emb.name!r} has dims {tuple(emb.dims)}; expected (y, x, feature) or "
            f"(time, y, x, feature), got extra dims {extra}; select or stack them first, "
            f"e.g. emb.isel({extra[0]}=0)"
        )
    if not np.issubdtype(emb.dtype, np.floating):
        raise DataError(
            f"embedding {emb.name!r} has dtype {emb.dtype}, expected float; "
            "cast it with emb.astype('float32')"
        )
    if emb.sizes["feature"] < 1:
        raise DimensionError(f"embedding {emb.name!r} has an empty 'feature' dim")
    grid_info(emb)  # regular, monotonic pixel grid
    crs = get_crs(emb)
    tdim = extra[0] if extra else None
    order = [*extra, ydim, xdim, "feature"]
    arr = emb.transpose(*order)
    if arr.chunks is None:
        arr = arr.chunk()  # wrap in-memory data in one dask chunk
    arr = arr.chunk({"feature": -1})
    return _Embedding(arr, None if tdim is None else str(tdim), ydim, xdim, crs.to_wkt())


def _check_aligned(obj: xr.DataArray, emb: _Embedding, what: str) -> None:
    for d in (emb.ydim, emb.xdim):
        if d not in obj.dims:
            raise DimensionError(
                f"{what} has dims {tuple(obj.dims)} but needs {emb.ydim!r} and {emb.xdim!r} "
                "like the embedding"
            )
        if d in obj.coords:
            a = np.asarray(obj[d].values, "float64")
            b = np.asarray(emb.da[d].values, "float64")
            step = abs(b[1] - b[0]) if b.size > 1 else 1.0
            if a.shape != b.shape or not np.allclose(a, b, rtol=0, atol=1e-6 * step):
                raise AlignmentError(
                    f"{what} is not aligned with the embedding along {d!r} ({a.size} vs "
                    f"{b.size} pixels, or different coordinates); put it on the embedding "
                    f"grid, e.g. {what}.reindex_like(emb, method='nearest')"
                )
        elif obj.sizes[d] != emb.da.sizes[d]:
            raise AlignmentError(
                f"{what} has {obj.sizes[d]} pixels along {d!r}, the embedding "
                f"{emb.da.sizes[d]}; they must be on the same grid"
            )


# --------------------------------------------------------------------------------------
# regions
# --------------------------------------------------------------------------------------


def _coerce_regions(
    regions: Any, cell_size: Any, default: str
) -> tuple[Regions, xr.DataArray | None]:
    if regions is None:
        regions = default
    if isinstance(regions, xr.DataArray):
        if cell_size is not None:
            raise ArgumentError(
                "cell_size applies to regions='grid' only, not to a region label map"
            )
        return Regions("labels"), regions
    if not isinstance(regions, str) or regions not in _REGION_CHOICES:
        raise ArgumentError(
            f"unknown regions {regions!r}; choose one of {format_choices(_REGION_CHOICES)} or "
            "pass an integer region label map (y, x) as an xr.DataArray"
        )
    if regions == "global":
        if cell_size is not None:
            raise ArgumentError("cell_size applies to regions='grid' only, not to 'global'")
        return Regions("global"), None
    if regions == "skysense-4096" or cell_size is None:
        if regions == "skysense-4096" and cell_size is not None:
            raise ArgumentError("regions='skysense-4096' has a fixed cell size; drop cell_size")
        return Regions("grid", *SKYSENSE_GRID, name="skysense-4096"), None
    if np.ndim(cell_size) == 0:
        cell_size = (cell_size, cell_size)
    if len(cell_size) != 2:
        raise ArgumentError(f"cell_size must be (dlon, dlat) in degrees, got {cell_size!r}")
    dlon = positive_float(cell_size[0], "cell_size dlon")
    dlat = positive_float(cell_size[1], "cell_size dlat")
    if dlon > 360 or dlat > 180:
        raise ArgumentError(
            f"cell_size {cell_size!r} is larger than the globe (360 x 180 degrees); use "
            "regions='global' for a single region"
        )
    return Regions("grid", dlon, dlat, name="custom"), None


def _label_map(
    regions: Regions, rmap: xr.DataArray | None, emb: _Embedding, what: str = "regions"
) -> da.Array | None:
    """The region label map as an int64 dask array on the embedding's (y, x) chunks."""
    if rmap is None:
        return None
    _check_aligned(rmap, emb, what)
    extra = [d for d in rmap.dims if d not in (emb.ydim, emb.xdim)]
    if extra:
        raise DimensionError(
            f"the region label map has dims {tuple(rmap.dims)}; it must be 2-D "
            f"({emb.ydim}, {emb.xdim})"
        )
    if not (np.issubdtype(rmap.dtype, np.integer) or np.issubdtype(rmap.dtype, np.floating)):
        raise DataError(f"the region label map has dtype {rmap.dtype}, expected integers")
    return label_map_array(rmap.transpose(emb.ydim, emb.xdim).data, emb.cube.yx_chunks)


def region_ids(emb: xr.DataArray, *, regions: Any = None, cell_size: Any = None) -> xr.DataArray:
    """Lazy map ``(y, x)`` of the region id of every pixel (``-1``: no region).

    Parameters
    ----------
    emb
        A georeferenced ``DataArray`` with ``y``/``x`` dims (an embedding or any raster).
    regions, cell_size
        As in :func:`prototypes` (default: the ``"skysense-4096"`` grid).

    Returns
    -------
    xarray.DataArray
        ``int64`` region ids; grid ids are ``row * ncols + col`` with row 0 at 90 S and
        col 0 at 180 W, computed from each pixel centre's lon/lat.
    """
    if isinstance(emb, xr.DataArray) and "feature" not in emb.dims:
        emb = emb.expand_dims(feature=1, axis=-1)
    e = _coerce_embedding(emb)
    reg, rmap = _coerce_regions(regions, cell_size, "grid")
    return _region_map_da(e, reg, _label_map(reg, rmap, e))


def _region_map_da(e: _Embedding, reg: Regions, rmap: da.Array | None) -> xr.DataArray:
    data = e.cube.region_map(reg, rmap)
    coords = {c: e.da[c] for c in e.da.coords if set(e.da[c].dims) <= {e.ydim, e.xdim}}
    return xr.DataArray(data, dims=(e.ydim, e.xdim), coords=coords, name="region_map")


# --------------------------------------------------------------------------------------
# applying prototypes to pixels (lazy, blockwise)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Protos:
    """A prototypes ``Dataset`` and the engine's view of it."""

    bank: PrototypeBank
    ds: xr.Dataset

    @property
    def regions(self) -> Regions:
        return self.bank.regions


def _coerce_protos(protos: Any) -> _Protos:
    protos = as_prototypes_dataset(protos)  # type, dims and the regions attr
    p = protos["prototypes"]
    kind = protos.attrs.get("regions", "grid")
    if kind == "grid":
        cs = protos.attrs.get("cell_size", SKYSENSE_GRID)
        reg = Regions("grid", float(cs[0]), float(cs[1]), protos.attrs.get("grid", "custom"))
    else:
        reg = Regions(kind)
    data = p.data if isinstance(p.data, da.Array) else da.from_array(np.asarray(p.data))
    data = data.rechunk(-1)
    if "region" in protos.coords:
        region_values = np.asarray(protos["region"].values, "int64")
    else:
        region_values = np.arange(p.sizes["region"], dtype="int64")
    if "prototype" in protos.coords:
        labels = np.asarray(protos["prototype"].values, "float64")
    else:
        labels = np.arange(p.sizes["prototype"], dtype="float64")
    centres = None
    if "centre" in protos.data_vars:  # absent: label prototypes, method='cosine', older files
        c = protos["centre"].transpose("region", "feature")
        cdata = c.data if isinstance(c.data, da.Array) else da.from_array(np.asarray(c.data))
        centres = cdata.rechunk(-1)
    return _Protos(PrototypeBank(data, region_values, labels, reg, centres), protos)


def _apply_regions(e: _Embedding, pr: _Protos, regions: xr.DataArray | None) -> da.Array | None:
    """The label map to use for label-map prototypes (or None for grid/global)."""
    if pr.regions.kind != "labels":
        if regions is not None:
            raise ArgumentError(
                f"these prototypes use regions={pr.regions.kind!r}, computed from each pixel's "
                "lon/lat; do not pass a region label map"
            )
        return None
    if regions is None:
        rm = pr.ds.get("region_map")
        if rm is None:
            raise ArgumentError(
                "these prototypes were learned on a region label map; pass the same label map "
                "for this embedding with regions=label_map"
            )
        regions = rm
    return _label_map(pr.regions, regions, e, "regions")


def _check_features(e: _Embedding, pr: _Protos) -> None:
    d_emb = e.da.sizes["feature"]
    d_pro = pr.ds["prototypes"].sizes["feature"]
    if d_emb != d_pro:
        raise DimensionError(
            f"the embedding has {d_emb} features but the prototypes {d_pro}; use prototypes "
            "learned from the same model's embeddings"
        )


def _map_coords(e: _Embedding) -> dict[Hashable, Any]:
    keep = {d for d in e.da.dims if d != "feature"}
    return {c: e.da[c] for c in e.da.coords if set(e.da[c].dims) <= keep}


def classify(
    emb: xr.DataArray, protos: xr.Dataset, *, regions: xr.DataArray | None = None
) -> xr.Dataset:
    """Nearest-prototype map of an embedding cube, lazily.

    Each valid pixel is compared (cosine similarity) with the prototypes of its region and
    takes the best one. When ``protos`` holds a ``centre`` (learned with
    ``method="centred"``), the region's centre is subtracted from the pixel's feature first,
    as when the prototypes were learned; files without one are scored with plain cosine.
    The result does not depend on the storage order of ``y``/``x`` and keeps the input's. For learned prototypes the label is the prototype index within the
    region; for label prototypes (``prototypes(emb, labels=...)``) it is the class value.

    Parameters
    ----------
    emb
        Embedding ``DataArray`` ``([time,] y, x, feature)`` with a CRS.
    protos
        A prototypes ``Dataset`` (:func:`prototypes` or :func:`open_prototypes`).
    regions
        Region label map ``(y, x)`` for this embedding, needed only for prototypes learned on
        a label map (defaults to the one stored with ``protos`` when it is on the same grid).

    Returns
    -------
    xarray.Dataset
        ``label`` (int64, ``-1`` for invalid pixels or pixels whose region has no prototypes)
        and ``similarity`` (float32 cosine similarity, ``NaN`` there), dims ``([time,] y, x)``.
        Nothing is computed.
    """
    e = _coerce_embedding(emb)
    pr = _coerce_protos(protos)
    _check_features(e, pr)
    rmap = _apply_regions(e, pr, regions)
    lab, simil = classify_arrays(e.cube, pr.bank, rmap)
    dims = e.da.dims[:-1]
    coords = _map_coords(e)
    label = xr.DataArray(lab, dims=dims, coords=coords)
    sim = xr.DataArray(simil, dims=dims, coords=coords)
    label.attrs = {"long_name": "nearest prototype", "missing_value": -1}
    sim.attrs = {"long_name": "cosine similarity to the nearest prototype"}
    return xr.Dataset({"label": label, "similarity": sim})


def geo_context(
    emb: xr.DataArray,
    protos: xr.Dataset,
    *,
    temperature: float = 0.1,
    regions: xr.DataArray | None = None,
) -> xr.DataArray:
    """Concatenate to every pixel's feature its attention over its region's prototypes.

    As SkySense does at inference: for a pixel feature ``f`` in region ``r`` with unit-norm
    prototypes ``P_r`` (k x D), the context is ``softmax(cos(f, P_r) / temperature) @ P_r``
    (a convex combination of unit vectors), and the output is ``[f, context]``, so the
    ``feature`` dim doubles to ``2 D``. Lazy: nothing is computed. With centred prototypes
    (a ``centre`` variable), ``cos(f - c_r, P_r)`` is used, ``c_r`` the region's centre, and
    the context is a combination of the prototypes, i.e. a direction relative to ``c_r``.

    Pixels that are invalid or whose region has no prototypes get ``NaN`` in the context
    half (the first half is the input, unchanged).

    Parameters
    ----------
    emb
        Embedding ``DataArray`` ``([time,] y, x, feature)`` with a CRS.
    protos
        A prototypes ``Dataset`` learned from embeddings of the same model.
    temperature
        Softmax temperature on cosine similarities (SwAV's 0.1 by default).
    regions
        Region label map ``(y, x)``, only for prototypes learned on a label map.

    Returns
    -------
    xarray.DataArray
        ``([time,] y, x, feature)`` with ``2 D`` features, the input's dtype and coords.
    """
    e = _coerce_embedding(emb)
    pr = _coerce_protos(protos)
    _check_features(e, pr)
    temperature = positive_float(temperature, "temperature")
    rmap = _apply_regions(e, pr, regions)
    data = context_array(e.cube, pr.bank, temperature, rmap)
    coords = _map_coords(e)
    if "feature" in e.da.coords:
        coords["feature"] = np.arange(data.shape[-1])
    attrs = dict(e.da.attrs)
    attrs.update(
        geo_context="attention over region prototypes, concatenated (features D..2D-1)",
        geo_context_temperature=temperature,
        geo_context_regions=pr.regions.kind,
        geo_context_k=int(pr.ds["prototypes"].sizes["prototype"]),
    )
    return xr.DataArray(
        data, dims=e.da.dims, coords=coords, name=e.da.name or "embedding", attrs=attrs
    )


# --------------------------------------------------------------------------------------
# prototypes(): learned (unsupervised) and label (class-mean) prototypes
# --------------------------------------------------------------------------------------


def _source_attrs(attrs: dict[Hashable, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for src, dst in (
        (("model", "model_name", "xsky_model"), "source_model"),
        (("weights_sha256", "model_sha256", "sha256"), "source_weights_sha256"),
    ):
        for key in src:
            val = attrs.get(key)
            if isinstance(val, str) and val:
                out[dst] = val
                break
    return out


def prototypes(
    emb: xr.DataArray,
    k: int | None = None,
    *,
    labels: xr.DataArray | None = None,
    regions: str | xr.DataArray | None = None,
    cell_size: float | tuple[float, float] | None = None,
    sample: int = DEFAULT_SAMPLE,
    iterations: int = 30,
    epsilon: float = 0.05,
    momentum: float = 0.5,
    sinkhorn_iterations: int = 3,
    seed: int = 0,
    sparse: _Sparse = "raise",
    classes: Sequence[int] | None = None,
    method: Literal["centred", "cosine"] = "centred",
    restarts: int = DEFAULT_RESTARTS,
) -> xr.Dataset:
    """Learn ``k`` prototypes per geographic region, or class-mean prototypes from labels.

    **Learned prototypes** (``k`` given). Every pixel gets a region from its centre's lon/lat
    (``regions``). A deterministic sample of at most ``sample`` valid pixels per region is
    drawn in one streamed pass over the dask blocks: each pixel's global ``(time, y, x)``
    index is hashed with ``seed`` and each region keeps its ``sample`` smallest hashes
    (a uniform random sample without replacement, stratified by region). The sample does
    not depend on the chunking, and memory stays bounded (never the whole cube): a task
    holds one block plus at most ``sample`` rows per region it sees, and a merge of 8
    partial samples at most ``8 * sample * n_regions * D * 4`` bytes. The index is taken
    north-up and west-to-east, so the storage order of ``y``/``x`` does not change the
    sample. For each region, :func:`fit_prototypes` then runs (float64): k-means++ seeding
    (``restarts`` draws, the best by objective is kept), then ``iterations`` steps of
    Sinkhorn-Knopp balanced soft assignment on cosine similarities and EMA updates of the
    prototypes. With ``method="centred"`` (default) the region's sample mean is subtracted
    from the features first. Only regions with sampled pixels get prototypes.

    **Label prototypes** (``labels`` given, ``k`` not). The prototype of a class is the
    normalised mean of the L2-normalised features of its labelled pixels (flox groupby-mean,
    lazy), per region when ``regions`` is given; one ``"global"`` region by default.

    Parameters
    ----------
    emb
        Embedding ``DataArray`` ``([time,] y, x, feature)``, float, with a CRS and regular
        x/y coordinates. NumPy-backed input is wrapped in one dask chunk.
    k
        Prototypes per region (learned prototypes). The paper uses 100.
    labels
        Integer class map ``(y, x)`` or ``(time, y, x)`` on the embedding grid; ``NaN`` or
        negative values mark unlabelled pixels. Labels ``(y, x)`` apply at every time.
    regions
        ``"grid"`` (default for learned prototypes): lon/lat cells of ``cell_size``, or the
        ``"skysense-4096"`` preset (64 x 64 cells of 5.625 deg lon x 2.8125 deg lat, the
        default when ``cell_size`` is None); ``"global"`` (one region, the default with
        ``labels``); or an integer region label map ``(y, x)`` on the embedding grid
        (negative or NaN: no region). With ``labels``, a dask-backed label map is computed
        once to list its region ids.
    cell_size
        ``(dlon, dlat)`` grid cell in degrees (a number for square cells).
    sample
        Maximum number of sampled pixels per region (default 4096).
    iterations, epsilon, momentum, sinkhorn_iterations
        Update steps (30), Sinkhorn regularisation (0.05, as SwAV), EMA momentum (0.5) and
        Sinkhorn rounds per step (3, as SwAV).
    seed
        Seed of the sample and of the initialisation; same seed, same prototypes.
    sparse
        What to do with a region that has pixels but fewer than ``k`` sampled:
        ``"raise"`` (default) raises :class:`~xsky.XSkyError`; ``"drop"`` leaves the region
        out (its pixels get assignment ``-1``).
    classes
        Class values for label prototypes; by default the distinct non-negative values of
        ``labels`` (found eagerly for numpy labels, with one compute of the label map for
        dask labels; give ``classes`` to keep everything lazy).
    method
        Learned prototypes only. ``"centred"`` (default): subtract each region's centre (the
        mean of its sampled features) before normalising, when learning and whenever the
        prototypes are applied (the centre is stored as ``centre``). Real embeddings share
        a large common component (cosine similarities all near 1), which makes the fixed
        temperature Sinkhorn of plain cosine merge clusters; centring removes it.
        ``"cosine"``: SkySense's plain cosine/Sinkhorn on L2-normalised features, no
        centre (with ``restarts=1``, what earlier xsky versions learned).
    restarts
        Learned prototypes only: k-means++ initialisations per region (default 4); the run
        with the highest mean cosine similarity of the samples to their nearest prototype
        is kept.

    Returns
    -------
    xarray.Dataset
        - ``prototypes`` ``(region, prototype, feature)`` float32, unit norm (lazy for label
          prototypes); the ``prototype`` coordinate is ``0..k-1`` or the class values;
        - ``n_samples`` and ``n_pixels`` ``(region,)`` (learned: sampled and valid pixels),
          or ``n_labelled`` ``(region, prototype)`` (labelled pixels per class);
        - ``centre`` ``(region, feature)`` float32 (``method="centred"`` only): subtracted
          from a pixel's feature before it is compared with its region's prototypes;
        - coordinates ``region`` (ids) and ``lon_min/lon_max/lat_min/lat_max`` (degrees;
          the cell for grid regions; for label-map regions the extent of their pixel
          centres with learned prototypes, NaN with label prototypes);
        - lazy maps of this cube: ``assignment`` and ``similarity`` (as :func:`classify`'s
          ``label``/``similarity``) with dims ``([time,] y, x)``, and ``region_map`` ``(y, x)``;
        - attrs: ``kind`` (``"learned"``/``"labels"``), the parameters, region definition,
          ``source_model``/``source_weights_sha256`` (from the embedding attrs) and
          ``xsky_version``.

    Notes
    -----
    Sinkhorn-Knopp spreads each region's sample evenly over its ``k`` prototypes while
    learning (as SwAV and SkySense do), which suits many balanced modes; a rare class in a
    region can share a prototype with a common one, so give ``k`` well above the number of
    classes you expect. Maps use the nearest prototype, not the balanced assignment.

    The sample is computed from the embedding (one pass, running the model if the embedding
    is lazy), and the maps compute it again: persist or write the embedding first when the
    model is expensive.

    Raises
    ------
    XSkyError
        On bad parameters (``k > sample``, ``k`` with ``labels``), no valid pixels, a region
        with fewer sampled pixels than ``k`` (``sparse="raise"``).
    CRSError
        When the embedding has no CRS.
    DimensionError
        When dims are missing or the label/region map is not on the embedding grid.

    Examples
    --------
    >>> import xsky
    >>> cube = xsky.tutorial.open_dataset("romania").isel(time=slice(0, 4))
    >>> emb = xsky.embed(cube, "test-tiny")
    >>> protos = xsky.prototypes(emb, k=4)
    >>> dict(protos.prototypes.sizes), protos.assignment.dims
    ({'region': 1, 'prototype': 4, 'feature': 16}, ('time', 'y', 'x'))
    >>> int(protos.region[0]), float(protos.lon_min[0]), float(protos.lat_min[0])
    (3107, 16.875, 45.0)
    """
    e = _coerce_embedding(emb)
    if labels is not None:
        if k is not None:
            raise ArgumentError(
                "give either k (learn k prototypes per region) or labels (one prototype per "
                "class), not both"
            )
        return _label_prototypes(e, labels, regions, cell_size, classes)
    if k is None:
        raise ArgumentError("give k, the number of prototypes per region (e.g. k=16), or labels=")
    k = _check_k(k)
    sample = positive_int(sample, "sample")
    if k > sample:
        raise ArgumentError(
            f"k={k} is larger than sample={sample} (the most pixels sampled per region); "
            f"raise sample to at least {k} or lower k"
        )
    iterations = _non_negative_int(iterations, "iterations")
    sinkhorn_iterations = _non_negative_int(sinkhorn_iterations, "sinkhorn_iterations")
    epsilon = positive_float(epsilon, "epsilon")
    momentum = _momentum(momentum)
    sparse = _choice(sparse, "sparse", _SPARSE_CHOICES)  # type: ignore[assignment]
    method = _choice(method, "method", _METHODS)  # type: ignore[assignment]
    restarts = positive_int(restarts, "restarts (k-means++ initialisations per region)")
    seed = _non_negative_int(seed, "seed")
    reg, rm = _coerce_regions(regions, cell_size, "grid")
    rmap = _label_map(reg, rm, e)

    smp = draw_sample(e.cube, reg, rmap, seed, sample)
    if smp["r"].size == 0:
        raise DataError(
            f"embedding {e.da.name!r} has no valid pixel (all NaN or zero, or outside every "
            "region); nothing to learn prototypes from"
        )
    ids, _, counts = region_counts(smp)
    sparse_ids = ids[counts < k]
    if sparse_ids.size and sparse == "raise":
        detail = ", ".join(
            f"{i}: {c}" for i, c in zip(ids[counts < k], counts[counts < k], strict=True)
        )
        raise DataError(
            f"{sparse_ids.size} region(s) have fewer sampled pixels than k={k} "
            f"(region id: pixels = {detail}); lower k, use larger regions (cell_size), or "
            "pass sparse='drop' to leave those regions out"
        )
    if not (counts >= k).any():
        raise DataError(
            f"no region has at least k={k} valid pixels (largest: {counts.max()}); lower k"
        )
    ids, counts, n_pixels, protos, centres = fit_regions(
        smp,
        k,
        iterations=iterations,
        epsilon=epsilon,
        momentum=momentum,
        sinkhorn_iterations=sinkhorn_iterations,
        seed=seed,
        centre=method == "centred",
        restarts=restarts,
    )
    bounds = sample_extents(smp, ids) if reg.kind == "labels" else reg.bounds(ids)
    attrs: dict[str, Any] = {
        "kind": "learned",
        "k": k,
        "sample": sample,
        "iterations": iterations,
        "epsilon": epsilon,
        "momentum": momentum,
        "sinkhorn_iterations": sinkhorn_iterations,
        "seed": seed,
        "method": method,
        "restarts": restarts,
        "metric": "cosine" if centres is None else "cosine after subtracting centre",
        **reg.attrs(),
        **_source_attrs(e.da.attrs),
        "xsky_version": __version__,
    }
    ds = _protos_dataset(e, protos, ids, np.arange(k), bounds, attrs)
    ds["n_samples"] = ("region", counts.astype("int64"))
    ds["n_pixels"] = ("region", n_pixels.astype("int64"))
    if centres is not None:
        ds["centre"] = xr.DataArray(
            centres, dims=("region", "feature"), coords={"region": ds["region"]}
        )
        if "feature" in ds.coords:
            ds["centre"] = ds["centre"].assign_coords(feature=ds["feature"])
        ds["centre"].attrs = {"long_name": "region centre subtracted before scoring"}
    return _attach_maps(ds, e, reg, rmap)


def _protos_dataset(
    e: _Embedding,
    protos: Any,
    ids: np.ndarray,
    proto_values: np.ndarray,
    bounds: dict,
    attrs: dict[str, Any],
) -> xr.Dataset:
    coords: dict[str, Any] = {
        "region": ("region", np.asarray(ids, "int64")),
        "prototype": ("prototype", np.asarray(proto_values)),
        **{name: ("region", np.asarray(v, "float64")) for name, v in bounds.items()},
    }
    if "feature" in e.da.coords:
        coords["feature"] = e.da["feature"].values
    p = xr.DataArray(protos, dims=("region", "prototype", "feature"), coords=coords)
    p.attrs = {"long_name": "prototypes (unit norm)"}
    return xr.Dataset({"prototypes": p}, attrs=attrs)


def _attach_maps(ds: xr.Dataset, e: _Embedding, reg: Regions, rmap: da.Array | None) -> xr.Dataset:
    ds["region_map"] = _region_map_da(e, reg, rmap)
    cl = classify(e.da, ds)
    ds["assignment"] = cl["label"]
    ds["similarity"] = cl["similarity"]
    return ds


def _label_prototypes(
    e: _Embedding, labels: Any, regions: Any, cell_size: Any, classes: Sequence[int] | None
) -> xr.Dataset:
    flox_xr = require("flox.xarray", "label prototypes (groupby-mean)")
    if not isinstance(labels, xr.DataArray):
        raise ArgumentError(
            f"labels must be an xr.DataArray (y, x) of integer classes, got {type(labels).__name__}"
        )
    _check_aligned(labels, e, "labels")
    allowed = {e.ydim, e.xdim} | ({e.tdim} if e.tdim else set())
    if not set(labels.dims) <= allowed:
        raise DimensionError(
            f"labels have dims {tuple(labels.dims)}; expected a subset of {tuple(e.da.dims[:-1])}"
        )
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)):
        raise DataError(f"labels have dtype {labels.dtype}, expected integer class values")
    lab = labels.astype("float64")
    lab = lab.where(np.isfinite(lab) & (lab >= 0))
    if e.tdim and e.tdim in labels.dims:
        lab = lab.chunk({e.tdim: e.data.chunks[0]})
    if classes is None:
        vals = lab.data
        if isinstance(vals, da.Array):
            vals = vals.compute()
        vals = np.asarray(vals)
        cls = np.unique(vals[np.isfinite(vals)])
    else:
        cls = np.unique(np.asarray(classes, "float64"))
    if cls.size == 0:
        raise DataError("labels contain no labelled pixel (all NaN or negative)")
    if not np.all(cls == np.round(cls)):
        raise DataError(f"labels must be integer class values, got {cls[cls != np.round(cls)][:5]}")
    reg, rm = _coerce_regions(regions, cell_size, "global")
    rmap = _label_map(reg, rm, e)
    region_map = _region_map_da(e, reg, rmap)
    raw = None if rm is None or isinstance(rm.data, da.Array) else rm.values
    rids = regions_present(reg, e.yv, e.xv, e.crs_wkt, rmap, raw)
    if rids.size == 0:
        raise DataError("no pixel of the embedding lies in any region of the region label map")

    x = e.da.astype("float64")
    norm = np.sqrt((x**2).sum("feature"))
    ok = np.isfinite(norm) & (norm > 0)
    xn = (x / norm).where(ok)
    dims = [d for d in e.da.dims if d != "feature"]
    by = (region_map.astype("float64").rename("region"), lab.rename("prototype"))
    kw = {"expected_groups": (rids.astype("float64"), cls), "dim": dims, "fill_value": np.nan}
    mean = flox_xr.xarray_reduce(xn, *by, func="nanmean", **kw)
    hits = (ok & lab.notnull()).astype("int64")
    count = flox_xr.xarray_reduce(
        hits, *by, func="sum", expected_groups=kw["expected_groups"], dim=dims, fill_value=0
    )
    mean = mean.transpose("region", "prototype", "feature")
    pn = np.sqrt((mean**2).sum("feature"))
    protos = (mean / pn.where(pn > 0)).astype("float32").data
    count = count.transpose("region", "prototype").data.astype("int64")

    ids = rids.astype("int64")
    bounds = reg.bounds(ids)
    attrs: dict[str, Any] = {
        "kind": "labels",
        "n_classes": int(cls.size),
        "metric": "cosine",
        **reg.attrs(),
        **_source_attrs(e.da.attrs),
        "xsky_version": __version__,
    }
    ds = _protos_dataset(e, protos, ids, cls.astype("int64"), bounds, attrs)
    ds["n_labelled"] = (("region", "prototype"), count)
    ds["n_labelled"].attrs = {"long_name": "labelled valid pixels per class"}
    return _attach_maps(ds, e, reg, rmap)
