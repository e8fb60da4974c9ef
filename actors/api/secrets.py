"""HTTP handlers for secrets: ``/api/v1/secrets`` and ``/api/v1/secrets/{name}``.

Runs on the API IOLoop thread. Writes are Raft writes like deployment writes (forwarded by a
follower, answered once committed and applied here; ``Idempotency-Key`` honoured through the
dedup table). With a cluster key the values are sealed here, before the command exists
(`prisn.secretbox`), so no plain value reaches the log, RocksDB or a snapshot.

Permissions (`actors.api.auth`): listing needs READ (every role; names and key names only,
never values); reading the values (``GET /api/v1/secrets/{name}``) and every write need WRITE
(developer or admin): a viewer gets 403. Both are limited to the caller's namespaces.

Invariants: no answer other than ``GET /api/v1/secrets/{name}`` holds a value; no log line,
metric label or error message holds one (errors name secrets and keys only).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from actors.api.auth import READ, WRITE
from actors.api.errors import ApiError, NotFound, PayloadTooLarge
from actors.api.handler import BaseHandler
from actors.api.ops import DEFAULT_LIMIT, MAX_LIMIT
from prisn.fsm.commands import new_id
from prisn.fsm.secrets import SecretFactory, TooLarge, secret_values
from prisn.fsm.validation import DEFAULT_NAMESPACE
from prisn.outcomes import Outcome
from prisn.secretbox import SecretDecryptError, opener

log = logging.getLogger("prisn.api")


def _factory(handler: BaseHandler) -> SecretFactory:
    """The context's SecretFactory (its box) on the clock and id source of the app's
    CommandFactory (tests inject fixed ones there)."""
    cf = handler.ctx.commands
    return SecretFactory(handler.ctx.secrets.box, clock=getattr(cf, "_clock", time.time),
                         new_id=getattr(cf, "_new_id", new_id))


class _SecretBase(BaseHandler):
    async def write_secret(self, build: Any, action: str) -> None:
        """Build (413 for a bound, 400 otherwise), propose, answer; audit a success."""

        def checked() -> dict[str, Any]:
            try:
                return build()
            except TooLarge as exc:  # a ValidationError: `commit` would make it a 400
                raise PayloadTooLarge(exc.message) from None

        result = await self.commit(checked)
        if result is None:
            return
        status, out = result
        if status in (Outcome.CREATED, Outcome.OK, Outcome.DELETED):
            log.info("secret %s/%s %s by %s", out.get("namespace", self._ns),
                     out.get("name", self._name), action, self.principal.describe())
        self.send_json(status, out)

    _ns = ""
    _name = ""


class SecretsHandler(_SecretBase):
    ROUTE = "/api/v1/secrets"
    AUTH = {"GET": READ, "POST": WRITE}

    async def get(self) -> None:
        await self.consistency()
        limit = self.int_arg("limit", DEFAULT_LIMIT, 0, MAX_LIMIT)
        offset = self.int_arg("offset", 0, 0, None)
        ns = self.namespace_arg()
        scope = [ns] if ns is not None else self.principal.namespaces
        page, total = self.ctx.node.store.secrets(scope, limit, offset)
        items = [s.public() for s in page]
        self.send_json(200, {"items": items, "count": len(items), "total": total,
                             "limit": limit, "offset": offset})

    async def post(self) -> None:
        if self._refused:
            return
        body = self.json_body()
        ns = self.namespace_arg()
        await self.write_secret(lambda: _factory(self).create(
            body, namespace=ns, key=self.idempotency_key()), "created")


class SecretHandler(_SecretBase):
    ROUTE = "/api/v1/secrets/{name}"
    AUTH = {"GET": WRITE, "PUT": WRITE, "DELETE": WRITE}

    async def get(self, name: str) -> None:
        await self.consistency()
        ns = self.namespace_arg() or DEFAULT_NAMESPACE
        self.require_namespace(ns, write=False)
        secret = self.ctx.node.store.secret(ns, name)
        if secret is None:
            raise NotFound(f"secret {ns}/{name[:63]} not found")
        try:
            data = secret_values(secret, opener(self.ctx.secrets.box))
        except SecretDecryptError as exc:
            raise ApiError(str(exc), outcome=Outcome.INTERNAL_ERROR) from None
        self.send_json(200, {**secret.public(), "encrypted": secret.encrypted, "data": data})

    async def put(self, name: str) -> None:
        if self._refused:
            return
        body = self.json_body()
        ns = self.namespace_arg()
        self._ns, self._name = ns or DEFAULT_NAMESPACE, name
        await self.write_secret(lambda: _factory(self).update(
            name, body, namespace=ns, key=self.idempotency_key()), "rotated")

    async def delete(self, name: str) -> None:
        if self._refused:
            return
        ns = self.namespace_arg()
        self._ns, self._name = ns or DEFAULT_NAMESPACE, name
        await self.write_secret(lambda: _factory(self).delete(
            name, namespace=ns, key=self.idempotency_key()), "deleted")


SECRET_ROUTES: list[tuple[str, type[BaseHandler]]] = [
    (r"/api/v1/secrets/?", SecretsHandler),
    (r"/api/v1/secrets/([^/]+)/?", SecretHandler),
]
