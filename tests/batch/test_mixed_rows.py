"""A Gateway batch job whose rows mix completion bodies and chat bodies (`messages`): each runs through the
same pipeline as its synchronous endpoint and answers exactly as it does at temperature 0."""

from __future__ import annotations

from tests.batch.helpers import MODEL_ID, BatchEnv, download, jsonl, lines_of, upload, wait_job


def test_completion_and_chat_rows_in_one_file_equal_their_synchronous_answers(env: BatchEnv) -> None:
    c = env.sdk()
    chat = {"messages": [{"role": "system", "content": "Answer briefly."},
                         {"role": "user", "content": "What is two plus two?"}], "max_tokens": 6}
    data = [{"custom_id": "cmpl", "body": {"prompt": "Two plus two is", "max_tokens": 6}},
            {"custom_id": "chat", "body": chat},
            {"custom_id": "chat-n", "body": {**chat, "n": 2, "logprobs": True, "top_logprobs": 2}},
            {"custom_id": "chat-bad", "body": {**chat, "prompt": "both"}}]
    upload(c, "mixed-in", jsonl(data))
    c.batch_inference_jobs.create(model=MODEL_ID, input_dataset_id="mixed-in", batch_inference_job_id="mixed",
                                  inference_parameters={"temperature": 0.0})
    job = wait_job(c, "mixed")
    assert job.state == "JOB_STATE_COMPLETED", job.status
    assert (job.job_progress.successfully_processed_requests, job.job_progress.failed_requests) == (3, 1)
    files = download(c, "mixed-output")
    results = {r["custom_id"]: r["response"] for r in lines_of(files["BIJOutputSet.jsonl"])}
    errors = {r["custom_id"]: r["error"] for r in lines_of(files["error-data"])}
    assert set(errors) == {"chat-bad"} and errors["chat-bad"]["param"] == "prompt"
    with env.http() as h:
        for row in data[:3]:
            path = "/v1/chat/completions" if "messages" in row["body"] else "/v1/completions"
            sync = h.post(path, json={**row["body"], "temperature": 0.0, "model": MODEL_ID}).json()
            got = results[row["custom_id"]]
            assert got["object"] == sync["object"]
            for k in ("prompt_tokens", "completion_tokens"):  # cached tokens differ: the batch warmed the cache
                assert got["usage"][k] == sync["usage"][k]
            for a, b in zip(got["choices"], sync["choices"], strict=True):
                if "message" in b:
                    assert a["message"] == b["message"] and a["finish_reason"] == b["finish_reason"]
                    if b.get("logprobs"):
                        assert [t["token"] for t in a["logprobs"]["content"]] == [
                            t["token"] for t in b["logprobs"]["content"]]
                else:
                    assert a["text"] == b["text"]
