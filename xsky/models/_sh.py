"""Real spherical harmonics in the convention of the released SatCLIP checkpoints.

SatCLIP's "analytic" positional encoding maps ``(lon, lat)`` in degrees to ``L**2`` features:

* angles ``theta = radians(lat + 90)`` (from the *south* pole) and ``phi = radians(lon + 180)``;
* column ``l*l + l + m`` holds degree ``l = 0..L-1``, order ``m = -l..l`` (l-major);
* orthonormal associated Legendre functions **without** the Condon-Shortley phase, times
  ``sqrt(2) cos(m phi)`` for ``m > 0`` and ``sqrt(2) sin(|m| phi)`` for ``m < 0``;
* every ``m = 0`` column is **pi times** its orthonormal value (a slip in the official code
  generator that the released weights were trained with).

The official code evaluates one generated closed formula per ``(l, m)``; here the functions
come from the standard stable three-term recurrence over normalised Legendre functions, in
float64, compiled with numba (CPU) or vectorised over points in torch (any device).
:func:`spherical_harmonics_naive` evaluates the expanded closed formulas per ``(l, m)`` the
way the official code does; it is a baseline for benchmarks and tests, not for production.
"""

from __future__ import annotations

import math
import threading
from fractions import Fraction
from functools import cache
from typing import Any

import numba
import numpy as np

__all__ = [
    "sh_index",
    "spherical_harmonics",
    "spherical_harmonics_naive",
    "spherical_harmonics_torch",
]

_SQRT2 = math.sqrt(2.0)
_Y00 = 1.0 / math.sqrt(4.0 * math.pi)
# Below this many points the parallel kernel's start-up costs more than it saves.
_PARALLEL_MIN_POINTS = 4096


def sh_index(l: int, m: int) -> int:  # noqa: E741  (l is the conventional name of the degree)
    """Column of degree ``l`` and order ``m`` in the feature vector (``l*l + l + m``)."""
    return l * l + l + m


@cache
def _tables(L: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Recurrence coefficients of the orthonormal associated Legendre functions.

    With ``Q_l^m = sqrt((2l+1)/(4 pi) (l-m)!/(l+m)!) P_l^m`` (no Condon-Shortley phase):
    ``Q_m^m = diag[m] * s * Q_{m-1}^{m-1}``, ``Q_{m+1}^m = sub[m] * x * Q_m^m`` and
    ``Q_l^m = a[l, m] * (x Q_{l-1}^m - b[l, m] Q_{l-2}^m)``.
    """
    diag = np.ones(L)
    sub = np.zeros(L)
    a = np.zeros((L, L))
    b = np.zeros((L, L))
    for m in range(L):
        if m > 0:
            diag[m] = math.sqrt((2 * m + 1) / (2 * m))
        sub[m] = math.sqrt(2 * m + 3)
        for l in range(m + 2, L):  # noqa: E741
            a[l, m] = math.sqrt((4 * l * l - 1) / (l * l - m * m))
            b[l, m] = math.sqrt(((l - 1) ** 2 - m * m) / (4 * (l - 1) ** 2 - 1))
    for arr in (diag, sub, a, b):
        arr.setflags(write=False)
    return diag, sub, a, b


@numba.njit(cache=True, nogil=True, inline="always")
def _store(out, i, l, m, p, cm, sm):  # noqa: E741  # pragma: no cover - compiled
    """Write P_l^m (normalised) as the real features of degree l, order +-m (l-major)."""
    k = l * l + l
    if m == 0:
        out[i, k] = math.pi * p  # the official pi factor on every m = 0 term
    else:
        out[i, k + m] = _SQRT2 * p * cm
        out[i, k - m] = _SQRT2 * p * sm


@numba.njit(cache=True, nogil=True, inline="always")
def _sh_one(lon, lat, L, diag, sub, a, b, out, i):  # pragma: no cover - compiled
    # theta = lat + 90 deg, so cos(theta) = -sin(lat) and |sin(theta)| = |cos(lat)|; taking
    # them from lat directly keeps full relative precision near the poles, where the
    # official 1 - cos^2(theta) loses digits.
    latr = lat * (math.pi / 180.0)
    x = -math.sin(latr)
    s = abs(math.cos(latr))
    if abs(lat) == 90.0:
        # exact poles: cos(radians(90)) is 6e-17, not 0; every m != 0 term must vanish
        s = 0.0
        x = -1.0 if lat > 0 else 1.0
    phi = (lon + 180.0) * (math.pi / 180.0)
    c1 = math.cos(phi)
    s1 = math.sin(phi)
    pmm = _Y00
    cm = 1.0
    sm = 0.0
    for m in range(L):
        if m > 0:
            pmm = pmm * diag[m] * s
            # cos/sin(m phi) by rotation: one complex multiply per order
            cm, sm = cm * c1 - sm * s1, sm * c1 + cm * s1
        _store(out, i, m, m, pmm, cm, sm)
        if m + 1 < L:
            p2 = pmm
            p1 = sub[m] * x * pmm
            _store(out, i, m + 1, m, p1, cm, sm)
            for l in range(m + 2, L):  # noqa: E741
                p = a[l, m] * (x * p1 - b[l, m] * p2)
                _store(out, i, l, m, p, cm, sm)
                p2 = p1
                p1 = p



@numba.njit(cache=True, nogil=True)
def _sh_serial(lon, lat, L, diag, sub, a, b, out):  # pragma: no cover - compiled
    for i in range(lon.shape[0]):
        _sh_one(lon[i], lat[i], L, diag, sub, a, b, out, i)


@numba.njit(cache=True, nogil=True, parallel=True)
def _sh_parallel(lon, lat, L, diag, sub, a, b, out):  # pragma: no cover - compiled
    for i in numba.prange(lon.shape[0]):
        _sh_one(lon[i], lat[i], L, diag, sub, a, b, out, i)


def _use_parallel(n: int) -> bool:
    # Only from the main thread: inside dask's thread pool the pool already provides the
    # parallelism, and some numba threading layers refuse concurrent parallel launches.
    return (
        n >= _PARALLEL_MIN_POINTS
        and numba.get_num_threads() > 1
        and threading.current_thread() is threading.main_thread()
    )


def spherical_harmonics(
    lon: Any,
    lat: Any,
    L: int,
    *,
    out: np.ndarray | None = None,
    parallel: bool | None = None,
) -> np.ndarray:
    """SatCLIP's spherical-harmonic features of points, in float64.

    Parameters
    ----------
    lon, lat
        Longitudes and latitudes in degrees (array-likes of the same shape, flattened).
        Nothing is wrapped or clamped, like the official encoder.
    L
        Number of Legendre degrees (``legendre_polys``); the result has ``L**2`` columns.
    out
        Optional C-contiguous float64 array of shape ``(N, L**2)`` to write into.
    parallel
        Use all numba threads; by default only for large inputs on the main thread.

    Returns
    -------
    numpy.ndarray
        ``(N, L**2)`` float64; column ``l*l + l + m`` holds degree ``l``, order ``m``.

    Examples
    --------
    >>> f = spherical_harmonics([0.0], [0.0], 2)
    >>> f.shape, round(float(f[0, 0]), 6)  # sqrt(pi) / 2: the pi factor on m = 0
    ((1, 4), 0.886227)
    """
    L = _check_L(L)
    lon_a, lat_a = as_lonlat(lon, lat)
    n = lon_a.size
    if out is None:
        out = np.empty((n, L * L), dtype=np.float64)
    elif out.shape != (n, L * L) or out.dtype != np.float64 or not out.flags.c_contiguous:
        from ..exceptions import ArgumentError

        raise ArgumentError(
            f"out must be a C-contiguous float64 array of shape {(n, L * L)}, got "
            f"{out.dtype} {out.shape}"
        )
    if n == 0:
        return out
    diag, sub, a, b = _tables(L)
    par = _use_parallel(n) if parallel is None else parallel
    (_sh_parallel if par else _sh_serial)(lon_a, lat_a, L, diag, sub, a, b, out)
    return out


def spherical_harmonics_torch(lonlat: Any, L: int) -> Any:
    """:func:`spherical_harmonics` in torch, vectorised over points (any device, float64).

    Parameters
    ----------
    lonlat
        Tensor ``(N, 2)`` of ``(lon, lat)`` in degrees.
    L
        Number of Legendre degrees.

    Returns
    -------
    torch.Tensor
        ``(N, L**2)`` float64 on the input's device.
    """
    import torch

    L = _check_L(L)
    ll = lonlat.to(torch.float64)
    lon, lat = ll[:, 0], ll[:, 1]
    latr = torch.deg2rad(lat)
    pole = lat.abs() == 90.0
    x = torch.where(pole, -torch.sign(lat), -torch.sin(latr))
    s = torch.where(pole, torch.zeros_like(lat), torch.cos(latr).abs())
    phi = torch.deg2rad(lon + 180.0)
    out = torch.empty((ll.shape[0], L * L), dtype=torch.float64, device=ll.device)
    diag, sub, a, b = _tables(L)
    pmm = torch.full_like(lat, _Y00)
    cm = sm = pmm  # placeholders; unused for m = 0
    for m in range(L):
        if m > 0:
            pmm = pmm * (diag[m] * s)
            cm, sm = torch.cos(m * phi) * _SQRT2, torch.sin(m * phi) * _SQRT2
        _put_torch(out, m, m, pmm, cm, sm)
        if m + 1 < L:
            p2, p1 = pmm, sub[m] * x * pmm
            _put_torch(out, m + 1, m, p1, cm, sm)
            for l in range(m + 2, L):  # noqa: E741
                p = a[l, m] * (x * p1 - b[l, m] * p2)
                _put_torch(out, l, m, p, cm, sm)
                p2, p1 = p1, p
    return out


def _put_torch(out: Any, l: int, m: int, q: Any, cm: Any, sm: Any) -> None:  # noqa: E741
    k = l * l + l
    if m == 0:
        out[:, k] = math.pi * q
    else:
        out[:, k + m] = q * cm
        out[:, k - m] = q * sm


# -- naive baseline: one expanded closed formula per (l, m), like the official generator --


@cache
def _closed_form_coefficients(L: int) -> tuple[tuple[int, int, float, tuple[float, ...]], ...]:
    """For each (l, m >= 0): the prefactor and the power-series coefficients in cos(theta).

    ``P_l^m(x) = (1 - x^2)^(m/2) d^m/dx^m P_l(x)`` (no Condon-Shortley phase), with ``P_l``
    from its explicit sum; coefficients are exact rationals rounded once to float64.
    """
    rows = []
    for l in range(L):  # noqa: E741
        # P_l(x) = 2^-l sum_k (-1)^k C(l, k) C(2l - 2k, l) x^(l - 2k)
        poly = [Fraction(0)] * (l + 1)
        for k in range(l // 2 + 1):
            poly[l - 2 * k] = Fraction((-1) ** k * math.comb(l, k) * math.comb(2 * l - 2 * k, l),
                                       2**l)
        deriv = poly
        for m in range(l + 1):
            if m > 0:
                deriv = [deriv[j] * j for j in range(1, len(deriv))]
            norm = (2 * l + 1) / (4 * math.pi) * math.factorial(l - m) / math.factorial(l + m)
            pref = math.sqrt(norm) * (math.pi if m == 0 else _SQRT2)
            rows.append((l, m, pref, tuple(float(c) for c in deriv)))
    return tuple(rows)


def spherical_harmonics_naive(lon: Any, lat: Any, L: int) -> np.ndarray:
    """Features from the expanded closed formula of each ``(l, m)``, as the official code does.

    Slow (``O(L**3)`` power terms per point) and, for ``L`` in the 30s, numerically noisy at
    high latitude in the same way as the official encoder (alternating coefficients up to
    ~1e20 cancel). Kept as the baseline of ``benchmarks/satclip_points.py`` and for tests.
    """
    L = _check_L(L)
    lon_a = np.asarray(lon, dtype=np.float64).ravel()
    lat_a = np.asarray(lat, dtype=np.float64).ravel()
    theta = np.deg2rad(lat_a + 90.0)
    phi = np.deg2rad(lon_a + 180.0)
    x = np.cos(theta)
    one_minus = 1.0 - x**2
    out = np.empty((lon_a.size, L * L), dtype=np.float64)
    for l, m, pref, coefs in _closed_form_coefficients(L):  # noqa: E741
        poly = np.zeros_like(x)
        for j, c in enumerate(coefs):
            if c != 0.0:
                poly = poly + c * x**j
        base = pref * one_minus ** (m / 2) * poly
        if m == 0:
            out[:, sh_index(l, 0)] = base
        else:
            out[:, sh_index(l, m)] = base * np.cos(m * phi)
            out[:, sh_index(l, -m)] = base * np.sin(m * phi)
    return out


def as_lonlat(lon: Any, lat: Any) -> tuple[np.ndarray, np.ndarray]:
    """Flat, contiguous float64 copies of ``lon`` and ``lat``; their sizes must match."""
    lon_a = np.ascontiguousarray(lon, dtype=np.float64).ravel()
    lat_a = np.ascontiguousarray(lat, dtype=np.float64).ravel()
    if lon_a.shape != lat_a.shape:
        from ..exceptions import DimensionError

        raise DimensionError(
            f"lon has {lon_a.size} values but lat has {lat_a.size}; pass one latitude per "
            "longitude"
        )
    return lon_a, lat_a


def _check_L(L: Any) -> int:
    if isinstance(L, bool) or not isinstance(L, int | np.integer) or L < 1:
        from ..exceptions import ArgumentError

        raise ArgumentError(
            f"the number of Legendre degrees L must be a positive integer (10 and 40 are "
            f"released), got {L!r}"
        )
    return int(L)
