"""TEST-ONLY fault injection on peer links: delay (with jitter), duplication, reordering, loss.

Never enable this in production. It exists for the fault suite under `tests/faults/`.

Switch: the environment variable ``PRISN_TEST_FAULTS`` holds the path of a JSON *control file*.
It is read once, when a replicator starts (`maybe_wrap`); when the variable is unset or empty,
`maybe_wrap` returns the peer socket unchanged, so the layer costs nothing per frame. When it is
set, each replicator's socket is replaced by a `FaultySocket`, a shadow of the same libzmq
socket (so it still polls, receives and closes like the original) whose sends go through the
link's rules. The file may be absent or empty (no faults); the test rewrites it (atomically,
by rename) to change faults while the cluster runs, and every link re-reads it within
`RELOAD_S`.

Control file::

    {"seed": 7,
     "links": [
       {"src": "n1", "dst": "*", "delay_ms": 20, "jitter_ms": 10,
        "dup": 0.05, "reorder": 0.2, "reorder_ms": 60, "drop": 0.0}
     ]}

- ``src`` / ``dst``: the sending node's id and the peer (its node id, its raft address, or the
  replicator's ``@host:port`` name); ``"*"`` matches anything. The first matching rule wins; a
  link matching no rule is left alone.
- ``delay_ms`` +/- ``jitter_ms`` (uniform): how long each frame waits before it is sent.
  Delayed frames keep their order (FIFO) unless reordered.
- ``dup``: probability that a frame is sent twice (the copy gets its own delay).
- ``reorder``: probability that a frame is held back a further uniform(0, ``reorder_ms``) ms
  outside the FIFO, so frames sent after it overtake it.
- ``drop``: probability that a frame is discarded (counted, as a full queue would be).
- ``wire``: pretend the sender speaks a newer minor wire version (the rolling-upgrade test,
  tests/unit/test_wire_compat.py): ``{"minor": 1, "extra": {"x_new": [1, "a"]},
  "unknown_every": 5}`` rewrites every frame to carry ``m`` = minor and the extra fields,
  and after every ``unknown_every``-th frame (0: never) sends a message of a type no node
  knows (``x.future``, with the same extra fields). Counted as ``rewritten`` and ``unknown``.

Every random choice comes from one `random.Random` per link, seeded with ``seed``, the node id
and the peer, and re-seeded when the file's seed changes.

Held frames are released by the replicator's own thread (sockets are single-threaded): the
layer shortens the actor's poll timeout to the next due time and releases due frames after
every batch and on every idle wake-up.

Statistics: each link writes ``{"released", "delayed", "duplicated", "reordered", "dropped",
"held"}`` to ``<control file>.stats/<node>__<peer>.json`` at most every `STATS_S`.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import random
import re
import time
from typing import Any

import zmq

log = logging.getLogger("prisn.faults")

ENV = "PRISN_TEST_FAULTS"
RELOAD_S = 0.05
STATS_S = 0.5
MAX_POLL_MS = 200


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def maybe_wrap(actor: Any, sock: zmq.Socket) -> zmq.Socket:
    """`sock` itself unless PRISN_TEST_FAULTS is set (test-only); then a `FaultySocket`."""
    path = os.environ.get(ENV)
    if not path:
        return sock
    log.warning("TEST-ONLY fault injection is ON for link %s -> %s (control file %s)",
                actor.node_id, actor.peer, path)
    faulty = FaultySocket.shadow(sock.underlying)
    faulty._setup(actor, sock, path)
    return faulty


class LinkRule:
    __slots__ = ("delay", "jitter", "dup", "reorder", "reorder_ms", "drop", "wire")

    def __init__(self, d: dict) -> None:
        self.delay = max(0.0, float(d.get("delay_ms", 0))) / 1000
        self.jitter = max(0.0, float(d.get("jitter_ms", 0))) / 1000
        self.dup = _prob(d.get("dup", 0))
        self.reorder = _prob(d.get("reorder", 0))
        self.reorder_ms = max(0.0, float(d.get("reorder_ms", 0))) / 1000
        self.drop = _prob(d.get("drop", 0))
        w = d.get("wire")
        self.wire = WireRewrite(w) if isinstance(w, dict) else None

    @property
    def idle(self) -> bool:
        return not (self.delay or self.jitter or self.dup or self.reorder or self.drop
                    or self.wire)

    @property
    def faulty(self) -> bool:
        """Anything but the wire rewrite."""
        return bool(self.delay or self.jitter or self.dup or self.reorder or self.drop)


UNKNOWN_TYPE = "x.future"


class WireRewrite:
    """A newer minor wire version's frames, made from this node's (the ``wire`` rule)."""

    __slots__ = ("minor", "extra", "unknown_every")

    def __init__(self, d: dict) -> None:
        self.minor = max(0, int(d.get("minor", 1)))
        extra = d.get("extra", {})
        self.extra = dict(extra) if isinstance(extra, dict) else {}
        self.unknown_every = max(0, int(d.get("unknown_every", 0)))

    def rewrite(self, payload: bytes, n: int) -> list[bytes]:
        """The frames to send for `payload`, the link's `n`-th frame (1-based)."""
        import cbor2  # only the test-only path needs it here

        d = cbor2.loads(payload)
        if not isinstance(d, dict):
            return [payload]
        new = {**d, **self.extra}
        if self.minor:
            new["m"] = self.minor
        out = [cbor2.dumps(new)]
        if self.unknown_every and n % self.unknown_every == 0:
            out.append(cbor2.dumps({"v": d.get("v"), "m": self.minor, "t": UNKNOWN_TYPE,
                                    "src": d.get("src", ""), "dst": d.get("dst", ""),
                                    "cluster": d.get("cluster", ""), **self.extra}))
        return out


def _prob(v: Any) -> float:
    return min(1.0, max(0.0, float(v)))


def _match(pattern: Any, *names: str) -> bool:
    return pattern in (None, "*") or str(pattern) in names


def load_rule(path: str, src: str, dst_names: tuple[str, ...]) -> tuple[LinkRule | None, Any]:
    """(the first rule of `path` matching this link or None, the file's seed)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None, None
    if not text.strip():
        return None, None
    doc = json.loads(text)
    for d in doc.get("links", []):
        if _match(d.get("src"), src) and _match(d.get("dst"), *dst_names):
            rule = LinkRule(d)
            return (None if rule.idle else rule), doc.get("seed")
    return None, doc.get("seed")


class FaultySocket(zmq.Socket):
    """A shadow of a replicator's peer socket whose `send` applies the link's faults."""

    # pyzmq maps unknown attribute names to socket options: declare ours.
    _actor: Any
    _real: zmq.Socket
    _path: str
    _src: str
    _dst_names: tuple[str, ...]
    _rule: LinkRule | None
    _seed: Any
    _rng: random.Random
    _mtime: Any
    _next_check: float
    _heap: list[tuple[float, int, bytes]]
    _seq: int
    _fifo_due: float
    stats: dict[str, int]
    _stats_dirty: bool
    _next_stats: float
    _stats_path: str
    _seq_wire: int

    def _setup(self, actor: Any, real: zmq.Socket, path: str) -> None:
        self._actor = actor
        self._real = real
        self._path = path
        peer = str(actor.peer)
        self._src = str(actor.node_id)
        self._dst_names = (peer, peer.lstrip("@"), str(getattr(actor, "addr", "")))
        self._rule = None
        self._seed = None
        self._rng = random.Random(0)
        self._mtime = None
        self._next_check = 0.0
        self._heap = []
        self._seq = 0
        self._fifo_due = 0.0
        self.stats = {"released": 0, "delayed": 0, "duplicated": 0, "reordered": 0, "dropped": 0,
                      "held": 0, "rewritten": 0, "unknown": 0}
        self._stats_dirty = False
        self._next_stats = 0.0
        self._seq_wire = 0
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self._src}__{peer}")
        self._stats_path = os.path.join(path + ".stats", safe + ".json")
        self._reseed(None)
        self._reload(time.monotonic())
        # Release held frames from the actor's own thread: after each batch and when idle.
        orig_idle, orig_end = actor.on_idle, actor.on_batch_end

        def on_idle() -> None:
            self.release()
            orig_idle()

        def on_batch_end() -> None:
            self.release()
            orig_end()

        actor.on_idle = on_idle
        actor.on_batch_end = on_batch_end

    # ------------------------------------------------------------------ control file
    def _reseed(self, seed: Any) -> None:
        self._seed = seed
        self._rng = random.Random(f"{seed}:{self._src}:{self._dst_names[0]}")

    def _reload(self, now: float) -> None:
        if now < self._next_check:
            return
        self._next_check = now + RELOAD_S
        try:
            st = os.stat(self._path)
            mtime: Any = (st.st_mtime_ns, st.st_ino, st.st_size)  # a rename changes the inode
        except OSError:
            mtime = None
        if mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            rule, seed = load_rule(self._path, self._src, self._dst_names)
        except (OSError, ValueError, TypeError, AttributeError) as e:
            log.warning("fault control file %s unreadable, keeping old rules: %s", self._path, e)
            return
        if seed != self._seed:
            self._reseed(seed)
        self._rule = rule

    # ------------------------------------------------------------------ sending
    def send(self, data: Any, flags: int = 0, copy: bool = True,  # type: ignore[override]
             track: bool = False, **kw: Any) -> Any:
        now = time.monotonic()
        self._reload(now)
        rule = self._rule
        if rule is not None and rule.wire is not None:
            self._seq_wire += 1
            frames = rule.wire.rewrite(bytes(data), self._seq_wire)
            self.stats["rewritten"] += 1
            self.stats["unknown"] += len(frames) - 1
            self._stats_dirty = True
            if not rule.faulty and not self._heap:
                for f in frames:
                    self._send_now(f, flags, copy, track, **kw)
                return None
            for f in frames:
                self._send_faulty(f, now, rule)
            self.release(now)
            return None
        if rule is None and not self._heap:
            return self._send_now(data, flags, copy, track, **kw)
        self._send_faulty(data, now, rule)
        self.release(now)
        return None

    def _send_faulty(self, data: Any, now: float, rule: LinkRule | None) -> None:
        """Apply `rule`'s faults to one frame (held, duplicated or dropped; never sent here)."""
        if rule is None:
            self._hold(now, bytes(data), fifo=True)
        else:
            rng = self._rng
            self._stats_dirty = True
            if rule.drop and rng.random() < rule.drop:
                self.stats["dropped"] += 1
                return
            copies = 2 if rule.dup and rng.random() < rule.dup else 1
            if copies == 2:
                self.stats["duplicated"] += 1
            payload = bytes(data)
            for _ in range(copies):
                delay = rule.delay
                if rule.jitter:
                    delay = max(0.0, delay + rng.uniform(-rule.jitter, rule.jitter))
                if rule.reorder and rng.random() < rule.reorder:
                    self.stats["reordered"] += 1
                    self._hold(now + delay + rng.uniform(0, rule.reorder_ms), payload,
                               fifo=False)
                else:
                    if delay:
                        self.stats["delayed"] += 1
                    self._hold(now + delay, payload, fifo=True)

    def _hold(self, due: float, payload: bytes, *, fifo: bool) -> None:
        if fifo:
            due = max(due, self._fifo_due)
            self._fifo_due = due
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, payload))
        self.stats["held"] = len(self._heap)

    def _send_now(self, data: Any, flags: int, copy: bool, track: bool, **kw: Any) -> Any:
        return zmq.Socket.send(self, data, flags, copy=copy, track=track, **kw)

    def release(self, now: float | None = None) -> None:
        """Send every held frame that is due (actor thread); set the next wake-up."""
        now = time.monotonic() if now is None else now
        self._reload(now)
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, payload = heapq.heappop(heap)
            try:
                zmq.Socket.send(self, payload, zmq.NOBLOCK)
                self.stats["released"] += 1
            except zmq.Again:
                self.stats["dropped"] += 1
            self._stats_dirty = True
        self.stats["held"] = len(heap)
        if heap:
            wait_ms = int((heap[0][0] - now) * 1000) + 1
            self._actor.poll_ms = max(1, min(MAX_POLL_MS, wait_ms))
        else:
            self._actor.poll_ms = type(self._actor).poll_ms
        if self._stats_dirty and now >= self._next_stats:
            self._next_stats = now + STATS_S
            self._stats_dirty = False
            self._write_stats()

    def _write_stats(self) -> None:
        try:
            os.makedirs(os.path.dirname(self._stats_path), exist_ok=True)
            tmp = f"{self._stats_path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self.stats, f)
            os.replace(tmp, self._stats_path)
        except OSError as e:
            log.warning("cannot write fault stats %s: %s", self._stats_path, e)

    def close(self, linger: int | None = None) -> None:
        self._heap.clear()
        if self._stats_dirty:
            self._write_stats()
        self._real.close(linger)
