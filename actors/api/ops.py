"""The API's shared operations, each written once: every adapter (the Tornado handlers in
`actors.api.handler` / `actors.api.app`, the raw fast paths `actors.api.fastpath` and
`actors.api.fastread`) answers a route through these.

- `request_id`: the client's X-Request-Id if sane, else a new one;
- `parse_json`: a request body as JSON (400 if it is not a JSON text the store can keep);
- `build`: a command from a request (its `ValidationError` is a 400);
- `propose_command`: propose a built command under the in-flight and quota bounds;
- `read_level`, `barrier`, `strong_read_error`, `strong_read`: a read with a consistency
  level (a strong read waits for the node client's shared read barrier);
- `render`: a JSON answer body, compact; `deployment_not_found`: the 404 of a read;
- `access_log`: one line per answer (DEBUG; WARNING for a server error other than 503).
Error bodies are `actors.api.errors.error_json`; statuses come from `actors.api.outcomes`.

Thread: the API IOLoop thread (`parse_json` and `render` are pure: any thread). Imports no
other adapter module: the import graph of `actors.api` has no cycle
(tests/unit/test_api_imports.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from actors.api.errors import BadRequest, NotFound, Unavailable
from prisn.fsm.results import Result
from prisn.fsm.validation import ValidationError, check_text

if TYPE_CHECKING:
    from actors.api.context import ApiContext

log = logging.getLogger("prisn.api")

DEFAULT_LIMIT = 100  # a listing's page size without ?limit=
MAX_LIMIT = 1000  # the largest ?limit= a listing accepts
WEAK_READS = frozenset({"", "default", "stale", "eventual"})  # X-Prisn-Consistency, local read
BAD_LEVEL = "X-Prisn-Consistency must be 'strong' or 'default'"
NO_QUORUM = ("no quorum is available to commit the write ({reason}); a write that timed out may "
             "still commit: retry with the same Idempotency-Key to apply it at most once")
STRONG_UNAVAILABLE = ("strong read unavailable: {reason}; retry, or read without "
                      "X-Prisn-Consistency: strong (possibly stale)")
BARRIER_TIMED_OUT = "strong read unavailable: read barrier timed out"


# ---------------------------------------------------------------------------- requests
def request_id(ctx: ApiContext, raw: str) -> str:
    """`raw` (the X-Request-Id header, "" if absent) if it is 1..128 printable ASCII
    characters, else a new id ``<node>-<n>`` unique on this node."""
    if 0 < len(raw) <= 128 and raw.isascii() and raw.isprintable():
        return raw
    return f"{ctx.node.node_id}-{next(ctx.request_ids)}"


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # \uD800-\uDFFF
# One decoder for every request: `json.loads` with a keyword builds a new JSONDecoder per call.
_JSON = json.JSONDecoder(parse_constant=_no_constants)


def parse_json(raw: bytes) -> Any:
    """A request body as JSON; BadRequest if empty, malformed, or if any string in it (key or
    value, at any depth) is not valid Unicode text (a lone surrogate escape such as
    ``"\\ud800"`` is valid JSON but cannot be stored: 400 naming the field). Any thread."""
    if not raw.strip():
        raise BadRequest("request body must be a JSON object")
    try:
        value = _JSON.decode(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    # raw UTF-8 cannot carry a surrogate (the decode above refuses one): only an escape can,
    # so the walk runs only for bodies that hold one (a cheap scan; false positives are fine)
    if _SURROGATE_ESCAPE.search(raw) is not None:
        try:
            check_text(value)
        except ValidationError as exc:
            raise BadRequest(exc.message) from None
    return value


# ---------------------------------------------------------------------------- writes
def build(make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`make()` (a `CommandFactory` call); its ValidationError is a 400 naming the field."""
    try:
        return make()
    except ValidationError as exc:
        raise BadRequest(exc.message) from None


async def propose_command(ctx: ApiContext, command: dict[str, Any]) -> Result:
    """Propose a built command and return its (outcome, body) once committed and applied.

    503 at once when `max_inflight` writes wait already; 413/507 from the quotas before
    anything is proposed; a proposal that finds no quorum or times out is a 503 that says
    it may still commit."""
    if ctx.inflight >= ctx.max_inflight:
        raise Unavailable(f"too many writes in flight ({ctx.max_inflight}); retry shortly")
    ctx.quotas.check(ctx.node.store, command)  # 413 / 507 before anything is proposed
    ctx.inflight += 1
    try:
        return await ctx.node.propose(command, ctx.write_timeout)
    except Unavailable as exc:
        if exc.status != 503:  # e.g. 507 from a full disk: not a quorum problem
            raise
        raise Unavailable(NO_QUORUM.format(reason=exc.message or "unavailable")) from None
    except TimeoutError:
        raise Unavailable(NO_QUORUM.format(reason="timed out")) from None
    finally:
        ctx.inflight -= 1


# ---------------------------------------------------------------------------- reads
def read_level(header: str | None) -> bool:
    """The X-Prisn-Consistency header: True for a strong read, False for a local one
    (absent or a `WEAK_READS` word, any case and surrounding space); else a 400."""
    level = (header or "").strip().lower()
    if level == "strong":
        return True
    if level in WEAK_READS:
        return False
    raise BadRequest(BAD_LEVEL)


def barrier(ctx: ApiContext) -> Awaitable[None]:
    """The node client's shared read barrier for one strong read (batched by the client:
    `actors.api.node.BarrierBatch`). Never cancel it: it may be shared."""
    return ctx.node.read_barrier(ctx.read_timeout)


def strong_read_error(exc: BaseException) -> BaseException:
    """The answer to a failed barrier: `Unavailable` and `TimeoutError` become the 503 of a
    strong read (which says how to read anyway); anything else is returned as is (another
    `ApiError` answers its own status, a bug is a 500)."""
    if isinstance(exc, Unavailable):
        return Unavailable(STRONG_UNAVAILABLE.format(reason=exc.message))
    if isinstance(exc, TimeoutError):
        return Unavailable(BARRIER_TIMED_OUT)
    return exc


async def strong_read(ctx: ApiContext) -> None:
    """Wait for a read barrier (`barrier`), or raise its `strong_read_error`. Shielded: a
    cancelled caller does not cancel the barrier its batch shares."""
    try:
        await asyncio.shield(barrier(ctx))
    except (Unavailable, TimeoutError) as exc:
        raise strong_read_error(exc) from None


def deployment_not_found(name: str) -> NotFound:
    """The 404 of a deployment read by name or id."""
    return NotFound(f"deployment {name} not found")


# ---------------------------------------------------------------------------- answers
def deployment_view(ctx: ApiContext, dep: dict[str, Any]) -> dict[str, Any]:
    """A stored deployment as reads answer it (GET one, both paths, and the list): a
    service gains its ``status`` (`DeploymentStore.with_status`, issue 14)."""
    return ctx.node.store.with_status(dep)


def render(body: Any) -> bytes:
    """A JSON answer body: compact, no NaN (`ValueError` for a value JSON cannot carry)."""
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def access_log(status: int, method: str, uri: str, seconds: float) -> None:
    """Access log: DEBUG normally, WARNING for server errors other than 503 (never INFO: no
    per-request logging at the default level)."""
    level = logging.WARNING if status >= 500 and status != 503 else logging.DEBUG
    if log.isEnabledFor(level):
        log.log(level, "%d %s %s %.1fms", status, method, uri, 1000.0 * seconds)
