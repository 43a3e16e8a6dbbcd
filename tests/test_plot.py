"""xsky.plot: PCA false colour, PNG previews and the plot() dispatcher."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xsky
from xsky.plot import pca_rgb, plot, save_preview


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


def test_save_preview_writes_an_enlarged_png(emb, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image as mpimg

    path = save_preview(emb, tmp_path / "sub" / "p.png", time=0)
    img = mpimg.imread(path)
    assert img.shape[0] == 6 * (512 // 8) and img.shape[1] == 8 * (512 // 8)


def test_plot_draws_an_embedding_and_dispatches_on_type(emb):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        ax = plot(emb, time=0)
        assert ax.get_title().startswith("planted") and len(ax.images) == 1
        assert emb.sky.plot(time=0).get_title() == ax.get_title()  # the accessor delegates
        with pytest.raises(xsky.ArgumentError, match="prototypes Dataset or an embedding"):
            plot(emb.isel(feature=0))
    finally:
        plt.close("all")
