"""Execution output: secret redaction and the tails recorded with a result (issue 15).

Pure; any thread.

- `redact` replaces every occurrence of each secret value (its UTF-8 bytes) by ``***``.
  Values shorter than `MIN_SECRET` bytes are left alone: replacing every "1" or "ab" of an
  output would destroy it and hide nothing. Longer values are replaced first, so a value
  that holds another is replaced whole.
- `tail_text` makes the text an ``execution.update`` carries: the last `limit` UTF-8 bytes
  of a stream, cut at a character boundary, invalid UTF-8 replaced by U+FFFD.
- `Redactor` redacts a stream read chunk by chunk (follow): it holds back the last
  ``longest - 1`` bytes of what it was given, so a value split over two chunks is still
  replaced whole; `flush` releases the rest at the end of the stream.
"""

from __future__ import annotations

from collections.abc import Iterable

MIN_SECRET = 4  # bytes; shorter secret values are not redacted
MASK = b"***"


def secret_values(values: Iterable[str]) -> tuple[bytes, ...]:
    """The redactable values (UTF-8, at least `MIN_SECRET` bytes), longest first, unique."""
    out = {v.encode() for v in values if isinstance(v, str)}
    return tuple(sorted((v for v in out if len(v) >= MIN_SECRET), key=lambda v: (-len(v), v)))


def redact(data: bytes, secrets: tuple[bytes, ...]) -> bytes:
    """`data` with every occurrence of each value of `secrets` (from `secret_values`)
    replaced by ``***``."""
    for v in secrets:
        if v in data:
            data = data.replace(v, MASK)
    return data


def tail_text(data: bytes, limit: int, *, cut: bool = False) -> tuple[str, bool]:
    """(text, truncated): the last `limit` UTF-8 bytes of `data` as text, starting at a
    character boundary (an invalid byte becomes U+FFFD, and the text is cut again so its
    UTF-8 stays within `limit`). `cut`: `data` itself already misses its beginning."""
    truncated = cut or len(data) > limit
    piece = data[-limit:] if limit > 0 else b""
    if truncated:  # the first bytes may be the end of a character cut in two
        i = 0
        while i < min(3, len(piece)) and piece[i] & 0xC0 == 0x80:
            i += 1
        piece = piece[i:]
    text = piece.decode("utf-8", "replace")
    while len(text.encode()) > limit:  # replacement characters made it longer
        text = text[len(text) // 16 + 1:]
        truncated = True
    return text, truncated


def read_extra(secrets: tuple[bytes, ...]) -> int:
    """Bytes to read before a tail so that a value cut by its start can be dropped whole:
    one less than the longest value (0 without secrets)."""
    return max((len(v) for v in secrets), default=1) - 1


def redacted_tail(data: bytes, limit: int, secrets: tuple[bytes, ...], *,
                  cut: bool) -> tuple[str, bool]:
    """`tail_text` of `data` with `secrets` redacted. `data` is the last `limit` +
    `read_extra(secrets)` bytes of a stream; `cut`: the stream has bytes before it. Then
    its first `read_extra` bytes may be the end of a value whose start was not read: they
    are dropped after redacting (a value wholly read is already ``***``)."""
    data = redact(data, secrets)
    if cut:
        data = data[read_extra(secrets):]
    return tail_text(data, limit, cut=cut)


class Redactor:
    """Redacts one stream given in chunks (see the module doc). Owned by one task."""

    def __init__(self, secrets: tuple[bytes, ...]) -> None:
        self.secrets = secrets
        self.keep = max((len(v) for v in secrets), default=1) - 1
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        """What of the stream so far may be released, redacted."""
        if not self.secrets:
            return data
        buf = redact(self._held + data, self.secrets)
        if self.keep <= 0 or len(buf) <= self.keep:
            self._held = buf
            return b""
        # a value may still start in the last `keep` bytes: hold them (already redacted
        # matches are `***`, which no value of MIN_SECRET bytes can continue)
        cut = len(buf) - self.keep
        self._held = buf[cut:]
        return buf[:cut]

    def flush(self) -> bytes:
        """The rest (the stream ended)."""
        out, self._held = self._held, b""
        return out
