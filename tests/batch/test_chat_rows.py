"""Chat rows (`messages`) in a Gateway batch job, mixed with completion rows, through the fireworks-ai SDK:
each chat row's response is what `POST /v1/chat/completions` answers."""

from __future__ import annotations

import json

from tests.batch.helpers import MODEL_ID, BatchEnv, download, jsonl, lines_of, upload, wait_job

QUESTIONS = ["What is 2 plus 2?", "Name a colour.", "Say hello in French."]


def chat_rows() -> list[dict]:
    rows = [{"custom_id": f"chat-{i}", "body": {"messages": [{"role": "user", "content": q}]}}
            for i, q in enumerate(QUESTIONS)]
    rows[1]["body"]["messages"].insert(0, {"role": "system", "content": "Answer in one word."})
    rows[2]["body"]["max_completion_tokens"] = 3  # the row's own limit wins over the job's maxTokens
    return rows


def test_chat_and_completion_rows_in_one_job_equal_the_synchronous_answers(env: BatchEnv) -> None:
    c = env.sdk()
    completions = [{"custom_id": f"text-{i}", "body": {"prompt": f"Count to {i}:"}} for i in range(2)]
    data = [completions[0], *chat_rows(), completions[1]]
    upload(c, "chat-mixed-in", jsonl(data))
    c.batch_inference_jobs.create(model=MODEL_ID, input_dataset_id="chat-mixed-in",
                                  batch_inference_job_id="chat-mixed",
                                  inference_parameters={"max_tokens": 8, "temperature": 0.0})
    job = wait_job(c, "chat-mixed")
    assert job.state == "JOB_STATE_COMPLETED", job.status
    p = job.job_progress
    assert (p.total_input_requests, p.successfully_processed_requests, p.failed_requests) == (5, 5, 0)
    files = download(c, "chat-mixed-output")
    assert files["error-data"] == b""
    got = {r["custom_id"]: r["response"] for r in lines_of(files["BIJOutputSet.jsonl"])}
    assert sorted(got) == sorted(r["custom_id"] for r in data)
    for r in chat_rows():
        limit = {} if "max_completion_tokens" in r["body"] else {"max_tokens": 8}
        sync = c.chat.completions.create(model=MODEL_ID, temperature=0.0, **limit, **r["body"])
        out = got[r["custom_id"]]
        assert out["object"] == "chat.completion" and out["model"] == MODEL_ID
        assert set(out) == set(sync.model_dump(exclude_unset=True)), (out, sync)
        assert out["choices"][0]["message"] == {"role": "assistant", "content": sync.choices[0].message.content}
        assert out["choices"][0]["finish_reason"] == sync.choices[0].finish_reason
        # Cached prompt tokens may differ: the batch row warmed the prefix cache the synchronous call uses.
        assert ((out["usage"]["prompt_tokens"], out["usage"]["completion_tokens"], out["usage"]["total_tokens"])
                == (sync.usage.prompt_tokens, sync.usage.completion_tokens, sync.usage.total_tokens))
    assert got["chat-2"]["usage"]["completion_tokens"] <= 3
    for r in completions:
        sync = c.completions.create(model=MODEL_ID, temperature=0.0, max_tokens=8, **r["body"])
        out = got[r["custom_id"]]
        assert out["object"] == "text_completion" and out["choices"][0]["text"] == sync.choices[0].text
        assert out["usage"]["completion_tokens"] == sync.usage.completion_tokens


def test_a_row_with_both_prompt_and_messages_or_neither_is_its_error_line(env: BatchEnv) -> None:
    c = env.sdk()
    data = [{"custom_id": "both", "body": {"prompt": "x", "messages": [{"role": "user", "content": "x"}]}},
            {"custom_id": "neither", "body": {"max_tokens": 3}},
            {"custom_id": "chat-bad-field", "body": {"messages": [{"role": "user", "content": "x"}], "echo": 3}},
            {"custom_id": "chat-ok", "body": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}}]
    upload(c, "chat-bad-in", jsonl(data))
    c.batch_inference_jobs.create(model=MODEL_ID, input_dataset_id="chat-bad-in", batch_inference_job_id="chat-bad",
                                  inference_parameters={"extra_body": json.dumps({"images": []})})
    job = wait_job(c, "chat-bad")
    assert job.state == "JOB_STATE_COMPLETED", job.status
    files = download(c, "chat-bad-output")
    errors = {e["custom_id"]: e["error"] for e in lines_of(files["error-data"])}
    assert set(errors) == {"both", "neither", "chat-bad-field"}
    assert "not both" in errors["both"]["message"] and errors["both"]["param"] == "body"
    assert "neither" in errors["neither"]["message"] and errors["neither"]["param"] == "body"
    assert errors["chat-bad-field"]["param"] == "echo"
    # extraBody's completion-only field (images) is no chat row's: the chat row still runs.
    assert [r["custom_id"] for r in lines_of(files["BIJOutputSet.jsonl"])] == ["chat-ok"]
