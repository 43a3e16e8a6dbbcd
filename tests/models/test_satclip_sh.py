"""Spherical-harmonic features in the convention of the released SatCLIP checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import lpmv, roots_legendre

from xsky.exceptions import XSkyError
from xsky.models._sh import (
    sh_index,
    spherical_harmonics,
    spherical_harmonics_naive,
    spherical_harmonics_torch,
)


@pytest.fixture(scope="module")
def cases(shared):
    with np.load(shared / "conformance" / "satclip" / "satclip_public_cases.npz") as f:
        return {k: f[k] for k in f.files}


def test_sh_l10_matches_official_features_within_1e_9_on_every_row(cases):
    lonlat = cases["lonlat"]
    feats = spherical_harmonics(lonlat[:, 0], lonlat[:, 1], 10)
    assert feats.shape == (300, 100)
    assert feats.dtype == np.float64
    err = np.abs(feats - cases["sh_L10"]).max(axis=1)
    assert err.max() <= 1e-9, f"worst row {err.argmax()}: {err.max():.3g}"


def test_sh_known_values_pi_factor_and_no_condon_shortley_phase():
    # lat = 0 -> theta = 90 deg, cos(theta) = 0; lon = -180 -> phi = 0
    f = spherical_harmonics([-180.0], [0.0], 3)[0]
    assert f[sh_index(0, 0)] == pytest.approx(math.sqrt(math.pi) / 2, abs=1e-15)  # 0.886227
    # Y_1^1 = sqrt(2) * sqrt(3/(8 pi)) * sin(theta) * cos(phi), positive: no CS phase
    assert f[sh_index(1, 1)] == pytest.approx(math.sqrt(3 / (4 * math.pi)), abs=1e-15)
    assert f[sh_index(1, -1)] == pytest.approx(0.0, abs=1e-15)
    # lat = 30 -> cos(theta) = cos(120 deg) = -0.5; Y_1^0 = pi * sqrt(3/(4 pi)) * cos(theta)
    g = spherical_harmonics([0.0], [30.0], 2)[0]
    assert g[sh_index(1, 0)] == pytest.approx(-0.5 * 1.53499006191973, abs=1e-12)


def test_sh_matches_scipy_legendre_formula_at_random_points():
    rng = np.random.default_rng(3)
    lon = rng.uniform(-180, 180, 64)
    lat = rng.uniform(-80, 80, 64)
    L = 12
    feats = spherical_harmonics(lon, lat, L)
    x = np.cos(np.deg2rad(lat + 90))
    phi = np.deg2rad(lon + 180)
    for l in range(L):  # noqa: E741
        for m in range(l + 1):
            # scipy's lpmv includes the Condon-Shortley phase; the convention drops it
            p = (-1) ** m * lpmv(m, l, x)
            n = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - m)
                          / math.factorial(l + m))
            if m == 0:
                np.testing.assert_allclose(feats[:, sh_index(l, 0)], math.pi * n * p,
                                           atol=1e-12)
            else:
                np.testing.assert_allclose(feats[:, sh_index(l, m)],
                                           math.sqrt(2) * n * p * np.cos(m * phi), atol=1e-12)
                np.testing.assert_allclose(feats[:, sh_index(l, -m)],
                                           math.sqrt(2) * n * p * np.sin(m * phi), atol=1e-12)


def test_sh_l40_is_orthonormal_on_the_sphere_up_to_pi_on_m0():
    # Exact quadrature: Gauss-Legendre in cos(theta), uniform in phi.
    L = 40
    xs, wx = roots_legendre(L + 1)
    nphi = 2 * L + 1
    phis = np.arange(nphi) * 2 * np.pi / nphi
    lat = np.rad2deg(np.arccos(xs)) - 90  # theta = lat + 90
    lon = np.rad2deg(phis) - 180
    LAT, LON = np.meshgrid(lat, lon, indexing="ij")
    W = np.repeat(wx, nphi) * (2 * np.pi / nphi)
    F = spherical_harmonics(LON.ravel(), LAT.ravel(), L)
    gram = (F * W[:, None]).T @ F
    m0 = np.array([l * l + l for l in range(L)])  # noqa: E741
    expected = np.ones(L * L)
    expected[m0] = math.pi**2
    np.testing.assert_allclose(np.diag(gram), expected, rtol=1e-10)
    off = gram - np.diag(np.diag(gram))
    assert np.abs(off).max() < 1e-10


def test_sh_l10_is_prefix_of_l40_and_poles_zero_every_m_nonzero():
    lon = np.array([-180.0, 63.3, 0.0, 12.0, -101.7])
    lat = np.array([90.0, 90.0, -90.0, 45.0, -90.0])
    f10 = spherical_harmonics(lon, lat, 10)
    f40 = spherical_harmonics(lon, lat, 40)
    np.testing.assert_array_equal(f40[:, :100], f10)
    poles = np.abs(lat) == 90
    m_nonzero = np.array([k != l * l + l for l in range(40) for k in range(l * l, (l + 1) ** 2)])  # noqa: E741
    assert np.all(f40[np.ix_(poles, m_nonzero)] == 0.0)
    assert np.all(f40[~poles][:, m_nonzero] != 0.0)


def test_sh_torch_and_parallel_kernels_agree_with_serial_kernel(cases):
    lonlat = cases["lonlat"]
    serial = spherical_harmonics(lonlat[:, 0], lonlat[:, 1], 40, parallel=False)
    par = spherical_harmonics(lonlat[:, 0], lonlat[:, 1], 40, parallel=True)
    np.testing.assert_array_equal(serial, par)
    tt = spherical_harmonics_torch(torch.from_numpy(lonlat), 40).numpy()
    np.testing.assert_allclose(tt, serial, rtol=0, atol=1e-12)


def test_sh_naive_closed_formulas_agree_with_recurrence_at_l10(cases):
    lonlat = cases["lonlat"]
    rec = spherical_harmonics(lonlat[:, 0], lonlat[:, 1], 10)
    naive = spherical_harmonics_naive(lonlat[:, 0], lonlat[:, 1], 10)
    # the closed form goes through 1 - cos^2 and loses digits within ~0.1 deg of a pole
    away = np.abs(lonlat[:, 1]) < 89
    assert np.abs(rec[away] - naive[away]).max() < 1e-12
    assert np.abs(naive - cases["sh_L10"]).max() < 1e-9


def test_sh_rejects_bad_degree_and_mismatched_inputs():
    with pytest.raises(XSkyError, match="positive integer"):
        spherical_harmonics([0.0], [0.0], 0)
    with pytest.raises(XSkyError, match="one latitude per longitude"):
        spherical_harmonics([0.0, 1.0], [0.0], 10)
    with pytest.raises(XSkyError, match="C-contiguous float64"):
        spherical_harmonics([0.0], [0.0], 10, out=np.empty((1, 99)))


# ---- the kernels' plumbing: tables, out=, empty input, the parallel switch, torch -----------


def test_recurrence_tables_are_cached_read_only():
    from xsky.models._sh import _tables

    tables = _tables(6)
    assert _tables(6) is tables  # one computation per degree
    for arr in tables:
        assert not arr.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = 1.0


def test_out_is_filled_in_place_and_checked():
    out = np.full((3, 16), np.nan)
    got = spherical_harmonics([0.0, 10.0, -20.0], [5.0, -5.0, 60.0], 4, out=out)
    assert got is out
    np.testing.assert_array_equal(out, spherical_harmonics([0.0, 10.0, -20.0],
                                                           [5.0, -5.0, 60.0], 4))
    for bad in (np.empty((3, 16), np.float32), np.empty((3, 15)), np.empty((2, 16)),
                np.empty((16, 3)).T):
        with pytest.raises(XSkyError, match=r"C-contiguous float64 array of shape \(3, 16\)"):
            spherical_harmonics([0.0, 10.0, -20.0], [5.0, -5.0, 60.0], 4, out=bad)


def test_no_points_give_an_empty_result():
    assert spherical_harmonics([], [], 5).shape == (0, 25)
    assert spherical_harmonics_torch(torch.zeros((0, 2)), 5).shape == (0, 25)


def test_lists_of_any_shape_are_flattened_as_float64():
    lon = np.array([[0.0, 45.0], [90.0, 135.0]], np.float32)
    lat = np.array([[10.0, 20.0], [30.0, 40.0]], np.float32)
    f = spherical_harmonics(lon, lat, 3)
    assert f.shape == (4, 9) and f.dtype == np.float64
    np.testing.assert_array_equal(f, spherical_harmonics(lon.ravel().tolist(),
                                                         lat.ravel().tolist(), 3))


def test_the_parallel_kernel_runs_only_for_large_inputs_on_the_main_thread():
    import threading

    import numba

    from xsky.models import _sh

    assert _sh._PARALLEL_MIN_POINTS == 4096
    assert not _sh._use_parallel(4095)
    assert _sh._use_parallel(4096) == (numba.get_num_threads() > 1)
    seen = []
    t = threading.Thread(target=lambda: seen.append(_sh._use_parallel(10**6)))
    t.start()
    t.join()
    assert seen == [False]


@pytest.mark.parametrize("L", [0, -1, True, 2.0, "10", None])
def test_every_entry_point_rejects_a_bad_degree(L):
    with pytest.raises(XSkyError, match=f"positive integer.*got {L!r}"):
        spherical_harmonics([0.0], [0.0], L)
    with pytest.raises(XSkyError, match="positive integer"):
        spherical_harmonics_torch(torch.zeros((1, 2)), L)
    with pytest.raises(XSkyError, match="positive integer"):
        spherical_harmonics_naive([0.0], [0.0], L)


def test_numpy_integer_degrees_are_accepted():
    np.testing.assert_array_equal(spherical_harmonics([1.0], [2.0], np.int64(3)),
                                  spherical_harmonics([1.0], [2.0], 3))


def test_torch_features_are_float64_and_handle_the_poles_exactly():
    lonlat = torch.tensor([[10.0, 90.0], [-70.0, -90.0], [33.0, 12.0]], dtype=torch.float32)
    t = spherical_harmonics_torch(lonlat, 8)
    assert t.dtype == torch.float64 and t.shape == (3, 64)
    ref = spherical_harmonics(lonlat[:, 0].double().numpy(), lonlat[:, 1].double().numpy(), 8)
    np.testing.assert_allclose(t.numpy(), ref, rtol=0, atol=1e-13)
    m_nonzero = [k for l in range(8) for k in range(l * l, (l + 1) ** 2) if k != l * l + l]  # noqa: E741
    assert (t[:2, m_nonzero] == 0).all()
    # at the poles cos(theta) is exactly -1 (north) or 1 (south): Y_l^0 = pi * Y00 * x^l ...
    for l in range(8):  # noqa: E741
        north = t[0, sh_index(l, 0)].item()
        assert north == pytest.approx(math.pi * math.sqrt((2 * l + 1) / (4 * math.pi))
                                      * (-1) ** l, rel=1e-12)
