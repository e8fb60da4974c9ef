"""Bounded stored state (issue 17 item 4): namespace usage and the dedup byte bound."""

from __future__ import annotations

from prisn.fsm.deployments import DeploymentStore, deployment_size
from tests.feeder import Feeder

BIG = "x" * 100_000


def test_namespace_usage_follows_every_change_and_restores() -> None:
    f = Feeder()
    assert f.store.usage("default") == (0, 0)
    f.create(name="a", source=BIG)
    f.create(name="b", source="small")
    f.create(name="c", source="s", namespace="other")
    n, used = f.store.usage("default")
    assert n == 2 and used == sum(deployment_size(f.store.get("default", x)) for x in "ab")
    assert used > len(BIG)
    f.run(f.cf.patch("a", {"source": "tiny"}))
    assert f.store.usage("default")[1] < 1000
    f.run(f.cf.delete("b"))
    f.run(f.cf.delete("a"))
    assert f.store.usage("default") == (0, 0)
    assert f.store.usage("other")[0] == 1
    g = DeploymentStore()
    g.restore(f.store.snapshot())
    assert g.usage("other") == f.store.usage("other") and g.usage("default") == (0, 0)


def test_dedup_is_bounded_by_bytes_and_deleting_frees_the_answers() -> None:
    """25 creates of 100 kB each with a 1 MB dedup budget: the table keeps only the newest
    answers that fit, so deleting the deployments leaves at most the budget pinned."""
    f = Feeder(DeploymentStore(dedup_max_bytes=1_000_000))
    for i in range(25):
        assert f.create(name=f"d{i}", source=BIG, key=f"k{i}")[0] == 201
    keys, used = f.store.dedup_usage()
    assert used <= 1_000_000 and 5 <= keys < 25
    for i in range(25):
        f.run(f.cf.delete(f"d{i}", key=f"del{i}"))
    assert f.store.dedup_usage()[1] <= 1_000_000
    # the newest create is still remembered (a retry gets its first answer) ...
    assert f.create(name="d24", source=BIG, key="k24")[0] == 201
    # ... the oldest is not: the retry is a fresh create
    assert f.create(name="d0", source=BIG, key="k0")[1]["generation"] == 1


def test_a_restored_store_trims_to_the_same_keys_as_one_that_applied() -> None:
    """A snapshot from a node that kept more answers (an older version, no byte bound) is
    trimmed at restore to exactly the keys a node with the bound kept while applying."""
    loose = Feeder(DeploymentStore())
    tight = Feeder(DeploymentStore(dedup_max_bytes=700_000))
    for fd in (loose, tight):
        for i in range(12):
            fd.create(name=f"d{i}", source=BIG if i % 3 else "s", key=f"k{i}")
    restored = DeploymentStore(dedup_max_bytes=700_000)
    restored.restore(loose.store.snapshot())
    assert restored.dedup_usage() == tight.store.dedup_usage()
    assert restored.state_hash() == tight.store.state_hash()
