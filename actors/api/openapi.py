"""The API reference served at ``GET /api/v1/openapi.json``, and the tool that builds it.

`docs/openapi.yaml` is the source (edited by hand, reviewed as YAML). The server does not
read it: PyYAML is not a runtime dependency and docs/ is not installed. It serves
``actors/api/openapi.json``, package data generated from the YAML by
``python3 -m actors.api.openapi`` (needs PyYAML, in the ``test`` extra);
tests/http/test_openapi.py fails when the two differ, when the document is not valid
OpenAPI 3.1, or when it and the registered routes disagree.

Threads: `document_bytes` is called by `make_app` (the API actor's IOLoop thread at start);
its result is cached and immutable, so every later call only returns the same bytes.
"""

from __future__ import annotations

import functools
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

JSON_NAME = "openapi.json"
ROUTE = "/api/v1/openapi.json"
# Where the YAML lives in a checkout (not in an installed wheel).
YAML_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
JSON_PATH = Path(__file__).resolve().parent / JSON_NAME


@functools.cache
def document_bytes() -> bytes:
    """The packaged document as compact UTF-8 JSON (read and checked once per process)."""
    raw = resources.files("actors.api").joinpath(JSON_NAME).read_bytes()
    doc = json.loads(raw)
    if not isinstance(doc, dict) or "openapi" not in doc:
        raise ValueError(f"actors/api/{JSON_NAME} is not an OpenAPI document")
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def render(doc: dict[str, Any]) -> str:
    """The text of actors/api/openapi.json for `doc` (stable: reviewable diffs)."""
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def load_yaml(path: Path = YAML_PATH) -> dict[str, Any]:
    import yaml  # the test extra: only this tool and the tests need it

    with path.open(encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    if not isinstance(doc, dict):
        raise ValueError(f"{path} is not a YAML mapping")
    return doc


def main() -> int:
    """Regenerate actors/api/openapi.json from docs/openapi.yaml."""
    JSON_PATH.write_text(render(load_yaml()), encoding="utf-8")
    print(f"wrote {JSON_PATH} from {YAML_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
