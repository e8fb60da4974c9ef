"""API authentication (who is calling) and authorization (may they do this), for the handlers.

Runs on the API IOLoop thread (called from `BaseHandler.prepare` and the handlers). Pure apart
from the injected clock and the token lookup, which reads this node's state-machine store (the
same local, possibly slightly stale view that default reads use).

Rules (docs/security.md has the full table):
- Without an API key (`--api-key` unset) authentication is off: every caller is
  `OPEN_PRINCIPAL`, an admin of every namespace, and the Authorization header is ignored.
- With a key, every request needs ``Authorization: Bearer <credential>`` unless its route and
  method are `OPEN` (``GET /health``, ``GET /ready``) or `METRICS` without `metrics_auth`.
  The credential is the bootstrap key (an admin; compared in constant time on SHA-256
  digests, so neither content nor length leaks) or a token secret ``prisn_<id>_<random>``
  (one dict lookup by id, `hmac.compare_digest` of the SHA-256 hashes, then revoked and
  expiry checks against this node's clock).
- Permissions: `AUTHENTICATED` any valid credential; `READ` deployment reads (every role);
  `WRITE` deployment writes (developer, admin); `ADMIN` tokens and cluster changes. `READ` and
  `WRITE` are further limited to the principal's namespaces (`Principal.sees`).
- 401 (`Unauthorized`, with ``WWW-Authenticate: Bearer``) for a missing, malformed, unknown,
  wrong, revoked or expired credential; 403 (`Forbidden`) for a valid one that may not act.
  Each carries an `auth_reason` label for ``prisn_http_auth_failures_total``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from actors.api.errors import ApiError
from prisn.fsm.tokens import ALL_NAMESPACES, Token, parse_secret, secret_hash
from prisn.outcomes import Outcome

log = logging.getLogger("prisn.api")

# Permissions a route + method may require.
OPEN = "open"  # no credential, ever
METRICS = "metrics"  # no credential unless metrics_auth, then AUTHENTICATED
AUTHENTICATED = "authenticated"  # any valid credential (also: unknown routes and methods)
READ = "read"  # deployment reads: every role, in its namespaces
WRITE = "write"  # deployment writes: developer and admin, in their namespaces
ADMIN = "admin"  # tokens, cluster changes

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({AUTHENTICATED, METRICS, READ, WRITE, ADMIN}),
    "developer": frozenset({AUTHENTICATED, METRICS, READ, WRITE}),
    "viewer": frozenset({AUTHENTICATED, METRICS, READ}),
}
MAX_AUTHORIZATION = 1024  # longer Authorization headers are malformed
# Public reasons (the `reason` label of prisn_http_auth_failures_total). "invalid" covers an
# unknown token id, a wrong secret and a credential that is neither the key nor a token: a
# scraper must not learn which token ids exist (issue 17). `Unauthorized.detail` keeps the
# distinction for the node's own log (`AuthFailureLog`).
REASONS: tuple[str, ...] = ("missing", "malformed", "invalid", "revoked", "expired",
                            "forbidden")
AUTH_LOG_INTERVAL = 10.0  # seconds between two log lines of one kind of refusal
CHALLENGE = 'Bearer realm="prisn"'


class Unauthorized(ApiError):
    """401: no valid credential. `auth_reason` is one of `REASONS` (not `reason`: Tornado's
    HTTPError uses that for the status line)."""

    outcome = Outcome.UNAUTHENTICATED

    def __init__(self, message: str, *, reason: str, kind: str = "", detail: str = "") -> None:
        super().__init__(message)
        self.auth_reason = reason
        # for the node's log only, never in an answer or a metric: `kind` one of
        # "unknown_id", "wrong_secret", "not_a_token"; `detail` a sentence naming the token
        self.kind = kind
        self.detail = detail

    @property
    def challenge(self) -> str:
        """The WWW-Authenticate value (RFC 6750: no error code when nothing was sent)."""
        if self.auth_reason == "missing":
            return CHALLENGE
        return f'{CHALLENGE}, error="invalid_token"'


class Forbidden(ApiError):
    """403: a valid credential whose role or namespaces do not allow the request."""

    outcome = Outcome.FORBIDDEN
    auth_reason = "forbidden"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling. `namespaces` None means every namespace."""

    kind: str  # "open" (auth off), "anonymous" (open route), "bootstrap", "token"
    name: str
    role: str
    namespaces: frozenset[str] | None
    token_id: str | None = None

    def may(self, permission: str) -> bool:
        return permission in ROLE_PERMISSIONS.get(self.role, frozenset())

    def sees(self, namespace: str) -> bool:
        """May act (read or, with WRITE, change) on deployments in `namespace`."""
        return self.namespaces is None or namespace in self.namespaces

    def describe(self) -> str:
        if self.kind == "token":
            return f"token {self.name} ({self.token_id})"
        if self.kind == "bootstrap":
            return "the bootstrap API key"
        return "an unauthenticated caller" if self.kind == "anonymous" else "anyone (auth off)"


OPEN_PRINCIPAL = Principal("open", "open", "admin", None)
ANONYMOUS = Principal("anonymous", "anonymous", "", frozenset())
BOOTSTRAP = Principal("bootstrap", "bootstrap", "admin", None)


class Authenticator:
    """Resolves the Authorization header into a `Principal`. One per application."""

    def __init__(self, api_key: str = "", *, metrics_auth: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.enabled = bool(api_key)
        self.metrics_auth = metrics_auth
        self.clock = clock
        self._key_digest = hashlib.sha256(api_key.encode("utf-8")).digest()

    def required(self, permission: str) -> bool:
        """Whether a request needing `permission` must carry a valid credential."""
        if not self.enabled or permission == OPEN:
            return False
        return permission != METRICS or self.metrics_auth

    def authenticate(self, header: str | None,
                     lookup: Callable[[str], Token | None]) -> Principal:
        """The caller behind `header`; `Unauthorized` if there is no valid credential.
        `lookup(token_id)` returns the stored token record (or None)."""
        if not self.enabled:
            return OPEN_PRINCIPAL
        cred = _credential(header)
        given = hashlib.sha256(cred.encode("utf-8")).digest()
        if hmac.compare_digest(given, self._key_digest):
            return BOOTSTRAP
        token_id = parse_secret(cred)
        if token_id is None:
            raise Unauthorized("invalid bearer token", reason="invalid", kind="not_a_token",
                               detail="a credential that is neither the API key nor a token")
        tok = lookup(token_id)
        if tok is None:
            raise Unauthorized("invalid bearer token", reason="invalid", kind="unknown_id",
                               detail=f"unknown token id {token_id}")
        if not hmac.compare_digest(secret_hash(cred).encode("ascii"), tok.hash.encode("ascii")):
            raise Unauthorized("invalid bearer token", reason="invalid", kind="wrong_secret",
                               detail=f"wrong secret for token {tok.id} ({tok.name})")
        if tok.revoked_at is not None:
            raise Unauthorized(f"token {tok.id} was revoked at {tok.revoked_at}",
                               reason="revoked")
        if tok.expired(self.clock()):
            raise Unauthorized(f"token {tok.id} expired at {tok.expires_at}", reason="expired")
        namespaces = None if tok.all_namespaces else frozenset(tok.namespaces)
        return Principal("token", tok.name, tok.role, namespaces, tok.id)


class AuthFailureLog:
    """The node's log of "invalid" refusals, with the detail the metric hides (unknown id,
    wrong secret, neither): at most one WARNING per `interval` seconds per kind, carrying the
    number not logged since, so guessing cannot flood the log. API thread only."""

    def __init__(self, interval: float = AUTH_LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def note(self, exc: Unauthorized, remote: str) -> None:
        kind = exc.kind
        if not kind:
            return
        now = self._clock()
        if now - self._last.get(kind, -math.inf) < self.interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        more = self._suppressed.pop(kind, 0)
        log.warning("API authentication refused from %s: %s%s", remote or "?", exc.detail,
                    f" (and {more} more such refusals in the last {self.interval:g}s, not "
                    "logged)" if more else "")


def _credential(header: str | None) -> str:
    """The credential of ``Bearer <credential>``; `Unauthorized` if absent or malformed."""
    if header is None or not header.strip():
        raise Unauthorized("authentication required: send 'Authorization: Bearer <token>'",
                           reason="missing")
    if len(header) > MAX_AUTHORIZATION:
        raise Unauthorized("malformed Authorization header: too long", reason="malformed")
    scheme, _, cred = header.strip().partition(" ")
    cred = cred.strip()
    if scheme.lower() != "bearer" or not cred or not cred.isascii() or not cred.isprintable() \
            or " " in cred:
        raise Unauthorized("malformed Authorization header: expected 'Bearer <token>'",
                           reason="malformed")
    return cred


def check_permission(principal: Principal, permission: str, what: str) -> None:
    """`Forbidden` unless `principal`'s role grants `permission`; `what` names the request."""
    if principal.may(permission):
        return
    need = {ADMIN: "admin", WRITE: "developer or admin"}.get(permission, "a valid token")
    raise Forbidden(f"{principal.describe()} has role {principal.role or 'none'} and may not "
                    f"{what}; this needs {need}")


def check_namespace(principal: Principal, namespace: str, *, write: bool) -> None:
    """`Forbidden` unless `principal` may read (or change) deployments in `namespace`."""
    if principal.sees(namespace):
        return
    allowed = ", ".join(sorted(principal.namespaces or ())) or "none"
    raise Forbidden(f"{principal.describe()} may not {'change' if write else 'read'} "
                    f"deployments in namespace {namespace} (its namespaces: {allowed})")


__all__ = ["ADMIN", "ALL_NAMESPACES", "ANONYMOUS", "AUTHENTICATED", "BOOTSTRAP", "CHALLENGE",
           "AuthFailureLog",
           "METRICS", "OPEN", "OPEN_PRINCIPAL", "READ", "REASONS", "WRITE", "Authenticator",
           "Forbidden", "Principal", "Unauthorized", "check_namespace", "check_permission"]
