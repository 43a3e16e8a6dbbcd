"""The notebooks run, offline, from a clean kernel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _run(path: Path, tmp_path: Path, extra: str | None = None):
    """Execute the notebook (with ``extra`` appended as a last code cell, to read back
    what the reader's variables hold)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    if extra is not None:
        nb.cells.append(nbformat.v4.new_code_cell(extra))
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    return nb


def _cell(nb, fragment: str):
    """The executed code cell whose source contains ``fragment``."""
    cells = [c for c in nb.cells if c.cell_type == "code" and fragment in c.source]
    assert len(cells) == 1, f"{len(cells)} cells contain {fragment!r}"
    return cells[0]


def _text(cell) -> str:
    parts = []
    for out in cell.outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif "text/plain" in out.get("data", {}):
            parts.append(out["data"]["text/plain"])
    return "\n".join(parts)


@pytest.mark.timeout(600)
def test_quickstart_notebook_runs(tmp_path):
    probe = ("print('PROBE', clear, repr(float(np.nansum(day.values.astype('float64')))), "
             "repr(float(day.valid_fraction.values.mean())))")
    nb = _run(NOTEBOOKS / "01_quickstart.ipynb", tmp_path, extra=probe)
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
                if o.output_type == "error"]
    # the day the reader looks at holds the embedding xsky computes for that date here
    import xsky

    _, clear, total, frac = _text(_cell(nb, "print('PROBE'")).split()
    cube = xsky.tutorial.open_dataset("romania")
    assert int(clear) == int(cube.valid.mean(["y", "x"]).argmax())
    want = xsky.embed(cube.isel(time=[int(clear)]), "test-tiny").isel(time=0).compute()
    assert float(total) == pytest.approx(float(np.nansum(want.values.astype("float64"))),
                                         rel=1e-5)
    assert float(frac) == pytest.approx(float(want.valid_fraction.values.mean()), rel=1e-6)
    assert "(time: 99, y: 25, x: 25, feature: 16)" in _text(_cell(nb, 'emb = cube.sky.embed('))
    assert "'prototype': 6, 'feature': 16" in _text(_cell(nb, "emb.sky.prototypes(k=6"))
    assert "EPSG:3035 (40.0, -40.0)" in _text(_cell(nb, "print(emb.rio.crs"))
    # what the reader is told: the model's contract ...
    spec = _text(_cell(nb, 'get_model_spec("test-tiny")'))
    assert "'test-tiny'" in spec and "(('B02', 'B03', 'B04', 'B08'), 16, 4, 16)" in spec
    # ... that the chunking does not change the result (the printed max difference) ...
    diff = float(_text(_cell(nb, "float(np.nanmax(np.abs(other - day)))")).strip())
    assert 0.0 <= diff <= 1e-5
    # ... and the figures are drawn
    plot = _cell(nb, "xsky.plot.pca_rgb(day)")
    assert any("image/png" in o.get("data", {}) for o in plot.outputs)


@pytest.mark.timeout(600)
def test_pretraining_notebook_trains_probes_and_draws(tmp_path, monkeypatch):
    monkeypatch.setenv("XSKY_NB_STEPS", "2")  # the loop runs; the reader's run is longer
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = _run(NOTEBOOKS / "03_pretraining.ipynb", tmp_path)
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
                if o.output_type == "error"]
    shapes = _text(_cell(nb, "next(iter(sampler))"))
    assert "'s2': (8, 4, 6, 8, 8)" in shapes and "'latlon': (8, 2)" in shapes
    trained = _text(_cell(nb, "history = fit("))
    assert "steps 2," in trained
    first, last = (float(v.split()[0].rstrip(",")) for v in trained.split("loss ")[1:3])
    assert np.isfinite(first) and np.isfinite(last)
    probe = _text(_cell(nb, "nearest_centroid(raw"))
    scores = {ln.split("balanced accuracy ")[1][:18].strip(): float(ln.split()[-1])
              for ln in probe.splitlines() if ln.startswith("balanced accuracy")}
    assert set(scores) == {"default (shipped)", "just trained", "raw bands"}
    assert all(0.0 <= s <= 1.0 for s in scores.values())
    assert (tmp_path / "runs" / "notebook" / "metrics.jsonl").exists()
    plot = _cell(nb, "rgb = xsky.plot.pca_rgb(emb)")
    assert any("image/png" in o.get("data", {}) for o in plot.outputs)


@pytest.mark.timeout(600)
def test_change_and_similarity_notebook_maps_counts_searches_and_exports(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = _run(NOTEBOOKS / "04_change_and_similarity.ipynb", tmp_path)
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
                if o.output_type == "error"]
    # the composites and the months behind each side of the change
    months = _text(_cell(nb, 'xsky.composite(years, "MS", drop_empty=True)'))
    assert "45 acquisitions -> 20 monthly composites" in months
    counts = _text(_cell(nb, 'out = xsky.change(emb, "2018-04/2018-10"'))
    ref = counts.split("ref: months behind each pixel ")[1].splitlines()[0]
    assert sum(int(v.split(": ")[1]) for v in ref.strip("{}").split(", ")) == 625
    # the threshold, and the cloudy February with pixels without a score
    drawn = _cell(nb, 'mask = xsky.threshold(out, "otsu")')
    text = _text(drawn)
    changed, valid = (int(v) for v in text.split(": ")[1].split(" pixels")[0].split(" of "))
    assert 0 < changed < valid == 625
    missing = int(text.split("February: ")[1].split()[0])
    assert 0 < missing < 625
    assert any("image/png" in o.get("data", {}) for o in drawn.outputs)
    # the query pixels are valid, the top-k is drawn and exported with its CRS
    assert "(5, " in _text(_cell(nb, "xsky.sample(emb, points)")) and "all valid: True" in \
        _text(_cell(nb, "xsky.sample(emb, points)"))
    search = _cell(nb, "top = xsky.similar(season, query")
    assert any("image/png" in o.get("data", {}) for o in search.outputs)
    exported = _text(_cell(nb, "to_geoparquet(top"))
    assert "similar_top20.parquet 20 rows, CRS 3035" in exported
