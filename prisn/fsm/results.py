"""State-machine results: an `Outcome` and a JSON-able body, as `apply` returns them.

Pure module (any thread). A failure's body is ``{"error": <label>, "message": ...}``: the
dedup table remembers it and snapshots store it, so the labels below are part of the
persisted format (the reason phrases older versions stored) and never change. The API sends
these bodies as they are; `actors.api.outcomes` maps the same outcomes to the same strings
(a unit test checks that they agree).
"""

from __future__ import annotations

from typing import Any

from prisn.outcomes import Outcome

Result = tuple[Outcome, dict[str, Any]]

# Persisted: the `error` label of each failure outcome the state machine answers.
STORED_LABELS: dict[Outcome, str] = {
    Outcome.INVALID: "Bad Request",
    Outcome.NOT_FOUND: "Not Found",
    Outcome.CONFLICT: "Conflict",
    Outcome.KEY_REUSED: "Unprocessable Entity",
    Outcome.INTERNAL_ERROR: "Internal Server Error",
    Outcome.TOO_LARGE: "Request Entity Too Large",  # an artifact over the hard limit
    Outcome.DISK_ERROR: "Insufficient Storage",  # the cluster's artifact bounds
}


def failure(outcome: Outcome, message: str) -> Result:
    """The result of a refused command: `outcome` (one of `STORED_LABELS`) and its body."""
    return outcome, {"error": STORED_LABELS[outcome], "message": message}
