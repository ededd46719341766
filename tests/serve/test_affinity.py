"""The affinity key and the consistent-hash ring (no Ray needed)."""

from __future__ import annotations

from ember.cluster.affinity import HashRing, affinity_key, key_from_body

KEYS = [f"session-{i}" for i in range(4000)]


def test_key_header_wins_and_isolation_scopes_it() -> None:
    assert affinity_key(None, None) is None
    assert affinity_key(None, {"prompt": "x"}) is None
    assert affinity_key(None, {"prompt_cache_key": "a"}) == "a"
    assert affinity_key("h", {"prompt_cache_key": "a"}) == "h"
    assert affinity_key("h", {"prompt_cache_isolation_key": "t1"}) != affinity_key("h", {})
    assert (affinity_key(None, {"prompt_cache_key": "a", "prompt_cache_isolation_key": "t1"})
            != affinity_key(None, {"prompt_cache_key": "a", "prompt_cache_isolation_key": "t2"}))
    assert key_from_body(b'{"prompt_cache_key": "a"}', None) == "a"
    assert key_from_body(b"not json", None) is None
    assert key_from_body(b"[1, 2]", "h") == "h"


def test_ring_is_the_same_in_every_process_and_spreads_keys() -> None:
    a, b = HashRing(["r1", "r2", "r3"]), HashRing(["r3", "r1", "r2"])
    assert all(a.owner(k) == b.owner(k) for k in KEYS)
    counts = {r: sum(a.owner(k) == r for k in KEYS) for r in a.replicas}
    assert all(len(KEYS) / 3 * 0.7 < c < len(KEYS) / 3 * 1.3 for c in counts.values()), counts


def test_adding_a_replica_moves_only_its_share() -> None:
    ring = HashRing(["r1", "r2", "r3"])
    before = {k: ring.owner(k) for k in KEYS}
    ring.add("r4")
    after = {k: ring.owner(k) for k in KEYS}
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(after[k] == "r4" for k in moved)  # keys only move to the new replica
    assert 0.15 < len(moved) / len(KEYS) < 0.35  # about 1/4 of them


def test_removing_a_replica_moves_only_its_keys() -> None:
    ring = HashRing(["r1", "r2", "r3", "r4"])
    before = {k: ring.owner(k) for k in KEYS}
    ring.remove("r2")
    after = {k: ring.owner(k) for k in KEYS}
    assert all(after[k] == before[k] for k in KEYS if before[k] != "r2")
    assert all(after[k] != "r2" for k in KEYS)


def test_fallbacks_are_distinct_and_the_next_owner_after_removal() -> None:
    ring = HashRing(["r1", "r2", "r3"])
    for k in KEYS[:200]:
        owners = ring.owners(k, 3)
        assert sorted(owners) == ["r1", "r2", "r3"]
        smaller = HashRing(ring.replicas - {owners[0]})
        assert smaller.owner(k) == owners[1]  # the spill target is where the key goes if its owner dies
    assert HashRing([]).owners("k") == []
    assert HashRing(["only"]).owners("k", 3) == ["only"]
