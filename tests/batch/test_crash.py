"""kill -9 of a real `ember serve` mid-job: restarted on the same store, the job resumes by itself and its
output holds every custom_id exactly once, completion and chat rows alike (SQLite file and PostgreSQL)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fireworks import Fireworks

from ember.config import StoreConfig
from ember.store.accounts import Accounts
from ember.store.db import open_store
from tests.batch.helpers import MODEL_ID, download, jsonl, lines_of, upload, wait_job
from tests.postgres import PostgresServer

ROWS = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """`ember serve` as its own process (the real CLI, default model)."""

    def __init__(self, store_flags: list[str], log: Path) -> None:
        self.port = free_port()
        self.log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ember", "serve", "--port", str(self.port), "--log-level", "warning",
             "--max-num-seqs", "32", *store_flags], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while True:
            assert self.proc.poll() is None, f"ember serve exited; see {log}"
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "ember serve did not start"
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_kill_9_mid_job_then_restart_lands_every_row_once(backend: str, tmp_path: Path,
                                                          request: pytest.FixtureRequest) -> None:
    flags = ["--data-dir", str(tmp_path)]
    cfg = StoreConfig(data_dir=str(tmp_path))
    if backend == "postgresql":
        pg: PostgresServer = request.getfixturevalue("postgres")
        url = pg.create_database()
        flags += ["--db", url]
        cfg = StoreConfig(data_dir=str(tmp_path), url=url)
    store = open_store(cfg)
    key = Accounts(store).create("acme", "ops@acme.test").key.key
    store.close()

    first = Serve(flags, tmp_path / "serve.log")
    try:
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
        deadline = time.monotonic() + 300
        while True:
            j = c.batch_inference_jobs.get("crash")
            done = j.job_progress.total_processed_requests if j.job_progress else 0
            if done >= 20:
                break
            assert time.monotonic() < deadline and j.state != "JOB_STATE_COMPLETED", (j.state, done)
            time.sleep(0.05)
        first.kill9()
    finally:
        first.stop()
    assert done < ROWS, "the job finished before the kill; the test proves nothing"

    second = Serve(flags, tmp_path / "serve.log")  # same store, same files: nothing else is called
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
