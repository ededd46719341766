"""Two ember servers sharing one PostgreSQL agree on keys, usage and limits."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import httpx

from ember.config import StoreConfig
from ember.store.accounts import Accounts
from ember.store.db import open_store
from tests.conftest import MODEL_ID, LiveServer, server_config
from tests.fake_clock import FakeClock
from tests.harness import wait_until
from tests.postgres import PostgresServer

BODY = {"model": MODEL_ID, "prompt": "Hi", "max_tokens": 2}


def test_two_servers_one_postgres(postgres: PostgresServer, smol_served) -> None:  # noqa: ANN001
    store_cfg = StoreConfig(url=postgres.create_database())
    store = open_store(store_cfg)
    admin = Accounts(store).create("acme", "ops@acme.test").key.key
    store.close()
    cfg = dataclasses.replace(server_config(), store=store_cfg)
    clock = FakeClock()  # both servers' key caches age only when the test says so
    with LiveServer(cfg, smol_served, clock) as a, LiveServer(cfg, smol_served, clock) as b:
        ha = httpx.Client(base_url=a.url, headers={"authorization": f"Bearer {admin}"}, timeout=60)
        hb = httpx.Client(base_url=b.url, headers={"authorization": f"Bearer {admin}"}, timeout=60)
        # a key made on A works on B at once
        new = ha.post("/v1/accounts/acme/users/admin/apiKeys", json={"apiKey": {"displayName": "shared"}}).json()
        kb = httpx.Client(base_url=b.url, headers={"authorization": f"Bearer {new['key']}"}, timeout=60)
        ka = httpx.Client(base_url=a.url, headers={"authorization": f"Bearer {new['key']}"}, timeout=60)
        assert kb.post("/v1/completions", json=BODY).status_code == 200
        assert ka.post("/v1/completions", json=BODY).status_code == 200
        # usage from both processes adds up, whichever one is asked
        now = datetime.now(UTC)
        q = (f"startTime={(now - timedelta(days=1)):%Y-%m-%dT%H:%M:%SZ}&endTime={(now + timedelta(days=1)):%Y-%m-%dT%H:%M:%SZ}"
             f"&filter[api_key_id]={new['keyId']}")

        def total() -> int:
            rows = hb.get(f"/v1/accounts/acme/billingUsage?{q}").json()["serverlessCosts"]
            return sum(int(r["completionTokens"]) for r in rows)

        wait_until(lambda: total() == 4, 5, "A's usage flushed", interval=0.1)  # within its one-second interval
        # a quota set on A applies on B within the refresh interval
        assert ha.patch("/v1/accounts/acme/quotas/generated-tokens-per-minute?allowMissing=true",
                        json={"value": "1"}).status_code == 200
        wait_until(lambda: kb.post("/v1/completions", json=BODY).status_code == 429, 5, "the quota on B", interval=0.1)
        assert ha.post("/v1/completions", json=BODY).status_code == 429  # 2 > 1: never fits
        ha.patch("/v1/accounts/acme/quotas/generated-tokens-per-minute", json={"value": "100000"})
        wait_until(lambda: kb.post("/v1/completions", json=BODY).status_code == 200, 5, "the raised quota on B",
                   interval=0.1)
        # a key deleted on A: refused on A at once, on B once its cache entry is key_cache_s old
        assert ha.post("/v1/accounts/acme/users/admin/apiKeys:delete", json={"keyId": new["keyId"]}).status_code == 200
        assert ka.post("/v1/completions", json=BODY).status_code == 401
        assert kb.post("/v1/completions", json=BODY).status_code == 200  # B's cache still holds it
        clock.advance(cfg.platform.key_cache_s)
        assert kb.post("/v1/completions", json=BODY).status_code == 401
        for c in (ha, hb, ka, kb):
            c.close()
