"""Batch rows with tools (OpenAI's Batch API shape, with the official `openai` SDK): a chat row that carries
`tools` and a required or named `tool_choice` comes back with `tool_calls`, the same calls as the
synchronous answer to that body; a row whose tool definitions are refused lands in the error file, named.

The module's server runs the tiny random-weight model: whatever it would write, the calls are valid by
construction (grammar-constrained), which is what a batch row must carry through.
"""

from __future__ import annotations

import json

import jsonschema
import openai

from tests.batch.helpers import MODEL_ID, BatchEnv
from tests.batch.test_openai_batch import client, line, wait

CHAT = "/v1/chat/completions"
# Closed vocabularies only: a random model's free strings and numbers could run past max_tokens.
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "set_alarm", "description": "Set an alarm.",
        "parameters": {"type": "object", "properties": {"enabled": {"type": "boolean"}},
                       "required": ["enabled"], "additionalProperties": False}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def chat(question: str, **extra: object) -> dict:
    return {"model": MODEL_ID, "messages": [{"role": "user", "content": question}], "tools": TOOLS,
            "parallel_tool_calls": False, "max_tokens": 48, "temperature": 0, **extra}


def test_rows_with_tools_carry_tool_calls(env: BatchEnv) -> None:
    c = client(env)
    good = {
        "required": chat("What is the weather in Paris?", tool_choice="required"),
        "named": chat("Wake me at seven.", tool_choice={"type": "function", "function": {"name": "set_alarm"}}),
        # The deprecated functions / function_call read as tools / a named choice; the answer uses tool_calls.
        "legacy": {"model": MODEL_ID, "messages": [{"role": "user", "content": "Is it cold in Oslo?"}],
                   "functions": [t["function"] for t in TOOLS], "function_call": {"name": "get_weather"},
                   "max_tokens": 48, "temperature": 0},
    }
    bad = {"unknown-choice": chat("Hi", tool_choice={"type": "function", "function": {"name": "nope"}}),
           "bad-parameters": {**chat("Hi", tool_choice="required"),
                              "tools": [{"type": "function", "function": {"name": "f", "parameters": {
                                  "type": "object", "properties": {"x": {"type": "text"}}}}}]}}
    rows = [line(cid, body, url=CHAT) for cid, body in {**good, **bad}.items()]
    f = c.files.create(file=("tools.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode()), purpose="batch")
    b = wait(c, c.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h").id)
    assert b.status == "completed", b
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (5, 3, 2)

    outs = {o["custom_id"]: o for o in map(json.loads, c.files.content(b.output_file_id).text.splitlines())}
    assert sorted(outs) == sorted(good)
    for cid, body in good.items():
        o = outs[cid]
        assert o["error"] is None and o["response"]["status_code"] == 200, o
        got = openai.types.chat.ChatCompletion.model_validate(o["response"]["body"]).choices[0]
        assert got.finish_reason == "tool_calls" and got.message.content is None, (cid, got)
        assert len(got.message.tool_calls) == 1, (cid, got)  # parallel_tool_calls false / a named choice
        call = got.message.tool_calls[0]
        assert call.id.startswith("call_") and call.type == "function"
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
        if cid == "named":
            assert call.function.name == "set_alarm"
        if cid == "legacy":
            assert call.function.name == "get_weather" and got.message.function_call is None
        # The row's answer is the synchronous answer to the same body (greedy), ids aside.
        sync = c.chat.completions.create(**body).choices[0]
        assert [(t.function.name, t.function.arguments) for t in sync.message.tool_calls] == [
            (call.function.name, call.function.arguments)]
        usage = o["response"]["body"]["usage"]
        assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 0

    errs = {e["custom_id"]: e["error"] for e in map(json.loads, c.files.content(b.error_file_id).text.splitlines())}
    assert set(errs) == set(bad)
    assert "tool_choice" in errs["unknown-choice"]["message"] and "nope" in errs["unknown-choice"]["message"]
    assert "tools" in errs["bad-parameters"]["message"]
