"""Window planning: every output pixel comes from exactly one window, whatever the chunks."""

from __future__ import annotations

import itertools

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


@st.composite
def dense_geometries(draw):
    """Valid dense geometries only (no example is thrown away): a window of an even number
    of strides, an overlap below half the window, an axis at least one window long."""
    stride = draw(st.sampled_from([1, 2, 4, 8]))
    mult = draw(st.integers(1, 8))
    window = stride * mult * 2
    overlap = draw(st.integers(0, mult - 1)) * stride  # 2 * overlap < window
    n = draw(st.integers(window, 400))
    target = draw(st.integers(1, 300))
    return n, window, stride, overlap, target


@settings(max_examples=200, deadline=None)
@given(dense_geometries())
def test_dense_plan_covers_each_output_once(geometry):
    n, window, stride, overlap, target = geometry
    p = plan_axis(n, window, stride, "dense", overlap, target)
    assert (p.core, p.margin_lo, p.margin_hi) == (window - 2 * overlap, overlap, overlap)
    assert p.n_windows == -(-n // p.core)
    assert (_owners(p) >= 0).all()
    assert p.n_out == -(-n // stride)
    assert p.pad_lo == overlap
    assert p.pad_hi == p.n_windows * p.core + overlap - n
    assert sum(p.chunks) == p.pad_lo + n + p.pad_hi
    assert sum(p.real_chunks) == n
    assert sum(p.out_chunks) == p.n_out
    assert min(p.chunks) >= p.depth == overlap
    # dask's overlap needs every real (unpadded) chunk to hold the halo
    assert len(p.chunks) == 1 or min(p.real_chunks) >= p.depth
    assert p.windows[0][0] == 0 and p.windows[-1][1] == p.n_windows
    assert all(a[1] == b[0] for a, b in itertools.pairwise(p.windows))
    # only the edge blocks pad themselves
    assert p.edge_pads(0)[0] == p.pad_lo and p.edge_pads(len(p.windows) - 1)[1] == p.pad_hi
    assert all(p.edge_pads(b) == (0, 0) for b in range(1, len(p.windows) - 1))
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
        # the block's output pixels are its windows' kept pixels (the last one cropped)
        assert p.out_chunks[b] == min(k1 * p.core // stride, p.n_out) - k0 * p.core // stride


@settings(max_examples=100, deadline=None)
@given(n=st.integers(64, 500), stride=st.integers(4, 64), target=st.integers(1, 300))
def test_pooled_plan_gives_one_window_per_cell(n, stride, target):
    p = plan_axis(n, 64, stride, "pooled", 0, target)
    lo = (64 - stride) // 2
    assert (p.core, p.margin_lo, p.margin_hi) == (stride, lo, 64 - stride - lo)
    assert p.n_windows == p.n_out == -(-n // stride)
    assert p.pad_lo == lo and p.pad_hi == p.n_windows * stride + p.margin_hi - n
    assert sum(p.out_chunks) == p.n_out
    assert p.out_chunks == tuple(k1 - k0 for k0, k1 in p.windows)
    assert sum(p.real_chunks) == n and sum(p.chunks) == n + p.pad_lo + p.pad_hi
    assert min(p.chunks) >= p.depth == max(p.margin_lo, p.margin_hi)
    assert len(p.chunks) == 1 or min(p.real_chunks) >= p.depth
    # window k reads [k*stride - lo, k*stride - lo + 64): its centre cell is k
    for b, (k0, _) in enumerate(p.windows):
        assert p.window_offset(b) == k0 * stride - lo + p.pad_lo - p.data_start[b] >= 0


# Worked examples (checked by hand against the module docstring's formulas): core, margins,
# windows, padding, halo, chunks, windows per chunk, data starts, outputs per chunk.
EXAMPLES = [
    ((50, 16, 4, "dense", 0, None),
     (16, 0, 0, 4, 13, 0, 14, 0, (64,), ((0, 4),), (0,), (13,))),
    ((50, 16, 4, "dense", 4, 20),  # the last chunk (2 pixels) is merged into the previous one
     (8, 4, 4, 7, 13, 4, 10, 4, (20, 16, 28), ((0, 2), (2, 4), (4, 7)), (0, 16, 32),
      (4, 4, 5))),
    ((37, 16, 8, "pooled", 0, 16),
     (8, 4, 4, 5, 5, 4, 7, 4, (20, 16, 12), ((0, 2), (2, 4), (4, 5)), (0, 16, 32),
      (2, 2, 1))),
    ((100, 64, 8, "pooled", 0, 40),
     (8, 28, 28, 13, 13, 28, 32, 28, (68, 92), ((0, 5), (5, 13)), (0, 40), (5, 8))),
    ((17, 16, 4, "dense", 0, 4),  # one more than a window: a second, almost empty window
     (16, 0, 0, 2, 5, 0, 15, 0, (32,), ((0, 2),), (0,), (5,))),
    ((45, 16, 4, "dense", 0, 7),
     (16, 0, 0, 3, 12, 0, 3, 0, (16, 16, 16), ((0, 1), (1, 2), (2, 3)), (0, 16, 32),
      (4, 4, 4))),
]


@pytest.mark.parametrize(("args", "want"), EXAMPLES)
def test_worked_examples(args, want):
    p = plan_axis(*args)
    got = (p.core, p.margin_lo, p.margin_hi, p.n_windows, p.n_out, p.pad_lo, p.pad_hi, p.depth,
           p.chunks, p.windows, p.data_start, p.out_chunks)
    assert got == want
    assert (p.n, p.window, p.stride) == args[:3]
    want_real = (p.n,) if len(p.chunks) == 1 else (
        p.chunks[0] - p.pad_lo, *p.chunks[1:-1], p.chunks[-1] - p.pad_hi)
    assert p.real_chunks == want_real
    assert [p.window_offset(b) for b in range(len(p.windows))] == [0] * len(p.windows)


def test_a_last_chunk_exactly_the_halo_deep_is_kept_not_merged():
    # window 12, overlap 4: core 4, halo 4; the last chunk holds exactly 4 real pixels, which
    # is enough to lend its halo, so it stays a chunk of its own
    p = plan_axis(20, 12, 2, "dense", 4, 8)
    assert p.windows == ((0, 2), (2, 4), (4, 5))
    assert p.real_chunks == (8, 8, 4) and p.depth == 4


def test_window_geometry_has_no_overlap_unless_asked():
    from xsky.engine.plan import window_geometry

    assert window_geometry(16, 4, "dense") == (16, 0, 0)
    assert window_geometry(16, 4, "pooled") == (4, 6, 6)  # would refuse an overlap
    assert window_geometry(16, 4, "dense", 4) == (8, 4, 4)


def test_real_chunks_and_edge_pads_of_a_three_chunk_plan():
    p = plan_axis(50, 16, 4, "dense", 4, 20)
    assert p.real_chunks == (16, 16, 18)
    assert [p.edge_pads(b) for b in range(3)] == [(4, 0), (0, 0), (0, 10)]
    single = plan_axis(50, 16, 4)
    assert single.real_chunks == (50,) and single.edge_pads(0) == (0, 14)


def test_the_default_target_is_eight_windows_per_chunk():
    p = plan_axis(1000, 16, 4)
    assert p.windows[:2] == ((0, 8), (8, 16))
    assert plan_axis(1000, 16, 4, target_chunk=16 * 8).windows == p.windows


def test_plan_does_not_depend_on_the_target_chunk_except_grouping():
    a = plan_axis(100, 16, 4, target_chunk=7)
    b = plan_axis(100, 16, 4, target_chunk=64)
    assert (a.n_windows, a.n_out, a.pad_lo, a.pad_hi) == (b.n_windows, b.n_out, b.pad_lo, b.pad_hi)
    assert len(a.windows) > len(b.windows)


def test_window_larger_than_array_is_refused():
    with pytest.raises(DimensionError, match="fewer than the model window of 16"):
        plan_axis(10, 16, 4, dim="y")


@pytest.mark.parametrize(("stride", "overlap"), [(4, -4), (4, 3), (4, 8), (1, -1), (1, 8)])
def test_bad_overlap_is_refused(stride, overlap):
    with pytest.raises(XSkyError, match=f"overlap={overlap} is invalid for window 16 and "
                                        f"stride {stride}"):
        plan_axis(100, 16, stride, overlap=overlap)


def test_the_largest_overlap_is_accepted_and_named_in_the_error():
    assert plan_axis(100, 16, 1, overlap=7).core == 2
    assert plan_axis(100, 16, 4, overlap=4).core == 8
    with pytest.raises(XSkyError, match=r"\(max 4\)"):
        plan_axis(100, 16, 4, overlap=12)


def test_pooled_models_take_no_overlap_and_empty_axes_are_refused():
    with pytest.raises(XSkyError, match="overlap applies to dense models only"):
        plan_axis(100, 16, 4, "pooled", overlap=4)
    with pytest.raises(DimensionError, match="dimension 'y' is empty"):
        plan_axis(0, 16, 4, dim="y")
    # exactly one window is enough
    assert plan_axis(16, 16, 4).n_windows == 1
