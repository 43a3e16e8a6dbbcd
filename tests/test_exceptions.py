"""The exception hierarchy is a tree under XSkyError, and the package uses its leaves."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import xsky
from xsky import exceptions as ex

PKG = Path(__file__).resolve().parents[1] / "xsky"


def test_every_error_is_an_xsky_error_and_a_value_error():
    classes = [c for _, c in inspect.getmembers(ex, inspect.isclass)
               if issubclass(c, Exception) and c.__module__ == ex.__name__]
    assert len(classes) >= 13
    for c in classes:
        assert issubclass(c, ex.XSkyError) and issubclass(c, ValueError), c
        assert getattr(xsky, c.__name__) is c, f"xsky.{c.__name__} is not exported"


@pytest.mark.parametrize(("leaf", "family"), [
    (ex.DimensionError, ex.DataError), (ex.BandMismatchError, ex.DataError),
    (ex.ChunkingError, ex.DataError), (ex.CRSError, ex.DataError), (ex.UnitsError, ex.DataError),
    (ex.AlignmentError, ex.DimensionError), (ex.UnknownModelError, ex.ArgumentError),
    (ex.UnsafeCheckpointError, ex.CheckpointError),
])
def test_leaves_belong_to_their_family(leaf, family):
    assert issubclass(leaf, family)


def test_families_are_disjoint():
    families = [ex.ArgumentError, ex.DataError, ex.ModelError, ex.CheckpointError, ex.TrainingError,
                ex.MissingDependencyError]
    for a in families:
        for b in families:
            assert a is b or not issubclass(a, b)


def test_special_bases_keep_their_python_meaning():
    assert issubclass(ex.UnknownModelError, KeyError)
    assert str(ex.UnknownModelError("unknown model 'x'")) == "unknown model 'x'"
    assert issubclass(ex.MissingDependencyError, ImportError)


def _bare_raises() -> list[str]:
    found = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                f = node.exc.func
                name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", None)
                if name == "XSkyError":
                    found.append(f"{path.relative_to(PKG.parent)}:{node.lineno}")
    return found


def test_no_raise_uses_the_bare_base_class():
    assert _bare_raises() == []
