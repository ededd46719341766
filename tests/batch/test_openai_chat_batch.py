"""An OpenAI batch of chat completions (`endpoint="/v1/chat/completions"`) with the official `openai` SDK."""

from __future__ import annotations

import json

import openai

from tests.batch.helpers import MODEL_ID, BatchEnv
from tests.batch.test_openai_batch import client, line, wait

ASK = ["What is 3 plus 4?", "Name a fruit.", "Write one word."]
CHAT = "/v1/chat/completions"


def test_chat_batch_lines_equal_the_synchronous_chat_answers(env: BatchEnv) -> None:
    c = client(env)
    good = [line(f"m{i}", {"model": MODEL_ID, "messages": [{"role": "user", "content": q}], "max_tokens": 6,
                           "temperature": 0}, url=CHAT) for i, q in enumerate(ASK)]
    bad = [line("completion-url", {"model": MODEL_ID, "prompt": "x"}),  # a line must name the batch's endpoint
           line("prompt-body", {"model": MODEL_ID, "prompt": "x"}, url=CHAT),
           line("wrong-model", {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}, url=CHAT)]
    f = c.files.create(file=("chat.jsonl", "".join(json.dumps(x) + "\n" for x in good + bad).encode()),
                       purpose="batch")
    b = c.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    assert b.endpoint == CHAT and b.expires_at - b.created_at == 24 * 3600
    b = wait(c, b.id)
    assert b.status == "completed", b
    assert b.endpoint == CHAT and c.batches.retrieve(b.id).endpoint == CHAT
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (6, 3, 3)
    outs = {o["custom_id"]: o for o in map(json.loads, c.files.content(b.output_file_id).text.splitlines())}
    assert sorted(outs) == ["m0", "m1", "m2"]
    for g in good:
        o = outs[g["custom_id"]]
        assert o["error"] is None and o["response"]["status_code"] == 200
        got = o["response"]["body"]
        sync = c.chat.completions.create(**g["body"])
        assert got["object"] == "chat.completion"
        assert got["choices"][0]["message"]["content"] == sync.choices[0].message.content
        assert (got["usage"]["prompt_tokens"], got["usage"]["completion_tokens"]) == (
            sync.usage.prompt_tokens, sync.usage.completion_tokens)
        # The SDK reads the batch line's body as the chat completion it is.
        assert openai.types.chat.ChatCompletion.model_validate(got).choices[0].message.role == "assistant"
    errs = {e["custom_id"]: e["error"] for e in map(json.loads, c.files.content(b.error_file_id).text.splitlines())}
    assert set(errs) == {"completion-url", "prompt-body", "wrong-model"}
    assert CHAT in errs["completion-url"]["message"]
    assert errs["wrong-model"]["code"] == "model_not_found"


def test_one_file_in_two_batches_each_runs_the_lines_of_its_own_endpoint(env: BatchEnv) -> None:
    c = client(env)
    rows = [line("p", {"model": MODEL_ID, "prompt": "Hi", "max_tokens": 2}),
            line("m", {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
                 url=CHAT)]
    f = c.files.create(file=("mixed.jsonl", "".join(json.dumps(x) + "\n" for x in rows).encode()),
                       purpose="batch")
    for endpoint, runs, refused in (("/v1/completions", "p", "m"), (CHAT, "m", "p")):
        b = wait(c, c.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h").id)
        assert b.status == "completed" and b.endpoint == endpoint
        assert (b.request_counts.completed, b.request_counts.failed) == (1, 1)
        outs = [json.loads(x) for x in c.files.content(b.output_file_id).text.splitlines()]
        assert [o["custom_id"] for o in outs] == [runs]
        errs = [json.loads(x) for x in c.files.content(b.error_file_id).text.splitlines()]
        assert [e["custom_id"] for e in errs] == [refused] and endpoint in errs[0]["error"]["message"]
