"""Geo-context prototypes through the xarray API: learning per region, sampling, labels,
geo-context, laziness, bad input, plots and the ``.sky`` accessor."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from pyproj import Transformer

import xsky
from xsky import (
    AlignmentError,
    ArgumentError,
    CRSError,
    DataError,
    DimensionError,
    XSkyError,
    classify,
    geo_context,
    prototypes,
)
from xsky.api.geo_prototypes import (
    SKYSENSE_GRID,
    open_prototypes,
    region_ids,
    save_prototypes,
)
from xsky.geo import write_crs
from xsky.testing import raise_if_dask_computes

# A spherical plate carree: x and y are linear in lon and lat, so grid cells fall exactly on
# pixel boundaries and the expected region of every pixel is known without pyproj.
R_SPHERE = 6371007.181
EQC = f"+proj=eqc +R={R_SPHERE} +units=m +no_defs"
M_PER_DEG = R_SPHERE * np.pi / 180
DLON, DLAT = SKYSENSE_GRID


def planted_cube(
    ny=30,
    nx=60,
    d=8,
    k=4,
    *,
    lon0=0.0,
    lat0=45.0,
    px=0.1875,
    noise=0.1,
    seed=1,
    nt=None,
    shared_centres=False,
):
    """Embedding with k planted clusters per default grid cell (30 x 60 px = 2 x 2 cells).

    Returns (emb, truth, rid) where truth is the planted cluster of each pixel and rid the
    expected region id of each pixel (row * 64 + col of the 64 x 64 grid).
    """
    rng = np.random.default_rng(seed)
    lon = lon0 + (np.arange(nx) + 0.5) * px
    lat = lat0 + ny * px - (np.arange(ny) + 0.5) * px  # north up
    col = np.floor((lon + 180) / DLON).astype(int)
    row = np.floor((lat + 90) / DLAT).astype(int)
    rid = row[:, None] * 64 + col[None, :]
    shape = (ny, nx) if nt is None else (nt, ny, nx)
    truth = rng.integers(k, size=shape)
    common = rng.normal(size=(k, d))
    f = np.empty((*shape, d), "float32")
    for r in np.unique(rid):
        centres = common if shared_centres else rng.normal(size=(k, d))
        m = np.broadcast_to(rid == r, shape)
        f[m] = centres[truth[m]] + noise * rng.normal(size=(int(m.sum()), d))
    dims = ("y", "x", "feature") if nt is None else ("time", "y", "x", "feature")
    coords = {"y": lat * M_PER_DEG, "x": lon * M_PER_DEG}
    if nt is not None:
        coords["time"] = np.arange(nt)
    emb = xr.DataArray(
        f,
        dims=dims,
        coords=coords,
        name="embedding",
        attrs={"model": "test-tiny", "weights_sha256": "ab" * 32},
    )
    return write_crs(emb, EQC), truth, rid


def purity(pred: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of pixels whose predicted cluster's majority planted class is theirs."""
    pred, truth = np.ravel(pred), np.ravel(truth)
    ok = pred >= 0
    _, pi = np.unique(pred[ok], return_inverse=True)
    _, ti = np.unique(truth[ok], return_inverse=True)
    table = np.zeros((pi.max() + 1, ti.max() + 1))
    np.add.at(table, (pi, ti), 1)
    return float(table.max(axis=1).sum() / ok.sum())


@pytest.fixture(scope="module")
def cube():
    return planted_cube()


@pytest.fixture(scope="module")
def learned(cube):
    emb, _, _ = cube
    return prototypes(emb.chunk(y=7, x=13), k=4)


# ---------------------------------------------------------------------------------------
# learned prototypes per region
# ---------------------------------------------------------------------------------------


def test_planted_clusters_are_recovered_in_every_default_grid_cell(cube, learned):
    emb, truth, rid = cube
    np.testing.assert_array_equal(learned.region.values, np.unique(rid))
    np.testing.assert_array_equal(learned.region_map.values, rid)
    assign = learned.assignment.values
    assert assign.min() >= 0
    for r in np.unique(rid):
        assert purity(assign[rid == r], truth[rid == r]) >= 0.95, r
    assert learned.prototypes.shape == (4, 4, 8)
    np.testing.assert_allclose(np.linalg.norm(learned.prototypes.values, axis=-1), 1, atol=1e-6)
    # similarity is the cosine of the pixel minus its region's centre to the chosen prototype
    ri = np.searchsorted(learned.region.values, rid)
    f = emb.values.astype("float64") - learned.centre.values[ri]
    f /= np.linalg.norm(f, axis=-1, keepdims=True)
    p = learned.prototypes.values[ri, assign]
    np.testing.assert_allclose(learned.similarity.values, (f * p).sum(-1), atol=1e-5)
    assert learned.attrs["method"] == "centred" and learned.centre.dims == ("region", "feature")


def test_region_bounds_and_counts_describe_the_default_grid(cube, learned):
    _, _, rid = cube
    row, col = np.divmod(learned.region.values, 64)
    np.testing.assert_allclose(learned.lon_min, -180 + col * 5.625)
    np.testing.assert_allclose(learned.lon_max, -180 + (col + 1) * 5.625)
    np.testing.assert_allclose(learned.lat_min, -90 + row * 2.8125)
    np.testing.assert_allclose(learned.lat_max, -90 + (row + 1) * 2.8125)
    np.testing.assert_array_equal(
        learned.n_pixels, [(rid == r).sum() for r in learned.region.values]
    )
    np.testing.assert_array_equal(learned.n_samples, learned.n_pixels)  # 450 < sample
    assert learned.attrs["grid"] == "skysense-4096"
    assert tuple(learned.attrs["cell_size"]) == (5.625, 2.8125)
    assert learned.attrs["source_model"] == "test-tiny"
    assert learned.attrs["source_weights_sha256"] == "ab" * 32


def test_same_seed_is_deterministic_and_independent_of_chunking(cube, learned):
    emb, _, _ = cube
    for chunks in (None, {"y": 16, "x": 60}, {"y": 4, "x": 9}):
        other = prototypes(emb if chunks is None else emb.chunk(chunks), k=4)
        assert float(abs(other.prototypes - learned.prototypes).max()) <= 1e-5
        np.testing.assert_array_equal(other.assignment.values, learned.assignment.values)


def test_subsample_is_bounded_chunk_independent_and_seeded():
    emb, truth, rid = planted_cube(nt=3, seed=4)
    a = prototypes(emb.chunk(time=1, y=11, x=17), k=4, sample=200, seed=5)
    b = prototypes(emb.chunk(time=3, y=30, x=8), k=4, sample=200, seed=5)
    c = prototypes(emb.chunk(time=2), k=4, sample=200, seed=6)
    np.testing.assert_array_equal(a.n_samples, 200)
    np.testing.assert_array_equal(a.n_pixels, 3 * 450)
    assert float(abs(a.prototypes - b.prototypes).max()) <= 1e-5
    assert a.assignment.dims == ("time", "y", "x")
    np.testing.assert_array_equal(a.assignment.values, b.assignment.values)
    assert float(abs(a.prototypes - c.prototypes).max()) > 1e-3  # another seed, another sample
    assign = c.assignment.values
    for r in np.unique(rid):
        m = np.broadcast_to(rid == r, truth.shape)
        assert purity(assign[m], truth[m]) >= 0.95


def test_time_first_or_last_layout_gives_the_same_prototypes():
    emb, _, _ = planted_cube(nt=2, ny=15, nx=30, seed=8)
    a = prototypes(emb, k=3, cell_size=(10, 10))
    b = prototypes(emb.transpose("y", "feature", "x", "time"), k=3, cell_size=(10, 10))
    np.testing.assert_array_equal(a.prototypes.values, b.prototypes.values)


def anisotropic(emb, seed=0, offset=50.0, log_scale=2.0):
    """``emb`` with a large common offset and unequal per-feature scales (real embeddings:
    cosine similarities of raw features all near 1)."""
    rng = np.random.default_rng(seed)
    d = emb.sizes["feature"]
    off = offset * rng.normal(size=d)
    scale = np.exp(rng.uniform(-log_scale, log_scale, size=d))
    return emb.copy(data=(emb.values * scale + off).astype("float32"))


def test_centred_prototypes_separate_clusters_sharing_a_large_offset():
    emb, truth, rid = planted_cube(seed=31)
    emb = anisotropic(emb, seed=1)
    f = emb.values.reshape(-1, 8).astype("float64")
    fn = f / np.linalg.norm(f, axis=1, keepdims=True)
    assert (fn @ fn[:50].T).min() > 0.9  # the regime of real embeddings: all cosines near 1
    ref = prototypes(emb.chunk(y=7, x=13), k=4, seed=3)
    assign = ref.assignment.values
    for r in np.unique(rid):
        assert purity(assign[rid == r], truth[rid == r]) >= 0.95, r
    # the stored centre is the region's sample mean (all 450 pixels are sampled here)
    for j, r in enumerate(ref.region.values):
        np.testing.assert_allclose(ref.centre.values[j], emb.values[rid == r].mean(0), rtol=1e-5)
    # chunk-invariant and deterministic: identical prototypes, centres and maps
    for chunks in (None, {"y": 30, "x": 7}, {"y": 4, "x": 60}):
        other = prototypes(emb if chunks is None else emb.chunk(chunks), k=4, seed=3)
        np.testing.assert_array_equal(other.prototypes.values, ref.prototypes.values)
        np.testing.assert_array_equal(other.centre.values, ref.centre.values)
        np.testing.assert_array_equal(other.assignment.values, assign)
    # classify and geo_context apply the centre as learning did
    np.testing.assert_array_equal(classify(emb, ref).label.values, assign)
    ctx = geo_context(emb, ref, temperature=0.2).values[..., 8:]
    np.testing.assert_allclose(ctx, context_reference(emb, ref, rid, 0.2), atol=1e-5)
    # SkySense's plain cosine stays available, and is what fails on such features
    plain = prototypes(emb, k=4, seed=3, method="cosine", restarts=1)
    assert "centre" not in plain and plain.attrs["method"] == "cosine"
    worst = min(purity(plain.assignment.values[rid == r], truth[rid == r]) for r in np.unique(rid))
    assert worst < 0.8


def test_subsampled_centred_prototypes_are_seeded_and_chunk_invariant():
    emb, truth, rid = planted_cube(nt=2, seed=32)
    emb = anisotropic(emb, seed=2, offset=30.0)
    a = prototypes(emb.chunk(time=1, y=11, x=17), k=4, sample=150, seed=5)
    b = prototypes(emb.chunk(time=2, y=30, x=8), k=4, sample=150, seed=5)
    c = prototypes(emb, k=4, sample=150, seed=6)
    np.testing.assert_array_equal(a.n_samples, 150)
    np.testing.assert_array_equal(a.prototypes.values, b.prototypes.values)
    np.testing.assert_array_equal(a.centre.values, b.centre.values)
    assert float(abs(a.centre - c.centre).max()) > 1e-4  # another seed, another sample
    for out in (a, c):
        for r in np.unique(rid):
            m = np.broadcast_to(rid == r, truth.shape)
            assert purity(out.assignment.values[m], truth[m]) >= 0.95


FLIPS = [
    {"y": slice(None, None, -1)},
    {"x": slice(None, None, -1)},
    {"y": slice(None, None, -1), "x": slice(None, None, -1)},
]


@pytest.mark.parametrize("flip", FLIPS, ids=["south-up", "east-to-west", "both"])
@pytest.mark.parametrize("method", ["centred", "cosine"])
def test_storage_orientation_does_not_change_prototypes_or_maps(flip, method):
    emb, _, _ = planted_cube(nt=2, seed=33)
    emb = anisotropic(emb, seed=3, offset=5.0)
    kw = {"k": 4, "sample": 100, "seed": 2, "method": method}  # sample < pixels: sampling counts
    ref = prototypes(emb.chunk(y=7, x=13), **kw)
    flipped = emb.isel(flip)
    out = prototypes(flipped.chunk(y=9, x=11), **kw)
    np.testing.assert_allclose(out.prototypes.values, ref.prototypes.values, rtol=0, atol=1e-5)
    if method == "centred":
        np.testing.assert_allclose(out.centre.values, ref.centre.values, rtol=0, atol=1e-5)
    for name in ("assignment", "similarity", "region_map"):  # input's coordinate order kept
        for d in ("y", "x"):
            np.testing.assert_array_equal(out[name][d].values, flipped[d].values)
    srt = {"y": "y", "x": "x"}
    np.testing.assert_array_equal(
        out.assignment.sortby(list(srt)).values, ref.assignment.sortby(list(srt)).values
    )
    # classify / geo_context of a flipped cube with the same prototypes: same place, same value
    cl = classify(flipped, ref)
    np.testing.assert_array_equal(cl.label.y.values, flipped.y.values)
    np.testing.assert_array_equal(
        cl.label.sortby(["y", "x"]).values, ref.assignment.sortby(["y", "x"]).values
    )
    np.testing.assert_allclose(
        cl.similarity.sortby(["y", "x"]).values,
        ref.similarity.sortby(["y", "x"]).values,
        atol=1e-6,
    )
    g = geo_context(flipped, ref)
    g0 = geo_context(emb, ref)
    assert g.dims == flipped.dims
    np.testing.assert_array_equal(g.x.values, flipped.x.values)
    diff = abs(g.sortby(["y", "x"]) - g0.sortby(["y", "x"])).max()
    assert float(diff) <= 1e-5


def test_orientation_with_a_region_label_map():
    emb, _, _ = planted_cube(seed=34)
    lab = np.where(np.arange(60) < 25, 3, 8)[None, :].repeat(30, 0)
    rmap = xr.DataArray(lab, dims=("y", "x"), coords={"y": emb.y, "x": emb.x})
    ref = prototypes(emb, k=4, sample=200, regions=rmap)
    flip = {"y": slice(None, None, -1), "x": slice(None, None, -1)}
    out = prototypes(emb.isel(flip), k=4, sample=200, regions=rmap.isel(flip))
    np.testing.assert_array_equal(out.prototypes.values, ref.prototypes.values)
    np.testing.assert_array_equal(out.assignment.isel(flip).values, ref.assignment.values)


def test_invalid_pixels_are_skipped_and_marked():
    emb, _, _ = planted_cube(seed=9)
    f = emb.values.copy()
    f[:5, :7] = np.nan
    f[10, 10] = 0.0  # an all-zero feature has no direction: invalid too
    out = prototypes(emb.copy(data=f).chunk(y=8), k=4)
    assert (out.assignment.values[:5, :7] == -1).all()
    assert np.isnan(out.similarity.values[:5, :7]).all()
    assert out.assignment.values[10, 10] == -1
    assert int(out.n_pixels.sum()) == 30 * 60 - 35 - 1
    assert (out.assignment.values[5:, 11:] >= 0).all()


def test_user_cell_size_regions_follow_the_projected_crs():
    # EPSG:3035 (LAEA Europe), 2 km pixels: compare with an independent pyproj conversion.
    ny, nx = 40, 50
    x = 4.2e6 + (np.arange(nx) + 0.5) * 2000
    y = 2.6e6 - (np.arange(ny) + 0.5) * 2000
    emb = xr.DataArray(
        np.ones((ny, nx, 2), "float32"), dims=("y", "x", "feature"), coords={"y": y, "x": x}
    )
    emb = write_crs(emb, "EPSG:3035")
    xx, yy = np.meshgrid(x, y)
    lon, lat = Transformer.from_crs("EPSG:3035", "EPSG:4326", always_xy=True).transform(xx, yy)
    expected = np.floor((lat + 90) / 0.5).astype(int) * 360 + np.floor((lon + 180) / 1.0)
    got = region_ids(emb, cell_size=(1.0, 0.5))
    np.testing.assert_array_equal(got.values, expected)
    assert len(np.unique(expected)) > 4  # the cube spans several cells


def test_region_label_map_gives_one_prototype_set_per_label(cube):
    emb, truth, _ = cube
    lab = np.where(np.arange(30) < 15, 7, 9)[:, None].repeat(60, 1)  # north / south halves
    lab[0, 0] = -1  # outside every region
    rmap = xr.DataArray(lab, dims=("y", "x"), coords={"y": emb.y, "x": emb.x})
    out = prototypes(emb.chunk(y=10, x=10), k=8, regions=rmap)
    np.testing.assert_array_equal(out.region, [7, 9])
    lon = emb.x.values / M_PER_DEG
    lat = emb.y.values / M_PER_DEG
    np.testing.assert_allclose(out.lon_min, [lon[0]] * 2)
    np.testing.assert_allclose(out.lon_max, [lon[-1]] * 2)
    np.testing.assert_allclose(out.lat_min, [lat[14], lat[-1]])
    np.testing.assert_allclose(out.lat_max, [lat[0], lat[15]])
    assert out.assignment.values[0, 0] == -1
    # each label region spans 2 grid cells of 4 planted clusters: 8 prototypes separate them
    combo = truth * 2 + (np.arange(60) >= 30)[None, :]
    for value in (7, 9):
        m = lab == value
        assert purity(out.assignment.values[m], combo[m]) >= 0.95
    # the stored label map lets classify/geo_context run on the same grid
    np.testing.assert_array_equal(classify(emb, out).label.values, out.assignment.values)


# ---------------------------------------------------------------------------------------
# laziness
# ---------------------------------------------------------------------------------------


def test_learning_computes_once_and_every_map_is_lazy(cube):
    emb, truth, _ = cube
    demb = emb.chunk(y=10, x=20)
    with raise_if_dask_computes(max_computes=1):  # the streamed sample
        out = prototypes(demb, k=4)
    labels = xr.DataArray(
        np.where(np.arange(30 * 60).reshape(30, 60) % 50 == 0, truth, -1),
        dims=("y", "x"),
        coords={"y": emb.y, "x": emb.x},
    )
    with raise_if_dask_computes():
        for name in ("assignment", "similarity", "region_map"):
            assert out[name].chunks is not None
        cl = classify(demb, out)
        ctx = geo_context(demb, out)
        lp = prototypes(demb, labels=labels, regions="grid")
        lcl = classify(demb, lp)
        region_ids(demb)
    assert ctx.chunks is not None and lp.prototypes.chunks is not None
    assert cl.label.chunks is not None and lcl.similarity.chunks is not None


# ---------------------------------------------------------------------------------------
# label prototypes and few-shot classification
# ---------------------------------------------------------------------------------------


def few_shot_labels(emb, truth, per_class, seed=0):
    rng = np.random.default_rng(seed)
    lab = np.full(truth.shape, -1)
    for c in np.unique(truth):
        pick = rng.choice(np.flatnonzero(truth == c), per_class, replace=False)
        lab.flat[pick] = c
    return xr.DataArray(lab, dims=("y", "x"), coords={"y": emb.y, "x": emb.x})


def test_label_prototypes_are_normalised_class_means():
    emb, truth, _ = planted_cube(shared_centres=True, seed=11)
    labels = few_shot_labels(emb, truth, 6)
    out = prototypes(emb.chunk(y=7, x=11), labels=labels)
    assert out.prototypes.dims == ("region", "prototype", "feature")
    np.testing.assert_array_equal(out.prototype, [0, 1, 2, 3])
    np.testing.assert_array_equal(out.region, [0])
    f = emb.values / np.linalg.norm(emb.values, axis=-1, keepdims=True)
    for c in range(4):
        m = labels.values == c
        ref = f[m].mean(0)
        np.testing.assert_allclose(
            out.prototypes.values[0, c], ref / np.linalg.norm(ref), atol=1e-6
        )
        assert int(out.n_labelled[0, c]) == m.sum() == 6
    assert out.attrs["kind"] == "labels" and out.attrs["regions"] == "global"


def test_few_labelled_pixels_map_the_whole_cube():
    emb, truth, _ = planted_cube(shared_centres=True, seed=12)
    out = classify(emb, prototypes(emb, labels=few_shot_labels(emb, truth, 3)))
    acc = float((out.label.values == truth).mean())
    assert acc >= 0.99, acc
    assert float(out.similarity.min()) > 0.5


def test_label_prototypes_per_region_leave_absent_classes_empty():
    emb, truth, rid = planted_cube(shared_centres=True, seed=13)
    lab = np.where(truth < 3, truth, -1)
    lab[(rid == rid.max()) & (truth == 2)] = -1  # class 2 is unlabelled in one region
    labels = xr.DataArray(lab, dims=("y", "x"), coords={"y": emb.y, "x": emb.x})
    out = prototypes(emb, labels=labels, regions="grid")
    last = int(np.flatnonzero(out.region.values == rid.max())[0])
    assert int(out.n_labelled[last, 2]) == 0
    assert np.isnan(out.prototypes.values[last, 2]).all()
    assign = out.assignment.values
    assert not np.any(assign[rid == rid.max()] == 2)
    assert np.any(assign[rid != rid.max()] == 2)


def test_label_prototypes_on_a_time_cube_with_a_region_label_map():
    emb, truth, _ = planted_cube(shared_centres=True, seed=16, nt=2)
    labels = few_shot_labels(emb, truth[0], 5)  # (y, x) labels apply at both times
    halves = xr.DataArray(
        np.where(np.arange(60) < 30, 7, 9)[None, :].repeat(30, 0),
        dims=("y", "x"),
        coords={"y": emb.y, "x": emb.x},
    )
    out = prototypes(emb.chunk(time=1, y=10), labels=labels, regions=halves)
    np.testing.assert_array_equal(out.region, [7, 9])
    assert np.isnan(out.lon_min).all()  # label-map regions of label prototypes: no extent
    lab = labels.values
    for j, half in enumerate((slice(0, 30), slice(30, 60))):
        for c in range(4):
            m = np.zeros(lab.shape, bool)
            m[:, half] = lab[:, half] == c
            assert int(out.n_labelled[j, c]) == 2 * m.sum()
            f = emb.values[:, m].reshape(-1, 8)
            ref = (f / np.linalg.norm(f, axis=1, keepdims=True)).mean(0)
            np.testing.assert_allclose(
                out.prototypes.values[j, c], ref / np.linalg.norm(ref), atol=1e-6
            )
    assert out.assignment.dims == ("time", "y", "x")


# ---------------------------------------------------------------------------------------
# geo-context enrichment
# ---------------------------------------------------------------------------------------


def context_reference(emb, protos, rid, temperature):
    ri = np.searchsorted(protos.region.values, rid)
    f = emb.values.astype("float64")
    if "centre" in protos:
        f = f - protos.centre.values.astype("float64")[ri]
    fn = f / np.linalg.norm(f, axis=-1, keepdims=True)
    p = protos.prototypes.values.astype("float64")[ri]
    z = np.einsum("yxd,yxkd->yxk", fn, p) / temperature
    w = np.exp(z - z.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return np.einsum("yxk,yxkd->yxd", w, p)


def test_geo_context_concatenates_attention_over_region_prototypes(cube, learned):
    emb, _, rid = cube
    a = geo_context(emb.chunk(y=9, x=31), learned, temperature=0.2)
    b = geo_context(emb.chunk(y=30, x=5), learned, temperature=0.2)
    assert a.dims == emb.dims and a.sizes["feature"] == 16 and a.dtype == np.float32
    va = a.values
    np.testing.assert_array_equal(va[..., :8], emb.values)
    np.testing.assert_allclose(va[..., 8:], context_reference(emb, learned, rid, 0.2), atol=1e-6)
    assert float(abs(a - b).max()) <= 1e-6
    assert a.attrs["model"] == "test-tiny" and a.attrs["geo_context_k"] == 4


def test_geo_context_is_nan_where_the_region_has_no_prototypes(cube):
    emb, _, rid = cube
    west = prototypes(emb.isel(x=slice(0, 30)), k=4)  # the two western cells only
    out = geo_context(emb, west).values
    east = np.isin(rid, west.region.values, invert=True)
    assert east.sum() == 900
    assert np.isnan(out[east][:, 8:]).all() and np.isfinite(out[~east]).all()
    np.testing.assert_array_equal(out[east][:, :8], emb.values[east])


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------


def test_k_larger_than_sample_is_refused(cube):
    with pytest.raises(XSkyError, match="k=10 is larger than sample=5"):
        prototypes(cube[0], k=10, sample=5)


def test_region_with_fewer_pixels_than_k_raises_or_is_dropped():
    # lon0 = 5.25: the first 2 columns lie in one cell and the rest in the next one east.
    emb, _, rid = planted_cube(ny=6, nx=20, lon0=5.25, seed=14)
    small = np.unique(rid[:, :2])
    assert (rid == small[0]).sum() == 12
    with pytest.raises(XSkyError, match=rf"{small[0]}: 12.*sparse='drop'"):
        prototypes(emb, k=16)
    out = prototypes(emb, k=16, sparse="drop")
    assert small[0] not in out.region.values
    assert (out.assignment.values[rid == small[0]] == -1).all()
    assert (out.assignment.values[rid != small[0]] >= 0).all()


def test_missing_crs_is_a_crs_error(cube):
    emb = cube[0].drop_vars("spatial_ref")
    with pytest.raises(CRSError, match="write_crs"):
        prototypes(emb, k=2)
    with pytest.raises(CRSError):
        geo_context(emb, xr.Dataset())


@pytest.mark.parametrize(
    ("change", "kw", "err", "match"),
    [
        (lambda e: e.rename(feature="band"), {"k": 2}, DimensionError, "no 'feature' dim"),
        (lambda e: e * np.nan, {"k": 2}, XSkyError, "no valid pixel"),
        (lambda e: e, {}, XSkyError, "give k"),
        (lambda e: e, {"k": 2, "regions": "countries"}, XSkyError, "'global'"),
        (lambda e: e, {"k": 0}, XSkyError, "positive integer"),
        (lambda e: e, {"k": 2, "epsilon": -1}, XSkyError, "epsilon"),
        (lambda e: e, {"k": 2, "momentum": 1.0}, XSkyError, "momentum"),
        (lambda e: e, {"k": 2, "cell_size": (0, 1)}, XSkyError, "cell_size dlon"),
        (lambda e: e, {"k": 2, "sparse": "keep"}, XSkyError, "'drop'"),
        (lambda e: e.astype("int32"), {"k": 2}, XSkyError, "expected float"),
        (lambda e: e.to_dataset(), {"k": 2}, XSkyError, "pick one"),
    ],
)
def test_bad_input_raises_a_clear_error(cube, change, kw, err, match):
    with pytest.raises(err, match=match):
        prototypes(change(cube[0]), **kw)


@pytest.mark.parametrize(
    ("change", "kw", "err"),
    [
        (lambda e: e * np.nan, {"k": 2}, DataError),
        (lambda e: e.astype("int32"), {"k": 2}, DataError),
        (lambda e: e, {}, ArgumentError),
        (lambda e: e, {"k": 2, "regions": "countries"}, ArgumentError),
        (lambda e: e, {"k": 0}, ArgumentError),
        (lambda e: e, {"k": 2, "epsilon": -1}, ArgumentError),
        (lambda e: e, {"k": 2, "momentum": 1.0}, ArgumentError),
        (lambda e: e, {"k": 2, "sample": 0}, ArgumentError),
        (lambda e: e, {"k": 2, "iterations": -1}, ArgumentError),
        (lambda e: e, {"k": 2, "seed": -1}, ArgumentError),
        (lambda e: e, {"k": 2, "cell_size": (0, 1)}, ArgumentError),
        (lambda e: e, {"k": 2, "sparse": "keep"}, ArgumentError),
        (lambda e: e.to_dataset(), {"k": 2}, ArgumentError),
    ],
)
def test_bad_input_raises_the_fitting_error_family(cube, change, kw, err):
    with pytest.raises(err):
        prototypes(change(cube[0]), **kw)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"k": "four"}, r"k \(prototypes per region\) must be a positive integer, got 'four'"),
        ({"k": 2.5}, r"k \(prototypes per region\) must be a positive integer"),
        ({"k": 2, "sample": 0}, r"sample must be a positive integer, got 0"),
        ({"k": 2, "sample": -5}, r"sample must be a positive integer, got -5"),
        ({"k": 2, "regions": "countries"}, r"unknown regions 'countries'; choose one of .*'grid'"),
        ({"k": 2, "regions": 7}, r"unknown regions 7; choose one of .*label map"),
        ({"k": 2, "method": "kmeans"}, r"unknown method='kmeans'; choose one of 'centred', 'cos"),
        ({"k": 2, "restarts": 0}, r"restarts .* must be a positive integer, got 0"),
        ({"k": 2, "iterations": "ten"}, r"iterations must be a non-negative integer .*'ten'"),
        ({"k": 2, "iterations": 2.5}, r"iterations must be a non-negative integer"),
        ({"k": 2, "seed": "x"}, r"seed must be a non-negative integer .*'x'"),
        ({"k": 2, "sinkhorn_iterations": None}, r"sinkhorn_iterations must be a non-negative"),
        ({"k": 2, "momentum": "high"}, r"momentum must be a number in \[0, 1\).*'high'"),
        ({"k": 2, "momentum": None}, r"momentum must be a number in \[0, 1\)"),
        ({"k": 2, "epsilon": "small"}, r"epsilon must be a positive number, got 'small'"),
        ({"k": 2, "sparse": None}, r"unknown sparse=None; choose one of 'drop', 'raise'"),
        ({"k": 2, "cell_size": (1, 2, 3)}, r"cell_size must be \(dlon, dlat\) in degrees"),
    ],
)
def test_bad_arguments_are_argument_errors_naming_the_fix(cube, kw, match):
    with pytest.raises(ArgumentError, match=match):
        prototypes(cube[0], **kw)


def test_bad_arguments_of_classify_and_geo_context(cube, learned):
    emb = cube[0]
    with pytest.raises(ArgumentError, match=r"temperature must be a positive number, got 0"):
        geo_context(emb, learned, temperature=0)
    with pytest.raises(ArgumentError, match=r"temperature must be a positive number, got 'hot'"):
        geo_context(emb, learned, temperature="hot")
    with pytest.raises(ArgumentError, match=r"expected a prototypes xr.Dataset .* got dict"):
        classify(emb, {"prototypes": 1})
    with pytest.raises(ArgumentError, match=r"do not pass a region label map"):
        classify(emb, learned, regions=learned.region_map)


def test_misaligned_inputs_are_alignment_errors(cube, learned):
    emb, truth, _ = cube
    labels = xr.DataArray(truth, dims=("y", "x"), coords={"y": emb.y, "x": emb.x})
    with pytest.raises(AlignmentError):
        prototypes(emb, labels=labels.isel(x=slice(1, None)))
    with pytest.raises(AlignmentError):
        prototypes(emb, k=2, regions=xr.DataArray(np.zeros((30, 59), int), dims=("y", "x")))
    with pytest.raises(ArgumentError, match="do not pass a region label map"):
        classify(emb, learned, regions=labels)


def test_labels_must_match_the_embedding_grid(cube):
    emb, truth, _ = cube
    labels = xr.DataArray(truth, dims=("y", "x"), coords={"y": emb.y, "x": emb.x})
    with pytest.raises(DimensionError, match=r"not aligned.*'x'"):
        prototypes(emb, labels=labels.isel(x=slice(1, None)))
    with pytest.raises(XSkyError, match="either k"):
        prototypes(emb, k=3, labels=labels)
    with pytest.raises(XSkyError, match="no labelled pixel"):
        prototypes(emb, labels=labels * 0 - 1)


def test_prototypes_from_another_model_are_refused(cube, learned):
    emb = cube[0].isel(feature=slice(0, 5))
    for fn in (classify, geo_context):
        with pytest.raises(DimensionError, match="5 features but the prototypes 8"):
            fn(emb, learned)


def test_label_map_prototypes_need_a_label_map_on_another_grid(cube, tmp_path):
    emb = cube[0]
    rmap = xr.DataArray(np.zeros((30, 60), int), dims=("y", "x"), coords={"y": emb.y, "x": emb.x})
    out = prototypes(emb, k=2, regions=rmap)
    path = tmp_path / "p.nc"
    save_prototypes(out, path)
    with pytest.raises(XSkyError, match="regions=label_map"):
        classify(emb, open_prototypes(path))
    got = classify(emb, open_prototypes(path), regions=rmap).label.values
    np.testing.assert_array_equal(got, out.assignment.values)


# ---------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------


def test_plot_draws_the_assignment_with_a_legend(learned):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xsky.plot import prototypes as plot_prototypes

    ax = plot_prototypes(learned)
    try:
        texts = [t.get_text() for t in ax.get_legend().get_texts()]
        assert texts == ["prototype 0", "prototype 1", "prototype 2", "prototype 3"]
        (image,) = ax.get_images()
        np.testing.assert_array_equal(np.asarray(image.get_array()), learned.assignment.values)
        # region boundaries: 30 pixel edges along 5.625 E and 60 along 47.8125 N
        (lines,) = ax.collections
        segs = np.array(lines.get_segments())
        assert len(segs) == 30 + 60
        vertical = segs[:, 0, 0] == segs[:, 1, 0]
        np.testing.assert_allclose(segs[vertical][:, :, 0], 5.625 * M_PER_DEG)
        np.testing.assert_allclose(segs[~vertical][:, :, 1], 47.8125 * M_PER_DEG)
        assert "k=4, 4 regions" in ax.get_title()
    finally:
        plt.close("all")
    with pytest.raises(XSkyError, match="classify"):
        plot_prototypes(learned[["prototypes"]])
    ax = learned.isel(region=[0]).sky.plot(legend=False)  # the accessor delegates here
    try:
        assert ax.get_legend() is None and ax.get_title().startswith("prototype assignment")
    finally:
        plt.close("all")


# ---------------------------------------------------------------------------------------
# public names and the .sky accessor
# ---------------------------------------------------------------------------------------


def test_public_functions_and_accessor_delegate_to_the_same_code(cube, learned):
    import xsky.api.geo_prototypes as impl

    assert xsky.prototypes is impl.prototypes  # not shadowed by a submodule of that name
    assert xsky.classify is impl.classify and xsky.geo_context is impl.geo_context
    emb = cube[0].chunk(y=7, x=13)
    via = emb.sky.prototypes(k=4)
    np.testing.assert_array_equal(via.prototypes.values, learned.prototypes.values)
    cl = emb.sky.classify(learned)
    np.testing.assert_array_equal(cl.label.values, learned.assignment.values)
    assert emb.sky.geo_context(learned).sizes["feature"] == 16


# ---------------------------------------------------------------------------------------
# real data: the Romania Sentinel-2 sample embedded with test-tiny
# ---------------------------------------------------------------------------------------


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    t = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(t, (ai, bi), 1)
    pairs = lambda n: n * (n - 1) / 2  # noqa: E731
    index, rows, cols = pairs(t).sum(), pairs(t.sum(1)).sum(), pairs(t.sum(0)).sum()
    expected = rows * cols / pairs(t.sum())
    return float((index - expected) / ((rows + cols) / 2 - expected))


@pytest.fixture(scope="module")
def romania():
    pytest.importorskip("torch")
    cube = xsky.tutorial.open_dataset("romania").isel(time=slice(0, 40))
    return cube, xsky.embed(cube[["B02", "B03", "B04", "B08"]], "test-tiny")


def test_prototypes_of_real_embeddings_separate_scene_classes(romania):
    cube, emb = romania
    assign = xsky.prototypes(emb, k=4).assignment.values
    # SCL group of each 40 m output pixel (vegetation, cloud, snow, shadow) when >= 12/16 agree
    blocks = cube.SCL.values.reshape(40, 25, 4, 25, 4)
    ref = np.full((40, 25, 25), -1)
    for g, codes in enumerate([(4,), (8, 9, 10), (11,), (3,)]):
        ref[np.isin(blocks, codes).mean(axis=(2, 4)) >= 0.75] = g
    ok = ref >= 0
    assert np.bincount(ref[ok]).min() > 50  # all four groups are present
    shuffled = np.random.default_rng(0).permutation(assign[ok])
    assert adjusted_rand_index(assign[ok], ref[ok]) > 0.1  # measured 0.138
    assert abs(adjusted_rand_index(shuffled, ref[ok])) < 0.01
    assert purity(assign[ok], ref[ok]) > purity(shuffled, ref[ok]) + 0.04  # 0.943 vs 0.880


def test_embed_with_geo_context_doubles_the_features_lazily(romania):
    cube, emb = romania
    protos = xsky.prototypes(emb, k=4, sample=512)
    small = cube[["B02", "B03", "B04", "B08"]].isel(time=slice(0, 2))
    with raise_if_dask_computes():
        out = small.sky.embed("test-tiny", geo_context=protos)
    assert out.sizes["feature"] == 32 and out.attrs["geo_context_k"] == 4
    plain = emb.isel(time=slice(0, 2))
    np.testing.assert_allclose(out.values[..., :16], plain.values, atol=1e-6)
    np.testing.assert_allclose(
        out.values[..., 16:], geo_context(plain, protos).values[..., 16:], atol=1e-6
    )
