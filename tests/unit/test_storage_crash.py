"""Crash test: SIGKILL a real writer process at a random moment, then check what is on disk.

A child process appends synced batches in a loop. Before each write it prints ``W <json>``
(the requests), after it ``A <seq>`` (acknowledged). The parent kills it at a seeded random
moment, reopens the store and replays the printed lines on an in-memory model: the disk must
hold exactly the acknowledged state, or that state plus the one write that was in flight
(a batch is atomic). Every round continues on the same directory, so recovery is exercised too.

SIGKILL leaves the page cache intact: this checks atomicity and acknowledgement order across a
process crash, not power loss (that is what `sync = True` is for; see test_storage.py).
Set PRISN_CRASH_SEED to replay a run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from prisn.messages import StoreAppend
from prisn.raft.boot import BootState
from prisn.storage import LogStorage

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 10

CHILD = r"""
import json, random, sys
from prisn.messages import StoreAppend
from prisn.storage import LogStorage

def payload(index, term):
    return (b"%d/%d/" % (index, term)).ljust(300, b".")

path, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
store = LogStorage(path)
boot = store.load()
term, seq = max(boot.term, 1), 0
first, last = store.first_index(), store.last_index()
print("R %d" % last, flush=True)
while True:
    reqs = []
    for _ in range(rng.randint(1, 4)):
        seq += 1
        r = rng.random()
        trunc, n = 0, rng.randint(1, 8)
        if r < 0.15 and last >= first:
            term += 1
            trunc = rng.randint(max(first, last - 5), last)
            last = trunc - 1
        elif r < 0.25:
            term, n = term + rng.randint(0, 1), 0
        reqs.append({"seq": seq, "term": term, "vote": "n%d" % (term % 3), "commit": last // 2,
                     "trunc": trunc, "first": last + 1, "n": n})
        last += n
    print("W " + json.dumps(reqs), flush=True)
    store.write([StoreAppend(seq=q["seq"], term=q["term"], vote=q["vote"], commit=q["commit"],
                             truncate_from=q["trunc"],
                             entries=[[i, q["term"], 0, payload(i, q["term"])]
                                      for i in range(q["first"], q["first"] + q["n"])])
                 for q in reqs])
    print("A %d" % seq, flush=True)
"""


def payload(index: int, term: int) -> bytes:
    return (b"%d/%d/" % (index, term)).ljust(300, b".")


def to_request(q: dict[str, Any]) -> StoreAppend:
    return StoreAppend(seq=q["seq"], term=q["term"], vote=q["vote"], commit=q["commit"],
                       truncate_from=q["trunc"],
                       entries=[[i, q["term"], 0, payload(i, q["term"])]
                                for i in range(q["first"], q["first"] + q["n"])])


def apply(state: BootState, requests: list[StoreAppend]) -> BootState:
    """The model: `state` after `requests` (no compaction in this test)."""
    log = {e[0]: e for e in state.entries}
    term, vote, commit = state.term, state.vote, state.commit
    for r in requests:
        if r.truncate_from:
            log = {i: e for i, e in log.items() if i < r.truncate_from}
        for e in r.entries:
            log[e[0]] = list(e)
        term, vote, commit = r.term, r.vote, r.commit
    return BootState(term=term, vote=vote, commit=commit, entries=[log[i] for i in sorted(log)])


def run_child_and_kill(path: str, seed: int, kill_after_acks: int, jitter_s: float,
                       deadline_s: float = 10.0) -> list[str]:
    """Start the writer, SIGKILL it once it printed `kill_after_acks` acks (+ jitter), and
    return every complete line it printed."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, path, str(seed)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    raw: list[bytes] = []
    acks = 0
    deadline = time.monotonic() + deadline_s
    try:
        while acks < kill_after_acks:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"writer exited early (rc={proc.wait()}): "
                            f"{proc.stderr.read().decode()[-2000:]}")
            raw.append(line)
            acks += line.startswith(b"A ")
            if time.monotonic() > deadline:
                pytest.fail(f"writer printed only {acks} acks in {deadline_s} s")
        time.sleep(jitter_s)  # the kill moment itself, not a wait for a condition
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    raw.append(proc.stdout.read())
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    text = b"".join(raw).decode()
    complete, _, _torn = text.rpartition("\n")  # a line cut by the kill is dropped
    return complete.splitlines() if complete else []


@pytest.mark.timeout(60)
def test_sigkill_keeps_every_acknowledged_write(tmp_path):
    seed = int(os.environ.get("PRISN_CRASH_SEED", random.SystemRandom().randrange(1 << 32)))
    print(f"crash test seed={seed} (replay: PRISN_CRASH_SEED={seed})")
    rng = random.Random(seed)
    path = str(tmp_path / "log")
    state = BootState()
    started = time.monotonic()
    total_acks = 0
    for round_no in range(ROUNDS):
        kill_after = rng.choice([0, 1, rng.randint(2, 40), rng.randint(40, 400)])
        jitter = rng.uniform(0, 0.003)
        lines = run_child_and_kill(path, rng.randrange(1 << 32), kill_after, jitter)
        acked = state
        in_flight: list[StoreAppend] | None = None
        for line in lines:
            kind, _, rest = line.partition(" ")
            if kind == "R":
                assert int(rest) == (acked.entries[-1][0] if acked.entries else 0)
            elif kind == "W":
                assert in_flight is None, "a write started before the previous was acked"
                in_flight = [to_request(q) for q in json.loads(rest)]
            elif kind == "A":
                assert in_flight is not None and int(rest) == in_flight[-1].seq
                acked, in_flight = apply(acked, in_flight), None
                total_acks += 1
        store = LogStorage(path)
        try:
            got = store.load()  # raises StorageCorrupt on a gap
        finally:
            store.close()
        indexes = [e[0] for e in got.entries]
        assert indexes == list(range(1, len(indexes) + 1)), f"seed={seed}: log not contiguous"
        allowed = [acked] if in_flight is None else [acked, apply(acked, in_flight)]
        assert got in allowed, (
            f"seed={seed} round={round_no}: disk holds {len(got.entries)} entries "
            f"(term {got.term}); acknowledged state has {len(acked.entries)} (term {acked.term})"
            + ("" if in_flight is None else ", plus one write in flight"))
        state = got
    print(f"{ROUNDS} kills, {total_acks} acknowledged writes checked, "
          f"{len(state.entries)} entries at the end, {time.monotonic() - started:.1f} s")
