"""Structural checks for deploy/kubernetes/statefulset.yaml (no cluster needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML not installed (pip install pyyaml)")

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kubernetes" / "statefulset.yaml"
DOCKERFILE = ROOT / "deploy" / "compose" / "Dockerfile"


def flag_value(args: list[str], name: str):
    for i, arg in enumerate(args):
        if arg == name:
            nxt = args[i + 1] if i + 1 < len(args) else None
            return True if nxt is None or nxt.startswith("--") else nxt
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    loaded = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d is not None]
    for d in loaded:
        assert {"apiVersion", "kind", "metadata"} <= set(d), d
    return loaded


def get(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def sts(docs) -> dict:
    return get(docs, "StatefulSet", "prisn")


@pytest.fixture(scope="module")
def container(sts) -> dict:
    (c,) = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "prisn"]
    return c


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def port_number(container: dict, port) -> int:
    if isinstance(port, int):
        return port
    (p,) = [p for p in container["ports"] if p.get("name") == port]
    return p["containerPort"]


def test_kinds(docs) -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == [
        ("PodDisruptionBudget", "prisn"),
        ("Service", "prisn"),
        ("Service", "prisn-api"),
        ("StatefulSet", "prisn"),
    ]
    api = {d["kind"]: d["apiVersion"] for d in docs}
    assert api["StatefulSet"] == "apps/v1"
    assert api["PodDisruptionBudget"] == "policy/v1"
    assert api["Service"] == "v1"


def test_statefulset_spec(sts) -> None:
    spec = sts["spec"]
    assert spec["replicas"] == 3
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["serviceName"] == "prisn"
    labels = spec["template"]["metadata"]["labels"]
    assert matches(spec["selector"]["matchLabels"], labels)
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 30


def test_cluster_args(sts, container) -> None:
    args = container["args"]
    assert args[0] == "server"
    n = sts["spec"]["replicas"]
    svc = sts["spec"]["serviceName"]
    name = sts["metadata"]["name"]
    # Every pod gets the same full member list, derived from the StatefulSet.
    expected = ",".join(f"{name}-{i}.{svc}:7332" for i in range(n))
    assert flag_value(args, "--peers") == expected
    assert flag_value(args, "--cluster") is True
    assert flag_value(args, "--node-id") == "$(POD_NAME)"
    assert flag_value(args, "--advertise-addr") == f"$(POD_NAME).{svc}:7332"
    assert flag_value(args, "--bind") == ":7331"
    assert flag_value(args, "--raft-addr") == ":7332"
    # No pod bootstraps on its own or forces a new cluster.
    assert flag_value(args, "--bootstrap") is None
    assert flag_value(args, "--force-new-cluster") is None


def test_args_only_reference_defined_env(container) -> None:
    env = {e["name"]: e for e in container.get("env", [])}
    refs = {r for a in container["args"] for r in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", a)}
    assert refs, "expected $(POD_NAME) references"
    assert refs <= set(env), refs - set(env)
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_ports(container) -> None:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 7331, "raft": 7332}


def test_probes(container) -> None:
    ready = container["readinessProbe"]["httpGet"]
    live = container["livenessProbe"]["httpGet"]
    assert ready["path"] == "/ready"
    assert live["path"] == "/health"
    assert port_number(container, ready["port"]) == 7331
    assert port_number(container, live["port"]) == 7331
    if "startupProbe" in container:
        assert container["startupProbe"]["httpGet"]["path"] == "/health"


def test_headless_service(docs, sts, container) -> None:
    svc = get(docs, "Service", "prisn")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert matches(svc["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])
    targets = {port_number(container, p.get("targetPort", p["port"])) for p in svc["spec"]["ports"]}
    assert targets == {7331, 7332}


def test_api_service(docs, sts, container) -> None:
    svc = get(docs, "Service", "prisn-api")
    assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert svc["spec"].get("clusterIP") != "None"
    # Routes only to ready pods (the default), unlike the headless Service.
    assert not svc["spec"].get("publishNotReadyAddresses", False)
    assert matches(svc["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])
    targets = {port_number(container, p.get("targetPort", p["port"])) for p in svc["spec"]["ports"]}
    assert targets == {7331}


def test_pod_disruption_budget(docs, sts) -> None:
    pdb = get(docs, "PodDisruptionBudget", "prisn")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]
    assert matches(
        pdb["spec"]["selector"]["matchLabels"], sts["spec"]["template"]["metadata"]["labels"]
    )


def test_resources(container) -> None:
    requests = container["resources"]["requests"]
    assert requests.get("cpu") and requests.get("memory")


def test_security_context(sts, container) -> None:
    pod_sc = sts["spec"]["template"]["spec"]["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] != 0
    csc = container["securityContext"]
    assert csc["allowPrivilegeEscalation"] is False
    assert "ALL" in csc["capabilities"]["drop"]
    # Same uid/gid as the image's prisn user, so the volume is writable.
    m = re.search(r"--uid (\d+)", DOCKERFILE.read_text())
    assert m and int(m.group(1)) == pod_sc["runAsUser"]
    assert pod_sc.get("fsGroup") is not None


def test_data_volume(sts, container) -> None:
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/var/lib/prisn"
    assert flag_value(container["args"], "--data-dir") in (None, "/var/lib/prisn")
    if container.get("securityContext", {}).get("readOnlyRootFilesystem"):
        assert "/tmp" in mounts.values(), "read-only root needs a writable /tmp"


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of an env value."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env[m.group(1)], value)


def test_env_only_references_earlier_env(container) -> None:
    seen: set[str] = set()
    for e in container.get("env", []):
        refs = set(re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", e.get("value", "")))
        assert refs <= seen, (e["name"], refs - seen)  # Kubernetes expands earlier vars only
        seen.add(e["name"])


def test_every_name_clients_use_passes_the_host_check(
        sts, container, monkeypatch: pytest.MonkeyPatch) -> None:
    """Auth off (the manifest sets no API key): the Service names, the pods' DNS names and
    pod IPs (probes, Prometheus' pod discovery) are accepted; a foreign name is not."""
    from actors.api.guard import RequestGuard, own_names
    from prisn.config import parse_hosts

    env = {e["name"]: e.get("value", "") for e in container["env"]}
    assert "PRISN_API_KEY" not in env
    svc, ns = sts["spec"]["serviceName"], "team-a"
    for i in range(sts["spec"]["replicas"]):
        pod = f"{sts['metadata']['name']}-{i}"
        values = {"POD_NAME": pod, "POD_NAMESPACE": ns}
        args = [expand(a, values) for a in container["args"]]
        monkeypatch.setattr("socket.gethostname", lambda pod=pod: pod)  # a pod's hostname
        guard = RequestGuard.build(
            allowed_hosts=parse_hosts(expand(env["PRISN_ALLOWED_HOSTS"], values)),
            own=own_names(flag_value(args, "--bind"), flag_value(args, "--raft-addr"),
                          flag_value(args, "--advertise-addr")))
        names = ["prisn-api", f"prisn-api.{ns}", f"prisn-api.{ns}.svc.cluster.local",
                 f"{pod}.{svc}", f"{pod}.{svc}.{ns}.svc.cluster.local", pod, "10.244.1.7",
                 "localhost", f"{sts['metadata']['name']}-9.{svc}.{ns}.svc"]
        for name in names:
            assert guard.host_allowed(f"{name}:7331"), (pod, name)
        for name in ("evil.example", f"prisn-api.{ns}.evil.example", "svc.cluster.local"):
            assert not guard.host_allowed(f"{name}:7331"), (pod, name)
