"""Load shedding: past --max-queued-requests new work gets 503 with retry-after; priority gets more room."""

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


def stats(running: int) -> EngineStats:
    return EngineStats(num_running=running, num_waiting=0, kv_blocks_used=0, kv_blocks_free=1, prefix_queries=0,
                       prefix_hits=0, num_preemptions=0)


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
