"""kill -9 of a real `ember serve` mid-job: restarted on the same store, the job resumes by itself and its
output holds every custom_id exactly once, completion and chat rows alike (SQLite file and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fireworks import Fireworks

from ember.config import StoreConfig
from ember.store.accounts import Accounts
from ember.store.db import open_store
from tests.batch.helpers import MODEL_ID, download, jsonl, lines_of, upload, wait_job
from tests.harness import ServeProcess, wait_until
from tests.postgres import PostgresServer

ROWS = 300


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_kill_9_mid_job_then_restart_lands_every_row_once(backend: str, tmp_path: Path,
                                                          request: pytest.FixtureRequest,
                                                          ember_serve: Callable[..., ServeProcess]) -> None:
    flags = ["--data-dir", str(tmp_path), "--log-level", "warning", "--max-num-seqs", "32"]
    cfg = StoreConfig(data_dir=str(tmp_path))
    if backend == "postgresql":
        pg: PostgresServer = request.getfixturevalue("postgres")
        url = pg.create_database()
        flags += ["--db", url]
        cfg = StoreConfig(data_dir=str(tmp_path), url=url)
    store = open_store(cfg)
    key = Accounts(store).create("acme", "ops@acme.test").key.key
    store.close()

    log = tmp_path / "serve.log"
    first = ember_serve(*flags, log_path=log)
    c = Fireworks(api_key=key, base_url=first.url, account_id="acme", max_retries=0, timeout=60)
    # Every third row is a chat row: both kinds of row land exactly once.
    rows = [{"custom_id": f"row-{i:04d}", "body": {"prompt": f"Item {i}: the number after {i} is"}}
            if i % 3 else
            {"custom_id": f"chat-{i:04d}", "body": {"messages": [{"role": "user", "content": f"Count past {i}"}]}}
            for i in range(ROWS)]
    upload(c, "crash-in", jsonl(rows))
    c.batch_inference_jobs.create(model=MODEL_ID, input_dataset_id="crash-in", batch_inference_job_id="crash",
                                  inference_parameters={"max_tokens": 6, "temperature": 0.0,
                                                        "extra_body": json.dumps({"ignore_eos": True})})

    def processed() -> int:
        j = c.batch_inference_jobs.get("crash")
        return j.job_progress.total_processed_requests if j.job_progress else 0

    done = wait_until(lambda: (n := processed()) >= 20 and n, 300, "20 rows processed")
    first.kill9()
    assert done < ROWS, "the job finished before the kill; the test proves nothing"

    second = ember_serve(*flags, log_path=log)  # same store, same files: nothing else is called
    try:
        c = Fireworks(api_key=key, base_url=second.url, account_id="acme", max_retries=0, timeout=60)
        job = wait_job(c, "crash", timeout=600)
        assert job.state == "JOB_STATE_COMPLETED", job.status
        p = job.job_progress
        assert (p.total_input_requests, p.successfully_processed_requests, p.failed_requests) == (ROWS, ROWS, 0)
        files = download(c, "crash-output")
        got = [r["custom_id"] for r in lines_of(files["BIJOutputSet.jsonl"])]
        errors = lines_of(files["error-data"])
        assert errors == []
        assert len(got) == ROWS and sorted(set(got)) == sorted(r["custom_id"] for r in rows)
        kinds = {r["custom_id"]: r["response"]["object"] for r in lines_of(files["BIJOutputSet.jsonl"])}
        assert {kinds[r["custom_id"]] for r in rows if "messages" in r["body"]} == {"chat.completion"}
    finally:
        second.stop()
