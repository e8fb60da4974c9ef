"""The test-only link fault layer (`transport/faults.py`) inside a real replicator actor:
off unless PRISN_TEST_FAULTS is set; delay with jitter, duplication, reordering and loss, with
a seeded RNG; rules re-read live from the control file; held frames released on time."""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path

import pytest
import zmq

from actors.replicator import ReplicatorActor, replicator_name
from tests.procs import free_port
from transport import faults
from transport.mailbox import inproc_address

_ids = itertools.count()


class Link:
    """A replicator n?->peer pushing to a PULL socket on an ephemeral loopback port."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        port = free_port()
        self.sink = self.ctx.socket(zmq.PULL)
        self.sink.setsockopt(zmq.LINGER, 0)
        self.sink.bind(f"tcp://127.0.0.1:{port}")
        self.node = f"flt{os.getpid()}x{next(_ids)}"
        self.repl = ReplicatorActor(self.ctx, self.node, "peer", f"127.0.0.1:{port}")
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)

    def start(self) -> Link:
        self.repl.start()
        assert self.repl.started.wait(5) and self.repl.failure is None
        self.push.connect(inproc_address(self.node, replicator_name("peer")))
        # wait for the tcp connection (IMMEDIATE drops frames until it is up)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            self.push.send(b"probe")
            if self.sink.poll(50):
                self.drain(0.2)
                return self
        raise AssertionError("replicator never connected")

    def send(self, frames: list[bytes]) -> float:
        t = time.monotonic()
        for f in frames:
            self.push.send(f)
        return t

    def drain(self, quiet: float, want: int | None = None,
              timeout: float = 5.0) -> list[tuple[float, bytes]]:
        """Frames received until `want` arrived (or `quiet` s of silence), with arrival times."""
        out: list[tuple[float, bytes]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.sink.poll(int(quiet * 1000)):
                if want is None or len(out) >= want:
                    break
                continue
            frame = self.sink.recv()
            if frame != b"probe":
                out.append((time.monotonic(), frame))
        return out

    def close(self) -> None:
        self.repl.stop()
        self.repl.join(5)
        self.push.close(0)
        self.sink.close(0)
        self.ctx.term()


def _control(path: Path, **rule) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"seed": rule.pop("seed", 1),
                               "links": [{"src": "*", "dst": "*", **rule}] if rule else []}))
    os.replace(tmp, path)


@pytest.fixture
def control(tmp_path, monkeypatch):
    path = tmp_path / "faults.json"
    path.write_text("")
    monkeypatch.setenv(faults.ENV, str(path))
    monkeypatch.setattr(faults, "RELOAD_S", 0.0)  # re-read the rules on every frame
    return path


@pytest.fixture
def link(control):
    lk = Link().start()
    try:
        yield lk
    finally:
        lk.close()


def _frames(n: int) -> list[bytes]:
    return [f"f{i:04d}".encode() for i in range(n)]


def test_off_without_the_environment_variable(monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    try:
        assert faults.maybe_wrap(object(), sock) is sock
        assert not faults.enabled()
    finally:
        sock.close(0)
        ctx.term()


def test_empty_control_file_passes_frames_through(link):
    assert isinstance(link.repl._sock, faults.FaultySocket)
    frames = _frames(50)
    link.send(frames)
    got = link.drain(0.3, want=50)
    assert [f for _, f in got] == frames


def test_delay_with_jitter_keeps_order(link, control):
    _control(control, delay_ms=150, jitter_ms=40)
    frames = _frames(20)
    t0 = link.send(frames)
    got = link.drain(0.5, want=20)
    assert [f for _, f in got] == frames  # delayed frames stay FIFO without `reorder`
    assert min(t for t, _ in got) - t0 >= 0.10


def test_duplication(link, control):
    _control(control, dup=1.0)
    frames = _frames(30)
    link.send(frames)
    got = [f for _, f in link.drain(0.3, want=60)]
    assert sorted(got) == sorted(frames * 2)


def test_reordering_holds_frames_back_and_releases_them(link, control):
    _control(control, reorder=0.5, reorder_ms=200, seed=7)
    frames = _frames(60)
    link.send(frames)
    got = [f for _, f in link.drain(0.5, want=60)]
    assert sorted(got) == frames and got != frames  # all delivered, not in order


def test_loss_and_stats(link, control):
    _control(control, drop=1.0)
    link.send(_frames(40))
    assert link.drain(0.3) == []
    _control(control)  # healed: frames flow again
    link.send(_frames(5))
    assert len(link.drain(0.3, want=5)) == 5
    stats_dir = Path(str(control) + ".stats")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        files = list(stats_dir.glob("*.json")) if stats_dir.is_dir() else []
        if files and json.loads(files[0].read_text()).get("dropped", 0) >= 40:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("stats never showed the dropped frames")


def test_rules_match_source_and_destination(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"seed": 3, "links": [
        {"src": "n1", "dst": "n2", "delay_ms": 5},
        {"src": "*", "dst": "@127.0.0.1:9", "dup": 0.5},
        {"src": "n9", "dst": "*", "delay_ms": 0},
    ]}))
    rule, seed = faults.load_rule(str(path), "n1", ("n2",))
    assert seed == 3 and rule is not None and rule.delay == 0.005
    rule, _ = faults.load_rule(str(path), "n3", ("@127.0.0.1:9", "127.0.0.1:9"))
    assert rule is not None and rule.dup == 0.5
    assert faults.load_rule(str(path), "n9", ("n1",))[0] is None  # an idle rule is no rule
    assert faults.load_rule(str(path), "n3", ("n1",))[0] is None
    assert faults.load_rule(str(tmp_path / "absent.json"), "n1", ("n2",)) == (None, None)


def test_same_seed_same_choices(tmp_path):
    """The per-link RNG depends only on the seed, the node and the peer."""

    class FakeActor:
        node_id, peer, addr, poll_ms = "a", "b", "127.0.0.1:1", 200

        def on_idle(self) -> None: ...

        def on_batch_end(self) -> None: ...

    def draws(seed: int) -> list[float]:
        path = tmp_path / f"s{seed}.json"
        path.write_text(json.dumps({"seed": seed, "links": []}))
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            os.environ[faults.ENV] = str(path)
            f = faults.maybe_wrap(FakeActor(), sock)
            out = [f._rng.random() for _ in range(5)]
            f.close(0)
            return out
        finally:
            os.environ.pop(faults.ENV, None)
            ctx.term()

    assert draws(1) == draws(1) != draws(2)
