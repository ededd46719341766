"""The load generator against a tiny fake OpenAI-compatible server (the unit under test is the client)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ember.loadgen.bench import BenchConfig, bench_main, make_prompts, percentile, run_bench
from tests.harness import UvicornThread

TOKEN_DELAY_S = 0.002


def fake_app(fail_every: int = 0, usage: bool = True, cached: int = 0) -> FastAPI:
    """A streaming /v1/completions that emits one chunk per token, like ember and llama-server.

    fail_every=k answers every k-th request with 503, so the expected failure count is exact whatever
    the concurrency. usage=False imitates a server that reports no token counts.
    """
    app = FastAPI()
    seen = {"n": 0}  # per-app counter; the app lives only as long as one test

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        seen["n"] += 1
        if fail_every and seen["n"] % fail_every == 0:
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
        n = int(body["max_tokens"])
        prompt_tokens = len(body["prompt"].split())
        usage_obj = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n,
                     "prompt_tokens_details": {"cached_tokens": cached}}
        if not body.get("stream"):
            return {"choices": [{"index": 0, "text": " x" * n, "finish_reason": "length"}], "usage": usage_obj}

        async def events() -> AsyncIterator[str]:
            for i in range(n):
                await asyncio.sleep(TOKEN_DELAY_S)
                chunk: dict = {"choices": [{"index": 0, "text": f" t{i}",
                                            "finish_reason": "length" if i == n - 1 else None}]}
                if usage and i == n - 1:
                    chunk["usage"] = usage_obj
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


class FakeServer(UvicornThread):
    """A scripted OpenAI-compatible app (no model) for the load generator to hit."""

    def __init__(self, app: FastAPI) -> None:
        super().__init__(app, lifespan="off", start_timeout=10)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer(fake_app()) as s:
        yield s


def cfg(url: str, **kw: object) -> BenchConfig:
    base: dict = dict(base_url=url, model="fake", concurrency=3, num_requests=7, prompt_tokens=20, max_tokens=5,
                      timeout_s=10, progress=False)
    return BenchConfig(**(base | kw))


def test_percentile_matches_linear_interpolation() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1, 2, 3, 4], 50) == pytest.approx(2.5)
    assert percentile(list(range(101)), 95) == pytest.approx(95)


def test_prompts_are_deterministic_and_share_the_prefix() -> None:
    c = BenchConfig(num_requests=4, prompt_tokens=30, shared_prefix_tokens=10, seed=7)
    a, b = make_prompts(c), make_prompts(c)
    assert a == b
    assert all(len(p.split()) == 30 for p in a)
    assert len({" ".join(p.split()[:10]) for p in a}) == 1
    assert len({" ".join(p.split()[10:]) for p in a}) == 4
    assert make_prompts(BenchConfig(num_requests=4, prompt_tokens=30, seed=8)) != make_prompts(
        BenchConfig(num_requests=4, prompt_tokens=30, seed=7))


def test_streaming_run_counts_tokens_and_latencies(server: FakeServer) -> None:
    r = asyncio.run(run_bench(cfg(server.url, shared_prefix_tokens=5)))
    assert (r["num_requests"], r["completed"], r["failed"]) == (7, 7, 0)
    assert r["completion_tokens_total"] == 7 * 5
    assert r["prompt_tokens_total"] == 7 * 20
    assert r["cached_tokens_total"] == 0  # reported as zero, which is not the same as unreported
    assert r["gen_tok_s"] == pytest.approx(35 / r["wall_s"])
    for key in ("ttft_s", "itl_s", "e2e_s"):
        d = r[key]
        assert d["p50"] is not None and 0 < d["p50"] <= d["p95"] <= d["p99"] <= d["max"]
    assert r["ttft_s"]["n"] == 7
    assert r["itl_s"]["n"] == 7 * 4  # gaps between 5 chunks
    assert r["itl_s"]["p50"] >= TOKEN_DELAY_S * 0.5
    assert all(q["ttft_s"] <= q["e2e_s"] for q in r["requests"])


def test_failures_are_counted_not_raised() -> None:
    with FakeServer(fake_app(fail_every=3)) as s:
        r = asyncio.run(run_bench(cfg(s.url, num_requests=9)))
    assert (r["completed"], r["failed"]) == (6, 3)
    assert r["errors"] == {"HTTP 503: overloaded": 3}
    assert r["completion_tokens_total"] == 6 * 5


def test_unreachable_server_is_a_failure_not_a_crash() -> None:
    with socket.socket() as sk:  # a port that was free a moment ago: nothing listens there
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    r = asyncio.run(run_bench(cfg(f"http://127.0.0.1:{port}", num_requests=2, concurrency=2)))
    assert (r["completed"], r["failed"]) == (0, 2)
    assert r["ttft_s"]["p50"] is None and r["gen_tok_s"] == 0


def test_tokens_counted_from_chunks_without_usage() -> None:
    with FakeServer(fake_app(usage=False)) as s:
        r = asyncio.run(run_bench(cfg(s.url, max_tokens=4)))
    assert r["completion_tokens_total"] == 7 * 4
    assert r["cached_tokens_total"] is None


def test_cached_tokens_and_non_streaming() -> None:
    with FakeServer(fake_app(cached=16)) as s:
        r = asyncio.run(run_bench(cfg(s.url, stream=False, num_requests=4)))
    assert (r["completed"], r["failed"]) == (4, 0)
    assert r["cached_tokens_total"] == 4 * 16
    assert r["completion_tokens_total"] == 4 * 5


def test_cli_prints_table_and_writes_json(server: FakeServer, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sub" / "r.json"
    rc = bench_main(["--url", server.url + "/v1", "--model", "fake", "-c", "2", "-n", "4", "--prompt-tokens", "12",
                     "--max-tokens", "3", "--no-progress", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "generated tok/s" in text and "TTFT p50" in text
    data = json.loads(out.read_text())
    assert data["completed"] == 4 and data["completion_tokens_total"] == 12
    assert len(data["requests"]) == 4


def test_cli_exit_code_reports_failures(tmp_path: Path) -> None:
    with FakeServer(fake_app(fail_every=2)) as s:
        rc = bench_main(["--url", s.url, "-n", "4", "--max-tokens", "2", "--no-progress"])
    assert rc == 1


def test_cli_rejects_bad_arguments() -> None:
    with pytest.raises(SystemExit) as e:
        bench_main(["--prompt-tokens", "10", "--shared-prefix-tokens", "20"])
    assert e.value.code == 2
