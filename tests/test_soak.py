"""The soak harness, short: 16 clients for 25 s against a live server on the tiny model, every check green.

The long runs (SmolLM2, minutes) are in bench/RESULTS.md; this one keeps the harness and the server's
behaviour under mixed abuse (disconnects, slow readers, malformed bodies, deadlines, grammars, n > 1,
prompts at the context window) in the test suite. A second test shows the harness does catch a leak.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from ember.config import CacheConfig, Config, SchedulerConfig
from ember.soak import BAD_BODIES, KINDS, Soak, SoakConfig, format_report
from tests.conftest import MODEL_ID, LiveServer


@pytest.fixture
def tiny_server(tiny):
    # 1 MiB is 128 blocks of 16 tokens on the tiny model: 16 clients run it full, so sequences are
    # preempted and recomputed while others hang up and prefixes are shared.
    cfg = Config(cache=CacheConfig(kv_cache_mb=1), scheduler=SchedulerConfig(max_num_seqs=16))
    with LiveServer(cfg, tiny) as s:
        yield s


SOAK_S = float(os.environ.get("EMBER_SOAK_SECONDS", "25"))
SOAK_CLIENTS = int(os.environ.get("EMBER_SOAK_CLIENTS", "16"))
"""A CI machine with cores to spare runs the issue's 60 s x 64 clients: EMBER_SOAK_SECONDS=60 EMBER_SOAK_CLIENTS=64."""


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


def test_the_harness_catches_a_leaked_block(tiny_server) -> None:
    assert tiny_server.engine.pool.allocate(1) is not None  # a block nobody will ever free
    cfg = SoakConfig(base_url=tiny_server.url, model=MODEL_ID, clients=2, duration_s=2, max_tokens=4,
                     idle_timeout_s=2, sample_every_s=0.5)
    report = asyncio.run(Soak(cfg).run())
    assert not report["passed"]
    assert report["checks"]["kv_blocks_back_to_zero"] is False and report["idle"]["kv_used"] == 1
    assert report["checks"]["no_5xx"] and report["checks"]["no_hangs"], format_report(report)
