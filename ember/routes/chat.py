"""POST /v1/chat/completions: render the model's chat template, then the completions path (api/serving.py)."""

from __future__ import annotations

import time
import uuid
from functools import partial

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ember.http.deps import InferenceAuth, StateDep, resolve_served
from ember.http.respond import admit_early, plan_admitted, request_deadline, respond
from ember.protocol.responses import (
    ChatCompletionChunk,
    ChatCompletionResponse,
    Head,
    ResponseBuilder,
    sse_content,
)
from ember.protocol.schemas import ChatCompletionRequest
from ember.protocol.translate import chat_to_engine_requests, check_chat_bounds

router = APIRouter()


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse,
             responses=sse_content(ChatCompletionChunk))
async def create_chat_completion(body: ChatCompletionRequest, request: Request, state: StateDep,
                                 principal: InferenceAuth) -> Response:
    t0 = time.monotonic()
    served = resolve_served(state, body.model)
    deadline = request_deadline(request, t0, state.max_request_timeout_s)
    engine_id = f"chatcmpl-{uuid.uuid4().hex}"
    # As on completions: the client's x-request-id names the response, never the engine's requests.
    rid = request.headers.get("x-request-id") or engine_id
    # The cheap refusals, load shedding and the request rate first: only an admitted request is rendered,
    # tokenized and has its schema compiled.
    sequences = check_chat_bounds(body, served.tokenizer, served.max_model_len)
    adm = admit_early(request, state, principal, served, sequences, body.service_tier == "priority")
    creq, plan = await plan_admitted(adm, partial(chat_to_engine_requests, body, served.chat_template,
                                                  served.tokenizer, served.max_model_len, engine_id,
                                                  served.grammars, principal.cache_tenant),
                                        lambda out: out[1])
    head = Head(rid, int(time.time()), served.model_id)
    builder = ResponseBuilder("chat", creq, served.tokenizer, plan, head, t0)
    return await respond(request, state.client, plan, builder, rid, adm, deadline)
