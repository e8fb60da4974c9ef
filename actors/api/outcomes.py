"""The one mapping from typed outcomes to HTTP: status code and ``error`` string.

Consensus and the state machine answer with `prisn.outcomes.Outcome`; every handler and fast
path turns an outcome into an HTTP answer through `HTTP` here (error bodies are built by
`actors.api.errors.error_body`, which reads this table). Pure; any thread.

Invariants (checked by tests/unit/test_outcomes.py):
- every `Outcome` has exactly one entry; the entries reproduce the status codes and reason
  phrases the API answered before outcomes were typed, byte for byte;
- every internal outcome is a 503 (the consensus ones) or a 507 (a quota), as its wire form;
- the ``error`` string of each failure the state machine answers equals the label it stores
  in the dedup table (`prisn.fsm.results.STORED_LABELS`), so a remembered answer and a fresh
  one read the same.
"""

from __future__ import annotations

from http import HTTPStatus

from prisn.outcomes import Outcome

HTTP: dict[Outcome, tuple[int, str]] = {
    Outcome.OK: (200, "OK"),
    Outcome.CREATED: (201, "Created"),
    Outcome.ACCEPTED: (202, "Accepted"),
    Outcome.DELETED: (204, "No Content"),
    Outcome.INVALID: (400, "Bad Request"),
    Outcome.UNAUTHENTICATED: (401, "Unauthorized"),
    Outcome.FORBIDDEN: (403, "Forbidden"),
    Outcome.NOT_FOUND: (404, "Not Found"),
    Outcome.METHOD_NOT_ALLOWED: (405, "Method Not Allowed"),
    Outcome.CONFLICT: (409, "Conflict"),
    Outcome.TOO_LARGE: (413, "Request Entity Too Large"),
    Outcome.UNSUPPORTED_MEDIA: (415, "Unsupported Media Type"),
    Outcome.MISDIRECTED: (421, "Misdirected Request"),
    Outcome.KEY_REUSED: (422, "Unprocessable Entity"),
    Outcome.RATE_LIMITED: (429, "Too Many Requests"),
    Outcome.INTERNAL_ERROR: (500, "Internal Server Error"),
    Outcome.UNAVAILABLE: (503, "Service Unavailable"),
    Outcome.DISK_ERROR: (507, "Insufficient Storage"),
    Outcome.NOT_LEADER: (503, "Service Unavailable"),
    Outcome.LEADERSHIP_LOST: (503, "Service Unavailable"),
    Outcome.OUTCOME_UNKNOWN: (503, "Service Unavailable"),
    Outcome.NO_LEADER: (503, "Service Unavailable"),
    Outcome.QUOTA_EXCEEDED: (507, "Insufficient Storage"),
}

# HTTP status -> its error string, for statuses Tornado itself answers (an unknown route, a
# method the handler lacks, a malformed request): the same strings as the outcomes'.
_BY_STATUS: dict[int, str] = {status: text for status, text in HTTP.values()}


def http_status(outcome: Outcome) -> int:
    """The HTTP status code of `outcome`."""
    return HTTP[outcome][0]


def error_string(status: int | Outcome) -> str:
    """The ``error`` field of an error body for an outcome or a bare HTTP status (a status no
    outcome has keeps Python's reason phrase, as Tornado's own answers always did)."""
    if isinstance(status, Outcome):
        return HTTP[status][1]
    text = _BY_STATUS.get(status)
    if text is not None:
        return text
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"

