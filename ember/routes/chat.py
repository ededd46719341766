"""POST /v1/chat/completions: the chat adapter (protocol/chat.py) on the pipeline."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ember.http.deps import InferenceAuth, StateDep
from ember.http.respond import generate
from ember.protocol.chat import CHAT
from ember.protocol.responses import ChatCompletionChunk, ChatCompletionResponse, sse_content
from ember.protocol.schemas import ChatCompletionRequest

router = APIRouter()


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse,
             responses=sse_content(ChatCompletionChunk))
async def create_chat_completion(body: ChatCompletionRequest, request: Request, state: StateDep,
                                 principal: InferenceAuth) -> Response:
    return await generate(request, state, principal, body, CHAT)
