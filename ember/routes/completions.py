"""POST /v1/completions: the completions adapter (protocol/completions.py) on the pipeline."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ember.http.deps import InferenceAuth, StateDep
from ember.http.respond import generate
from ember.protocol.completions import COMPLETIONS
from ember.protocol.responses import CompletionChunk, CompletionResponse, sse_content
from ember.protocol.schemas import CompletionRequest

router = APIRouter()


@router.post("/v1/completions", response_model=CompletionResponse, responses=sse_content(CompletionChunk))
async def create_completion(body: CompletionRequest, request: Request, state: StateDep,
                            principal: InferenceAuth) -> Response:
    return await generate(request, state, principal, body, COMPLETIONS)
