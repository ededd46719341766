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


def test_sigterm_drains_16_streams_and_exits_0(server_factory) -> None:
    s = server_factory("--drain-timeout", "300")
    results, threads = open_streams(s.url, 16, max_tokens=64)
    assert all(r.error is None and not r.done for r in results)  # all 16 are mid-stream
    s.proc.send_signal(signal.SIGTERM)
    assert refused(s.url)  # the listener closes while the streams run on
    assert not all(r.done for r in results)
    for t in threads:
        t.join(timeout=300)
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
