"""Sinkhorn-Knopp beyond the SwAV reference: the exp/log switch, log-sum-exp, bad input.

(The reference comparison, the softmax limit and equipartition are in test_prototypes.py.)
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp as scipy_logsumexp

from xsky import ArgumentError, DataError, DimensionError
from xsky.engine import prototypes
from xsky.engine.prototypes import _logsumexp, _sinkhorn_log, sinkhorn_knopp


def _log_reference(z: np.ndarray, n_iter: int) -> np.ndarray:
    """The same iterations in the log domain with scipy's logsumexp (float64)."""
    n, k = z.shape
    lq = z.copy()
    for _ in range(n_iter):
        lq = lq - scipy_logsumexp(lq, axis=0, keepdims=True) - np.log(k)
        lq = lq - scipy_logsumexp(lq, axis=1, keepdims=True) - np.log(n)
    return np.exp(lq - scipy_logsumexp(lq, axis=1, keepdims=True))


def test_logsumexp_matches_scipy_including_huge_and_minus_infinite_rows():
    a = np.array([[0.0, 1.0, 2.0], [1000.0, 999.0, -5.0], [-np.inf, -np.inf, -np.inf],
                  [-800.0, -801.0, -np.inf]])
    for axis in (0, 1):
        with np.errstate(invalid="ignore"):
            want = scipy_logsumexp(a, axis=axis, keepdims=True)
        with np.errstate(divide="ignore"):  # log(0) for the all -inf row
            got = _logsumexp(a, axis=axis)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-13)
    # an all -inf row sums to exp(-inf) = 0: log 0, not NaN
    with np.errstate(divide="ignore"):
        assert _logsumexp(a, axis=1)[2, 0] == -np.inf


def test_scores_spanning_more_than_exp_can_hold_use_the_log_domain():
    """exp(z - max) underflows to 0 for a whole column when z spans > ~745: the plain
    rescaling would divide 0 by 0, so such scores must take the log-domain path."""
    assert prototypes._EXP_RANGE == 600.0  # exp(-600) ~ 2.6e-261: still a normal float64
    z = np.array([[0.0, -900.0, -10.0], [-1.0, -902.0, 0.0], [-2.0, -901.0, -3.0],
                  [0.0, -905.0, -1.0]])
    for n_iter in (0, 1, 3, 10):
        q = sinkhorn_knopp(z, epsilon=1.0, n_iter=n_iter)
        assert np.isfinite(q).all()
        np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-12)
        np.testing.assert_allclose(q, _log_reference(z, n_iter), rtol=1e-9, atol=1e-300)
    # with iterations the starved prototype gets its share of mass
    q = sinkhorn_knopp(z, epsilon=1.0, n_iter=200)
    np.testing.assert_allclose(q.sum(axis=0), 4 / 3, rtol=1e-6)


def test_moderate_scores_take_the_exp_path_and_agree_with_the_log_path():
    z = np.random.default_rng(5).uniform(-290, 290, size=(12, 4))  # spans < 600
    for n_iter in (0, 2, 7):
        np.testing.assert_allclose(sinkhorn_knopp(z, 1.0, n_iter), _sinkhorn_log(z, n_iter),
                                   rtol=1e-9, atol=1e-250)


def test_the_result_is_float64_rows_sum_to_one_and_the_input_is_untouched():
    s = np.random.default_rng(6).normal(size=(9, 4)).astype("float32")
    before = s.copy()
    q = sinkhorn_knopp(s, 0.3, 3)
    assert q.dtype == np.float64 and q.shape == (9, 4)
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(s, before)
    # a single prototype gets everything; a single sample is spread by the column step
    np.testing.assert_array_equal(sinkhorn_knopp(s[:, :1], 0.3, 3), np.ones((9, 1)))
    np.testing.assert_allclose(sinkhorn_knopp(s[:1], 0.3, 50), np.full((1, 4), 0.25),
                               rtol=1e-12)


@pytest.mark.parametrize(
    ("scores", "kw", "err", "match"),
    [
        (np.zeros((0, 3)), {}, DimensionError, r"non-empty 2-D.*\(0, 3\)"),
        (np.zeros((3, 0)), {}, DimensionError, r"\(3, 0\)"),
        (np.zeros((2, 2, 2)), {}, DimensionError, "2-D"),
        (np.array([[0.0, np.inf]]), {}, DataError, "NaN or inf"),
        (np.array([[-np.inf, 0.0]]), {}, DataError, "NaN or inf"),
        (np.zeros((3, 2)), {"epsilon": -0.1}, ArgumentError, "epsilon"),
        (np.zeros((3, 2)), {"n_iter": 2.5}, ArgumentError, "non-negative integer, got 2.5"),
        (np.zeros((3, 2)), {"n_iter": -3}, ArgumentError, "got -3"),
    ],
)
def test_bad_input_names_the_problem(scores, kw, err, match):
    with pytest.raises(err, match=match):
        sinkhorn_knopp(scores, **kw)


def test_zero_iterations_and_whole_float_iterations_are_accepted():
    s = np.random.default_rng(7).normal(size=(5, 3))
    np.testing.assert_array_equal(sinkhorn_knopp(s, 0.5, 3.0), sinkhorn_knopp(s, 0.5, 3))
    assert np.isfinite(sinkhorn_knopp(s, 0.5, 0)).all()


def test_large_scores_do_not_overflow_the_exp_path():
    """exp(z) overflows past z ~ 709: the exp path must subtract the maximum first."""
    z = np.random.default_rng(8).uniform(350, 550, size=(10, 4))  # spans < 600: exp path
    q = sinkhorn_knopp(z, epsilon=1.0, n_iter=3)
    assert np.isfinite(q).all()
    np.testing.assert_allclose(q, _log_reference(z, 3), rtol=1e-9, atol=1e-250)
    # the same scores shifted by a constant give the same assignment
    np.testing.assert_allclose(sinkhorn_knopp(z - 500, 1.0, 3), q, rtol=1e-9, atol=1e-250)


def test_defaults_are_swav_epsilon_and_three_iterations():
    s = np.random.default_rng(9).uniform(-1, 1, size=(20, 5))
    np.testing.assert_array_equal(sinkhorn_knopp(s), sinkhorn_knopp(s, 0.05, 3))
    assert not np.allclose(sinkhorn_knopp(s), sinkhorn_knopp(s, 0.05, 4), rtol=1e-6)
