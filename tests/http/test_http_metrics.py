"""GET /metrics and NodeMetrics: series, labels, scrape-time raft values, promtool lint."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from tornado.testing import AsyncHTTPTestCase

from actors.api.app import make_app
from actors.api.node import FakeNodeClient, NodeInfo, NodeStatus
from actors.metrics import NodeMetrics
from tests.helpers import PROMTOOL, promtool_check
from tests.http.cases import value


class MetricsCase(AsyncHTTPTestCase):
    def get_app(self) -> Any:
        self.node = FakeNodeClient("node1", nodes=[
            NodeInfo("node1", "a:1", "leader"),
            NodeInfo("node2", "b:1", "follower", last_contact_seconds=0.1, lag_entries=2,
                     lag_seconds=0.25, inflight_messages=4),
            NodeInfo("node3", "c:1", "follower", last_contact_seconds=0.3, lag_entries=0,
                     lag_seconds=0.0, inflight_messages=0),
            NodeInfo("node4", "d:1", "learner", last_contact_seconds=0.5, lag_entries=10,
                     lag_seconds=1.5, inflight_messages=2),
        ])
        self.node.term = 7
        self.app = make_app(self.node)
        return self.app

    def scrape(self, accept: str | None = None) -> tuple[str, str]:
        resp = self.fetch("/metrics", headers={"Accept": accept} if accept else None)
        assert resp.code == 200
        assert resp.headers["X-Prisn-Node"] == "node1"
        return resp.body.decode(), resp.headers["Content-Type"]

    def test_request_series_use_route_patterns(self) -> None:
        self.fetch("/api/v1/deployments", method="POST", body='{"name": "web", "source": "x"}',
                   headers={"Content-Type": "application/json"})
        self.fetch("/api/v1/deployments/web")
        self.fetch("/api/v1/deployments/web")
        self.fetch("/api/v1/deployments/other")
        self.fetch("/no/such/path")
        text, ctype = self.scrape()
        assert ctype.startswith("text/plain")
        route = "/api/v1/deployments/{name}"
        assert value(text, "prisn_api_requests_total", method="GET", route=route,
                     code="200") == 2
        assert value(text, "prisn_api_requests_total", method="GET", route=route,
                     code="404") == 1
        assert value(text, "prisn_api_requests_total", method="POST",
                     route="/api/v1/deployments", code="201") == 1
        assert value(text, "prisn_api_requests_total", method="GET", route="unmatched",
                     code="404") == 1
        assert "/api/v1/deployments/web" not in text and "/no/such/path" not in text
        assert value(text, "prisn_api_request_duration_seconds_count", method="GET",
                     route=route) == 3
        assert value(text, "prisn_deployments_total") == 1

    def test_raft_series_from_status_at_scrape_time(self) -> None:
        text, _ = self.scrape()
        assert value(text, "raft_state") == 2
        assert value(text, "raft_term") == 7
        assert value(text, "raft_commit_index") == 0
        assert value(text, "raft_applied_index") == 0
        assert value(text, "raft_peers") == 2  # node2, node3: the learner does not vote
        assert value(text, "raft_replication_lag_seconds", peer="node2") == 0.25
        assert value(text, "raft_replication_lag_seconds", peer="node4") == 1.5
        assert value(text, "raft_replication_lag_seconds", peer="node1") is None
        assert value(text, "raft_peer_last_contact_seconds", peer="node3") == 0.3
        assert value(text, "raft_peer_inflight_messages", peer="node2") == 4
        self.fetch("/api/v1/deployments", method="POST", body='{"name": "a", "source": "x"}',
                   headers={"Content-Type": "application/json"})
        self.node.commit_noop()
        self.node.state = "follower"
        self.node.term = 8
        text, _ = self.scrape()
        assert value(text, "raft_state") == 0
        assert value(text, "raft_term") == 8
        assert value(text, "raft_applied_index") == 2
        assert value(text, "raft_replication_lag_seconds", peer="node2") is None
        self.node.state = "candidate"
        assert value(self.scrape()[0], "raft_state") == 1
        self.node.state = "learner"
        assert value(self.scrape()[0], "raft_state") == 0

    def test_counters_and_histograms_from_other_threads(self) -> None:
        m = self.app.ctx.metrics

        def work() -> None:
            for _ in range(1000):
                m.proposals_committed()
                m.observe_fsync(0.0003)
                m.observe_batch(8)
            m.proposals_failed(2)
            m.leader_changed()

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        text, _ = self.scrape()
        assert value(text, "raft_proposals_committed_total") == 4000
        assert value(text, "raft_proposals_failed_total") == 8
        assert value(text, "raft_leader_changes_total") == 4
        assert value(text, "prisn_log_fsync_seconds_count") == 4000
        assert value(text, "prisn_log_fsync_seconds_bucket", le="0.0005") == 4000
        assert value(text, "prisn_log_fsync_seconds_bucket", le="0.0001") == 0
        assert value(text, "prisn_log_batch_entries_bucket", le="8.0") == 4000
        assert value(text, "prisn_log_batch_entries_bucket", le="4.0") == 0
        extra = m.counter("prisn_test_drops", "Dropped things.", ("peer",))
        extra.labels("node2").inc(3)
        assert value(self.scrape()[0], "prisn_test_drops_total", peer="node2") == 3

    def test_openmetrics_negotiation(self) -> None:
        text, ctype = self.scrape("application/openmetrics-text; version=1.0.0")
        assert ctype.startswith("application/openmetrics-text")
        assert text.rstrip().endswith("# EOF")

    @pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed")
    def test_promtool_accepts_the_output(self) -> None:
        self.fetch("/api/v1/deployments", method="POST", body='{"name": "a", "source": "x"}',
                   headers={"Content-Type": "application/json"})
        self.fetch("/health")
        m = self.app.ctx.metrics
        m.observe_fsync(0.001)
        m.observe_batch(3)
        m.proposals_committed()
        promtool_check(self.scrape()[0])


def test_scrape_survives_failing_status() -> None:
    def broken() -> NodeStatus:
        raise RuntimeError("node stopping")

    m = NodeMetrics(status=broken, deployments=lambda: 5)
    body, _ = m.render()
    text = body.decode()
    assert value(text, "prisn_deployments_total") == 5
    assert value(text, "raft_term") is None


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed")
def test_promtool_catches_a_bad_exposition() -> None:
    """The promtool check can fail: a gauge named *_total is refused."""
    bad = "# HELP x_total x\n# TYPE x_total gauge\nx_total 1\n"
    with pytest.raises(AssertionError):
        promtool_check(bad)
