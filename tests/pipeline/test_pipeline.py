"""The generation pipeline without HTTP: a tiny engine, a counting meter, one settle per request however it
ends (completed, failed, abandoned by its consumer) and, for a batch row, only when its owner settles it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from ember.config import PlatformConfig
from ember.engine.client import EngineClient
from ember.errors import EmberError
from ember.pipeline.pipeline import Pipeline
from ember.pipeline.request import (
    Caller,
    Conversation,
    InferenceRequest,
    Message,
    TextPrompt,
    TokenPrompt,
    UsageKind,
)
from ember.pipeline.served_model import ServedModel
from ember.pipeline.usage import Usage
from ember.platform.limits import RateLimiter
from tests.engine.helpers import make_engine

WHO = Caller("acct", "key-1", "acct")
FOX = TextPrompt("The quick brown fox")


class _NoQuotas:
    def all_accounts(self) -> dict:
        return {}


class _Meter:
    def __init__(self) -> None:
        self.records: list[tuple] = []

    def record(self, *args: object, **kw: object) -> None:
        self.records.append((*args, kw.get("usage_type")))


@dataclass
class _Platform:
    """What the pipeline asks of the platform: the queue bound, the buckets, the meter."""

    config: PlatformConfig = field(default_factory=PlatformConfig)
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(_NoQuotas()))  # type: ignore[arg-type]
    meter: _Meter = field(default_factory=_Meter)
    max_running: int = 32
    inflight: int = 0


@pytest.fixture
def pipe(tiny) -> Iterator[Pipeline]:
    engine = make_engine(tiny, max_num_batched_tokens=512)
    client = EngineClient(engine)
    client.start()
    served = ServedModel("tiny", (), tiny.tokenizer, engine.max_model_len, engine.grammars)
    try:
        yield Pipeline(client, served, _Platform())  # type: ignore[arg-type]
    finally:
        client.stop()
    assert engine.pool.num_free == engine.pool.num_blocks  # nothing left running


def _request(max_tokens: int = 8, n: int = 1, kind: UsageKind = UsageKind.INTERACTIVE,
             prompt: TextPrompt | Conversation = FOX) -> InferenceRequest:
    return InferenceRequest("t", WHO, (prompt,), n=n, max_tokens=max_tokens, kind=kind,
                            background=kind == UsageKind.BATCH)


async def _interactive(pipe: Pipeline, req: InferenceRequest):
    adm = pipe.admit(req.caller, req.sequences, req.priority)
    return await pipe.start(adm, lambda: req)


def test_a_completed_request_is_settled_once_with_its_usage(pipe: Pipeline) -> None:
    async def main() -> None:
        gen = await _interactive(pipe, _request(max_tokens=5, n=2))
        assert pipe.platform.inflight == 2
        indices = [ev.index async for ev in gen.events()]
        assert set(indices) == {0, 1}
        first = gen.close()
        assert gen.close() is first  # a second close settles nothing more
        prompt = len(gen.plan.prompts[0].token_ids)
        assert first.usage == Usage(prompt, first.usage.cached_tokens, 10) and first.finished

    asyncio.run(main())
    assert pipe.platform.meter.records == [("acct", "key-1", "tiny", pipe.platform.meter.records[0][3], 0, 10,
                                            "TEXT_COMPLETION")]
    assert pipe.platform.inflight == 0


def test_a_request_failing_after_it_generated_is_settled_once(pipe: Pipeline) -> None:
    engine = pipe.client.engine
    step = engine.step
    calls = 0

    def failing_third_step():
        nonlocal calls
        calls += 1
        if calls >= 3:
            raise RuntimeError("a broken step")
        return step()

    async def main() -> None:
        gen = await _interactive(pipe, _request(max_tokens=50))
        engine.step = failing_third_step  # type: ignore[method-assign]
        with pytest.raises(RuntimeError):
            async for _ in gen.events():
                pass
        engine.step = step  # type: ignore[method-assign]
        gen.close()
        gen.close()

    asyncio.run(main())
    (rec,) = pipe.platform.meter.records
    assert 0 < rec[5] < 50  # the tokens it produced before failing count, once
    assert pipe.platform.inflight == 0


def test_a_refused_request_releases_its_admission_and_meters_nothing(pipe: Pipeline) -> None:
    async def main() -> None:
        adm = pipe.admit(WHO, 1, False)
        with pytest.raises(EmberError):  # token ids outside the vocabulary: refused while planning
            await pipe.start(adm, lambda: InferenceRequest("t", WHO, (TokenPrompt((10**9,)),)))

    asyncio.run(main())
    assert pipe.platform.meter.records == [] and pipe.platform.inflight == 0


def test_a_consumer_leaving_early_aborts_and_is_settled_once(pipe: Pipeline) -> None:
    async def main() -> None:
        gen = await _interactive(pipe, _request(max_tokens=200))
        events = gen.events()
        await anext(events)  # the first output, then the consumer goes away (a client disconnect)
        await events.aclose()
        result = gen.close()
        assert not result.finished and 0 < result.usage.completion_tokens < 200
        gen.close()
        for _ in range(100):  # the abort reaches the engine thread
            if not pipe.client.engine.has_work:
                break
            await asyncio.sleep(0.02)

    asyncio.run(main())
    assert len(pipe.platform.meter.records) == 1 and pipe.platform.inflight == 0


def test_a_batch_row_is_metered_only_by_its_settle_call(pipe: Pipeline) -> None:
    async def main() -> None:
        req = _request(max_tokens=4, kind=UsageKind.BATCH,
                       prompt=Conversation((Message("user", "Say hi"),)))
        gen = await pipe.start_background(lambda: req)
        assert all(r.background for r in gen.plan.requests)
        assert gen.plan.prompts[0].text is not None  # the rendered conversation
        async for _ in gen.events():
            pass
        result = gen.finish()
        assert pipe.platform.meter.records == []  # not before its result is stored
        pipe.settle(result)

    asyncio.run(main())
    (rec,) = pipe.platform.meter.records
    assert rec[5] == 4 and rec[-1] == "BATCH" and pipe.platform.inflight == 0
