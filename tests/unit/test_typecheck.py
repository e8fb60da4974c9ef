"""mypy is clean on prisn/ and transport/ (issue 13 item 6), with the configuration in
pyproject.toml (`[tool.mypy]`: strict but for bare generics, untyped decorators and Any
returns; every function typed). Run from here so the README's pytest command checks it in CI.
The whole run takes a few seconds (about 3 s uncached on the 2-core dev machine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def mypy(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(cache), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_mypy_is_clean_on_the_domain_and_the_transport(tmp_path: Path) -> None:
    r = mypy(cache=tmp_path / "cache")  # files = prisn, transport (pyproject.toml)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no issues found" in r.stdout


def test_companion_the_configuration_refuses_an_untyped_function(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f(x):\n    return x\n\n\ny: int = f('s')\n")
    r = mypy(str(bad), cache=tmp_path / "cache")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "no-untyped-def" in r.stdout
