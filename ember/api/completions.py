"""POST /v1/completions: validate -> translate -> submit -> JSON or SSE."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import weakref
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ember.api.admission import Admission, admit
from ember.api.deps import InferenceAuth, ServedModel, StateDep, resolve_served
from ember.api.errors import error_payload
from ember.api.protocol import CompletionRequest
from ember.api.translate import ChoiceState, Plan, choice_logprobs, echo_prefix, to_engine_requests
from ember.engine.client import EngineClient
from ember.engine.request import RequestOutput
from ember.errors import InvalidRequest

router = APIRouter()


def reject_unsupported(body: CompletionRequest) -> None:
    if body.images:
        raise InvalidRequest("images are not supported: this server runs a text-only model", param="images")
    effort = body.reasoning_effort
    if effort not in (None, False, "none"):
        raise InvalidRequest("reasoning_effort is not supported by this model", param="reasoning_effort")
    if body.thinking is not None and getattr(body.thinking, "type", "disabled") != "disabled":
        raise InvalidRequest("thinking is not supported by this model", param="thinking")


async def run_choices(client: EngineClient, plan: Plan) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Outputs of every choice, interleaved as they come; leaving early aborts whatever still runs."""
    async for c, out in client.generate_all(plan.requests):
        yield c, out


def usage_of(states: list[ChoiceState], plan: Plan) -> dict:
    prompt = sum(len(p.token_ids) for p in plan.prompts)
    cached = sum(states[i * plan.n].num_cached_tokens for i in range(len(plan.prompts)))
    completion = sum(s.num_output_tokens for s in states)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def perf_metrics(usage: dict, t0: float, states: list[ChoiceState], plan: Plan) -> dict[str, float | int]:
    firsts = [s.first_token_time for s in states if s.first_token_time is not None]
    now = time.monotonic()
    out: dict[str, float | int] = {
        "prompt-tokens": usage["prompt_tokens"],
        "cached-prompt-tokens": usage["prompt_tokens_details"]["cached_tokens"],
        "server-time-to-first-token": round((min(firsts) if firsts else now) - t0, 6),
        "server-processing-time": round(now - t0, 6),
    }
    spec = plan.requests[0].params.speculation if plan.requests else None
    drafted = sum(s.num_draft_tokens for s in states)
    if spec is not None or drafted:
        accepted = sum(s.num_accepted_draft_tokens for s in states)
        if spec is not None:
            out["speculation-prompt-tokens"] = len(spec)
            out["speculation-prompt-matched-tokens"] = accepted
        out["speculation-generated-tokens"] = drafted
        out["speculation-acceptance"] = round(accepted / drafted, 4) if drafted else 0.0
    return out


def choice_json(body: CompletionRequest, served: ServedModel, plan: Plan, st: ChoiceState) -> dict:
    tok = served.tokenizer
    prompt = plan.prompt_of(st.index)
    echo_text, echo_ids = echo_prefix(body, prompt, tok)
    out: dict = {
        "index": st.index,
        "text": echo_text + st.text,
        "logprobs": choice_logprobs(body, tok, st, prompt, len(echo_text), echo_ids),
        "finish_reason": st.finish_reason,
    }
    if body.return_token_ids:
        out["prompt_token_ids"] = prompt.token_ids
        out["token_ids"] = st.token_ids
    if body.raw_output:
        raw: dict = {
            "prompt_fragments": [prompt.text] if prompt.text is not None else list(prompt.token_ids),
            "prompt_token_ids": prompt.token_ids,
            "completion": st.text,
            "completion_token_ids": st.token_ids,
        }
        if body.logprobs is not None and body.logprobs is not False:
            lp = choice_logprobs(body.model_copy(update={"logprobs": True, "echo": False, "echo_last": None}),
                                 tok, st, prompt, 0, [])
            raw["completion_logprobs"] = lp
        grammar = plan.requests[st.index].params.grammar
        if grammar is not None:
            raw["grammar"] = grammar
        out["raw_output"] = raw
    return out


def admit_plan(request: Request, state: StateDep, principal: InferenceAuth, served: ServedModel, plan: Plan,
               priority: bool) -> Admission:
    """Load shedding and rate limits for a translated request; the limits' headers go on every answer."""
    platform = state.platform
    request.state.response_headers = platform.limiter.headers(principal.account_id, served.model_id)
    adm = admit(platform, principal, served.model_id, len(plan.requests), sum(len(p.token_ids) for p in plan.prompts),
                sum(r.params.max_tokens for r in plan.requests), priority, state.client.stats())
    if "x-ratelimit-remaining-requests" in request.state.response_headers:  # count this request too
        request.state.response_headers = platform.limiter.headers(principal.account_id, served.model_id)
    return adm


def finish_admission(adm: Admission, states: list[ChoiceState], plan: Plan, completed: bool) -> None:
    """Refund and meter: a request counts once it completed or produced tokens (an aborted stream too)."""
    u = usage_of(states, plan)
    adm.finish(u["prompt_tokens"], u["prompt_tokens_details"]["cached_tokens"], u["completion_tokens"],
               served=completed or u["completion_tokens"] > 0)


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request, state: StateDep, principal: InferenceAuth):
    t0 = time.monotonic()
    served = resolve_served(state, body.model)
    reject_unsupported(body)
    engine_id = f"cmpl-{uuid.uuid4().hex}"
    # A client's x-request-id names the response, never the engine's requests: two clients sending the
    # same one must not reach (and abort) each other's sequences.
    rid = request.headers.get("x-request-id") or engine_id
    # Tokenizing a long prompt and compiling a new schema are CPU work: off the event loop.
    plan = await asyncio.to_thread(to_engine_requests, body, served.tokenizer, served.max_model_len, engine_id,
                                   served.grammars)
    adm = admit_plan(request, state, principal, served, plan, body.service_tier == "priority")
    created = int(time.time())
    head = {"id": rid, "object": "text_completion", "created": created, "model": served.model_id}
    states = [ChoiceState(i) for i in range(len(plan.requests))]
    if body.stream:
        events = stream_completion(state.client, body, served, plan, head, t0, states, adm)
        # A stream that is dropped before its first event never runs its `finally`: settle it then.
        weakref.finalize(events, finish_admission, adm, states, plan, False)
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={"x-request-id": rid, "cache-control": "no-cache"},
        )
    completed = False
    try:
        collect = asyncio.create_task(_collect(state.client, plan, states))
        watch = asyncio.create_task(_watch_disconnect(request))
        done, _ = await asyncio.wait({collect, watch}, return_when=asyncio.FIRST_COMPLETED)
        if collect not in done:  # the client hung up: abort everything at once
            collect.cancel()
            await asyncio.gather(collect, return_exceptions=True)
            return JSONResponse({"error": {"message": "client disconnected"}}, status_code=499)
        watch.cancel()
        collect.result()
        completed = True
    finally:
        finish_admission(adm, states, plan, completed)
    usage = usage_of(states, plan)
    metrics = perf_metrics(usage, t0, states, plan)
    resp = dict(head, choices=[choice_json(body, served, plan, s) for s in states], usage=usage)
    if body.perf_metrics_in_response:
        resp["perf_metrics"] = metrics
    headers = {"x-request-id": rid} | {f"fireworks-{k}": str(v) for k, v in metrics.items()}
    return JSONResponse(resp, headers=headers)


async def _collect(client: EngineClient, plan: Plan, states: list[ChoiceState]) -> None:
    async for c, out in run_choices(client, plan):
        states[c].add(out)


async def _watch_disconnect(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.25)


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def stream_completion(client: EngineClient, body: CompletionRequest, served: ServedModel, plan: Plan,
                            head: dict, t0: float, states: list[ChoiceState], adm: Admission) -> AsyncIterator[str]:
    """SSE: one chunk per engine output, usage on the final chunk, then [DONE].

    If the client disconnects, Starlette stops iterating this generator; closing it closes run_choices,
    which aborts every choice still running and frees its KV blocks.
    """
    tok = served.tokenizer
    started = [False] * len(states)
    echo_len = [0] * len(states)  # generated text offsets count from after the echoed prompt
    remaining = len(states)
    try:
        async for c, out in run_choices(client, plan):
            st = states[c]
            before_lp, before_off = len(st.logprobs), len(st.offsets)
            st.add(out)
            prompt = plan.prompt_of(c)
            text = out.new_text
            choice: dict = {"index": c, "text": text, "logprobs": None, "finish_reason": st.finish_reason}
            echo_text, echo_ids = ("", [])
            if not started[c]:
                echo_text, echo_ids = echo_prefix(body, prompt, tok)
                echo_len[c] = len(echo_text)
                choice["text"] = echo_text + text
                if body.return_token_ids:
                    choice["prompt_token_ids"] = prompt.token_ids
            if body.logprobs is not None and body.logprobs is not False:
                delta = ChoiceState(c, logprobs=st.logprobs[before_lp:], offsets=st.offsets[before_off:],
                                    prompt_logprobs=st.prompt_logprobs if echo_ids else None)
                choice["logprobs"] = choice_logprobs(body, tok, delta, prompt, echo_len[c], echo_ids)
            if body.return_token_ids:
                choice["token_ids"] = list(out.new_token_ids)
            started[c] = True
            chunk = dict(head, choices=[choice])
            if out.finished:
                remaining -= 1
                if remaining == 0:
                    usage = usage_of(states, plan)
                    chunk["usage"] = usage
                    if body.perf_metrics_in_response:
                        chunk["perf_metrics"] = perf_metrics(usage, t0, states, plan)
            if choice["text"] or out.finished or choice.get("token_ids") or choice["logprobs"]:
                yield sse(chunk)
    except Exception as e:  # a failure after the stream began: one error event, then close
        yield sse(error_payload(e))
    finally:  # also when the client went away mid-stream (the generator is closed)
        finish_admission(adm, states, plan, remaining == 0)
    yield "data: [DONE]\n\n"
