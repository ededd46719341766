"""The audit log on a live server (tiny model, real SQLite file): every mutating route writes its entries,
successes and failures alike; GET auditLogs filters, pages and refuses as the Gateway does; `ember audit`
and the operator commands; and no key or download-URL signature ever lands in the database or the log."""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import select

from ember.cli.main import main as ember_main
from ember.store.accounts import Users
from ember.store.api_keys import ApiKeys
from ember.store.tables import AuditLogEntry
from tests.batch.helpers import MODEL_ID, BatchEnv, jsonl, make_env

A = "/v1/accounts/acme"
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
INFERENCE = {"/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"}
"""Routes that run a model and change nothing: the only mutating-method routes with no audit entry."""


class LogCapture(logging.Handler):
    """Every record of the server's loggers (uvicorn's access log at INFO included), formatted."""

    NAMES = ("", "uvicorn", "uvicorn.access", "uvicorn.error", "ember")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def __enter__(self) -> LogCapture:
        self._levels = {}
        for n in self.NAMES:
            lg = logging.getLogger(n)
            self._levels[n] = lg.level
            lg.addHandler(self)
            if n == "uvicorn.access":
                lg.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        for n in self.NAMES:
            lg = logging.getLogger(n)
            lg.removeHandler(self)
            lg.setLevel(self._levels[n])


@dataclass
class Walk:
    env: BatchEnv
    keys: dict[str, str] = field(default_factory=dict)
    """role name -> plaintext key (admin of acme, user, inference-user, admin of globex, and keys made)."""
    emails: dict[str, str] = field(default_factory=dict)
    """plaintext key -> the email its entries must name."""
    state: dict[str, str] = field(default_factory=dict)
    signatures: set[str] = field(default_factory=set)
    log: LogCapture = field(default_factory=LogCapture)
    exercised: list[Exercised] = field(default_factory=list)
    """Each mutating route's requests and the entries they wrote (filled by the `walked` fixture)."""

    def http(self, who: str) -> httpx.Client:
        return self.env.http(self.keys[who])


@pytest.fixture(scope="module")
def walk(tiny) -> Iterator[Walk]:  # noqa: ANN001 - the tiny LoadedModel
    for env in make_env(tiny, max_upload_mb=8, max_inflight_rows=4):
        # Attached once the server is up: uvicorn's start-up replaces its loggers' handlers.
        with LogCapture() as cap:
            w = Walk(env, log=cap)
            store = env.store()
            try:
                users, keys = Users(store), ApiKeys(store)
                users.create("acme", "walk-user", "user", "walk-user@acme.test")
                users.create("acme", "walk-inf", "inference-user", "walk-inf@acme.test")
                w.keys = {"admin": env.key, "user": keys.create("acme", "walk-user").key,
                          "inf": keys.create("acme", "walk-inf").key,
                          "globex": keys.create("globex", "admin").key}
            finally:
                store.close()
            w.emails = {env.key: "ops@acme.test", w.keys["user"]: "walk-user@acme.test",
                        w.keys["inf"]: "walk-inf@acme.test", w.keys["globex"]: "ops@globex.test"}
            yield w


def _rows(n: int = 2) -> bytes:
    return jsonl([{"custom_id": f"r{i}", "body": {"prompt": f"Say {i}", "max_tokens": 2}} for i in range(n)])


def _openai_rows() -> bytes:
    return jsonl([{"custom_id": "o1", "method": "POST", "url": "/v1/completions",
                   "body": {"model": MODEL_ID, "prompt": "Hi", "max_tokens": 2}}])


# -- one exercise per mutating route: a success first, then failures --------------------------------------

def ex_create_user(w: Walk) -> list[httpx.Response]:
    a, u = w.http("admin"), w.http("user")
    return [a.post(A + "/users", params={"userId": "walk-new"}, json={"role": "user", "email": "new@acme.test"}),
            a.post(A + "/users", json={"email": "x@acme.test"}),  # no role: 400 from the route
            u.post(A + "/users", params={"userId": "walk-x"}, json={"role": "admin"}),  # a user key: 403
            a.post(A + "/users", json={"role": "user", "bogus": 1})]  # schema: 400 before the route runs


def ex_update_user(w: Walk) -> list[httpx.Response]:
    a = w.http("admin")
    return [a.patch(A + "/users/walk-new", json={"displayName": "New"}),
            a.patch(A + "/users/nobody", json={"displayName": "x"})]


def ex_create_key(w: Walk) -> list[httpx.Response]:
    ok = w.http("admin").post(A + "/users/walk-new/apiKeys", json={"apiKey": {"displayName": "ci"}})
    w.keys["made"] = ok.json()["key"]
    w.emails[w.keys["made"]] = "new@acme.test"
    w.state["made_id"] = ok.json()["keyId"]
    return [ok, w.http("user").post(A + "/users/walk-new/apiKeys", json={"apiKey": {}})]


def ex_delete_key(w: Walk) -> list[httpx.Response]:
    a = w.http("admin")
    body = {"keyId": w.state["made_id"]}
    return [a.post(A + "/users/walk-new/apiKeys:delete", json=body),
            a.post(A + "/users/walk-new/apiKeys:delete", json=body)]


def ex_update_quota(w: Walk) -> list[httpx.Response]:
    a = w.http("admin")
    return [a.patch(A + "/quotas/requests-per-minute", params={"allowMissing": "true"}, json={"value": "100000"}),
            a.patch(A + "/quotas/bogus", json={"value": "1"}),
            w.http("user").patch(A + "/quotas/requests-per-minute", json={"value": "1"})]


def ex_create_dataset(w: Walk) -> list[httpx.Response]:
    a = w.http("admin")
    body = {"datasetId": "walk-ds", "dataset": {"exampleCount": "2", "userUploaded": {}}}
    return [a.post(A + "/datasets", json=body), a.post(A + "/datasets", json=body)]


def ex_upload_dataset(w: Walk) -> list[httpx.Response]:
    a = w.http("admin")
    return [a.post(A + "/datasets/walk-ds:upload", files={"file": ("in.jsonl", _rows())}),
            a.post(A + "/datasets/walk-ds:upload", files={"file": ("in.jsonl", _rows())})]  # READY: 400


def ex_update_dataset(w: Walk) -> list[httpx.Response]:
    a = w.http("admin")
    return [a.patch(A + "/datasets/walk-ds", json={"displayName": "renamed"}),
            a.patch(A + "/datasets/no-such", json={"displayName": "x"})]


def ex_delete_dataset(w: Walk) -> list[httpx.Response]:
    a = w.http("admin")
    assert a.post(A + "/datasets", json={"datasetId": "walk-del", "dataset": {}}).status_code == 200
    return [a.delete(A + "/datasets/walk-del"), a.delete(A + "/datasets/walk-del")]


def ex_create_job(w: Walk) -> list[httpx.Response]:
    a = w.http("admin")
    body = {"model": MODEL_ID, "inputDatasetId": "walk-ds", "inferenceParameters": {"maxTokens": 2}}
    return [a.post(A + "/batchInferenceJobs", params={"batchInferenceJobId": "walk-job"}, json=body),
            a.post(A + "/batchInferenceJobs", params={"batchInferenceJobId": "walk-job2"},
                   json={**body, "inputDatasetId": "no-such"})]


def ex_delete_job(w: Walk) -> list[httpx.Response]:
    a = w.http("admin")
    return [a.delete(A + "/batchInferenceJobs/walk-job"), a.delete(A + "/batchInferenceJobs/no-such")]


def ex_create_file(w: Walk) -> list[httpx.Response]:
    a = w.http("admin")
    ok = a.post("/v1/files", files={"file": ("o.jsonl", _openai_rows())}, data={"purpose": "batch"})
    w.state["file_id"] = ok.json()["id"]
    return [ok, a.post("/v1/files", files={"file": ("o.jsonl", _openai_rows())}, data={"purpose": "fine-tune"})]


def ex_create_batch(w: Walk) -> list[httpx.Response]:
    a = w.http("admin")
    body = {"input_file_id": w.state["file_id"], "endpoint": "/v1/completions", "completion_window": "24h"}
    ok = a.post("/v1/batches", json=body)
    w.state["batch_id"] = ok.json()["id"]
    return [ok, a.post("/v1/batches", json={**body, "endpoint": "/v1/embeddings"}),
            a.post("/v1/batches", json={**body, "bogus": 1})]  # schema: 422 on OpenAI's paths


def ex_cancel_batch(w: Walk) -> list[httpx.Response]:
    a = w.http("admin")
    return [a.post(f"/v1/batches/{w.state['batch_id']}/cancel"), a.post("/v1/batches/batch-nope/cancel")]


EXERCISES: dict[tuple[str, str], Callable[[Walk], list[httpx.Response]]] = {
    ("POST", "/v1/accounts/{account_id}/users"): ex_create_user,
    ("PATCH", "/v1/accounts/{account_id}/users/{user_id}"): ex_update_user,
    ("POST", "/v1/accounts/{account_id}/users/{user_id}/apiKeys"): ex_create_key,
    ("POST", "/v1/accounts/{account_id}/users/{user_id}/apiKeys:delete"): ex_delete_key,
    ("PATCH", "/v1/accounts/{account_id}/quotas/{quota_id}"): ex_update_quota,
    ("POST", "/v1/accounts/{account_id}/datasets"): ex_create_dataset,
    ("POST", "/v1/accounts/{account_id}/datasets/{dataset_id}:upload"): ex_upload_dataset,
    ("PATCH", "/v1/accounts/{account_id}/datasets/{dataset_id}"): ex_update_dataset,
    ("DELETE", "/v1/accounts/{account_id}/datasets/{dataset_id}"): ex_delete_dataset,
    ("POST", "/v1/accounts/{account_id}/batchInferenceJobs"): ex_create_job,
    ("DELETE", "/v1/accounts/{account_id}/batchInferenceJobs/{job_id}"): ex_delete_job,
    ("POST", "/v1/files"): ex_create_file,
    ("POST", "/v1/batches"): ex_create_batch,
    ("POST", "/v1/batches/{batch_id}/cancel"): ex_cancel_batch,
}
"""Run in this order (later ones use what earlier ones made)."""


def _api_routes(routes: list, prefix: str = "") -> Iterator[tuple[str, set[str]]]:
    """(path, methods) of every APIRoute, inside included routers too (FastAPI may keep those nested)."""
    for r in routes:
        inner = getattr(r, "original_router", None)
        if inner is not None:
            yield from _api_routes(inner.routes, prefix + getattr(getattr(r, "include_context", None), "prefix", ""))
        elif isinstance(r, APIRoute):
            yield prefix + r.path, set(r.methods or ())


def mutating_routes(app) -> set[tuple[str, str]]:  # noqa: ANN001 - the FastAPI app
    found = {(m, path) for path, methods in _api_routes(app.routes) if path not in INFERENCE
             for m in methods & MUTATING}
    assert ("POST", "/v1/accounts/{account_id}/users") in found  # the walk itself sees the app's routes
    return found


def _entries(w: Walk, method: str | None = None) -> list[AuditLogEntry]:
    store = w.env.store()
    try:
        with store.session() as s:
            q = select(AuditLogEntry).order_by(AuditLogEntry.timestamp, AuditLogEntry.entry_id)
            if method is not None:
                q = q.where(AuditLogEntry.method == method)
            return list(s.scalars(q))
    finally:
        store.close()


def test_the_walk_covers_every_mutating_route(walk: Walk) -> None:
    """A new POST/PUT/PATCH/DELETE route fails here until it has an exercise (and so an audit entry)."""
    assert mutating_routes(walk.env.server.app) == set(EXERCISES)


@dataclass
class Exercised:
    method: str
    responses: list[httpx.Response]
    entries: list[AuditLogEntry]


@pytest.fixture(scope="module")
def walked(walk: Walk) -> Walk:
    """The walk after every mutating route was exercised once (what later tests read the log of)."""
    done: list[Exercised] = []
    for (verb, path), exercise in EXERCISES.items():
        method = f"{verb} {path}"
        before = {e.entry_id for e in _entries(walk, method)}
        responses = exercise(walk)
        done.append(Exercised(method, responses, [e for e in _entries(walk, method) if e.entry_id not in before]))
    walk.exercised = done
    return walk


def test_every_mutating_route_writes_one_entry_per_request(walked: Walk) -> None:
    walk = walked
    for x in walk.exercised:
        method, responses, new = x.method, x.responses, x.entries
        statuses = [r.status_code for r in responses]
        assert statuses[0] == 200 and all(s >= 400 for s in statuses[1:]), (method, statuses,
                                                                             [r.text[:200] for r in responses])
        assert [e.status_code for e in new] == statuses, (method, [(e.status_code, e.message) for e in new])
        for r, e in zip(responses, new, strict=True):
            key = r.request.headers["authorization"].removeprefix("Bearer ")
            assert (e.account_id, e.principal, e.key_prefix, e.source) == ("acme", walk.emails[key], key[:8], "api")
            assert e.key_id and e.user_id and e.client_ip == "127.0.0.1"
            assert e.user_agent == r.request.headers["user-agent"]
            assert e.resource.startswith("accounts/acme/"), e.resource
            assert (e.message == "") == (e.status_code == 200), (method, e.status_code, e.message)
    # Resources name what was made, not the collection it was made in.
    made = {e.method.split(" ", 1)[0] + " " + e.resource for e in _entries(walk) if e.status_code == 200}
    assert "POST accounts/acme/users/walk-new" in made
    assert f"POST accounts/acme/users/walk-new/apiKeys/{walk.state['made_id']}" in made
    assert "POST accounts/acme/batchInferenceJobs/walk-job" in made
    assert f"POST accounts/acme/files/{walk.state['file_id']}" in made
    assert f"POST accounts/acme/batches/{walk.state['batch_id']}" in made


def test_requests_refused_before_the_account_is_known_write_nothing(walk: Walk) -> None:
    before = len(_entries(walk))
    body = {"datasetId": "walk-anon", "dataset": {}}
    assert walk.env.http(None).post(A + "/datasets", json=body).status_code == 401
    assert walk.env.http("fw_" + "x" * 43).post(A + "/datasets", json=body).status_code == 401
    assert walk.http("globex").post(A + "/datasets", json=body).status_code == 404  # another account's id
    assert len(_entries(walk)) == before
    # A member of the account refused by its role before the route runs is written.
    assert walk.http("inf").post(A + "/datasets", json=body).status_code == 403
    assert walk.http("inf").get(A + "/datasets").status_code == 403  # a read: nothing to audit
    [e] = _entries(walk)[before:]
    assert (e.method, e.status_code, e.principal, e.key_prefix, e.resource) == (
        "POST /v1/accounts/{account_id}/datasets", 403, "walk-inf@acme.test", walk.keys["inf"][:8],
        "accounts/acme/datasets")


def _list(w: Walk, who: str = "admin", account: str = "acme", **params: object) -> httpx.Response:
    return w.http(who).get(f"/v1/accounts/{account}/auditLogs", params=params)


def test_list_is_admins_only_and_per_account(walk: Walk) -> None:
    assert _list(walk).status_code == 200
    assert _list(walk, "user").status_code == 403
    assert _list(walk, "inf").status_code == 403
    assert _list(walk, "globex").status_code == 404  # acme's log, asked with globex's key
    r = _list(walk, "globex", account="globex")
    assert r.status_code == 200 and all(e["resource"].startswith("accounts/globex")
                                        for e in r.json()["auditLogs"])
    assert walk.env.http(None).get(A + "/auditLogs").status_code == 401


@pytest.mark.usefixtures("walked")
def test_list_filters_pages_newest_first(walk: Walk) -> None:
    a = walk.http("admin")
    for i in range(5):
        assert a.patch(A + "/users/walk-user", json={"displayName": f"page {i}"}).status_code == 200
    r = _list(walk, pageSize=2)
    body = r.json()
    assert r.status_code == 200 and len(body["auditLogs"]) == 2 and body["totalSize"] >= 5
    stamps = [e["timestamp"] for e in body["auditLogs"]]
    assert stamps == sorted(stamps, reverse=True)
    assert body["auditLogs"][0]["payload"] == {"displayName": "page 4"}  # the newest change first
    e = body["auditLogs"][0]
    assert e["status"] == {"code": "OK", "message": ""} and e["principal"] == "ops@acme.test"
    assert e["apiKeyPrefix"] == walk.keys["admin"][:8] and e["resource"] == "accounts/acme/users/walk-user"
    # Every page, newest first, each entry once; the token refuses other parameters.
    seen, token = [], None
    while True:
        page = _list(walk, pageSize=7, **({"pageToken": token} if token else {})).json()
        seen += [x["id"] for x in page["auditLogs"]]
        token = page.get("nextPageToken")
        if not token:
            break
    assert len(seen) == len(set(seen)) == page["totalSize"]
    assert _list(walk, pageSize=3, pageToken=body["nextPageToken"]).status_code == 400
    assert _list(walk, pageSize=2, pageToken="garbage!").status_code == 400
    assert _list(walk, pageSize=-1).status_code == 400
    assert len(_list(walk, pageSize=1000).json()["auditLogs"]) == min(200, page["totalSize"])
    assert len(_list(walk).json()["auditLogs"]) == min(10, page["totalSize"])  # the spec's default page
    # Filters: method (exact, or its first words), email, time.
    patch = _list(walk, filter='method="PATCH /v1/accounts/{account_id}/users/{user_id}"', pageSize=200).json()
    assert patch["totalSize"] >= 5 and {x["method"] for x in patch["auditLogs"]} == {
        "PATCH /v1/accounts/{account_id}/users/{user_id}"}
    deletes = _list(walk, filter='method="DELETE"', pageSize=200).json()["auditLogs"]
    assert deletes and all(x["method"].startswith("DELETE ") for x in deletes)
    assert _list(walk, filter='resource="x"').status_code == 400
    users = _list(walk, email="walk-user@acme.test", pageSize=200).json()["auditLogs"]
    assert users and {x["principal"] for x in users} == {"walk-user@acme.test"}
    newest = body["auditLogs"][0]["timestamp"]
    after = _list(walk, startTime=newest, pageSize=200).json()["auditLogs"]
    assert after and all(x["timestamp"] >= newest for x in after)
    assert _list(walk, endTime="2000-01-01T00:00:00Z").json()["totalSize"] == 0
    assert _list(walk, startTime="yesterday").status_code == 400
    assert _list(walk, startTime="2030-01-01T00:00:00Z", endTime="2029-01-01T00:00:00Z").status_code == 400


@pytest.mark.usefixtures("walked")
def test_operator_commands_write_entries_and_ember_audit_prints_them(walk: Walk, capsys) -> None:  # noqa: ANN001
    d = ["--data-dir", walk.env.data_dir]
    assert ember_main(["keys", "create", "--account", "acme", "--user", "walk-user", *d]) == 0
    made = capsys.readouterr().out.strip().splitlines()[-1]
    walk.keys["cli"] = made
    assert ember_main(["accounts", "set-quota", "acme", "generated-tokens-per-minute", "--max-value", "99999",
                       *d]) == 0
    assert ember_main(["keys", "revoke", "no-such-key", "--account", "acme", *d]) == 2  # fails: 404 entry
    assert ember_main(["accounts", "create", "acme", "--email", "x@acme.test", *d]) == 2  # exists: 409 entry
    assert ember_main(["jobs", "cancel", "walk-job", "--account", "acme", *d]) == 1  # finished: 400 entry
    capsys.readouterr()
    cli = [x for x in _list(walk, filter='method="cli"', pageSize=200).json()["auditLogs"]]
    assert [(x["method"], x["httpStatus"]) for x in cli[:5]] == [
        ("cli ember jobs cancel", 400), ("cli ember accounts create", 409), ("cli ember keys revoke", 404),
        ("cli ember accounts set-quota", 200), ("cli ember keys create", 200)]
    assert all(x["principal"] == "operator" and x["isAdminAction"] and x["source"] == "cli" for x in cli)
    assert cli[4]["resource"].startswith("accounts/acme/users/walk-user/apiKeys/")
    assert cli[0]["resource"] == "accounts/acme/batchInferenceJobs/walk-job"
    assert ember_main(["audit", "--account", "acme", "--method", "cli ember keys", "--limit", "5", *d]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if "cli ember keys" in ln]
    assert len(lines) == 2 and " 404 " in lines[0] and " 200 " in lines[1]  # newest first
    assert ember_main(["audit", "--account", "acme", "--email", "walk-user@acme.test", "--since", "1h", "--json",
                       *d]) == 0
    got = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert got and {x["principal"] for x in got} == {"walk-user@acme.test"}
    assert ember_main(["audit", "--account", "acme", "--since", "soon", *d]) == 2


@pytest.mark.usefixtures("walked")
def test_disabling_a_user_and_rotating_the_signing_key_are_audited(walk: Walk, capsys) -> None:  # noqa: ANN001
    d = ["--data-dir", walk.env.data_dir]
    a = walk.http("admin")
    assert a.patch(A + "/users/walk-user", json={"state": "DISABLED"}).status_code == 200
    assert a.patch(A + "/users/walk-user", json={"state": "READY"}).status_code == 200
    api = _list(walk, filter='method="PATCH"', pageSize=2).json()["auditLogs"]
    assert [x["payload"].get("state") for x in api] == ["READY", "DISABLED"]
    assert ember_main(["users", "disable", "walk-user", "--account", "acme", *d]) == 0
    assert ember_main(["users", "enable", "walk-user", "--account", "acme", *d]) == 0
    assert ember_main(["users", "disable", "nobody", "--account", "acme", *d]) == 2  # 404, written too
    assert ember_main(["secrets", "rotate-signing-key", *d]) == 0
    capsys.readouterr()
    cli = _list(walk, filter='method="cli ember users"', pageSize=3).json()["auditLogs"]
    assert [(x["method"], x["httpStatus"], x["resource"]) for x in cli] == [
        ("cli ember users disable", 404, "accounts/acme/users/nobody"),
        ("cli ember users enable", 200, "accounts/acme/users/walk-user"),
        ("cli ember users disable", 200, "accounts/acme/users/walk-user")]
    assert ember_main(["audit", "--account", "_server", "--json", *d]) == 0
    server = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [x["method"] for x in server][:1] == ["cli ember secrets rotate-signing-key"]


@pytest.fixture(scope="module")
def secrets_made(walk: Walk, walked: Walk) -> list[str]:
    """Every key the module made and the signatures of download URLs it was given and used, after a
    request that carried a key in its query string (the audit payload keeps query parameters)."""
    a = walk.http("admin")
    for ds in ("walk-ds", "walk-job-output"):
        urls = a.get(A + f"/datasets/{ds}:getDownloadEndpoint").json()["filenameToSignedUrls"]
        for url in urls.values():
            walk.signatures.add(re.search(r"signature=([^&]+)", url).group(1))
            assert httpx.get(url, timeout=60).status_code == 200
    assert len(walk.signatures) >= 2
    r = a.patch(A + "/users/walk-user", params={"note": walk.keys["inf"], "key": walk.keys["user"]},
                json={"displayName": "query"}, headers={"user-agent": f"agent {walk.keys['inf']}"})
    assert r.status_code == 200
    # A key pasted where an id goes is echoed by the 400's message and the resource: masked in the entry.
    r = a.post(A + "/users", params={"userId": walk.keys["user"]}, json={"role": "user"})
    assert r.status_code == 400 and walk.keys["user"][:20] in r.text
    time.sleep(0.2)
    out = [*walk.keys.values(), *walk.signatures]
    assert len(out) >= 8
    return out


def test_no_key_or_signature_in_the_database(walk: Walk, secrets_made: list[str]) -> None:
    files = [f for f in glob.glob(os.path.join(walk.env.data_dir, "ember.db*")) if os.path.isfile(f)]
    assert files and _entries(walk)
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        for s in secrets_made:
            assert s.encode() not in data, f"a secret is in {os.path.basename(path)}"
    [e] = [e for e in _entries(walk) if e.payload.get("key") == "[redacted]"]
    assert e.payload["note"] == "fw_[redacted]"


def test_no_key_or_signature_in_embers_log(walk: Walk, secrets_made: list[str]) -> None:
    lines = [ln for ln in walk.log.lines if ln]
    assert lines
    for s in secrets_made:
        assert not [ln for ln in lines if s in ln and not ln.startswith("127.0.0.1:")], "a secret is in the log"


def test_no_key_or_signature_in_the_access_log(walk: Walk, secrets_made: list[str]) -> None:
    access = [ln for ln in walk.log.lines if "HTTP/1.1" in ln]
    assert access
    for s in secrets_made:
        assert not [ln for ln in access if s in ln], "a secret is in the access log"
