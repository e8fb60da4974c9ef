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

Placements: the store also holds the placements table (`prisn.fsm.placements`): commands
with an ``op`` of `PLACEMENT_OPS` go to it, checked against the stored deployments; a delete,
scale down or change of type drops the deployment's extra placements in the same apply. A
snapshot whose table was never used is written exactly as before (format 3); otherwise it is
format 4 (format 3 plus a ``placements`` section). Both are read.

Memory (100k deployments held in ~150 MB, not ~350): one (name, namespace) tuple per
deployment keys `_deps` and is shared by `_ids` and every index list; a restore turns each
deployment map into its stored dict while decoding (`_RowDecoder`), so decoding leaves no
holes behind, and holds repeated strings (namespace, type, timestamps) once.

Artifacts: the store also holds the artifact table (`prisn.fsm.artifacts.ArtifactTable`):
``artifact.*`` commands go to it; a deployment may name one in its optional ``artifact``
field (the key is present only when set, so deployments without one are stored, answered and
snapshotted exactly as before). Every command's `ts` then sweeps unreferenced artifacts. A
snapshot with no artifacts is format 3 as before; with artifacts it is format 4 (format 3
plus ``tables: {"artifacts": rows}``; a later table adds a key there, not a format).

Secrets: the store also holds the secrets table (`prisn.fsm.secrets.SecretTable`):
``secret.*`` commands go to it (their dedup fingerprint counts the request `digest`, not the
freshly sealed `data`). A deployment may list secrets of its namespace in its optional
``secrets`` field (present only when non-empty, after ``artifact``); each must be stored (400)
and a listed secret cannot be deleted (409). Snapshots carry the table as
``tables["secrets"]`` while secrets are stored.

Executions: ``execution.*`` and ``cron.*`` commands go to the executions table
(`prisn.fsm.executions`): job runs, cron fires (exactly one per scheduled time) and missed
runs; deleting a deployment forgets its cron mark. Its section joins ``tables`` once used.
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
from typing import Any

import cbor2
from sortedcontainers import SortedList

from prisn.fsm.artifacts import ARTIFACT_OPS, Artifact, ArtifactCommandError, ArtifactTable
from prisn.fsm.commands import (
    COMMAND_VERSION,
    CommandError,
    check_key,
    decode_entry,
    format_ts,
)
from prisn.fsm.executions import (
    EXECUTION_OPS,
    Execution,
    ExecutionCommandError,
    ExecutionTable,
)
from prisn.fsm.instances import INSTANCE_OPS, InstanceCommandError, InstanceTable, instance_id
from prisn.fsm.placements import PLACEMENT_OPS, PlacementCommandError, PlacementTable
from prisn.fsm.results import Result, failure
from prisn.fsm.secrets import SECRET_OPS, Secret, SecretCommandError, SecretTable
from prisn.fsm.tokens import TOKEN_OPS, Token, TokenCommandError, TokenTable
from prisn.fsm.validation import (
    DEFAULT_REPLICAS,
    POLICY_FIELDS,
    ValidationError,
    check_consistent,
    check_policy,
    infer_type,
    is_int,
    normalize_spec,
    policy_of,
    validate_args,
    validate_artifact,
    validate_env,
    validate_name,
    validate_port,
    validate_replicas,
    validate_runtime,
    validate_schedule,
    validate_secret_refs,
    validate_source,
    validate_type,
)
from prisn.messages import EntryKind
from prisn.outcomes import WIRE_OUTCOMES, Outcome
from prisn.workloads.model import Placement, Service, phase_of
from prisn.workloads.roll import SlotReport

SNAPSHOT_FORMAT = 1  # deployments and dedup table
SNAPSHOT_FORMAT_TOKENS = 2  # format 1 plus "tokens" (read only: no longer written)
# Format 3 (written now): format 2 with "tokens" always present, and a dedup result that is
# the deployment still stored under its name written as ``[namespace, name]`` instead of a
# second copy of the deployment (half the snapshot, half the restore, shared in memory).
SNAPSHOT_FORMAT_REFS = 3
# Format 4: format 3 plus "tables", a map of table name -> snapshot section, each written
# only when used: "artifacts" (`ArtifactTable.rows`, while artifacts are stored) and
# "placements" (`PlacementTable.section`, once the placements table was used: its seq > 0),
# "instances" and "nodes" (`InstanceTable.sections`, while they hold rows).
# A store without workloads writes format 3, byte for byte as before.
SNAPSHOT_FORMAT_TABLES = 4
SNAPSHOT_FORMAT_PLACEMENTS = SNAPSHOT_FORMAT_TABLES  # placements live in its "tables"
# "secrets" (`SecretTable.rows`, while secrets are stored) is a third key of "tables",
# "executions" (`ExecutionTable.section`, while it holds executions or cron marks) a fourth.
TABLES: frozenset[str] = frozenset({"artifacts", "placements", "secrets", "executions",
                                   "instances", "nodes"})
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

Deployment = dict[str, Any]
DeploymentList = list[Deployment]  # module-level: `DeploymentStore.list` shadows `list` in the class
DedupEntry = tuple[bytes, Outcome, dict[str, Any]]  # (fingerprint, outcome, body) of one key
DedupRows = list[list[Any]]
TokenRows = list[dict[str, Any]]
PlacementList = list[Placement]  # module-level, as DeploymentList
ServiceList = list[Service]
PlacedList = list[tuple[Placement, Deployment]]
TableRows = dict[str, Any]  # the extra tables of snapshot format 4, by name

FIELDS: tuple[str, ...] = (
    "id", "name", "namespace", "type", "runtime", "source", "args", "env", "port", "replicas",
    "schedule", "generation", "created_at", "updated_at",
)
# A deployment that names an artifact has one more key, last (absent when it names none);
# one that lists secrets has ``secrets`` after that (absent when it lists none).
FIELDS_ART: tuple[str, ...] = (*FIELDS, "artifact")
FIELDS_SEC: tuple[str, ...] = (*FIELDS, "secrets")
FIELDS_ART_SEC: tuple[str, ...] = (*FIELDS_ART, "secrets")
# Spec fields a change compares (everything but identity, generation and timestamps).
_SPEC_KEYS: tuple[str, ...] = ("type", "runtime", "source", "args", "env", "port", "replicas",
                               "schedule")
# The order cbor2's canonical encoding writes a deployment's keys in (snapshots): a dedup
# answer read back from a snapshot keeps it, as it always has.
_CANON_FIELDS: tuple[str, ...] = tuple(sorted(FIELDS, key=lambda f: (len(f), f)))
_CANON_FIELDS_ART: tuple[str, ...] = tuple(sorted(FIELDS_ART, key=lambda f: (len(f), f)))
# Run settings (`validation.POLICY_FIELDS`: retries, concurrency, timezone,
# starting_deadline) follow, each present only when not its default, in that order: a
# deployment that sets none is stored, answered and snapshotted exactly as before.
_OPTIONAL_KEYS: tuple[str, ...] = ("artifact", "secrets", *POLICY_FIELDS)
_SHAPES: dict[frozenset[str], tuple[tuple[str, ...], tuple[str, ...]]] = {
    frozenset(f): (f, tuple(sorted(f, key=lambda k: (len(k), k))))
    for f in (FIELDS + tuple(k for i, k in enumerate(_OPTIONAL_KEYS) if mask >> i & 1)
              for mask in range(1 << len(_OPTIONAL_KEYS)))}
# String fields many deployments hold equal values of: one object each (see `_RowDecoder`).
_SHARED_FIELDS: tuple[str, ...] = ("namespace", "type", "runtime", "schedule", "created_at",
                                   "updated_at")
_DEFAULTS: dict[str, Any] = {"runtime": None, "args": [], "env": {}, "port": 0,
                             "replicas": DEFAULT_REPLICAS, "schedule": None}


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


def _default(field: str) -> Any:
    value = _DEFAULTS[field]
    return type(value)() if isinstance(value, list | dict) else value


# their `id` is the target
_TARGET_ID_OPS = frozenset({"token.revoke", "token.delete", "execution.update",
                            "execution.cancel"})


def _fingerprint(cmd: dict[str, Any]) -> bytes:
    """What makes two commands "the same request" for deduplication: everything but the
    proposer-chosen `key`, `ts`, `id` and (token create) secret `hash`: a client retry gets
    fresh ones. For a token revoke or delete the `id` is not chosen but the target, so it
    counts (as `target`): the same key on another token is a 422, not the first answer."""
    core = {k: v for k, v in cmd.items() if k not in ("key", "ts", "id", "hash")}
    op = cmd.get("op")
    if isinstance(op, str) and op in SECRET_OPS:  # fresh nonces per retry: `digest` counts
        core.pop("data", None)
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
        # key -> (fingerprint, outcome, body); insertion order is apply order, and
        # `_dedup_order` holds the same keys in the same order (O(1) eviction of the oldest).
        self._dedup: dict[str, DedupEntry] = {}
        self._dedup_order: deque[str] = deque()
        self._tokens = TokenTable()
        self._placements = PlacementTable()
        self._artifacts = ArtifactTable()
        self._instances = InstanceTable()
        self._secrets = SecretTable()
        self._executions = ExecutionTable()
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
        command data never raises: it is an (INVALID, error) result and changes nothing.
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
                return failure(Outcome.INVALID, str(exc))
            self.last_origin = (origin, rid)
            return self._apply_command(cmd)

    def _apply_command(self, cmd: dict[str, Any]) -> Result:
        try:
            key = check_key(cmd.get("key"))
        except ValidationError as exc:
            return failure(Outcome.INVALID, f"command {exc.message}")
        fp = _fingerprint(cmd)
        op = cmd.get("op")
        seen = self._dedup.get(key)
        if seen is not None:
            if seen[0] != fp:
                return failure(Outcome.KEY_REUSED,
                               "Idempotency-Key was already used for a different request")
            return seen[1], seen[2]
        try:
            result = self._execute(cmd)
        except ValidationError as exc:
            result = failure(Outcome.INVALID, exc.message)
        except (CommandError, TokenCommandError, PlacementCommandError,
                ArtifactCommandError, SecretCommandError, ExecutionCommandError,
                InstanceCommandError) as exc:
            result = failure(Outcome.INVALID, str(exc))
        except Exception as exc:  # a bug must not become a poison pill for every node
            result = failure(Outcome.INTERNAL_ERROR,
                             f"internal error applying command: {type(exc).__name__}")
        # after every command: deterministic GC (unfinished ad-hoc runs pin their artifacts)
        self._artifacts.sweep(cmd.get("ts"), self._executions.pins)
        if not (type(op) is str and op in _NO_PLACEMENT_CHANGE):  # rows of unplaced: gone
            self._instances.prune(self._placements.get)
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
        if op in PLACEMENT_OPS:
            return self._placements.apply(cmd, self._lookup)
        if op in ARTIFACT_OPS:
            return self._artifacts.apply(cmd, self._executions.pins)
        if op in SECRET_OPS:
            return self._secrets.apply(cmd)
        if op in EXECUTION_OPS:
            return self._executions.apply(cmd, self._lookup, self._lookup_id,
                                          self._artifacts.check_entry)
        if op in INSTANCE_OPS:
            return self._instances.apply(cmd, self._placements.get)
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
                return failure(Outcome.CONFLICT, f"deployment {ns}/{name} already exists")
            if dep_id in self._ids:
                return failure(Outcome.CONFLICT, f"deployment id {dep_id} already exists")
            dep = _build(spec, None)
            dep.update(id=dep_id, name=name, namespace=ns, generation=1, created_at=ts,
                       updated_at=ts)
            check_consistent(dep)
            policy = _checked_policy(dep["type"], spec, None)
            dep = {f: dep[f] for f in FIELDS}
            self._set_artifact(dep, spec.get("artifact"))
            self._set_secrets(dep, spec.get("secrets"))
            dep.update(policy)
            self._insert(dep)
            return Outcome.CREATED, dep
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
            return failure(Outcome.NOT_FOUND, f"deployment {ns}/{name} not found")
        if op == "delete":
            self._remove(current)
            self._placements.drop(ns, name)
            self._executions.forget(current["id"])
            return Outcome.DELETED, {}
        if op == "replace":
            new = _build(spec, None)
        elif op == "patch":
            new = _build(spec, current)
        else:
            new = {k: current[k] for k in _SPEC_KEYS}
            new["replicas"] = replicas
        check_consistent(new)
        policy = _checked_policy(new["type"], spec, None if op == "replace" else current)
        if op == "replace" or (op == "patch" and "artifact" in spec):
            artifact = spec.get("artifact")
        else:
            artifact = current.get("artifact")
        if op == "replace" or (op == "patch" and "secrets" in spec):
            secrets = spec.get("secrets") or None
        else:
            secrets = current.get("secrets")
        if (all(new[k] == current[k] for k in _SPEC_KEYS) and artifact == current.get("artifact")
                and secrets == current.get("secrets")
                and policy == {f: current[f] for f in POLICY_FIELDS if f in current}):
            return Outcome.OK, current
        dep = {f: current[f] for f in FIELDS}
        dep.update({k: new[k] for k in _SPEC_KEYS})
        self._set_artifact(dep, artifact)
        self._set_secrets(dep, secrets)
        dep.update(policy)
        dep["generation"] = current["generation"] + 1
        dep["updated_at"] = ts
        self._replace(current, dep)
        self._placements.trim(ns, name, dep["replicas"] if dep["type"] == "service" else 0)
        return Outcome.OK, dep

    def _lookup(self, namespace: str, name: str) -> Deployment | None:
        return self._deps.get((name, namespace))

    def _lookup_id(self, dep_id: str) -> Deployment | None:
        key = self._ids.get(dep_id)
        return None if key is None else self._deps[key]

    def _set_artifact(self, dep: dict[str, Any], artifact: str | None) -> None:
        """Name `artifact` in `dep` (or none); ValidationError unless it is stored and holds
        the file `dep["source"]`."""
        dep.pop("artifact", None)
        if artifact is not None:
            self._artifacts.check_entry(artifact, dep["source"])
            dep["artifact"] = artifact

    def _set_secrets(self, dep: dict[str, Any], secrets: list[str] | None) -> None:
        """List `secrets` in `dep` (last key; none when empty); ValidationError (400) unless
        each is stored in the deployment's namespace. Call after `_set_artifact`."""
        dep.pop("secrets", None)
        if secrets:
            self._secrets.check_refs(dep["namespace"], secrets)
            dep["secrets"] = list(secrets)

    def _insert(self, dep: dict[str, Any]) -> None:
        self._secrets.ref(dep["namespace"], dep.get("secrets"), 1)
        self._artifacts.ref(dep.get("artifact"), 1)
        key = (dep["name"], dep["namespace"])
        self._deps[key] = dep
        self._ids[dep["id"]] = key
        self._index.add(key, dep["type"])
        _account(self._usage, dep, 1)

    def _remove(self, dep: dict[str, Any]) -> None:
        self._secrets.ref(dep["namespace"], dep.get("secrets"), -1)
        self._artifacts.ref(dep.get("artifact"), -1)
        key = self._ids.pop(dep["id"])
        del self._deps[key]
        self._index.remove(key, dep["type"])
        _account(self._usage, dep, -1)

    def _replace(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        self._secrets.ref(new["namespace"], new.get("secrets"), 1)
        self._secrets.ref(old["namespace"], old.get("secrets"), -1)
        self._artifacts.ref(new.get("artifact"), 1)
        self._artifacts.ref(old.get("artifact"), -1)
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

    def placements(self, namespace: str | None = None, name: str | None = None, *,
                   node: str | None = None) -> PlacementList:
        """Placements (immutable), by slot: of one deployment (`namespace` and `name`), on
        one `node`, or all (neither). Any thread."""
        with self._lock:
            if name is not None:
                found = self._placements.of(namespace or "default", name)
                return [p for p in found if node is None or p.node == node]
            if node is not None:
                return self._placements.on_node(node)
            return self._placements.all()

    def schedule_view(self) -> tuple[ServiceList, PlacementList]:
        """The scheduler's input, consistent (one lock): the service deployments and every
        placement, both sorted. O(services + placements); the leader's scheduler thread."""
        with self._lock:
            keys = self._index.by_type.get("service", _EMPTY)
            services = [Service(k[1], k[0], d["replicas"], d["port"])
                        for k in keys for d in (self._deps[k],)]
            return sorted(services), self._placements.all()

    def no_workload_nodes(self) -> frozenset[str]:
        """Nodes recorded (``node.meta``) as running no workloads: never placed on."""
        with self._lock:
            return self._instances.no_workload_nodes()

    def runs_workloads(self, node: str) -> bool:
        """Whether `node` is eligible for placement (True unless it said otherwise)."""
        with self._lock:
            return self._instances.runs_workloads(node)

    def with_status(self, dep: Deployment) -> Deployment:
        """`dep` (a copy from `get` / `list`) with its ``status`` added when it is a service:
        phase, desired and ready replicas, restarts, message and the placed instances with
        their last reported state and spec generation; ``updated_replicas`` (Running at the
        deployment's generation) and ``observed_generation`` (the lowest generation a placed
        instance runs; null while one has not reported or none is placed): a rolling
        update is done when it equals ``generation`` and ready equals desired. Derived from the replicated tables, so every node that
        applied the same entries answers the same. Any thread.

        A cronjob gains ``cron`` instead (`cron_status`)."""
        if dep.get("type") == "cronjob":
            return {**dep, "cron": self.cron_status(dep["id"])}
        if dep.get("type") != "service":
            return dep
        ns, name, replicas = dep["namespace"], dep["name"], dep["replicas"]
        with self._lock:
            placed = self._placements.of(ns, name)
            rows = dict(self._instances.of(ns, name, replicas))
        instances = []
        ready = crash = restarts = updated = 0
        observed: int | None = None
        unreported = False
        messages = []
        # the runner generation of a deployment with secrets also carries a checksum of their
        # values in its low 32 bits (`actors.workloads`): the spec generation is the rest
        shift = 32 if dep.get("secrets") else 0
        for p in placed:
            row = rows.get(p.slot)
            if row is not None and row.epoch == p.epoch and row.node == p.node:
                item = row.to_json(p.slot)
                item["generation"] = row.generation >> shift
                if row.message and row.state != "Running":
                    messages.append(f"instance {p.slot.index}: {row.message}")
                observed = (item["generation"] if observed is None
                            else min(observed, item["generation"]))
            else:
                item = {"id": instance_id(p.slot, p.epoch), "index": p.slot.index,
                        "node": p.node, "state": "Pending", "pid": None, "started_at": None,
                        "exit_code": None, "restarts": 0, "message": "", "generation": None}
                unreported = True
            updated += item["state"] == "Running" and item["generation"] == dep["generation"]
            ready += item["state"] == "Running"
            crash += item["state"] == "CrashLoopBackOff"
            restarts += item["restarts"]
            instances.append(item)
        unplaced = replicas - len(placed)
        if unplaced > 0:
            why = (f"no live node without port {dep['port']} in use" if dep["port"]
                   else "no live node that runs workloads")
            messages.insert(0, f"{unplaced} of {replicas} replicas not placed ({why})")
        status = {"phase": str(phase_of(replicas, ready, crash)), "desired_replicas": replicas,
                  "ready_replicas": ready, "updated_replicas": updated,
                  "observed_generation": None if unreported else observed,
                  "restarts": restarts,
                  "message": "; ".join(messages)[:1024], "instances": instances}
        return {**dep, "status": status}

    def cron_status(self, deployment_id: str) -> dict[str, Any]:
        """A cron job's replicated schedule bookkeeping (issue 15): ``handled_through`` (the
        latest scheduled time fired or recorded missed, RFC 3339; null before the first),
        ``missed`` (scheduled times recorded missed in all) and ``misses`` (the last
        `MAX_MISSES` miss records ``{first, last, count, reason, recorded_at}``, oldest
        first). Every scheduled time after the deployment's creation and up to
        ``handled_through`` has exactly one execution with that ``scheduled_at`` or lies in
        exactly one miss record (as long as the records were not pruned: ``missed`` equals
        the sum of their counts). Any thread."""
        with self._lock:
            mark = self._executions.mark_of(deployment_id)
            missed, rows = self._executions.misses(deployment_id)
        return {"handled_through": None if mark is None else format_ts(mark),
                "missed": missed, "misses": rows}

    def roll_slots(self, namespace: str, name: str) -> dict[int, SlotReport | None]:
        """Each placed slot index of a deployment -> its last report as the roll rule reads
        it (`prisn.workloads.roll`; None: placed, not reported yet). Any thread."""
        with self._lock:
            placed = self._placements.of(namespace, name)
            rows = dict(self._instances.of(namespace, name, 1 + max(
                (p.slot.index for p in placed), default=-1)))
        out: dict[int, SlotReport | None] = {}
        for p in placed:
            r = rows.get(p.slot)
            out[p.slot.index] = (SlotReport(r.generation, r.state, r.started_at, r.at)
                                 if r is not None else None)
        return out

    def instances_on(self, node: str) -> PlacedList:
        """The placements on `node` with their deployments (copies): what its runner should
        run. Any thread."""
        with self._lock:
            out: PlacedList = []
            for p in self._placements.on_node(node):
                dep = self._deps.get((p.slot.name, p.slot.namespace))
                if dep is not None:
                    out.append((p, dict(dep)))
            return out

    def executions(self, *, deployment_id: str | None = None, namespace: str | None = None,
                   status: str | None = None, limit: int = 100, offset: int = 0,
                   namespaces: Collection[str] | None = None) -> dict[str, Any]:
        """A page of executions, newest first: ``{items, count, total, limit, offset}``."""
        with self._lock:
            return self._executions.page(deployment_id=deployment_id, namespace=namespace,
                                         status=status, limit=limit, offset=offset,
                                         namespaces=namespaces)

    def execution(self, exec_id: str) -> Execution | None:
        """One execution record (immutable; its `to_json()` is the API shape), or None."""
        with self._lock:
            return self._executions.get(exec_id)

    def execution_stats(self) -> dict[str, Any]:
        """`ExecutionTable.stats()` (the metrics' view). Any thread (the API's, at scrape)."""
        with self._lock:
            return self._executions.stats()

    def unfinished_executions(self) -> tuple[Execution, ...]:
        """Every Pending or Running execution (the leader's assignment and the node
        controllers' input; records are immutable). Any thread."""
        with self._lock:
            return tuple(self._executions.unfinished())

    def cron_view(self) -> tuple[DeploymentList, dict[str, int], dict[str, tuple[str, ...]]]:
        """The cron plan's input, consistent (one lock): the cronjob deployments, the cron
        marks and the unfinished executions per deployment id. The leader's cron thread."""
        with self._lock:
            keys = self._index.by_type.get("cronjob", _EMPTY)
            deps = [self._deps[k] for k in keys]
            return deps, self._executions.marks(), self._executions.running()

    def artifact(self, digest: str) -> Artifact | None:
        """The stored artifact with this digest, or None (immutable record)."""
        with self._lock:
            return self._artifacts.get(digest)

    def artifact_info(self, digest: str) -> dict[str, Any] | None:
        """``{digest, size, created_at, refs, files}`` of one artifact, or None."""
        with self._lock:
            return self._artifacts.info(digest)

    def artifacts(self, limit: int = 100,
                  offset: int = 0) -> tuple[builtins.list[dict[str, Any]], int]:
        """A page of artifact records (no bytes) ordered by digest, and the total."""
        with self._lock:
            return self._artifacts.page(limit, offset)

    def artifact_usage(self) -> tuple[int, int]:
        """(stored artifacts, their bytes)."""
        with self._lock:
            return len(self._artifacts), self._artifacts.total_bytes

    def secret(self, namespace: str, name: str) -> Secret | None:
        """The stored secret (immutable record, values as stored: maybe sealed), or None."""
        with self._lock:
            return self._secrets.get(namespace, name)

    def secrets(self, namespaces: Collection[str] | None = None, limit: int = 100,
                offset: int = 0) -> tuple[builtins.list[Secret], int]:
        """A page of secrets ordered by (namespace, name), only in `namespaces` if given,
        and the total matching."""
        with self._lock:
            return self._secrets.page(namespaces, limit, offset)

    def secret_count(self, namespace: str) -> int:
        with self._lock:
            return self._secrets.count(namespace)

    # ------------------------------------------------------------------ snapshots
    def _state(self, refs: bool = True) -> tuple[int, DeploymentList, DedupRows, TokenRows]:
        """A consistent copy: `refs` writes unchanged dedup answers as references (snapshot
        format 3), else every answer in full (the state hash must not depend on that)."""
        with self._lock:
            return self._state_locked(refs)

    def _full_state(self, refs: bool = True) -> tuple[tuple[int, DeploymentList, DedupRows,
                                                              TokenRows], TableRows]:
        """`_state` and the extra tables' snapshot rows (only non-empty ones), taken under
        one hold of the lock."""
        with self._lock:
            tables: TableRows = {}
            if len(self._artifacts):
                tables["artifacts"] = (self._artifacts.rows() if refs
                                       else self._artifacts.hash_rows())
            if self._placements.seq:
                tables["placements"] = self._placements.section()
            if len(self._secrets):
                tables["secrets"] = self._secrets.rows()
            if self._executions.used:
                tables["executions"] = self._executions.section()
            tables.update(self._instances.sections())
            return self._state_locked(refs), tables

    def _state_locked(self, refs: bool) -> tuple[int, DeploymentList, DedupRows, TokenRows]:
        """`_state`'s body; the caller holds the lock."""
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
                tokens: TokenRows, tables: TableRows | None = None) -> bytes:
        snap: dict[str, Any] = {"format": SNAPSHOT_FORMAT_REFS, "applied": applied,
                                "deployments": deps, "dedup": dedup, "tokens": tokens}
        if tables:
            snap["format"] = SNAPSHOT_FORMAT_TABLES
            snap["tables"] = tables
        return cbor2.dumps(snap, canonical=True)

    def snapshot(self) -> bytes:
        """Deterministic CBOR of the whole state, with format number and applied index."""
        state, tables = self._full_state()
        return self._encode(*state, tables)

    def snapshot_capture(self) -> tuple[int, Callable[[], bytes]]:
        """(applied index, encoder): a consistent copy taken under the lock, cheap because it
        only copies references (applying replaces deployment rows and dedup results, never
        mutates them), and a function that encodes it exactly like `snapshot()` from any
        thread, so the state machine can write snapshots without stalling apply."""
        (applied, deps, dedup, tokens), tables = self._full_state()

        def encode() -> bytes:
            return self._encode(applied, deps, dedup, tokens, tables)

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
                 self._applied, self._tokens, self._artifacts, self._placements,
                 self._secrets, self._executions, self._instances) = state
                self._usage, self._dedup_bytes = usage, dedup_bytes
                self._trim_dedup()  # a snapshot of an older version may hold more

        return install

    def state_hash(self) -> str:
        """SHA-256 hex of the deployments, dedup table and tokens (not the applied index),
        for comparing nodes that have applied the same entries."""
        (_applied, deps, dedup, tokens), tables = self._full_state(refs=False)
        state: dict[str, Any] = {"deployments": deps, "dedup": dedup}
        if tokens:
            state["tokens"] = tokens
        if tables:
            state["tables"] = tables
        blob = cbor2.dumps(state, canonical=True)
        return hashlib.sha256(blob).hexdigest()


# Commands that never move or remove a placement: no instance row to prune after them.
_NO_PLACEMENT_CHANGE = frozenset({"create", *TOKEN_OPS, *ARTIFACT_OPS, *SECRET_OPS,
                                  *EXECUTION_OPS, *INSTANCE_OPS})
_ParsedState = tuple[dict[tuple[str, str], Deployment], dict[str, tuple[str, str]], _Index,
                     dict[str, DedupEntry], deque[str], int, TokenTable, ArtifactTable,
                     PlacementTable, SecretTable, ExecutionTable, InstanceTable]
_TOP_KEYS = {SNAPSHOT_FORMAT: frozenset({"format", "applied", "deployments", "dedup"}),
             SNAPSHOT_FORMAT_REFS: frozenset({"format", "applied", "deployments", "dedup",
                                              "tokens"}),
             SNAPSHOT_FORMAT_TOKENS: frozenset({"format", "applied", "deployments", "dedup",
                                                "tokens"}),
             SNAPSHOT_FORMAT_TABLES: frozenset({"format", "applied", "deployments", "dedup",
                                                "tokens", "tables"})}
_ROW_KEYS = frozenset(FIELDS)
_ROW_KEYS_ART = frozenset(FIELDS_ART)


def _row_fields(raw: dict[Any, Any]) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(fields in stored order, canonical order) if `raw` has a deployment's keys, else None."""
    n = len(raw)
    if n == len(FIELDS) and raw.keys() == _ROW_KEYS:
        return FIELDS, _CANON_FIELDS
    if n == len(FIELDS_ART) and raw.keys() == _ROW_KEYS_ART:
        return FIELDS_ART, _CANON_FIELDS_ART
    if n > len(FIELDS):
        return _SHAPES.get(frozenset(raw.keys()))
    return None


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
        shape = _row_fields(raw) if type(raw) is dict else None
        if shape is None:
            return raw
        dep = {f: raw[f] for f in shape[0]}
        shared = self.shared
        for f in _SHARED_FIELDS:
            value = dep[f]
            if type(value) is str:
                dep[f] = shared.setdefault(value, value)
        order = tuple(raw)
        if order != shape[1]:
            self.odd[id(dep)] = (dep, order)  # holds `dep`: its id stays unique
        return dep

    def wire_order(self, dep: Deployment) -> tuple[Any, ...]:
        """The key order the map `dep` was decoded from had."""
        entry = self.odd.get(id(dep))
        if entry is not None and entry[0] is dep:
            return entry[1]
        shape = _row_fields(dep)
        return shape[1] if shape is not None else _CANON_FIELDS


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
        if not is_int(status) or status not in WIRE_OUTCOMES:
            raise ValueError("dedup status must be a wire outcome (the status code it was "
                             "answered with)")
        if fmt in (SNAPSHOT_FORMAT_REFS, SNAPSHOT_FORMAT_TABLES) and type(body) is list:
            body = _resolve_ref(body, deps)
        elif type(body) is not dict:
            raise ValueError("dedup result body must be a map")
        else:
            body = _read_body(body, 0, hook)
        if key_ in dedup:
            raise ValueError(f"duplicate dedup key {key_!r:.80}")
        dedup[key_] = (fp, Outcome(status), body)
    order = deque(dedup)
    while len(order) > capacity:
        del dedup[order.popleft()]
    tokens = TokenTable.from_rows(snap["tokens"]) if "tokens" in snap else TokenTable()
    tables = snap.get("tables", {})
    if type(tables) is not dict or not set(tables) <= TABLES or (not tables and fmt == SNAPSHOT_FORMAT_TABLES):
        raise ValueError(f"tables must be a non-empty map of {', '.join(sorted(TABLES))}")
    referenced: dict[str, int] = {}
    for dep in deps.values():
        if "artifact" in dep:
            referenced[dep["artifact"]] = referenced.get(dep["artifact"], 0) + 1
    artifacts = ArtifactTable.from_rows(tables.get("artifacts", []), referenced)
    for dep in deps.values():
        if "artifact" in dep:
            try:
                artifacts.check_entry(dep["artifact"], dep["source"])
            except ValidationError as exc:
                raise ValueError(f"deployment {dep['namespace']}/{dep['name']}: "
                                 f"{exc.message}") from None
    placements = PlacementTable()
    if "placements" in tables:
        placements = PlacementTable.from_section(
            tables["placements"], lambda ns, name: deps.get((name, ns)))
    secret_refs: dict[tuple[str, str], int] = {}
    for dep in deps.values():
        for sname in dep.get("secrets", ()):
            skey = (dep["namespace"], sname)
            secret_refs[skey] = secret_refs.get(skey, 0) + 1
    secrets = SecretTable.from_rows(tables.get("secrets", []), secret_refs)
    executions = ExecutionTable()
    if "executions" in tables:
        executions = ExecutionTable.from_section(tables["executions"], ids)
    instances = InstanceTable.from_sections(tables.get("instances"), tables.get("nodes"),
                                            placements.get)
    return (deps, ids, index, dedup, order, applied, tokens, artifacts, placements, secrets,
            executions, instances)


def _parse_deployment(raw: Any) -> Deployment:
    """One snapshot row: exactly `FIELDS`, each as `apply` stores it. Pure."""
    shape = _row_fields(raw) if type(raw) is dict else None
    if shape is None:
        raise ValueError(f"a deployment row must be a map of {', '.join(FIELDS)} "
                         f"(and optionally {', '.join(_OPTIONAL_KEYS)})")
    # a `_RowDecoder` row is already a new dict in FIELDS order (and nothing else holds it)
    dep = raw if tuple(raw) == shape[0] else {f: raw[f] for f in shape[0]}
    if "artifact" in dep:
        validate_artifact(dep["artifact"])
    if "secrets" in dep:
        if not dep["secrets"] or validate_secret_refs(dep["secrets"]) != dep["secrets"]:
            raise ValueError("deployment secrets must be a non-empty list of distinct names")
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
    stored = {f: dep[f] for f in POLICY_FIELDS if f in dep}
    if policy_of(normalize_spec(stored, partial=True), None) != stored:
        raise ValueError("deployment run settings must be valid and not their defaults")
    check_policy(dep["type"], stored)
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
        if _row_fields(value) is not None:
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


def _checked_policy(typ: str, spec: dict[str, Any], current: Deployment | None
                    ) -> dict[str, Any]:
    """The run settings (non-default ones, in order) of a deployment of type `typ` built
    from `spec` over `current`; ValidationError (400) when one is set or named on a type it
    means nothing for (`validation.check_policy`)."""
    policy = policy_of(spec, current)
    check_policy(typ, policy, [f for f in POLICY_FIELDS if spec.get(f) is not None])
    return policy


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
