"""The CBOR envelope codec: the only place where bytes become message objects.

Invariants:
- Never unpickles and never builds anything but the registered dataclasses in
  `prisn.messages.REGISTRY`; CBOR tags are refused (a tag hook that raises).
- A frame larger than `max_bytes` is refused before it is parsed.
- Every field is checked against its annotation; unknown or missing required fields refuse.
- `decode` raises only `DecodeError`; `Decoder.try_decode` turns that into a counted, logged drop.
Runs on whichever thread calls it; `Decoder` counters are per instance (one per actor).
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import MISSING
from typing import Any

import cbor2

from prisn.messages import REGISTRY, WIRE_VERSION, Msg, fields_of

log = logging.getLogger("prisn.codec")

DEFAULT_MAX_BYTES = 16 << 20  # peer and local frames; request bodies are capped at 10 MiB


class DecodeError(ValueError):
    """Bytes that are not a well-formed message of a known type."""


def _no_tags(_decoder: Any, tag: Any) -> Any:
    raise DecodeError(f"CBOR tag {tag.tag} refused")


# Annotation string -> accepted Python types. Annotations are strings (postponed evaluation).
FIELD_KINDS: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "bool": (bool,),
    "str": (str,),
    "bytes": (bytes,),
    "list": (list,),
    "dict": (dict,),
}


def _spec(cls: type[Msg]) -> tuple[tuple[str, tuple[type, ...], bool], ...]:
    """(name, accepted types, required) for each wire field of `cls`, cached on first use."""
    cached = _SPECS.get(cls)
    if cached is not None:
        return cached
    out = []
    for name in fields_of(cls):
        f = cls.__dataclass_fields__[name]
        ann = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "object")
        kinds = FIELD_KINDS.get(ann)
        if kinds is None:
            raise TypeError(f"{cls.__name__}.{name}: unsupported wire type {ann!r}")
        required = f.default is MISSING and f.default_factory is MISSING
        out.append((name, kinds, required))
    spec = tuple(out)
    _SPECS[cls] = spec
    return spec


_SPECS: dict[type, tuple[tuple[str, tuple[type, ...], bool], ...]] = {}


def encode(msg: Msg) -> bytes:
    """Encode `msg` as one CBOR map (envelope + fields)."""
    d: dict[str, Any] = {"v": WIRE_VERSION, "t": msg.T}
    for name in fields_of(type(msg)):
        d[name] = getattr(msg, name)
    return cbor2.dumps(d)


def decode(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> Msg:
    """Decode one frame into its message dataclass, or raise `DecodeError`."""
    if len(data) > max_bytes:
        raise DecodeError(f"frame of {len(data)} bytes exceeds {max_bytes}")
    fp = io.BytesIO(data)
    try:
        d = cbor2.CBORDecoder(fp, tag_hook=_no_tags).decode()
    except DecodeError:
        raise
    except Exception as e:  # cbor2 raises several types on garbage
        raise DecodeError(f"bad CBOR: {e}") from None
    if fp.tell() != len(data):
        raise DecodeError(f"{len(data) - fp.tell()} bytes after the message")
    if not isinstance(d, dict):
        raise DecodeError("envelope is not a map")
    v = d.get("v")
    if type(v) is not int or v != WIRE_VERSION:
        raise DecodeError(f"unsupported wire version {v!r}")
    t = d.get("t")
    cls = REGISTRY.get(t) if isinstance(t, str) else None
    if cls is None:
        raise DecodeError(f"unknown message type {t!r}")
    kwargs: dict[str, Any] = {}
    for name, kinds, required in _spec(cls):
        if name in d:
            value = d[name]
            # bool is an int subclass: keep the two apart in both directions.
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise DecodeError(f"{t}.{name}: expected {kinds[0].__name__}")
            if type(value) is list or type(value) is dict:
                _check_plain(value, 0, f"{t}.{name}")
            kwargs[name] = value
        elif required:
            raise DecodeError(f"{t}: missing field {name}")
    extra = d.keys() - kwargs.keys() - {"v", "t"}
    if extra:
        raise DecodeError(f"{t}: unknown fields {sorted(map(str, extra))}")
    return cls(**kwargs)


_SCALARS = (int, str, bytes, bool, float, type(None))
MAX_DEPTH = 16


def _check_plain(value: Any, depth: int, where: str) -> None:
    """Only plain CBOR data inside list/dict fields: no tag-built objects (datetime, set,
    Decimal, ...), no shared references (a list containing itself hits the depth cap)."""
    if depth > MAX_DEPTH:
        raise DecodeError(f"{where}: nested deeper than {MAX_DEPTH}")
    if type(value) is list:
        for item in value:
            tv = type(item)
            if tv is list or tv is dict:
                _check_plain(item, depth + 1, where)
            elif tv not in _SCALAR_TYPES:
                raise DecodeError(f"{where}: {tv.__name__} is not plain data")
    else:
        for k, item in value.items():
            if type(k) not in _KEY_TYPES:
                raise DecodeError(f"{where}: map key of type {type(k).__name__}")
            tv = type(item)
            if tv is list or tv is dict:
                _check_plain(item, depth + 1, where)
            elif tv not in _SCALAR_TYPES:
                raise DecodeError(f"{where}: {tv.__name__} is not plain data")


_SCALAR_TYPES = frozenset(_SCALARS)
_KEY_TYPES = frozenset((str, int, bytes))


class Decoder:
    """Per-actor decoder that counts and logs (rate-limited) every dropped frame."""

    def __init__(self, owner: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.owner = owner
        self.max_bytes = max_bytes
        self.dropped = 0
        self._last_log = 0.0

    def try_decode(self, data: bytes) -> Msg | None:
        """The message, or None after counting and logging the drop."""
        try:
            return decode(data, self.max_bytes)
        except DecodeError as e:
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_log > 1.0:
                self._last_log = now
                log.warning("%s: dropped malformed message (%d so far): %s", self.owner,
                            self.dropped, e)
            return None


# Every registered type must be encodable: fail at import, not at the first message.
for _cls in REGISTRY.values():
    _spec(_cls)
