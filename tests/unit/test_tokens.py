"""API tokens in the state machine: commands, the pure TokenTable inside DeploymentStore, dedup,
expiry, snapshots (old and new formats) and determinism."""

from __future__ import annotations

import itertools
import random
from typing import Any

import cbor2
import pytest

from prisn.fsm import tokens as tokmod
from prisn.fsm.commands import CommandFactory, encode_entry, format_ts
from prisn.fsm.deployments import SNAPSHOT_FORMAT_REFS, DeploymentStore
from prisn.fsm.tokens import (
    MAX_TTL,
    Token,
    TokenFactory,
    TokenTable,
    parse_duration,
    parse_secret,
    secret_hash,
    ts_millis,
    validate_namespaces,
)
from prisn.fsm.validation import ValidationError
from prisn.messages import EntryKind

T0 = 1_700_000_000.0


def seeded_bytes(seed: int):
    rng = random.Random(seed)
    return lambda n: rng.randbytes(n)


class Feeder:
    """Proposes token and deployment commands into a store as consecutive log entries."""

    def __init__(self, store: DeploymentStore | None = None, seed: int = 1) -> None:
        self.store = store if store is not None else DeploymentStore()
        self.now = T0
        self.tf = TokenFactory(clock=lambda: self.now, random_bytes=seeded_bytes(seed))
        ids = (f"id{n:06d}" for n in itertools.count(1))
        self.cf = CommandFactory(clock=lambda: self.now, new_id=lambda: next(ids))
        self.entries: list[tuple[int, int, bytes]] = []
        self.rid = itertools.count(1)

    def run(self, command: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        index = self.store.applied_index + 1
        data = encode_entry("n1", next(self.rid), command)
        self.entries.append((index, EntryKind.COMMAND, data))
        result = self.store.apply(index, EntryKind.COMMAND, data)
        assert result is not None
        return result

    def create(self, key: str | None = None, **body: Any) -> tuple[int, dict[str, Any], str]:
        body.setdefault("role", "developer")
        if body["role"] != "admin":
            body.setdefault("namespaces", ["team"])
        cmd, secret = self.tf.create(body, key=key)
        status, out = self.run(cmd)
        return status, out, secret


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize("text,seconds", [
    ("1s", 1), ("30m", 1800), ("24h", 86400), ("7d", 7 * 86400), ("1h30m", 5400),
    ("365d", MAX_TTL), ("1d12h", 129600),
])
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "366d", "10", "1w", 5, None, "-1h", "1.5h", "h",
                                  "1h 30m", "1s1s1s1s1s", "99999999999d"])
def test_parse_duration_refuses(text: Any) -> None:
    with pytest.raises(ValidationError) as exc:
        parse_duration(text)
    assert exc.value.field == "expires_in"


def test_validate_namespaces() -> None:
    assert validate_namespaces("admin", None) == ["*"]
    assert validate_namespaces("admin", ["*"]) == ["*"]
    assert validate_namespaces("viewer", ["b", "a", "b"]) == ["a", "b"]
    assert validate_namespaces("developer", ["*"]) == ["*"]
    for role, value in [("admin", ["a"]), ("viewer", None), ("viewer", []), ("viewer", "a"),
                        ("viewer", ["*", "a"]), ("viewer", ["bad ns"]),
                        ("viewer", [f"n{i}" for i in range(101)]), ("developer", [1])]:
        with pytest.raises(ValidationError) as exc:
            validate_namespaces(role, value)
        assert exc.value.field == "namespaces", (role, value)


def test_ts_millis_round_trip() -> None:
    for seconds in (0.0, T0, T0 + 0.123, 4_102_444_800.999):
        ts = format_ts(seconds)
        assert tokmod.format_millis(ts_millis(ts)) == ts
    assert ts_millis("2023-11-14T22:13:20.500Z") == 1_700_000_000_500
    for bad in ("2023-11-14T22:13:20Z", "2023-13-14T22:13:20.000Z", 5, None):
        with pytest.raises(tokmod.TokenCommandError):
            ts_millis(bad)


# ---------------------------------------------------------------------- factory
def test_factory_create_keeps_only_the_hash() -> None:
    tf = TokenFactory(clock=lambda: T0, random_bytes=seeded_bytes(3))
    cmd, secret = tf.create({"name": "ci", "role": "viewer", "namespaces": ["a"],
                             "expires_in": "24h"}, key="k1")
    assert secret.startswith("prisn_") and parse_secret(secret) == cmd["id"]
    assert len(cmd["id"]) == 16 and len(secret) == 6 + 16 + 1 + 43
    assert cmd == {"v": 1, "op": "token.create", "key": "k1", "ts": format_ts(T0),
                   "id": cmd["id"], "name": "ci", "role": "viewer", "namespaces": ["a"],
                   "ttl": 86400, "hash": secret_hash(secret)}
    entry = encode_entry("n1", 1, cmd)
    assert secret.encode() not in entry and secret.split("_")[2].encode() not in entry
    # fresh randomness for every create
    cmd2, secret2 = tf.create({"name": "ci2", "role": "admin"})
    assert cmd2["id"] != cmd["id"] and secret2 != secret and cmd2["namespaces"] == ["*"]
    assert cmd2["ttl"] is None and len(cmd2["key"]) == 32


@pytest.mark.parametrize("body,field", [
    ([], "body"), ({"role": "viewer", "namespaces": ["a"]}, "name"),
    ({"name": "x y", "role": "viewer", "namespaces": ["a"]}, "name"),
    ({"name": "x"}, "role"), ({"name": "x", "role": "root"}, "role"),
    ({"name": "x", "role": "viewer"}, "namespaces"),
    ({"name": "x", "role": "admin", "namespaces": ["a"]}, "namespaces"),
    ({"name": "x", "role": "admin", "expires_in": "2y"}, "expires_in"),
    ({"name": "x", "role": "admin", "colour": "red"}, "colour"),
])
def test_factory_refuses(body: Any, field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        TokenFactory().create(body)
    assert exc.value.field == field


def test_parse_secret() -> None:
    good = "prisn_0123456789abcdef_" + "A" * 43
    assert parse_secret(good) == "0123456789abcdef"
    for bad in ("", good + "x", good[:-1], good.replace("prisn_", "prism_"),
                "prisn_0123456789ABCDEF_" + "A" * 43, "prisn_0123456789abcdef-" + "A" * 43):
        assert parse_secret(bad) is None, bad


# ---------------------------------------------------------------------- apply
def test_create_lookup_revoke_delete() -> None:
    f = Feeder()
    status, out, secret = f.create(name="ci", expires_in="1h")
    assert status == 201
    assert out == {"id": out["id"], "name": "ci", "role": "developer", "namespaces": ["team"],
                   "created_at": format_ts(T0), "expires_at": format_ts(T0 + 3600),
                   "revoked": False, "revoked_at": None}
    tok = f.store.token(out["id"])
    assert tok is not None and tok.hash == secret_hash(secret) and tok.public() == out
    assert not tok.expired(T0 + 3599.999) and tok.expired(T0 + 3600)
    assert [t.name for t in f.store.tokens()] == ["ci"]
    # duplicate name
    status, body, _ = f.create(name="ci", role="viewer")
    assert status == 409 and "ci" in body["message"] and f.store.token_count() == 1
    # revoke, twice: the first revocation time stays
    f.now = T0 + 10
    status, rev = f.run(f.tf.revoke(out["id"]))
    assert status == 200 and rev["revoked"] and rev["revoked_at"] == format_ts(T0 + 10)
    f.now = T0 + 20
    assert f.run(f.tf.revoke(out["id"])) == (200, rev)
    assert f.store.token(out["id"]).revoked_at == format_ts(T0 + 10)  # type: ignore[union-attr]
    # delete, then everything is 404
    assert f.run(f.tf.delete(out["id"])) == (204, {})
    assert f.store.token(out["id"]) is None and f.store.token_count() == 0
    for cmd in (f.tf.revoke(out["id"]), f.tf.delete(out["id"])):
        status, body = f.run(cmd)
        assert status == 404 and out["id"] in body["message"]
    # the name is free again
    assert f.create(name="ci")[0] == 201


def test_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokmod, "MAX_TOKENS", 3)
    f = Feeder()
    for i in range(3):
        assert f.create(name=f"t{i}")[0] == 201
    status, body, _ = f.create(name="t3")
    assert status == 409 and "full" in body["message"] and f.store.token_count() == 3


def test_idempotency_key_dedups_token_writes() -> None:
    f = Feeder()
    s1, first, _ = f.create(key="k", name="ci")
    h = f.store.state_hash()
    # a retry builds a fresh id and secret; the stored result (first id) comes back
    s2, again, _ = f.create(key="k", name="ci")
    assert (s1, s2) == (201, 201) and again == first and f.store.token_count() == 1
    assert f.store.state_hash() == h
    status, body, _ = f.create(key="k", name="other")
    assert status == 422 and f.store.token(first["id"]) is not None
    assert f.store.state_hash() == h
    r1 = f.run(f.tf.revoke(first["id"], key="r"))
    f.now += 5
    assert f.run(f.tf.revoke(first["id"], key="r")) == r1


def test_idempotency_key_reused_on_another_token_is_422() -> None:
    """Issue 17 item 6: the target id is part of a revoke's or delete's fingerprint, so a
    key reused on a different token answers 422 and leaves that token as it was."""
    f = Feeder()
    _, a, _ = f.create(name="a")
    _, b, _ = f.create(name="b")
    assert f.run(f.tf.revoke(a["id"], key="rv"))[0] == 200
    h = f.store.state_hash()
    status, body = f.run(f.tf.revoke(b["id"], key="rv"))
    assert status == 422 and "different request" in body["message"], body
    tok = f.store.token(b["id"])
    assert tok is not None and tok.revoked_at is None and f.store.state_hash() == h
    assert f.run(f.tf.delete(b["id"], key="rv"))[0] == 422  # another op: also different
    assert f.run(f.tf.delete(a["id"], key="del"))[0] == 204
    h = f.store.state_hash()
    assert f.run(f.tf.delete(b["id"], key="del"))[0] == 422
    assert f.store.token(b["id"]) is not None and f.store.state_hash() == h
    assert f.run(f.tf.delete(a["id"], key="del"))[0] == 204  # the same request: first answer


def _bad(**over: Any) -> dict[str, Any]:
    cmd = {"v": 1, "op": "token.create", "key": "kb", "ts": format_ts(T0),
           "id": "00112233445566aa", "name": "bad", "role": "viewer", "namespaces": ["a"],
           "ttl": None, "hash": "0" * 64}
    cmd.update(over)
    return {k: v for k, v in cmd.items() if v != "<drop>"}


@pytest.mark.parametrize("cmd", [
    _bad(op="token.explode"), _bad(id="XYZ"), _bad(id="<drop>"), _bad(name="no way"),
    _bad(role="root"), _bad(namespaces=[]), _bad(namespaces="a"), _bad(ttl=0),
    _bad(ttl=True), _bad(ttl=MAX_TTL + 1), _bad(hash="abc"), _bad(hash="<drop>"),
    _bad(ts="yesterday"), _bad(ts="<drop>"), _bad(op="token.revoke", id=7),
    _bad(v=2),
])
def test_bad_token_commands_are_400_and_change_nothing(cmd: dict[str, Any]) -> None:
    f = Feeder()
    f.create(name="keep")
    h = f.store.state_hash()
    status, body = f.run(cmd)
    assert status == 400 and body["error"] == "Bad Request" and body["message"], body
    assert f.store.state_hash() != h  # the dedup table remembers the key ...
    assert [t.name for t in f.store.tokens()] == ["keep"]  # ... but the tokens did not change


# ---------------------------------------------------------------------- snapshots
def _mixed_workload(f: Feeder, rng: random.Random, n: int) -> None:
    ids: list[str] = []
    for _ in range(n):
        op = rng.choice(["tcreate", "tcreate", "trevoke", "tdelete", "dcreate", "dscale"])
        key = f"key{rng.randrange(n)}" if rng.random() < 0.3 else None
        f.now += rng.randrange(1, 5000) / 1000
        if op == "tcreate":
            role = rng.choice(["admin", "developer", "viewer"])
            body: dict[str, Any] = {"name": f"t{rng.randrange(30)}", "role": role}
            if role != "admin":
                body["namespaces"] = rng.choice([["*"], ["a"], ["a", "b"]])
            if rng.random() < 0.5:
                body["expires_in"] = rng.choice(["30m", "24h", "7d"])
            status, out, _ = f.create(key=key, **body)
            if status == 201:
                ids.append(out["id"])
        elif op in ("trevoke", "tdelete") and ids:
            tid = rng.choice(ids)
            f.run(f.tf.revoke(tid, key=key) if op == "trevoke" else f.tf.delete(tid, key=key))
        elif op == "dcreate":
            f.run(f.cf.create({"name": f"d{rng.randrange(20)}", "source": "x",
                               "namespace": rng.choice(["a", "b", "c"])}, key=key))
        elif op == "dscale":
            f.run(f.cf.scale(f"d{rng.randrange(20)}", {"replicas": rng.randrange(5)},
                             namespace=rng.choice(["a", "b", "c"]), key=key))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_two_stores_fed_the_same_entries_agree(seed: int) -> None:
    a = Feeder(DeploymentStore(dedup_capacity=50), seed=seed)
    _mixed_workload(a, random.Random(seed), 400)
    assert a.store.token_count() > 0, f"seed {seed}"
    b = DeploymentStore(dedup_capacity=50)
    for index, kind, data in a.entries:
        b.apply(index, kind, data)
    assert b.state_hash() == a.store.state_hash(), f"seed {seed}"
    assert b.snapshot() == a.store.snapshot(), f"seed {seed}"
    assert [t.row() for t in b.tokens()] == [t.row() for t in a.store.tokens()]
    c = Feeder(DeploymentStore(dedup_capacity=50), seed=seed + 100)
    _mixed_workload(c, random.Random(seed + 100), 400)
    assert c.store.state_hash() != a.store.state_hash(), f"seed {seed}"


def test_state_hash_covers_tokens() -> None:
    f = Feeder()
    h0 = f.store.state_hash()
    _, out, _ = f.create(name="ci")
    h1 = f.store.state_hash()
    f.run(f.tf.revoke(out["id"]))
    h2 = f.store.state_hash()
    assert len({h0, h1, h2}) == 3
    # the token table alone (no dedup rows differ) changes the hash
    g = DeploymentStore()
    g.restore(f.store.snapshot())
    snap = cbor2.loads(f.store.snapshot())
    snap["tokens"][0]["revoked_at"] = None
    g.restore(cbor2.dumps(snap, canonical=True))
    assert g.state_hash() != h2


@pytest.mark.parametrize("seed", [4, 5])
def test_snapshot_restore_round_trip_with_tokens(seed: int) -> None:
    f = Feeder(DeploymentStore(dedup_capacity=40), seed=seed)
    _mixed_workload(f, random.Random(seed), 300)
    snap = f.store.snapshot()
    decoded = cbor2.loads(snap)
    assert decoded["format"] == SNAPSHOT_FORMAT_REFS and decoded["tokens"], f"seed {seed}"
    assert all("secret" not in row for row in decoded["tokens"])
    other = DeploymentStore(dedup_capacity=40)
    other.restore(snap)
    assert other.snapshot() == snap and other.state_hash() == f.store.state_hash()
    for tok in f.store.tokens():
        assert other.token(tok.id) == tok
    index, encode = f.store.snapshot_capture()
    assert index == f.store.applied_index and encode() == snap
    # both continue identically
    done = len(f.entries)
    _mixed_workload(f, random.Random(seed + 50), 100)
    for index, kind, data in f.entries[done:]:
        other.apply(index, kind, data)
    assert other.state_hash() == f.store.state_hash(), f"seed {seed}"


def test_snapshots_are_format_3_with_or_without_tokens() -> None:
    f = Feeder()
    f.run(f.cf.create({"name": "web", "source": "x"}))
    snap = cbor2.loads(f.store.snapshot())
    assert snap["format"] == SNAPSHOT_FORMAT_REFS and snap["tokens"] == []
    _, out, _ = f.create(name="t")
    assert len(cbor2.loads(f.store.snapshot())["tokens"]) == 1
    f.run(f.tf.delete(out["id"]))
    assert cbor2.loads(f.store.snapshot())["tokens"] == []


def test_old_format_1_snapshot_restores_with_no_tokens() -> None:
    """A snapshot written before tokens existed (format 1, no "tokens" key) still reads."""
    dep = {"id": "i1", "name": "web", "namespace": "default", "type": "job", "runtime": None,
           "source": "x", "args": [], "env": {}, "port": 0, "replicas": 1, "schedule": None,
           "generation": 1, "created_at": format_ts(T0), "updated_at": format_ts(T0)}
    old = cbor2.dumps({"format": 1, "applied": 7, "deployments": [dep], "dedup": []},
                      canonical=True)
    f = Feeder()
    f.create(name="gone")
    f.store.restore(old)
    assert f.store.applied_index == 7 and f.store.token_count() == 0
    assert f.store.get(None, "web") == dep
    again = DeploymentStore()
    again.restore(f.store.snapshot())  # rewritten as format 3: the same state
    assert again.state_hash() == f.store.state_hash() and again.applied_index == 7


def test_old_format_2_snapshot_with_tokens_restores() -> None:
    f = Feeder()
    f.run(f.cf.create({"name": "web", "source": "x"}))
    f.create(name="t")
    snap = cbor2.loads(f.store.snapshot())
    snap["format"] = 2  # format 2: bodies in full, tokens present
    snap["dedup"] = [[k, fp, st, f.store.get(*body) if type(body) is list else body]
                     for k, fp, st, body in snap["dedup"]]
    old = DeploymentStore()
    old.restore(cbor2.dumps(snap, canonical=True))
    assert old.state_hash() == f.store.state_hash() and old.token_count() == 1


@pytest.mark.parametrize("mutate", [
    lambda s: s.pop("tokens"),
    lambda s: s.update(tokens="x"),
    lambda s: s["tokens"][0].update(hash="zz"),
    lambda s: s["tokens"][0].update(role="root"),
    lambda s: s["tokens"][0].pop("name"),
    lambda s: s["tokens"][0].update(expires_ms=None),
    lambda s: s["tokens"].append(dict(s["tokens"][0])),
    lambda s: s["tokens"][0].update(created_at="now"),
])
def test_restore_refuses_bad_token_rows_and_keeps_state(mutate: Any) -> None:
    f = Feeder()
    f.create(name="ci", expires_in="1h")
    good = f.store.snapshot()
    snap = cbor2.loads(good)
    mutate(snap)
    target = Feeder(seed=9)
    target.create(name="keep")
    h = target.store.state_hash()
    with pytest.raises(ValueError):
        target.store.restore(cbor2.dumps(snap, canonical=True))
    assert target.store.state_hash() == h



@pytest.mark.parametrize("case,mutate", [
    ("namespaces-string", lambda row: row.update(namespaces="team")),  # was list("team")
    ("namespaces-unsorted", lambda row: row.update(namespaces=["team", "a"])),
    ("namespaces-duplicate", lambda row: row.update(namespaces=["team", "team"])),
    ("expires-ms-float", lambda row: row.update(expires_ms=float(row["expires_ms"]))),
    ("expires-ms-bool", lambda row: row.update(expires_ms=True)),
    ("expires-ms-mismatch", lambda row: row.update(expires_ms=row["expires_ms"] + 1)),
    ("expires-ms-without-at", lambda row: row.update(expires_at=None)),
    ("hash-bytes", lambda row: row.update(hash=b"0" * 64)),
    ("revoked-at-int", lambda row: row.update(revoked_at=5)),
    ("extra-key", lambda row: row.update(secret="prisn_x")),
    ("row-list", None),
])
def test_restore_checks_token_row_types_strictly(case: str, mutate: Any) -> None:
    """Token rows are checked like the rest of a snapshot: each value of its exact type and
    consistent (a string of namespaces was split into letters, a float expiry accepted)."""
    f = Feeder()
    f.create(name="ci", expires_in="1h", namespaces=["a", "team"])
    snap = cbor2.loads(f.store.snapshot())
    if mutate is None:
        snap["tokens"][0] = list(snap["tokens"][0].items())
    else:
        mutate(snap["tokens"][0])
    target = Feeder(seed=9)
    target.create(name="keep")
    h = target.store.state_hash()
    with pytest.raises(ValueError):
        target.store.restore(cbor2.dumps(snap, canonical=True))
    assert target.store.state_hash() == h, case


def test_restore_refuses_more_tokens_than_apply_allows(monkeypatch: pytest.MonkeyPatch) -> None:
    f = Feeder()
    f.create(name="a1")
    f.create(name="a2")
    snap = f.store.snapshot()
    monkeypatch.setattr(tokmod, "MAX_TOKENS", 1)
    with pytest.raises(ValueError, match="more than 1 tokens"):
        DeploymentStore().restore(snap)


def test_token_row_round_trip() -> None:
    tok = Token(id="0011223344556677", name="n", role="viewer", namespaces=("a", "b"),
                hash="a" * 64, created_at=format_ts(T0), expires_at=None, expires_ms=None,
                revoked_at=None)
    assert Token.from_row(tok.row()) == tok
    table = TokenTable.from_rows([tok.row()])
    assert table.get(tok.id) == tok and len(table) == 1


# ---------------------------------------------------------------------- listing by namespaces
@pytest.mark.parametrize("seed", [11, 12])
def test_list_restricted_to_namespaces_matches_a_filter(seed: int) -> None:
    rng = random.Random(seed)
    f = Feeder()
    for i in range(200):
        f.run(f.cf.create({"name": f"d{rng.randrange(60):02d}", "source": "x",
                           "namespace": rng.choice("abcde"),
                           "port": rng.choice([0, 2000])}, key=f"k{i}"))
    everything, _ = f.store.list(limit=1000)
    for allowed in ({"a"}, {"a", "c"}, {"b", "d", "e"}, {"zz"}, set()):
        for typ in (None, "service"):
            want = [d for d in everything if d["namespace"] in allowed
                    and (typ is None or d["type"] == typ)]
            for limit, offset in ((1000, 0), (7, 0), (7, 5), (3, len(want) - 1)):
                page, total = f.store.list(type=typ, limit=limit, offset=max(offset, 0),
                                           namespaces=allowed)
                assert total == len(want), (seed, allowed, typ)
                assert page == want[max(offset, 0):max(offset, 0) + limit], (seed, allowed)
    # an explicit namespace wins over the restriction (the API checks it first)
    page, total = f.store.list(namespace="a", limit=1000, namespaces={"b"})
    assert total == len([d for d in everything if d["namespace"] == "a"])
