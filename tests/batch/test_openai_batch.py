"""OpenAI's Batch API with the official `openai` SDK, over the same job runner."""

from __future__ import annotations

import json

import openai
import pytest

from tests.batch.helpers import MODEL_ID, BatchEnv
from tests.harness import wait_until

DONE = {"completed", "failed", "expired", "cancelled"}


def client(env: BatchEnv, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=env.url + "/v1", api_key=key or env.key, max_retries=0, timeout=60)


def line(cid: str, body: dict, url: str = "/v1/completions") -> dict:
    return {"custom_id": cid, "method": "POST", "url": url, "body": body}


def wait(c: openai.OpenAI, batch_id: str, until: set[str] = DONE, timeout: float = 180):  # noqa: ANN201
    return wait_until(lambda: (b := c.batches.retrieve(batch_id)).status in until and b, timeout,
                      f"batch {batch_id} to reach {sorted(until)}", interval=0.1)


def test_upload_create_poll_download(env: BatchEnv) -> None:
    c = client(env)
    good = [line(f"o{i}", {"model": MODEL_ID, "prompt": f"Say {i}:", "max_tokens": 4, "temperature": 0})
            for i in range(4)]
    bad = [line("wrong-url", {"model": MODEL_ID, "prompt": "x"}, url="/v1/chat/completions"),
           line("wrong-model", {"model": "gpt-4o", "prompt": "x"}),
           line("bad-field", {"model": MODEL_ID, "prompt": "x", "bogus": 1})]
    data = "".join(json.dumps(x) + "\n" for x in good + bad).encode()
    f = c.files.create(file=("in.jsonl", data), purpose="batch")
    assert f.id.startswith("file-") and f.bytes == len(data) and f.purpose == "batch"
    assert c.files.retrieve(f.id).filename == "in.jsonl"
    assert c.files.content(f.id).content == data
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/completions", completion_window="24h",
                         metadata={"team": "evals"})
    assert b.status in ("validating", "in_progress") and b.metadata == {"team": "evals"}
    b = wait(c, b.id)
    assert b.status == "completed", b
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (7, 4, 3)
    assert b.output_file_id and b.error_file_id and b.completed_at and b.in_progress_at
    outs = [json.loads(x) for x in c.files.content(b.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in outs) == [f"o{i}" for i in range(4)]
    for o in outs:
        assert o["id"].startswith("batch_req_") and o["error"] is None
        assert o["response"]["status_code"] == 200
        sync = c.completions.create(**{**good[int(o["custom_id"][1:])]["body"]})
        assert o["response"]["body"]["choices"][0]["text"] == sync.choices[0].text
    errs = {e["custom_id"]: e for e in map(json.loads, c.files.content(b.error_file_id).text.splitlines())}
    assert set(errs) == {"wrong-url", "wrong-model", "bad-field"}
    assert errs["wrong-model"]["error"]["code"] == "model_not_found" and errs["wrong-model"]["response"] is None
    assert b.id in [x.id for x in c.batches.list()]
    # The same job, seen from the Fireworks side: one engine for both.
    fw = env.sdk().batch_inference_jobs.get(b.id)
    assert fw.state == "JOB_STATE_COMPLETED" and fw.job_progress.failed_requests == 3


def test_cancel_and_refusals(env: BatchEnv) -> None:
    c = client(env)
    rows = [line(f"c{i}", {"model": MODEL_ID, "prompt": f"Count {i}", "max_tokens": 48, "ignore_eos": True})
            for i in range(40)]
    f = c.files.create(file=("long.jsonl", "".join(json.dumps(x) + "\n" for x in rows).encode()),
                       purpose="batch")
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/completions", completion_window="24h")
    wait(c, b.id, until={"in_progress"} | DONE)
    b = c.batches.cancel(b.id)
    assert b.status == "cancelled" and b.cancelled_at
    assert b.request_counts.completed < 40
    with pytest.raises(openai.BadRequestError):
        c.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        c.batches.create(input_file_id="file-nope", endpoint="/v1/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        c.batches.retrieve("batch-nope")
    with pytest.raises(openai.NotFoundError):
        c.files.content("file-nope.results")
    with pytest.raises(openai.BadRequestError):
        c.files.create(file=("x.jsonl", b"not json\n"), purpose="batch")
    with pytest.raises(openai.BadRequestError):
        c.files.create(file=("x.jsonl", json.dumps(rows[0]).encode()), purpose="fine-tune")
    with pytest.raises(openai.AuthenticationError):
        client(env, "fw_not_a_key").batches.retrieve(b.id)
