"""`Feeder`: drives a DeploymentStore with commands as consecutive log entries (a fake
log), for the state-machine tests. Test modules import it from here, never from each other."""

from __future__ import annotations

import itertools

from prisn.fsm.commands import CommandFactory, encode_entry
from prisn.fsm.deployments import DeploymentStore
from prisn.messages import EntryKind


class Feeder:
    """Proposes commands into a store as consecutive COMMAND entries (a fake log)."""

    def __init__(self, store: DeploymentStore | None = None) -> None:
        self.store = store if store is not None else DeploymentStore()
        ids = (f"id{n:06d}" for n in itertools.count(1))
        ticks = itertools.count(1_700_000_000)
        self.cf = CommandFactory(clock=lambda: float(next(ticks)), new_id=lambda: next(ids))
        self.entries: list[tuple[int, int, bytes]] = []
        self.rid = itertools.count(1)

    def entry(self, kind: int, data: bytes) -> tuple[int, dict] | None:
        index = self.store.applied_index + 1
        self.entries.append((index, kind, data))
        return self.store.apply(index, kind, data)

    def run(self, command: dict) -> tuple[int, dict]:
        result = self.entry(EntryKind.COMMAND, encode_entry("n1", next(self.rid), command))
        assert result is not None
        return result

    def create(self, **spec: object) -> tuple[int, dict]:
        spec.setdefault("source", "print(1)")
        key = spec.pop("key", None)
        return self.run(self.cf.create(spec, key=key))  # type: ignore[arg-type]
