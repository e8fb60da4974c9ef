"""Ad-hoc executions (``prisn run SCRIPT``, ``POST /api/v1/executions`` with ``source``): the
pure helpers both the API and the CLI use. No I/O, no clock; any thread.

An inline script becomes a one-file artifact in the canonical form (`artifacts.pack`:
mtime 0, mode 0644, so the same text under the same entry name always has the same digest
and a re-run dedups). The runtime is explicit, or told by the entry's extension
(`EXTENSIONS`, the runner's own table: a test keeps them equal); the execution's name is
the entry's stem unless one is given.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from prisn.workloads.artifacts import ArtifactFile, digest_of, pack

# the runner's extension table (actors.runner.EXTENSIONS; tests/unit/test_adhoc.py checks)
EXTENSIONS: dict[str, str] = {".py": "python3", ".js": "node", ".mjs": "node", ".cjs": "node",
                              ".sh": "bash"}
_DEFAULT_EXT: dict[str, str] = {"python": ".py", "python3": ".py", "node": ".js",
                                "nodejs": ".js", "bash": ".sh", "sh": ".sh"}
_NOT_NAME = re.compile(r"[^a-zA-Z0-9_-]+")
MAX_NAME = 63
FALLBACK_NAME = "run"


def infer_runtime(entry: str) -> str | None:
    """The runtime `entry`'s extension names (``x.py`` -> ``python3``), else None."""
    return EXTENSIONS.get(PurePosixPath(entry).suffix.lower())


def default_entry(runtime: str) -> str:
    """The entry file name of an inline script run with `runtime`: ``main`` plus the
    runtime's usual extension (``main.py`` for python3), ``main`` for one without."""
    return "main" + _DEFAULT_EXT.get(runtime, "")


def default_name(entry: str) -> str:
    """The execution name for `entry`: its stem made a valid name (letters, digits, ``_``
    and ``-``; starting with a letter or digit; at most 63 characters), ``run`` if
    nothing is left."""
    stem = _NOT_NAME.sub("-", PurePosixPath(entry).stem).lstrip("-_")[:MAX_NAME]
    return stem or FALLBACK_NAME


def inline_artifact(source: str, entry: str) -> tuple[bytes, str]:
    """(archive, digest) of a one-file artifact holding `source` (UTF-8) as `entry`."""
    data = pack([ArtifactFile(entry, False, source.encode("utf-8"))])
    return data, digest_of(data)
