"""A fake outbox for unit tests of one actor: records what the actor sends, no sockets.

It round-trips every message through the real codec, so a test also proves the message is
encodable.
"""

from __future__ import annotations

from prisn.messages import Msg
from transport.codec import decode, encode
from transport.mailbox import MailboxFull


class FakeOutbox:
    """Drop-in for `transport.mailbox.Outbox`; `sent` holds (destination, message) pairs."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Msg]] = []
        self.full: set[str] = set()  # destinations whose inbox a test declares full
        self.forgotten: list[str] = []

    def send(self, to: str, msg: Msg) -> None:
        self.sent.append((to, decode(encode(msg))))

    def send_bytes(self, to: str, data: bytes) -> None:
        if to in self.full:  # the real Outbox raises this once its send timeout passed
            raise MailboxFull(f"local mailbox {to!r} full for the send timeout")
        self.sent.append((to, decode(data)))

    def send_nowait(self, to: str, data: bytes) -> None:
        if to in self.full:
            raise MailboxFull(f"local mailbox {to!r} full")
        self.sent.append((to, decode(data)))

    def forget(self, to: str) -> None:
        self.forgotten.append(to)

    def to(self, dest: str) -> list[Msg]:
        return [m for d, m in self.sent if d == dest]

    def take(self) -> list[tuple[str, Msg]]:
        out, self.sent = self.sent, []
        return out

    def close(self) -> None:
        pass
