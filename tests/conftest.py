"""Fixtures shared by every test layer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    """A fresh ZeroMQ context per test, terminated afterwards (every socket must be closed)."""
    c = zmq.Context()
    try:
        yield c
    finally:
        c.term()
