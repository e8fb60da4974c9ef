"""Readers of the shipped deploy files (deploy/compose/Dockerfile) shared by the deploy
and TLS tests. Test modules import them from here, never from each other."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "compose" / "Dockerfile"


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """[(INSTRUCTION, arguments)] with continuation lines joined."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1].rstrip() + " "
            continue
        line = buf + line
        buf = ""
        op, _, rest = line.partition(" ")
        out.append((op.upper(), rest.strip()))
    assert not buf, "dangling line continuation"
    return out


def instr(text: str, op: str) -> list[str]:
    return [a for o, a in dockerfile_instructions(text) if o == op]


def healthcheck_argv() -> list[str]:
    (hc,) = instr(DOCKERFILE.read_text(), "HEALTHCHECK")
    m = re.search(r"\bCMD\s+(\[.*\])\s*$", hc)
    assert m, f"HEALTHCHECK must use the exec form: {hc}"
    return json.loads(m.group(1))
