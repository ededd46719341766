"""POST /tokenize and /detokenize, in vLLM's shapes, for clients that count tokens before sending.

A chat request is counted exactly as /v1/chat/completions would prompt the model: the same template
rendering (`messages`), so `count` equals the chat response's `usage.prompt_tokens`.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from ember.errors import InvalidRequest
from ember.http.deps import InferenceAuth, ServedModel, StateDep, caller_of, resolve_served
from ember.pipeline.bounds import check_text_fits
from ember.pipeline.request import PromptInput, TextPrompt
from ember.protocol.chat import conversation
from ember.protocol.schemas import (
    ChatCompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizeResponse,
)
from ember.protocol.translate import reject_invalid_text, reject_unsupported_chat

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


def _prompt(body: TokenizeCompletionRequest | TokenizeChatRequest) -> PromptInput:
    """The prompt exactly as completions (a text) or chat (a conversation) would send it to the model."""
    if isinstance(body, TokenizeCompletionRequest):
        return TextPrompt(body.prompt, body.add_special_tokens)
    return conversation(body.messages, generation_prompt=body.add_generation_prompt)


def _check(body: TokenizeCompletionRequest | TokenizeChatRequest) -> None:
    reject_invalid_text(body)
    if isinstance(body, TokenizeChatRequest):
        reject_unsupported_chat(ChatCompletionRequest(model="", messages=body.messages))


@router.post("/tokenize", response_model=TokenizeResponse, response_model_exclude_none=True)
async def tokenize(body: TokenizeCompletionRequest | TokenizeChatRequest, state: StateDep,
                   principal: InferenceAuth) -> TokenizeResponse:
    served = _served(state, body.model)
    _check_fits(served, body)
    state.pipeline.draw_request(caller_of(principal))
    ids = await state.pipeline.tokenize(_prompt(body), lambda: _check(body))
    strs = [served.tokenizer.id_to_piece(t) for t in ids] if body.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=served.max_model_len, tokens=ids, token_strs=strs)


@router.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(body: DetokenizeRequest, state: StateDep, principal: InferenceAuth) -> DetokenizeResponse:
    served = _served(state, body.model)
    state.pipeline.draw_request(caller_of(principal))
    bad = [t for t in body.tokens if t >= served.tokenizer.vocab_size]
    if bad:
        raise InvalidRequest(f"token id {bad[0]} is outside the vocabulary (0..{served.tokenizer.vocab_size - 1})",
                             param="tokens", code="invalid_token_id")
    return DetokenizeResponse(prompt=await asyncio.to_thread(served.tokenizer.decode, body.tokens))
