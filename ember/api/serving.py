"""Submitting a planned request to the engine and answering with JSON or SSE: shared by every generating route.

Route handlers validate and translate; everything after the Plan exists goes through `respond`, so
completions and chat meet the engine, the client's disconnects and the error rules in one place.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ember.api.errors import error_payload
from ember.api.responses import ResponseBuilder, to_json
from ember.api.translate import Plan
from ember.engine.client import EngineClient
from ember.engine.request import RequestOutput

Outputs = AsyncIterator[tuple[int, RequestOutput]]


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def open_outputs(client: EngineClient, plan: Plan) -> Outputs:
    """Submit the plan and wait for its first output before anything is sent.

    An engine refusal (overloaded, a prompt it cannot take) then raises here, while the HTTP status can
    still say so; a stream that already answered 200 could only report it as an error event.
    """
    gen = client.generate_all(plan.requests)
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


async def collect(request: Request, client: EngineClient, plan: Plan, builder: ResponseBuilder) -> bool:
    """Feed every output into the builder; False if the client hung up first (everything is then aborted)."""

    async def run() -> None:
        async for c, out in client.generate_all(plan.requests):
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


async def stream_events(outputs: Outputs, builder: ResponseBuilder) -> AsyncIterator[str]:
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
    finally:
        await outputs.aclose()  # type: ignore[attr-defined]
    yield "data: [DONE]\n\n"


async def respond(request: Request, client: EngineClient, plan: Plan, builder: ResponseBuilder,
                  rid: str) -> Response:
    if builder.req.stream:
        outputs = await open_outputs(client, plan)
        return StreamingResponse(stream_events(outputs, builder), media_type="text/event-stream",
                                 headers={"x-request-id": rid, "cache-control": "no-cache"})
    if not await collect(request, client, plan, builder):
        return JSONResponse({"error": {"message": "client disconnected"}}, status_code=499)
    body, metrics = builder.response()
    headers = {"x-request-id": rid} | {f"fireworks-{k}": str(v) for k, v in metrics.items()}
    return JSONResponse(to_json(body), headers=headers)
