"""An InferenceRequest in engine terms: its prompts as token ids and one EngineRequest per choice.

CPU work (rendering, tokenizing, compiling a grammar): the pipeline runs it off the event loop, and only
for an admitted request.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace

from ember.engine.request import EngineRequest
from ember.errors import ContextLengthExceeded, InvalidRequest
from ember.pipeline.conversation import render_conversation
from ember.pipeline.request import Conversation, InferenceRequest, PromptInput, TextPrompt
from ember.pipeline.served_model import ServedModel
from ember.pipeline.tool_format import ToolFormat, hidden_markers, tool_style
from ember.pipeline.tools import ToolSet

DEFAULT_MAX_TOKENS = 16


@dataclass
class Prompt:
    token_ids: list[int]
    text: str | None
    """The prompt as text (what the user wrote, or the rendered conversation); None for token ids."""


@dataclass(frozen=True)
class ToolParsing:
    """How the answers of a request that offers tools are read back as calls."""

    format: ToolFormat
    tools: ToolSet
    hidden_markers: dict[int, str]
    """Markers that are special tokens (absent from the detokenized text), by id."""
    max_calls: int | None


@dataclass
class Plan:
    """One request in engine terms: requests[c] produces choice c."""

    prompts: list[Prompt]
    requests: list[EngineRequest]
    n: int
    tools: ToolParsing | None = None
    """Set when the answers are parsed for tool calls (tools given, tool_choice not none)."""

    def prompt_of(self, choice: int) -> Prompt:
        return self.prompts[choice // self.n]

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p.token_ids) for p in self.prompts)

    @property
    def max_new_tokens(self) -> int:
        """The most tokens the request can generate, over all its choices (what rate limits reserve)."""
        return sum(r.params.max_tokens for r in self.requests)


def tokenize(item: PromptInput, served: ServedModel) -> Prompt:
    """One prompt as token ids, as a generating request would see it (/tokenize counts with this)."""
    tok = served.tokenizer
    if isinstance(item, TextPrompt):
        return Prompt(tok.encode(item.text, add_special_tokens=item.special_tokens), item.text)
    if isinstance(item, Conversation):
        if served.chat_template is None:
            raise InvalidRequest("the served model has no chat template", param="messages",
                                 code="no_chat_template")
        text, ids = render_conversation(item, served.chat_template, tok.max_token_chars)
        return Prompt(ids, text)
    bad = [t for t in item.token_ids if not 0 <= t < tok.vocab_size]
    if bad:
        raise InvalidRequest(f"prompt token id {bad[0]} is outside the vocabulary (0..{tok.vocab_size - 1})",
                             param="prompt", code="invalid_token_id")
    return Prompt(list(item.token_ids), None)


def _prompts(req: InferenceRequest, served: ServedModel) -> list[Prompt]:
    out = []
    for i, item in enumerate(req.prompts):
        out.append(tokenize(item, served))
        if not out[-1].token_ids:
            raise InvalidRequest(f"prompt {i} is empty after tokenization", param="prompt")
    return out


def fit_max_tokens(req: InferenceRequest, prompt_len: int, max_model_len: int) -> int:
    asked = req.max_tokens
    room = max_model_len - prompt_len
    if room <= 0 and not (asked == 0 and req.echo):
        raise ContextLengthExceeded(
            f"the prompt has {prompt_len} tokens, which fills the context window of {max_model_len}",
            param="prompt")
    if asked is None:
        return room if req.fill_context else max(0, min(DEFAULT_MAX_TOKENS, room))
    if asked > room:
        if not req.truncate_max_tokens:
            raise ContextLengthExceeded(
                f"prompt ({prompt_len} tokens) plus max_tokens ({asked}) exceeds the context window "
                f"of {max_model_len} tokens", param="max_tokens")
        return max(0, room)
    return asked


def choice_seed(seed: int | None, choice: int) -> int | None:
    if seed is None:
        return None
    if choice == 0:
        return seed
    # Each choice derives its own seed so the n samples differ, yet all repeat together.
    h = hashlib.blake2b(f"{seed}:{choice}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & 0x7FFF_FFFF_FFFF_FFFF


def _speculation(req: InferenceRequest, served: ServedModel) -> tuple[int, ...] | None:
    spec = req.prediction
    if spec is None or spec == "" or spec == ():
        return None
    if isinstance(spec, str):
        return tuple(served.tokenizer.encode(spec, add_special_tokens=False))
    bad = [t for t in spec if t >= served.tokenizer.vocab_size]
    if bad:
        raise InvalidRequest(f"speculation token id {bad[0]} is outside the vocabulary", param="speculation")
    return spec


def tool_parsing(req: InferenceRequest, served: ServedModel) -> ToolParsing | None:
    """The calls' format when the request's conversation offers tools it may call."""
    convs = [p for p in req.prompts if isinstance(p, Conversation) and p.tools is not None]
    if not convs or not convs[0].tools.constrained or served.chat_template is None:  # type: ignore[union-attr]
        return None
    style = tool_style(served.chat_template)
    tools: ToolSet = convs[0].tools  # type: ignore[assignment]
    return ToolParsing(style.format, tools, hidden_markers(style.format, served.tokenizer), style.max_calls(tools))


def _grammar(req: InferenceRequest, served: ServedModel, tools: ToolParsing | None) -> str | None:
    if req.constraint is None and tools is None:
        return None
    if served.grammars is None:
        raise InvalidRequest("constrained decoding is not available on this server",
                             param="response_format" if tools is None else "tools")
    if tools is not None:
        if req.constraint is not None:
            raise InvalidRequest("response_format cannot be combined with tools that may be called; send "
                                 "tool_choice none, or no response_format", param="response_format")
        text = tools.format.grammar(tools.tools, served.tokenizer, tools.max_calls)
        return served.grammars.compile("lark", text, "tools")
    return served.grammars.compile(*req.constraint)


def plan(req: InferenceRequest, served: ServedModel) -> Plan:
    """The engine requests of `req`; its caller's account scopes their prefix cache."""
    tok = served.tokenizer
    prompts = _prompts(req, served)
    tools = tool_parsing(req, served)
    grammar = _grammar(req, served, tools)
    speculation = _speculation(req, served)
    for t, _ in req.sampling.logit_bias:
        if not 0 <= t < tok.vocab_size:
            raise InvalidRequest(f"logit_bias token id {t} is outside the vocabulary", param="logit_bias")
    base = replace(req.sampling, grammar=grammar, speculation=speculation,
                   prompt_logprobs=req.sampling.logprobs if req.echo else None)
    reqs = []
    now = time.monotonic()
    for pi, prompt in enumerate(prompts):
        max_tokens = fit_max_tokens(req, len(prompt.token_ids), served.max_model_len)
        for j in range(req.n):
            c = pi * req.n + j
            params = replace(base, max_tokens=max_tokens, seed=choice_seed(req.sampling.seed, c))
            reqs.append(EngineRequest(f"{req.request_id}-{c}", tuple(prompt.token_ids), params,
                                      cache_salt=req.cache_salt, arrival_time=now, background=req.background,
                                      cache_tenant=req.caller.cache_tenant))
    return Plan(prompts, reqs, req.n, tools)
