"""EngineClient: the n choices of a request enter one engine step together, all or none."""

from __future__ import annotations

import asyncio

import pytest

from ember.engine.client import EngineClient
from ember.engine.request import RequestOutput
from ember.errors import EmberError
from tests.engine.helpers import greedy, make_engine, req


def test_group_enters_one_step_and_refusal_fails_all(tiny) -> None:
    engine = make_engine(tiny, max_num_batched_tokens=512)
    first_step: dict[str, int] = {}
    steps = 0

    def on_step(_e, _dt: float, outs: list[RequestOutput]) -> None:
        nonlocal steps
        steps += 1
        for o in outs:
            first_step.setdefault(o.request_id, steps)

    client = EngineClient(engine, on_step=on_step)
    client.start()

    async def main() -> None:
        # Keep the engine busy so that a step is always under way while the group is submitted.
        busy = asyncio.create_task(drain(client.generate(req("busy", [1, 2, 3], greedy(200)))))
        await asyncio.sleep(0.05)
        for round_ in range(5):
            group = [req(f"g{round_}-{i}", [5 + i] * (10 + i), greedy(3)) for i in range(4)]
            seen = {i async for i, _ in client.generate_all(group)}
            assert seen == set(range(4))
            assert len({first_step[r.request_id] for r in group}) == 1, first_step
        too_long = req("bad", [7] * 10, greedy(10**6))
        with pytest.raises(EmberError):
            async for _ in client.generate_all([req("ok", [7] * 10, greedy(50)), too_long]):
                pass
        assert "ok" not in engine.seqs
        await busy

    async def drain(it) -> None:
        async for _ in it:
            pass

    try:
        asyncio.run(main())
    finally:
        client.stop()
    assert engine.pool.num_free == engine.pool.num_blocks
