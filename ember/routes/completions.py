"""POST /v1/completions: validate -> translate -> respond (JSON or SSE, shared with chat in api/serving.py)."""

from __future__ import annotations

import time
import uuid
from functools import partial

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ember.http.deps import InferenceAuth, StateDep, resolve_served
from ember.http.respond import admit_early, plan_admitted, request_deadline, respond
from ember.protocol.responses import CompletionChunk, CompletionResponse, Head, ResponseBuilder, sse_content
from ember.protocol.schemas import CompletionRequest
from ember.protocol.translate import (
    check_completion_bounds,
    reject_unsupported_completion,
    to_engine_requests,
)

router = APIRouter()


@router.post("/v1/completions", response_model=CompletionResponse, responses=sse_content(CompletionChunk))
async def create_completion(body: CompletionRequest, request: Request, state: StateDep,
                            principal: InferenceAuth) -> Response:
    t0 = time.monotonic()
    served = resolve_served(state, body.model)
    reject_unsupported_completion(body)
    deadline = request_deadline(request, t0, state.max_request_timeout_s)
    engine_id = f"cmpl-{uuid.uuid4().hex}"
    # A client's x-request-id names the response, never the engine's requests: two clients sending the
    # same one must not reach (and abort) each other's sequences.
    rid = request.headers.get("x-request-id") or engine_id
    # The cheap refusals first (a text that cannot fit, too many choices), then load shedding and the
    # request rate: only an admitted request is tokenized and has its schema compiled.
    sequences = check_completion_bounds(body, served.tokenizer, served.max_model_len)
    adm = admit_early(request, state, principal, served, sequences, body.service_tier == "priority")
    plan = await plan_admitted(adm, partial(to_engine_requests, body, served.tokenizer, served.max_model_len,
                                            engine_id, served.grammars, principal.cache_tenant), lambda p: p)
    head = Head(rid, int(time.time()), served.model_id)
    builder = ResponseBuilder("completion", body, served.tokenizer, plan, head, t0)
    return await respond(request, state.client, plan, builder, rid, adm, deadline)
