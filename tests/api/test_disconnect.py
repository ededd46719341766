"""A client that hangs up, streaming or not, aborts its request and frees its KV blocks at once."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import MODEL_ID
from tests.harness import wait_until


def wait_idle(server, timeout: float = 20.0) -> None:  # noqa: ANN001 - a LiveServer
    engine = server.engine
    try:
        wait_until(lambda: not engine.has_work and engine.pool.num_free == engine.pool.num_blocks, timeout,
                   "the engine to be idle with every KV block free")
    except TimeoutError as e:
        raise AssertionError(f"engine still busy: {engine.stats()}") from e


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
    with pytest.raises(httpx.TimeoutException):  # 2000 tokens take far longer than the client waits
        httpx.post(smol_server.url + "/v1/completions", json=body, timeout=1.0)
    wait_idle(smol_server)
