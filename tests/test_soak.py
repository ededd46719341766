"""The soak harness, short: 64 clients for 60 s against a live server on the tiny model, every check green.

The long runs (SmolLM2, minutes) are in bench/RESULTS.md; this one keeps the harness and the server's
behaviour under mixed abuse (disconnects, slow readers, malformed bodies, deadlines, grammars, n > 1,
prompts at the context window) in the test suite. A second test shows the harness does catch a leak.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from ember.config import CacheConfig, Config, SchedulerConfig, StoreConfig
from ember.loadgen.soak import BAD_BODIES, KINDS, Soak, SoakConfig, format_report
from tests.conftest import MODEL_ID, LiveServer


@pytest.fixture
def tiny_server(tiny, tmp_path):
    # 1 MiB is 256 blocks of 16 tokens on the tiny model (float16 K and V): 64 clients run it full, so sequences are
    # preempted and recomputed while others hang up and prefixes are shared.
    cfg = Config(cache=CacheConfig(kv_cache_mb=1), scheduler=SchedulerConfig(max_num_seqs=16),
                 store=StoreConfig(data_dir=str(tmp_path)))  # never the machine's default store
    with LiveServer(cfg, tiny) as s:
        yield s


SOAK_S = float(os.environ.get("EMBER_SOAK_SECONDS", "60"))
SOAK_CLIENTS = int(os.environ.get("EMBER_SOAK_CLIENTS", "64"))
"""The issue's CI soak: 60 s x 64 clients (EMBER_SOAK_SECONDS / EMBER_SOAK_CLIENTS shorten it locally)."""


def test_a_short_soak_loses_and_leaks_nothing(tiny_server) -> None:
    cfg = SoakConfig(base_url=tiny_server.url, model=MODEL_ID, clients=SOAK_CLIENTS, duration_s=SOAK_S,
                     max_tokens=24,
                     request_deadline_s=60, idle_timeout_s=30, sample_every_s=1.0)
    report = asyncio.run(Soak(cfg).run())
    text = format_report(report) + f"\npreemptions: {tiny_server.engine.scheduler.num_preemptions}"
    assert report["passed"], text
    assert report["config"]["context_tokens"] == 512  # asked of the server: "long" prompts fill it
    assert report["requests"] >= 60, text
    out = report["outcomes"]
    assert out.get("ok", 0) > 0 and out.get("disconnected", 0) > 0 and out.get("rejected", 0) > 0, text
    assert set(report["by_kind"]) >= set(KINDS) - {"long"}, report["by_kind"]
    assert set(report["by_kind"]["bad"]) == {"rejected"}, report["by_kind"]["bad"]
    assert report["idle"]["kv_used"] == 0 and report["idle"]["running"] == 0
    assert len(BAD_BODIES) >= 15
    mem = report["server_memory"]  # the server is this process (uvicorn in a thread): found by its port
    assert mem["pid"] == os.getpid() and mem["peak_rss_mb"] >= mem["rss_mb"] > 50, mem
    assert "peak RSS" in text


def test_the_server_process_is_found_by_its_listening_port() -> None:
    import socket

    from ember.loadgen.soak import listening_pid, server_memory

    with socket.socket() as listener, socket.socket() as bound_only:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        bound_only.bind(("127.0.0.1", 0))
        assert listening_pid(listener.getsockname()[1]) == os.getpid()
        assert listening_pid(bound_only.getsockname()[1]) is None  # bound, not listening: no server
        mem = server_memory(SoakConfig(base_url=f"http://127.0.0.1:{listener.getsockname()[1]}"))
    assert mem is not None and mem["pid"] == os.getpid() and mem["peak_rss_mb"] > 0
    with open("/proc/self/status") as f:
        hwm_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    assert abs(mem["peak_rss_mb"] - hwm_kib / 1024) < 64


def test_the_harness_catches_a_leaked_block(tiny_server) -> None:
    assert tiny_server.engine.pool.allocate(1) is not None  # a block nobody will ever free
    cfg = SoakConfig(base_url=tiny_server.url, model=MODEL_ID, clients=2, duration_s=2, max_tokens=4,
                     idle_timeout_s=2, sample_every_s=0.5)
    report = asyncio.run(Soak(cfg).run())
    assert not report["passed"]
    assert report["checks"]["kv_blocks_back_to_zero"] is False and report["idle"]["kv_used"] == 1
    assert report["checks"]["no_5xx"] and report["checks"]["no_hangs"], format_report(report)


class Shed:
    """ASGI wrapper: after the first `after` completions, every `every`-th one is a 503, as a server
    shedding load would answer (with or without `retry-after`)."""

    def __init__(self, app, every: int, retry_after: bool, after: int = 10) -> None:
        self.app, self.every, self.retry_after, self.after = app, every, retry_after, after
        self.n = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/completions":
            self.n += 1
            if self.n > self.after and self.n % self.every == 0:
                headers = [(b"content-type", b"application/json")]
                if self.retry_after:
                    headers.append((b"retry-after", b"1"))
                await send({"type": "http.response.start", "status": 503, "headers": headers})
                await send({"type": "http.response.body", "body": b'{"error": {"message": "busy", "type": '
                            b'"overloaded_error", "param": null, "code": "overloaded"}}'})
                return
        await self.app(scope, receive, send)


@pytest.mark.parametrize("retry_after", [True, False])
def test_a_503_with_retry_after_is_shedding_and_without_it_a_failure(tiny, tmp_path, retry_after: bool) -> None:
    from ember.app import create_app
    from tests.harness import UvicornThread

    cfg = Config(cache=CacheConfig(kv_cache_mb=4), scheduler=SchedulerConfig(max_num_seqs=8),
                 store=StoreConfig(data_dir=str(tmp_path)))
    shed = Shed(create_app(cfg, tiny), every=3, retry_after=retry_after)
    with UvicornThread(shed) as srv:  # type: ignore[arg-type]
        report = asyncio.run(Soak(SoakConfig(base_url=srv.url, model=MODEL_ID, clients=4, duration_s=6,
                                             max_tokens=4, idle_timeout_s=10, sample_every_s=0.5)).run())
    if retry_after:
        assert report["outcomes"].get("shed", 0) > 0 and report["passed"], format_report(report)
    else:
        assert report["outcomes"].get("server_error", 0) > 0 and not report["passed"]
        assert not report["checks"]["no_5xx"]
