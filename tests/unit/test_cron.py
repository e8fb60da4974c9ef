"""The pure cron core: parsing (and its errors), next/last/count of scheduled times in UTC and
in DST zones, the dom/dow rule, @every, and the level-triggered `cron_plan` (concurrency,
starting deadline, bounded catch-up, idempotence)."""

from __future__ import annotations

import calendar
import random
import time

import pytest

from prisn.workloads.cron import (
    CronJob,
    Fire,
    Miss,
    ScheduleError,
    check_fires,
    count_between,
    cron_plan,
    cronjob_of,
    last_at_or_before,
    next_after,
    parse_duration,
    parse_schedule,
    times_between,
)


def ts(text: str) -> int:
    """Epoch seconds of ``YYYY-MM-DD HH:MM[:SS]`` UTC."""
    fmt = "%Y-%m-%d %H:%M:%S" if text.count(":") == 2 else "%Y-%m-%d %H:%M"
    return calendar.timegm(time.strptime(text, fmt))


# ---------------------------------------------------------------------- parsing
@pytest.mark.parametrize("text,norm,every", [
    ("* * * * *", "* * * * *", 0),
    ("  0   12  *  *  sat  ", "0 12 * * sat", 0),
    ("@DAILY", "@daily", 0),
    ("@every 1s", "@every 1s", 1),
    ("@every 90s", "@every 90s", 90),
    ("@every 5m", "@every 5m", 300),
    ("@Every 1H30M", "@every 1h30m", 5400),
    ("@every 1d", "@every 1d", 86400),
    ("@every   2h", "@every 2h", 7200),
])
def test_parse_normalizes(text: str, norm: str, every: int) -> None:
    s = parse_schedule(text)
    assert (s.text, s.every, s.timezone) == (norm, every, "UTC")


@pytest.mark.parametrize("text,fields", [
    ("*/15 9-17 * * mon-fri", ((0, 15, 30, 45), tuple(range(9, 18)), None, None,
                               {1, 2, 3, 4, 5})),
    ("5/20 0 1,15 jan,JUL *", ((5, 25, 45), (0,), {1, 15}, {1, 7}, None)),
    ("0 0 * * 7", ((0,), (0,), None, None, {0})),  # 7 is Sunday
    ("0 0 * * 0-7/7", ((0,), (0,), None, None, {0})),
    ("@hourly", ((0,), tuple(range(24)), None, None, None)),
    ("@weekly", ((0,), (0,), None, None, {0})),
    ("@yearly", ((0,), (0,), {1}, {1}, None)),
    ("@monthly", ((0,), (0,), {1}, None, None)),
])
def test_parse_fields(text: str, fields: tuple) -> None:
    s = parse_schedule(text)
    minutes, hours, doms, months, dows = fields
    assert s.minutes == minutes and s.hours == hours
    assert s.doms == frozenset(doms or range(1, 32))
    assert s.months == frozenset(months or range(1, 13))
    assert s.dows == frozenset(dows or range(7))


@pytest.mark.parametrize("text,message", [
    ("* * * *", "must have 5 fields"),
    ("60 * * * *", "minute value 60 is outside 0-59"),
    ("* 24 * * *", "hour value 24"),
    ("* * 0 * *", "day-of-month value 0"),
    ("* * * 13 *", "month value 13"),
    ("* * * * 8", "day-of-week value 8"),
    ("*/0 * * * *", "step '0' must be a positive integer"),
    ("*/60 * * * *", "step 60 is larger than 59"),
    ("5-1 * * * *", "range 5-1 is reversed"),
    ("1,,2 * * * *", "empty item"),
    ("* * * * funday", "day-of-week value 'funday' is not a number"),
    ("* * * mon *", "month value 'mon'"),
    ("@reboot", "unknown descriptor"),
    ("@every", "@every takes one duration"),
    ("@every 0s", "must be between 1 s"),
    ("@every 367d", "must be between"),
    ("@every 5", "must be like 90s"),
    ("@every 1.5s", "must be like 90s"),
    ("@every 30m1h", "largest first"),
    ("@every 1m1m", "each unit once"),
    ("", "must be a cron expression"),
    (5, "must be a string"),
])
def test_parse_errors(text: object, message: str) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_schedule(text)
    assert message in str(info.value)


def test_timezones_and_durations() -> None:
    assert parse_schedule("0 9 * * *", "Europe/Paris").timezone == "Europe/Paris"
    for bad in ("Mars/Olympus", "../etc/passwd", "", 3, "a" * 65):
        with pytest.raises(ScheduleError, match="timezone"):
            parse_schedule("0 9 * * *", bad)  # type: ignore[arg-type]
    assert parse_duration("1d2h3m4s") == 93784
    # a schedule with no day at all is accepted (the log may hold one) but never fires
    never = parse_schedule("0 0 30 2 *")
    assert never.never and not parse_schedule("0 0 30 2 1").never  # OR rule: Mondays
    with pytest.raises(ScheduleError, match="never fires"):
        check_fires(never)
    assert cron_plan([CronJob("d", never)], {}, {}, ts("2030-01-01 00:00")) == []


# ---------------------------------------------------------------------- times
NEXT_CASES = [
    # (schedule, timezone, after, expected next instants in UTC)
    ("* * * * *", None, "2026-01-01 00:00:00", ["2026-01-01 00:01", "2026-01-01 00:02"]),
    ("* * * * *", None, "2026-01-01 00:00:59", ["2026-01-01 00:01"]),
    ("0 * * * *", None, "2026-01-01 23:30", ["2026-01-02 00:00", "2026-01-02 01:00"]),
    ("@monthly", None, "2026-01-31 12:00", ["2026-02-01 00:00", "2026-03-01 00:00"]),
    ("@yearly", None, "2026-06-01 00:00", ["2027-01-01 00:00"]),
    ("0 0 29 2 *", None, "2097-01-01 00:00", ["2104-02-29 00:00"]),  # 2100 is no leap year
    ("0 0 31 * *", None, "2026-04-01 00:00", ["2026-05-31 00:00", "2026-07-31 00:00"]),
    # dom and dow both restricted: either matches (the 13th, or a Friday)
    ("0 0 13 * fri", None, "2026-02-10 00:00", ["2026-02-13 00:00", "2026-02-20 00:00",
                                                "2026-02-27 00:00", "2026-03-06 00:00",
                                                "2026-03-13 00:00"]),
    # a '*/..' day field counts as unrestricted: both must match (Fridays only)
    ("0 0 */1 * fri", None, "2026-02-10 00:00", ["2026-02-13 00:00", "2026-02-20 00:00"]),
    ("@every 90s", None, "2026-01-01 00:00:00", ["2026-01-01 00:01:30", "2026-01-01 00:03:00"]),
    ("@every 1s", "Europe/Paris", "2026-01-01 00:00:00", ["2026-01-01 00:00:01"]),
    # Paris, 09:00 local: +1 in winter, +2 in summer
    ("0 9 * * *", "Europe/Paris", "2026-03-28 12:00", ["2026-03-29 07:00", "2026-03-30 07:00"]),
    # New York spring forward (02:00 EST -> 03:00 EDT at 07:00 UTC): 02:30 fires at the jump
    ("30 2 * * *", "America/New_York", "2026-03-07 12:00",
     ["2026-03-08 07:00", "2026-03-09 06:30"]),
    # ... and every wall time of the skipped hour collapses into that one instant
    ("*/20 2-3 * * *", "America/New_York", "2026-03-08 06:00",
     ["2026-03-08 07:00", "2026-03-08 07:20", "2026-03-08 07:40", "2026-03-09 06:00"]),
    # fall back (01:00-01:59 happens twice): 01:30 fires once, at its first occurrence
    ("30 1 * * *", "America/New_York", "2026-10-31 12:00",
     ["2026-11-01 05:30", "2026-11-02 06:30"]),
    # Samoa skipped 30 December 2011 entirely (-10 to +14): its noon fires at the jump
    ("0 12 * * *", "Pacific/Apia", "2011-12-28 00:00",
     ["2011-12-28 22:00", "2011-12-29 22:00", "2011-12-30 10:00", "2011-12-30 22:00"]),
    # Lord Howe moves by 30 minutes (02:00 -> 02:30 on 4 October 2026, +10:30 -> +11)
    ("0 2 * * *", "Australia/Lord_Howe", "2026-10-03 00:00",
     ["2026-10-03 15:30", "2026-10-04 15:00"]),
]


@pytest.mark.parametrize("text,tz,after,expected", NEXT_CASES)
def test_next_after(text: str, tz: str | None, after: str, expected: list[str]) -> None:
    s = parse_schedule(text, tz)
    t, got = ts(after), []
    for _ in expected:
        t = next_after(s, t)
        got.append(t)
    assert got == [ts(e) for e in expected]
    # last_at_or_before and count_between agree with next_after
    for a, b in zip(got, got[1:], strict=False):
        assert last_at_or_before(s, b - 1) == a and last_at_or_before(s, a) == a
        assert count_between(s, a - 1, b) == 2 and count_between(s, a, b - 1) == 0


@pytest.mark.parametrize("tz", ["UTC", "Europe/Paris", "America/New_York", "Pacific/Apia",
                                "Australia/Lord_Howe", "Asia/Kolkata", "America/Havana"])
@pytest.mark.parametrize("text", ["* * * * *", "30 2 * * *", "*/7 0-3 * * *", "0 0 * * *",
                                  "59 23 * * *", "0,30 0,1,23 * * 1-5"])
def test_times_are_consistent_around_dst(tz: str, text: str) -> None:
    """Across every DST change of a few zones (and Samoa's lost day): instants strictly
    increase, count_between counts what next_after enumerates, last <= t < next."""
    s = parse_schedule(text, tz)
    rng = random.Random(7)
    for day in ("2026-03-08", "2026-11-01", "2026-03-29", "2026-10-25", "2026-04-05",
                "2011-12-29", "2026-03-14"):
        a = ts(day + " 00:00") - 86400
        b = a + 3 * 86400
        times = times_between(s, a, b, 100_000)
        assert times == sorted(set(times))
        assert count_between(s, a, b) == len(times)
        for x in rng.sample(range(a, b), 20):
            n, last = next_after(s, x), last_at_or_before(s, x)
            assert last <= x < n and count_between(s, last - 1, n) == 2


def test_count_over_a_year_is_fast_and_exact() -> None:
    s = parse_schedule("* * * * *", "Europe/Paris")
    # 365 days of minutes, less the 60 walls of the spring-forward gap that collapse into
    # the instant of 03:00 (the repeated autumn hour fires once per wall time: no change)
    assert count_between(s, ts("2025-12-31 23:00"), ts("2026-12-31 23:00")) == 525600 - 60
    assert count_between(parse_schedule("@every 1s"), 0, 86400 * 365) == 86400 * 365


# ---------------------------------------------------------------------- the plan
T0 = ts("2026-06-01 12:00")
EVERY_MIN = parse_schedule("* * * * *")


def job(dep: str = "d1", text: str = "* * * * *", **kw: object) -> CronJob:
    kw.setdefault("since", T0)
    return CronJob(dep, parse_schedule(text), **kw)  # type: ignore[arg-type]


def apply_plan(cmds: list, marks: dict[str, int], running: dict[str, list[str]]) -> None:
    """What the executions table does with the plan's commands (for idempotence checks)."""
    for c in cmds:
        assert marks.get(c.deployment_id) == c.after
        if isinstance(c, Fire):
            marks[c.deployment_id] = c.scheduled_at
            running.setdefault(c.deployment_id, []).append(f"x{c.scheduled_at}")
            for x in c.cancel:
                running[c.deployment_id].remove(x)
        else:
            marks[c.deployment_id] = c.last


PLAN_CASES = [
    # (name, jobs, marks, running, now, expected)
    ("nothing due yet", [job()], {}, {}, T0 + 59, []),
    ("on time", [job()], {}, {}, T0 + 60, [Fire("d1", T0 + 60, None)]),
    # forbid (the default) runs one at a time: an older on-time time is skipped
    ("two due within the deadline", [job()], {}, {}, T0 + 120,
     [Miss("d1", T0 + 60, T0 + 60, 1, "skipped", None), Fire("d1", T0 + 120, T0 + 60)]),
    ("allow fires each on-time time", [job("d1", "@every 1s", concurrency="allow")],
     {"d1": T0}, {"d1": ["x0"]}, T0 + 3,
     [Fire("d1", T0 + 1, T0), Fire("d1", T0 + 2, T0 + 1), Fire("d1", T0 + 3, T0 + 2)]),
    ("allow: late ones are one miss", [job(concurrency="allow", starting_deadline=70)],
     {"d1": T0}, {}, T0 + 190,
     [Miss("d1", T0 + 60, T0 + 60, 1, "late", T0), Fire("d1", T0 + 120, T0 + 60),
      Fire("d1", T0 + 180, T0 + 120)]),
    ("replace: the latest replaces", [job("d1", "@every 1s", concurrency="replace")],
     {"d1": T0}, {"d1": ["x0"]}, T0 + 3,
     [Miss("d1", T0 + 1, T0 + 2, 2, "skipped", T0), Fire("d1", T0 + 3, T0 + 2, ("x0",))]),
    ("already fired", [job()], {"d1": T0 + 60}, {}, T0 + 119, []),
    ("past the deadline: one miss", [job(starting_deadline=10)], {"d1": T0}, {}, T0 + 75,
     [Miss("d1", T0 + 60, T0 + 60, 1, "late", T0)]),
    ("deadline is inclusive", [job(starting_deadline=15)], {"d1": T0}, {}, T0 + 75,
     [Fire("d1", T0 + 60, T0)]),
    ("long outage: one compact miss and the latest",
     [job()], {"d1": T0}, {}, T0 + 86400 + 30,
     [Miss("d1", T0 + 60, T0 + 86400 - 60, 1439, "late", T0),
      Fire("d1", T0 + 86400, T0 + 86400 - 60)]),
    ("long outage, allow", [job(concurrency="allow")], {"d1": T0}, {}, T0 + 86400 + 60,
     [Miss("d1", T0 + 60, T0 + 86400 - 60, 1439, "late", T0),
      Fire("d1", T0 + 86400, T0 + 86400 - 60), Fire("d1", T0 + 86460, T0 + 86400)]),
    ("forbid skips while running", [job()], {"d1": T0}, {"d1": ["x1"]}, T0 + 60,
     [Miss("d1", T0 + 60, T0 + 60, 1, "skipped", T0)]),
    ("allow fires while running", [job(concurrency="allow")], {"d1": T0}, {"d1": ["x1"]},
     T0 + 60, [Fire("d1", T0 + 60, T0)]),
    ("replace cancels the running", [job(concurrency="replace")], {"d1": T0},
     {"d1": ["x1", "x2"]}, T0 + 60, [Fire("d1", T0 + 60, T0, ("x1", "x2"))]),
    ("paused", [job(paused=True)], {"d1": T0}, {}, T0 + 600, []),
    ("since: nothing before creation", [job(since=T0 + 61)], {}, {}, T0 + 121,
     [Fire("d1", T0 + 120, None)]),
    ("same due time: by id", [job("b"), job("a", "@every 1s", since=T0 + 59)], {}, {},
     T0 + 60, [Fire("a", T0 + 60, None), Fire("b", T0 + 60, None)]),
    ("oldest due first", [job("a", "@every 1s", since=T0 + 59),
                          job("b", "@hourly", since=T0 - 3600, starting_deadline=3600)],
     {}, {}, T0 + 60, [Fire("b", T0, None), Fire("a", T0 + 60, None)]),
]


@pytest.mark.parametrize("name,jobs,marks,running,now,expected", PLAN_CASES,
                         ids=[c[0] for c in PLAN_CASES])
def test_cron_plan(name: str, jobs: list[CronJob], marks: dict, running: dict, now: int,
                   expected: list) -> None:
    got = cron_plan(jobs, marks, running, now)
    assert got == expected
    # level-triggered: the same state gives the same plan; the state it leads to, none
    assert cron_plan(jobs, marks, running, now) == got
    marks, running = dict(marks), {k: list(v) for k, v in running.items()}
    apply_plan(got, marks, running)
    assert cron_plan(jobs, marks, running, now) == []


def test_plan_is_bounded_and_chains_a_jobs_commands() -> None:
    jobs = [job(f"d{i:03d}") for i in range(300)]
    marks = {j.deployment_id: T0 for j in jobs}
    now = T0 + 30 * 86400  # a month-long outage of 300 every-minute jobs
    first = cron_plan(jobs, marks, {}, now, max_commands=101)
    assert len(first) == 101  # per job: late miss, skipped miss, fire (any prefix is fine)
    assert [type(c) for c in first[:3]] == [Miss, Miss, Fire]
    assert (first[0].count, first[0].reason, first[1].reason) == (30 * 1440 - 2, "late",
                                                                  "skipped")
    total, rounds = 0, 0
    while cmds := cron_plan(jobs, marks, {}, now):
        rounds += 1
        total += len(cmds)
        apply_plan(cmds, marks, {})  # checks each command's `after` chains on the last
    assert (rounds, total) == (4, 900)


def test_cronjob_of_a_stored_deployment() -> None:
    dep = {"id": "x", "schedule": "@every 5m", "replicas": 0}
    j = cronjob_of(dep, since=5)
    assert (j.deployment_id, j.schedule.every, j.concurrency, j.starting_deadline, j.paused,
            j.since) == ("x", 300, "forbid", 60, True, 5)
    j = cronjob_of({**dep, "replicas": 1, "timezone": "Asia/Tokyo", "concurrency": "allow",
                    "starting_deadline": 5}, since=0)
    assert (j.schedule.timezone, j.concurrency, j.starting_deadline, j.paused) == (
        "Asia/Tokyo", "allow", 5, False)
    for bad in ({"concurrency": "sometimes"}, {"starting_deadline": -1},
                {"starting_deadline": True}):
        with pytest.raises(ScheduleError):
            cronjob_of({**dep, **bad}, since=0)
