"""deploy/README.md indexes every artefact under deploy/."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def artefacts() -> list[str]:
    """Every file under deploy/ except the index itself."""
    return sorted(
        str(p.relative_to(DEPLOY))
        for p in DEPLOY.rglob("*")
        if p.is_file() and p != DEPLOY / "README.md" and "__pycache__" not in p.parts
    )


def test_every_artefact_is_indexed() -> None:
    index = (DEPLOY / "README.md").read_text()
    found = artefacts()
    assert len(found) >= 12, found
    missing = [a for a in found if f"`{a}`" not in index]
    assert not missing, f"not listed in deploy/README.md: {missing}"


def test_index_lists_no_missing_file() -> None:
    index = (DEPLOY / "README.md").read_text()
    for line in index.splitlines():
        if line.startswith("| `"):
            name = line.split("`")[1]
            assert (DEPLOY / name).is_file(), f"deploy/README.md lists missing {name}"
