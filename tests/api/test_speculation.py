"""Predicted outputs (`prediction`, `speculation`) and prompt-lookup drafting on the real model via HTTP."""

from __future__ import annotations

import dataclasses
import json

import httpx
import pytest

from ember.config import SpeculativeConfig
from tests.conftest import MODEL_ID, LiveServer, server_config

TEXT = "The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
PROMPT = f"Repeat the text exactly.\nText: {TEXT}\nRepeat:"


def complete(server, **body: object) -> dict:
    r = httpx.post(server.url + "/v1/completions", json={"model": MODEL_ID} | body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_prediction_never_changes_greedy_output(smol_server) -> None:
    # Stopping at the line's end keeps special tokens (which the text omits) out of the prediction.
    base = dict(prompt=PROMPT, max_tokens=40, temperature=0, stop=["\n"], perf_metrics_in_response=True)
    plain = complete(smol_server, **base)
    want = plain["choices"][0]["text"]
    assert len(want) > 30 and "lazy" in want
    assert "speculation-acceptance" not in plain["perf_metrics"]
    edited = want.replace("lazy", "sleepy").replace("nine", "ten")
    for pred in (want, {"type": "content", "content": want}, edited, "something else entirely"):
        r = complete(smol_server, prediction=pred, **base)
        assert r["choices"][0]["text"] == want, pred
        m = r["perf_metrics"]
        assert m["speculation-prompt-tokens"] > 0
        assert 0 <= m["speculation-prompt-matched-tokens"] <= m["speculation-generated-tokens"]
    exact = complete(smol_server, prediction=want, **base)["perf_metrics"]
    assert exact["speculation-acceptance"] > 0.7
    tok = smol_server.app.state.ember.model.tokenizer
    ids = tok.encode(want, add_special_tokens=False)
    r = complete(smol_server, speculation=ids, **base)
    assert r["choices"][0]["text"] == want
    assert r["perf_metrics"]["speculation-prompt-matched-tokens"] >= len(ids) // 2, (len(ids), r["perf_metrics"])


def test_prediction_with_sampling_and_stream(smol_server) -> None:
    body = dict(prompt=PROMPT, max_tokens=30, temperature=0.7, seed=5, prediction=TEXT)
    a = complete(smol_server, **body)["choices"][0]["text"]
    assert a == complete(smol_server, **body)["choices"][0]["text"]
    chunks = []
    with httpx.stream("POST", smol_server.url + "/v1/completions", timeout=120,
                      json={"model": MODEL_ID, "stream": True, "prompt": PROMPT, "max_tokens": 30,
                            "temperature": 0, "prediction": TEXT}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line[6:]))
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == complete(smol_server, prompt=PROMPT, max_tokens=30, temperature=0)["choices"][0]["text"]


@pytest.fixture(scope="module")
def ngram_server(smol_served):
    cfg = dataclasses.replace(server_config(), speculative=SpeculativeConfig(ngram_lookup=True))
    with LiveServer(cfg, smol_served) as s:
        yield s


def test_prompt_lookup_drafts_from_the_prompt(ngram_server, smol_server) -> None:
    body = dict(prompt=PROMPT, max_tokens=40, temperature=0, ignore_eos=True, perf_metrics_in_response=True)
    r = complete(ngram_server, **body)
    assert r["choices"][0]["text"] == complete(smol_server, **body)["choices"][0]["text"]
    m = r["perf_metrics"]
    assert m["speculation-generated-tokens"] > 0 and "speculation-prompt-tokens" not in m


def test_logprobs_are_the_same_with_a_prediction(smol_server) -> None:
    body = dict(prompt=PROMPT, max_tokens=24, temperature=0, logprobs=2)
    plain = complete(smol_server, **body)["choices"][0]
    spec = complete(smol_server, prediction=plain["text"], **body)["choices"][0]
    assert spec["text"] == plain["text"]
    a, b = plain["logprobs"], spec["logprobs"]
    assert a["tokens"] == b["tokens"] and a["text_offset"] == b["text_offset"]
    assert max(abs(x - y) for x, y in zip(a["token_logprobs"], b["token_logprobs"], strict=True)) < 1e-4
