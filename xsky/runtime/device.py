"""Device choice and per-device locks used inside tasks."""

from __future__ import annotations

import re
import threading
from typing import Any

from ..exceptions import XSkyError, format_choices

__all__ = ["PRECISIONS", "check_device", "device_lock", "resolve_device"]

PRECISIONS = ("float32", "bfloat16")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def check_device(device: Any) -> str:
    """Normalise a ``device`` argument to a string, without touching the hardware."""
    if device is None:
        return "auto"
    if hasattr(device, "type") and hasattr(device, "index"):  # torch.device
        device = str(device)
    if not isinstance(device, str) or not _DEVICE_RE.match(device.strip().lower()):
        raise XSkyError(
            f"device={device!r} is not understood; use one of "
            f"{format_choices(['auto', 'cpu', 'cuda', 'cuda:0', 'mps'])}"
        )
    return device.strip().lower()


def resolve_device(device: str) -> str:
    """Turn ``"auto"`` into ``"cuda"`` when a GPU is present (else ``"cpu"``); check availability."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise XSkyError(
                f"device={device!r} was requested but no CUDA GPU is available in this process; "
                "use device='auto' or 'cpu'"
            )
        idx = int(device.split(":")[1]) if ":" in device else 0
        if idx >= torch.cuda.device_count():
            raise XSkyError(
                f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    if device == "mps" and not torch.backends.mps.is_available():
        raise XSkyError("device='mps' was requested but MPS is not available; use 'cpu'")
    return device


def device_lock(device: str) -> threading.Lock | None:
    """A per-process lock for accelerators, so threads take turns on one GPU."""
    if device == "cpu":
        return None
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(device, threading.Lock())
