"""The one module that knows both wire and engine types.

Inward: a CompletionRequest becomes EngineRequests (tokenized prompts, n fan-out with choice index
prompt_i * n + j, max_tokens fitted to the context); a ChatCompletionRequest is rendered through the
model's chat template into a CompletionRequest over token ids, then takes the same way. Outward:
RequestOutputs become Choices and stream chunks, with legacy or new-style logprobs, echo and token ids
(shaped for the wire by api/responses.py).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from ember.engine.grammar import GrammarCompiler, response_format_grammar
from ember.engine.request import EngineRequest, RequestOutput, SamplingParams, TokenLogprob
from ember.errors import ContextLengthExceeded, InvalidRequest
from ember.json_depth import MAX_JSON_DEPTH, too_deep
from ember.pipeline.chat_template import ChatTemplate
from ember.protocol.schemas import ChatCompletionRequest, ChatMessage, CompletionRequest, GenerationRequest
from ember.tokenizer import Tokenizer

DEFAULT_MAX_TOKENS = 16
MAX_CHOICES = 128
"""Choices (prompts x n) one request may ask for: the spec's bound on n, applied to the product."""


@dataclass
class Prompt:
    token_ids: list[int]
    text: str | None
    """The prompt as the user wrote it, when it was text."""


@dataclass
class Plan:
    """One HTTP request in engine terms: requests[c] produces choice c."""

    prompts: list[Prompt]
    requests: list[EngineRequest]
    n: int

    def prompt_of(self, choice: int) -> Prompt:
        return self.prompts[choice // self.n]

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p.token_ids) for p in self.prompts)

    @property
    def max_new_tokens(self) -> int:
        """The most tokens the request can generate, over all its choices (what rate limits reserve)."""
        return sum(r.params.max_tokens for r in self.requests)


def prompt_items(req: CompletionRequest) -> list[str | list[int]]:
    """The request's prompts: one text, one list of token ids, or a list of either."""
    p = req.prompt
    if isinstance(p, str):
        return [p]
    if p and all(isinstance(x, int) for x in p):
        return [p]  # type: ignore[list-item]
    return list(p)  # type: ignore[arg-type]


def text_limit(tok: Tokenizer, max_tokens: int) -> int:
    """The most characters a text of at most `max_tokens` tokens can have: past it, it is surely longer."""
    return max_tokens * tok.max_token_chars


def check_text_fits(chars: int, tok: Tokenizer, max_model_len: int, param: str, what: str = "prompt") -> None:
    """ContextLengthExceeded for a text that cannot fit the context window, told from its length alone:
    before it is tokenized, which for a 50 MB prompt took 50 s and 6.5 GB to reach the same answer."""
    if chars > text_limit(tok, max_model_len):
        raise ContextLengthExceeded(
            f"the {what} has {chars} characters, more than any text that fits the context window of "
            f"{max_model_len} tokens (at most {tok.max_token_chars} characters a token)", param=param)


def check_choices(prompts: int, n: int) -> None:
    if prompts * n > MAX_CHOICES:
        raise InvalidRequest(
            f"{prompts} prompts x n={n} asks for {prompts * n} choices; at most {MAX_CHOICES} "
            "per request", param="n", code="too_many_choices")


def prediction_text(req: GenerationRequest) -> str | list[int] | None:
    """`speculation` (text or token ids), else `prediction` (PredictedOutput or text), or None."""
    spec = req.speculation
    if spec is None and req.prediction is not None:
        pred = req.prediction
        if isinstance(pred, str):
            spec = pred
        elif isinstance(pred.content, str):
            spec = pred.content
        else:  # content parts: the text ones, in order
            spec = "".join(str(part.get("text", "")) for part in pred.content if isinstance(part, dict))
    return spec


def check_prediction_fits(req: GenerationRequest, tok: Tokenizer, max_model_len: int) -> None:
    spec = prediction_text(req)
    if spec is not None and len(spec) > (max_model_len if isinstance(spec, list) else text_limit(tok, max_model_len)):
        raise ContextLengthExceeded(f"the prediction is longer than the context window of {max_model_len} tokens",
                                    param="prediction" if req.speculation is None else "speculation")


def check_completion_bounds(req: CompletionRequest, tok: Tokenizer, max_model_len: int) -> int:
    """The cheap refusals of a completion, before any tokenizing or grammar work: too many choices, a text
    that cannot fit the context window; the number of engine sequences it asks for."""
    items = prompt_items(req)
    check_choices(len(items), req.n)
    for item in items:
        if isinstance(item, str):
            check_text_fits(len(item), tok, max_model_len, "prompt")
    check_prediction_fits(req, tok, max_model_len)
    return len(items) * req.n


def tokenize_prompts(req: CompletionRequest, tok: Tokenizer) -> list[Prompt]:
    """The prompts as token ids; texts were bounded by check_completion_bounds before."""
    items = prompt_items(req)
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            ids = tok.encode(item)
            out.append(Prompt(ids, item))
        else:
            bad = [t for t in item if not 0 <= t < tok.vocab_size]
            if bad:
                raise InvalidRequest(
                    f"prompt token id {bad[0]} is outside the vocabulary (0..{tok.vocab_size - 1})",
                    param="prompt", code="invalid_token_id")
            out.append(Prompt(list(item), None))
        if not out[-1].token_ids:
            raise InvalidRequest(f"prompt {i} is empty after tokenization", param="prompt")
    return out


def fit_max_tokens(req: CompletionRequest, prompt_len: int, max_model_len: int) -> int:
    asked = req.max_tokens if req.max_tokens is not None else req.max_completion_tokens
    room = max_model_len - prompt_len
    if room <= 0 and not (asked == 0 and (req.echo or req.echo_last)):
        raise ContextLengthExceeded(
            f"the prompt has {prompt_len} tokens, which fills the context window of {max_model_len}",
            param="prompt")
    if asked is None:
        return max(0, min(DEFAULT_MAX_TOKENS, room))
    if asked > room:
        if req.context_length_exceeded_behavior == "error":
            raise ContextLengthExceeded(
                f"prompt ({prompt_len} tokens) plus max_tokens ({asked}) exceeds the context window "
                f"of {max_model_len} tokens", param="max_tokens")
        return max(0, room)
    return asked


def _choice_seed(seed: int | None, choice: int) -> int | None:
    if seed is None:
        return None
    if choice == 0:
        return seed
    # Each choice derives its own seed so the n samples differ, yet all repeat together.
    h = hashlib.blake2b(f"{seed}:{choice}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & 0x7FFF_FFFF_FFFF_FFFF


def logprobs_count(req: CompletionRequest) -> int | None:
    """How many alternatives per position; None when no logprobs were asked for."""
    lp = req.logprobs
    if lp is None or lp is False:
        return None
    if lp is True:
        return req.top_logprobs or 0
    return req.top_logprobs if req.top_logprobs is not None else lp


def grammar_of(req: CompletionRequest, grammars: GrammarCompiler | None) -> str | None:
    """The validated llguidance grammar of the request's response_format, or None for free text."""
    spec = response_format_grammar(req.response_format)
    if spec is None:
        return None
    if grammars is None:
        raise InvalidRequest("constrained decoding is not available on this server", param="response_format")
    return grammars.compile(*spec)


def speculation_of(req: CompletionRequest, tok: Tokenizer) -> tuple[int, ...] | None:
    """`speculation` (text or token ids) or `prediction` (PredictedOutput or text) as token ids."""
    spec = prediction_text(req)
    if spec is None or spec == "" or spec == []:
        return None
    if isinstance(spec, str):
        return tuple(tok.encode(spec, add_special_tokens=False))
    bad = [t for t in spec if t >= tok.vocab_size]
    if bad:
        raise InvalidRequest(f"speculation token id {bad[0]} is outside the vocabulary", param="speculation")
    return tuple(spec)


def _has_lone_surrogate(v: object, name: str) -> bool:
    """Whether any string in `v` (keys included) holds a lone surrogate; InvalidRequest naming `name` when
    `v` nests deeper than MAX_JSON_DEPTH. Iterative: a free-form object (a schema, a tool's parameters) may
    arrive nested hundreds of levels deep, where a recursive walk ran out of stack (a 500)."""
    stack: list[tuple[object, int]] = [(v, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                return True
            continue
        if isinstance(node, dict):
            children: Iterable[object] = (x for kv in node.items() for x in kv)
        elif isinstance(node, (list, tuple)):
            children = node
        elif hasattr(node, "__dict__"):
            children = vars(node).values()
        else:
            continue
        if depth >= MAX_JSON_DEPTH:
            raise too_deep(name)
        stack.extend((x, depth + 1) for x in children if not isinstance(x, (int, float)) and x is not None)
    return False


def reject_invalid_text(req: CompletionRequest) -> None:
    """JSON may escape half of a UTF-16 surrogate pair ("\\ud800"), which is no text: the tokenizer, the
    prefix-cache keys and the detokenizer cannot take it, so it is refused here, naming the field. So is
    a field nested deeper than MAX_JSON_DEPTH (what reads it further down may recurse)."""
    for name, value in req:
        if _has_lone_surrogate(value, name):
            raise InvalidRequest(f"{name} contains a lone UTF-16 surrogate (an unpaired \\uD800-\\uDFFF escape); "
                                 "text must be valid Unicode", param=name, code="invalid_unicode")


def to_engine_requests(req: CompletionRequest, tok: Tokenizer, max_model_len: int, request_id: str,
                       grammars: GrammarCompiler | None = None, cache_tenant: str | None = None) -> Plan:
    """The engine requests of a completion; `cache_tenant` (the caller's account) scopes its prefix cache."""
    reject_invalid_text(req)
    check_completion_bounds(req, tok, max_model_len)
    prompts = tokenize_prompts(req, tok)
    n = req.n
    stop = tuple(req.stop_list)
    nlp = logprobs_count(req)
    echo = bool(req.echo) or bool(req.echo_last)
    grammar = grammar_of(req, grammars)
    speculation = speculation_of(req, tok)
    bias = tuple(sorted((int(k), float(v)) for k, v in (req.logit_bias or {}).items()))
    for t, _ in bias:
        if not 0 <= t < tok.vocab_size:
            raise InvalidRequest(f"logit_bias token id {t} is outside the vocabulary", param="logit_bias")
    reqs = []
    now = time.monotonic()
    for pi, prompt in enumerate(prompts):
        max_tokens = fit_max_tokens(req, len(prompt.token_ids), max_model_len)
        for j in range(n):
            c = pi * n + j
            params = SamplingParams(
                max_tokens=max_tokens,
                temperature=1.0 if req.temperature is None else req.temperature,
                top_k=req.top_k or 0,
                top_p=1.0 if req.top_p is None else req.top_p,
                min_p=req.min_p or 0.0,
                typical_p=1.0 if req.typical_p is None else req.typical_p,
                frequency_penalty=req.frequency_penalty or 0.0,
                presence_penalty=req.presence_penalty or 0.0,
                repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
                logit_bias=bias,
                mirostat_target=req.mirostat_target,
                mirostat_lr=0.1 if req.mirostat_lr is None else req.mirostat_lr,
                seed=_choice_seed(req.seed, c),
                stop=stop,
                ignore_eos=req.ignore_eos,
                logprobs=nlp,
                prompt_logprobs=nlp if (echo and nlp is not None) else None,
                grammar=grammar,
                speculation=speculation,
            )
            reqs.append(EngineRequest(f"{request_id}-{c}", tuple(prompt.token_ids), params,
                                      cache_salt=req.prompt_cache_isolation_key, arrival_time=now,
                                      cache_tenant=cache_tenant))
    return Plan(prompts, reqs, n)


def reject_reasoning(req: GenerationRequest) -> None:
    effort = req.reasoning_effort
    if effort not in (None, False, "none"):
        raise InvalidRequest("reasoning_effort is not supported by this model", param="reasoning_effort")
    if req.thinking is not None and getattr(req.thinking, "type", "disabled") != "disabled":
        raise InvalidRequest("thinking is not supported by this model", param="thinking")


def reject_unsupported_completion(req: CompletionRequest) -> None:
    """What a text-only model cannot do is a 400 naming the field, never silently ignored."""
    if req.images:
        raise InvalidRequest("images are not supported: this server runs a text-only model", param="images")
    reject_reasoning(req)


# -- chat -------------------------------------------------------------------------------------------

_SHARED_FIELDS = frozenset(GenerationRequest.model_fields)


def reject_unsupported_chat(req: ChatCompletionRequest) -> None:
    """What the served model cannot do yet is a 400 naming the field, never silently ignored."""
    if req.tools:
        raise InvalidRequest("tools are not supported: the served model has no tool-calling template and ember "
                             "does not parse tool calls yet", param="tools")
    if req.functions:
        raise InvalidRequest("functions are not supported (nor tools): the served model has no tool-calling "
                             "template", param="functions")
    if req.tool_choice not in (None, "none", "auto"):
        raise InvalidRequest("tool_choice needs tools, which are not supported by the served model",
                             param="tool_choice")
    if req.function_call not in (None, "none", "auto"):
        raise InvalidRequest("function_call needs functions, which are not supported", param="function_call")
    for i, m in enumerate(req.messages):
        _reject_unsupported_message(i, m)
    reject_reasoning(req)


def _reject_unsupported_message(i: int, m: ChatMessage) -> None:
    where = f"messages[{i}]"
    if isinstance(m.content, list):
        for part in m.content:
            if part.type != "text":
                raise InvalidRequest(f"{where}.content: {part.type} parts are not supported: the served model "
                                     "reads text only", param="messages.content")
            if part.text is None:
                raise InvalidRequest(f"{where}.content: a text part needs `text`", param="messages.content")
    if m.tool_calls or m.role in ("tool", "function") or m.tool_call_id is not None:
        raise InvalidRequest(f"{where}: tool calls and tool results are not supported: the served model has no "
                             "tool-calling template", param="messages.role")
    if m.content is None:
        raise InvalidRequest(f"{where}.content is required", param="messages.content")


def _template_messages(req: ChatCompletionRequest) -> list[dict[str, str]]:
    # "developer" is OpenAI's new name for the system role; templates know only "system".
    return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]


def _render(template: ChatTemplate, messages: list[dict[str, str]], generation_prompt: bool,
            safe: bool) -> tuple[str, list[int]]:
    # A conversation ending with the assistant is a prefill: the model continues that message.
    prefill = messages[-1]["role"] == "assistant"
    r = template.encode(messages, add_generation_prompt=generation_prompt and not prefill,
                        continue_final_message=prefill, safe=safe)
    return r.text, r.token_ids


def _oldest_turn(messages: list[dict[str, str]]) -> int | None:
    """What prompt_truncate_len drops next: the oldest message that is neither a system one nor the last."""
    return next((i for i, m in enumerate(messages[:-1]) if m["role"] != "system"), None)


def _chars(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"]) for m in messages)


def render_chat(req: ChatCompletionRequest, template: ChatTemplate, generation_prompt: bool = True,
                max_token_chars: int | None = None) -> tuple[str, list[int]]:
    """The prompt text and ids; with prompt_truncate_len, the oldest turns go first (system messages and
    the last message stay) until the prompt fits.

    Given `max_token_chars` (Tokenizer.max_token_chars), turns are first dropped by their length alone
    while their characters alone cannot fit the limit: exactly the turns the token count would drop,
    without rendering and tokenizing a long history once per turn."""
    messages = _template_messages(req)
    safe = bool(req.safe_tokenization)
    limit = req.prompt_truncate_len
    if limit is not None and max_token_chars is not None:
        total = _chars(messages)
        while total > limit * max_token_chars and (drop := _oldest_turn(messages)) is not None:
            total -= len(messages[drop]["content"])
            del messages[drop]
    text, ids = _render(template, messages, generation_prompt, safe)
    while limit is not None and len(ids) > limit:
        drop = _oldest_turn(messages)
        if drop is None:
            break  # only system messages and the last one are left: the context check decides
        del messages[drop]
        text, ids = _render(template, messages, generation_prompt, safe)
    return text, ids


def check_chat_bounds(req: ChatCompletionRequest, tok: Tokenizer, max_model_len: int) -> int:
    """The cheap refusals of a chat request, before rendering or tokenizing: a conversation whose text
    cannot fit the context window (with prompt_truncate_len, what truncation keeps: the system messages
    and the last one), a prediction too long; the number of engine sequences it asks for."""
    check_choices(1, req.n)
    kept = req.messages
    if req.prompt_truncate_len is not None:
        kept = [m for m in req.messages[:-1] if m.role in ("system", "developer")] + req.messages[-1:]
    check_text_fits(sum(len(m.text()) for m in kept), tok, max_model_len, "messages", "conversation")
    check_prediction_fits(req, tok, max_model_len)
    return req.n


def chat_to_completion(req: ChatCompletionRequest, prompt_ids: list[int], max_model_len: int) -> CompletionRequest:
    """The chat request in completion terms over the rendered prompt's token ids (fields already validated)."""
    shared = {k: v for k, v in req if k in _SHARED_FIELDS and k in req.model_fields_set}
    if req.max_tokens is None and req.max_completion_tokens is None:
        # Chat has no small default as completions do (OpenAI and vLLM generate up to the context window):
        # the model ends its turn itself.
        room = max_model_len - len(prompt_ids)
        if room > 0:
            shared["max_tokens"] = room
    return CompletionRequest.model_construct(**shared, prompt=prompt_ids)


def chat_to_engine_requests(req: ChatCompletionRequest, template: ChatTemplate | None, tok: Tokenizer,
                            max_model_len: int, request_id: str, grammars: GrammarCompiler | None = None,
                            cache_tenant: str | None = None) -> tuple[CompletionRequest, Plan]:
    reject_invalid_text(req)
    reject_unsupported_chat(req)
    if template is None:
        raise InvalidRequest("the served model has no chat template, so it cannot take chat messages; use "
                             "/v1/completions with a prompt", param="messages", code="no_chat_template")
    check_chat_bounds(req, tok, max_model_len)
    text, ids = render_chat(req, template, max_token_chars=tok.max_token_chars)
    creq = chat_to_completion(req, ids, max_model_len)
    plan = to_engine_requests(creq, tok, max_model_len, request_id, grammars, cache_tenant)
    plan.prompts[0].text = text  # raw_output's prompt_fragments: the rendered conversation
    return creq, plan


# -- outward ---------------------------------------------------------------------------------------

@dataclass
class ChoiceState:
    """Everything one choice has produced so far."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    prompt_logprobs: tuple[TokenLogprob, ...] | None = None
    finish_reason: str | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_output_tokens: int = 0
    first_token_time: float | None = None
    num_draft_tokens: int = 0
    num_accepted_draft_tokens: int = 0

    def add(self, out: RequestOutput) -> None:
        self.text += out.new_text
        self.token_ids.extend(out.new_token_ids)
        self.logprobs.extend(out.new_logprobs)
        self.offsets.extend(out.new_text_offsets)
        if out.prompt_logprobs is not None:
            self.prompt_logprobs = out.prompt_logprobs
        if out.finish_reason is not None:
            self.finish_reason = "length" if out.finish_reason == "length" else "stop"
        self.num_prompt_tokens = out.num_prompt_tokens
        self.num_cached_tokens = out.num_cached_tokens
        self.num_output_tokens = out.num_output_tokens
        self.first_token_time = out.first_token_time
        self.num_draft_tokens = out.num_draft_tokens
        self.num_accepted_draft_tokens = out.num_accepted_draft_tokens


def echo_prefix(req: CompletionRequest, prompt: Prompt, tok: Tokenizer) -> tuple[str, list[int]]:
    """The echoed prompt text and the prompt token ids it covers."""
    if req.echo_last:
        ids = prompt.token_ids[-req.echo_last :]
        return tok.decode(ids), ids
    if req.echo:
        text = prompt.text if prompt.text is not None else tok.decode(prompt.token_ids)
        return text, prompt.token_ids
    return "", []


def legacy_logprobs(tok: Tokenizer, records: list[TokenLogprob], offsets: list[int]) -> dict:
    tokens, token_lps, tops = [], [], []
    for r in records:
        tokens.append(tok.id_to_piece(r.token_id))
        token_lps.append(r.logprob)
        if r.logprob is None:
            tops.append(None)
            continue
        top = {tok.id_to_piece(t): lp for t, lp in r.top}
        # The sampled token's logprob is always included (so up to logprobs + 1 entries).
        top.setdefault(tok.id_to_piece(r.token_id), r.logprob)
        tops.append(top)
    return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops,
            "text_offset": offsets, "token_ids": [r.token_id for r in records]}


def new_logprobs(tok: Tokenizer, records: list[TokenLogprob], offsets: list[int]) -> dict:
    content = []
    for r, off in zip(records, offsets, strict=True):
        content.append({
            "token": tok.id_to_piece(r.token_id),
            "logprob": r.logprob if r.logprob is not None else 0.0,
            "sampling_logprob": r.sampling_logprob,
            "bytes": list(tok.token_bytes(r.token_id)),
            "token_id": r.token_id,
            "text_offset": off,
            "top_logprobs": [{"token": tok.id_to_piece(t), "logprob": lp, "token_id": t,
                              "bytes": list(tok.token_bytes(t))} for t, lp in r.top],
        })
    return {"content": content}


def prompt_offsets(tok: Tokenizer, ids: list[int], base: int = 0) -> list[int]:
    offs, pos = [], base
    for t in ids:
        offs.append(pos)
        pos += len(tok.id_to_piece(t))
    return offs


def choice_logprobs(req: CompletionRequest, tok: Tokenizer, st: ChoiceState, prompt: Prompt,
                    echo_text_len: int, echo_ids: list[int]) -> dict | None:
    """The whole choice's logprobs object (echoed prompt tokens first), or None when not asked."""
    if logprobs_count(req) is None:
        return None
    records: list[TokenLogprob] = []
    offsets: list[int] = []
    if echo_ids and st.prompt_logprobs is not None:
        prompt_recs = list(st.prompt_logprobs)[-len(echo_ids) :]
        records.extend(prompt_recs)
        offsets.extend(prompt_offsets(tok, echo_ids))
    records.extend(st.logprobs)
    offsets.extend(o + echo_text_len for o in st.offsets)
    if req.logprobs is True:
        return new_logprobs(tok, records, offsets)
    return legacy_logprobs(tok, records, offsets)
