"""A conversation rendered through the served model's chat template into prompt text and token ids."""

from __future__ import annotations

from typing import Any

from ember.pipeline.chat_template import ChatTemplate
from ember.pipeline.request import Conversation, Message
from ember.pipeline.tool_format import tool_style
from ember.pipeline.tool_prompt import generic_messages
from ember.pipeline.tools import ToolSet


def _template_message(m: Message) -> dict[str, Any]:
    """A message as transformers hands it to a template that takes tools (OpenAI's shape; arguments as a
    JSON value, which such templates write with `tojson`)."""
    d: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        d["content"] = m.content or None
        d["tool_calls"] = [{"id": c.id, "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments_value()}}
                           for c in m.tool_calls]
    if m.role == "tool":
        d["tool_call_id"] = m.tool_call_id
        if m.name is not None:
            d["name"] = m.name
    return d


def _render(template: ChatTemplate, messages: list[Message], generation_prompt: bool,
            safe: bool, tools: ToolSet | None = None) -> tuple[str, list[int]]:
    template_tools = None
    if tools is not None or any(m.tool_calls or m.role == "tool" for m in messages):
        style = tool_style(template)
        if style.native:
            if tools is not None and tools.tools:
                template_tools = [{"type": "function", "function": t.as_function()} for t in tools.tools]
        else:
            messages = generic_messages(messages, tools, style.format)
    # A conversation ending with the assistant is a prefill: the model continues that message.
    prefill = messages[-1].role == "assistant" and not messages[-1].tool_calls
    r = template.encode([_template_message(m) for m in messages],
                        add_generation_prompt=generation_prompt and not prefill,
                        continue_final_message=prefill, safe=safe, tools=template_tools)
    return r.text, r.token_ids


def _oldest_turn(messages: list[Message]) -> int | None:
    """What truncation drops next: the oldest message that is neither a system one nor the last."""
    return next((i for i, m in enumerate(messages[:-1]) if m.role != "system"), None)


def render_conversation(conv: Conversation, template: ChatTemplate,
                        max_token_chars: int | None = None) -> tuple[str, list[int]]:
    """The prompt text and ids; with `truncate_to`, the oldest turns go first (system messages and the
    last message stay) until the prompt fits.

    Given `max_token_chars` (Tokenizer.max_token_chars), turns are first dropped by their length alone
    while their characters alone cannot fit the limit: exactly the turns the token count would drop,
    without rendering and tokenizing a long history once per turn."""
    messages = list(conv.messages)
    limit = conv.truncate_to
    if limit is not None and max_token_chars is not None:
        total = sum(len(m.content) for m in messages)
        while total > limit * max_token_chars and (drop := _oldest_turn(messages)) is not None:
            total -= len(messages[drop].content)
            del messages[drop]
    text, ids = _render(template, messages, conv.generation_prompt, conv.safe, conv.tools)
    while limit is not None and len(ids) > limit:
        drop = _oldest_turn(messages)
        if drop is None:
            break  # only system messages and the last one are left: the context check decides
        del messages[drop]
        text, ids = _render(template, messages, conv.generation_prompt, conv.safe, conv.tools)
    return text, ids
