"""Lazy access to optional dependencies, with errors that name the extra to install."""

from __future__ import annotations

import importlib
import importlib.util
from functools import cache
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


@cache
def have(module: str) -> bool:
    """Whether ``module`` can be imported, found without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


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
