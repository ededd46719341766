"""Answering a generating request over HTTP: admission's headers, then its events as JSON or as SSE.

Everything else (admission, planning, the engine, metering) is the pipeline's; an endpoint's route only
names its adapter (a protocol Endpoint) and calls `generate`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import weakref
from collections.abc import AsyncIterator
from typing import TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ember.errors import InvalidRequest
from ember.http.deps import AppState, caller_of, resolve_served
from ember.http.errors import error_payload
from ember.pipeline.generation import Generation
from ember.pipeline.request import UsageKind
from ember.platform.admission import Admission
from ember.platform.auth import Principal
from ember.protocol.endpoint import Endpoint
from ember.protocol.responses import Head, ResponseBuilder, to_json
from ember.protocol.schemas import GenerationRequest

MAX_TIMEOUT_S = 24 * 3600.0
W = TypeVar("W", bound=GenerationRequest)


def request_deadline(request: Request, t0: float, server_cap: float | None) -> float | None:
    """The monotonic time by which this request must have finished, or None.

    A client bounds a request's total time (queueing, prefill, decoding) with the header
    `x-request-timeout: <seconds>`; the server's --max-request-timeout caps it. Past it the engine drops
    the request: 408 `deadline_exceeded`, or an error event closing a stream.
    """
    raw = request.headers.get("x-request-timeout")
    limit = server_cap
    if raw is not None:
        try:
            asked = float(raw)
        except ValueError:
            asked = float("nan")
        if not 0 < asked <= MAX_TIMEOUT_S:  # also refuses nan and inf
            raise InvalidRequest(f"x-request-timeout must be a number of seconds in (0, {MAX_TIMEOUT_S:.0f}]",
                                 param="x-request-timeout", code="invalid_header")
        limit = asked if limit is None else min(limit, asked)
    return None if limit is None else t0 + limit


def admit(request: Request, state: AppState, principal: Principal, sequences: int, priority: bool) -> Admission:
    """The pipeline's admission; the limits' headers go on every answer, a refusal's included."""
    limiter, model = state.platform.limiter, state.pipeline.model
    request.state.response_headers = limiter.headers(principal.account_id, model)
    adm = state.pipeline.admit(caller_of(principal), sequences, priority)
    if "x-ratelimit-remaining-requests" in request.state.response_headers:  # count this request too
        request.state.response_headers = limiter.headers(principal.account_id, model)
    return adm


async def generate(request: Request, state: AppState, principal: Principal, body: W,
                   endpoint: Endpoint[W]) -> Response:
    """One request of an endpoint: the cheap refusals, admission, the adapter's InferenceRequest (built
    off the event loop), then the answer from the generation's events."""
    t0 = time.monotonic()
    served = resolve_served(state, body.model)
    deadline = request_deadline(request, t0, state.max_request_timeout_s)
    engine_id = f"{endpoint.id_prefix}-{uuid.uuid4().hex}"
    # A client's x-request-id names the response, never the engine's requests: two clients sending the
    # same one must not reach (and abort) each other's sequences.
    rid = request.headers.get("x-request-id") or engine_id
    # The cheap refusals first (a text that cannot fit, too many choices), then load shedding and the
    # request rate: only an admitted request is rendered, tokenized and has its schema compiled.
    sequences = endpoint.sequences(body, served)
    adm = admit(request, state, principal, sequences, body.service_tier == "priority")
    caller = caller_of(principal)
    gen = await state.pipeline.start(adm, lambda: endpoint.request(body, served, caller, engine_id, deadline,
                                                                   UsageKind.INTERACTIVE))
    builder = endpoint.responses(body, served, gen, Head(rid, int(time.time()), served.model_id), t0)
    return await respond(request, gen, builder, rid)


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def collect(request: Request, gen: Generation, builder: ResponseBuilder) -> bool:
    """Feed every event into the builder; False if the client hung up first (everything is then aborted)."""

    async def run() -> None:
        async for ev in gen.events():
            builder.add(ev.index, ev.output)

    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(0.25)

    task, watcher = asyncio.create_task(run()), asyncio.create_task(watch())
    done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    if task not in done:  # the client hung up: abort everything at once
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False
    watcher.cancel()
    task.result()  # an engine error raises here and becomes an HTTP error status
    return True


async def stream_events(gen: Generation, builder: ResponseBuilder) -> AsyncIterator[str]:
    """SSE: the builder's chunks as events arrive, usage on the final chunk, then [DONE].

    If the client disconnects, Starlette stops iterating this generator; closing the events aborts every
    choice still running and frees its KV blocks.
    """
    events = gen.events()
    try:
        for chunk in builder.opening_chunks():
            yield sse(to_json(chunk))
        async for ev in events:
            chunk = builder.chunk(builder.advance(ev.index, ev.output))
            if chunk is not None:
                yield sse(to_json(chunk))
        for chunk in builder.closing_chunks():
            yield sse(to_json(chunk))
    except Exception as e:  # a failure after the stream began: one error event, then close
        yield sse(error_payload(e))
    finally:  # also when the client went away mid-stream (the generator is closed)
        await events.aclose()  # type: ignore[attr-defined]
        await gen.aclose()
        gen.close()
    yield "data: [DONE]\n\n"


async def respond(request: Request, gen: Generation, builder: ResponseBuilder, rid: str) -> Response:
    """Run a started request and answer; it is settled however it ends."""
    try:
        if builder.req.stream:
            # Wait for the first output before anything is sent: a refusal is then still an HTTP status.
            await gen.open()
            events = stream_events(gen, builder)
            # A stream dropped before its first event never runs its `finally`: settle it then.
            weakref.finalize(events, gen.close)
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"x-request-id": rid, "cache-control": "no-cache"})
        try:
            if not await collect(request, gen, builder):
                return JSONResponse({"error": {"message": "client disconnected"}}, status_code=499)
        finally:
            gen.close()
    except BaseException:
        gen.close()
        raise
    body, metrics = builder.response()
    headers = {"x-request-id": rid} | {f"fireworks-{k}": str(v) for k, v in metrics.items()}
    return JSONResponse(to_json(body), headers=headers)
