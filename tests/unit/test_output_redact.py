"""`prisn.workloads.output`: secret redaction (whole, chunked at any boundary) and the
UTF-8 tails an execution's result carries."""

from __future__ import annotations

import random

from prisn.workloads.output import (
    MIN_SECRET,
    Redactor,
    read_extra,
    redact,
    redacted_tail,
    secret_values,
    tail_text,
)


def test_values_shorter_than_the_minimum_are_left_alone() -> None:
    vals = secret_values(["abc", "hunter22", "hunter2233", "ünï", 7])  # type: ignore[list-item]
    assert vals == (b"hunter2233", b"hunter22", "ünï".encode())  # longest first
    assert all(len(v) >= MIN_SECRET for v in vals)
    assert redact(b"pw=hunter2233 old=hunter22 abc", vals) == b"pw=*** old=*** abc"


def test_chunked_redaction_equals_whole_redaction_at_every_split() -> None:
    rng = random.Random(15)
    secrets = secret_values(["s3cr3t-value", "tokentoken"])
    for _ in range(300):
        parts = [rng.choice([b"s3cr3t-value", b"tokentoken", b"s3cr3t", b"x", b"\n",
                             "é".encode()]) for _ in range(rng.randint(0, 12))]
        data = b"".join(parts)
        cuts = sorted(rng.sample(range(len(data) + 1), k=min(len(data) + 1, 4)))
        r = Redactor(secrets)
        out, prev = b"", 0
        for c in [*cuts, len(data)]:
            out += r.feed(data[prev:c])
            prev = c
        out += r.flush()
        assert out == redact(data, secrets)
        assert b"s3cr3t-value" not in out and b"tokentoken" not in out


def test_no_secrets_passes_through() -> None:
    r = Redactor(())
    assert r.feed(b"abc") == b"abc" and r.flush() == b""


def test_tail_text_cuts_at_a_character_boundary_and_stays_within_the_limit() -> None:
    assert tail_text(b"hello", 10) == ("hello", False)
    text, cut = tail_text("aé".encode() * 10, 5)  # the last 5 bytes: a cut "é" is dropped
    assert cut and text == "éaé"[-len(text):] and len(text.encode()) <= 5
    assert not text.startswith("\ufffd")
    text, cut = tail_text(b"\xff" * 100, 30)  # each invalid byte: 3 bytes of U+FFFD
    assert cut and len(text.encode()) <= 30 and set(text) == {"\ufffd"}
    assert tail_text(b"", 10) == ("", False)
    assert tail_text(b"abc", 10, cut=True) == ("abc", True)


def test_a_tail_whose_read_starts_inside_a_value_shows_none_of_it() -> None:
    secrets = secret_values(["s3cr3t-value", "pin"])  # "pin": too short, not redacted
    limit = 30
    extra = read_extra(secrets)
    assert extra == len("s3cr3t-value") - 1
    for before in range(0, 40):  # the read window starts before, inside, after the value
        stream = b"q" * before + b"s3cr3t-value" + b"z" * 25 + b"pin"
        window = stream[-(limit + extra):]
        text, truncated = redacted_tail(window, limit, secrets, cut=len(window) < len(stream))
        assert set(text) <= set("qz*pin"), (before, text)
        assert text.endswith("zpin") and len(text.encode()) <= limit
    assert redacted_tail(b"a s3cr3t-value", 60, secrets, cut=False) == ("a ***", False)
