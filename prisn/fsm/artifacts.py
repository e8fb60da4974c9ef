"""The replicated artifact table: content-addressed archives every node holds (pure).

Command (inside the log entry payload; `v` is `COMMAND_VERSION`, `T` the proposer's RFC 3339
timestamp with milliseconds, built by `ArtifactFactory` on the API thread):

    {"v": 1, "op": "artifact.put", "key": K, "ts": T, "digest": D, "data": BYTES}
    {"v": 1, "op": "artifact.put", "key": K, "ts": T, "digest": D}           (a "touch")

A put with `data` stores the archive once (dedup by digest: 201 new, 200 already stored) after
checking, on every node, that SHA-256(data) is `D` (400 "digest mismatch"), that it is at most
`HARD_MAX_ARTIFACT_BYTES` (413) and a safe archive (`prisn.workloads.artifacts.read_archive`,
400), and that the table stays within `MAX_ARTIFACTS` / `MAX_TOTAL_BYTES` (507). A put without
`data` only renews a stored artifact's grace (200), or answers 404 if it is not stored: the API
sends it when its local copy already holds the digest, so a re-upload does not ship the bytes
through Raft again.

Garbage collection (deterministic: a function of the log only, no clock read):
- `refs` counts the deployments whose `artifact` is the digest (maintained by
  `DeploymentStore` on insert / replace / remove; derived again on restore, never stored).
- A put arms a grace: the artifact is kept unreferenced until ``ts + GRACE_MS`` (the put's own
  `ts`), so an upload survives until the deployment that names it arrives. A deployment
  write that references it clears the grace (it is then kept by its references only).
- `sweep(ts, pinned)` runs after every applied command with that command's `ts`: it drops
  every artifact with no reference whose grace ends at or before `ts`, except those in
  `pinned` (the digests unfinished ad-hoc executions run from: `ExecutionTable.pins`, a
  function of the replicated executions table, so every node pins the same). So deleting (or repointing)
  the last deployment that used an artifact drops it in that same entry, everywhere; an
  upload nobody deploys is dropped by the first command at least `GRACE_MS` after it.

Threads: no lock of its own; `DeploymentStore` calls it under the store's lock (apply on the
state-machine thread, lookups on the API thread). Stored `Artifact` records are immutable.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

from prisn.fsm.commands import COMMAND_VERSION, check_key, format_ts, new_id
from prisn.fsm.results import Result, failure
from prisn.fsm.tokens import TokenCommandError, ts_millis
from prisn.fsm.validation import ValidationError, is_int
from prisn.outcomes import Outcome
from prisn.workloads.artifacts import (
    HARD_MAX_ARTIFACT_BYTES,
    ArtifactError,
    check_digest,
    file_names,
    is_digest,
)

ARTIFACT_OPS: tuple[str, ...] = ("artifact.put",)
MAX_ARTIFACTS = 1024  # constants, not flags: every node must refuse the same puts
MAX_TOTAL_BYTES = 512 << 20
GRACE_MS = 10 * 60 * 1000  # an unreferenced upload is kept this long after its last put
MAX_TS = 64

class ArtifactCommandError(ValueError):
    """A malformed artifact command in the log (400; changes nothing)."""


@dataclass(frozen=True, slots=True)
class Artifact:
    """One stored archive. `files` are its sorted file paths (checked at put)."""

    digest: str
    data: bytes
    created_at: str
    files: frozenset[str]

    @property
    def size(self) -> int:
        return len(self.data)


class ArtifactTable:
    """Artifacts by digest, their reference counts and graces. Deterministic."""

    def __init__(self) -> None:
        self._rows: dict[str, Artifact] = {}
        self._refs: dict[str, int] = {}  # digest -> deployments naming it (only > 0 kept)
        self._grace: dict[str, int] = {}  # digest -> kept unreferenced until (epoch ms); 0 none
        self._total = 0

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def total_bytes(self) -> int:
        return self._total

    def get(self, digest: str) -> Artifact | None:
        return self._rows.get(digest)

    def refs(self, digest: str) -> int:
        return self._refs.get(digest, 0)

    def info(self, digest: str) -> dict[str, Any] | None:
        """The public record of one artifact (no bytes), or None."""
        a = self._rows.get(digest)
        if a is None:
            return None
        return {"digest": a.digest, "size": a.size, "created_at": a.created_at,
                "refs": self._refs.get(digest, 0), "files": len(a.files)}

    def page(self, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """A page of public records ordered by digest, and the total."""
        keys = sorted(self._rows)[offset:offset + limit]
        return [self.info(k) for k in keys], len(self._rows)  # type: ignore[misc]

    # ------------------------------------------------------------------ references
    def check_entry(self, digest: str, source: str) -> None:
        """ValidationError unless `digest` is stored and `source` is one of its files (a
        deployment write that names it; checked at apply, under the store's lock)."""
        a = self._rows.get(digest)
        if a is None:
            raise ValidationError("artifact", f"{digest} is not stored; upload it first "
                                  "(POST /api/v1/artifacts)")
        if source not in a.files:
            raise ValidationError("source", f"{source[:200]!r} is not a file in artifact "
                                  f"{digest[:12]} (it holds {len(a.files)} files)")

    def ref(self, digest: str | None, delta: int) -> None:
        """A deployment naming `digest` was stored (+1) or removed (-1). A new reference
        clears the grace. AssertionError for a reference to nothing (a store bug)."""
        if digest is None:
            return
        if digest not in self._rows:
            raise AssertionError(f"reference to missing artifact {digest}")
        n = self._refs.get(digest, 0) + delta
        if n < 0:
            raise AssertionError(f"artifact {digest} reference count below zero")
        if n:
            self._refs[digest] = n
        else:
            self._refs.pop(digest, None)
        if delta > 0:
            self._grace[digest] = 0

    def sweep(self, ts: Any, pinned: Container[str] = ()) -> list[str]:
        """Drop every unreferenced artifact whose grace ended at or before `ts` (a command's
        timestamp; an invalid one sweeps nothing) and that is not `pinned`. The dropped
        digests, sorted."""
        if len(self._refs) == len(self._rows):
            return []  # every artifact is referenced: the common case, O(1)
        try:
            now = ts_millis(ts)
        except TokenCommandError:
            return []
        dropped = [d for d in sorted(self._rows)
                   if d not in self._refs and self._grace.get(d, 0) <= now
                   and d not in pinned]
        for d in dropped:
            self._total -= self._rows.pop(d).size
            self._grace.pop(d, None)
        return dropped

    # ------------------------------------------------------------------ apply
    def apply(self, cmd: dict[str, Any], pinned: Container[str] = ()) -> Result:
        """Run one artifact command (see the module docstring). Every check happens before
        the single mutation. ArtifactCommandError for a malformed command. `pinned`: as for
        `sweep`."""
        if cmd.get("op") != "artifact.put":
            raise ArtifactCommandError(f"unknown artifact op {cmd.get('op')!r}")
        ts: Any = cmd.get("ts")  # checked by the command's validation
        try:
            now = ts_millis(ts)
            digest = check_digest(cmd.get("digest"))
        except (TokenCommandError, ArtifactError) as exc:
            raise ArtifactCommandError(str(exc)) from None
        if not is_digest(cmd.get("digest")):
            raise ArtifactCommandError("command field 'digest' must be 64 lowercase hex digits")
        data = cmd.get("data")
        current = self._rows.get(digest)
        if "data" not in cmd:
            if current is None:
                return failure(Outcome.NOT_FOUND, f"artifact {digest} is not stored")
            self._renew(digest, now)
            return Outcome.OK, self._answer(current)
        if type(data) is not bytes:
            raise ArtifactCommandError("command field 'data' must be bytes")
        if len(data) > HARD_MAX_ARTIFACT_BYTES:
            return failure(Outcome.TOO_LARGE, f"artifact of {len(data)} bytes exceeds the cluster's hard limit "
                             f"of {HARD_MAX_ARTIFACT_BYTES} bytes")
        if hashlib.sha256(data).hexdigest() != digest:
            return failure(Outcome.INVALID, f"digest mismatch: the data's SHA-256 is not {digest}")
        if current is not None:
            self._renew(digest, now)
            return Outcome.OK, self._answer(current)
        try:
            files = file_names(data)
        except ArtifactError as exc:
            return failure(Outcome.INVALID, str(exc))
        self.sweep(ts, pinned)  # room first: expired uploads go before the bounds are checked
        if len(self._rows) >= MAX_ARTIFACTS:
            return failure(Outcome.DISK_ERROR, f"the cluster holds {len(self._rows)} artifacts, the limit "
                             f"({MAX_ARTIFACTS}); delete deployments that use old ones")
        if self._total + len(data) > MAX_TOTAL_BYTES:
            return failure(Outcome.DISK_ERROR, f"the cluster's artifacts would take {self._total + len(data)} "
                             f"bytes, over the limit of {MAX_TOTAL_BYTES}; delete deployments "
                             "that use old ones")
        art = Artifact(digest, data, ts, frozenset(files))
        self._rows[digest] = art
        self._grace[digest] = now + GRACE_MS
        self._total += len(data)
        return Outcome.CREATED, self._answer(art)

    def _renew(self, digest: str, now: int) -> None:
        self._grace[digest] = max(self._grace.get(digest, 0), now + GRACE_MS)

    @staticmethod
    def _answer(a: Artifact) -> dict[str, Any]:
        return {"digest": a.digest, "size": a.size, "created_at": a.created_at}

    # ------------------------------------------------------------------ snapshots
    def rows(self) -> list[dict[str, Any]]:
        """Snapshot rows ordered by digest: ``{digest, data, created_at, grace_until}``."""
        return [{"digest": d, "data": a.data, "created_at": a.created_at,
                 "grace_until": self._grace.get(d, 0)} for d, a in sorted(self._rows.items())]

    def hash_rows(self) -> list[list[Any]]:
        """What the state hash covers: (digest, created_at, grace) per artifact (the digest
        stands for the bytes, which a restore verifies)."""
        return [[d, a.created_at, self._grace.get(d, 0)] for d, a in sorted(self._rows.items())]

    @classmethod
    def from_rows(cls, rows: Any, referenced: dict[str, int]) -> ArtifactTable:
        """A table from `rows()` and the reference counts the restored deployments imply;
        ValueError for anything `apply` could not have stored (bad digest or bytes, a
        duplicate, an unsafe archive, bounds passed, a reference to a missing artifact)."""
        if type(rows) is not list:
            raise ValueError("artifacts must be a list")
        if len(rows) > MAX_ARTIFACTS:
            raise ValueError(f"more than {MAX_ARTIFACTS} artifacts")
        table = cls()
        keys = {"digest", "data", "created_at", "grace_until"}
        for raw in rows:
            if type(raw) is not dict or set(raw) != keys:
                raise ValueError(f"an artifact row must be a map of {', '.join(sorted(keys))}")
            digest, data, created, grace = (raw["digest"], raw["data"], raw["created_at"],
                                            raw["grace_until"])
            if not is_digest(digest) or digest in table._rows:
                raise ValueError("artifact digest is malformed or duplicated")
            if type(data) is not bytes or hashlib.sha256(data).hexdigest() != digest:
                raise ValueError(f"artifact {digest} bytes do not match their digest")
            if type(created) is not str or not 0 < len(created) <= MAX_TS:
                raise ValueError("artifact created_at must be a short string")
            if not is_int(grace) or grace < 0:
                raise ValueError("artifact grace_until must be a non-negative integer")
            try:
                files = file_names(data)
            except ArtifactError as exc:
                raise ValueError(f"artifact {digest}: {exc}") from None
            table._rows[digest] = Artifact(digest, data, created, frozenset(files))
            table._grace[digest] = grace
            table._total += len(data)
        if table._total > MAX_TOTAL_BYTES:
            raise ValueError(f"artifacts take more than {MAX_TOTAL_BYTES} bytes")
        for digest, n in referenced.items():
            if digest not in table._rows:
                raise ValueError(f"a deployment names artifact {digest}, which is not stored")
            table._refs[digest] = n
        return table


class ArtifactFactory:
    """Builds artifact commands on the API thread; `clock` and `new_id` are injected."""

    def __init__(self, clock: Callable[[], float] = time.time,
                 new_id: Callable[[], str] = new_id) -> None:
        self._clock = clock
        self._new_id = new_id

    def put(self, digest: str, data: bytes | None, *, key: str | None = None) -> dict[str, Any]:
        """An ``artifact.put`` (a touch when `data` is None)."""
        cmd: dict[str, Any] = {"v": COMMAND_VERSION, "op": "artifact.put",
                               "key": check_key(key) if key is not None else self._new_id(),
                               "ts": format_ts(self._clock()), "digest": check_digest(digest)}
        if data is not None:
            cmd["data"] = data
        return cmd
