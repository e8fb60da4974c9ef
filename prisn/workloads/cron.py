"""The cron core (issue 15): schedules, their times, and the leader's cron reconciler.

Pure: no clock read, no I/O. Times are whole seconds since the Unix epoch (UTC); `now` is
always an input (the leader's clock, read by its shell). Safe on any thread; values are
immutable.

Schedules (`parse_schedule`):
- five cron fields ``minute hour day-of-month month day-of-week``: ``*``, ``N``, ``A-B``,
  comma lists, ``/STEP`` on any item (``N/STEP`` means ``N-<max>/STEP``), month names
  ``jan``..``dec`` and day names ``sun``..``sat`` (any case); day-of-week 0 and 7 are Sunday.
  The day rule is Vixie cron's: when both day-of-month and day-of-week are restricted (their
  text does not start with ``*``) a day matches if EITHER matches, otherwise both must.
- the descriptors ``@yearly`` (= ``@annually``, ``0 0 1 1 *``), ``@monthly``, ``@weekly``,
  ``@daily`` (= ``@midnight``), ``@hourly``;
- ``@every <duration>``: a duration of ``<int><unit>`` parts (units ``d``, ``h``, ``m``,
  ``s``, e.g. ``90s``, ``5m``, ``1h30m``), at least 1 s and at most 366 days. Its times are
  the multiples of the period since the epoch (a fixed grid: every leader computes the same
  times without any state; ``@every 1h`` fires on the hour, UTC).

A calendar schedule is evaluated in its IANA `timezone` (default UTC). Wall times a DST jump
skips (02:30 on a spring-forward night) fire once, at the jump; wall times a fall-back
repeats fire once, at their first occurrence. So the instants of a schedule are strictly
increasing and each wall time gives at most one.

The reconciler (`cron_plan`) is level-triggered: from the cron jobs, the *mark* the log holds
for each (the latest scheduled time already fired, skipped or recorded missed: the
executions table's `marks`), the executions still running and `now`, it returns the `Fire`
and `Miss` commands that bring the log up to `now`. Running it again on the state those
commands produce returns nothing; running it on the same state returns the same commands
(whose keys make the second proposal a no-op).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MAX_SCHEDULE = 256
MIN_EVERY = 1  # seconds: the floor of ``@every``
MAX_EVERY = 366 * 86400
DEFAULT_TIMEZONE = "UTC"
DEFAULT_STARTING_DEADLINE = 60  # seconds
MAX_STARTING_DEADLINE = 366 * 86400
CONCURRENCY: tuple[str, ...] = ("allow", "forbid", "replace")
DEFAULT_CONCURRENCY = "forbid"
MAX_PLAN = 256  # commands one `cron_plan` round returns at most
MAX_TIMEZONE = 64
# A matching day is found within this many days (Feb 29 in a year skipping leap days: 8 years).
_MAX_DAYS = 366 * 9
# Count days this far around a range's ends one by one (their walls may map across them).
_MARGIN = timedelta(hours=26)

DESCRIPTORS: dict[str, str] = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = {m: i + 1 for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))}
_DAYS = {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
# (field name, low, high, names)
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 7, _DAYS),  # 0 and 7 are both Sunday
)
_DURATION_RE = re.compile(r"(?:[0-9]+[dhms])+")
_DURATION_PART = re.compile(r"([0-9]+)([dhms])")
_UNIT = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_TZ_RE = re.compile(r"[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+)*")
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # the most each month has


class ScheduleError(ValueError):
    """A schedule or cron job setting that cannot be used; the message says why."""


# ---------------------------------------------------------------------- parsing
def _value(text: str, low: int, high: int, names: dict[str, int], fname: str) -> int:
    key = text.lower()
    if key in names:
        return names[key]
    if not text.isdigit() or not text.isascii():
        raise ScheduleError(f"{fname} value {text!r} is not a number")
    n = int(text)
    if not low <= n <= high:
        raise ScheduleError(f"{fname} value {n} is outside {low}-{high}")
    return n


def _field(text: str, low: int, high: int, names: dict[str, int], fname: str) -> frozenset[int]:
    """The values of one cron field: a comma list of ``*``, ``N``, ``A-B``, each optionally
    ``/STEP``."""
    if not text:
        raise ScheduleError(f"{fname} is empty")
    out: set[int] = set()
    for item in text.split(","):
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or not step_text.isascii() or int(step_text) < 1:
                raise ScheduleError(f"{fname} step {step_text!r} must be a positive integer")
            step = int(step_text)
            if step > high:
                raise ScheduleError(f"{fname} step {step} is larger than {high}")
        if base == "*":
            a, b = low, high
        elif not base:
            raise ScheduleError(f"{fname} has an empty item in {text!r}")
        else:
            first, dash, last = base.partition("-")
            a = _value(first, low, high, names, fname)
            b = _value(last, low, high, names, fname) if dash else (high if slash else a)
            if a > b:
                raise ScheduleError(f"{fname} range {base} is reversed")
        out.update(range(a, b + 1, step))
    return frozenset(out)


def parse_duration(text: str) -> int:
    """Seconds of a duration such as ``90s``, ``5m`` or ``1h30m`` (``d``, ``h``, ``m``, ``s``
    parts, each unit at most once, largest first); ScheduleError otherwise."""
    t = text.strip().lower()
    if not _DURATION_RE.fullmatch(t):
        raise ScheduleError(f"duration {text!r:.40} must be like 90s, 5m or 1h30m "
                            "(units d, h, m, s)")
    parts = _DURATION_PART.findall(t)
    units = [u for _, u in parts]
    if len(set(units)) != len(units) or units != sorted(units, key=lambda u: -_UNIT[u]):
        raise ScheduleError(f"duration {text!r:.40} must name each unit once, largest first")
    return sum(int(n) * _UNIT[u] for n, u in parts)


def check_timezone(value: object) -> str:
    """An IANA zone name this node's tz database knows (``UTC``, ``Europe/Paris``)."""
    if (not isinstance(value, str) or not 0 < len(value) <= MAX_TIMEZONE
            or not _TZ_RE.fullmatch(value)):
        raise ScheduleError("timezone must be an IANA name such as UTC or Europe/Paris")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(f"unknown timezone {value!r}") from None
    return value


@dataclass(frozen=True, slots=True)
class Schedule:
    """A parsed schedule. `every` > 0: a fixed period in seconds (the fields are unused);
    else a calendar schedule of the sorted field values (day-of-week 0..6, Sunday 0) in
    `timezone`. `dom_star` / `dow_star`: that day field's text starts with ``*`` (the
    Vixie day rule). `text` is the normalized schedule text."""

    text: str
    every: int = 0
    minutes: tuple[int, ...] = ()
    hours: tuple[int, ...] = ()
    doms: frozenset[int] = frozenset()
    months: frozenset[int] = frozenset()
    dows: frozenset[int] = frozenset()
    dom_star: bool = True
    dow_star: bool = True
    timezone: str = DEFAULT_TIMEZONE

    @property
    def never(self) -> bool:
        """A calendar schedule no day matches (``0 0 30 2 *``): accepted, as it always was
        (the log may hold one), but it never fires; `check_fires` refuses it for new specs."""
        if self.every or not (self.dom_star or self.dow_star):
            return False
        return not any(d <= _MONTH_DAYS[m - 1] for m in self.months for d in self.doms)

    @property
    def tz(self) -> tzinfo:
        return UTC if self.timezone == "UTC" else ZoneInfo(self.timezone)

    def day_matches(self, d: date) -> bool:
        """Whether the calendar day `d` is one of the schedule's days (month included)."""
        if d.month not in self.months:
            return False
        dom = d.day in self.doms
        dow = (d.isoweekday() % 7) in self.dows
        if self.dom_star or self.dow_star:
            return dom and dow
        return dom or dow


def check_fires(s: Schedule) -> Schedule:
    """`s` if it has times at all, else ScheduleError (for new specs, proposer side)."""
    if s.never:
        raise ScheduleError(f"schedule {s.text!r} never fires (no such day)")
    return s


def normalize_schedule(value: object) -> str:
    """The normalized text of a valid schedule: descriptors and ``@every`` lowercased and
    single-spaced, five fields single-spaced; ScheduleError for anything else."""
    return parse_schedule(value).text


def parse_schedule(value: object, timezone: str | None = None) -> Schedule:
    """Parse a schedule (see the module doc); ScheduleError with a clear message otherwise.
    `timezone` None means UTC. A calendar schedule that can never fire (``0 0 30 2 *``) is
    accepted (`Schedule.never`; see `check_fires`)."""
    if not isinstance(value, str):
        raise ScheduleError("must be a string")
    text = value.strip()
    if not text or len(text) > MAX_SCHEDULE:
        raise ScheduleError("must be a cron expression")
    tz = DEFAULT_TIMEZONE if timezone is None else check_timezone(timezone)
    if text.startswith("@"):
        words = text.lower().split()
        if words[0] == "@every":
            if len(words) != 2:
                raise ScheduleError("@every takes one duration, such as @every 5m")
            seconds = parse_duration(words[1])
            if not MIN_EVERY <= seconds <= MAX_EVERY:
                raise ScheduleError(f"@every must be between {MIN_EVERY} s and "
                                    f"{MAX_EVERY // 86400} days, not {seconds} s")
            return Schedule(text=f"@every {words[1]}", every=seconds, timezone=tz)
        if len(words) != 1 or words[0] not in DESCRIPTORS:
            raise ScheduleError(f"unknown descriptor {text!r:.40}; use @every <duration> or "
                                "one of " + ", ".join(sorted(DESCRIPTORS)))
        fields = DESCRIPTORS[words[0]].split()
        norm = words[0]
    else:
        fields = text.split()
        if len(fields) != 5:
            raise ScheduleError("must have 5 fields (minute hour day-of-month month "
                                f"day-of-week), got {len(fields)}")
        norm = " ".join(fields)
    vals = [_field(part, low, high, names, fname)
            for part, (fname, low, high, names) in zip(fields, _FIELDS, strict=True)]
    minutes, hours, doms, months, dows = vals
    dows = frozenset(d % 7 for d in dows)
    dom_star, dow_star = fields[2].startswith("*"), fields[4].startswith("*")
    return Schedule(text=norm, minutes=tuple(sorted(minutes)), hours=tuple(sorted(hours)),
                    doms=doms, months=months, dows=dows, dom_star=dom_star,
                    dow_star=dow_star, timezone=tz)


# ---------------------------------------------------------------------- times
def _wall(t: int, tz: tzinfo) -> datetime:
    """The naive wall time of instant `t` in `tz`."""
    return datetime.fromtimestamp(t, tz).replace(tzinfo=None)


def _instant(w: datetime, tz: tzinfo) -> int:
    """The instant a naive wall time `w` fires at in `tz`: its first occurrence if the zone
    repeats it, the end of the jump if the zone skips it."""
    if tz is UTC:
        return calendar.timegm(w.timetuple())
    t0 = int(w.replace(tzinfo=tz, fold=0).timestamp())
    if _wall(t0, tz) == w:
        return t0
    t1 = int(w.replace(tzinfo=tz, fold=1).timestamp())
    lo, hi = min(t0, t1), max(t0, t1)
    while lo < hi:  # the first instant whose wall time is past `w`: the jump
        mid = (lo + hi) // 2
        if _wall(mid, tz) > w:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _walls_from(s: Schedule, start: datetime) -> Iterator[datetime]:
    """The schedule's wall times at or after the naive `start` (minute precision), in
    order, for at most `_MAX_DAYS` days."""
    d = start.date()
    h0, m0 = start.hour, start.minute + (1 if start.second or start.microsecond else 0)
    for _ in range(_MAX_DAYS):
        if s.day_matches(d):
            for h in s.hours:
                if h < h0:
                    continue
                for m in s.minutes:
                    if h == h0 and m < m0:
                        continue
                    yield datetime(d.year, d.month, d.day, h, m)
        d += timedelta(days=1)
        h0 = m0 = 0


def _walls_before(s: Schedule, end: datetime) -> Iterator[datetime]:
    """The schedule's wall times at or before the naive `end`, latest first, for at most
    `_MAX_DAYS` days."""
    d = end.date()
    h1, m1 = end.hour, end.minute
    for _ in range(_MAX_DAYS):
        if s.day_matches(d):
            for h in reversed(s.hours):
                if h > h1:
                    continue
                for m in reversed(s.minutes):
                    if h == h1 and m > m1:
                        continue
                    yield datetime(d.year, d.month, d.day, h, m)
        d -= timedelta(days=1)
        h1, m1 = 23, 59


def next_after(s: Schedule, t: int) -> int:
    """The first scheduled instant strictly after `t` (ScheduleError if `s.never`).

    Instants never decrease in wall order, so the answer is the first matching wall time
    whose instant is past `t`: start at the wall time of ``t + 1`` and walk back (or on)
    while that still (or not yet) holds; one or two steps but next to a DST change."""
    check_fires(s)
    if s.every:
        return (t // s.every + 1) * s.every
    tz = s.tz
    guess = _wall(t + 1, tz)
    ahead = _walls_from(s, guess)
    w = next(ahead)
    i = _instant(w, tz)
    if i > t:
        for b in _walls_before(s, w - timedelta(minutes=1)):
            j = _instant(b, tz)
            if j <= t:
                break
            i = j
        return i
    for w in ahead:
        i = _instant(w, tz)
        if i > t:
            return i
    raise AssertionError(f"schedule {s.text} has no time after {t}")  # `never` is refused


def last_at_or_before(s: Schedule, t: int) -> int:
    """The last scheduled instant at or before `t` (ScheduleError if `s.never`); the mirror
    of `next_after`."""
    check_fires(s)
    if s.every:
        return t // s.every * s.every
    tz = s.tz
    behind = _walls_before(s, _wall(t, tz))
    w = next(behind)
    i = _instant(w, tz)
    if i <= t:
        for a in _walls_from(s, w + timedelta(minutes=1)):
            j = _instant(a, tz)
            if j > t:
                break
            i = j
        return i
    for w in behind:
        i = _instant(w, tz)
        if i <= t:
            return i
    raise AssertionError(f"schedule {s.text} has no time before {t}")


def _first(n: int, pred: Callable[[int], bool]) -> int:
    """The least k in [0, n] with pred(k) (pred is monotonic; n if none)."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def count_between(s: Schedule, a: int, b: int) -> int:
    """How many scheduled instants lie in ``(a, b]``. O(days) for a calendar schedule (a
    day without a DST change counts in O(1))."""
    if b <= a:
        return 0
    if s.every:
        return b // s.every - a // s.every
    tz = s.tz
    per_day = len(s.hours) * len(s.minutes)
    margin = timedelta(0) if tz is UTC else _MARGIN
    d = (_wall(a, tz) - margin).date()
    last = (_wall(b, tz) + margin).date()
    n = 0
    top = a  # the latest instant counted (instants never decrease in wall order)
    while d <= last:
        nxt = d + timedelta(days=1)
        if s.day_matches(d):
            lo = _instant(datetime(d.year, d.month, d.day), tz)
            hi = _instant(datetime(nxt.year, nxt.month, nxt.day), tz)
            if hi <= top or lo > b:
                pass  # wholly outside (every instant of the day lies in [lo, hi])
            elif lo > top and hi <= b and hi - lo == 86400:
                n += per_day
                top = _instant(datetime(d.year, d.month, d.day, s.hours[-1], s.minutes[-1]), tz)
            elif hi - lo == 86400:  # an end of the range: bisect the day's wall times
                nm = len(s.minutes)

                def inst(k: int, d: date = d, nm: int = nm) -> int:
                    return _instant(datetime(d.year, d.month, d.day, s.hours[k // nm],
                                             s.minutes[k % nm]), tz)

                lower = top
                k0 = _first(per_day, lambda k: inst(k) > lower)  # noqa: B023 - called here
                k1 = _first(per_day, lambda k: inst(k) > b)
                if k1 > k0:
                    n += k1 - k0
                    top = inst(k1 - 1)
            else:  # a DST change: count distinct instants
                for h in s.hours:
                    for m in s.minutes:
                        i = _instant(datetime(d.year, d.month, d.day, h, m), tz)
                        if top < i <= b:
                            n += 1
                            top = i
        d = nxt
    return n


def times_between(s: Schedule, a: int, b: int, limit: int = 10_000) -> list[int]:
    """The scheduled instants in ``(a, b]``, in order, at most `limit` of them (tests and
    tools; the reconciler never enumerates)."""
    out: list[int] = []
    t = a
    while len(out) < limit:
        t = next_after(s, t)
        if t > b:
            break
        out.append(t)
    return out


# ---------------------------------------------------------------------- the reconciler
@dataclass(frozen=True, slots=True)
class CronJob:
    """What the cron reconciler needs of one cron job deployment. `since`: scheduled times
    at or before it never count (the deployment's creation, epoch seconds); `paused`: its
    replicas are 0."""

    deployment_id: str
    schedule: Schedule
    concurrency: str = DEFAULT_CONCURRENCY
    starting_deadline: int = DEFAULT_STARTING_DEADLINE
    paused: bool = False
    since: int = 0

    def __post_init__(self) -> None:
        if self.concurrency not in CONCURRENCY:
            raise ScheduleError(f"concurrency must be one of {', '.join(CONCURRENCY)}")
        if (type(self.starting_deadline) is not int
                or not 0 <= self.starting_deadline <= MAX_STARTING_DEADLINE):
            raise ScheduleError(f"starting_deadline must be 0..{MAX_STARTING_DEADLINE} s")


@dataclass(frozen=True, slots=True)
class Fire:
    """Start an execution of `deployment_id` for `scheduled_at` (the pair is the key);
    `cancel`: the running executions to cancel first (concurrency ``replace``)."""

    deployment_id: str
    scheduled_at: int
    after: int | None  # the mark it was planned on (compare-and-set at apply)
    cancel: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Miss:
    """Record that the `count` scheduled times from `first` to `last` (inclusive) of
    `deployment_id` did not run: ``late`` (past the starting deadline) or ``skipped`` (the
    previous run still ran, concurrency ``forbid``)."""

    deployment_id: str
    first: int
    last: int
    count: int
    reason: str
    after: int | None  # the mark it was planned on (compare-and-set at apply)


CronCommand = Fire | Miss


def cron_plan(cronjobs: Iterable[CronJob], marks: Mapping[str, int],
              running: Mapping[str, Sequence[str]], now: int, *,
              max_commands: int = MAX_PLAN) -> list[CronCommand]:
    """The commands that bring the cron log up to `now`.

    `marks`: per deployment id, the latest scheduled time the log already handled (fired,
    skipped or missed); a job without one starts after its `since`. `running`: per
    deployment id, its executions not yet terminal (Pending or Running), oldest first.

    Each command names the mark it was planned on (`after`), the previous command's end
    for the next one of the same job; the table applies it only if that is still the mark,
    so a plan made on a stale view changes nothing, and any prefix of a job's commands
    leaves a consistent log.

    Per job, of its due times in ``(mark, now]``:
    - those more than `starting_deadline` late are ONE ``late`` miss, however many;
    - of the others (on time), ``allow`` fires each; ``forbid`` fires the latest unless a
      run is still going (then it is ``skipped`` too) and ``replace`` fires the latest
      cancelling the running ones; the older on-time ones are then ONE ``skipped`` miss
      (a forbid/replace job runs one at a time: they would have been skipped or replaced).
    Jobs with the oldest due time go first; at most `max_commands` commands in all (the
    rest next round). Paused jobs (and schedules that never fire) get nothing: times
    passing while paused are handled when resumed (missed, but for the latest within the
    deadline)."""
    work: list[tuple[int, str, list[CronCommand]]] = []
    for job in cronjobs:
        if job.paused or job.schedule.never:
            continue
        s, dep = job.schedule, job.deployment_id
        mark = marks.get(dep)
        base = job.since if mark is None else mark
        first = next_after(s, base)
        if first > now:
            continue
        latest = last_at_or_before(s, now)
        cutoff = now - job.starting_deadline  # a time before it is late
        cmds: list[CronCommand] = []
        after, start = mark, base
        if first < cutoff:
            last_late = last_at_or_before(s, min(cutoff - 1, latest))
            cmds.append(Miss(dep, first, last_late, count_between(s, base, last_late),
                             "late", after))
            after = start = last_late
        if start < latest:  # on-time times in (start, latest]
            busy = tuple(running.get(dep, ()))
            if job.concurrency == "allow":
                t = start
                while len(cmds) < max_commands and t < latest:
                    t = next_after(s, t)
                    cmds.append(Fire(dep, t, after))
                    after = t
            else:
                if latest > next_after(s, start):
                    before = last_at_or_before(s, latest - 1)
                    cmds.append(Miss(dep, next_after(s, start), before,
                                     count_between(s, start, before), "skipped", after))
                    after = before
                if busy and job.concurrency == "forbid":
                    cmds.append(Miss(dep, latest, latest, 1, "skipped", after))
                else:
                    cmds.append(Fire(dep, latest, after,
                                     busy if job.concurrency == "replace" else ()))
        work.append((first, dep, cmds))
    work.sort(key=lambda w: (w[0], w[1]))
    out: list[CronCommand] = []
    for _, _, cmds in work:
        room = max_commands - len(out)
        if room <= 0:
            break
        out.extend(cmds[:room])
    return out


def cronjob_of(dep: Mapping[str, object], since: int) -> CronJob:
    """The `CronJob` of a stored cronjob deployment dict; the optional keys ``timezone``,
    ``concurrency`` and ``starting_deadline`` take their defaults when absent (deployment
    specs do not carry them yet). ScheduleError if its settings cannot be used."""
    tz = dep.get("timezone")
    conc = dep.get("concurrency") or DEFAULT_CONCURRENCY
    deadline = dep.get("starting_deadline")
    return CronJob(deployment_id=str(dep["id"]),
                   schedule=parse_schedule(dep["schedule"], tz if isinstance(tz, str) else None),
                   concurrency=str(conc),
                   starting_deadline=(DEFAULT_STARTING_DEADLINE if deadline is None
                                      else deadline),  # type: ignore[arg-type]
                   paused=dep.get("replicas") == 0, since=since)


# the deployment fields `cronjob_of` and the caller's `since_of` read: equal fields, equal job
_JOB_FIELDS = ("id", "created_at", "schedule", "timezone", "concurrency",
               "starting_deadline", "replicas")


class CronJobCache:
    """`cronjob_of` per cronjob deployment, reused while the fields it reads are equal, so
    a cron round re-parses (schedule, `created_at`) only new or changed deployments. Holds
    the jobs of the last call's deployments only (bounded by them). One thread: the
    leader's scheduler."""

    def __init__(self, since_of: Callable[[Mapping[str, object]], int]) -> None:
        self._since_of = since_of
        self._jobs: dict[tuple[object, ...], CronJob] = {}

    def jobs(self, deps: Iterable[Mapping[str, object]]
             ) -> tuple[list[CronJob], list[tuple[Mapping[str, object], Exception]]]:
        """(the jobs of `deps` in order, the (deployment, error) of those that cannot be
        planned: ScheduleError, KeyError, TypeError, ValueError from `cronjob_of` or
        `since_of`; errors are not cached)."""
        fresh: dict[tuple[object, ...], CronJob] = {}
        jobs: list[CronJob] = []
        bad: list[tuple[Mapping[str, object], Exception]] = []
        for dep in deps:
            key: tuple[object, ...] | None = tuple(dep.get(k) for k in _JOB_FIELDS)
            try:
                hash(key)
            except TypeError:
                key = None  # an unhashable field: parse every time
            job = None if key is None else self._jobs.get(key)
            if job is None:
                try:
                    job = cronjob_of(dep, since=self._since_of(dep))
                except (ScheduleError, KeyError, TypeError, ValueError) as e:
                    bad.append((dep, e))
                    continue
            if key is not None:
                fresh[key] = job
            jobs.append(job)
        self._jobs = fresh
        return jobs, bad
