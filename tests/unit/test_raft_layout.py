"""The Raft core's parts stay in step with `prisn.raft.state.CoreState` (the one list of
the core's attributes and methods the type checker reads), and stay small."""

from __future__ import annotations

import ast
import inspect
import pathlib
import random

import pytest

import prisn.raft.core as core_mod
from prisn.raft.boot import BootState
from prisn.raft.core import RaftCore, RaftOptions
from prisn.raft.state import CoreState

RAFT = pathlib.Path(core_mod.__file__).parent
PARTS = [c for c in RaftCore.__mro__ if c not in (CoreState, object)]


def _declared_methods() -> set[str]:
    tree = ast.parse((RAFT / "state.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CoreState")
    block = next(n for n in cls.body if isinstance(n, ast.If))  # if TYPE_CHECKING:
    return {f.name for f in block.body if isinstance(f, ast.FunctionDef)}


def test_every_attribute_is_declared() -> None:
    core = RaftCore("a", "A", RaftOptions(), random.Random(1), BootState(),
                    initial_members={"a": "A", "b": "B"}, join=["B"])
    core.startup()
    missing = set(vars(core)) - set(CoreState.__annotations__)
    assert not missing, f"declare these in prisn/raft/state.py: {sorted(missing)}"


def test_every_method_is_declared_with_its_signature() -> None:
    declared = _declared_methods()
    defined = {name: cls for cls in PARTS for name, v in vars(cls).items()
               if (inspect.isfunction(v) or isinstance(v, property)) and name != "__init__"}
    assert set(defined) == declared, (set(defined) ^ declared)


def test_no_method_is_defined_twice() -> None:
    seen: dict[str, str] = {}
    for cls in PARTS:
        for name, v in vars(cls).items():
            if inspect.isfunction(v) and not name.startswith("__"):
                assert name not in seen, f"{name} in {seen.get(name)} and {cls.__name__}"
                seen[name] = cls.__name__


@pytest.mark.parametrize("path", sorted(RAFT.glob("*.py")), ids=lambda p: p.name)
def test_parts_stay_small(path: pathlib.Path) -> None:
    assert len(path.read_text().splitlines()) <= 600
