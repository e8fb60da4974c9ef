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
    ``[index, term, kind, data]``, starting at `snapshot_index + 1`."""

    term: int = 0
    vote: str = ""
    commit: int = 0
    entries: list = field(default_factory=list)
    snapshot_index: int = 0
    snapshot_term: int = 0
    snapshot_membership: Membership | None = None
