"""`prisn secret` argument handling without a server: --from-literal parsing (stdin with
KEY=-), and usage errors that never echo a value."""

from __future__ import annotations

from click.testing import CliRunner

from prisn.cli import cli


def test_a_malformed_literal_is_a_usage_error_without_the_value() -> None:
    r = CliRunner().invoke(cli, ["secret", "create", "db", "--from-literal",
                                 "=topsecretvalue", "--server", "127.0.0.1:1"])
    assert r.exit_code == 2 and "KEY=VALUE" in r.output
    assert "topsecretvalue" not in r.output


def test_create_needs_a_literal() -> None:
    r = CliRunner().invoke(cli, ["secret", "create", "db", "--server", "127.0.0.1:1"])
    assert r.exit_code == 2 and "--from-literal" in r.output


def test_stdin_value_is_read_once() -> None:
    import io
    import sys

    from prisn.cli_secrets import _literals

    old = sys.stdin
    sys.stdin = io.StringIO("line1\nline2\n")
    try:
        assert _literals(["A=1", "PEM=-"]) == {"A": "1", "PEM": "line1\nline2\n"}
    finally:
        sys.stdin = old
