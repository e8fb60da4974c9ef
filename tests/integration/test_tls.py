"""TLS for the HTTP API and the operator CLI's `--ca-file` / `--token` (issue 7, item 3),
with real `prisn server` processes; plus the per-address rate limit end to end.

Certificates are made in the test: with the `cryptography` package when it is installed,
else with `openssl req`. One TLS node per module (module-scoped fixture).
"""

from __future__ import annotations

import datetime
import http.client
import http.server
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.api.actor import tls_context
from prisn.client import Client
from prisn.config import ConfigError
from tests.procs import ServerProc, free_port, single_node, wait_for

pytestmark = pytest.mark.timeout(120)
CLI_TIMEOUT = 60


# ---------------------------------------------------------------------- certificates
def make_cert(dir: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: (cert.pem, key.pem)."""
    cert, key = dir / f"{name}.crt", dir / f"{name}.key"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor openssl is available")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out",
                        str(cert), "-days", "2", "-subj", f"/CN={name}", "-addext",
                        "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                       check=True, capture_output=True, timeout=60)
        return cert, key
    pk = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    crt = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
           .public_key(pk.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now - datetime.timedelta(days=1))
           .not_valid_after(now + datetime.timedelta(days=2))
           .add_extension(x509.SubjectAlternativeName([
               x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
               critical=False)
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .sign(pk, hashes.SHA256()))
    cert.write_bytes(crt.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(pk.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    key.chmod(0o600)
    return cert, key


# ---------------------------------------------------------------------- helpers
def prisn(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items()
         if k not in ("PRISN_SERVER", "PRISN_CA_FILE", "PRISN_TOKEN")}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "prisn.cli", *args], env=e,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT)


def one_line_error(p: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prisn: error: "), p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def https(port: int, path: str, ca: Path, method: str = "GET") -> tuple[int, dict, Any]:
    ctx = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=ctx)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, (json.loads(body)
                                                                      if body else None)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("certs")
    cert, key = make_cert(d, "node")
    other_cert, other_key = make_cert(d, "other")
    return {"cert": cert, "key": key, "other_cert": other_cert, "other_key": other_key}


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory,
             certs: dict[str, Path]) -> Iterator[ServerProc]:
    tmp = tmp_path_factory.mktemp("tls")
    n = single_node(tmp, extra=["--tls-cert", str(certs["cert"]), "--tls-key",
                                str(certs["key"]), "--rate-limit", "5", "--rate-burst", "10"])
    n.start()

    def ready() -> bool:
        if not n.alive():
            raise AssertionError(f"node exited: {n.tail()}")
        return https(n.http_port, "/ready", certs["cert"])[0] == 200

    try:
        wait_for(ready, 30, "TLS node ready")
        yield n
    finally:
        n.stop()


# ---------------------------------------------------------------------- tests
def test_https_serves_health_ready_and_the_api(tls_node: ServerProc,
                                               certs: dict[str, Path]) -> None:
    status, headers, body = https(tls_node.http_port, "/health", certs["cert"])
    assert status == 200 and body["status"] == "healthy"
    assert headers["x-prisn-node"] == "n1"
    status, _, body = https(tls_node.http_port, "/api/v1/cluster/status", certs["cert"])
    assert status == 200 and body["leader"] == "n1"
    # plain HTTP on the TLS port gets no HTTP answer
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        tls_node.req("GET", "/health", timeout=5)
    assert tls_node.alive()


def test_cli_with_ca_file_verifies_the_server(tls_node: ServerProc,
                                              certs: dict[str, Path]) -> None:
    url = f"https://127.0.0.1:{tls_node.http_port}"
    p = prisn("--server", url, "--ca-file", str(certs["cert"]), "cluster", "health")
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "cluster healthy" in p.stdout
    # a bare host:port with --ca-file (here from PRISN_CA_FILE) means https
    p = prisn("status", "--server", f"127.0.0.1:{tls_node.http_port}",
              env={"PRISN_CA_FILE": str(certs["cert"])})
    assert p.returncode == 0, (p.stdout, p.stderr)


def test_cli_without_the_ca_fails_verification_in_one_line(tls_node: ServerProc,
                                                            certs: dict[str, Path]) -> None:
    url = f"https://127.0.0.1:{tls_node.http_port}"
    one_line_error(prisn("--server", url, "cluster", "status"), 1,
                   "TLS certificate verification failed", "--ca-file")
    # the wrong CA: still refused
    one_line_error(prisn("--server", url, "--ca-file", str(certs["other_cert"]), "status"), 1,
                   "TLS certificate verification failed", str(certs["other_cert"]))
    # http:// to an https server: a hint
    one_line_error(prisn("--server", f"127.0.0.1:{tls_node.http_port}", "status"), 1,
                   "https://")
    # an unreadable CA file is bad usage
    one_line_error(prisn("--server", url, "--ca-file", "/nonexistent/ca.pem", "status"), 2,
                   "--ca-file")


def test_rate_limit_429_with_retry_after_and_exempt_probes(tls_node: ServerProc,
                                                           certs: dict[str, Path]) -> None:
    """The node runs with --rate-limit 5 --rate-burst 10: a quick burst of 30 requests from
    one address gets 429s; /health and /ready are never throttled; the metric counts."""
    port, ca = tls_node.http_port, certs["cert"]
    codes = []
    for _ in range(30):
        status, headers, body = https(port, "/api/v1/deployments", ca)
        codes.append(status)
        if status == 429:
            assert body["error"] == "Too Many Requests" and "rate limit" in body["message"]
            assert int(headers["retry-after"]) >= 1
    assert 429 in codes and codes[0] == 200, codes
    for path in ("/health", "/ready"):
        assert all(https(port, path, ca)[0] == 200 for _ in range(15)), path

    def counted() -> bool:
        status, _, _ = https(port, "/health", ca)
        ctx = ssl.create_default_context(cafile=str(ca))
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=ctx)
        try:
            conn.request("GET", "/metrics")
            r = conn.getresponse()
            text = r.read().decode()
        finally:
            conn.close()
        if r.status == 429:
            return False
        line = next(ln for ln in text.splitlines()
                    if ln.startswith("prisn_http_rate_limited_total "))
        assert "prisn_http_connections_open " in text
        return float(line.split()[1]) >= codes.count(429)

    wait_for(counted, 10, "prisn_http_rate_limited_total", interval=0.3)


def test_mismatched_cert_and_key_fail_at_start(tmp_path: Path, certs: dict[str, Path]) -> None:
    n = single_node(tmp_path, extra=["--tls-cert", str(certs["cert"]), "--tls-key",
                                     str(certs["other_key"])])
    n.start()
    code = n.wait_exit(30)
    log = n.log_path.read_text()
    errors = [ln for ln in log.splitlines() if ln.startswith("prisn: error:")]
    assert code == 2, log
    assert len(errors) == 1 and "does not belong to the certificate" in errors[0], log
    assert "Traceback" not in log


def test_garbage_certificate_fails_at_start(tmp_path: Path, certs: dict[str, Path]) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    p = prisn("server", "--bind", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "d"),
              "--tls-cert", str(bad), "--tls-key", str(certs["key"]))
    assert p.returncode == 2, p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("prisn: error:")]
    assert len(errors) == 1 and "--tls-cert" in errors[0], p.stderr
    assert "Traceback" not in p.stderr


def test_tls_context_is_tls12_or_newer_and_refuses_encrypted_keys(
        tmp_path: Path, certs: dict[str, Path]) -> None:
    ctx = tls_context(str(certs["cert"]), str(certs["key"]))
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        return
    pk = serialization.load_pem_private_key(certs["key"].read_bytes(), password=None)
    enc = tmp_path / "enc.key"
    enc.write_bytes(pk.private_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret-password")))
    with pytest.raises(ConfigError, match="encrypted"):
        tls_context(str(certs["cert"]), str(enc))


# ---------------------------------------------------------------------- --token
class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).seen.append(self.headers.get("Authorization"))
        body = json.dumps({"leader": "x", "nodes": [], "healthy": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[str | None]]]:
    _Recorder.seen = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"127.0.0.1:{srv.server_address[1]}", _Recorder.seen
    finally:
        srv.shutdown()
        srv.server_close()


def test_token_is_sent_as_a_bearer_header(recorder: tuple[str, list[str | None]]) -> None:
    addr, seen = recorder
    Client(addr, token="prisn_abc.DEF-123").cluster_status()
    Client(addr).cluster_status()
    p = prisn("--server", addr, "-o", "json", "cluster", "status",
              env={"PRISN_TOKEN": "prisn_from_env"})
    assert p.returncode == 0, p.stderr
    p = prisn("--server", addr, "-o", "json", "cluster", "status", "--token", "prisn_flag",
              env={"PRISN_TOKEN": "prisn_from_env"})
    assert p.returncode == 0, p.stderr
    assert seen == ["Bearer prisn_abc.DEF-123", None, "Bearer prisn_from_env",
                    "Bearer prisn_flag"]
    p = prisn("--server", addr, "cluster", "status", "--token", "bad token")
    one_line_error(p, 2, "--token")
    assert "bad token" not in p.stderr  # never echo a secret


def test_docker_healthcheck_probe_speaks_https_when_tls_is_on(
        tls_node: ServerProc, certs: dict[str, Path]) -> None:
    """The Dockerfile's HEALTHCHECK (read from the file) against a real TLS node (issue 16,
    item 6): healthy with PRISN_TLS_CERT set as in the container; the plain-HTTP probe it
    replaced fails against the same node."""
    from tests.deployfiles import healthcheck_argv

    argv = healthcheck_argv()
    assert argv[0] == "python"
    base = {k: v for k, v in os.environ.items() if not k.startswith("PRISN_")}
    base["PRISN_BIND"] = f"0.0.0.0:{tls_node.http_port}"

    def probe(env: dict[str, str]) -> int:
        return subprocess.run([sys.executable, *argv[1:]], env={**base, **env},
                              capture_output=True, timeout=30).returncode

    assert probe({"PRISN_TLS_CERT": str(certs["cert"]),
                  "PRISN_TLS_KEY": str(certs["key"])}) == 0
    assert probe({}) != 0  # plain HTTP to an HTTPS-only API
