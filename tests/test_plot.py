"""xsky.plot: change and similarity maps, PCA false colour (one basis across dates), CRS
axes, captions, PNG previews and the plot() dispatcher."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import xsky
from xsky.geo import write_crs
from xsky.plot import (
    caption,
    change_map,
    pca_basis,
    pca_dates,
    pca_rgb,
    plot,
    save_preview,
    similarity_map,
)

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CREDIT = {"attribution": "Contains modified Copernicus Sentinel data 2020", "license": "CC0"}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def emb() -> xr.DataArray:
    """A (time, y, x, feature) embedding whose first principal direction is planted."""
    rng = np.random.default_rng(0)
    t, ny, nx, nf = 2, 6, 8, 5
    ramp = np.linspace(-1, 1, nx)[None, None, :, None] * np.array([3.0, 0, 0, 0, 0])
    data = ramp + 0.01 * rng.normal(size=(t, ny, nx, nf))
    data[1, :2] = np.nan  # fewer valid pixels on date 1
    return xr.DataArray(data.astype("float32"), dims=("time", "y", "x", "feature"),
                        coords={"y": 50.0 - np.arange(ny), "x": 10.0 + np.arange(nx)},
                        name="embedding", attrs={"model": "planted"})


def utm_embedding(seed: int = 0) -> xr.DataArray:
    """(time, y, x, feature) on a 10 m UTM grid: 2 dates in 2018, 2 in 2020; a planted
    change in the east half of 2020; pixel (0, 0) invalid on both 2020 dates (no target),
    pixel (1, 1) on one of them (one target observation)."""
    rng = np.random.default_rng(seed)
    ny, nx, nf = 4, 6, 3
    base = np.array([1.0, 0.2, 0.1]) + 0.02 * rng.normal(size=(ny, nx, nf))
    data = np.stack([base + 0.01 * rng.normal(size=base.shape) for _ in range(4)])
    data[2:, :, 3:] = np.array([0.1, 0.2, 1.0])  # changed to another vector in 2020
    data[2:, 0, 0] = np.nan
    data[3, 1, 1] = np.nan
    times = pd.to_datetime(["2018-04-01", "2018-07-01", "2020-04-01", "2020-07-01"])
    da = xr.DataArray(data.astype("float32"), dims=("time", "y", "x", "feature"),
                      coords={"time": times, "y": 5_000_005.0 - 10 * np.arange(ny),
                              "x": 500_005.0 + 10 * np.arange(nx)},
                      name="embedding", attrs={"model": "synthetic", **CREDIT})
    return write_crs(da, "EPSG:32633")


def _caption_text(ax) -> str:
    texts = [t for t in ax.texts if t.get_gid() == "xsky-caption"]
    assert len(texts) == 1
    return texts[0].get_text().replace("\n", "; ")


# --------------------------------------------------------------------------------------
# change maps
# --------------------------------------------------------------------------------------


def test_change_map_shows_pixels_with_too_few_observations_as_missing_not_unchanged():
    out = xsky.change(utm_embedding(), "2018", "2020")
    assert int(out.target_count[0, 0]) == 0 and int(out.target_count[1, 1]) == 1
    ax = change_map(out, min_count=2)
    img = ax.images[0].get_array()
    masked = np.ma.getmaskarray(img)
    want = (np.minimum(out.ref_count, out.target_count).values < 2) | np.isnan(out.change.values)
    assert want[0, 0] and want[1, 1] and want.sum() == 2
    np.testing.assert_array_equal(masked, want)
    assert np.isnan(img.data[want]).all()  # NaN, not 0 (which would read "no change")
    np.testing.assert_allclose(img.data[~want], out.change.values[~want], rtol=1e-6)
    # hatched, and said so in the legend
    assert [c.get_gid() for c in ax.collections].count("xsky-missing") == 1
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "missing: fewer than 2 valid observations (2 px)"
    # the default min_count is the one the result was computed with (1): only NaN is missing
    ax1 = change_map(out)
    np.testing.assert_array_equal(np.ma.getmaskarray(ax1.images[0].get_array()),
                                  np.isnan(out.change.values))


def test_change_map_outlines_the_threshold_mask_along_pixel_edges():
    out = xsky.change(utm_embedding(), "2018", "2020")
    mask = xsky.threshold(out, 0.3)
    ax = change_map(out, mask=mask)
    (cs,) = [c for c in ax.collections if c.get_gid() == "xsky-change-mask"]
    verts = np.concatenate([p.vertices for p in cs.get_paths()])
    # every vertex lies on a pixel edge (10 m pixels, centres at 500005 + 10 i)
    fx = (verts[:, 0] - 500_000.0) / 10.0
    fy = (5_000_010.0 - verts[:, 1]) / 10.0
    assert np.abs(fx - np.round(fx)).max() < 1e-3 and np.abs(fy - np.round(fy)).max() < 1e-3
    # the outline is the east half (x from 500030 to 500060), without the missing (0, 0)
    assert fx.min() == pytest.approx(3, abs=1e-3) and fx.max() == pytest.approx(6, abs=1e-3)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "change > 0.3 (value 0.3) (12 px)" in labels
    # a method name thresholds the score here, like xsky.threshold
    ax2 = change_map(out, mask="otsu", mask_style="fill")
    thr = float(xsky.threshold(out, "otsu").threshold)
    assert any(f"change > {thr:.3g} (otsu)" in t.get_text()
               for t in ax2.get_legend().get_texts())
    (overlay,) = [im for im in ax2.images if im.get_gid() == "xsky-change-mask"]
    alpha = np.asarray(overlay.get_array())[..., 3]
    assert (alpha > 0).sum() == int((xsky.threshold(out, "otsu") & ~np.isnan(out.change)).sum())


def test_change_map_draws_one_period_of_a_change_through_time():
    e = utm_embedding()
    out = xsky.change(e, min_baseline=2)
    ax = change_map(out, time=-1)
    img = ax.images[0].get_array()
    np.testing.assert_allclose(img.data, out.zscore.isel(time=-1).values, rtol=1e-6)
    lo, hi = ax.images[0].get_clim()
    assert lo == -hi  # a z-score: centred colours
    assert "2020-07-01" in ax.get_title() and ax.images[0].get_cmap().name.startswith("RdBu_r")
    # valid_count of that period decides what is missing
    ax = change_map(out, time=2, variable="score", min_count=1)
    masked = np.ma.getmaskarray(ax.images[0].get_array())
    assert masked[0, 0] and masked.sum() == 1


def test_change_map_of_a_lazy_result_draws_the_same_map_in_one_compute():
    eager = change_map(xsky.change(utm_embedding(), "2018", "2020"), mask="otsu", min_count=2)
    lazy_out = xsky.change(utm_embedding().chunk(time=1, y=2, x=3), "2018", "2020")
    assert lazy_out.change.chunks is not None
    lazy = change_map(lazy_out, mask="otsu", min_count=2)
    a, b = lazy.images[0].get_array(), eager.images[0].get_array()
    np.testing.assert_array_equal(np.ma.getmaskarray(a), np.ma.getmaskarray(b))
    np.testing.assert_allclose(a.filled(0), b.filled(0), rtol=0, atol=1e-6)
    assert [t.get_text() for t in lazy.get_legend().get_texts()] == \
        [t.get_text() for t in eager.get_legend().get_texts()]


def test_change_map_refuses_what_it_cannot_draw():
    e = utm_embedding()
    with pytest.raises(xsky.DimensionError, match="embedding, not a change score"):
        change_map(e)
    out = xsky.change(e, "2018", "2020")
    with pytest.raises(xsky.ArgumentError, match="mask_style"):
        change_map(out, mask=0.3, mask_style="dots")
    with pytest.raises(xsky.ArgumentError, match="variable="):
        change_map(out, variable="nope")
    with pytest.raises(xsky.DimensionError, match="mask= has dims"):
        change_map(out, mask=xsky.threshold(out, 0.3).isel(x=slice(0, 2)))


# --------------------------------------------------------------------------------------
# similarity maps
# --------------------------------------------------------------------------------------


def test_similarity_map_marks_the_query_in_the_cubes_crs():
    pytest.importorskip("geopandas")
    import shapely
    from pyproj import Transformer

    e = utm_embedding().isel(time=[0])
    lon, lat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform(
        500_035.0, 4_999_985.0)
    pos = [(500_005.0, 5_000_005.0), pd.DataFrame({"lon": [lon], "lat": [lat]})]
    poly = shapely.box(500_010.0, 4_999_970.0, 500_030.0, 4_999_990.0)
    query = xsky.Examples(positive=pos, negative=[shapely.Point(500_055.0, 4_999_975.0), poly])
    sim = xsky.similar(e, query, time=e.time.values[0])
    top = xsky.similar(e, query, time=e.time.values[0], k=3)
    ax = similarity_map(sim, query, top=top)
    lines = {ln.get_label(): ln for ln in ax.lines}
    np.testing.assert_allclose(lines["positive examples"].get_xydata(),
                               [[500_005.0, 5_000_005.0], [500_035.0, 4_999_985.0]], atol=1e-6)
    np.testing.assert_allclose(lines["negative examples"].get_xydata(),
                               [[500_055.0, 4_999_975.0]])
    ring = lines["negative examples (polygon)"].get_xydata()
    np.testing.assert_allclose(ring.min(0), [500_010.0, 4_999_970.0])
    np.testing.assert_allclose(ring.max(0), [500_030.0, 4_999_990.0])
    np.testing.assert_allclose(lines["top 3"].get_xydata(), top[["x", "y"]].to_numpy())
    # the image is the map, on the cube's coordinates
    np.testing.assert_allclose(ax.images[0].get_array().data, sim.isel(time=0).values,
                               rtol=1e-6)
    assert ax.images[0].get_extent() == [500_000.0, 500_060.0, 4_999_970.0, 5_000_010.0]
    assert "2 mean(positive) - mean(negative)" in ax.get_title()


def test_similarity_map_draws_a_point_query_and_hatches_invalid_pixels():
    e = utm_embedding().isel(time=2)  # pixel (0, 0) invalid
    sim = xsky.similar(e, (500_045.0, 4_999_995.0))
    ax = similarity_map(sim, (500_045.0, 4_999_995.0))
    (star,) = [ln for ln in ax.lines if ln.get_label() == "query"]
    np.testing.assert_allclose(star.get_xydata(), [[500_045.0, 4_999_995.0]])
    masked = np.ma.getmaskarray(ax.images[0].get_array())
    assert masked[0, 0] and masked.sum() == 1
    assert [c.get_gid() for c in ax.collections] == ["xsky-missing"]
    # the dispatcher knows a similarity map
    assert plot(sim).images[0].get_array().shape == (4, 6)


def test_similarity_map_needs_a_date_on_a_time_map():
    e = utm_embedding()
    sim = xsky.similar(e, np.array([1.0, 0.2, 0.1]))
    with pytest.raises(xsky.ArgumentError, match="say which to draw with time="):
        similarity_map(sim)
    ax = similarity_map(sim, time="2020-04-01")
    assert "2020-04-01" in ax.get_title()
    with pytest.raises(xsky.ArgumentError, match="cannot use a set"):
        similarity_map(sim, {1, 2}, time=0)


# --------------------------------------------------------------------------------------
# PCA false colour
# --------------------------------------------------------------------------------------


def test_pca_rgb_puts_the_main_direction_in_the_first_channel(emb):
    rgb = pca_rgb(emb, time=0)
    assert rgb.dims == ("y", "x", "rgb") and rgb.dtype == np.float32
    assert float(rgb.min()) >= 0.0 and float(rgb.max()) <= 1.0
    r = rgb.sel(rgb="r").values
    # the planted ramp runs along x: the red channel is monotonic along x in every row
    d = np.diff(r.mean(axis=0))
    assert np.all(d > 0) or np.all(d < 0)


def test_pca_rgb_picks_the_date_with_most_valid_pixels_and_keeps_nan(emb):
    default = pca_rgb(emb)
    np.testing.assert_array_equal(default.values, pca_rgb(emb, time=0).values)
    day1 = pca_rgb(emb, time=1)
    assert np.isnan(day1.values[:2]).all() and np.isfinite(day1.values[2:]).all()


def test_pca_rgb_refuses_an_embedding_without_finite_pixels(emb):
    with pytest.raises(xsky.DataError, match="no finite pixel"):
        pca_rgb(emb * np.nan, time=0)
    with pytest.raises(xsky.DimensionError, match="'feature'"):
        pca_rgb(emb.isel(feature=0))
    with pytest.raises(xsky.DimensionError, match="no 'time'"):
        pca_rgb(emb.isel(time=0), time=0)


def test_one_basis_gives_the_same_vector_the_same_colour_on_every_date(emb):
    e = emb.copy(data=emb.values.copy())
    e.values[1, 4, 6] = e.values[0, 3, 1]  # the same vector on two dates
    stack = pca_rgb(e, time="all")
    assert stack.dims == ("time", "y", "x", "rgb")
    np.testing.assert_array_equal(stack.values[1, 4, 6], stack.values[0, 3, 1])
    # ... which a fit per date does not give (so the check above means something)
    per_date = [pca_rgb(e, time=i).values for i in range(2)]
    assert np.abs(per_date[1][4, 6] - per_date[0][3, 1]).max() > 1e-3
    # the stack is the basis fitted over both dates, applied to each
    basis = pca_basis(e)
    np.testing.assert_array_equal(stack.values, basis.transform(e.values))
    assert basis.n_fit == int(np.isfinite(e.values).all(-1).sum())
    # an explicit basis colours another selection identically; a list selects dates
    np.testing.assert_array_equal(pca_rgb(e, time=1, basis=basis).values, stack.values[1])
    np.testing.assert_array_equal(pca_rgb(e, time=[1], basis=basis).values, stack.values[1:])


def test_pca_basis_reads_a_bounded_sample_the_same_for_lazy_and_eager_input(emb):
    lazy = emb.chunk(time=1, y=3, x=4)
    eager = pca_basis(emb, n_sample=10, seed=3)
    got = pca_basis(lazy, n_sample=10, seed=3)
    assert eager.n_fit == got.n_fit <= 10
    np.testing.assert_allclose(got.components, eager.components, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got.low, eager.low, rtol=1e-6, atol=1e-9)
    # signs are fixed: the largest loading of each component is positive
    c = eager.components
    assert (c[np.arange(3), np.abs(c).argmax(1)] > 0).all()
    # fewer than 3 features: the missing channels are 0
    two = pca_rgb(emb.isel(feature=[0, 1]), time=0)
    assert np.all(two.sel(rgb="b").values == 0)


def test_nan_pixels_are_drawn_missing_not_black(emb, tmp_path):
    ax = plot(emb, time=1)
    rgba = np.asarray(ax.images[0].get_array())
    assert rgba.shape == (6, 8, 4)
    assert (rgba[:2, :, 3] == 0).all() and (rgba[2:, :, 3] == 1).all()
    assert [c.get_gid() for c in ax.collections] == ["xsky-missing"]
    import matplotlib.image as mpimg

    png = mpimg.imread(save_preview(emb, tmp_path / "p.png", time=1))
    assert png.shape[2] == 4 and (png[: 2 * 64, :, 3] == 0).all() and (png[2 * 64:, :, 3] == 1).all()


def test_pca_dates_draws_every_date_with_one_basis(emb):
    e = write_crs(emb.assign_coords(time=pd.to_datetime(["2020-01-01", "2020-02-01"])),
                  "EPSG:32633").assign_attrs(CREDIT)
    fig = pca_dates(e)
    drawn = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in drawn] == ["2020-01-01", "2020-02-01"]
    want = pca_rgb(e, time="all").values
    for i, ax in enumerate(drawn):
        rgba = np.asarray(ax.images[0].get_array())
        np.testing.assert_allclose(rgba[..., :3], np.nan_to_num(want[i]), rtol=1e-6)
    (cap,) = [t for t in fig.texts if t.get_gid() == "xsky-caption"]
    assert CREDIT["attribution"] in cap.get_text() and "EPSG:32633" in cap.get_text()
    with pytest.raises(xsky.ArgumentError, match="max_dates=1"):
        pca_dates(e, max_dates=1)
    with pytest.raises(xsky.ArgumentError, match="pca_dates"):
        plot(e, time="all")


def test_save_preview_writes_an_enlarged_png(emb, tmp_path):
    import matplotlib.image as mpimg

    path = save_preview(emb, tmp_path / "sub" / "p.png", time=0)
    img = mpimg.imread(path)
    assert img.shape[0] == 6 * (512 // 8) and img.shape[1] == 8 * (512 // 8)


def test_plot_draws_an_embedding_and_dispatches_on_type(emb):
    ax = plot(emb, time=0)
    assert ax.get_title().startswith("planted") and len(ax.images) == 1
    assert emb.sky.plot(time=0).get_title() == ax.get_title()  # the accessor delegates
    with pytest.raises(xsky.ArgumentError, match="prototypes Dataset or an embedding"):
        plot(emb.isel(feature=0))
    out = xsky.change(utm_embedding(), "2018", "2020")
    assert plot(out).get_title().startswith("change 2018-01-01 – 2018-12-31 → 2020-01-01")


# --------------------------------------------------------------------------------------
# CRS axes and captions
# --------------------------------------------------------------------------------------


def test_axes_are_labelled_with_the_crs_axes_and_units(emb):
    out = xsky.change(utm_embedding(), "2018", "2020")
    ax = change_map(out)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("Easting (m)", "Northing (m)")
    # plain coordinates on the ticks, not an offset or 1e6 scaling
    ax.figure.canvas.draw()
    ticks = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert ticks and all(t.replace("−", "-").lstrip("-").isdigit() and len(t) == 7
                         for t in ticks)
    geo = emb.isel(time=0).rename(y="lat", x="lon")
    ax = plot(write_crs(geo, "EPSG:4326"))
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("Longitude (°)", "Latitude (°)")
    ax = plot(emb, time=0)  # no CRS: the dimension names
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x", "y")


def test_captions_carry_the_data_attribution_and_the_crs():
    e = utm_embedding()
    out = xsky.change(e, "2018", "2020")
    text = _caption_text(change_map(out))
    assert text == (f"{CREDIT['attribution']} (CC0); model: synthetic; "
                    "CRS: WGS 84 / UTM zone 33N (EPSG:32633)")
    sim = xsky.similar(e.isel(time=0), np.array([1.0, 0.2, 0.1]))
    assert _caption_text(similarity_map(sim)).startswith(CREDIT["attribution"])
    # a result that lost the attrs takes them from the input cube; or no credit at all
    bare = out.copy()
    bare.attrs = {}
    cube = xr.Dataset(attrs={"source": "nrt 0.2.1", "license": "EUPL-1.2"})
    assert _caption_text(change_map(bare, attribution=cube)).startswith(
        "source: nrt 0.2.1 (EUPL-1.2); CRS: WGS 84")
    assert caption(out, attribution=False) == (
        "model: synthetic; CRS: WGS 84 / UTM zone 33N (EPSG:32633)")
    assert caption(out, attribution="© me").startswith("© me; ")
    with pytest.raises(xsky.ArgumentError, match="attribution="):
        caption(out, attribution=3)
