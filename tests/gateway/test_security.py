"""Bad keys, other accounts, roles, hostile ids and queries: each a clear 4xx in the right envelope."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from ember.config import StoreConfig
from ember.store.api_keys import ApiKeys
from ember.store.db import open_store
from tests.conftest import MODEL_ID
from tests.gateway.conftest import Platform

COMPLETION = {"model": MODEL_ID, "prompt": "Hi", "max_tokens": 1}


def assert_status(r, status: int, rpc_code: int) -> None:  # noqa: ANN001
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == rpc_code and body["details"] == [] and body["message"], body


def assert_openai(r, status: int, code: str | None = None) -> None:  # noqa: ANN001
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    if code:
        assert err["code"] == code


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer a b", "Basic Zm9vOmJhcg==", "fw_abc", "Token x",
                                    "Bearer fw_" + "A" * 43, "Bearer " + "x" * 5000, "Bearer fw_\u00e9\u00e9"])
def test_bad_credentials_are_401(platform: Platform, header: str | None) -> None:
    import httpx

    headers = {"authorization": header} if header is not None else {}
    with httpx.Client(base_url=platform.url, timeout=60) as c:
        try:
            r = c.post("/v1/completions", json=COMPLETION, headers=headers)
        except UnicodeEncodeError:  # httpx refuses a non-latin-1 header itself: send it as raw bytes
            headers = {"authorization": header.encode("utf-8")}  # type: ignore[union-attr,dict-item]
            r = c.post("/v1/completions", json=COMPLETION, headers=headers)
        assert_openai(r, 401, "invalid_api_key")
        assert_status(c.get("/v1/accounts/acme/users", headers=headers), 401, 16)
        assert_status(c.get("/v1/accounts", headers=headers), 401, 16)


def test_expired_key_fails_after_its_expire_time(platform: Platform) -> None:
    store = open_store(StoreConfig(data_dir=platform.data_dir))
    soon = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=2)
    key = ApiKeys(store).create("acme", "admin", "short", expire_time=soon).key
    store.close()
    with platform.http(key) as c:
        assert c.post("/v1/completions", json=COMPLETION).status_code == 200
        time.sleep(2.2)
        assert_openai(c.post("/v1/completions", json=COMPLETION), 401, "invalid_api_key")
        assert_status(c.get("/v1/accounts/acme"), 401, 16)


def test_keys_reach_only_their_own_account(platform: Platform) -> None:
    other = platform.key("admin", "admin", account_id="globex")
    with platform.http(other) as c:
        for path in ("/v1/accounts/acme", "/v1/accounts/acme/users", "/v1/accounts/acme/users/admin/apiKeys",
                     "/v1/accounts/acme/quotas", "/v1/accounts/acme/billingUsage?startTime=2026-01-01T00:00:00Z"
                     "&endTime=2026-01-02T00:00:00Z", "/v1/accounts/nope"):
            assert_status(c.get(path), 404, 5)  # not 403: another account's existence is not revealed
        assert_status(c.post("/v1/accounts/acme/users?userId=mallory", json={"role": "admin"}), 404, 5)
        assert [a["name"] for a in c.get("/v1/accounts").json()["accounts"]] == ["accounts/globex"]


def test_roles(platform: Platform) -> None:
    user = platform.key("sec-user", "user")
    infer = platform.key("sec-infer", "inference-user")
    with platform.http(user) as c:
        assert c.get("/v1/accounts/acme/users/sec-user/apiKeys").status_code == 200
        assert_status(c.get("/v1/accounts/acme/users/admin/apiKeys"), 403, 7)
        assert_status(c.post("/v1/accounts/acme/users/admin/apiKeys", json={"apiKey": {}}), 403, 7)
        assert_status(c.post("/v1/accounts/acme/users/admin/apiKeys:delete", json={"keyId": "x"}), 403, 7)
        assert_status(c.post("/v1/accounts/acme/users?userId=eve", json={"role": "admin"}), 403, 7)
        assert_status(c.patch("/v1/accounts/acme/quotas/requests-per-minute", json={"value": "1"}), 403, 7)
        assert c.post("/v1/completions", json=COMPLETION).status_code == 200
    with platform.http(infer) as c:
        assert c.post("/v1/completions", json=COMPLETION).status_code == 200
        assert c.get("/v1/models").status_code == 200
        for method, path, body in [
            ("GET", "/v1/accounts", None), ("GET", "/v1/accounts/acme", None),
            ("GET", "/v1/accounts/acme/users", None), ("POST", "/v1/accounts/acme/users?userId=x", {"role": "user"}),
            ("GET", "/v1/accounts/acme/users/sec-infer", None),
            ("PATCH", "/v1/accounts/acme/users/sec-infer", {"role": "admin"}),
            ("GET", "/v1/accounts/acme/users/sec-infer/apiKeys", None),
            ("POST", "/v1/accounts/acme/users/sec-infer/apiKeys", {"apiKey": {}}),
            ("POST", "/v1/accounts/acme/users/sec-infer/apiKeys:delete", {"keyId": "x"}),
            ("GET", "/v1/accounts/acme/quotas", None), ("GET", "/v1/accounts/acme/serverlessRateLimits", None),
            ("GET", "/v1/accounts/acme/billingUsage?startTime=2026-01-01T00:00:00Z&endTime=2026-01-02T00:00:00Z",
             None)]:
            assert_status(c.request(method, path, json=body), 403, 7)


@pytest.mark.parametrize("bad", ["..%2F..%2Fetc", "a'b", "a%22b", "a%00b", "x" * 300, "caf%C3%A9", "A", "-a",
                                 "a%20or%201%3D1"])
def test_hostile_ids_are_4xx(platform: Platform, bad: str) -> None:
    with platform.http(platform.admin_key) as c:
        for method, path, body in [("GET", f"/v1/accounts/acme/users/{bad}", None),
                                   ("POST", f"/v1/accounts/acme/users?userId={bad}", {"role": "user"}),
                                   ("GET", f"/v1/accounts/acme/users/{bad}/apiKeys", None),
                                   ("POST", f"/v1/accounts/acme/users/{bad}/apiKeys", {"apiKey": {}}),
                                   ("GET", f"/v1/accounts/{bad}", None),
                                   ("GET", f"/v1/accounts/acme/quotas/{bad}", None)]:
            r = c.request(method, path, json=body)
            assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
            assert r.json()["code"] in (3, 5)


def test_hostile_queries_are_400(platform: Platform) -> None:
    with platform.http(platform.admin_key) as c:
        for q in ['filter=name%3D%22x%22%20OR%201%3D1', "filter=%27%3B%20DROP%20TABLE%20users%3B--",
                  'filter=role%3D%22admin%22%20AND%20email%3D%22x%22', "filter=secret%3D%22x%22",
                  "pageToken=%%%", "pageToken=bm90LWEtdG9rZW4", "pageSize=-1", "pageSize=abc",
                  "orderBy=password", "orderBy=name%3B%20DROP"]:
            assert_status(c.get(f"/v1/accounts/acme/users?{q}"), 400, 3)
        big = c.get("/v1/accounts/acme/users?pageSize=99999999999")
        assert big.status_code == 200 and "users" in big.json()
        ok = c.get('/v1/accounts/acme/users?filter=role%3D%22admin%22')
        assert [u["name"] for u in ok.json()["users"]] == ["accounts/acme/users/admin"]
        base = "/v1/accounts/acme/billingUsage?"
        for q in ["", "startTime=2026-01-02T00:00:00Z&endTime=2026-01-01T00:00:00Z",
                  "startTime=2026-01-01T00:00:00Z&endTime=2026-03-01T00:00:00Z",
                  "startTime=yesterday&endTime=2026-01-01T00:00:00Z",
                  "startTime=2026-01-01T00:00:00Z&endTime=2026-01-02T00:00:00Z&timezone=Mars/Olympus",
                  "startTime=2026-01-01T00:00:00Z&endTime=2026-01-02T00:00:00Z&groupBy=password",
                  "startTime=2026-01-01T00:00:00Z&endTime=2026-01-02T00:00:00Z&filter[secret]=x",
                  "startTime=2026-01-01T00:00:00Z&endTime=2026-01-02T00:00:00Z&filter=1%3D1"]:
            assert_status(c.get(base + q), 400, 3)


def test_pages_walk_and_tokens_are_bound_to_their_query(platform: Platform) -> None:
    for i in range(5):
        platform.key(f"page-{i}", "user")
    with platform.http(platform.admin_key) as c:
        seen, token = [], None
        while True:
            q = "pageSize=2" + (f"&pageToken={token}" if token else "")
            body = c.get(f"/v1/accounts/acme/users?{q}").json()
            seen += [u["name"] for u in body["users"]]
            token = body.get("nextPageToken")
            if not token:
                break
        assert len(seen) == len(set(seen)) == body["totalSize"] >= 6
        first = c.get("/v1/accounts/acme/users?pageSize=2").json()["nextPageToken"]
        assert_status(c.get(f"/v1/accounts/acme/users?pageSize=3&pageToken={first}"), 400, 3)


def test_duplicate_user_is_409_with_no_retry(platform: Platform) -> None:
    with platform.http(platform.admin_key) as c:
        assert c.post("/v1/accounts/acme/users?userId=dup", json={"role": "user"}).status_code == 200
        r = c.post("/v1/accounts/acme/users?userId=dup", json={"role": "user"})
        assert_status(r, 409, 6)
        assert r.headers["x-should-retry"] == "false"
        assert_status(c.post("/v1/accounts/acme/users?userId=bad-role", json={"role": "root"}), 400, 3)
        assert_status(c.post("/v1/accounts/acme/users?userId=x1", json={"role": "user", "evil": 1}), 400, 3)
