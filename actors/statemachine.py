"""The state-machine actor: applies committed entries to the deployments store, in order.

Runs on its own thread; it is the only writer of the `DeploymentStore` (the API thread only
reads it). Invariants: entries arrive from raft in log order, each exactly once; an entry at or
below the applied index (a replay) is skipped; after every batch one `fsm.applied` goes to the
API carrying the new applied index and the results of the commands this node proposed.
"""

from __future__ import annotations

import logging

import zmq

from actors.base import Actor
from prisn.fsm.commands import CommandError, decode_entry
from prisn.fsm.deployments import DeploymentStore
from prisn.messages import Applied, Apply, Msg

log = logging.getLogger("prisn.fsm")


class StateMachineActor(Actor):
    def __init__(self, ctx: zmq.Context, node_id: str, store: DeploymentStore, **kw) -> None:
        super().__init__("fsm", ctx, node_id, **kw)
        self.store = store

    def on_messages(self, msgs: list[Msg]) -> None:
        results: list = []
        applied_any = False
        store = self.store
        me = self.node_id
        for m in msgs:
            if not isinstance(m, Apply):
                continue
            for entry in m.entries:
                index, _term, kind, data = entry
                if index <= store.applied_index:
                    continue
                out = store.apply(index, kind, data)
                applied_any = True
                if out is not None:
                    origin, rid = entry_origin(data)
                    if origin == me:
                        results.append([rid, out[0], out[1]])
        if applied_any:
            self.send("api", Applied(src="fsm", dst="api", index=store.applied_index,
                                     results=results))


def entry_origin(data: bytes) -> tuple[str, int]:
    """(origin node, rid) of a COMMAND entry; ("", 0) when the data is not a command."""
    try:
        origin, rid, _cmd = decode_entry(data)
    except CommandError:
        return "", 0
    return origin, rid
