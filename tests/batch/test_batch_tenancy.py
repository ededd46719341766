"""Tenants apart on the batch side: OpenAI's Files/Batches API under the Gateway's role rules and account
walls, batch rows in their own account's prefix cache and per-minute buckets, and per-account caps.

One live server (tiny model, real SQLite store) with small caps; each test works in its own account so
that counts and buckets do not mix.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace

import httpx
import openai
import pytest

from ember.cli.main import main as ember_cli
from ember.config import BatchConfig, PlatformConfig, StoreConfig
from ember.model.loader import LoadedModel
from ember.store.accounts import Accounts, Users
from ember.store.api_keys import ApiKeys
from ember.store.datasets import Datasets
from ember.store.db import open_store
from tests.batch.helpers import jsonl, upload, wait_job
from tests.conftest import MODEL_ID, LiveServer, server_config
from tests.harness import wait_until

ACCOUNTS = ("acme", "globex", "initech", "hooli")
MAX_JOBS, MAX_DATASETS, MAX_KEYS = 2, 6, 3
DONE = {"completed", "failed", "expired", "cancelled"}


@dataclass
class Env:
    server: LiveServer
    data_dir: str
    admin: dict[str, str]
    """Each account's first admin key."""

    @property
    def url(self) -> str:
        return self.server.url

    def key(self, account: str, user: str, role: str) -> str:
        store = open_store(StoreConfig(data_dir=self.data_dir))
        try:
            if user not in [u.user_id for u in Users(store).list(account)]:
                Users(store).create(account, user, role, f"{user}@{account}.test")
            return ApiKeys(store).create(account, user).key
        finally:
            store.close()

    def http(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {key}"}, timeout=60)

    def openai(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=60)

    def fireworks(self, account: str):  # noqa: ANN201
        from fireworks import Fireworks

        return Fireworks(api_key=self.admin[account], base_url=self.url, account_id=account, max_retries=0,
                         timeout=60)


@pytest.fixture(scope="module")
def env(tiny: LoadedModel) -> Iterator[Env]:
    data_dir = tempfile.mkdtemp(prefix="ember-tenancy-")
    store = open_store(StoreConfig(data_dir=data_dir))
    admin = {a: Accounts(store).create(a, f"ops@{a}.test").key.key for a in ACCOUNTS}
    store.close()
    base = server_config(data_dir=data_dir)
    cfg = replace(base, batch=BatchConfig(poll_s=0.1, max_inflight_rows=8, max_active_jobs_per_account=MAX_JOBS,
                                          max_datasets_per_account=MAX_DATASETS),
                  platform=PlatformConfig(max_keys_per_account=MAX_KEYS))
    with LiveServer(cfg, tiny) as s:
        yield Env(s, data_dir, admin)


def line(cid: str, prompt: str, max_tokens: int = 4) -> dict:
    return {"custom_id": cid, "method": "POST", "url": "/v1/completions",
            "body": {"model": MODEL_ID, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                     "ignore_eos": True}}


def file_of(c: openai.OpenAI, lines: list[dict]) -> str:
    return c.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch").id


def wait(c: openai.OpenAI, batch_id: str, until: set[str] = DONE, timeout: float = 120):  # noqa: ANN201
    return wait_until(lambda: (b := c.batches.retrieve(batch_id)).status in until and b, timeout,
                      f"batch {batch_id} to reach {sorted(until)}", interval=0.1)


def assert_openai_error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, (r.request.method, r.request.url.path, r.status_code, r.text)
    err = r.json()["error"]
    assert err["code"] == code and err["message"], err
    return err


# -- the Gateway's role rules and account walls on /v1/files and /v1/batches --------------------------

def test_inference_user_keys_get_403_on_files_and_batches(env: Env) -> None:
    admin = env.openai(env.admin["acme"])
    fid = file_of(admin, [line("a", "Say hi")])
    batch = wait(admin, admin.batches.create(input_file_id=fid, endpoint="/v1/completions",
                                             completion_window="24h").id)
    assert batch.status == "completed" and batch.output_file_id
    # A Gateway job whose output dataset id looks like an OpenAI batch's: reachable through /v1/files.
    fw = env.fireworks("acme")
    upload(fw, "gw-in", jsonl([{"custom_id": "g", "body": {"prompt": "Say hi", "max_tokens": 2}}]))
    fw.batch_inference_jobs.create(model=MODEL_ID, input_dataset_id="gw-in", batch_inference_job_id="batch-gw")
    assert wait_job(fw, "batch-gw").state == "JOB_STATE_COMPLETED"
    paths = [("GET", f"/v1/files/{fid}"), ("GET", f"/v1/files/{fid}/content"),
             ("GET", f"/v1/files/{batch.output_file_id}/content"), ("GET", "/v1/files/batch-gw-output.results"),
             ("GET", "/v1/files/batch-gw-output.results/content"), ("GET", "/v1/batches"),
             ("GET", f"/v1/batches/{batch.id}"), ("POST", f"/v1/batches/{batch.id}/cancel")]
    with env.http(env.admin["acme"]) as c:  # the same reads are fine for an admin key
        for method, path in paths:
            assert c.request(method, path).status_code == 200, path
    infer = env.key("acme", "runner", "inference-user")
    before = [b.id for b in admin.batches.list()]
    with env.http(infer) as c:
        for method, path in paths:
            err = assert_openai_error(c.request(method, path), 403, "permission_denied")
            assert err["type"] == "permission_error"
        assert_openai_error(c.post("/v1/batches", json={"input_file_id": fid, "endpoint": "/v1/completions",
                                                         "completion_window": "24h"}), 403, "permission_denied")
        r = c.post("/v1/files", files={"file": ("x.jsonl", jsonl([line("x", "hi")]))}, data={"purpose": "batch"})
        assert_openai_error(r, 403, "permission_denied")
        assert c.post("/v1/completions", json={"model": MODEL_ID, "prompt": "hi", "max_tokens": 1}).status_code == 200
    with pytest.raises(openai.PermissionDeniedError):
        env.openai(infer).files.content(fid)
    assert [b.id for b in admin.batches.list()] == before, "the refused create left a batch behind"
    user = env.openai(env.key("acme", "analyst", "user"))  # a user key manages batch data, as on the Gateway
    assert user.files.content(fid).content == jsonl([line("a", "Say hi")])
    assert user.batches.retrieve(batch.id).status == "completed"


def test_another_accounts_files_and_batches_are_404(env: Env) -> None:
    acme = env.openai(env.admin["acme"])
    fid = file_of(acme, [line("a", "Say hi")])
    batch = wait(acme, acme.batches.create(input_file_id=fid, endpoint="/v1/completions",
                                           completion_window="24h").id)
    with env.http(env.admin["globex"]) as c:
        for method, path in [("GET", f"/v1/files/{fid}"), ("GET", f"/v1/files/{fid}/content"),
                             ("GET", f"/v1/files/{batch.output_file_id}"),
                             ("GET", f"/v1/files/{batch.output_file_id}/content"),
                             ("GET", f"/v1/batches/{batch.id}"), ("POST", f"/v1/batches/{batch.id}/cancel")]:
            assert_openai_error(c.request(method, path), 404, "not_found")
        assert_openai_error(c.post("/v1/batches", json={"input_file_id": fid, "endpoint": "/v1/completions",
                                                         "completion_window": "24h"}), 404, "not_found")
        assert c.get("/v1/batches").json()["data"] == []
    assert acme.batches.retrieve(batch.id).status == "completed"


# -- a batch row uses its job's account's prefix cache ------------------------------------------------

def test_batch_rows_share_only_their_accounts_cache(env: Env) -> None:
    prompt = f"[{uuid.uuid4().hex}] " + "The committee reviewed every quarterly report in detail. " * 8
    with env.http(env.admin["acme"]) as c:
        r = c.post("/v1/completions", json={"model": MODEL_ID, "prompt": prompt, "max_tokens": 1})
        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] > 64

    def cached_in_batch(account: str) -> int:
        o = env.openai(env.admin[account])
        b = wait(o, o.batches.create(input_file_id=file_of(o, [line("p", prompt, 1)]),
                                     endpoint="/v1/completions", completion_window="24h").id)
        assert b.status == "completed", b
        out = json.loads(o.files.content(b.output_file_id).text)
        return out["response"]["body"]["usage"]["prompt_tokens_details"]["cached_tokens"]

    assert cached_in_batch("globex") == 0, "a globex batch row was served acme's cached prompt"
    assert cached_in_batch("acme") >= 64


# -- batch rows draw from the account's per-minute buckets ---------------------------------------------

def test_batch_rows_wait_for_the_operators_generated_token_cap(env: Env) -> None:
    cap, rows, per_row = 100, 16, 20  # more rows waiting than the runner's 8 slots
    assert ember_cli(["accounts", "set-quota", "initech", "generated-tokens-per-minute", "--max-value", str(cap),
                      "--data-dir", env.data_dir]) == 0
    time.sleep(1.5)  # the server reloads quotas every second
    o = env.openai(env.admin["initech"])
    fid = file_of(o, [line(f"r{i}", f"Count to {i}:", per_row) for i in range(rows)])
    t0 = time.monotonic()
    b = o.batches.create(input_file_id=fid, endpoint="/v1/completions", completion_window="24h")
    generated = 0
    while time.monotonic() - t0 < 8.0:
        cur = o.batches.retrieve(b.id)
        generated = cur.usage.output_tokens if cur.usage else 0
        # The bucket starts full (one minute's worth) and refills at cap/60 tokens a second.
        assert generated <= cap + (time.monotonic() - t0) * cap / 60, (generated, time.monotonic() - t0)
        assert cur.status in ("validating", "in_progress"), cur
        time.sleep(0.25)
    assert generated >= cap - per_row, f"only {generated} tokens: the job should run up to its cap"
    assert cur.request_counts.failed == 0
    # The interactive bucket is the same one: it is empty now.
    with env.http(env.admin["initech"]) as c:
        r = c.post("/v1/completions", json={"model": MODEL_ID, "prompt": "hi", "max_tokens": per_row})
        assert_openai_error(r, 429, "rate_limit_exceeded")
    # initech's waiting rows hold none of the runner's slots: another account's job runs meanwhile.
    g = env.openai(env.admin["globex"])
    other = g.batches.create(input_file_id=file_of(g, [line(f"g{i}", f"Name {i}:", 4) for i in range(12)]),
                             endpoint="/v1/completions", completion_window="24h")
    assert wait(g, other.id, timeout=30).request_counts.completed == 12
    assert o.batches.retrieve(b.id).status == "in_progress"
    # Lifting the cap lets the waiting rows run: none of them failed for the wait.
    assert ember_cli(["accounts", "set-quota", "initech", "generated-tokens-per-minute",
                      "--data-dir", env.data_dir]) == 0
    done = wait(o, b.id, timeout=60)
    assert done.status == "completed", done
    assert (done.request_counts.completed, done.request_counts.failed) == (rows, 0)
    assert done.usage.output_tokens == rows * per_row


# -- per-account caps on active jobs, datasets and keys -----------------------------------------------

def assert_cap(r: httpx.Response, flag: str, gateway: bool) -> None:
    assert r.status_code == 429, r.text
    assert r.headers.get("x-should-retry") == "false"
    body = r.json()
    if gateway:
        assert body["code"] == 8 and flag in body["message"], body  # google.rpc RESOURCE_EXHAUSTED
    else:
        assert body["error"]["code"] == "resource_exhausted" and flag in body["error"]["message"], body


def test_caps_on_keys_datasets_and_active_jobs(env: Env) -> None:
    with env.http(env.admin["hooli"]) as c:
        # Keys: the account's first admin key is one of MAX_KEYS.
        made = [c.post("/v1/accounts/hooli/users/admin/apiKeys", json={"apiKey": {}}) for _ in range(MAX_KEYS - 1)]
        assert all(r.status_code == 200 for r in made), [r.text for r in made]
        assert_cap(c.post("/v1/accounts/hooli/users/admin/apiKeys", json={"apiKey": {}}),
                   f"--max-keys-per-account {MAX_KEYS}", gateway=True)
        gone = c.post("/v1/accounts/hooli/users/admin/apiKeys:delete", json={"keyId": made[0].json()["keyId"]})
        assert gone.status_code == 200, gone.text
        assert c.post("/v1/accounts/hooli/users/admin/apiKeys", json={"apiKey": {}}).status_code == 200

        # Datasets: Gateway datasets and OpenAI files count together.
        for i in range(MAX_DATASETS - 1):
            r = c.post("/v1/accounts/hooli/datasets", json={"datasetId": f"d{i}", "dataset": {"exampleCount": "1"}})
            assert r.status_code == 200, r.text
        o = env.openai(env.admin["hooli"])
        # Rows that need 60 of a 1-request-per-minute bucket: each job runs one row, then waits (stays active).
        assert ember_cli(["accounts", "set-quota", "hooli", "requests-per-minute", "--max-value", "1",
                          "--data-dir", env.data_dir]) == 0
        fid = file_of(o, [line(f"r{i}", f"Count to {i}:", 4) for i in range(3)])
        assert_cap(c.post("/v1/accounts/hooli/datasets", json={"datasetId": "one-more", "dataset": {}}),
                   f"--max-datasets-per-account {MAX_DATASETS}", gateway=True)
        r = c.post("/v1/files", files={"file": ("x.jsonl", jsonl([line("x", "hi")]))}, data={"purpose": "batch"})
        assert_cap(r, f"--max-datasets-per-account {MAX_DATASETS}", gateway=False)

        # Active jobs: OpenAI batches and Gateway jobs count together; finished ones do not count.
        first = o.batches.create(input_file_id=fid, endpoint="/v1/completions", completion_window="24h")
        r = c.post("/v1/accounts/hooli/batchInferenceJobs?batchInferenceJobId=second",
                   json={"model": MODEL_ID, "inputDatasetId": fid})
        assert r.status_code == 200, r.text
        assert_cap(c.post("/v1/batches", json={"input_file_id": fid, "endpoint": "/v1/completions",
                                               "completion_window": "24h"}),
                   f"--max-active-jobs-per-account {MAX_JOBS}", gateway=False)
        assert_cap(c.post("/v1/accounts/hooli/batchInferenceJobs", json={"model": MODEL_ID, "inputDatasetId": fid}),
                   f"--max-active-jobs-per-account {MAX_JOBS}", gateway=True)
        assert o.batches.cancel(first.id).status == "cancelled"
        assert o.batches.create(input_file_id=fid, endpoint="/v1/completions", completion_window="24h").id
    # The refusals made nothing: hooli holds exactly its caps' worth.
    store = open_store(StoreConfig(data_dir=env.data_dir))
    try:
        assert len(ApiKeys(store).list("hooli")) == MAX_KEYS
        assert len([d for d in Datasets(store).list("hooli") if not d.source_job]) == MAX_DATASETS
    finally:
        store.close()
