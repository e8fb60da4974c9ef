"""Validation rules, table-driven: each bad spec is refused naming its field."""

from __future__ import annotations

from typing import Any

import pytest

from prisn.fsm.commands import CommandFactory
from prisn.fsm.validation import (
    ValidationError,
    check_consistent,
    infer_type,
    normalize_spec,
    validate_schedule,
)

BASE = {"name": "app", "source": "print('hi')"}

VALID: list[dict[str, Any]] = [
    {},
    {"name": "a"},
    {"name": "A1_b-c"},
    {"name": "x" * 63},
    {"name": "9lives"},
    {"namespace": "prod-1"},
    {"port": 0},
    {"port": 1024},
    {"port": 65535},
    {"replicas": 0},
    {"replicas": 1000},
    {"env": {}},
    {"env": {"_X": "1", "PATH2": "", "a_b": "c"}},
    {"args": []},
    {"args": ["--flag", "", "x y"]},
    {"runtime": "python3.11"},
    {"runtime": "node"},
    {"type": "job"},
    {"type": "service"},
    {"type": "cronjob"},
    {"schedule": None, "runtime": None, "port": None, "replicas": None, "args": None,
     "env": None, "type": None},
]


@pytest.mark.parametrize("extra", VALID)
def test_valid_specs(extra: dict[str, Any]) -> None:
    spec = normalize_spec({**BASE, **extra}, partial=False)
    assert spec == {**BASE, **extra}


INVALID: list[tuple[dict[str, Any], str]] = [
    ({"name": ""}, "name"),
    ({"name": "x" * 64}, "name"),
    ({"name": "-lead"}, "name"),
    ({"name": "_lead"}, "name"),
    ({"name": "has space"}, "name"),
    ({"name": "dot.ted"}, "name"),
    ({"name": "slash/y"}, "name"),
    ({"name": "ünï"}, "name"),
    ({"name": 5}, "name"),
    ({"name": None}, "name"),
    ({"namespace": "bad ns"}, "namespace"),
    ({"namespace": ""}, "namespace"),
    ({"namespace": "n" * 64}, "namespace"),
    ({"namespace": None}, "namespace"),
    ({"source": ""}, "source"),
    ({"source": "   "}, "source"),
    ({"source": 1}, "source"),
    ({"source": None}, "source"),
    ({"port": 1}, "port"),
    ({"port": 80}, "port"),
    ({"port": 1023}, "port"),
    ({"port": 65536}, "port"),
    ({"port": -1}, "port"),
    ({"port": "8080"}, "port"),
    ({"port": 8080.0}, "port"),
    ({"port": True}, "port"),
    ({"replicas": -1}, "replicas"),
    ({"replicas": 1001}, "replicas"),
    ({"replicas": True}, "replicas"),
    ({"replicas": False}, "replicas"),
    ({"replicas": 1.0}, "replicas"),
    ({"replicas": "3"}, "replicas"),
    ({"env": []}, "env"),
    ({"env": "A=1"}, "env"),
    ({"env": {"1A": "x"}}, "env"),
    ({"env": {"A-B": "x"}}, "env"),
    ({"env": {"": "x"}}, "env"),
    ({"env": {"A": 1}}, "env"),
    ({"env": {"A": None}}, "env"),
    ({"args": "a b"}, "args"),
    ({"args": [1]}, "args"),
    ({"args": ["a", None]}, "args"),
    ({"args": {"a": "b"}}, "args"),
    ({"runtime": ""}, "runtime"),
    ({"runtime": "r" * 33}, "runtime"),
    ({"runtime": "py thon"}, "runtime"),
    ({"runtime": 3}, "runtime"),
    ({"type": "daemon"}, "type"),
    ({"type": "Job"}, "type"),
    ({"type": 1}, "type"),
    ({"type": ["job"]}, "type"),
    ({"schedule": 5}, "schedule"),
    ({"schedule": ""}, "schedule"),
    ({"image": "x"}, "image"),
    ({"id": "abc"}, "id"),
    ({"generation": 3}, "generation"),
]


@pytest.mark.parametrize(("extra", "field"), INVALID)
def test_invalid_specs_name_their_field(extra: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        normalize_spec({**BASE, **extra}, partial=False)
    assert info.value.field == field
    assert info.value.message.startswith(f"{field}: ")


@pytest.mark.parametrize("missing", ["name", "source"])
def test_required_on_full_spec_not_on_patch(missing: str) -> None:
    spec = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(ValidationError) as info:
        normalize_spec(spec, partial=False)
    assert info.value.field == missing
    assert normalize_spec(spec, partial=True) == spec


@pytest.mark.parametrize("body", [None, [], "x", 3, [BASE]])
def test_body_must_be_an_object(body: Any) -> None:
    with pytest.raises(ValidationError) as info:
        normalize_spec(body, partial=True)
    assert info.value.field == "body"


def test_patch_may_be_empty_and_null_only_for_optional() -> None:
    assert normalize_spec({}, partial=True) == {}
    assert normalize_spec({"schedule": None}, partial=True) == {"schedule": None}
    with pytest.raises(ValidationError):
        normalize_spec({"source": None}, partial=True)


GOOD_SCHEDULES = [
    "* * * * *",
    "0 0 * * *",
    "*/5 * * * *",
    "0-59/15 0-23 1-31 1-12 0-7",
    "5,10,15 1 * * 1-5",
    "0 9 * jan-mar mon-fri",
    "0 9 * JAN,Dec Sun",
    "30 2 1 */2 *",
    "5/10 * * * *",
    "  0   12  *  *  sat  ",
    "@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually", "@midnight", "@DAILY",
    "@every 5m", "@every 1s", "@EVERY 1H30M", "0 0 30 2 *",
]

BAD_SCHEDULES = [
    "* * * *",
    "* * * * * *",
    "60 * * * *",
    "* 24 * * *",
    "* * 0 * *",
    "* * 32 * *",
    "* * * 0 *",
    "* * * 13 *",
    "* * * * 8",
    "*/0 * * * *",
    "*/60 * * * *",
    "*/x * * * *",
    "5-1 * * * *",
    "1,,2 * * * *",
    "1, * * * *",
    "a * * * *",
    "* * * foo *",
    "* * * * funday",
    "* * * * jan",
    "* * * mon *",
    "-1 * * * *",
    "1- * * * *",
    "@every",
    "@every 0s",
    "@every 5",
    "@every 1.5s",
    "@every 5m 1s",
    "@every 30m1h",
    "@reboot",
    "@",
    "٣ * * * *",
    "? * * * *",
]


@pytest.mark.parametrize("expr", GOOD_SCHEDULES)
def test_good_schedules(expr: str) -> None:
    out = validate_schedule(expr)
    assert out == (expr.strip().lower() if expr.startswith("@") else " ".join(expr.split()))


@pytest.mark.parametrize("expr", BAD_SCHEDULES)
def test_bad_schedules(expr: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_schedule(expr)
    assert info.value.field == "schedule"


def test_infer_type_and_consistency() -> None:
    assert infer_type(None, 0) == "job"
    assert infer_type(None, 8080) == "service"
    assert infer_type("@daily", 8080) == "cronjob"
    check_consistent({"type": "cronjob", "schedule": "@daily"})
    for dep in ({"type": "cronjob", "schedule": None}, {"type": "job", "schedule": "@daily"},
                {"type": "service", "schedule": "* * * * *"}):
        with pytest.raises(ValidationError) as info:
            check_consistent(dep)
        assert info.value.field == "schedule"


# ---------------------------------------------------------------- command builders
CF = CommandFactory(clock=lambda: 0.0, new_id=lambda: "fixed")


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: CF.create({"name": "a", "source": "x"}, namespace="bad ns"), "namespace"),
        (lambda: CF.create({"name": "a", "source": "x", "namespace": "p"}, namespace="q"),
         "namespace"),
        (lambda: CF.replace("a", {"name": "b", "source": "x"}), "name"),
        (lambda: CF.patch("a", {"name": "b"}), "name"),
        (lambda: CF.patch("bad name", {"replicas": 1}), "name"),
        (lambda: CF.scale("a", {}), "replicas"),
        (lambda: CF.scale("a", {"replicas": 1, "x": 1}), "x"),
        (lambda: CF.scale("a", {"replicas": -1}), "replicas"),
        (lambda: CF.scale("a", [1]), "body"),
        (lambda: CF.delete("a", key=""), "Idempotency-Key"),
        (lambda: CF.delete("a", key="k" * 256), "Idempotency-Key"),
        (lambda: CF.delete("a", key="tab\there"), "Idempotency-Key"),
    ],
)
def test_command_builders_refuse(build: Any, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        build()
    assert info.value.field == field


def test_command_format() -> None:
    cmd = CF.create({"name": "a", "source": "x", "namespace": "p", "port": 2000}, key="k1")
    assert cmd == {"v": 1, "op": "create", "key": "k1", "ts": "1970-01-01T00:00:00.000Z",
                   "ns": "p", "name": "a", "id": "fixed", "spec": {"source": "x", "port": 2000}}
    assert CF.scale("a", {"replicas": 3}, namespace="p")["replicas"] == 3
    assert CF.delete("a")["key"] == "fixed"  # generated when absent
    assert CF.replace("a", {"source": "y"})["spec"] == {"source": "y"}
    assert CF.patch("a", {"name": "a", "namespace": "default", "env": {"A": "1"}})["spec"] == {
        "env": {"A": "1"}}


def test_check_text_names_the_first_bad_string_at_any_depth() -> None:
    """Issue 17: a lone surrogate cannot be CBOR-encoded; the field is named, keys too."""
    from prisn.fsm.validation import check_text

    check_text({"a": ["ok", {"b": "\U0001f600"}], "n": 1, "x": None})
    cases = [("\ud800", "body"), ({"a": "\udfff"}, "a"), ({"a": ["x", "\ud800"]}, "a[1]"),
             ({"a": {"\ud800": 1}}, "a"), ([{"k": "\udc00"}], "body[0].k"),
             ({"a": "\ud800", "b": "\ud800"}, "a")]
    for value, field in cases:
        with pytest.raises(ValidationError) as exc:
            check_text(value)
        assert exc.value.field == field, (value, exc.value.field)
    deep: object = "\ud800"
    for _ in range(100_000):  # no recursion limit
        deep = [deep]
    with pytest.raises(ValidationError):
        check_text(deep)


def test_check_env_text_refuses_nul_and_line_breaks() -> None:
    from prisn.fsm.validation import check_env_text

    check_env_text({"env": {"A": "tab\tspace ok", "B": ""}})
    check_env_text({"source": "x"})
    for bad in ("\x00", "a\nb", "\r"):
        with pytest.raises(ValidationError) as exc:
            check_env_text({"env": {"OK": "1", "BAD": bad}})
        assert exc.value.field == "env" and "BAD" in exc.value.message
