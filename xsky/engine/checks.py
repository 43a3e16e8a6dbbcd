"""Cheap checks on the pixels a task actually reads (run inside the dask tasks).

:func:`check_units` tells whether a block's valid values are plausible in the units xsky is
about to convert from, using robust statistics (1st percentile, median, 99th percentile) on
a bounded, evenly spaced sample of the valid pixels, so it costs little next to the model
and a few outliers never raise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..exceptions import UnitsError
from ..modalities import Plausible

__all__ = ["MAX_SAMPLES", "MIN_SAMPLES", "UnitsCheck", "block_statistics", "check_units"]

#: At most this many pixels of a block are looked at.
MAX_SAMPLES = 8192  # enough for stable 1st/99th percentiles, cheap next to the model
#: Fewer valid values than this say too little to judge: no check.
MIN_SAMPLES = 64


@dataclass(frozen=True)
class UnitsCheck:
    """What the kernel checks for one modality (small and picklable).

    ``units`` are the input units xsky assumes, ``source`` says where they came from (for
    the message), ``ranges`` holds the modality's plausible ranges per unit (the assumed
    unit and the alternatives to suggest).
    """

    modality: str
    variables: tuple[str, ...]
    units: str
    source: str
    ranges: tuple[tuple[str, Plausible], ...]

    def plausible(self, units: str) -> Plausible | None:
        return next((p for u, p in self.ranges if u == units), None)


def block_statistics(buf: np.ndarray, valid: np.ndarray) -> tuple[float, float, float, int] | None:
    """``(p1, median, p99, n)`` of the valid values of a ``(T, C, H, W)`` block (all bands
    pooled) from at most :data:`MAX_SAMPLES` evenly spaced pixels, or ``None`` when fewer
    than :data:`MIN_SAMPLES` valid values were seen."""
    t, c, h, w = buf.shape
    n_pix = t * h * w
    if n_pix == 0:
        return None
    step = max(1, -(-n_pix * max(c, 1) // MAX_SAMPLES))
    pos = np.arange(0, n_pix, step, dtype=np.int64)
    pos = pos[valid.reshape(-1)[pos]]
    if pos.size * c < MIN_SAMPLES:
        return None
    ti, ri = np.divmod(pos, h * w)
    vals = buf.reshape(t, c, h * w)[ti, :, ri].reshape(-1)
    vals = vals[np.isfinite(vals)]
    if vals.size < MIN_SAMPLES:
        return None
    p1, med, p99 = np.percentile(vals, (1.0, 50.0, 99.0))
    return float(p1), float(med), float(p99), int(vals.size)


def check_units(buf: np.ndarray, valid: np.ndarray, check: UnitsCheck | None) -> None:
    """Raise :class:`~xsky.exceptions.UnitsError` when the valid values of a block are not
    plausible in ``check.units``, naming the modality, the variables, the observed range
    and the ``units=`` value that fits."""
    if check is None:
        return
    want = check.plausible(check.units)
    if want is None:
        return
    stats = block_statistics(buf, valid)
    if stats is None:
        return
    p1, med, p99, n = stats
    if want.fits(p1, med, p99):
        return
    fitting = [u for u, p in check.ranges if u != check.units and p.fits(p1, med, p99)]
    if fitting:
        fix = (f"these values look like {fitting[0]!r}: pass units={fitting[0]!r} (or "
               f"units={{{check.modality!r}: {fitting[0]!r}}})")
    else:
        fix = ("they fit none of the units xsky knows for this modality "
               f"({', '.join(repr(u) for u, _ in check.ranges)}); check the scale, offset and "
               "nodata of the data and pass units= for what they are")
    raise UnitsError(
        f"modality {check.modality!r} (variables {list(check.variables)}) is taken as "
        f"{check.units!r} ({check.source}), but the valid pixels read have 1st-99th "
        f"percentile [{p1:.4g}, {p99:.4g}] and median {med:.4g} ({n} values), which is "
        f"implausible for {check.units!r} (expected {want.describe()}); {fix}"
    )


def units_check(modality: str, variables: Sequence[str], units: str, source: str,
                ranges: dict[str, Plausible]) -> UnitsCheck | None:
    """A :class:`UnitsCheck`, or ``None`` when nothing is known about ``units``."""
    if units not in ranges:
        return None
    return UnitsCheck(modality, tuple(str(v) for v in variables), units, source,
                      tuple(sorted(ranges.items())))
