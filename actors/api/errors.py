"""Errors the API maps to HTTP statuses, raised by handlers and by `NodeClient` calls, and the
one builder of error bodies.

Each error is a `tornado.web.HTTPError` without a log message, so Tornado neither logs it nor
turns it into a 500: the handler's `write_error` renders it in the API error shape
``{"error": <reason phrase>, "message": ...}`` (`error_body`). An error carries the typed
`Outcome` it stands for; its HTTP status comes from `actors.api.outcomes.HTTP`. Raise them
from any coroutine on the API IOLoop thread (a NodeClient may also create them on another
thread and set them on a future that the IOLoop awaits).
"""

from __future__ import annotations

import json

from tornado.web import HTTPError

from actors.api.outcomes import error_string, http_status
from prisn.outcomes import Outcome

__all__ = ["ApiError", "BadRequest", "Conflict", "NotFound", "PayloadTooLarge", "Unavailable",
           "error_answer", "error_body", "error_json", "error_message"]


def error_body(status: int | Outcome, message: str) -> dict[str, str]:
    """The API error shape for an outcome or an HTTP status: ``{"error", "message"}``. Every
    error body the API writes is built here (handlers, fast paths, connection refusals)."""
    return {"error": error_string(status), "message": message}


def error_json(status: int | Outcome, message: str) -> bytes:
    """An error body as bytes, exactly as every adapter writes it (`json.dumps` defaults)."""
    return json.dumps(error_body(status, message)).encode()


def error_message(exc: ApiError) -> str:
    """What an error answer says: its message, else its reason phrase."""
    return exc.message or error_string(exc.status)


def error_answer(exc: ApiError) -> tuple[int, bytes]:
    """The (status, body) of a raised error, as `BaseHandler.write_error` answers it."""
    return exc.status, error_json(exc.status, error_message(exc))


class ApiError(HTTPError):
    """An error answer: its `outcome`, HTTP `status` and a human `message` saying what was
    wrong. `status` alone (no outcome) is for statuses that stand for no outcome."""

    outcome: Outcome = Outcome.INTERNAL_ERROR

    def __init__(self, message: str = "", *, outcome: Outcome | None = None,
                 status: int | None = None) -> None:
        if outcome is None and status is not None and status in _WIRE_VALUES:
            outcome = Outcome(status)
        if outcome is not None:
            self.outcome = outcome
        code = status if status is not None else http_status(self.outcome)
        super().__init__(code)
        self.status = code
        self.message = message

    def __str__(self) -> str:
        return f"HTTP {self.status_code}: {self.message}"


_WIRE_VALUES = frozenset(int(m) for m in Outcome if not m.internal)


class BadRequest(ApiError):
    outcome = Outcome.INVALID


class NotFound(ApiError):
    outcome = Outcome.NOT_FOUND


class Conflict(ApiError):
    outcome = Outcome.CONFLICT


class PayloadTooLarge(ApiError):
    outcome = Outcome.TOO_LARGE


class Unavailable(ApiError):
    """No quorum, no leader, a timed-out proposal or read barrier (503); also a broken disk
    (`Outcome.DISK_ERROR`, 507) reported by consensus."""

    outcome = Outcome.UNAVAILABLE


def consensus_error(outcome: Outcome, reason: str) -> ApiError:
    """The error for a refused consensus request (`Reply` with `ok` False). A consensus
    refusal is a 404 or 409 naming what was wrong, a 507 for a broken disk, and otherwise a
    503 (its internal outcome kept: not leader, leadership lost, outcome unknown, ...), as
    it always was; a reason-less 503 says "no quorum available"."""
    if outcome is Outcome.NOT_FOUND:
        return NotFound(reason)
    if outcome is Outcome.CONFLICT:
        return Conflict(reason)
    if outcome is Outcome.DISK_ERROR:
        return Unavailable(reason, outcome=outcome)
    if http_status(outcome) != 503:
        outcome = Outcome.UNAVAILABLE  # e.g. INVALID: only peers' joins get it, never the API
    return Unavailable(reason or "no quorum available", outcome=outcome)
