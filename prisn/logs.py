"""Log output of `prisn server`: plain text or one JSON object per line (`--log-format`).

Set up once by `setup_logging` on the main thread before any actor starts; the formatters
then run on whichever thread logs (logging handlers serialise their writes).

JSON records always carry `time` (RFC 3339, UTC, milliseconds), `level`, `logger`, `node`
(the node id) and `message`; fields a caller passes with ``extra={...}`` (cluster events:
`event`, `term`, `leader`, `member`, ...) are added as they are, and an exception becomes
one `exception` string field, so that a record is always exactly one line.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import types
from typing import Any

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has: anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName"}
_KEYS = ("time", "level", "logger", "node", "message")
MAX_FIELD_CHARS = 4096  # one field of a record (a huge repr never makes a huge line)


def rfc3339(created: float) -> str:
    """`created` (epoch seconds) as ``2026-01-02T03:04:05.678Z``."""
    secs = int(created)
    ms = int((created - secs) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ms:03d}Z"


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value[:MAX_FIELD_CHARS]
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in list(value)[:256]]
    return str(value)[:MAX_FIELD_CHARS]


class JsonFormatter(logging.Formatter):
    """One JSON object per record, one line (newlines in the message are escaped by JSON)."""

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "node": self.node_id,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in _KEYS and not key.startswith("_"):
                out[key] = _jsonable(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def setup_logging(level: str, fmt: str = "text", node_id: str = "") -> None:
    """Main thread, once at start: the root logger writes to stderr in `fmt`.

    Replaces the handler a previous call installed, leaves any other handler alone."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(node_id))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    if fmt == "json":
        _json_hooks()
    handler.set_name("prisn")
    root = logging.getLogger()
    for h in list(root.handlers):
        if h.get_name() == "prisn":
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def _json_hooks() -> None:
    """JSON mode only: Python warnings and uncaught exceptions (main thread or any other)
    become records too, so that nothing writes a non-JSON line to stderr."""
    logging.captureWarnings(True)
    crash = logging.getLogger("prisn.crash")

    def main_hook(typ: type[BaseException], value: BaseException,
                  tb: types.TracebackType | None) -> None:
        if issubclass(typ, KeyboardInterrupt):
            sys.__excepthook__(typ, value, tb)
            return
        crash.critical("uncaught %s: %s", typ.__name__, value, exc_info=(typ, value, tb))

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        crash.critical("uncaught %s in thread %s: %s", args.exc_type.__name__,
                       args.thread.name if args.thread else "?", args.exc_value,
                       exc_info=(args.exc_type, args.exc_value,  # type: ignore[arg-type]
                                 args.exc_traceback))  # exc_value: None only for odd raises

    sys.excepthook = main_hook
    threading.excepthook = thread_hook
