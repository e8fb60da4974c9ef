"""The CBOR envelope codec: the only place where bytes become message objects.

Invariants:
- Never unpickles and never builds anything but the registered dataclasses in
  `prisn.messages.REGISTRY`; CBOR tags are refused (a tag hook that raises).
- A frame larger than `max_bytes` is refused before it is parsed.
- Every field is checked against its annotation; a missing required field refuses.
- Evolvable wire (rolling upgrades): fields the message class does not know are ignored, but
  their values must still be plain CBOR data (no tags, no simple/undefined values, nested at
  most `MAX_DEPTH`), so garbage is still refused. An unknown message type refuses
  (`UnknownType`), and so does another major wire version `v` (`VersionMismatch`); the
  optional minor version `m` (absent = 0) of a known major is accepted whatever its value.
- `decode` raises only `DecodeError` (or a subclass); `Decoder.try_decode` turns that into a
  counted (per `DecodeError.reason`), logged drop.
Runs on whichever thread calls it; `Decoder` counters are per instance (one per actor).
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import MISSING
from typing import Any

import cbor2

from prisn.messages import REGISTRY, WIRE_MINOR, WIRE_VERSION, Msg, fields_of

log = logging.getLogger("prisn.codec")

DEFAULT_MAX_BYTES = 16 << 20  # peer and local frames; request bodies are capped at 10 MiB


class DecodeError(ValueError):
    """Bytes that are not a well-formed message of a known type."""

    reason = "malformed"  # the drop counter's label


class UnknownType(DecodeError):
    """A well-formed envelope of a message type this node does not know (a newer peer)."""

    reason = "unknown_type"


class VersionMismatch(DecodeError):
    """An envelope of another major wire version (an int other than ours); `src`, `version`
    and `minor` as the sender put them (`src` "" and `minor` 0 when absent or odd)."""

    reason = "wire_version"

    def __init__(self, text: str, src: str, version: int, minor: int = 0) -> None:
        super().__init__(text)
        self.src = src
        self.version = version
        self.minor = minor


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
    """Encode `msg` as one CBOR map (envelope + fields). The minor version `m` is omitted
    while it is 0, so frames are byte-identical to those of nodes without it."""
    d: dict[str, Any] = {"v": WIRE_VERSION, "t": msg.T}
    if WIRE_MINOR:
        d["m"] = WIRE_MINOR
    for name in fields_of(type(msg)):
        d[name] = getattr(msg, name)
    return cbor2.dumps(d)


def decode(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> Msg:
    """Decode one frame into its message dataclass, or raise `DecodeError`."""
    return decode_versioned(data, max_bytes)[0]


_ENVELOPE = frozenset({"v", "m", "t"})


def decode_versioned(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[Msg, int]:
    """(the message, the sender's minor wire version), or raise `DecodeError`."""
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
    if type(v) is not int:  # absent, or not even a number: garbage, not another version
        raise DecodeError(f"unsupported wire version {v!r}")
    if v != WIRE_VERSION:
        src, m = d.get("src"), d.get("m", 0)
        raise VersionMismatch(f"unsupported wire version {v!r}",
                              src if type(src) is str else "", v,
                              m if type(m) is int and m >= 0 else 0)
    minor = d.get("m", 0)
    if type(minor) is not int or minor < 0:
        raise DecodeError(f"bad minor wire version {minor!r}")
    t = d.get("t")
    if not isinstance(t, str):
        raise DecodeError(f"unknown message type {t!r}")  # not even a type name: malformed
    cls = REGISTRY.get(t)
    if cls is None:
        _check_plain(d, 0, t[:64])  # an unknown type is dropped as such only if well-formed
        raise UnknownType(f"unknown message type {t[:64]!r}")
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
    if len(d) > len(kwargs) + 2:  # more than the known fields, "v" and "t"
        extra = {k: d[k] for k in d.keys() - kwargs.keys() - _ENVELOPE}
        if extra:  # a newer peer's fields: ignored, but only if they are plain data
            _check_plain(extra, 0, f"{t} (unknown fields)")
    return cls(**kwargs), minor


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
    """Per-actor decoder that counts and logs (rate-limited) every dropped frame.

    `dropped` counts every drop (other code of the owning actor adds its own refusals to it);
    `drops` splits the codec's drops by `DecodeError.reason`. Owned by one thread."""

    def __init__(self, owner: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.owner = owner
        self.max_bytes = max_bytes
        self.dropped = 0
        self.drops: dict[str, int] = {}
        self._last_log = 0.0

    def try_decode(self, data: bytes) -> Msg | None:
        """The message, or None after counting and logging the drop."""
        try:
            return decode_versioned(data, self.max_bytes)[0]
        except DecodeError as e:
            self.count(e)
            return None

    def try_decode_versioned(self, data: bytes) -> tuple[Msg, int] | None:
        """(the message, the sender's minor wire version), or None after counting the drop."""
        try:
            return decode_versioned(data, self.max_bytes)
        except DecodeError as e:
            self.count(e)
            return None

    def count(self, e: DecodeError) -> None:
        """Count and log (at most once a second) the drop `e`."""
        self.dropped += 1
        self.drops[e.reason] = self.drops.get(e.reason, 0) + 1
        now = time.monotonic()
        if now - self._last_log > 1.0:
            self._last_log = now
            what = "malformed" if e.reason == "malformed" else e.reason.replace("_", " ")
            log.warning("%s: dropped a message (%s, %d drops so far): %s", self.owner, what,
                        self.dropped, e)


# Every registered type must be encodable: fail at import, not at the first message.
for _cls in REGISTRY.values():
    _spec(_cls)
    if _ENVELOPE & set(fields_of(_cls)):
        raise TypeError(f"{_cls.__name__}: a field is named like an envelope key {_ENVELOPE}")
