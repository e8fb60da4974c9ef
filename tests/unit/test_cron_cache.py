"""`CronJobCache`: the scheduler's parsed cron jobs per deployment version. Each call gives
exactly `cronjob_of` of every deployment, reuses a job while the fields it reads are
equal, re-parses a changed one, forgets removed ones and never caches an error."""

from __future__ import annotations

from typing import Any

from prisn.workloads.cron import CronJobCache, ScheduleError, cronjob_of


def dep(i: int, **kw: Any) -> dict[str, Any]:
    return {"id": f"d{i}", "name": f"c{i}", "namespace": "default",
            "created_at": f"2026-06-01T12:00:{i:02d}.000Z", "schedule": "@every 1s",
            "replicas": 1, **kw}


def since_of(d: Any) -> int:
    calls.append(d["id"])
    return 1780315200 + int(d["created_at"][17:19])


calls: list[str] = []


def test_the_cache_equals_cronjob_of_and_reuses_unchanged_jobs() -> None:
    calls.clear()
    cache = CronJobCache(since_of)
    deps = [dep(i) for i in range(5)]
    jobs, bad = cache.jobs(deps)
    assert bad == [] and jobs == [cronjob_of(d, since=since_of(d)) for d in deps]
    calls.clear()
    again, _ = cache.jobs([dict(d) for d in deps])  # equal copies: nothing re-parsed
    assert calls == [] and all(a is b for a, b in zip(again, jobs, strict=True))
    changed = [dep(0, schedule="@every 5s"), dep(1, replicas=0), dep(2, concurrency="allow"),
               dep(3, created_at="2026-06-01T12:00:30.000Z"), deps[4]]
    calls.clear()
    jobs, bad = cache.jobs(changed)
    assert calls == ["d0", "d1", "d2", "d3"] and bad == []
    assert jobs == [cronjob_of(d, since=since_of(d)) for d in changed]
    assert jobs[1].paused and jobs[3].since == 1780315230
    # a removed deployment is forgotten (bounded), an unhashable field is parsed each time
    cache.jobs([deps[4]])
    calls.clear()
    cache.jobs([deps[0]])
    assert calls == ["d0"]


def test_errors_are_reported_and_not_cached() -> None:
    calls.clear()
    cache = CronJobCache(since_of)
    broken = [dep(0, schedule="every now and then"), dep(1, concurrency="never"),
              {k: v for k, v in dep(2).items() if k != "created_at"}, dep(3)]
    jobs, bad = cache.jobs(broken)
    assert [j.deployment_id for j in jobs] == ["d3"]
    assert [d["id"] for d, _ in bad] == ["d0", "d1", "d2"]
    assert isinstance(bad[0][1], ScheduleError) and isinstance(bad[2][1], KeyError)
    _, bad_again = cache.jobs(broken)
    assert [d["id"] for d, _ in bad_again] == ["d0", "d1", "d2"]
    unhashable = dep(4, schedule=["@every 1s"])
    _, bad = cache.jobs([unhashable])
    assert len(bad) == 1  # parsed (and refused) rather than crashing on the key
