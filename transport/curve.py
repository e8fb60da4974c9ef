"""Peer security: the cluster key file, CurveZMQ keys derived from it, and the ZAP handler.

One secret (32 random bytes, `prisn keygen`) is copied to every node. Every holder derives the
same two CurveZMQ key pairs from it (HMAC-SHA256 of the secret with distinct labels), so that
file is the only thing to distribute:

- the *server* pair: every peer inbox (the PULL on ``--raft-addr``) is a CURVE server with it;
- the *client* pair: every replicator PUSH is a CURVE client with it, and names the server
  public key. A peer without the secret cannot complete the handshake (it does not know the
  server key), and one that somehow presents another client key is refused by the ZAP handler.

Threads: `ZapHandler` is its own thread, owning the one ROUTER socket bound to
``inproc://zeromq.zap.01`` on the node's context (libzmq asks it about every CURVE handshake
on that context). `HandshakeWatcher` runs in the thread that owns the watched socket (it is the
handler of that socket's monitor). `PeerAuthStats` is read from any thread.

Invariants:
- A key file is read strictly: header line, one base64 line of exactly 32 bytes, comments;
  anything else (short key, extra lines, unknown version, too large, unreadable) raises
  `KeyFileError` with a one-line reason and nothing is derived.
- The ZAP handler admits only mechanism CURVE with the cluster's client public key; it denies
  everything else (NULL, PLAIN, other keys, malformed requests). Every refusal is counted; the
  log is rate-limited (a scanner cannot flood it).
- Secrets never appear in logs or reprs; only a fingerprint of the public server key does.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zmq
from zmq.utils import z85

log = logging.getLogger("prisn.peerauth")

KEY_HEADER = "prisn-cluster-key v1"
KEY_BYTES = 32
MAX_KEY_FILE_BYTES = 4096
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = "prisn-peers"
HANDSHAKE_IVL_MS = 10_000  # a keyed peer inbox drops a connection that has not finished by then
LOG_INTERVAL_S = 10.0  # at most one refusal line per kind per interval (plus a count)

_SERVER_LABEL = b"prisn/curve/server-secret/v1"
_CLIENT_LABEL = b"prisn/curve/client-secret/v1"

SERVER_FAILURE_EVENTS = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
CLIENT_FAILURE_EVENTS = SERVER_FAILURE_EVENTS | zmq.EVENT_HANDSHAKE_FAILED_AUTH


class KeyFileError(ValueError):
    """A cluster key file that cannot be used (the message is one line, fit for the CLI)."""


# --------------------------------------------------------------------------- the key file


def generate_secret() -> bytes:
    """A new random cluster secret (32 bytes from the OS CSPRNG)."""
    return secrets.token_bytes(KEY_BYTES)


def format_key_file(secret: bytes) -> str:
    """The text of a key file holding `secret` (what `prisn keygen` writes or prints)."""
    if len(secret) != KEY_BYTES:
        raise ValueError(f"a cluster secret is {KEY_BYTES} bytes, not {len(secret)}")
    return (f"{KEY_HEADER}\n"
            "# prisn cluster key: copy this file unchanged to every node (mode 0600) and keep\n"
            "# it secret. Whoever holds it can join the cluster and write to it.\n"
            f"{base64.b64encode(secret).decode('ascii')}\n")


def parse_key_file(data: bytes) -> bytes:
    """The 32-byte secret from the bytes of a key file; `KeyFileError` for anything else."""
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"too large ({len(data)} bytes; a key file is under "
                           f"{MAX_KEY_FILE_BYTES})")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError("not a prisn cluster key (not ASCII text)") from None
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise KeyFileError("empty (make one with `prisn keygen --out FILE`)")
    header = lines[0]
    if header != KEY_HEADER:
        if header.startswith("prisn-cluster-key "):
            raise KeyFileError(f"unsupported key format {header.split(' ', 1)[1]!r} "
                               f"(this prisn reads {KEY_HEADER!r})")
        raise KeyFileError(f"not a prisn cluster key (first line must be {KEY_HEADER!r})")
    if len(lines) != 2:
        raise KeyFileError(f"expected exactly one key line after the header, found "
                           f"{len(lines) - 1}")
    line = lines[1]
    try:
        secret = base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError("the key line is not base64") from None
    if len(secret) != KEY_BYTES:
        raise KeyFileError(f"the key is {len(secret)} bytes, expected {KEY_BYTES}")
    if base64.b64encode(secret).decode("ascii") != line:
        raise KeyFileError("the key line is not canonical base64")
    if secret == bytes(KEY_BYTES):
        raise KeyFileError("the key is all zero bytes")
    return secret


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """Read and validate a key file; `KeyFileError` (one line) when it cannot be used."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise KeyFileError(f"{p}: not a regular file")
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as e:
        raise KeyFileError(f"{p}: cannot read: {e.strerror or e}") from None
    try:
        return parse_key_file(data)
    except KeyFileError as e:
        raise KeyFileError(f"{p}: {e}") from None


def loosely_permitted(path: str | os.PathLike[str]) -> bool:
    """True when any user may read the key file (the server warns about it). Group access is
    fine: the usual install is ``-m 0640 -o root -g prisn``, and Kubernetes secret volumes
    grant the pod's fsGroup."""
    try:
        return bool(os.stat(path).st_mode & 0o007)
    except OSError:
        return False


def write_key_file(path: str | os.PathLike[str], secret: bytes, *, force: bool = False) -> None:
    """Write a key file with mode 0600, durably. Refuses an existing path unless `force`
    (`FileExistsError`); with `force` the old file is replaced atomically (rename)."""
    p = Path(path)
    text = format_key_file(secret).encode("ascii")
    if not force:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, text)
            os.fsync(fd)
        finally:
            os.close(fd)
    else:
        fd, tmp = tempfile.mkstemp(prefix=".prisn-key-", dir=p.parent or ".")  # mode 0600
        try:
            os.write(fd, text)
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(tmp, p)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            Path(tmp).unlink(missing_ok=True)
            raise
    os.chmod(p, 0o600)  # in case the path existed with another mode and force replaced it
    dfd = os.open(p.parent if str(p.parent) else ".", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# --------------------------------------------------------------------------- derived keys


@dataclass(frozen=True)
class CurveKeys:
    """The CurveZMQ key pairs every holder of one cluster secret derives (z85, 40 bytes each).

    Immutable and shared between threads (sockets are configured by their own threads)."""

    server_public: bytes
    server_secret: bytes = field(repr=False)
    client_public: bytes
    client_secret: bytes = field(repr=False)

    @property
    def fingerprint(self) -> str:
        """A short public id of the key, to compare nodes in logs (reveals nothing secret)."""
        return hashlib.sha256(z85.decode(self.server_public)).hexdigest()[:16]

    def apply_server(self, sock: zmq.Socket) -> None:
        """Make `sock` a CURVE server that asks the ZAP handler (before bind)."""
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.server_secret)
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
        sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)

    def apply_client(self, sock: zmq.Socket) -> None:
        """Make `sock` a CURVE client of the cluster's server key (before connect)."""
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.client_public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.client_secret)


def derive_keys(secret: bytes) -> CurveKeys:
    """Deterministic: the same secret gives the same keys on every node. Any 32 bytes are a
    valid Curve25519 secret key (libzmq clamps them), so HMAC output is used directly."""
    if len(secret) != KEY_BYTES:
        raise ValueError(f"a cluster secret is {KEY_BYTES} bytes, not {len(secret)}")
    server_secret = z85.encode(hmac.new(secret, _SERVER_LABEL, hashlib.sha256).digest())
    client_secret = z85.encode(hmac.new(secret, _CLIENT_LABEL, hashlib.sha256).digest())
    return CurveKeys(server_public=zmq.curve_public(server_secret), server_secret=server_secret,
                     client_public=zmq.curve_public(client_secret), client_secret=client_secret)


def load_keys(path: str | os.PathLike[str]) -> CurveKeys:
    """Read a key file and derive the node's keys; `KeyFileError` when it cannot be used."""
    if not zmq.has("curve"):
        raise KeyFileError("this libzmq was built without CURVE support")
    return derive_keys(read_key_file(path))


# --------------------------------------------------------------------------- refusals


class PeerAuthStats:
    """Refused peer connections since start, by reason (any thread reads and writes).

    ``key``: the ZAP handler refused the handshake (wrong mechanism or client key);
    ``handshake``: the handshake failed before ZAP (a plaintext peer, another cluster key,
    garbage bytes, a peer hanging up mid-handshake)."""

    REASONS = ("key", "handshake")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.REASONS, 0)

    def add(self, reason: str, n: int = 1) -> int:
        """Count `n` refusals; the new total for `reason`."""
        with self._lock:
            self._counts[reason] += n
            return self._counts[reason]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())


class Throttle:
    """Allows one event per `interval` seconds (one thread). Refusal log lines carry the
    running total, so the lines it holds back lose no count."""

    def __init__(self, interval: float = LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._next = 0.0

    def allow(self) -> bool:
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + self.interval
        return True


# --------------------------------------------------------------------------- ZAP


class ZapHandler(threading.Thread):
    """The node's ZAP handler: one thread, one ROUTER on ``inproc://zeromq.zap.01``.

    `start()` returns once the socket is bound (raises `RuntimeError` if it cannot be, e.g.
    another handler on the same context); it must run before any CURVE server socket binds,
    and `stop()` + `join()` after the last one closed. A failure of the loop calls
    `on_failure(exc)` (the node stops: refusing to run without its gatekeeper)."""

    actor_name = "zap"
    poll_ms = 100
    max_batch = 256

    def __init__(self, ctx: zmq.Context, keys: CurveKeys, stats: PeerAuthStats | None = None,
                 on_failure: Callable[[BaseException], None] | None = None) -> None:
        super().__init__(name="prisn-zap", daemon=True)
        self.ctx = ctx
        self.stats = stats if stats is not None else PeerAuthStats()
        self.admitted = 0
        self.failure: BaseException | None = None
        self._client_key = z85.decode(keys.client_public)
        self._on_failure = on_failure
        self._stopping = threading.Event()
        self._bound = threading.Event()
        self._throttle = Throttle()

    def start(self) -> None:
        super().start()
        self._bound.wait()
        if self.failure is not None:
            self.join(1)
            raise RuntimeError(f"cannot start the ZAP handler: {self.failure}")

    def stop(self) -> None:
        """Ask the loop to end (any thread)."""
        self._stopping.set()

    def run(self) -> None:
        sock: zmq.Socket | None = None
        try:
            sock = self.ctx.socket(zmq.ROUTER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(ZAP_ENDPOINT)
            self._bound.set()
            while not self._stopping.is_set():
                if sock.poll(self.poll_ms, zmq.POLLIN):
                    for _ in range(self.max_batch):
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        reply = self.handle(frames)
                        if reply is not None:
                            sock.send_multipart(reply)
        except BaseException as e:  # noqa: BLE001 - any failure stops the node
            self.failure = e
            if self._bound.is_set():
                log.exception("the ZAP handler failed: stopping the node")
                if self._on_failure is not None:
                    self._on_failure(e)
        finally:
            self._bound.set()
            if sock is not None:
                sock.close(0)

    def handle(self, frames: list[bytes]) -> list[bytes] | None:
        """One ZAP request (routing envelope included) -> the reply frames (ZAP/1.0, RFC 27).

        None only when the request is too broken to answer (no envelope delimiter)."""
        try:
            split = frames.index(b"")
        except ValueError:
            self._refused("?", "malformed ZAP request (no envelope)")
            return None
        envelope, req = frames[:split + 1], frames[split + 1:]
        if len(req) < 6 or req[0] != b"1.0":
            rid = req[1] if len(req) > 1 else b""
            self._refused("?", "malformed ZAP request")
            return envelope + [b"1.0", rid, b"500", b"malformed request", b"", b""]
        _version, rid, domain, address, _identity, mechanism = req[:6]
        credentials = req[6:]
        peer = address.decode("ascii", "replace")[:64] or "?"
        if mechanism != b"CURVE":
            reason = f"mechanism {mechanism.decode('ascii', 'replace')[:16]} (CURVE required)"
        elif domain != ZAP_DOMAIN.encode():
            reason = f"unknown ZAP domain {domain.decode('ascii', 'replace')[:32]!r}"
        elif len(credentials) != 1 or not hmac.compare_digest(credentials[0], self._client_key):
            reason = "a client key that is not this cluster's (another cluster key?)"
        else:
            self.admitted += 1
            return envelope + [b"1.0", rid, b"200", b"OK", b"prisn-peer", b""]
        self._refused(peer, reason)
        return envelope + [b"1.0", rid, b"400", b"not a member of this cluster", b"", b""]

    def _refused(self, peer: str, reason: str) -> None:
        total = self.stats.add("key")
        if self._throttle.allow():
            log.warning("refused a peer connection from %s: %s (%d refused so far; at most "
                        "one line per %.0f s)", peer, reason, total, self._throttle.interval)


# --------------------------------------------------------------------------- monitors


def watch_handshakes(sock: zmq.Socket, events: int) -> zmq.Socket:
    """A PAIR socket receiving `sock`'s handshake events (create and poll it in `sock`'s
    thread; call ``sock.disable_monitor()`` before closing both)."""
    mon = sock.get_monitor_socket(events)
    mon.setsockopt(zmq.LINGER, 0)
    return mon


def parse_event(frame: bytes) -> tuple[int, int] | None:
    """(event, value) from frame 0 of a monitor message; None if it is not one."""
    if len(frame) < 6:
        return None
    event, value = struct.unpack("=HI", frame[:6])
    return event, value


_PROTOCOL_ERRORS = {
    getattr(zmq, n): n.removeprefix("PROTOCOL_ERROR_").lower()
    for n in dir(zmq) if n.startswith("PROTOCOL_ERROR_")
}


def describe_failure(event: int, value: int) -> str:
    """Human words for a handshake-failure monitor event."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return "security mechanism mismatch (a peer without a cluster key?)"
        if value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
            return "cryptographic error (a peer with another cluster key?)"
        return f"protocol error {_PROTOCOL_ERRORS.get(value, hex(value))}"
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"refused by the peer (ZAP status {value}: another cluster key?)"
    try:
        why = os.strerror(value) if value else "no detail"
    except ValueError:
        why = str(value)
    return f"handshake failed ({why}; another cluster key, or no key?)"


class HandshakeWatcher:
    """Handler of a monitor socket (runs in the thread owning the watched socket).

    With `stats` (a peer inbox) every handshake failure is counted as reason ``handshake``
    and logged, rate-limited; without (a replicator) it is only logged, rate-limited. Use
    `attach` to create the monitor socket, and the watcher itself as its frame handler."""

    def __init__(self, what: str, events: int, stats: PeerAuthStats | None = None) -> None:
        self.what = what
        self.events = events
        self.stats = stats
        self.failures = 0
        self._throttle = Throttle()

    def __call__(self, frames: list[bytes]) -> None:
        n = 0
        last: tuple[int, int] | None = None
        for f in frames:
            ev = parse_event(f)
            if ev is None or not ev[0] & self.events:
                continue
            n += 1
            last = ev
        if last is None:
            return
        self.failures += n
        total = self.stats.add("handshake", n) if self.stats is not None else self.failures
        if not self._throttle.allow():
            return
        if self.stats is not None:
            log.warning("refused a peer connection on %s: %s (%d refused so far; at most one "
                        "line per %.0f s)", self.what, describe_failure(*last), total,
                        self._throttle.interval)
        else:
            log.warning("cannot connect securely to %s: %s (%d failures so far; at most one "
                        "line per %.0f s)", self.what, describe_failure(*last), total,
                        self._throttle.interval)

    def attach(self, sock: zmq.Socket) -> zmq.Socket:
        """The monitor socket for `sock` (same thread; see `watch_handshakes`)."""
        return watch_handshakes(sock, self.events)
