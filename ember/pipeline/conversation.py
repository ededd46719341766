"""A conversation rendered through the served model's chat template into prompt text and token ids."""

from __future__ import annotations

from ember.pipeline.chat_template import ChatTemplate
from ember.pipeline.request import Conversation, Message


def _render(template: ChatTemplate, messages: list[Message], generation_prompt: bool,
            safe: bool) -> tuple[str, list[int]]:
    # A conversation ending with the assistant is a prefill: the model continues that message.
    prefill = messages[-1].role == "assistant"
    r = template.encode([{"role": m.role, "content": m.content} for m in messages],
                        add_generation_prompt=generation_prompt and not prefill,
                        continue_final_message=prefill, safe=safe)
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
    text, ids = _render(template, messages, conv.generation_prompt, conv.safe)
    while limit is not None and len(ids) > limit:
        drop = _oldest_turn(messages)
        if drop is None:
            break  # only system messages and the last one are left: the context check decides
        del messages[drop]
        text, ids = _render(template, messages, conv.generation_prompt, conv.safe)
    return text, ids
