"""What the log store hands the Raft core at start, and the membership wire form.

Pure data. Written by the logstore (reading RocksDB before any actor starts), read by
`RaftCore.__init__`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Membership:
    """A cluster configuration: who votes, who only learns, and the cluster's id.

    Travels as the data of a CONFIG entry (CBOR of `to_wire()`); the latest CONFIG entry in the
    log is in force from the moment it is appended (Raft thesis 4.1), committed or not.
    """

    cluster: str
    voters: dict[str, str] = field(default_factory=dict)  # node id -> advertised raft address
    learners: dict[str, str] = field(default_factory=dict)

    def to_wire(self) -> dict:
        return {"cluster": self.cluster, "voters": dict(self.voters), "learners": dict(self.learners)}

    @classmethod
    def from_wire(cls, d: dict) -> Membership:
        return cls(cluster=str(d["cluster"]), voters=dict(d.get("voters", {})),
                   learners=dict(d.get("learners", {})))

    def address_of(self, node_id: str) -> str | None:
        return self.voters.get(node_id) or self.learners.get(node_id)

    def members(self) -> dict[str, str]:
        return {**self.voters, **self.learners}


@dataclass(frozen=True)
class BootState:
    """Durable state recovered at start. `entries` are contiguous and ascending, each
    ``[index, term, kind, data]``, starting at `log_index + 1`.

    `snapshot_*` describe the state machine's starting point (the newest valid snapshot, or
    the log's compaction point when built by `LogStorage.load` alone); the core applies only
    entries after `snapshot_index`. `log_index`/`log_term` are the log's own boundary (its
    compaction point), which may lie before the snapshot (trailing entries kept for slow
    followers); -1 means "same as the snapshot". Invariant: log_index <= snapshot_index.
    """

    term: int = 0
    vote: str = ""
    commit: int = 0
    entries: list = field(default_factory=list)
    snapshot_index: int = 0
    snapshot_term: int = 0
    snapshot_membership: Membership | None = None
    log_index: int = -1
    log_term: int = 0
    snapshot_file: str = ""  # path of the snapshot file (empty: none to send to peers)
    snapshot_id: str = ""  # its checksum (hex), the id InstallSnapshot uses
    snapshot_size: int = 0

    @property
    def log_start(self) -> tuple[int, int]:
        """(index, term) of the log's boundary: entries start right after it."""
        if self.log_index < 0:
            return self.snapshot_index, self.snapshot_term
        return self.log_index, self.log_term
