"""Lazy access to optional dependencies, with errors that name the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from .exceptions import MissingDependencyError

_EXTRA = {
    "torch": "torch",
    "odc.stac": "stac",
    "pystac": "stac",
    "distributed": "distributed",
    "matplotlib": "viz",
    "tqdm": "train",
}


def require(module: str, what: str = "this feature") -> ModuleType:
    """Import ``module`` or raise a :class:`MissingDependencyError` naming the xsky extra."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra = _EXTRA.get(module, "all")
        raise MissingDependencyError(
            f"{what} needs the optional dependency {module!r}, which is not installed; "
            f"install it with `pip install 'xsky[{extra}]'`"
        ) from err
