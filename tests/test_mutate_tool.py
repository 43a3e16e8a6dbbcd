"""The bug-seeding harness (tools/mutate.py): what mutants it generates, on toy sources.

The harness itself runs on demand (``python tools/mutate.py``), never in the test suite.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mutate():
    spec = importlib.util.spec_from_file_location("xsky_tools_mutate", ROOT / "tools/mutate.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    yield mod
    del sys.modules[spec.name]


TOY = '''"""Module docstring: 1 < 2 is not mutated."""
import warnings

__all__ = ["f", "g"]
LIMIT = (1, 2, 3)
TABLE = {"a": 1, "b": 2}


def f(x, n=2):
    """Docstring with 0 and == inside."""
    mask = x > 0
    mask &= x < n
    y = x[1:n] + n * 3
    if not mask.any() and y is None:
        raise ValueError(f"bad {n + 1} < {n}")
    warnings.warn(f"value {n - 1}", stacklevel=2)
    total = min(n, 4) - 1.5
    if n:
        total = total * 2
    return -total if mask.all() else ~mask


def g(a):
    return a == 0  # pragma: no cover
'''


def _texts(mutants):
    return {(m.op, m.after) for m in mutants}


def test_every_operator_is_generated_and_every_mutant_parses(mutate):
    muts = mutate.generate(TOY, "toy.py")
    ops = {m.op for m in muts}
    assert ops == {"int", "float", "bool", "slice", "cmp", "arith", "unary", "boolop", "cond",
                   "minmax", "drop", "elem"} - {"bool"}
    for m in muts:
        ast.parse(m.apply(TOY))
        assert m.apply(TOY) != TOY
    got = _texts(muts)
    # comparisons flip at the boundary; the mask update can be dropped or changed
    assert ("cmp", "mask = (x >= 0)") in got and ("cmp", "mask &= (x <= n)") in got
    assert ("drop", "pass") in got and ("arith", "mask |= x < n") in got
    # off-by-one on constants and slice bounds
    assert ("int", "def f(x, n=3):") in got and ("int", "def f(x, n=(1)):") in got
    assert ("slice", "y = x[1:(n) - 1] + n * 3") in got
    assert ("int", "y = x[2:n] + n * 3") in got
    # arithmetic and boolean operators, dropped `not` / `-` / `~`, min <-> max, any <-> all
    assert ("arith", "y = (x[1:n] - n * 3)") in got and ("arith", "y = x[1:n] + (n / 3)") in got
    assert ("boolop", "if (not mask.any() or y is None):") in got
    assert ("unary", "if (mask.any()) and y is None:") in got
    assert ("cmp", "if not mask.any() and (y is not None):") in got
    assert ("minmax", "total = max(n, 4) - 1.5") in got
    assert ("float", "total = min(n, 4) - 3.0") in got
    assert ("cond", "if not (n):") in got
    assert ("drop", "pass") in got  # total = total * 2 dropped
    assert ("unary", "return (total) if mask.all() else ~mask") in got
    assert ("unary", "return -total if mask.all() else (mask)") in got
    assert ("minmax", "return -total if mask.any() else ~mask") in got
    # a literal's entries dropped one at a time
    assert ("elem", "LIMIT = ((1, 3))") in got and ("elem", "TABLE = {'a': 1}") in got


def test_messages_docstrings_all_and_exempt_lines_are_never_mutated(mutate):
    muts = mutate.generate(TOY, "toy.py")
    lines = TOY.splitlines()
    touched = {lines[m.line - 1].strip() for m in muts}
    assert not any(t.startswith(("raise", "warnings.warn", '"""', "__all__", "import"))
                   for t in touched)
    assert not [m for m in muts if m.scope == "g"]  # the pragma line
    assert all("1 < 2" not in m.before for m in muts)


def test_only_restricts_to_named_top_level_definitions(mutate):
    muts = mutate.generate(TOY, "toy.py", only=("LIMIT",))
    assert {m.scope for m in muts} == {"<module>"} and {m.op for m in muts} == {"elem"}
    assert all(m.line == 5 for m in muts)


def test_mutants_know_their_scope_and_a_line_independent_key(mutate):
    muts = mutate.generate(TOY, "toy.py")
    shifted = mutate.generate("\n\n" + TOY, "toy.py")
    assert [m.key for m in muts] == [m.key for m in shifted]
    assert [m.line + 2 for m in muts] == [m.line for m in shifted]
    m = next(m for m in muts if m.op == "minmax" and "max(n, 4)" in m.after)
    assert m.scope == "f" and m.describe().startswith("toy.py:17 [minmax] f: total = min(n, 4)")


def test_non_ascii_source_keeps_its_offsets(mutate):
    src = 'def f(x):\n    s = "é→·"; return x + 1\n'
    muts = mutate.generate(src, "u.py")
    assert {m.apply(src) for m in muts} >= {'def f(x):\n    s = "é→·"; return (x - 1)\n',
                                            'def f(x):\n    s = "é→·"; return x + 2\n'}


def test_sampling_is_deterministic_and_capped(mutate):
    muts = mutate.generate(TOY, "toy.py")
    a = mutate.sample(muts, 5, "seed:x")
    assert len(a) == 5 and a == mutate.sample(muts, 5, "seed:x")
    assert a != mutate.sample(muts, 5, "seed:y")
    assert mutate.sample(muts, 0, "s") == muts == mutate.sample(muts, 10**6, "s")
    assert [muts.index(m) for m in a] == sorted(muts.index(m) for m in a)


def test_the_equivalent_mutants_file_parses(mutate, tmp_path):
    p = tmp_path / "eq.txt"
    p.write_text("# comment\n\nxsky/a.py | f | x = 1 -> x = 2\n    the value is unused\n"
                 "    after the first read\nxsky/b.py | <module> | A = (1, 2) -> A = ((1))\n"
                 "    never read\n")
    got = mutate.load_equivalent(p)
    assert got == {("xsky/a.py", "f", "x = 1", "x = 2"): "the value is unused after the first read",
                   ("xsky/b.py", "<module>", "A = (1, 2)", "A = ((1))"): "never read"}
    # the repository's own list parses, and every entry names an existing target module
    paths = {t.path for t in mutate.TARGETS.values()}
    assert {k[0] for k in mutate.load_equivalent()} <= paths


def test_every_target_and_its_tests_exist(mutate):
    for name, target in mutate.TARGETS.items():
        assert (ROOT / target.path).is_file(), name
        # the first (most direct) tests at least; the harness skips missing later ones
        assert (ROOT / target.tests[0]).is_file(), name
        tree = ast.parse((ROOT / target.path).read_text())
        names = {mutate._stmt_name(stmt) for stmt in tree.body}
        assert set(target.only) <= names, (name, set(target.only) - names)
