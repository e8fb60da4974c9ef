"""The layers hold (issue 13 item 6): the import-linter contract in pyproject.toml
(`[tool.importlinter]`) — the domain in prisn/ imports neither `actors` nor `transport` nor
the composition root (`prisn/cli*.py`, `prisn/server.py`) — checked by running `lint-imports`,
so the README's pytest command checks it in CI.

The contract names the domain's modules one by one (import-linter cannot say "prisn but
these"); a test below keeps that list complete, and a companion shows the check can fail.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSITION_ROOT = {"prisn.server", "prisn.cli", "prisn.cli_ops", "prisn.cli_snapshot",
                    "prisn.cli_secrets", "prisn.cli_jobs"}


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "lint-imports"
    cmd = [str(exe)] if exe.exists() else [
        sys.executable, "-c",
        "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"]
    return subprocess.run([*cmd, "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"})


def contract() -> dict:
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (c,) = doc["tool"]["importlinter"]["contracts"]
    return c


def test_the_domain_imports_no_shell_and_no_transport() -> None:
    r = lint_imports(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 kept, 0 broken" in r.stdout


def test_the_contract_covers_every_domain_module() -> None:
    """Every top-level module or package of prisn/ is either the domain (in the contract's
    source modules) or the composition root; a new module must be put in one of them."""
    tops = {f"prisn.{p.stem}" for p in (ROOT / "prisn").glob("*.py") if p.stem != "__init__"}
    tops |= {f"prisn.{p.name}" for p in (ROOT / "prisn").iterdir()
             if (p / "__init__.py").exists()}
    c = contract()
    assert set(c["source_modules"]) | COMPOSITION_ROOT == tops
    assert not set(c["source_modules"]) & COMPOSITION_ROOT
    assert {"actors", "transport"} | COMPOSITION_ROOT <= set(c["forbidden_modules"])


@pytest.mark.parametrize("culprit,imports", [
    ("prisn/messages.py", "from actors import base"),  # direct
    ("prisn/raft/core.py", "import prisn.config"),  # indirect: config imports transport
    ("prisn/fsm/__init__.py", "def f():\n    import prisn.server"),  # lazy, the root
])
def test_companion_a_violation_is_caught(tmp_path: Path, culprit: str, imports: str) -> None:
    """The same contract on a stub tree with one bad import breaks."""
    text = (ROOT / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(text[text.index("[tool.importlinter]"):])
    for pkg in ("prisn", "actors", "transport"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "actors" / "base.py").write_text("")
    (tmp_path / "transport" / "codec.py").write_text("")
    for mod in [*contract()["source_modules"], *COMPOSITION_ROOT]:
        name = mod.split(".", 1)[1]
        if name in ("fsm", "raft"):
            (tmp_path / "prisn" / name).mkdir()
            (tmp_path / "prisn" / name / "__init__.py").write_text("")
        else:
            (tmp_path / "prisn" / f"{name}.py").write_text("")
    (tmp_path / "prisn" / "server.py").write_text("import actors.base\n")
    (tmp_path / "prisn" / "config.py").write_text(
        "import transport.codec\n" if "config" in imports else "")
    (tmp_path / culprit).write_text(imports + "\n")
    r = lint_imports(tmp_path)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "BROKEN" in r.stdout or "broken" in r.stdout, r.stdout + r.stderr

    (tmp_path / culprit).write_text("")  # and without the bad import it is kept
    (tmp_path / "prisn" / "config.py").write_text("")
    r = lint_imports(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


# --------------------------------------------------------------------------- the tests' own layers
TESTS = ROOT / "tests"
SHARED_HELPERS = {"wait_until", "wait_for", "until", "free_port", "unique_id"}


def _imported_modules(path: Path) -> set[str]:
    import ast

    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_no_test_module_is_imported_as_a_library() -> None:
    """Shared test code lives in helper modules (tests/helpers.py, tests/procs.py, ...):
    nothing imports a `test_*` module or a conftest."""
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        for mod in _imported_modules(path):
            if mod.startswith("tests.") and (mod.rsplit(".", 1)[-1].startswith("test_")
                                             or mod.rsplit(".", 1)[-1] == "conftest"):
                offenders.append(f"{path.relative_to(ROOT)} imports {mod}")
    assert offenders == []


def test_the_shared_waits_are_defined_once() -> None:
    """`wait_until` and the other shared helpers exist only in tests/helpers.py."""
    import ast

    where: dict[str, list[str]] = {}
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and \
                    node.name in SHARED_HELPERS:
                where.setdefault(node.name, []).append(str(path.relative_to(ROOT)))
    assert where == {name: ["tests/helpers.py"] for name in SHARED_HELPERS}
