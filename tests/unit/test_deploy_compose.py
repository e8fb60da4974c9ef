"""Checks for deploy/compose: Dockerfile, docker-compose.yml, prometheus.yml."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest

from tests.deployfiles import dockerfile_instructions, healthcheck_argv, instr
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
PROM_CONFIG = COMPOSE_DIR / "prometheus.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

NODES = ("prisn1", "prisn2", "prisn3")
VOLUMES = ("prisn1-data", "prisn2-data", "prisn3-data")
EXPECTED_PEERS = {"prisn1": None, "prisn2": "prisn1:7332", "prisn3": "prisn1:7332,prisn2:7332"}


# --------------------------------------------------------------- helpers


def compose_cmd() -> list[str]:
    exe = shutil.which("docker-compose")
    if exe:
        return [exe]
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=60
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    pytest.skip("neither docker-compose nor the docker compose plugin is installed")


def run_compose(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRISN_", "COMPOSE_"))}
    return subprocess.run(
        [*compose_cmd(), "-f", str(COMPOSE_FILE), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def load_yaml(path: Path):
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed")
    return yaml.safe_load(path.read_text())


def flag_value(args: list[str], name: str):
    """Value of --name in an argv list ("--name=v" or "--name v"); True for a bare flag."""
    for i, arg in enumerate(args):
        if arg == name:
            nxt = args[i + 1] if i + 1 < len(args) else None
            return True if nxt is None or nxt.startswith("--") else nxt
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def command_args(service: dict) -> list[str]:
    cmd = service["command"]
    return cmd.split() if isinstance(cmd, str) else list(cmd)


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802
        code = self.server.status if self.path == "/health" else 404  # type: ignore[attr-defined]
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args):
        pass


def serve(status: int):
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    srv.status = status  # type: ignore[attr-defined]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def run_probe(argv: list[str], port: int) -> int:
    assert argv[0] == "python", argv
    env = dict(os.environ, PRISN_BIND=f":{port}")
    return subprocess.run(
        [sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30
    ).returncode


# ------------------------------------------------------------ compose CLI


def test_compose_config_is_valid() -> None:
    proc = run_compose("config")
    assert proc.returncode == 0, proc.stderr
    for name in (*NODES, *VOLUMES, "prisn-net"):
        assert re.search(rf"^\s*{re.escape(name)}:", proc.stdout, re.M), name


def test_compose_config_resolves_services_and_volumes() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed")
    proc = run_compose("config")
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert set(NODES) <= set(cfg["services"])
    assert set(VOLUMES) <= set(cfg["volumes"])
    for node in NODES:
        build = cfg["services"][node]["build"]
        assert Path(build["context"]).resolve() == ROOT
        assert (Path(build["context"]) / build["dockerfile"]).resolve() == DOCKERFILE


@pytest.mark.parametrize(
    "broken",
    ["restart: [unless-stopped", "restrat: unless-stopped"],
    ids=["yaml-error", "schema-error"],
)
def test_compose_config_rejects_a_broken_file(tmp_path: Path, broken: str) -> None:
    # Negative control: `config` must fail on an invalid file, otherwise the
    # test above proves nothing.
    text = COMPOSE_FILE.read_text()
    assert "restart: unless-stopped" in text
    bad = tmp_path / "docker-compose.yml"
    # The unmodified copy passes from this directory too, so a failure below
    # comes from the breakage, not from the copy's location.
    bad.write_text(text)
    ok = subprocess.run(
        [*compose_cmd(), "-f", str(bad), "config"], capture_output=True, text=True, timeout=120
    )
    assert ok.returncode == 0, ok.stderr
    bad.write_text(text.replace("restart: unless-stopped", broken, 1))
    proc = subprocess.run(
        [*compose_cmd(), "-f", str(bad), "config"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0


# ----------------------------------------------------- compose file content


def test_cluster_services() -> None:
    cfg = load_yaml(COMPOSE_FILE)
    services = cfg["services"]
    host_ports = set()
    for node in NODES:
        svc = services[node]
        args = command_args(svc)
        assert args[0] == "server", args
        assert svc["hostname"] == node
        assert flag_value(args, "--node-id") == node
        assert flag_value(args, "--cluster") is True
        assert flag_value(args, "--bind") == ":7331"
        assert flag_value(args, "--raft-addr") == ":7332"
        assert flag_value(args, "--advertise-addr") == f"{node}:7332"
        assert flag_value(args, "--peers") == EXPECTED_PEERS[node]
        assert (flag_value(args, "--bootstrap") is True) == (node == "prisn1")
        assert flag_value(args, "--force-new-cluster") is None
        assert svc["restart"] == "unless-stopped"
        assert svc["healthcheck"]["test"][0] == "CMD"
        assert "prisn-net" in svc["networks"]
        assert f"{node}-data:/var/lib/prisn" in svc["volumes"]
        for mapping in svc.get("ports", []):
            host, _, container = str(mapping).rpartition(":")
            assert container == "7331", f"only the API port is published: {mapping}"
            host_ports.add(host)
    assert len(host_ports) == 3, "host ports must not clash"
    assert set(cfg["volumes"]) >= set(VOLUMES)
    assert "prisn-net" in cfg["networks"]
    # Joiners start after the node(s) they join through.
    assert set(services["prisn2"]["depends_on"]) == {"prisn1"}
    assert set(services["prisn3"]["depends_on"]) == {"prisn1", "prisn2"}


def test_compose_healthcheck_matches_dockerfile() -> None:
    cfg = load_yaml(COMPOSE_FILE)
    for node in NODES:
        assert cfg["services"][node]["healthcheck"]["test"][1:] == healthcheck_argv()


def test_prometheus_service_is_optional() -> None:
    cfg = load_yaml(COMPOSE_FILE)
    prom = cfg["services"]["prometheus"]
    assert prom["profiles"] == ["monitoring"]
    mounts = {
        v.split(":")[1]: (COMPOSE_DIR / v.split(":")[0]).resolve()
        for v in prom["volumes"]
        if v.startswith(".")
    }
    assert mounts["/etc/prometheus/prometheus.yml"] == PROM_CONFIG
    assert mounts["/etc/prometheus/alerts.yml"] == ALERTS
    for node in NODES:
        assert "profiles" not in cfg["services"][node]


def test_compose_prometheus_config(tmp_path: Path) -> None:
    cfg = load_yaml(PROM_CONFIG)
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "prisn"]
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert sorted(targets) == [f"{n}:7331" for n in NODES]
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed")
    # Lay the files out as the container sees them (/etc/prometheus/).
    shutil.copy(PROM_CONFIG, tmp_path / "prometheus.yml")
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    proc = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------- Dockerfile


def test_dockerfile_directives() -> None:
    text = DOCKERFILE.read_text()
    froms = instr(text, "FROM")
    assert froms and all(f.split()[0] == "python:3.11-slim" for f in froms), froms
    assert any(re.search(r"pip install \.(\s|$)", r) for r in instr(text, "RUN"))
    # The final stage runs as prisn, not root.
    assert instr(text, "USER")[-1] == "prisn"
    assert any("useradd" in r and "prisn" in r for r in instr(text, "RUN"))
    assert instr(text, "VOLUME") == ["/var/lib/prisn"]
    exposed = {p for e in instr(text, "EXPOSE") for p in e.split()}
    assert exposed == {"7331", "7332"}
    assert json.loads(instr(text, "ENTRYPOINT")[-1]) == ["prisn"]
    assert json.loads(instr(text, "CMD")[-1]) == ["server"]
    env = " ".join(instr(text, "ENV"))
    assert re.search(r"\bPRISN_DATA_DIR=/var/lib/prisn\b", env)
    (hc,) = instr(text, "HEALTHCHECK")
    assert "curl" not in hc and "wget" not in hc
    assert "urllib" in hc and "/health" in hc


def test_dockerfile_copies_every_package() -> None:
    text = DOCKERFILE.read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = set()
    for args in instr(text, "COPY"):
        parts = [p for p in args.split() if not p.startswith("--")]
        if any(a.startswith("--from") for a in args.split()):
            continue
        for src in parts[:-1]:
            assert (ROOT / src).exists(), f"COPY source {src} is not in the repo"
            copied.add(src.rstrip("/"))
    assert "pyproject.toml" in copied
    for pattern in include:
        top = pattern.rstrip("*").rstrip(".")
        if (ROOT / top).is_dir():
            assert top in copied, f"package {top} (pyproject include {pattern}) is not copied"


def test_dockerfile_parser_handles_continuations() -> None:
    parsed = dockerfile_instructions("# c\nRUN a \\\n  # skipped\n  && b\nUSER x\n")
    assert parsed == [("RUN", "a && b"), ("USER", "x")]


def test_healthcheck_reports_healthy_on_200() -> None:
    srv = serve(200)
    try:
        assert run_probe(healthcheck_argv(), srv.server_address[1]) == 0
    finally:
        srv.shutdown()


def test_healthcheck_reports_unhealthy_on_503_or_no_server() -> None:
    srv = serve(503)
    try:
        assert run_probe(healthcheck_argv(), srv.server_address[1]) != 0
    finally:
        srv.shutdown()
    assert run_probe(healthcheck_argv(), free_port()) != 0


def test_every_name_a_node_is_reached_by_passes_the_host_check(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Auth off (the compose file sets no API key): each node accepts the Host that
    Prometheus (its scrape target), the other containers, the healthcheck and the Docker
    host (localhost, the host's IP) use; a foreign name is refused."""
    from actors.api.guard import RequestGuard, own_names
    from prisn.config import parse_hosts

    cfg = load_yaml(COMPOSE_FILE)
    prom = load_yaml(PROM_CONFIG)
    targets = [t for j in prom["scrape_configs"] for sc in j["static_configs"]
               for t in sc["targets"]]
    env = cfg["services"]["prisn1"]["environment"]
    assert "PRISN_API_KEY" not in env
    extra = re.sub(r"\$\{PRISN_ALLOWED_HOSTS:-([^}]*)\}", r"\1", env["PRISN_ALLOWED_HOSTS"])
    for node in NODES:
        svc = cfg["services"][node]
        args = command_args(svc)
        monkeypatch.setattr("socket.gethostname", lambda svc=svc: svc["hostname"])
        guard = RequestGuard.build(
            allowed_hosts=parse_hosts(extra),
            own=own_names(flag_value(args, "--bind"), flag_value(args, "--raft-addr"),
                          flag_value(args, "--advertise-addr")))
        mine = [t for t in targets if t.startswith(f"{node}:")]
        assert mine, node
        for host in [*mine, f"{node}:7331", "127.0.0.1:7331", "localhost:7333",
                     "192.168.1.20:7331"]:
            assert guard.host_allowed(host), (node, host)
        assert not guard.host_allowed("evil.example:7331")
