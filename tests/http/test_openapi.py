"""docs/openapi.yaml against the server: a valid OpenAPI 3.1 document, describing exactly the
routes and methods the server registers, with each operation's permission and parameters,
served at GET /api/v1/openapi.json, and describing the answers the handlers really give.

When you add, remove or change a route, `test_every_registered_route_is_documented_and_back`
names what is missing on which side: edit docs/openapi.yaml, then run
``python3 -m actors.api.openapi`` to regenerate the JSON the server serves.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from tornado.httpserver import HTTPServer
from tornado.testing import AsyncHTTPTestCase

from actors.api import fastpath, fastread, openapi
from actors.api.app import ROUTES, BaseHandler, make_app, make_server
from actors.api.auth import AUTHENTICATED, Authenticator
from actors.api.node import FakeNodeClient
from actors.api.tokens import TOKEN_ROUTES
from prisn import __version__
from tests.http.cases import three_nodes
from tests.openapi_doc import HTTP_METHODS, check_response, document, find_operation

REGEN = "python3 -m actors.api.openapi"
ROOT = Path(__file__).resolve().parents[2]


def registered_routes() -> list[tuple[str, type[BaseHandler]]]:
    """(regex, handler) of every route `make_app` registers, in matching order."""
    app = make_app(FakeNodeClient())
    return [(rule.matcher.regex.pattern, rule.target)  # type: ignore[attr-defined]
            for rule in app.wildcard_router.rules]


def route_template(pattern: str) -> str | None:
    """A Tornado route regex as a path with ``{}`` for each capture group, or None when the
    regex is more than a plain path with groups and an optional trailing slash."""
    path = pattern.removesuffix("$").removesuffix("/?")
    path = re.sub(r"\((?!\?)[^()]*\)", "{}", path)
    rest = re.sub(r"\\[./-]", "", path.replace("{}", ""))  # escaped literals are fine
    if re.search(r"[\\^$.*+?()\[\]|]", rest):
        return None
    return re.sub(r"\\([./-])", r"\1", path)


def doc_template(path: str) -> str:
    return re.sub(r"\{[^}/]+\}", "{}", path)


def documented_operations() -> dict[tuple[str, str], dict[str, Any]]:
    """(normalized path, METHOD) -> operation, for every operation in the document."""
    return {(doc_template(path), m.upper()): op
            for path, item in document()["paths"].items()
            for m, op in item.items() if m in HTTP_METHODS}


# ---------------------------------------------------------------------- the document itself
def test_document_is_valid_openapi_3_1() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1.")
    validate(doc, cls=OpenAPIV31SpecValidator)  # raises with the first problem found


def test_document_version_is_the_package_version() -> None:
    assert document()["info"]["version"] == __version__, (
        "docs/openapi.yaml info.version must be prisn's version (prisn/__init__.py); "
        f"then run {REGEN}")


def test_served_json_is_generated_from_the_yaml() -> None:
    packaged = json.loads(openapi.JSON_PATH.read_text(encoding="utf-8"))
    assert packaged == document(), (
        f"actors/api/openapi.json differs from docs/openapi.yaml: run {REGEN} and commit both")
    assert openapi.JSON_PATH.read_text(encoding="utf-8") == openapi.render(document()), REGEN


def test_served_json_is_package_data() -> None:
    """An installed wheel serves the document too: it must ship actors/api/openapi.json."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        setuptools = tomllib.load(f)["tool"]["setuptools"]
    assert openapi.JSON_NAME in setuptools["package-data"]["actors.api"]


def test_every_operation_has_an_id_and_documents_its_errors_in_the_error_shape() -> None:
    ids = [op["operationId"] for op in documented_operations().values()]
    assert len(ids) == len(set(ids)), ids
    doc = document()
    for name, response in doc["components"]["responses"].items():
        schema = response["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Error"}, name
    for (path, method), op in documented_operations().items():
        for status, response in op["responses"].items():
            if int(status) >= 400 and "$ref" not in response:
                schema = response["content"]["application/json"]["schema"]
                assert {"$ref": "#/components/schemas/Error"} in schema.get("allOf", []), (
                    f"{method} {path} {status} must be (or extend) the Error shape")


# ---------------------------------------------------------------------- document == routes
def test_every_registered_route_is_documented_and_back() -> None:
    """The route table (ROUTES + TOKEN_ROUTES as `make_app` registers them, each handler's
    `methods()`) and the document's paths and operations must be the same set."""
    routes = registered_routes()
    # make_app may register more lists than these (each new route module adds its own)
    assert {p for p, _ in routes} >= {r + "$" for r, _ in ROUTES + TOKEN_ROUTES}
    problems: list[str] = []
    registered: dict[tuple[str, str], str] = {}
    for pattern, handler in routes:
        template = route_template(pattern)
        if template is None:
            problems.append(f"route r{pattern!r} ({handler.__name__}) is not a plain path with "
                            "capture groups: the check cannot compare it")
            continue
        for method in handler.methods():
            registered[(template, method)] = f"{handler.__module__}.{handler.__name__}"
    documented = documented_operations()
    for key in sorted(registered.keys() - documented.keys()):
        problems.append(f"registered but not in docs/openapi.yaml: {key[1]} {key[0]} "
                        f"({registered[key]}): document it under paths, then run {REGEN}")
    for key in sorted(documented.keys() - registered.keys()):
        problems.append(f"in docs/openapi.yaml but not registered: {key[1]} {key[0]} "
                        f"(operationId {documented[key].get('operationId')}): register it or "
                        f"remove it from the document, then run {REGEN}")
    assert not problems, "\n".join(["docs/openapi.yaml and the server's routes disagree:",
                                    *problems])


def test_route_labels_are_the_documented_paths() -> None:
    """Each handler's ROUTE (the metric and rate-limit label) is its documented path, so
    dashboards, logs and the reference use one name per route; the fast paths likewise."""
    paths = set(document()["paths"])
    by_shape = {doc_template(p): p for p in paths}
    problems = []
    for pattern, handler in registered_routes():
        if doc_template(handler.ROUTE) != route_template(pattern):
            problems.append(f"{handler.__name__}.ROUTE = {handler.ROUTE!r} is not the path "
                            f"of its route r{pattern!r}")
        elif handler.ROUTE not in paths and route_template(pattern) in by_shape:
            problems.append(f"{handler.__name__}.ROUTE = {handler.ROUTE!r}, but docs/openapi.yaml "
                            f"names the path {by_shape[route_template(pattern)]!r}: use one "
                            "name for its parameters")
        # not documented at all: test_every_registered_route_is_documented_and_back says so
    assert not problems, "\n".join(problems)
    assert fastpath.ROUTE in paths and fastread.ROUTE in paths


def test_documented_permissions_are_the_handlers() -> None:
    """x-prisn-permission of each operation is what the handler's AUTH requires, and the
    security requirement agrees (none for open, optional for metrics, bearer otherwise)."""
    handlers = {(route_template(p), m): h for p, h in registered_routes() for m in h.methods()}
    problems = []
    for (path, method), op in documented_operations().items():
        handler = handlers.get((path, method))
        if handler is None:
            continue  # the route test reports it
        need = handler.AUTH.get(method, AUTHENTICATED)
        if op.get("x-prisn-permission") != need:
            problems.append(f"{method} {path}: x-prisn-permission is "
                            f"{op.get('x-prisn-permission')!r}, {handler.__name__}.AUTH says "
                            f"{need!r}")
        security = op.get("security", document()["security"])
        want = {"open": [], "metrics": [{}, {"bearer": []}]}.get(need, [{"bearer": []}])
        if security != want:
            problems.append(f"{method} {path}: security {security} for permission {need!r}, "
                            f"want {want}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------- in-process answers
def _operation_params(op: dict[str, Any], path_item: dict[str, Any]) -> dict[str, str]:
    """name -> location of every parameter of an operation (path-item ones included)."""
    out = {}
    for p in [*path_item.get("parameters", []), *op.get("parameters", [])]:
        if "$ref" in p:
            p = document()["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]
        out[p["name"]] = p["in"]
    return out


def _concrete(path: str) -> str:
    return (path.replace("/tokens/{id}", "/tokens/0000000000000000")
            .replace("{name}", "probe").replace("{id}", "node9"))


# A valid body for each operation that takes one, so that a probe reaches the parameter.
BODIES: dict[str, Any] = {
    "createDeployment": {"name": "probe", "source": "x"},
    "replaceDeployment": {"source": "x"},
    "patchDeployment": {"replicas": 2},
    "scaleDeployment": {"replicas": 2},
    "createToken": {"name": "probe", "role": "admin"},
    "createSecret": {"name": "probe", "data": {"K": "v"}},
    "rotateSecret": {"data": {"K": "v"}},
    "createExecution": {"name": "probe"},
}
# parameter -> (where, a bad value, the start of the 400 message a handler that reads it gives)
PROBES: dict[str, tuple[str, str, str]] = {
    "namespace": ("query", "-bad", "namespace:"),
    "limit": ("query", "-1", "limit:"),
    "offset": ("query", "-1", "offset:"),
    "type": ("query", "daemon", "type:"),
    "X-Prisn-Consistency": ("header", "bogus", "X-Prisn-Consistency must be"),
    "Idempotency-Key": ("header", "k" * 300, "Idempotency-Key:"),
}


class OpenApiCase(AsyncHTTPTestCase):
    api_key = ""

    def get_app(self) -> Any:
        self.node = FakeNodeClient("node1", nodes=three_nodes())
        self.app = make_app(self.node, auth=Authenticator(self.api_key))
        return self.app

    def get_http_server(self) -> HTTPServer:
        return make_server(self.app)

    def call(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None, *, check: bool = True) -> Any:
        data = None if body is None else json.dumps(body).encode()
        if data is None and method in ("POST", "PUT", "PATCH"):
            data = b""
        hdrs = {"Content-Type": "application/json"} if data else {}
        hdrs.update(headers or {})
        resp = self.fetch(path, method=method, body=data, headers=hdrs,
                          raise_error=False, allow_nonstandard_methods=True)
        if check:
            check_response(method, path, resp.code, resp.headers, resp.body)
        return resp


class TestServedDocument(OpenApiCase):
    def test_get_openapi_json_is_the_document(self) -> None:
        resp = self.call("GET", "/api/v1/openapi.json")
        assert resp.code == 200
        assert resp.headers["Content-Type"].startswith("application/json")
        assert resp.headers["X-Prisn-Node"] == "node1" and resp.headers["X-Request-Id"]
        assert json.loads(resp.body) == document()
        assert self.call("POST", "/api/v1/openapi.json", {}).code == 405

    def test_the_document_is_read_once(self) -> None:
        assert self.app.ctx.openapi is openapi.document_bytes()
        assert make_app(FakeNodeClient()).ctx.openapi is self.app.ctx.openapi


class TestServedDocumentWithAuth(OpenApiCase):
    api_key = "openapi-test-key-0123456789"

    def test_needs_a_credential_like_cluster_status(self) -> None:
        for path in ("/api/v1/openapi.json", "/api/v1/cluster/status"):
            resp = self.call("GET", path)
            assert resp.code == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
            resp = self.call("GET", path, headers={"Authorization": f"Bearer {self.api_key}"})
            assert resp.code == 200


class TestParametersAreTheOnesHandlersRead(OpenApiCase):
    def test_each_probed_parameter_is_documented_exactly_where_it_is_read(self) -> None:
        """A bad value of a parameter is a 400 naming it on exactly the operations that
        document it (and is ignored elsewhere)."""
        problems = []
        for path, item in document()["paths"].items():
            for method, op in item.items():
                if method not in HTTP_METHODS:
                    continue
                params = _operation_params(op, item)
                for name, (where, bad, message) in PROBES.items():
                    url, headers = _concrete(path), {}
                    if where == "query":
                        url += f"?{name}={bad}"
                    else:
                        headers[name] = bad
                    resp = self.call(method.upper(), url, BODIES.get(op["operationId"]),
                                     headers, check=False)
                    body = json.loads(resp.body) if resp.body.startswith(b"{") else {}
                    reads = resp.code == 400 and body.get("message", "").startswith(message)
                    if reads != (params.get(name) == where):
                        problems.append(
                            f"{method.upper()} {path}: {name} ({where}) "
                            f"{'is read' if reads else 'is not read'} by the handler but "
                            f"{'documented' if name in params else 'not documented'}: "
                            f"{resp.code} {resp.body[:120]!r}")
        assert not problems, "\n".join(problems)

    def test_request_bodies_are_documented_exactly_where_they_are_read(self) -> None:
        """Malformed JSON is a 400 on exactly the operations that document a JSON request
        body (an artifact upload's body is raw bytes: its own tests cover it)."""
        problems = []
        for path, item in document()["paths"].items():
            for method, op in item.items():
                if method not in HTTP_METHODS:
                    continue
                resp = self.fetch(_concrete(path), method=method.upper(), body=b"{not json",
                                  headers={"Content-Type": "application/json"},
                                  raise_error=False, allow_nonstandard_methods=True)
                reads = resp.code == 400 and b"malformed JSON" in resp.body
                json_body = "application/json" in op.get("requestBody", {}).get("content", {})
                if reads != json_body:
                    problems.append(f"{method.upper()} {path}: the handler "
                                    f"{'reads' if reads else 'does not read'} a body, the "
                                    f"document {'has' if 'requestBody' in op else 'has no'} "
                                    f"requestBody: {resp.code} {resp.body[:120]!r}")
        assert not problems, "\n".join(problems)


class TestAnswersMatchTheDocument(OpenApiCase):
    """Answers of the handlers (fake node) validate against the documented responses,
    including the ones a real single node rarely gives (503s, 409s, 422)."""

    def test_deployment_answers(self) -> None:
        spec = {"name": "web", "source": "app.py", "port": 8080, "env": {"A": "1"},
                "args": ["-v"], "runtime": "python3"}
        key = {"Idempotency-Key": "k1"}
        assert self.call("POST", "/api/v1/deployments", spec, key).code == 201
        assert self.call("POST", "/api/v1/deployments", spec, key).code == 201  # replay
        assert self.call("POST", "/api/v1/deployments", {**spec, "port": 9000},
                         key).code == 422
        assert self.call("POST", "/api/v1/deployments", spec).code == 409
        assert self.call("POST", "/api/v1/deployments", {"name": "c", "source": "x",
                                                         "schedule": "@daily"}).code == 201
        assert self.call("POST", "/api/v1/deployments", {"name": "x"}).code == 400
        assert self.call("GET", "/api/v1/deployments?limit=1&type=service").code == 200
        assert self.call("GET", "/api/v1/deployments?limit=5000").code == 400
        assert self.call("GET", "/api/v1/deployments/web").code == 200
        assert self.call("GET", "/api/v1/deployments/nope").code == 404
        assert self.call("PATCH", "/api/v1/deployments/web", {"runtime": None}).code == 200
        assert self.call("PUT", "/api/v1/deployments/web", {"source": "v2"}).code == 200
        assert self.call("POST", "/api/v1/deployments/web/scale", {"replicas": 3}).code == 200
        assert self.call("POST", "/api/v1/deployments/web/scale", {"n": 3}).code == 400
        assert self.call("DELETE", "/api/v1/deployments/web").code == 204
        assert self.call("DELETE", "/api/v1/deployments/web").code == 404
        assert self.call("GET", "/api/v1/nowhere").code == 404
        assert self.call("DELETE", "/api/v1/deployments").code == 405
        self.node.fail_reads = "no quorum"
        assert self.call("GET", "/api/v1/deployments/c",
                         headers={"X-Prisn-Consistency": "strong"}).code == 503
        self.node.fail_writes = "no quorum"
        assert self.call("POST", "/api/v1/deployments", {"name": "z", "source": "x"}).code \
            == 503

    def test_cluster_and_probe_answers(self) -> None:
        for path in ("/health", "/ready", "/api/v1/cluster/status", "/api/v1/cluster/health",
                     "/metrics"):
            assert self.call("GET", path).code == 200, path
        assert self.call("POST", "/api/v1/cluster/election", {"target": "node2"}).code == 202
        assert self.call("POST", "/api/v1/cluster/election", {"to": "node2"}).code == 400
        assert self.call("POST", "/api/v1/cluster/election", {"target": "node4"}).code == 409
        assert self.call("DELETE", "/api/v1/cluster/nodes/node4").code == 204
        assert self.call("DELETE", "/api/v1/cluster/nodes/node9").code == 404
        self.node.ready = self.node.healthy = False
        self.node.leader_id = None
        assert self.call("GET", "/ready").code == 503
        assert self.call("GET", "/api/v1/cluster/health").code == 503

    def test_token_answers(self) -> None:
        key = {"Idempotency-Key": "t1"}
        resp = self.call("POST", "/api/v1/tokens",
                         {"name": "ci", "role": "developer", "namespaces": ["team"],
                          "expires_in": "1h"}, key)
        assert resp.code == 201
        tid = json.loads(resp.body)["id"]
        assert self.call("POST", "/api/v1/tokens", {"name": "ci", "role": "developer",
                                                    "namespaces": ["team"],
                                                    "expires_in": "1h"}, key).code == 409
        assert self.call("POST", "/api/v1/tokens", {"name": "adm", "role": "admin"}).code == 201
        assert self.call("POST", "/api/v1/tokens", {"name": "v", "role": "viewer"}).code == 400
        assert self.call("GET", "/api/v1/tokens").code == 200
        assert self.call("GET", f"/api/v1/tokens/{tid}").code == 200
        assert self.call("GET", "/api/v1/tokens/not-an-id").code == 404
        assert self.call("POST", f"/api/v1/tokens/{tid}/revoke").code == 200
        assert self.call("POST", f"/api/v1/tokens/{tid}/revoke", {"x": 1}).code == 400
        assert self.call("DELETE", f"/api/v1/tokens/{tid}").code == 204
        assert self.call("DELETE", f"/api/v1/tokens/{tid}").code == 404


@pytest.mark.parametrize("method,path,template", [
    ("GET", "/api/v1/deployments/web?namespace=a", "/api/v1/deployments/{name}"),
    ("POST", "/api/v1/deployments/web/scale", "/api/v1/deployments/{name}/scale"),
    ("POST", "/api/v1/tokens/0123456789abcdef/revoke", "/api/v1/tokens/{id}/revoke"),
    ("DELETE", "/api/v1/cluster/nodes/n3", "/api/v1/cluster/nodes/{id}"),
])
def test_find_operation_matches_templates(method: str, path: str, template: str) -> None:
    found, op = find_operation(method, path)
    assert found == template and op is not None
