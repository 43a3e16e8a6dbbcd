"""Inside-task runtime: the one per-process cache, device choice, worker plugin.

:func:`preload` (and :class:`ModelPreloader`) live in :mod:`xsky.runtime.plugin` and are
imported on first use, so ``import xsky.runtime`` does not import ``distributed``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .cache import clear_cache, get_location_encoder, get_model, put_model

if TYPE_CHECKING:
    from .plugin import ModelPreloader, preload

__all__ = ["ModelPreloader", "clear_cache", "get_location_encoder", "get_model", "preload",
           "put_model"]

_LAZY = {"ModelPreloader", "preload"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import plugin

        value = getattr(plugin, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'xsky.runtime' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
