"""xsky.train.fit: losses, the teacher's EMA, schedules, metrics, and exact resume after a
SIGKILL (in a subprocess), and refusal of a checkpoint of another configuration."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import torch
import xarray as xr

from xsky.exceptions import ArgumentError, CheckpointError
from xsky.models import create_model
from xsky.train.checkpoint import latest_checkpoint, load_checkpoint
from xsky.train.loop import _lr_factor, fit, micro_batch_seed
from xsky.train.objectives import GeoPrototypeLoss, MultiGranularityContrastive
from xsky.train.sampler import WindowSampler

ROOT = Path(__file__).resolve().parents[2]
BANDS = ("B02", "B03", "B04", "B08")


def cube(n: int = 24, nt: int = 4, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    data = rng.uniform(0.02, 0.5, (len(BANDS), nt, n, n)).astype(np.float32)
    time_ = pd.Timestamp("2021-02-01") + pd.to_timedelta(np.arange(nt) * 40, "D")
    return xr.Dataset(
        {b: (("time", "y", "x"), data[i], {"units": "reflectance"}) for i, b in enumerate(BANDS)},
        coords={"time": time_, "y": 5_000_005.0 - 10 * np.arange(n),
                "x": 400_005.0 + 10 * np.arange(n)},
    ).rio.write_crs("EPSG:32634").chunk({"time": 2})


def setup(seed: int = 0):
    torch.manual_seed(seed)
    model = create_model("skysense-tiny", modalities=("s2",), s2_bands=BANDS, window=8)
    sampler = WindowSampler(cube(), 8, 4, model=model, n_shards=2, prefetch=1)
    d = model.spec.feature_dim
    objs = [MultiGranularityContrastive(d, out_dim=32, hidden_dim=32, bottleneck_dim=16,
                                        n_objects=2),
            (GeoPrototypeLoss(d, n_prototypes=4), 0.5)]
    return model, sampler, objs


def test_fit_records_every_step_and_writes_the_metrics_log(tmp_path):
    model, sampler, objs = setup()
    h = fit(model, sampler, objs, steps=3, checkpoint_dir=tmp_path, progress=False,
            warmup_steps=1)
    assert [r["step"] for r in h.records] == [1, 2, 3]
    for r in h.records:
        assert math.isfinite(r["loss"])
        # the total is the weighted sum of the objectives
        assert r["loss"] == pytest.approx(r["mgc/loss"] + 0.5 * r["proto/loss"], rel=1e-5)
        assert 0.0 <= r["wait_fraction"] <= 1.0
    logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged == h.records
    # warm-up 1 step, then cosine from the peak: 5e-4 at steps 1 and 2, lower at step 3
    assert h["lr"][:2] == pytest.approx([5e-4, 5e-4])
    assert h["lr"][2] < h["lr"][1]
    assert latest_checkpoint(tmp_path).name == "step-00000003"
    assert h.to_dataframe().index.tolist() == [1, 2, 3]


def test_teacher_is_the_ema_of_the_student(tmp_path):
    model, sampler, objs = setup()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, sampler, objs, steps=1, checkpoint_dir=tmp_path, progress=False,
        teacher_momentum=lambda step, total: 0.25)
    tensors, _ = load_checkpoint(latest_checkpoint(tmp_path))
    moved = 0
    for name, p in model.named_parameters():
        expect = 0.25 * start[name] + 0.75 * p.detach()
        torch.testing.assert_close(tensors[f"teacher.{name}"], expect, rtol=0, atol=1e-6)
        moved += not torch.equal(p.detach(), start[name])
    assert moved > 10  # the step changed the student, so the check is not trivial


def test_lr_schedule_warms_up_linearly_then_decays_by_cosine():
    assert _lr_factor(0, 100, 10, 0.01) == pytest.approx(0.1)
    assert _lr_factor(9, 100, 10, 0.01) == pytest.approx(1.0)
    assert _lr_factor(10, 100, 10, 0.01) == pytest.approx(1.0)
    assert _lr_factor(55, 100, 10, 0.01) == pytest.approx(0.01 + 0.99 * 0.5)
    assert _lr_factor(100, 100, 10, 0.01) == pytest.approx(0.01)


def test_micro_batch_seeds_are_distinct_and_stable():
    seeds = {micro_batch_seed(0, i) for i in range(1000)}
    assert len(seeds) == 1000
    assert micro_batch_seed(3, 7) == micro_batch_seed(3, 7) != micro_batch_seed(4, 7)


def test_a_checkpoint_of_another_configuration_is_refused_naming_the_field(tmp_path):
    model, sampler, objs = setup()
    fit(model, sampler, objs, steps=2, checkpoint_dir=tmp_path, progress=False,
        checkpoint_every=1)
    model, sampler, objs = setup()
    with pytest.raises(CheckpointError, match=r"'lr' differs \(saved 0.0005, now 0.001\)"):
        fit(model, sampler, objs, steps=2, checkpoint_dir=tmp_path, progress=False, lr=1e-3)
    model, sampler, _ = setup()
    other = [MultiGranularityContrastive(model.spec.feature_dim, out_dim=64, hidden_dim=32,
                                         bottleneck_dim=16, n_objects=2)]
    with pytest.raises(CheckpointError, match=r"objectives"):
        fit(model, sampler, other, steps=2, checkpoint_dir=tmp_path, progress=False)


def test_a_finished_run_resumed_does_nothing_more(tmp_path):
    model, sampler, objs = setup()
    h1 = fit(model, sampler, objs, steps=2, checkpoint_dir=tmp_path, progress=False)
    model, sampler, objs = setup()
    h2 = fit(model, sampler, objs, steps=2, checkpoint_dir=tmp_path, progress=False)
    assert h2.resumed_from == 2 and h2.records == h1.records


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"steps": 0}, "steps must be a positive integer"),
    ({"steps": 1, "accumulate": 0}, "accumulate must be a positive integer"),
    ({"steps": 1, "n_views": 1}, "n_views must be at least 2"),
    ({"steps": 1, "precision": "half"}, "precision must be one of"),
    ({"steps": 1, "precision": "float16", "device": "cpu"}, "needs a CUDA device"),
    ({"steps": 1, "optimizer": "lion"}, "optimizer must be"),
])
def test_bad_fit_arguments_are_refused(kwargs, match):
    model, sampler, objs = setup()
    with pytest.raises(ArgumentError, match=match):
        fit(model, sampler, objs, progress=False, **kwargs)


def test_objectives_must_be_objectives():
    model, sampler, _ = setup()
    with pytest.raises(ArgumentError, match=r"objectives must be xsky\.train objectives"):
        fit(model, sampler, [torch.nn.Linear(2, 2)], steps=1, progress=False)
    with pytest.raises(ArgumentError, match="at least one objective"):
        fit(model, sampler, [], steps=1, progress=False)


_CHILD = textwrap.dedent("""
    import sys, time
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from train.test_loop import setup
    import xsky.train.loop as loop
    slow = float(sys.argv[3])
    if slow:  # give the parent time to kill the run between checkpoints
        seed = loop.micro_batch_seed
        loop.micro_batch_seed = lambda s, i: (time.sleep(slow), seed(s, i))[1]
    model, sampler, objs = setup()
    loop.fit(model, sampler, objs, steps=int(sys.argv[2]), checkpoint_dir=sys.argv[1],
             checkpoint_every=2, progress=False, warmup_steps=2)
""")


def _child(tmp: Path, ckpt: Path, steps: int, slow: float) -> subprocess.Popen:
    script = tmp / "child.py"
    script.write_text(_CHILD.format(tests=str(ROOT / "tests")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(script), str(ckpt), str(steps), str(slow)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _losses(ckpt: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (ckpt / "metrics.jsonl").read_text().splitlines()]


def test_a_run_killed_with_sigkill_and_resumed_repeats_the_uninterrupted_losses(tmp_path):
    steps = 6
    full = _child(tmp_path, tmp_path / "full", steps, 0.0)
    killed_dir = tmp_path / "killed"
    victim = _child(tmp_path, killed_dir, steps, 0.4)
    deadline = time.monotonic() + 240
    while latest_checkpoint(killed_dir) is None or latest_checkpoint(killed_dir).name < "step-00000002":
        assert victim.poll() is None, victim.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the run wrote no checkpoint"
        time.sleep(0.05)
    time.sleep(0.6)  # into step 3 (checkpoints at 2, 4, 6)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(60) == -signal.SIGKILL
    seen = len(_losses(killed_dir))
    assert seen < steps  # it really was cut short
    resumed = _child(tmp_path, killed_dir, steps, 0.0)
    assert resumed.wait(240) == 0, resumed.stderr.read().decode()[-2000:]
    assert full.wait(240) == 0, full.stderr.read().decode()[-2000:]
    a, b = _losses(tmp_path / "full"), _losses(killed_dir)
    assert len(a) == len(b) == steps
    assert a == b  # bit-identical: every draw is seeded from (seed, micro-batch index)
    ta, _ = load_checkpoint(latest_checkpoint(tmp_path / "full"))
    tb, _ = load_checkpoint(latest_checkpoint(killed_dir))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def test_a_fresh_run_refuses_a_folder_with_another_runs_checkpoints(tmp_path):
    model, sampler, objs = setup()
    fit(model, sampler, objs, steps=1, checkpoint_dir=tmp_path, progress=False)
    model, sampler, objs = setup()
    with pytest.raises(CheckpointError, match="resume=False needs an empty folder"):
        fit(model, sampler, objs, steps=1, checkpoint_dir=tmp_path, progress=False,
            resume=False)
    assert latest_checkpoint(tmp_path).name == "step-00000001"
