"""Submitting a planned request to the engine and answering with JSON or SSE: shared by every generating route.

Route handlers validate and translate; everything after the Plan exists goes through `respond`, so
completions and chat meet the engine, the client's disconnects and the error rules in one place.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ember.engine.client import EngineClient
from ember.engine.request import RequestOutput
from ember.errors import InvalidRequest
from ember.http.deps import AppState, ServedModel
from ember.http.errors import error_payload
from ember.platform.admission import Admission, admit_request
from ember.platform.auth import Principal
from ember.protocol.responses import ResponseBuilder, to_json
from ember.protocol.translate import Plan

Outputs = AsyncIterator[tuple[int, RequestOutput]]
MAX_TIMEOUT_S = 24 * 3600.0
T = TypeVar("T")


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


def admit_early(request: Request, state: AppState, principal: Principal, served: ServedModel, sequences: int,
                priority: bool) -> Admission:
    """Load shedding and the request rate, before any work on the request (tokenizing, a grammar); the
    limits' headers go on every answer."""
    platform = state.platform
    request.state.response_headers = platform.limiter.headers(principal.account_id, served.model_id)
    adm = admit_request(platform, principal, served.model_id, sequences, priority, state.client.stats())
    if "x-ratelimit-remaining-requests" in request.state.response_headers:  # count this request too
        request.state.response_headers = platform.limiter.headers(principal.account_id, served.model_id)
    return adm


async def plan_admitted(adm: Admission, translate: Callable[[], T], plan_of: Callable[[T], Plan]) -> T:
    """Run `translate` (tokenizing, compiling a schema: CPU work, off the event loop) for an admitted
    request, then take its token quotas; whatever fails on the way ends the admission unserved."""
    try:
        out = await asyncio.to_thread(translate)
        plan = plan_of(out)
        adm.reserve_tokens(plan.prompt_tokens, plan.max_new_tokens)
    except BaseException:
        adm.finish(0, 0, 0, served=False)
        raise
    return out


def settle(adm: Admission, builder: ResponseBuilder) -> None:
    """Refund and meter: a request counts once it completed or produced tokens (an aborted stream too)."""
    prompt, cached, completion = builder.token_counts()
    adm.finish(prompt, cached, completion, served=builder.finished or completion > 0)


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def open_outputs(client: EngineClient, plan: Plan, deadline: float | None) -> Outputs:
    """Submit the plan and wait for its first output before anything is sent.

    An engine refusal (overloaded, a prompt it cannot take) then raises here, while the HTTP status can
    still say so; a stream that already answered 200 could only report it as an error event.
    """
    gen = client.generate_all(plan.requests, deadline)
    try:
        first = await anext(gen)
    except BaseException:
        await gen.aclose()  # aborts whatever was admitted
        raise

    async def rest() -> Outputs:
        try:
            yield first
            async for item in gen:
                yield item
        finally:
            await gen.aclose()

    return rest()


async def collect(request: Request, client: EngineClient, plan: Plan, builder: ResponseBuilder,
                  deadline: float | None) -> bool:
    """Feed every output into the builder; False if the client hung up first (everything is then aborted)."""

    async def run() -> None:
        async for c, out in client.generate_all(plan.requests, deadline):
            builder.add(c, out)

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


async def stream_events(outputs: Outputs, builder: ResponseBuilder, adm: Admission) -> AsyncIterator[str]:
    """SSE: the builder's chunks as outputs arrive, usage on the final chunk, then [DONE].

    If the client disconnects, Starlette stops iterating this generator; closing `outputs` aborts every
    choice still running and frees its KV blocks.
    """
    try:
        for chunk in builder.opening_chunks():
            yield sse(to_json(chunk))
        async for c, out in outputs:
            chunk = builder.chunk(builder.advance(c, out))
            if chunk is not None:
                yield sse(to_json(chunk))
    except Exception as e:  # a failure after the stream began: one error event, then close
        yield sse(error_payload(e))
    finally:  # also when the client went away mid-stream (the generator is closed)
        await outputs.aclose()  # type: ignore[attr-defined]
        settle(adm, builder)
    yield "data: [DONE]\n\n"


async def respond(request: Request, client: EngineClient, plan: Plan, builder: ResponseBuilder, rid: str,
                  adm: Admission, deadline: float | None) -> Response:
    """Run an admitted request and answer; its admission is settled however the request ends."""
    try:
        if builder.req.stream:
            outputs = await open_outputs(client, plan, deadline)
            events = stream_events(outputs, builder, adm)
            # A stream dropped before its first event never runs its `finally`: settle it then.
            weakref.finalize(events, settle, adm, builder)
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"x-request-id": rid, "cache-control": "no-cache"})
        try:
            if not await collect(request, client, plan, builder, deadline):
                return JSONResponse({"error": {"message": "client disconnected"}}, status_code=499)
        finally:
            settle(adm, builder)
    except BaseException:
        settle(adm, builder)
        raise
    body, metrics = builder.response()
    headers = {"x-request-id": rid} | {f"fireworks-{k}": str(v) for k, v in metrics.items()}
    return JSONResponse(to_json(body), headers=headers)
