"""Load shedding: past --max-queued-requests new work gets 503 with retry-after; priority gets more room.
A long prompt is also shed when the long prompts ahead of it would hold it past --max-prefill-backlog."""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
import pytest

from ember.api.admission import admit
from ember.api.auth import Principal
from ember.config import PlatformConfig, SchedulerConfig
from ember.engine.engine import EngineStats
from ember.errors import Overloaded
from tests.conftest import MODEL_ID, LiveServer, server_config


class _Limiter:
    def reserve(self, *a: object) -> object:
        from ember.api.limits import Reservation

        return Reservation(None, "local", MODEL_ID)


class _Platform:
    def __init__(self, bound: int, inflight: int) -> None:
        self.config = PlatformConfig(max_queued_requests=bound)
        self.inflight = inflight
        self.limiter = _Limiter()
        self.max_running = 2


def stats(running: int, backlog: int = 0, rate: float = 0.0) -> EngineStats:
    return EngineStats(num_running=running, num_waiting=0, kv_blocks_used=0, kv_blocks_free=1, prefix_queries=0,
                       prefix_hits=0, num_preemptions=0, long_prompt_tokens=256, long_prefill_backlog=backlog,
                       prefill_tokens_per_s=rate)


def test_bound_and_priority_room() -> None:
    who = Principal("local", "inference-user", "open")
    p = _Platform(bound=4, inflight=2 + 4)  # 2 running, 4 waiting: the queue is full
    with pytest.raises(Overloaded) as e:
        admit(p, who, MODEL_ID, 1, 10, 10, False, stats(2))  # type: ignore[arg-type]
    assert e.value.retry_after is not None and e.value.retry_after >= 1
    admit(p, who, MODEL_ID, 1, 10, 10, True, stats(2))  # type: ignore[arg-type]
    assert p.inflight == 7
    p2 = _Platform(bound=4, inflight=2 + 8)
    with pytest.raises(Overloaded):  # priority has twice the room, not unlimited
        admit(p2, who, MODEL_ID, 1, 10, 10, True, stats(2))  # type: ignore[arg-type]
    empty = _Platform(bound=1, inflight=0)
    admit(empty, who, MODEL_ID, 8, 10, 10, False, stats(0))  # type: ignore[arg-type]  # one big request fits an idle server


def test_a_long_prompt_behind_too_much_long_prefill_is_shed() -> None:
    who = Principal("local", "inference-user", "open")
    p = _Platform(bound=100, inflight=1)  # PlatformConfig's default bound: 60 s of long-prompt prefill
    # 8,000 tokens ahead at 200 tokens/s: a 5,000-token prompt would finish its prefill in 65 s.
    with pytest.raises(Overloaded) as e:
        admit(p, who, MODEL_ID, 1, 5000, 16, False, stats(1, backlog=8000, rate=200.0))  # type: ignore[arg-type]
    assert e.value.retry_after == 40 and "8000 tokens of long prompts" in str(e.value)
    assert p.inflight == 1
    admit(p, who, MODEL_ID, 1, 3000, 16, False, stats(1, backlog=8000, rate=200.0))  # type: ignore[arg-type]  # 55 s
    admit(p, who, MODEL_ID, 1, 5000, 16, True, stats(1, backlog=8000, rate=200.0))  # type: ignore[arg-type]  # priority: 120 s
    admit(p, who, MODEL_ID, 1, 200, 16, False, stats(1, backlog=80000, rate=200.0))  # type: ignore[arg-type]  # short: passes
    admit(p, who, MODEL_ID, 1, 9000, 16, False, stats(1, backlog=0, rate=200.0))  # type: ignore[arg-type]  # none ahead
    admit(p, who, MODEL_ID, 1, 9000, 16, False, stats(1, backlog=9000, rate=0.0))  # type: ignore[arg-type]  # no rate yet
    assert p.inflight == 6


def test_live_server_sheds_a_long_prompt_behind_another(smol_served) -> None:  # noqa: ANN001
    cfg = server_config()
    cfg = dataclasses.replace(cfg, scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64,
                                                             long_prefill_tokens=16),
                              platform=PlatformConfig(max_prefill_backlog_s=0.01))
    long_body = {"model": MODEL_ID, "prompt": [300 + i % 4000 for i in range(1500)], "max_tokens": 2}
    with LiveServer(cfg, smol_served) as s, httpx.Client(base_url=s.url, timeout=300) as c:
        client = s.app.state.ember.client

        async def first_then_second() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
            async with httpx.AsyncClient(base_url=s.url, timeout=300) as ac:
                first = asyncio.ensure_future(ac.post("/v1/completions", json=long_body))
                for _ in range(600):  # until the first is prefilling and a rate has been measured
                    st = client.stats()
                    if st.long_prefill_backlog > 0 and st.prefill_tokens_per_s > 0:
                        break
                    await asyncio.sleep(0.02)
                second = await ac.post("/v1/completions", json=long_body | {"prompt": long_body["prompt"][::-1]})
                short = await ac.post("/v1/completions", json={"model": MODEL_ID, "prompt": "Hi", "max_tokens": 2})
                return await first, second, short

        first, second, short = asyncio.run(first_then_second())
        assert first.status_code == 200 and short.status_code == 200
        assert second.status_code == 503, second.text
        assert int(second.headers["retry-after"]) >= 1
        assert second.json()["error"]["type"] == "overloaded_error"
        assert "long prompts" in second.json()["error"]["message"]
        assert s.app.state.ember.platform.inflight == 0
        # once the first is done nothing is ahead: the same prompt is taken
        assert c.post("/v1/completions", json=long_body).status_code == 200
        gauges = dict(line.rsplit(" ", 1) for line in c.get("/metrics").text.splitlines()
                      if line.startswith(("ember_prefill_tokens_per_second ", "ember_long_prefill_backlog_tokens ")))
        assert float(gauges["ember_prefill_tokens_per_second"]) > 0
        assert float(gauges["ember_long_prefill_backlog_tokens"]) == 0


def test_live_server_sheds_with_503(smol_served) -> None:  # noqa: ANN001
    cfg = server_config()
    cfg = dataclasses.replace(cfg, scheduler=SchedulerConfig(max_num_seqs=2, max_num_batched_tokens=64),
                              platform=PlatformConfig(max_queued_requests=2))
    body = {"model": MODEL_ID, "prompt": "Once upon a time", "max_tokens": 40, "ignore_eos": True}

    async def burst(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            return await asyncio.gather(*[c.post("/v1/completions", json=body) for _ in range(10)])

    with LiveServer(cfg, smol_served) as s:
        rs = asyncio.run(burst(s.url))
        codes = sorted(r.status_code for r in rs)
        assert set(codes) == {200, 503}, codes
        assert codes.count(200) >= 4  # 2 running + 2 waiting were admitted
        for r in rs:
            if r.status_code == 503:
                assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["type"] == "overloaded_error"
        # nothing leaked: once idle, the API's count of admitted work is back to zero
        assert s.app.state.ember.platform.inflight == 0
        assert httpx.post(s.url + "/v1/completions", json=body | {"max_tokens": 2}, timeout=60).status_code == 200
