"""API tokens: commands built by the proposer, and the pure `TokenTable` the state machine keeps.

A token secret is ``prisn_<id>_<random>``: `id` is 16 lowercase hex characters (8 random
bytes), `random` 43 URL-safe base64 characters (32 random bytes). The secret exists only on the
proposing node's API thread and in the one 201 answer; the log entry, the table, snapshots and
every other answer hold the id and ``sha256(secret)`` (hex) only. Authentication is one dict
lookup by the id parsed from the secret plus `hmac.compare_digest` of the hashes.

Command formats (maps inside the log entry payload; `v` is `COMMAND_VERSION`; `T` is the
proposer's RFC 3339 timestamp with milliseconds, as for deployments):

    {"v": 1, "op": "token.create", "key": K, "ts": T, "id": ID, "name": N, "role": R,
     "namespaces": [NS...], "ttl": SECONDS | None, "hash": SHA256_HEX}
    {"v": 1, "op": "token.revoke", "key": K, "ts": T, "id": ID}
    {"v": 1, "op": "token.delete", "key": K, "ts": T, "id": ID}

Determinism: every random or time-like choice (id, secret, `ts`) is made by `TokenFactory` on
the proposer; `TokenTable.apply` reads no clock (the expiry instant is ``ts + ttl``), so every
node computes the same table. Whether a token has *expired* is decided at authentication time
against the serving node's clock; the table only stores the instant.

Threads: `TokenFactory` runs on the API thread. `TokenTable` has no lock: its owner
(`DeploymentStore`) calls it under the store's lock (apply on the state-machine thread, lookups
on the API thread). Stored `Token` records are immutable (a revoke stores a new record).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

from prisn.fsm.commands import COMMAND_VERSION, check_key, format_ts
from prisn.fsm.results import Result, failure
from prisn.fsm.validation import ValidationError, is_int, validate_name
from prisn.outcomes import Outcome

ROLES: tuple[str, ...] = ("admin", "developer", "viewer")
ALL_NAMESPACES = "*"
TOKEN_OPS: tuple[str, ...] = ("token.create", "token.revoke", "token.delete")
SECRET_PREFIX = "prisn_"
MAX_TOKENS = 10_000  # a create beyond this is a 409; delete tokens to make room
MAX_NAMESPACES = 100
MIN_TTL = 1
MAX_TTL = 365 * 86400  # expires_in is at most one year
ID_BYTES = 8
SECRET_BYTES = 32

_ID_RE = re.compile(r"[0-9a-f]{16}")
_HASH_RE = re.compile(r"[0-9a-f]{64}")
_SECRET_RE = re.compile(r"prisn_([0-9a-f]{16})_[A-Za-z0-9_-]{43}")
_TS_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_DURATION_RE = re.compile(r"(?:\d{1,9}[smhd]){1,4}")
_DURATION_PART_RE = re.compile(r"(\d{1,9})([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_CREATE_FIELDS = frozenset({"name", "role", "namespaces", "expires_in"})

class TokenCommandError(ValueError):
    """A token command in the log that is malformed (400; changes nothing)."""


# ---------------------------------------------------------------------- validation (pure)
def parse_duration(value: Any, field: str = "expires_in") -> int:
    """``30m``, ``24h``, ``7d``, ``1h30m`` -> seconds, between 1 s and 365 days."""
    if not isinstance(value, str) or not _DURATION_RE.fullmatch(value):
        raise ValidationError(field, "must be a duration such as 30m, 24h or 7d "
                                     "(units s, m, h, d)")
    seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART_RE.findall(value))
    if not MIN_TTL <= seconds <= MAX_TTL:
        raise ValidationError(field, "must be at least 1s and at most 365d")
    return seconds


def validate_role(value: Any) -> str:
    """One of `ROLES` (400 naming ``role`` otherwise)."""
    if not isinstance(value, str) or value not in ROLES:
        raise ValidationError("role", f"must be one of {', '.join(ROLES)}")
    return value


def validate_namespaces(role: str, value: Any) -> list[str]:
    """The canonical namespace list of a token: sorted, unique, or exactly ``["*"]``.

    An admin token covers every namespace: `value` must be absent (None) or ``["*"]``.
    A developer or viewer token needs a non-empty list of namespace names, or ``["*"]``."""
    if role == "admin":
        if value is None or value == [ALL_NAMESPACES]:
            return [ALL_NAMESPACES]
        raise ValidationError("namespaces", 'an admin token covers every namespace: omit it '
                                            'or use ["*"]')
    if value is None:
        raise ValidationError("namespaces", f"is required for a {role} token (a list of "
                                            'namespaces, or ["*"] for all)')
    if not isinstance(value, list) or not value:
        raise ValidationError("namespaces", 'must be a non-empty list of namespaces, or ["*"]')
    if len(value) > MAX_NAMESPACES:
        raise ValidationError("namespaces", f"must list at most {MAX_NAMESPACES} namespaces")
    if ALL_NAMESPACES in value:
        if len(value) != 1:
            raise ValidationError("namespaces", '"*" (all namespaces) must stand alone')
        return [ALL_NAMESPACES]
    return sorted({validate_name(ns, "namespaces") for ns in value})


def validate_token_id(value: Any) -> str:
    """A token id as commands and snapshots carry it (`TokenCommandError` otherwise)."""
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise TokenCommandError("command field 'id' must be 16 lowercase hex characters")
    return value


def parse_secret(secret: str) -> str | None:
    """The token id inside a well-formed secret, else None."""
    m = _SECRET_RE.fullmatch(secret)
    return m.group(1) if m else None


def secret_hash(secret: str) -> str:
    """What the table stores for a secret: SHA-256, hex."""
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def ts_millis(ts: Any) -> int:
    """Epoch milliseconds of an RFC 3339 ``YYYY-MM-DDTHH:MM:SS.mmmZ`` string (pure integer
    arithmetic: identical on every node)."""
    if not isinstance(ts, str) or not _TS_RE.fullmatch(ts):
        raise TokenCommandError("command field 'ts' must be an RFC 3339 UTC time with "
                                "milliseconds")
    # fields by position (the regex fixed the shape); `date` checks year, month and day,
    # as strptime did, without its per-call regex and locale machinery (a hot path: every
    # apply and every cron round)
    hour, minute, sec = int(ts[11:13]), int(ts[14:16]), int(ts[17:19])
    try:
        if hour > 23 or minute > 59 or sec > 59:
            raise ValueError(ts)
        days = date(int(ts[0:4]), int(ts[5:7]), int(ts[8:10])).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        raise TokenCommandError(f"command field 'ts' is not a valid time: {ts!r}") from None
    return ((days * 24 + hour) * 60 + minute) * 60_000 + sec * 1000 + int(ts[20:23])


def format_millis(ms: int) -> str:
    """RFC 3339 UTC with milliseconds (the `format_ts` shape) of epoch milliseconds."""
    return format_ts(ms // 1000)[:-4] + f"{ms % 1000:03d}Z"


# ---------------------------------------------------------------------- records
@dataclass(frozen=True, slots=True)
class Token:
    """One token as the table stores it (never mutated; a revoke stores a new record)."""

    id: str
    name: str
    role: str
    namespaces: tuple[str, ...]
    hash: str
    created_at: str
    expires_at: str | None
    expires_ms: int | None
    revoked_at: str | None

    @property
    def all_namespaces(self) -> bool:
        return self.namespaces == (ALL_NAMESPACES,)

    def expired(self, now: float) -> bool:
        """True once `now` (epoch seconds, the caller's clock) reached the expiry instant."""
        return self.expires_ms is not None and now * 1000.0 >= self.expires_ms

    def public(self) -> dict[str, Any]:
        """The API view: everything but the hash."""
        return {"id": self.id, "name": self.name, "role": self.role,
                "namespaces": list(self.namespaces), "created_at": self.created_at,
                "expires_at": self.expires_at, "revoked": self.revoked_at is not None,
                "revoked_at": self.revoked_at}

    def row(self) -> dict[str, Any]:
        """The snapshot row (canonical CBOR-able)."""
        return {"id": self.id, "name": self.name, "role": self.role,
                "namespaces": list(self.namespaces), "hash": self.hash,
                "created_at": self.created_at, "expires_at": self.expires_at,
                "expires_ms": self.expires_ms, "revoked_at": self.revoked_at}

    @classmethod
    def from_row(cls, row: Any) -> Token:
        """A record from a snapshot row (exactly the keys of `row()`, each of its exact
        type: what `apply` could have stored); ValueError if anything is off."""
        if type(row) is not dict:
            raise ValueError("token row is not a map")
        if set(row) != _ROW_KEYS:
            raise ValueError(f"token row keys must be {', '.join(sorted(_ROW_KEYS))}")
        try:
            role = validate_role(row["role"])
            raw_ns = row["namespaces"]
            if type(raw_ns) is not list:
                raise ValidationError("namespaces", "must be a list")
            namespaces = validate_namespaces(role, raw_ns)
            if namespaces != raw_ns:
                raise ValidationError("namespaces", "must be sorted and unique")
            name = validate_name(row["name"])
        except ValidationError as exc:
            raise ValueError(f"token row: {exc.message}") from None
        tok = cls(id=validate_token_id(row["id"]), name=name, role=role,
                  namespaces=tuple(namespaces), hash=row["hash"], created_at=row["created_at"],
                  expires_at=row["expires_at"], expires_ms=row["expires_ms"],
                  revoked_at=row["revoked_at"])
        if type(tok.hash) is not str or not _HASH_RE.fullmatch(tok.hash):
            raise ValueError("token row: bad hash")
        ts_millis(tok.created_at)
        if tok.expires_at is None:
            if tok.expires_ms is not None:
                raise ValueError("token row: expires_ms without expires_at")
        elif type(tok.expires_ms) is not int or tok.expires_ms != ts_millis(tok.expires_at):
            raise ValueError("token row: expires_ms does not match expires_at")
        if tok.revoked_at is not None:
            ts_millis(tok.revoked_at)
        return tok


# ---------------------------------------------------------------------- the table (pure)
class TokenTable:
    """Tokens by id, with a unique-name index. Deterministic: `apply` reads no clock."""

    def __init__(self) -> None:
        self._by_id: dict[str, Token] = {}
        self._by_name: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, token_id: str) -> Token | None:
        return self._by_id.get(token_id)

    def tokens(self) -> list[Token]:
        """Every token, ordered by name."""
        return [self._by_id[self._by_name[n]] for n in sorted(self._by_name)]

    def apply(self, cmd: dict[str, Any]) -> Result:
        """Run one token command (`op` in TOKEN_OPS). Every check happens before the single
        mutation. Raises `TokenCommandError` / `ValidationError` for a malformed command
        (the caller turns both into 400 and changes nothing)."""
        op = cmd.get("op")
        ts: Any = cmd.get("ts")  # a str once ts_millis accepts it
        ts_ms = ts_millis(ts)
        token_id = validate_token_id(cmd.get("id"))
        if op == "token.create":
            return self._create(cmd, token_id, ts, ts_ms)
        if op not in ("token.revoke", "token.delete"):
            raise TokenCommandError(f"unknown token op {op!r}")
        current = self._by_id.get(token_id)
        if current is None:
            return failure(Outcome.NOT_FOUND, f"token {token_id} not found")
        if op == "token.delete":
            del self._by_id[token_id]
            del self._by_name[current.name]
            return Outcome.DELETED, {}
        if current.revoked_at is None:
            current = Token(**{**_fields(current), "revoked_at": ts})
            self._by_id[token_id] = current
        return Outcome.OK, current.public()

    def _create(self, cmd: dict[str, Any], token_id: str, ts: str, ts_ms: int) -> Result:
        name = validate_name(cmd.get("name"))
        role = validate_role(cmd.get("role"))
        namespaces = validate_namespaces(role, cmd.get("namespaces"))
        ttl = cmd.get("ttl")
        if ttl is not None and not (is_int(ttl) and MIN_TTL <= ttl <= MAX_TTL):
            raise TokenCommandError(f"command field 'ttl' must be null or {MIN_TTL}..{MAX_TTL}")
        digest = cmd.get("hash")
        if not isinstance(digest, str) or not _HASH_RE.fullmatch(digest):
            raise TokenCommandError("command field 'hash' must be 64 lowercase hex characters")
        if name in self._by_name:
            return failure(Outcome.CONFLICT, f"a token named {name} already exists")
        if token_id in self._by_id:
            return failure(Outcome.CONFLICT, f"token id {token_id} already exists")
        if len(self._by_id) >= MAX_TOKENS:
            return failure(Outcome.CONFLICT, f"the token table is full ({MAX_TOKENS} tokens); "
                                             "delete unused tokens first")
        expires_ms = None if ttl is None else ts_ms + ttl * 1000
        tok = Token(id=token_id, name=name, role=role, namespaces=tuple(namespaces),
                    hash=digest, created_at=ts,
                    expires_at=None if expires_ms is None else format_millis(expires_ms),
                    expires_ms=expires_ms, revoked_at=None)
        self._by_id[token_id] = tok
        self._by_name[name] = token_id
        return Outcome.CREATED, tok.public()

    # ------------------------------------------------------------------ snapshots
    def rows(self) -> list[dict[str, Any]]:
        """Snapshot rows, ordered by id (deterministic)."""
        return [self._by_id[i].row() for i in sorted(self._by_id)]

    @classmethod
    def from_rows(cls, rows: Any) -> TokenTable:
        """A table from `rows()`; ValueError for anything malformed or duplicated, or more
        than MAX_TOKENS rows (apply never stores more)."""
        if type(rows) is not list:
            raise ValueError("tokens must be a list")
        if len(rows) > MAX_TOKENS:
            raise ValueError(f"more than {MAX_TOKENS} tokens")
        table = cls()
        for raw in rows:
            try:
                tok = Token.from_row(raw)
            except (KeyError, TypeError, TokenCommandError) as exc:
                raise ValueError(f"bad token row: {exc}") from None
            if tok.id in table._by_id or tok.name in table._by_name:
                raise ValueError(f"duplicate token {tok.id} / {tok.name}")
            table._by_id[tok.id] = tok
            table._by_name[tok.name] = tok.id
        return table


_ROW_KEYS = frozenset({"id", "name", "role", "namespaces", "hash", "created_at", "expires_at",
                       "expires_ms", "revoked_at"})


def _fields(tok: Token) -> dict[str, Any]:
    return {f: getattr(tok, f) for f in Token.__slots__}


# ---------------------------------------------------------------------- proposer side
class TokenFactory:
    """Builds validated token commands on the API thread. `clock` (epoch seconds) and
    `random_bytes(n)` are injected (tests pass fixed ones). Every builder raises
    `ValidationError` (400) before anything is proposed."""

    def __init__(self, clock: Callable[[], float] = time.time,
                 random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> None:
        self._clock = clock
        self._random = random_bytes

    def _base(self, op: str, key: str | None, token_id: str) -> dict[str, Any]:
        return {"v": COMMAND_VERSION, "op": op,
                "key": check_key(key) if key is not None else self._random(16).hex(),
                "ts": format_ts(self._clock()), "id": token_id}

    def create(self, body: Any, *, key: str | None = None) -> tuple[dict[str, Any], str]:
        """POST /tokens: (command, secret). The secret goes only into the 201 answer."""
        if not isinstance(body, dict):
            raise ValidationError("body", "must be a JSON object")
        for field in body:
            if field not in _CREATE_FIELDS:
                raise ValidationError(str(field), "unknown field")
        if "name" not in body:
            raise ValidationError("name", "is required")
        name = validate_name(body["name"])
        if "role" not in body:
            raise ValidationError("role", f"is required (one of {', '.join(ROLES)})")
        role = validate_role(body["role"])
        namespaces = validate_namespaces(role, body.get("namespaces"))
        expires_in = body.get("expires_in")
        ttl = None if expires_in is None else parse_duration(expires_in)
        token_id = self._random(ID_BYTES).hex()
        rand = base64.urlsafe_b64encode(self._random(SECRET_BYTES)).rstrip(b"=").decode("ascii")
        secret = f"{SECRET_PREFIX}{token_id}_{rand}"
        cmd = self._base("token.create", key, token_id)
        cmd.update(name=name, role=role, namespaces=namespaces, ttl=ttl,
                   hash=secret_hash(secret))
        return cmd, secret

    def revoke(self, token_id: str, *, key: str | None = None) -> dict[str, Any]:
        """POST /tokens/{id}/revoke (the caller checked the id's shape)."""
        return self._base("token.revoke", key, token_id)

    def delete(self, token_id: str, *, key: str | None = None) -> dict[str, Any]:
        """DELETE /tokens/{id} (the caller checked the id's shape)."""
        return self._base("token.delete", key, token_id)


def is_token_id(value: str) -> bool:
    """Whether `value` has the shape of a token id (16 lowercase hex characters)."""
    return bool(_ID_RE.fullmatch(value))
