"""EngineClient delivers a background (batch-row) request once, whole, when it finishes."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from ember.engine.client import EngineClient
from ember.engine.request import RequestOutput
from tests.engine.helpers import greedy, make_engine, req


def test_background_output_arrives_once_and_equals_the_streamed_one(tiny) -> None:
    client = EngineClient(make_engine(tiny))
    client.start()
    ids = list(range(300, 340))
    params = greedy(24, logprobs=2)

    async def collect(r) -> list[RequestOutput]:  # noqa: ANN001
        return [o async for _, o in client.generate_all([r])]

    async def main() -> tuple[list[RequestOutput], list[RequestOutput]]:
        streamed = await collect(req("live", ids, params))
        whole = await collect(replace(req("row", ids, params), background=True))
        return streamed, whole

    try:
        streamed, whole = asyncio.run(main())
    finally:
        client.stop()
    assert len(streamed) > 1 and len(whole) == 1
    (w,) = whole
    assert w.finished and w.finish_reason == streamed[-1].finish_reason
    assert list(w.new_token_ids) == [t for o in streamed for t in o.new_token_ids]
    assert w.new_text == "".join(o.new_text for o in streamed)
    assert list(w.new_text_offsets) == [x for o in streamed for x in o.new_text_offsets]
    assert [lp.token_id for lp in w.new_logprobs] == [lp.token_id for o in streamed for lp in o.new_logprobs]
    assert w.num_output_tokens == 24 and w.first_token_time is not None
