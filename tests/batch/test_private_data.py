"""Files, signed download URLs and users under attack: private file modes on a world-readable data dir,
URLs bounded by their lifetime and by the key that asked, a rotatable signing key, the URL's host not
taken from the request, disabled users, and JSON nested too deep in a job or a dataset line."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from fireworks import Fireworks

from ember.cli.main import main as ember_cli
from ember.config import BatchConfig, StoreConfig
from ember.model.loader import LoadedModel
from ember.store.accounts import Users
from ember.store.api_keys import ApiKeys
from ember.store.db import open_store
from tests.batch.helpers import MODEL_ID, BatchEnv, jsonl, upload, wait_job
from tests.conftest import LiveServer, server_config
from tests.harness import wait_until

ROWS = [{"custom_id": f"r{i}", "body": {"prompt": f"Row {i}", "max_tokens": 2}} for i in range(3)]


CREATED_MODES: dict[str, int] = {}


def mode(p: str | Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.fixture(scope="module")
def env(tiny: LoadedModel) -> Iterator[BatchEnv]:
    """A live ember on a data dir that was 0755 before ember saw it, created by the operator CLI, with a
    database and a dataset file an older ember left readable by everyone."""
    data_dir = tempfile.mkdtemp(prefix="ember-harden-")
    os.chmod(data_dir, 0o755)
    assert ember_cli(["accounts", "create", "acme", "--email", "ops@acme.test", "--data-dir", data_dir]) == 0
    assert ember_cli(["accounts", "create", "globex", "--email", "ops@globex.test", "--data-dir", data_dir]) == 0
    db = os.path.join(data_dir, "ember.db")
    CREATED_MODES["ember.db"] = mode(db)  # what the very first operator command made
    os.chmod(db, 0o644)  # as an older ember made it
    old = Path(data_dir, "datasets", "acme", "old-ds")
    old.mkdir(parents=True)
    for d in (old.parent.parent, old.parent, old):
        os.chmod(d, 0o755)
    (old / "input.jsonl").write_bytes(jsonl(ROWS))
    os.chmod(old / "input.jsonl", 0o644)
    store = open_store(StoreConfig(data_dir=data_dir))
    key = ApiKeys(store).create("acme", "admin").key
    store.close()
    cfg = replace(server_config(data_dir=data_dir), batch=BatchConfig(poll_s=0.1, download_url_ttl_s=600))
    with LiveServer(cfg, tiny) as s:
        yield BatchEnv(s, data_dir, key)


def user_key(env: BatchEnv, user_id: str, role: str = "user") -> str:
    with env.http() as h:
        h.post("/v1/accounts/acme/users", params={"userId": user_id}, json={"role": role})
        r = h.post(f"/v1/accounts/acme/users/{user_id}/apiKeys", json={"apiKey": {"displayName": "t"}})
        assert r.status_code == 200, r.text
        return r.json()["key"]


def sdk(env: BatchEnv, key: str) -> Fireworks:
    return Fireworks(api_key=key, base_url=env.url, account_id="acme", max_retries=0, timeout=120)


def signed_url(client: Fireworks, dataset_id: str, name: str = "input.jsonl") -> str:
    return client.datasets.get_download_endpoint(dataset_id).filename_to_signed_urls[name]


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=30)


def test_the_database_and_customer_files_are_the_owners_alone(env: BatchEnv) -> None:
    d = env.data_dir
    assert CREATED_MODES["ember.db"] == 0o600  # created so in a 0755 directory
    assert mode(os.path.join(d, "ember.db")) == 0o600  # and narrowed at start after an older ember's 0644
    for side in ("-wal", "-shm"):
        if os.path.exists(os.path.join(d, "ember.db" + side)):
            assert mode(os.path.join(d, "ember.db" + side)) == 0o600
    old = Path(d, "datasets", "acme", "old-ds")
    assert mode(old / "input.jsonl") == 0o600
    assert {mode(p) for p in (Path(d, "datasets"), old.parent, old)} == {0o700}
    c = env.sdk()
    upload(c, "fresh", jsonl(ROWS))
    fresh = Path(d, "datasets", "acme", "fresh")
    assert mode(fresh) == 0o700 and mode(fresh / "input.jsonl") == 0o600
    c.batch_inference_jobs.create(model=MODEL_ID, input_dataset_id="fresh", output_dataset_id="fresh-out",
                                  batch_inference_job_id="fresh-job")
    assert wait_job(c, "fresh-job").state == "JOB_STATE_COMPLETED"
    out = Path(d, "datasets", "acme", "fresh-out")
    assert mode(out) == 0o700 and {mode(p) for p in out.iterdir()} == {0o600}
    assert len(list(out.iterdir())) == 2  # the results and error-data


def test_a_validly_signed_url_past_the_lifetime_is_refused(env: BatchEnv) -> None:
    c = env.sdk()
    upload(c, "lifetime", jsonl(ROWS))
    url = signed_url(c, "lifetime")
    kid = parse_qs(urlparse(url).query)["kid"][0]
    assert get(url).status_code == 200
    signer = env.app_batch.signer  # signs with the real secret: what a leaked secret could make
    far = signer.url(env.url, "acme", "lifetime", "input.jsonl", kid, ttl_s=10 * 365 * 86400)
    r = get(far)
    assert r.status_code == 403 and "600 s" in r.text
    assert get(signer.url(env.url, "acme", "lifetime", "input.jsonl", kid, ttl_s=300)).status_code == 200


def test_revoking_the_key_revokes_its_urls(env: BatchEnv) -> None:
    key = user_key(env, "carol")
    carol = sdk(env, key)
    upload(carol, "carols", jsonl(ROWS))
    url = signed_url(carol, "carols")
    assert get(url).status_code == 200
    with env.http() as h:
        key_id = h.get("/v1/accounts/acme/users/carol/apiKeys").json()["apiKeys"][0]["keyId"]
        assert h.post("/v1/accounts/acme/users/carol/apiKeys:delete", json={"keyId": key_id}).status_code == 200
    r = get(url)
    assert r.status_code == 403 and "revoked" in r.text
    assert get(signed_url(env.sdk(), "carols")).status_code == 200  # the admin's own URL still works


def test_a_disabled_user_is_locked_out_at_once_and_back_when_enabled(env: BatchEnv) -> None:
    key = user_key(env, "dave")
    dave = sdk(env, key)
    upload(dave, "daves", jsonl(ROWS))
    url = signed_url(dave, "daves")
    body = {"model": MODEL_ID, "prompt": "Hi", "max_tokens": 1}
    with env.http(key) as h:
        assert h.post("/v1/completions", json=body).status_code == 200  # its key is in the cache now
    with env.http() as admin:
        r = admin.patch("/v1/accounts/acme/users/dave", json={"state": "DISABLED"})
        assert r.status_code == 200 and r.json()["state"] == "DISABLED"
        assert admin.get("/v1/accounts/acme/users/dave").json()["state"] == "DISABLED"
        r = admin.patch("/v1/accounts/acme/users/admin", json={"state": "DISABLED"})
        assert r.status_code == 400  # an admin cannot lock itself out
    with env.http(key) as h:
        r = h.post("/v1/completions", json=body)
        assert r.status_code == 403 and "disabled" in r.json()["error"]["message"]
        assert h.get("/v1/accounts/acme/datasets").status_code == 403
    assert get(url).status_code == 403
    with env.http() as admin:
        r = admin.patch("/v1/accounts/acme/users/dave", json={"state": "READY"})
        assert r.status_code == 200 and r.json()["state"] == "READY"
    with env.http(key) as h:
        assert h.post("/v1/completions", json=body).status_code == 200
    assert get(url).status_code == 200


def test_the_operator_cli_disables_and_enables_a_user(env: BatchEnv) -> None:
    key = user_key(env, "erin")
    body = {"model": MODEL_ID, "prompt": "Hi", "max_tokens": 1}
    args = ["--account", "acme", "--data-dir", env.data_dir]
    assert ember_cli(["users", "disable", "erin", *args]) == 0
    store = env.store()
    try:
        assert Users(store).get("acme", "erin").state == "DISABLED"
    finally:
        store.close()
    # another process: the server's key cache holds a key 5 s (tests/gateway/test_auth_clock.py)
    with env.http(key) as h:
        wait_until(lambda: h.post("/v1/completions", json=body).status_code == 403, 15, "erin disabled",
                   interval=0.25)
    assert ember_cli(["users", "enable", "erin", *args]) == 0
    with env.http(key) as h:
        wait_until(lambda: h.post("/v1/completions", json=body).status_code == 200, 15, "erin enabled",
                   interval=0.25)


def test_rotating_the_signing_key_ends_every_url_signed_before(env: BatchEnv) -> None:
    c = env.sdk()
    upload(c, "rotated", jsonl(ROWS))
    old = signed_url(c, "rotated")
    assert get(old).status_code == 200
    assert ember_cli(["secrets", "rotate-signing-key", "--data-dir", env.data_dir]) == 0
    # the server rereads the secret every 5 s
    wait_until(lambda: get(old).status_code == 403, 15, "the old signature refused", interval=0.25)
    assert get(signed_url(c, "rotated")).status_code == 200


def test_the_download_host_is_never_the_requests_host_header(env: BatchEnv, tiny: LoadedModel) -> None:
    c = env.sdk()
    upload(c, "hosted", jsonl(ROWS))
    with env.http() as h:
        r = h.get("/v1/accounts/acme/datasets/hosted:getDownloadEndpoint", headers={"host": "evil.example"})
    url = r.json()["filenameToSignedUrls"]["input.jsonl"]
    assert url.startswith(env.url + "/v1/datasetFiles/"), url
    cfg = replace(server_config(data_dir=env.data_dir), batch=BatchConfig(poll_s=0.1))
    cfg = replace(cfg, server=replace(cfg.server, public_url="https://ember.example.com:8443"))
    with LiveServer(cfg, tiny) as other, httpx.Client(base_url=other.url, timeout=60,
                                                      headers={"authorization": f"Bearer {env.key}"}) as h:
        r = h.get("/v1/accounts/acme/datasets/hosted:getDownloadEndpoint", headers={"host": "evil.example"})
        url = r.json()["filenameToSignedUrls"]["input.jsonl"]
        assert url.startswith("https://ember.example.com:8443/v1/datasetFiles/acme/hosted/"), url
        assert h.get(url.replace("https://ember.example.com:8443", "")).status_code == 200


def test_json_nested_too_deep_in_a_job_or_a_dataset_line_is_a_400_naming_it(env: BatchEnv) -> None:
    c = env.sdk()
    upload(c, "deep-in", jsonl(ROWS))
    with env.http() as h:
        r = h.post("/v1/accounts/acme/batchInferenceJobs", json={
            "model": MODEL_ID, "inputDatasetId": "deep-in",
            "inferenceParameters": {"extraBody": '{"a":' + "[" * 2000 + "]" * 2000 + "}"}})
        assert r.status_code == 400, r.text[:300]
        assert "inferenceParameters.extraBody" in r.json()["message"] and "nested" in r.json()["message"]
        h.post("/v1/accounts/acme/datasets", json={"datasetId": "deep-line", "dataset": {"exampleCount": "2"}})
        line = b'{"custom_id": "x", "body": {"prompt": "a", "metadata": ' + b"[" * 200 + b"]" * 200 + b"}}\n"
        r = h.post("/v1/accounts/acme/datasets/deep-line:upload",
                   files={"file": ("in.jsonl", jsonl(ROWS[:1]) + line, "application/jsonl")})
        assert r.status_code == 400, r.text[:300]
        assert "in.jsonl:2" in r.json()["message"] and "nested deeper than" in r.json()["message"]
