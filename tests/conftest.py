"""Fixtures shared by every test layer."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest
import zmq

_ids = itertools.count()


def unique_id(prefix: str, tag: str) -> str:
    """A node id no other test in this process uses (inproc names live per context, but a
    readable unique id keeps failures easy to attribute)."""
    return f"{prefix}-{tag}-{os.getpid()}-{next(_ids)}"


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    """A fresh ZeroMQ context per test, terminated afterwards (every socket must be closed)."""
    c = zmq.Context()
    try:
        yield c
    finally:
        c.term()
