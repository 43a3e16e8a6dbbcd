"""The ``xsky`` command line: ``xsky models`` and ``xsky embed`` (offline fixtures)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import numpy as np
import pytest
import xarray as xr

import xsky
from xsky.cli import main
from xsky.io.stac import load_stac
from xsky.testing import stac as fx

pytestmark = [
    pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
    pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The 'shapely.ops.transform:DeprecationWarning"),
]

BBOX = ("22.147", "45.201", "22.157", "45.208")


@pytest.fixture(scope="module")
def items_file(tmp_path_factory, shared):
    d = tmp_path_factory.mktemp("cli_items")
    items = fx.romania_s2_items(d / "cogs", shared / "data", start=40, n_dates=6)
    return fx.write_item_collection(items, d / "search.geojson")


def test_models_lists_the_registry(capsys):
    assert main(["models"]) == 0
    assert capsys.readouterr().out.split() == xsky.models.list_models()
    assert main(["models", "test-*", "-v"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("test-tiny\twindow 16, stride 4, 16 features (dense, per date)")
    assert line.endswith("s2: B02,B03,B04,B08")


def test_models_without_match_fails_with_exit_2(capsys):
    assert main(["models", "no-such-*"]) == 2
    assert "no registered model matches 'no-such-*'" in capsys.readouterr().err


def test_embed_items_file_matches_the_python_api(items_file, tmp_path, capsys):
    out = tmp_path / "emb.zarr"
    argv = ["embed", "--items", str(items_file), "--bbox", *BBOX, "--time",
            "2018-01-01/2018-02-28", "--model", "test-tiny", "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert "100% Completed" in captured.err  # the progress bar ran to the end
    stored = xr.open_zarr(out, consolidated=False, decode_coords="all")["embedding"].load()
    cube = load_stac(items_file, bands=["B02", "B03", "B04", "B08"],
                     bbox=tuple(map(float, BBOX)), time="2018-01-01/2018-02-28")
    want = xsky.embed(cube, "test-tiny").compute()
    assert stored.dims == ("time", "y", "x", "feature")
    assert stored.sizes["time"] == 3  # 2018-01-07, 02-06, 02-16
    np.testing.assert_allclose(stored.values, want.values, rtol=0, atol=1e-6)
    np.testing.assert_allclose(stored.valid_fraction.values, want.valid_fraction.values)
    assert stored.rio.crs.to_epsg() == 3035
    assert np.isfinite(stored.values).mean() > 0.2


def test_embed_sample_writes_store_and_preview(tmp_path, capsys):
    out, png = tmp_path / "s.zarr", tmp_path / "s.png"
    argv = ["embed", "--sample", "romania", "--time", "2020-06-01/2020-07-31", "--bbox",
            *BBOX, "--model", "test-tiny", "--out", str(out), "--preview", str(png),
            "--no-progress"]
    assert main(argv) == 0
    assert "Completed" not in capsys.readouterr().err
    stored = xr.open_zarr(out, consolidated=False, decode_coords="all")["embedding"]
    cube = xsky.tutorial.open_dataset("romania").sel(time=slice("2020-06-01", "2020-07-31"))
    assert stored.sizes["time"] == cube.sizes["time"] > 0
    assert stored.sizes["feature"] == 16
    assert stored.sizes["x"] < 25 and stored.sizes["y"] < 25  # cropped (full cube: 25 x 25)
    assert png.stat().st_size > 100
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_embed_refuses_to_overwrite_and_reports_bad_input(items_file, tmp_path, capsys):
    out = tmp_path / "exists.zarr"
    out.mkdir()
    base = ["embed", "--items", str(items_file), "--model", "test-tiny"]
    assert main([*base, "--out", str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "a.zarr"), "--bbox", "1", "2", "3"]) == 2
    assert "--bbox must be 4 numbers" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "b.zarr"), "--bbox", "10,50,10.1,50.1"]) == 2
    assert "does not overlap any of the 6 items" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "c.zarr"), "--modality", "s1"]) == 2
    assert "takes modalities ['s2'], not --modality 's1'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --items or --sample is required
        main(["embed", "--model", "test-tiny", "--out", str(tmp_path / "d.zarr")])


def test_console_script_is_declared_and_runs():
    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "xsky"]
    assert ep.value == "xsky.cli:main"
    res = subprocess.run([sys.executable, "-m", "xsky.cli", "models", "test-*"],
                         capture_output=True, text=True, check=True, timeout=120)
    assert res.stdout.split() == ["test-tiny"]
