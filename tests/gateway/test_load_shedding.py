"""Load shedding: past --max-queued-requests new work gets 503 with retry-after; priority gets more room.
A long prompt is also shed when the long prompts ahead of it would hold it past --max-prefill-backlog."""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
import pytest

from ember.config import PlatformConfig, SchedulerConfig
from ember.engine.backlog import refuse_long_prompt
from ember.engine.engine import EngineStats
from ember.errors import Overloaded
from ember.platform.admission import admit_request
from ember.platform.auth import Principal
from tests.conftest import MODEL_ID, LiveServer, server_config


class _Limiter:
    def reserve_request(self, *a: object) -> object:
        from ember.platform.limits import Reservation

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
        admit_request(p, who, MODEL_ID, 1, False, stats(2))  # type: ignore[arg-type]
    assert e.value.retry_after is not None and e.value.retry_after >= 1
    admit_request(p, who, MODEL_ID, 1, True, stats(2))  # type: ignore[arg-type]
    assert p.inflight == 7
    p2 = _Platform(bound=4, inflight=2 + 8)
    with pytest.raises(Overloaded):  # priority has twice the room, not unlimited
        admit_request(p2, who, MODEL_ID, 1, True, stats(2))  # type: ignore[arg-type]
    empty = _Platform(bound=1, inflight=0)
    admit_request(empty, who, MODEL_ID, 8, False, stats(0))  # type: ignore[arg-type]  # one big request fits an idle server


def test_a_long_prompt_behind_too_much_long_prefill_is_refused() -> None:
    # 8,000 tokens of long prompts ahead at 200 tokens/s, 60 s bound: a 5,000-token prompt would take 65 s.
    err = refuse_long_prompt([5000], 512, 8000, 200.0, 60.0)
    assert isinstance(err, Overloaded) and err.retry_after == 40 and "8000 tokens of long prompts" in str(err)
    assert refuse_long_prompt([3000], 512, 8000, 200.0, 60.0) is None  # 55 s
    assert refuse_long_prompt([500], 512, 80000, 200.0, 60.0) is None  # not long: it passes the long ones
    assert refuse_long_prompt([500] * 8, 512, 80000, 200.0, 60.0) is None  # nor do short prompts in a list
    assert refuse_long_prompt([500, 2600], 512, 8000, 200.0, 60.0) is None  # only the long one waits: 53 s
    assert refuse_long_prompt([2000, 3000], 512, 8000, 200.0, 60.0) is not None  # both wait: 65 s
    assert refuse_long_prompt([9000], 512, 0, 200.0, 60.0) is None  # nothing ahead: always taken
    assert refuse_long_prompt([9000], 512, 9000, 0.0, 60.0) is None  # no rate measured yet
    assert refuse_long_prompt([9000], 512, 90000, 1.0, 60.0).retry_after == 60  # type: ignore[union-attr]


def test_live_server_refuses_a_long_prompt_behind_another(smol_served) -> None:  # noqa: ANN001
    cfg = server_config()
    cfg = dataclasses.replace(cfg, scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64,
                                                             long_prefill_tokens=16, max_prefill_backlog_s=0.01))
    long_body = {"model": MODEL_ID, "prompt": [300 + i % 4000 for i in range(1500)], "max_tokens": 2}
    other = long_body | {"prompt": long_body["prompt"][::-1]}
    with LiveServer(cfg, smol_served) as s, httpx.Client(base_url=s.url, timeout=300) as c:
        warm = {"model": MODEL_ID, "prompt": [300 + i for i in range(100)], "max_tokens": 1}
        assert c.post("/v1/completions", json=warm).status_code == 200  # a step of 64 tokens: a rate
        assert s.app.state.ember.client.stats().prefill_tokens_per_s > 0

        async def together() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=s.url, timeout=300) as ac:
                short = {"model": MODEL_ID, "prompt": "Hi", "max_tokens": 2}
                # Sent at once: the check runs as the engine adds each, so the second sees the first.
                return await asyncio.gather(ac.post("/v1/completions", json=long_body),
                                            ac.post("/v1/completions", json=other),
                                            ac.post("/v1/completions", json=short))

        first, second, short = asyncio.run(together())
        assert short.status_code == 200
        assert sorted([first.status_code, second.status_code]) == [200, 503], (first.text, second.text)
        refused = first if first.status_code == 503 else second
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["type"] == "overloaded_error"
        assert "long prompts" in refused.json()["error"]["message"]
        assert s.app.state.ember.platform.inflight == 0
        # with nothing ahead the same prompt is taken
        assert c.post("/v1/completions", json=other).status_code == 200
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
