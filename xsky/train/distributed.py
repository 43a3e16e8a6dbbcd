"""Data-parallel training on the workers of a Dask cluster.

One pinned task per worker runs :func:`xsky.train.fit` as one ``torch.distributed`` rank
(gloo on CPU, nccl on CUDA). Rank 0's worker picks a free port; the ranks rendezvous there
with a timeout. Gradients are averaged over ranks after each rank's micro-batches, and rank
``r`` reads only the sampler shards ``s % world_size == r``, so ``R`` ranks with
``accumulate=A`` compute exactly what one process computes with ``accumulate=R*A``.

The model and objectives never travel in the task graph: they are written once to the run's
checkpoint folder and every rank loads them from there (a folder all workers can read).
Losing a worker is noticed by watching the scheduler's worker list and by the collectives'
timeout: the run raises :class:`~xsky.exceptions.TrainingError` instead of hanging, and a
new call with ``resume=True`` continues from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from ..exceptions import ArgumentError, TrainingError

__all__ = ["fit_distributed"]


def _free_port() -> int:
    """A free TCP port on this worker's host (run on rank 0's worker)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _host_of(address: str) -> str:
    rest = address.split("://", 1)[-1]
    return rest.rsplit(":", 1)[0].strip("[]")


def _run_rank(rank: int, world_size: int, host: str, port: int, init_path: str, sampler: Any,
              fit_kwargs: dict[str, Any], timeout: float, backend: str) -> Any:
    import torch
    import torch.distributed as dist

    from .loop import _Dist, fit

    dist.init_process_group(backend, init_method=f"tcp://{host}:{port}", rank=rank,
                            world_size=world_size, timeout=timedelta(seconds=timeout))
    try:
        parts = torch.load(init_path, weights_only=False, map_location="cpu")
        model, objectives = parts["model"], parts["objectives"]
        if backend == "nccl":
            local = rank % max(1, torch.cuda.device_count())
            torch.cuda.set_device(local)
            fit_kwargs = {**fit_kwargs, "device": f"cuda:{local}"}
        hist = fit(model, sampler.shard(rank, world_size), objectives,
                   _dist=_Dist(rank, world_size), **fit_kwargs)
        dist.barrier()
        return hist if rank == 0 else None
    finally:
        dist.destroy_process_group()


def fit_distributed(client: Any, model: Any, sampler: Any, objectives: Any, *,
                    checkpoint_dir: str | os.PathLike[str], timeout: float = 300.0,
                    backend: str = "auto", **fit_kwargs: Any) -> Any:
    """:func:`xsky.train.fit` as data-parallel ranks on every worker of ``client``.

    Parameters
    ----------
    client
        A connected ``distributed.Client``; every worker runs one rank (use one thread per
        worker process: ``LocalCluster(n_workers=R, threads_per_worker=1)``).
    model, sampler, objectives
        As for :func:`~xsky.train.fit`. ``sampler.n_shards`` must be a multiple of the
        number of workers.
    checkpoint_dir
        Checkpoints and metrics (written by rank 0), and the initial model the ranks load:
        a folder every worker can read and write.
    timeout
        Seconds for the rendezvous and for any collective: a lost rank makes the others
        fail within it.
    backend
        ``"auto"`` (nccl when the workers have CUDA and ``device`` is not ``"cpu"``, else
        gloo), ``"gloo"`` or ``"nccl"``.
    **fit_kwargs
        Passed to :func:`~xsky.train.fit` (``steps``, ``accumulate``, ``resume``, ...).

    Returns
    -------
    History
        Rank 0's history (losses averaged over the ranks).

    Raises
    ------
    TrainingError
        A worker left or a rank failed; the message names it. The surviving workers are
        restarted (a rank blocked in a collective cannot be stopped otherwise). Resume with
        the same call once the cluster has its workers again.
    """
    import torch

    if "_dist" in fit_kwargs:
        raise ArgumentError("_dist is set by fit_distributed")
    info = client.scheduler_info(n_workers=-1)
    workers = sorted(info["workers"])
    world = len(workers)
    if world < 1:
        raise TrainingError("the Dask client has no workers; start some (e.g. "
                            "LocalCluster(n_workers=2, threads_per_worker=1)) and retry")
    if not callable(getattr(sampler, "shard", None)):
        raise ArgumentError(f"fit_distributed needs an xsky.train.WindowSampler (it shards the "
                            f"stream over ranks), got {type(sampler).__name__}")
    sampler.shard(0, world)  # refuses here, with the fix, a world size that splits no shards
    if backend == "auto":
        gpu = fit_kwargs.get("device", "auto") != "cpu" and all(
            client.run(lambda: __import__("torch").cuda.is_available()).values())
        backend = "nccl" if gpu else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ArgumentError(f"backend must be 'auto', 'gloo' or 'nccl', got {backend!r}")
    ckpt = Path(checkpoint_dir)
    ckpt.mkdir(parents=True, exist_ok=True)
    init_path = ckpt / "initial-model.pt"
    tmp = ckpt / f".tmp-initial-{uuid.uuid4().hex[:8]}.pt"
    torch.save({"model": model, "objectives": objectives}, tmp)
    os.replace(tmp, init_path)  # written once here, read by every rank: no weights in the graph

    # rank 0's worker address is reachable from every worker by construction
    host0 = _host_of(workers[0])
    port = client.submit(_free_port, workers=[workers[0]], allow_other_workers=False,
                         pure=False).result(timeout=timeout)
    token = uuid.uuid4().hex[:8]
    futures = [
        client.submit(_run_rank, rank, world, host0, port, str(init_path), sampler,
                      {**fit_kwargs, "checkpoint_dir": str(ckpt)}, timeout, backend,
                      workers=[w], allow_other_workers=False, pure=False, retries=0,
                      key=f"xsky-train-rank{rank}-{token}")
        for rank, w in enumerate(workers)
    ]
    try:
        return _wait(client, futures, workers, timeout)
    except TrainingError:
        # a surviving rank may be blocked in a collective until `timeout`, and its thread
        # cannot be cancelled: restart those workers (under their nannies) so that no stale
        # rank is left to fail, or take a worker down, during the resumed run
        client.cancel([f for f in futures if not f.done()], force=True)
        alive = set(client.scheduler_info(n_workers=-1)["workers"])
        with contextlib.suppress(Exception):
            client.restart_workers([w for w in workers if w in alive], timeout=timeout,
                                   raise_for_error=False)
        raise
    finally:
        client.cancel([f for f in futures if not f.done()], force=True)


def _wait(client: Any, futures: list[Any], workers: list[str], timeout: float) -> Any:
    """Rank 0's result, or a TrainingError as soon as a rank fails or a worker leaves."""
    while True:
        for rank, f in enumerate(futures):
            if f.status == "error":
                err = f.exception()
                raise TrainingError(
                    f"training rank {rank} (worker {workers[rank]}) failed: "
                    f"{type(err).__name__}: {err}; fix the cause and call again with "
                    "resume=True to continue from the last checkpoint") from err
            if f.status == "cancelled":
                raise TrainingError(f"training rank {rank} (worker {workers[rank]}) was "
                                    "cancelled; call again with resume=True")
        if all(f.status == "finished" for f in futures):
            return futures[0].result()
        present = set(client.scheduler_info(n_workers=-1)["workers"])
        gone = [w for w in workers if w not in present]
        if gone:
            # the surviving ranks are blocked in a collective until `timeout`; do not wait
            raise TrainingError(
                f"worker(s) {gone} left the cluster during training; the other ranks cannot "
                "go on. Restart the workers and call fit_distributed again with resume=True "
                "to continue from the last checkpoint")
        time.sleep(0.2)
