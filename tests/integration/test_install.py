"""The install step of deploy/systemd/README.md works from a checkout (issue 16, item 6).

There is no `prisn` package on PyPI, so the README builds a wheel from the checkout and
installs it into a virtualenv. This test runs the README's own `pip wheel` and `pip install`
lines (read from the file) on a copy of the tracked files, into a fresh virtualenv, and runs
the installed `prisn` from outside the checkout. The virtualenv sees the system's
site-packages so that the dependencies need no download; the wheel must bring everything
else (every package, the `prisn` entry point).
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "deploy" / "systemd" / "README.md"

pytestmark = pytest.mark.timeout(600)


def readme_command(pattern: str) -> list[str]:
    """The README line matching `pattern` (a regex), as argv, without comment or sudo."""
    for line in README.read_text().splitlines():
        if re.search(pattern, line):
            argv = shlex.split(line, comments=True)
            return argv[1:] if argv and argv[0] == "sudo" else argv
    raise AssertionError(f"no line matching {pattern!r} in {README}")


def test_readme_never_installs_prisn_from_pypi() -> None:
    text = README.read_text()
    assert not re.search(r"pip install prisn\b(?![-\w./])", text), "no prisn on PyPI"


def test_readme_install_step_builds_and_installs_a_working_wheel(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    src = tmp_path / "checkout"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    build = readme_command(r"^python3 -m pip wheel ")
    build[0] = sys.executable
    p = subprocess.run(build, cwd=src, env=env, capture_output=True, text=True, timeout=500)
    if p.returncode != 0 and "No matching distribution found for setuptools" in p.stdout + \
            p.stderr:
        pytest.skip("no package index reachable for the build requirements")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    wheels = glob.glob(str(src / "dist" / "prisn-*-py3-none-any.whl"))
    assert len(wheels) == 1, wheels

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, timeout=120)
    install = readme_command(r"/opt/prisn/bin/pip install ")
    assert install[0] == "/opt/prisn/bin/pip", install
    argv = [str(venv / "bin" / "pip"), *install[1:]]
    argv = [a for arg in argv for a in (sorted(glob.glob(str(src / arg)))
                                        if "*" in arg else [arg])]
    p = subprocess.run(argv, cwd=src, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]

    elsewhere = tmp_path / "elsewhere"  # not the checkout: only the wheel can answer
    elsewhere.mkdir()
    prisn = str(venv / "bin" / "prisn")
    out = subprocess.run([prisn, "--version"], cwd=elsewhere, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "prisn" in out.stdout, out
    # the server's and the CLI's modules all came with the wheel
    code = ("import prisn.server, prisn.cli_snapshot, actors.api.snapshot, transport.codec, "
            "prisn; print(prisn.__file__)")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(venv)), out.stdout
