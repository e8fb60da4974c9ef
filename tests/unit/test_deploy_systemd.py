"""Checks for deploy/systemd: the clustered prisn.service unit and its env file."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
UNIT = SYSTEMD / "prisn.service"
ENV_EXAMPLE = SYSTEMD / "prisn.env.example"
README = SYSTEMD / "README.md"

EXEC_PATH = "/usr/local/bin/prisn"

# Every `prisn server` flag, as its PRISN_<NAME> environment variable.
KNOWN_SETTINGS = {
    "PRISN_BIND",
    "PRISN_DATA_DIR",
    "PRISN_NODE_ID",
    "PRISN_LOG_LEVEL",
    "PRISN_LOG_FORMAT",
    "PRISN_CLUSTER",
    "PRISN_RAFT_ADDR",
    "PRISN_ADVERTISE_ADDR",
    "PRISN_PEERS",
    "PRISN_BOOTSTRAP",
    "PRISN_FORCE_NEW_CLUSTER",
    "PRISN_HEARTBEAT_INTERVAL",
    "PRISN_ELECTION_TIMEOUT",
    "PRISN_WRITE_TIMEOUT",
    "PRISN_CLUSTER_KEY_FILE",
    "PRISN_API_KEY",
    "PRISN_TLS_CERT",
    "PRISN_TLS_KEY",
    "PRISN_ALLOWED_HOSTS",
    "PRISN_CORS_ORIGINS",
    "PRISN_MAX_CONNS_PER_IP",
}


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Parse a unit file into {section: [(key, value), ...]}, keeping repeats."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if pending:
            line = pending + " " + line
            pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1].strip()
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        assert current is not None, f"directive outside a section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        sections[current].append((key.strip(), value.strip()))
    return sections


def values(unit: dict, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: dict, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert found, f"[{section}] {key}= missing"
    return found[-1]


def seconds(value: str) -> float:
    """systemd time span ("60", "60s", "1min 30s", "2m") in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert parts, value
    for number, unit in parts:
        total += float(number) * units[unit]
    return total


@pytest.fixture(scope="module")
def unit() -> dict:
    return parse_unit(UNIT.read_text())


@pytest.fixture
def resolvable_unit(tmp_path: Path) -> Path:
    """A copy of the unit whose ExecStart binary exists (a stub in tmp_path).

    Only the executable path is rewritten; everything else is verified as
    shipped.
    """
    stub = tmp_path / "bin" / "prisn"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    text = UNIT.read_text()
    pattern = re.compile(r"^(ExecStart=)" + re.escape(EXEC_PATH) + r"(\s)", re.M)
    new_text, n = pattern.subn(lambda m: m.group(1) + str(stub) + m.group(2), text)
    assert n == 1, "expected exactly one ExecStart=/usr/local/bin/prisn line"
    copy = tmp_path / "prisn.service"
    copy.write_text(new_text)
    return copy


def systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze not installed")
    return exe


def verify(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [systemd_analyze(), "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def lines_about(stderr: str, path: Path) -> list[str]:
    return [line for line in stderr.splitlines() if path.name in line or str(path.parent) in line]


def test_systemd_analyze_verify_has_no_warning(resolvable_unit: Path) -> None:
    proc = verify(resolvable_unit)
    about_unit = lines_about(proc.stderr + proc.stdout, resolvable_unit)
    assert proc.returncode == 0, proc.stderr
    assert about_unit == [], "\n".join(about_unit)


def test_verify_check_catches_a_bad_directive(resolvable_unit: Path) -> None:
    # Negative control: the check above must notice a warning. systemd-analyze
    # exits 0 on an unknown key and only warns, which is why the stderr lines
    # are inspected rather than the exit code alone.
    broken = resolvable_unit.read_text().replace(
        "[Service]\n", "[Service]\nNoSuchDirective=yes\n", 1
    )
    resolvable_unit.write_text(broken)
    proc = verify(resolvable_unit)
    about_unit = lines_about(proc.stderr + proc.stdout, resolvable_unit)
    assert any("NoSuchDirective" in line for line in about_unit), proc.stderr


def test_security_exposure_is_low(resolvable_unit: Path) -> None:
    proc = subprocess.run(
        [systemd_analyze(), "security", "--offline=true", "--no-pager", str(resolvable_unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "--offline" in proc.stderr and proc.returncode != 0:
        pytest.skip("systemd-analyze security --offline unsupported (systemd < 250)")
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= 2.5, proc.stdout


def test_unit_service_settings(unit: dict) -> None:
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "Restart") == "always"
    assert seconds(one(unit, "Service", "RestartSec")) == 5
    assert one(unit, "Service", "User") == "prisn"
    assert one(unit, "Service", "Group") == "prisn"
    assert one(unit, "Service", "StateDirectory") == "prisn"
    assert one(unit, "Service", "EnvironmentFile") == "-/etc/prisn/prisn.env"
    # Settings come from the env file, not from flags baked into the unit.
    assert one(unit, "Service", "ExecStart").split() == [EXEC_PATH, "server"]
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    # Long enough for a leader to transfer leadership before SIGKILL.
    assert seconds(one(unit, "Service", "TimeoutStopSec")) >= 30
    assert int(one(unit, "Service", "LimitNOFILE")) >= 65536
    assert "network-online.target" in one(unit, "Unit", "After").split()
    assert "network-online.target" in one(unit, "Unit", "Wants").split()
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_unit_hardening(unit: dict) -> None:
    expected = {
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/prisn",
        "NoNewPrivileges": "yes",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
    }
    for key, value in expected.items():
        assert one(unit, "Service", key) == value, key
    families = one(unit, "Service", "RestrictAddressFamilies").split()
    assert sorted(families) == ["AF_INET", "AF_INET6", "AF_UNIX"]
    # No capabilities at all: ports 7331/7332 are unprivileged.
    assert one(unit, "Service", "CapabilityBoundingSet") == ""


def test_unit_environment_uses_known_settings(unit: dict) -> None:
    env = dict(v.split("=", 1) for v in values(unit, "Service", "Environment"))
    prisn_keys = {k for k in env if k.startswith("PRISN_")}
    assert prisn_keys <= KNOWN_SETTINGS, prisn_keys - KNOWN_SETTINGS
    assert env.get("PRISN_DATA_DIR") == "/var/lib/prisn"


def parse_env_file(text: str) -> tuple[dict[str, str], set[str]]:
    """Return (active settings, names in commented-out PRISN_ lines)."""
    active: dict[str, str] = {}
    commented: set[str] = set()
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            m = re.match(r"#\s*(PRISN_[A-Z_]+)=", line)
            if m:
                commented.add(m.group(1))
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=value: {raw!r}"
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), raw
        active[key] = value
    return active, commented


def test_env_example_settings_are_known() -> None:
    active, commented = parse_env_file(ENV_EXAMPLE.read_text())
    unknown = (set(active) | commented) - KNOWN_SETTINGS
    assert not unknown, f"not prisn settings: {sorted(unknown)}"
    assert active["PRISN_CLUSTER"] == "true"
    assert active["PRISN_BIND"] == ":7331"
    assert active["PRISN_RAFT_ADDR"] == ":7332"
    # The sandbox only lets prisn write its StateDirectory.
    assert active["PRISN_DATA_DIR"] == "/var/lib/prisn"
    assert len(active["PRISN_PEERS"].split(",")) >= 3
    for peer in active["PRISN_PEERS"].split(","):
        assert re.fullmatch(r"[\w.-]+:\d+", peer), peer
    assert active["PRISN_BOOTSTRAP"] == "false"
    assert "PRISN_FORCE_NEW_CLUSTER" not in active, "must not be enabled by default"


def test_env_file_parser_rejects_garbage() -> None:
    with pytest.raises(AssertionError):
        parse_env_file("PRISN_BIND :7331\n")
    active, commented = parse_env_file("# note\nPRISN_BIND=:1\n#PRISN_PEERS=a:1\n")
    assert active == {"PRISN_BIND": ":1"} and commented == {"PRISN_PEERS"}


def test_readme_covers_install_steps() -> None:
    text = README.read_text()
    for step in (
        "useradd",
        "pip install",
        "/etc/systemd/system/prisn.service",
        "/etc/prisn/prisn.env",
        "systemctl daemon-reload",
        "systemctl enable",
    ):
        assert step in text, step


def test_known_settings_are_server_flags() -> None:
    from prisn.cli import server

    assert KNOWN_SETTINGS <= {p.envvar for p in server.params}
