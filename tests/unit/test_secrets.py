"""The secrets table inside `DeploymentStore` and the sealing of values (issue 15): apply,
validation, bounds, dedup across fresh nonces, deployment references, snapshots (golden),
encryption round trip, wrong key, associated-data binding, no plaintext in log or snapshot."""

from __future__ import annotations

import hashlib
import itertools
import random

import cbor2
import pytest

from prisn.fsm import secrets as secrets_mod
from prisn.fsm.commands import CommandFactory, encode_entry
from prisn.fsm.deployments import SNAPSHOT_FORMAT_REFS, SNAPSHOT_FORMAT_TABLES, DeploymentStore
from prisn.fsm.secrets import (
    MAX_KEYS,
    MAX_VALUE_BYTES,
    SecretError,
    SecretFactory,
    TooLarge,
    secret_env,
)
from prisn.fsm.validation import ValidationError
from prisn.messages import EntryKind
from prisn.secretbox import SecretBox, SecretDecryptError, opener

T0 = 1_700_000_000.0
KEY_A = bytes(range(1, 33))
KEY_B = bytes(range(2, 34))
PLAIN = "hunter2-very-secret-value"


class Log:
    """Feeds commands to a store as consecutive entries (the artifacts tests' helper)."""

    def __init__(self, box: SecretBox | None = None) -> None:
        self.store = DeploymentStore()
        self.now = T0
        ids = (f"id{n:06d}" for n in itertools.count(1))
        self.cf = CommandFactory(clock=lambda: self.now, new_id=lambda: next(ids))
        sids = (f"s{n:06d}" for n in itertools.count(1))
        self.sf = SecretFactory(box, clock=lambda: self.now, new_id=lambda: next(sids))
        self.entries: list[bytes] = []

    def run(self, cmd: dict) -> tuple[int, dict]:
        index = self.store.applied_index + 1
        data = encode_entry("n1", index, cmd)
        self.entries.append(data)
        result = self.store.apply(index, EntryKind.COMMAND, data)
        assert result is not None
        return result

    def create(self, name: str, data: dict, ns: str | None = None, key: str | None = None):
        return self.run(self.sf.create({"name": name, "data": data}, namespace=ns, key=key))


def test_create_rotate_delete_and_answers_hold_no_value() -> None:
    log = Log()
    st, body = log.create("db", {"PASSWORD": PLAIN, "USER": "app"})
    assert st == 201
    assert body == {"id": "s000002", "name": "db", "namespace": "default",
                    "keys": ["PASSWORD", "USER"], "version": 1,
                    "created_at": "2023-11-14T22:13:20.000Z",
                    "updated_at": "2023-11-14T22:13:20.000Z"}
    assert log.create("db", {"X": "1"})[0] == 409
    log.now += 1
    st, body = log.run(log.sf.update("db", {"data": {"PASSWORD": "new"}}))
    assert st == 200 and body["version"] == 2 and body["keys"] == ["PASSWORD"]
    assert body["created_at"] != body["updated_at"]
    sec = log.store.secret("default", "db")
    assert sec is not None and dict(sec.data) == {"PASSWORD": "new"}
    assert log.run(log.sf.update("nope", {"data": {"A": "1"}}))[0] == 404
    assert log.run(log.sf.delete("db")) == (204, {})
    assert log.run(log.sf.delete("db"))[0] == 404
    assert log.store.secret("default", "db") is None


def test_list_is_ordered_and_scoped_by_namespace() -> None:
    log = Log()
    for ns, name in (("b", "z"), ("a", "y"), ("a", "x")):
        assert log.create(name, {"K": "v"}, ns=ns)[0] == 201
    page, total = log.store.secrets(None, 10, 0)
    assert [(s.namespace, s.name) for s in page] == [("a", "x"), ("a", "y"), ("b", "z")]
    assert total == 3
    page, total = log.store.secrets(["b"], 10, 0)
    assert [s.name for s in page] == ["z"] and total == 1
    page, total = log.store.secrets(None, 1, 1)
    assert [s.name for s in page] == ["y"] and total == 3


@pytest.mark.parametrize("data", [
    {}, {"1BAD": "x"}, {"A-B": "x"}, {"A": 1}, {"A": None}, {"A": "x\x00y"}, "x", [],
])
def test_factory_refuses_bad_data(data) -> None:  # noqa: ANN001
    with pytest.raises(ValidationError):
        SecretFactory().create({"name": "s", "data": data})


def test_factory_refuses_bad_bodies() -> None:
    sf = SecretFactory()
    for body in ({"name": "bad name", "data": {"A": "1"}}, {"data": {"A": "1"}},
                 {"name": "s", "data": {"A": "1"}, "extra": 1}, [],
                 {"name": "s", "namespace": "x", "data": {"A": "1"}}):
        with pytest.raises(ValidationError):
            sf.create(body, namespace="y" if body and isinstance(body, dict)
                      and body.get("namespace") else None)
    with pytest.raises(ValidationError):
        sf.update("s", {"name": "other", "data": {"A": "1"}})


def test_bounds_are_413_at_the_proposer_and_in_the_state_machine() -> None:
    sf = SecretFactory()
    with pytest.raises(TooLarge):
        sf.create({"name": "s", "data": {f"K{i}": "v" for i in range(MAX_KEYS + 1)}})
    with pytest.raises(TooLarge):
        sf.create({"name": "s", "data": {"K": "x" * (MAX_VALUE_BYTES + 1)}})
    log = Log()
    cmd = log.sf.create({"name": "s", "data": {"K": "v"}})
    cmd["data"] = {"K": "x" * (MAX_VALUE_BYTES + 1)}  # a proposer that did not check
    st, err = log.run(cmd)
    assert st == 413 and "over the limit" in err["message"]
    cmd = log.sf.create({"name": "s", "data": {"K": "v"}})
    cmd["data"] = {f"K{i}": "v" for i in range(MAX_KEYS + 1)}
    assert log.run(cmd)[0] == 413
    assert log.store.secret("default", "s") is None


def test_namespace_and_cluster_bounds_are_507(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secrets_mod, "MAX_PER_NAMESPACE", 2)
    monkeypatch.setattr(secrets_mod, "MAX_SECRETS", 3)
    log = Log()
    assert log.create("a", {"K": "v"})[0] == 201
    assert log.create("b", {"K": "v"})[0] == 201
    st, err = log.create("c", {"K": "v"})
    assert st == 507 and "limit" in err["message"] and err["error"] == "Insufficient Storage"
    assert log.create("c", {"K": "v"}, ns="other")[0] == 201
    st, err = log.create("d", {"K": "v"}, ns="third")
    assert st == 507 and "cluster" in err["message"]


def test_idempotent_retry_with_fresh_nonces_and_422_for_other_values() -> None:
    log = Log(SecretBox(KEY_A))
    first = log.create("db", {"P": PLAIN}, key="k1")
    assert first[0] == 201
    again = log.create("db", {"P": PLAIN}, key="k1")  # sealed anew: other bytes, same request
    assert again == first
    st, _ = log.create("db", {"P": "other"}, key="k1")
    assert st == 422
    log.run(log.sf.update("db", {"data": {"P": "v2"}}, key="k2"))
    assert log.run(log.sf.update("db", {"data": {"P": "v2"}}, key="k2"))[1]["version"] == 2


def test_garbage_secret_commands_never_fail_a_node() -> None:
    rng = random.Random(15)
    values: list[object] = [None, 0, True, "", "x", b"", b"\x01" * 40, [], {}, {"A": 1},
                            {"bad key": "v"}, {"A": "v"}, {"A": b"\x01" * 30}, "2023-11-14",
                            "bad name", "2023-11-14T22:13:20.000Z", b"\x00" * 16]
    log = Log()
    for _ in range(500):
        cmd = rng.choice([log.sf.create({"name": "s", "data": {"A": "v"}}),
                          log.sf.update("s", {"data": {"A": "w"}}), log.sf.delete("s")])
        for field in ("ns", "name", "data", "digest", "ts", "id", "op"):
            if rng.random() < 0.3:
                if rng.random() < 0.2:
                    cmd.pop(field, None)
                else:
                    cmd[field] = rng.choice(values)
        before = log.store.secrets()
        st, body = log.run(cmd)
        assert st in (200, 201, 204, 400, 404, 409, 413), (st, body)
        if st >= 400:
            assert log.store.secrets() == before
            assert body["error"] and body["message"]


# ---------------------------------------------------------------------- deployments
def test_deployment_secrets_must_exist_and_pin_the_secret() -> None:
    log = Log()
    st, err = log.run(log.cf.create({"name": "web", "source": "x", "secrets": ["db"]}))
    assert st == 400 and "secret default/db does not exist" in err["message"]
    assert log.store.get("default", "web") is None
    log.create("db", {"P": "v"})
    log.create("db", {"P": "v"}, ns="other")
    st, dep = log.run(log.cf.create({"name": "web", "source": "x", "secrets": ["db"]}))
    assert st == 201 and dep["secrets"] == ["db"]
    st, err = log.run(log.sf.delete("db"))
    assert st == 409 and "used by 1 deployment" in err["message"]
    assert log.run(log.sf.delete("db", namespace="other"))[0] == 204  # another namespace
    st, dep = log.run(log.cf.patch("web", {"secrets": None}))
    assert st == 200 and "secrets" not in dep
    assert log.run(log.sf.delete("db"))[0] == 204


def test_deployment_without_secrets_is_stored_as_before() -> None:
    log = Log()
    st, dep = log.run(log.cf.create({"name": "web", "source": "x", "secrets": []}))
    assert st == 201 and "secrets" not in dep
    assert cbor2.loads(log.store.snapshot())["format"] == SNAPSHOT_FORMAT_REFS


@pytest.mark.parametrize("value", [["a", "a"], ["bad name"], "db", [1], [f"s{i}" for i in range(33)]])
def test_deployment_secrets_field_is_validated(value) -> None:  # noqa: ANN001
    with pytest.raises(ValidationError):
        CommandFactory().create({"name": "web", "source": "x", "secrets": value})


def test_secret_env_merges_in_order_and_opens_sealed_values() -> None:
    box = SecretBox(KEY_A)
    log = Log(box)
    log.create("a", {"X": "1", "Y": "a"})
    log.create("b", {"Y": "b", "PEM": "-----BEGIN-----\nabc\n-----END-----\n"})
    env = secret_env(log.store, "default", ["a", "b"], opener(box))
    assert env == {"X": "1", "Y": "b", "PEM": "-----BEGIN-----\nabc\n-----END-----\n"}
    with pytest.raises(SecretError):
        secret_env(log.store, "default", ["missing"], opener(box))
    with pytest.raises(SecretDecryptError):
        secret_env(log.store, "default", ["a"], opener(SecretBox(KEY_B)))
    with pytest.raises(SecretDecryptError, match="no cluster key"):
        secret_env(log.store, "default", ["a"], opener(None))


# ---------------------------------------------------------------------- snapshots
def _filled(box: SecretBox | None) -> Log:
    log = Log(box)
    log.create("db", {"PASSWORD": PLAIN, "USER": "app"})
    log.create("api", {"TOKEN": "t0"}, ns="team")
    log.run(log.cf.create({"name": "web", "source": "x", "secrets": ["db"]}))
    log.now += 2
    log.run(log.sf.update("db", {"data": {"PASSWORD": PLAIN + "2", "USER": "app"}}))
    return log


def test_snapshot_round_trip_and_determinism() -> None:
    log = _filled(SecretBox(KEY_A))
    blob = log.store.snapshot()
    snap = cbor2.loads(blob)
    assert snap["format"] == SNAPSHOT_FORMAT_TABLES and set(snap["tables"]) == {"secrets"}
    other = DeploymentStore()
    other.restore(blob)
    assert other.snapshot() == blob and other.state_hash() == log.store.state_hash()
    replay = DeploymentStore()
    for i, data in enumerate(log.entries, 1):
        replay.apply(i, EntryKind.COMMAND, data)
    assert replay.state_hash() == log.store.state_hash()
    # references are derived again: the restored store still refuses to delete db
    assert other.apply(other.applied_index + 1, EntryKind.COMMAND, encode_entry(
        "n1", 1, log.sf.delete("db")))[0] == 409


def test_golden_format_4_with_secrets() -> None:
    """Persisted bytes must not change by accident (plain values: no random nonce)."""
    blob = _filled(None).store.snapshot()
    rows = cbor2.loads(blob)["tables"]["secrets"]
    assert rows[0] == ["default", "db", "s000002", 2, "2023-11-14T22:13:20.000Z",
                       "2023-11-14T22:13:22.000Z", {"USER": "app", "PASSWORD": PLAIN + "2"}]
    assert hashlib.sha256(blob).hexdigest() == GOLDEN_SECRETS


GOLDEN_SECRETS = "5f174d8bf6dd33874e43b7cd14c6e03468d6679456e1a11ab19490e559509cd5"  # secrets under "tables"


@pytest.mark.parametrize("mutate", [
    lambda s: s["tables"].update(secrets=[]),  # a deployment names a missing secret
    lambda s: s["tables"]["secrets"].append(list(s["tables"]["secrets"][0])),  # duplicate
    lambda s: s["tables"]["secrets"][0].__setitem__(3, 0),  # version
    lambda s: s["tables"]["secrets"][0].__setitem__(1, "bad name"),
    lambda s: s["tables"]["secrets"][0].__setitem__(6, {"A": 1}),
    lambda s: s["tables"]["secrets"][0].__setitem__(6, {}),
    lambda s: s["tables"]["secrets"][0].pop(),
    lambda s: s["deployments"][0].update(secrets=[]),
    lambda s: s["deployments"][0].update(secrets=["db", "db"]),
])
def test_restore_refuses_bad_secret_state_and_keeps_state(mutate) -> None:  # noqa: ANN001
    log = _filled(None)
    snap = cbor2.loads(log.store.snapshot())
    mutate(snap)
    h = log.store.state_hash()
    with pytest.raises(ValueError):
        log.store.restore(cbor2.dumps(snap, canonical=True))
    assert log.store.state_hash() == h


# ---------------------------------------------------------------------- encryption
def test_seal_open_round_trip_and_fresh_nonces() -> None:
    box = SecretBox(KEY_A)
    a = box.seal("ns", "db", "P", PLAIN)
    b = box.seal("ns", "db", "P", PLAIN)
    assert a != b and PLAIN.encode() not in a
    assert box.open("ns", "db", "P", a) == PLAIN == box.open("ns", "db", "P", b)
    assert SecretBox(KEY_A).open("ns", "db", "P", a) == PLAIN  # another node, same key
    assert "hunter" not in repr(box)


def test_wrong_key_and_tampering_fail() -> None:
    a = SecretBox(KEY_A).seal("ns", "db", "P", PLAIN)
    with pytest.raises(SecretDecryptError, match="does not decrypt"):
        SecretBox(KEY_B).open("ns", "db", "P", a)
    flipped = a[:-1] + bytes([a[-1] ^ 1])
    with pytest.raises(SecretDecryptError):
        SecretBox(KEY_A).open("ns", "db", "P", flipped)
    with pytest.raises(SecretDecryptError):
        SecretBox(KEY_A).open("ns", "db", "P", b"\x02" + a[1:])
    with pytest.raises(SecretDecryptError):
        SecretBox(KEY_A).open("ns", "db", "P", a[:10])


@pytest.mark.parametrize("place", [("ns", "db", "Q"), ("ns", "other", "P"), ("ns2", "db", "P")])
def test_associated_data_binds_namespace_name_and_key(place) -> None:  # noqa: ANN001
    box = SecretBox(KEY_A)
    a = box.seal("ns", "db", "P", PLAIN)
    with pytest.raises(SecretDecryptError):
        box.open(*place, a)


def test_swapped_values_in_the_table_do_not_open() -> None:
    """A value moved to another key (someone editing the stored state) does not decrypt."""
    box = SecretBox(KEY_A)
    log = Log(box)
    log.create("db", {"A": "alpha", "B": "beta"})
    snap = cbor2.loads(log.store.snapshot())
    data = snap["tables"]["secrets"][0][6]
    data["A"], data["B"] = data["B"], data["A"]
    other = DeploymentStore()
    other.restore(cbor2.dumps(snap, canonical=True))
    with pytest.raises(SecretDecryptError):
        secret_env(other, "default", ["db"], opener(box))


def test_plaintext_never_in_the_encoded_command_or_the_snapshot() -> None:
    box = SecretBox(KEY_A)
    log = _filled(box)
    needle = PLAIN.encode()
    assert all(needle not in entry for entry in log.entries)
    blob = log.store.snapshot()
    assert needle not in blob and b"hunter2" not in blob
    assert b"t0" not in cbor2.dumps(cbor2.loads(blob)["tables"]["secrets"][1][6])
    assert secret_env(log.store, "default", ["db"], opener(box))["PASSWORD"] == PLAIN + "2"
    # without a key the same values are in the clear (what the start-up warning says)
    plain = _filled(None)
    assert any(needle in entry for entry in plain.entries)
    assert needle in plain.store.snapshot()


def test_secrets_survive_scale_and_go_with_replace_and_combine_with_an_artifact() -> None:
    from prisn.fsm.artifacts import ArtifactFactory
    from prisn.workloads.artifacts import ArtifactFile, digest_of, pack

    log = Log()
    log.create("db", {"P": "v"})
    log.create("api", {"T": "t"})
    data = pack([ArtifactFile("main.py", False, b"print(1)\n")])
    assert log.run(ArtifactFactory(clock=lambda: log.now).put(digest_of(data), data))[0] == 201
    st, dep = log.run(log.cf.create({"name": "web", "source": "main.py", "port": 8080,
                                     "artifact": digest_of(data), "secrets": ["db", "api"]}))
    assert st == 201 and list(dep)[-2:] == ["artifact", "secrets"]
    st, dep = log.run(log.cf.scale("web", {"replicas": 3}))
    assert st == 200 and dep["secrets"] == ["db", "api"] and list(dep)[-1] == "secrets"
    st, same = log.run(log.cf.patch("web", {"secrets": ["db", "api"]}))
    assert st == 200 and same["generation"] == dep["generation"]  # no change
    blob = log.store.snapshot()
    other = DeploymentStore()
    other.restore(blob)
    assert other.snapshot() == blob and other.get("default", "web") == dep
    assert log.run(log.sf.delete("api"))[0] == 409
    st, dep = log.run(log.cf.replace("web", {"source": "main.py", "artifact": digest_of(data)}))
    assert st == 200 and "secrets" not in dep
    assert log.run(log.sf.delete("api"))[0] == 204
    assert log.run(log.cf.delete("web"))[0] == 204
    assert log.run(log.sf.delete("db"))[0] == 204


@pytest.mark.parametrize("seed", range(4))
def test_fuzzed_secret_sections_restore_or_raise_value_error(seed: int) -> None:
    """Random type swaps in the secrets section and the rows: restore accepts or raises
    ValueError (never anything else) and then leaves the state untouched."""
    rng = random.Random(1500 + seed)
    base = cbor2.loads(_filled(SecretBox(KEY_A)).store.snapshot())
    samples: list[object] = [
        None, 0, -1, 2**70, True, 1.5, "", "x" * 300, b"", b"\x01" * 40, [], {}, [[]], {"A": 1},
        {"A": b"\x01"}, {1: "v"}, {"A": "v" * (MAX_VALUE_BYTES + 1)}, "bad name", ["a"]]
    for _ in range(150):
        snap = cbor2.loads(cbor2.dumps(base))
        rows = snap["tables"]["secrets"]
        row = rows[rng.randrange(len(rows))]
        what = rng.random()
        if what < 0.7:
            row[rng.randrange(len(row))] = rng.choice(samples)
        elif what < 0.85:
            row.append(rng.choice(samples))
        else:
            snap["tables"]["secrets"] = rng.choice(samples)
        store = DeploymentStore()
        h = store.state_hash()
        try:
            blob = cbor2.dumps(snap, canonical=True)
        except Exception:  # noqa: BLE001 - an undumpable sample: nothing to restore
            continue
        try:
            store.restore(blob)
        except ValueError:
            assert store.state_hash() == h
            continue
        store.snapshot()
        store.secrets()
