"""The one response-building layer of /v1/completions and /v1/chat/completions.

Each engine output updates its choice's state once, and one `ChoiceParts` is built from it: text, logprobs,
token ids, raw output, finish reason. A non-streaming response builds the parts over the whole choice, a
stream over each delta, with the same code; the endpoint then only decides the shape (a completion choice,
a chat message, a chat delta). So streaming and non-streaming cannot drift apart.

The pydantic models are the wire shapes of the Fireworks spec (CompletionResponse, ChatCompletionResponse
and their stream chunks); they appear in the OpenAPI document at /docs. Fields a response leaves unset are
not sent (`exclude_unset`), so a choice carries `token_ids` only when they were asked for.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from fastapi import FastAPI
from pydantic import BaseModel

from ember.engine.request import RequestOutput
from ember.pipeline.plan import Plan, ToolParsing
from ember.pipeline.tool_stream import ArgumentsDelta, CallStart, TextDelta, ToolCallParser
from ember.pipeline.usage import Tally
from ember.protocol.schemas import GenerationRequest
from ember.protocol.translate import ChoiceState, choice_logprobs, echo_prefix, logprobs_count
from ember.tokenizer import Tokenizer

# -- wire models ------------------------------------------------------------------------------------


class Sent(BaseModel):
    """Fields named in `always` are sent though left at their default (`object`, `role` tags)."""

    always: ClassVar[tuple[str, ...]] = ()

    def model_post_init(self, context: Any, /) -> None:
        self.__pydantic_fields_set__.update(self.always)


class Envelope(Sent):
    """A top-level response or chunk."""

    always = ("object",)


class PromptTokensDetails(BaseModel):
    cached_tokens: int | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int | None = None
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class RawOutput(BaseModel):
    prompt_fragments: list[str | int]
    prompt_token_ids: list[int]
    completion: str
    completion_token_ids: list[int] | None = None
    completion_logprobs: dict[str, Any] | None = None
    grammar: str | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None = None
    """Legacy (`tokens`, `token_logprobs`, ...) or new-style (`content`) as the request asked."""
    finish_reason: Literal["stop", "length", "error"] | None = None
    prompt_token_ids: list[int] | None = None
    token_ids: list[int] | None = None
    raw_output: RawOutput | None = None


class CompletionResponse(Envelope):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    perf_metrics: dict[str, float | int] | None = None


class CompletionChunk(CompletionResponse):
    """One SSE event of a streamed completion: the choices that moved, usage on the final chunk."""


class FunctionCall(BaseModel):
    name: str
    arguments: str
    """JSON text (never an object)."""


class ToolCall(Sent):
    always = ("type",)
    id: str
    """`call_` and letters or digits, unique within the response."""
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(Sent):
    always = ("role", "content")
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    """None when the message is only tool calls."""
    tool_calls: list[ToolCall] | None = None


ChatFinish = Literal["stop", "length", "tool_calls", "error"]


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: ChatFinish | None = None
    logprobs: dict[str, Any] | None = None
    raw_output: RawOutput | None = None
    token_ids: list[int] | None = None


class ChatCompletionResponse(Envelope):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
    perf_metrics: dict[str, float | int] | None = None
    prompt_token_ids: list[int] | None = None


class DeltaFunction(BaseModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(BaseModel):
    index: int
    """The call's position in the message: deltas with the same index build one call."""
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunction


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    finish_reason: ChatFinish | None = None
    logprobs: dict[str, Any] | None = None
    raw_output: RawOutput | None = None
    prompt_token_ids: list[int] | None = None
    token_ids: list[int] | None = None


class ChatCompletionChunk(Envelope):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatStreamChoice]
    usage: Usage | None = None
    perf_metrics: dict[str, float | int] | None = None


def to_json(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_unset=True)


# -- one choice's parts ------------------------------------------------------------------------------

@dataclass
class ChoiceParts:
    """What one choice says in one response or one chunk, before the endpoint gives it its shape."""

    index: int
    text: str
    finish_reason: str | None
    logprobs: dict[str, Any] | None
    token_ids: list[int] | None = None
    """Generated ids (all, or this delta's), when return_token_ids."""
    prompt_token_ids: list[int] | None = None
    """The prompt ids, when return_token_ids (a stream sends them once, with the choice's first chunk)."""
    raw_output: RawOutput | None = None
    """When raw_output (a stream sends it once, on the choice's final chunk)."""
    tool_calls: list[ToolCall] | None = None
    """A whole chat message's calls (then `text` is its content, None when there is none)."""
    tool_deltas: list[DeltaToolCall] = field(default_factory=list)
    """A stream chunk's pieces of calls."""
    content: str | None = None

    @property
    def says_something(self) -> bool:
        return bool(self.text or self.finish_reason or self.token_ids or self.logprobs or self.prompt_token_ids
                    or self.tool_deltas)


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass
class ToolReading:
    """One choice's text read for tool calls, as it arrives (see pipeline/tool_stream.py)."""

    spec: ToolParsing
    parser: ToolCallParser
    ids: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, spec: ToolParsing) -> ToolReading:
        return cls(spec, ToolCallParser(spec.format))

    def feed(self, text: str, token_ids: list[int], final: bool) -> tuple[str, list[DeltaToolCall]]:
        """Content and call pieces this much more text adds. Markers that are special tokens are not in
        the detokenized text: they are put back after the text of their output."""
        extra = "".join(self.spec.hidden_markers.get(t, "") for t in token_ids)
        events = self.parser.feed(text + extra)
        if final:
            events += self.parser.finish()
        content, deltas = "", []
        for ev in events:
            if isinstance(ev, TextDelta):
                content += ev.text
            elif isinstance(ev, CallStart):
                self.ids.append(new_call_id())
                deltas.append(DeltaToolCall(index=ev.index, id=self.ids[ev.index], type="function",
                                            function=DeltaFunction(name=ev.name, arguments="")))
            elif isinstance(ev, ArgumentsDelta):
                deltas.append(DeltaToolCall(index=ev.index, function=DeltaFunction(arguments=ev.text)))
        return content, deltas

    def calls(self) -> list[ToolCall] | None:
        """The answer's calls once generation ended: None unless every call is complete, names a function
        it may call and has arguments that parse as a JSON object (else the answer is text, T6)."""
        p = self.parser
        if not p.calls or not p.complete:
            return None
        allowed = {t.name for t in self.spec.tools.callable()}
        out = []
        for i, c in enumerate(p.calls):
            try:
                args = json.loads(c.arguments)
            except ValueError:
                return None
            if c.name not in allowed or not isinstance(args, dict):
                return None
            out.append(ToolCall(id=self.ids[i], function=FunctionCall(name=c.name, arguments=c.arguments)))
        return out


@dataclass
class Head:
    id: str
    created: int
    model: str


class ResponseBuilder:
    """One request's choices, fed engine outputs; builds the response or the stream chunks for either endpoint.

    `req` holds the output options both endpoints share (echo, logprobs, token ids, raw output), so they
    are worked out the same way for both. Usage comes from the pipeline's tally of the same outputs.
    """

    def __init__(self, kind: Literal["completion", "chat"], req: GenerationRequest, tok: Tokenizer, plan: Plan,
                 tally: Tally, head: Head, t0: float) -> None:
        self.kind = kind
        self.req = req
        self.tok = tok
        self.plan = plan
        self.tally = tally
        self.head = head
        self.t0 = t0
        self.states = [ChoiceState(i) for i in range(len(plan.requests))]
        self._started = [False] * len(self.states)
        self._echo_len = [0] * len(self.states)  # generated text offsets count from after the echoed prompt
        tools = plan.tools if kind == "chat" else None
        self._tools = [ToolReading.of(tools) if tools is not None else None for _ in self.states]

    # -- feeding -------------------------------------------------------------------------------------

    def add(self, c: int, out: RequestOutput) -> None:
        """Non-streaming: only accumulate."""
        self.states[c].add(out)
        reading = self._tools[c]
        if reading is not None:
            reading.feed(out.new_text, list(out.new_token_ids), out.finished)

    def advance(self, c: int, out: RequestOutput) -> ChoiceParts:
        """Streaming: accumulate, and return what this output adds to choice c."""
        st = self.states[c]
        before_lp, before_off = len(st.logprobs), len(st.offsets)
        st.add(out)
        prompt = self.plan.prompt_of(c)
        first = not self._started[c]
        self._started[c] = True
        echo_text, echo_ids = ("", [])
        if first:
            echo_text, echo_ids = echo_prefix(self.req, prompt, self.tok)
            self._echo_len[c] = len(echo_text)
        logprobs = None
        if logprobs_count(self.req) is not None:
            delta = ChoiceState(c, logprobs=st.logprobs[before_lp:], offsets=st.offsets[before_off:],
                                prompt_logprobs=st.prompt_logprobs if echo_ids else None)
            logprobs = choice_logprobs(self.req, self.tok, delta, prompt, self._echo_len[c], echo_ids)
        parts = ChoiceParts(c, echo_text + out.new_text, st.finish_reason, logprobs)
        reading = self._tools[c]
        if reading is not None:
            text, parts.tool_deltas = reading.feed(out.new_text, list(out.new_token_ids), out.finished)
            parts.text = echo_text + text
            if out.finished and reading.calls() is not None:
                parts.finish_reason = "tool_calls"
        if self.req.return_token_ids:
            parts.token_ids = list(out.new_token_ids)
            if first:
                parts.prompt_token_ids = list(prompt.token_ids)
        if out.finished:
            parts.raw_output = self._raw_output(st)
        return parts

    @property
    def finished(self) -> bool:
        return self.tally.finished

    # -- parts ---------------------------------------------------------------------------------------

    def whole(self, st: ChoiceState) -> ChoiceParts:
        prompt = self.plan.prompt_of(st.index)
        echo_text, echo_ids = echo_prefix(self.req, prompt, self.tok)
        parts = ChoiceParts(st.index, echo_text + st.text, st.finish_reason,
                            choice_logprobs(self.req, self.tok, st, prompt, len(echo_text), echo_ids))
        reading = self._tools[st.index]
        calls = reading.calls() if reading is not None else None
        if reading is not None and calls is not None:
            # Only calls, or text the model wrote before them; anything that is not calls stays text (T6).
            parts.tool_calls = calls
            parts.content = (echo_text + reading.parser.content) or None
            parts.finish_reason = "tool_calls"
        if self.req.return_token_ids:
            parts.token_ids = list(st.token_ids)
            parts.prompt_token_ids = list(prompt.token_ids)
        parts.raw_output = self._raw_output(st)
        return parts

    def _raw_output(self, st: ChoiceState) -> RawOutput | None:
        if not self.req.raw_output:
            return None
        prompt = self.plan.prompt_of(st.index)
        raw = RawOutput(
            prompt_fragments=[prompt.text] if prompt.text is not None else list(prompt.token_ids),
            prompt_token_ids=list(prompt.token_ids), completion=st.text, completion_token_ids=list(st.token_ids))
        if logprobs_count(self.req) is not None:
            plain = self.req.model_copy(update={"logprobs": True, "echo": False, "echo_last": None})
            raw.completion_logprobs = choice_logprobs(plain, self.tok, st, prompt, 0, [])
        grammar = self.plan.requests[st.index].params.grammar
        if grammar is not None:
            raw.grammar = grammar
        return raw

    # -- totals --------------------------------------------------------------------------------------

    def usage(self) -> Usage:
        u = self.tally.usage()
        return Usage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                     total_tokens=u.prompt_tokens + u.completion_tokens,
                     prompt_tokens_details=PromptTokensDetails(cached_tokens=u.cached_tokens))

    def perf_metrics(self, usage: Usage) -> dict[str, float | int]:
        states = self.states
        firsts = [s.first_token_time for s in states if s.first_token_time is not None]
        now = time.monotonic()
        cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
        out: dict[str, float | int] = {
            "prompt-tokens": usage.prompt_tokens,
            "cached-prompt-tokens": cached or 0,
            "server-time-to-first-token": round((min(firsts) if firsts else now) - self.t0, 6),
            "server-processing-time": round(now - self.t0, 6),
        }
        spec = self.plan.requests[0].params.speculation if self.plan.requests else None
        drafted = sum(s.num_draft_tokens for s in states)
        if spec is not None or drafted:
            accepted = sum(s.num_accepted_draft_tokens for s in states)
            if spec is not None:
                out["speculation-prompt-tokens"] = len(spec)
                out["speculation-prompt-matched-tokens"] = accepted
            out["speculation-generated-tokens"] = drafted
            out["speculation-acceptance"] = round(accepted / drafted, 4) if drafted else 0.0
        return out

    # -- shapes --------------------------------------------------------------------------------------

    def response(self) -> tuple[CompletionResponse | ChatCompletionResponse, dict[str, float | int]]:
        """The non-streaming body and its perf metrics (always sent as headers)."""
        usage = self.usage()
        metrics = self.perf_metrics(usage)
        parts = [self.whole(st) for st in self.states]
        h = dict(id=self.head.id, created=self.head.created, model=self.head.model)
        body: CompletionResponse | ChatCompletionResponse
        if self.kind == "completion":
            body = CompletionResponse(**h, choices=[_completion_choice(p) for p in parts], usage=usage)
        else:
            body = ChatCompletionResponse(**h, choices=[_chat_choice(p) for p in parts], usage=usage)
            if self.req.return_token_ids:
                body.prompt_token_ids = list(self.plan.prompts[0].token_ids)
        if self.req.perf_metrics_in_response:
            body.perf_metrics = metrics
        return body, metrics

    def opening_chunks(self) -> list[CompletionChunk | ChatCompletionChunk]:
        """Chat streams open with one `role: assistant` delta per choice, as OpenAI's do."""
        if self.kind == "completion":
            return []
        return [ChatCompletionChunk(**self._head(), choices=[
            ChatStreamChoice(index=i, delta=DeltaMessage(role="assistant", content=""), finish_reason=None,
                             logprobs=None)])
            for i in range(len(self.states))]

    def chunk(self, parts: ChoiceParts) -> CompletionChunk | ChatCompletionChunk | None:
        """The SSE event for one output, or None when it adds nothing a client would see."""
        final = self.finished and parts.finish_reason is not None
        if not (parts.says_something or final):
            return None
        chunk: CompletionChunk | ChatCompletionChunk
        if self.kind == "completion":
            chunk = CompletionChunk(**self._head(), choices=[_completion_choice(parts)])
        else:
            chunk = ChatCompletionChunk(**self._head(), choices=[_chat_stream_choice(parts)])
        if final and not self._usage_apart:  # usage (and perf metrics) ride on the final chunk, as Fireworks sends them
            usage = self.usage()
            chunk.usage = usage
            if self.req.perf_metrics_in_response:
                chunk.perf_metrics = self.perf_metrics(usage)
        return chunk

    @property
    def _usage_apart(self) -> bool:
        """Chat with `stream_options.include_usage`: usage comes on its own last chunk (OpenAI's placement)."""
        opts = self.req.stream_options
        return self.kind == "chat" and opts is not None and bool(opts.include_usage)

    def closing_chunks(self) -> list[CompletionChunk | ChatCompletionChunk]:
        """After the final chunk: the usage chunk with no choices, when asked for apart."""
        if not (self._usage_apart and self.finished):
            return []
        usage = self.usage()
        chunk = ChatCompletionChunk(**self._head(), choices=[], usage=usage)
        if self.req.perf_metrics_in_response:
            chunk.perf_metrics = self.perf_metrics(usage)
        return [chunk]

    def _head(self) -> dict[str, Any]:
        return {"id": self.head.id, "created": self.head.created, "model": self.head.model}


def _completion_choice(p: ChoiceParts) -> CompletionChoice:
    c = CompletionChoice(index=p.index, text=p.text, logprobs=p.logprobs, finish_reason=p.finish_reason)
    for name in ("prompt_token_ids", "token_ids", "raw_output"):
        if getattr(p, name) is not None:
            setattr(c, name, getattr(p, name))
    return c


def _chat_choice(p: ChoiceParts) -> ChatChoice:
    message = AssistantMessage(content=p.text) if p.tool_calls is None else \
        AssistantMessage(content=p.content, tool_calls=p.tool_calls)
    c = ChatChoice(index=p.index, message=message, finish_reason=p.finish_reason, logprobs=p.logprobs)
    for name in ("token_ids", "raw_output"):
        if getattr(p, name) is not None:
            setattr(c, name, getattr(p, name))
    return c


def _chat_stream_choice(p: ChoiceParts) -> ChatStreamChoice:
    delta = DeltaMessage(content=p.text) if p.text else DeltaMessage()
    if p.tool_deltas:
        delta.tool_calls = p.tool_deltas
    c = ChatStreamChoice(index=p.index, delta=delta, finish_reason=p.finish_reason, logprobs=p.logprobs)
    for name in ("prompt_token_ids", "token_ids", "raw_output"):
        if getattr(p, name) is not None:
            setattr(c, name, getattr(p, name))
    return c


# -- OpenAPI -----------------------------------------------------------------------------------------

STREAM_MODELS: tuple[type[BaseModel], ...] = (CompletionChunk, ChatCompletionChunk)


def sse_content(model: type[BaseModel]) -> dict[str, Any]:
    """The `responses=` entry documenting a route's text/event-stream body as a chunk model."""
    return {200: {"content": {"text/event-stream": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def document_stream_models(app: FastAPI) -> None:
    """Adds the chunk models to /openapi.json's components: FastAPI only collects JSON response models,
    and a stream's events are JSON objects inside SSE."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in STREAM_MODELS:
            js = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
            for name, sub in js.pop("$defs", {}).items():
                comps.setdefault(name, sub)
            comps.setdefault(model.__name__, js)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
