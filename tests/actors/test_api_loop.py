"""The API actor's event loop: uvloop when it is installed, asyncio's otherwise."""

from __future__ import annotations

import asyncio
import builtins
from typing import Any

import pytest

from actors.api import actor


def test_the_api_loop_is_uvloop_when_installed() -> None:
    uvloop = pytest.importorskip("uvloop")
    loop = actor.new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
        assert loop.run_until_complete(asyncio.sleep(0, "ran")) == "ran"
    finally:
        loop.close()


def test_without_uvloop_the_api_loop_is_asyncios(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_uvloop(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "uvloop":
            raise ImportError("no uvloop here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    loop = actor.new_event_loop()
    try:
        assert type(loop).__module__.startswith("asyncio")
        assert loop.run_until_complete(asyncio.sleep(0, "ran")) == "ran"
    finally:
        loop.close()
