"""Wire types of POST /v1/completions and /v1/chat/completions, exactly as the Fireworks spec shapes them.

Unknown fields are a 422 (the spec sets additionalProperties: false) except `stream_options`, which OpenAI
clients send on their own. The spec writes most ranges only in prose; they are enforced here so a bad value
is a 422 naming the field, never a 500 deep in the sampler.

Booleans are strict (JSON `1` or `"yes"` is not `true`), so `logprobs: true` and `logprobs: 1` stay apart:
the first asks for new-style logprobs, the second for legacy ones.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationInfo, field_validator

NonNegInt = Annotated[StrictInt, Field(ge=0)]
FAIL_FAST = Field(fail_fast=True)
"""On every list and dict a request may hold: validation stops at the first bad item. Collecting them all
cost seconds of event-loop time and a 70 MB 422 for a 1 MB body of 300,000 bad items, and in a union each
branch reported every item again."""
TokenIds = Annotated[list[NonNegInt], FAIL_FAST]
MAX_STOP = 4
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
_TOKEN_ID_KEY = re.compile(r"-?[0-9]{1,12}")
"""str.isdigit() also takes "²" and "١٢", which int() refuses or reads as another id; bounded so int() never
sees a 5000-digit key."""


class WireModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(WireModel):
    include_usage: StrictBool | None = False
    """True: chat usage comes on an extra last chunk with no choices (OpenAI's placement); otherwise it
    rides on the final chunk, as Fireworks sends it."""


class ResponseFormat(WireModel):
    type: Literal["json_object", "json_schema", "grammar", "text"]
    schema_: str | dict | None = Field(default=None, alias="schema")
    grammar: str | None = None
    json_schema: str | dict | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ThinkingConfigEnabled(WireModel):
    type: Literal["enabled"]
    budget_tokens: Annotated[StrictInt, Field(ge=1024)] | None = None


class ThinkingConfigDisabled(WireModel):
    type: Literal["disabled"]


class PredictedOutput(WireModel):
    content: str | Annotated[list[dict], FAIL_FAST]
    type: Literal["content"] = "content"


Prompt = str | Annotated[list[str], FAIL_FAST] | TokenIds | Annotated[list[TokenIds], FAIL_FAST]


class GenerationRequest(WireModel):
    """The fields completions and chat share (model, sampling, output options); each endpoint adds its input."""

    model: str
    user: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_isolation_key: str | None = None
    raw_output: StrictBool | None = False
    perf_metrics_in_response: StrictBool | None = False
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    n: Annotated[StrictInt, Field(ge=1, le=128)] = 1
    service_tier: Literal["auto", "default", "flex", "priority"] = "default"
    stop: str | Annotated[list[str], FAIL_FAST] | None = None
    max_tokens: NonNegInt | None = None
    max_completion_tokens: NonNegInt | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_k: Annotated[StrictInt, Field(ge=0, le=100)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    typical_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    # 0 would divide logits by zero; the spec's "0..2" is read as an open lower bound.
    repetition_penalty: Annotated[float, Field(gt=0.0, le=2.0)] | None = None
    mirostat_target: Annotated[float, Field(gt=0.0)] | None = None
    mirostat_lr: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    seed: Annotated[StrictInt, Field(ge=SEED_MIN, le=SEED_MAX)] | None = None
    logprobs: StrictBool | Annotated[StrictInt, Field(ge=0, le=5)] | None = None
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=5)] | None = None
    echo: StrictBool | None = False
    echo_last: NonNegInt | None = None
    ignore_eos: StrictBool = False
    context_length_exceeded_behavior: Literal["error", "truncate"] = "truncate"
    response_format: ResponseFormat | None = None
    logit_bias: Annotated[dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]], FAIL_FAST] | None = None
    speculation: str | TokenIds | None = None
    prediction: PredictedOutput | str | None = None
    metadata: Annotated[dict[str, str], FAIL_FAST] | None = None
    reasoning_effort: Literal["low", "medium", "high", "max", "none"] | StrictBool | StrictInt | None = None
    reasoning_history: Literal["disabled", "interleaved", "preserved"] | None = None
    thinking: Annotated[ThinkingConfigEnabled | ThinkingConfigDisabled, Field(discriminator="type")] | None = None
    return_token_ids: StrictBool | None = False

    @field_validator("stop")
    @classmethod
    def _stop_at_most_four(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are allowed, got {len(v)}")
        return v

    @field_validator("max_completion_tokens")
    @classmethod
    def _not_both_max(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and info.data.get("max_tokens") is not None:
            raise ValueError("max_tokens and max_completion_tokens cannot be specified together")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys_are_token_ids(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for k in v or {}:
            if not _TOKEN_ID_KEY.fullmatch(k):
                raise ValueError(f"logit_bias keys must be token ids (ASCII digits), got {k[:40]!r}")
        return v

    @field_validator("reasoning_effort")
    @classmethod
    def _normalize_effort(cls, v: str | bool | int | None) -> str | int | None:
        if v is True:
            return "medium"
        if v is False:
            return "none"
        return v

    @field_validator("thinking")
    @classmethod
    def _not_both_reasoning(cls, v: object, info: ValidationInfo) -> object:
        if v is not None and info.data.get("reasoning_effort") is not None:
            raise ValueError("reasoning_effort and thinking cannot be specified together")
        return v

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        items = [self.stop] if isinstance(self.stop, str) else self.stop
        return [s for s in items if s]


class CompletionRequest(GenerationRequest):
    prompt: Prompt
    images: Annotated[list[str], FAIL_FAST] | Annotated[list[Annotated[list[str], FAIL_FAST]], FAIL_FAST] | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, v: Prompt) -> Prompt:
        if isinstance(v, list):
            if not v:
                raise ValueError("prompt must not be an empty list")
            if any(isinstance(x, list) and not x for x in v):
                raise ValueError("a token-id prompt must not be empty")
        return v


# -- chat ---------------------------------------------------------------------------------------------

class ImageURL(WireModel):
    url: str
    detail: str | None = None


class VideoURL(WireModel):
    url: str
    detail: str | None = None
    max_frames: StrictInt | None = None
    spatial_limit: StrictInt | None = None
    sample_fps: float | None = None


class ContentPart(WireModel):
    """One part of a message's content: text, or an image / video (refused while the model reads text only)."""

    type: Literal["text", "image_url", "video_url"]
    text: str | None = None
    image_url: ImageURL | None = None
    video_url: VideoURL | None = None


class ToolCallFunction(WireModel):
    name: str
    arguments: str
    """JSON text, as OpenAI sends it."""


class ToolCall(WireModel):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class FunctionCallMessage(WireModel):
    """A legacy assistant `function_call` in the history."""

    name: str
    arguments: str


class ChatMessage(WireModel):
    role: Literal["system", "user", "assistant", "tool", "developer", "function"]
    content: str | Annotated[list[ContentPart], FAIL_FAST] | None = None
    reasoning_content: str | None = None
    tool_calls: Annotated[list[ToolCall], FAIL_FAST] | None = None
    function_call: FunctionCallMessage | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def text(self) -> str:
        """The content as one string: text parts joined with "\n" (non-text parts are refused before this
        is read)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text or "" for p in self.content if p.type == "text")


class FunctionDef(WireModel):
    # Loose on purpose: the chat adapter checks names and schemas itself, so a bad definition is a 400
    # naming `tools` (T9) rather than a bare schema violation.
    name: Any = None
    description: str | None = None
    parameters: Any = None
    strict: StrictBool | None = None


class ChatTool(WireModel):
    type: Any = "function"
    function: FunctionDef | None = None


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1, fail_fast=True)
    tools: Annotated[list[ChatTool], FAIL_FAST] | None = None
    tool_choice: str | dict | None = None
    """auto, none, required, any, or a named function; read by protocol/tools.py."""
    functions: Annotated[list[FunctionDef], FAIL_FAST] | None = None
    """Deprecated: read as tools."""
    function_call: str | dict | None = None
    """Deprecated: read as tool_choice."""
    parallel_tool_calls: StrictBool | None = None
    prompt_truncate_len: Annotated[StrictInt, Field(ge=1)] | None = None
    safe_tokenization: StrictBool | None = None


# -- /tokenize, /detokenize (vLLM's shapes) ----------------------------------------------------------

class TokenizeCompletionRequest(WireModel):
    model: str | None = None
    prompt: str
    add_special_tokens: StrictBool = True
    return_token_strs: StrictBool = False


class TokenizeChatRequest(WireModel):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1, fail_fast=True)
    add_generation_prompt: StrictBool = True
    """Ignored when the last message is the assistant's (it is continued, as chat does)."""
    return_token_strs: StrictBool = False


class TokenizeResponse(WireModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(WireModel):
    model: str | None = None
    tokens: TokenIds


class DetokenizeResponse(WireModel):
    prompt: str


def _field_names(*models: type[BaseModel]) -> frozenset[str]:
    return frozenset(a.alias or n for m in models for n, a in m.model_fields.items())


WIRE_FIELD_NAMES = _field_names(CompletionRequest, ChatCompletionRequest, ChatMessage, ContentPart, ChatTool,
                                FunctionDef, ToolCall, ToolCallFunction, TokenizeCompletionRequest, TokenizeChatRequest, DetokenizeRequest,
                                StreamOptions, ResponseFormat, ThinkingConfigEnabled,
                                PredictedOutput)
"""Every field name a request can hold; `ember.http.errors` names the faulty one from these."""
