"""SIGTERM / SIGINT on a real `ember serve` process: drain in-flight streams, refuse new work, exit 0.

Each test starts the real server (the default SmolLM2) as a subprocess (tests.harness), opens
streams, signals it, and checks what every client saw and how the process ended.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest

from tests.conftest import MODEL_ID
from tests.harness import ServeProcess, UvicornThread, wait_until


@pytest.fixture
def server_factory(ember_serve: Callable[..., ServeProcess]) -> Callable[..., ServeProcess]:
    """`ember serve FLAGS` with the default model and a 256 MB KV cache."""
    return lambda *flags: ember_serve("--kv-cache-mb", "256", *flags)


@dataclass
class StreamResult:
    events: list[dict] = field(default_factory=list)
    done: bool = False
    error: BaseException | None = None
    first: threading.Event = field(default_factory=threading.Event)

    @property
    def finish_reason(self) -> str | None:
        for e in self.events:
            for c in e.get("choices", []):
                if c.get("finish_reason"):
                    return c["finish_reason"]
        return None

    @property
    def error_code(self) -> str | None:
        return next((e["error"].get("code") for e in self.events if "error" in e), None)


def open_streams(url: str, n: int, max_tokens: int) -> tuple[list[StreamResult], list[threading.Thread]]:
    results = [StreamResult() for _ in range(n)]

    def run(i: int) -> None:
        res = results[i]
        body = {"model": MODEL_ID, "prompt": f"Story number {i}: once upon a time", "max_tokens": max_tokens,
                "ignore_eos": True, "stream": True, "temperature": 0}
        try:
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        res.done = True
                        break
                    res.events.append(json.loads(line[6:]))
                    res.first.set()
        except BaseException as e:  # noqa: BLE001 - recorded and asserted on by the test
            res.error = e
        finally:
            res.first.set()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for r in results:
        assert r.first.wait(timeout=120)
    return results, threads


def refused(url: str, within: float = 10.0) -> bool:
    def down() -> bool:
        try:
            httpx.get(url + "/health", timeout=5)
        except httpx.TransportError:
            return True
        return False

    return wait_until(down, within, "the listener to close", interval=0.2)


def wait_for_draining(url: str, within: float = 10.0) -> httpx.Response:
    return wait_until(lambda: (r := httpx.get(url + "/health", timeout=5)).status_code != 200 and r, within,
                      "/health to stop answering 200")


def test_sigterm_drains_16_streams_and_exits_0(server_factory) -> None:
    s = server_factory("--drain-timeout", "300")
    results, threads = open_streams(s.url, 16, max_tokens=64)
    assert all(r.error is None and not r.done for r in results)  # all 16 are mid-stream
    s.proc.send_signal(signal.SIGTERM)
    # While the streams run on, the drain is observable over HTTP: a load balancer's probe reads it, and
    # a new request is turned away at once with a retryable 503 (not a refused or dropped connection).
    health = wait_for_draining(s.url)
    assert health.status_code == 503 and health.json()["status"] == "draining", health.text
    r = httpx.post(s.url + "/v1/completions", json={"model": MODEL_ID, "prompt": "late", "max_tokens": 4},
                   timeout=30)
    assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
    assert r.json()["error"]["code"] == "overloaded" and r.headers["connection"] == "close"
    assert not all(r.done for r in results)
    for t in threads:
        t.join(timeout=300)
    assert refused(s.url, within=30)  # nothing left in flight: the listener closes
    assert s.proc.wait(timeout=300) == 0, s.log()
    for r in results:
        assert r.error is None and r.done
        assert r.finish_reason == "length" and r.error_code is None
        assert r.events[-1]["usage"]["completion_tokens"] == 64
    assert "draining" in s.log()


def test_sigint_past_the_drain_timeout_ends_streams_with_a_clear_error(server_factory) -> None:
    s = server_factory("--drain-timeout", "1")
    results, threads = open_streams(s.url, 4, max_tokens=1500)
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGINT)
    for t in threads:
        t.join(timeout=60)
    assert s.proc.wait(timeout=60) == 0, s.log()
    assert time.monotonic() - t0 < 30  # 1500 tokens each would have taken far longer
    for r in results:
        assert r.error is None and r.done  # the stream closed properly, with [DONE]
        assert r.finish_reason is None and r.error_code == "overloaded", r.events[-2:]


def test_a_second_signal_exits_at_once(server_factory) -> None:
    s = server_factory("--drain-timeout", "300")
    _, threads = open_streams(s.url, 2, max_tokens=1500)
    s.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: "draining requests in flight" in s.log(), 30, "the first SIGTERM to start the drain")
    assert s.proc.poll() is None  # draining, with 300 s to go
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(timeout=10) == 128 + signal.SIGTERM
    assert time.monotonic() - t0 < 5
    for t in threads:
        t.join(timeout=30)


def test_a_non_streamed_request_cut_by_the_drain_timeout_is_a_503_with_retry_after(tiny, tmp_path) -> None:
    """In process (uvicorn's exit flag instead of a signal): the drain timer fails what is left."""
    import uvicorn

    from ember.app import create_app
    from ember.config import CacheConfig, Config, ServerConfig, StoreConfig
    from ember.http.uvicorn_server import DrainingServer

    app = create_app(Config(cache=CacheConfig(kv_cache_mb=4), server=ServerConfig(drain_timeout_s=1.0),
                            store=StoreConfig(data_dir=str(tmp_path))), tiny)
    server = DrainingServer(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10), app, 1.0)
    with UvicornThread(app, server=server) as srv:
        engine = app.state.ember.client.engine
        real_run = engine.runner.run

        def slow_run(batch):  # ~50 ms a step: 400 tokens would take 20 s
            time.sleep(0.05)
            return real_run(batch)

        engine.runner.run = slow_run
        got: list[httpx.Response] = []
        t = threading.Thread(target=lambda: got.append(httpx.post(srv.url + "/v1/completions", json={
            "model": MODEL_ID, "prompt": "Hi", "max_tokens": 400, "ignore_eos": True}, timeout=60)))
        t.start()
        wait_until(lambda: engine.has_work, 30, "the request to reach the engine")
        t0 = time.monotonic()
        server.should_exit = True
        t.join(timeout=30)
        srv.thread.join(timeout=30)
        assert not srv.thread.is_alive() and time.monotonic() - t0 < 15
    assert app.state.ember.draining
    r = got[0]
    assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
    assert r.json()["error"]["code"] == "overloaded"


def test_an_idle_keep_alive_connection_outlasts_the_clients_pool_expiry(tiny, tmp_path) -> None:
    """ember keeps an idle connection open past httpx's (and Node's) 5 s pool expiry. With uvicorn's own
    5 s the two expire together: a client that picks the connection at 4.99 s sends its request into a
    socket the server is closing, and gets a reset with no status line (the soak's unexplained ReadErrors)."""
    import socket

    from ember.app import create_app
    from ember.config import CacheConfig, Config, ServerConfig, StoreConfig
    from ember.http.uvicorn_server import DrainingServer, uvicorn_config

    cfg = Config(cache=CacheConfig(kv_cache_mb=4), store=StoreConfig(data_dir=str(tmp_path)))
    assert cfg.server.keep_alive_timeout_s >= 15  # past httpx / Node (5 s) and aiohttp (15 s)
    app = create_app(cfg, tiny)
    ucfg = uvicorn_config(app, ServerConfig(), "warning")
    assert ucfg.timeout_keep_alive == cfg.server.keep_alive_timeout_s
    with UvicornThread(app, server=DrainingServer(ucfg, app, 1.0)) as srv:
        request = b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n"  # an open server answers to no other name
        with socket.create_connection(srv.sock.getsockname(), timeout=10) as c:
            for _ in range(2):
                c.sendall(request)
                got = b""
                while b"\r\n\r\n" not in got or not got.rstrip().endswith(b"}"):
                    chunk = c.recv(4096)
                    assert chunk, "the server closed the idle keep-alive connection"
                    got += chunk
                assert got.startswith(b"HTTP/1.1 200"), got[:200]
                time.sleep(6.0)  # idle past uvicorn's default keep-alive (5 s)
