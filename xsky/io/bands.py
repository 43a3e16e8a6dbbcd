"""Canonical band names and the aliases used by catalogues and files.

Sentinel-2 bands are named ``B01`` ... ``B12`` and ``B8A``; Sentinel-1 ``VV``/``VH``;
high-resolution optical ``red``/``green``/``blue``/``nir``. Aliases from Planetary
Computer (``B02``), Earth Search (``blue``, ``nir08``), CDSE (``B02_10m``) and short forms
(``B2``) all resolve to the canonical name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..exceptions import BandMismatchError, XSkyError

__all__ = ["S2_BANDS", "canonical_band", "match_bands"]

S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
            "B11", "B12")

_S2_COMMON = {
    "coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05",
    "rededge2": "B06", "rededge3": "B07", "nir": "B08", "nir08": "B8A", "nir09": "B09",
    "cirrus": "B10", "swir16": "B11", "swir22": "B12", "scl": "SCL", "aot": "AOT",
    "wvp": "WVP", "rededge": "B05", "narrow_nir": "B8A", "nir_narrow": "B8A",
    "swir1": "B11", "swir2": "B12",
}
_S1 = {"vv": "VV", "vh": "VH", "hh": "HH", "hv": "HV"}
_HR = {"r": "red", "g": "green", "b": "blue", "n": "nir", "red": "red", "green": "green",
       "blue": "blue", "nir": "nir"}
_S2_RE = re.compile(r"^b0?(\d{1,2}|8a)(?:_\d+m)?$", re.IGNORECASE)
_RES_SUFFIX = re.compile(r"_\d+m$", re.IGNORECASE)


def canonical_band(name: str, modality: str = "s2") -> str:
    """Canonical name of a band alias for a modality.

    Parameters
    ----------
    name
        A band name as a catalogue or file spells it (``"B2"``, ``"blue"``, ``"B02_10m"``).
    modality
        ``"s2"``, ``"s1"`` or ``"hr"``; other modalities return ``name`` unchanged.

    Examples
    --------
    >>> canonical_band("B2"), canonical_band("nir08"), canonical_band("vh", "s1")
    ('B02', 'B8A', 'VH')
    """
    if not isinstance(name, str):
        raise XSkyError(f"band names must be strings, got {name!r}")
    key = name.strip()
    low = key.lower()
    if modality == "s2":
        m = _S2_RE.match(low)
        if m:
            num = m.group(1).upper()
            return "B8A" if num == "8A" else f"B{int(num):02d}"
        base = _RES_SUFFIX.sub("", low)
        return _S2_COMMON.get(base, key)
    if modality == "s1":
        return _S1.get(low.replace("_db", ""), key)
    if modality == "hr":
        return _HR.get(low, key)
    return key


def match_bands(
    available: Iterable[str], wanted: Iterable[str], modality: str = "s2", *, what: str = "input"
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
        have = sorted(lookup)
        raise BandMismatchError(
            f"{what} is missing band(s) {missing} needed by the model (it needs {wanted}); "
            f"found {have}. Load the missing bands, or rename variables to canonical names "
            "(aliases such as 'B2', 'blue' and 'nir' are understood)."
        )
    return {b: lookup[b] for b in wanted}
