"""`ember serve --replicas 2 --address` on a three-node Ray cluster on 127.0.0.1 (a head and two workers, one
replica on each worker), end to end through Serve's proxy: spread, affinity (header and body, isolation),
streaming, disconnects, spill-over, errors and headers, a replica process killed and replaced, a node lost
and added back, and a clean teardown. Slow (Ray and model loads on 2 CPUs)."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.serve.cluster import (
    MODEL,
    ClusterServer,
    RayCluster,
    complete,
    ember_on_cluster,
    port_released,
    ray_cluster,
    replicas_answering,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PREFIX = ("You are a careful assistant. The session shares this long instruction prefix so that every turn "
          "after the first finds its first blocks in the replica's prefix cache. ") * 2


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    with ray_cluster() as c:
        yield c
    assert c.left_behind == [], "Ray processes left behind"


@pytest.fixture(scope="module")
def server(cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterServer]:
    # max-ongoing-requests 2: two long requests saturate a replica (the spill-over test)
    with ember_on_cluster(cluster, str(tmp_path_factory.mktemp("data")), "--max-ongoing-requests", "2") as s:
        yield s
    assert s.proc.returncode == 0, s.log()
    assert port_released(int(s.url.rsplit(":", 1)[1])), "Serve's proxy still holds the endpoint's port"


def test_keyless_requests_spread_over_both_replicas(server: ClusterServer, cluster: RayCluster) -> None:
    seen = replicas_answering(server.url, 16)
    assert len(seen) == 2, seen
    # one replica on each worker node, none on the head (it offers no CPUs)
    assert [len(cluster.replica_processes(n)) for n in ("worker-a", "worker-b", "head")] == [1, 1, 0]


@pytest.mark.parametrize("by", ["header", "body"])
def test_a_session_sticks_to_one_replica_and_hits_its_cache(server: ClusterServer, by: str) -> None:
    owners: dict[str, str] = {}
    for k in range(8):
        key = f"{by}-session-{k}"
        for turn in range(3):
            body = {"prompt": f"{PREFIX} session {k} turn {turn}", "max_tokens": 2}
            headers = {}
            if by == "header":
                headers["x-session-affinity"] = key
            else:
                body["prompt_cache_key"] = key
            r = complete(server.url, body, headers)
            assert r.status_code == 200, r.text
            owners.setdefault(key, r.headers["x-ember-replica"])
            assert r.headers["x-ember-replica"] == owners[key], (key, turn)
            cached = r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
            if turn > 0:
                assert cached > 0, (key, turn)
    # 8 keys land on one replica 1 time in 128; 32 keys (as cheap GETs) all but never do
    assert len({owner_of(server, f"{by}-spread-{i}") for i in range(32)}) == 2


def test_header_and_body_key_agree_and_isolation_keys_never_share_cache(server: ClusterServer) -> None:
    prompt = f"{PREFIX} isolation check"
    a = complete(server.url, {"prompt": prompt, "max_tokens": 1, "prompt_cache_key": "same"})
    b = complete(server.url, {"prompt": prompt, "max_tokens": 1}, {"x-session-affinity": "same"})
    assert a.headers["x-ember-replica"] == b.headers["x-ember-replica"]
    for tenant in ("tenant-a", "tenant-b"):
        r = complete(server.url, {"prompt": prompt, "max_tokens": 1, "prompt_cache_key": "same",
                                  "prompt_cache_isolation_key": tenant})
        assert r.status_code == 200
        assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0, tenant


def test_streaming_through_the_proxy(server: ClusterServer) -> None:
    events = []
    with httpx.stream("POST", server.url + "/v1/completions", timeout=60,
                      json={"model": MODEL, "prompt": "Once upon a time", "max_tokens": 8, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers.get("x-ember-replica")
        assert any(h.startswith("x-ratelimit-") for h in r.headers)
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) >= 3
    assert chunks[-1]["usage"]["completion_tokens"] == 8


def running_on(server: ClusterServer, key: str) -> tuple[str, int]:
    # GET /health with the session's key reaches the replica that owns it
    r = httpx.get(server.url + "/health", headers={"x-session-affinity": key}, timeout=10)
    return r.headers["x-ember-replica"], r.json()["running"]


def test_a_client_disconnect_frees_the_sequence_in_its_replica(server: ClusterServer) -> None:
    key = "disconnect-session"
    with httpx.stream("POST", server.url + "/v1/completions", headers={"x-session-affinity": key}, timeout=60,
                      json={"model": MODEL, "prompt": "Count to a thousand:", "max_tokens": 400,
                            "ignore_eos": True, "stream": True}) as r:
        owner = r.headers["x-ember-replica"]
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
        replica, running = running_on(server, key)
        assert replica == owner and running == 1
    t0 = time.monotonic()
    while running_on(server, key)[1] != 0:
        assert time.monotonic() - t0 < 2.0, "the sequence still runs 2 s after the client left"
        time.sleep(0.05)


def test_a_saturated_owner_spills_to_the_next_replica(server: ClusterServer) -> None:
    key = "busy-session"
    body = {"prompt": "Tell a long story:", "max_tokens": 300, "ignore_eos": True, "stream": True}
    streams = [httpx.stream("POST", server.url + "/v1/completions", headers={"x-session-affinity": key},
                            json={"model": MODEL, **body}, timeout=60) for _ in range(2)]
    opened = [s.__enter__() for s in streams]
    try:
        owners = {r.headers["x-ember-replica"] for r in opened}
        assert len(owners) == 1  # both on the owner: it is now at max_ongoing_requests (2)
        r = complete(server.url, {"prompt": "one more", "max_tokens": 2}, {"x-session-affinity": key}, timeout=30)
        assert r.status_code == 200
        assert r.headers["x-ember-replica"] not in owners
    finally:
        for s in streams:
            s.__exit__(None, None, None)


def test_errors_and_headers_pass_through(server: ClusterServer) -> None:
    r = complete(server.url, {"prompt": "x", "model": "nope"})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    assert r.headers.get("x-ember-replica")
    r = complete(server.url, {"prompt": "x", "max_tokens": 1, "temperature": -1})
    assert r.status_code == 422, r.text  # ember's own status for a body that fails validation
    r = complete(server.url, {"prompt": "hello", "max_tokens": 2}, {"x-request-id": "client-chose-this"})
    assert r.status_code == 200
    assert r.headers.get_list("x-request-id") == ["client-chose-this"]  # once: not again from Serve's proxy
    ids = complete(server.url, {"prompt": "hello", "max_tokens": 1}).headers.get_list("x-request-id")
    assert len(ids) == 1 and ids[0], ids  # one generated for a client that sent none
    assert r.headers["fireworks-prompt-tokens"] == str(r.json()["usage"]["prompt_tokens"])
    assert "x-ratelimit-limit-tokens-generated" in r.headers


def test_metrics_show_every_replica(server: ClusterServer) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    replicas = replicas_answering(server.url, 16)
    r = httpx.get(server.url + "/metrics", timeout=30)
    assert r.status_code == 200
    labelled = {s.labels.get("replica") for f in text_string_to_metric_families(r.text) for s in f.samples}
    assert replicas <= labelled, (replicas, labelled)


def test_a_killed_replica_is_replaced(server: ClusterServer, cluster: RayCluster) -> None:
    """The replica process on worker-a dies (SIGKILL: its engine with it). Serve's health check of that
    replica fails (its actor is gone), Serve starts a new one where the CPU is free again, and requests,
    keyed ones included, succeed again on two replicas, one of them new."""
    before = replicas_answering(server.url, 16)
    [victim] = cluster.replica_processes("worker-a")
    os.kill(victim, signal.SIGKILL)
    keys = [f"replaced-{i}" for i in range(4)]
    t0 = time.monotonic()
    while True:
        try:
            ok = all(complete(server.url, {"prompt": "still there?", "max_tokens": 2},
                              {"x-session-affinity": k}, timeout=20).status_code == 200 for k in keys)
        except httpx.HTTPError:
            ok = False
        now = replicas_answering(server.url, 8) if ok else set()
        if len(now) == 2 and now != before:
            break
        assert time.monotonic() - t0 < 150, f"no replacement replica serving: {now} (before {before})"
        time.sleep(1)
    assert len(now & before) == 1, (now, before)  # the survivor kept its name; the other one is new
    [replacement] = cluster.replica_processes("worker-a")
    assert replacement != victim
    print(f"a new replica serves {time.monotonic() - t0:.0f} s after the old one was killed")


def test_a_lost_node_then_added_back(server: ClusterServer, cluster: RayCluster) -> None:
    cluster.remove("worker-b")
    keys = [f"failover-{i}" for i in range(4)]
    deadline = time.monotonic() + 90
    while True:  # Serve notices the dead replica: from then on everything lands on the survivor
        try:
            ok = all(complete(server.url, {"prompt": "still there?", "max_tokens": 2},
                              {"x-session-affinity": k}, timeout=20).status_code == 200 for k in keys)
        except httpx.HTTPError:
            ok = False
        if ok and len(replicas_answering(server.url, 4)) == 1:
            break
        assert time.monotonic() < deadline, "requests did not recover after the node was lost"
        time.sleep(1)
    for k in keys:  # keyed ones too, every time
        assert complete(server.url, {"prompt": "again", "max_tokens": 2}, {"x-session-affinity": k}).status_code == 200
    cluster.add_worker("worker-b")
    t0 = time.monotonic()
    while len(replicas_answering(server.url, 8)) < 2:
        assert time.monotonic() - t0 < 120, "the replaced replica did not serve"
        time.sleep(2)
    print(f"both replicas serve again {time.monotonic() - t0:.0f} s after the node came back")


def test_concurrent_keyed_sessions_all_succeed(server: ClusterServer) -> None:
    def one(i: int) -> int:
        return complete(server.url, {"prompt": f"{PREFIX} {i}", "max_tokens": 4,
                                     "prompt_cache_key": f"c{i % 4}"}).status_code

    with cf.ThreadPoolExecutor(8) as ex:
        assert set(ex.map(one, range(16))) == {200}


def owner_of(server: ClusterServer, key: str) -> str:
    return running_on(server, key)[0]


def test_keys_usage_and_rate_limits_hold_across_replicas(server: ClusterServer) -> None:
    """Last in this module: once an account exists, every request needs a key. The replicas share the
    SQLite file (one host) and the rate-limit buckets (one Ray actor)."""
    from datetime import UTC, datetime, timedelta

    from ember.config import StoreConfig
    from ember.store.accounts import Accounts
    from ember.store.db import open_store

    store = open_store(StoreConfig(data_dir=server.data_dir))
    admin = Accounts(store).create("acme", "ops@acme.test").key.key
    store.close()
    # one session key owned by each replica: requests with them reach a known replica
    keys: dict[str, str] = {}
    for i in range(64):
        keys.setdefault(owner_of(server, f"pick-{i}"), f"pick-{i}")
        if len(keys) == 2:
            break
    (ra, ka), (rb, kb) = sorted(keys.items())

    def on(key: str, auth: str, body: dict | None = None, path: str = "/v1/completions") -> httpx.Response:
        return httpx.post(server.url + path, headers={"x-session-affinity": key, "authorization": f"Bearer {auth}"},
                          json=body if body is not None else {"model": MODEL, "prompt": "Hi", "max_tokens": 2},
                          timeout=60)

    deadline = time.monotonic() + 10  # auto auth: each replica re-checks the store for accounts once a second
    while on(ka, "wrong").status_code != 401 or on(kb, "wrong").status_code != 401:
        assert time.monotonic() < deadline, "keys are not required on both replicas after an account exists"
        time.sleep(0.3)
    # a key made through replica A works through replica B
    made = on(ka, admin, {"apiKey": {"displayName": "shared"}}, "/v1/accounts/acme/users/admin/apiKeys")
    assert made.status_code == 200, made.text
    assert made.headers["x-ember-replica"] == ra
    new = made.json()
    r = on(kb, new["key"])
    assert r.status_code == 200 and r.headers["x-ember-replica"] == rb
    assert on(ka, new["key"]).status_code == 200
    # usage from both replicas adds up, whichever one is asked
    now = datetime.now(UTC)
    q = (f"startTime={(now - timedelta(days=1)):%Y-%m-%dT%H:%M:%SZ}&endTime={(now + timedelta(days=1)):%Y-%m-%dT%H:%M:%SZ}"
         f"&filter[api_key_id]={new['keyId']}")

    def total(key: str) -> int:
        r = httpx.get(f"{server.url}/v1/accounts/acme/billingUsage?{q}", timeout=30,
                      headers={"x-session-affinity": key, "authorization": f"Bearer {admin}"})
        return sum(int(row["completionTokens"]) for row in r.json()["serverlessCosts"])

    deadline = time.monotonic() + 10
    while total(ka) != 4 or total(kb) != 4:
        assert time.monotonic() < deadline, (total(ka), total(kb))
        time.sleep(0.2)
    # 6 requests a minute for the account, counted once across both replicas
    patch = httpx.patch(f"{server.url}/v1/accounts/acme/quotas/requests-per-minute?allowMissing=true",
                        json={"value": "6"}, headers={"authorization": f"Bearer {admin}"}, timeout=30)
    assert patch.status_code == 200, patch.text
    time.sleep(2.5)  # each replica re-reads quotas every second
    codes = {ra: [], rb: []}
    for i in range(12):
        rep, key = (ra, ka) if i % 2 == 0 else (rb, kb)
        r = on(key, new["key"])
        assert r.headers["x-ember-replica"] == rep
        codes[rep].append(r.status_code)
    ok = sum(c == 200 for cs in codes.values() for c in cs)
    assert ok == 6, codes  # per-replica buckets would have let 12 through
    assert all(c in (200, 429) for cs in codes.values() for c in cs), codes
    assert 429 in codes[ra] and 429 in codes[rb], codes
