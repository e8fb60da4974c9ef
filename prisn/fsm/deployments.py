"""The deployments state machine: committed log entries in, deterministic results out.

Threads: `apply`, `restore` run on the state-machine thread; `get`, `list`, `count`,
`snapshot`, `state_hash` on the API thread (or any other). One `threading.Lock` guards all
state and is held only for the in-memory work of one call (encoding a snapshot happens outside
it). Stored deployment dicts are never mutated after they are stored (every change stores a new
dict), so references handed out stay valid; callers must not mutate them.

Determinism: `apply` reads no clock and no randomness; ids and timestamps come in the command
(`prisn.fsm.commands`). The only iteration orders that reach results or snapshots are sorted
indexes and the apply-ordered dedup table, so two stores fed the same entries have the same
`state_hash`.

Exactly-once: every command carries an idempotency `key`. The last `dedup_capacity` keys are
remembered with their result (FIFO by first apply, deterministic); a repeated key with the same
request returns the remembered result and changes nothing, with a different request it is a 422.

Tokens: the store also holds the API token table (`prisn.fsm.tokens.TokenTable`): commands
with an ``op`` of `TOKEN_OPS` go to it, under the same lock, dedup table and snapshot. A
snapshot without tokens is written exactly as before (format 1); with tokens it is format 2
(format 1 plus a ``tokens`` list). Both are read.

Memory (100k deployments held in ~150 MB, not ~350): one (name, namespace) tuple per
deployment keys `_deps` and is shared by `_ids` and every index list; a restore turns each
deployment map into its stored dict while decoding (`_RowDecoder`), so decoding leaves no
holes behind, and holds repeated strings (namespace, type, timestamps) once.
"""

from __future__ import annotations

import builtins
import gc
import hashlib
import heapq
import itertools
import sys
import threading
from collections import deque
from collections.abc import Callable, Collection, Iterable, Sequence
from http import HTTPStatus
from typing import Any

import cbor2
from sortedcontainers import SortedList

from prisn.fsm.commands import COMMAND_VERSION, CommandError, check_key, decode_entry
from prisn.fsm.tokens import TOKEN_OPS, Token, TokenCommandError, TokenTable
from prisn.fsm.validation import (
    DEFAULT_REPLICAS,
    ValidationError,
    check_consistent,
    infer_type,
    is_int,
    normalize_spec,
    validate_args,
    validate_env,
    validate_name,
    validate_port,
    validate_replicas,
    validate_runtime,
    validate_schedule,
    validate_source,
    validate_type,
)
from prisn.messages import EntryKind

SNAPSHOT_FORMAT = 1  # deployments and dedup table
SNAPSHOT_FORMAT_TOKENS = 2  # format 1 plus "tokens" (read only: no longer written)
# Format 3 (written now): format 2 with "tokens" always present, and a dedup result that is
# the deployment still stored under its name written as ``[namespace, name]`` instead of a
# second copy of the deployment (half the snapshot, half the restore, shared in memory).
SNAPSHOT_FORMAT_REFS = 3
DEFAULT_DEDUP_CAPACITY = 100_000
# The dedup table is bounded by the size of the answers it remembers too (`entry_size`):
# without it, deleting large deployments freed nothing while their create answers stayed.
# A constant, not a flag: every node must evict the same keys (deterministic replay answers).
DEFAULT_DEDUP_MAX_BYTES = 64 << 20
MAX_ID = 64
MAX_TS = 64
FINGERPRINT_LEN = 16  # bytes of a dedup fingerprint (`_fingerprint`; b"" for garbage)
MAX_INDEX = (1 << 63) - 1  # log indexes and generations in a snapshot are below this
MAX_BODY_DEPTH = 16  # nesting of a remembered result body in a snapshot

Result = tuple[int, dict[str, Any]]
Deployment = dict[str, Any]
DeploymentList = list[Deployment]  # module-level: `DeploymentStore.list` shadows `list` in the class
DedupEntry = tuple[bytes, int, dict[str, Any]]  # (fingerprint, status, body) of one key
DedupRows = list[list[Any]]
TokenRows = list[dict[str, Any]]

FIELDS: tuple[str, ...] = (
    "id", "name", "namespace", "type", "runtime", "source", "args", "env", "port", "replicas",
    "schedule", "generation", "created_at", "updated_at",
)
# Spec fields a change compares (everything but identity, generation and timestamps).
_SPEC_KEYS: tuple[str, ...] = ("type", "runtime", "source", "args", "env", "port", "replicas",
                               "schedule")
# The order cbor2's canonical encoding writes a deployment's keys in (snapshots): a dedup
# answer read back from a snapshot keeps it, as it always has.
_CANON_FIELDS: tuple[str, ...] = tuple(sorted(FIELDS, key=lambda f: (len(f), f)))
# String fields many deployments hold equal values of: one object each (see `_RowDecoder`).
_SHARED_FIELDS: tuple[str, ...] = ("namespace", "type", "runtime", "schedule", "created_at",
                                   "updated_at")
_DEFAULTS: dict[str, Any] = {"runtime": None, "args": [], "env": {}, "port": 0,
                             "replicas": DEFAULT_REPLICAS, "schedule": None}


def error_body(status: int, message: str) -> dict[str, str]:
    """The API error shape: ``{"error": <HTTP reason phrase>, "message": ...}``."""
    return {"error": HTTPStatus(status).phrase, "message": message}


def deployment_size(dep: dict[str, Any]) -> int:
    """The size a deployment (or a spec) is accounted at, in characters of its strings plus
    a fixed overhead per item: deterministic (every node computes the same from the same
    state) and cheap (no encoding). Used for namespace quotas and the dedup bound."""
    n = 64
    for f in ("id", "name", "namespace", "type", "runtime", "source", "schedule",
              "created_at", "updated_at"):
        v = dep.get(f)
        if isinstance(v, str):
            n += len(v)
    args = dep.get("args")
    if isinstance(args, list):
        n += sum(len(a) + 8 for a in args if isinstance(a, str))
    env = dep.get("env")
    if isinstance(env, dict):
        n += sum(len(k) + len(v) + 16 for k, v in env.items()
                 if isinstance(k, str) and isinstance(v, str))
    return n


def _entry_size(body: dict[str, Any]) -> int:
    """What one remembered dedup answer is accounted at: a deployment's size, else small."""
    return deployment_size(body) if "source" in body else 128


def _err(status: int, message: str) -> Result:
    return status, error_body(status, message)


def _default(field: str) -> Any:
    value = _DEFAULTS[field]
    return type(value)() if isinstance(value, list | dict) else value


_TARGET_ID_OPS = frozenset({"token.revoke", "token.delete"})  # their `id` is the target


def _fingerprint(cmd: dict[str, Any]) -> bytes:
    """What makes two commands "the same request" for deduplication: everything but the
    proposer-chosen `key`, `ts`, `id` and (token create) secret `hash`: a client retry gets
    fresh ones. For a token revoke or delete the `id` is not chosen but the target, so it
    counts (as `target`): the same key on another token is a 422, not the first answer."""
    core = {k: v for k, v in cmd.items() if k not in ("key", "ts", "id", "hash")}
    op = cmd.get("op")
    if isinstance(op, str) and op in _TARGET_ID_OPS:  # op may be any garbage (a dict)
        core["target"] = cmd.get("id")
    try:
        return hashlib.sha256(cbor2.dumps(core, canonical=True)).digest()[:FINGERPRINT_LEN]
    except Exception:  # undumpable garbage; apply refuses it anyway
        return b""


def _intern(value: str) -> str:
    """`sys.intern` for an exact str (a subclass is returned as is)."""
    return sys.intern(value) if type(value) is str else value


def _text(cmd: dict[str, Any], field: str, limit: int) -> str:
    value = cmd.get(field)
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise CommandError(f"command field {field!r} must be a string of 1 to {limit} characters")
    return value


class _Index:
    """Sorted (name, namespace) keys: overall, per namespace, per type, per (namespace, type).

    Each is a `sortedcontainers.SortedList`: insert and remove are O(log n) at any position
    (a plain list paid a memmove of the tail, which grew with the state), and a page is a
    slice, O(log n + page). The key tuples are the store's own `_deps` keys (one object per
    deployment, shared by every list that holds it).
    """

    def __init__(self) -> None:
        self.all: SortedList = SortedList()
        self.by_ns: dict[str, SortedList] = {}
        self.by_type: dict[str, SortedList] = {}
        self.by_ns_type: dict[tuple[str, str], SortedList] = {}

    def _lists(self, ns: str, typ: str) -> list[tuple[dict[Any, SortedList], Any]]:
        return [(self.by_ns, ns), (self.by_type, typ), (self.by_ns_type, (ns, typ))]

    @classmethod
    def build(cls, rows: Iterable[tuple[tuple[str, str], str]]) -> _Index:
        """An index of ((name, namespace), type) rows, built in bulk (snapshot restore)."""
        groups: dict[tuple[int, Any], list[tuple[str, str]]] = {}
        every: list[tuple[str, str]] = []
        for key, typ in rows:
            ns = key[1]
            every.append(key)
            groups.setdefault((0, ns), []).append(key)
            groups.setdefault((1, typ), []).append(key)
            groups.setdefault((2, (ns, typ)), []).append(key)
        index = cls()
        index.all = SortedList(every)
        tables = (index.by_ns, index.by_type, index.by_ns_type)
        for (which, k), keys in groups.items():
            tables[which][k] = SortedList(keys)
        return index

    def add(self, key: tuple[str, str], typ: str) -> None:
        self.all.add(key)
        for table, k in self._lists(key[1], typ):
            lst = table.get(k)
            if lst is None:
                lst = table[k] = SortedList()
            lst.add(key)

    def remove(self, key: tuple[str, str], typ: str) -> None:
        _remove_sorted(self.all, key)
        for table, k in self._lists(key[1], typ):
            lst = table[k]
            _remove_sorted(lst, key)
            if not lst:
                del table[k]

    def select(self, ns: str | None, typ: str | None) -> Sequence[tuple[str, str]]:
        if ns is None and typ is None:
            return self.all
        if typ is None:
            return self.by_ns.get(ns, _EMPTY)  # type: ignore[arg-type, return-value]
        if ns is None:
            return self.by_type.get(typ, _EMPTY)
        return self.by_ns_type.get((ns, typ), _EMPTY)


_EMPTY: SortedList = SortedList()


def _remove_sorted(lst: SortedList, key: tuple[str, str]) -> None:
    try:
        lst.remove(key)
    except ValueError:
        raise AssertionError(f"index lost {key}") from None


class DeploymentStore:
    """Deployments keyed by (namespace, name), with a global id index and dedup table."""

    def __init__(self, *, dedup_capacity: int = DEFAULT_DEDUP_CAPACITY,
                 dedup_max_bytes: int = DEFAULT_DEDUP_MAX_BYTES) -> None:
        if dedup_capacity < 1 or dedup_max_bytes < 1:
            raise ValueError("dedup_capacity and dedup_max_bytes must be positive")
        self._lock = threading.Lock()
        self._capacity = dedup_capacity
        self._max_bytes = dedup_max_bytes
        self._dedup_bytes = 0  # sum of `_entry_size` over the dedup table
        # namespace -> [deployments, bytes (deployment_size)]: derived, never in snapshots
        self._usage: dict[str, list[int]] = {}
        # (name, namespace) -> deployment; the key tuple is shared with `_ids` and `_index`
        self._deps: dict[tuple[str, str], Deployment] = {}
        self._ids: dict[str, tuple[str, str]] = {}
        self._index = _Index()
        # key -> (fingerprint, status, body); insertion order is apply order, and
        # `_dedup_order` holds the same keys in the same order (O(1) eviction of the oldest).
        self._dedup: dict[str, DedupEntry] = {}
        self._dedup_order: deque[str] = deque()
        self._tokens = TokenTable()
        self._applied = 0
        self.last_origin: tuple[str, int] = ("", 0)  # of the last COMMAND applied (see apply)

    # ------------------------------------------------------------------ apply (SM thread)
    @property
    def applied_index(self) -> int:
        """Index of the last applied entry (0 before any)."""
        return self._applied

    def apply(self, index: int, kind: int, data: bytes) -> Result | None:
        """Apply the committed entry `index`; the result for a COMMAND, else None.

        After a COMMAND, `last_origin` is its (origin node, request id), ("", 0) if the
        entry does not decode: the fsm actor answers its own proposals with it without
        decoding the entry a second time.

        Entries at or below `applied_index` are skipped (None): replay after a restart is
        harmless. A gap (index > applied + 1) is a wiring bug and raises ValueError. Bad
        command data never raises: it is a (400, error) result and changes nothing.
        """
        with self._lock:
            if index <= self._applied:
                return None
            if index != self._applied + 1:
                raise ValueError(f"apply gap: applied {self._applied}, got entry {index}")
            self._applied = index
            if kind != EntryKind.COMMAND:
                return None
            try:
                origin, rid, cmd = decode_entry(data)
            except CommandError as exc:
                self.last_origin = ("", 0)
                return _err(400, str(exc))
            self.last_origin = (origin, rid)
            return self._apply_command(cmd)

    def _apply_command(self, cmd: dict[str, Any]) -> Result:
        try:
            key = check_key(cmd.get("key"))
        except ValidationError as exc:
            return _err(400, f"command {exc.message}")
        fp = _fingerprint(cmd)
        seen = self._dedup.get(key)
        if seen is not None:
            if seen[0] != fp:
                return _err(422, "Idempotency-Key was already used for a different request")
            return seen[1], seen[2]
        try:
            result = self._execute(cmd)
        except ValidationError as exc:
            result = _err(400, exc.message)
        except (CommandError, TokenCommandError) as exc:
            result = _err(400, str(exc))
        except Exception as exc:  # a bug must not become a poison pill for every node
            result = _err(500, f"internal error applying command: {type(exc).__name__}")
        self._dedup[key] = (fp, result[0], result[1])
        self._dedup_order.append(key)
        self._dedup_bytes += _entry_size(result[1])
        self._trim_dedup()
        return result

    def _trim_dedup(self) -> None:
        """Evict the oldest keys while over the count or the byte bound (the newest stays).
        The table is then the longest suffix of applied keys within both bounds, so a store
        restored from a snapshot and trimmed holds the same keys as one that applied."""
        order, dedup = self._dedup_order, self._dedup
        while len(order) > self._capacity or (self._dedup_bytes > self._max_bytes
                                              and len(order) > 1):
            self._dedup_bytes -= _entry_size(dedup.pop(order.popleft())[2])

    def _execute(self, cmd: dict[str, Any]) -> Result:
        """Run one command. Every check happens before the single mutation at the end."""
        if cmd.get("v") != COMMAND_VERSION:
            raise CommandError(f"unsupported command version {cmd.get('v')!r}")
        op = cmd.get("op")
        if op in TOKEN_OPS:
            return self._tokens.apply(cmd)
        spec: dict[str, Any] = {}
        replicas = 0
        ts = _text(cmd, "ts", MAX_TS)
        ns = _intern(validate_name(cmd.get("ns"), "namespace"))  # few distinct: one object
        name = validate_name(cmd.get("name"))
        current = self._deps.get((name, ns))
        if op == "create":
            dep_id = _text(cmd, "id", MAX_ID)
            spec = normalize_spec({**_spec_of(cmd), "name": name}, partial=False)
            if current is not None:
                return _err(409, f"deployment {ns}/{name} already exists")
            if dep_id in self._ids:
                return _err(409, f"deployment id {dep_id} already exists")
            dep = _build(spec, None)
            dep.update(id=dep_id, name=name, namespace=ns, generation=1, created_at=ts,
                       updated_at=ts)
            check_consistent(dep)
            dep = {f: dep[f] for f in FIELDS}
            self._insert(dep)
            return 201, dep
        if op not in ("replace", "patch", "scale", "delete"):
            raise CommandError(f"unknown command op {op!r}")
        if op == "replace":
            spec = normalize_spec({**_spec_of(cmd), "name": name}, partial=False)
        elif op == "patch":
            spec = normalize_spec(_spec_of(cmd), partial=True)
            if "name" in spec or "namespace" in spec:
                raise CommandError("a patch command must not carry name or namespace")
        elif op == "scale":
            replicas = validate_replicas(cmd.get("replicas"))
        if current is None:
            return _err(404, f"deployment {ns}/{name} not found")
        if op == "delete":
            self._remove(current)
            return 204, {}
        if op == "replace":
            new = _build(spec, None)
        elif op == "patch":
            new = _build(spec, current)
        else:
            new = {k: current[k] for k in _SPEC_KEYS}
            new["replicas"] = replicas
        check_consistent(new)
        if all(new[k] == current[k] for k in _SPEC_KEYS):
            return 200, current
        dep = {**current, **{k: new[k] for k in _SPEC_KEYS}}
        dep["generation"] = current["generation"] + 1
        dep["updated_at"] = ts
        self._replace(current, dep)
        return 200, dep

    def _insert(self, dep: dict[str, Any]) -> None:
        key = (dep["name"], dep["namespace"])
        self._deps[key] = dep
        self._ids[dep["id"]] = key
        self._index.add(key, dep["type"])
        _account(self._usage, dep, 1)

    def _remove(self, dep: dict[str, Any]) -> None:
        key = self._ids.pop(dep["id"])
        del self._deps[key]
        self._index.remove(key, dep["type"])
        _account(self._usage, dep, -1)

    def _replace(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        key = self._ids[new["id"]]
        self._deps[key] = new
        _account(self._usage, old, -1)
        _account(self._usage, new, 1)
        if old["type"] != new["type"]:
            self._index.remove(key, old["type"])
            self._index.add(key, new["type"])

    # ------------------------------------------------------------------ queries (any thread)
    def get(self, namespace: str | None, name_or_id: str) -> dict[str, Any] | None:
        """By name in `namespace` (``default`` when None), else by id (in `namespace` if given)."""
        with self._lock:
            dep = self._deps.get((name_or_id, namespace or "default"))
            if dep is None:
                key = self._ids.get(name_or_id)
                if key is not None and (namespace is None or key[1] == namespace):
                    dep = self._deps[key]
        return dict(dep) if dep is not None else None

    def list(self, namespace: str | None = None, type: str | None = None,
             limit: int = 100, offset: int = 0, *,
             namespaces: Collection[str] | None = None) -> tuple[DeploymentList, int]:
        """A page ordered by name, then namespace, and the total matching. O(limit + log n).

        `namespaces` (used when `namespace` is None) restricts the listing to those
        namespaces: the page is a merge of their sorted indexes, O((offset + limit) log k)."""
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        with self._lock:
            if namespace is None and namespaces is not None:
                lists = [self._index.select(ns, type) for ns in sorted(set(namespaces))]
                lists = [lst for lst in lists if lst]
                total = sum(len(lst) for lst in lists)
                merged = heapq.merge(*lists)
                keys: Sequence[tuple[str, str]] = list(
                    itertools.islice(merged, offset, offset + limit))
            else:
                selected = self._index.select(namespace, type)
                total = len(selected)
                keys = selected[offset:offset + limit]
            deps = self._deps
            page = [deps[key] for key in keys]
        return [dict(d) for d in page], total

    def count(self) -> int:
        """Number of deployments."""
        return len(self._deps)

    def usage(self, namespace: str) -> tuple[int, int]:
        """(deployments, accounted bytes) in `namespace` (quotas; any thread)."""
        with self._lock:
            u = self._usage.get(namespace)
            return (u[0], u[1]) if u else (0, 0)

    def dedup_usage(self) -> tuple[int, int]:
        """(remembered keys, accounted bytes) of the dedup table."""
        with self._lock:
            return len(self._dedup_order), self._dedup_bytes

    def token(self, token_id: str) -> Token | None:
        """The token record with this id, or None (immutable; one dict lookup)."""
        with self._lock:
            return self._tokens.get(token_id)

    def tokens(self) -> builtins.list[Token]:
        """Every token record, ordered by name."""
        with self._lock:
            return self._tokens.tokens()

    def token_count(self) -> int:
        return len(self._tokens)

    # ------------------------------------------------------------------ snapshots
    def _state(self, refs: bool = True) -> tuple[int, DeploymentList, DedupRows, TokenRows]:
        """A consistent copy: `refs` writes unchanged dedup answers as references (snapshot
        format 3), else every answer in full (the state hash must not depend on that)."""
        with self._lock:
            deps = [self._deps[key] for key in self._index.all]
            current = self._deps
            if refs:
                dedup = [[k, fp, st, _body_ref(body, current)]
                         for k, (fp, st, body) in self._dedup.items()]
            else:
                dedup = [[k, fp, st, body] for k, (fp, st, body) in self._dedup.items()]
            return self._applied, deps, dedup, self._tokens.rows()

    @staticmethod
    def _encode(applied: int, deps: DeploymentList, dedup: DedupRows,
                tokens: TokenRows) -> bytes:
        snap: dict[str, Any] = {"format": SNAPSHOT_FORMAT_REFS, "applied": applied,
                                "deployments": deps, "dedup": dedup, "tokens": tokens}
        return cbor2.dumps(snap, canonical=True)

    def snapshot(self) -> bytes:
        """Deterministic CBOR of the whole state, with format number and applied index."""
        return self._encode(*self._state())

    def snapshot_capture(self) -> tuple[int, Callable[[], bytes]]:
        """(applied index, encoder): a consistent copy taken under the lock, cheap because it
        only copies references (applying replaces deployment rows and dedup results, never
        mutates them), and a function that encodes it exactly like `snapshot()` from any
        thread, so the state machine can write snapshots without stalling apply."""
        applied, deps, dedup, tokens = self._state()

        def encode() -> bytes:
            return self._encode(applied, deps, dedup, tokens)

        return applied, encode

    def restore(self, data: bytes) -> None:
        """Replace the whole state by a `snapshot()`; ValueError (state untouched) if invalid."""
        self.prepare_restore(data)()

    def prepare_restore(self, data: bytes) -> Callable[[], None]:
        """Parse and check a `snapshot()` completely without touching the state; return the
        function that installs it (it cannot fail). ValueError, and only that, for anything
        a `snapshot()` of this store could not hold: every value is checked for its exact
        type (ints are ints, not floats or bools; strings are strings; a fingerprint is
        bytes of the fingerprint length) and range, as `apply` would have stored it.

        The cyclic collector is paused while parsing (the state has no cycles; `gc` is left
        as it was found). State-machine thread, or the main thread before the actors start
        (the parse reads no state; the install takes the lock)."""
        rows = _RowDecoder()
        # Neither the decoded tree nor the state has cycles: the collector would only walk
        # the growing tree again and again (it more than doubled the time of a large restore).
        collect = gc.isenabled()
        gc.disable()
        try:
            try:
                snap = cbor2.loads(data, object_hook=rows)
            except Exception as exc:  # noqa: BLE001 - cbor2 raises several types on garbage
                raise ValueError(f"snapshot is not CBOR: {exc}") from None
            try:
                state = _parse_snapshot(snap, self._capacity, rows)
            except ValidationError as exc:
                raise ValueError(f"invalid snapshot: {exc.message}") from None
            except ValueError as exc:
                raise ValueError(f"invalid snapshot: {exc}") from None
            finally:
                del snap, rows
        finally:
            if collect:
                gc.enable()

        usage: dict[str, list[int]] = {}
        for dep in state[0].values():
            _account(usage, dep, 1)
        dedup_bytes = sum(_entry_size(e[2]) for e in state[3].values())

        def install() -> None:
            with self._lock:
                (self._deps, self._ids, self._index, self._dedup, self._dedup_order,
                 self._applied, self._tokens) = state
                self._usage, self._dedup_bytes = usage, dedup_bytes
                self._trim_dedup()  # a snapshot of an older version may hold more

        return install

    def state_hash(self) -> str:
        """SHA-256 hex of the deployments, dedup table and tokens (not the applied index),
        for comparing nodes that have applied the same entries."""
        _applied, deps, dedup, tokens = self._state(refs=False)
        state: dict[str, Any] = {"deployments": deps, "dedup": dedup}
        if tokens:
            state["tokens"] = tokens
        blob = cbor2.dumps(state, canonical=True)
        return hashlib.sha256(blob).hexdigest()


_ParsedState = tuple[dict[tuple[str, str], Deployment], dict[str, tuple[str, str]], _Index,
                     dict[str, DedupEntry], deque[str], int, TokenTable]
_TOP_KEYS = {SNAPSHOT_FORMAT: frozenset({"format", "applied", "deployments", "dedup"}),
             SNAPSHOT_FORMAT_REFS: frozenset({"format", "applied", "deployments", "dedup",
                                              "tokens"}),
             SNAPSHOT_FORMAT_TOKENS: frozenset({"format", "applied", "deployments", "dedup",
                                                "tokens"})}
_ROW_KEYS = frozenset(FIELDS)


def _account(usage: dict[str, list[int]], dep: dict[str, Any], sign: int) -> None:
    u = usage.get(dep["namespace"])
    if u is None:
        u = usage[dep["namespace"]] = [0, 0]
    u[0] += sign
    u[1] += sign * deployment_size(dep)
    if u[0] == 0:
        del usage[dep["namespace"]]


def _body_ref(body: dict[str, Any], current: dict[tuple[str, str], Deployment]) -> Any:
    """A dedup result as written to a snapshot: ``[namespace, name]`` when it is the very
    deployment object stored under that name now (a create's or update's answer that nothing
    changed since), else the body itself."""
    ns, name = body.get("namespace"), body.get("name")
    if type(ns) is str and type(name) is str and current.get((name, ns)) is body:
        return [ns, name]
    return body


def _resolve_ref(ref: list, deps: dict[tuple[str, str], Deployment]) -> Deployment:
    """The deployment a format-3 dedup reference names; ValueError if it names none."""
    if len(ref) != 2 or type(ref[0]) is not str or type(ref[1]) is not str:
        raise ValueError("a dedup reference must be [namespace, name]")
    dep = deps.get((ref[1], ref[0]))
    if dep is None:
        raise ValueError(f"dedup reference to a missing deployment {ref[0]:.63}/{ref[1]:.63}")
    return dep


class _RowDecoder:
    """The cbor2 ``object_hook`` of one restore (state-machine thread; one object per call).

    Every map with exactly the deployment keys becomes, as soon as it is decoded, a new dict
    in `FIELDS` order whose `_SHARED_FIELDS` strings are one object per distinct value. The
    decoded map and its 14 fresh key strings are then freed at once and their memory reused
    by the next row (kept until the end of the parse, they left ~170 MB of pymalloc holes
    behind a 100k-deployment restore). `odd` keeps the wire key order of such a map when it
    was not the canonical one (never, for a snapshot this store wrote), so that a dedup answer
    reads back exactly as before (`_read_body`). Pure apart from its own tables.
    """

    __slots__ = ("odd", "shared")

    def __init__(self) -> None:
        self.shared: dict[str, str] = {}
        self.odd: dict[int, tuple[Deployment, tuple[Any, ...]]] = {}

    def __call__(self, first: Any, second: Any) -> Any:
        # cbor2 < 6 passes (decoder, dict); cbor2 >= 6 passes (mapping, immutable)
        raw = first if type(second) is bool else second
        if type(raw) is not dict or len(raw) != len(FIELDS) or raw.keys() != _ROW_KEYS:
            return raw
        dep = {f: raw[f] for f in FIELDS}
        shared = self.shared
        for f in _SHARED_FIELDS:
            value = dep[f]
            if type(value) is str:
                dep[f] = shared.setdefault(value, value)
        order = tuple(raw)
        if order != _CANON_FIELDS:
            self.odd[id(dep)] = (dep, order)  # holds `dep`: its id stays unique
        return dep

    def wire_order(self, dep: Deployment) -> tuple[Any, ...]:
        """The key order the map `dep` was decoded from had."""
        entry = self.odd.get(id(dep))
        return entry[1] if entry is not None and entry[0] is dep else _CANON_FIELDS


def _parse_snapshot(snap: Any, capacity: int, rows_hook: _RowDecoder | None = None
                    ) -> _ParsedState:
    """The state a snapshot map holds, checked (see `DeploymentStore.prepare_restore`);
    ValueError (ValidationError is one) for anything else. `rows_hook` is the `_RowDecoder`
    `snap` was decoded with, if any. Pure."""
    hook = rows_hook if rows_hook is not None else _RowDecoder()
    if type(snap) is not dict:
        raise ValueError("not a map")
    fmt = snap.get("format")
    if type(fmt) is not int or fmt not in _TOP_KEYS:
        raise ValueError(f"unsupported snapshot format {fmt!r:.40}")
    if set(snap) != _TOP_KEYS[fmt]:
        raise ValueError(f"format {fmt} keys must be {', '.join(sorted(_TOP_KEYS[fmt]))}")
    applied = snap["applied"]
    if not is_int(applied) or not 0 <= applied <= MAX_INDEX:
        raise ValueError(f"applied must be an integer 0..{MAX_INDEX}")
    rows, dedup_rows = snap["deployments"], snap["dedup"]
    if type(rows) is not list or type(dedup_rows) is not list:
        raise ValueError("deployments and dedup must be lists")
    deps: dict[tuple[str, str], Deployment] = {}
    ids: dict[str, tuple[str, str]] = {}
    for raw in rows:
        dep = _parse_deployment(raw)
        key = (dep["name"], dep["namespace"])
        if key in deps or dep["id"] in ids:
            raise ValueError(f"deployment {key[1]}/{key[0]} (id {dep['id']}) is a duplicate")
        deps[key] = dep
        ids[dep["id"]] = key
    index = _Index.build((key, dep["type"]) for key, dep in deps.items())
    dedup: dict[str, DedupEntry] = {}
    for row in dedup_rows:
        if type(row) is not list or len(row) != 4:
            raise ValueError("a dedup row is not [key, fingerprint, status, body]")
        k, fp, status, body = row
        key_ = check_key(k)
        if type(fp) is not bytes or len(fp) not in (0, FINGERPRINT_LEN):
            raise ValueError(f"dedup fingerprint must be {FINGERPRINT_LEN} bytes")
        if not is_int(status) or not 100 <= status <= 599:
            raise ValueError("dedup status must be an HTTP status code")
        if fmt == SNAPSHOT_FORMAT_REFS and type(body) is list:
            body = _resolve_ref(body, deps)
        elif type(body) is not dict:
            raise ValueError("dedup result body must be a map")
        else:
            body = _read_body(body, 0, hook)
        if key_ in dedup:
            raise ValueError(f"duplicate dedup key {key_!r:.80}")
        dedup[key_] = (fp, status, body)
    order = deque(dedup)
    while len(order) > capacity:
        del dedup[order.popleft()]
    tokens = TokenTable.from_rows(snap["tokens"]) if "tokens" in snap else TokenTable()
    return deps, ids, index, dedup, order, applied, tokens


def _parse_deployment(raw: Any) -> Deployment:
    """One snapshot row: exactly `FIELDS`, each as `apply` stores it. Pure."""
    if type(raw) is not dict or raw.keys() != _ROW_KEYS:
        raise ValueError(f"a deployment row must be a map of {', '.join(FIELDS)}")
    # a `_RowDecoder` row is already a new dict in FIELDS order (and nothing else holds it)
    dep = raw if tuple(raw) == FIELDS else {f: raw[f] for f in FIELDS}
    validate_name(dep["name"])
    validate_name(dep["namespace"], "namespace")
    validate_type(dep["type"])
    validate_source(dep["source"])
    validate_args(dep["args"])
    validate_env(dep["env"])
    validate_port(dep["port"])
    validate_replicas(dep["replicas"])
    if dep["runtime"] is not None:
        validate_runtime(dep["runtime"])
    if dep["schedule"] is not None:
        validate_schedule(dep["schedule"])
    check_consistent(dep)
    for field, limit in (("id", MAX_ID), ("created_at", MAX_TS), ("updated_at", MAX_TS)):
        value = dep[field]
        if type(value) is not str or not 0 < len(value) <= limit:
            raise ValueError(f"deployment {field} must be a string of 1 to {limit} characters")
    if not is_int(dep["generation"]) or not 1 <= dep["generation"] <= MAX_INDEX:
        raise ValueError(f"deployment generation must be an integer 1..{MAX_INDEX}")
    return dep


def _read_body(value: Any, depth: int, hook: _RowDecoder) -> Any:
    """A remembered result body as decoded, checked: it holds only what results hold (maps
    with string keys, lists, strings, integers, booleans and null, nested at most
    MAX_BODY_DEPTH deep). A deployment-shaped map, which `hook` reordered, is given back a
    new dict in its wire key order (the order a restored answer has always had)."""
    if depth > MAX_BODY_DEPTH:
        raise ValueError("dedup result body is nested too deeply")
    t = type(value)
    if t is dict:
        if len(value) == len(FIELDS) and value.keys() == _ROW_KEYS:
            value = {k: value[k] for k in hook.wire_order(value)}
        for k, v in value.items():
            if type(k) is not str:
                raise ValueError("dedup result body has a non-string key")
            new = _read_body(v, depth + 1, hook)
            if new is not v:
                value[k] = new  # same key: the size does not change while iterating
    elif t is list:
        for i, v in enumerate(value):
            new = _read_body(v, depth + 1, hook)
            if new is not v:
                value[i] = new
    elif t not in (str, int, bool, type(None)):
        raise ValueError(f"dedup result body holds a {t.__name__}")
    return value


def _spec_of(cmd: dict[str, Any]) -> dict[str, Any]:
    spec = cmd.get("spec")
    if not isinstance(spec, dict):
        raise CommandError("command field 'spec' must be a map")
    return spec


def _build(spec: dict[str, Any], current: dict[str, Any] | None) -> dict[str, Any]:
    """The spec fields of a deployment: `current` (or defaults) overlaid with `spec`.

    `None` in `spec` resets to the default. `type` absent from a full spec is inferred; absent
    from a patch it is kept unless the patch touches `schedule` or `port`, then re-inferred.
    """
    out: dict[str, Any] = {}
    for field in _DEFAULTS:
        if field in spec:
            value = spec[field]
            out[field] = _default(field) if value is None else value
        elif current is not None:
            out[field] = current[field]
        else:
            out[field] = _default(field)
    out["source"] = spec["source"] if "source" in spec else current["source"]  # type: ignore[index]
    typ = spec.get("type")
    if typ is None:
        if current is not None and "type" not in spec and not ({"schedule", "port"} & spec.keys()):
            typ = current["type"]
        else:
            typ = infer_type(out["schedule"], out["port"])
    out["type"] = typ
    return out
