"""Device resolution, per-device locks and the model's busy time, inside tasks (arguments
are checked earlier, by :func:`xsky._coerce.device`)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from ..exceptions import ArgumentError

__all__ = ["busy_seconds", "device_lock", "model_busy", "resolve_device"]

_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()
_BUSY: dict[str, float] = {}
_BUSY_GUARD = threading.Lock()


def resolve_device(device: str) -> str:
    """Turn ``"auto"`` into ``"cuda"`` when a GPU is present (else ``"cpu"``); check availability."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ArgumentError(
                f"device={device!r} was requested but no CUDA GPU is available in this process; "
                "use device='auto' or 'cpu'"
            )
        idx = int(device.split(":")[1]) if ":" in device else 0
        if idx >= torch.cuda.device_count():
            raise ArgumentError(
                f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    if device == "mps" and not torch.backends.mps.is_available():
        raise ArgumentError("device='mps' was requested but MPS is not available; use 'cpu'")
    return device


def device_lock(device: str) -> threading.Lock | None:
    """A per-process lock per device, so that threads take turns running the model.

    On a GPU, one model call at a time. On the CPU too while torch runs each call on
    several threads (``torch.get_num_threads() > 1``): two dask threads each running a
    multi-threaded forward oversubscribe the cores (measured 1.7x slower than one at a
    time on 2 cores); taking turns still overlaps one block's reading and window cutting
    with another's model call. With one torch thread, CPU calls run side by side."""
    if device == "cpu":
        import torch

        if torch.get_num_threads() <= 1:
            return None
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(device, threading.Lock())


@contextlib.contextmanager
def model_busy(device: str) -> Iterator[None]:
    """Count the time spent in the ``with`` body as model time on ``device``.

    The engine wraps each model call in it (on CUDA the call is followed by a
    synchronisation inside the body, so the queued GPU work is counted where it runs).
    Time is counted when the body ends, also when it raises."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        spent = time.perf_counter() - t0
        with _BUSY_GUARD:
            _BUSY[device] = _BUSY.get(device, 0.0) + spent


def busy_seconds(device: str | None = None) -> float:
    """Seconds this process has spent in model calls on ``device`` (all devices: ``None``).

    A running total: the model's duty cycle over a run is the difference of two readings
    divided by the wall time between them. Devices are named as resolved in tasks
    (``"cpu"``, ``"cuda"``, ``"cuda:1"``); on a ``distributed`` cluster each worker process
    keeps its own total (read it with ``client.run(busy_seconds)``). Model calls on a GPU
    take turns (:func:`device_lock`), so there the duty cycle is at most 1; CPU calls that
    run side by side (one torch thread each) are each counted, so a CPU figure above 1 is
    the mean number of model calls running at once.

    Examples
    --------
    >>> from xsky.runtime.device import busy_seconds, model_busy
    >>> before = busy_seconds("cpu")
    >>> with model_busy("cpu"):
    ...     pass
    >>> busy_seconds("cpu") >= before
    True
    """
    with _BUSY_GUARD:
        if device is None:
            return float(sum(_BUSY.values()))
        return float(_BUSY.get(device, 0.0))
