"""Network namespaces for the fault suite: one namespace per node, a switch namespace with a
bridge, veth links, and partitions / lossy links as nft rules inside the node namespaces.

Only addresses inside the namespaces this module creates are used (10.211.7.0/24 on the veths
of the node namespaces); nothing is added to the root namespace. Clients reach a node's HTTP
API on 127.0.0.1 *inside its namespace*, through sockets created there (`ns_socket`).

Names are unique per run (`prisn-f<seed>x<pid>-...`); `teardown` deletes every namespace it
made (call it in `finally`), and `sweep_stale` removes those left by a run whose process is
gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import socket
import subprocess
import threading

import pytest

CLONE_NEWNET = 0x40000000
SUBNET = "10.211.7"
NETNS_DIR = "/var/run/netns"
_NAME_RE = re.compile(r"^prisn-f\d+x(\d+)-")

_libc = ctypes.CDLL(None, use_errno=True)
_root_fd: int | None = None
_root_lock = threading.Lock()


def _run(*cmd: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), input=input, capture_output=True, text=True, check=check,
                          timeout=20)


def available() -> str | None:
    """None when namespaces, veth, bridges and nft work here; else why not (a skip reason)."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    name = f"prisn-f0x{os.getpid()}-probe"
    try:
        _run("ip", "netns", "add", name)
    except (OSError, subprocess.SubprocessError) as e:
        return f"ip netns add failed: {getattr(e, 'stderr', '') or e}"
    try:
        _run("ip", "-n", name, "link", "add", "pa", "type", "veth", "peer", "name", "pb")
        _run("ip", "-n", name, "link", "add", "br0", "type", "bridge")
        _run("ip", "netns", "exec", name, "nft", "-f", "-",
             input="table inet probe {\n  chain c {\n    type filter hook input priority 0;\n"
                   "    numgen random mod 100 < 5 drop\n  }\n}\n")
        fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
        os.close(fd)
    except (OSError, subprocess.SubprocessError) as e:
        return f"namespace networking unavailable: {getattr(e, 'stderr', '') or e}"
    finally:
        _run("ip", "netns", "del", name, check=False)
    return None


def sweep_stale() -> list[str]:
    """Delete `prisn-f*` namespaces whose creating process no longer exists."""
    gone = []
    try:
        names = os.listdir(NETNS_DIR)
    except OSError:
        return gone
    for name in names:
        m = _NAME_RE.match(name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            _run("ip", "netns", "del", name, check=False)
            gone.append(name)
    return gone


def ns_socket(ns: str, family: int = socket.AF_INET) -> socket.socket:
    """A TCP socket that lives in network namespace `ns` (only this thread switches, briefly)."""
    global _root_fd
    with _root_lock:
        if _root_fd is None:
            _root_fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    fd = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns}): {os.strerror(err)}")
        try:
            return socket.socket(family, socket.SOCK_STREAM)
        finally:
            if _libc.setns(_root_fd, CLONE_NEWNET) != 0:  # pragma: no cover - fatal
                err = ctypes.get_errno()
                raise SystemExit(f"cannot return to the root network namespace: {err}")
    finally:
        os.close(fd)


class Netns:
    """`slots` node namespaces on one bridge; `block` / `heal` change nft rules in them."""

    def __init__(self, seed: int, slots: int) -> None:
        self.tag = f"prisn-f{seed}x{os.getpid()}"
        self.slots = slots
        self.switch = f"{self.tag}-sw"
        self.created: list[str] = []
        self.rules: dict[int, str] = {}

    def ns(self, slot: int) -> str:
        return f"{self.tag}-n{slot}"

    def ip(self, slot: int) -> str:
        return f"{SUBNET}.{10 + slot}"

    def setup(self) -> None:
        _run("ip", "netns", "add", self.switch)
        self.created.append(self.switch)
        _run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.switch, "link", "set", "br0", "up")
        for slot in range(self.slots):
            ns = self.ns(slot)
            _run("ip", "netns", "add", ns)
            self.created.append(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name",
                 f"v{slot}", "netns", self.switch)
            _run("ip", "-n", self.switch, "link", "set", f"v{slot}", "master", "br0")
            _run("ip", "-n", self.switch, "link", "set", f"v{slot}", "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.ip(slot)}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")

    def teardown(self) -> None:
        for ns in reversed(self.created):
            _run("ip", "netns", "del", ns, check=False)
        self.created.clear()

    def exec_prefix(self, slot: int) -> list[str]:
        return ["ip", "netns", "exec", self.ns(slot)]

    # ------------------------------------------------------------------ faults
    def apply(self, cuts: dict[int, dict[str, dict[int, int]]]) -> None:
        """Install rules: ``cuts[slot]["in"|"out"][peer_slot] = loss percent (100: all)``.

        Slots absent from `cuts` are healed. Loss below 100 uses nft's ``numgen random``.
        """
        for slot in range(self.slots):
            spec = cuts.get(slot)
            text = "flush ruleset\n"
            if spec:
                text += "table inet prisnf {\n"
                for chain, direction, field in (("input", "in", "saddr"),
                                                ("output", "out", "daddr")):
                    text += (f"  chain {chain} {{ type filter hook {chain} priority 0; "
                             "policy accept;\n")
                    by_loss: dict[int, list[str]] = {}
                    for peer, loss in spec.get(direction, {}).items():
                        by_loss.setdefault(int(loss), []).append(self.ip(peer))
                    for loss, ips in sorted(by_loss.items()):
                        if loss <= 0:
                            continue
                        rnd = "" if loss >= 100 else f"numgen random mod 100 < {loss} "
                        text += f"    ip {field} {{ {', '.join(ips)} }} {rnd}drop\n"
                    text += "  }\n"
                text += "}\n"
            if self.rules.get(slot, "flush ruleset\n") == text:
                continue
            _run("ip", "netns", "exec", self.ns(slot), "nft", "-f", "-", input=text)
            self.rules[slot] = text

    def heal(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.apply({})


_NETNS_SKIP: list[str | None] = []


def _netns_or_skip() -> None:
    """Skip the calling test unless network namespaces work here (checked once)."""
    if not _NETNS_SKIP:
        _NETNS_SKIP.append(available())
        sweep_stale()
    if _NETNS_SKIP[0] is not None:
        pytest.skip(f"network namespaces unavailable: {_NETNS_SKIP[0]}")
