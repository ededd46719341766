"""The one generation pipeline: admit -> plan -> reserve -> generate -> settle, for every endpoint.

An endpoint is an adapter around it: its wire request becomes an InferenceRequest, the events become its
wire JSON or stream chunks. Interactive requests are shed and rate limited up front (429 / 503); a batch
row waits for its account's buckets instead (QuotaWait) and is metered only once its result is stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from ember.engine.client import EngineClient
from ember.pipeline.events import Result
from ember.pipeline.generation import Generation
from ember.pipeline.metering import settle
from ember.pipeline.plan import Plan, plan, tokenize
from ember.pipeline.request import Caller, InferenceRequest, PromptInput
from ember.pipeline.served_model import ServedModel
from ember.pipeline.usage import Usage
from ember.platform.admission import Admission, admit_request
from ember.platform.limits import Reservation
from ember.platform.services import Platform

T = TypeVar("T")
Offload = Callable[[Callable[[], T]], Awaitable[T]]
"""Runs CPU work (tokenizing, compiling a grammar) off the event loop."""


class QuotaWait(Exception):  # noqa: N818 - a wait, not an error: the row is retried
    """A background request's account bucket is short: try again in `seconds`."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"rate limited for {seconds:.1f} s")
        self.seconds = seconds


async def _to_thread(fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(fn)


@dataclass
class Pipeline:
    client: EngineClient
    served: ServedModel
    platform: Platform

    @property
    def model(self) -> str:
        return self.served.model_id

    # -- interactive -------------------------------------------------------------------------------
    def admit(self, caller: Caller, sequences: int, priority: bool) -> Admission:
        """Load shedding and the request rate, before any work on the request (503 / 429)."""
        return admit_request(self.platform, caller, self.model, sequences, priority, self.client.stats())

    async def start(self, admission: Admission, build: Callable[[], InferenceRequest]) -> Generation:
        """Build and plan an admitted request off the event loop, then take its token quotas; whatever
        fails on the way releases the admission unserved."""
        try:
            req, p = await asyncio.to_thread(self._plan, build)
            admission.reserve_tokens(p.prompt_tokens, p.max_new_tokens)
        except BaseException:
            admission.release(0, 0, 0)
            raise

        def release(u: Usage) -> None:
            admission.release(u.prompt_tokens, u.cached_tokens, u.completion_tokens)

        return Generation(self.client, req, p, self.model, release, self.platform.meter)

    def draw_request(self, caller: Caller) -> None:
        """A request that generates nothing (/tokenize) still takes from the request-rate quota."""
        self.platform.limiter.reserve_request(caller.account_id, self.model)

    async def tokenize(self, prompt: PromptInput, check: Callable[[], None] | None = None) -> list[int]:
        """The prompt's token ids exactly as a generating request would have them; `check`: the adapter's
        validation, run off the event loop first."""

        def run() -> list[int]:
            if check is not None:
                check()
            return tokenize(prompt, self.served).token_ids

        return await asyncio.to_thread(run)

    # -- background (batch rows) -------------------------------------------------------------------
    async def start_background(self, build: Callable[[], InferenceRequest],
                               offload: Offload = _to_thread) -> Generation:
        """A batch row: planned with `offload`, then its tokens taken from its account's buckets, where a
        short bucket is a QuotaWait rather than a 429. Its usage is settled by the caller (`settle`),
        once its result is stored."""
        req, p = await offload(lambda: self._plan(build))
        got = await offload(lambda: self.platform.limiter.try_reserve(
            req.caller.account_id, self.model, p.prompt_tokens, p.max_new_tokens))
        if not isinstance(got, Reservation):
            raise QuotaWait(got)
        reservation = got

        def release(u: Usage) -> None:
            reservation.settle(u.prompt_tokens, u.cached_tokens, u.completion_tokens)

        return Generation(self.client, req, p, self.model, release, self.platform.meter)

    def settle(self, result: Result) -> None:
        settle(self.platform.meter, result)

    def _plan(self, build: Callable[[], InferenceRequest]) -> tuple[InferenceRequest, Plan]:
        req = build()
        return req, plan(req, self.served)
