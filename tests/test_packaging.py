"""Packaging: environment.yml agrees with pyproject.toml; `import xsky` stays light."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# conda-forge names that differ from PyPI names
CONDA_TO_PYPI = {"pytorch": "torch", "netcdf4": "netcdf4"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_deps() -> dict[str, str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"])
    for items in meta["optional-dependencies"].values():
        reqs += [r for r in items if not r.startswith("xsky[")]
    out = {}
    for r in reqs:
        out[_name(r)] = re.sub(r"^[A-Za-z0-9_.\-]+(\[[^\]]*\])?", "", r).strip()
    return out


def _conda_deps() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    out = {}
    for dep in env["dependencies"]:
        if not isinstance(dep, str) or dep.startswith(("python", "pip")):
            continue
        name = _name(dep)
        out[CONDA_TO_PYPI.get(name, name)] = dep[len(name):].strip()
    return out


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    py, conda = _pyproject_deps(), _conda_deps()
    assert set(py) == set(conda), (
        f"only in pyproject: {sorted(set(py) - set(conda))}; "
        f"only in environment.yml: {sorted(set(conda) - set(py))}"
    )
    for name, spec in py.items():
        assert conda[name] == spec, f"{name}: pyproject {spec!r} vs environment.yml {conda[name]!r}"


def test_import_xsky_does_not_load_heavy_dependencies():
    code = (
        "import sys, xsky; "
        "heavy = [m for m in ('torch', 'odc.stac', 'distributed', 'matplotlib') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_names_resolve():
    import xsky

    for name in ("embed", "XSkyError", "tutorial", "models", "testing", "plot"):
        assert getattr(xsky, name) is not None
    assert callable(xsky.embed)
