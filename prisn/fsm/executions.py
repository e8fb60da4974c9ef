"""The replicated executions table: job runs, cron fires and missed runs (issue 15).

Applied by `DeploymentStore` under its lock, in its dedup table and snapshots (the format-4
``tables`` map, key ``executions``, written only once used). Command formats (maps in the log
entry payload; envelope as for deployments: `v`, `op`, `key`, `ts`; `ts` is RFC 3339 UTC with
milliseconds):

    {"v": 1, "op": "execution.create", "key": K, "ts": T, "id": ID, "ns": NS,
     "deployment_id": D | "name": N, ["env": {..}], ["args": [..]], ["timeout": S],
     ["history": H]}
    {"v": 1, "op": "execution.create", "key": K, "ts": T, "id": ID, "ns": NS,
     "artifact": DIGEST, "entry": PATH, "runtime": R, "name": N, [env, args, timeout,
     history as above]}                                  (an ad-hoc run, no deployment)
    {"v": 1, "op": "cron.fire", "key": K, "ts": T, "id": ID, "deployment_id": D,
     "scheduled_at": EPOCH_S, "after": EPOCH_S | None, ["cancel": [ID, ...]], ["history": H]}
    {"v": 1, "op": "cron.miss", "key": K, "ts": T, "deployment_id": D, "first": EPOCH_S,
     "last": EPOCH_S, "count": N, "reason": "late" | "skipped", "after": EPOCH_S | None}
    {"v": 1, "op": "execution.update", "key": K, "ts": T, "id": ID, "status": S,
     "attempt": A, ["exit_code": I], ["node": NODE], ["started_at": T], ["completed_at": T],
     ["error": TEXT], ["stdout": TEXT], ["stderr": TEXT], ["stdout_truncated": B],
     ["stderr_truncated": B]}
    {"v": 1, "op": "execution.cancel", "key": K, "ts": T, "id": ID}

Exactly once per scheduled time: each cron deployment has a *mark*, the latest scheduled time
the log handled (fired, skipped or missed). A fire or miss names the mark it was planned
on (`after`, None: no mark yet) and changes nothing unless that is the mark now
(compare-and-set): a fire of the very (deployment, scheduled_at) already held answers that
execution (200), anything else is refused (409). So marks only move forward, and only over
times the same command accounts for: a stale leader can neither repeat a run, resurrect
one recorded missed, nor skip times without recording them.

Status transitions (anything else is a deterministic 409, nothing changed): Pending ->
Pending (assign a node), Running, or any terminal status; Running -> terminal; Failed | Lost
-> Pending with ``attempt + 1`` (a retry). Terminal: Completed, Failed, Lost, Cancelled. An
update names the attempt it reports on (a report on an older attempt is refused) and, once
the execution has a node, that node (a report from another node is refused).

Retries: an execution gets `retries` (0..10) when it is created, from its deployment as
applied at that log position (its ``retries`` spec field, absent: 0), so every node agrees
and later spec changes do not touch it. An update that ends an attempt Failed or Lost while
``attempt <= retries`` stores, in the same apply, the next attempt instead: Pending,
``attempt + 1``, no node (the leader places it), the ended attempt appended to `past`
(at most `retries` of them). Cancelled and Completed are final. The JSON and the snapshot
row of an execution with ``retries == 0`` and no past attempts are exactly as before
(17 values); otherwise the row has two more, ``retries`` and the past attempts as lists
(`ATTEMPT_FIELDS`), and the JSON ``retries`` and ``attempts`` (past and current).

Bounds (every node must evict the same rows): at most `history` executions per deployment
(the proposer's --execution-history, carried in the command that creates the execution, so
the bound is the log's and not each node's flag; absent: `DEFAULT_HISTORY`) and
`max_executions` in all; an insert evicts the oldest *terminal* execution (of
the deployment, then globally, in creation order). A new execution is refused (409) when the
deployment already has `history` unfinished ones or the table `MAX_ACTIVE`. At most
`MAX_MISSES` miss records per deployment (oldest dropped; the total missed count is kept).
Deleting a deployment drops its mark and misses (`forget`); its executions stay until evicted.

Ad-hoc executions (``prisn run SCRIPT``, inline ``source``): a create naming an `artifact`
(stored, holding `entry`: checked at apply, 400 otherwise) instead of a deployment. Their
`deployment_id` is None; they are bounded like a deployment's, per namespace (group key
``/<namespace>``, which no deployment id can be). While unfinished, each pins its artifact:
`pins` (digest -> unfinished ad-hoc executions naming it, derived from the rows, so a
restored table has the same) keeps the artifact table's sweep from dropping it.

Output (the node's last `MAX_OUTPUT` bytes of each stream, secrets redacted by the
proposer): only a terminal update may carry it; the execution keeps it while terminal (a
retry back to Pending drops it) and never shows it in `to_json` (list rows stay light).
In a snapshot row it is one trailing map (no other row field is a map there). At most
`MAX_OUTPUT_TOTAL` bytes of output in all: past it, the output of the oldest executions
(creation order) holding some is dropped, on every node the same.

Threads: no lock; `DeploymentStore` calls it under its lock (apply on the state-machine
thread, queries on any). `Execution` records are immutable (an update stores a new one).
"""

from __future__ import annotations

import hashlib
import heapq
import re
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from prisn.fsm.commands import COMMAND_VERSION, check_key, format_ts
from prisn.fsm.results import Result, failure
from prisn.fsm.tokens import TokenCommandError, ts_millis
from prisn.fsm.validation import (
    ValidationError,
    is_int,
    validate_args,
    validate_env,
    validate_name,
    validate_runtime,
)
from prisn.outcomes import Outcome
from prisn.workloads.artifacts import ArtifactError, check_path, is_digest
from prisn.workloads.cron import Fire, Miss

EXECUTION_OPS: tuple[str, ...] = ("execution.create", "execution.update", "execution.cancel",
                                  "cron.fire", "cron.miss")
PENDING, RUNNING = "Pending", "Running"
COMPLETED, FAILED, LOST, CANCELLED = "Completed", "Failed", "Lost", "Cancelled"
STATUSES: tuple[str, ...] = (PENDING, RUNNING, COMPLETED, FAILED, LOST, CANCELLED)
TERMINAL: frozenset[str] = frozenset({COMPLETED, FAILED, LOST, CANCELLED})
MISS_REASONS: tuple[str, ...] = ("late", "skipped")
DEFAULT_HISTORY = 1000  # per deployment (issue 15: --execution-history)
MAX_EXECUTIONS = 100_000
MAX_ACTIVE = 10_000  # unfinished executions in all
MAX_MISSES = 100  # miss records kept per deployment
DEFAULT_TIMEOUT = 600  # seconds
MAX_TIMEOUT = 7 * 86400
MAX_ATTEMPT = 1000
MAX_CANCEL = 64
MAX_ID = 64
MAX_NODE_ID = 128
MAX_ERROR = 1024
MAX_EPOCH = 253402300799  # 9999-12-31T23:59:59Z
MAX_COUNT = (1 << 63) - 1
MAX_HISTORY = 100_000  # --execution-history at most (= MAX_EXECUTIONS)
MAX_OUTPUT = 64 << 10  # UTF-8 bytes of each stream a terminal update may carry
MAX_OUTPUT_TOTAL = 256 << 20  # bytes of output held in all (oldest dropped first)
OUTPUT_FIELDS: tuple[str, ...] = ("stdout", "stderr", "stdout_truncated", "stderr_truncated")
# `prisn_execution_duration_seconds` buckets (upper bounds, seconds; +Inf implied)
DURATION_BUCKETS: tuple[float, ...] = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
                                       1800.0, 3600.0)

Lookup = Callable[[str, str], dict[str, Any] | None]  # (namespace, name) -> deployment
LookupId = Callable[[str], dict[str, Any] | None]  # deployment id -> deployment

_ENVELOPE = frozenset({"v", "op", "key", "ts"})
_CREATE_OPT = frozenset({"env", "args", "timeout", "history"})
_ADHOC_KEYS = frozenset({"id", "ns", "artifact", "entry", "runtime", "name"})
_UPDATE_OPT = frozenset({"exit_code", "node", "started_at", "completed_at", "error"})
_UPDATE_OPT = _UPDATE_OPT | frozenset(OUTPUT_FIELDS)  # the output of a terminal update
_ROW_LEN = 17
_ADHOC_ROW_LEN = _ROW_LEN + 3  # an ad-hoc row adds [artifact, entry, runtime]
_RETRY_LEN = 2  # a row of an execution that may retry ends with [retries, past attempts]
MAX_RETRIES = 10  # = validation.MAX_RETRIES
# One attempt: (attempt, node, status, exit_code, started_at, completed_at, error)
Attempt = tuple[int, "str | None", str, "int | None", "str | None", "str | None", "str | None"]
ATTEMPT_FIELDS: tuple[str, ...] = ("attempt", "node", "status", "exit_code", "started_at",
                                   "completed_at", "error")
ADHOC_GROUP = "/"  # prefix of an ad-hoc group key: "/<namespace>" (ids never hold "/")
CheckArtifact = Callable[[str, str], None]  # (digest, entry) -> None, ValidationError if not


def _no_artifacts(digest: str, entry: str) -> None:
    raise ValidationError("artifact", "this table was given no artifact table")


class ExecutionCommandError(ValueError):
    """A malformed execution or cron command in the log (400; changes nothing)."""


@dataclass(frozen=True, slots=True)
class Execution:
    """One run of a job or cron job deployment. `scheduled_at`: the cron time it fires for
    (epoch seconds), None for an on-demand run. Times are RFC 3339 strings."""

    id: str
    deployment_id: str | None  # None: an ad-hoc run (`artifact`, `entry`, `runtime` set)
    namespace: str
    name: str
    status: str
    exit_code: int | None
    node: str | None
    scheduled_at: int | None
    attempt: int
    created_at: str
    started_at: str | None
    completed_at: str | None
    duration_ms: int | None
    error: str | None
    env: dict[str, str]  # overrides of the deployment's (on-demand runs only)
    args: list[str]  # replace the deployment's when not empty (on-demand runs only)
    timeout: int
    artifact: str | None = None  # ad-hoc runs only: the artifact, file and runtime to run
    entry: str | None = None
    runtime: str | None = None
    # retries (issue 15): how many more attempts a Failed or Lost one gets, fixed when it is
    # created (the deployment's `retries` as applied); `past`: the attempts before the
    # current one, oldest first, as `Attempt` tuples. Both empty/0: the row and the JSON
    # are exactly as before retries existed.
    retries: int = 0
    past: tuple[Attempt, ...] = ()
    # the last output of a terminal execution, as its node reported it (None: none held)
    stdout: str | None = None
    stderr: str | None = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def has_output(self) -> bool:
        return self.stdout is not None or self.stderr is not None

    @property
    def output_bytes(self) -> int:
        """UTF-8 bytes of the output held (what `MAX_OUTPUT_TOTAL` counts)."""
        return sum(len(t.encode()) for t in (self.stdout, self.stderr) if t is not None)

    def output(self) -> dict[str, Any]:
        """``{stdout, stderr, stdout_truncated, stderr_truncated}`` (texts "" when None)."""
        return {"stdout": self.stdout or "", "stderr": self.stderr or "",
                "stdout_truncated": self.stdout_truncated,
                "stderr_truncated": self.stderr_truncated}

    def attempt_record(self) -> Attempt:
        """The current attempt as an `Attempt` tuple."""
        return (self.attempt, self.node, self.status, self.exit_code, self.started_at,
                self.completed_at, self.error)

    def attempts_json(self) -> list[dict[str, Any]]:
        """Every attempt so far, the current one last (at most ``retries + 1``)."""
        return [dict(zip(ATTEMPT_FIELDS, a, strict=True))
                for a in (*self.past, self.attempt_record())]

    def _retry_json(self) -> dict[str, Any]:
        """``retries`` and ``attempts`` of an execution that may retry (else nothing: the
        JSON of one without retries is what it always was)."""
        if not self.retries and not self.past:
            return {}
        return {"retries": self.retries, "attempts": self.attempts_json()}

    @property
    def group(self) -> str:
        """The key its history bound counts under: its deployment id, or ``/<namespace>``."""
        return (self.deployment_id if self.deployment_id is not None
                else ADHOC_GROUP + self.namespace)

    def to_json(self) -> dict[str, Any]:
        """The API shape (no env or args: they may hold what the caller keeps private)."""
        return {"id": self.id, "deployment_id": self.deployment_id,
                "namespace": self.namespace, "name": self.name, "status": self.status,
                "exit_code": self.exit_code, "node": self.node,
                "scheduled_at": (None if self.scheduled_at is None
                                 else format_ts(self.scheduled_at)),
                "attempt": self.attempt, "created_at": self.created_at,
                "started_at": self.started_at, "completed_at": self.completed_at,
                "duration_ms": self.duration_ms, "error": self.error,
                **({} if self.artifact is None else
                   {"artifact": self.artifact, "entry": self.entry, "runtime": self.runtime}),
                **self._retry_json()}

    def row(self) -> list[Any]:
        row: list[Any] = [self.id, self.deployment_id, self.namespace, self.name,
                          self.status, self.exit_code, self.node, self.scheduled_at,
                          self.attempt, self.created_at, self.started_at, self.completed_at,
                          self.duration_ms, self.error, dict(sorted(self.env.items())),
                          list(self.args), self.timeout]
        if self.artifact is not None:
            row += [self.artifact, self.entry, self.runtime]
        if self.retries or self.past:  # else the row of before retries, byte for byte
            row += [self.retries, [list(a) for a in self.past]]
        if self.has_output:  # one trailing map; without output the row is as before
            row.append({f: getattr(self, f) for f in OUTPUT_FIELDS})
        return row


# ---------------------------------------------------------------------- field checks
def _bad(message: str) -> ExecutionCommandError:
    return ExecutionCommandError(message)


def _text(value: Any, field: str, limit: int) -> str:
    if type(value) is not str or not 0 < len(value) <= limit:
        raise _bad(f"field {field!r} must be a string of 1 to {limit} characters")
    return value


# one C-level scan instead of a Python loop per character (`\s` is exactly str.isspace)
_BAD_ID = re.compile(r"[\s/]")
_BAD_NODE = re.compile(r"[\s/@]")


def _id(value: Any, field: str = "id") -> str:
    v = _text(value, field, MAX_ID)
    if _BAD_ID.search(v):
        raise _bad(f"field {field!r} must not hold spaces or '/'")
    return v


def _node(value: Any) -> str:
    v = _text(value, "node", MAX_NODE_ID)
    if _BAD_NODE.search(v):
        raise _bad("field 'node' must be a node id")
    return v


def _epoch(value: Any, field: str) -> int:
    if not is_int(value) or not 0 <= value <= MAX_EPOCH:
        raise _bad(f"field {field!r} must be epoch seconds 0..{MAX_EPOCH}")
    return int(value)


def _ts(value: Any, field: str) -> tuple[str, int]:
    """(text, epoch ms) of an RFC 3339 UTC time with milliseconds."""
    try:
        return value, ts_millis(value)
    except TokenCommandError:
        raise _bad(f"field {field!r} must be an RFC 3339 UTC time with milliseconds") from None


def _keys(cmd: dict[str, Any], required: frozenset[str], optional: frozenset[str]) -> None:
    keys = cmd.keys() - _ENVELOPE
    if not required <= keys or not keys <= required | optional:
        raise _bad(f"{cmd.get('op')} has exactly {', '.join(sorted(required))}"
                   + (f" and optionally {', '.join(sorted(optional))}" if optional else ""))


def _history(cmd: dict[str, Any], default: int) -> int:
    """The command's per-deployment bound (`history`), else `default`."""
    h = cmd.get("history", default)
    if not is_int(h) or not 1 <= h <= MAX_HISTORY:
        raise _bad(f"field 'history' must be 1..{MAX_HISTORY}")
    return int(h)


def _output(src: dict[str, Any], terminal: bool) -> dict[str, Any]:
    """The output fields of a command or row (absent: none), checked: texts of at most
    `MAX_OUTPUT` UTF-8 bytes or None, boolean flags; only a terminal status carries any."""
    out = {f: src[f] for f in OUTPUT_FIELDS if src.get(f) is not None}
    if not out:
        return {}
    if not terminal:
        raise _bad("only a terminal execution.update carries output")
    for f in ("stdout", "stderr"):
        v = out.get(f)
        if v is not None and (type(v) is not str or len(v) > MAX_OUTPUT
                              or len(v.encode("utf-8", "replace")) > MAX_OUTPUT):
            raise _bad(f"field {f!r} must be text of at most {MAX_OUTPUT} UTF-8 bytes")
    for f in ("stdout_truncated", "stderr_truncated"):
        if type(out.get(f, False)) is not bool:
            raise _bad(f"field {f!r} must be a boolean")
    if out.get("stdout") is None and out.get("stderr") is None:
        raise _bad("output flags without stdout or stderr")
    return out


def fire_id(deployment_id: str, scheduled_at: int) -> str:
    """The execution id of a cron fire: 32 hex digits derived from its key, so every leader
    proposing the same fire proposes the same id."""
    return hashlib.sha256(f"{deployment_id}|{scheduled_at}".encode()).hexdigest()[:32]


# ---------------------------------------------------------------------- the table
class ExecutionTable:
    """Executions in creation order, indexed by deployment and by cron fire; cron marks and
    miss records. Deterministic."""

    def __init__(self, *, history: int = DEFAULT_HISTORY,
                 max_executions: int = MAX_EXECUTIONS) -> None:
        if history < 1 or max_executions < 1:
            raise ValueError("history and max_executions must be positive")
        self.history = history
        self.max_executions = max_executions
        self._rows: OrderedDict[str, Execution] = OrderedDict()  # creation order
        self._by_dep: dict[str, deque[str]] = {}
        self._fires: dict[tuple[str, int], str] = {}  # (deployment id, scheduled_at) -> id
        self._active: dict[str, int] = {}  # deployment id -> unfinished executions
        # deployment id -> ids of its unfinished executions (a set kept as a dict; order is
        # not kept: readers sort by `_seq`). Exactly the non-terminal rows of `_rows`.
        self._open: dict[str, dict[str, None]] = {}
        self._active_total = 0
        self.pins: dict[str, int] = {}  # artifact digest -> unfinished ad-hoc runs naming it
        self._marks: dict[str, int] = {}
        self._missed: dict[str, int] = {}  # deployment id -> scheduled times missed in all
        self._misses: dict[str, deque[tuple[int, int, int, str, str]]] = {}
        self._seq: dict[str, int] = {}  # execution id -> creation sequence (output order)
        self._next_seq = 0
        self._output_heap: list[tuple[int, str]] = []  # (seq, id) of rows with output; lazy
        self.output_total = 0  # UTF-8 bytes of output held (bounded by `max_output`)
        self.max_output = MAX_OUTPUT_TOTAL
        # metrics only, in memory (not in snapshots; a restart or snapshot install resets
        # them, as a counter reset): cron fires applied, the lag of the latest fire to start,
        # durations of the executions this node saw finish (per-bucket counts, sum, count)
        self.fires_applied = 0
        self.last_fire_lag: float | None = None
        self._dur_buckets = [0] * (len(DURATION_BUCKETS) + 1)
        self._dur_sum = 0.0

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def used(self) -> bool:
        """Whether the table holds anything (then snapshots carry its section)."""
        return bool(self._rows or self._marks)

    # ------------------------------------------------------------------ mutation
    def _count_active(self, e: Execution, sign: int) -> None:
        if e.terminal:
            return
        _bump(self._active, e.group, sign)
        if sign > 0:
            self._open.setdefault(e.group, {})[e.id] = None
        else:
            ids = self._open[e.group]
            del ids[e.id]
            if not ids:
                del self._open[e.group]
        if e.artifact is not None:
            _bump(self.pins, e.artifact, sign)
        self._active_total += sign

    def _store(self, e: Execution) -> None:
        """Replace a stored execution by its new version (same id, same position)."""
        old = self._rows[e.id]
        if not e.terminal and e.has_output:  # a retry: the output was the old attempt's
            e = replace(e, stdout=None, stderr=None, stdout_truncated=False,
                        stderr_truncated=False)
        self._count_active(old, -1)
        self._account_output(old, -1)
        self._rows[e.id] = e
        self._count_active(e, 1)
        self._account_output(e, 1)
        self._bound_output()
        if e.terminal and not old.terminal and e.duration_ms is not None:
            secs = e.duration_ms / 1000
            i = next((i for i, b in enumerate(DURATION_BUCKETS) if secs <= b),
                     len(DURATION_BUCKETS))
            self._dur_buckets[i] += 1
            self._dur_sum += secs
        if (e.scheduled_at is not None and old.started_at is None
                and e.started_at is not None):
            self.last_fire_lag = ts_millis(e.started_at) / 1000 - e.scheduled_at

    def _insert(self, e: Execution, history: int | None = None) -> None:
        """Add `e`, then evict down to `history` (default: the table's) executions of its
        deployment and `max_executions` in all."""
        history = self.history if history is None else history
        self._rows[e.id] = e
        self._seq[e.id] = self._next_seq
        self._next_seq += 1
        self._account_output(e, 1)
        self._by_dep.setdefault(e.group, deque()).append(e.id)
        if e.scheduled_at is not None:
            self._fires[(e.group, e.scheduled_at)] = e.id
        self._count_active(e, 1)
        ids = self._by_dep[e.group]
        while len(ids) > history:  # room was checked: a terminal one exists
            self._evict(next(i for i in ids if self._rows[i].terminal))
        while len(self._rows) > self.max_executions:
            self._evict(next(i for i, x in self._rows.items() if x.terminal))

    def _account_output(self, e: Execution, sign: int) -> None:
        """Count `e`'s output in (+1) or out (-1) of `output_total`; a row gaining output
        joins the drop order (creation order)."""
        if not e.has_output:
            return
        self.output_total += sign * e.output_bytes
        if sign > 0:
            heapq.heappush(self._output_heap, (self._seq[e.id], e.id))

    def _bound_output(self) -> None:
        """Drop the output of the oldest executions holding some until at most `max_output`
        bytes are held. Deterministic: creation order, replicated data only."""
        heap = self._output_heap
        while self.output_total > self.max_output and heap:
            _, exec_id = heapq.heappop(heap)
            e = self._rows.get(exec_id)
            if e is None or not e.has_output:
                continue  # lazily deleted: evicted, or its output already dropped
            self.output_total -= e.output_bytes
            self._rows[exec_id] = replace(e, stdout=None, stderr=None, stdout_truncated=False,
                                          stderr_truncated=False)
        if len(heap) > 2 * len(self._rows) + 64:  # lazily deleted entries: rebuild
            self._output_heap = [(self._seq[i], i) for i, x in self._rows.items()
                                 if x.has_output]
            heapq.heapify(self._output_heap)

    def _evict(self, exec_id: str) -> None:
        e = self._rows.pop(exec_id)
        self._seq.pop(exec_id, None)
        self._account_output(e, -1)
        ids = self._by_dep[e.group]
        ids.remove(exec_id)
        if not ids:
            del self._by_dep[e.group]
        if e.scheduled_at is not None:
            self._fires.pop((e.group, e.scheduled_at), None)
        self._count_active(e, -1)

    def forget(self, deployment_id: str) -> None:
        """The deployment was deleted: drop its mark and miss records."""
        self._marks.pop(deployment_id, None)
        self._missed.pop(deployment_id, None)
        self._misses.pop(deployment_id, None)

    def _room(self, deployment_id: str, history: int, freed: int = 0) -> str | None:
        """Why one more unfinished execution of the deployment does not fit under its bound
        `history` (None: it does), once `freed` of its unfinished ones are cancelled."""
        if self._active.get(deployment_id, 0) - freed >= history:
            if deployment_id.startswith(ADHOC_GROUP):
                return (f"namespace {deployment_id[1:]} already has {history} unfinished "
                        "ad-hoc executions")
            return f"deployment {deployment_id} already has {history} unfinished executions"
        cap = min(MAX_ACTIVE, self.max_executions)
        if self._active_total - freed >= cap:
            return f"the cluster already has {cap} unfinished executions"
        return None

    # ------------------------------------------------------------------ apply
    def apply(self, cmd: dict[str, Any], lookup: Lookup, lookup_id: LookupId,
              check_artifact: CheckArtifact = _no_artifacts) -> Result:
        """Run one command (`op` in EXECUTION_OPS). ExecutionCommandError (or
        ValidationError) for a malformed command, nothing changed; otherwise its result.
        `check_artifact(digest, entry)` raises ValidationError unless that artifact is
        stored and holds that file (ad-hoc creates)."""
        if cmd.get("v") != COMMAND_VERSION:
            raise _bad(f"unsupported command version {cmd.get('v')!r}")
        ts, ts_ms = _ts(cmd.get("ts"), "ts")
        op = cmd.get("op")
        if op == "execution.create" and "artifact" in cmd:
            return self._create_adhoc(cmd, ts, check_artifact)
        if op == "execution.create":
            return self._create(cmd, ts, lookup, lookup_id)
        if op == "cron.fire":
            return self._fire(cmd, ts, lookup_id)
        if op == "cron.miss":
            return self._miss(cmd, ts, lookup_id)
        if op == "execution.update":
            return self._update(cmd, ts, ts_ms)
        if op == "execution.cancel":
            _keys(cmd, frozenset({"id"}), frozenset())
            e = self._rows.get(_id(cmd["id"]))
            if e is None:
                return failure(Outcome.NOT_FOUND, f"execution {cmd['id']} not found")
            if e.terminal:
                return failure(Outcome.CONFLICT, f"execution {e.id} is already {e.status}")
            e = self._finish(e, CANCELLED, ts, ts_ms, error="cancelled")
            return Outcome.OK, e.to_json()
        raise _bad(f"unknown execution op {op!r}")

    def _create(self, cmd: dict[str, Any], ts: str, lookup: Lookup,
                lookup_id: LookupId) -> Result:
        by_id = "deployment_id" in cmd
        _keys(cmd, frozenset({"id", "ns", "deployment_id" if by_id else "name"}), _CREATE_OPT)
        exec_id = _id(cmd["id"])
        ns = validate_name(cmd["ns"], "namespace")
        env = validate_env(cmd.get("env", {}))
        args = validate_args(cmd.get("args", []))
        timeout = cmd.get("timeout", DEFAULT_TIMEOUT)
        if not is_int(timeout) or not 1 <= timeout <= MAX_TIMEOUT:
            raise ValidationError("timeout", f"must be 1..{MAX_TIMEOUT} seconds")
        history = _history(cmd, self.history)
        if by_id:
            dep = lookup_id(_id(cmd["deployment_id"], "deployment_id"))
            if dep is not None and dep["namespace"] != ns:
                dep = None
            what = f"deployment {cmd['deployment_id']}"
        else:
            name = validate_name(cmd["name"])
            dep = lookup(ns, name)
            what = f"deployment {ns}/{name}"
        if dep is None:
            return failure(Outcome.NOT_FOUND, f"{what} not found")
        if dep["type"] not in ("job", "cronjob"):
            return failure(Outcome.CONFLICT, f"{what} is a {dep['type']}, not a job")
        if exec_id in self._rows:
            return failure(Outcome.CONFLICT, f"execution id {exec_id} already exists")
        why = self._room(dep["id"], history)
        if why is not None:
            return failure(Outcome.CONFLICT, why)
        e = Execution(exec_id, dep["id"], dep["namespace"], dep["name"], PENDING, None, None,
                      None, 1, ts, None, None, None, None, env, args, timeout,
                      retries=_retries_of(dep))
        self._insert(e, history)
        return Outcome.CREATED, e.to_json()

    def _create_adhoc(self, cmd: dict[str, Any], ts: str,
                      check_artifact: CheckArtifact) -> Result:
        """An execution of an artifact's `entry` with `runtime`, tied to no deployment."""
        _keys(cmd, _ADHOC_KEYS, _CREATE_OPT)
        exec_id = _id(cmd["id"])
        ns = validate_name(cmd["ns"], "namespace")
        name = validate_name(cmd["name"])
        artifact, entry, runtime = _adhoc_fields(cmd["artifact"], cmd["entry"],
                                                 cmd["runtime"])
        env = validate_env(cmd.get("env", {}))
        args = validate_args(cmd.get("args", []))
        timeout = cmd.get("timeout", DEFAULT_TIMEOUT)
        if not is_int(timeout) or not 1 <= timeout <= MAX_TIMEOUT:
            raise ValidationError("timeout", f"must be 1..{MAX_TIMEOUT} seconds")
        history = _history(cmd, self.history)
        try:
            check_artifact(artifact, entry)
        except ValidationError as exc:
            if exc.field != "source":
                raise
            raise ValidationError("entry", exc.message.removeprefix("source: ")) from None
        if exec_id in self._rows:
            return failure(Outcome.CONFLICT, f"execution id {exec_id} already exists")
        why = self._room(ADHOC_GROUP + ns, history)
        if why is not None:
            return failure(Outcome.CONFLICT, why)
        e = Execution(exec_id, None, ns, name, PENDING, None, None, None, 1, ts, None, None,
                      None, None, env, args, int(timeout), artifact, entry, runtime)
        self._insert(e, history)
        return Outcome.CREATED, e.to_json()

    def _cron_dep(self, cmd: dict[str, Any], lookup_id: LookupId
                  ) -> tuple[str, dict[str, Any] | None, Result | None]:
        dep_id = _id(cmd["deployment_id"], "deployment_id")
        dep = lookup_id(dep_id)
        if dep is None:
            return dep_id, None, failure(Outcome.NOT_FOUND, f"deployment {dep_id} not found")
        if dep["type"] != "cronjob":
            return dep_id, None, failure(Outcome.CONFLICT,
                                         f"deployment {dep_id} is not a cronjob")
        return dep_id, dep, None

    def _fire(self, cmd: dict[str, Any], ts: str, lookup_id: LookupId) -> Result:
        _keys(cmd, frozenset({"id", "deployment_id", "scheduled_at", "after"}),
              frozenset({"cancel", "history"}))
        history = _history(cmd, self.history)
        after = None if cmd["after"] is None else _epoch(cmd["after"], "after")
        exec_id = _id(cmd["id"])
        at = _epoch(cmd["scheduled_at"], "scheduled_at")
        cancel = cmd.get("cancel", [])
        if type(cancel) is not list or len(cancel) > MAX_CANCEL:
            raise _bad(f"field 'cancel' must be a list of at most {MAX_CANCEL} ids")
        cancel = [_id(c, "cancel") for c in cancel]
        dep_id, dep, refused = self._cron_dep(cmd, lookup_id)
        if refused is not None:
            return refused
        assert dep is not None
        held = self._fires.get((dep_id, at))
        if held is not None:  # the same fire again (another leader's): nothing changes
            return Outcome.OK, self._rows[held].to_json()
        refused = self._check_mark(dep_id, after, at)
        if refused is not None:
            return refused
        if exec_id in self._rows:
            return failure(Outcome.CONFLICT, f"execution id {exec_id} already exists")
        replaced = [self._rows[c] for c in dict.fromkeys(cancel) if c in self._rows
                    and self._rows[c].deployment_id == dep_id and not self._rows[c].terminal]
        why = self._room(dep_id, history, len(replaced))
        if why is not None:
            return failure(Outcome.CONFLICT, why)
        ts_ms = ts_millis(ts)
        for old in replaced:  # concurrency "replace": first stop the runs it replaces
            self._finish(old, CANCELLED, ts, ts_ms, error=f"replaced by {exec_id}")
        self._marks[dep_id] = at
        self.fires_applied += 1
        e = Execution(exec_id, dep_id, dep["namespace"], dep["name"], PENDING, None, None,
                      at, 1, ts, None, None, None, None, {}, [], DEFAULT_TIMEOUT,
                      retries=_retries_of(dep))
        self._insert(e, history)
        return Outcome.CREATED, e.to_json()

    def _miss(self, cmd: dict[str, Any], ts: str, lookup_id: LookupId) -> Result:
        _keys(cmd, frozenset({"deployment_id", "first", "last", "count", "reason", "after"}),
              frozenset())
        after = None if cmd["after"] is None else _epoch(cmd["after"], "after")
        first, last = _epoch(cmd["first"], "first"), _epoch(cmd["last"], "last")
        count, reason = cmd["count"], cmd["reason"]
        if first > last:
            raise _bad("field 'first' must not be after 'last'")
        if not is_int(count) or not 1 <= count <= MAX_COUNT:
            raise _bad("field 'count' must be a positive integer")
        if reason not in MISS_REASONS or type(reason) is not str:
            raise _bad(f"field 'reason' must be one of {', '.join(MISS_REASONS)}")
        dep_id, _dep, refused = self._cron_dep(cmd, lookup_id)
        if refused is not None:
            return refused
        refused = self._check_mark(dep_id, after, first)
        if refused is not None:
            return refused
        self._marks[dep_id] = last
        self._missed[dep_id] = min(self._missed.get(dep_id, 0) + count, MAX_COUNT)
        misses = self._misses.setdefault(dep_id, deque())
        misses.append((first, last, count, reason, ts))
        while len(misses) > MAX_MISSES:
            misses.popleft()
        return Outcome.OK, {"deployment_id": dep_id, "first": format_ts(first),
                            "last": format_ts(last), "count": count, "reason": reason}

    def _check_mark(self, dep_id: str, after: int | None, first: int) -> Result | None:
        """A refusal unless the deployment's mark is `after` and `first` is past it."""
        mark = self._marks.get(dep_id)
        if after is not None and first <= after:
            raise _bad("a cron time must be after the mark it was planned on")
        if mark != after:
            return failure(Outcome.CONFLICT, f"cron times of deployment {dep_id} are handled "
                           f"up to {mark}, not {after}: planned on a stale view")
        return None

    def _finish(self, e: Execution, status: str, ts: str, ts_ms: int, *,
                error: str | None = None) -> Execution:
        dur = None if e.started_at is None else max(0, ts_ms - ts_millis(e.started_at))
        new = replace(e, status=status, completed_at=ts, duration_ms=dur,
                      error=error if error is not None else e.error)
        self._store(new)
        return new

    def _update(self, cmd: dict[str, Any], ts: str, ts_ms: int) -> Result:
        _keys(cmd, frozenset({"id", "status", "attempt"}), _UPDATE_OPT)
        exec_id = _id(cmd["id"])
        status, attempt = cmd["status"], cmd["attempt"]
        if type(status) is not str or status not in STATUSES:
            raise _bad(f"field 'status' must be one of {', '.join(STATUSES)}")
        output = _output(cmd, status in TERMINAL)
        if not is_int(attempt) or not 1 <= attempt <= MAX_ATTEMPT:
            raise _bad(f"field 'attempt' must be 1..{MAX_ATTEMPT}")
        exit_code = cmd.get("exit_code")
        if exit_code is not None and (not is_int(exit_code) or not -255 <= exit_code <= 255):
            raise _bad("field 'exit_code' must be an integer -255..255 or null")
        node = None if cmd.get("node") is None else _node(cmd["node"])
        started = None if cmd.get("started_at") is None else _ts(cmd["started_at"],
                                                                  "started_at")
        completed = None if cmd.get("completed_at") is None else _ts(cmd["completed_at"],
                                                                      "completed_at")
        error = cmd.get("error")
        if error is not None and (type(error) is not str or len(error) > MAX_ERROR):
            raise _bad(f"field 'error' must be a string of at most {MAX_ERROR} characters")
        e = self._rows.get(exec_id)
        if e is None:
            return failure(Outcome.NOT_FOUND, f"execution {exec_id} not found")
        cur = e.status
        retry = cur in (FAILED, LOST) and status == PENDING and attempt == e.attempt + 1
        if not retry:
            if attempt != e.attempt:
                return failure(Outcome.CONFLICT, f"execution {exec_id} is at attempt "
                               f"{e.attempt}, not {attempt}")
            legal = (cur == PENDING and (status != PENDING or node is not None)) or (
                cur == RUNNING and status in TERMINAL)
            if not legal:
                return failure(Outcome.CONFLICT,
                               f"execution {exec_id} cannot go from {cur} to {status}")
            if e.node is not None and node is not None and node != e.node:
                return failure(Outcome.CONFLICT, f"execution {exec_id} runs on {e.node}, "
                               f"not {node}")
        if retry:
            new = replace(e, status=PENDING, attempt=attempt, node=node, exit_code=None,
                          started_at=None, completed_at=None, duration_ms=None,
                          error=error if error is not None else e.error)
        elif status in (PENDING, RUNNING):
            start = None
            if status == RUNNING:
                start = started[0] if started is not None else ts
            new = replace(e, status=status, node=node or e.node, started_at=start)
        else:
            done_text, done_ms = completed if completed is not None else (ts, ts_ms)
            start_text = started[0] if started is not None else e.started_at
            dur = (None if start_text is None
                   else max(0, done_ms - ts_millis(start_text)))
            new = replace(e, status=status, node=node or e.node, exit_code=exit_code,
                          started_at=start_text, completed_at=done_text, duration_ms=dur,
                          error=error if error is not None else e.error)
            if output:
                new = replace(new, **output)
            new = _requeued(new)
        self._store(new)
        return Outcome.OK, new.to_json()

    # ------------------------------------------------------------------ queries
    def get(self, exec_id: str) -> Execution | None:
        return self._rows.get(exec_id)

    def page(self, *, deployment_id: str | None = None, namespace: str | None = None,
             status: str | None = None, limit: int = 100, offset: int = 0,
             namespaces: Iterable[str] | None = None) -> dict[str, Any]:
        """``{items, count, total, limit, offset}``: the matching executions, newest first.
        O(matching) (O(history) with `deployment_id`). `namespaces` (with `namespace`
        None) restricts to those."""
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        allowed = None if namespaces is None else frozenset(namespaces)
        if deployment_id is not None and deployment_id.startswith(ADHOC_GROUP):
            source: Iterable[Execution] = ()  # not a deployment id: ad-hoc groups stay hidden
        elif deployment_id is not None:
            source = (self._rows[i] for i in reversed(self._by_dep.get(deployment_id, ())))
        else:
            source = reversed(self._rows.values())
        matching = [e for e in source
                    if (namespace is None or e.namespace == namespace)
                    and (allowed is None or e.namespace in allowed)
                    and (status is None or e.status == status)]
        items = [e.to_json() for e in matching[offset:offset + limit]]
        return {"items": items, "count": len(items), "total": len(matching), "limit": limit,
                "offset": offset}

    def stats(self) -> dict[str, Any]:
        """The metrics' view: ``by_status`` (executions held, every status present),
        ``fires`` (cron fires applied here), ``missed`` (scheduled times recorded missed, of
        the deployments that exist), ``lag`` (started_at - scheduled_at of the latest cron
        execution to start, seconds; None: none seen), ``buckets`` (cumulative
        [(upper bound, count)], +Inf last), ``sum`` and ``count`` of the finished
        executions' durations seen here. O(executions held)."""
        by_status = dict.fromkeys(STATUSES, 0)
        for e in self._rows.values():
            by_status[e.status] += 1
        cumulative, n = [], 0
        for bound, c in zip((*DURATION_BUCKETS, float("inf")), self._dur_buckets,
                            strict=True):
            n += c
            cumulative.append((bound, n))
        return {"by_status": by_status, "fires": self.fires_applied,
                "missed": sum(self._missed.values()), "lag": self.last_fire_lag,
                "buckets": cumulative, "sum": self._dur_sum, "count": n}

    def marks(self) -> dict[str, int]:
        """Per cron deployment id, the latest scheduled time handled (the cron plan's input)."""
        return dict(self._marks)

    def mark_of(self, deployment_id: str) -> int | None:
        """The deployment's mark (latest scheduled time handled), None before its first."""
        return self._marks.get(deployment_id)

    def running(self) -> dict[str, tuple[str, ...]]:
        """Per deployment id with unfinished executions, their ids oldest first."""
        return {dep: tuple(self._open_ids(dep))
                for dep in sorted(self._open) if not dep.startswith(ADHOC_GROUP)}

    def _open_ids(self, group: str) -> list[str]:
        """Ids of the group's unfinished executions, oldest (creation sequence) first."""
        return sorted(self._open[group], key=self._seq.__getitem__)

    def unfinished(self) -> list[Execution]:
        """Every unfinished (Pending or Running) execution, by deployment id, then oldest
        first. O(u log u) in the u unfinished executions (the `_open` index), not in the
        history held."""
        rows = self._rows
        return [rows[i] for dep in sorted(self._open) for i in self._open_ids(dep)]

    def fire_of(self, deployment_id: str, scheduled_at: int) -> Execution | None:
        """The execution fired for that scheduled time, if held."""
        exec_id = self._fires.get((deployment_id, scheduled_at))
        return None if exec_id is None else self._rows[exec_id]

    def misses(self, deployment_id: str) -> tuple[int, list[dict[str, Any]]]:
        """(scheduled times missed in all, the last `MAX_MISSES` records, oldest first)."""
        rows = [{"first": format_ts(f), "last": format_ts(la), "count": n, "reason": r,
                 "recorded_at": at}
                for f, la, n, r, at in self._misses.get(deployment_id, ())]
        return self._missed.get(deployment_id, 0), rows

    def miss_ranges(self, deployment_id: str) -> list[tuple[int, int, int, str]]:
        """The kept miss records as (first, last, count, reason), oldest first."""
        return [m[:4] for m in self._misses.get(deployment_id, ())]

    # ------------------------------------------------------------------ snapshots
    def section(self) -> dict[str, Any]:
        """``{"rows": [...], "marks": [[dep, mark, missed]...], "misses": [[dep, first, last,
        count, reason, at]...]}``: rows in creation order, marks and misses by deployment id
        (misses oldest first). Deterministic."""
        return {"rows": [e.row() for e in self._rows.values()],
                "marks": [[d, self._marks[d], self._missed.get(d, 0)]
                          for d in sorted(self._marks)],
                "misses": [[d, *m] for d in sorted(self._misses) for m in self._misses[d]]}

    @classmethod
    def from_section(cls, raw: Any, deployment_ids: Iterable[str]) -> ExecutionTable:
        """A table from `section()`; ValueError for anything apply could not have stored
        (marks and misses only of the snapshot's deployments, `deployment_ids`)."""
        if type(raw) is not dict or raw.keys() != {"rows", "marks", "misses"}:
            raise ValueError("executions must be a map of rows, marks and misses")
        if any(type(raw[k]) is not list for k in raw):
            raise ValueError("execution rows, marks and misses must be lists")
        known = frozenset(deployment_ids)
        table = cls()
        try:
            for row in raw["rows"]:
                e = _parse_row_output(row)
                if e.id in table._rows:
                    raise ValueError(f"execution {e.id} is a duplicate")
                if e.scheduled_at is not None and (e.group,
                                                   e.scheduled_at) in table._fires:
                    raise ValueError(f"execution {e.id} repeats a cron fire")
                table._insert(e, MAX_HISTORY)  # bounded when applied: evict nothing here
            for row in raw["marks"]:
                if type(row) is not list or len(row) != 3:
                    raise ValueError("a mark row is not [deployment, mark, missed]")
                dep, mark, missed = _id(row[0], "deployment_id"), row[1], row[2]
                if dep not in known or dep in table._marks:
                    raise ValueError(f"mark of deployment {dep} is a duplicate or orphan")
                table._marks[dep] = _epoch(mark, "mark")
                if not is_int(missed) or not 0 <= missed <= MAX_COUNT:
                    raise ValueError("a missed count must be a non-negative integer")
                if missed:
                    table._missed[dep] = missed
            for row in raw["misses"]:
                if type(row) is not list or len(row) != 6:
                    raise ValueError("a miss row is not [deployment, first, last, count, "
                                     "reason, at]")
                dep, first, last, count, reason, at = row
                if dep not in table._marks:
                    raise ValueError(f"miss of deployment {dep!r:.70} without a mark")
                first, last = _epoch(first, "first"), _epoch(last, "last")
                if not first <= last <= table._marks[dep] or not is_int(count) or count < 1:
                    raise ValueError("a miss must be first <= last <= mark with a count")
                if reason not in MISS_REASONS or type(reason) is not str:
                    raise ValueError("a miss reason must be late or skipped")
                _ts(at, "at")
                misses = table._misses.setdefault(dep, deque())
                misses.append((first, last, count, reason, at))
                if len(misses) > MAX_MISSES:
                    raise ValueError(f"more than {MAX_MISSES} misses of deployment {dep}")
        except (ExecutionCommandError, ValidationError) as exc:
            raise ValueError(str(exc)) from None
        return table


def _bump(counts: dict[str, int], key: str, sign: int) -> None:
    """counts[key] += sign, dropping keys that reach 0."""
    n = counts.get(key, 0) + sign
    if n:
        counts[key] = n
    else:
        counts.pop(key, None)


def _adhoc_fields(artifact: Any, entry: Any, runtime: Any) -> tuple[str, str, str]:
    """(artifact digest, entry path, runtime) of an ad-hoc run, checked (ValidationError)."""
    if not is_digest(artifact):
        raise ValidationError("artifact", "must be a SHA-256 digest (64 lowercase hex digits)")
    try:
        entry = check_path(entry, "entry")
    except ArtifactError as exc:
        raise ValidationError("entry", f"must be a safe relative file path ({exc})") from None
    return artifact, entry, validate_runtime(runtime)


def _retries_of(dep: dict[str, Any]) -> int:
    """The retries a new execution of stored deployment `dep` gets (its `retries`, else 0)."""
    n = dep.get("retries", 0)
    return int(n) if is_int(n) and 0 <= n <= MAX_RETRIES else 0


def _requeued(e: Execution) -> Execution:
    """`e` just ended Failed or Lost: with attempts left (``attempt <= retries``) it is
    queued again (Pending, attempt + 1, no node: the leader places it, preferring another
    node), the ended attempt kept in `past`; else `e` as it is. Deterministic."""
    if e.status not in (FAILED, LOST) or e.attempt > e.retries or e.attempt >= MAX_ATTEMPT:
        return e
    return replace(e, status=PENDING, attempt=e.attempt + 1, node=None, exit_code=None,
                   started_at=None, completed_at=None, duration_ms=None, error=None,
                   past=(*e.past, e.attempt_record()))


def _parse_attempts(raw: Any, retries: Any, attempt: int) -> tuple[int, tuple[Attempt, ...]]:
    """(retries, past attempts) of a snapshot row's tail; ValueError unless apply could have
    stored them (attempts 1, 2, ... before the current one, each ended Failed or Lost)."""
    if not is_int(retries) or not 0 <= retries <= MAX_RETRIES or type(raw) is not list:
        raise ValueError("execution retries must be 0..10 with a list of past attempts")
    past: list[Attempt] = []
    for i, a in enumerate(raw, 1):
        if type(a) is not list or len(a) != len(ATTEMPT_FIELDS):
            raise ValueError("a past attempt is a list of "
                             + ", ".join(ATTEMPT_FIELDS))
        n, node, status, code, started, completed, error = a
        if n != i or status not in (FAILED, LOST) or type(status) is not str:
            raise ValueError("past attempts must be numbered from 1 and Failed or Lost")
        if code is not None and (not is_int(code) or not -255 <= code <= 255):
            raise ValueError("a past attempt's exit_code must be -255..255 or null")
        if error is not None and (type(error) is not str or len(error) > MAX_ERROR):
            raise ValueError("a past attempt's error must be a short string or null")
        for t, f in ((started, "started_at"), (completed, "completed_at")):
            if t is not None:
                _ts(t, f)
        past.append((n, None if node is None else _node(node), status, code, started,
                     completed, error))
    if len(past) > retries or len(past) > attempt - 1 or (
            not retries and not past):
        raise ValueError("past attempts must be the attempts before the current one, at "
                         "most retries")
    return int(retries), tuple(past)


def _parse_row_output(row: Any) -> Execution:
    """A row of `Execution.row`: `_parse_row`'s, with an output map last or not."""
    if type(row) is list and len(row) > _ROW_LEN and type(row[-1]) is dict:
        e = _parse_row(row[:-1])
        raw = row[-1]
        if not raw.keys() <= set(OUTPUT_FIELDS):
            raise ValueError("an execution row's output map has unknown fields")
        out = _output(raw, e.terminal)
        if not out:
            raise ValueError("an execution row with an output map holds no output")
        return replace(e, **out)
    return _parse_row(row)


def _parse_row(row: Any) -> Execution:
    # an ad-hoc run has no deployment, so no retries: never both tails
    lengths = (_ROW_LEN, _ADHOC_ROW_LEN, _ROW_LEN + _RETRY_LEN)
    if type(row) is not list or len(row) not in lengths:
        raise ValueError("an execution row is a list of "
                         + ", ".join(map(str, lengths)) + " values")
    tail: list[Any] = []
    if len(row) == _ROW_LEN + _RETRY_LEN:  # [retries, past attempts] last
        tail, row = row[-_RETRY_LEN:], row[:-_RETRY_LEN]
    adhoc = row[_ROW_LEN:]
    (exec_id, dep_id, ns, name, status, exit_code, node, at, attempt, created, started,
     completed, dur, error, env, args, timeout) = row[:_ROW_LEN]
    if adhoc:
        if dep_id is not None or at is not None:
            raise ValueError("an ad-hoc execution row has no deployment and no cron time")
        adhoc = list(_adhoc_fields(*adhoc))
    elif dep_id is None:
        raise ValueError("an execution row without a deployment must name an artifact")
    if type(status) is not str or status not in STATUSES:
        raise ValueError("execution status is not one of " + ", ".join(STATUSES))
    if exit_code is not None and (not is_int(exit_code) or not -255 <= exit_code <= 255):
        raise ValueError("execution exit_code must be -255..255 or null")
    if not is_int(attempt) or not 1 <= attempt <= MAX_ATTEMPT:
        raise ValueError("execution attempt out of range")
    if dur is not None and (not is_int(dur) or dur < 0):
        raise ValueError("execution duration_ms must be a non-negative integer or null")
    if error is not None and (type(error) is not str or len(error) > MAX_ERROR):
        raise ValueError("execution error must be a short string or null")
    if not is_int(timeout) or not 1 <= timeout <= MAX_TIMEOUT:
        raise ValueError("execution timeout out of range")
    for t, f in ((started, "started_at"), (completed, "completed_at")):
        if t is not None:
            _ts(t, f)
    _ts(created, "created_at")
    retries, past = (0, ()) if not tail else _parse_attempts(tail[1], tail[0], attempt)
    artifact, entry, runtime = adhoc if adhoc else (None, None, None)
    return Execution(_id(exec_id), None if dep_id is None else _id(dep_id, "deployment_id"),
                     validate_name(ns, "namespace"), validate_name(name), status, exit_code,
                     None if node is None else _node(node),
                     None if at is None else _epoch(at, "scheduled_at"), attempt, created,
                     started, completed, dur, error, validate_env(env), validate_args(args),
                     timeout, artifact, entry, runtime, retries, past)


# ---------------------------------------------------------------------- proposer side
def cron_command(c: Fire | Miss, *, ts: str, round_id: str,
                 history: int = DEFAULT_HISTORY) -> dict[str, Any]:
    """The log form of one cron plan command. `round_id` names the plan it comes from
    (e.g. ``<node>.<term>.<n>``, unique per round): the key is
    ``cron-<round>-<dep>-<after>-<time>``, so a resend of the same proposal dedups, while a
    command of another round is evaluated afresh. A key derived from the times alone would
    not do: a chained command refused because its predecessor did not apply (409, which the
    dedup table remembers) would answer that 409 forever once the mark does reach its
    `after`, wedging the job. Two rounds proposing the same fire still make one execution
    (the table answers the held one). A fire carries `history` (the proposer's
    --execution-history) unless it is the default."""
    after = "none" if c.after is None else c.after
    if isinstance(c, Fire):
        cmd: dict[str, Any] = {"v": COMMAND_VERSION, "op": "cron.fire",
                               "key": check_key(f"cron-{round_id}-{c.deployment_id}-{after}-"
                                                f"{c.scheduled_at}"),
                               "ts": ts, "id": fire_id(c.deployment_id, c.scheduled_at),
                               "deployment_id": c.deployment_id,
                               "scheduled_at": c.scheduled_at, "after": c.after}
        if c.cancel:
            cmd["cancel"] = list(c.cancel)
        if history != DEFAULT_HISTORY:  # absent means the default: the same log as before
            cmd["history"] = history
        return cmd
    return {"v": COMMAND_VERSION, "op": "cron.miss",
            "key": check_key(f"cron-{round_id}-{c.deployment_id}-{after}-{c.first}-"
                             f"{c.last}"),
            "ts": ts, "deployment_id": c.deployment_id, "first": c.first, "last": c.last,
            "count": c.count, "reason": c.reason, "after": c.after}
