"""One admitted request on its way through the engine: outputs in, typed events out, one result at the end."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from ember.engine.client import EngineClient
from ember.engine.request import RequestOutput
from ember.pipeline.events import ChoiceOutput, Result
from ember.pipeline.metering import settle
from ember.pipeline.plan import Plan
from ember.pipeline.request import InferenceRequest
from ember.pipeline.usage import Tally, Usage
from ember.store.usage import UsageMeter

Release = Callable[[Usage], None]
"""Gives back what admission took (the queue slot, the reservation beyond what was used)."""


class Generation:
    """Invariants: `finish` releases the admission once however the request ends; `close` also meters it,
    once; the engine's requests are aborted when the consumer stops early."""

    def __init__(self, client: EngineClient, req: InferenceRequest, plan: Plan, model: str, release: Release,
                 meter: UsageMeter) -> None:
        self.client = client
        self.req = req
        self.plan = plan
        self.model = model
        self.tally = Tally(plan)
        self._release = release
        self._meter = meter
        self._outputs: AsyncIterator[tuple[int, RequestOutput]] | None = None
        self._first: tuple[int, RequestOutput] | None = None
        self._result: Result | None = None
        self._settled = False

    async def open(self) -> None:
        """Submit and wait for the first output, so that an engine refusal (overloaded, a prompt it cannot
        take) raises here, while an HTTP status can still say so."""
        outputs = self.client.generate_all(self.plan.requests, self.req.deadline)
        try:
            self._first = await anext(outputs)
        except BaseException:
            await outputs.aclose()  # aborts whatever was admitted
            raise
        self._outputs = outputs

    async def events(self) -> AsyncIterator[ChoiceOutput]:
        """Each output as it arrives; leaving early (or being cancelled) aborts whatever still runs."""
        if self._outputs is None:
            await self.open()
        outputs, first = self._outputs, self._first
        assert outputs is not None and first is not None
        self._first = None
        try:
            yield self._event(*first)
            async for c, out in outputs:
                yield self._event(c, out)
        finally:
            await outputs.aclose()  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        """Abort whatever runs of a request opened and never (or no longer) read."""
        if self._outputs is not None:
            await self._outputs.aclose()  # type: ignore[attr-defined]

    def _event(self, c: int, out: RequestOutput) -> ChoiceOutput:
        self.tally.add(c, out)
        return ChoiceOutput(c, out)

    def finish(self) -> Result:
        """The result so far; the first call releases the admission."""
        if self._result is None:
            self._result = Result(self.req.caller, self.model, self.tally.usage(), self.req.kind,
                                  self.tally.finished)
            self._release(self._result.usage)
        return self._result

    def close(self) -> Result:
        """Finish and meter: the end of a request whose usage counts as soon as it ends."""
        result = self.finish()
        if not self._settled:
            self._settled = True
            settle(self._meter, result)
        return result
