"""The OpenAI Agents SDK, unchanged, runs an agent against a real `ember serve` through its
chat-completions model (`OpenAIChatCompletionsModel` on an AsyncOpenAI client): the model calls a
`@function_tool`, the SDK validates the arguments and runs the function, sends the result back, and the
run ends with the model's final answer. Streamed too (`Runner.run_streamed`).

The first turn forces a call (`tool_choice="required"`); the SDK resets the choice once a tool ran
(`reset_tool_choice`), and the tool disables itself after its one call, so the second turn carries no
tools and must end the run with text: a 135M model's whims cannot loop the agent.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Literal

import httpx
import jsonschema
import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from openai import AsyncOpenAI

from tests.clients.conftest import SMOL_ID
from tests.harness import ServeProcess

CALL_ID = re.compile(r"call_[A-Za-z0-9]{8,}")


def recording_client(url: str, sent: list[dict], answers: list[dict]) -> AsyncOpenAI:
    """An AsyncOpenAI client that keeps each chat request's JSON body and each non-streamed answer."""
    async def keep_request(request: httpx.Request) -> None:
        if request.url.path.endswith("/chat/completions"):
            sent.append(json.loads(request.content))

    async def keep_answer(response: httpx.Response) -> None:
        if response.request.url.path.endswith("/chat/completions"):
            assert response.status_code == 200, (response.status_code, await response.aread())
            if response.headers["content-type"].startswith("application/json"):
                answers.append(json.loads(await response.aread()))

    http = httpx.AsyncClient(event_hooks={"request": [keep_request], "response": [keep_answer]}, timeout=300)
    return AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, http_client=http)


@pytest.mark.parametrize("stream", [False, True], ids=["run", "run_streamed"])
def test_function_tool_loop_reaches_a_final_output(smol_serve: ServeProcess, stream: bool) -> None:
    set_tracing_disabled(True)
    calls: list[dict[str, str]] = []

    @function_tool(is_enabled=lambda ctx, agent: not calls)
    def get_weather(city: str, unit: Literal["celsius", "fahrenheit"]) -> str:
        """Get the current weather in a city.

        Args:
            city: The city's name.
            unit: The temperature unit.
        """
        calls.append({"city": city, "unit": unit})
        return weather_report(city, unit)

    sent: list[dict] = []
    answers: list[dict] = []
    agent = Agent(
        name="weather", instructions="You answer questions about the weather. Use the tool.",
        model=OpenAIChatCompletionsModel(model=SMOL_ID, openai_client=recording_client(smol_serve.url, sent,
                                                                                        answers)),
        model_settings=ModelSettings(tool_choice="required", temperature=0, max_tokens=96),
        tools=[get_weather])

    async def go() -> object:
        if not stream:
            return await Runner.run(agent, "What is the weather like in Paris right now?", max_turns=3)
        result = Runner.run_streamed(agent, "What is the weather like in Paris right now?", max_turns=3)
        kinds = [event.type async for event in result.stream_events()]
        assert "raw_response_event" in kinds
        return result

    result = asyncio.run(go())

    # The tool ran once, on arguments that are valid for its schema (the SDK checked them with pydantic
    # before calling; an invalid call would have reached the model as an error message instead).
    assert len(calls) == 1, calls
    jsonschema.validate(calls[0], get_weather.params_json_schema)
    assert isinstance(result.final_output, str) and result.final_output.strip(), result.final_output

    first, second = sent
    assert first["tool_choice"] == "required" and [t["function"]["name"] for t in first["tools"]] == ["get_weather"]
    assert first["tools"][0]["function"]["strict"] is True  # the SDK sends strict schemas; ember takes them
    assert first.get("stream", False) is stream and second.get("stream", False) is stream
    assert "tools" not in second and "tool_choice" not in second
    # The history the SDK sent back: its call (arguments as a JSON string) and the tool's result.
    call_msg, tool_msg = second["messages"][-2:]
    assert call_msg["role"] == "assistant" and len(call_msg["tool_calls"]) == 1
    sent_call = call_msg["tool_calls"][0]
    assert CALL_ID.fullmatch(sent_call["id"]) and sent_call["function"]["name"] == "get_weather"
    assert json.loads(sent_call["function"]["arguments"]) == calls[0]
    assert tool_msg["role"] == "tool" and tool_msg["tool_call_id"] == sent_call["id"]
    assert weather_report(**calls[0]) in json.dumps(tool_msg["content"])
    if not stream:
        assert answers[0]["choices"][0]["finish_reason"] == "tool_calls"
        assert answers[0]["choices"][0]["message"]["tool_calls"][0]["id"] == sent_call["id"]
        assert answers[1]["choices"][0]["message"]["content"] == result.final_output


def weather_report(city: str, unit: str) -> str:
    return f"It is 21 degrees {unit} and sunny in {city}."
