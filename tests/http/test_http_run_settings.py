"""Deployment run settings through the HTTP API (issue 15): `retries`, `concurrency`,
`timezone`, `starting_deadline` accepted on POST/PUT/PATCH, answered only when not their
default, 400 ``{error, message}`` naming the field when malformed or on a type they mean
nothing for; the cron planner run over what the API stored fires differently for them; an
execution of a job with retries carries `retries` and `attempts`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prisn.workloads.cron import cron_plan, cronjob_of, next_after
from tests.http.cases import ApiCase

SETTINGS = ("retries", "concurrency", "timezone", "starting_deadline")


class TestRunSettings(ApiCase):
    def dep(self, name: str) -> dict[str, Any]:
        code, d, _ = self.call("GET", f"/api/v1/deployments/{name}")
        assert code == 200, d
        return d

    def test_accepted_answered_and_patched(self) -> None:
        code, d, _ = self.call("POST", "/api/v1/deployments",
                               {"name": "c", "source": "x.py", "schedule": "0 9 * * *",
                                "retries": 2, "concurrency": "allow",
                                "timezone": "America/New_York", "starting_deadline": 30})
        assert code == 201, d
        assert {k: d[k] for k in SETTINGS} == {"retries": 2, "concurrency": "allow",
                                               "timezone": "America/New_York",
                                               "starting_deadline": 30}
        assert {k: self.dep("c")[k] for k in SETTINGS} == {k: d[k] for k in SETTINGS}
        code, d, _ = self.call("PATCH", "/api/v1/deployments/c",
                               {"timezone": None, "retries": 3})
        assert code == 200 and "timezone" not in d and d["retries"] == 3, d
        code, d, _ = self.call("PUT", "/api/v1/deployments/c",
                               {"source": "x.py", "schedule": "@daily",
                                "concurrency": "replace"})
        assert code == 200 and d["concurrency"] == "replace", d
        assert not {"retries", "timezone", "starting_deadline"} & d.keys()
        code, j, _ = self.call("POST", "/api/v1/deployments",
                               {"name": "j", "source": "x.py", "type": "job", "retries": 0})
        assert code == 201 and not set(SETTINGS) & j.keys(), j  # defaults: not answered

    def test_refusals_name_the_field_and_change_nothing(self) -> None:
        for body, field in (({"retries": 11}, "retries"), ({"retries": "2"}, "retries"),
                            ({"retries": True}, "retries"),
                            ({"schedule": "@daily", "concurrency": "never"}, "concurrency"),
                            ({"schedule": "@daily", "timezone": "Nowhere/Land"},
                             "timezone"),
                            ({"schedule": "@daily", "timezone": 5}, "timezone"),
                            ({"schedule": "@daily", "starting_deadline": -5},
                             "starting_deadline"),
                            ({"port": 8080, "retries": 1}, "retries"),
                            ({"type": "job", "concurrency": "allow"}, "concurrency"),
                            ({"type": "job", "timezone": "UTC"}, "timezone"),
                            ({"type": "job", "starting_deadline": 60},
                             "starting_deadline")):
            code, out, resp = self.call("POST", "/api/v1/deployments",
                                        {"name": "x", "source": "x.py", **body})
            self.assert_error(400, out, resp, "Bad Request", contains=field)
            assert out["message"].startswith(field), out
        assert self.call("GET", "/api/v1/deployments")[1]["total"] == 0
        self.call("POST", "/api/v1/deployments", {"name": "w", "source": "x.py", "port": 8080})
        code, out, resp = self.call("PATCH", "/api/v1/deployments/w", {"retries": 2})
        self.assert_error(400, out, resp, "Bad Request", contains="retries")
        assert "retries" not in self.dep("w")

    def test_the_cron_planner_honours_timezone_and_concurrency_from_the_api(self) -> None:
        # 09:00 in Tokyo is 00:00 UTC: the same schedule fires 9 hours apart
        for name, tz in (("utc", None), ("tokyo", "Asia/Tokyo")):
            body = {"name": name, "source": "x.py", "schedule": "0 9 * * *"}
            if tz:
                body["timezone"] = tz
            assert self.call("POST", "/api/v1/deployments", body)[0] == 201
        since = int(datetime(2026, 6, 1, tzinfo=UTC).timestamp())
        nxt = {n: next_after(cronjob_of(self.dep(n), since=since).schedule, since)
               for n in ("utc", "tokyo")}
        assert nxt == {"utc": since + 9 * 3600, "tokyo": since + 24 * 3600}
        # concurrency: with a run still going, forbid skips the fire and allow fires
        for name, conc in (("forbid", None), ("allow", "allow")):
            body = {"name": name, "source": "x.py", "schedule": "@every 10s"}
            if conc:
                body["concurrency"] = conc
            assert self.call("POST", "/api/v1/deployments", body)[0] == 201
        jobs = [cronjob_of(self.dep(n), since=since) for n in ("forbid", "allow")]
        ids = {j.deployment_id: n for j, n in zip(jobs, ("forbid", "allow"), strict=True)}
        marks = {j.deployment_id: since for j in jobs}
        running = {j.deployment_id: ("earlier",) for j in jobs}
        plan = cron_plan(jobs, marks, running, since + 10)
        kinds = {ids[c.deployment_id]: type(c).__name__ for c in plan}
        assert kinds == {"forbid": "Miss", "allow": "Fire"}

    def test_an_execution_of_a_job_with_retries_carries_its_attempts(self) -> None:
        self.call("POST", "/api/v1/deployments",
                  {"name": "j", "source": "x.py", "type": "job", "retries": 2})
        code, e, _ = self.call("POST", "/api/v1/executions", {"name": "j", "async": True})
        assert code == 202, e
        assert e["retries"] == 2 and [a["attempt"] for a in e["attempts"]] == [1]
