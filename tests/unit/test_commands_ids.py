"""`format_ts` and `new_id` (prisn.fsm.commands): the fast forms equal the stdlib ones."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

import pytest

from prisn.fsm.commands import CommandFactory, format_ts, new_id

SEED = 20261126


def _reference(seconds: float) -> str:
    dt = datetime.fromtimestamp(seconds, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def test_format_ts_matches_datetime_on_random_times() -> None:
    rng = random.Random(SEED)
    for i in range(200_000):
        s = rng.uniform(-2e9, 2.5e11) if i % 2 else 1.7e9 + rng.random() * 1e8
        assert format_ts(s) == _reference(s), f"seed {SEED}, seconds {s!r}"


@pytest.mark.parametrize("seconds", [
    0, 0.0, 0.0005, 0.0015, 1.9999995, 1.9994999, 1.0000005, -4e-07, -1.5, -0.9999995,
    253402300799.999, 1795685580.2839994, 1795685579.6849995,
])
def test_format_ts_matches_datetime_at_edges(seconds: float) -> None:
    assert format_ts(seconds) == _reference(seconds)


def test_format_ts_out_of_range_raises_like_datetime() -> None:
    with pytest.raises((ValueError, OverflowError, OSError)):
        _reference(1e12)
    with pytest.raises((ValueError, OverflowError, OSError)):
        format_ts(1e12)


def test_new_id_is_a_version_4_uuid_hex() -> None:
    seen = set()
    for _ in range(10_000):
        x = new_id()
        assert len(x) == 32 and x == x.lower()
        u = uuid.UUID(hex=x)
        assert u.version == 4 and u.variant == uuid.RFC_4122 and u.hex == x
        seen.add(x)
    assert len(seen) == 10_000


def test_command_factory_uses_fresh_ids() -> None:
    cf = CommandFactory()
    cmd = cf.create({"name": "a", "source": "print(1)"})
    assert cmd["id"] != cmd["key"]
    assert uuid.UUID(hex=cmd["id"]).version == 4
    assert uuid.UUID(hex=cmd["key"]).version == 4


def test_new_id_is_unique_across_threads() -> None:
    """Eight threads drawing from the shared pool never get the same bytes. A switch interval
    of 1 us makes threads interleave inside `new_id`: an unlocked copy of it gave ~20
    duplicates in 40,000 ids this way."""
    import sys
    import threading

    out: list[list[str]] = [[] for _ in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)

    def draw(k: int) -> None:
        out[k].extend(new_id() for _ in range(5_000))

    threads = [threading.Thread(target=draw, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    every = [x for part in out for x in part]
    assert len(set(every)) == len(every) == 40_000
