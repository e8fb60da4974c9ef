"""`ApiContext`: what every adapter of the API shares (handlers and fast paths alike).

Created by `actors.api.app.make_app`; read and changed on the API IOLoop thread only (no
locks: `inflight` is touched on that thread only). A plain record: it imports no adapter.
Shared strong reads are batched by the node client (`actors.api.node.BarrierBatch`), not here.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from actors.api.auth import Authenticator, AuthFailureLog
from actors.api.guard import RequestGuard
from actors.api.limits import RateLimiter
from actors.api.node import NodeClient
from actors.api.quotas import Quotas
from actors.metrics import NodeMetrics
from prisn.fsm.commands import CommandFactory
from prisn.fsm.executions import DEFAULT_HISTORY
from prisn.fsm.secrets import SecretFactory
from prisn.fsm.tokens import TokenFactory


@dataclass
class ApiContext:
    """What every handler shares; created by `make_app`, used on the IOLoop thread only."""

    node: NodeClient
    metrics: NodeMetrics
    commands: CommandFactory
    write_timeout: float
    read_timeout: float
    max_body: int
    max_inflight: int
    inflight: int = 0
    limiter: RateLimiter | None = None  # per-address request rate (None: unlimited)
    request_ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    auth: Authenticator = field(default_factory=Authenticator)  # off unless an API key is set
    auth_log: AuthFailureLog = field(default_factory=AuthFailureLog)  # details of "invalid"
    tokens: TokenFactory = field(default_factory=TokenFactory)
    quotas: Quotas = field(default_factory=Quotas)  # per-spec and per-namespace bounds
    # Content-Type, Origin and (auth off) Host checks; the default checks no Host
    guard: RequestGuard = field(default_factory=RequestGuard)
    openapi: bytes = b""  # GET /api/v1/openapi.json (`actors.api.openapi.document_bytes`)
    # seals secret values with the cluster key (None box: plain text); `actors.api.secrets`
    secrets: SecretFactory = field(default_factory=SecretFactory)
    # --execution-history: the per-deployment bound carried in `execution.create` commands
    execution_history: int = DEFAULT_HISTORY

