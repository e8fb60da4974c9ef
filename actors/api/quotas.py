"""Bounds on what one namespace may store (issue 17 item 4). Thread: the API IOLoop thread.

Checked before a deployment write is proposed, against this node's applied state:
- a spec larger than `max_spec_bytes` is a 413 (code belongs in a file or an artifact);
- a create beyond `max_deployments` in its namespace, or any write that would take the
  namespace's stored bytes past `max_bytes`, is a 507 (the write is never applied).

Sizes are `prisn.fsm.deployments.deployment_size` (characters of the strings plus a fixed
overhead per item). The check is admission control, not part of the replicated state: writes
in flight at the same moment may overshoot a quota by what they carry (at most
`max_inflight` writes per node), as with Kubernetes' quota admission. Every node may be
started with different limits; a write is checked by the node that receives it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.api.errors import ApiError, PayloadTooLarge
from prisn.fsm.deployments import DeploymentStore, deployment_size
from prisn.outcomes import Outcome
from prisn.workloads.artifacts import DEFAULT_MAX_ARTIFACT_BYTES

KiB, MiB = 1 << 10, 1 << 20
DEFAULT_MAX_SPEC_BYTES = 1 * MiB
DEFAULT_NAMESPACE_MAX_DEPLOYMENTS = 100_000
DEFAULT_NAMESPACE_MAX_BYTES = 256 * MiB


class QuotaExceeded(ApiError):
    outcome = Outcome.QUOTA_EXCEEDED


@dataclass(frozen=True)
class Quotas:
    max_spec_bytes: int = DEFAULT_MAX_SPEC_BYTES
    max_deployments: int = DEFAULT_NAMESPACE_MAX_DEPLOYMENTS
    max_bytes: int = DEFAULT_NAMESPACE_MAX_BYTES
    max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES  # one upload (actors.api.artifacts)

    def check(self, store: DeploymentStore, command: dict[str, Any]) -> None:
        """PayloadTooLarge / QuotaExceeded, or nothing, for a built deployment command."""
        op = command.get("op")
        if op not in ("create", "replace", "patch"):
            return
        spec = command.get("spec")
        if not isinstance(spec, dict):
            return
        ns, name = command.get("ns"), command.get("name")
        if not isinstance(ns, str) or not isinstance(name, str):
            return
        size = deployment_size({**spec, "name": name, "namespace": ns})
        if size > self.max_spec_bytes:
            raise PayloadTooLarge(
                f"deployment spec of about {size} bytes exceeds --max-spec-bytes "
                f"({self.max_spec_bytes}); keep large code in a file the source names")
        count, used = store.usage(ns)
        old = 0
        if op == "create":
            if count >= self.max_deployments:
                raise QuotaExceeded(
                    f"namespace {ns!r} already holds {count} deployments, the limit "
                    f"(--namespace-max-deployments {self.max_deployments}); delete some first")
        else:
            current = store.get(ns, name)
            if current is None:
                return  # the state machine answers the 404
            old = deployment_size(current)
            if op == "patch":
                merged = {**current, **{k: v for k, v in spec.items() if v is not None}}
                size = deployment_size(merged)
        if used - old + size > self.max_bytes:
            raise QuotaExceeded(
                f"namespace {ns!r} would hold about {used - old + size} bytes of deployments, "
                f"over its limit (--namespace-max-bytes {self.max_bytes}); delete or shrink "
                "some first")
