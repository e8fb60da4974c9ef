"""Small helpers shared by the bench_* scripts: markdown tables, number formats, JSON dumps."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---:" if i else "---" for i in range(len(headers))) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}"


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"levels must be comma-separated ints: {text!r}") from e
    if not levels or any(c < 1 for c in levels):
        raise argparse.ArgumentTypeError("levels must be positive")
    return levels


def machine_line() -> str:
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
        mem = f", {kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} CPUs{mem}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def write_json(path: str | None, doc: object) -> None:
    if path:
        Path(path).write_text(json.dumps(doc, indent=2) + "\n")


DEFAULT_PRISN_ARGS = "--log-level warning"


def add_prisn_args_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--prisn-args",
        default=DEFAULT_PRISN_ARGS,
        help=f"extra `prisn server` flags, shell-split (default: {DEFAULT_PRISN_ARGS!r})",
    )


def prisn_extra_args(args: argparse.Namespace) -> list[str]:
    return shlex.split(str(getattr(args, "prisn_args", "") or ""))


def run_main(main: Callable[[], int]) -> int:
    """Run a bench's main; a server that fails to start or heal ends it with a one-line error
    (the server's log tail included) and exit code 1 instead of a traceback."""
    try:
        return main()
    except (RuntimeError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
