"""The replicated secrets table: named maps of values, by (namespace, name) (pure).

Commands (inside the log entry payload; `v` is `COMMAND_VERSION`, `T` the proposer's RFC 3339
timestamp with milliseconds; built by `SecretFactory` on the API thread):

    {"v": 1, "op": "secret.create", "key": K, "ts": T, "id": ID, "ns": NS, "name": N,
     "data": {KEY: VALUE, ...}, "digest": D}
    {"v": 1, "op": "secret.update", "key": K, "ts": T, "ns": NS, "name": N,
     "data": {KEY: VALUE, ...}, "digest": D}                        (rotate: replaces data)
    {"v": 1, "op": "secret.delete", "key": K, "ts": T, "ns": NS, "name": N}

A VALUE is a str (stored in plain text: no cluster key) or bytes (a sealed envelope made by the
proposer, `prisn.secretbox`); the table stores either as it comes and never decrypts. `D` is
the 16-byte request digest of the plain values (`prisn.secretbox.seal_data`): the dedup
fingerprint of a secret command counts `digest` instead of `data` (`DeploymentStore`), so a
retry with the same Idempotency-Key (fresh nonces) gets the first answer, and one with other
values is a 422.

Answers never hold a value: ``{id, name, namespace, keys, version, created_at, updated_at}``
(201 create, 200 update, 204 delete). An update bumps `version` (1 at create). Deleting a
secret that a deployment names is a 409 (deployments name only secrets that exist: a
deployment write naming a missing one is a 400, `check_refs`), so `secret_env` never misses.

Bounds (constants, not flags: every node must refuse the same commands): at most `MAX_KEYS`
keys per secret and `MAX_VALUE_BYTES` per value (UTF-8), `MAX_SECRET_BYTES` per secret (413);
at most `MAX_PER_NAMESPACE` secrets per namespace and `MAX_SECRETS` in all (507).

Threads: no lock of its own; `DeploymentStore` calls it under the store's lock (apply on the
state-machine thread, lookups on the API thread). Stored `Secret` records are immutable.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prisn.fsm.commands import COMMAND_VERSION, check_key, format_ts, new_id
from prisn.fsm.results import Result, failure
from prisn.fsm.tokens import TokenCommandError, ts_millis
from prisn.fsm.validation import DEFAULT_NAMESPACE, ValidationError, is_int, validate_name
from prisn.outcomes import Outcome
from prisn.secretbox import DIGEST_BYTES, OVERHEAD, Opener, SecretBox, Stored, seal_data

SECRET_OPS: tuple[str, ...] = ("secret.create", "secret.update", "secret.delete")
MAX_KEYS = 64
MAX_KEY_NAME = 255
MAX_VALUE_BYTES = 64 << 10
MAX_SECRET_BYTES = 256 << 10
MAX_PER_NAMESPACE = 1000
MAX_SECRETS = 10_000
MAX_ID = 64
MAX_TS = 64
MAX_VERSION = (1 << 63) - 1
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BODY_FIELDS = frozenset({"name", "namespace", "data"})

SecretKey = tuple[str, str]  # (namespace, name)


class SecretCommandError(ValueError):
    """A malformed secret command in the log (400; changes nothing)."""


class SecretError(LookupError):
    """`secret_env` was asked for a secret that is not stored (its message names it)."""


@dataclass(frozen=True, slots=True)
class Secret:
    """One stored secret. `data` maps each key to its stored value (str plain, bytes sealed);
    never mutated (an update stores a new record)."""

    id: str
    namespace: str
    name: str
    version: int
    created_at: str
    updated_at: str
    data: Mapping[str, Stored]

    @property
    def encrypted(self) -> bool:
        return any(type(v) is bytes for v in self.data.values())

    def public(self) -> dict[str, Any]:
        """The API shape without values (list and write answers)."""
        return {"id": self.id, "name": self.name, "namespace": self.namespace,
                "keys": sorted(self.data), "version": self.version,
                "created_at": self.created_at, "updated_at": self.updated_at}


# ---------------------------------------------------------------------- validation (pure)
def validate_key(key: Any) -> str:
    """A secret key: an environment variable name, 1..255 characters."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_NAME or not _KEY_RE.fullmatch(key):
        raise ValidationError("data", f"key {str(key)[:80]!r} must match ^[A-Za-z_][A-Za-z0-9_]*$ "
                              f"(at most {MAX_KEY_NAME} characters)")
    return key


class TooLarge(ValidationError):
    """A secret over a size bound (413)."""


def validate_data(data: Any) -> dict[str, str]:
    """Plain request values: a non-empty map of keys to strings without NUL, within the
    bounds (`TooLarge` past them, ValidationError otherwise). Proposer side."""
    if not isinstance(data, dict) or not data:
        raise ValidationError("data", "must be a non-empty object of string values")
    if len(data) > MAX_KEYS:
        raise TooLarge("data", f"a secret holds at most {MAX_KEYS} keys, not {len(data)}")
    total = 0
    for k, v in data.items():
        validate_key(k)
        if not isinstance(v, str):
            raise ValidationError("data", f"value of {k} must be a string")
        if "\x00" in v:
            raise ValidationError("data", f"value of {k} must not contain NUL (\\0)")
        size = len(v.encode("utf-8", "surrogatepass"))
        if size > MAX_VALUE_BYTES:
            raise TooLarge("data", f"value of {k} is {size} bytes, over the limit of "
                           f"{MAX_VALUE_BYTES} bytes")
        total += size
    if total > MAX_SECRET_BYTES:
        raise TooLarge("data", f"the secret's values take {total} bytes, over the limit of "
                       f"{MAX_SECRET_BYTES} bytes")
    return dict(data)


def _stored_data(data: Any) -> dict[str, Stored]:
    """Command (or snapshot) values: keys valid, values str or bytes within the bounds plus
    the envelope overhead. SecretCommandError for a malformed map; `TooLarge` past a bound."""
    if not isinstance(data, dict) or not data:
        raise SecretCommandError("command field 'data' must be a non-empty map")
    if len(data) > MAX_KEYS:
        raise TooLarge("data", f"a secret holds at most {MAX_KEYS} keys, not {len(data)}")
    total = 0
    for k, v in data.items():
        try:
            validate_key(k)
        except ValidationError as exc:
            raise SecretCommandError(exc.message) from None
        if type(v) is str:
            size = len(v.encode("utf-8", "surrogatepass"))
        elif type(v) is bytes:
            size = len(v) - OVERHEAD
        else:
            raise SecretCommandError(f"value of {k} must be a string or sealed bytes")
        if size > MAX_VALUE_BYTES:
            raise TooLarge("data", f"value of {k} is {size} bytes, over the limit of "
                           f"{MAX_VALUE_BYTES} bytes")
        total += max(size, 0)
    if total > MAX_SECRET_BYTES:
        raise TooLarge("data", f"the secret's values take {total} bytes, over the limit of "
                       f"{MAX_SECRET_BYTES} bytes")
    return {k: data[k] for k in sorted(data)}


def _text(cmd: dict[str, Any], field: str, limit: int) -> str:
    value = cmd.get(field)
    if type(value) is not str or not 0 < len(value) <= limit:
        raise SecretCommandError(f"command field {field!r} must be a string of 1 to {limit} "
                                 "characters")
    return value


class SecretTable:
    """Secrets by (namespace, name), with per-namespace counts and deployment references."""

    def __init__(self) -> None:
        self._rows: dict[SecretKey, Secret] = {}
        self._per_ns: dict[str, int] = {}
        self._refs: dict[SecretKey, int] = {}  # deployments naming it (only > 0 kept)

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, namespace: str, name: str) -> Secret | None:
        return self._rows.get((namespace, name))

    def count(self, namespace: str) -> int:
        return self._per_ns.get(namespace, 0)

    def page(self, namespaces: Iterable[str] | None, limit: int,
             offset: int) -> tuple[list[Secret], int]:
        """Secrets ordered by (namespace, name), only in `namespaces` if given; the total."""
        keys = sorted(self._rows)
        if namespaces is not None:
            allowed = set(namespaces)
            keys = [k for k in keys if k[0] in allowed]
        return [self._rows[k] for k in keys[offset:offset + limit]], len(keys)

    # ------------------------------------------------------------------ references
    def check_refs(self, namespace: str, names: Iterable[str]) -> None:
        """ValidationError (400) naming the first secret of `names` not stored in
        `namespace` (a deployment write that lists it)."""
        for name in names:
            if (namespace, name) not in self._rows:
                raise ValidationError("secrets", f"secret {namespace}/{name} does not exist; "
                                      "create it first (POST /api/v1/secrets)")

    def ref(self, namespace: str, names: Iterable[str] | None, delta: int) -> None:
        """A deployment listing `names` was stored (+1) or removed (-1)."""
        for name in names or ():
            key = (namespace, name)
            n = self._refs.get(key, 0) + delta
            if n < 0 or key not in self._rows:
                raise AssertionError(f"secret reference count of {namespace}/{name} broken")
            if n:
                self._refs[key] = n
            else:
                self._refs.pop(key, None)

    # ------------------------------------------------------------------ apply
    def apply(self, cmd: dict[str, Any]) -> Result:
        """Run one secret command (see the module docstring). Every check happens before
        the single mutation. SecretCommandError for a malformed command."""
        op = cmd.get("op")
        if op not in SECRET_OPS:
            raise SecretCommandError(f"unknown secret op {op!r:.40}")
        ts = _text(cmd, "ts", MAX_TS)
        try:
            ts_millis(ts)
        except TokenCommandError as exc:
            raise SecretCommandError(str(exc)) from None
        try:
            ns = validate_name(cmd.get("ns"), "namespace")
            name = validate_name(cmd.get("name"))
        except ValidationError as exc:
            raise SecretCommandError(f"command {exc.message}") from None
        key = (ns, name)
        current = self._rows.get(key)
        if op == "secret.delete":
            if current is None:
                return failure(Outcome.NOT_FOUND, f"secret {ns}/{name} not found")
            refs = self._refs.get(key, 0)
            if refs:
                return failure(Outcome.CONFLICT, f"secret {ns}/{name} is used by {refs} "
                               "deployment(s); remove it from their secrets first")
            del self._rows[key]
            self._per_ns[ns] -= 1
            if not self._per_ns[ns]:
                del self._per_ns[ns]
            return Outcome.DELETED, {}
        digest = cmd.get("digest")
        if type(digest) is not bytes or len(digest) != DIGEST_BYTES:
            raise SecretCommandError(f"command field 'digest' must be {DIGEST_BYTES} bytes")
        try:
            data = _stored_data(cmd.get("data"))
        except TooLarge as exc:
            return failure(Outcome.TOO_LARGE, exc.message)
        if op == "secret.create":
            sid = _text(cmd, "id", MAX_ID)
            if current is not None:
                return failure(Outcome.CONFLICT, f"secret {ns}/{name} already exists; rotate "
                               "it with PUT /api/v1/secrets/{name}")
            if self._per_ns.get(ns, 0) >= MAX_PER_NAMESPACE:
                return failure(Outcome.DISK_ERROR, f"namespace {ns!r} already holds "
                               f"{MAX_PER_NAMESPACE} secrets, the limit; delete some first")
            if len(self._rows) >= MAX_SECRETS:
                return failure(Outcome.DISK_ERROR, f"the cluster holds {MAX_SECRETS} secrets, "
                               "the limit; delete some first")
            new = Secret(sid, ns, name, 1, ts, ts, data)
            self._rows[key] = new
            self._per_ns[ns] = self._per_ns.get(ns, 0) + 1
            return Outcome.CREATED, new.public()
        if current is None:
            return failure(Outcome.NOT_FOUND, f"secret {ns}/{name} not found")
        new = Secret(current.id, ns, name, current.version + 1, current.created_at, ts, data)
        self._rows[key] = new
        return Outcome.OK, new.public()

    # ------------------------------------------------------------------ snapshots
    def rows(self) -> list[list[Any]]:
        """Snapshot rows ordered by (namespace, name): ``[namespace, name, id, version,
        created_at, updated_at, {key: stored value}]`` (sealed values stay sealed)."""
        return [[s.namespace, s.name, s.id, s.version, s.created_at, s.updated_at,
                 dict(s.data)] for _k, s in sorted(self._rows.items())]

    @classmethod
    def from_rows(cls, rows: Any, referenced: Mapping[SecretKey, int]) -> SecretTable:
        """A table from `rows()` and the references the restored deployments hold;
        ValueError for anything `apply` could not have stored."""
        if type(rows) is not list:
            raise ValueError("secrets must be a list")
        if len(rows) > MAX_SECRETS:
            raise ValueError(f"more than {MAX_SECRETS} secrets")
        table = cls()
        for raw in rows:
            if type(raw) is not list or len(raw) != 7:
                raise ValueError("a secret row must be [namespace, name, id, version, "
                                 "created_at, updated_at, data]")
            ns, name, sid, version, created, updated, data = raw
            try:
                validate_name(ns, "namespace")
                validate_name(name)
                stored = _stored_data(data)
            except ValidationError as exc:
                raise ValueError(f"secret row: {exc.message}") from None
            except SecretCommandError as exc:
                raise ValueError(f"secret row: {exc}") from None
            for field, value, limit in (("id", sid, MAX_ID), ("created_at", created, MAX_TS),
                                        ("updated_at", updated, MAX_TS)):
                if type(value) is not str or not 0 < len(value) <= limit:
                    raise ValueError(f"secret {field} must be a string of 1 to {limit} "
                                     "characters")
            if not is_int(version) or not 1 <= version <= MAX_VERSION:
                raise ValueError("secret version must be a positive integer")
            key = (ns, name)
            if key in table._rows:
                raise ValueError(f"secret {ns}/{name} is a duplicate")
            table._rows[key] = Secret(sid, ns, name, version, created, updated, stored)
            table._per_ns[ns] = table._per_ns.get(ns, 0) + 1
            if table._per_ns[ns] > MAX_PER_NAMESPACE:
                raise ValueError(f"namespace {ns} holds more than {MAX_PER_NAMESPACE} secrets")
        for key, n in referenced.items():
            if key not in table._rows:
                raise ValueError(f"a deployment names secret {key[0]}/{key[1]}, which is not "
                                 "stored")
            table._refs[key] = n
        return table


class SecretFactory:
    """Builds secret commands on the API thread: validates the plain values, seals them with
    `box` (None: plain text), computes the request digest. `clock` and `new_id` injected."""

    def __init__(self, box: SecretBox | None = None, clock: Callable[[], float] = time.time,
                 new_id: Callable[[], str] = new_id) -> None:
        self.box = box
        self._clock = clock
        self._new_id = new_id

    def _base(self, op: str, key: str | None, namespace: str | None,
              name: Any) -> dict[str, Any]:
        return {"v": COMMAND_VERSION, "op": op,
                "key": check_key(key) if key is not None else self._new_id(),
                "ts": format_ts(self._clock()),
                "ns": validate_name(namespace or DEFAULT_NAMESPACE, "namespace"),
                "name": validate_name(name)}

    def create(self, body: Any, *, namespace: str | None = None,
               key: str | None = None) -> dict[str, Any]:
        """``secret.create`` from a request body ``{name, namespace?, data}``; the
        ``?namespace=`` argument (if any) must agree with the body's."""
        if not isinstance(body, dict):
            raise ValidationError("body", "must be a JSON object")
        for field in body:
            if field not in _BODY_FIELDS:
                raise ValidationError(str(field)[:80], "unknown field")
        ns = body.get("namespace")
        if ns is not None and namespace is not None and ns != namespace:
            raise ValidationError("namespace", f"body says {str(ns)[:63]!r}, the query "
                                  f"{namespace!r}")
        cmd = self._base("secret.create", key, ns if ns is not None else namespace,
                         body.get("name"))
        cmd["id"] = self._new_id()
        return self._with_data(cmd, body.get("data"))

    def update(self, name: str, body: Any, *, namespace: str | None = None,
               key: str | None = None) -> dict[str, Any]:
        """``secret.update`` (rotate) from ``{data}`` (``name``/``namespace`` optional but
        must agree with the path and query)."""
        if not isinstance(body, dict):
            raise ValidationError("body", "must be a JSON object")
        for field in body:
            if field not in _BODY_FIELDS:
                raise ValidationError(str(field)[:80], "unknown field")
        if "name" in body and body["name"] != name:
            raise ValidationError("name", "must match the path (a secret cannot be renamed)")
        ns = body.get("namespace")
        if ns is not None and ns != (namespace or DEFAULT_NAMESPACE):
            raise ValidationError("namespace", "must match ?namespace= (default: default)")
        return self._with_data(self._base("secret.update", key, namespace, name),
                               body.get("data"))

    def delete(self, name: str, *, namespace: str | None = None,
               key: str | None = None) -> dict[str, Any]:
        return self._base("secret.delete", key, namespace, name)

    def _with_data(self, cmd: dict[str, Any], data: Any) -> dict[str, Any]:
        plain = validate_data(data)
        cmd["data"], cmd["digest"] = seal_data(self.box, cmd["ns"], cmd["name"], plain)
        return cmd


def secret_values(secret: Secret, decrypt: Opener) -> dict[str, str]:
    """The plain values of one secret (SecretDecryptError if one does not open)."""
    return {k: decrypt(secret.namespace, secret.name, k, v) for k, v in secret.data.items()}


def secret_env(store: Any, namespace: str, names: Iterable[str],
               decrypt: Opener) -> dict[str, str]:
    """The environment a deployment in `namespace` listing secrets `names` gets: every key
    of every named secret, in the order of `names` (a key in a later secret wins). `store`
    is a `DeploymentStore` (its `secret` lookup); `decrypt` is `prisn.secretbox.opener(box)`.
    SecretError for a secret that is not stored, SecretDecryptError for a value that does not
    open. Values may contain line breaks (PEM keys): pass them through the process
    environment, never through an env-file. Any thread."""
    env: dict[str, str] = {}
    for name in names:
        secret = store.secret(namespace, name)
        if secret is None:
            raise SecretError(f"secret {namespace}/{name} not found")
        env.update(secret_values(secret, decrypt))
    return env
