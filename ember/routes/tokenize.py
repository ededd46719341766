"""POST /tokenize and /detokenize, in vLLM's shapes, for clients that count tokens before sending.

A chat request is counted exactly as /v1/chat/completions would prompt the model: the same template
rendering (`messages`), so `count` equals the chat response's `usage.prompt_tokens`.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from ember.errors import InvalidRequest
from ember.http.deps import AppState, InferenceAuth, ServedModel, StateDep, resolve_served
from ember.platform.auth import Principal
from ember.protocol.schemas import (
    ChatCompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizeResponse,
)
from ember.protocol.translate import (
    check_text_fits,
    reject_invalid_text,
    reject_unsupported_chat,
    render_chat,
)

router = APIRouter()


def _served(state: StateDep, model: str | None) -> ServedModel:
    return state.model if model is None else resolve_served(state, model)


def _check_fits(served: ServedModel, body: TokenizeCompletionRequest | TokenizeChatRequest) -> None:
    """A text that cannot fit the context window is refused by its length, not tokenized to say so."""
    if isinstance(body, TokenizeCompletionRequest):
        check_text_fits(len(body.prompt), served.tokenizer, served.max_model_len, "prompt")
    else:
        check_text_fits(sum(len(m.text()) for m in body.messages), served.tokenizer, served.max_model_len,
                        "messages", "conversation")


def _rate_limit(state: AppState, principal: Principal, served: ServedModel) -> None:
    """A request of the key's account like any inference request: it takes from the request-rate quota."""
    state.platform.limiter.reserve_request(principal.account_id, served.model_id)


def _tokenize(served: ServedModel, body: TokenizeCompletionRequest | TokenizeChatRequest) -> list[int]:
    reject_invalid_text(body)
    if isinstance(body, TokenizeCompletionRequest):
        return served.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
    if served.chat_template is None:
        raise InvalidRequest("the served model has no chat template", param="messages", code="no_chat_template")
    chat = ChatCompletionRequest(model=served.model_id, messages=body.messages)
    reject_unsupported_chat(chat)
    return render_chat(chat, served.chat_template, body.add_generation_prompt)[1]


@router.post("/tokenize", response_model=TokenizeResponse, response_model_exclude_none=True)
async def tokenize(body: TokenizeCompletionRequest | TokenizeChatRequest, state: StateDep,
                   principal: InferenceAuth) -> TokenizeResponse:
    served = _served(state, body.model)
    _check_fits(served, body)
    _rate_limit(state, principal, served)
    ids = await asyncio.to_thread(_tokenize, served, body)
    strs = [served.tokenizer.id_to_piece(t) for t in ids] if body.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=served.max_model_len, tokens=ids, token_strs=strs)


@router.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(body: DetokenizeRequest, state: StateDep, principal: InferenceAuth) -> DetokenizeResponse:
    served = _served(state, body.model)
    _rate_limit(state, principal, served)
    bad = [t for t in body.tokens if t >= served.tokenizer.vocab_size]
    if bad:
        raise InvalidRequest(f"token id {bad[0]} is outside the vocabulary (0..{served.tokenizer.vocab_size - 1})",
                             param="tokens", code="invalid_token_id")
    return DetokenizeResponse(prompt=await asyncio.to_thread(served.tokenizer.decode, body.tokens))
