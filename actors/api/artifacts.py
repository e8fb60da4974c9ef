"""HTTP handlers for artifacts: ``POST/GET /api/v1/artifacts``, ``GET /api/v1/artifacts/{digest}``.

Runs on the API IOLoop thread. An upload is the raw archive (`prisn.workloads.artifacts`) as
the body, ``Content-Type: application/octet-stream`` (or ``application/x-tar``, or none), at
most `Quotas.max_artifact_bytes` (``--max-artifact-bytes``; 413 past it, before the body is
read when Content-Length says so). An optional expected digest (``X-Prisn-Digest`` header or
``?digest=``) that differs from the body's SHA-256 is a 400 "digest mismatch". The archive is
checked here (400 for an unsafe or malformed one) and again by every node at apply.

The write is an ``artifact.put`` through Raft (forwarded by a follower like any write): 201
``{digest, size, created_at}`` for a new artifact, 200 for one already stored (dedup). When
this node already holds the digest, it proposes a put without the bytes (which renews the
artifact's grace) and falls back to the full put if that answers 404 (collected meanwhile).

A download is written in 1 MiB chunks paced by the client (`actors.api.download`): a
client that keeps reading is not cut by the limiter's response deadline however long the
download takes; one that takes nothing for `STALL_SECONDS` is closed.

Permissions (`actors.api.auth`): upload needs WRITE (developer or admin), reads need READ.
Artifacts are cluster-wide, not namespaced: any reader may fetch one whose digest it knows
and the listing shows every artifact (docs/security.md).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from actors.api.auth import READ, WRITE
from actors.api.download import STALL_SECONDS, send_chunked
from actors.api.errors import BadRequest, NotFound
from actors.api.guard import UnsupportedMediaType, has_body
from actors.api.handler import BaseHandler
from actors.api.ops import DEFAULT_LIMIT, MAX_LIMIT
from prisn.fsm.artifacts import ArtifactFactory
from prisn.fsm.commands import check_key, new_id
from prisn.fsm.validation import ValidationError
from prisn.workloads.artifacts import ArtifactError, check_digest, digest_of, read_archive

BODY_TYPES = frozenset({"application/octet-stream", "application/x-tar", ""})


def _factory(handler: BaseHandler) -> ArtifactFactory:
    """An ArtifactFactory on the same clock and id source as the app's CommandFactory (tests
    inject fixed ones there)."""
    cf = handler.ctx.commands
    return ArtifactFactory(clock=getattr(cf, "_clock", time.time),
                           new_id=getattr(cf, "_new_id", new_id))


def _check(data: bytes, limit: int) -> tuple[str, str | None]:
    """(digest, why the archive is refused or None). Pure; runs in an executor thread."""
    digest = digest_of(data)
    try:
        read_archive(data, limit)
    except ArtifactError as exc:
        return digest, str(exc)
    return digest, None


class ArtifactsHandler(BaseHandler):
    ROUTE = "/api/v1/artifacts"
    AUTH = {"GET": READ, "POST": WRITE}

    def body_limit(self) -> int:
        return self.ctx.quotas.max_artifact_bytes

    def check_body_type(self, headers: Any) -> None:
        media = headers.get("Content-Type", "").partition(";")[0].strip().lower()
        if has_body(headers) and media not in BODY_TYPES:
            raise UnsupportedMediaType("an artifact must be sent as the raw archive with "
                                       "Content-Type: application/octet-stream "
                                       f"(got {headers.get('Content-Type')!r})")

    async def get(self) -> None:
        await self.consistency()
        limit = self.int_arg("limit", DEFAULT_LIMIT, 0, MAX_LIMIT)
        offset = self.int_arg("offset", 0, 0, None)
        items, total = self.ctx.node.store.artifacts(limit, offset)
        self.send_json(200, {"items": items, "count": len(items), "total": total,
                             "limit": limit, "offset": offset})

    async def post(self) -> None:
        if self._refused:
            return
        key = self.idempotency_key()
        if key is not None:
            try:
                check_key(key)
            except ValidationError as exc:
                raise BadRequest(exc.message) from None
        data = b"".join(self._chunks)
        self._chunks.clear()
        # hashing and parsing 8 MiB takes tens of ms: off the IOLoop (the default executor)
        digest, problem = await asyncio.get_running_loop().run_in_executor(
            None, _check, data, self.body_limit())
        expected = self.request.headers.get("X-Prisn-Digest") or self.get_query_argument(
            "digest", None)
        if expected:
            try:
                want = check_digest(expected.strip(), "X-Prisn-Digest")
            except ArtifactError as exc:
                raise BadRequest(str(exc)) from None
            if want != digest:
                raise BadRequest(f"digest mismatch: the body's SHA-256 is {digest}, not {want} "
                                 "(the upload was corrupted, or the digest is wrong)")
        if problem is not None:
            raise BadRequest(problem)
        if self.ctx.node.store.artifact(digest) is not None:
            result = await self.commit(lambda: _factory(self).put(digest, None))
            if result is None or result[0] != 404:
                if result is not None:
                    self.send_json(*result)
                return
        result = await self.commit(lambda: _factory(self).put(digest, data,
                                                              key=self.idempotency_key()))
        if result is not None:
            self.send_json(*result)


class ArtifactHandler(BaseHandler):
    ROUTE = "/api/v1/artifacts/{digest}"
    AUTH = {"GET": READ}

    async def get(self, raw: str) -> None:
        await self.consistency()
        try:
            digest = check_digest(raw)
        except ArtifactError as exc:
            raise BadRequest(str(exc)) from None
        art = self.ctx.node.store.artifact(digest)
        if art is None:
            raise NotFound(f"artifact {digest} not found")
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("X-Prisn-Digest", digest)
        self.set_header("Content-Length", str(len(art.data)))
        await send_chunked(self, (art.data,), what=f"artifact {digest} download",
                           stall=STALL_SECONDS)


ARTIFACT_ROUTES: list[tuple[str, type[BaseHandler]]] = [
    (r"/api/v1/artifacts/?", ArtifactsHandler),
    (r"/api/v1/artifacts/([^/]+)/?", ArtifactHandler),
]
