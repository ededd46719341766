"""LangChain's `ChatOpenAI(...).bind_tools(...)`, unchanged, runs a tool loop against a real `ember serve`:
the model calls the tool, LangChain parses the call, the tool runs, its ToolMessage goes back in the
history, and the model answers. Streamed too: LangChain assembles the call from `delta.tool_calls`.

A 135M model may not choose to call on its own, so the first turn forces a call (`tool_choice="required"`)
and the last forbids one (`"none"`, the definitions still rendered): each turn's outcome is then fixed by
the request, and what the test checks is that LangChain reads ember's answers and ember reads LangChain's
histories.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import httpx
import jsonschema
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from tests.clients.conftest import SMOL_ID
from tests.harness import ServeProcess

CALL_ID = re.compile(r"call_[A-Za-z0-9]{8,}")


def make_weather_tool(calls: list[dict[str, str]]) -> Any:
    @tool
    def get_weather(city: str, unit: Literal["celsius", "fahrenheit"]) -> str:
        """Get the current weather in a city."""
        calls.append({"city": city, "unit": unit})
        return f"It is 21 degrees {unit} and sunny in {city}."

    return get_weather


def recorded_bodies(sent: list[dict]) -> httpx.Client:
    """An httpx client that keeps the JSON body of every chat request LangChain sends."""
    def keep(request: httpx.Request) -> None:
        if request.url.path.endswith("/chat/completions"):
            sent.append(json.loads(request.content))

    return httpx.Client(event_hooks={"request": [keep]}, timeout=300)


def run(model: Any, history: list[BaseMessage], stream: bool) -> AIMessage:
    if not stream:
        return model.invoke(history)
    chunks = list(model.stream(history))
    assert len(chunks) > 1, "the answer came in one piece"
    whole: AIMessageChunk = chunks[0]
    for c in chunks[1:]:
        whole += c
    return whole


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_bind_tools_call_tool_result_and_final_answer(smol_serve: ServeProcess, stream: bool) -> None:
    calls: list[dict[str, str]] = []
    get_weather = make_weather_tool(calls)
    sent: list[dict] = []
    llm = ChatOpenAI(base_url=smol_serve.url + "/v1", api_key="unused", model=SMOL_ID, temperature=0,
                     max_tokens=96, max_retries=0, http_client=recorded_bodies(sent))

    history: list[BaseMessage] = [HumanMessage("What is the weather like in Paris right now?")]
    # strict: LangChain closes the schema (additionalProperties false), as OpenAI's strict mode asks.
    ai = run(llm.bind_tools([get_weather], tool_choice="required", strict=True), history, stream)
    assert ai.response_metadata["finish_reason"] == "tool_calls", ai
    assert not ai.invalid_tool_calls and ai.tool_calls, ai
    assert sent[-1]["tool_choice"] == "required" and sent[-1]["tools"][0]["function"]["name"] == "get_weather"
    assert sent[-1]["tools"][0]["function"]["strict"] is True
    assert sent[-1].get("stream", False) is stream
    schema = get_weather.tool_call_schema.model_json_schema()
    for call in ai.tool_calls:
        assert call["name"] == "get_weather" and CALL_ID.fullmatch(call["id"]), call
        jsonschema.validate(call["args"], schema)
    assert len({c["id"] for c in ai.tool_calls}) == len(ai.tool_calls)

    history.append(ai)
    for call in ai.tool_calls:
        result = get_weather.invoke(call)  # a ToolCall in gives a ToolMessage out, its id the call's
        assert isinstance(result, ToolMessage) and result.tool_call_id == call["id"]
        history.append(result)
    assert calls == [c["args"] for c in ai.tool_calls]  # the tool really ran, on the arguments ember produced

    final = run(llm.bind_tools([get_weather], tool_choice="none"), history, stream)
    assert final.response_metadata["finish_reason"] in ("stop", "length"), final
    assert not final.tool_calls and not final.invalid_tool_calls
    assert isinstance(final.content, str) and final.content.strip()

    # What LangChain sent back: the assistant's calls (arguments as JSON strings) and one tool message each.
    replay = sent[-1]["messages"]
    assert [m["role"] for m in replay] == ["user", "assistant", *["tool"] * len(ai.tool_calls)]
    assert [c["id"] for c in replay[1]["tool_calls"]] == [c["id"] for c in ai.tool_calls]
    assert [json.loads(c["function"]["arguments"]) for c in replay[1]["tool_calls"]] == calls
    assert [m["tool_call_id"] for m in replay[2:]] == [c["id"] for c in ai.tool_calls]
