"""The families' real chat templates rendered in ember's sandbox, against transformers' apply_chat_template
with the same template string and tokenizer: Qwen 2.5 and Llama 3.1 (both render `tools`), Qwen 3
(`namespace`, reversed loops, string methods, reasoning content) and Llama 3.2 (`strftime_now`,
`raise_exception`). The template texts are trl's byte-identical copies of what the checkpoints ship.

Also where a template comes from: GGUF `tokenizer.chat_template`, tokenizer_config.json's `chat_template`,
or a `chat_template.jinja` beside tokenizer.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from ember.errors import InvalidRequest
from ember.pipeline.chat_template import ChatTemplate
from ember.tokenizer import Tokenizer
from tests.tokenizer.conftest import gguf_tokenizer, trl_template, write_byte_level_gguf

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather for a city",
        "parameters": {"type": "object", "required": ["city"], "properties": {
            "city": {"type": "string", "description": "Ville / 城市"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}},
    {"type": "function", "function": {"name": "now", "description": "The time",
                                      "parameters": {"type": "object", "properties": {}}}},
]
PLAIN = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is 2+2? Réponds en français 🙂"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3+3?"},
]
WITH_TOOL_CALL = [
    {"role": "system", "content": "You help with weather."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": "{\"temp\": 22, \"sky\": \"clear\"}"},
    {"role": "user", "content": "Thanks!"},
]
QWEN3_THINKING = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "<think>\nGreet back.\n</think>\n\nHello!"},
    {"role": "user", "content": "Bye"},
]

# (family template, tokenizer folder fixture, conversations, whether it renders tools)
CASES = {
    "qwen2_5": ("qwen_dir", [PLAIN, WITH_TOOL_CALL], True),
    "qwen3": ("qwen_dir", [PLAIN, WITH_TOOL_CALL, QWEN3_THINKING], True),
    "llama3_1": ("llama3_dir", [PLAIN, WITH_TOOL_CALL], True),
    "llama3_2": ("llama3_dir", [PLAIN, WITH_TOOL_CALL], True),
}


@pytest.fixture(scope="module")
def hf_tokenizers(qwen_dir: Path, llama3_dir: Path) -> dict[str, Any]:
    import transformers

    return {"qwen_dir": transformers.AutoTokenizer.from_pretrained(str(qwen_dir)),
            "llama3_dir": transformers.AutoTokenizer.from_pretrained(str(llama3_dir))}


@pytest.fixture(scope="module")
def ours(qwen_dir: Path, llama3_dir: Path) -> dict[str, Tokenizer]:
    return {"qwen_dir": Tokenizer.from_file(qwen_dir / "tokenizer.json"),
            "llama3_dir": Tokenizer.from_file(llama3_dir / "tokenizer.json")}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("with_tools", [False, True])
def test_renders_like_transformers(name: str, with_tools: bool, hf_tokenizers: dict[str, Any],
                                   ours: dict[str, Tokenizer]) -> None:
    folder, conversations, _ = CASES[name]
    source = trl_template(name)
    template = ChatTemplate(source, ours[folder])
    hf = hf_tokenizers[folder]
    tools = TOOLS if with_tools else None
    for messages in conversations:
        if "tool_calls" in str(messages) and not with_tools and name.startswith("llama3"):
            continue  # Llama 3.x renders a tool call only beside the tool list it came from
        for gen in (True, False):
            expect = hf.apply_chat_template(messages, chat_template=source, tools=tools, tokenize=False,
                                            add_generation_prompt=gen)
            text = template.render(messages, add_generation_prompt=gen, tools=tools)
            assert text == expect
            if with_tools:
                assert "get_weather" in text and "城市" in text  # tojson keeps non-ASCII text as it is
            # And the ids: the rendered text as transformers tokenizes a rendered chat.
            assert ours[folder].encode(text, add_special_tokens=False) == hf.encode(text, add_special_tokens=False)


def test_without_tools_tools_is_none_not_undefined(ours: dict[str, Tokenizer]) -> None:
    # transformers renders `tools=None` when a request has none; templates test `tools is not none`.
    template = ChatTemplate("{{ 'tools' if tools is not none else 'none' }}{{ tools is defined }}", ours["qwen_dir"])
    assert template.render([], add_generation_prompt=False) == "noneTrue"
    assert template.render([], add_generation_prompt=False, tools=TOOLS) == "toolsTrue"


def test_llama3_1_raise_exception_is_a_400(ours: dict[str, Tokenizer]) -> None:
    template = ChatTemplate(trl_template("llama3_1"), ours["llama3_dir"])
    two_calls = [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "now", "arguments": {}}},
        {"type": "function", "function": {"name": "now", "arguments": {}}}]}]
    with pytest.raises(InvalidRequest, match="single tool-calls") as e:
        template.render(two_calls, add_generation_prompt=True, tools=TOOLS)
    assert e.value.param == "messages"


# -- where the template comes from ---------------------------------------------------------------------------

def test_gguf_chat_template_is_the_files_own(qwen_dir: Path, tmp_path: Path, hf_tokenizers: dict[str, Any]) -> None:
    tok = gguf_tokenizer(write_byte_level_gguf(qwen_dir, "qwen2", tmp_path / "q.gguf"))
    # The package's tokenizer_config.json carries an early revision of Qwen 3's template.
    source = json.loads((qwen_dir / "tokenizer_config.json").read_text(encoding="utf-8"))["chat_template"]
    assert tok.chat_template == source and "reasoning_content" in source
    for messages in (PLAIN, WITH_TOOL_CALL, QWEN3_THINKING):
        expect = hf_tokenizers["qwen_dir"].apply_chat_template(messages, tools=TOOLS, tokenize=False,
                                                               add_generation_prompt=True)
        assert ChatTemplate(tok.chat_template, tok).render(messages, add_generation_prompt=True, tools=TOOLS) == expect


def test_chat_template_jinja_beside_tokenizer_json(llama3_dir: Path, tmp_path: Path) -> None:
    # Llama 3.2's tokenizer_config.json here has no template; a chat_template.jinja beside it is used.
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(llama3_dir / f, tmp_path / f)
    assert Tokenizer.from_file(tmp_path / "tokenizer.json").chat_template is None
    (tmp_path / "chat_template.jinja").write_text(trl_template("llama3_1"), encoding="utf-8")
    tok = Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert tok.chat_template == trl_template("llama3_1")
    text = ChatTemplate(tok.chat_template, tok).render(PLAIN[1:2], add_generation_prompt=True)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
