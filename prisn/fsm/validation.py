"""Validation of deployment specs (pure: no I/O, no clock; safe on any thread).

Runs twice for every write: on the API thread before proposing (a quick 400 without touching
Raft) and again on the state-machine thread inside `DeploymentStore.apply` (the log is the
source of truth; a command that slipped past an older API must still be refused the same way
on every node). Every failure is a `ValidationError` naming the offending field.

Invariants of a normalized spec (`normalize_spec`): only keys of `SPEC_FIELDS`; every present
value has its canonical Python type (no bools where ints are meant, no floats); `None` means
"reset to the default" and is only accepted for optional fields.
"""

from __future__ import annotations

import re
from typing import Any

from prisn.workloads.cron import (
    _TZ_RE,
    CONCURRENCY,
    DEFAULT_CONCURRENCY,
    DEFAULT_STARTING_DEADLINE,
    DEFAULT_TIMEZONE,
    DESCRIPTORS,
    MAX_STARTING_DEADLINE,
    MAX_TIMEZONE,
    ScheduleError,
    check_timezone,
    normalize_schedule,
)

# Run settings (issue 15): optional, stored in a deployment only when not their default.
POLICY_FIELDS: tuple[str, ...] = ("retries", "concurrency", "timezone", "starting_deadline")
SPEC_FIELDS: frozenset[str] = frozenset(
    {"name", "source", "runtime", "port", "replicas", "args", "env", "schedule", "namespace",
     "type", "artifact", "secrets", *POLICY_FIELDS}
)
MAX_RETRIES = 10
POLICY_DEFAULTS: dict[str, Any] = {"retries": 0, "concurrency": DEFAULT_CONCURRENCY,
                                   "timezone": DEFAULT_TIMEZONE,
                                   "starting_deadline": DEFAULT_STARTING_DEADLINE}
# the deployment types each run setting means something for
POLICY_TYPES: dict[str, frozenset[str]] = {
    "retries": frozenset({"job", "cronjob"}), "concurrency": frozenset({"cronjob"}),
    "timezone": frozenset({"cronjob"}), "starting_deadline": frozenset({"cronjob"})}
TYPES: tuple[str, ...] = ("job", "service", "cronjob")
DEFAULT_NAMESPACE = "default"
DEFAULT_REPLICAS = 1
MAX_NAME = 63
MAX_RUNTIME = 32
MAX_REPLICAS = 1000
MAX_ARGS = 1024
MAX_ENV = 1024

_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_-]*")
_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RUNTIME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")

CRON_DESCRIPTORS: frozenset[str] = frozenset(DESCRIPTORS)  # and "@every <duration>"


class ValidationError(ValueError):
    """A spec was refused; `field` names the offending field (400 Bad Request)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = f"{field}: {message}"


MAX_FIELD_PATH = 80  # characters of a field path quoted in an error message


def _surrogate_free(text: str) -> bool:
    """True if `text` encodes as UTF-8 (CBOR text strings must): no lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text(value: Any, root: str = "body") -> None:
    """`ValidationError` naming the first string (value or key) anywhere in `value` that is
    not valid Unicode text: a lone surrogate such as ``"\\ud800"`` is valid JSON, but cannot
    be CBOR-encoded into a log entry (issue 17). Iterative, so any depth is safe. A value's
    field is its path (``source``, ``env.HOME``, ``args[2]``); a bad key names its parent."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if not _surrogate_free(item):
                raise ValidationError(path or root, "must be valid Unicode text (it holds a "
                                      "lone surrogate such as \\ud800)")
        elif isinstance(item, dict):
            for k in item:
                if isinstance(k, str) and not _surrogate_free(k):
                    raise ValidationError(path or root, "a key must be valid Unicode text "
                                          "(it holds a lone surrogate such as \\ud800)")
            stack.extend(((f"{path}.{k}" if path else str(k))[:MAX_FIELD_PATH], v)
                         for k, v in reversed(item.items()))  # reversed: document order
        elif isinstance(item, list):
            stack.extend((f"{path or root}[{i}]"[:MAX_FIELD_PATH], item[i])
                         for i in range(len(item) - 1, -1, -1))


def is_int(value: Any) -> bool:
    """True for a real integer (bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def validate_name(value: Any, field: str = "name") -> str:
    """A name or namespace: ``^[a-zA-Z0-9][a-zA-Z0-9_-]*$``, at most 63 characters."""
    if not isinstance(value, str):
        raise ValidationError(field, "must be a string")
    if not value:
        raise ValidationError(field, "must not be empty")
    if len(value) > MAX_NAME:
        raise ValidationError(field, f"must be at most {MAX_NAME} characters")
    if not _NAME_RE.fullmatch(value):
        raise ValidationError(
            field, "must start with a letter or digit and contain only letters, digits, '_' and '-'"
        )
    return value


def validate_replicas(value: Any) -> int:
    """An integer 0..1000 (bool refused)."""
    if not is_int(value):
        raise ValidationError("replicas", "must be an integer")
    if not 0 <= value <= MAX_REPLICAS:
        raise ValidationError("replicas", f"must be between 0 and {MAX_REPLICAS}")
    return int(value)


def validate_port(value: Any) -> int:
    """0 (no port) or 1024..65535."""
    if not is_int(value):
        raise ValidationError("port", "must be an integer")
    if value != 0 and not 1024 <= value <= 65535:
        raise ValidationError("port", "must be 0 or between 1024 and 65535")
    return int(value)


def validate_type(value: Any) -> str:
    if value not in TYPES or not isinstance(value, str):
        raise ValidationError("type", f"must be one of {', '.join(TYPES)}")
    return value


def validate_source(value: Any) -> str:
    if not isinstance(value, str):
        raise ValidationError("source", "must be a string")
    if not value.strip():
        raise ValidationError("source", "must not be empty")
    return value


def validate_artifact(value: Any) -> str:
    """An artifact digest: 64 lowercase hex digits (SHA-256), a ``sha256:`` prefix removed.
    Whether it is stored, and holds `source`, is checked at apply."""
    if isinstance(value, str) and value.startswith("sha256:"):
        value = value[len("sha256:"):]
    if not isinstance(value, str) or len(value) != 64 or not _DIGEST_RE.fullmatch(value):
        raise ValidationError("artifact", "must be a SHA-256 digest (64 lowercase hex digits), "
                              "as POST /api/v1/artifacts answers")
    return value


MAX_SECRET_REFS = 32  # secret names one deployment may list


def validate_secret_refs(value: Any) -> list[str]:
    """A deployment's `secrets`: a list of distinct secret names, at most MAX_SECRET_REFS.
    Whether each is stored (in the deployment's namespace) is checked at apply."""
    if not isinstance(value, list):
        raise ValidationError("secrets", "must be a list of secret names")
    if len(value) > MAX_SECRET_REFS:
        raise ValidationError("secrets", f"must name at most {MAX_SECRET_REFS} secrets")
    out: list[str] = []
    for v in value:
        validate_name(v, "secrets")
        if v in out:
            raise ValidationError("secrets", f"names {v} twice")
        out.append(v)
    return out


def validate_runtime(value: Any) -> str:
    """A short token such as ``python3`` or ``node``: at most 32 characters."""
    if not isinstance(value, str):
        raise ValidationError("runtime", "must be a string")
    if not value or len(value) > MAX_RUNTIME:
        raise ValidationError("runtime", f"must be 1 to {MAX_RUNTIME} characters")
    if not _RUNTIME_RE.fullmatch(value):
        raise ValidationError(
            "runtime", "must contain only letters, digits, '.', '_', '+' and '-'"
        )
    return value


def validate_args(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise ValidationError("args", "must be a list of strings")
    if len(value) > MAX_ARGS:
        raise ValidationError("args", f"must have at most {MAX_ARGS} items")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ValidationError("args", f"item {i} must be a string")
    return list(value)


def validate_env(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValidationError("env", "must be an object of string values")
    if len(value) > MAX_ENV:
        raise ValidationError("env", f"must have at most {MAX_ENV} variables")
    for k, v in value.items():
        if not isinstance(k, str) or not _ENV_KEY_RE.fullmatch(k):
            raise ValidationError(
                "env", f"key {k!r} must match ^[A-Za-z_][A-Za-z0-9_]*$"
            )
        if not isinstance(v, str):
            raise ValidationError("env", f"value of {k} must be a string")
    return dict(value)


def check_env_text(spec: dict[str, Any]) -> None:
    """A normalized spec's `env` values hold no NUL and no line break (issue 17): a process
    environment cannot carry NUL, and a line break would forge extra variables in any
    env-file (systemd, ``docker --env-file``) a runner writes. Keys are already restricted to
    ``[A-Za-z_][A-Za-z0-9_]*``.

    Proposer side only (`CommandFactory`), not in `normalize_spec`: `apply` and snapshot
    restore must keep accepting what an older version committed, or a replay or a restore
    would diverge from (or refuse) the state other nodes hold."""
    env = spec.get("env")
    if not isinstance(env, dict):
        return
    for k, v in env.items():
        if isinstance(v, str) and ("\x00" in v or "\n" in v or "\r" in v):
            raise ValidationError("env", f"value of {k} must not contain NUL or line breaks "
                                  "(\\0, \\n, \\r)")


def validate_schedule(value: Any) -> str:
    """Five cron fields (minute hour day-of-month month day-of-week), an @descriptor or
    ``@every <duration>`` (`prisn.workloads.cron.parse_schedule`); the normalized text."""
    try:
        return normalize_schedule(value)
    except ScheduleError as exc:
        raise ValidationError("schedule", str(exc)) from None


def validate_retries(value: Any) -> int:
    """How many times a failed or lost execution is run again: an integer 0..10."""
    if not is_int(value) or not 0 <= value <= MAX_RETRIES:
        raise ValidationError("retries", f"must be an integer 0..{MAX_RETRIES}")
    return int(value)


def validate_concurrency(value: Any) -> str:
    """A cron job's overlap rule: allow, forbid or replace."""
    if not isinstance(value, str) or value not in CONCURRENCY:
        raise ValidationError("concurrency", f"must be one of {', '.join(CONCURRENCY)}")
    return value


def validate_timezone(value: Any) -> str:
    """An IANA zone name by its syntax only (``Europe/Paris``): whether this node's tz
    database knows it is checked on the proposer (`check_timezone_known`), never in apply,
    where nodes with different tz databases would otherwise diverge."""
    if (not isinstance(value, str) or not 0 < len(value) <= MAX_TIMEZONE
            or not _TZ_RE.fullmatch(value)):
        raise ValidationError("timezone", "must be an IANA name such as UTC or Europe/Paris")
    return value


def validate_starting_deadline(value: Any) -> int:
    """How late (seconds) a missed cron run may still start: 0..366 days."""
    if not is_int(value) or not 0 <= value <= MAX_STARTING_DEADLINE:
        raise ValidationError("starting_deadline",
                              f"must be an integer 0..{MAX_STARTING_DEADLINE} (seconds)")
    return int(value)


def check_timezone_known(spec: dict[str, Any]) -> None:
    """Proposer side only (`CommandFactory`, like `check_env_text`): a normalized spec's
    `timezone` is one this node's tz database knows (400 otherwise)."""
    tz = spec.get("timezone")
    if isinstance(tz, str):
        try:
            check_timezone(tz)
        except ScheduleError as exc:
            raise ValidationError("timezone", str(exc)) from None


def policy_of(spec: dict[str, Any], current: dict[str, Any] | None) -> dict[str, Any]:
    """The run settings of a deployment built from normalized `spec` over `current` (None:
    a full spec, absent fields default; `None` in `spec` resets one): only those not at
    their default, in `POLICY_FIELDS` order."""
    out: dict[str, Any] = {}
    for f in POLICY_FIELDS:
        if f in spec:
            value = spec[f]
        else:
            value = None if current is None else current.get(f)
        if value is not None and value != POLICY_DEFAULTS[f]:
            out[f] = value
    return out


def check_policy(typ: str, policy: dict[str, Any], given: Any = ()) -> None:
    """Run settings only on the types they mean something for (400 naming the field): a
    stored non-default one, or one the request names (`given`, even at its default)."""
    for f in POLICY_FIELDS:
        if (f in policy or f in given) and typ not in POLICY_TYPES[f]:
            raise ValidationError(f, f"is only allowed for type "
                                  f"{' or '.join(sorted(POLICY_TYPES[f]))}, not {typ}")


_OPTIONAL_NULLABLE = frozenset({"runtime", "schedule", "port", "replicas", "args", "env", "type",
                                "artifact", "secrets", *POLICY_FIELDS})
_VALIDATORS = {
    "name": validate_name,
    "namespace": lambda v: validate_name(v, "namespace"),
    "source": validate_source,
    "runtime": validate_runtime,
    "port": validate_port,
    "replicas": validate_replicas,
    "args": validate_args,
    "env": validate_env,
    "schedule": validate_schedule,
    "type": validate_type,
    "artifact": validate_artifact,
    "secrets": validate_secret_refs,
    "retries": validate_retries,
    "concurrency": validate_concurrency,
    "timezone": validate_timezone,
    "starting_deadline": validate_starting_deadline,
}


def normalize_spec(spec: Any, *, partial: bool) -> dict[str, Any]:
    """Check `spec` and return a normalized copy (keys in a fixed order).

    `partial` False (create, PUT): `name` and `source` are required. `partial` True (PATCH):
    any subset, possibly empty. In both, `null` on an optional field means "its default".
    """
    if not isinstance(spec, dict):
        raise ValidationError("body", "must be a JSON object")
    for key in spec:
        if key not in SPEC_FIELDS:
            raise ValidationError(str(key), "unknown field")
    if not partial:
        for required in ("name", "source"):
            if spec.get(required) is None:
                raise ValidationError(required, "is required")
    out: dict[str, Any] = {}
    for key in sorted(spec):
        value = spec[key]
        if value is None:
            if key not in _OPTIONAL_NULLABLE:
                raise ValidationError(key, "must not be null")
            out[key] = None
            continue
        out[key] = _VALIDATORS[key](value)
    return out


def infer_type(schedule: str | None, port: int) -> str:
    """`cronjob` when scheduled, else `service` when it listens on a port, else `job`."""
    if schedule:
        return "cronjob"
    if port > 0:
        return "service"
    return "job"


def check_consistent(dep: dict[str, Any]) -> None:
    """Cross-field rules on a complete deployment: a schedule if and only if a cronjob."""
    if dep["type"] == "cronjob" and not dep.get("schedule"):
        raise ValidationError("schedule", "is required for type cronjob")
    if dep["type"] != "cronjob" and dep.get("schedule"):
        raise ValidationError("schedule", f"is only allowed for type cronjob, not {dep['type']}")
