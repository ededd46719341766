"""SIGTERM / SIGINT on a real `ember serve` process: drain in-flight streams, refuse new work, exit 0.

Each test starts the real server (the default SmolLM2) as a subprocess on a port the OS picked, opens
streams, signals it, and checks what every client saw and how the process ended.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.conftest import MODEL_ID


@dataclass
class Served:
    proc: subprocess.Popen
    url: str
    log: list[str] = field(default_factory=list)


def start(*flags: str) -> Served:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "ember", "serve", "--port", "0", "--kv-cache-mb", "256",
                             *flags], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    served = Served(proc, "")
    found = threading.Event()

    def read() -> None:  # keep reading stderr for the whole run, so the pipe never fills
        assert proc.stderr is not None
        for line in proc.stderr:
            served.log.append(line)
            m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
            if m:
                served.url = m.group(1)
                found.set()

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(timeout=180):
        proc.kill()
        raise AssertionError("ember serve did not start:\n" + "".join(served.log))
    return served


@pytest.fixture
def server_factory() -> Iterator:
    started: list[Served] = []

    def make(*flags: str) -> Served:
        s = start(*flags)
        started.append(s)
        return s

    yield make
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(timeout=30)


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
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/health", timeout=5)
        except httpx.TransportError:
            return True
        time.sleep(0.2)
    return False


def wait_for_draining(url: str, within: float = 10.0) -> httpx.Response:
    deadline = time.monotonic() + within
    while True:
        r = httpx.get(url + "/health", timeout=5)
        if r.status_code != 200 or time.monotonic() > deadline:
            return r
        time.sleep(0.05)


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
    assert s.proc.wait(timeout=300) == 0, "".join(s.log)
    for r in results:
        assert r.error is None and r.done
        assert r.finish_reason == "length" and r.error_code is None
        assert r.events[-1]["usage"]["completion_tokens"] == 64
    assert any("draining" in line for line in s.log)


def test_sigint_past_the_drain_timeout_ends_streams_with_a_clear_error(server_factory) -> None:
    s = server_factory("--drain-timeout", "1")
    results, threads = open_streams(s.url, 4, max_tokens=1500)
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGINT)
    for t in threads:
        t.join(timeout=60)
    assert s.proc.wait(timeout=60) == 0, "".join(s.log)
    assert time.monotonic() - t0 < 30  # 1500 tokens each would have taken far longer
    for r in results:
        assert r.error is None and r.done  # the stream closed properly, with [DONE]
        assert r.finish_reason is None and r.error_code == "overloaded", r.events[-2:]


def test_a_second_signal_exits_at_once(server_factory) -> None:
    s = server_factory("--drain-timeout", "300")
    _, threads = open_streams(s.url, 2, max_tokens=1500)
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert s.proc.poll() is None  # draining, with 300 s to go
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(timeout=10) == 128 + signal.SIGTERM
    assert time.monotonic() - t0 < 5
    for t in threads:
        t.join(timeout=30)


def test_a_non_streamed_request_cut_by_the_drain_timeout_is_a_503_with_retry_after(tiny) -> None:
    """In process (uvicorn's exit flag instead of a signal): the drain timer fails what is left."""
    import socket

    import uvicorn

    from ember.app import create_app
    from ember.config import CacheConfig, Config, ServerConfig
    from ember.http.uvicorn_server import DrainingServer

    app = create_app(Config(cache=CacheConfig(kv_cache_mb=4), server=ServerConfig(drain_timeout_s=1.0)), tiny)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = DrainingServer(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10), app, 1.0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    runner = app.state.ember.client.engine.runner
    real_run = runner.run

    def slow_run(batch):  # ~50 ms a step: 400 tokens would take 20 s
        time.sleep(0.05)
        return real_run(batch)

    runner.run = slow_run
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/completions"
    got: list[httpx.Response] = []
    t = threading.Thread(target=lambda: got.append(httpx.post(url, json={
        "model": MODEL_ID, "prompt": "Hi", "max_tokens": 400, "ignore_eos": True}, timeout=60)))
    t.start()
    time.sleep(1.0)
    t0 = time.monotonic()
    server.should_exit = True
    t.join(timeout=30)
    thread.join(timeout=30)
    assert not thread.is_alive() and time.monotonic() - t0 < 15
    assert app.state.ember.draining
    r = got[0]
    assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
    assert r.json()["error"]["code"] == "overloaded"
    sock.close()


def test_an_idle_keep_alive_connection_outlasts_the_clients_pool_expiry(tiny) -> None:
    """ember keeps an idle connection open past httpx's (and Node's) 5 s pool expiry. With uvicorn's own
    5 s the two expire together: a client that picks the connection at 4.99 s sends its request into a
    socket the server is closing, and gets a reset with no status line (the soak's unexplained ReadErrors)."""
    import socket

    from ember.app import create_app
    from ember.config import CacheConfig, Config, ServerConfig
    from ember.http.uvicorn_server import DrainingServer, uvicorn_config

    cfg = Config(cache=CacheConfig(kv_cache_mb=4))
    assert cfg.server.keep_alive_timeout_s >= 15  # past httpx / Node (5 s) and aiohttp (15 s)
    app = create_app(cfg, tiny)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    ucfg = uvicorn_config(app, ServerConfig(), "warning")
    assert ucfg.timeout_keep_alive == cfg.server.keep_alive_timeout_s
    server = DrainingServer(ucfg, app, 1.0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.02)
        request = b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n"  # an open server answers to no other name
        with socket.create_connection(sock.getsockname(), timeout=10) as c:
            for _ in range(2):
                c.sendall(request)
                got = b""
                while b"\r\n\r\n" not in got or not got.rstrip().endswith(b"}"):
                    chunk = c.recv(4096)
                    assert chunk, "the server closed the idle keep-alive connection"
                    got += chunk
                assert got.startswith(b"HTTP/1.1 200"), got[:200]
                time.sleep(6.0)  # idle past uvicorn's default keep-alive (5 s)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
