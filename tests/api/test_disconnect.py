"""A client that hangs up, streaming or not, aborts its request and frees its KV blocks at once."""

from __future__ import annotations

import time

import httpx

from tests.conftest import MODEL_ID


def wait_idle(server, timeout: float = 20.0) -> None:
    engine = server.engine
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not engine.has_work and engine.pool.num_free == engine.pool.num_blocks:
            return
        time.sleep(0.05)
    raise AssertionError(f"engine still busy: {engine.stats()}")


def test_stream_disconnect_frees_blocks(smol_server) -> None:
    wait_idle(smol_server)
    body = {"model": MODEL_ID, "prompt": "Tell me a very long story.", "max_tokens": 2000, "stream": True,
            "ignore_eos": True}
    with httpx.stream("POST", smol_server.url + "/v1/completions", json=body, timeout=60) as r:
        it = r.iter_lines()
        seen = 0
        for line in it:
            if line.startswith("data: "):
                seen += 1
            if seen >= 3:
                break
        assert smol_server.engine.pool.num_used > 0
    t0 = time.monotonic()
    wait_idle(smol_server)
    assert time.monotonic() - t0 < 5


def test_non_stream_disconnect_frees_blocks(smol_server) -> None:
    wait_idle(smol_server)
    body = {"model": MODEL_ID, "prompt": "Tell me a very long story.", "max_tokens": 2000, "ignore_eos": True}
    try:
        httpx.post(smol_server.url + "/v1/completions", json=body, timeout=1.0)
    except httpx.TimeoutException:
        pass
    wait_idle(smol_server)
