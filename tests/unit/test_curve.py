"""Peer security (`transport.curve`): the cluster key file (round trip, strict refusals), key
derivation, CurveZMQ peer links over tcp loopback with the ZAP handler (same key talks; another
key, a forged client key or no key is refused and counted), rate-limited refusal logs, the
ZAP thread's lifecycle, `prisn keygen` and the `prisn_peer_auth_failures_total` metric."""

from __future__ import annotations

import base64
import logging
import os
import random
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from actors.metrics import NodeMetrics, PeerAuthCollector
from actors.replicator import ReplicatorActor, replicator_name
from prisn.cli import main as cli_main
from tests.helpers import unique_id, wait_until
from transport.curve import (
    KEY_HEADER,
    SERVER_FAILURE_EVENTS,
    ZAP_DOMAIN,
    CurveKeys,
    HandshakeWatcher,
    KeyFileError,
    PeerAuthStats,
    Throttle,
    ZapHandler,
    derive_keys,
    describe_failure,
    format_key_file,
    generate_secret,
    load_keys,
    parse_event,
    parse_key_file,
    read_key_file,
    write_key_file,
)
from transport.mailbox import bind_peer_inbox, connect_peer, inproc_address

SEED = int(os.environ.get("PRISN_TEST_SEED", "0")) or random.SystemRandom().randrange(1, 2**32)


@pytest.fixture
def rng() -> Iterator[random.Random]:
    """Seeded secrets for the socket tests; the seed is printed when a test fails."""
    print(f"test seed {SEED} (PRISN_TEST_SEED={SEED} repeats it)")
    yield random.Random(SEED)


def secret(rng: random.Random) -> bytes:
    return rng.randbytes(32)


# --------------------------------------------------------------------------- key file


def test_key_file_round_trip_and_mode(tmp_path: Path) -> None:
    s = generate_secret()
    assert len(s) == 32 and s != generate_secret()
    text = format_key_file(s)
    assert text.splitlines()[0] == KEY_HEADER
    assert parse_key_file(text.encode()) == s
    path = tmp_path / "cluster.key"
    write_key_file(path, s)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file(path) == s
    assert load_keys(path) == derive_keys(s)


def test_write_refuses_an_existing_file_unless_forced(tmp_path: Path) -> None:
    path = tmp_path / "cluster.key"
    path.write_text("keep me")
    path.chmod(0o644)
    with pytest.raises(FileExistsError):
        write_key_file(path, generate_secret())
    assert path.read_text() == "keep me"
    s = generate_secret()
    write_key_file(path, s, force=True)
    assert read_key_file(path) == s
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["cluster.key"]  # no temp file left


def test_key_file_tolerates_comments_blank_lines_and_crlf() -> None:
    s = bytes(range(1, 33))
    b64 = base64.b64encode(s).decode()
    text = f"\r\n# a comment\r\n{KEY_HEADER}\r\n\r\n  # another\r\n  {b64}  \r\n"
    assert parse_key_file(text.encode()) == s


B64_32 = base64.b64encode(bytes(range(1, 33))).decode()
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# the same 32 bytes with a padding bit set in the last character: decodes, but not canonical
B64_32_LOOSE = B64_32[:-2] + _ALPHABET[_ALPHABET.index(B64_32[-2]) | 1] + "="


@pytest.mark.parametrize("data,reason", [
    (b"", "empty"),
    (b"# only a comment\n", "empty"),
    (B64_32.encode(), "first line"),
    (f"prisn-cluster-key v2\n{B64_32}\n".encode(), "unsupported key format"),
    (f"{KEY_HEADER}\n".encode(), "exactly one key line"),
    (f"{KEY_HEADER}\n{B64_32}\n{B64_32}\n".encode(), "exactly one key line"),
    (f"{KEY_HEADER}\n{base64.b64encode(bytes(range(1, 17))).decode()}\n".encode(), "16 bytes"),
    (f"{KEY_HEADER}\n{base64.b64encode(bytes(range(1, 34))).decode()}\n".encode(), "33 bytes"),
    (f"{KEY_HEADER}\nnot base64 at all!\n".encode(), "not base64"),
    (f"{KEY_HEADER}\n{B64_32_LOOSE}\n".encode(), "canonical"),
    (f"{KEY_HEADER}\n{base64.b64encode(bytes(32)).decode()}\n".encode(), "all zero"),
    (f"{KEY_HEADER}\n{B64_32}\n".encode().replace(b"A", b"\xc3\x84", 1), "ASCII"),
    (f"{KEY_HEADER}\n{B64_32}\n".encode() + b"#" * 5000, "too large"),
])
def test_bad_key_files_are_refused_with_one_line(tmp_path: Path, data: bytes,
                                                 reason: str) -> None:
    with pytest.raises(KeyFileError) as e:
        parse_key_file(data)
    assert reason in str(e.value) and "\n" not in str(e.value)
    path = tmp_path / "k"
    path.write_bytes(data)
    with pytest.raises(KeyFileError) as e2:
        load_keys(path)
    assert str(path) in str(e2.value) and "\n" not in str(e2.value)


def test_unreadable_key_paths_are_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read"):
        read_key_file(tmp_path / "missing")
    with pytest.raises(KeyFileError):
        read_key_file(tmp_path)  # a directory


# --------------------------------------------------------------------------- derivation


def test_derivation_is_deterministic_and_separates_keys(rng: random.Random) -> None:
    s1, s2 = secret(rng), secret(rng)
    k1, again, k2 = derive_keys(s1), derive_keys(bytes(s1)), derive_keys(s2)
    assert k1 == again and k1.fingerprint == again.fingerprint
    assert k1 != k2 and k1.fingerprint != k2.fingerprint
    assert len({k1.server_public, k1.client_public, k2.server_public, k2.client_public}) == 4
    for k in (k1, k2):
        assert len(k.server_public) == len(k.server_secret) == 40
        assert zmq.curve_public(k.server_secret) == k.server_public
        assert zmq.curve_public(k.client_secret) == k.client_public
    assert s1.hex() not in repr(k1) and k1.server_secret.decode() not in repr(k1)
    assert k1.client_secret.decode() not in repr(k1)
    with pytest.raises(ValueError):
        derive_keys(s1[:31])


def test_derivation_golden_value() -> None:
    """The derivation is a wire contract between nodes: a change breaks mixed versions."""
    k = derive_keys(bytes(range(1, 33)))
    assert k.fingerprint == GOLDEN_FINGERPRINT
    assert k.server_public == b'Pw^:DbkNaGzi$fEX>4S{@1iNLch6C9G^2Y2fnRy@'
    assert k.client_public == b'3oI88?dH-:!y/Ny-KEEZe<@USGeU@{Qo6c}B@AXs'


GOLDEN_FINGERPRINT = "6de2f6d350b46ca5"


# --------------------------------------------------------------------------- ZAP requests


def zap_request(mechanism: bytes, *creds: bytes, domain: bytes = ZAP_DOMAIN.encode(),
                version: bytes = b"1.0") -> list[bytes]:
    return [b"peer-id", b"", version, b"rid-7", domain, b"10.0.0.9", b"", mechanism, *creds]


def test_zap_admits_only_curve_with_the_cluster_client_key(ctx: zmq.Context,
                                                           rng: random.Random) -> None:
    keys, other = derive_keys(secret(rng)), derive_keys(secret(rng))
    from zmq.utils import z85
    zap = ZapHandler(ctx, keys)  # not started: `handle` is pure
    ok = zap.handle(zap_request(b"CURVE", z85.decode(keys.client_public)))
    assert ok == [b"peer-id", b"", b"1.0", b"rid-7", b"200", b"OK", b"prisn-peer", b""]
    refused = [
        zap_request(b"CURVE", z85.decode(other.client_public)),
        zap_request(b"CURVE", z85.decode(keys.server_public)),
        zap_request(b"CURVE", z85.decode(keys.client_public), domain=b"other"),
        zap_request(b"CURVE"),
        zap_request(b"NULL"),
        zap_request(b"PLAIN", b"user", b"password"),
    ]
    for req in refused:
        reply = zap.handle(req)
        assert reply is not None and reply[4] == b"400" and reply[3] == b"rid-7", req
    assert zap.handle(zap_request(b"CURVE", version=b"2.0"))[4] == b"500"  # type: ignore[index]
    assert zap.handle([b"no envelope"]) is None
    assert zap.stats.counts() == {"key": len(refused) + 2, "handshake": 0}
    assert zap.admitted == 1


def test_refusal_logs_are_rate_limited(ctx: zmq.Context, rng: random.Random,
                                       caplog: pytest.LogCaptureFixture) -> None:
    zap = ZapHandler(ctx, derive_keys(secret(rng)))
    with caplog.at_level(logging.WARNING, logger="prisn.peerauth"):
        for _ in range(500):
            zap.handle(zap_request(b"NULL"))
    lines = [r for r in caplog.records if "refused a peer" in r.getMessage()]
    assert len(lines) == 1 and "10.0.0.9" in lines[0].getMessage()
    assert zap.stats.total == 500


def test_throttle_allows_one_event_per_interval() -> None:
    now = [100.0]
    t = Throttle(10.0, clock=lambda: now[0])
    assert t.allow() and not t.allow()
    now[0] += 9.9
    assert not t.allow()
    now[0] += 0.2
    assert t.allow() and not t.allow()


def test_monitor_event_parsing_and_words() -> None:
    import struct
    frame = struct.pack("=HI", zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                        zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
    assert parse_event(frame) == (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                                  zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
    assert parse_event(b"\x01") is None
    assert "without a cluster key" in describe_failure(*parse_event(frame))  # type: ignore[misc]
    assert "another cluster key" in describe_failure(
        zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC)
    assert "400" in describe_failure(zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400)
    assert "handshake failed" in describe_failure(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 32)


# --------------------------------------------------------------------------- sockets


class Server:
    """A keyed peer inbox on an ephemeral loopback port, its ZAP handler and its monitor,
    all driven from the test thread (the socket's owner)."""

    def __init__(self, ctx: zmq.Context, keys: CurveKeys) -> None:
        self.stats = PeerAuthStats()
        self.zap = ZapHandler(ctx, keys, self.stats)
        self.zap.start()
        self.pull = bind_peer_inbox(ctx, "127.0.0.1:0", keys)
        self.addr = self.pull.getsockopt_string(zmq.LAST_ENDPOINT).removeprefix("tcp://")
        self.watcher = HandshakeWatcher("test inbox", SERVER_FAILURE_EVENTS, self.stats)
        self.mon = self.watcher.attach(self.pull)

    def pump(self) -> None:
        """Feed pending monitor events to the watcher (what the raft actor's loop does)."""
        while self.mon.poll(0):
            self.watcher(self.mon.recv_multipart())

    def recv(self, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump()
            if self.pull.poll(20):
                return self.pull.recv()
        raise AssertionError(f"nothing received within {timeout}s (seed {SEED})")

    def close(self) -> None:
        self.pull.disable_monitor()
        self.mon.close(0)
        self.pull.close(0)
        self.zap.stop()
        self.zap.join(5)
        assert not self.zap.is_alive()


@pytest.fixture
def keyed(ctx: zmq.Context, rng: random.Random) -> Iterator[tuple[Server, CurveKeys, bytes]]:
    s = secret(rng)
    keys = derive_keys(s)
    srv = Server(ctx, keys)
    try:
        yield srv, keys, s
    finally:
        srv.close()


def _send_until_refused(ctx: zmq.Context, srv: Server, curve: CurveKeys | None, reason: str,
                        before: int) -> None:
    """Connect as `curve` (None: plaintext), try to send, and wait until `srv` counted the
    refusal; then a member's message must be the first (and only) thing that arrives."""
    bad = connect_peer(ctx, srv.addr, curve)
    try:
        try:
            bad.send(b"intruder", zmq.NOBLOCK)
        except zmq.Again:
            pass  # IMMEDIATE: no connection completed its handshake (expected)

        def counted() -> bool:
            srv.pump()
            return srv.stats.counts()[reason] > before
        wait_until(counted, what=f"a {reason} refusal")
    finally:
        bad.close(0)


def test_same_key_talks_over_tcp_loopback(ctx: zmq.Context, keyed) -> None:
    srv, _keys, s = keyed
    push = connect_peer(ctx, srv.addr, derive_keys(bytes(s)))  # derived anew, as another node
    try:
        wait_until(lambda: _try_send(push, b"hello"), what="a CURVE connection")
        assert srv.recv() == b"hello"
        assert srv.zap.admitted >= 1
        assert srv.stats.total == 0
    finally:
        push.close(0)


def test_other_key_no_key_and_forged_client_key_are_refused_and_counted(
        ctx: zmq.Context, keyed, rng: random.Random) -> None:
    srv, keys, _ = keyed
    other = derive_keys(secret(rng))
    # another cluster key: the client does not know our server key, the handshake fails
    _send_until_refused(ctx, srv, other, "handshake", 0)
    # no key at all (plaintext): mechanism mismatch, also before ZAP
    n = srv.stats.counts()["handshake"]
    _send_until_refused(ctx, srv, None, "handshake", n)
    # our server public key but another client key pair: the ZAP handler refuses it
    forged = CurveKeys(server_public=keys.server_public, server_secret=b"",
                       client_public=other.client_public, client_secret=other.client_secret)
    _send_until_refused(ctx, srv, forged, "key", 0)
    # none of them got a frame through: a member's message is the first to arrive
    member = connect_peer(ctx, srv.addr, keys)
    try:
        wait_until(lambda: _try_send(member, b"member"), what="a member connection")
        assert srv.recv() == b"member"
        assert not srv.pull.poll(50)
    finally:
        member.close(0)


def test_plaintext_inbox_is_unchanged_without_a_key(ctx: zmq.Context) -> None:
    pull = bind_peer_inbox(ctx, "127.0.0.1:0")
    addr = pull.getsockopt_string(zmq.LAST_ENDPOINT).removeprefix("tcp://")
    push = connect_peer(ctx, addr)
    try:
        assert pull.getsockopt(zmq.MECHANISM) == zmq.NULL
        assert push.getsockopt(zmq.MECHANISM) == zmq.NULL
        wait_until(lambda: _try_send(push, b"plain"), what="a plaintext connection")
        assert pull.poll(10_000) and pull.recv() == b"plain"
    finally:
        push.close(0)
        pull.close(0)


def test_replicator_with_the_key_delivers_to_a_keyed_inbox(ctx: zmq.Context, keyed) -> None:
    srv, keys, _ = keyed
    node = unique_id("curve", "repl")
    repl = ReplicatorActor(ctx, node, "n2", srv.addr, curve=keys)
    repl.start()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    try:
        assert repl.started.wait(5) and repl.failure is None
        push.connect(inproc_address(node, replicator_name("n2")))

        def delivered() -> bool:
            push.send(b"frame")  # dropped until the CURVE connection is up (IMMEDIATE)
            srv.pump()
            return bool(srv.pull.poll(20))
        wait_until(delivered, what="a frame through the replicator")
        assert srv.pull.recv() == b"frame"
    finally:
        push.close(0)
        repl.stop()
        repl.join(5)
        assert not repl.is_alive() and repl.failure is None


def test_zap_thread_starts_once_per_context_and_stops_cleanly(ctx: zmq.Context,
                                                              rng: random.Random) -> None:
    keys = derive_keys(secret(rng))
    zap = ZapHandler(ctx, keys)
    zap.start()
    try:
        assert zap.is_alive()
        second = ZapHandler(ctx, keys)
        with pytest.raises(RuntimeError, match="ZAP handler"):
            second.start()
        assert not second.is_alive()
    finally:
        zap.stop()
        zap.join(5)
    assert not zap.is_alive() and zap.failure is None
    again = ZapHandler(ctx, keys)  # the endpoint is free again
    again.start()
    again.stop()
    again.join(5)
    assert not again.is_alive()


# --------------------------------------------------------------------------- metric, CLI


def test_peer_auth_failures_metric() -> None:
    stats = PeerAuthStats()
    m = NodeMetrics()
    m.registry.register(PeerAuthCollector(stats.counts))
    body = m.render()[0].decode()
    assert 'prisn_peer_auth_failures_total{reason="key"} 0.0' in body
    stats.add("key", 2)
    stats.add("handshake")
    body = m.render()[0].decode()
    assert 'prisn_peer_auth_failures_total{reason="key"} 2.0' in body
    assert 'prisn_peer_auth_failures_total{reason="handshake"} 1.0' in body
    assert "# TYPE prisn_peer_auth_failures_total counter" in body


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = 0
    try:
        cli_main(args)
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_keygen_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_cli(["keygen"], capsys)
    assert code == 0 and len(parse_key_file(out.encode())) == 32
    path = tmp_path / "cluster.key"
    code, out, err = run_cli(["keygen", "--out", str(path)], capsys)
    assert code == 0 and out == "" and "fingerprint" in err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = read_key_file(path)
    assert derive_keys(first).fingerprint in err
    code, _, err = run_cli(["keygen", "--out", str(path)], capsys)
    assert code == 2 and "already exists" in err and err.count("\n") == 1
    assert read_key_file(path) == first
    code, _, _ = run_cli(["keygen", "--out", str(path), "--force"], capsys)
    assert code == 0 and read_key_file(path) != first
    code, _, err = run_cli(["keygen", "--out", str(tmp_path / "no" / "dir" / "k")], capsys)
    assert code == 2 and "cannot write" in err and err.count("\n") == 1
    code, _, err = run_cli(["keygen", "--force"], capsys)
    assert code == 2 and "--force needs --out" in err


# --------------------------------------------------------------------------- helpers


def _try_send(sock: zmq.Socket, data: bytes) -> bool:
    try:
        sock.send(data, zmq.NOBLOCK)
        return True
    except zmq.Again:
        return False
