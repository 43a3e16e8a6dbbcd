"""Seed small bugs into xsky's core modules and check that the tests catch them.

Run on demand (not in CI)::

    python tools/mutate.py                          # every target, at most 30 mutants each
    python tools/mutate.py --module plan --module kernel --max-per-module 0   # all mutants
    python tools/mutate.py --module scaling --list  # show the mutants, run nothing
    python tools/mutate.py --list-survivors         # also print each surviving mutant

The working tree is never modified: the repository (without ``.venv``, ``.git`` and caches)
is copied to a temporary folder, each mutant is written into that copy, the target's test
subset runs there (``pytest -x``, a per-mutant timeout) with ``PYTHONPATH`` set so the copy's
``xsky`` is the one imported (checked in every run), and the original file is written back
before the next mutant.

Mutation operators (``ast``-based, one change per mutant): ``int`` (a constant +-1),
``float`` (a constant changed), ``bool`` (True <-> False), ``slice`` (a slice bound +-1),
``cmp`` (``<`` <-> ``<=``, ``>`` <-> ``>=``, ``==`` <-> ``!=``, ``in`` <-> ``not in``,
``is`` <-> ``is not``), ``arith`` (``+`` <-> ``-``, ``*`` <-> ``/``, ``//`` -> ``/``,
``&`` <-> ``|``, ...; also augmented assignments), ``unary`` (``-x``, ``~x``, ``not x`` ->
``x``), ``boolop`` (``and`` <-> ``or``), ``cond`` (an ``if`` test negated), ``minmax``
(``min`` <-> ``max``, ``any`` <-> ``all``), ``drop`` (an augmented assignment such as a mask
``&=``, a self-update ``x = f(x)`` or a bare call dropped) and ``elem`` (one entry of a literal
dict, tuple, list or set of constants dropped). Error messages (``raise``, warnings,
f-strings), docstrings, annotations and ``__all__`` are not mutated.

Mutants are sampled deterministically (``--seed``) up to ``--max-per-module`` per target.
Mutants listed in ``tools/mutate_equivalent.txt`` (equivalent to the original: no test can
tell them apart) are reported separately, with the reason recorded there.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT_FILE = Path(__file__).with_name("mutate_equivalent.txt")


@dataclass(frozen=True)
class Target:
    """A module to mutate and the tests that guard it (fastest and most direct first).

    ``only``: restrict mutants to these top-level functions/classes/assigned names (and
    what they contain); empty means the whole module.
    """

    path: str
    tests: tuple[str, ...]
    only: tuple[str, ...] = ()


TARGETS: dict[str, Target] = {
    "plan": Target("xsky/engine/plan.py", (
        "tests/engine/test_plan.py",
        "tests/engine/test_kernel.py",
        "tests/engine/test_valid_fraction.py",
        "tests/api/test_embedding.py",
        "tests/api/test_orientation.py",
    )),
    "kernel": Target("xsky/engine/kernel.py", (
        "tests/engine/test_kernel.py",
        "tests/engine/test_valid_fraction.py",
        "tests/engine/test_band_mask.py",
        "tests/models/test_golden.py",
        "tests/api/test_embedding.py",
        "tests/api/test_units.py",
        "tests/api/test_embedding_errors.py",
        "tests/api/test_skysense_embedding.py",
        "tests/engine/test_runtime.py",
        "tests/models/test_contract.py",
        "tests/engine/test_normalise.py",
        "tests/engine/test_auto_batch.py",
    )),
    "modalities": Target("xsky/modalities.py", (
        "tests/test_modalities.py",
        "tests/engine/test_kernel.py",
        "tests/io/test_scaling.py",
        "tests/api/test_units.py",
        "tests/api/test_stacking.py",
        "tests/api/test_embedding_errors.py",
        "tests/io/test_stac.py",
        "tests/api/test_static_layers.py",
    )),
    "cache": Target("xsky/runtime/cache.py", (
        "tests/runtime/test_cache.py",
        "tests/runtime/test_cache_keys.py",
        "tests/engine/test_location.py",
        "tests/engine/test_runtime.py",
        "tests/models/test_registry.py",
    )),
    "masks": Target("xsky/io/masks.py", (
        "tests/io/test_masks.py",
        "tests/io/test_stac_errors.py",
        "tests/io/test_stac.py",
    )),
    "valid_fraction": Target("xsky/engine/graph.py", (
        "tests/engine/test_valid_fraction.py",
        "tests/engine/test_kernel.py",
        "tests/api/test_embedding.py",
        "tests/engine/test_plan.py",
    ), only=("_cell_fraction", "build_valid_fraction", "chunk_with_halo")),
    "sh": Target("xsky/models/_sh.py", (
        "tests/models/test_satclip_sh.py",
        "tests/models/test_satclip_location_encoder.py",
    )),
    "sinkhorn": Target("xsky/engine/prototypes.py", (
        "tests/engine/test_sinkhorn.py",
        "tests/engine/test_prototypes.py",
        "tests/api/test_geo_prototypes.py",
    ), only=("_logsumexp", "sinkhorn_knopp", "_EXP_RANGE", "_sinkhorn_exp", "_sinkhorn_log")),
    "scaling": Target("xsky/io/scaling.py", (
        "tests/io/test_scaling.py",
        "tests/io/test_stac.py",
        "tests/io/test_stac_errors.py",
        "tests/api/test_units.py",
    )),
}

# --------------------------------------------------------------------------------------
# mutant generation
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutant:
    """One seeded bug: replace ``source[start:end]`` (character offsets) by ``text``."""

    path: str
    line: int
    op: str
    scope: str  # enclosing top-level name and function, e.g. "AxisPlan.edge_pads"
    start: int
    end: int
    text: str
    before: str  # the changed source line(s), whitespace collapsed
    after: str

    @property
    def key(self) -> tuple[str, str, str, str]:
        """Identity used by the equivalent-mutants file (stable when lines move)."""
        return (self.path, self.scope, self.before, self.after)

    def apply(self, source: str) -> str:
        return source[: self.start] + self.text + source[self.end :]

    def describe(self) -> str:
        return f"{self.path}:{self.line} [{self.op}] {self.scope}: {self.before} -> {self.after}"


_CMP_SWAP: dict[type, type] = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In,
    ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}
_ARITH_SWAP: dict[type, type] = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div, ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult,
    ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd, ast.BitXor: ast.BitOr,
    ast.LShift: ast.RShift, ast.RShift: ast.LShift,
}
_NAME_SWAP = {"min": "max", "max": "min", "any": "all", "all": "any",
              "minimum": "maximum", "maximum": "minimum", "amin": "amax", "amax": "amin"}
# defensive code that cannot run (coverage-excluded) or a line explicitly exempted
_PRAGMA = re.compile(r"#.*pragma: no (cover|mutate)")
_MESSAGE_CALLS = {"warn", "debug", "info", "warning", "error", "exception", "critical", "print"}


def _collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


class _Source:
    """Offsets in a source text from ``ast`` positions (which count UTF-8 bytes)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = text.splitlines(keepends=True)
        self.starts = [0]
        for ln in self.lines:
            self.starts.append(self.starts[-1] + len(ln))

    def offset(self, lineno: int, col_bytes: int) -> int:
        line = self.lines[lineno - 1]
        return self.starts[lineno - 1] + len(line.encode()[:col_bytes].decode())

    def span(self, node: ast.AST) -> tuple[int, int]:
        return (self.offset(node.lineno, node.col_offset),  # type: ignore[attr-defined]
                self.offset(node.end_lineno, node.end_col_offset))  # type: ignore[attr-defined]

    def line_block(self, first: int, last: int) -> tuple[int, int]:
        return self.starts[first - 1], self.starts[last]


def _is_docstring(stmt: ast.stmt) -> bool:
    return (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
            and isinstance(stmt.value.value, str))


def _call_name(call: ast.Call) -> str | None:
    f = call.func
    if isinstance(f, ast.Name):
        return f.id
    if isinstance(f, ast.Attribute):
        return f.attr
    return None


def _names_in(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _target_names(targets: Sequence[ast.expr]) -> set[str]:
    out: set[str] = set()
    for t in targets:
        if isinstance(t, ast.Name):
            out.add(t.id)
        elif isinstance(t, ast.Tuple | ast.List):
            out |= _target_names(t.elts)
    return out


def _paren(node: ast.AST) -> str:
    return f"({ast.unparse(node)})"


class _Generator:
    """Walks a module and yields ``(node, op, replacement text)`` for every mutation."""

    def __init__(self, source: str, path: str, only: Sequence[str] = ()) -> None:
        self.src = _Source(source)
        self.path = path
        self.only = set(only)
        self.tree = ast.parse(source)
        self.out: list[Mutant] = []

    # ---- bookkeeping
    def _emit(self, node: ast.AST, op: str, text: str, scope: str) -> None:
        start, end = self.src.span(node)
        first, last = node.lineno, node.end_lineno  # type: ignore[attr-defined]
        b0, b1 = self.src.line_block(first, last)
        block = self.src.text[b0:b1]
        mutated = block[: start - b0] + text + block[end - b0 :]
        before, after = _collapse(block), _collapse(mutated)
        if before == after or _PRAGMA.search(self.src.lines[first - 1]):
            return
        self.out.append(Mutant(self.path, first, op, scope, start, end, text, before, after))

    def run(self) -> list[Mutant]:
        for stmt in self.tree.body:
            name = _stmt_name(stmt)
            if self.only and name not in self.only:
                continue
            if _skip_stmt(stmt):
                continue
            self._stmt(stmt, "<module>")
        return self.out

    # ---- statements
    def _body(self, body: Sequence[ast.stmt], scope: str) -> None:
        for i, stmt in enumerate(body):
            if i == 0 and _is_docstring(stmt):
                continue
            self._stmt(stmt, scope)

    def _stmt(self, stmt: ast.stmt, scope: str) -> None:
        if _skip_stmt(stmt):
            return
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            inner = stmt.name if scope == "<module>" else f"{scope}.{stmt.name}"
            for d in stmt.args.defaults + [d for d in stmt.args.kw_defaults if d is not None]:
                self._expr(d, inner)
            self._body(stmt.body, inner)
            return
        if isinstance(stmt, ast.ClassDef):
            inner = stmt.name if scope == "<module>" else f"{scope}.{stmt.name}"
            self._body(stmt.body, inner)
            return
        if isinstance(stmt, ast.Raise | ast.Import | ast.ImportFrom | ast.Pass | ast.Global
                      | ast.Nonlocal):
            return
        if isinstance(stmt, ast.Assign):
            if _target_names(stmt.targets) & {"__all__"}:
                return
            if _target_names(stmt.targets) & _names_in(stmt.value):
                self._emit(stmt, "drop", "pass", scope)  # x = f(x): the update dropped
            for t in stmt.targets:
                self._store_target(t, scope)
            self._expr(stmt.value, scope)
            return
        if isinstance(stmt, ast.AnnAssign):
            if stmt.value is not None:
                self._store_target(stmt.target, scope)
                self._expr(stmt.value, scope)
            return
        if isinstance(stmt, ast.AugAssign):
            self._emit(stmt, "drop", "pass", scope)
            swap = _ARITH_SWAP.get(type(stmt.op))
            if swap is not None:
                new = copy.copy(stmt)
                new.op = swap()
                self._emit(stmt, "arith", ast.unparse(new), scope)
            self._store_target(stmt.target, scope)
            self._expr(stmt.value, scope)
            return
        if isinstance(stmt, ast.Expr):
            if isinstance(stmt.value, ast.Call):
                if _call_name(stmt.value) in _MESSAGE_CALLS:
                    return
                self._emit(stmt, "drop", "pass", scope)
            self._expr(stmt.value, scope)
            return
        if isinstance(stmt, ast.If | ast.While):
            self._cond(stmt.test, scope)
            self._expr(stmt.test, scope)
            self._body(stmt.body, scope)
            self._body(stmt.orelse, scope)
            return
        if isinstance(stmt, ast.For | ast.AsyncFor):
            self._expr(stmt.iter, scope)
            self._body(stmt.body, scope)
            self._body(stmt.orelse, scope)
            return
        if isinstance(stmt, ast.With | ast.AsyncWith):
            for item in stmt.items:
                self._expr(item.context_expr, scope)
            self._body(stmt.body, scope)
            return
        if isinstance(stmt, ast.Try):
            self._body(stmt.body, scope)
            for h in stmt.handlers:
                self._body(h.body, scope)
            self._body(stmt.orelse, scope)
            self._body(stmt.finalbody, scope)
            return
        if isinstance(stmt, ast.Return):
            if stmt.value is not None:
                self._expr(stmt.value, scope)
            return
        if isinstance(stmt, ast.Assert):
            self._expr(stmt.test, scope)
            return
        for child in ast.iter_child_nodes(stmt):  # anything else: its expressions
            if isinstance(child, ast.expr):
                self._expr(child, scope)

    def _store_target(self, target: ast.expr, scope: str) -> None:
        # subscripts in assignment targets (out[mask] = ...) hold expressions worth mutating
        if isinstance(target, ast.Subscript):
            self._expr(target.slice, scope)
        elif isinstance(target, ast.Tuple | ast.List):
            for t in target.elts:
                self._store_target(t, scope)

    def _cond(self, test: ast.expr, scope: str) -> None:
        if not isinstance(test, ast.Compare | ast.BoolOp | ast.UnaryOp):
            self._emit(test, "cond", f"not {_paren(test)}", scope)

    # ---- expressions
    def _expr(self, node: ast.AST, scope: str) -> None:
        if isinstance(node, ast.JoinedStr | ast.Lambda):
            return
        if isinstance(node, ast.Call) and _call_name(node) in _MESSAGE_CALLS:
            return
        if isinstance(node, ast.Constant):
            self._constant(node, scope)
            return
        if isinstance(node, ast.BinOp):
            swap = _ARITH_SWAP.get(type(node.op))
            if swap is not None:
                new = copy.copy(node)
                new.op = swap()
                self._emit(node, "arith", _paren(new), scope)
        elif isinstance(node, ast.Compare):
            for i, cmp_op in enumerate(node.ops):
                swap = _CMP_SWAP.get(type(cmp_op))
                if swap is not None:
                    new = copy.copy(node)
                    new.ops = [*node.ops[:i], swap(), *node.ops[i + 1:]]
                    self._emit(node, "cmp", _paren(new), scope)
        elif isinstance(node, ast.BoolOp):
            new = copy.copy(node)
            new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            self._emit(node, "boolop", _paren(new), scope)
        elif isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.USub | ast.Invert | ast.Not):
                self._emit(node, "unary", _paren(node.operand), scope)
        elif isinstance(node, ast.IfExp):
            self._cond(node.test, scope)
        elif isinstance(node, ast.Call):
            self._swap_name(node.func, scope)
        elif isinstance(node, ast.Subscript):
            self._slice(node.slice, scope)
        elif isinstance(node, ast.Dict):
            if len(node.keys) >= 2 and all(k is not None for k in node.keys):
                for i in range(len(node.keys)):
                    new = copy.copy(node)
                    new.keys = node.keys[:i] + node.keys[i + 1:]
                    new.values = node.values[:i] + node.values[i + 1:]
                    self._emit(node, "elem", ast.unparse(new), scope)
        elif (isinstance(node, ast.Tuple | ast.List | ast.Set) and len(node.elts) >= 2
              and all(isinstance(e, ast.Constant) for e in node.elts)):
            for i in range(len(node.elts)):
                new = copy.copy(node)
                new.elts = node.elts[:i] + node.elts[i + 1:]
                self._emit(node, "elem", _paren(new), scope)
            return  # the constants themselves are data: the drop is the mutation
        if isinstance(node, ast.Dict):
            for v in node.values:
                self._expr(v, scope)
            return
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr | ast.keyword | ast.comprehension):
                self._expr(child, scope)

    def _constant(self, node: ast.Constant, scope: str) -> None:
        v = node.value
        if isinstance(v, bool):
            self._emit(node, "bool", repr(not v), scope)
        elif isinstance(v, int):
            self._emit(node, "int", repr(v + 1), scope)
            self._emit(node, "int", _paren(ast.Constant(v - 1)), scope)
        elif isinstance(v, float):
            self._emit(node, "float", repr(1.0 if v == 0 else v * 2), scope)

    def _swap_name(self, func: ast.expr, scope: str) -> None:
        if isinstance(func, ast.Name) and func.id in _NAME_SWAP:
            self._emit(func, "minmax", _NAME_SWAP[func.id], scope)
        elif isinstance(func, ast.Attribute) and func.attr in _NAME_SWAP:
            new = copy.copy(func)
            new.attr = _NAME_SWAP[func.attr]
            self._emit(func, "minmax", ast.unparse(new), scope)

    def _slice(self, sl: ast.expr, scope: str) -> None:
        parts = sl.elts if isinstance(sl, ast.Tuple) else [sl]
        for part in parts:
            if not isinstance(part, ast.Slice):
                continue
            if part.lower is not None and not isinstance(part.lower, ast.Constant):
                self._emit(part.lower, "slice", f"{_paren(part.lower)} + 1", scope)
            if part.upper is not None and not isinstance(part.upper, ast.Constant):
                self._emit(part.upper, "slice", f"{_paren(part.upper)} - 1", scope)


def _stmt_name(stmt: ast.stmt) -> str | None:
    if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return stmt.name
    if isinstance(stmt, ast.Assign):
        names = _target_names(stmt.targets)
        return next(iter(names)) if len(names) == 1 else None
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
        return stmt.target.id
    return None


def _skip_stmt(stmt: ast.stmt) -> bool:
    # `if TYPE_CHECKING:` blocks only hold imports for annotations
    return (isinstance(stmt, ast.If) and isinstance(stmt.test, ast.Name)
            and stmt.test.id == "TYPE_CHECKING")


def generate(source: str, path: str = "<string>", only: Sequence[str] = ()) -> list[Mutant]:
    """Every mutant of ``source`` (deterministic order: by position, then operator)."""
    muts = _Generator(source, path, only).run()
    muts.sort(key=lambda m: (m.start, m.end, m.op, m.text))
    out = []
    for m in muts:  # every mutant must still be valid Python
        try:
            ast.parse(m.apply(source))
        except SyntaxError:
            continue
        out.append(m)
    return out


def sample(mutants: Sequence[Mutant], cap: int, seed: str) -> list[Mutant]:
    """At most ``cap`` mutants (all when ``cap <= 0``), the same ones for the same seed."""
    if cap <= 0 or len(mutants) <= cap:
        return list(mutants)
    picked = random.Random(seed).sample(range(len(mutants)), cap)
    return [mutants[i] for i in sorted(picked)]


def load_equivalent(path: Path = EQUIVALENT_FILE) -> dict[tuple[str, str, str, str], str]:
    """``key -> reason`` from the equivalent-mutants file.

    Format, one mutant per entry (blank lines and ``#`` comments ignored)::

        path | scope | before -> after
            why it is equivalent (one or more indented lines)

    ``after`` may be ``*``: every mutant of that statement (e.g. a value only read by
    unreachable defensive code).
    """
    out: dict[tuple[str, str, str, str], str] = {}
    if not path.exists():
        return out
    key: tuple[str, str, str, str] | None = None
    for raw in path.read_text().splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[0].isspace():
            if key is not None:
                out[key] = (out[key] + " " + raw.strip()).strip()
            continue
        file, scope, change = (p.strip() for p in raw.split(" | ", 2))
        before, after = change.split(" -> ", 1)
        key = (file, scope, before.strip(), after.strip())
        out[key] = ""
    return out


# --------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------

_IGNORE = shutil.ignore_patterns(
    ".venv", ".git", "__pycache__", "*.egg-info", ".hypothesis", ".coverage*", ".pytest_cache",
    ".ruff_cache", ".mypy_cache", "out", "*.zarr", "htmlcov", ".ipynb_checkpoints",
)

# The runner lives in the copy for the whole run: it imports the heavy third-party libraries
# once (never xsky), then forks one child per mutant; the child imports the copy's (mutated)
# xsky afresh, checks it really is the copy's (exit 99 otherwise) and runs pytest.
_RUNNER = r"""
import json, os, pathlib, signal, sys, time
for mod in ("numpy", "pandas", "xarray", "dask.array", "torch", "numba", "scipy", "pytest",
            "hypothesis", "pyproj", "rasterio", "rioxarray", "odc.geo", "flox", "pystac"):
    try:
        __import__(mod)
    except Exception:
        pass
assert "xsky" not in sys.modules, "a pre-imported library imported xsky"
root = pathlib.Path(os.environ["XSKY_MUTATE_ROOT"]).resolve()
for line in sys.stdin:
    job = json.loads(line)
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # never read the job pipe
        rc = 4
        try:
            import xsky
            if root not in pathlib.Path(xsky.__file__).resolve().parents:
                print("xsky imported from", xsky.__file__, "not from the copy", root)
                rc = 99
            else:
                import pytest
                rc = int(pytest.main(job["args"]))
        except BaseException as exc:  # a mutant that breaks the import is caught too
            print("runner:", type(exc).__name__, exc)
            rc = 3
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
    status = None
    while status is None:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(st)
        elif time.monotonic() - t0 > job["timeout"]:
            os.killpg(pid, signal.SIGKILL)  # the whole group: tests may start workers
            os.waitpid(pid, 0)
            status = "timeout"
        else:
            time.sleep(0.05)
    try:  # anything the group left behind
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    print(json.dumps({"rc": status, "seconds": time.monotonic() - t0}), flush=True)
"""


@dataclass
class Result:
    mutant: Mutant
    status: str  # killed, survived, timeout, error
    seconds: float
    detail: str = ""


@dataclass
class Workspace:
    """A copy of the repository where mutants are written, one at a time, and its runner."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None

    @classmethod
    def create(cls, parent: Path, name: str, without: Sequence[str] = (),
               tests_rev: str | None = None) -> Workspace:
        root = parent / name
        shutil.copytree(ROOT, root, ignore=_IGNORE)
        if tests_rev is not None:  # the tests of an earlier commit against today's code
            import io
            import tarfile

            shutil.rmtree(root / "tests")
            blob = subprocess.run(["git", "-C", str(ROOT), "archive", tests_rev, "tests"],
                                  check=True, capture_output=True).stdout
            with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
                tar.extractall(root, filter="data")
        for rel in without:  # e.g. a test file, to measure the suite without it
            p = root / rel
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
            else:
                raise SystemExit(f"--without {rel}: no such file in the repository")
        env = dict(os.environ)
        env.update({
            "PYTHONPATH": str(root),
            "PYTHONDONTWRITEBYTECODE": "1",  # a same-size mutant must never reuse a stale .pyc
            "XSKY_MUTATE_ROOT": str(root),
            "NUMBA_CACHE_DIR": str(parent / f"{name}-numba"),
            "OMP_NUM_THREADS": "1",
            "MPLBACKEND": "Agg",
        })
        shared = os.environ.get("XSKY_SHARED") or str((ROOT / ".." / "shared").resolve())
        env["XSKY_SHARED"] = shared
        for var in ("COV_CORE_SOURCE", "COVERAGE_PROCESS_START", "COVERAGE_PROCESS_CONFIG"):
            env.pop(var, None)  # never measure coverage of a mutant run
        space = cls(root, env)
        space.proc = subprocess.Popen([sys.executable, "-c", _RUNNER], cwd=root, env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        return space

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=30)

    def run_tests(self, tests: Sequence[str], timeout: float) -> tuple[str, float, str]:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        log = self.root.parent / f"{self.root.name}.log"
        args = ["-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests]
        self.proc.stdin.write(json.dumps({"args": args, "timeout": timeout, "log": str(log)})
                              + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            raise SystemExit("the mutation runner died")
        res = json.loads(reply)
        rc, dt = res["rc"], res["seconds"]
        out = log.read_text(errors="replace") if log.exists() else ""
        if rc == "timeout":
            return "timeout", dt, ""
        if rc == 99:
            raise SystemExit(f"the mutant run did not import the copy's xsky:\n{out[-2000:]}")
        if rc == 0:
            return "survived", dt, ""
        if rc in (1, 2, 3):  # failed, interrupted (collection error), internal/import error
            line = next((ln for ln in reversed(out.splitlines())
                         if ln.startswith(("FAILED", "ERROR", "runner:"))), "")
            return "killed", dt, line[:200]
        return "error", dt, out[-1500:]


def _existing(tests: Sequence[str], root: Path) -> list[str]:
    return [t for t in tests if (root / t.split("::")[0]).exists()]


def run_target(name: str, target: Target, mutants: Sequence[Mutant], spaces: Sequence[Workspace],
               timeout_factor: float, min_timeout: float, verbose: bool) -> list[Result]:
    tests = _existing(target.tests, spaces[0].root)
    if not tests:
        print(f"{name}: none of its tests exist ({', '.join(target.tests)}); skipped")
        return []
    status, base, detail = spaces[0].run_tests(tests, timeout=1800)
    if status != "survived":
        print(f"{name}: the unmutated tests do not pass in the copy ({status}); skipped\n"
              f"{detail}")
        return []
    timeout = max(min_timeout, timeout_factor * base)
    print(f"{name}: {len(mutants)} mutants of {target.path}, tests {' '.join(tests)} "
          f"({base:.0f} s unmutated, timeout {timeout:.0f} s)", flush=True)
    original = (ROOT / target.path).read_text()

    def one(space: Workspace, m: Mutant) -> Result:
        file = space.root / target.path
        file.write_text(m.apply(original))
        try:
            status, dt, detail = space.run_tests(tests, timeout)
        finally:
            file.write_text(original)
        if verbose:
            print(f"  {status:8s} {dt:5.1f}s {m.describe()}", flush=True)
        return Result(m, status, dt, detail)

    results: list[Result] = []
    if len(spaces) == 1:
        results = [one(spaces[0], m) for m in mutants]
    else:
        queues = [list(mutants[i::len(spaces)]) for i in range(len(spaces))]
        with ThreadPoolExecutor(len(spaces)) as pool:
            futures = [pool.submit(lambda s, q: [one(s, m) for m in q], s, q)
                       for s, q in zip(spaces, queues, strict=True)]
            for f in futures:
                results.extend(f.result())
        results.sort(key=lambda r: (r.mutant.start, r.mutant.op, r.mutant.text))
    return results


def _reason(m: Mutant, equivalent: dict[tuple[str, str, str, str], str]) -> str | None:
    """Why ``m`` is listed as equivalent, or ``None``."""
    reason = equivalent.get(m.key)
    if reason is None:
        reason = equivalent.get((m.path, m.scope, m.before, "*"))
    return reason


def _report(name: str, results: Sequence[Result], equivalent: dict, list_survivors: bool
            ) -> tuple[int, int, int]:
    killed = [r for r in results if r.status in ("killed", "timeout")]
    survived = [r for r in results if r.status == "survived"]
    errors = [r for r in results if r.status == "error"]
    equiv = [r for r in survived if _reason(r.mutant, equivalent) is not None]
    real = [r for r in survived if _reason(r.mutant, equivalent) is None]
    stale = [r for r in killed if _reason(r.mutant, equivalent) is not None]
    n = len(results) - len(errors)
    rate = 100.0 * len(killed) / n if n else 100.0
    adj = 100.0 * len(killed) / (n - len(equiv)) if n - len(equiv) else 100.0
    print(f"{name}: killed {len(killed)}/{n} ({rate:.1f} %); equivalent {len(equiv)}; "
          f"killed of the non-equivalent {adj:.1f} %; survivors {len(real)}"
          + (f"; errors {len(errors)}" if errors else ""), flush=True)
    if list_survivors:
        for r in real:
            print(f"  SURVIVED   {r.mutant.describe()}")
        for r in equiv:
            print(f"  EQUIVALENT {r.mutant.describe()}\n"
                  f"             {_reason(r.mutant, equivalent)}")
    for r in stale:
        print(f"  note: listed as equivalent but killed: {r.mutant.describe()}")
    for r in errors:
        print(f"  ERROR      {r.mutant.describe()}\n{r.detail}")
    return len(killed), n, len(equiv)


def iter_targets(names: Sequence[str] | None) -> Iterator[tuple[str, Target]]:
    for name in names or TARGETS:
        if name not in TARGETS:
            raise SystemExit(f"unknown module {name!r}; choose from {', '.join(TARGETS)}")
        yield name, TARGETS[name]


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwind: the temporary copies are removed


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--module", action="append", metavar="NAME",
                    help=f"target(s) to mutate (repeatable; default all): {', '.join(TARGETS)}")
    ap.add_argument("--max-per-module", type=int, default=30,
                    help="mutants sampled per target (0: all; default 30)")
    ap.add_argument("--seed", default="xsky", help="sampling seed (default 'xsky')")
    ap.add_argument("--list-survivors", action="store_true", help="print each surviving mutant")
    ap.add_argument("--list", action="store_true", help="print the sampled mutants, run nothing")
    ap.add_argument("--jobs", type=int, default=1, help="mutants run in parallel (one copy each)")
    ap.add_argument("--timeout-factor", type=float, default=3.0,
                    help="per-mutant timeout as a multiple of the unmutated run (default 3)")
    ap.add_argument("--min-timeout", type=float, default=60.0, help="seconds (default 60)")
    ap.add_argument("--without", action="append", default=[], metavar="PATH",
                    help="leave this file out of the copy (repeatable), e.g. a test file")
    ap.add_argument("--tests-from", metavar="REV",
                    help="use the tests/ folder of this git commit (read with git archive), "
                         "e.g. to measure the suite before new tests were added")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each mutant's outcome")
    args = ap.parse_args(argv)

    plan = []
    equivalent = load_equivalent()
    for name, target in iter_targets(args.module):
        source = (ROOT / target.path).read_text()
        every = generate(source, target.path, target.only)
        muts = sample(every, args.max_per_module, f"{args.seed}:{name}")
        plan.append((name, target, muts))
        for key in equivalent:  # entries that no longer match the code
            if key[0] == target.path and not any(
                    _reason(m, {key: ""}) is not None for m in every):
                print(f"note: {EQUIVALENT_FILE.name} entry matches no mutant of {name}: "
                      f"{key[1]}: {key[2]} -> {key[3]}")
    if args.list:
        for name, _, muts in plan:
            print(f"{name}: {len(muts)} mutants")
            for m in muts:
                print(f"  {m.describe()}")
        return 0

    totals = [0, 0, 0]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xsky-mutate-") as tmp:
        spaces = [Workspace.create(Path(tmp), f"repo{i}", args.without, args.tests_from)
                  for i in range(max(1, args.jobs))]
        summary = []
        try:
            for name, target, muts in plan:
                results = run_target(name, target, muts, spaces, args.timeout_factor,
                                     args.min_timeout, args.verbose)
                if results:
                    k, n, e = _report(name, results, equivalent, args.list_survivors)
                    summary.append((name, k, n, e))
                    totals = [totals[0] + k, totals[1] + n, totals[2] + e]
        finally:
            for space in spaces:
                space.close()
    print(f"\nkill rate per module ({time.perf_counter() - t0:.0f} s):")
    for name, k, n, e in summary:
        adj = 100.0 * k / (n - e) if n - e else 100.0
        print(f"  {name:15s} {k:4d}/{n:<4d} killed {100.0 * k / n if n else 100.0:5.1f} %   "
              f"equivalent {e:3d}   of non-equivalent {adj:5.1f} %")
    k, n, e = totals
    if n:
        print(f"  {'total':15s} {k:4d}/{n:<4d} killed {100.0 * k / n:5.1f} %   "
              f"equivalent {e:3d}   of non-equivalent {100.0 * k / max(1, n - e):5.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
