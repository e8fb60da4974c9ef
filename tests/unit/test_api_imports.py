"""The modules of `actors.api` import each other without a cycle, and each imports alone.

The graph counts every import of an `actors.api` module wherever it is written: at the top,
inside a function (a lazy import), or under ``if TYPE_CHECKING:``. A cycle hidden behind a
lazy import is still a cycle: it is what made app.py, fastpath.py, fastread.py and tokens.py
import private names from each other (issue 13 item 3)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "actors.api"
API = ROOT / "actors" / "api"


def modules() -> list[str]:
    return sorted(p.stem for p in API.glob("*.py") if p.stem != "__init__")


def imported(path: Path, known: set[str]) -> set[str]:
    """The `actors.api` submodules that the module at `path` imports, anywhere in it."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from actors.api import ops` names a module; `from actors.api.x import y` too
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom):  # relative: resolve against the package
            base = PACKAGE if node.level == 1 else PACKAGE.rsplit(".", node.level - 1)[0]
            mod = f"{base}.{node.module}" if node.module else base
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith(PACKAGE + "."):
                sub = name[len(PACKAGE) + 1:].split(".")[0]
                if sub in known:
                    out.add(sub)
    return out


def graph() -> dict[str, set[str]]:
    known = set(modules())
    return {m: imported(API / f"{m}.py", known) - {m} for m in known}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected part with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_scan_finds_a_cycle_when_there_is_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_scan_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                   "    from actors.api.app import ApiContext\n"
                   "def f():\n    from actors.api import ops\n    import actors.api.node\n")
    assert imported(src, {"app", "ops", "node", "errors"}) == {"app", "ops", "node"}


def test_actors_api_has_no_import_cycle() -> None:
    edges = graph()
    assert "app" in edges and edges["app"], edges  # the scan sees something
    assert cycles(edges) == [], {m: sorted(e) for m, e in edges.items() if e}


@pytest.mark.parametrize("module", modules())
def test_each_module_imports_alone_in_a_fresh_interpreter(module: str) -> None:
    """Importing any one module first (as a tool or a test may) works: no module depends on
    another having been imported before it."""
    proc = subprocess.run([sys.executable, "-c", f"import {PACKAGE}.{module}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
