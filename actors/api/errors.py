"""Errors the API maps to HTTP statuses, raised by handlers and by `NodeClient` calls.

Each is a `tornado.web.HTTPError` without a log message, so Tornado neither logs it nor
turns it into a 500: the handler's `write_error` renders it in the API error shape
``{"error": <HTTP reason phrase>, "message": ...}``. Raise them from any coroutine on the
API IOLoop thread (a NodeClient may also create them on another thread and set them on a
future that the IOLoop awaits).
"""

from __future__ import annotations

from tornado.web import HTTPError

from prisn.fsm.deployments import error_body

__all__ = ["ApiError", "BadRequest", "Conflict", "NotFound", "PayloadTooLarge", "Unavailable",
           "error_body"]


class ApiError(HTTPError):
    """An error answer: `status` and a human `message` saying what was wrong."""

    status: int = 500

    def __init__(self, message: str = "", *, status: int | None = None) -> None:
        code = status if status is not None else self.status
        super().__init__(code)
        self.status = code
        self.message = message

    def __str__(self) -> str:
        return f"HTTP {self.status_code}: {self.message}"


class BadRequest(ApiError):
    status = 400


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class PayloadTooLarge(ApiError):
    status = 413


class Unavailable(ApiError):
    """No quorum, no leader, a timed-out proposal or read barrier (503)."""

    status = 503
