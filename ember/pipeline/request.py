"""The typed request every endpoint's adapter builds and the pipeline runs: no wire type, no HTTP type.

Values are resolved by the adapter (defaults applied, wire spellings read), so the pipeline never asks
which API surface a request came from.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ember.engine.request import SamplingParams
from ember.pipeline.tools import ToolCall, ToolSet
from ember.store.usage import BATCH, TEXT_COMPLETION


class UsageKind(enum.StrEnum):
    """How a request's usage is metered (the store's usage_type)."""

    INTERACTIVE = TEXT_COMPLETION
    BATCH = BATCH


@dataclass(frozen=True)
class Caller:
    """Who is asking: whom usage is billed to and whose prefix cache the request may share."""

    account_id: str
    key_id: str
    cache_tenant: str | None
    """None: no account authenticated (open mode, a static key); such requests share one cache."""


@dataclass(frozen=True)
class TextPrompt:
    text: str
    special_tokens: bool = True
    """Whether the tokenizer adds its special tokens (BOS) around the text."""


@dataclass(frozen=True)
class TokenPrompt:
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class Message:
    role: str
    """system, user, assistant or tool (a tool's result)."""
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    """An assistant turn's calls."""
    tool_call_id: str | None = None
    """A tool message: the call it answers."""
    name: str | None = None
    """A tool message: the function that answered (when known)."""


@dataclass(frozen=True)
class Conversation:
    """Messages the served model's chat template renders into one prompt."""

    messages: tuple[Message, ...]
    truncate_to: int | None = None
    """Drop the oldest turns (never a system message nor the last one) until the prompt has at most this
    many tokens."""
    safe: bool = False
    """Render with special-token text in messages escaped."""
    generation_prompt: bool = True
    """End with the assistant's turn header (ignored when the last message is the assistant's: it is
    continued)."""
    tools: ToolSet | None = None
    """Functions offered to the model: rendered into the prompt whatever the choice; the answer is
    constrained and parsed for calls unless the choice is none."""

    @property
    def has_tool_turns(self) -> bool:
        return any(m.tool_calls or m.role == "tool" for m in self.messages)


PromptInput = TextPrompt | TokenPrompt | Conversation


@dataclass(frozen=True)
class InferenceRequest:
    """One generating request in the pipeline's terms: prompts x n choices, choice c = prompt c // n."""

    request_id: str
    """Names the engine's requests (`{request_id}-{choice}`); never a client-chosen value."""
    caller: Caller
    prompts: tuple[PromptInput, ...]
    n: int = 1
    sampling: SamplingParams = field(default_factory=SamplingParams)
    """How tokens are chosen (stop strings and logprobs included). Its seed is the first choice's (every
    other choice derives its own); max_tokens, prompt logprobs, grammar and speculation are the planner's."""
    max_tokens: int | None = None
    fill_context: bool = False
    """Without max_tokens: generate up to the context window (chat) rather than a few tokens."""
    truncate_max_tokens: bool = True
    """max_tokens past the context window is cut to fit; False: a 400."""
    echo: bool = False
    """The prompt is echoed back: max_tokens 0 is then an answer even for a prompt that fills the window,
    and prompt logprobs are computed when logprobs are."""
    constraint: tuple[str, str] | None = None
    """(kind, text) for the grammar compiler: a JSON schema or a GBNF grammar; None: free text."""
    prediction: str | tuple[int, ...] | None = None
    """Predicted output (text or token ids) that speculative decoding drafts from."""
    cache_salt: str | None = None
    priority: bool = False
    background: bool = False
    """A batch row: it runs only in room interactive requests leave."""
    deadline: float | None = None
    """time.monotonic() by which the request must have finished; None: no limit."""
    kind: UsageKind = UsageKind.INTERACTIVE

    @property
    def sequences(self) -> int:
        return len(self.prompts) * self.n
