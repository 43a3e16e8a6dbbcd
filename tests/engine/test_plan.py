"""Window planning: every output pixel comes from exactly one window, whatever the chunks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xsky.engine.plan import plan_axis
from xsky.exceptions import DimensionError, XSkyError


def _owners(p) -> np.ndarray:
    """For each output pixel, which window produced it (-1 if none)."""
    owner = np.full(p.n_out, -1)
    per_window = p.core // p.stride
    for k in range(p.n_windows):
        a, b = k * per_window, min((k + 1) * per_window, p.n_out)
        assert (owner[a:b] == -1).all(), "an output pixel has two windows"
        owner[a:b] = k
    return owner


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(16, 400),
    stride=st.sampled_from([1, 2, 4, 8]),
    mult=st.integers(1, 8),
    ov=st.integers(0, 3),
    target=st.integers(1, 300),
)
def test_dense_plan_covers_each_output_once(n, stride, mult, ov, target):
    window = stride * mult * 2
    overlap = ov * stride
    if n < window or 2 * overlap >= window:
        return
    p = plan_axis(n, window, stride, "dense", overlap, target)
    assert (_owners(p) >= 0).all()
    assert p.n_out == -(-n // stride)
    assert sum(p.chunks) == p.pad_lo + n + p.pad_hi
    assert sum(p.out_chunks) == p.n_out
    assert min(p.chunks) >= p.depth
    # each window's input lies inside the padded array
    for k in (0, p.n_windows - 1):
        start = k * p.core - p.margin_lo + p.pad_lo
        assert start >= 0 and start + window <= sum(p.chunks)
    # a chunk sees all the input its windows need
    for b, (k0, k1) in enumerate(p.windows):
        need_lo = k0 * p.core - p.margin_lo + p.pad_lo
        need_hi = (k1 - 1) * p.core - p.margin_lo + p.pad_lo + window
        start = p.data_start[b]
        end = sum(p.chunks[: b + 1]) + (p.depth if b < len(p.chunks) - 1 else 0)
        assert start <= need_lo and need_hi <= end
        assert p.window_offset(b) == need_lo - start


@settings(max_examples=100, deadline=None)
@given(n=st.integers(64, 500), stride=st.integers(4, 64), target=st.integers(1, 300))
def test_pooled_plan_gives_one_window_per_cell(n, stride, target):
    p = plan_axis(n, 64, stride, "pooled", 0, target)
    assert p.core == stride and p.n_windows == p.n_out == -(-n // stride)
    assert sum(p.out_chunks) == p.n_out
    assert min(p.chunks) >= p.depth


def test_plan_does_not_depend_on_the_target_chunk_except_grouping():
    a = plan_axis(100, 16, 4, target_chunk=7)
    b = plan_axis(100, 16, 4, target_chunk=64)
    assert (a.n_windows, a.n_out, a.pad_lo, a.pad_hi) == (b.n_windows, b.n_out, b.pad_lo, b.pad_hi)
    assert len(a.windows) > len(b.windows)


def test_window_larger_than_array_is_refused():
    with pytest.raises(DimensionError, match="fewer than the model window of 16"):
        plan_axis(10, 16, 4, dim="y")


@pytest.mark.parametrize("overlap", [-4, 3, 8])
def test_bad_overlap_is_refused(overlap):
    with pytest.raises(XSkyError, match="overlap"):
        plan_axis(100, 16, 4, overlap=overlap)
