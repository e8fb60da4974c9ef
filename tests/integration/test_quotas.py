"""Bounded stored state on a real server (issue 17 item 4): per-spec size, per-namespace
count and bytes; every refusal is `{"error", "message"}`, changes nothing, and the node
still takes writes. Both the fast create path and the handlers are exercised (a create
without auth takes the fast path; PUT and PATCH go through the handlers)."""

from __future__ import annotations

import pytest

from tests.procs import single_node

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def node(tmp_path):
    n = single_node(tmp_path, extra=["--max-spec-bytes", "64KiB",
                                     "--namespace-max-deployments", "3",
                                     "--namespace-max-bytes", "122KiB"]).start()
    try:
        n.wait_ready()
        yield n
    finally:
        n.stop()


def _count(node, ns: str) -> int:
    return node.req("GET", f"/api/v1/deployments?namespace={ns}").json()["total"]


def test_spec_size_and_namespace_quotas(node):
    big = "x" * (70 << 10)
    r = node.req("POST", "/api/v1/deployments", {"name": "huge", "source": big})
    assert r.status == 413 and "--max-spec-bytes" in r.json()["message"], r.body
    assert set(r.json()) == {"error", "message"}
    assert node.req("GET", "/api/v1/deployments/huge").status == 404
    # bytes: two of 60 KiB fit in 122 KiB, a third does not
    mid = "y" * (60 << 10)
    for name in ("a", "b"):
        assert node.req("POST", "/api/v1/deployments", {"name": name, "source": mid}).status == 201
    r = node.req("POST", "/api/v1/deployments", {"name": "c", "source": mid})
    assert r.status == 507 and "--namespace-max-bytes" in r.json()["message"], r.body
    # a replace that grows past the quota is refused too (handler path); shrinking is fine
    r = node.req("PUT", "/api/v1/deployments/a", {"source": "z" * (63 << 10)})
    assert r.status == 507, r.body
    assert node.req("PATCH", "/api/v1/deployments/a", {"source": "small"}).status == 200
    # count: 3 per namespace
    assert node.req("POST", "/api/v1/deployments", {"name": "c", "source": "s"}).status == 201
    r = node.req("POST", "/api/v1/deployments", {"name": "d", "source": "s"})
    assert r.status == 507 and "--namespace-max-deployments" in r.json()["message"], r.body
    assert _count(node, "default") == 3
    # another namespace has its own quota; deleting frees room
    assert node.req("POST", "/api/v1/deployments?namespace=team",
                    {"name": "d", "source": "s"}).status == 201
    assert node.req("DELETE", "/api/v1/deployments/c").status == 204
    assert node.req("POST", "/api/v1/deployments", {"name": "d", "source": "s"}).status == 201


def test_bad_size_flag_is_a_one_line_usage_error(tmp_path):
    n = single_node(tmp_path, extra=["--max-spec-bytes", "lots"]).start()
    assert n.proc.wait(30) == 2
    out = n.tail()
    assert "--max-spec-bytes must be a positive size" in out and "Traceback" not in out
