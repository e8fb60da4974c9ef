"""A real `prisn server` (one node, with an API key) answers as docs/openapi.yaml says.

Every answer below is checked with `tests.openapi_doc.check_response`: its status is one the
operation documents and its body validates against the documented schema (jsonschema on the
document's schemas). The document the node serves is the checked-in one.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.openapi_doc import check_response, document
from tests.procs import Response, ServerProc, single_node

KEY = "openapi-live-key-0123456789"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def node(tmp_path):
    n = single_node(tmp_path, extra=["--api-key", KEY]).start()
    try:
        n.wait_ready()
        yield n
    finally:
        n.stop()


def call(node: ServerProc, method: str, path: str, body: Any = None,
         token: str | None = KEY, headers: dict[str, str] | None = None) -> Response:
    """One request; its answer must be one the document describes."""
    h = {"Authorization": f"Bearer {token}"} if token is not None else {}
    r = node.req(method, path, body, headers={**h, **(headers or {})}, timeout=10)
    check_response(method, path, r.status, r.headers, r.body)
    assert r.headers["x-prisn-node"] == "n1" and r.headers["x-request-id"], r.headers
    return r


def test_answers_of_a_real_node_match_the_document(node):
    spec = {"name": "web", "source": "app.py", "port": 8080, "replicas": 2,
            "env": {"MODE": "prod"}, "args": ["--fast"], "runtime": "python3"}
    key = {"Idempotency-Key": "live-1"}
    created = call(node, "POST", "/api/v1/deployments", spec, headers=key)
    assert created.status == 201, created.body
    again = call(node, "POST", "/api/v1/deployments", spec, headers=key)
    assert (again.status, again.json()) == (201, created.json())
    assert call(node, "POST", "/api/v1/deployments", {**spec, "replicas": 3},
                headers=key).status == 422
    assert call(node, "POST", "/api/v1/deployments", spec).status == 409
    assert call(node, "POST", "/api/v1/deployments?namespace=team",
                {"name": "nightly", "source": "job.sh", "schedule": "0 3 * * *"}).status == 201
    assert call(node, "POST", "/api/v1/deployments", b"{not json").status == 400
    assert call(node, "POST", "/api/v1/deployments", {"name": "x", "port": 80,
                                                       "source": "s"}).status == 400

    dep_id = created.json()["id"]
    for path in ("/api/v1/deployments/web", f"/api/v1/deployments/{dep_id}",
                 "/api/v1/deployments/nightly?namespace=team"):
        assert call(node, "GET", path).status == 200, path
    strong = call(node, "GET", "/api/v1/deployments/web",
                  headers={"X-Prisn-Consistency": "strong"})
    assert strong.status == 200
    listing = call(node, "GET", "/api/v1/deployments?limit=10")
    assert listing.status == 200 and listing.json()["total"] == 2
    assert call(node, "GET", "/api/v1/deployments?type=cronjob&namespace=team").json()[
        "count"] == 1
    assert call(node, "GET", "/api/v1/deployments?offset=-1").status == 400
    assert call(node, "GET", "/api/v1/deployments/missing").status == 404

    assert call(node, "PATCH", "/api/v1/deployments/web", {"replicas": 5}).status == 200
    assert call(node, "PUT", "/api/v1/deployments/web", {"source": "v2.py"}).status == 200
    assert call(node, "POST", "/api/v1/deployments/web/scale", {"replicas": 1}).status == 200
    assert call(node, "DELETE", "/api/v1/deployments/web").status == 204
    assert call(node, "DELETE", "/api/v1/deployments/web").status == 404

    for path in ("/health", "/ready", "/api/v1/cluster/status", "/api/v1/cluster/health",
                 "/metrics"):
        assert call(node, "GET", path).status == 200, path
    assert call(node, "GET", "/api/v2/nowhere").status == 404
    assert call(node, "PUT", "/health").status == 405


def test_tokens_and_refusals_of_a_real_node_match_the_document(node):
    created = call(node, "POST", "/api/v1/tokens",
                   {"name": "ci", "role": "viewer", "namespaces": ["team"],
                    "expires_in": "24h"})
    assert created.status == 201, created.body
    tok = created.json()
    assert call(node, "GET", "/api/v1/tokens").json()["count"] == 1
    assert call(node, "GET", f"/api/v1/tokens/{tok['id']}").status == 200
    assert call(node, "GET", "/api/v1/tokens/0000000000000000").status == 404

    assert call(node, "GET", "/api/v1/deployments", token=None).status == 401
    assert call(node, "GET", "/api/v1/openapi.json", token=None).status == 401
    assert call(node, "GET", "/api/v1/deployments", token="garbage").status == 401
    viewer = tok["secret"]
    assert call(node, "GET", "/api/v1/deployments?namespace=team", token=viewer).status == 200
    assert call(node, "POST", "/api/v1/deployments?namespace=team",
                {"name": "a", "source": "x"}, token=viewer).status == 403
    assert call(node, "GET", "/api/v1/tokens", token=viewer).status == 403
    served = call(node, "GET", "/api/v1/openapi.json", token=viewer)
    assert served.status == 200 and json.loads(served.body) == document()

    assert call(node, "POST", f"/api/v1/tokens/{tok['id']}/revoke").status == 200
    assert call(node, "GET", "/api/v1/deployments", token=viewer).status == 401
    assert call(node, "DELETE", f"/api/v1/tokens/{tok['id']}").status == 204
    # leadership: a one-node cluster has nobody to hand it to
    assert call(node, "POST", "/api/v1/cluster/election", {"target": "n9"}).status in (404, 409)
    assert call(node, "DELETE", "/api/v1/cluster/nodes/n9").status == 404
