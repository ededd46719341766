"""/health tells the truth: 503 when the engine loop is wedged on pending work or has died, 200 when idle."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from ember.config import CacheConfig, Config, SchedulerConfig, ServerConfig
from tests.conftest import MODEL_ID
from tests.fake_clock import FakeClock
from tests.harness import LiveServer, wait_until

STALL_S = 1.0


@dataclass
class Served:
    server: LiveServer
    clock: FakeClock
    """The server's monotonic clock: time passes for the watchdog only when a test advances it."""

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def engine(self):  # noqa: ANN201 - the app's Engine
        return self.server.engine


@pytest.fixture
def tiny_server(tiny) -> Iterator[Served]:  # noqa: ANN001
    cfg = Config(cache=CacheConfig(kv_cache_mb=16), scheduler=SchedulerConfig(max_num_seqs=8),
                 server=ServerConfig(stall_timeout_s=STALL_S))
    clock = FakeClock()
    with LiveServer(cfg, tiny, clock=clock) as s:
        yield Served(s, clock)


def health(server: Served) -> httpx.Response:
    return httpx.get(server.url + "/health", timeout=10)


def wait_for(server: Served, status: int, timeout: float = 15.0) -> httpx.Response:
    return wait_until(lambda: (r := health(server)).status_code == status and r, timeout, f"/health {status}")


def test_a_wedged_loop_turns_health_503_and_recovers(tiny_server: Served) -> None:
    # Idle for longer than the stall timeout is not a stall: nothing is pending.
    tiny_server.clock.advance(STALL_S + 0.5)
    assert health(tiny_server).status_code == 200

    runner = tiny_server.engine.runner
    real_run = runner.run
    release = threading.Event()
    entered = threading.Event()

    def wedged(batch):  # noqa: ANN001, ANN202
        entered.set()
        release.wait(timeout=60)  # a kernel that does not return
        return real_run(batch)

    runner.run = wedged
    result: list[httpx.Response] = []
    t = threading.Thread(target=lambda: result.append(httpx.post(
        tiny_server.url + "/v1/completions", json={"model": MODEL_ID, "prompt": "Hello there", "max_tokens": 4},
        timeout=60)))
    try:
        t.start()
        assert entered.wait(timeout=15)
        assert health(tiny_server).status_code == 200  # wedged, but not yet for the stall timeout
        tiny_server.clock.advance(STALL_S + 0.5)
        r = health(tiny_server)
        assert r.status_code == 503, r.text
        assert r.json()["status"] == "stalled" and r.json()["stalled_seconds"] > STALL_S
    finally:
        runner.run = real_run
        release.set()
    t.join(timeout=60)
    assert result and result[0].status_code == 200, result
    assert wait_for(tiny_server, 200).json()["status"] == "ok"


def test_a_dead_loop_turns_health_503_and_fails_requests_at_once(tiny_server: Served) -> None:
    engine = tiny_server.engine

    def broken_stats():
        raise RuntimeError("simulated: the loop's own bookkeeping breaks")

    engine.stats = broken_stats  # called by the loop after every step, outside the step's own guard
    t0 = time.monotonic()
    r = httpx.post(tiny_server.url + "/v1/completions",
                   json={"model": MODEL_ID, "prompt": "Hello there", "max_tokens": 64}, timeout=60)
    assert time.monotonic() - t0 < 30  # answered, not left hanging
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    h = wait_for(tiny_server, 503)
    assert h.status_code == 503 and h.json()["status"] == "dead" and "RuntimeError" in h.json()["error"]
    # New work is refused with a clear 503, not accepted into a queue nobody reads.
    r = httpx.post(tiny_server.url + "/v1/completions",
                   json={"model": MODEL_ID, "prompt": "Hello", "max_tokens": 4}, timeout=10)
    assert r.status_code == 503 and r.headers.get("retry-after") == "1"


def test_a_loop_wedged_admitting_the_only_request_is_seen(tiny_server: Served) -> None:
    """Wedged before the request is registered anywhere (no stream yet, inbox already empty)."""
    engine = tiny_server.engine
    real_add = engine.add
    release = threading.Event()
    entered = threading.Event()

    def wedged_add(req):  # noqa: ANN001, ANN202
        entered.set()
        release.wait(timeout=60)
        real_add(req)

    engine.add = wedged_add
    result: list[httpx.Response] = []
    t = threading.Thread(target=lambda: result.append(httpx.post(
        tiny_server.url + "/v1/completions", json={"model": MODEL_ID, "prompt": "Hi", "max_tokens": 2},
        timeout=60)))
    try:
        t.start()
        assert entered.wait(timeout=15)
        tiny_server.clock.advance(STALL_S + 0.5)
        r = health(tiny_server)
        assert r.status_code == 503 and r.json()["status"] == "stalled", r.text
    finally:
        engine.add = real_add
        release.set()
    t.join(timeout=60)
    assert result and result[0].status_code == 200
    assert wait_for(tiny_server, 200).status_code == 200
