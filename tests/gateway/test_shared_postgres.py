"""Two ember servers sharing one PostgreSQL agree on keys, usage and limits."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta

import httpx

from ember.config import StoreConfig
from ember.store.accounts import Accounts
from ember.store.db import open_store
from tests.conftest import MODEL_ID, LiveServer, server_config
from tests.postgres import PostgresServer

BODY = {"model": MODEL_ID, "prompt": "Hi", "max_tokens": 2}


def wait_for(pred, timeout: float) -> float:  # noqa: ANN001
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < timeout, "condition not met in time"
        time.sleep(0.1)
    return time.monotonic() - t0


def test_two_servers_one_postgres(postgres: PostgresServer, smol_served) -> None:  # noqa: ANN001
    store_cfg = StoreConfig(url=postgres.create_database())
    store = open_store(store_cfg)
    admin = Accounts(store).create("acme", "ops@acme.test").key.key
    store.close()
    cfg = dataclasses.replace(server_config(), store=store_cfg)
    with LiveServer(cfg, smol_served) as a, LiveServer(cfg, smol_served) as b:
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

        wait_for(lambda: total() == 4, 5)  # A flushes within its one-second interval
        # a quota set on A applies on B within the refresh interval
        assert ha.patch("/v1/accounts/acme/quotas/generated-tokens-per-minute?allowMissing=true",
                        json={"value": "1"}).status_code == 200
        wait_for(lambda: kb.post("/v1/completions", json=BODY).status_code == 429, 5)
        assert ha.post("/v1/completions", json=BODY).status_code == 429  # 2 > 1: never fits
        ha.patch("/v1/accounts/acme/quotas/generated-tokens-per-minute", json={"value": "100000"})
        wait_for(lambda: kb.post("/v1/completions", json=BODY).status_code == 200, 5)
        # a key deleted on A: refused on A at once, on B within the 5 s key cache
        assert ha.post("/v1/accounts/acme/users/admin/apiKeys:delete", json={"keyId": new["keyId"]}).status_code == 200
        assert ka.post("/v1/completions", json=BODY).status_code == 401
        waited = wait_for(lambda: kb.post("/v1/completions", json=BODY).status_code == 401, 7)
        assert waited <= 6
        for c in (ha, hb, ka, kb):
            c.close()
