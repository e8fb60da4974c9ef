"""docs/openapi.yaml for the tests: load it, find an operation, check an answer against it.

`check_response` is what the tests use on real answers: the status must be one the operation
documents (or one the document's conventions give every route: 404 for an unknown path, 405
for a method the route lacks), its JSON body must validate against the documented schema
(JSON Schema 2020-12 via `jsonschema`, with `$ref`s into the document resolved by a
`referencing` registry), a body must be there exactly when the document gives content, and
every header the response documents as required must be there.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from actors.api.openapi import YAML_PATH

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
DOC_URI = "urn:prisn:openapi"
# Answers the document's conventions (info.description) give every route, not per operation.
# 404/405 for any path or method; 403 (foreign Origin), 415 (body not JSON) and 421
# (foreign Host, auth off) from the request guard, on every route (the document's conventions)
GLOBAL_STATUSES = {403, 404, 405, 415, 421}


@functools.cache
def document() -> dict[str, Any]:
    with YAML_PATH.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


@functools.cache
def _registry() -> Registry:
    return Registry().with_resource(
        DOC_URI, Resource.from_contents(document(), default_specification=DRAFT202012))


def _pointer_escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def resolve(node: dict[str, Any], pointer: str) -> tuple[dict[str, Any], str]:
    """Follow a local ``$ref`` (if any): (the object, its JSON pointer in the document)."""
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        pointer = ref[1:]
        node = document()
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node, pointer


def template_regex(template: str) -> re.Pattern[str]:
    """``/api/v1/deployments/{name}`` -> a regex matching a concrete path."""
    parts = re.split(r"(\{[^}/]+\})", template)
    body = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(f"^{body}$")


def find_operation(method: str, path: str) -> tuple[str, dict[str, Any] | None]:
    """(the documented template that matches `path`, its operation for `method` or None).
    AssertionError if no documented path matches."""
    path = path.split("?", 1)[0]
    for template, item in document()["paths"].items():
        if template_regex(template).match(path):
            return template, item.get(method.lower())
    raise AssertionError(f"{method} {path}: no path of docs/openapi.yaml matches it")


def check_response(method: str, path: str, status: int, headers: Mapping[str, str],
                   body: bytes) -> None:
    """AssertionError unless this answer is one docs/openapi.yaml describes (module doc)."""
    lower = {k.lower(): v for k, v in headers.items()}
    content_type = lower.get("content-type")
    template, op = find_operation(method, path) if _documented(path) else (None, None)
    if op is not None and str(status) in op["responses"]:
        pointer = (f"/paths/{_pointer_escape(template)}/{method.lower()}/responses/"  # type: ignore[arg-type]
                   f"{status}")
        response, pointer = resolve(op["responses"][str(status)], pointer)
        for name, header in response.get("headers", {}).items():
            header, _ = resolve(header, "")
            assert not header.get("required") or name.lower() in lower, (
                f"{method} {path} {status}: the required header {name} is missing "
                f"({sorted(lower)})")
        content = response.get("content")
        if not content:
            assert body == b"", f"{method} {path} {status}: documented without a body: {body!r}"
            return
        media = (content_type or "").split(";", 1)[0].strip()
        assert media in content, (f"{method} {path} {status}: Content-Type {content_type!r} "
                                  f"is not documented ({sorted(content)})")
        if media != "application/json":
            return
        schema_pointer = f"{pointer}/content/{_pointer_escape(media)}/schema"
    else:
        listed = sorted(op["responses"]) if op is not None else []
        assert status in GLOBAL_STATUSES, (
            f"{method} {template or path} answered {status}, which docs/openapi.yaml does not "
            f"list for it (it lists {listed}): {body[:300]!r}")
        schema_pointer = "/components/schemas/Error"
    validate(json.loads(body), schema_pointer, f"{method} {path} {status}")


def _documented(path: str) -> bool:
    try:
        find_operation("GET", path)
    except AssertionError:
        return False
    return True


def validate(instance: Any, schema_pointer: str, what: str) -> None:
    """AssertionError listing every way `instance` fails the schema at `schema_pointer`."""
    validator = jsonschema.Draft202012Validator(
        {"$ref": f"{DOC_URI}#{schema_pointer}"}, registry=_registry(),
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, (
        f"{what}: the body does not match {schema_pointer} of docs/openapi.yaml:\n" + "\n".join(
            f"  at {'/'.join(map(str, e.path)) or '(root)'}: {e.message}" for e in errors[:10]))
