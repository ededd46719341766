"""What completions and chat share in reading the wire and in writing it back.

Inward: the cheap refusals before admission, the checks of what the served model cannot do, and the
generation fields of a request as the pipeline's InferenceRequest (each endpoint's adapter adds its
prompts: protocol/completions.py, protocol/chat.py). Outward: engine outputs become choices, with legacy
or new-style logprobs, echo and token ids (shaped for the wire by protocol/responses.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ember.engine.grammar import response_format_grammar
from ember.engine.request import RequestOutput, SamplingParams, TokenLogprob
from ember.errors import ContextLengthExceeded, InvalidRequest
from ember.json_depth import MAX_JSON_DEPTH, too_deep
from ember.pipeline.bounds import check_choices, check_text_fits, text_limit
from ember.pipeline.plan import Prompt
from ember.pipeline.request import Caller, InferenceRequest, PromptInput, UsageKind
from ember.protocol.schemas import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    GenerationRequest,
    WireModel,
)
from ember.tokenizer import Tokenizer


def prompt_items(req: CompletionRequest) -> list[str | list[int]]:
    """The request's prompts: one text, one list of token ids, or a list of either."""
    p = req.prompt
    if isinstance(p, str):
        return [p]
    if p and all(isinstance(x, int) for x in p):
        return [p]  # type: ignore[list-item]
    return list(p)  # type: ignore[arg-type]


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


def logprobs_count(req: GenerationRequest) -> int | None:
    """How many alternatives per position; None when no logprobs were asked for."""
    lp = req.logprobs
    if lp is None or lp is False:
        return None
    if lp is True:
        return req.top_logprobs or 0
    return req.top_logprobs if req.top_logprobs is not None else lp


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


def reject_invalid_text(req: WireModel) -> None:
    """JSON may escape half of a UTF-16 surrogate pair ("\\ud800"), which is no text: the tokenizer, the
    prefix-cache keys and the detokenizer cannot take it, so it is refused here, naming the field. So is
    a field nested deeper than MAX_JSON_DEPTH (what reads it further down may recurse)."""
    for name, value in req:
        if _has_lone_surrogate(value, name):
            raise InvalidRequest(f"{name} contains a lone UTF-16 surrogate (an unpaired \\uD800-\\uDFFF escape); "
                                 "text must be valid Unicode", param=name, code="invalid_unicode")


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


def inference_request(req: GenerationRequest, prompts: tuple[PromptInput, ...], caller: Caller, request_id: str,
                      deadline: float | None = None, kind: UsageKind = UsageKind.INTERACTIVE,
                      fill_context: bool = False) -> InferenceRequest:
    """The generation fields every endpoint shares, read once; the endpoint's adapter gives the prompts
    (and `fill_context`: whether generation without max_tokens runs to the context window)."""
    bias = tuple(sorted((int(k), float(v)) for k, v in (req.logit_bias or {}).items()))
    sampling = SamplingParams(
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
        seed=req.seed,
        ignore_eos=req.ignore_eos,
        stop=tuple(req.stop_list),
        logprobs=logprobs_count(req),
    )
    prediction = prediction_text(req)
    return InferenceRequest(
        request_id=request_id, caller=caller, prompts=prompts, n=req.n, sampling=sampling,
        max_tokens=req.max_tokens if req.max_tokens is not None else req.max_completion_tokens,
        fill_context=fill_context,
        truncate_max_tokens=req.context_length_exceeded_behavior != "error",
        echo=bool(req.echo) or bool(req.echo_last),
        constraint=response_format_grammar(req.response_format),
        prediction=tuple(prediction) if isinstance(prediction, list) else prediction,
        cache_salt=req.prompt_cache_isolation_key, priority=req.service_tier == "priority",
        background=kind == UsageKind.BATCH, deadline=deadline, kind=kind)


# -- chat -------------------------------------------------------------------------------------------

def reject_unsupported_chat(req: ChatCompletionRequest) -> None:
    """What the served model cannot do is a 400 naming the field, never silently ignored."""
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
    if m.content is None and not (m.role == "assistant" and (m.tool_calls or m.function_call is not None)):
        raise InvalidRequest(f"{where}.content is required", param="messages.content")


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
        self.first_token_time = out.first_token_time
        self.num_draft_tokens = out.num_draft_tokens
        self.num_accepted_draft_tokens = out.num_accepted_draft_tokens


def echo_prefix(req: GenerationRequest, prompt: Prompt, tok: Tokenizer) -> tuple[str, list[int]]:
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


def choice_logprobs(req: GenerationRequest, tok: Tokenizer, st: ChoiceState, prompt: Prompt,
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
