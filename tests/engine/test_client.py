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


def test_a_step_failing_after_an_arrival_fails_only_that_arrival(tiny) -> None:
    """A step that breaks right after a request arrived fails that request alone; the others step on.
    If the next step breaks too, the fault is not the newcomer's, and everything fails."""
    engine = make_engine(tiny, max_num_batched_tokens=512)
    match = engine.kv.match_prefix

    def poisoned(seq) -> None:
        if seq.request.cache_salt in ("boom", "always"):
            raise RuntimeError("simulated bug")
        match(seq)

    engine.kv.match_prefix = poisoned  # type: ignore[method-assign]
    client = EngineClient(engine)
    client.start()

    async def collect(r) -> list[RequestOutput]:
        return [o async for o in client.generate(r)]

    async def main() -> None:
        busy = asyncio.create_task(collect(req("busy", [1, 2, 3], greedy(120))))
        await asyncio.sleep(0.05)
        with pytest.raises(RuntimeError, match="simulated"):
            await collect(req("bad", [4] * 40, greedy(5), salt="boom"))
        outs = await busy
        assert outs[-1].finish_reason is not None and str(outs[-1].finish_reason) == "length"
        assert sum(len(o.new_token_ids) for o in outs) == 120
        # A fault that outlives the newcomer's removal (here: the model itself) fails everything.
        running = asyncio.create_task(collect(req("running", [6] * 8, greedy(400))))
        await asyncio.sleep(0.05)

        def broken(_batch):
            raise RuntimeError("broken")

        engine.runner.run = broken  # type: ignore[method-assign]
        newcomer = asyncio.create_task(collect(req("new", [5] * 20, greedy(5))))
        results = await asyncio.gather(running, newcomer, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results), results

    try:
        asyncio.run(main())
    finally:
        client.stop()
    assert not engine.seqs
    assert engine.pool.num_free == engine.pool.num_blocks


def test_an_unexpected_error_admitting_a_request_fails_it_alone(tiny) -> None:
    """A non-EmberError raised while adding a request once escaped the loop: the engine thread ended and
    every client, that one included, waited forever."""
    engine = make_engine(tiny)
    add = engine.add

    def flaky_add(r) -> None:
        if r.cache_salt == "bug":
            raise KeyError("simulated bug")
        add(r)

    engine.add = flaky_add  # type: ignore[method-assign]
    client = EngineClient(engine)
    client.start()

    async def collect(r) -> list[RequestOutput]:
        return [o async for o in client.generate(r)]

    async def main() -> None:
        busy = asyncio.create_task(collect(req("busy", [1, 2, 3], greedy(60))))
        await asyncio.sleep(0.05)
        with pytest.raises(KeyError):
            await asyncio.wait_for(collect(req("bad", [4] * 8, greedy(5), salt="bug")), 30)
        assert sum(len(o.new_token_ids) for o in await busy) == 60
        after = await asyncio.wait_for(collect(req("after", [5] * 8, greedy(5))), 30)
        assert after[-1].finished

    try:
        asyncio.run(main())
    finally:
        client.stop()
    assert client.alive is False and client.died_of is None
    assert engine.pool.num_free == engine.pool.num_blocks


def test_submissions_after_the_loop_ended_are_refused_not_parked(tiny) -> None:
    client = EngineClient(make_engine(tiny))
    client.start()
    client.stop()

    async def main() -> None:
        with pytest.raises(EmberError, match="not running"):
            async for _ in client.generate(req("late", [1, 2], greedy(2))):
                pass

    asyncio.run(main())
