"""Issue 21's acceptance test, with the official `openai` SDK against a real `ember serve`, on SmolLM2-135M
and on Gemma 3 270M (neither template knows tools: ember's generic tool prompt and its grammar carry it).

Two tools, `tool_choice="required"`, 200 requests seeded 0..199 at temperature 1.0 and max_tokens 256, sent
at once (the engine batches them): every answer is valid calls (each name among the tools, each `arguments`
valid JSON that passes `jsonschema.validate` against its function's parameters), or calls cut by max_tokens
returned as text (T6: finish_reason "length", no tool_calls), and at most 2 of 200 are cut. A named choice
gives exactly one call, of that function. Streamed answers, reassembled from `delta.tool_calls`, equal the
non-streamed answers of the same seeds.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from openai import AsyncOpenAI

from tests.clients.conftest import GEMMA_ID, SMOL_ID, gemma_serve_process, serve
from tests.harness import ServeProcess

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "The city's name, e.g. Paris"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"]}}},
    {"type": "function", "function": {
        "name": "add", "description": "Add two numbers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                       "required": ["a", "b"]}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
QUESTIONS = ["What is the weather like in Paris right now?", "What is 12 plus 30?",
             "Is it cold in Oslo today?", "Please add 2.5 and 4.", "I am going to Rome. Do I need an umbrella?"]
N = 200
MAX_TOKENS = 256
MAX_CUT = 2
CALL_ID = re.compile(r"call_[A-Za-z0-9]{8,}")
NAMED = [(i, name) for i in range(10) for name in SCHEMAS]
"""(seed, function) of the named-choice requests: each question forced onto each tool, fitting or not."""
STREAMED = 12


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[str, ServeProcess]]:
    tmp = tmp_path_factory.mktemp(request.param)
    s = serve(tmp) if request.param == "smollm2" else gemma_serve_process(tmp)
    try:
        yield (SMOL_ID if request.param == "smollm2" else GEMMA_ID), s
    finally:
        s.stop()


def request_of(model: str, i: int, **extra: Any) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            "tools": TOOLS, "tool_choice": "required", "temperature": 1.0, "max_tokens": MAX_TOKENS, "seed": i,
            **extra}


def calls_of(choice: Any) -> list[tuple[str, str]]:
    return [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]


def check_answer(choice: Any, names: set[str]) -> bool:
    """Assert the answer is valid calls among `names`, or a cut call returned as text; True if cut."""
    if choice.finish_reason == "length":
        assert not choice.message.tool_calls, choice  # never arguments that do not parse
        assert isinstance(choice.message.content, str), choice
        return True
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None and choice.message.tool_calls, choice
    for call in choice.message.tool_calls:
        assert call.type == "function" and CALL_ID.fullmatch(call.id), call
        assert call.function.name in names, call
        assert isinstance(call.function.arguments, str), call
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    assert len({c.id for c in choice.message.tool_calls}) == len(choice.message.tool_calls)
    return False


async def streamed_calls(client: AsyncOpenAI, body: dict) -> tuple[list[tuple[str, str]], str | None, int]:
    """The calls of a streamed answer, reassembled by index as OpenAI's clients do (T7): the first delta
    of a call brings its id, type and name, later ones pieces of its arguments. Also the finish reason
    and how many deltas carried argument pieces."""
    calls: dict[int, dict[str, str]] = {}
    finish = None
    pieces = 0
    async for chunk in await client.chat.completions.create(**body, stream=True):
        for choice in chunk.choices:
            for d in choice.delta.tool_calls or []:
                if d.index not in calls:
                    assert d.id and CALL_ID.fullmatch(d.id) and d.type == "function" and d.function.name, d
                    calls[d.index] = {"name": d.function.name, "arguments": ""}
                else:
                    assert d.id is None and not (d.function and d.function.name), d
                if d.function and d.function.arguments:
                    calls[d.index]["arguments"] += d.function.arguments
                    pieces += 1
            finish = choice.finish_reason or finish
    assert sorted(calls) == list(range(len(calls)))
    return [(calls[i]["name"], calls[i]["arguments"]) for i in sorted(calls)], finish, pieces


@pytest.mark.timeout(3600)  # 232 generations of up to 256 tokens: minutes on an idle 2-core host, far more on a busy one
def test_required_and_named_calls_are_valid_and_streaming_agrees(served: tuple[str, ServeProcess],
                                                                  record_property: Any) -> None:
    model, server = served
    client = AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=3600)

    async def create(body: dict) -> Any:
        return (await client.chat.completions.create(**body)).choices[0]

    async def go() -> tuple[list[Any], float, list[Any], list[Any]]:
        t0 = time.monotonic()
        required = await asyncio.gather(*(create(request_of(model, i)) for i in range(N)))
        elapsed = time.monotonic() - t0
        named = await asyncio.gather(*(
            create(request_of(model, i, tool_choice={"type": "function", "function": {"name": name}}))
            for i, name in NAMED))
        streamed = await asyncio.gather(*(streamed_calls(client, request_of(model, i)) for i in range(STREAMED)))
        return required, elapsed, named, streamed

    required, elapsed, named, streamed = asyncio.run(go())
    cut = [i for i, choice in enumerate(required) if check_answer(choice, set(SCHEMAS))]
    record_property(f"{model} 200 required calls, seconds", round(elapsed, 1))
    print(f"\n{model}: {N} concurrent required-call requests in {elapsed:.1f} s, {len(cut)} cut: {cut}")
    assert len(cut) <= MAX_CUT, [required[i] for i in cut]
    assert {calls_of(c)[0][0] for c in required if c.finish_reason == "tool_calls"} <= set(SCHEMAS)

    # A named choice: exactly one call, of that function.
    for (_, name), choice in zip(NAMED, named, strict=True):
        if not check_answer(choice, {name}):
            assert len(choice.message.tool_calls) == 1, choice

    # Streamed and non-streamed answers of the same seed are the same calls (ids aside), streamed in pieces.
    for i, (calls, finish, pieces) in enumerate(streamed):
        assert finish == required[i].finish_reason, (i, finish, required[i])
        if finish == "tool_calls":
            assert calls == calls_of(required[i]), i
            assert pieces > len(calls), f"request {i}: arguments came in one lump, not as generated"
