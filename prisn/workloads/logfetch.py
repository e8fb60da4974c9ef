"""Bounds of the peer log messages (`LogsRequest` / `LogsReply`) and the JSON shape of a log
chunk, shared by the raft shell (which drops what fails here), the API bridge and the tests.

Pure; any thread.
"""

from __future__ import annotations

from typing import Any

from prisn.messages import LogsReply, LogsRequest, Msg
from prisn.workloads.model import Placement

MAX_LOG_REPLY = 1 << 20  # bytes of output per reply (and per HTTP answer)
MAX_INSTANCE_ID = 200  # characters, as the runner's `MAX_ID`
MAX_REASON = 1024  # characters of an error reason
MAX_OFFSET = (1 << 63) - 1
MAX_NODE_ID = 128
STREAMS = ("stdout", "stderr")  # as the runner's `actors.runner.STREAMS`


def runner_id(p: Placement) -> str:
    """The id the runner knows the instance of placement `p` by (its log directory's name):
    ``<namespace>.<name>.<index>.<epoch>``, as deployment status lists it. Must stay equal to
    the id the node-side controller gives the runner (`prisn.fsm.instances.instance_id`)."""
    s = p.slot
    return f"{s.namespace}.{s.name}.{s.index}.{p.epoch}"


def find_instance(placed: list[Placement], wanted: str | None) -> Placement | None:
    """The placement `wanted` names among one deployment's `placed`: None -> the lowest
    replica index; digits -> that replica index; else a slot id (``ns/name/index``) or a
    runner id (`runner_id`, the current epoch only). None if it names none of them."""
    if not placed:
        return None
    if wanted is None:
        return min(placed, key=lambda p: p.slot.index)
    if wanted.isdigit():
        return next((p for p in placed if p.slot.index == int(wanted)), None)
    return next((p for p in placed if wanted in (str(p.slot), runner_id(p))), None)


def request_error(m: LogsRequest) -> str | None:
    """Why `m` is not a well-formed log request, or None."""
    if not 0 < len(m.instance) <= MAX_INSTANCE_ID:
        return "instance id must be 1-200 characters"
    if not -1 <= m.offset <= MAX_OFFSET or not -1 <= m.tail <= MAX_OFFSET:
        return "offset and tail must be -1 (none) or at least 0"
    if not 0 < m.limit <= MAX_LOG_REPLY:
        return f"limit must be 1-{MAX_LOG_REPLY}"
    if m.stream not in STREAMS:
        return "stream must be stdout or stderr"
    return None


def reply_error(m: LogsReply) -> str | None:
    """Why `m` is not a well-formed log reply, or None."""
    if not 100 <= m.code <= 599:
        return "code must be an HTTP status"
    if len(m.reason) > MAX_REASON or len(m.instance) > MAX_INSTANCE_ID:
        return "reason or instance too long"
    if len(m.data) > MAX_LOG_REPLY:
        return f"data over {MAX_LOG_REPLY} bytes"
    if not 0 <= m.offset <= MAX_OFFSET or m.next_offset != m.offset + len(m.data):
        return "offsets must frame the data"
    return None


def peer_error(m: Msg, *, me: str, cluster: str, members: Any) -> str | None:
    """Why the raft shell must drop a log message that came from the peer socket: not for
    this node or cluster, not from another member, or malformed. None: deliver it."""
    if not cluster or m.cluster != cluster:  # type: ignore[attr-defined]
        return "wrong cluster"
    if m.dst != me or m.src == me or m.src not in members:
        return "not between members"
    if isinstance(m, LogsRequest):
        return request_error(m)
    if isinstance(m, LogsReply):
        return reply_error(m)
    return "not a log message"


def chunk_json(instance: str, node: str, offset: int, data: bytes,
               truncated: bool, stream: str = "stdout") -> dict[str, Any]:
    """The HTTP answer of one chunk of `stream`: `data` as text (invalid UTF-8 becomes
    U+FFFD)."""
    return {"instance": instance, "node": node, "stream": stream, "offset": offset,
            "next_offset": offset + len(data), "truncated": truncated,
            "data": data.decode("utf-8", "replace")}
