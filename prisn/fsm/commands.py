"""Deployment commands: built by the proposer (API thread), applied by `DeploymentStore`.

Everything time-like or random is chosen here, on the proposing side, and carried in the
command, so that `apply` on every node computes the same state: the idempotency `key`, the
timestamp `ts` and, for create, the deployment `id`. `CommandFactory` takes its clock and id
source as arguments (tests inject fixed ones).

Command format (a CBOR/JSON-able map; `v` is `COMMAND_VERSION`):

    {"v": 1, "op": "create",  "key": K, "ts": T, "ns": NS, "name": N, "id": ID, "spec": S}
    {"v": 1, "op": "replace", "key": K, "ts": T, "ns": NS, "name": N, "spec": S}
    {"v": 1, "op": "patch",   "key": K, "ts": T, "ns": NS, "name": N, "spec": P}
    {"v": 1, "op": "scale",   "key": K, "ts": T, "ns": NS, "name": N, "replicas": R}
    {"v": 1, "op": "delete",  "key": K, "ts": T, "ns": NS, "name": N}

API token commands (``token.create``, ``token.revoke``, ``token.delete``) share the envelope
(`v`, `op`, `key`, `ts`) and are built by `prisn.fsm.tokens.TokenFactory` (which also picks the
token id and secret on the proposer; only the secret's SHA-256 enters the log).

`S` is a normalized full spec and `P` a normalized partial one (`validation.normalize_spec`),
both without `name`/`namespace` (the target is `ns`/`name`). `T` is an RFC 3339 UTC string with
milliseconds. The log entry payload (EntryKind.COMMAND) wraps a command as
``{"o": origin node id, "r": rid, "c": command}`` (`encode_entry` / `decode_entry`).

Pure apart from the injected clock and id source; safe on any thread.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import cbor2

from prisn.fsm.validation import (
    DEFAULT_NAMESPACE,
    ValidationError,
    check_env_text,
    check_timezone_known,
    normalize_spec,
    validate_name,
    validate_replicas,
)

COMMAND_VERSION = 1
OPS: tuple[str, ...] = ("create", "replace", "patch", "scale", "delete")  # deployments
# Token ops ("token.create", "token.revoke", "token.delete") are `prisn.fsm.tokens.TOKEN_OPS`.
MAX_KEY = 255
MAX_ENTRY_BYTES = 64 * 1024 * 1024


class CommandError(ValueError):
    """A log entry payload or command that cannot be decoded (400 Bad Request)."""


_MAX_FAST_TS = 253402300800  # 10000-01-01: later (or negative) times take datetime's path
_ts_second: tuple[int, str] = (-1, "")  # (second, "YYYY-MM-DDTHH:MM:SS.") of the last call


def format_ts(seconds: float) -> str:
    """RFC 3339 UTC with milliseconds, e.g. ``2025-01-02T03:04:05.678Z``.

    Exactly `datetime.fromtimestamp(seconds, UTC)` truncated to milliseconds (the same
    half-even rounding of the fraction to microseconds), with the date part formatted once per
    second: strftime was 2 % of the API thread per create. Any thread: the cache is one tuple,
    swapped whole."""
    global _ts_second
    frac, whole = math.modf(seconds)
    us = round(frac * 1e6)
    sec = int(whole)
    if us >= 1_000_000:
        us -= 1_000_000
        sec += 1
    elif us < 0:
        us += 1_000_000
        sec -= 1
    if not 0 <= sec < _MAX_FAST_TS:
        dt = datetime.fromtimestamp(seconds, tz=UTC)
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    cached = _ts_second
    if cached[0] != sec:
        cached = (sec, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec)))
        _ts_second = cached
    return f"{cached[1]}{us // 1000:03d}Z"


_ID_POOL = 256  # ids drawn from one os.urandom call
_id_lock = threading.Lock()
_id_bytes = b""
_id_pos = 0


def new_id() -> str:
    """A random version-4 UUID as 32 hex digits, the `uuid.uuid4().hex` format, without a UUID
    object and with one getrandom(2) per `_ID_POOL` ids (the syscall per id was 4% of the API
    thread per create). Any thread: the lock hands every 16 bytes out once."""
    global _id_bytes, _id_pos
    with _id_lock:
        if _id_pos >= len(_id_bytes):
            _id_bytes = os.urandom(16 * _ID_POOL)
            _id_pos = 0
        b = bytearray(_id_bytes[_id_pos:_id_pos + 16])
        _id_pos += 16
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    return b.hex()


def check_key(key: Any) -> str:
    """An idempotency key: 1..255 printable ASCII characters."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY:
        raise ValidationError("Idempotency-Key", f"must be 1 to {MAX_KEY} characters")
    if not (key.isascii() and key.isprintable()):
        raise ValidationError("Idempotency-Key", "must be printable ASCII")
    return key


def resolve_target(spec: dict[str, Any], *, name: str | None, namespace: str | None) -> tuple[str, str]:
    """The (namespace, name) a write addresses, from the path/query and the body.

    The body may repeat `name`/`namespace`; a value that differs from the path or query is a
    400. The namespace defaults to ``default``.
    """
    body_name = spec.get("name")
    if name is None:
        if body_name is None:
            raise ValidationError("name", "is required")
        target_name = validate_name(body_name)
    else:
        target_name = validate_name(name)
        if body_name is not None and body_name != target_name:
            raise ValidationError("name", f"{body_name!r} does not match the path {target_name!r}")
    body_ns = spec.get("namespace")
    if namespace is not None:
        target_ns = validate_name(namespace, "namespace")
        if body_ns is not None and body_ns != target_ns:
            raise ValidationError(
                "namespace", f"{body_ns!r} does not match the query parameter {target_ns!r}"
            )
    elif body_ns is not None:
        target_ns = validate_name(body_ns, "namespace")
    else:
        target_ns = DEFAULT_NAMESPACE
    return target_ns, target_name


def _strip_target(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in ("name", "namespace")}


class CommandFactory:
    """Builds validated commands. Runs on the API thread; `clock` and `new_id` are injected.

    Every builder raises `ValidationError` (400) for a bad request, before anything is proposed.
    A missing `key` is replaced by a fresh random one (no deduplication across retries then).
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = new_id,
    ) -> None:
        self._clock = clock
        self._new_id = new_id

    def _base(self, op: str, key: str | None, ns: str, name: str) -> dict[str, Any]:
        return {
            "v": COMMAND_VERSION,
            "op": op,
            "key": check_key(key) if key is not None else self._new_id(),
            "ts": format_ts(self._clock()),
            "ns": ns,
            "name": name,
        }

    def create(self, body: Any, *, namespace: str | None = None, key: str | None = None) -> dict[str, Any]:
        """POST /deployments: `body` is the full spec (name and source required)."""
        spec = normalize_spec(body, partial=False)
        check_env_text(spec)
        check_timezone_known(spec)
        ns, name = resolve_target(spec, name=None, namespace=namespace)
        cmd = self._base("create", key, ns, name)
        cmd["id"] = self._new_id()
        cmd["spec"] = _strip_target(spec)
        return cmd

    def replace(self, name: str, body: Any, *, namespace: str | None = None,
                key: str | None = None) -> dict[str, Any]:
        """PUT /deployments/{name}: `body` is the whole new spec (source required)."""
        if isinstance(body, dict) and "name" not in body:
            body = {**body, "name": name}
        spec = normalize_spec(body, partial=False)
        check_env_text(spec)
        check_timezone_known(spec)
        ns, target = resolve_target(spec, name=name, namespace=namespace)
        cmd = self._base("replace", key, ns, target)
        cmd["spec"] = _strip_target(spec)
        return cmd

    def patch(self, name: str, body: Any, *, namespace: str | None = None,
              key: str | None = None) -> dict[str, Any]:
        """PATCH /deployments/{name}: `body` is any subset of the spec fields."""
        spec = normalize_spec(body, partial=True)
        check_env_text(spec)
        check_timezone_known(spec)
        ns, target = resolve_target(spec, name=name, namespace=namespace)
        cmd = self._base("patch", key, ns, target)
        cmd["spec"] = _strip_target(spec)
        return cmd

    def scale(self, name: str, body: Any, *, namespace: str | None = None,
              key: str | None = None) -> dict[str, Any]:
        """POST /deployments/{name}/scale with ``{"replicas": N}``."""
        if not isinstance(body, dict):
            raise ValidationError("body", "must be a JSON object")
        for field in body:
            if field != "replicas":
                raise ValidationError(str(field), "unknown field")
        if "replicas" not in body:
            raise ValidationError("replicas", "is required")
        replicas = validate_replicas(body["replicas"])
        ns, target = resolve_target({}, name=name, namespace=namespace)
        cmd = self._base("scale", key, ns, target)
        cmd["replicas"] = replicas
        return cmd

    def delete(self, name: str, *, namespace: str | None = None,
               key: str | None = None) -> dict[str, Any]:
        """DELETE /deployments/{name}."""
        ns, target = resolve_target({}, name=name, namespace=namespace)
        return self._base("delete", key, ns, target)


def encode_entry(origin: str, rid: int, command: dict[str, Any]) -> bytes:
    """The data of an EntryKind.COMMAND log entry (CBOR).

    Not canonical: the bytes are made once, on the proposer, and replicated as they are, so no
    node ever re-encodes them; canonical key sorting cost 5 us per write on the API thread.
    Deduplication compares `_fingerprint`s, which are canonical."""
    return cbor2.dumps({"o": origin, "r": rid, "c": command})


def decode_entry(data: bytes) -> tuple[str, int, dict[str, Any]]:
    """(origin, rid, command) of a COMMAND entry; `CommandError` for anything malformed."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CommandError("entry data is not bytes")
    if len(data) > MAX_ENTRY_BYTES:
        raise CommandError("entry data too large")
    try:
        payload = cbor2.loads(bytes(data))
    except Exception as exc:  # cbor2 raises several types on garbage
        raise CommandError(f"entry data is not CBOR: {exc}") from None
    if not isinstance(payload, dict):
        raise CommandError("entry payload is not a map")
    origin, rid, command = payload.get("o"), payload.get("r"), payload.get("c")
    if not isinstance(origin, str) or not isinstance(rid, int) or isinstance(rid, bool):
        raise CommandError("entry payload lacks origin 'o' or rid 'r'")
    if not isinstance(command, dict):
        raise CommandError("entry payload lacks command 'c'")
    return origin, rid, command
