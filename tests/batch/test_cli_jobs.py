"""`ember jobs list | get | cancel | watch` on the store a live server runs on."""

from __future__ import annotations

import json
import time

import pytest

from ember.cli.main import main
from tests.batch.helpers import MODEL_ID, BatchEnv, jsonl, upload, wait_job


def rows(n: int, max_tokens: int) -> bytes:
    return jsonl([{"custom_id": f"c{i}", "body": {"prompt": f"Count to {i}:", "max_tokens": max_tokens,
                                                  "ignore_eos": True}} for i in range(n)])


def test_list_get_watch_cancel(env: BatchEnv, capsys: pytest.CaptureFixture[str]) -> None:
    c = env.sdk()
    upload(c, "cli-in", rows(6, 4))
    c.batch_inference_jobs.create(model=MODEL_ID, input_dataset_id="cli-in", batch_inference_job_id="cli-a")
    capsys.readouterr()

    # watch: a live bar until the job ends; 0 because it completed
    assert main(["jobs", "watch", "cli-a", "--data-dir", env.data_dir, "--interval", "0.1"]) == 0
    err = capsys.readouterr().err
    assert "cli-a" in err and "6/6" in err and "COMPLETED" in err

    assert main(["jobs", "list", "--data-dir", env.data_dir]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if " cli-a " in x)
    assert "COMPLETED" in line and "6/6" in line and line.startswith("acme")
    assert main(["jobs", "list", "--data-dir", env.data_dir, "--state", "RUNNING"]) == 0
    assert " cli-a " not in capsys.readouterr().out

    assert main(["jobs", "get", "accounts/acme/batchInferenceJobs/cli-a", "--data-dir", env.data_dir]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["state"] == "JOB_STATE_COMPLETED" and got["jobProgress"]["successfullyProcessedRequests"] == 6

    assert main(["jobs", "cancel", "cli-a", "--data-dir", env.data_dir]) == 1  # finished: nothing to cancel
    assert main(["jobs", "get", "nope", "--data-dir", env.data_dir]) == 2
    assert "no batch inference job" in capsys.readouterr().err

    upload(c, "cli-long-in", rows(40, 48))
    c.batch_inference_jobs.create(model=MODEL_ID, input_dataset_id="cli-long-in", batch_inference_job_id="cli-b")
    wait_job(c, "cli-b", until={"JOB_STATE_RUNNING"})
    assert main(["jobs", "cancel", "cli-b", "--account", "acme", "--data-dir", env.data_dir]) == 0
    assert "cancelling" in capsys.readouterr().out
    job = wait_job(c, "cli-b", timeout=30)
    assert job.state == "JOB_STATE_CANCELLED" and job.status.message == "cancelled by the operator"
    assert job.job_progress.total_processed_requests < 40
    t0 = time.monotonic()
    assert main(["jobs", "watch", "cli-b", "--data-dir", env.data_dir]) == 1  # ended, but not completed
    assert time.monotonic() - t0 < 10
