"""Field checks on the apply path, rewritten for speed, against their old definitions:
`ts_millis` (was strptime + timegm) and the `_id` / `_node` checks (were a per-character
loop) accept and refuse exactly the same inputs, over seeded random and edge values."""

from __future__ import annotations

import calendar
import random
import sys
from datetime import datetime

import pytest

from prisn.fsm import executions
from prisn.fsm.tokens import _TS_RE, TokenCommandError, ts_millis


def old_ts_millis(ts: str) -> int | None:
    if not _TS_RE.fullmatch(ts):
        return None
    try:
        dt = datetime.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None
    return calendar.timegm(dt.timetuple()) * 1000 + int(ts[20:23])


def new_ts_millis(ts: str) -> int | None:
    try:
        return ts_millis(ts)
    except TokenCommandError:
        return None


def test_ts_millis_matches_strptime() -> None:
    rng = random.Random(7)
    edges = ["1970-01-01T00:00:00.000Z", "0001-01-01T00:00:00.000Z",
             "0000-01-01T00:00:00.000Z", "2024-02-29T23:59:59.999Z",
             "2026-02-29T00:00:00.000Z", "2026-12-31T24:00:00.000Z",
             "2026-01-01T00:60:00.000Z", "2026-01-01T00:00:60.000Z", "9999-12-31T23:59:59.999Z",
             "2026-06-01T12:00:00.000", "2026-06-01 12:00:00.000Z", "x"]
    years = [0, 1, 1969, 1970, 2000, 2024, 2026, 2100, 9999]
    randoms = [f"{rng.choice(years + [rng.randint(0, 9999)]):04d}-{rng.randint(0, 13):02d}-"
               f"{rng.randint(0, 32):02d}T{rng.randint(0, 25):02d}:{rng.randint(0, 61):02d}:"
               f"{rng.randint(0, 62):02d}.{rng.randint(0, 999):03d}Z" for _ in range(20_000)]
    valid = 0
    for ts in edges + randoms:
        want = old_ts_millis(ts)
        assert new_ts_millis(ts) == want, ts
        valid += want is not None
    assert valid > 5_000  # both outcomes were exercised


def old_bad(v: str, chars: str) -> bool:
    return any(c.isspace() or c in chars for c in v)


@pytest.mark.parametrize("check,chars", [(executions._id, "/"), (executions._node, "/@")])
def test_id_checks_match_the_character_loop(check, chars) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(3)
    specials = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()] + ["/", "@"]
    for _ in range(5_000):
        v = "".join(rng.choice(["a", "Z", "9", "-", ".", "é", *specials])
                    for _ in range(rng.randint(1, 12)))
        try:
            check(v)
            refused = False
        except executions.ExecutionCommandError:
            refused = True
        assert refused == old_bad(v, chars), repr(v)
