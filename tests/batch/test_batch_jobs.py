"""Batch inference jobs through the fireworks-ai SDK on a live ember (tiny model, SQLite store)."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta

import fireworks
import httpx
import pytest
from sqlalchemy import update

from ember.store.tables import BatchJob
from tests.batch.helpers import (
    MODEL_ID,
    BatchEnv,
    download,
    jsonl,
    lines_of,
    upload,
    wait_job,
)
from tests.harness import wait_until

PREFIX = "You are a careful assistant. Answer in one short sentence. The question follows. "


def rows(n: int, max_tokens: int = 6, prefix: str = PREFIX) -> list[dict]:
    return [{"custom_id": f"q-{i}", "body": {"prompt": f"{prefix}Question {i}: what is {i} plus {i}?",
                                             "max_tokens": max_tokens}} for i in range(n)]


def same_choice(a: dict, b: dict) -> None:
    """Text, finish reason and tokens exactly; logprobs to float noise (another batch shape rounds the
    last bits of a logit differently)."""
    assert (a["index"], a["text"], a["finish_reason"]) == (b["index"], b["text"], b["finish_reason"])
    if b["logprobs"] is None:
        assert a["logprobs"] is None
        return
    la, lb = a["logprobs"], b["logprobs"]
    assert la["tokens"] == lb["tokens"] and la["text_offset"] == lb["text_offset"]
    assert [x is None for x in la["token_logprobs"]] == [x is None for x in lb["token_logprobs"]]
    assert [x for x in la["token_logprobs"] if x is not None] == pytest.approx(
        [x for x in lb["token_logprobs"] if x is not None], abs=1e-3)


def test_sdk_end_to_end_equals_synchronous_completions(env: BatchEnv) -> None:
    c = env.sdk()
    data = rows(10)
    data[3]["body"]["max_tokens"] = 3  # a row's own value wins over the job's defaults
    data[4]["body"].update(n=2, echo=True, logprobs=1)
    upload(c, "e2e-in", jsonl(data))
    job = c.batch_inference_jobs.create(model=MODEL_ID, input_dataset_id="accounts/acme/datasets/e2e-in",
                                        output_dataset_id="e2e-out", batch_inference_job_id="e2e",
                                        display_name="end to end",
                                        inference_parameters={"max_tokens": 5, "temperature": 0.0,
                                                              "extra_body": json.dumps({"ignore_eos": True})})
    assert job.name == "accounts/acme/batchInferenceJobs/e2e"
    assert job.state in ("JOB_STATE_VALIDATING", "JOB_STATE_PENDING", "JOB_STATE_RUNNING")
    assert job.output_dataset_id == "accounts/acme/datasets/e2e-out"
    job = wait_job(c, "e2e")
    assert job.state == "JOB_STATE_COMPLETED", job.status
    p = job.job_progress
    assert (p.total_input_requests, p.successfully_processed_requests, p.failed_requests,
            p.total_processed_requests, p.percent, p.output_rows) == (10, 10, 0, 10, 100, 10)
    assert p.input_tokens > 0 and p.output_tokens > 0
    assert p.cached_input_token_count > 0  # rows share a long prefix: the prefix cache served it
    out = c.datasets.get("e2e-out")
    assert out.state == "READY" and out.source_job_name == "accounts/acme/batchInferenceJobs/e2e"
    files = download(c, "e2e-out")
    assert set(files) == {"BIJOutputSet.jsonl", "error-data"} and files["error-data"] == b""
    results = {r["custom_id"]: r["response"] for r in lines_of(files["BIJOutputSet.jsonl"])}
    assert sorted(results) == sorted(r["custom_id"] for r in data)
    with env.http() as h:
        for r in data:
            body = {"max_tokens": 5, "temperature": 0.0, "ignore_eos": True, **r["body"], "model": MODEL_ID}
            sync = h.post("/v1/completions", json=body).json()
            got = results[r["custom_id"]]
            assert got["object"] == "text_completion" and got["model"] == MODEL_ID
            assert len(got["choices"]) == len(sync["choices"])
            for a, b in zip(got["choices"], sync["choices"], strict=True):
                same_choice(a, b)
            assert got["usage"]["completion_tokens"] == sync["usage"]["completion_tokens"]
            assert got["usage"]["prompt_tokens"] == sync["usage"]["prompt_tokens"]
    assert len(results["q-3"]["choices"][0]["logprobs"] or []) == 0
    assert results["q-4"]["choices"][1]["index"] == 1
    listed = c.batch_inference_jobs.list()
    assert "accounts/acme/batchInferenceJobs/e2e" in [j.name for j in listed]


def test_batch_rows_are_metered_as_batch(env: BatchEnv) -> None:
    c = env.sdk()
    upload(c, "meter-in", jsonl(rows(3, max_tokens=2)))
    c.batch_inference_jobs.create(model=MODEL_ID, input_dataset_id="meter-in", batch_inference_job_id="meter")
    assert wait_job(c, "meter").state == "JOB_STATE_COMPLETED"
    day = datetime.now(UTC).date()
    with env.http() as h:
        r = h.get("/v1/accounts/acme/billingUsage", params={"startTime": str(day),
                                                              "endTime": str(day + timedelta(days=1))})
    assert r.status_code == 200, r.text
    batch = [x for x in r.json()["serverlessCosts"] if x["usageType"] == "BATCH"]
    assert batch and int(batch[0]["completionTokens"]) >= 6 and int(batch[0]["promptTokens"]) > 0


def test_invalid_rows_go_to_error_data_and_the_job_goes_on(env: BatchEnv) -> None:
    c = env.sdk()
    data = rows(3, max_tokens=3) + [
        {"custom_id": "has-model", "body": {"prompt": "x", "model": MODEL_ID}},
        {"custom_id": "unknown-field", "body": {"prompt": "x", "bogus": 1}},
        {"custom_id": "bad-range", "body": {"prompt": "x", "temperature": 7}},
        {"custom_id": "no-prompt", "body": {"max_tokens": 3}},
        {"custom_id": "too-long", "body": {"prompt": "word " * 5000}},
        {"custom_id": "surrogate", "body": {"prompt": "a\ud800b"}},
    ]
    upload(c, "bad-rows-in", jsonl(data))
    c.batch_inference_jobs.create(model=MODEL_ID, input_dataset_id="bad-rows-in", batch_inference_job_id="bad-rows")
    job = wait_job(c, "bad-rows")
    assert job.state == "JOB_STATE_COMPLETED"
    assert job.job_progress.failed_requests == 6 and job.job_progress.successfully_processed_requests == 3
    files = download(c, "bad-rows-output")  # the default output dataset: JOB_ID-output
    errors = {e["custom_id"]: e["error"] for e in lines_of(files["error-data"])}
    assert set(errors) == {"has-model", "unknown-field", "bad-range", "no-prompt", "too-long", "surrogate"}
    assert errors["has-model"]["param"] == "model"
    assert errors["unknown-field"]["param"] == "bogus"
    assert errors["bad-range"]["param"] == "temperature"
    assert errors["too-long"]["code"] == "context_length_exceeded"
    assert all(set(e) == {"message", "type", "param", "code"} and e["message"] for e in errors.values())
    assert len(lines_of(files["BIJOutputSet.jsonl"])) == 3


def test_a_job_with_no_valid_row_fails(env: BatchEnv) -> None:
    c = env.sdk()
    upload(c, "none-valid-in", jsonl([{"custom_id": "a", "body": {"prompt": "x", "top_p": 9}}]))
    c.batch_inference_jobs.create(model=MODEL_ID, input_dataset_id="none-valid-in", batch_inference_job_id="none-valid")
    job = wait_job(c, "none-valid")
    assert job.state == "JOB_STATE_FAILED" and "no row" in job.status.message
    assert len(lines_of(download(c, "none-valid-output")["error-data"])) == 1


def test_create_refusals(env: BatchEnv) -> None:
    c = env.sdk()
    c.datasets.create(dataset_id="still-uploading", dataset={"exampleCount": "1"})
    with pytest.raises(fireworks.BadRequestError, match="UPLOADING"):
        c.batch_inference_jobs.create(model=MODEL_ID, input_dataset_id="still-uploading")
    with pytest.raises(fireworks.NotFoundError, match="no-such"):
        c.batch_inference_jobs.create(model=MODEL_ID, input_dataset_id="no-such")
    upload(c, "refusals-in", jsonl(rows(1)))
    with pytest.raises(fireworks.NotFoundError):
        c.batch_inference_jobs.create(model="accounts/fireworks/models/not-here", input_dataset_id="refusals-in")
    with pytest.raises(fireworks.BadRequestError):
        c.batch_inference_jobs.create(input_dataset_id="refusals-in")  # no model
    with pytest.raises(fireworks.NotFoundError):
        c.batch_inference_jobs.create(continued_from_job_name="accounts/acme/batchInferenceJobs/ghost")
    with pytest.raises(fireworks.NotFoundError):
        c.batch_inference_jobs.create(model=MODEL_ID, input_dataset_id="accounts/globex/datasets/refusals-in")
    with pytest.raises(fireworks.BadRequestError):
        c.batch_inference_jobs.create(model=MODEL_ID, input_dataset_id="refusals-in",
                                      batch_inference_job_id="Bad_Id")
    with pytest.raises(fireworks.BadRequestError):
        c.batch_inference_jobs.create(model=MODEL_ID, input_dataset_id="refusals-in",
                                      inference_parameters={"extra_body": "{not json"})
    with pytest.raises(fireworks.BadRequestError):
        c.batch_inference_jobs.create(model=MODEL_ID, input_dataset_id="refusals-in",
                                      output_dataset_id="refusals-in")  # would overwrite a dataset
    c.batch_inference_jobs.create(model=MODEL_ID, input_dataset_id="refusals-in", batch_inference_job_id="dup")
    with pytest.raises(fireworks.ConflictError):
        c.batch_inference_jobs.create(model=MODEL_ID, input_dataset_id="refusals-in", batch_inference_job_id="dup",
                                      output_dataset_id="dup-2")
    with pytest.raises(fireworks.NotFoundError):
        c.batch_inference_jobs.get("never-made")
    with pytest.raises(fireworks.NotFoundError):
        c.batch_inference_jobs.delete("never-made")
    with env.http() as h:  # every refusal is a google.rpc.Status
        r = h.post("/v1/accounts/acme/batchInferenceJobs", json={"model": MODEL_ID, "inputDatasetId": "no-such"})
        assert r.status_code == 404 and set(r.json()) == {"code", "message", "details"}
        r = h.post("/v1/accounts/acme/batchInferenceJobs", json={"model": MODEL_ID, "bogus": True})
        assert r.status_code == 400


def test_a_vanished_input_file_fails_the_job_naming_it(env: BatchEnv) -> None:
    c = env.sdk()
    upload(c, "vanish-in", jsonl(rows(2)), filename="gone.jsonl")
    os.remove(os.path.join(env.data_dir, "datasets", "acme", "vanish-in", "gone.jsonl"))
    c.batch_inference_jobs.create(model=MODEL_ID, input_dataset_id="vanish-in", batch_inference_job_id="vanish")
    job = wait_job(c, "vanish")
    assert job.state == "JOB_STATE_FAILED"
    assert "gone.jsonl" in job.status.message and "vanish-in" in job.status.message


def test_cancel_then_continue_runs_only_the_missing_rows(env: BatchEnv) -> None:
    c = env.sdk()
    n = 40
    upload(c, "cc-in", jsonl(rows(n, max_tokens=48)))
    c.batch_inference_jobs.create(model=MODEL_ID, input_dataset_id="cc-in", batch_inference_job_id="cc-parent",
                                  inference_parameters={"temperature": 0.0,
                                                        "extra_body": json.dumps({"ignore_eos": True})})

    def four_processed() -> bool:
        j = c.batch_inference_jobs.get("cc-parent")
        if j.job_progress and j.job_progress.total_processed_requests >= 4:
            return True
        assert j.state not in ("JOB_STATE_COMPLETED", "JOB_STATE_FAILED"), j.state
        return False

    wait_until(four_processed, 120, "4 rows of cc-parent processed", interval=0.02)
    c.batch_inference_jobs.delete("cc-parent")
    parent = c.batch_inference_jobs.get("cc-parent")  # still readable, and final
    assert parent.state == "JOB_STATE_CANCELLED"
    done = parent.job_progress.successfully_processed_requests
    assert 4 <= done < n
    time.sleep(0.5)
    assert c.batch_inference_jobs.get("cc-parent").job_progress.successfully_processed_requests == done
    partial = lines_of(download(c, "cc-parent-output")["BIJOutputSet.jsonl"])
    assert len(partial) == done
    child = c.batch_inference_jobs.create(continued_from_job_name="accounts/acme/batchInferenceJobs/cc-parent",
                                          batch_inference_job_id="cc-child")
    assert child.continued_from_job_name == "accounts/acme/batchInferenceJobs/cc-parent"
    assert child.model == MODEL_ID and child.input_dataset_id == "accounts/acme/datasets/cc-in"
    child = wait_job(c, "cc-child")
    assert child.state == "JOB_STATE_COMPLETED"
    assert child.job_progress.total_input_requests == n - done
    assert child.job_progress.successfully_processed_requests == n - done
    own = lines_of(download(c, "cc-child-output")["BIJOutputSet.jsonl"])
    assert not {r["custom_id"] for r in own} & {r["custom_id"] for r in partial}
    lineage = download(c, "cc-child-output", lineage=True)
    assert set(lineage) == {"cc-child-output/BIJOutputSet.jsonl", "cc-child-output/error-data",
                            "cc-parent-output/BIJOutputSet.jsonl", "cc-parent-output/error-data"}
    ids = [r["custom_id"] for name, data in lineage.items() for r in lines_of(data)]
    assert sorted(ids) == sorted(f"q-{i}" for i in range(n))  # each row once across the chain
    # A continued row gives what it would have given in one job (the parent's parameters are inherited).
    first = own[0]
    i = int(first["custom_id"].removeprefix("q-"))
    with env.http() as h:
        sync = h.post("/v1/completions", json={**rows(n, max_tokens=48)[i]["body"], "model": MODEL_ID,
                                               "temperature": 0.0, "ignore_eos": True}).json()
    assert first["response"]["choices"][0]["text"] == sync["choices"][0]["text"]


def test_deleting_finished_jobs_removes_them(env: BatchEnv) -> None:
    c = env.sdk()
    upload(c, "del-in", jsonl(rows(2, max_tokens=2)))
    c.batch_inference_jobs.create(model=MODEL_ID, input_dataset_id="del-in", batch_inference_job_id="del")
    assert wait_job(c, "del").state == "JOB_STATE_COMPLETED"
    c.batch_inference_jobs.delete("del")
    with pytest.raises(fireworks.NotFoundError):
        c.batch_inference_jobs.get("del")
    with pytest.raises(fireworks.NotFoundError):
        c.batch_inference_jobs.delete("del")
    assert c.datasets.get("del-output").state == "READY"  # the results outlive the job


def test_a_job_past_its_expire_time_expires_keeping_its_results(env: BatchEnv) -> None:
    c = env.sdk()
    upload(c, "exp-in", jsonl(rows(30, max_tokens=48)))
    c.batch_inference_jobs.create(model=MODEL_ID, input_dataset_id="exp-in", batch_inference_job_id="exp",
                                  inference_parameters={"extra_body": json.dumps({"ignore_eos": True})})
    wait_job(c, "exp", until={"JOB_STATE_RUNNING"})
    store = env.store()
    try:
        with store.session() as s:
            s.execute(update(BatchJob).where(BatchJob.job_id == "exp")
                      .values(expire_time=datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=1)))
    finally:
        store.close()
    job = wait_job(c, "exp")
    assert job.state == "JOB_STATE_EXPIRED"
    kept = lines_of(download(c, "exp-output")["BIJOutputSet.jsonl"])
    assert len(kept) == job.job_progress.successfully_processed_requests < 30


def test_jobs_are_served_oldest_first_and_fairly(env: BatchEnv) -> None:
    """Two jobs at once: both progress while both run (rows are dealt round-robin), and the older one,
    first served in every round, is never behind the newer one by more than a round."""
    c = env.sdk()
    n = 40
    upload(c, "fair-a-in", jsonl(rows(n, max_tokens=48)))
    upload(c, "fair-b-in", jsonl(rows(n, max_tokens=48, prefix="Another prefix entirely. ")))
    params = {"extra_body": json.dumps({"ignore_eos": True})}
    c.batch_inference_jobs.create(model=MODEL_ID, input_dataset_id="fair-a-in", batch_inference_job_id="fair-a",
                                  inference_parameters=params)
    c.batch_inference_jobs.create(model=MODEL_ID, input_dataset_id="fair-b-in", batch_inference_job_id="fair-b",
                                  inference_parameters=params)
    both_moving = False
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        a, b = c.batch_inference_jobs.get("fair-a"), c.batch_inference_jobs.get("fair-b")
        pa = a.job_progress.total_processed_requests if a.job_progress else 0
        pb = b.job_progress.total_processed_requests if b.job_progress else 0
        if 0 < pa < n and 0 < pb < n:
            both_moving = True
            assert pa + 8 >= pb, (pa, pb)  # 4 rows in flight: a round or two apart at most (B is read later)
        if b.state == "JOB_STATE_COMPLETED":
            break
        time.sleep(0.02)
    assert wait_job(c, "fair-a").state == wait_job(c, "fair-b").state == "JOB_STATE_COMPLETED"
    assert both_moving


def test_the_download_and_job_paths_need_the_right_key(env: BatchEnv) -> None:
    with httpx.Client(base_url=env.url, timeout=30) as h:
        assert h.get("/v1/accounts/acme/batchInferenceJobs").status_code == 401
    with env.http() as h:
        assert h.get("/v1/accounts/globex/batchInferenceJobs").status_code == 404
        r = h.get("/v1/accounts/acme/batchInferenceJobs", params={"filter": 'state="JOB_STATE_COMPLETED"'})
        assert r.status_code == 200 and all(j["state"] == "JOB_STATE_COMPLETED" for j in r.json()["batchInferenceJobs"])
        assert h.get("/v1/accounts/acme/batchInferenceJobs", params={"filter": "state>1"}).status_code == 400
