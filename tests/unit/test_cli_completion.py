"""Shell completion as the README documents it (issue 16, item 6): `_PRISN_COMPLETE=
bash_source prisn` prints a bash script for `prisn`, and the completion it runs offers the
commands, including `snapshot` and its subcommands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(env: dict[str, str]) -> str:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("PRISN_", "_PRISN"))}
    p = subprocess.run([sys.executable, "-m", "prisn.cli"], env={**e, **env},
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_readme_documents_completion_for_bash_zsh_fish() -> None:
    readme = (ROOT / "README.md").read_text()
    for shell in ("bash", "zsh", "fish"):
        assert f"_PRISN_COMPLETE={shell}_source prisn" in readme, shell


def test_bash_source_and_completions() -> None:
    script = run({"_PRISN_COMPLETE": "bash_source"})
    assert "complete -o nosort -F _prisn_completion prisn" in script
    words = run({"_PRISN_COMPLETE": "bash_complete", "COMP_WORDS": "prisn sn",
                 "COMP_CWORD": "1"})
    assert "plain,snapshot" in words.split()
    words = run({"_PRISN_COMPLETE": "bash_complete", "COMP_WORDS": "prisn snapshot ",
                 "COMP_CWORD": "2"})
    assert {"plain,save", "plain,status", "plain,restore"} <= set(words.split())
    words = run({"_PRISN_COMPLETE": "bash_complete", "COMP_WORDS": "prisn cluster remove --",
                 "COMP_CWORD": "3"})
    assert {"plain,--yes", "plain,--wait"} <= set(words.split())
