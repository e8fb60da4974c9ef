"""HTTP handlers for API tokens: ``/api/v1/tokens``, ``/api/v1/tokens/{id}``, ``.../revoke``.

Runs on the API IOLoop thread. Every route needs the admin role (checked in `prepare`). Writes
are Raft writes like deployment writes (forwarded by a follower, answered once committed and
applied on this node); reads come from this node's copy of the token table.

Invariants:
- The secret appears in exactly one answer: the 201 of the create that chose it. It is never
  logged, never stored, never in the log entry (only its SHA-256 is).
- A create retried with the same Idempotency-Key finds the first create's result in the dedup
  table, whose secret this node no longer has: it answers 409 naming the token, which the
  caller should revoke (or delete) and create again.
- Every token view carries ``expired``, judged by this node's clock.
"""

from __future__ import annotations

import logging
from typing import Any

from actors.api.auth import ADMIN
from actors.api.errors import BadRequest, Conflict, NotFound
from actors.api.handler import BaseHandler
from prisn.fsm.tokens import is_token_id, ts_millis
from prisn.outcomes import Outcome

log = logging.getLogger("prisn.api")

def token_view(public: dict[str, Any], now: float, secret: str | None = None) -> dict[str, Any]:
    """The API shape of a token (a `Token.public()` dict), plus ``expired`` at `now` and, for
    the create answer only, ``secret``. Never mutates `public` (it may be a stored result)."""
    expires_at = public.get("expires_at")
    expired = expires_at is not None and ts_millis(expires_at) <= now * 1000.0
    out: dict[str, Any] = {"id": public["id"], "name": public["name"], "role": public["role"],
                           "namespaces": list(public["namespaces"])}
    if secret is not None:
        out["secret"] = secret
    out.update(created_at=public["created_at"], expires_at=expires_at,
               revoked=public["revoked"], revoked_at=public["revoked_at"], expired=expired)
    return out


class _TokenBase(BaseHandler):
    def token_id(self, raw: str) -> str:
        """The path's token id; 404 if it cannot be one."""
        if not is_token_id(raw):
            raise NotFound(f"token {raw[:64]} not found")
        return raw

    def audit(self, action: str, token: dict[str, Any]) -> None:
        log.info("token %s (%s, role %s) %s by %s", token.get("id"), token.get("name"),
                 token.get("role"), action, self.principal.describe())


class TokensHandler(_TokenBase):
    ROUTE = "/api/v1/tokens"
    AUTH = {"GET": ADMIN, "POST": ADMIN}

    async def get(self) -> None:
        await self.consistency()
        now = self.ctx.auth.clock()
        items = [token_view(t.public(), now) for t in self.ctx.node.store.tokens()]
        self.send_json(200, {"items": items, "count": len(items)})

    async def post(self) -> None:
        if self._refused:
            return
        body = self.json_body()
        chosen: dict[str, str] = {}

        def build() -> dict[str, Any]:
            cmd, secret = self.ctx.tokens.create(body, key=self.idempotency_key())
            chosen.update(id=cmd["id"], secret=secret)
            return cmd

        result = await self.commit(build)
        if result is None:
            return
        status, out = result
        if status is not Outcome.CREATED:
            self.send_json(status, out)
            return
        if out.get("id") != chosen["id"]:
            raise Conflict(f"this Idempotency-Key already created token {out.get('id')} "
                           f"({out.get('name')}); its secret was shown only once. Revoke it "
                           f"(POST /api/v1/tokens/{out.get('id')}/revoke) and create another.")
        self.audit("created", out)
        self.send_json(201, token_view(out, self.ctx.auth.clock(), secret=chosen["secret"]))


class TokenHandler(_TokenBase):
    ROUTE = "/api/v1/tokens/{id}"
    AUTH = {"GET": ADMIN, "DELETE": ADMIN}

    async def get(self, raw_id: str) -> None:
        await self.consistency()
        tok = self.ctx.node.store.token(self.token_id(raw_id))
        if tok is None:
            raise NotFound(f"token {raw_id} not found")
        self.send_json(200, token_view(tok.public(), self.ctx.auth.clock()))

    async def delete(self, raw_id: str) -> None:
        if self._refused:
            return
        token_id = self.token_id(raw_id)
        before = self.ctx.node.store.token(token_id)
        result = await self.commit(lambda: self.ctx.tokens.delete(
            token_id, key=self.idempotency_key()))
        if result is None:
            return
        if result[0] is Outcome.DELETED:
            self.audit("deleted", before.public() if before else {"id": token_id})
        self.send_json(*result)


class TokenRevokeHandler(_TokenBase):
    ROUTE = "/api/v1/tokens/{id}/revoke"
    AUTH = {"POST": ADMIN}

    async def post(self, raw_id: str) -> None:
        if self._refused:
            return
        body = self.optional_json_body()
        if body is not None and body != {}:
            raise BadRequest("body must be empty or {}")
        token_id = self.token_id(raw_id)
        result = await self.commit(lambda: self.ctx.tokens.revoke(
            token_id, key=self.idempotency_key()))
        if result is None:
            return
        status, out = result
        if status is not Outcome.OK:
            self.send_json(status, out)
            return
        self.audit("revoked", out)
        self.send_json(200, token_view(out, self.ctx.auth.clock()))


TOKEN_ROUTES: list[tuple[str, type[BaseHandler]]] = [
    (r"/api/v1/tokens/?", TokensHandler),
    (r"/api/v1/tokens/([^/]+)/revoke/?", TokenRevokeHandler),
    (r"/api/v1/tokens/([^/]+)/?", TokenHandler),
]
