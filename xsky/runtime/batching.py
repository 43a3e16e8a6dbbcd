"""Batch sizes chosen inside tasks from the memory the worker's device has free.

``xsky.embed(..., batch_size=None)`` leaves the batch size to each worker: the first block a
process runs for a given model, device, window shape and precision calls
:func:`auto_batch_size` once, and later blocks reuse the figure (:func:`cached_batch_size`).

- **CUDA**: a probe forward of :data:`PROBE_WINDOWS` windows (after a one-window warm-up that
  takes the one-off allocations, e.g. the cuBLAS workspace) measures the peak memory per
  window; the batch is ``floor(margin * free / per_window)`` with ``margin`` =
  :data:`MARGIN`, clipped to ``[1, cap]`` (:data:`CAP`). ``free`` is what the driver reports
  free plus what this process's caching allocator holds unused
  (:func:`cuda_free_bytes`).
- **CPU** (and other devices): the model's ``default_batch_size``, lowered where a batch's
  estimated memory (:func:`window_bytes_estimate` per window) would exceed
  :data:`RAM_FRACTION` of the available RAM (:func:`available_ram_bytes`).

After a CUDA out-of-memory error the engine halves the batch, retries, and lowers the cached
figure with :func:`remember_smaller`. The memory queries are module functions (and arguments
of :func:`auto_batch_size`), so tests substitute figures for them.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Hashable, Sequence

__all__ = [
    "CAP",
    "MARGIN",
    "PROBE_WINDOWS",
    "RAM_FRACTION",
    "auto_batch_size",
    "available_ram_bytes",
    "batch_key",
    "cached_batch_size",
    "clear_batch_sizes",
    "cuda_free_bytes",
    "remember_smaller",
    "window_bytes_estimate",
]

#: Share of the free GPU memory a batch may take (the rest: fragmentation, other processes).
MARGIN = 0.75
#: Largest automatic batch: beyond it a GPU is busy anyway, and blocks rarely hold more.
CAP = 1024
#: Windows in the CUDA probe forward (peak memory / this = memory per window).
PROBE_WINDOWS = 2
#: Share of the available RAM a CPU batch's estimated memory may take.
RAM_FRACTION = 0.25
#: Working memory of a CPU forward per byte of a window's input and output (a rough,
#: deliberately generous factor: activations of several layers, normalised copies).
ACTIVATION_FACTOR = 16

_SIZES: dict[Hashable, int] = {}
_GUARD = threading.Lock()


def cuda_free_bytes(device: str) -> int:
    """Bytes a batch can use on CUDA ``device``: free on the device (``mem_get_info``) plus
    memory this process's caching allocator has reserved but not allocated."""
    import torch

    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free) + max(0, int(cached))


def available_ram_bytes() -> int | None:
    """Available RAM in bytes (``psutil``), or ``None`` when psutil is not installed."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with distributed
        return None
    return int(psutil.virtual_memory().available)


def window_bytes_estimate(input_elements: int, output_elements: int,
                          itemsize: int = 4) -> int:
    """Estimated memory of one window's forward on the CPU:
    :data:`ACTIVATION_FACTOR` x (input + output values) x ``itemsize`` bytes."""
    return max(1, ACTIVATION_FACTOR * (input_elements + output_elements) * itemsize)


def auto_batch_size(
    device: str,
    default: int,
    *,
    probe: Callable[[int], int] | None = None,
    window_bytes: int | None = None,
    free_bytes: Callable[[str], int] | None = None,
    ram_bytes: Callable[[], int | None] | None = None,
    margin: float = MARGIN,
    cap: int = CAP,
    ram_fraction: float = RAM_FRACTION,
) -> int:
    """The batch size (windows per forward) for ``device``, from its free memory.

    Parameters
    ----------
    device
        A resolved torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).
    default
        The model's ``default_batch_size``: the CPU answer when memory allows.
    probe
        CUDA: ``probe(n)`` runs the model on ``n`` windows and returns the peak memory it
        allocated, in bytes. Called once with 1 window (warm-up, discarded), then with
        :data:`PROBE_WINDOWS`.
    window_bytes
        CPU: estimated memory of one window's forward (:func:`window_bytes_estimate`);
        ``None``: no RAM cap.
    free_bytes
        CUDA free memory query (default :func:`cuda_free_bytes`), called after the probe.
    ram_bytes
        Available RAM query (default :func:`available_ram_bytes`).
    margin, cap
        CUDA: use at most ``margin`` of the free memory, and at most ``cap`` windows.
    ram_fraction
        CPU: a batch's estimated memory stays within this share of the available RAM.

    Returns
    -------
    int
        CUDA: ``floor(margin * free / per_window)`` clipped to ``[1, cap]``, with
        ``per_window = ceil(probe(PROBE_WINDOWS) / PROBE_WINDOWS)``. Otherwise ``default``,
        lowered (not below 1) so that ``batch * window_bytes <= ram_fraction * RAM``.

    Examples
    --------
    >>> auto_batch_size("cuda", 64, probe=lambda n: n * 2**20, free_bytes=lambda d: 2**30)
    768
    >>> auto_batch_size("cpu", 64, window_bytes=2**20, ram_bytes=lambda: 2**27)
    32
    """
    if device.startswith("cuda") and probe is not None:
        probe(1)  # warm-up: one-off allocations (workspaces) are not per-window memory
        peak = probe(PROBE_WINDOWS)
        per_window = max(1, math.ceil(peak / PROBE_WINDOWS))
        free = (free_bytes or cuda_free_bytes)(device)
        return max(1, min(cap, math.floor(margin * free / per_window)))
    batch = max(1, int(default))
    if window_bytes is not None and window_bytes > 0:
        ram = (ram_bytes or available_ram_bytes)()
        if ram is not None:
            batch = max(1, min(batch, math.floor(ram_fraction * ram / window_bytes)))
    return batch


def cached_batch_size(key: Hashable, compute: Callable[[], int]) -> int:
    """The automatic batch size for ``key`` in this process, ``compute()`` the first time.

    ``key`` is ``(model cache key, device, window shapes, precision)`` in the engine. Two
    threads asking at once may both compute; the first result is kept.
    """
    size = _SIZES.get(key)
    if size is not None:
        return size
    size = int(compute())
    with _GUARD:
        return _SIZES.setdefault(key, size)


def remember_smaller(key: Hashable, size: int) -> int:
    """Lower the cached batch size for ``key`` to ``size`` (after an out-of-memory error);
    returns the figure now cached (never raised by this call)."""
    with _GUARD:
        now = min(_SIZES.get(key, size), max(1, int(size)))
        _SIZES[key] = now
        return now


def clear_batch_sizes() -> None:
    """Forget every automatic batch size of this process (the next block measures again)."""
    with _GUARD:
        _SIZES.clear()


def batch_key(model_key: Sequence[str], device: str, shapes: Sequence[Sequence[int]],
              precision: str) -> tuple[Hashable, ...]:
    """The cache key of an automatic batch size: model, device, window shapes, precision."""
    return (tuple(model_key), device, tuple(tuple(int(n) for n in s) for s in shapes), precision)
