"""`LogNode`: a FakeNodeClient with a scripted `read_logs`, for the log routes' HTTP tests."""

from __future__ import annotations

from typing import Any

from actors.api.errors import Unavailable
from actors.api.node import FakeNodeClient
from prisn.messages import LogsReply


class LogNode(FakeNodeClient):
    """A FakeNodeClient whose `read_logs` answers from `outputs` (instance -> stdout bytes;
    (instance, "stderr") -> stderr bytes) and records each call; `refuse` makes it answer
    that (code, reason)."""

    def __init__(self) -> None:
        super().__init__("node1")
        self.outputs: dict[str, bytes] = {}
        self.calls: list[dict[str, Any]] = []
        self.refuse: tuple[int, str] | None = None
        self.raise_unavailable: str | None = None

    async def read_logs(self, node: str, instance: str, *, offset: int | None,
                        tail: int | None, limit: int, timeout: float,
                        stream: str = "stdout") -> LogsReply:
        self.calls.append({"node": node, "instance": instance, "offset": offset,
                           "tail": tail, "limit": limit, "stream": stream})
        if self.raise_unavailable:
            raise Unavailable(self.raise_unavailable)
        if self.refuse:
            return LogsReply(cluster="", rid=0, code=self.refuse[0], reason=self.refuse[1])
        data = self.outputs.get(instance if stream == "stdout" else (instance, stream), b"")
        start = offset if offset is not None else max(0, len(data) - tail) if tail else 0
        piece = data[start:start + limit]
        return LogsReply(cluster="", rid=0, instance=instance, offset=start,
                         next_offset=start + len(piece), data=piece)
