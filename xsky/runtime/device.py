"""Device resolution and per-device locks, inside tasks (arguments are checked earlier, by
:func:`xsky._coerce.device`)."""

from __future__ import annotations

import threading

from ..exceptions import ArgumentError

__all__ = ["device_lock", "resolve_device"]

_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


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
