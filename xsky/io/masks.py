"""Validity masks from the Sentinel-2 L2A scene classification (SCL) layer.

SCL classes (ESA L2A product definition):

====  ==========================  ====  ==========================
0     no data                     6     water
1     saturated or defective      7     unclassified
2     dark area pixels            8     cloud, medium probability
3     cloud shadows               9     cloud, high probability
4     vegetation                  10    thin cirrus
5     not vegetated               11    snow or ice
====  ==========================  ====  ==========================
"""

from __future__ import annotations

from collections.abc import Collection

import xarray as xr

from ..exceptions import ArgumentError

__all__ = ["SCL_CLASSES", "default_scl_mask", "resolve_scl_mask", "scl_valid"]

SCL_CLASSES: dict[int, str] = {
    0: "no data",
    1: "saturated or defective",
    2: "dark area pixels",
    3: "cloud shadows",
    4: "vegetation",
    5: "not vegetated",
    6: "water",
    7: "unclassified",
    8: "cloud medium probability",
    9: "cloud high probability",
    10: "thin cirrus",
    11: "snow or ice",
}

_ALWAYS_MASKED = (0, 1, 3, 8, 9, 10)


def default_scl_mask(snow: bool = False) -> tuple[int, ...]:
    """SCL classes marked invalid by default.

    No data, saturated, cloud shadows, clouds (medium and high probability) and thin cirrus
    are always masked; snow/ice (11) is masked unless ``snow=True`` keeps it.
    """
    return _ALWAYS_MASKED if snow else (*_ALWAYS_MASKED, 11)


def resolve_scl_mask(scl_mask: Collection[int] | None, snow: bool) -> tuple[int, ...]:
    """Normalise the ``scl_mask=``/``snow=`` options of :func:`xsky.load_stac`."""
    if scl_mask is None:
        return default_scl_mask(snow)
    if snow:
        raise ArgumentError(
            "pass either snow=True or an explicit scl_mask=, not both: scl_mask lists every "
            "class to mask, so leave 11 (snow/ice) out of it to keep snow"
        )
    if isinstance(scl_mask, str | bytes):
        raise ArgumentError(f"scl_mask must be a collection of SCL class numbers, got {scl_mask!r}")
    out = []
    for c in scl_mask:
        if isinstance(c, bool) or not isinstance(c, int) or c not in SCL_CLASSES:
            raise ArgumentError(
                f"scl_mask contains {c!r}, which is not an SCL class; valid classes are "
                + ", ".join(f"{k} ({v})" for k, v in SCL_CLASSES.items())
            )
        out.append(int(c))
    return tuple(sorted(set(out)))


def scl_valid(scl: xr.DataArray, masked: Collection[int]) -> xr.DataArray:
    """``True`` where the SCL class is not in ``masked`` (lazy for dask-backed input)."""
    masked = sorted(set(masked))
    if not masked:
        return xr.ones_like(scl, dtype=bool)
    return ~scl.isin(masked)
