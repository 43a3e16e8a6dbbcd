"""What xsky knows about each kind of imagery, in one table.

A :class:`Modality` says, for one sensor family: its canonical band names and the aliases
catalogues and files use for them, the units its values may come in and which one a stored
dtype implies, its pixel grid relative to the Sentinel-2 (reference) grid, its default
no-data value and the names a DataTree node for it may have. Every other module reads this
table; adding a modality is one :func:`register_modality` call.

Units and the conversions between them are also defined here, once, for numpy, xarray and
torch arrays alike (:class:`Conversion`).

Examples
--------
>>> from xsky import modalities
>>> modalities.get("s2").canonical("nir08"), modalities.get("s1").canonical("vh_db")
('B8A', 'VH')
>>> modalities.conversion("dn", "reflectance").scale
0.0001
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .exceptions import ArgumentError, BandMismatchError, UnitsError, format_choices

__all__ = [
    "UNITS",
    "Conversion",
    "Modality",
    "Plausible",
    "canonical_band",
    "conversion",
    "get",
    "match_bands",
    "modality_of_node",
    "names",
    "normalise_units",
    "register_modality",
]

#: Units xsky understands: the keys are what users and files write, the values the canonical
#: unit names.
UNITS: dict[str, str] = {
    "reflectance": "reflectance", "1": "reflectance",
    "dn": "dn",
    "db": "db", "decibel": "db", "decibels": "db",
    "linear": "linear",
    "rgb255": "rgb255",
    # physical quantities taken as they are (temperature in K, elevation in m, class labels)
    "native": "native",
}

ConversionKind = Literal["identity", "scale", "lin2db", "db2lin"]


@dataclass(frozen=True)
class Conversion:
    """A change of units, applicable to numpy, xarray and torch arrays.

    ``lin2db`` has no value for non-positive input: :meth:`valid` tells where it is defined,
    and :meth:`apply` gives NaN (numpy/xarray) or ``-inf``/NaN (torch) elsewhere, so callers
    mask first.
    """

    kind: ConversionKind
    scale: float = 1.0

    def apply(self, x: Any) -> Any:
        """``x`` in the target units (same array type; ``x`` is not modified)."""
        if self.kind == "identity":
            return x
        if self.kind == "scale":
            return x * self.scale
        if self.kind == "lin2db":
            return 10.0 * _log10(x)
        return 10.0 ** (x / 10.0)

    def valid(self, x: Any) -> Any | None:
        """Boolean array of where the conversion is defined, or ``None`` when it always is."""
        return x > 0 if self.kind == "lin2db" else None


def _log10(x: Any) -> Any:
    # torch tensors and numpy/xarray arrays both offer log10 under these names
    if hasattr(x, "log10"):
        return x.log10()
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(x)


_CONVERSIONS: dict[tuple[str, str], Conversion] = {
    ("dn", "reflectance"): Conversion("scale", 1e-4),
    ("reflectance", "dn"): Conversion("scale", 1e4),
    ("linear", "db"): Conversion("lin2db"),
    ("db", "linear"): Conversion("db2lin"),
    ("reflectance", "rgb255"): Conversion("scale", 255.0),
    ("rgb255", "reflectance"): Conversion("scale", 1 / 255.0),
}


Bounds = tuple[float | None, float | None]


@dataclass(frozen=True)
class Plausible:
    """Where the bulk of a modality's valid values lie in one unit.

    Robust statistics only (the 1st percentile, the median and the 99th percentile of the
    valid pixels read), so a few outliers never make data implausible. Each bound is
    ``(low, high)``; ``None`` leaves that side open.
    """

    p1: Bounds = (None, None)
    median: Bounds = (None, None)
    p99: Bounds = (None, None)

    def fits(self, p1: float, median: float, p99: float) -> bool:
        """Whether statistics observed on the data are plausible in this unit."""
        for value, (lo, hi) in ((p1, self.p1), (median, self.median), (p99, self.p99)):
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                return False
        return True

    def describe(self) -> str:
        """The bounds in words, for error messages."""
        parts = []
        for what, (lo, hi) in (("1st percentile", self.p1), ("median", self.median),
                               ("99th percentile", self.p99)):
            if lo is not None and hi is not None:
                parts.append(f"{what} in [{lo:g}, {hi:g}]")
            elif lo is not None:
                parts.append(f"{what} >= {lo:g}")
            elif hi is not None:
                parts.append(f"{what} <= {hi:g}")
        return ", ".join(parts)


def normalise_units(units: Any, what: str = "units") -> str:
    """The canonical unit name for what a user or a file wrote (``"dB"`` → ``"db"``)."""
    u = UNITS.get(str(units).strip().lower()) if isinstance(units, str) else None
    if u is None:
        raise UnitsError(
            f"{what}={units!r} is not understood; use one of "
            f"{format_choices(set(UNITS.values()))}"
        )
    return u


def conversion(have: str, want: str, modality: str = "the input") -> Conversion:
    """The :class:`Conversion` from ``have`` units to ``want`` units.

    Raises
    ------
    UnitsError
        When xsky knows no conversion between the two.
    """
    if have == want:
        return Conversion("identity")
    try:
        return _CONVERSIONS[(have, want)]
    except KeyError:
        raise UnitsError(
            f"modality {modality!r} is in units {have!r} but the model expects {want!r}, and "
            "there is no conversion between them; pass units= to say what the data are in"
        ) from None


@dataclass(frozen=True)
class Modality:
    """One sensor family.

    Parameters
    ----------
    name
        Key used everywhere (``"s2"``): ModelSpec modalities, DataTree nodes, ``units=`` dicts.
    bands
        Canonical band names, in sensor order.
    aliases
        Lower-case alias → canonical band (``"blue"`` → ``"B02"``).
    canonicalise
        Optional extra rule applied to a lower-cased name before the alias table (e.g.
        Sentinel-2's ``B2`` / ``B02_10m`` forms); returns the canonical name or ``None``.
    units
        Units the values may come in (canonical names).
    int_units, float_units
        Units implied by an integer / floating stored dtype when nothing else says.
    grid_factor
        Pixels of this modality per Sentinel-2 pixel along each axis (HR imagery: 32).
    nodata
        Default no-data value of integer-stored data, or ``None``.
    node_names
        Lower-case names a DataTree node holding this modality may have.
    extra_bands
        Non-spectral layers a catalogue offers for this modality (``"SCL"``), canonical names.
    min_int_bits
        Smallest integer width that can hold the values without overflow (8-bit Sentinel-2
        DN, for instance, are clipped or wrapped).
    static
        ``True`` for layers without a time axis (terrain): they stand beside any dates.
    resampling
        Resampling that aligns this modality onto another grid, when it must not be the
        caller's choice (``"nearest"`` for class labels); ``None``: the caller's.
    plausible
        Per unit, where the bulk of valid values lies (:class:`Plausible`); checked inside
        the tasks on the pixels actually read, so values in the wrong units (digital numbers
        taken as reflectance, linear backscatter taken as dB) raise a ``UnitsError`` instead
        of giving wrong embeddings. Units without an entry are not checked.
    """

    name: str
    bands: tuple[str, ...]
    aliases: Mapping[str, str] = field(default_factory=dict)
    canonicalise: Callable[[str], str | None] | None = field(default=None, compare=False)
    units: tuple[str, ...] = ("reflectance",)
    int_units: str = "reflectance"
    float_units: str = "reflectance"
    grid_factor: int = 1
    nodata: float | None = None
    node_names: tuple[str, ...] = ()
    extra_bands: tuple[str, ...] = ()
    min_int_bits: int = 8
    plausible: Mapping[str, Plausible] = field(default_factory=dict)
    static: bool = False
    resampling: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ArgumentError(f"a modality needs a non-empty string name, got {self.name!r}")
        if not self.bands:
            raise ArgumentError(f"modality {self.name!r} lists no bands")
        for u in (*self.units, self.int_units, self.float_units):
            if u not in UNITS.values():
                raise ArgumentError(
                    f"modality {self.name!r}: unknown units {u!r}; choose from "
                    f"{format_choices(set(UNITS.values()))}"
                )
        if int(self.grid_factor) != self.grid_factor or self.grid_factor < 1:
            raise ArgumentError(
                f"modality {self.name!r}: grid_factor must be a positive integer, got "
                f"{self.grid_factor!r}"
            )
        object.__setattr__(self, "bands", tuple(self.bands))
        object.__setattr__(self, "aliases", {k.lower(): v for k, v in self.aliases.items()})
        object.__setattr__(self, "node_names", tuple({self.name, *self.node_names}))
        for u, p in self.plausible.items():
            if u not in UNITS.values() or not isinstance(p, Plausible):
                raise ArgumentError(
                    f"modality {self.name!r}: plausible must map units in "
                    f"{format_choices(set(UNITS.values()))} to Plausible(...), got {u!r}: {p!r}"
                )
        object.__setattr__(self, "plausible", dict(self.plausible))

    def canonical(self, name: str) -> str:
        """The canonical name of a band alias (unknown names are returned unchanged)."""
        if not isinstance(name, str):
            raise ArgumentError(f"band names must be strings, got {name!r}")
        key = name.strip()
        low = key.lower()
        if self.canonicalise is not None:
            hit = self.canonicalise(low)
            if hit is not None:
                return hit
        for b in (*self.bands, *self.extra_bands):
            if low == b.lower():
                return b
        return self.aliases.get(low, key)

    def default_units(self, integer_stored: bool) -> str:
        """Units implied by the stored dtype when neither the user nor the file says."""
        return self.int_units if integer_stored else self.float_units


# ------------------------------------------------------------------------- the table

_S2_RE = re.compile(r"^b0?(\d{1,2}|8a)(?:_\d+m)?$")
_RES_SUFFIX = re.compile(r"_\d+m$")


def _s2_rule(low: str) -> str | None:
    m = _S2_RE.match(low)
    if m:
        num = m.group(1).upper()
        return "B8A" if num == "8A" else f"B{int(num):02d}"
    base = _RES_SUFFIX.sub("", low)
    return S2.aliases.get(base) if base != low else None


def _s1_rule(low: str) -> str | None:
    base = re.sub(r"^(gamma0|sigma0|beta0)_", "", low)
    base = re.sub(r"_(db|lin|linear)$", "", base)
    return base.upper() if base in ("vv", "vh", "hh", "hv") else None


S2 = Modality(
    name="s2",
    bands=("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
           "B11", "B12"),
    aliases={
        "coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05",
        "rededge2": "B06", "rededge3": "B07", "nir": "B08", "nir08": "B8A", "nir09": "B09",
        "cirrus": "B10", "swir16": "B11", "swir22": "B12", "scl": "SCL", "aot": "AOT",
        "wvp": "WVP", "rededge": "B05", "narrow_nir": "B8A", "nir_narrow": "B8A",
        "swir1": "B11", "swir2": "B12",
    },
    canonicalise=_s2_rule,
    units=("reflectance", "dn"),
    int_units="dn",
    float_units="reflectance",
    nodata=0,
    node_names=("sentinel2", "sentinel-2", "sentinel_2"),
    extra_bands=("SCL", "AOT", "WVP"),
    min_int_bits=16,
    plausible={
        # surface/top-of-atmosphere reflectance: mostly in [-0.2, 2] (bright cloud and snow
        # reach ~1.5); digital numbers = reflectance x 10 000 (+ the -1000 L2A offset)
        "reflectance": Plausible(p1=(-0.2, None), p99=(None, 2.0)),
        "dn": Plausible(p1=(-2000.0, None), p99=(2.0, 65535.0)),
    },
)

S1 = Modality(
    name="s1",
    bands=("VV", "VH", "HH", "HV"),
    aliases={"vv": "VV", "vh": "VH", "hh": "HH", "hv": "HV"},
    canonicalise=_s1_rule,
    units=("db", "linear"),
    int_units="db",
    float_units="db",
    node_names=("sentinel1", "sentinel-1", "sentinel_1"),
    min_int_bits=16,
    plausible={
        # backscatter in dB is mostly in [-50, 10] and always partly negative (the 1st
        # percentile of any real scene is well below -1 dB); linear backscatter is
        # non-negative (up to noise-removal residue) and mostly below 1
        "db": Plausible(p1=(-70.0, -1.0), p99=(None, 25.0)),
        "linear": Plausible(p1=(-0.05, None), median=(None, 1.0), p99=(None, 300.0)),
    },
)

HR = Modality(
    name="hr",
    bands=("red", "green", "blue", "nir"),
    aliases={"r": "red", "g": "green", "b": "blue", "n": "nir"},
    units=("rgb255", "reflectance"),
    int_units="rgb255",
    float_units="rgb255",
    grid_factor=32,  # SkySense's Swin stage-4 grid is the Sentinel-2 grid
    node_names=("highres", "high_res", "aerial"),
    plausible={
        "rgb255": Plausible(p1=(-0.5, None), p99=(1.5, 255.5)),
        "reflectance": Plausible(p1=(-0.2, None), p99=(None, 2.0)),
    },
)

# Auxiliary layers that pixel time-series models (Presto) take next to S1/S2, in the units
# those models were trained on: ERA5 monthly means, SRTM terrain, Dynamic World labels.
ERA5 = Modality(
    name="era5",
    bands=("temperature_2m", "total_precipitation"),
    aliases={"t2m": "temperature_2m", "tp": "total_precipitation",
             "total_precipitation_sum": "total_precipitation"},
    units=("native",), int_units="native", float_units="native",
    plausible={},
)

SRTM = Modality(
    name="srtm",
    bands=("elevation", "slope"),
    aliases={"dem": "elevation", "height": "elevation"},
    units=("native",), int_units="native", float_units="native",
    node_names=("dem",),
    static=True,
)

DW = Modality(
    name="dw",
    bands=("dynamic_world",),
    aliases={"label": "dynamic_world", "dw": "dynamic_world", "landcover": "dynamic_world"},
    units=("native",), int_units="native", float_units="native",
    node_names=("dynamic_world", "dynamicworld"),
    resampling="nearest",  # class labels: never interpolated
)

_TABLE: dict[str, Modality] = {m.name: m for m in (S2, S1, HR, ERA5, SRTM, DW)}
_LOCK = threading.Lock()


def register_modality(modality: Modality, *, overwrite: bool = False) -> Modality:
    """Add a modality to the table (every xsky module then knows it).

    Examples
    --------
    >>> from xsky.modalities import Modality, register_modality
    >>> _ = register_modality(Modality("l8", ("B2", "B3", "B4", "B5"),
    ...                                aliases={"blue": "B2"}), overwrite=True)
    >>> get("l8").canonical("blue")
    'B2'
    """
    if not isinstance(modality, Modality):
        raise ArgumentError(
            f"register_modality needs an xsky.modalities.Modality, got {type(modality).__name__}"
        )
    with _LOCK:
        if modality.name in _TABLE and not overwrite and _TABLE[modality.name] != modality:
            raise ArgumentError(
                f"a modality named {modality.name!r} is already registered; pass "
                "overwrite=True to replace it"
            )
        _TABLE[modality.name] = modality
    return modality


def get(name: str) -> Modality:
    """The registered modality called ``name``.

    Raises
    ------
    ArgumentError
        When no modality has that name.
    """
    try:
        return _TABLE[name]
    except (KeyError, TypeError):
        raise ArgumentError(
            f"unknown modality {name!r}; registered modalities are {format_choices(_TABLE)} "
            "(add one with xsky.modalities.register_modality)"
        ) from None


def names() -> tuple[str, ...]:
    """Names of the registered modalities."""
    return tuple(_TABLE)


def modality_of_node(node: str) -> str | None:
    """The modality a DataTree node name stands for (``"Sentinel-2"`` → ``"s2"``), if any."""
    low = node.strip().lower()
    return next((m.name for m in _TABLE.values() if low in m.node_names), None)


def canonical_band(name: str, modality: str = "s2") -> str:
    """Canonical name of a band alias for a modality (unknown modalities: unchanged).

    Examples
    --------
    >>> canonical_band("B2"), canonical_band("nir08"), canonical_band("vh", "s1")
    ('B02', 'B8A', 'VH')
    """
    mod = _TABLE.get(modality)
    if mod is None:
        if not isinstance(name, str):
            raise ArgumentError(f"band names must be strings, got {name!r}")
        return name.strip()
    return mod.canonical(name)


def match_bands(
    available: Iterable[Any], wanted: Iterable[str], modality: str = "s2", *,
    what: str = "input",
) -> dict[str, str]:
    """Map each wanted canonical band to the name it has in ``available``.

    Raises
    ------
    BandMismatchError
        A wanted band is missing, or two available names resolve to the same band.
    """
    lookup: dict[str, str] = {}
    for name in available:
        if not isinstance(name, str):
            continue
        canon = canonical_band(name, modality)
        if canon in lookup and lookup[canon] != name:
            # an exact canonical spelling wins over an alias
            if name == canon:
                lookup[canon] = name
                continue
            if lookup[canon] == canon:
                continue
            raise BandMismatchError(
                f"{what} has both {lookup[canon]!r} and {name!r}, which are the same band "
                f"{canon!r}; drop one of them (e.g. ds.drop_vars({name!r}))"
            )
        lookup[canon] = name
    wanted = list(wanted)
    missing = [b for b in wanted if b not in lookup]
    if missing:
        raise BandMismatchError(
            f"{what} is missing band(s) {missing} needed by the model (it needs {wanted}); "
            f"found {sorted(lookup)}. Load the missing bands, or rename variables to canonical "
            "names (aliases such as 'B2', 'blue' and 'nir' are understood)."
        )
    return {b: lookup[b] for b in wanted}
