"""Tools in the prompt: through a template that takes `tools` (token for token what transformers'
apply_chat_template renders), else ember's generic tool prompt (SmolLM2's and Gemma's templates)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import transformers

from ember.model.prompt_formats import GEMMA_CHAT_TEMPLATE
from ember.pipeline.chat_template import ChatTemplate
from ember.pipeline.conversation import render_conversation
from ember.pipeline.request import Conversation, Message
from ember.pipeline.tool_format import HERMES, tool_style
from ember.pipeline.tools import ToolCall, ToolDef, ToolMode, ToolSet
from ember.tokenizer import Tokenizer

# A tools-taking template in the Qwen 2.5 / Hermes manner, written for this test: tools in the system
# turn, calls as <tool_call> blocks, results as <tool_response> blocks inside a user turn.
TOOLS_TEMPLATE = """\
{%- if tools %}<|im_start|>system
{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% else %}You are helpful.{% endif %}

# Tools
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>
For each call, return <tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{% elif messages[0]['role'] == 'system' %}<|im_start|>system
{{ messages[0]['content'] }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}
<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% elif message.role == 'assistant' %}<|im_start|>assistant
{% if message.content %}{{ message.content }}
{% endif %}
{%- for tc in message.tool_calls %}{% if not loop.first %}
{% endif %}<tool_call>
{"name": "{{ tc.function.name }}", "arguments": {{ tc.function.arguments | tojson }}}
</tool_call>{% endfor %}<|im_end|>
{% elif message.role == 'tool' %}
{%- if loop.index0 == 0 or messages[loop.index0 - 1].role != 'tool' %}<|im_start|>user{% endif %}
<tool_response>
{{ message.content }}
</tool_response>
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}<|im_end|>
{% endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

WEATHER = ToolDef("get_weather", "Weather in a city, \u00e0 la minute", json.dumps(
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}))
TIME = ToolDef("get_time", None, json.dumps({"type": "object", "properties": {}}))
TOOLS = ToolSet((WEATHER, TIME), ToolMode.AUTO)

HISTORY = (
    Message("system", "Be brief."),
    Message("user", "Weather in Paris and the time?"),
    Message("assistant", "", (ToolCall("call_a1b2c3d4e5", "get_weather", '{"city": "Paris"}'),
                              ToolCall("call_f6g7h8i9j0", "get_time", "{}"))),
    Message("tool", "sunny, 21 C", tool_call_id="call_a1b2c3d4e5", name="get_weather"),
    Message("tool", "14:02", tool_call_id="call_f6g7h8i9j0", name="get_time"),
)


def wire(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """The same history as a client sends it to transformers (arguments as objects)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        d: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            d["content"] = None
            d["tool_calls"] = [{"id": c.id, "type": "function",
                                "function": {"name": c.name, "arguments": json.loads(c.arguments)}}
                               for c in m.tool_calls]
        if m.role == "tool":
            d["tool_call_id"] = m.tool_call_id
            d["name"] = m.name
        out.append(d)
    return out


@pytest.fixture(scope="module")
def tok(smol_checkpoint) -> Tokenizer:
    return smol_checkpoint.tokenizer


def test_a_tools_template_renders_token_for_token_as_transformers(tok: Tokenizer) -> None:
    template = ChatTemplate(TOOLS_TEMPLATE, tok)
    assert template.supports_tools and tool_style(template).native and tool_style(template).format == HERMES
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.hf, chat_template=TOOLS_TEMPLATE)
    tools = [{"type": "function", "function": t.as_function()} for t in TOOLS.tools]
    for history in (HISTORY[:2], HISTORY):
        want = hf.apply_chat_template(wire(history), tools=tools, add_generation_prompt=True, tokenize=True)
        want = list(want["input_ids"] if hasattr(want, "keys") else want)
        text, ids = render_conversation(Conversation(history, tools=TOOLS), template)
        assert ids == want
        assert '"description": "Weather in a city, \u00e0 la minute"' in text
    # with tool_choice none the definitions are rendered all the same (T1)
    none = ToolSet(TOOLS.tools, ToolMode.NONE)
    assert render_conversation(Conversation(HISTORY, tools=none), template) == \
        render_conversation(Conversation(HISTORY, tools=TOOLS), template)


def test_the_generic_prompt_on_smollm2(tok: Tokenizer) -> None:
    template = ChatTemplate(tok.chat_template, tok)
    assert not tool_style(template).native
    text, ids = render_conversation(Conversation(HISTORY, tools=TOOLS), template)
    system = text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nBe brief.\n\nYou can call the functions below.")
    for t in TOOLS.tools:
        assert json.dumps(t.as_function(), ensure_ascii=False) in system
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
            '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call><|im_end|>') in text
    assert ("<|im_start|>user\n<tool_response>\nsunny, 21 C\n</tool_response>\n<tool_response>\n14:02\n"
            "</tool_response><|im_end|>\n<|im_start|>assistant\n") in text
    assert ids == tok.encode(text, add_special_tokens=False)
    # without a system message one is created for the definitions
    text, _ = render_conversation(Conversation(HISTORY[1:2], tools=TOOLS), template)
    assert text.startswith("<|im_start|>system\nYou can call the functions below.")


def test_the_generic_prompt_on_gemma_keeps_turns_alternating(tok: Tokenizer) -> None:
    template = ChatTemplate(GEMMA_CHAT_TEMPLATE, tok)
    text, _ = render_conversation(Conversation(HISTORY, tools=TOOLS), template)
    assert text.count("<start_of_turn>user") == 2 and text.count("<start_of_turn>model") == 2
    assert "Be brief.\n\nYou can call the functions below." in text
    # a history with calls renders without tools offered too
    text, _ = render_conversation(Conversation(HISTORY), template)
    assert "<tool_call>" in text and "You can call" not in text
