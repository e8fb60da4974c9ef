"""prisn.logs: the JSON formatter keeps every record one line with the required keys."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from prisn.logs import MAX_FIELD_CHARS, JsonFormatter, rfc3339, setup_logging


def record(msg: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord("prisn.raft", logging.WARNING, __file__, 1, msg, args, exc_info)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_rfc3339_utc_milliseconds() -> None:
    assert rfc3339(0.0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(1767323045.6789) == "2026-01-02T03:04:05.678Z"


def test_required_keys_and_extra_fields() -> None:
    line = JsonFormatter("n1").format(record("leader is %s (term %d)", "n2", 3,
                                             event="leader_elected", term=3, leader="n2"))
    rec = json.loads(line)
    assert rec["level"] == "warning" and rec["logger"] == "prisn.raft" and rec["node"] == "n1"
    assert rec["message"] == "leader is n2 (term 3)"
    assert rec["event"] == "leader_elected" and rec["term"] == 3 and rec["leader"] == "n2"
    assert set(rec) == {"time", "level", "logger", "node", "message", "event", "term",
                        "leader"}


def test_multiline_message_and_exception_stay_one_line() -> None:
    line = JsonFormatter("n1").format(record("a\nb", exc=True))
    assert "\n" not in line
    rec = json.loads(line)
    assert rec["message"] == "a\nb"
    assert "Traceback" in rec["exception"] and "boom" in rec["exception"]


def test_unserialisable_and_huge_fields_are_bounded() -> None:
    line = JsonFormatter("n1").format(record("x", obj=object(), big="y" * (10 * MAX_FIELD_CHARS),
                                             members={"a", "b"}))
    rec = json.loads(line)
    assert rec["obj"].startswith("<object object")
    assert len(rec["big"]) == MAX_FIELD_CHARS
    assert sorted(rec["members"]) == ["a", "b"]
    # an extra= field cannot overwrite a required key (logging refuses "message")
    with pytest.raises(KeyError):
        logging.getLogger("t").makeRecord("t", logging.INFO, "f", 1, "m", (), None,
                                          extra={"message": "x"})


@pytest.fixture
def restore_logging():
    """Undo what setup_logging changes process-wide (handler, level, hooks, warnings)."""
    import threading

    root = logging.getLogger()
    saved = (sys.excepthook, threading.excepthook, root.level)
    yield
    for h in [h for h in root.handlers if h.get_name() == "prisn"]:
        root.removeHandler(h)
    sys.excepthook, threading.excepthook, level = saved
    root.setLevel(level)
    logging.captureWarnings(False)


def test_setup_logging_replaces_only_its_own_handler(restore_logging) -> None:
    root = logging.getLogger()
    other = logging.NullHandler()
    root.addHandler(other)
    try:
        setup_logging("info", "json", "n1")
        setup_logging("debug", "text", "n1")
        ours = [h for h in root.handlers if h.get_name() == "prisn"]
        assert len(ours) == 1 and not isinstance(ours[0].formatter, JsonFormatter)
        assert other in root.handlers and root.level == logging.DEBUG
        with pytest.raises(ValueError):
            setup_logging("info", "xml", "n1")
    finally:
        root.removeHandler(other)


def test_json_mode_turns_thread_crashes_and_warnings_into_records(capsys,
                                                                   restore_logging) -> None:
    import threading
    import warnings

    with warnings.catch_warnings():  # outside pytest's own warning recorder
        warnings.simplefilter("always")
        setup_logging("info", "json", "n1")

        def boom() -> None:
            raise RuntimeError("thread died")

        t = threading.Thread(target=boom, name="victim")
        t.start()
        t.join()
        warnings.warn("old api", DeprecationWarning, stacklevel=1)
        logging.captureWarnings(False)
    err = capsys.readouterr().err
    recs = [json.loads(line) for line in err.splitlines()]  # every line is JSON
    crash = [r for r in recs if r["logger"] == "prisn.crash"]
    assert crash and "victim" in crash[0]["message"] and "thread died" in crash[0]["exception"]
    assert any(r["logger"] == "py.warnings" and "old api" in r["message"] for r in recs)
